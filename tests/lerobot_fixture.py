"""Writes a small LeRobot v3 dataset on the fly: a few episodes, two cameras as H.264 mp4s (PyAV), or as
PNG images inside the parquet files.

Frame brightness encodes (episode, frame) so decoded frames can be checked; actions are a smooth
function of the state, so a model can learn them. `meta/stats.json` has LeRobot's layout and its way of
aggregating: statistics per episode (min, max, mean, std, count, q01 ... q99), then combined over the
episodes (pooled mean and std; quantiles as the count-weighted mean of the episodes' quantiles, so they are
not the exact quantiles of all frames). LeRobot estimates an episode's quantiles from a histogram; here
they are exact per episode.
"""

import io
import json
from pathlib import Path

import av
import numpy as np
import pandas as pd
from PIL import Image

FPS, SIZE = 10, 64
CAMERAS = ("observation.images.top", "observation.images.wrist")
TASKS = ("pick up the cube", "place the cube in the bowl")
STATE_DIM, ACTION_DIM = 4, 3
QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}


def brightness(episode: int, frame: int, camera: int) -> int:
    return (40 + 9 * frame + 30 * episode + 60 * camera) % 240


def _write_video(path: Path, frames: list[np.ndarray]):
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = SIZE, SIZE, "yuv420p"
        stream.options = {"crf": "10"}
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _png(image: np.ndarray) -> dict:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def _episode_stats(values: np.ndarray) -> dict:
    values = values.astype(np.float64)
    return {"min": values.min(0), "max": values.max(0), "mean": values.mean(0), "std": values.std(0),
            "count": np.array([len(values)]), **{key: np.quantile(values, q, axis=0) for key, q in QUANTILES.items()}}


def _combine(episodes: list[dict]) -> dict:
    counts = np.array([e["count"][0] for e in episodes], dtype=np.float64)[:, None]
    stacked = {key: np.stack([e[key] for e in episodes]) for key in episodes[0]}
    mean = (stacked["mean"] * counts).sum(0) / counts.sum()
    variance = ((stacked["std"] ** 2 + (stacked["mean"] - mean) ** 2) * counts).sum(0) / counts.sum()
    return {"min": stacked["min"].min(0), "max": stacked["max"].max(0), "mean": mean, "std": np.sqrt(variance),
            "count": np.array([int(counts.sum())]),
            **{key: (stacked[key] * counts).sum(0) / counts.sum() for key in QUANTILES}}


def lerobot_stats(frames: pd.DataFrame) -> dict:
    """State and action statistics as LeRobot's `meta/stats.json` holds them (see the module docstring)."""
    stats = {}
    for key in ("observation.state", "action"):
        episodes = [_episode_stats(np.stack(group[key])) for _, group in frames.groupby("episode_index")]
        stats[key] = {name: value.tolist() for name, value in _combine(episodes).items()}
    return stats


def write_lerobot_dataset(root: Path, lengths=(20, 14, 17, 9), seed: int = 0, images_in_parquet: bool = False) -> Path:
    rng = np.random.default_rng(seed)
    root = Path(root)
    rows, episodes, videos = [], [], {camera: [] for camera in CAMERAS}
    start = 0
    for episode, length in enumerate(lengths):
        phase = rng.uniform(0, 2 * np.pi, STATE_DIM)
        t = np.arange(length)[:, None] / FPS
        state = np.sin(t + phase).astype(np.float32)
        action = (state[:, :ACTION_DIM] * 2 + 0.5).astype(np.float32)
        for frame in range(length):
            rows.append({"index": start + frame, "episode_index": episode, "frame_index": frame,
                         "timestamp": np.float32(frame / FPS), "task_index": episode % len(TASKS),
                         "observation.state": state[frame], "action": action[frame]})
            for c, camera in enumerate(CAMERAS):
                image = np.full((SIZE, SIZE, 3), brightness(episode, frame, c), np.uint8)
                if images_in_parquet:
                    rows[-1][camera] = _png(image)
                else:
                    videos[camera].append(image)
        episode_row = {"episode_index": episode, "tasks": [TASKS[episode % len(TASKS)]], "length": length,
                       "dataset_from_index": start, "dataset_to_index": start + length,
                       "data/chunk_index": 0, "data/file_index": 0}
        for camera in () if images_in_parquet else CAMERAS:
            episode_row |= {f"videos/{camera}/chunk_index": 0, f"videos/{camera}/file_index": 0,
                            f"videos/{camera}/from_timestamp": start / FPS,
                            f"videos/{camera}/to_timestamp": (start + length) / FPS}
        episodes.append(episode_row)
        start += length

    (root / "data" / "chunk-000").mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(root / "data" / "chunk-000" / "file-000.parquet")
    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    pd.DataFrame(episodes).to_parquet(root / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    pd.DataFrame({"task_index": range(len(TASKS))}, index=pd.Index(TASKS, name="task")).to_parquet(root / "meta" / "tasks.parquet")
    for camera in () if images_in_parquet else CAMERAS:
        _write_video(root / "videos" / camera / "chunk-000" / "file-000.mp4", videos[camera])

    (root / "meta" / "stats.json").write_text(json.dumps(lerobot_stats(pd.DataFrame(rows))))
    features = {
        "observation.state": {"dtype": "float32", "shape": [STATE_DIM]},
        "action": {"dtype": "float32", "shape": [ACTION_DIM]},
        **{camera: {"dtype": "image" if images_in_parquet else "video", "shape": [SIZE, SIZE, 3], "names": ["height", "width", "channels"]} for camera in CAMERAS},
        **{key: {"dtype": "int64", "shape": [1]} for key in ("index", "episode_index", "frame_index", "task_index")},
        "timestamp": {"dtype": "float32", "shape": [1]},
    }
    info = {"codebase_version": "v3.0", "fps": FPS, "total_episodes": len(lengths), "total_frames": start,
            "total_tasks": len(TASKS), "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4", "features": features}
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=2))
    return root
