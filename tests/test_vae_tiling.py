"""Tiled VAE: close to untiled where both fit; chosen automatically when the whole would not fit."""
import torch

from core.loading import load_model
from core.pipelines.common import decode_latents
from core.pipelines.vae_tiling import decode_tiled, encode_tiled, needs_tiling


def smooth_latent(h, w, seed=0):
    """A latent like a real picture's: smooth, not white noise (tiles disagree most on noise)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, 4, h // 8 + 1, w // 8 + 1, generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)


def test_tiled_decode_close_to_untiled(tiny_checkpoints):
    vae = load_model(tiny_checkpoints["safetensors"]).vae
    latents = smooth_latent(40, 56)
    with torch.no_grad():
        whole = vae.decode(latents)
    tiled = decode_tiled(vae, latents, tile=32, overlap=16)
    assert tiled.shape == whole.shape == (1, 3, 320, 448)
    error = (tiled - whole).abs()
    # Stated tolerance, on [-1, 1] pixels, for this random-weight VAE (a harsh case: its features
    # change a lot with scale, so statistics from the reduced pass fit less well than a trained
    # VAE's): mean error under 0.07 (measured 0.050), worst pixel under 0.8 (measured 0.53).
    assert error.mean() < 0.07, error.mean()
    assert error.max() < 0.8, error.max()
    # One tile covering everything is exactly the untiled decode.
    assert torch.equal(decode_tiled(vae, latents, tile=64, overlap=8), whole.float())


def test_tiled_encode_close_to_untiled(tiny_checkpoints):
    vae = load_model(tiny_checkpoints["safetensors"]).vae
    with torch.no_grad():
        images = vae.decode(smooth_latent(32, 48, seed=1)).clamp(-1, 1)
        whole = vae.encode(images)
    tiled = encode_tiled(vae, images, tile=128, overlap=32)
    assert tiled.shape == whole.shape
    # Latents of mean magnitude ~0.07; tiled means within 0.04 on average (measured 0.03).
    assert (tiled - whole).abs().mean() < 0.04


def test_tiling_is_chosen_from_free_memory(tiny_checkpoints, monkeypatch):
    import core.pipelines.vae_tiling as tiling

    vae = load_model(tiny_checkpoints["safetensors"]).vae
    latents = smooth_latent(24, 24)
    assert not needs_tiling(vae, 192 * 192, latents.device)
    assert needs_tiling(vae, 10**12, latents.device)  # a terapixel never fits
    monkeypatch.setattr(tiling, "available_memory", lambda device: 1000)
    assert needs_tiling(vae, 192 * 192, latents.device)
    calls = []
    monkeypatch.setattr(tiling, "decode_tiled", lambda v, z: calls.append(z.shape) or v.decode(z))
    decode_latents(vae, latents)
    assert calls == [latents.shape]
