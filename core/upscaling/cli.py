"""``python -m core upscale``: one image or a folder of images through an upscaler, to PNGs.

    python -m core upscale --image IN.png --upscaler 4x-UltraSharp --scale 2 --out DIR
    python -m core upscale --input-dir DIR --upscaler Lanczos --width 1024 --height 768 --out DIR
    python -m core upscale --image IN.png --upscaler x4-upscaler-ema --scale 4 --prompt "a cat" --noise-level 30

Each result is saved next to the others in ``--out`` (never over an existing file) with A1111's
extras infotext; the input's own generation parameters are kept in front of it.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from core.errors import EngineError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from core.upscaling.upscale import DEFAULT_OVERLAP, DEFAULT_TILE

    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", help="one input image")
    source.add_argument("--input-dir", help="a folder: every image in it (not its subfolders)")
    parser.add_argument("--upscaler", required=True,
                        help="None, Lanczos, Nearest, Bicubic, or a model file's name (stem) from the models folders "
                             "(ESRGAN/, RealESRGAN/, SwinIR/, ...; x4 upscaler checkpoints in Stable-diffusion/ and LDSR/)")
    parser.add_argument("--scale", type=float, default=None, help="factor (default 2 unless --width/--height is given)")
    parser.add_argument("--width", type=int, default=None, help="target width (with --height; alone keeps the aspect ratio)")
    parser.add_argument("--height", type=int, default=None, help="target height")
    parser.add_argument("--out", default="outputs/extras-images", help="folder for the PNGs")
    parser.add_argument("--tile", type=int, default=DEFAULT_TILE, help=f"tile size in input pixels, 0: no tiling (default {DEFAULT_TILE})")
    parser.add_argument("--tile-overlap", type=int, default=DEFAULT_OVERLAP, help=f"overlap between tiles in input pixels (default {DEFAULT_OVERLAP})")
    parser.add_argument("--models-dir", default=None, help="models folder holding ESRGAN/, RealESRGAN/, SwinIR/, ... (default models/)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "bf16"),
                        help="auto: bf16 on CPUs with native bf16 (AMX, AVX512-BF16), else fp32; half precision on GPUs; "
                             "each where the model supports it")
    x4 = parser.add_argument_group("x4 upscaler", "sampling settings of the SD x4 upscaler (checkpoints in "
                                   "models/Stable-diffusion or models/LDSR); refused for other upscalers")
    x4.add_argument("--prompt", default=None, help="what the picture shows (default: none)")
    x4.add_argument("--negative-prompt", default=None, help="default: none")
    x4.add_argument("--noise-level", type=int, default=None, help="0..350, noise added to the input (default 20)")
    x4.add_argument("--steps", type=int, default=None, help="sampling steps (default 20)")
    x4.add_argument("--cfg-scale", type=float, default=None, help="guidance with a prompt (default 9)")
    x4.add_argument("--seed", type=int, default=None, help="default 0")


X4_OPTIONS = ("prompt", "negative_prompt", "noise_level", "steps", "cfg_scale", "seed")


def _inputs(args) -> list[Path]:
    if args.image is not None:
        return [Path(args.image)]
    folder = Path(args.input_dir)
    if not folder.is_dir():
        raise EngineError(f"--input-dir: {folder}: no such folder")
    found = [p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not found:
        raise EngineError(f"--input-dir: {folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in it")
    return found


def _file_label(path: Path) -> str:
    """The input's stem as the tail of the output name (NNNNN-STEM.png), in safe characters."""
    label = re.sub(r"[^\w.-]+", "_", path.stem).strip("._") or "image"
    return label[:80]


def run_upscale(args) -> list[Path]:
    from core.devices import PRECISIONS, resolve_device
    from core.images import save_png
    from core.upscaling.extras import ExtrasJob, run_extras
    from core.upscaling.registry import DEFAULT_MODELS_ROOT, ModelCache, load_upscaler
    from core.upscaling.upscale import open_image

    if args.scale is not None and (args.width or args.height):
        raise EngineError("give --scale or --width/--height, not both")
    if args.tile < 0 or args.tile_overlap < 0:
        raise EngineError("--tile and --tile-overlap must not be negative")
    by_size = bool(args.width or args.height)
    x4_changes = {name: getattr(args, name) for name in X4_OPTIONS if getattr(args, name, None) is not None}
    job = ExtrasJob(upscaler=args.upscaler, scale=None if by_size else (2.0 if args.scale is None else args.scale),
                    size=(args.width, args.height) if by_size else None, tile=args.tile, overlap=args.tile_overlap,
                    x4=x4_changes)
    models_root = Path(args.models_dir) if args.models_dir else DEFAULT_MODELS_ROOT
    device = resolve_device(args.device)
    dtype = None if args.precision == "auto" else PRECISIONS[args.precision]

    inputs = _inputs(args)
    info = job.upscalers(models_root)[0]  # a bad name fails before any work
    if x4_changes and info.kind != "x4":
        given = ", ".join("--" + name.replace("_", "-") for name in x4_changes)
        raise EngineError(f"{given}: only for the x4 upscaler, not {info.name}")
    cache = ModelCache()  # the model is loaded once for all the pictures, and a broken one fails before any
    load_upscaler(info, device, dtype, cache)
    written: list[Path] = []
    failures = 0
    for path in inputs:
        try:
            result = run_extras(open_image(path), job, models_root=models_root, device=device, dtype=dtype, cache=cache)
            saved = save_png(result.image, args.out, _file_label(path), result.infotext)
        except EngineError as e:
            if len(inputs) == 1:
                raise
            failures += 1
            print(f"error: {e}", file=sys.stderr)
            continue
        written.append(saved)
        print(saved)
    if failures:
        raise EngineError(f"{failures} of {len(inputs)} images failed")
    return written
