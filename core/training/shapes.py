"""The demo model's data: coloured shapes at named positions and sizes, with captions.

Every example is a pure function of ``(seed, index)``, so a dataset is a seed, a training run
can resume at any step, and held-out sets are just other seeds. Pictures are 64x64 RGB,
uint8, drawn with hard edges in numpy (no font, no PIL drawing: bit-identical everywhere).

Caption grammar (``caption``/``parse_caption`` are inverses)::

    a {size} {colour} {shape} {where} on a {background} background
    where: at the top left | at the top | at the top right | on the left | in the center |
           on the right | at the bottom left | at the bottom | at the bottom right

The ``outlined`` style (hollow shapes: a ring in the shape's colour) is the LoRA's style data.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

SIZE = 64
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 30),
    "green": (30, 170, 50),
    "blue": (30, 80, 230),
    "purple": (140, 50, 190),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle")
SIZES: dict[str, int] = {"small": 10, "medium": 16, "large": 24}  # extent in pixels
# Row and column names of the 3x3 grid; cell centres at 12, 32 and 52 pixels.
ROWS = ("top", "middle", "bottom")
COLS = ("left", "center", "right")
CENTRES = (12.0, 32.0, 52.0)
POSITIONS = tuple(f"{r} {c}" for r in ROWS for c in COLS)
POSITION_PHRASES = {
    "top left": "at the top left", "top center": "at the top", "top right": "at the top right",
    "middle left": "on the left", "middle center": "in the center", "middle right": "on the right",
    "bottom left": "at the bottom left", "bottom center": "at the bottom", "bottom right": "at the bottom right",
}
PHRASE_POSITIONS = {v: k for k, v in POSITION_PHRASES.items()}
JITTER_POS = 2.0  # +- pixels around the cell centre
JITTER_SIZE = 1.0  # +- pixels around the nominal extent
OUTLINE_WIDTH = 3.0  # ring thickness of the outlined style, pixels


@dataclass(frozen=True)
class Scene:
    size: str
    colour: str
    shape: str
    position: str  # "top left" ... "bottom right" (row then column)
    background: str
    dx: float = 0.0  # jitter, pixels
    dy: float = 0.0
    ds: float = 0.0
    outlined: bool = False

    @property
    def centre(self) -> tuple[float, float]:
        row, col = self.position.split()
        return CENTRES[COLS.index(col)] + self.dx, CENTRES[ROWS.index(row)] + self.dy

    @property
    def extent(self) -> float:
        return SIZES[self.size] + self.ds

    def attributes(self) -> dict[str, str]:
        return {"colour": self.colour, "shape": self.shape, "size": self.size, "position": self.position,
                "background": self.background}


def caption(scene: Scene) -> str:
    return f"a {scene.size} {scene.colour} {scene.shape} {POSITION_PHRASES[scene.position]} on a {scene.background} background"


def parse_caption(text: str) -> dict[str, str]:
    """The attributes a caption asks for (inverse of ``caption``)."""
    words = text.strip().lower()
    if not words.startswith("a ") or " on a " not in words or not words.endswith(" background"):
        raise ValueError(f"not a demo caption: {text!r}")
    head, background = words[2:-len(" background")].rsplit(" on a ", 1)
    size, colour, shape, where = head.split(" ", 3)
    if size not in SIZES or colour not in COLOURS or shape not in SHAPES or where not in PHRASE_POSITIONS or background not in COLOURS:
        raise ValueError(f"not a demo caption: {text!r}")
    return {"colour": colour, "shape": shape, "size": size, "position": PHRASE_POSITIONS[where], "background": background}


def random_scene(rng: np.random.Generator, outlined: bool = False) -> Scene:
    names = list(COLOURS)
    colour = names[rng.integers(len(names))]
    others = [c for c in names if c != colour]
    return Scene(
        size=list(SIZES)[rng.integers(len(SIZES))],
        colour=colour,
        shape=SHAPES[rng.integers(len(SHAPES))],
        position=POSITIONS[rng.integers(len(POSITIONS))],
        background=others[rng.integers(len(others))],
        dx=float(rng.uniform(-JITTER_POS, JITTER_POS)),
        dy=float(rng.uniform(-JITTER_POS, JITTER_POS)),
        ds=float(rng.uniform(-JITTER_SIZE, JITTER_SIZE)),
        outlined=outlined,
    )


def scene_at(seed: int, index: int, outlined: bool = False) -> Scene:
    return random_scene(np.random.default_rng([seed, index]), outlined)


_YY, _XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64) + 0.5


def shape_mask(shape: str, cx: float, cy: float, extent: float, size: int = SIZE, height: float | None = None) -> np.ndarray:
    """Boolean (size, size) mask of a filled shape whose bounding box is ``extent`` wide (and
    ``height`` high; default: as wide)."""
    yy, xx = (_YY, _XX) if size == SIZE else (np.mgrid[0:size, 0:size].astype(np.float64) + 0.5)
    u, v = (xx - cx) / (extent / 2), (yy - cy) / ((height or extent) / 2)
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0)
    if shape == "triangle":  # apex up
        return (v >= -1.0) & (v <= 1.0) & (np.abs(u) <= (v + 1.0) / 2)
    raise ValueError(f"unknown shape {shape!r}")


def scene_mask(scene: Scene) -> np.ndarray:
    cx, cy = scene.centre
    mask = shape_mask(scene.shape, cx, cy, scene.extent)
    if scene.outlined:
        inner = scene.extent - 2 * OUTLINE_WIDTH * (2.2 if scene.shape == "triangle" else 1.0)
        if inner > 0:
            # The triangle's inner copy is moved down so the ring is about even all round.
            shift = OUTLINE_WIDTH * 0.6 if scene.shape == "triangle" else 0.0
            mask &= ~shape_mask(scene.shape, cx, cy + shift, inner)
    return mask


def render(scene: Scene) -> np.ndarray:
    """-> (64, 64, 3) uint8."""
    image = np.empty((SIZE, SIZE, 3), np.uint8)
    image[:] = COLOURS[scene.background]
    image[scene_mask(scene)] = COLOURS[scene.colour]
    return image


@dataclass
class Batch:
    images: "torch.Tensor"  # (B, 3, 64, 64) float in [-1, 1]  # noqa: F821
    masks: "torch.Tensor"  # (B, 1, 64, 64) float, 1 on the shape
    captions: list[str]
    scenes: list[Scene]


def make_batch(seed: int, indices, outlined: bool = False) -> Batch:
    import torch

    scenes = [scene_at(seed, int(i), outlined) for i in indices]
    images = np.stack([render(s) for s in scenes])
    masks = np.stack([scene_mask(replace(s, outlined=False)) for s in scenes])
    return Batch(
        images=torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0,
        masks=torch.from_numpy(masks)[:, None].float(),
        captions=[caption(s) for s in scenes],
        scenes=scenes,
    )


def random_prompts(seed: int, count: int) -> list[str]:
    return [caption(scene_at(seed, i)) for i in range(count)]


# Dataset seeds: training streams use TRAIN_SEED; evaluation never sees them.
TRAIN_SEED = 1
HELDOUT_SEED = 1_000_003
PROMPT_SEED = 2_000_029
