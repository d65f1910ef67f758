"""The scripted expert's demonstrations of the tabletop task, written as a LeRobot v3 dataset that
`pi train` reads: per frame the two cameras (PNG images inside the parquet files), the state, the
expert's action and the action the robot executed (`action.executed`: the step the end-effector
took, perturbation included); per episode its prompt as the task."""

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from .tabletop import CAMERAS, COLORS, IMAGE_SIZE, MAX_SPEED, Tabletop, prompt_for

FPS = 10
IMAGE_KEYS = {camera: f"observation.images.{camera}" for camera in CAMERAS}
EXECUTED = "action.executed"  # what `pi train --rtc-prefix-key` trains real-time chunking's clean prefixes on


def _png(image: np.ndarray) -> dict:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def expert_episode(seed: int, perturbation: float = 0.0) -> list[tuple[dict, np.ndarray, np.ndarray]]:
    """(observation, expert action, executed action) for every step of the episode with this seed, until
    success. With `perturbation` > 0 the executed action is the expert's plus Gaussian noise of that many
    `MAX_SPEED`s (then limited to the top speed and the table, as every step is), while the recorded action
    stays the expert's: the demonstrations then also show how to recover from the states a slightly wrong
    policy visits."""
    env, steps = Tabletop.reset(seed), []
    rng = np.random.default_rng([seed, 1])
    while not env.done:
        observation, action, before = env.observation(), env.expert_action(), env.effector
        env.step(action + rng.normal(0.0, perturbation * MAX_SPEED, size=2) if perturbation else action)
        steps.append((observation, action, (env.effector - before).astype(np.float32)))
    return steps


def write_demonstrations(root: str | Path, seeds, perturbation: float = 0.0) -> Path:
    """One expert episode per seed into a LeRobot v3 folder at `root` (which must not exist)."""
    root = Path(root)
    tasks = [prompt_for(color) for color in COLORS]
    rows, episodes = [], []
    for episode, seed in enumerate(seeds):
        steps = expert_episode(int(seed), perturbation)
        start = len(rows)
        for frame, (observation, action, executed) in enumerate(steps):
            rows.append({"index": start + frame, "episode_index": episode, "frame_index": frame,
                         "timestamp": np.float32(frame / FPS), "task_index": tasks.index(observation["prompt"]),
                         "observation.state": observation["state"], "action": action, EXECUTED: executed,
                         **{IMAGE_KEYS[camera]: _png(image) for camera, image in observation["images"].items()}})
        episodes.append({"episode_index": episode, "tasks": [steps[0][0]["prompt"]], "length": len(steps),
                         "dataset_from_index": start, "dataset_to_index": len(rows),
                         "data/chunk_index": 0, "data/file_index": 0})

    (root / "data" / "chunk-000").mkdir(parents=True)
    frames = pd.DataFrame(rows)
    frames.to_parquet(root / "data" / "chunk-000" / "file-000.parquet")
    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    pd.DataFrame(episodes).to_parquet(root / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    pd.DataFrame({"task_index": range(len(tasks))}, index=pd.Index(tasks, name="task")).to_parquet(root / "meta" / "tasks.parquet")
    stats = {}
    for key in ("observation.state", "action", EXECUTED):
        values = np.stack(frames[key])
        stats[key] = {"mean": values.mean(0).tolist(), "std": values.std(0).tolist(), "min": values.min(0).tolist(),
                      "max": values.max(0).tolist(), "q01": np.quantile(values, 0.01, axis=0).tolist(),
                      "q99": np.quantile(values, 0.99, axis=0).tolist()}
    (root / "meta" / "stats.json").write_text(json.dumps(stats))
    features = {
        "observation.state": {"dtype": "float32", "shape": [2], "names": ["x", "y"]},
        "action": {"dtype": "float32", "shape": [2], "names": ["vx", "vy"]},
        EXECUTED: {"dtype": "float32", "shape": [2], "names": ["vx", "vy"]},
        **{key: {"dtype": "image", "shape": [IMAGE_SIZE, IMAGE_SIZE, 3], "names": ["height", "width", "channels"]}
           for key in IMAGE_KEYS.values()},
        **{key: {"dtype": "int64", "shape": [1]} for key in ("index", "episode_index", "frame_index", "task_index")},
        "timestamp": {"dtype": "float32", "shape": [1]},
    }
    info = {"codebase_version": "v3.0", "fps": FPS, "total_episodes": len(episodes), "total_frames": len(rows),
            "total_tasks": len(tasks), "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "features": features}
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=2))
    return root
