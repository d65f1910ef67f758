"""What a chunk continuing a previous one does with that chunk's leftover actions, on the built-in task.

    python -m demo_pi.prefix_probe [--delay 2] [--execution-horizon 4] [--angles 0 20 40] [--episodes 60]

Real-time chunking hands the model the actions the robot will execute while the new chunk is computed
(`prev_actions`, the first `inference_delay` d of them executed for sure). On this task the expert's action
depends on the current position alone, so the best continuation heads for the block from where those d
actions will have taken the effector. The probe asks whether the models do that. From the first observation
of held-out episodes whose block is at least 0.45 away, it sends a leftover chunk of full-speed steps turned
by an angle from the expert's heading, and measures the headings of the new chunk (in degrees, positive in
the turn's direction): its first d actions (kept), the free ones from d to s − 1 (the ones executed), and the
heading the expert would take after the kept ones. A model that continues the previous plan turns the free
actions towards the angle; one that re-aims turns them the other way. It runs both shipped models: the π0.5
guided towards the leftover (`demo_pi/model`) and the one trained with clean prefixes (`demo_pi/model_rtc`).
"""

import argparse
import sys

import numpy as np
import torch

from .demo import SHIPPED_MODEL, SHIPPED_RTC_MODEL
from .recipe import HELD_OUT_SEEDS_START
from .tabletop import MAX_SPEED, Tabletop

MIN_DISTANCE = 0.45  # the leftover's turn then moves the effector without reaching the block


def turned(vectors: np.ndarray, degrees: float) -> np.ndarray:
    """`vectors` [..., 2] turned anticlockwise by `degrees`."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return np.stack([c * vectors[..., 0] - s * vectors[..., 1], s * vectors[..., 0] + c * vectors[..., 1]], axis=-1)


def heading(vectors: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The signed angle (degrees, anticlockwise positive) from `reference` to `vectors`, both [..., 2]."""
    cross = reference[..., 0] * vectors[..., 1] - reference[..., 1] * vectors[..., 0]
    return np.degrees(np.arctan2(cross, (reference * vectors).sum(-1)))


def probe(model, processor, envs: list[Tabletop], angle: float, delay: int, execution_horizon: int) -> dict:
    """Mean headings (degrees from the expert's) of the kept and free actions of a chunk continuing a leftover
    turned by `angle`, and of the expert after the kept ones."""
    horizon, s, d = model.config.action_horizon, execution_horizon, delay
    observations = [env.observation() for env in envs]
    expert = np.stack([env.expert_action() for env in envs])
    expert /= np.linalg.norm(expert, axis=-1, keepdims=True)
    leftover = np.repeat(MAX_SPEED * turned(expert, angle)[:, None], horizon, axis=1).astype(np.float32)
    inputs = processor(images={camera: [o["images"][camera] for o in observations] for camera in processor.image_keys},
                       prompt=[o["prompt"] for o in observations], state=np.stack([o["state"] for o in observations]),
                       actions=leftover)
    prev_actions = inputs.pop("actions")
    prev_actions[:, horizon - s:] = 0  # the leftover holds H − s actions, aligned to the new chunk's first step
    with torch.no_grad():
        generated = model.generate_actions(**inputs, prev_actions=prev_actions, inference_delay=d, execution_horizon=s,
                                           generator=torch.Generator().manual_seed(0))
    chunks = processor.post_process(generated).actions.numpy()
    after_kept = np.stack([env.blocks[env.target] - env.effector for env in envs]) - chunks[:, :d].sum(1)
    return {"kept": float(heading(chunks[:, :d], expert[:, None]).mean()) if d else float("nan"),
            "free": float(heading(chunks[:, d:s], expert[:, None]).mean()),
            "re-aimed": float(heading(after_kept, expert).mean())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo_pi.prefix_probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--delay", type=int, default=2, help="inference delay d (kept actions)")
    parser.add_argument("--execution-horizon", type=int, default=4, help="s: the leftover holds H − s actions")
    parser.add_argument("--angles", type=float, nargs="+", default=[0, 20, 40], help="turns of the leftover (degrees)")
    parser.add_argument("--episodes", type=int, default=60, help="held-out start positions probed")
    args = parser.parse_args(argv)
    from transformers import AutoModel, AutoProcessor

    import modeling_pi  # noqa: F401  (registers "pi")

    envs, seed = [], HELD_OUT_SEEDS_START
    while len(envs) < args.episodes:
        env = Tabletop.reset(seed)
        if np.linalg.norm(env.blocks[env.target] - env.effector) >= MIN_DISTANCE:
            envs.append(env)
        seed += 1
    print(f"{len(envs)} held-out starts, d = {args.delay}, s = {args.execution_horizon}; mean heading from the expert's, "
          "degrees\n")
    print("| model | leftover turned by | kept actions | free actions | expert after the kept ones |\n|---|---|---|---|---|")
    for label, folder in (("guided (demo_pi/model)", SHIPPED_MODEL), ("trained prefix (demo_pi/model_rtc)", SHIPPED_RTC_MODEL)):
        model, processor = AutoModel.from_pretrained(str(folder)).eval(), AutoProcessor.from_pretrained(str(folder))
        for angle in args.angles:
            row = probe(model, processor, envs, angle, args.delay, args.execution_horizon)
            print(f"| {label} | {angle:g}° | {row['kept']:.1f}° | {row['free']:.1f}° | {row['re-aimed']:.1f}° |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
