"""LeRobot v3 datasets in a local folder, as π training samples; their norm stats; the batch collator.

A sample is frame t of an episode: every camera and the state at t, the episode's task as the prompt,
and the action chunk t..t+H−1. Steps past the episode's end repeat its last action (as LeRobot's
loader does) and are flagged in `action_is_pad`, which the flow loss leaves out.

The frame table is read with `datasets` (Arrow, memory-mapped); camera videos are decoded with PyAV at
the frame's timestamp in the episode's file; cameras stored as images in the parquet files work too.
Written here because the `lerobot` package itself is not a dependency of ours; only its file layout is.
"""

import io
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from datasets import Dataset as ArrowDataset
from PIL import Image
from tqdm.auto import tqdm

from processing_pi import NormStats
from processing_pi.normalization import LEROBOT_KEYS, ArrayStats

STATE, ACTION = "observation.state", "action"


class DatasetError(ValueError):
    """A dataset that cannot be trained on; the message names the file and the problem."""


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise DatasetError(f"{path}: missing.")
    return json.loads(path.read_text())


def _parquet(paths: list[Path], what: str, root: Path) -> pd.DataFrame:
    if not paths:
        raise DatasetError(f"{root}: no {what} parquet files.")
    return pd.concat([pd.read_parquet(path) for path in paths], ignore_index=True)


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


class LeRobotDataset(torch.utils.data.Dataset):
    """`dataset[i]` -> {"images": {model camera: uint8 HWC}, "prompt", "state", "actions" [H, A], "action_is_pad" [H]}.

    `camera_map` maps the dataset's camera keys to the model's `image_keys`; by default a key maps to its
    name without the "observation.images." prefix. Cameras left out of the map are not read.
    """

    def __init__(self, root: str | os.PathLike, action_horizon: int, camera_map: dict[str, str] | None = None,
                 image_keys: list[str] | None = None):
        self.root = root = Path(root)
        self.action_horizon = action_horizon
        info = _read_json(root / "meta" / "info.json")
        self.fps = float(info.get("fps", 30))
        features = info.get("features", {})
        for key in (STATE, ACTION):
            if key not in features:
                raise DatasetError(f"{root / 'meta' / 'info.json'}: no '{key}' feature.")
        self.state_dim, self.action_dim = (int(np.prod(features[key]["shape"])) for key in (STATE, ACTION))
        stats = _read_json(root / "meta" / "stats.json")
        for key in (STATE, ACTION):
            if key not in stats:
                raise DatasetError(f"{root / 'meta' / 'stats.json'}: no statistics for '{key}'.")
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

        files = sorted(root.glob("data/chunk-*/file-*.parquet"))
        if not files:
            raise DatasetError(f"{root / 'data'}: no chunk-*/file-*.parquet files.")
        self.frames = ArrowDataset.from_parquet([str(f) for f in files]).with_format("numpy")
        self._actions = self.frames.select_columns([ACTION])  # chunks read this column alone
        self.episodes = _parquet(sorted(root.glob("meta/episodes/chunk-*/file-*.parquet")), "episode", root / "meta" / "episodes")
        self.episodes = self.episodes.set_index("episode_index")
        tasks = pd.read_parquet(root / "meta" / "tasks.parquet") if (root / "meta" / "tasks.parquet").is_file() else None
        if tasks is None:
            raise DatasetError(f"{root / 'meta' / 'tasks.parquet'}: missing.")
        self.tasks = dict(zip(tasks["task_index"], tasks["task"] if "task" in tasks else tasks.index))
        self._check_frames(files)
        self._check_videos()
        self._videos = _VideoFrames()

    def _check_frames(self, files):
        for key, dim in ((STATE, self.state_dim), (ACTION, self.action_dim)):
            width = np.asarray(self.frames[0][key]).reshape(-1).shape[0]
            if width != dim:
                raise DatasetError(f"{files[0]}: '{key}' has {width} dims, info.json says {dim}.")
        if not np.array_equal(self.frames["index"], np.arange(len(self.frames))):
            raise DatasetError(f"{self.root / 'data'}: frames are not stored in index order 0..{len(self.frames) - 1}.")

    def _video_path(self, camera: str, episode) -> Path:
        chunk, file = int(episode[f"videos/{camera}/chunk_index"]), int(episode[f"videos/{camera}/file_index"])
        return self.root / "videos" / camera / f"chunk-{chunk:03d}" / f"file-{file:03d}.mp4"

    def _check_videos(self):
        for camera, kind in self.camera_types.items():
            if kind != "video":
                continue
            for _, episode in self.episodes.iterrows():
                path = self._video_path(camera, episode)
                if not path.is_file():
                    raise DatasetError(f"{path}: missing (camera '{camera}').")

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, t: int) -> dict:
        row = self.frames[int(t)]
        episode = self.episodes.loc[int(row["episode_index"])]
        end = int(episode["dataset_to_index"])
        steps = np.arange(t, t + self.action_horizon)
        actions = np.stack(self._actions[np.minimum(steps, end - 1)][ACTION]).astype(np.float32)
        images = {}
        for camera, target in self.camera_map.items():
            if self.camera_types[camera] == "video":
                timestamp = float(episode[f"videos/{camera}/from_timestamp"]) + float(row["timestamp"])
                images[target] = self._videos.frame(self._video_path(camera, episode), timestamp, self.fps)
            else:
                images[target] = np.asarray(Image.open(io.BytesIO(row[camera]["bytes"])).convert("RGB"))
        return {
            "images": images,
            "prompt": self.tasks[int(row["task_index"])],
            "state": np.asarray(row[STATE], dtype=np.float32).reshape(-1),
            "actions": actions.reshape(self.action_horizon, -1),
            "action_is_pad": steps >= end,
        }


def compute_norm_stats(dataset: LeRobotDataset, batch_size: int = 10_000) -> NormStats:
    """Mean, std, q01 and q99 of state and actions over every frame (exact quantiles)."""
    columns = {STATE: [], ACTION: []}
    for start in tqdm(range(0, len(dataset.frames), batch_size), desc="norm stats", unit="batch"):
        rows = dataset.frames[start : start + batch_size]
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
    """Samples -> float32 model inputs through the model's PiProcessor, plus `action_is_pad` for flow models and,
    for π0-FAST, `output_logits=False`: a training step reads only the loss, so the model skips the logits."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, samples: list[dict]) -> dict:
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
        return batch
