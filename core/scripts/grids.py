"""Grids of pictures, as A1111 draws them: cells in rows, optional labels along the top and the
left (with the margins between cells A1111's scripts offer), saved beside a job's pictures in
``<kind>-grids/DATE/`` with the first picture's infotext, never over an existing file."""
from __future__ import annotations

import datetime as dt
import math
import textwrap
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from core.images import save_png

# A1111's label colours: black text on white.
LABEL_TEXT = (0, 0, 0)
LABEL_BACKGROUND = (255, 255, 255)


def grid_rows(count: int) -> int:
    """How many rows A1111 gives ``count`` pictures when no row count is set: the square root,
    rounded (a 2x3 batch lies in 2 rows of 3)."""
    return max(1, min(count, round(math.sqrt(count))))


def image_grid(images: Sequence[Image.Image], rows: int | None = None, margin: int = 0) -> Image.Image:
    """``images`` in ``rows`` rows (A1111's default when None), left to right, top to bottom;
    every cell the size of the first picture, ``margin`` pixels between cells."""
    rows = rows or grid_rows(len(images))
    columns = math.ceil(len(images) / rows)
    width, height = images[0].size
    grid = Image.new("RGB", (columns * width + (columns - 1) * margin, rows * height + (rows - 1) * margin),
                     LABEL_BACKGROUND)
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        cell = image if image.size == (width, height) else image.resize((width, height), Image.LANCZOS)
        grid.paste(cell.convert("RGB"), (column * (width + margin), row * (height + margin)))
    return grid


def _font(cell_width: int, cell_height: int) -> ImageFont.FreeTypeFont:
    """A1111's label size: a 25th of a cell's width plus height (40 px for 512x512 cells)."""
    return ImageFont.load_default(size=max(8, (cell_width + cell_height) // 25))


# A label: a text, or lines of (text, active) as the prompt matrix writes them: the parts a
# row or column leaves out are drawn grey and struck through, as A1111 draws them.
INACTIVE_TEXT = (153, 153, 153)


def _lines(label, font: ImageFont.FreeTypeFont, width: int) -> list[tuple[str, bool]]:
    """A label as (line, active) pairs, each line no wider than ``width`` pixels (long words are
    kept whole)."""
    entries = [(label, True)] if isinstance(label, str) else list(label)
    average = max(1.0, font.getlength("x"))
    out = []
    for text, active in entries:
        if text:
            out += [(line, active) for line in textwrap.wrap(text, width=max(1, int(width / average))) or [text]]
    return out


def _line_height(font: ImageFont.FreeTypeFont) -> int:
    return font.getbbox("Ay")[3] + max(2, font.size // 4)


def _draw_lines(draw: ImageDraw.ImageDraw, lines: list[tuple[str, bool]], font, centre_x: float,
                centre_y: float) -> None:
    line = _line_height(font)
    top = centre_y - len(lines) * line / 2
    for index, (text, active) in enumerate(lines):
        middle = top + index * line + line / 2
        draw.text((centre_x, middle), text, font=font, fill=LABEL_TEXT if active else INACTIVE_TEXT, anchor="mm")
        if not active:
            half = font.getlength(text) / 2
            draw.line((centre_x - half, middle, centre_x + half, middle), fill=INACTIVE_TEXT,
                      width=max(1, font.size // 12))


def labelled_grid(images: Sequence[Image.Image], columns_labels: Sequence, rows_labels: Sequence,
                  margin: int = 0) -> Image.Image:
    """``images`` (row after row) in a grid of len(rows_labels) rows, the column labels drawn
    above it and the row labels to its left, as A1111's draw_grid_annotations lays them out:
    the left strip three quarters of a cell wide, the top strip as tall as its longest label.
    A label is a text or lines of (text, active)."""
    rows = max(1, len(rows_labels))
    grid = image_grid(images, rows, margin)
    cell_width, cell_height = images[0].size
    font = _font(cell_width, cell_height)
    left = cell_width * 3 // 4 if any(rows_labels) else 0
    column_lines = [_lines(label, font, cell_width - 8) for label in columns_labels]
    row_lines = [_lines(label, font, left - 8) for label in rows_labels] if left else []
    pad = max(4, font.size // 2)
    top = max((len(lines) * _line_height(font) for lines in column_lines), default=0)
    top = top + 2 * pad if top else 0
    if not top and not left:
        return grid
    canvas = Image.new("RGB", (grid.width + left, grid.height + top), LABEL_BACKGROUND)
    canvas.paste(grid, (left, top))
    draw = ImageDraw.Draw(canvas)
    for column, lines in enumerate(column_lines):
        _draw_lines(draw, lines, font, left + column * (cell_width + margin) + cell_width / 2, top / 2)
    for row, lines in enumerate(row_lines):
        _draw_lines(draw, lines, font, left / 2, top + row * (cell_height + margin) + cell_height / 2)
    return canvas


def grid_folder(output_dir: str | Path, kind: str) -> Path:
    """Where a ``kind`` job's grids go: ``<output_dir>/<kind>-grids/DATE`` (A1111's
    txt2img-grids and img2img-grids)."""
    return Path(output_dir) / f"{kind}-grids" / dt.date.today().isoformat()


def save_grid(grid: Image.Image, output_dir: str | Path, kind: str, seed: int, infotext: str) -> Path:
    """Save ``grid`` with ``infotext`` (A1111 gives a grid its first picture's) as the next
    numbered file of the grids folder; an existing file is never replaced (core/images.py)."""
    return save_png(grid, grid_folder(output_dir, kind), seed, infotext)
