"""core/models/flux.py against diffusers' FluxTransformer2DModel (the test-only oracle): tiny
random FLUX.1 dev and schnell transformers in the real single-file key layout, converted with
diffusers' own single-file converter; config detection; the full-size layouts on the meta device
against tests/reference/flux1_transformer.json."""
from __future__ import annotations

import json

import pytest
import torch

from core.models.flux import CHECKPOINT_PREFIX, FluxConfig, FluxTransformer, detect_flux, strip_checkpoint_prefix
from diffusers_oracle import diffusers_converter
from tiny_models import REFERENCE_DIR

# Width and depth cut; heads stay 128 wide so the rotary axes are the real 16/56/56.
TINY = dict(hidden_size=256, num_heads=2, depth=2, depth_single=2)
LATENT_SIZE = (6, 8)  # (H, W): not square, so rows and columns cannot be swapped unnoticed
TEXT_TOKENS = 5
MANIFEST = json.loads((REFERENCE_DIR / "flux1_transformer.json").read_text())


def tiny_flux(guidance_embed: bool, seed: int = 0) -> FluxTransformer:
    torch.manual_seed(seed)
    model = FluxTransformer(FluxConfig(guidance_embed=guidance_embed, **TINY)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            # Random everywhere, RMSNorm scales too, so a scale applied to the wrong tensor shows.
            param.copy_(1 + 0.2 * torch.randn_like(param) if name.endswith(".scale") else 0.05 * torch.randn_like(param))
    return model


def convert_consuming_everything(state_dict: dict, hidden_size: int) -> dict:
    """diffusers' conversion of a single-file state dict; the converter pops what it reads, so
    what is left is what diffusers would silently drop."""
    leftover = dict(state_dict)
    converted = diffusers_converter(hidden_size)(leftover)
    assert leftover == {}, f"keys diffusers' converter did not consume: {sorted(leftover)[:10]}"
    return converted


def diffusers_config(config: FluxConfig) -> dict:
    return dict(patch_size=1, in_channels=config.in_channels, num_layers=config.depth, num_single_layers=config.depth_single,
                attention_head_dim=config.head_dim, num_attention_heads=config.num_heads,
                joint_attention_dim=config.context_dim, pooled_projection_dim=config.pooled_dim,
                guidance_embeds=config.guidance_embed, axes_dims_rope=config.axes_dim)


def diffusers_twin(model: FluxTransformer):
    from diffusers import FluxTransformer2DModel

    converted = convert_consuming_everything(model.state_dict(), model.config.hidden_size)
    twin = FluxTransformer2DModel(**diffusers_config(model.config)).eval()
    missing, unexpected = twin.load_state_dict(converted, strict=False)
    assert (missing, unexpected) == ([], [])
    return twin


def diffusers_forward(twin, latent, timesteps, context, pooled, guidance):
    """The call FluxPipeline makes: packed latents, image ids from the latent grid, zero text ids."""
    from diffusers import FluxPipeline

    batch, channels, height, width = latent.shape
    packed = FluxPipeline._pack_latents(latent, batch, channels, height, width)
    img_ids = FluxPipeline._prepare_latent_image_ids(batch, height // 2, width // 2, latent.device, latent.dtype)
    txt_ids = torch.zeros(context.shape[1], 3)
    out = twin(hidden_states=packed, timestep=timesteps, guidance=guidance, pooled_projections=pooled,
               encoder_hidden_states=context, txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
    vae_scale_factor = 8
    return FluxPipeline._unpack_latents(out, height * vae_scale_factor, width * vae_scale_factor, vae_scale_factor)


def inputs(config: FluxConfig, batch: int = 2, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    latent = torch.randn(batch, config.in_channels // 4, *LATENT_SIZE, generator=generator)
    timesteps = torch.tensor([0.9, 0.3])[:batch]
    context = torch.randn(batch, TEXT_TOKENS, config.context_dim, generator=generator)
    pooled = torch.randn(batch, config.pooled_dim, generator=generator)
    return latent, timesteps, context, pooled


@pytest.mark.parametrize("variant, guidance", [("dev", torch.tensor([3.5, 1.0])), ("schnell", None)])
def test_matches_diffusers_flux_transformer(variant, guidance):
    model = tiny_flux(guidance_embed=guidance is not None)
    twin = diffusers_twin(model)
    latent, timesteps, context, pooled = inputs(model.config)
    with torch.no_grad():
        ours = model(latent, timesteps, context, pooled, guidance)
        theirs = diffusers_forward(twin, latent, timesteps, context, pooled, guidance)
    assert ours.shape == latent.shape
    assert ours.abs().mean() > 0.1  # a dead network would match trivially
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)


def test_dev_output_depends_on_guidance_and_rejects_none():
    model = tiny_flux(guidance_embed=True)
    latent, timesteps, context, pooled = inputs(model.config)
    with torch.no_grad():
        low = model(latent, timesteps, context, pooled, torch.tensor([1.0, 1.0]))
        high = model(latent, timesteps, context, pooled, torch.tensor([4.0, 4.0]))
        assert (low - high).abs().max() > 1e-3
        with pytest.raises(ValueError, match="guidance"):
            model(latent, timesteps, context, pooled, None)


def test_odd_latent_sides_are_padded_and_cropped_back():
    """A 7-wide latent runs as the 8-wide one whose last column wraps around (circular padding):
    the answer keeps the 7 columns, equal to the padded run's first 7."""
    model = tiny_flux(guidance_embed=False)
    x = torch.randn(1, 16, 6, 7)
    args = (torch.full((1,), 0.5), torch.randn(1, 3, 4096), torch.randn(1, 768))
    with torch.no_grad():
        out = model(x, *args)
        padded = model(torch.cat([x, x[..., :1]], dim=-1), *args)
    assert out.shape == x.shape
    assert torch.allclose(out, padded[..., :7], atol=1e-6)


@pytest.mark.parametrize("guidance_embed", [True, False])
@pytest.mark.parametrize("prefix", ["", CHECKPOINT_PREFIX])
def test_detect_flux_reads_the_config_back(guidance_embed, prefix):
    model = tiny_flux(guidance_embed)
    shapes = {prefix + key: tuple(value.shape) for key, value in model.state_dict().items()}
    assert detect_flux(shapes) == model.config


def test_prefixed_state_dict_loads_without_conversion():
    model = tiny_flux(guidance_embed=True)
    bundled = {CHECKPOINT_PREFIX + key: value for key, value in model.state_dict().items()}
    bundled["first_stage_model.decoder.conv_in.weight"] = torch.zeros(1)  # a bundled VAE's key, not ours
    fresh = FluxTransformer(detect_flux({k: tuple(v.shape) for k, v in bundled.items()}))
    fresh.load_state_dict(strip_checkpoint_prefix(bundled), strict=True)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in model.state_dict().items())


def manifest_shapes(variant: str) -> dict[str, tuple]:
    skipped = set(MANIFEST["schnell_lacks"]) if variant == "schnell" else set()
    return {key: tuple(shape) for key, shape in MANIFEST["tensors"].items() if key not in skipped}


@pytest.mark.parametrize("variant", ["dev", "schnell"])
def test_full_size_layout_matches_the_manifest_and_diffusers(variant):
    from diffusers import FluxTransformer2DModel

    expected = manifest_shapes(variant)
    config = detect_flux(expected)
    assert config == FluxConfig(guidance_embed=variant == "dev")  # the defaults are FLUX.1 dev
    with torch.device("meta"):
        model = FluxTransformer(config)
    ours = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    assert ours == expected
    assert sum(value.numel() for value in model.parameters()) == MANIFEST["parameters"][variant]

    # diffusers' unmodified converter consumes every key, and its result is exactly the key/shape
    # set of FluxTransformer2DModel built from the public config.
    meta_tensors = {key: torch.empty(shape, device="meta") for key, shape in expected.items()}
    converted = convert_consuming_everything({CHECKPOINT_PREFIX + k: v for k, v in meta_tensors.items()}, 3072)
    with torch.device("meta"):
        twin = FluxTransformer2DModel(**MANIFEST["source"]["config"] | {"guidance_embeds": variant == "dev"})
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in twin.state_dict().items()}


def test_bfloat16_weights_stay_close_to_float32():
    """The released files are bf16: float32 inputs are cast to the weights' dtype at the door and
    the result stays within bf16's precision of the float32 network (1.2% here)."""
    model = tiny_flux(guidance_embed=True)
    latent, timesteps, context, pooled = inputs(model.config)
    guidance = torch.tensor([3.5, 3.5])
    with torch.no_grad():
        reference = model(latent, timesteps, context, pooled, guidance)
        half = model.to(torch.bfloat16)(latent, timesteps, context, pooled, guidance)
    assert half.dtype == torch.bfloat16
    relative_error = (half.float() - reference).abs().mean() / reference.abs().mean()
    assert relative_error < 0.02
