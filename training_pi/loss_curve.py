"""The training loss as a PNG beside the checkpoint, drawn with Pillow (already a dependency; no plotting stack)."""

from pathlib import Path

from PIL import Image, ImageDraw

WIDTH, HEIGHT, MARGIN = 640, 400, 50


def save_loss_curve(steps: list[int], losses: list[float], path: str | Path, title: str = "training loss") -> Path:
    if not losses:
        raise ValueError("No logged loss to plot.")
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    low, high = min(losses), max(losses)
    span_x, span_y = max(steps[-1] - steps[0], 1), max(high - low, 1e-12)

    def point(step, loss):
        x = MARGIN + (step - steps[0]) / span_x * (WIDTH - 2 * MARGIN)
        y = HEIGHT - MARGIN - (loss - low) / span_y * (HEIGHT - 2 * MARGIN)
        return x, y

    draw.line([(MARGIN, MARGIN), (MARGIN, HEIGHT - MARGIN), (WIDTH - MARGIN, HEIGHT - MARGIN)], fill="black")
    draw.line([point(s, v) for s, v in zip(steps, losses)] if len(losses) > 1 else [point(steps[0], losses[0])] * 2,
              fill="royalblue", width=2)
    draw.text((MARGIN, 15), title, fill="black")
    draw.text((5, MARGIN - 5), f"{high:.3g}", fill="black")
    draw.text((5, HEIGHT - MARGIN - 5), f"{low:.3g}", fill="black")
    draw.text((MARGIN, HEIGHT - MARGIN + 10), f"step {steps[0]}", fill="black")
    draw.text((WIDTH - MARGIN - 60, HEIGHT - MARGIN + 10), f"step {steps[-1]}", fill="black")
    image.save(path)
    return Path(path)
