"""Headless command line: ``python -m core txt2img|img2img|inpaint|upscale ...``.

Errors the user can fix print one line (``error: ...``) and exit with status 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.allocation import use_huge_pages
from core.errors import EngineError
from core.pipelines.masking import FILL_MODES


def add_generation_arguments(p: argparse.ArgumentParser, default_out: str) -> None:
    """What txt2img, img2img and inpaint share."""
    p.add_argument("--model", required=True, help="checkpoint file (.safetensors/.ckpt) or diffusers folder")
    p.add_argument("--prompt", default="")
    p.add_argument("--negative", default="", help="negative prompt")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=7.0, help="CFG scale")
    p.add_argument("--distilled-cfg", type=float, default=3.5, help="FLUX.1 dev's Distilled CFG Scale")
    p.add_argument("--seed", type=int, default=-1, help="-1 for a random seed")
    p.add_argument("--width", type=int, default=None, help="default: the checkpoint's native size (512 for SD 1.x)")
    p.add_argument("--height", type=int, default=None, help="default: the checkpoint's native size")
    p.add_argument("--sampler", default="Euler", help="A1111 sampler name, e.g. Euler, 'Euler a', 'DPM++ 2M' (old names like 'DPM++ 2M Karras' work)")
    p.add_argument("--scheduler", default="Automatic", help="schedule type: Automatic, Karras, Exponential, ...")
    p.add_argument("--subseed", type=int, default=-1, help="variation seed")
    p.add_argument("--subseed-strength", type=float, default=0.0, help="variation strength, 0..1")
    p.add_argument("--seed-resize-from", type=int, nargs=2, default=(0, 0), metavar=("W", "H"), help="resize seed from width/height")
    p.add_argument("--eta", type=float, default=None, help="noise for ancestral/SDE samplers (sampler default if unset)")
    p.add_argument("--s-noise", type=float, default=None)
    p.add_argument("--emphasis", default="Original", choices=("Original", "No norm", "None"))
    p.add_argument("--embeddings-dir", default=None, help="textual-inversion embeddings (default models/embeddings)")
    p.add_argument("--lora-dir", default=None, help="LoRA files for <lora:name:weight> tags (default models/Lora)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--batch-count", type=int, default=1)
    p.add_argument("--clip-skip", type=int, default=1)
    p.add_argument("--out", default=default_out, help="folder for the PNGs")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "bf16"))
    p.add_argument("--offload", choices=["auto", "never", "always"], default="auto",
                   help="SD 3.x / FLUX.1 on a GPU: stream the transformer's blocks through it when the model does "
                        "not fit (see docs/MODELS_FLOW.md)")
    p.add_argument("--compile", action="store_true",
                   help="compile the UNet with torch.compile (inductor): slow first steps, faster after; "
                        "runs uncompiled, with a warning, where no compiler works")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--tiling", action="store_true",
                   help="seamless tiling: the picture's edges continue each other (A1111's Tiling)")


def add_image_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", required=True, help="the input picture")
    p.add_argument("--denoising-strength", type=float, default=0.75)
    p.add_argument("--resize-mode", type=int, default=0, choices=(0, 1, 2, 3),
                   help="0 just resize, 1 crop and resize, 2 resize and fill, 3 just resize (latent upscale)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description="Generate images without the UI.")
    sub = parser.add_subparsers(dest="command", required=True)
    t2i = sub.add_parser("txt2img", help="text to image")
    add_generation_arguments(t2i, "outputs/txt2img-images")
    t2i.add_argument("--hires-scale", type=float, default=0.0, help="hires fix: upscale factor of a second pass (0 = off)")
    t2i.add_argument("--hires-steps", type=int, default=0, help="hires fix: steps of the second pass (0 = as many as the first)")
    t2i.add_argument("--hires-upscaler", default="Latent", help="Latent, 'Latent (bicubic)', ..., Lanczos or an upscaler model")
    t2i.add_argument("--hires-denoising-strength", type=float, default=0.7)
    i2i = sub.add_parser("img2img", help="image to image")
    add_generation_arguments(i2i, "outputs/img2img-images")
    add_image_arguments(i2i)
    inp = sub.add_parser("inpaint", help="repaint the masked part of a picture (white = repaint)")
    add_generation_arguments(inp, "outputs/img2img-images")
    add_image_arguments(inp)
    inp.add_argument("--mask", required=True, help="mask picture: white is repainted")
    inp.add_argument("--mask-blur", type=int, default=4)
    inp.add_argument("--invert-mask", action="store_true", help="repaint what is NOT masked")
    inp.add_argument("--masked-content", default="original", choices=FILL_MODES)
    inp.add_argument("--only-masked", action="store_true", help="work on the masked area only, at full resolution")
    inp.add_argument("--only-masked-padding", type=int, default=32)
    inp.add_argument("--mask-weight", type=float, default=1.0, help="inpainting checkpoints: conditional mask weight")
    up = sub.add_parser("upscale", help="upscale images (ESRGAN, SwinIR, ... models or Lanczos/Nearest/Bicubic)")
    from core.upscaling.cli import add_arguments as add_upscale_arguments

    add_upscale_arguments(up)
    return parser


def params_from_args(args, native_size: int | None = None):
    """``native_size``: the checkpoint's own picture size, for a --width/--height left out."""
    from core.params import GenerationParams

    size = native_size or 512
    params = GenerationParams(
        prompt=args.prompt, negative_prompt=args.negative, steps=args.steps, cfg_scale=args.cfg, distilled_cfg_scale=args.distilled_cfg, seed=args.seed,
        width=args.width or size, height=args.height or size, sampler=args.sampler, scheduler=args.scheduler, batch_size=args.batch_size,
        batch_count=args.batch_count, clip_skip=args.clip_skip, checkpoint=args.model, subseed=args.subseed,
        subseed_strength=args.subseed_strength, seed_resize_from_w=args.seed_resize_from[0],
        seed_resize_from_h=args.seed_resize_from[1], eta=args.eta, s_noise=args.s_noise, emphasis=args.emphasis,
        tiling=args.tiling,
    )
    if args.command == "txt2img" and args.hires_scale:
        params.enable_hr, params.hr_scale, params.hr_upscaler = True, args.hires_scale, args.hires_upscaler
        params.hr_second_pass_steps, params.denoising_strength = args.hires_steps, args.hires_denoising_strength
    if args.command in ("img2img", "inpaint"):
        params.denoising_strength, params.resize_mode = args.denoising_strength, args.resize_mode
    if args.command == "inpaint":
        params.mask_blur, params.inpainting_mask_invert = args.mask_blur, int(args.invert_mask)
        params.inpainting_fill = FILL_MODES.index(args.masked_content)
        params.inpaint_full_res, params.inpaint_full_res_padding = args.only_masked, args.only_masked_padding
        params.inpainting_mask_weight = args.mask_weight
    params.validate()
    return params


def run_generation(args) -> list[Path]:
    from tqdm import tqdm

    from core.engine import Engine
    from core.images import save_png

    params_from_args(args)  # bad arguments are reported before any model is read
    model_path = Path(args.model)
    if not model_path.exists():
        raise EngineError(f"--model: {args.model}: no such file or folder")
    engine = Engine(device=args.device, precision=args.precision, ckpt_dir=model_path.parent,
                    embeddings_dir=args.embeddings_dir, lora_dir=args.lora_dir, compile=args.compile,
                    offload=args.offload)
    native = engine.default_size(str(model_path), allow_paths=True) if None in (args.width, args.height) else None
    params = params_from_args(args, native)
    bar = tqdm(total=params.steps * params.batch_count, disable=args.no_progress, unit="step", file=sys.stderr)

    def progress(p):
        bar.n = p.batch * p.steps + p.step
        bar.refresh()

    try:
        common = dict(progress=progress, save=False, allow_paths=True)
        if args.command == "txt2img":
            results = engine.txt2img(params, **common)
        else:
            results = engine.img2img(params, args.image, args.mask if args.command == "inpaint" else None, **common)
    finally:
        bar.close()
    paths = []
    for result in results:
        for note in result.notes:
            print(f"note: {note}", file=sys.stderr)
        path = save_png(result.image, args.out, result.seed, result.infotext)
        paths.append(path)
        print(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    use_huge_pages()  # before torch is imported, which the parser's choices do (core/allocation.py says why)
    args = build_parser().parse_args(argv)
    try:
        if args.command == "upscale":
            from core.upscaling.cli import run_upscale

            run_upscale(args)
        else:
            run_generation(args)
    except EngineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
