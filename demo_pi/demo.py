"""`pi demo`: the shipped policy (or `--model FOLDER`) drives the tabletop task on held-out episodes.

    pi demo [--model FOLDER] [--episodes 20] [--seed 1000000] [--execution-horizon 4] [--delay 0]
            [--mode sync|async|rtc] [--output demo.png] [--gif demo.gif]

Each episode is a fixed seed (`--seed`, `--seed + 1`, ...; the demonstrations used other seeds). The
policy sees both cameras, the prompt and the state, and returns a chunk of velocities; the first
`--execution-horizon` s of them are executed (`--replan-steps` is the same option), then it is asked again,
until the end-effector reaches the named block or the step budget runs out. The episodes run side by side:
one model call per chunk for all unfinished episodes. It prints the success rate, the boundary jump ratio
and the time per chunk, and draws every episode's scene, prompt, path and outcome into one PNG (and, with
`--gif`, an animation of the first episode): see `pictures`.

Inference latency (`--delay` d) is simulated as d control steps (the budget counts them) between the request
for a chunk and its arrival, spent as `--mode` says:

- sync: the robot stands still (zero velocity), then executes the new chunk's actions 0..s − 1;
- async: the next chunk is requested once s actions of the current one have run, with the observation of that
  moment; the robot goes on with the current chunk's actions s..s + d − 1, then switches to the new chunk at
  index d (its first d actions belong to steps already past); each chunk contributes s actions;
- rtc: as async, and the request passes the current chunk's actions from index s on as `prev_actions`, with
  `inference_delay` d and `execution_horizon` s: real-time chunking (guided sampling, or a fixed prefix for a
  model trained with `--rtc-max-delay`).

In every mode the robot waits d steps for the first chunk and starts it at index 0. With d = 0 sync and async
execute the same actions. The boundary jump ratio is the mean change of velocity ‖a_t − a_{t−1}‖ where a_t
comes from a different chunk than a_{t−1}, over the same mean within a chunk (`Rollout.boundary_jumps`).
"""

import argparse
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from .pictures import draw, picture_extensions, save_animation
from .recipe import HELD_OUT_SEEDS_START
from .tabletop import CAMERAS, STEP_BUDGET, Tabletop

SHIPPED_MODEL = files(__package__) / "model"
SHIPPED_RTC_MODEL = files(__package__) / "model_rtc"  # the shipped model fine-tuned with `--rtc-max-delay 3`
REPLAN_STEPS = 4  # of each 8-action chunk, as openpi's clients execute a prefix of each chunk
MODES = ("sync", "async", "rtc")


@dataclass
class Episode:
    seed: int
    env: Tabletop
    path: list = field(default_factory=list)  # the end-effector's positions, from the start
    actions: list = field(default_factory=list)  # every velocity [2] as commanded (zeros while the robot stands still)
    sources: list = field(default_factory=list)  # for each, the round whose chunk it came from (None: standing still)
    chunk: np.ndarray | None = None  # the chunk being executed, as robot actions [H, 2]
    normalised: torch.Tensor | None = None  # the same chunk as the model returned it [H, D]

    def execute(self, actions, source: int | None) -> None:
        """Steps through `actions` [N, 2] until the episode ends; `source`: the round that made them."""
        for action in actions:
            if self.env.done:
                return
            self.env.step(action)
            self.path.append(self.env.effector.copy())
            self.actions.append(np.asarray(action, dtype=np.float64))
            self.sources.append(source)


def jumps(actions: list, sources: list) -> tuple[list[float], list[float]]:
    """The velocity changes ‖a_t − a_{t−1}‖ of one episode, split into those where a_t comes from another chunk
    than a_{t−1} (across a boundary) and those within a chunk; steps standing still (source None) are left out,
    so the first action after a stop is compared with the last before it."""
    moving = [(np.asarray(action), source) for action, source in zip(actions, sources) if source is not None]
    across, within = [], []
    for (before, source_before), (action, source) in zip(moving, moving[1:]):
        (across if source != source_before else within).append(float(np.linalg.norm(action - before)))
    return across, within


class Rollout(NamedTuple):
    """The episodes as they ended, and the seconds of each model call (one chunk for all unfinished episodes)."""

    episodes: list[Episode]
    latencies: list[float]

    @property
    def success_rate(self) -> float:
        return sum(episode.env.success for episode in self.episodes) / len(self.episodes)

    @property
    def boundary_jumps(self) -> tuple[float, float]:
        """Mean velocity change across chunk boundaries and within chunks, over every step of every episode."""
        across, within = [], []
        for episode in self.episodes:
            episode_across, episode_within = jumps(episode.actions, episode.sources)
            across += episode_across
            within += episode_within
        return _mean(across), _mean(within)

    @property
    def boundary_jump_ratio(self) -> float:
        across, within = self.boundary_jumps
        return across / within if within else math.nan


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def check_schedule(config, execution_horizon: int, delay: int, mode: str) -> None:
    """Errors that name the option: s and d must fit the chunk, and rtc needs a flow model."""
    horizon = config.action_horizon
    if mode not in MODES:
        raise ValueError(f"--mode is one of {', '.join(MODES)}, got {mode!r}.")
    if not 1 <= execution_horizon <= horizon or delay < 0:
        raise ValueError(f"Need 1 <= --execution-horizon <= the chunk's {horizon} actions and --delay >= 0, "
                         f"got {execution_horizon} and {delay}.")
    if mode != "sync" and not delay <= execution_horizon <= horizon - delay:
        raise ValueError(f"--mode {mode} executes the current chunk while the next is computed: it needs --delay <= "
                         f"--execution-horizon <= {horizon} - --delay, got --delay {delay}, --execution-horizon {execution_horizon}.")
    if mode == "rtc" and not config.is_flow:
        raise ValueError(f"--mode rtc needs a flow model (π0, π0.5), not {config.variant}.")


def rollout(model, processor, seeds, num_steps: int | None = None, execution_horizon: int = REPLAN_STEPS,
            delay: int = 0, mode: str = "sync") -> Rollout:
    """Runs the episodes to the end in rounds, one model call per round for all unfinished episodes. A round
    requests a chunk with the observation of that moment; for the `delay` steps it takes, the robot stands
    still (sync, and before the first chunk) or goes on with the current chunk from index `execution_horizon`
    (async, rtc); then it executes the new chunk from index 0 (after standing still) or `delay`, up to
    `execution_horizon`. The episodes keep every executed action and the round whose chunk it came from."""
    check_schedule(model.config, execution_horizon, delay, mode)
    s, d = execution_horizon, delay
    episodes = [Episode(int(seed), Tabletop.reset(int(seed))) for seed in seeds]
    for episode in episodes:
        episode.path.append(episode.env.effector.copy())
    generator = torch.Generator(model.device).manual_seed(0)
    latencies = []
    options = {"num_steps": num_steps} if num_steps is not None else {}
    round_ = 0
    while active := [episode for episode in episodes if not episode.env.done]:
        waiting = mode == "sync" or round_ == 0  # nothing to execute while the chunk is computed
        continuing = {}
        if mode == "rtc" and not waiting:
            remainder = torch.stack([episode.normalised[s:] for episode in active])  # [B, H − s, D]
            prev_actions = torch.nn.functional.pad(remainder, (0, 0, 0, s))  # aligned to the new chunk's first step
            continuing = {"prev_actions": prev_actions.to(model.device), "inference_delay": d, "execution_horizon": s}
        observations = [episode.env.observation() for episode in active]
        start = time.perf_counter()
        inputs = processor(images={camera: [o["images"][camera] for o in observations] for camera in processor.image_keys},
                           prompt=[o["prompt"] for o in observations], state=np.stack([o["state"] for o in observations]))
        with torch.no_grad():  # not inference_mode: guided sampling differentiates through the action expert
            generated = model.generate_actions(**inputs.to(model.device), generator=generator, **options, **continuing).cpu()
        chunks = processor.post_process(generated).actions.numpy()
        latencies.append(time.perf_counter() - start)
        for episode, chunk, normalised in zip(active, chunks, generated):
            if waiting:
                episode.execute(np.zeros((d, chunk.shape[-1])), None)
            else:
                episode.execute(episode.chunk[s:s + d], round_ - 1)
            episode.chunk, episode.normalised = chunk, normalised
            episode.execute(chunk[0 if waiting else d:s], round_)
        round_ += 1
    return Rollout(episodes, latencies)


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
    parser.add_argument("--execution-horizon", "--replan-steps", dest="execution_horizon", type=int, default=REPLAN_STEPS,
                        help="actions executed per chunk (s)")
    parser.add_argument("--delay", type=int, default=0, help="control steps a model call takes (d), simulated")
    parser.add_argument("--mode", choices=MODES, default="sync",
                        help="what the robot does while a chunk is computed: stand still (sync), go on with the current "
                             "chunk (async), and also pass it to the model (rtc: real-time chunking)")
    parser.add_argument("--output", default="demo.png", help="PNG of the episodes and their trajectories")
    parser.add_argument("--gif", help="also write an animation of the first episode (the table from above)")
    parser.add_argument("--device", default="cpu")
    return parser


def option_problem(args: argparse.Namespace, folder: Path) -> str | None:
    """What is wrong with the options, found before any episode runs; None if nothing."""
    from modeling_pi.input_checks import check_device

    if not (folder / "config.json").is_file():
        return f"{folder} is not a model folder."
    if args.episodes < 1:
        return f"--episodes must be at least 1, got {args.episodes}."
    if args.num_steps is not None and args.num_steps < 1:
        return f"--num-steps must be at least 1, got {args.num_steps}."
    if args.seed < 0:
        return f"--seed must be at least 0, got {args.seed}."
    if args.delay >= STEP_BUDGET:
        return f"--delay {args.delay}: an episode has {STEP_BUDGET} steps, so no action would run; pass fewer."
    for flag, path, kinds, kind in (("--output", args.output, picture_extensions(), "a picture Pillow writes, e.g. .png"),
                                    ("--gif", args.gif, {".gif"}, "a .gif")):
        if not path:
            continue
        if Path(path).is_dir():
            return f"{flag} {path}: a folder; give a file name."
        if not Path(path).resolve().parent.is_dir():
            return f"{flag} {path}: its folder does not exist."
        if Path(path).suffix.lower() not in kinds:
            return f"{flag} {path}: the file must be {kind}."
    try:
        check_device(args.device, "--device")
    except ValueError as err:
        return str(err)
    return None


def run(args: argparse.Namespace) -> int:
    from transformers import AutoModel, AutoProcessor

    import modeling_pi  # noqa: F401  (registers "pi")

    folder = Path(args.model) if args.model else Path(str(SHIPPED_MODEL))
    problem = option_problem(args, folder)
    if problem:
        print(f"pi demo: error: {problem}", file=sys.stderr)
        return 1
    processor = AutoProcessor.from_pretrained(folder)
    other = [camera for camera in processor.image_keys if camera not in CAMERAS]
    if other:
        print(f"pi demo: error: {folder} reads the cameras {', '.join(processor.image_keys)}; the task's are "
              f"{', '.join(CAMERAS)}: pi demo runs models trained on it (python -m demo_pi.recipe).", file=sys.stderr)
        return 1
    model = AutoModel.from_pretrained(folder).to(args.device).eval()
    seeds = range(args.seed, args.seed + args.episodes)
    try:
        result = rollout(model, processor, seeds, args.num_steps, args.execution_horizon, args.delay, args.mode)
    except ValueError as err:
        print(f"pi demo: error: {err}", file=sys.stderr)
        return 1
    episodes, latencies = result
    successes = sum(episode.env.success for episode in episodes)
    rate = f"{successes}/{len(episodes)} episodes reached the named block ({100 * successes / len(episodes):.0f}%)"
    print(f"{model.config.variant} from {folder}, {args.mode} mode, delay {args.delay}, execution horizon "
          f"{args.execution_horizon}: {rate}")
    across, within = result.boundary_jumps
    print(f"boundary jump ratio {result.boundary_jump_ratio:.2f} (mean velocity change {across:.4f} between chunks, "
          f"{within:.4f} within a chunk)")
    print(f"per chunk ({len(episodes)} episodes batched at first): median {1000 * statistics.median(latencies):.1f} ms, "
          f"{len(latencies)} chunks")
    draw(episodes, f"{model.config.variant} from {args.model or 'demo_pi/model (shipped)'}: {rate}").save(args.output)
    print(f"wrote {args.output}")
    if args.gif:
        save_animation(episodes[0], args.gif)
        print(f"wrote {args.gif}")
    return 0
