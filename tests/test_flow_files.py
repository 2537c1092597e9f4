"""core/flow_files.py: SD3/FLUX files in their released layouts -> the normalised layout; fp8 and
ComfyUI's scaled fp8 upcast on reading; separate encoder/VAE files told apart by content; diffusers
folders read back into single-file names, checked by running our networks against diffusers'."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from core.errors import EngineError
from core.flow_files import (
    find_parts, identify_part, is_flow_layout, missing_parts_message, normalise_flow_keys, part_tensors,
    read_flow_diffusers_folder, upcast_fp8,
)
from core.loading import read_safetensors
from core.models.flux import FluxTransformer, detect_flux
from core.models.mmdit import MMDiT, detect_mmdit
from core.models.vae import AutoencoderKL, VAEConfig
from test_flux import diffusers_forward, diffusers_twin, inputs, tiny_flux
from test_mmdit import TINY_SD35_MEDIUM, diffusers_model_with, random_state_dict
from tiny_models import randomise


def small(*shape, seed=0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --- fp8 ------------------------------------------------------------------------------------

@pytest.mark.parametrize("fp8", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_fp8_file_is_upcast_exactly_to_bf16(tmp_path, fp8):
    weight = (small(8, 4) * 3).to(fp8)
    path = tmp_path / "flux1-dev-fp8.safetensors"
    save_file({"double_blocks.0.img_attn.qkv.weight": weight, "img_in.bias": small(4)}, path)
    tensors, _ = read_safetensors(path)
    assert tensors["double_blocks.0.img_attn.qkv.weight"].dtype == fp8  # read as stored
    out = normalise_flow_keys(tensors)
    got = out["model.diffusion_model.double_blocks.0.img_attn.qkv.weight"]
    assert got.dtype == torch.bfloat16
    assert torch.equal(got.float(), weight.float())  # bf16 holds every fp8 value
    assert out["model.diffusion_model.img_in.bias"].dtype == torch.float32  # the rest untouched


def test_scaled_fp8_weights_are_unscaled_and_their_bookkeeping_dropped(tmp_path):
    """ComfyUI's "fp8 scaled" files: weight = fp8 * scale_weight (one scale per tensor, or one per
    output row); the marker and the scale/input-scale entries are not weights."""
    scaled = (small(6, 4) * 10).to(torch.float8_e4m3fn)
    per_row = small(6, 4, seed=1).to(torch.float8_e4m3fn)
    row_scales = torch.tensor([0.5, 1.0, 2.0, 4.0, 0.25, 3.0])
    path = tmp_path / "flux1-dev-fp8-scaled.safetensors"
    save_file({
        "model.diffusion_model.scaled_fp8": torch.zeros(0, dtype=torch.float8_e4m3fn),
        "model.diffusion_model.double_blocks.0.img_mlp.0.weight": scaled,
        "model.diffusion_model.double_blocks.0.img_mlp.0.scale_weight": torch.tensor(0.0125),
        "model.diffusion_model.double_blocks.0.img_mlp.0.scale_input": torch.tensor(3.0),
        "model.diffusion_model.double_blocks.0.img_mlp.2.weight": per_row,
        "model.diffusion_model.double_blocks.0.img_mlp.2.scale_weight": row_scales,
        "model.diffusion_model.double_blocks.0.img_mlp.0.bias": small(6),
    }, path)
    out = normalise_flow_keys(read_safetensors(path)[0], dtype=torch.float32)
    assert sorted(out) == [
        "model.diffusion_model.double_blocks.0.img_mlp.0.bias",
        "model.diffusion_model.double_blocks.0.img_mlp.0.weight",
        "model.diffusion_model.double_blocks.0.img_mlp.2.weight",
    ]
    torch.testing.assert_close(out["model.diffusion_model.double_blocks.0.img_mlp.0.weight"], scaled.float() * 0.0125)
    torch.testing.assert_close(out["model.diffusion_model.double_blocks.0.img_mlp.2.weight"], per_row.float() * row_scales[:, None])
    assert not torch.equal(out["model.diffusion_model.double_blocks.0.img_mlp.0.weight"], scaled.float())


def test_a_scale_that_fits_no_weight_is_refused():
    with pytest.raises(EngineError, match="does not fit"):
        upcast_fp8({"a.weight": torch.ones(4, 2).to(torch.float8_e4m3fn), "a.scale_weight": torch.ones(3)})


def test_files_without_fp8_are_returned_as_they_are():
    tensors = {"a.weight": torch.ones(2)}
    assert upcast_fp8(tensors) is tensors


# --- single-file layouts ----------------------------------------------------------------------

def test_bfl_transformer_and_autoencoder_files_take_the_prefixes():
    transformer = {"double_blocks.0.img_attn.qkv.weight": small(6, 2), "img_in.weight": small(2, 4)}
    assert set(normalise_flow_keys(transformer)) == {
        "model.diffusion_model.double_blocks.0.img_attn.qkv.weight", "model.diffusion_model.img_in.weight"}
    ae = {"encoder.conv_in.weight": small(4, 3, 3, 3), "decoder.conv_in.weight": small(4, 16, 3, 3)}
    assert set(normalise_flow_keys(ae)) == {"first_stage_model.encoder.conv_in.weight", "first_stage_model.decoder.conv_in.weight"}


def test_comfyui_forge_checkpoint_parts_are_normalised():
    """VAE under ``vae.``, CLIP without its ``text_model.`` level, the projection kept outside it,
    T5's tied embedding under its ``shared`` name, logit scales and position ids dropped."""
    embed = small(10, 4)
    checkpoint = {
        "model.diffusion_model.double_blocks.0.img_mod.lin.weight": small(2, 2),
        "vae.decoder.conv_in.weight": small(4, 16, 3, 3),
        "text_encoders.clip_l.transformer.encoder.layers.0.mlp.fc1.weight": small(4, 4),
        "text_encoders.clip_l.transformer.embeddings.position_ids": torch.arange(77)[None],
        "text_encoders.clip_l.logit_scale": torch.tensor(4.6),
        "text_encoders.clip_g.transformer.text_model.final_layer_norm.weight": small(4),
        "text_encoders.clip_g.transformer.text_projection.weight": small(4, 4),
        "text_encoders.t5xxl.transformer.encoder.embed_tokens.weight": embed,
        "text_encoders.t5xxl.transformer.encoder.final_layer_norm.weight": small(4),
        "text_encoders.t5xxl.transformer.decoder.final_layer_norm.weight": small(4),
    }
    out = normalise_flow_keys(checkpoint)
    assert set(out) == {
        "model.diffusion_model.double_blocks.0.img_mod.lin.weight",
        "first_stage_model.decoder.conv_in.weight",
        "text_encoders.clip_l.transformer.text_model.encoder.layers.0.mlp.fc1.weight",
        "text_encoders.clip_g.transformer.text_model.final_layer_norm.weight",
        "text_encoders.clip_g.transformer.text_projection.weight",
        "text_encoders.t5xxl.transformer.shared.weight",
        "text_encoders.t5xxl.transformer.encoder.final_layer_norm.weight",
    }
    assert out["text_encoders.t5xxl.transformer.shared.weight"] is embed


def test_sd3_official_single_file_names_are_already_normalised():
    checkpoint = {
        "model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": small(6, 2),
        "first_stage_model.decoder.conv_in.weight": small(4, 16, 3, 3),
        "text_encoders.clip_l.transformer.text_model.embeddings.token_embedding.weight": small(5, 4),
        "text_encoders.clip_l.transformer.text_projection.weight": small(4, 4),
        "text_encoders.t5xxl.transformer.shared.weight": small(5, 4),
        "text_encoders.t5xxl.transformer.encoder.embed_tokens.weight": small(5, 4),
    }
    out = normalise_flow_keys(checkpoint)
    assert set(out) == set(checkpoint) - {"text_encoders.t5xxl.transformer.encoder.embed_tokens.weight"}
    assert torch.equal(out["text_encoders.t5xxl.transformer.shared.weight"], checkpoint["text_encoders.t5xxl.transformer.shared.weight"])


def test_is_flow_layout():
    assert is_flow_layout(["double_blocks.0.img_mod.lin.weight"])
    assert is_flow_layout(["model.diffusion_model.joint_blocks.3.x_block.mlp.fc1.weight"])
    assert is_flow_layout(["text_encoders.t5xxl.transformer.shared.weight"])
    assert not is_flow_layout(["model.diffusion_model.input_blocks.0.0.weight", "first_stage_model.encoder.conv_in.weight"])
    assert not is_flow_layout(["encoder.conv_in.weight", "decoder.conv_in.weight"])


# --- separate encoder and VAE files ---------------------------------------------------------------

def clip_skeleton(width: int, layers: int, prefix: str = "text_model.", dtype=torch.float16) -> dict[str, torch.Tensor]:
    """A CLIP text encoder's telling tensors only: the token table (width) and one weight per layer."""
    state = {f"{prefix}embeddings.token_embedding.weight": torch.zeros(3, width, dtype=dtype)}
    state.update({f"{prefix}encoder.layers.{n}.layer_norm1.weight": torch.ones(width, dtype=dtype) for n in range(layers)})
    return state


def t5_skeleton(dtype=torch.float16) -> dict[str, torch.Tensor]:
    return {"shared.weight": torch.zeros(5, 8).to(dtype),
            "encoder.block.0.layer.0.SelfAttention.q.weight": torch.ones(8, 8).to(dtype),
            "encoder.final_layer_norm.weight": torch.ones(8).to(dtype)}


def vae_skeleton(latent_channels: int = 16) -> dict[str, torch.Tensor]:
    return {"encoder.conv_out.weight": torch.zeros(2 * latent_channels, 8, 3, 3),
            "decoder.conv_in.weight": torch.zeros(8, latent_channels, 3, 3)}


def shapes_of(tensors):
    return {key: tuple(value.shape) for key, value in tensors.items()}


def test_identify_part_by_content():
    assert identify_part(shapes_of(clip_skeleton(768, 12))) == "clip_l"
    assert identify_part(shapes_of(clip_skeleton(768, 12, prefix=""))) == "clip_l"
    assert identify_part(shapes_of(clip_skeleton(1280, 32, prefix="transformer.text_model."))) == "clip_g"
    assert identify_part(shapes_of(clip_skeleton(768, 11))) is None  # not a released CLIP-L
    # ... unless its file says which one it is
    assert identify_part(shapes_of(clip_skeleton(768, 11)), "my_clip_l_finetune.safetensors") == "clip_l"
    assert identify_part(shapes_of(clip_skeleton(768, 11)), "clip_l_and_clip_g.safetensors") is None
    assert identify_part(shapes_of(t5_skeleton())) == "t5xxl"
    assert identify_part({"transformer." + k: v for k, v in shapes_of(t5_skeleton()).items()}) == "t5xxl"
    assert identify_part(shapes_of(vae_skeleton())) == "vae16"
    assert identify_part({"vae." + k: v for k, v in shapes_of(vae_skeleton()).items()}) == "vae16"
    assert identify_part(shapes_of(vae_skeleton(latent_channels=4))) is None  # an SD 1.x/SDXL VAE
    assert identify_part({"double_blocks.0.img_mod.lin.weight": (6, 2)}) is None


def test_part_tensors_reads_a_separate_file_under_the_normalised_prefix(tmp_path):
    save_file(clip_skeleton(1280, 32, prefix="") | {"text_projection.weight": torch.zeros(4, 1280)}, tmp_path / "g.safetensors")
    part, tensors = part_tensors(tmp_path / "g.safetensors")
    assert part == "clip_g"
    assert "text_encoders.clip_g.transformer.text_model.encoder.layers.31.layer_norm1.weight" in tensors
    assert "text_encoders.clip_g.transformer.text_projection.weight" in tensors

    save_file(t5_skeleton(torch.float8_e4m3fn), tmp_path / "t5xxl_fp8_e4m3fn.safetensors")
    part, tensors = part_tensors(tmp_path / "t5xxl_fp8_e4m3fn.safetensors")
    assert part == "t5xxl"
    assert tensors["text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.weight"].dtype == torch.bfloat16

    scaled = t5_skeleton(torch.float8_e4m3fn) | {"scaled_fp8": torch.zeros(0, dtype=torch.float8_e4m3fn),
                                                 "encoder.block.0.layer.0.SelfAttention.q.scale_weight": torch.tensor(0.5)}
    save_file(scaled, tmp_path / "t5xxl_fp8_e4m3fn_scaled.safetensors")
    part, tensors = part_tensors(tmp_path / "t5xxl_fp8_e4m3fn_scaled.safetensors", dtype=torch.float16)
    assert part == "t5xxl" and len(tensors) == 3
    assert torch.equal(tensors["text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.weight"],
                       torch.full((8, 8), 0.5, dtype=torch.float16))

    save_file(vae_skeleton(), tmp_path / "ae.safetensors")
    assert set(part_tensors(tmp_path / "ae.safetensors")[1]) == {
        "first_stage_model.encoder.conv_out.weight", "first_stage_model.decoder.conv_in.weight"}

    save_file(vae_skeleton(latent_channels=4), tmp_path / "sdxl_vae.safetensors")
    with pytest.raises(EngineError, match="not a CLIP-L, CLIP-G, T5-XXL or 16-channel VAE"):
        part_tensors(tmp_path / "sdxl_vae.safetensors")


def test_find_parts_chooses_by_content_and_prefers_16_bit_over_fp8(tmp_path):
    encoders, vaes = tmp_path / "text_encoder", tmp_path / "VAE"
    (encoders / "sub").mkdir(parents=True)
    vaes.mkdir()
    # Names that mislead: the content decides. The fp8 T5 sorts first by name and still loses.
    save_file(t5_skeleton(torch.float8_e4m3fn), encoders / "a_t5xxl_fp8_e4m3fn.safetensors")
    save_file(t5_skeleton(torch.float16), encoders / "sub" / "clip_l.safetensors")
    save_file(clip_skeleton(768, 12), encoders / "t5xxl_fp16.safetensors")
    save_file(clip_skeleton(1280, 32), encoders / "clip_g.safetensors")
    (encoders / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    save_file(vae_skeleton(latent_channels=4), vaes / "sdxl_vae.safetensors")
    save_file(vae_skeleton(), vaes / "ae.safetensors")

    found = find_parts([encoders, vaes], ["t5xxl", "clip_l", "vae16"])
    assert found == {"t5xxl": encoders / "sub" / "clip_l.safetensors", "clip_l": encoders / "t5xxl_fp16.safetensors",
                     "vae16": vaes / "ae.safetensors"}
    (encoders / "sub" / "clip_l.safetensors").unlink()
    assert find_parts([encoders], ["t5xxl"]) == {"t5xxl": encoders / "a_t5xxl_fp8_e4m3fn.safetensors"}
    assert find_parts([tmp_path / "absent"], ["t5xxl"]) == {}


def test_missing_parts_message():
    assert missing_parts_message("FLUX", ["t5xxl", "clip_l"]) == \
        "this FLUX file has no text encoders: put t5xxl and clip_l in models/text_encoder"
    assert missing_parts_message("SD 3.5", ["clip_g"]) == "this SD 3.5 file has no text encoder: put clip_g in models/text_encoder"
    assert missing_parts_message("FLUX", ["t5xxl", "clip_l", "vae16"]) == (
        "this FLUX file has no text encoders or VAE: put t5xxl and clip_l in models/text_encoder; "
        "put the FLUX VAE in models/VAE")


# --- diffusers folders ----------------------------------------------------------------------------

def tiny_diffusers_vae(seed: int = 3):
    from diffusers import AutoencoderKL as DiffusersAutoencoderKL

    vae = DiffusersAutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        use_quant_conv=False, use_post_quant_conv=False, scaling_factor=0.3611, shift_factor=0.1159,
    )
    randomise([vae], seed)
    return vae.eval()


def tiny_text_encoders(seed: int = 4):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    clip = CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                          vocab_size=100, projection_dim=32, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    t5 = T5Config(d_model=32, d_ff=48, num_layers=2, num_heads=2, d_kv=16, vocab_size=100, feed_forward_proj="gated-gelu")
    return CLIPTextModel(clip), CLIPTextModelWithProjection(clip), T5EncoderModel(t5)


def write_pipeline(folder: Path, class_name: str, components: dict, scheduler: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    for name, (model, options) in components.items():
        model.save_pretrained(folder / name, **options)
    if scheduler is not None:
        (folder / "scheduler").mkdir()
        (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    return folder


def assert_same_tensors(got: dict, expected: dict):
    assert got.keys() == expected.keys(), (sorted(got.keys() - expected.keys()), sorted(expected.keys() - got.keys()))
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


def test_sd3_folder_runs_like_diffusers_sd3_transformer(tmp_path):
    """An SD 3.5 medium-shaped transformer (attn2, q/k norms, a pre-only last text stream) saved
    by diffusers and read back: the single-file state it was made from, and the same output."""
    config = TINY_SD35_MEDIUM
    state = random_state_dict(config)
    theirs = diffusers_model_with(config, state)
    _, clip_l, t5 = tiny_text_encoders()
    _, clip_g, _ = tiny_text_encoders(seed=5)
    folder = write_pipeline(tmp_path / "sd3", "StableDiffusion3Pipeline", {
        "transformer": (theirs, {}), "vae": (tiny_diffusers_vae(), {}),
        "text_encoder": (clip_l, {}), "text_encoder_2": (clip_g, {}), "text_encoder_3": (t5, {}),
    }, scheduler={"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0})
    tensors, metadata = read_flow_diffusers_folder(folder)

    transformer = {k[len("model.diffusion_model."):]: v for k, v in tensors.items() if k.startswith("model.diffusion_model.")}
    assert_same_tensors(transformer, state)
    assert detect_mmdit(shapes_of(transformer)) == config
    ours = MMDiT(config).eval()
    ours.load_state_dict(transformer, strict=True)
    generator = torch.Generator().manual_seed(1)
    call = dict(hidden_states=torch.randn(2, 16, 8, 6, generator=generator), timestep=torch.tensor([900.0, 120.0]),
                encoder_hidden_states=torch.randn(2, 5, config.context_dim, generator=generator),
                pooled_projections=torch.randn(2, config.pooled_dim, generator=generator))
    with torch.no_grad():
        expected = theirs(**call, return_dict=False)[0]
        got = ours(*call.values())  # ours takes the same four, positionally in this order
    assert expected.abs().mean() > 0.1
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)

    for part, model in (("clip_l", clip_l), ("clip_g", clip_g)):
        prefix = f"text_encoders.{part}.transformer."
        encoder = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        assert_same_tensors(encoder, {k: v for k, v in model.state_dict().items() if not k.endswith("position_ids")})
    t5_prefix = "text_encoders.t5xxl.transformer."
    t5_state = {k[len(t5_prefix):]: v for k, v in tensors.items() if k.startswith(t5_prefix)}
    assert_same_tensors(t5_state, {k: v for k, v in t5.state_dict().items() if k != "encoder.embed_tokens.weight"})
    assert metadata == {"flow_family": "sd3", "sigma_shift": "3.0",
                        "latent_scale_factor": "0.3611", "latent_shift_factor": "0.1159"}


@pytest.mark.parametrize("variant", ["dev", "schnell"])
def test_flux_folder_runs_like_diffusers_flux_transformer(tmp_path, variant):
    """The transformer saved in shards (an index and several files, as the released FLUX repos
    hold it), the CLIP-L saved by transformers 5 (no ``text_model.`` level)."""
    model = tiny_flux(guidance_embed=variant == "dev")
    twin = diffusers_twin(model)
    clip_l, _, t5 = tiny_text_encoders()
    scheduler = ({"shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15,
                  "base_image_seq_len": 256, "max_image_seq_len": 4096} if variant == "dev"
                 else {"shift": 1.0, "use_dynamic_shifting": False})
    folder = write_pipeline(tmp_path / variant, "FluxPipeline", {
        "transformer": (twin, {"max_shard_size": "1MB"}), "text_encoder": (clip_l, {}), "text_encoder_2": (t5, {}),
    }, scheduler=scheduler)
    assert len(list((folder / "transformer").glob("*.safetensors"))) > 1
    tensors, metadata = read_flow_diffusers_folder(folder)

    transformer = {k[len("model.diffusion_model."):]: v for k, v in tensors.items() if k.startswith("model.diffusion_model.")}
    assert_same_tensors(transformer, model.state_dict())
    ours = FluxTransformer(detect_flux(shapes_of(transformer))).eval()
    ours.load_state_dict(transformer, strict=True)
    latent, timesteps, context, pooled = inputs(ours.config)
    guidance = torch.tensor([3.5, 2.0]) if variant == "dev" else None
    with torch.no_grad():
        got = ours(latent, timesteps, context, pooled, guidance)
        expected = diffusers_forward(twin, latent, timesteps, context, pooled, guidance)
    assert got.abs().mean() > 0.1
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)

    clip_keys = {k for k in tensors if k.startswith("text_encoders.clip_l.")}
    assert clip_keys == {"text_encoders.clip_l.transformer.text_model." + k for k in clip_l.state_dict()
                         if not k.endswith("position_ids")}
    assert "text_encoders.t5xxl.transformer.shared.weight" in tensors
    assert not any(k.startswith(("first_stage_model.", "text_encoders.clip_g.")) for k in tensors)
    expected_metadata = {"flow_family": "flux", "flux_kind": variant, "sigma_shift": str(scheduler["shift"]),
                         "dynamic_shifting": "1" if variant == "dev" else "0"}
    if variant == "dev":
        expected_metadata |= {"base_shift": "0.5", "max_shift": "1.15", "base_image_seq_len": "256", "max_image_seq_len": "4096"}
    assert metadata == expected_metadata


def test_sixteen_channel_vae_from_a_folder_decodes_like_diffusers(tmp_path):
    """The diffusers VAE read into ldm names drives our autoencoder (its quant convs set to the
    identity: the SD3/FLUX VAE has none) to the same pictures and latents as diffusers'."""
    theirs = tiny_diffusers_vae()
    folder = write_pipeline(tmp_path / "flux", "FluxPipeline", {"vae": (theirs, {})})
    tensors, metadata = read_flow_diffusers_folder(folder)
    assert "flux_kind" not in metadata  # no transformer to tell
    vae_state = {k[len("first_stage_model."):]: v for k, v in tensors.items()}
    assert not any(key.startswith(("quant_conv", "post_quant_conv")) for key in vae_state)
    ours = AutoencoderKL(VAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=16, embed_dim=16,
                                   scaling_factor=1.0)).eval()
    identity = {"quant_conv.weight": torch.eye(32)[:, :, None, None], "quant_conv.bias": torch.zeros(32),
                "post_quant_conv.weight": torch.eye(16)[:, :, None, None], "post_quant_conv.bias": torch.zeros(16)}
    ours.load_state_dict(vae_state | identity, strict=True)
    generator = torch.Generator().manual_seed(5)
    latents = torch.randn(1, 16, 4, 6, generator=generator)
    images = torch.rand(1, 3, 16, 8, generator=generator) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(ours.decode(latents), theirs.decode(latents).sample, atol=1e-4, rtol=0)
        torch.testing.assert_close(ours.encode_moments(images)[0], theirs.encode(images).latent_dist.mean, atol=1e-4, rtol=0)


def test_other_pipelines_and_unknown_transformer_weights_are_refused(tmp_path):
    folder = tmp_path / "sdxl"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    with pytest.raises(EngineError, match="not an SD3 or FLUX diffusers folder"):
        read_flow_diffusers_folder(folder)

    odd = tmp_path / "odd"
    (odd / "transformer").mkdir(parents=True)
    (odd / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    save_file({"x_embedder.weight": torch.zeros(4, 4), "controlnet_blocks.0.weight": torch.zeros(4, 4)},
              odd / "transformer" / "diffusion_pytorch_model.safetensors")
    with pytest.raises(EngineError, match="unknown transformer weight 'controlnet_blocks.0.weight'"):
        read_flow_diffusers_folder(odd)


def test_a_shard_index_cannot_name_a_file_outside_the_component_folder(tmp_path):
    folder = tmp_path / "flux"
    (folder / "transformer").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    save_file({"x_embedder.weight": torch.zeros(4, 4)}, tmp_path / "outside.safetensors")
    index = {"weight_map": {"x_embedder.weight": "../../outside.safetensors"}}
    (folder / "transformer" / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(EngineError, match="not a file in the model's folder"):
        read_flow_diffusers_folder(folder)
