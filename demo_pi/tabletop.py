"""A small 2-D tabletop task that needs vision and language: "move to the red block".

The table is the unit square. Three blocks of different colours lie on it, each at the centre of a
cell of a 4 × 4 grid; the end-effector starts anywhere else. The prompt names one block's colour, so the policy must read the instruction and find that
colour in the images. State: the end-effector position [x, y]. Action: its velocity for one step
(at most `MAX_SPEED` per step). Success: the end-effector within `SUCCESS_RADIUS` of the named block
within `STEP_BUDGET` steps. Two cameras, drawn with numpy: `scene` sees the whole table from above,
`wrist` moves with the end-effector (a view centred on it, wide enough to hold every block), both 32 × 32
pixels. Everything is a function of the seed.
"""

from dataclasses import dataclass

import numpy as np

COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 230), "yellow": (230, 210, 40)}
NUM_BLOCKS = 3
MAX_SPEED = 0.06
SUCCESS_RADIUS = 0.05
STEP_BUDGET = 40
IMAGE_SIZE = 32
CAMERAS = ("scene", "wrist")
_TABLE, _BORDER, _EFFECTOR = (150, 150, 150), (40, 40, 40), (255, 255, 255)
BLOCK_HALF_WIDTH = 0.07  # of the table
WRIST_VIEW = 1.6  # table widths the wrist camera sees: blocks lie within 0.8 of the end-effector
GRID = 4  # blocks sit at the centres of a 4 × 4 grid: the scene camera's 8-pixel patches
_START_CLEARANCE = 0.2


def prompt_for(color: str) -> str:
    return f"move to the {color} block"


@dataclass
class Tabletop:
    """One episode: the blocks, the target and the end-effector; `step` moves it."""

    blocks: dict[str, np.ndarray]
    target: str
    effector: np.ndarray
    steps: int = 0

    @classmethod
    def reset(cls, seed: int) -> "Tabletop":
        rng = np.random.default_rng(seed)
        colors = [str(color) for color in rng.choice(list(COLORS), size=NUM_BLOCKS, replace=False)]
        cells = rng.choice(GRID * GRID, size=NUM_BLOCKS, replace=False)
        blocks = {color: (np.array([cell % GRID, cell // GRID]) + 0.5) / GRID for color, cell in zip(colors, cells)}
        while True:  # the end-effector starts anywhere clear of the blocks
            effector = rng.uniform(0.05, 0.95, size=2)
            if min(np.linalg.norm(effector - center) for center in blocks.values()) >= _START_CLEARANCE:
                break
        return cls(blocks, target=colors[rng.integers(NUM_BLOCKS)], effector=effector)

    @property
    def prompt(self) -> str:
        return prompt_for(self.target)

    @property
    def state(self) -> np.ndarray:
        return self.effector.astype(np.float32)

    @property
    def success(self) -> bool:
        return bool(np.linalg.norm(self.effector - self.blocks[self.target]) <= SUCCESS_RADIUS)

    @property
    def done(self) -> bool:
        return self.success or self.steps >= STEP_BUDGET

    def step(self, action) -> None:
        action = np.asarray(action, dtype=np.float64).reshape(2)
        speed = np.linalg.norm(action)
        if speed > MAX_SPEED:
            action = action * (MAX_SPEED / speed)
        self.effector = np.clip(self.effector + action, 0.0, 1.0)
        self.steps += 1

    def expert_action(self) -> np.ndarray:
        """Straight to the target at full speed, slowing only for the last step."""
        offset = self.blocks[self.target] - self.effector
        distance = np.linalg.norm(offset)
        return (offset if distance <= MAX_SPEED else offset * (MAX_SPEED / distance)).astype(np.float32)

    def observation(self) -> dict:
        """{"images": {camera: uint8 [32, 32, 3]}, "prompt": str, "state": float32 [2]}."""
        return {"images": {"scene": self.render(), "wrist": self.render_wrist()}, "prompt": self.prompt, "state": self.state}

    def render(self, size: int = IMAGE_SIZE) -> np.ndarray:
        """The table from above, `size` pixels wide: blocks as squares, the end-effector as a white ring."""
        image = np.empty((size, size, 3), dtype=np.uint8)
        image[:] = _TABLE
        for color, center in self.blocks.items():
            _square(image, center, BLOCK_HALF_WIDTH, COLORS[color])
        _ring(image, self.effector, 0.045, _EFFECTOR)
        return image

    def render_wrist(self, size: int = IMAGE_SIZE) -> np.ndarray:
        """A `size`-pixel view centred on the end-effector, `WRIST_VIEW` table widths wide (off the table:
        dark), so that every block is in view and its offset from the centre is the way to go."""
        scale = round(size / WRIST_VIEW)  # pixels per table width
        margin = size // 2
        canvas = np.empty((scale + 2 * margin, scale + 2 * margin, 3), dtype=np.uint8)
        canvas[:] = _BORDER
        canvas[margin:margin + scale, margin:margin + scale] = self.render(scale)
        row, col = (np.clip(self.effector, 0, 1) * scale).round().astype(int)[::-1]
        return canvas[row:row + size, col:col + size].copy()


def _pixels(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres in table coordinates: x grows to the right (columns), y downwards (rows)."""
    size = image.shape[0]
    centers = (np.arange(size) + 0.5) / size
    return centers[None, :], centers[:, None]


def _square(image: np.ndarray, center, half_width: float, color) -> None:
    x, y = _pixels(image)
    inside = (np.abs(x - center[0]) <= half_width) & (np.abs(y - center[1]) <= half_width)
    image[inside] = color


def _ring(image: np.ndarray, center, radius: float, color) -> None:
    x, y = _pixels(image)
    distance = np.sqrt((x - center[0]) ** 2 + (y - center[1]) ** 2)
    image[(distance <= radius) & (distance >= radius * 0.5)] = color
