"""Measure the bundled demo model the way its model card reports it.

    python -m core.eval_demo [--checkpoint PATH] [--prompts 200] [--steps 20] [--lora PATH]

Prints: the autoencoder's PSNR on held-out pictures (and the share of reconstructions the
analyser reads exactly right); prompt adherence over random prompts judged by
core.training.analyser (colour, shape, size, position, background) at CFG 7 and CFG 1, with
the engine's Euler sampler; one Engine.txt2img picture as a smoke test of the real path; and
with --lora, how hollow (outlined) the shapes are with the style LoRA off and on.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from core.training.common import DEMO_CHECKPOINT, DEMO_LORA, set_threads


def engine_smoke_test(checkpoint: Path, prompt: str, steps: int = 20) -> dict:
    import tempfile

    from core.engine import Engine
    from core.params import GenerationParams
    from core.training.analyser import analyse

    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(device="cpu", precision="fp32", ckpt_dir=checkpoint.parent, output_dir=tmp,
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
    args = p.parse_args(argv)
    set_threads(args.threads)

    from core.loading import load_model
    from core.training import shapes as S
    from core.training.analyser import format_scores, score
    from core.training.autoencoder import evaluate_autoencoder
    from core.training.sampling import generate

    started = time.monotonic()
    model = load_model(args.checkpoint, device="cpu", dtype=torch.float32)
    size_mb = args.checkpoint.stat().st_size / 1e6
    print(f"{args.checkpoint.name}: {size_mb:.1f} MB; UNet {sum(p.numel() for p in model.unet.parameters()) / 1e6:.2f}M, "
          f"autoencoder {sum(p.numel() for p in model.vae.parameters()) / 1e6:.2f}M (f={model.vae.config.downsample_factor}), "
          f"text encoder {sum(p.numel() for p in model.text_encoder.parameters()) / 1e6:.2f}M params")
    ae = evaluate_autoencoder(model.vae, args.heldout)
    print(f"autoencoder: PSNR {ae['psnr']:.2f} dB on {args.heldout} held-out pictures; "
          f"reconstructions read exactly right {100 * ae['recognisable']:.1f}%")
    prompts = S.random_prompts(S.PROMPT_SEED, args.prompts)
    rows = {}
    for cfg in (7.0, 1.0):
        images = generate(model, prompts, cfg_scale=cfg, steps=args.steps, seed=0)
        rows[cfg] = score(images, prompts)
        print(f"CFG {cfg:g}, {args.steps} Euler steps, {len(prompts)} prompts: {format_scores(rows[cfg])}")
    print("| setting | colour | shape | size | position | background | all |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for cfg, r in rows.items():
        print(f"| CFG {cfg:g} / {args.steps} steps | " + " | ".join(f"{100 * r[k]:.1f}%" for k in
              ("colour", "shape", "size", "position", "background", "all")) + " |")
    print(f"engine smoke test ({prompts[0]!r}): {engine_smoke_test(args.checkpoint, prompts[0], args.steps)}")
    if args.lora:
        from core.training.lora import merge_kohya

        few = prompts[:64]
        off = score(generate(model, few, cfg_scale=7.0, steps=args.steps, seed=0), few)
        merge_kohya(model, args.lora, 1.0)
        on = score(generate(model, few, cfg_scale=7.0, steps=args.steps, seed=0), few)
        print(f"LoRA {args.lora.name}: hollowness {off['hollowness']:.2f} off -> {on['hollowness']:.2f} on "
              f"(ground truth 0 filled, ~0.8 outlined); with it: {format_scores(on)}")
    print(f"({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
