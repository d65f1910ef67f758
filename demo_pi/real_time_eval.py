"""Real-time chunking on the built-in task under simulated inference delay.

    python -m demo_pi.real_time_eval [--episodes 100] [--delays 0 1 2 3] [--execution-horizon 4]
                                     [--output docs/real_time_chunking.png]

For each delay d (control steps a model call takes) it runs the held-out episodes (`pi demo`'s default seeds)
three ways with each shipped π0.5: sync (the robot stands still while the chunk is computed), async (it goes on
with the current chunk, then switches to the new one) and rtc, where the shipped `demo_pi/model` guides the new
chunk towards what is still being executed and `demo_pi/model_rtc` (fine-tuned with `--rtc-max-delay 3` on
noisier demonstrations) keeps the new chunk's first d actions as they are; see `demo` for the modes and the
boundary jump ratio. Each model runs in every mode, so that the fine-tune's own data is not credited to
real-time chunking. It prints a Markdown table of the success rate and the boundary jump ratio per mode and
delay, and plots both against the delay (PNG, drawn with Pillow).
"""

import argparse
import sys
import time
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .demo import REPLAN_STEPS, SHIPPED_MODEL, SHIPPED_RTC_MODEL, rollout
from .recipe import HELD_OUT_SEEDS_START

# (label, model folder, mode) of each line of the table and the plot
RUNS = (
    ("sync (demo_pi/model)", SHIPPED_MODEL, "sync"),
    ("async, naive (demo_pi/model)", SHIPPED_MODEL, "async"),
    ("rtc, guided (demo_pi/model)", SHIPPED_MODEL, "rtc"),
    ("sync (demo_pi/model_rtc)", SHIPPED_RTC_MODEL, "sync"),
    ("async, naive (demo_pi/model_rtc)", SHIPPED_RTC_MODEL, "async"),
    ("rtc, trained prefix (demo_pi/model_rtc)", SHIPPED_RTC_MODEL, "rtc"),
)
COLORS = ((90, 90, 90), (230, 120, 20), (40, 90, 220), (175, 175, 175), (245, 190, 130), (0, 160, 70))
GOAL_RATIO = 1.5  # the goal: the jump at a boundary within 1.5× the jump within a chunk


def evaluate_grid(episodes: int, delays, execution_horizon: int) -> dict:
    """{(label, delay): Rollout} for every run of `RUNS` at every delay, on the first `episodes` held-out seeds."""
    from transformers import AutoModel, AutoProcessor

    import modeling_pi  # noqa: F401  (registers "pi")

    seeds = range(HELD_OUT_SEEDS_START, HELD_OUT_SEEDS_START + episodes)
    models = {}
    results = {}
    for label, folder, mode in RUNS:
        if folder not in models:
            models[folder] = AutoModel.from_pretrained(str(folder)).eval(), AutoProcessor.from_pretrained(str(folder))
        for delay in delays:
            start = time.perf_counter()
            result = rollout(*models[folder], seeds, execution_horizon=execution_horizon, delay=delay, mode=mode)
            results[label, delay] = result
            across, within = result.boundary_jumps
            print(f"{label}, d = {delay}: success {result.success_rate:.0%}, boundary jump ratio "
                  f"{result.boundary_jump_ratio:.2f} ({across:.4f} / {within:.4f}), {time.perf_counter() - start:.0f} s",
                  file=sys.stderr)
    return results


def markdown_table(results: dict, delays, cell) -> str:
    """One row per run, one column per delay; a cell: `cell(rollout)`."""
    lines = ["| mode | " + " | ".join(f"d = {delay}" for delay in delays) + " |", "|---" * (len(delays) + 1) + "|"]
    for label, _, _ in RUNS:
        lines.append(f"| {label} | " + " | ".join(cell(results[label, delay]) for delay in delays) + " |")
    return "\n".join(lines)


def success_and_ratio(result) -> str:
    return f"{result.success_rate:.0%} · {result.boundary_jump_ratio:.2f}"


def mean_jumps(result) -> str:
    across, within = result.boundary_jumps
    return f"{across:.4f} / {within:.4f}"


PANEL_WIDTH, PANEL_HEIGHT, LEFT, TOP, BOTTOM, RIGHT = 460, 340, 60, 50, 50, 20
LEGEND_HEIGHT = 84


def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _panel(pen: ImageDraw.ImageDraw, left: int, title: str, delays, lines: dict, top_value: float, ticks,
           tick_label, goal: float | None = None) -> None:
    """Axes at `left`, the delays along x and `lines` {label: [value per delay]} scaled to [0, top_value]."""
    x0, x1, y0, y1 = left + LEFT, left + PANEL_WIDTH - RIGHT, TOP, PANEL_HEIGHT - BOTTOM
    font = _font(14)

    def point(i: int, value: float) -> tuple[float, float]:
        return x0 + i / max(len(delays) - 1, 1) * (x1 - x0), y1 - min(value, top_value) / top_value * (y1 - y0)

    pen.text((x0, TOP // 2), title, fill="black", font=_font(16), anchor="lm")
    for tick in ticks:
        y = point(0, tick)[1]
        pen.line((x0, y, x1, y), fill=(225, 225, 225))
        pen.text((x0 - 6, y), tick_label(tick), fill="black", font=font, anchor="rm")
    if goal is not None:
        y = point(0, goal)[1]
        for x in range(x0, x1, 12):
            pen.line((x, y, min(x + 6, x1), y), fill="black", width=2)
        pen.text((x1 - 4, y - 4), f"goal: {goal}x", fill="black", font=font, anchor="rb")
    pen.line((x0, y0, x0, y1, x1, y1), fill="black")
    for i, delay in enumerate(delays):
        x = point(i, 0)[0]
        pen.text((x, y1 + 8), str(delay), fill="black", font=font, anchor="mt")
    pen.text(((x0 + x1) / 2, y1 + 28), "delay d (control steps)", fill="black", font=font, anchor="mt")
    for (label, values), color in zip(lines.items(), COLORS):
        points = [point(i, value) for i, value in enumerate(values)]
        pen.line(points, fill=color, width=3)
        for x, y in points:
            pen.ellipse((x - 4, y - 4, x + 4, y + 4), fill=color)


def plot(results: dict, delays, path: str | Path) -> Path:
    """Success rate and boundary jump ratio against the delay, one line per run, side by side, with a legend."""
    image = Image.new("RGB", (2 * PANEL_WIDTH, PANEL_HEIGHT + LEGEND_HEIGHT), "white")
    pen = ImageDraw.Draw(image)
    success = {label: [100 * results[label, delay].success_rate for delay in delays] for label, _, _ in RUNS}
    ratios = {label: [results[label, delay].boundary_jump_ratio for delay in delays] for label, _, _ in RUNS}
    _panel(pen, 0, "held-out success rate", delays, success, 100, range(0, 101, 20), lambda tick: f"{tick}%")
    top = max(GOAL_RATIO, *(value for values in ratios.values() for value in values)) * 1.1
    step = 1 if top <= 8 else 2 if top <= 16 else 5
    _panel(pen, PANEL_WIDTH, "boundary jump ratio (between chunks / within one)", delays, ratios, top,
           range(0, int(top) + 1, step), str, goal=GOAL_RATIO)
    font, x, y = _font(14), LEFT, PANEL_HEIGHT + 10
    for i, ((label, _, _), color) in enumerate(zip(RUNS, COLORS)):
        column, row = divmod(i, 3)  # a column per model
        left, middle = x + column * PANEL_WIDTH, y + row * 24 + 8
        pen.line((left, middle, left + 30, middle), fill=color, width=3)
        pen.text((left + 38, middle), label, fill="black", font=font, anchor="lm")
    image.save(path)
    return Path(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo_pi.real_time_eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=100, help="held-out episodes per mode and delay")
    parser.add_argument("--delays", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--execution-horizon", type=int, default=REPLAN_STEPS)
    parser.add_argument("--output", default="docs/real_time_chunking.png", help="the plot (PNG)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    results = evaluate_grid(args.episodes, args.delays, args.execution_horizon)
    print(f"{args.episodes} held-out episodes, execution horizon {args.execution_horizon} "
          f"({(time.perf_counter() - start) / 60:.1f} min). A cell: success rate · boundary jump ratio\n")
    print(markdown_table(results, args.delays, success_and_ratio))
    print("\nA cell: mean velocity change between chunks / within a chunk (the ratio's terms; top speed 0.06)\n")
    print(markdown_table(results, args.delays, mean_jumps))
    print(f"\nwrote {plot(results, args.delays, args.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
