"""Measure the bundled demo model the way its model card reports it.

    python -m core.eval_demo [--checkpoint PATH] [--prompts 200] [--steps 20] [--lora PATH] [--grids models/demo]

Prints: the autoencoder's PSNR on held-out pictures (and the share of reconstructions the
analyser reads exactly right); prompt adherence over random prompts judged by
core.training.analyser (colour, shape, size, position, background) at CFG 7 and CFG 1, with
the engine's Euler sampler; one Engine.txt2img picture as a smoke test of the real path;
inpainting and img2img examples through the Engine (core/training/examples.py); with --lora,
how hollow (outlined) the shapes are with the style LoRA off and on; with --grids, the model
card's sample sheets.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from core.training.common import DEMO_CHECKPOINT, DEMO_LORA, set_threads


def engine_smoke_test(checkpoint: Path, prompt: str, steps: int = 20, precision: str = "fp32") -> dict:
    import tempfile

    from core.engine import Engine
    from core.params import GenerationParams
    from core.training.analyser import analyse

    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(device="cpu", precision=precision, ckpt_dir=checkpoint.parent, output_dir=tmp,
                        hash_cache=Path(tmp) / "hashes.json", extensions_dir=Path(tmp) / "no-extensions")
        params = GenerationParams(prompt=prompt, width=64, height=64, steps=steps, cfg_scale=7.0, seed=1,
                                  checkpoint=checkpoint.name)
        result = engine.txt2img(params, save=False)[0]
    return analyse(result.image).attributes()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=DEMO_CHECKPOINT)
    p.add_argument("--prompts", type=int, default=200)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--heldout", type=int, default=256, help="held-out pictures for the autoencoder PSNR")
    p.add_argument("--lora", type=Path, default=None, help=f"also measure a style LoRA (e.g. {DEMO_LORA})")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "auto"),
                   help="the weights' and computation's number format (auto: as the studio picks it for this CPU)")
    p.add_argument("--examples", type=int, default=16, help="inpainting and img2img examples through the Engine (0: none)")
    p.add_argument("--guidance", type=str, default="7,1",
                   help="CFG scales to measure, comma-separated; each is compared with the first one picture by picture")
    p.add_argument("--grids", type=Path, default=None, help="write sample grids (PNG) for the model card here")
    args = p.parse_args(argv)
    set_threads(args.threads)

    from core.devices import resolve_dtype
    from core.loading import load_model
    from core.training import shapes as S
    from core.training.analyser import format_scores, judge, score
    from core.training.autoencoder import evaluate_autoencoder
    from core.training.examples import grid, to_pil
    from core.training.sampling import generate

    started = time.monotonic()
    model = load_model(args.checkpoint, device="cpu", dtype=resolve_dtype(args.precision, torch.device("cpu")))
    size_mb = args.checkpoint.stat().st_size / 1e6
    print(f"{args.checkpoint.name} in {args.precision} ({model.unet.dtype}): {size_mb:.1f} MB; UNet {sum(p.numel() for p in model.unet.parameters()) / 1e6:.2f}M, "
          f"autoencoder {sum(p.numel() for p in model.vae.parameters()) / 1e6:.2f}M (f={model.vae.config.downsample_factor}), "
          f"text encoder {sum(p.numel() for p in model.text_encoder.parameters()) / 1e6:.2f}M params")
    ae = evaluate_autoencoder(model.vae, args.heldout)
    print(f"autoencoder: PSNR {ae['psnr']:.2f} dB on {args.heldout} held-out pictures; "
          f"reconstructions read exactly right {100 * ae['recognisable']:.1f}% "
          f"(shape {100 * ae['rec_shape']:.1f}%, size {100 * ae['rec_size']:.1f}%)")
    hollow = evaluate_autoencoder(model.vae, 64, outlined=True)
    print(f"autoencoder on 64 outlined pictures: PSNR {hollow['psnr']:.2f} dB, hollowness of the reconstructions "
          f"{hollow['rec_hollowness']:.2f} (originals 0.84)")
    prompts = S.random_prompts(S.PROMPT_SEED, args.prompts)
    rows, samples, right = {}, {}, {}
    scales = [float(v) for v in args.guidance.split(",")]
    for cfg in scales:
        images = generate(model, prompts, cfg_scale=cfg, steps=args.steps, seed=0)
        samples[cfg] = images
        per_picture = judge(images, prompts)
        right[cfg] = [r["all"] == 1.0 for r in per_picture]
        rows[cfg] = {k: sum(r[k] for r in per_picture) / len(per_picture) for k in per_picture[0]}
        print(f"CFG {cfg:g}, {args.steps} Euler steps, {len(prompts)} prompts: {format_scores(rows[cfg])}")
    first = scales[0]
    for cfg in scales[1:]:
        # Same prompts and start noise: count the pictures only one of the two scales gets all right.
        only_first = sum(a and not b for a, b in zip(right[first], right[cfg]))
        only_this = sum(b and not a for a, b in zip(right[first], right[cfg]))
        print(f"all attributes right: {only_first} pictures only at CFG {first:g}, {only_this} only at CFG {cfg:g}")
    print("| setting | colour | shape | size | position | background | all |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for cfg, r in rows.items():
        print(f"| CFG {cfg:g} / {args.steps} steps | " + " | ".join(f"{100 * r[k]:.1f}%" for k in
              ("colour", "shape", "size", "position", "background", "all")) + " |")
    print(f"engine smoke test ({prompts[0]!r}): {engine_smoke_test(args.checkpoint, prompts[0], args.steps, args.precision)}")
    sheets = {}
    if args.examples:
        from core.training.examples import img2img_examples, inpaint_examples

        inpaint = inpaint_examples(args.checkpoint, args.examples, args.steps, precision=args.precision)
        print(f"inpainting a shape into a masked cell of a plain picture: colour, shape and position right in "
              f"{100 * inpaint['rate']:.0f}% of {inpaint['count']}")
        edit = img2img_examples(args.checkpoint, args.examples, args.steps, precision=args.precision)
        print(f"img2img recolouring a shape (strength {edit['strength']}): new colour with shape and position kept in "
              f"{100 * edit['rate']:.0f}% of {edit['count']}")
        sheets["inpaint.png"] = [list(r[:3]) for r in inpaint["rows"][:6]]
        sheets["img2img.png"] = [list(r[:2]) for r in edit["rows"][:6]]
    if args.lora:
        from core.training.lora import merge_kohya

        few = prompts[:64]
        off_images = generate(model, few, cfg_scale=7.0, steps=args.steps, seed=0)
        off = score(off_images, few)
        merge_kohya(model, args.lora, 1.0)
        on_images = generate(model, few, cfg_scale=7.0, steps=args.steps, seed=0)
        on = score(on_images, few)
        print(f"LoRA {args.lora.name}: hollowness {off['hollowness']:.2f} off -> {on['hollowness']:.2f} on "
              f"(ground truth 0 filled, ~0.8 outlined); with it: {format_scores(on)}")
        sheets["lora.png"] = [[to_pil(i) for i in off_images[:8]], [to_pil(i) for i in on_images[:8]]]
    if args.grids:
        for cfg, images in samples.items():
            rows_of_eight = 4 if cfg == first else 2
            sheets[f"samples-cfg{cfg:g}.png"] = [[to_pil(i) for i in images[r * 8:(r + 1) * 8]] for r in range(rows_of_eight)]
        args.grids.mkdir(parents=True, exist_ok=True)
        for name, rows in sheets.items():
            grid(rows).save(args.grids / name)
        (args.grids / "sample-prompts.txt").write_text("\n".join(prompts[:32]) + "\n")
        print(f"grids written to {args.grids}: {', '.join(sorted(sheets))}")
    print(f"({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
