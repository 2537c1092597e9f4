"""The 16-channel VAE of SD3 / SD 3.5 and FLUX.1 (core/models/vae.py with ``use_quant_conv=False``)
against diffusers' AutoencoderKL (the test-only oracle) on tiny random weights in the ldm key layout,
converted with diffusers' own single-file converter; its detection from shapes; the full-size layout
on the meta device."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from core.models.detection import VAE, detect_vae
from core.models.vae import AutoencoderKL, VAEConfig
from tiny_models import REFERENCE_DIR

# Three levels with the real two resnets per level; 8 groups for the narrow widths.
TINY = dict(ch=16, ch_mult=(1, 2, 2), num_res_blocks=2, z_channels=16, embed_dim=16, norm_groups=8, use_quant_conv=False)
SCALE_SHIFT = {"SD3": (1.5305, 0.0609), "FLUX": (0.3611, 0.1159)}
IMAGE_SIZE = (12, 20)  # (H, W): not square, latent 3x5


def tiny_vae16(scaling_factor: float, shift_factor: float, seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    vae = AutoencoderKL(VAEConfig(**TINY, scaling_factor=scaling_factor, shift_factor=shift_factor)).eval()
    with torch.no_grad():
        for name, param in vae.named_parameters():
            # Random GroupNorm scales too, so a norm applied to the wrong tensor shows.
            is_norm_scale = ".norm" in name and name.endswith(".weight")
            param.copy_(1 + 0.2 * torch.randn_like(param) if is_norm_scale else 0.1 * torch.randn_like(param))
    return vae


def diffusers_twin(vae: AutoencoderKL):
    """diffusers' AutoencoderKL with the same weights: our state dict under ``first_stage_model.``
    (the bundled layout), through ``convert_ldm_vae_checkpoint``."""
    from diffusers import AutoencoderKL as DiffusersAutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    c = vae.config
    config = dict(
        in_channels=c.in_channels, out_channels=c.out_channels, block_out_channels=tuple(c.ch * m for m in c.ch_mult),
        down_block_types=("DownEncoderBlock2D",) * len(c.ch_mult), up_block_types=("UpDecoderBlock2D",) * len(c.ch_mult),
        layers_per_block=c.num_res_blocks, latent_channels=c.z_channels, norm_num_groups=c.norm_groups,
        scaling_factor=c.scaling_factor, shift_factor=c.shift_factor, use_quant_conv=False, use_post_quant_conv=False,
    )
    checkpoint = {VAE + key: value for key, value in vae.state_dict().items()}
    converted = convert_ldm_vae_checkpoint(checkpoint, config)
    twin = DiffusersAutoencoderKL(**config).eval()
    missing, unexpected = twin.load_state_dict(converted, strict=False)
    assert (missing, unexpected) == ([], [])
    assert sum(v.numel() for v in converted.values()) == sum(p.numel() for p in vae.parameters())
    return twin


def images(batch: int = 2) -> torch.Tensor:
    return torch.rand((batch, 3, *IMAGE_SIZE), generator=torch.Generator().manual_seed(5)) * 2 - 1


@pytest.mark.parametrize("family", sorted(SCALE_SHIFT))
def test_encode_and_decode_match_diffusers(family):
    scale, shift = SCALE_SHIFT[family]
    vae = tiny_vae16(scale, shift)
    twin = diffusers_twin(vae)
    pictures = images()
    with torch.no_grad():
        latents = vae.encode(pictures)
        # diffusers' SD3 / FLUX pipelines: (mean - shift) * scale in, latents / scale + shift out.
        expected_latents = (twin.encode(pictures).latent_dist.mean - shift) * scale
        decoded = vae.decode(latents)
        expected_decoded = twin.decode(latents / scale + shift).sample
    assert latents.shape == (2, 16, IMAGE_SIZE[0] // 4, IMAGE_SIZE[1] // 4)
    torch.testing.assert_close(latents, expected_latents, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(decoded, expected_decoded, atol=1e-5, rtol=1e-5)
    assert latents.std() > 0.05 and decoded.std() > 0.05  # not a degenerate network


def test_sampled_posterior_matches_diffusers_with_the_same_generator():
    scale, shift = SCALE_SHIFT["FLUX"]
    vae = tiny_vae16(scale, shift, seed=3)
    twin = diffusers_twin(vae)
    pictures = images(1)
    with torch.no_grad():
        sampled = vae.encode(pictures, generator=torch.Generator().manual_seed(11))
        expected = (twin.encode(pictures).latent_dist.sample(torch.Generator().manual_seed(11)) - shift) * scale
        mean = vae.encode(pictures)
    torch.testing.assert_close(sampled, expected, atol=1e-5, rtol=1e-5)
    assert (sampled - mean).abs().max() > 1e-3  # the noise was applied


def test_no_quant_convs_in_the_module_or_its_state_dict():
    vae = tiny_vae16(*SCALE_SHIFT["SD3"])
    assert not hasattr(vae, "quant_conv") and not hasattr(vae, "post_quant_conv")
    assert not any("quant_conv" in key for key in vae.state_dict())
    assert vae.dtype == torch.float32 and vae.device.type == "cpu"
    with pytest.raises(ValueError, match="z_channels=16"):
        VAEConfig(**{**TINY, "embed_dim": 4})


def test_detect_vae_handles_16_channels_without_quant_convs():
    vae = tiny_vae16(*SCALE_SHIFT["SD3"])
    shapes = {VAE + key: tuple(value.shape) for key, value in vae.state_dict().items()}
    # Group counts are not in the shapes (metadata's vae_norm_groups gives them); the rest is.
    detected = dataclasses.replace(detect_vae(shapes, scaling_factor=1.5305), norm_groups=TINY["norm_groups"])
    assert detected == VAEConfig(**TINY, scaling_factor=1.5305)
    # SD's VAEs keep their quant convs; a file with only one of the two is incomplete, not quant-free.
    sd = AutoencoderKL(VAEConfig(ch=16, ch_mult=(1, 2), num_res_blocks=1, norm_groups=8))
    sd_shapes = {VAE + key: tuple(value.shape) for key, value in sd.state_dict().items()}
    assert dataclasses.replace(detect_vae(sd_shapes), norm_groups=8) == sd.config and sd.config.use_quant_conv
    with pytest.raises(KeyError, match="post_quant_conv"):
        detect_vae({k: v for k, v in sd_shapes.items() if not k.startswith(VAE + "post_quant_conv.")})


def test_full_size_16_channel_vae_is_the_sd_layout_without_quant_convs():
    """SD3's and FLUX.1's VAE (diffusers config: block_out_channels 128/256/512/512, two resnets per
    level, latent_channels 16, no quant convs) on the meta device: the SD VAE's keys less the four
    quant-conv tensors, with 16-channel shapes only where the latent enters or leaves."""
    manifest = json.loads((REFERENCE_DIR / "vae_standalone.json").read_text())["tensors"]
    with torch.device("meta"):
        vae = AutoencoderKL(VAEConfig(z_channels=16, embed_dim=16, use_quant_conv=False))
    ours = {key: list(value.shape) for key, value in vae.state_dict().items()}
    expected = {key: shape for key, shape in manifest.items() if "quant_conv" not in key}
    expected["encoder.conv_out.weight"], expected["encoder.conv_out.bias"] = [32, 512, 3, 3], [32]
    expected["decoder.conv_in.weight"] = [512, 16, 3, 3]
    assert ours == expected
    assert detect_vae({VAE + k: tuple(v) for k, v in ours.items()}) == vae.config
