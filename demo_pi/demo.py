"""`pi demo`: the shipped policy (or `--model FOLDER`) drives the tabletop task on held-out episodes.

    pi demo [--model FOLDER] [--episodes 20] [--seed 1000000] [--replan-steps 4] [--output demo.png] [--gif demo.gif]

Each episode is a fixed seed (`--seed`, `--seed + 1`, ...; the demonstrations used other seeds). The
policy sees both cameras, the prompt and the state, and returns a chunk of velocities; the first
`--replan-steps` are executed, then it is asked again, until the end-effector reaches the named block or the step budget
runs out. The episodes run side by side: one model call per chunk for all unfinished episodes. It
prints the success rate and the time per chunk, and draws every episode's scene, prompt, path and
outcome into one PNG (and, with `--gif`, an animation of the first episode): see `pictures`.
"""

import argparse
import statistics
import sys
import time
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

import numpy as np
import torch

from .pictures import draw, save_animation
from .recipe import HELD_OUT_SEEDS_START
from .tabletop import Tabletop

SHIPPED_MODEL = files(__package__) / "model"
REPLAN_STEPS = 4  # of each 8-action chunk, as openpi's clients execute a prefix of each chunk


@dataclass
class Episode:
    seed: int
    env: Tabletop
    path: list = field(default_factory=list)  # the end-effector's positions, from the start


def rollout(model, processor, seeds, num_steps: int | None = None,
            replan_steps: int = REPLAN_STEPS) -> tuple[list[Episode], list[float]]:
    """Runs the episodes to the end, executing the first `replan_steps` actions of each chunk before asking
    again; returns the episodes and the seconds of each model call (one chunk for all unfinished episodes)."""
    episodes = [Episode(int(seed), Tabletop.reset(int(seed))) for seed in seeds]
    for episode in episodes:
        episode.path.append(episode.env.effector.copy())
    generator = torch.Generator(model.device).manual_seed(0)
    latencies = []
    options = {"num_steps": num_steps} if num_steps else {}
    while active := [episode for episode in episodes if not episode.env.done]:
        observations = [episode.env.observation() for episode in active]
        start = time.perf_counter()
        inputs = processor(images={camera: [o["images"][camera] for o in observations] for camera in processor.image_keys},
                           prompt=[o["prompt"] for o in observations], state=np.stack([o["state"] for o in observations]))
        with torch.inference_mode():
            generated = model.generate_actions(**inputs.to(model.device), generator=generator, **options)
        chunks = processor.post_process(generated.cpu()).actions.numpy()
        latencies.append(time.perf_counter() - start)
        for episode, chunk in zip(active, chunks):
            for action in chunk[:replan_steps]:
                if episode.env.done:
                    break
                episode.env.step(action)
                episode.path.append(episode.env.effector.copy())
    return episodes, latencies


def evaluate(folder: str | Path, seeds) -> int:
    """How many of the episodes with these seeds the policy in `folder` completes."""
    from transformers import AutoModel, AutoProcessor

    import modeling_pi  # noqa: F401  (registers "pi")

    model, processor = AutoModel.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)
    episodes, _ = rollout(model, processor, seeds)
    return sum(episode.env.success for episode in episodes)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--model", default=None, help="a π folder trained on the task (default: the shipped π0.5)")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEEDS_START, help="seed of the first episode")
    parser.add_argument("--num-steps", type=int, help="flow steps (default: the model's)")
    parser.add_argument("--replan-steps", type=int, default=REPLAN_STEPS, help="actions executed per chunk")
    parser.add_argument("--output", default="demo.png", help="PNG of the episodes and their trajectories")
    parser.add_argument("--gif", help="also write an animation of the first episode (the table from above)")
    parser.add_argument("--device", default="cpu")
    return parser


def run(args: argparse.Namespace) -> int:
    from transformers import AutoModel, AutoProcessor

    import modeling_pi  # noqa: F401  (registers "pi")

    folder = Path(args.model) if args.model else Path(str(SHIPPED_MODEL))
    if not (folder / "config.json").is_file():
        print(f"pi demo: error: {folder} is not a model folder.", file=sys.stderr)
        return 1
    model = AutoModel.from_pretrained(folder).to(args.device).eval()
    processor = AutoProcessor.from_pretrained(folder)
    seeds = range(args.seed, args.seed + args.episodes)
    episodes, latencies = rollout(model, processor, seeds, args.num_steps, args.replan_steps)
    successes = sum(episode.env.success for episode in episodes)
    rate = f"{successes}/{len(episodes)} episodes reached the named block ({100 * successes / len(episodes):.0f}%)"
    print(f"{model.config.variant} from {folder}: {rate}")
    print(f"per chunk ({len(episodes)} episodes batched at first): median {1000 * statistics.median(latencies):.1f} ms, "
          f"{len(latencies)} chunks")
    draw(episodes, f"{model.config.variant} from {args.model or 'demo_pi/model (shipped)'}: {rate}").save(args.output)
    print(f"wrote {args.output}")
    if args.gif:
        save_animation(episodes[0], args.gif)
        print(f"wrote {args.gif}")
    return 0
