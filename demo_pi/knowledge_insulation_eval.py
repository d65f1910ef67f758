"""Knowledge insulation on the built-in task: π0.5 trained from scratch with and without it, scored as it learns.

    python -m demo_pi.knowledge_insulation_eval [--output runs/knowledge_insulation] [--steps 4000] [--every 250]
                                                [--episodes 2000] [--eval-episodes 100] [--fast-vocab 256]
                                                [--plot docs/knowledge_insulation.png]
    python -m demo_pi.knowledge_insulation_eval --scores runs/knowledge_insulation/scores.jsonl   (table and plot again)

Both runs are the recipe's (`python -m demo_pi.recipe --fast-vocab 256`, with and without `--knowledge-insulation`):
the same demonstrations, FAST tokenizer, vocabulary, prompt budget (`max_token_len`), initial weights, seed,
schedule and batches; only `pi train --knowledge-insulation` differs. They train side by side, one process each
(one thread each unless OMP_NUM_THREADS says otherwise), saving a checkpoint every `--every` steps, which this
process copies as it appears (`pi train` keeps the last two) and scores while training goes on: the success rate
on the held-out episodes (seeds from `HELD_OUT_SEEDS_START`, as `pi demo` scores them) and the losses on the
demonstrations of 32 other held-out seeds (the same noise and flow times for every checkpoint): the flow loss of
both, and the FAST loss of the insulated run. Each score is appended to `<output>/scores.jsonl`; at the end it
prints a Markdown table and draws the plot (PNG, drawn with Pillow).

What a training step costs with it: `python -m benchmarks.knowledge_insulation`.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .demonstrations import write_demonstrations
from .recipe import (DEFAULT_FAST_VOCAB, HELD_OUT_SEEDS_START, TRAIN_SEEDS_START, fast_prompt_budget, fit_fast_tokenizer,
                     init_model_folder, train_arguments)

MODES = ("without KI", "with KI")  # the runs, and the table's and the plot's labels
FOLDERS = {"without KI": "without_KI", "with KI": "with_KI"}  # each run's folder (and log, and scored copies)
LOSS_SEEDS = 32  # held-out demonstrations the losses are measured on (seeds after the evaluation episodes')
GOAL = 0.9  # the question: which run reaches 90% held-out success in fewer steps


def prepare(run: Path, episodes: int, perturbation: float, fast_vocab: int, seed: int) -> dict[str, Path]:
    """The recipe's demonstrations, FAST tokenizer and initial model (one for both runs), and the loss set."""
    dataset = write_demonstrations(run / "demonstrations", range(TRAIN_SEEDS_START, TRAIN_SEEDS_START + episodes),
                                   perturbation)
    start = HELD_OUT_SEEDS_START + 100_000
    losses = write_demonstrations(run / "loss_demonstrations", range(start, start + LOSS_SEEDS), perturbation)
    fast, longest = fit_fast_tokenizer(dataset, fast_vocab)
    fast_tokenizer = fast.save_pretrained(run / "fast_tokenizer")
    init = init_model_folder(run / "init", "pi05", seed, fast_vocab, fast_prompt_budget(longest))
    print(f"FAST tokenizer of {fast_vocab} tokens: at most {longest} per chunk; max_token_len {fast_prompt_budget(longest)}",
          file=sys.stderr)
    return {"dataset": dataset, "losses": losses, "fast_tokenizer": fast_tokenizer, "init": init}


class Scorer:
    """Held-out success and losses of a checkpoint: the rollout seeds, and fixed loss batches (with their noise and
    flow times) in both forms, with FAST targets (the insulated model's) and without."""

    def __init__(self, paths: dict[str, Path], eval_episodes: int, batch_size: int = 32):
        from processing_pi import FastActionTokenizer, PiProcessor
        from training_pi import LeRobotDataset, PiCollator, compute_norm_stats

        from .demonstrations import IMAGE_KEYS

        camera_map = {key: camera for camera, key in IMAGE_KEYS.items()}
        self.processor = PiProcessor.from_pretrained(paths["init"])
        # the statistics `pi train --recompute-stats` normalises with
        self.processor.norm_stats = compute_norm_stats(LeRobotDataset(paths["dataset"], 8, camera_map))
        insulated = self.processor.replace(action_tokenizer=FastActionTokenizer.from_pretrained(paths["fast_tokenizer"]),
                                                 knowledge_insulation=True)
        frames = LeRobotDataset(paths["losses"], self.processor.action_horizon, camera_map)
        generator, times = torch.Generator().manual_seed(0), np.random.default_rng(0)
        self.batches = []
        for start in range(0, len(frames) - batch_size + 1, batch_size):
            samples = [frames[i] for i in range(start, start + batch_size)]
            flow, fast = PiCollator(self.processor)(samples), PiCollator(insulated)(samples)
            noise = torch.randn(flow["actions"].shape, generator=generator)
            timestep = torch.from_numpy(times.beta(1.5, 1.0, batch_size) * 0.999 + 0.001).float()  # the model's law
            self.batches.append(({**flow, "noise": noise, "timestep": timestep}, {**fast, "noise": noise, "timestep": timestep}))
        self.seeds = range(HELD_OUT_SEEDS_START, HELD_OUT_SEEDS_START + eval_episodes)

    def __call__(self, folder: Path, insulated: bool) -> dict:
        """The model in `folder`, its losses measured as the run trains it (`insulated`: with the FAST loss)."""
        from transformers import AutoModel

        from .demo import rollout

        import modeling_pi  # noqa: F401  (registers "pi")

        model = AutoModel.from_pretrained(folder).eval()
        model.config.knowledge_insulation = insulated  # the initial model's losses in both forms; sampling ignores it
        played = rollout(model, self.processor, self.seeds)
        flow, fast = [], []
        with torch.no_grad():
            for plain, with_fast in self.batches:
                out = model(**(with_fast if insulated else plain))
                flow.append(float(out.flow_loss if insulated else out.loss))
                fast.append(float(out.fast_loss) if insulated else None)
        return {"success": played.success_rate,
                "flow_loss": float(np.mean(flow)), "fast_loss": float(np.mean(fast)) if insulated else None}


def _copy_checkpoints(output: Path, copies: Path, done: set[int]) -> list[int]:
    """Copies the weights of every complete `checkpoint-N` in `output` not yet copied (`pi train` writes the trainer
    state last and keeps only the last two checkpoints) to `copies/N`; the steps copied."""
    new = []
    for checkpoint in output.glob("checkpoint-*"):
        step = int(checkpoint.name.split("-")[1])
        if step in done or not (checkpoint / "trainer_state.json").is_file():
            continue
        (copies / str(step)).mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "model.safetensors"):
            shutil.copy(checkpoint / name, copies / str(step) / name)
        done.add(step)
        new.append(step)
    return sorted(new)


def train_and_score(run: Path, paths: dict[str, Path], score: Scorer, steps: int, every: int, batch_size: int,
                    learning_rate: float) -> list[dict]:
    """Both `pi train` runs side by side; every checkpoint scored as it appears, and the initial model as step 0.
    A run that fails stops the other."""
    results = run / "scores.jsonl"
    rows = [{"mode": mode, "step": 0, **score(paths["init"], mode == "with KI")} for mode in MODES]
    results.write_text("".join(json.dumps(row) + "\n" for row in rows))
    environment = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    processes, copied, minutes, started = {}, {mode: set() for mode in MODES}, {}, time.perf_counter()
    try:
        for mode in MODES:
            fast_tokenizer = paths["fast_tokenizer"] if mode == "with KI" else None
            arguments = train_arguments(paths["init"], paths["dataset"], run / FOLDERS[mode], steps, batch_size,
                                        learning_rate, fast_tokenizer=fast_tokenizer, save_steps=every)
            with open(run / f"{FOLDERS[mode]}.log", "w") as log:
                processes[mode] = subprocess.Popen([sys.executable, "-m", "pi_cli", "train", *arguments], stdout=log,
                                                   stderr=subprocess.STDOUT, env=environment)
        while len(minutes) < len(MODES):
            finished = {mode for mode, process in processes.items() if process.poll() is not None}
            for mode in MODES:  # a finished run's last checkpoints are copied before it counts as done
                for step in _copy_checkpoints(run / FOLDERS[mode], run / "steps" / FOLDERS[mode], copied[mode]):
                    row = {"mode": mode, "step": step, **score(run / "steps" / FOLDERS[mode] / str(step), mode == "with KI")}
                    rows.append(row)
                    with results.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    print(f"{mode}, step {step}: success {row['success']:.0%}, flow loss {row['flow_loss']:.4f}"
                          + (f", FAST loss {row['fast_loss']:.3f}" if row["fast_loss"] is not None else ""), file=sys.stderr)
                if mode in finished and mode not in minutes:
                    if processes[mode].returncode:
                        raise RuntimeError(f"pi train ({mode}) failed: see {run / FOLDERS[mode]}.log")
                    minutes[mode] = (time.perf_counter() - started) / 60
                    print(f"{mode}: training done after {minutes[mode]:.1f} min", file=sys.stderr)
            time.sleep(0 if len(minutes) == len(MODES) else 5)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.terminate()
    return rows


def steps_to(rows: list[dict], mode: str, goal: float = GOAL) -> int | None:
    """The first scored step at which `mode` reaches `goal` held-out success (None: never)."""
    return next((row["step"] for row in sorted(rows, key=lambda row: row["step"])
                 if row["mode"] == mode and row["success"] >= goal), None)


def markdown_table(rows: list[dict]) -> str:
    """One row per scored step: held-out success and losses of both runs."""
    by = {(row["mode"], row["step"]): row for row in rows}
    steps = sorted({row["step"] for row in rows})
    lines = ["| steps | success, without KI | success, with KI | flow loss, without KI | flow loss, with KI | FAST loss, with KI |",
             "|---|---|---|---|---|---|"]
    for step in steps:
        plain, insulated = by.get(("without KI", step)), by.get(("with KI", step))
        cells = [f"{row['success']:.0%}" if row else "" for row in (plain, insulated)]
        cells += [f"{row['flow_loss']:.4f}" if row else "" for row in (plain, insulated)]
        cells.append(f"{insulated['fast_loss']:.3f}" if insulated else "")
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


PANEL_WIDTH, PANEL_HEIGHT, LEFT, TOP, BOTTOM, RIGHT = 460, 340, 60, 50, 50, 20
LEGEND_HEIGHT = 40
LINES = {  # (mode, quantity) -> (label, colour, dashed)
    ("without KI", "flow_loss"): ("flow loss, without KI", (90, 90, 90), False),
    ("with KI", "flow_loss"): ("flow loss, with KI", (40, 90, 220), False),
    ("with KI", "fast_loss"): ("FAST loss (nats per token), with KI", (40, 90, 220), True),
}
SUCCESS = {"without KI": (90, 90, 90), "with KI": (40, 90, 220)}


def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _polyline(pen: ImageDraw.ImageDraw, points: list, color, width: int = 3, dashed: bool = False, dash: float = 8) -> None:
    if not dashed:
        pen.line(points, fill=color, width=width)
        return
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        length = max(((x1 - x0) ** 2 + (y1 - y0) ** 2) ** 0.5, 1e-9)
        for start in np.arange(0, length, 2 * dash):
            a, b = start / length, min(start + dash, length) / length
            pen.line((x0 + a * (x1 - x0), y0 + a * (y1 - y0), x0 + b * (x1 - x0), y0 + b * (y1 - y0)), fill=color, width=width)


def _axes(pen: ImageDraw.ImageDraw, left: int, title: str, max_step: int, ticks: list, to_y, tick_label) -> tuple:
    """A panel's frame, title, step axis and y ticks; returns the function mapping a step to x."""
    x0, x1, y1 = left + LEFT, left + PANEL_WIDTH - RIGHT, PANEL_HEIGHT - BOTTOM
    font = _font(14)
    pen.text((x0, TOP // 2), title, fill="black", font=_font(16), anchor="lm")
    for tick in ticks:
        pen.line((x0, to_y(tick), x1, to_y(tick)), fill=(225, 225, 225))
        pen.text((x0 - 6, to_y(tick)), tick_label(tick), fill="black", font=font, anchor="rm")
    pen.line((x0, TOP, x0, y1, x1, y1), fill="black")
    to_x = lambda step: x0 + step / max_step * (x1 - x0)  # noqa: E731
    for step in range(0, max_step + 1, 1000 if max_step >= 2000 else 500):
        pen.text((to_x(step), y1 + 8), str(step), fill="black", font=font, anchor="mt")
    pen.text(((x0 + x1) / 2, y1 + 28), "training steps (batch 32)", fill="black", font=font, anchor="mt")
    return to_x


def plot(rows: list[dict], path: str | Path) -> Path:
    """Held-out success (left) and the losses on a log scale (right) against the training steps, per run."""
    image = Image.new("RGB", (2 * PANEL_WIDTH, PANEL_HEIGHT + LEGEND_HEIGHT), "white")
    pen = ImageDraw.Draw(image)
    max_step = max(row["step"] for row in rows)
    series = lambda mode, key: sorted((row["step"], row[key]) for row in rows if row["mode"] == mode)  # noqa: E731
    y0, y1 = TOP, PANEL_HEIGHT - BOTTOM

    success_y = lambda value: y1 - value * (y1 - y0)  # noqa: E731
    to_x = _axes(pen, 0, "held-out success (100 episodes)", max_step, [0, 0.2, 0.4, 0.6, 0.8, 1.0], success_y,
                 lambda tick: f"{tick:.0%}")
    for x in range(LEFT, PANEL_WIDTH - RIGHT, 12):
        pen.line((x, success_y(GOAL), min(x + 6, PANEL_WIDTH - RIGHT), success_y(GOAL)), fill="black", width=1)
    for mode, color in SUCCESS.items():
        points = [(to_x(step), success_y(value)) for step, value in series(mode, "success")]
        pen.line(points, fill=color, width=3)
        for x, y in points:
            pen.ellipse((x - 3, y - 3, x + 3, y + 3), fill=color)

    values = [value for row in rows for value in (row["flow_loss"], row["fast_loss"]) if value]
    low, high = np.floor(np.log10(min(values))), np.ceil(np.log10(max(values)))
    loss_y = lambda value: y1 - (np.log10(value) - low) / (high - low) * (y1 - y0)  # noqa: E731
    to_x = _axes(pen, PANEL_WIDTH, "losses on held-out demonstrations (log scale)", max_step,
                 [10.0 ** power for power in range(int(low), int(high) + 1)], loss_y, lambda tick: f"{tick:g}")
    for (mode, key), (_, color, dashed) in LINES.items():
        points = [(to_x(step), loss_y(value)) for step, value in series(mode, key) if value]
        _polyline(pen, points, color, dashed=dashed)

    font, y, left = _font(14), PANEL_HEIGHT + 14, LEFT
    legend = [("without KI", SUCCESS["without KI"], False), ("with KI", SUCCESS["with KI"], False),
              ("FAST loss, with KI (dashed)", SUCCESS["with KI"], True), (f"{GOAL:.0%} success", (0, 0, 0), True)]
    for label, color, dashed in legend:
        _polyline(pen, [(left, y), (left + 30, y)], color, width=1 if "success" in label else 3, dashed=dashed, dash=6)
        pen.text((left + 38, y), label, fill="black", font=font, anchor="lm")
        left += 38 + pen.textlength(label, font=font) + 40
    image.save(path)
    return Path(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo_pi.knowledge_insulation_eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="runs/knowledge_insulation", help="run folder (replaced)")
    parser.add_argument("--episodes", type=int, default=2000, help="expert demonstrations")
    parser.add_argument("--perturbation", type=float, default=0.3)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--every", type=int, default=250, help="steps between scored checkpoints")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-episodes", type=int, default=100, help="held-out episodes per checkpoint")
    parser.add_argument("--fast-vocab", type=int, default=DEFAULT_FAST_VOCAB)
    parser.add_argument("--plot", default="docs/knowledge_insulation.png")
    parser.add_argument("--scores", metavar="FILE", help="print the table and draw the plot of an earlier run's "
                        "scores.jsonl, training nothing")
    args = parser.parse_args(argv)
    if args.scores:
        rows = [json.loads(line) for line in Path(args.scores).read_text().splitlines()]
        report(rows, args.plot)
        return 0
    start = time.perf_counter()
    run = Path(args.output)
    if run.exists():
        shutil.rmtree(run)
    paths = prepare(run, args.episodes, args.perturbation, args.fast_vocab, args.seed)
    score = Scorer(paths, args.eval_episodes, args.batch_size)
    rows = train_and_score(run, paths, score, args.steps, args.every, args.batch_size, args.learning_rate)
    print(f"\n{args.steps} steps, {(time.perf_counter() - start) / 60:.1f} min in all")
    report(rows, args.plot)
    return 0


def report(rows: list[dict], plot_path: str | Path) -> None:
    """The table, the step at which each run first reaches the goal, and the plot."""
    print(f"\n{markdown_table(rows)}\n")
    last = max(row["step"] for row in rows)
    for mode in MODES:
        reached = steps_to(rows, mode)
        print(f"{mode}: {GOAL:.0%} held-out success first at step {reached}" if reached is not None else
              f"{mode}: never {GOAL:.0%} held-out success in {last} steps")
    print(f"wrote {plot(rows, plot_path)}")


if __name__ == "__main__":
    sys.exit(main())
