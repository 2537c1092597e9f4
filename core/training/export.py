"""Write a trained demo model as an SD 1.x single-file checkpoint (fp16 .safetensors).

    python -m core.training.export                      # training-runs/diffusion -> models/Stable-diffusion/demo-shapes.safetensors

Keys are the loader's: ``model.diffusion_model.*``, ``first_stage_model.*``,
``cond_stage_model.transformer.text_model.*``. What the shapes cannot tell is in the metadata:
``latent_scale_factor`` (the autoencoder's scaling factor), ``unet_num_heads``,
``unet_norm_groups``, ``vae_norm_groups``, ``prediction``, and the live previews' colours
(``latent_rgb_factors``/``latent_rgb_bias``, fitted by core/training/preview_factors.py: the
demo's latent space is its own, SD 1.x's preview colours would be wrong).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from core.training.common import DEMO_CHECKPOINT, RUNS, load_checkpoint


def checkpoint_metadata(model, extra: dict | None = None) -> dict[str, str]:
    spec = model.spec
    meta = {
        "latent_scale_factor": repr(float(spec.vae.scaling_factor)),
        "unet_num_heads": str(spec.unet.num_heads),
        "unet_norm_groups": str(spec.unet.norm_groups),
        "vae_norm_groups": str(spec.vae.norm_groups),
        "prediction": spec.prediction,
        "modelspec.title": "demo-shapes",
        "modelspec.architecture": "stable-diffusion-v1",
        "modelspec.resolution": "64x64",
        "modelspec.description": "A tiny latent diffusion model trained by this project on coloured shapes (see models/demo/README.md).",
    }
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in (extra or {}).items()})
    return meta


def export_model(model, path: Path, extra: dict | None = None) -> Path:
    """LatentDiffusion -> fp16 single-file safetensors at ``path`` (written atomically)."""
    from safetensors.torch import save_file

    state = {k: v.detach().to(torch.float16 if v.is_floating_point() else v.dtype).contiguous().clone()
             for k, v in model.checkpoint_state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=checkpoint_metadata(model, extra))
    tmp.replace(path)
    return path


def export_run(run: Path, out: Path, vae_run: Path | None = None) -> Path:
    """``vae_run``: take the decoder from this autoencoder run (refined with --decoder-only
    while the UNet trained); its encoder must be the one the UNet's latents came from."""
    from core.training.autoencoder import load_autoencoder
    from core.training.diffusion import load_diffusion

    model = load_diffusion(run)
    state = load_checkpoint(run)
    extra = {"demo.training_steps": str(state["step"]), "demo.batch": str(state["batch"])}
    if vae_run is not None:
        vae, _ = load_autoencoder(vae_run)
        ours = model.vae.state_dict()
        for key, value in vae.state_dict().items():
            if key.startswith(("encoder.", "quant_conv.")) and not torch.allclose(value, ours[key], atol=1e-6):
                raise ValueError(f"{vae_run}: its encoder differs from the one the UNet was trained with ({key})")
        model.vae.load_state_dict(vae.state_dict())
    from core.training.preview_factors import demo_pictures, preview_metadata

    extra.update(preview_metadata(model.vae, demo_pictures()))
    return export_model(model, out, extra)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, default=RUNS / "diffusion")
    p.add_argument("--out", type=Path, default=DEMO_CHECKPOINT)
    p.add_argument("--vae-run", type=Path, default=None, help="take the (decoder-refined) autoencoder from this run")
    args = p.parse_args(argv)
    path = export_run(args.run, args.out, args.vae_run)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
