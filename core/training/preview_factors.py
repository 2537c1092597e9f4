"""Fit a model's live-preview colours: the latent->RGB linear map (and bias) that best predicts
its VAE's decoded pictures from the latents, by least squares over many pictures.

    python -m core.training.preview_factors                    # the shipped demo model
    python -m core.training.preview_factors path.safetensors   # another checkpoint

The result goes into the checkpoint's metadata (``latent_rgb_factors``, ``latent_rgb_bias``;
core/models/families.py reads them), where the previews of that checkpoint take it from.
Only the file's header is rewritten: every tensor's bytes stay as they were (checked before
the new file replaces the old one, atomically).
"""
from __future__ import annotations

import argparse
import json
import os
import struct
from pathlib import Path

import torch

from core.models.families import PREVIEW_BIAS_KEY, PREVIEW_FACTORS_KEY
from core.training.common import DEMO_CHECKPOINT


@torch.no_grad()
def fit_preview_factors(vae, images: torch.Tensor) -> tuple[list[list[float]], list[float]]:
    """images (B, 3, H, W) in [-1, 1] -> (factors: one [R, G, B] row per latent channel, bias):
    least squares of the decoded pictures, averaged over each latent pixel's patch, on the
    sampling-space latents (what the sampler's denoised estimate is)."""
    images = images.to(next(vae.parameters()).device, torch.float32)
    latents = vae.encode(images).float()
    decoded = vae.decode(latents).float().clamp(-1, 1)
    factor = decoded.shape[-1] // latents.shape[-1]
    pooled = torch.nn.functional.avg_pool2d(decoded, factor)
    x = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1]).double()
    y = pooled.permute(0, 2, 3, 1).reshape(-1, 3).double()
    design = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    solution = torch.linalg.lstsq(design, y).solution
    factors = [[round(float(v), 4) for v in row] for row in solution[:-1]]
    return factors, [round(float(v), 4) for v in solution[-1]]


def preview_metadata(vae, images: torch.Tensor) -> dict[str, str]:
    factors, bias = fit_preview_factors(vae, images)
    return {PREVIEW_FACTORS_KEY: json.dumps(factors), PREVIEW_BIAS_KEY: json.dumps(bias)}


def _read_header(path: Path) -> tuple[dict, int]:
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(length)), 8 + length


def update_metadata(path: Path, changes: dict[str, str]) -> None:
    """Set ``changes`` in a safetensors file's ``__metadata__``; the tensor data is copied byte
    for byte (offsets count from the end of the header, so a longer header moves nothing)."""
    path = Path(path)
    header, data_start = _read_header(path)
    header["__metadata__"] = {**header.get("__metadata__", {}), **changes}
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # keep the data 8-byte aligned, as safetensors writes it
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(path, "rb") as src, open(tmp, "wb") as dst:
            dst.write(struct.pack("<Q", len(encoded)))
            dst.write(encoded)
            src.seek(data_start)
            while chunk := src.read(1 << 20):
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        _check_same_tensors(path, tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _check_same_tensors(old: Path, new: Path) -> None:
    old_header, old_start = _read_header(old)
    new_header, new_start = _read_header(new)
    old_header.pop("__metadata__", None)
    new_header.pop("__metadata__", None)
    if old_header != new_header or old.stat().st_size - old_start != new.stat().st_size - new_start:
        raise ValueError(f"{new}: the tensors' table changed; {old} left as it was")
    with open(old, "rb") as a, open(new, "rb") as b:
        a.seek(old_start)
        b.seek(new_start)
        while True:
            x, y = a.read(1 << 20), b.read(1 << 20)
            if x != y:
                raise ValueError(f"{new}: tensor data differs; {old} left as it was")
            if not x:
                return


def demo_pictures(count: int = 256, seed: int = 1234) -> torch.Tensor:
    """Pictures like the demo model's: coloured shapes on coloured backgrounds (its training set)."""
    from core.training.shapes import make_batch

    return make_batch(seed, range(count)).images


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", nargs="?", type=Path, default=DEMO_CHECKPOINT)
    parser.add_argument("--pictures", type=int, default=256)
    args = parser.parse_args(argv)
    from core.loading import load_model

    model = load_model(args.checkpoint, dtype=torch.float32)
    changes = preview_metadata(model.vae, demo_pictures(args.pictures))
    update_metadata(args.checkpoint, changes)
    print(json.dumps(changes, indent=1))


if __name__ == "__main__":
    main()
