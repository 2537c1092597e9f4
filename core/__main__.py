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
    t2i.add_argument("--sampler", default="Euler", help="A1111 sampler name, e.g. Euler, 'Euler a', 'DPM++ 2M' (old names like 'DPM++ 2M Karras' work)")
    t2i.add_argument("--scheduler", default="Automatic", help="schedule type: Automatic, Karras, Exponential, ...")
    t2i.add_argument("--subseed", type=int, default=-1, help="variation seed")
    t2i.add_argument("--subseed-strength", type=float, default=0.0, help="variation strength, 0..1")
    t2i.add_argument("--seed-resize-from", type=int, nargs=2, default=(0, 0), metavar=("W", "H"), help="resize seed from width/height")
    t2i.add_argument("--eta", type=float, default=None, help="noise for ancestral/SDE samplers (sampler default if unset)")
    t2i.add_argument("--s-noise", type=float, default=None)
    t2i.add_argument("--emphasis", default="Original", choices=("Original", "No norm", "None"))
    t2i.add_argument("--embeddings-dir", default=None, help="textual-inversion embeddings (default models/embeddings)")
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
        width=args.width, height=args.height, sampler=args.sampler, scheduler=args.scheduler, batch_size=args.batch_size,
        batch_count=args.batch_count, clip_skip=args.clip_skip, checkpoint=args.model, subseed=args.subseed,
        subseed_strength=args.subseed_strength, seed_resize_from_w=args.seed_resize_from[0],
        seed_resize_from_h=args.seed_resize_from[1], eta=args.eta, s_noise=args.s_noise, emphasis=args.emphasis,
    )
    params.validate()
    model_path = Path(args.model)
    if not model_path.exists():
        raise EngineError(f"--model: {args.model}: no such file or folder")
    engine = Engine(device=args.device, precision=args.precision, ckpt_dir=model_path.parent, embeddings_dir=args.embeddings_dir)
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
