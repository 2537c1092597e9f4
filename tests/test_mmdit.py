"""The SD3 / SD 3.5 MMDiT (core/models/mmdit.py): numerical parity with diffusers'
SD3Transformer2DModel on tiny random weights in the real key layout, detection of the config from
shapes, and the full-size key/shape layouts of the released models on the meta device."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from core.models.mmdit import MMDiT, MMDiTConfig, detect_mmdit

REFERENCE_DIR = Path(__file__).parent / "reference"

# Width and depth cut, every key family present: the last block's pre-only text stream, attn2 in
# the first blocks (3.5 medium), RMS q/k norms (3.5) with heads narrower than SD3's 64.
TINY_SD3 = MMDiTConfig(depth=3, hidden_size=128, num_heads=2, pos_embed_max_size=8, mlp_hidden=512)
TINY_SD35_MEDIUM = replace(TINY_SD3, num_heads=4, qk_norm=True, dual_attention_blocks=(0, 1))
TINY_SD35_LARGE = replace(TINY_SD3, num_heads=4, qk_norm=True)


def random_state_dict(config: MMDiTConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Every tensor random (norm scales and the position table included), sized so that the
    activations stay of order one through the blocks."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, tensor in MMDiT(config).state_dict().items():
        fan_in = tensor[0].numel() if tensor.dim() > 1 else 1
        values = torch.randn(tensor.shape, generator=generator) / fan_in ** 0.5
        if key.endswith(("ln_q.weight", "ln_k.weight")):
            values = 1 + 0.3 * values
        state[key] = values
    return state


def model_with(config: MMDiTConfig, state: dict[str, torch.Tensor]) -> MMDiT:
    model = MMDiT(config).eval()
    model.load_state_dict(state, strict=True)
    return model


def diffusers_sd3(config: MMDiTConfig):
    """diffusers' SD3Transformer2DModel with the config that matches ours."""
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(
        patch_size=config.patch_size, in_channels=config.in_channels, num_layers=config.depth,
        attention_head_dim=config.head_dim, num_attention_heads=config.num_heads,
        joint_attention_dim=config.context_dim, caption_projection_dim=config.hidden_size,
        pooled_projection_dim=config.pooled_dim, out_channels=config.out_channels,
        pos_embed_max_size=config.pos_embed_max_size, dual_attention_layers=config.dual_attention_blocks,
        qk_norm="rms_norm" if config.qk_norm else None,
    )


def diffusers_model_with(config: MMDiTConfig, state: dict[str, torch.Tensor]):
    """diffusers' SD3Transformer2DModel built with the matching config, its weights converted from
    our state dict by diffusers' own single-file converter, which must consume every key."""
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    checkpoint = {f"model.diffusion_model.{k}": v.clone() for k, v in state.items()}
    converted = convert_sd3_transformer_checkpoint_to_diffusers(checkpoint)
    assert checkpoint == {}, f"keys the converter did not consume: {sorted(checkpoint)}"
    model = diffusers_sd3(config).eval()
    missing, unexpected = model.load_state_dict(converted, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return model


@pytest.mark.parametrize("config", [TINY_SD3, TINY_SD35_MEDIUM, TINY_SD35_LARGE], ids=["sd3", "sd35_medium", "sd35_large"])
def test_matches_diffusers_sd3_transformer(config):
    state = random_state_dict(config)
    ours = model_with(config, state)
    theirs = diffusers_model_with(config, state)
    generator = torch.Generator().manual_seed(1)
    # A 12x8 latent: a 6x4 patch grid, not square, so the crop from the 8x8 position table
    # starts at a different offset on each axis (row 1, column 2).
    x = torch.randn(2, 16, 12, 8, generator=generator)
    timesteps = torch.tensor([999.0, 312.5])
    context = torch.randn(2, 7, config.context_dim, generator=generator)
    pooled = torch.randn(2, config.pooled_dim, generator=generator)
    with torch.no_grad():
        expected = theirs(hidden_states=x, encoder_hidden_states=context, pooled_projections=pooled,
                          timestep=timesteps, return_dict=False)[0]
        got = ours(x, timesteps, context, pooled)
    assert got.shape == x.shape
    assert expected.abs().mean() > 0.1  # the comparison is not between two near-zero maps
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_position_table_is_cropped_around_its_centre():
    config = TINY_SD3
    model = MMDiT(config)
    size = config.pos_embed_max_size
    model.pos_embed.copy_(torch.arange(size * size, dtype=torch.float32)[None, :, None].expand(1, -1, config.hidden_size))
    # A 2x4 grid in the 8x8 table: rows 3..4, columns 2..5.
    rows = model.cropped_pos_embed(2, 4)[0, :, 0].reshape(2, 4)
    assert rows.tolist() == [[26, 27, 28, 29], [34, 35, 36, 37]]
    with pytest.raises(ValueError, match="larger than"):
        model.cropped_pos_embed(size + 1, 2)


def test_latent_sides_off_the_patch_grid_keep_their_size():
    model = model_with(TINY_SD3, random_state_dict(TINY_SD3))
    x = torch.randn(1, 16, 9, 7)
    with torch.no_grad():
        out = model(x, torch.tensor([500.0]), torch.randn(1, 3, 4096), torch.randn(1, 2048))
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("config", [TINY_SD3, TINY_SD35_MEDIUM, TINY_SD35_LARGE], ids=["sd3", "sd35_medium", "sd35_large"])
def test_detect_reads_the_config_back_from_shapes(config):
    shapes = {key: tuple(t.shape) for key, t in MMDiT(config).state_dict().items()}
    assert detect_mmdit(shapes) == config


def test_detect_refuses_other_layouts():
    with pytest.raises(ValueError, match="joint_blocks"):
        detect_mmdit({"input_blocks.0.0.weight": (320, 4, 3, 3)})


# The released models, from their published diffusers configs (tests/reference/README.md).
FULL_SIZE = {
    "sd3_medium": MMDiTConfig(depth=24, hidden_size=1536, num_heads=24, pos_embed_max_size=192, mlp_hidden=6144),
    "sd35_medium": MMDiTConfig(depth=24, hidden_size=1536, num_heads=24, pos_embed_max_size=384, mlp_hidden=6144,
                               qk_norm=True, dual_attention_blocks=tuple(range(13))),
    "sd35_large": MMDiTConfig(depth=38, hidden_size=2432, num_heads=38, pos_embed_max_size=192, mlp_hidden=9728,
                              qk_norm=True),
}


def manifest_shapes(name: str) -> dict[str, tuple]:
    manifest = json.loads((REFERENCE_DIR / f"mmdit_{name}.json").read_text())
    return {key: tuple(shape) for key, shape in manifest["tensors"].items()}


@pytest.mark.parametrize("name", sorted(FULL_SIZE))
def test_full_size_layout_matches_the_manifest(name):
    expected = manifest_shapes(name)
    with torch.device("meta"):
        model = MMDiT(FULL_SIZE[name])
    got = {key: tuple(t.shape) for key, t in model.state_dict().items()}
    assert got.keys() == expected.keys(), (sorted(got.keys() - expected.keys()), sorted(expected.keys() - got.keys()))
    assert got == expected
    assert detect_mmdit(expected) == FULL_SIZE[name]


@pytest.mark.parametrize("name", sorted(FULL_SIZE))
def test_full_size_manifest_is_what_diffusers_converter_reads(name):
    """The manifest's names are the ones diffusers' single-file converter expects: it consumes
    every key, and what it yields is the key/shape set of SD3Transformer2DModel built on meta
    with the same config."""
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    config = FULL_SIZE[name]
    checkpoint = {f"model.diffusion_model.{k}": torch.empty(s, device="meta") for k, s in manifest_shapes(name).items()}
    converted = convert_sd3_transformer_checkpoint_to_diffusers(checkpoint)
    assert checkpoint == {}
    with torch.device("meta"):
        theirs = diffusers_sd3(config)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in theirs.state_dict().items()}


def test_bfloat16_weights_run_in_their_dtype_and_answer_in_the_latents():
    """Weights in bf16 (how the released files are run): the inputs are cast to them, the result
    comes back in the latent's dtype, close to the float32 network's."""
    state = random_state_dict(TINY_SD35_MEDIUM)
    full = model_with(TINY_SD35_MEDIUM, state)
    half = model_with(TINY_SD35_MEDIUM, state).to(torch.bfloat16)
    generator = torch.Generator().manual_seed(2)
    inputs = (torch.randn(1, 16, 8, 8, generator=generator), torch.tensor([640.0]),
              torch.randn(1, 5, 4096, generator=generator), torch.randn(1, 2048, generator=generator))
    with torch.no_grad():
        expected, got = full(*inputs), half(*inputs)
    assert got.dtype == torch.float32
    assert (got - expected).abs().mean() < 0.05 * expected.abs().mean()
