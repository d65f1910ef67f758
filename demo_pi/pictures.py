"""The pictures `pi demo` writes: every episode on one sheet (`demo.png`) and one episode as an animation
(`demo.gif`).

Drawn by hand with Pillow (no plotting library is a dependency). A panel is one episode: a header with its
number, its prompt and its outcome, then the table as the episode started, with the named block outlined, the
end-effector's start (white ring) and the path it took, green where it reached the named block and red where it
did not, ending in a dot. The table sits inside a dark margin, and paths are drawn over a black outline, so that
a path pressed against the table's edge (the end-effector is clipped to the table) stays in view. The sheet has
a title with the success rate and a legend; the animation draws the path as it goes and holds the last frame
with the outcome.
"""

from PIL import Image, ImageDraw, ImageFont

from .tabletop import BLOCK_HALF_WIDTH, STEP_BUDGET, Tabletop

TABLE = 240  # pixels of a table on the sheet
ANIMATION_TABLE = 480  # pixels of the table in the animation
MARGIN = 12  # dark frame around each table: where a path along the table's edge is drawn
HEADER, TEXT = 46, 17  # panel header (prompt and outcome, two lines) and its text, in pixels
ANIMATION_HEADER, ANIMATION_TEXT = 70, 27
TITLE = 40
TITLE_SIZE = 22
LEGEND = 40
REACHED, MISSED, UNDER_WAY = (0, 170, 60), (230, 20, 20), (255, 255, 255)
OUTLINE, FRAME, PAPER, INK = (0, 0, 0), (55, 55, 55), (255, 255, 255), (20, 20, 20)
FRAME_MS, LAST_FRAME_MS = 150, 2500


def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def outcome(episode) -> str:
    if episode.env.success:
        return f"reached it in {episode.env.steps} steps"
    return f"not reached in {episode.env.steps} steps"


def _color(episode) -> tuple[int, int, int]:
    return REACHED if episode.env.success else MISSED


def panel_size(table: int = TABLE, header: int = HEADER) -> tuple[int, int]:
    return table + 2 * MARGIN, header + table + 2 * MARGIN


def sheet_size(episodes: int, columns: int = 5, title: str = "") -> tuple[int, int]:
    """Wide enough for the panels, the title and the legend (a sheet of one or two panels is narrower than both)."""
    width, height = panel_size()
    rows = -(-episodes // columns)
    pen = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text = max(legend_width(), 20 + int(pen.textlength(title, font=_font(TITLE_SIZE))))
    return max(min(episodes, columns) * width, text), TITLE + rows * height + LEGEND


def _pixel(point, table: int) -> tuple[float, float]:
    """Table coordinates (x right, y down, in [0, 1]) -> pixel of a table drawn `table` wide inside the margin."""
    return MARGIN + float(point[0]) * table, MARGIN + float(point[1]) * table


def _path(pen: ImageDraw.ImageDraw, points: list, table: int, color, width: int) -> None:
    line = [_pixel(point, table) for point in points]
    if len(line) > 1:
        pen.line(line, fill=OUTLINE, width=width + 4, joint="curve")
        pen.line(line, fill=color, width=width, joint="curve")
    end_x, end_y = line[-1]
    radius = width + 2
    pen.ellipse((end_x - radius, end_y - radius, end_x + radius, end_y + radius), fill=color, outline=OUTLINE, width=2)


def table_picture(episode, table: int, step: int | None = None, color=None) -> Image.Image:
    """The table at `step` (default: the start, with the whole path) with the path up to there, in its margin."""
    at = 0 if step is None else step
    scene = Tabletop(episode.env.blocks, episode.env.target, episode.path[at]).render(table)
    picture = Image.new("RGB", (table + 2 * MARGIN, table + 2 * MARGIN), FRAME)
    picture.paste(Image.fromarray(scene), (MARGIN, MARGIN))
    pen = ImageDraw.Draw(picture)
    center, half = _pixel(episode.env.blocks[episode.env.target], table), BLOCK_HALF_WIDTH * table + 3
    pen.rectangle((center[0] - half, center[1] - half, center[0] + half, center[1] + half), outline=OUTLINE, width=3)
    path = episode.path if step is None else episode.path[: step + 1]
    _path(pen, path, table, color or _color(episode), width=max(3, table // 80))
    return picture


def _header(picture: Image.Image, first: str, second: str, second_color, height: int = HEADER,
            size: int = TEXT) -> None:
    pen, font = ImageDraw.Draw(picture), _font(size)
    pen.rectangle((0, 0, picture.width, height - 1), fill=PAPER)
    pen.text((6, height // 4), first, fill=INK, font=font, anchor="lm")
    pen.text((6, height * 3 // 4), second, fill=second_color, font=font, anchor="lm")


def panel(episode, number: int) -> Image.Image:
    """One episode on the sheet: header (number, prompt, outcome) over its table and path."""
    width, height = panel_size()
    picture = Image.new("RGB", (width, height), PAPER)
    picture.paste(table_picture(episode, TABLE), (0, HEADER))
    _header(picture, f"{number}. {episode.env.prompt}", outcome(episode), _color(episode))
    ImageDraw.Draw(picture).rectangle((0, 0, width - 1, height - 1), outline=PAPER, width=2)  # gap between panels
    return picture


def legend_width() -> int:
    return _legend(Image.new("RGB", (4000, LEGEND)), 0)


def _legend(sheet: Image.Image, top: int) -> int:
    """Draws the legend from `top`; returns where it ends on the right."""
    pen, font = ImageDraw.Draw(sheet), _font(16)
    x, y = 10, top + LEGEND // 2
    for color, label in ((REACHED, "reached the named block"), (MISSED, "did not reach it")):
        pen.line((x, y, x + 36, y), fill=OUTLINE, width=8)
        pen.line((x, y, x + 36, y), fill=color, width=4)
        pen.ellipse((x + 30, y - 6, x + 42, y + 6), fill=color, outline=OUTLINE, width=2)
        x = _legend_label(pen, x + 50, y, label, font)
    pen.rectangle((x, y - 10, x + 20, y + 10), fill=(150, 150, 150), outline=OUTLINE, width=3)
    x = _legend_label(pen, x + 28, y, "the named block (outlined)", font)
    pen.rectangle((x - 4, y - 12, x + 22, y + 12), fill=(150, 150, 150))
    pen.ellipse((x, y - 9, x + 18, y + 9), outline=UNDER_WAY, width=4)
    return _legend_label(pen, x + 28, y, "where the end-effector started; a dot: where it ended", font) - 14


def _legend_label(pen: ImageDraw.ImageDraw, x: int, y: int, text: str, font) -> int:
    pen.text((x, y), text, fill=INK, font=font, anchor="lm")
    return x + int(pen.textlength(text, font=font)) + 24


def draw(episodes: list, title: str, columns: int = 5) -> Image.Image:
    """Every episode's panel on one sheet, under `title` and over the legend."""
    sheet = Image.new("RGB", sheet_size(len(episodes), columns, title), PAPER)
    width, height = panel_size()
    for i, episode in enumerate(episodes):
        sheet.paste(panel(episode, i + 1), ((i % columns) * width, TITLE + (i // columns) * height))
    ImageDraw.Draw(sheet).text((10, TITLE // 2), title, fill=INK, font=_font(TITLE_SIZE), anchor="lm")
    _legend(sheet, sheet.height - LEGEND)
    return sheet


def animation_frames(episode) -> tuple[list[Image.Image], list[int]]:
    """One frame per step of the episode (the path drawn as it goes), the last with the outcome; the frames and
    their durations in milliseconds."""
    frames = []
    for step in range(len(episode.path)):
        last = step == len(episode.path) - 1
        frame = Image.new("RGB", panel_size(ANIMATION_TABLE, ANIMATION_HEADER), PAPER)
        table = table_picture(episode, ANIMATION_TABLE, step, _color(episode) if last else UNDER_WAY)
        frame.paste(table, (0, ANIMATION_HEADER))
        status = (outcome(episode), _color(episode)) if last else (f"step {step} of at most {STEP_BUDGET}", INK)
        _header(frame, f'"{episode.env.prompt}"', *status, ANIMATION_HEADER, ANIMATION_TEXT)
        frames.append(frame)
    return frames, [FRAME_MS] * (len(frames) - 1) + [LAST_FRAME_MS]


def picture_extensions() -> set[str]:
    """The file name endings Pillow writes a still picture for (a name's ending picks the format)."""
    Image.init()
    return {ending for ending, kind in Image.registered_extensions().items() if kind in Image.SAVE}


def save_animation(episode, path) -> None:
    frames, durations = animation_frames(episode)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations, loop=0)
