"""LeRobot v3 datasets in a local folder, as π training samples; their norm stats; the batch collator.

A sample is frame t of an episode: every camera and the state at t, the episode's task as the prompt,
and the action chunk t..t+H−1. Steps past the episode's end repeat its last action (as LeRobot's
loader does) and are flagged in `action_is_pad`, which the flow loss leaves out.

The frame table is read with `datasets` (Arrow, memory-mapped); camera videos are decoded with PyAV at
the frame's timestamp in the episode's file. Cameras stored as images in the parquet files come back
from `datasets` already decoded when the file declares its `Image` feature (LeRobot's writer does), or
as raw `{bytes, path}` structs when it does not; both are read. Normalisation statistics are, as in
LeRobot, the dataset's own `meta/stats.json`, or exact ones recomputed over every frame. Opening a dataset
checks every frame's state and actions (their dims, all finite: one inf would give NaN statistics or
losses) reading those two columns alone, and that the frames, `meta/episodes` and `meta/tasks.parquet` agree;
an error names the file (and the episode, frame and feature where it is one).
Written here because the `lerobot` package itself is not a dependency of ours; only its file layout is.
"""

import bisect
import io
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from datasets import Dataset as ArrowDataset
from datasets.exceptions import DatasetGenerationError
from PIL import Image
from tqdm.auto import tqdm

from conversion.json_files import read_json
from processing_pi import NormStats
from processing_pi.normalization import LEROBOT_KEYS, NEEDED_STATS, ArrayStats, non_finite

STATE, ACTION = "observation.state", "action"


class DatasetError(ValueError):
    """A dataset that cannot be trained on; the message names the file and the problem."""


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except (pa.ArrowException, OSError) as err:
        raise DatasetError(f"{path}: not a readable parquet file ({err}).") from err


def _parquet(paths: list[Path], what: str, root: Path) -> pd.DataFrame:
    if not paths:
        raise DatasetError(f"{root}: no {what} parquet files.")
    return pd.concat([_read_parquet(path) for path in paths], ignore_index=True)


def _num_rows(path: Path) -> int:
    """The rows of a parquet file, from its footer alone."""
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (pa.ArrowException, OSError) as err:
        raise DatasetError(f"{path}: not a readable parquet file ({err}).") from err


def _episode_list(episodes) -> str:
    episodes = [int(e) for e in episodes]
    shown = ", ".join(map(str, episodes[:5])) + (f" and {len(episodes) - 5} more" if len(episodes) > 5 else "")
    return f"episode{'s' if len(episodes) > 1 else ''} {shown}"


class _VideoFrames:
    """Frames of mp4 files by timestamp, keeping the last opened file (samples come in frame order)."""

    def __init__(self):
        self.path, self.container = None, None

    def frame(self, path: Path, timestamp: float, fps: float) -> np.ndarray:
        import av

        try:
            if path != self.path:
                if self.container is not None:
                    self.container.close()
                self.path, self.container = path, av.open(str(path))
            stream = self.container.streams.video[0]
            self.container.seek(int(timestamp / stream.time_base), stream=stream, backward=True)
            for frame in self.container.decode(stream):
                if frame.time is not None and frame.time >= timestamp - 0.5 / fps:
                    return frame.to_ndarray(format="rgb24")
        except (av.error.FFmpegError, ValueError, IndexError) as err:
            self.path, self.container = None, None
            raise DatasetError(f"{path}: cannot decode the frame at {timestamp:.3f}s ({err}).") from err
        raise DatasetError(f"{path}: no frame at {timestamp:.3f}s (the video ends before it).")


def _is_list(chunk: pa.Array) -> bool:
    return pa.types.is_list(chunk.type) or pa.types.is_large_list(chunk.type) or pa.types.is_fixed_size_list(chunk.type)


def _row_lengths(chunk: pa.Array) -> np.ndarray:
    """How many values each row of a column chunk holds (-1 for a missing row; 1 for a scalar column)."""
    if not _is_list(chunk):
        return np.where(chunk.is_null().to_numpy(zero_copy_only=False), -1, 1)
    return pc.fill_null(pc.list_value_length(chunk), -1).to_numpy(zero_copy_only=False)


def _row_values(chunk: pa.Array, dim: int) -> np.ndarray:
    """A column chunk whose rows all hold `dim` values as a [rows, dim] array (a missing value reads as NaN)."""
    flat = chunk.flatten() if _is_list(chunk) else chunk
    return flat.to_numpy(zero_copy_only=False).reshape(-1, dim)


def _count_bad(column: pa.ChunkedArray, dim: int) -> int:
    return sum(int((~np.isfinite(_row_values(chunk, dim)).all(axis=1)).sum()) for chunk in column.chunks)


class LeRobotDataset(torch.utils.data.Dataset):
    """`dataset[i]` -> {"images": {model camera: uint8 HWC}, "prompt", "state", "actions" [H, A], "action_is_pad" [H]}.

    `camera_map` maps the dataset's camera keys to the model's `image_keys`; by default a key maps to its
    name without the "observation.images." prefix. Cameras left out of the map are not read. With `prefix_key`, a
    feature of the action's dims (e.g. the actions the robot actually executed), a sample also holds its chunk over
    the same steps as "prefix_actions" [H, A]: what a clean action prefix is trained with (`pi train --rtc-prefix-key`).
    """

    def __init__(self, root: str | os.PathLike, action_horizon: int, camera_map: dict[str, str] | None = None,
                 image_keys: list[str] | None = None, prefix_key: str | None = None):
        self.root = root = Path(root)
        self.action_horizon = action_horizon
        if not (root / "meta" / "info.json").is_file():
            raise DatasetError(f"{root / 'meta' / 'info.json'}: missing.")
        info = read_json(root / "meta" / "info.json", DatasetError)
        version = str(info.get("codebase_version", "v3.0"))
        if not version.startswith("v3."):
            converted = " (LeRobot's convert_dataset_v21_to_v30 script converts a v2.1 one)" if version == "v2.1" else ""
            raise DatasetError(f"{root / 'meta' / 'info.json'}: a LeRobot {version} dataset; pi train reads v3 datasets"
                               f"{converted}.")
        self.fps = float(info.get("fps", 30))
        features = info.get("features", {})
        for key in (STATE, ACTION, prefix_key or ACTION):
            if key not in features:
                raise DatasetError(f"{root / 'meta' / 'info.json'}: no '{key}' feature.")
        self.state_dim, self.action_dim = (int(np.prod(features[key]["shape"])) for key in (STATE, ACTION))
        if prefix_key and int(np.prod(features[prefix_key]["shape"])) != self.action_dim:
            raise DatasetError(f"{root / 'meta' / 'info.json'}: '{prefix_key}' has shape {features[prefix_key]['shape']}; "
                               f"a clean prefix's actions need the {self.action_dim} dims of '{ACTION}'.")
        self.prefix_key = prefix_key
        cameras = {key: spec["dtype"] for key, spec in features.items() if spec.get("dtype") in ("video", "image")}
        self.camera_map = dict(camera_map) if camera_map is not None else {
            key: key.removeprefix("observation.images.") for key in cameras}
        for key, target in self.camera_map.items():
            if key not in cameras:
                raise DatasetError(f"{root / 'meta' / 'info.json'}: no camera '{key}' (cameras: {', '.join(cameras)}).")
            if image_keys is not None and target not in image_keys:
                raise DatasetError(f"Camera '{key}' maps to '{target}', which is not one of the model's cameras "
                                   f"({', '.join(image_keys)}); pass a camera map.")
        self.camera_types = {key: cameras[key] for key in self.camera_map}

        self.episodes = _parquet(sorted(root.glob("meta/episodes/chunk-*/file-*.parquet")), "episode", root / "meta" / "episodes")
        if "episode_index" not in self.episodes:
            raise DatasetError(f"{root / 'meta' / 'episodes'}: no 'episode_index' column.")
        self.episodes = self.episodes.set_index("episode_index")
        if not (root / "meta" / "tasks.parquet").is_file():
            raise DatasetError(f"{root / 'meta' / 'tasks.parquet'}: missing.")
        tasks = _read_parquet(root / "meta" / "tasks.parquet")
        if "task_index" not in tasks:
            raise DatasetError(f"{root / 'meta' / 'tasks.parquet'}: no 'task_index' column.")
        self.tasks = {int(i): task for i, task in zip(tasks["task_index"], tasks["task"] if "task" in tasks else tasks.index)}
        self._files = self._data_files()
        self._file_starts = np.cumsum([0] + [_num_rows(f) for f in self._files]).tolist()
        if not self._file_starts[-1]:
            raise DatasetError(f"{root / 'data'}: no frames.")
        try:
            self.frames = ArrowDataset.from_parquet([str(f) for f in self._files]).with_format("numpy")
        except DatasetGenerationError as err:
            raise DatasetError(f"{root / 'data'}: cannot read its frames ({err.__cause__ or err}).") from err
        prefix = [prefix_key] if prefix_key not in (None, ACTION) else []
        self._actions = self.frames.select_columns([ACTION, *prefix])  # chunks read these alone
        self._check_frames()  # every frame's state and actions: their dims, finite
        self._check_episodes()
        self._check_cameras()
        self._videos = _VideoFrames()

    def _data_files(self) -> list[Path]:
        """The frame tables, in order. Each one `meta/episodes` names must be there: without it, its episodes would be
        silently left out."""
        files = sorted(self.root.glob("data/chunk-*/file-*.parquet"))
        located = ["data/chunk_index", "data/file_index"]
        if set(located) <= set(self.episodes.columns):
            for (chunk, file), episodes in self.episodes.groupby(located).groups.items():
                path = self.root / "data" / f"chunk-{int(chunk):03d}" / f"file-{int(file):03d}.parquet"
                if not path.is_file():
                    raise DatasetError(f"{path}: missing (the frames of {_episode_list(episodes)}).")
        if not files:
            raise DatasetError(f"{self.root / 'data'}: no chunk-*/file-*.parquet files.")
        return files

    def _check_frames(self):
        columns = self.frames.column_names
        for key in ("index", "episode_index", "task_index", *(["timestamp"] if "video" in self.camera_types.values() else [])):
            if key not in columns:
                raise DatasetError(f"{self.root / 'data'}: the frames have no '{key}' column.")
        if not np.array_equal(self.frames["index"], np.arange(len(self.frames))):
            raise DatasetError(f"{self.root / 'data'}: frames are not stored in index order 0..{len(self.frames) - 1}.")
        for key, dim in ((STATE, self.state_dim), (ACTION, self.action_dim), *([(self.prefix_key, self.action_dim)]
                                                                                 if self.prefix_key else [])):
            self._check_column(key, dim)

    def _check_column(self, key: str, dim: int) -> None:
        """Every frame's `key` holds `dim` finite numbers: one inf or NaN would poison the statistics and the
        loss. Reads that column alone (Arrow, chunk by chunk), not the cameras."""
        start = 0
        for chunk in self.frames.data.table.column(key).chunks:
            lengths = _row_lengths(chunk)
            wrong = np.flatnonzero(lengths != dim)
            if wrong.size:
                row = start + int(wrong[0])
                held = "no value" if lengths[wrong[0]] < 0 else f"{lengths[wrong[0]]} dims"
                raise DatasetError(f"{self._where(row)}: '{key}' has {held}, info.json says {dim}.")
            values = _row_values(chunk, dim)
            bad_rows = np.flatnonzero(~np.isfinite(values).all(axis=1))
            if bad_rows.size:
                row, dims = start + int(bad_rows[0]), np.flatnonzero(~np.isfinite(values[bad_rows[0]]))
                raise DatasetError(
                    f"{self._where(row)}: '{key}' is {non_finite(values[bad_rows[0], dims[0]])} in dim {int(dims[0])} "
                    f"(frames with a non-finite '{key}': {_count_bad(self.frames.data.table.column(key), dim)}); "
                    "training on them would give NaN statistics or losses.")
            start += len(chunk)

    def _file_of(self, row: int) -> Path:
        return self._files[bisect.bisect_right(self._file_starts, row) - 1]

    def _where(self, row: int) -> str:
        """The file, episode and frame of the frame table's row `row`, as errors name them."""
        file = self._file_of(row)
        table = self.frames.data.table
        episode = table.column("episode_index")[row].as_py()
        if "frame_index" in table.column_names:
            frame = table.column("frame_index")[row].as_py()
        else:
            frame = row - int(self.episodes.loc[episode, "dataset_from_index"])
        return f"{file}: episode {episode}, frame {frame} (index {row})"

    def _video_path(self, camera: str, episode) -> Path:
        chunk, file = int(episode[f"videos/{camera}/chunk_index"]), int(episode[f"videos/{camera}/file_index"])
        return self.root / "videos" / camera / f"chunk-{chunk:03d}" / f"file-{file:03d}.mp4"

    def _check_episodes(self) -> None:
        """`meta/episodes` and the frames agree: the rows [dataset_from_index, dataset_to_index) of each episode are its
        frames, and every frame is in one. A chunk ends at its episode's last frame by these bounds, so a wrong one
        would run a chunk on into the next episode's actions. Each task the frames name is in `meta/tasks.parquet`."""
        meta, table = self.root / "meta" / "episodes", self.frames.data.table
        for column in ("dataset_from_index", "dataset_to_index"):
            if column not in self.episodes:
                raise DatasetError(f"{meta}: no '{column}' column.")
        of_frame = table.column("episode_index").to_numpy()
        starts, ends = (self.episodes[column].to_numpy(np.int64) for column in ("dataset_from_index", "dataset_to_index"))
        past = ends > len(of_frame)
        if past.any():
            raise DatasetError(f"{meta}: {_episode_list(self.episodes.index[past])} end past the {len(of_frame)} frames "
                               f"in {self.root / 'data'} (a data file lost?).")
        listed = np.full(len(of_frame), -1)
        for episode, start, end in zip(self.episodes.index, starts, ends):
            listed[start:end] = episode
        wrong = np.flatnonzero(listed != of_frame)
        if wrong.size:
            row, episode = int(wrong[0]), int(of_frame[wrong[0]])
            if episode not in self.episodes.index:
                raise DatasetError(f"{self._file_of(row)}: frames are of episode {episode} (the first at index {row}), "
                                   f"which {meta} does not list.")
            there = f"episode {listed[row]}" if listed[row] >= 0 else "no episode"
            raise DatasetError(f"{self._file_of(row)}: the frame at index {row} is of episode {episode}, but {meta} "
                               f"puts index {row} in {there} ({wrong.size} frames disagree).")
        of_task = table.column("task_index").to_numpy()
        unknown = sorted(set(np.unique(of_task).tolist()) - set(self.tasks))
        if unknown:
            row = int(np.flatnonzero(of_task == unknown[0])[0])
            raise DatasetError(f"{self._file_of(row)}: frames are of task {unknown[0]} (the first at index {row}), which "
                               f"{self.root / 'meta' / 'tasks.parquet'} does not list.")

    def _check_cameras(self) -> None:
        """Each camera read is there for every episode: an image column, or a video file that `meta/episodes` locates."""
        for camera, kind in self.camera_types.items():
            if kind == "image":
                if camera not in self.frames.column_names:
                    raise DatasetError(f"{self.root / 'data'}: the frames have no '{camera}' column, though info.json "
                                       "declares it an image camera.")
                continue
            for column in (f"videos/{camera}/{name}" for name in ("chunk_index", "file_index", "from_timestamp")):
                if column not in self.episodes:
                    raise DatasetError(f"{self.root / 'meta' / 'episodes'}: no '{column}' column, which locates camera "
                                       f"'{camera}''s video.")
            for _, episode in self.episodes.iterrows():
                path = self._video_path(camera, episode)
                if not path.is_file():
                    raise DatasetError(f"{path}: missing (camera '{camera}').")

    def _image(self, cell, camera: str, t: int) -> np.ndarray:
        """A camera cell of the parquet files as uint8 HWC RGB: decoded by `datasets` (an array, or a PIL image)
        or a raw `{bytes, path}` struct (PNG/JPEG bytes; a path is relative to the dataset's folder)."""
        if isinstance(cell, dict):
            if cell.get("bytes") is not None:
                cell = Image.open(io.BytesIO(cell["bytes"]))
            elif cell.get("path"):
                cell = Image.open(self.root / cell["path"])
            else:
                raise DatasetError(f"{self.root / 'data'}: frame {t} of camera '{camera}' holds neither image bytes nor a path.")
        image = cell if isinstance(cell, Image.Image) else Image.fromarray(np.asarray(cell))
        return np.array(image.convert("RGB"))

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, t: int) -> dict:
        row = self.frames[int(t)]
        episode = self.episodes.loc[int(row["episode_index"])]
        end = int(episode["dataset_to_index"])
        steps = np.arange(t, t + self.action_horizon)
        chunk = self._actions[np.minimum(steps, end - 1)]
        actions = np.stack(chunk[ACTION]).astype(np.float32)
        images = {}
        for camera, target in self.camera_map.items():
            if self.camera_types[camera] == "video":
                timestamp = float(episode[f"videos/{camera}/from_timestamp"]) + float(row["timestamp"])
                images[target] = self._videos.frame(self._video_path(camera, episode), timestamp, self.fps)
            else:
                images[target] = self._image(row[camera], camera, t)
        sample = {
            "images": images,
            "prompt": self.tasks[int(row["task_index"])],
            "state": np.asarray(row[STATE], dtype=np.float32).reshape(-1),
            "actions": actions.reshape(self.action_horizon, -1),
            "action_is_pad": steps >= end,
        }
        if self.prefix_key:
            sample["prefix_actions"] = np.stack(chunk[self.prefix_key]).astype(np.float32).reshape(self.action_horizon, -1)
        return sample


_RECOMPUTE = "; `pi train --recompute-stats` computes the statistics from the frames instead."


def dataset_norm_stats(dataset: LeRobotDataset, mode: str) -> NormStats:
    """State and action statistics from the dataset's `meta/stats.json`, as LeRobot normalises with them (its
    q01/q99 are count-weighted means of per-episode quantiles). Stops when the file lacks what `mode` needs."""
    if mode not in NEEDED_STATS:
        raise ValueError(f"mode must be one of {', '.join(map(repr, NEEDED_STATS))}, got {mode!r}.")
    path = dataset.root / "meta" / "stats.json"
    if not path.is_file():
        raise DatasetError(f"{path}: missing{_RECOMPUTE}")
    stats = read_json(path, DatasetError)
    return NormStats(**{LEROBOT_KEYS[key]: _feature_stats(path, stats, key, dim, mode)
                        for key, dim in ((STATE, dataset.state_dim), (ACTION, dataset.action_dim))})


def _feature_stats(path: Path, stats: dict, key: str, dim: int, mode: str) -> ArrayStats:
    if key not in stats:
        raise DatasetError(f"{path}: no statistics for '{key}'{_RECOMPUTE}")
    missing = [name for name in NEEDED_STATS[mode] if stats[key].get(name) is None]
    if missing:
        raise DatasetError(f"{path}: '{key}' has no {', '.join(map(repr, missing))}, which {mode} normalisation needs{_RECOMPUTE}")
    try:
        found = ArrayStats.from_dict(stats[key])
    except ValueError as err:  # a NaN, or statistics of different lengths
        raise DatasetError(f"{path}: '{key}' {err.args[0].removesuffix('.')}{_RECOMPUTE}") from err
    if found.dim != dim:
        raise DatasetError(f"{path}: '{key}' has statistics of {found.dim} dims, info.json says {dim}.")
    return found


def compute_norm_stats(dataset: LeRobotDataset, batch_size: int = 10_000) -> NormStats:
    """Mean, std, q01 and q99 of state and actions over every frame (exact quantiles)."""
    columns = {STATE: [], ACTION: []}
    numbers = dataset.frames.select_columns(list(columns))  # the cameras are not decoded
    for start in tqdm(range(0, len(numbers), batch_size), desc="norm stats", unit="batch"):
        rows = numbers[start : start + batch_size]
        for key in columns:
            columns[key].append(np.stack(rows[key]).astype(np.float64))
    stats = {}
    for key, parts in columns.items():
        values = np.concatenate(parts)
        stats[LEROBOT_KEYS[key]] = ArrayStats(values.mean(0), values.std(0), *np.quantile(values, [0.01, 0.99], axis=0))
    return NormStats(**stats)


def write_norm_stats(stats: NormStats, folder: str | os.PathLike) -> None:
    """Both formats: openpi's `norm_stats.json` and LeRobot's `stats.json`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stats.to_json(folder / "norm_stats.json")
    lerobot = {theirs: getattr(stats, ours).to_dict() for theirs, ours in LEROBOT_KEYS.items()}
    (folder / "stats.json").write_text(json.dumps(lerobot, indent=2) + "\n")


class PiCollator:
    """Samples -> float32 model inputs through the model's PiProcessor, plus `action_is_pad` (and `prefix_actions`,
    normalised as the actions, where the samples hold them) for flow models and, for π0-FAST, `output_logits=False`:
    a training step reads only the loss, so the model skips the logits."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, samples: list[dict]) -> dict:
        missing = sorted({"images", "prompt", "state", "actions"} - set(samples[0]))
        if missing:
            raise ValueError(f"The samples lack {', '.join(missing)}: a Trainer drops the keys the model's forward does "
                             "not name unless TrainingArguments(remove_unused_columns=False), as `pi train` sets it.")
        cameras = {key: [s["images"].get(key) for s in samples] for key in self.processor.image_keys
                   if any(key in s["images"] for s in samples)}
        batch = self.processor(images=cameras, prompt=[s["prompt"] for s in samples],
                               state=np.stack([s["state"] for s in samples]),
                               actions=np.stack([s["actions"] for s in samples]), return_tensors="pt")
        batch = dict(batch)
        if self.processor.variant == "pi0_fast":
            batch["output_logits"] = False
        else:
            batch["action_is_pad"] = torch.from_numpy(np.stack([s["action_is_pad"] for s in samples]))
            if "prefix_actions" in samples[0]:
                prefix = np.stack([s["prefix_actions"] for s in samples])
                batch["prefix_actions"] = torch.from_numpy(self.processor.normalize_actions(prefix))
        return batch
