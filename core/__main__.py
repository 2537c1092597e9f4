"""Headless command line: ``python -m core txt2img --model PATH --prompt ...``.

Errors the user can fix print one line (``error: ...``) and exit with status 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.errors import EngineError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description="Generate images without the UI.")
    sub = parser.add_subparsers(dest="command", required=True)
    t2i = sub.add_parser("txt2img", help="text to image")
    t2i.add_argument("--model", required=True, help="checkpoint file (.safetensors/.ckpt) or diffusers folder")
    t2i.add_argument("--prompt", default="")
    t2i.add_argument("--negative", default="", help="negative prompt")
    t2i.add_argument("--steps", type=int, default=20)
    t2i.add_argument("--cfg", type=float, default=7.0, help="CFG scale")
    t2i.add_argument("--seed", type=int, default=-1, help="-1 for a random seed")
    t2i.add_argument("--width", type=int, default=512)
    t2i.add_argument("--height", type=int, default=512)
    t2i.add_argument("--sampler", default="Euler")
    t2i.add_argument("--batch-size", type=int, default=1)
    t2i.add_argument("--batch-count", type=int, default=1)
    t2i.add_argument("--clip-skip", type=int, default=1)
    t2i.add_argument("--out", default="outputs/txt2img-images", help="folder for the PNGs")
    t2i.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    t2i.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "bf16"))
    t2i.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def run_txt2img(args) -> list[Path]:
    from tqdm import tqdm

    from core.engine import Engine
    from core.images import save_png
    from core.params import GenerationParams

    params = GenerationParams(
        prompt=args.prompt, negative_prompt=args.negative, steps=args.steps, cfg_scale=args.cfg, seed=args.seed,
        width=args.width, height=args.height, sampler=args.sampler, batch_size=args.batch_size,
        batch_count=args.batch_count, clip_skip=args.clip_skip, checkpoint=args.model,
    )
    params.validate()
    model_path = Path(args.model)
    if not model_path.exists():
        raise EngineError(f"--model: {args.model}: no such file or folder")
    engine = Engine(device=args.device, precision=args.precision, ckpt_dir=model_path.parent)
    total = params.steps * params.batch_count
    bar = tqdm(total=total, disable=args.no_progress, unit="step", file=sys.stderr)

    def progress(p):
        bar.n = p.batch * p.steps + p.step
        bar.refresh()

    try:
        results = engine.txt2img(params, progress=progress, save=False, allow_paths=True)
    finally:
        bar.close()
    paths = []
    for result in results:
        path = save_png(result.image, args.out, result.seed, result.infotext)
        paths.append(path)
        print(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "txt2img":
            run_txt2img(args)
    except EngineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
