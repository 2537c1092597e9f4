"""LoRAs on SD 3.x and FLUX.1 (extensions/lora with flow_names.py): diffusers/PEFT files against
diffusers' own models with the LoRA fused by peft, the kohya/BFL single-file names of the same
delta, exact removal, partial q/k/v rows, text encoders (CLIP-L, CLIP-G, T5) and refusing a LoRA
made for another family. Tiny LatentFlow containers with random weights; merging goes through
LoraManager.activate with a folder and prompt tags, as the engine calls it."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from core.engine import Engine

from core.models.clip import TextEncoderConfig
from core.models.detection import ModelSpec
from core.models.flow_model import LatentFlow
from core.models.flux import FluxConfig
from core.models.mmdit import MMDiTConfig
from core.models.t5 import T5EncoderConfig
from core.models.vae import VAEConfig
from core.params import GenerationParams
from core.prompts.parser import extract_extra_networks
from extensions.lora import LoraManager
from extensions.lora.formats import Module, guess_family
from extensions.lora.merge import checkpoint_shapes
from extensions.lora.names import build_table, canonical_name
from tiny_models import REFERENCE_DIR

ROOT = Path(__file__).resolve().parent.parent
UNET = "model.diffusion_model."
RANK, ALPHA = 4, 6.0
TAG_WEIGHT = 0.7

CLIP_L = TextEncoderConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_layers=2)
CLIP_G = TextEncoderConfig(vocab_size=100, hidden_size=48, intermediate_size=96, num_layers=2, projection_dim=48)
T5 = T5EncoderConfig(vocab_size=100, d_model=32, d_kv=16, d_ff=48, num_layers=2, num_heads=2)
VAE = VAEConfig(ch=32, ch_mult=(1,), num_res_blocks=1, z_channels=16, embed_dim=16, use_quant_conv=False)
# Heads stay 128 wide (FLUX's rotary axes); narrow text widths keep the embedders small.
TINY_FLUX = FluxConfig(hidden_size=256, num_heads=2, depth=2, depth_single=2, context_dim=32, pooled_dim=32)
# SD 3.5 medium's shape: attn2 in the first blocks, q/k norms, the last block's text stream pre-only.
TINY_SD3 = MMDiTConfig(depth=3, hidden_size=128, num_heads=2, pos_embed_max_size=8, mlp_hidden=512, context_dim=32,
                       pooled_dim=32, qk_norm=True, dual_attention_blocks=(0, 1))


def tiny_flow(family: str, seed: int = 0) -> LatentFlow:
    if family == "sd3":
        spec = ModelSpec(family="sd3", unet=None, vae=VAE, text=CLIP_L, prediction="flow", transformer=TINY_SD3,
                         text_parts=(("clip_l", CLIP_L), ("clip_g", CLIP_G), ("t5xxl", T5)))
    else:
        spec = ModelSpec(family="flux-dev", unet=None, vae=VAE, text=CLIP_L, prediction="flow", transformer=TINY_FLUX,
                         text_parts=(("clip_l", CLIP_L), ("t5xxl", T5)))
    model = LatentFlow(spec).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.unet.named_parameters():
            values = torch.randn(param.shape, generator=generator)
            if name.endswith((".scale", "ln_q.weight", "ln_k.weight")):
                param.copy_(1 + 0.2 * values)
            else:
                param.copy_(values / (param[0].numel() if param.dim() > 1 else 16) ** 0.5)
    return model


def tags(prompt):
    return extract_extra_networks(prompt)[1]


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def changed(model, saved):
    return {k for k, v in model.named_parameters() if not torch.equal(v, saved[k])}


@pytest.fixture
def lora_dir(tmp_path):
    folder = tmp_path / "Lora"
    folder.mkdir()
    return folder


def activate(manager, model, folder, prompt):
    activation = manager.activate(model, folder, tags(prompt))
    return activation.warnings


# --- diffusers twins (tests/test_flux.py, tests/test_mmdit.py show the conversions) ---------

def flux_twin(model):
    from test_flux import diffusers_twin

    return diffusers_twin(model.unet)


def sd3_twin(model):
    from test_mmdit import diffusers_model_with

    return diffusers_model_with(TINY_SD3, model.unet.state_dict())


def single_file_to_diffusers(family: str):
    """diffusers' converter from single-file transformer keys (with ``model.diffusion_model.``)."""
    if family == "sd3":
        from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

        return convert_sd3_transformer_checkpoint_to_diffusers
    from diffusers_oracle import diffusers_converter

    return diffusers_converter(TINY_FLUX.hidden_size)


def row_origins(model, family: str) -> dict[str, tuple[str, torch.Tensor]]:
    """diffusers parameter -> (single-file key, the rows of that key it is made of), found by
    running diffusers' converter over tensors whose every row holds its own number."""
    numbered, keys = {}, sorted(model.unet.state_dict())
    for index, key in enumerate(keys):
        shape = model.unet.state_dict()[key].shape
        rows = torch.arange(shape[0], dtype=torch.float64) + index * 100_000
        numbered[UNET + key] = rows.reshape(-1, *[1] * (len(shape) - 1)).expand(shape).clone()
    converted = single_file_to_diffusers(family)(numbered)
    origins = {}
    for name, value in converted.items():
        first = value.reshape(value.shape[0], -1)[:, 0] if value.dim() else value.reshape(1)
        index = int(first[0].item()) // 100_000
        origins[name] = (UNET + keys[index], (first - index * 100_000).long())
    return origins


# --- LoRAs ---------------------------------------------------------------------------------

FLUX_TARGETS = ["to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0", "to_add_out",
                "proj_mlp", "proj_out", "norm1.linear", "norm1_context.linear", "norm.linear", "norm_out.linear",
                "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "x_embedder",
                "context_embedder", "timestep_embedder.linear_1", "guidance_embedder.linear_2",
                "text_embedder.linear_1"]
SD3_TARGETS = ["to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0", "to_add_out",
               "attn2.to_q", "attn2.to_out.0", "norm1.linear", "norm1_context.linear", "norm_out.linear",
               "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "proj_out",
               "context_embedder", "timestep_embedder.linear_2", "text_embedder.linear_1"]


def peft_lora_on(twin, targets, seed=5) -> dict[str, torch.Tensor]:
    """peft's LoRA layers put into the diffusers twin with random factors, scaled by TAG_WEIGHT
    as a <lora:x:0.7> tag scales ours; returns its state dict in diffusers' file names."""
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    inject_adapter_in_model(LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=targets), twin)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in twin.named_parameters():
            if ".lora_" in name:
                param.copy_(0.05 * torch.randn(param.shape, generator=generator))
    from peft.tuners.lora import LoraLayer

    for module in twin.modules():
        if isinstance(module, LoraLayer):
            module.set_scale("default", TAG_WEIGHT)
    return {"transformer." + k: v.clone() for k, v in get_peft_model_state_dict(twin).items()}


def fuse(twin):
    from peft.tuners.lora import LoraLayer

    for module in twin.modules():
        if isinstance(module, LoraLayer):
            module.merge()


def save_peft(folder, name, tensors, component="transformer"):
    metadata = {"lora_adapter_metadata": json.dumps({f"{component}.r": RANK, f"{component}.lora_alpha": ALPHA})}
    save_file(tensors, folder / f"{name}.safetensors", metadata=metadata)


def as_single_file(peft_file: dict[str, torch.Tensor], origins) -> dict[str, dict[str, torch.Tensor]]:
    """The same delta under the single-file names: the LoRAs of one fused weight become one LoRA
    of rank (parts x RANK): their downs stacked, their ups placed at their rows (found by the
    converter, so swapped AdaLN halves land right). Returns module -> {down, up, alpha}."""
    parts: dict[str, list] = {}
    for key, down in peft_file.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[len("transformer."): -len(".lora_A.weight")]
        checkpoint_key, rows = origins[module + ".weight"]
        parts.setdefault(checkpoint_key, []).append((rows, down, peft_file[key.replace("lora_A", "lora_B")]))
    out = {}
    for checkpoint_key, found in parts.items():
        height = origins_height(origins, checkpoint_key)
        up = torch.zeros(height, RANK * len(found))
        for index, (rows, _, part_up) in enumerate(found):
            up[rows, index * RANK:(index + 1) * RANK] = part_up
        down = torch.cat([part_down for _, part_down, _ in found])
        module = checkpoint_key[len(UNET): -len(".weight")]
        out[module] = {"down": down, "up": up, "alpha": torch.tensor(ALPHA * len(found))}  # scale ALPHA / RANK
    return out


def origins_height(origins, checkpoint_key) -> int:
    return max(int(rows.max()) for key, rows in origins.values() if key == checkpoint_key) + 1


def kohya_diffusers_names(peft_file: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers' module names in kohya's form (``lora_transformer_transformer_blocks_0_attn_to_q``),
    each with its own alpha."""
    out = {}
    for key, value in peft_file.items():
        module, _, role = key.rpartition(".lora_")
        name = "lora_transformer_" + module.removeprefix("transformer.").replace(".", "_")
        out[f"{name}.lora_{'down' if role.startswith('A') else 'up'}.weight"] = value
        out[f"{name}.alpha"] = torch.tensor(ALPHA)
    return out


def kohya_file(single: dict) -> dict[str, torch.Tensor]:
    out = {}
    for module, t in single.items():
        name = "lora_unet_" + module.replace(".", "_")
        out.update({f"{name}.lora_down.weight": t["down"], f"{name}.lora_up.weight": t["up"],
                    f"{name}.alpha": t["alpha"]})
    return out


def bfl_file(single: dict) -> dict[str, torch.Tensor]:
    """ComfyUI / BFL / ai-toolkit: dotted single-file names with PEFT's lora_A / lora_B."""
    out = {}
    for module, t in single.items():
        name = "diffusion_model." + module
        out.update({f"{name}.lora_A.weight": t["down"], f"{name}.lora_B.weight": t["up"], f"{name}.alpha": t["alpha"]})
    return out


# --- (a) parity with diffusers, (b) kohya / BFL names, (c) exact removal ---------------------

def flux_outputs(model, twin):
    from test_flux import diffusers_forward, inputs

    latent, timesteps, context, pooled = inputs(TINY_FLUX)
    guidance = torch.tensor([3.5, 1.0])
    with torch.no_grad():
        return model.unet(latent, timesteps, context, pooled, guidance), diffusers_forward(
            twin, latent, timesteps, context, pooled, guidance)


def sd3_outputs(model, twin):
    """Both networks on the same 12x8 latents, text and timesteps (as tests/test_mmdit.py calls them)."""
    generator = torch.Generator().manual_seed(1)
    x, context, pooled = (torch.randn(shape, generator=generator)
                          for shape in ((2, 16, 12, 8), (2, 7, TINY_SD3.context_dim), (2, TINY_SD3.pooled_dim)))
    timesteps = torch.tensor([999.0, 312.5])
    with torch.no_grad():
        theirs = twin(hidden_states=x, encoder_hidden_states=context, pooled_projections=pooled, timestep=timesteps,
                      return_dict=False)[0]
        return model.unet(x, timesteps, context, pooled), theirs


CASES = {"flux": (flux_twin, flux_outputs, FLUX_TARGETS), "sd3": (sd3_twin, sd3_outputs, SD3_TARGETS)}


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_diffusers_lora_matches_peft_fused_in_diffusers_and_kohya_names_give_the_same(family, lora_dir):
    make_twin, outputs, targets = CASES[family]
    model = tiny_flow(family)
    origins = row_origins(model, family)
    twin = make_twin(model)
    before, _ = outputs(model, twin)
    peft_file = peft_lora_on(twin, targets)
    fuse(twin)
    save_peft(lora_dir, "diffusers", peft_file)
    save_file(kohya_diffusers_names(peft_file), lora_dir / "diffusers_kohya.safetensors")
    single = as_single_file(peft_file, origins)
    save_file(kohya_file(single), lora_dir / "kohya.safetensors", metadata={"ss_base_model_version": "flux1"
                                                                            if family == "flux" else "sd3"})
    save_file(bfl_file(single), lora_dir / "bfl.safetensors")

    manager, saved = LoraManager(), snapshot(model)
    assert activate(manager, model, lora_dir, f"<lora:diffusers:{TAG_WEIGHT}>") == []
    ours, theirs = outputs(model, twin)
    assert (ours - before).abs().max() > 1e-2  # the LoRA changes the picture
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)
    reference = {k: v.detach().clone() for k, v in model.named_parameters()}
    fused_rows = {key for key, _ in (origins[k[len("transformer."): -len(".lora_A.weight")] + ".weight"]
                                     for k in peft_file if k.endswith(".lora_A.weight"))}
    assert changed(model, saved) == fused_rows

    for name in ("diffusers_kohya", "kohya", "bfl"):
        assert activate(manager, model, lora_dir, f"<lora:{name}:{TAG_WEIGHT}>") == [], name
        for key in fused_rows:
            torch.testing.assert_close(model.get_parameter(key), reference[key], rtol=0, atol=1e-6, msg=f"{name} {key}")
        assert changed(model, saved) == fused_rows

    activate(manager, model, lora_dir, "")
    assert changed(model, saved) == set()  # bit-identical after removal


def test_a_lora_on_one_of_q_k_v_changes_only_its_rows(lora_dir):
    """to_k alone -> the middle third of the fused qkv; proj_mlp -> linear1's rows after q, k, v."""
    model = tiny_flow("flux")
    width = TINY_FLUX.hidden_size
    generator = torch.Generator().manual_seed(3)
    down, up = 0.1 * torch.randn(RANK, width, generator=generator), 0.1 * torch.randn(width, RANK, generator=generator)
    save_peft(lora_dir, "q", {"transformer.transformer_blocks.1.attn.to_k.lora_A.weight": down,
                              "transformer.transformer_blocks.1.attn.to_k.lora_B.weight": up,
                              "transformer.single_transformer_blocks.0.proj_mlp.lora_A.weight": down.clone(),
                              "transformer.single_transformer_blocks.0.proj_mlp.lora_B.weight":
                                  torch.randn(TINY_FLUX.mlp_hidden, RANK, generator=generator)})
    saved = snapshot(model)
    assert activate(LoraManager(), model, lora_dir, "<lora:q:1>") == []
    qkv, linear1 = UNET + "double_blocks.1.img_attn.qkv.weight", UNET + "single_blocks.0.linear1.weight"
    assert changed(model, saved) == {qkv, linear1}
    difference = model.get_parameter(qkv) - saved[qkv]
    torch.testing.assert_close(difference[width:2 * width], ALPHA / RANK * up @ down, rtol=0, atol=1e-6)
    assert difference[:width].abs().max() == 0 and difference[2 * width:].abs().max() == 0
    mlp_change = model.get_parameter(linear1) - saved[linear1]
    assert mlp_change[:3 * width].abs().max() == 0 and mlp_change[3 * width:].abs().max() > 0


# --- text encoders -----------------------------------------------------------------------------

TEXT_CASES = {
    # family: [(LoRA module name, our checkpoint key)]
    "flux": [("lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
              "text_encoders.clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight"),
             ("text_encoder.text_model.encoder.layers.1.mlp.fc1",
              "text_encoders.clip_l.transformer.text_model.encoder.layers.1.mlp.fc1.weight"),
             ("text_encoder_2.encoder.block.0.layer.0.SelfAttention.q",  # FLUX's second encoder is T5
              "text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.weight"),
             ("lora_te3_encoder_block_1_layer_1_DenseReluDense_wi_0",
              "text_encoders.t5xxl.transformer.encoder.block.1.layer.1.DenseReluDense.wi_0.weight")],
    "sd3": [("lora_te1_text_model_encoder_layers_1_self_attn_out_proj",
             "text_encoders.clip_l.transformer.text_model.encoder.layers.1.self_attn.out_proj.weight"),
            ("lora_te2_text_model_encoder_layers_0_mlp_fc2",
             "text_encoders.clip_g.transformer.text_model.encoder.layers.0.mlp.fc2.weight"),
            ("text_encoder_2.encoder.layers.1.self_attn.k_proj",  # no text_model. level (transformers 5)
             "text_encoders.clip_g.transformer.text_model.encoder.layers.1.self_attn.k_proj.weight"),
            ("text_encoder_3.encoder.block.1.layer.0.SelfAttention.o",
             "text_encoders.t5xxl.transformer.encoder.block.1.layer.0.SelfAttention.o.weight")],
}


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_text_encoder_loras_follow_the_formula_and_are_removed(family, lora_dir):
    model = tiny_flow(family)
    shapes = checkpoint_shapes(model)
    file, expected = {}, {}
    for seed, (name, key) in enumerate(TEXT_CASES[family]):
        generator = torch.Generator().manual_seed(seed)
        out_width, in_width = shapes[key]
        down, up = torch.randn(RANK, in_width, generator=generator), torch.randn(out_width, RANK, generator=generator)
        dotted = not name.startswith("lora_")
        file[name + (".lora_A.weight" if dotted else ".lora_down.weight")] = down
        file[name + (".lora_B.weight" if dotted else ".lora_up.weight")] = up
        file[name + ".alpha"] = torch.tensor(2.0)
        expected[key] = 0.5 * 2.0 / RANK * up @ down  # te weight 0.5
    save_file(file, lora_dir / "te.safetensors")
    manager, saved = LoraManager(), snapshot(model)
    before = model.checkpoint_state_dict()
    assert activate(manager, model, lora_dir, "<lora:te:0.5:1>") == []
    after = model.checkpoint_state_dict()
    assert {k for k in before if not torch.equal(before[k], after[k])} == set(expected)
    for key, delta in expected.items():
        torch.testing.assert_close(after[key] - before[key], delta, rtol=0, atol=1e-5, msg=key)
    activate(manager, model, lora_dir, "")
    assert changed(model, saved) == set()


# --- families -----------------------------------------------------------------------------------

def test_every_single_file_transformer_layer_has_its_kohya_name():
    for family in ("flux", "sd3"):
        model = tiny_flow(family)
        table = build_table(checkpoint_shapes(model))
        for key, value in model.unet.state_dict().items():
            if key.endswith(".weight") and value.dim() >= 2:
                name = canonical_name("lora_unet_" + key[: -len(".weight")].replace(".", "_"), True)
                assert table[name].key == UNET + key and table[name].rows is None


def lora_module(name, width):
    return Module(name, {"lora_down": torch.zeros(RANK, width), "lora_up": torch.zeros(8, RANK)})


@pytest.mark.parametrize("names, width, metadata, family", [
    (["lora_unet_double_blocks_0_img_attn_qkv"], 64, {}, "flux-dev"),
    (["diffusion_model.single_blocks.3.linear1"], 64, {}, "flux-dev"),
    (["transformer.single_transformer_blocks.0.attn.to_q"], 64, {}, "flux-dev"),
    (["lora_unet_joint_blocks_0_x_block_attn_qkv"], 64, {}, "sd3"),
    (["transformer.transformer_blocks.0.attn.to_q"], 3072, {}, "flux-dev"),  # double blocks alone: the width
    (["transformer.transformer_blocks.0.attn.to_q"], 1536, {}, "sd3"),
    (["transformer.transformer_blocks.0.attn.to_q"], 64, {}, None),
    (["transformer.transformer_blocks.0.attn.to_q", "transformer.transformer_blocks.0.attn2.to_q"], 64, {}, "sd3"),
    (["transformer.transformer_blocks.0.attn.to_q"], 64, {"ss_base_model_version": "flux1"}, "flux-dev"),
    (["transformer.transformer_blocks.0.attn.to_q"], 64, {"ss_base_model_version": "sd3"}, "sd3"),
    (["lora_te1_text_model_encoder_layers_0_mlp_fc1", "lora_te3_encoder_block_0_layer_0_SelfAttention_q"], 64, {},
     None),  # CLIP-L and T5: SD 3.x or FLUX.1, not SDXL
    (["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"], 768, {}, "sd1"),
    (["lora_te1_text_model_encoder_layers_0_mlp_fc1"], 64, {}, "sdxl"),
])
def test_family_guess(names, width, metadata, family):
    assert guess_family({n: lora_module(n, width) for n in names}, metadata) == family


@pytest.mark.parametrize("lora, loaded, message", [
    ("sd1", "flux", "made for SD 1.x, the loaded model is FLUX.1 dev"),
    ("flux", "sd3", "made for FLUX.1 dev, the loaded model is SD 3.x"),
    ("sd3", "flux", "made for SD 3.x, the loaded model is FLUX.1 dev"),
])
def test_a_lora_for_another_family_is_refused_naming_both(lora, loaded, message, lora_dir):
    names = {"sd1": ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k", 768),
             "flux": ("lora_unet_double_blocks_0_img_attn_qkv", TINY_FLUX.hidden_size),
             "sd3": ("lora_unet_joint_blocks_0_x_block_attn_qkv", TINY_SD3.hidden_size)}
    name, width = names[lora]
    save_file({f"{name}.lora_down.weight": torch.ones(RANK, width),
               f"{name}.lora_up.weight": torch.ones(3 * width, RANK)}, lora_dir / "other.safetensors")
    model = tiny_flow(loaded)
    saved = snapshot(model)
    activation = LoraManager().activate(model, lora_dir, tags("<lora:other:1>"))
    assert len(activation.warnings) == 1 and message in activation.warnings[0]
    assert "Lora hashes" not in activation.fields
    assert changed(model, saved) == set()


# --- the released models' layouts (meta device) -------------------------------------------------

def released_layout(name: str):
    """(checkpoint shapes under model.diffusion_model., diffusers' transformer on the meta device)."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    manifest = json.loads((REFERENCE_DIR / name).read_text())
    shapes = {UNET + key: tuple(shape) for key, shape in manifest["tensors"].items()}
    with torch.device("meta"):
        if name.startswith("flux"):
            twin = FluxTransformer2DModel(**manifest["source"]["config"])
        else:
            twin = SD3Transformer2DModel(**manifest["config"])
    return shapes, twin


@pytest.mark.parametrize("name, family", [("flux1_transformer.json", "flux-dev"), ("mmdit_sd3_medium.json", "sd3"),
                                          ("mmdit_sd35_medium.json", "sd3"), ("mmdit_sd35_large.json", "sd3")])
def test_every_diffusers_layer_of_the_released_models_resolves_with_its_shape(name, family):
    shapes, twin = released_layout(name)
    table = build_table(shapes)
    for key, value in twin.state_dict().items():
        if not key.endswith(".weight") or value.dim() < 2:
            continue
        module = key[: -len(".weight")]
        for written in ("transformer." + module, "lora_transformer_" + module.replace(".", "_")):
            target = table.get(canonical_name(written, True))
            assert target is not None, written
            assert target.shape == tuple(value.shape) and target.component == "unet", written
    # A diffusers LoRA on the attention alone is told by its width.
    width = twin.config.num_attention_heads * twin.config.attention_head_dim
    down = lora_module("transformer.transformer_blocks.0.attn.to_q", width)
    assert guess_family({down.name: down}, {}) == family


# --- through the engine -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def flux_studio(tmp_path_factory):
    """An engine with the LoRA extension over models/ holding a tiny FLUX.1 dev single file."""
    from tiny_flow_models import flux_components, flux_scheduler, save_flow_folder, save_single_file

    root = tmp_path_factory.mktemp("flow-lora")
    shutil.copytree(ROOT / "extensions" / "lora", root / "extensions" / "lora",
                    ignore=shutil.ignore_patterns("__pycache__"))
    parts = flux_components(0, velocity_scale=0.05)
    folder = save_flow_folder(root / "build", parts, "FluxPipeline", flux_scheduler("dev"))
    save_single_file(folder, root / "models" / "Stable-diffusion" / "tiny-flux.safetensors")
    (root / "models" / "Lora").mkdir()
    engine = Engine(device="cpu", ckpt_dir=root / "models" / "Stable-diffusion", output_dir=root / "out",
                    hash_cache=root / "hashes.json", extensions_dir=root / "extensions", models_dir=root / "models")
    assert engine.extensions.extensions["lora"].enabled, engine.extensions.extensions["lora"].error
    return SimpleNamespace(engine=engine, lora=root / "models" / "Lora")


def flux_picture(engine, prompt):
    params = GenerationParams(prompt=prompt, steps=2, cfg_scale=1.0, width=64, height=48, seed=3,
                              checkpoint="tiny-flux.safetensors")
    (result,) = engine.txt2img(params, save=False)
    return result, np.asarray(result.image, dtype=np.int16)


@pytest.mark.usefixtures("one_thread")
def test_flux_lora_through_the_engine_changes_the_picture_and_comes_out(flux_studio):
    engine = flux_studio.engine
    _, plain = flux_picture(engine, "a red cat")
    model = engine.loaded.model
    saved = snapshot(model)
    shapes = checkpoint_shapes(model)
    file = {}
    for seed, (name, key) in enumerate([
            ("lora_unet_double_blocks_0_img_attn_qkv", UNET + "double_blocks.0.img_attn.qkv.weight"),
            ("lora_unet_single_blocks_1_linear2", UNET + "single_blocks.1.linear2.weight"),
            ("lora_te1_text_model_encoder_layers_0_mlp_fc1",
             "text_encoders.clip_l.transformer.text_model.encoder.layers.0.mlp.fc1.weight"),
            ("lora_te3_encoder_block_0_layer_0_SelfAttention_v",
             "text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.v.weight")]):
        generator = torch.Generator().manual_seed(seed)
        out_width, in_width = shapes[key]
        file[f"{name}.lora_down.weight"] = 0.3 * torch.randn(RANK, in_width, generator=generator)
        file[f"{name}.lora_up.weight"] = 0.3 * torch.randn(out_width, RANK, generator=generator)
    save_file(file, flux_studio.lora / "style.safetensors", metadata={"ss_base_model_version": "flux1"})

    result, styled = flux_picture(engine, "a red cat <lora:style:1>")
    assert result.notes == []  # every module found its layer
    assert 'Lora hashes: "style: ' in result.infotext
    assert np.abs(styled - plain).mean() > 1
    assert len(changed(model, saved)) == 4
    _, again = flux_picture(engine, "a red cat")
    assert np.array_equal(again, plain)
    assert changed(model, saved) == set()
