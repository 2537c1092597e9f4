"""img2img and inpainting with the demo model through the real Engine, measured by the
analyser, plus the sample grids of the model card.

- Inpainting: a flat background picture (no shape), a square mask around one grid cell, a prompt
  asking for a small or medium shape in that cell: the analyser must find the asked colour,
  shape and position (the engine's tests pin that pixels outside the mask stay the input's).
- img2img: a ground-truth picture and a prompt that changes only the shape's colour, strength
  0.75: the analyser must read the new colour with shape and position kept.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from core.training import shapes as S
from core.training.analyser import analyse

EXAMPLE_SEED = 3_000_017
MASK_HALF = 15  # pixels around the cell centre: a 30 px square holds a medium (16 px) shape with jitter


def demo_engine(checkpoint: Path, tmp: str, precision: str = "fp32"):
    from core.engine import Engine

    return Engine(device="cpu", precision=precision, ckpt_dir=Path(checkpoint).parent, output_dir=tmp,
                  hash_cache=Path(tmp) / "hashes.json", extensions_dir=Path(tmp) / "no-extensions")


def _params(prompt: str, checkpoint: Path, seed: int, steps: int, **extra):
    from core.params import GenerationParams

    return GenerationParams(prompt=prompt, width=S.SIZE, height=S.SIZE, steps=steps, cfg_scale=7.0, seed=seed,
                            checkpoint=Path(checkpoint).name, **extra)


def inpaint_examples(checkpoint: Path, count: int = 16, steps: int = 20, precision: str = "fp32") -> dict:
    rng = np.random.default_rng(EXAMPLE_SEED)
    names = list(S.COLOURS)
    hits, rows = 0, []
    with tempfile.TemporaryDirectory() as tmp:
        engine = demo_engine(checkpoint, tmp, precision)
        for i in range(count):
            background = names[rng.integers(len(names))]
            colour = [c for c in names if c != background][rng.integers(len(names) - 1)]
            shape = S.SHAPES[rng.integers(len(S.SHAPES))]
            size = ("small", "medium")[rng.integers(2)]
            position = S.POSITIONS[rng.integers(len(S.POSITIONS))]
            image = Image.new("RGB", (S.SIZE, S.SIZE), S.COLOURS[background])
            row, col = position.split()
            cx, cy = S.CENTRES[S.COLS.index(col)], S.CENTRES[S.ROWS.index(row)]
            mask = Image.new("L", image.size, 0)
            ImageDraw.Draw(mask).rectangle([cx - MASK_HALF, cy - MASK_HALF, cx + MASK_HALF - 1, cy + MASK_HALF - 1], fill=255)
            prompt = f"a {size} {colour} {shape} {S.POSITION_PHRASES[position]} on a {background} background"
            params = _params(prompt, checkpoint, seed=i, steps=steps, denoising_strength=1.0, mask_blur=2,
                             inpainting_fill=2)
            result = engine.img2img(params, image, mask, save=False)[0].image.convert("RGB")
            got = analyse(result).attributes()
            ok = all(got[k] == v for k, v in (("colour", colour), ("shape", shape), ("position", position)))
            hits += ok
            rows.append((image, mask.convert("RGB"), result, ok))
    return {"rate": hits / count, "count": count, "rows": rows}


def img2img_examples(checkpoint: Path, count: int = 16, steps: int = 20, strength: float = 0.75,
                     precision: str = "fp32") -> dict:
    rng = np.random.default_rng(EXAMPLE_SEED + 1)
    names = list(S.COLOURS)
    hits, rows = 0, []
    with tempfile.TemporaryDirectory() as tmp:
        engine = demo_engine(checkpoint, tmp, precision)
        for i in range(count):
            scene = S.random_scene(rng)
            source = Image.fromarray(S.render(scene))
            new = [c for c in names if c not in (scene.colour, scene.background)][rng.integers(len(names) - 2)]
            prompt = S.caption(scene).replace(f" {scene.colour} {scene.shape}", f" {new} {scene.shape}", 1)
            params = _params(prompt, checkpoint, seed=i, steps=steps, denoising_strength=strength)
            result = engine.img2img(params, source, save=False)[0].image.convert("RGB")
            got = analyse(result).attributes()
            ok = got["colour"] == new and got["shape"] == scene.shape and got["position"] == scene.position
            hits += ok
            rows.append((source, result, ok))
    return {"rate": hits / count, "count": count, "strength": strength, "rows": rows}


def grid(rows: list[list[Image.Image]], scale: int = 2, gap: int = 2) -> Image.Image:
    """Pictures in rows (all the same size), enlarged without smoothing, on a grey sheet."""
    w, h = rows[0][0].size
    cols = max(len(r) for r in rows)
    sheet = Image.new("RGB", (cols * (w * scale + gap) + gap, len(rows) * (h * scale + gap) + gap), (128, 128, 128))
    for r, row in enumerate(rows):
        for c, picture in enumerate(row):
            big = picture.convert("RGB").resize((w * scale, h * scale), Image.NEAREST)
            sheet.paste(big, (gap + c * (w * scale + gap), gap + r * (h * scale + gap)))
    return sheet


def to_pil(array) -> Image.Image:
    """(3, H, W) tensor or (H, W, 3) array in [0, 1] -> PIL."""
    a = np.asarray(array.permute(1, 2, 0) if hasattr(array, "permute") else array, dtype=np.float64)
    return Image.fromarray((np.clip(a, 0, 1) * 255).round().astype(np.uint8))
