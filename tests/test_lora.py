"""The built-in LoRA extension (extensions/lora): names, formats, merge math, exact removal,
the engine end to end, warnings, safe loading, listing."""
import hashlib
import json
import logging
import shutil
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from core.engine import Engine
from core.loading import load_model
from core.models import diffusers_names
from core.models.detection import detect
from core.models.stable_diffusion import LatentDiffusion
from core.params import GenerationParams
from core.prompts.parser import ExtraNetworkTag, extract_extra_networks
from extensions.lora import LoraManager, find_lora, list_loras, parse_tag
from extensions.lora.formats import Module
from extensions.lora.merge import checkpoint_shapes, internal_key, internal_name
from extensions.lora.names import build_table, canonical_name
from tiny_models import REFERENCE_DIR

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = REFERENCE_DIR
UNET = "model.diffusion_model."

# Layers of the tiny UNet (diffusers names) used below.
LINEAR = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"  # Linear 32 -> 32
LINEAR_K = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k"
CONV1 = "down_blocks.0.attentions.0.proj_in"  # Conv2d 1x1
CONV3 = "down_blocks.0.resnets.0.conv1"  # Conv2d 3x3
UPSAMPLER = "up_blocks.0.upsamplers.0.conv"  # 3x3, output_blocks.2.1.conv in LDM names
GEGLU = "up_blocks.1.attentions.0.transformer_blocks.0.ff.net.0.proj"
TEXT_Q = "text_model.encoder.layers.0.self_attn.q_proj"
TEXT_FC1 = "text_model.encoder.layers.1.mlp.fc1"


# --- helpers --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def layout(tiny_checkpoints):
    """The tiny model's real diffusers names and shapes (independent of the extension's tables)."""
    folder = tiny_checkpoints["diffusers"]
    unet = {k: tuple(v.shape) for k, v in load_file(folder / "unet" / "diffusion_pytorch_model.safetensors").items()}
    text = {"text_model." + k.removeprefix("text_model."): tuple(v.shape)  # transformers 5 saves no text_model.
            for k, v in load_file(folder / "text_encoder" / "model.safetensors").items()}
    return SimpleNamespace(unet=unet, text=text)


def ours(layout, module: str) -> str:
    """diffusers module path -> our parameter name (through core's own diffusers table)."""
    if module.startswith("text_model."):
        return "cond_stage_model.transformer." + module.removeprefix("text_model.") + ".weight"
    return UNET + diffusers_names.unet_key(module + ".weight", layout.unet)


def shape_of(layout, module: str) -> tuple:
    return layout.text[module + ".weight"] if module.startswith("text_model.") else layout.unet[module + ".weight"]


def kohya(module: str) -> str:
    return ("lora_te_" if module.startswith("text_model.") else "lora_unet_") + module.replace(".", "_")


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 0.2


def lora_pair(shape, rank, seed, conv_kernel=True):
    """kohya down/up for a layer of ``shape``: a conv down keeps the kernel, up is 1x1."""
    out, inp, *kernel = shape
    if kernel:
        down = rand(rank, inp, *(kernel if conv_kernel else [1, 1]), seed=seed)
        up = rand(out, rank, 1, 1, seed=seed + 1)
    else:
        down, up = rand(rank, inp, seed=seed), rand(out, rank, seed=seed + 1)
    return down, up


def updown(up, down, shape):
    return (up.reshape(up.shape[0], -1) @ down.reshape(down.shape[0], -1)).reshape(shape)


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def assert_identical(model, saved):
    current = dict(model.named_parameters())
    assert current.keys() == saved.keys()
    different = [k for k, v in saved.items() if not torch.equal(current[k], v)]
    assert not different, f"{len(different)} parameters differ, first {different[0]}"


def changed(model, saved):
    return {k for k, v in model.named_parameters() if not torch.equal(v, saved[k])}


def tags(prompt):
    return extract_extra_networks(prompt)[1]


@pytest.fixture
def model(tiny_checkpoints):
    return load_model(tiny_checkpoints["safetensors"])


@pytest.fixture
def lora_dir(tmp_path):
    folder = tmp_path / "Lora"
    folder.mkdir()
    return folder


# --- names ------------------------------------------------------------------------------------

def test_every_kohya_sd15_name_resolves_on_the_full_size_model():
    """Both variants of lora_kohya_sd15.json: each module name (and its diffusers name) reaches
    the manifest's layer in our full-size SD 1.5 module tree, with shapes that fit."""
    manifest = json.loads((REFERENCE / "lora_kohya_sd15.json").read_text())["modules"]
    shapes = {k: tuple(v) for k, v in json.loads((REFERENCE / "sd15.json").read_text())["tensors"].items()}
    with torch.device("meta"):
        model = LatentDiffusion(detect(shapes))
    table = build_table(checkpoint_shapes(model))
    assert {"default", "conv"} == {v for e in manifest.values() for v in e["variants"]}
    for name, entry in manifest.items():
        target = table.get(canonical_name(name))
        assert target is not None, name
        assert target.key == entry["original_key"], name
        param = model.get_parameter(internal_key(target.key))
        assert tuple(param.shape) == target.shape
        module = Module(name, {"lora_down": torch.empty(entry["down"], device="meta"),
                               "lora_up": torch.empty(entry["up"], device="meta")}, alpha=1.0)
        assert tuple(module.delta(target.shape, device="meta").shape) == tuple(param.shape), name
        prefix = "unet." if entry["component"] == "unet" else "text_encoder."
        assert table[canonical_name(prefix + entry["diffusers_module"])] == target, entry["diffusers_module"]
    assert len(manifest) == 350


def test_every_kohya_sdxl_name_resolves_to_its_checkpoint_key_and_slice():
    """No SDXL model exists yet: resolve lora_kohya_sdxl.json against the SDXL checkpoint layout
    (LDM UNet names, te1 CLIP-L, te2 open_clip with q/k/v rows of the fused in_proj_weight)."""
    manifest = json.loads((REFERENCE / "lora_kohya_sdxl.json").read_text())["modules"]
    shapes = {k: tuple(v) for k, v in json.loads((REFERENCE / "sdxl_base.json").read_text())["tensors"].items()}
    table = build_table(shapes)
    prefixes = {"unet": "unet.", "text_encoder_1": "text_encoder.", "text_encoder_2": "text_encoder_2."}
    for name, entry in manifest.items():
        target = table.get(canonical_name(name, two_text_encoders=True))
        assert target is not None, name
        assert target.key == entry["original_key"], name
        sliced = entry.get("original_slice")
        assert target.rows == ((sliced["start"], sliced["stop"]) if sliced else None), name
        full = shapes[target.key]
        assert target.shape == ((sliced["stop"] - sliced["start"], *full[1:]) if sliced else full)
        module = Module(name, {"lora_down": torch.empty(entry["down"], device="meta"),
                               "lora_up": torch.empty(entry["up"], device="meta")})
        assert tuple(module.delta(target.shape, device="meta").shape) == target.shape
        diffusers = canonical_name(prefixes[entry["component"]] + entry["diffusers_module"], two_text_encoders=True)
        assert table[diffusers] == target, entry["diffusers_module"]
    assert len(manifest) == 1052


def _meta_model(reference: str):
    shapes = {k: tuple(v) for k, v in json.loads((REFERENCE / reference).read_text())["tensors"].items()}
    with torch.device("meta"):
        return LatentDiffusion(detect(shapes))


def test_every_kohya_sdxl_name_reaches_its_parameter_in_the_full_size_model():
    """From the loaded model's own layout (not the file's): each kohya SDXL module reaches the
    parameter that holds its layer; te2 q/k/v rows of the fused in_proj are our q/k/v_proj."""
    manifest = json.loads((REFERENCE / "lora_kohya_sdxl.json").read_text())["modules"]
    model = _meta_model("sdxl_base.json")
    table = build_table(checkpoint_shapes(model))
    for name, entry in manifest.items():
        target = table[canonical_name(name, two_text_encoders=True)]
        assert target.key == entry["original_key"], name
        parameter = internal_name(model, target.key, target.rows)
        assert tuple(model.get_parameter(parameter).shape) == target.shape, name
        if entry["component"] != "unet":
            prefix = "conditioner.embedders.0." if entry["component"] == "text_encoder_1" else "conditioner.embedders.1."
            assert parameter == prefix + "transformer." + entry["diffusers_module"].removeprefix("text_model.") + ".weight"


def test_kohya_sd2_text_encoder_names_reach_the_openclip_tower():
    """kohya trains SD 2.x on the tower converted to a transformers CLIPTextModel without its
    unused last layer (23 of ViT-H's 24): lora_te_text_model_encoder_layers_0..22_*. Each name
    reaches the open_clip checkpoint key (q/k/v: a third of in_proj_weight) and our Linear."""
    model = _meta_model("sd21_v.json")
    table = build_table(checkpoint_shapes(model))
    parts = {"self_attn_q_proj": ("attn.in_proj_weight", 0), "self_attn_k_proj": ("attn.in_proj_weight", 1),
             "self_attn_v_proj": ("attn.in_proj_weight", 2), "self_attn_out_proj": ("attn.out_proj.weight", None),
             "mlp_fc1": ("mlp.c_fc.weight", None), "mlp_fc2": ("mlp.c_proj.weight", None)}
    dotted = {"self_attn_q_proj": "self_attn.q_proj", "self_attn_k_proj": "self_attn.k_proj",
              "self_attn_v_proj": "self_attn.v_proj", "self_attn_out_proj": "self_attn.out_proj",
              "mlp_fc1": "mlp.fc1", "mlp_fc2": "mlp.fc2"}
    for layer in range(23):
        for part, (key, third) in parts.items():
            target = table[canonical_name(f"lora_te_text_model_encoder_layers_{layer}_{part}")]
            assert target.key == f"cond_stage_model.model.transformer.resblocks.{layer}.{key}"
            assert target.rows == (None if third is None else (third * 1024, (third + 1) * 1024))
            assert target.component == "te"
            parameter = internal_name(model, target.key, target.rows)
            assert parameter == f"cond_stage_model.transformer.encoder.layers.{layer}.{dotted[part]}.weight"
            assert tuple(model.get_parameter(parameter).shape) == target.shape


# Text-encoder modules of the tiny SD 2.x / SDXL checkpoints: kohya name -> (checkpoint key, row
# third of a fused in_proj_weight or None).
OPENCLIP_LORA = {
    "sd2": {
        "lora_te_text_model_encoder_layers_1_self_attn_k_proj": ("cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight", 1),
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj": ("cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight", 0),
        "lora_te_text_model_encoder_layers_0_mlp_fc1": ("cond_stage_model.model.transformer.resblocks.0.mlp.c_fc.weight", None),
        "lora_te_text_model_encoder_layers_1_self_attn_out_proj": ("cond_stage_model.model.transformer.resblocks.1.attn.out_proj.weight", None),
    },
    "sdxl": {
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": ("conditioner.embedders.0.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight", None),
        "lora_te1_text_model_encoder_layers_1_mlp_fc2": ("conditioner.embedders.0.transformer.text_model.encoder.layers.1.mlp.fc2.weight", None),
        "lora_te2_text_model_encoder_layers_1_self_attn_v_proj": ("conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_weight", 2),
        "lora_te2_text_model_encoder_layers_0_self_attn_k_proj": ("conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight", 1),
        "lora_te2_text_model_encoder_layers_0_mlp_fc2": ("conditioner.embedders.1.model.transformer.resblocks.0.mlp.c_proj.weight", None),
    },
}


@pytest.fixture(scope="module")
def openclip_models(tmp_path_factory):
    import tiny_models

    root = tmp_path_factory.mktemp("openclip-models")
    return {"sd2": tiny_models.save_sd2(root / "sd2")["safetensors"], "sdxl": tiny_models.save_sdxl(root / "sdxl")["safetensors"]}


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_kohya_text_encoder_lora_on_openclip_models_is_exact_and_removable(family, openclip_models, lora_dir, tmp_path):
    """A kohya LoRA for the text encoder(s) of SD 2.x (OpenCLIP ViT-H, lora_te_) and SDXL
    (CLIP-L lora_te1_, OpenCLIP bigG lora_te2_): each weight becomes W + te * (alpha / rank) *
    up @ down, q/k/v modules change only their third of the fused in_proj_weight, the encoders
    give what a checkpoint with those weights written into it gives, and removing the LoRA
    restores every parameter bit for bit."""
    from core.text.tokenizer import load_clip_tokenizer

    path = openclip_models[family]
    model = load_model(path, prediction="v" if family == "sd2" else None)
    file_state = load_file(path)
    rank, alpha, te = 4, 2.0, 0.8
    lora, patched = {}, {k: v.clone() for k, v in file_state.items()}
    for seed, (name, (key, third)) in enumerate(OPENCLIP_LORA[family].items()):
        full = file_state[key]
        rows = full.shape[0] // 3 if third is not None else full.shape[0]
        down, up = rand(rank, full.shape[1], seed=seed * 10), rand(rows, rank, seed=seed * 10 + 1)
        lora.update({f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up, f"{name}.alpha": torch.tensor(alpha)})
        start = third * rows if third is not None else 0
        patched[key][start:start + rows] += te * (alpha / rank) * (up @ down)
    metadata = {"ss_v2": "True"} if family == "sd2" else {"ss_base_model_version": "sdxl_base_v1-0"}
    save_file(lora, lora_dir / "te.safetensors", metadata=metadata)
    save_file(patched, tmp_path / "patched.safetensors")
    expected_model = load_model(tmp_path / "patched.safetensors", prediction="v" if family == "sd2" else None)

    ids = torch.tensor([load_clip_tokenizer(pad_with_eos=False).encode_padded("a red circle, masterpiece")])
    with torch.no_grad():
        before = [encoder(ids) for encoder in model.text_encoders]
    saved = snapshot(model)
    manager = LoraManager()
    activation = manager.activate(model, lora_dir, tags("<lora:te:0.8:1.0>"))
    assert activation.warnings == []

    # The right parameters changed, and only they: one Linear of ours per module.
    changed_names = changed(model, saved)
    assert len(changed_names) == len(OPENCLIP_LORA[family])
    assert all(".self_attn." in n or ".mlp." in n for n in changed_names)
    merged = model.checkpoint_state_dict()
    for name, (key, third) in OPENCLIP_LORA[family].items():
        torch.testing.assert_close(merged[key], patched[key], rtol=1e-6, atol=1e-6)
        if third is not None:  # the other two thirds of the fused weight are untouched, bit for bit
            rows = file_state[key].shape[0] // 3
            keep = [i for i in range(3 * rows) if not third * rows <= i < (third + 1) * rows]
            assert torch.equal(merged[key][keep], file_state[key][keep]), name
            assert not torch.equal(merged[key], file_state[key])
    with torch.no_grad():
        after = [encoder(ids) for encoder in model.text_encoders]
        expected = [encoder(ids) for encoder in expected_model.text_encoders]
    for b, a, e in zip(before, after, expected):
        assert (a - b).abs().max() > 1e-3  # every encoder's output moved ...
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)  # ... to what the patched checkpoint gives

    manager.activate(model, lora_dir, [])
    assert_identical(model, saved)
    with torch.no_grad():
        assert all(torch.equal(encoder(ids), b) for encoder, b in zip(model.text_encoders, before))


# --- merge math --------------------------------------------------------------------------------

@pytest.mark.parametrize("keep", ["swap", "copy"])
def test_kohya_lora_and_locon_follow_the_formula_and_come_out_bit_identical(model, layout, lora_dir, keep):
    """Both ways of keeping the originals: set aside (CPU) and copied to the CPU (accelerators)."""
    saved = snapshot(model)
    rank, alpha = 4, 2.0
    file, expected = {}, {}
    for seed, module in enumerate([LINEAR, CONV1, CONV3, UPSAMPLER, GEGLU, TEXT_Q]):
        shape = shape_of(layout, module)
        down, up = lora_pair(shape, rank, seed * 10)
        file[kohya(module) + ".lora_down.weight"] = down
        file[kohya(module) + ".lora_up.weight"] = up
        file[kohya(module) + ".alpha"] = torch.tensor(alpha)
        expected[ours(layout, module)] = (alpha / rank) * updown(up, down, shape)
    save_file(file, lora_dir / "style.safetensors")
    manager = LoraManager()
    if keep == "copy":
        manager.swap_devices = ()
    parameters = dict(model.named_parameters())

    activation = manager.activate(model, lora_dir, tags("<lora:style:0.7:1.3>"))  # te 0.7, unet 1.3
    assert activation.warnings == []
    params = dict(model.named_parameters())
    for name, delta in expected.items():
        weight = 0.7 if name.startswith("cond_stage_model") else 1.3
        torch.testing.assert_close(params[name], saved[name] + weight * delta, rtol=1e-6, atol=1e-6)
    assert changed(model, saved) == set(expected)

    # LoCon 3x3 down + 1x1 up is the same function as kohya's forward: up(down(x)) added to the layer.
    x = rand(1, 32, 8, 8, seed=99)
    down, up = file[kohya(CONV3) + ".lora_down.weight"], file[kohya(CONV3) + ".lora_up.weight"]
    name = ours(layout, CONV3)
    merged = F.conv2d(x, params[name], padding=1)
    reference = F.conv2d(x, saved[name], padding=1) + 1.3 * (alpha / rank) * F.conv2d(F.conv2d(x, down, padding=1), up)
    torch.testing.assert_close(merged, reference, rtol=1e-5, atol=1e-5)

    manager.activate(model, lora_dir, [])
    assert_identical(model, saved)
    assert all(p is parameters[k] for k, p in model.named_parameters())  # the same Parameter objects


def test_loha_follows_its_formula(model, layout, lora_dir):
    saved = snapshot(model)
    rank, alpha = 2, 1.0
    out, inp = shape_of(layout, LINEAR)
    w1a, w1b, w2a, w2b = rand(out, rank, seed=1), rand(rank, inp, seed=2), rand(out, rank, seed=3), rand(rank, inp, seed=4)
    conv = shape_of(layout, CONV3)  # tucker form for the 3x3 conv
    t1, t2 = rand(rank, rank, 3, 3, seed=5), rand(rank, rank, 3, 3, seed=6)
    c1a, c1b, c2a, c2b = (rand(rank, conv[0], seed=7), rand(rank, conv[1], seed=8),
                          rand(rank, conv[0], seed=9), rand(rank, conv[1], seed=10))
    save_file({
        kohya(LINEAR) + ".hada_w1_a": w1a, kohya(LINEAR) + ".hada_w1_b": w1b,
        kohya(LINEAR) + ".hada_w2_a": w2a, kohya(LINEAR) + ".hada_w2_b": w2b, kohya(LINEAR) + ".alpha": torch.tensor(alpha),
        kohya(CONV3) + ".hada_w1_a": c1a, kohya(CONV3) + ".hada_w1_b": c1b, kohya(CONV3) + ".hada_t1": t1,
        kohya(CONV3) + ".hada_w2_a": c2a, kohya(CONV3) + ".hada_w2_b": c2b, kohya(CONV3) + ".hada_t2": t2,
        kohya(CONV3) + ".alpha": torch.tensor(alpha),
    }, lora_dir / "hada.safetensors")
    manager = LoraManager()
    assert manager.activate(model, lora_dir, tags("<lora:hada:0.8>")).warnings == []
    params = dict(model.named_parameters())

    linear = (w1a @ w1b) * (w2a @ w2b) * (alpha / rank)

    def tucker_by_hand(t, wa, wb):
        w = torch.zeros(wa.shape[1], wb.shape[1], *t.shape[2:])
        for a in range(t.shape[0]):
            for b in range(t.shape[1]):
                w += wa[a][:, None, None, None] * wb[b][None, :, None, None] * t[a, b][None, None]
        return w

    kernel = tucker_by_hand(t1, c1a, c1b) * tucker_by_hand(t2, c2a, c2b) * (alpha / rank)
    torch.testing.assert_close(params[ours(layout, LINEAR)], saved[ours(layout, LINEAR)] + 0.8 * linear, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(params[ours(layout, CONV3)], saved[ours(layout, CONV3)] + 0.8 * kernel, rtol=1e-5, atol=1e-6)
    manager.activate(model, lora_dir, [])
    assert_identical(model, saved)


def test_lokr_follows_its_formula(model, layout, lora_dir):
    saved = snapshot(model)
    rank, alpha = 2, 3.0
    # Linear 32x32 = kron([2, 4], [16, 8]) with w2 factored (scale alpha / rank).
    w1, w2a, w2b = rand(2, 4, seed=1), rand(16, rank, seed=2), rand(rank, 8, seed=3)
    # Conv 3x3 32x32 = kron([2, 2], [16, 16, 3, 3]) with both parts whole: scale 1 whatever alpha says.
    c1, c2 = rand(2, 2, seed=4), rand(16, 16, 3, 3, seed=5)
    # Upsampler conv 64x64 3x3 with a tucker core for w2: w1 factored too.
    u1a, u1b = rand(4, rank, seed=6), rand(rank, 4, seed=7)
    t2, u2a, u2b = rand(rank, rank, 3, 3, seed=8), rand(rank, 16, seed=9), rand(rank, 16, seed=10)
    save_file({
        kohya(LINEAR) + ".lokr_w1": w1, kohya(LINEAR) + ".lokr_w2_a": w2a, kohya(LINEAR) + ".lokr_w2_b": w2b,
        kohya(LINEAR) + ".alpha": torch.tensor(alpha),
        kohya(CONV3) + ".lokr_w1": c1, kohya(CONV3) + ".lokr_w2": c2, kohya(CONV3) + ".alpha": torch.tensor(alpha),
        kohya(UPSAMPLER) + ".lokr_w1_a": u1a, kohya(UPSAMPLER) + ".lokr_w1_b": u1b, kohya(UPSAMPLER) + ".lokr_t2": t2,
        kohya(UPSAMPLER) + ".lokr_w2_a": u2a, kohya(UPSAMPLER) + ".lokr_w2_b": u2b, kohya(UPSAMPLER) + ".alpha": torch.tensor(alpha),
    }, lora_dir / "kron.safetensors")
    manager = LoraManager()
    assert manager.activate(model, lora_dir, tags("<lora:kron:1>")).warnings == []
    params = dict(model.named_parameters())

    def kron_by_blocks(a, b):
        """out[i*B0 + p, j*B1 + q, ...] = a[i, j] * b[p, q, ...]"""
        rows = [torch.cat([a[i, j] * b for j in range(a.shape[1])], dim=1) for i in range(a.shape[0])]
        return torch.cat(rows, dim=0)

    linear = kron_by_blocks(w1, w2a @ w2b) * (alpha / rank)
    conv = kron_by_blocks(c1, c2)
    core = torch.einsum("abkl,ao,bi->oikl", t2, u2a, u2b)
    upsampler = kron_by_blocks(u1a @ u1b, core) * (alpha / rank)
    for module, delta in ((LINEAR, linear), (CONV3, conv), (UPSAMPLER, upsampler)):
        name = ours(layout, module)
        torch.testing.assert_close(params[name], saved[name] + delta, rtol=1e-5, atol=1e-6)
    manager.activate(model, lora_dir, [])
    assert_identical(model, saved)


def test_peft_and_diffusers_layouts(model, layout, lora_dir):
    """unet./text_encoder. keys with lora_A/lora_B (alphas from diffusers' lora_adapter_metadata),
    the older lora.down/lora.up, attention-processor and lora_linear_layer keys, and a bare PEFT
    save (base_model.model., adapter name in the key, adapter_config.json beside it)."""
    saved = snapshot(model)
    r = 4
    expected = {}
    peft = {}
    for seed, (module, scale) in enumerate([(LINEAR, 8 / r), (CONV1, 2 / r), (TEXT_FC1, 1.0)]):
        down, up = lora_pair(shape_of(layout, module), r, seed * 10, conv_kernel=False)
        prefix = "text_encoder." if module.startswith("text_model.") else "unet."
        peft[f"{prefix}{module}.lora_A.weight"], peft[f"{prefix}{module}.lora_B.weight"] = down, up
        expected[ours(layout, module)] = scale * updown(up, down, shape_of(layout, module))
    metadata = {"lora_adapter_metadata": json.dumps({
        "unet.r": r, "unet.lora_alpha": 8, "unet.alpha_pattern": {"proj_in": 2}, "text_encoder.r": r,
        "text_encoder.lora_alpha": 4})}
    save_file(peft, lora_dir / "peft.safetensors", metadata=metadata)

    old = {}
    attn = LINEAR.rsplit(".", 1)[0]
    down, up = rand(r, 32, seed=50), rand(32, r, seed=51)
    old[f"unet.{attn}.processor.to_k_lora.down.weight"], old[f"unet.{attn}.processor.to_k_lora.up.weight"] = down, up
    expected_old = {ours(layout, LINEAR_K): updown(up, down, (32, 32))}
    down, up = rand(r, 64, seed=52), rand(64, r, seed=53)
    old[f"text_encoder.{TEXT_Q}.lora_linear_layer.down.weight"] = down
    old[f"text_encoder.{TEXT_Q}.lora_linear_layer.up.weight"] = up
    expected_old[ours(layout, TEXT_Q)] = updown(up, down, (64, 64))
    shape = shape_of(layout, CONV3)
    down, up = lora_pair(shape, r, 54)
    old[f"unet.{CONV3}.lora.down.weight"], old[f"unet.{CONV3}.lora.up.weight"] = down, up
    old[f"unet.{CONV3}.alpha"] = torch.tensor(1.0)
    expected_old[ours(layout, CONV3)] = updown(up, down, shape) / r
    torch.save(old, lora_dir / "old.pt")

    (lora_dir / "peftdir").mkdir()
    down, up = rand(r, 32, seed=60), rand(32, r, seed=61)
    save_file({f"base_model.model.{LINEAR}.lora_A.default.weight": down,
               f"base_model.model.{LINEAR}.lora_B.default.weight": up}, lora_dir / "peftdir" / "adapter_model.safetensors")
    (lora_dir / "peftdir" / "adapter_config.json").write_text(json.dumps({"r": r, "lora_alpha": 16, "peft_type": "LORA"}))
    expected_bare = {ours(layout, LINEAR): 4.0 * updown(up, down, (32, 32))}

    manager = LoraManager()
    for prompt, want in (("<lora:peft:1>", expected), ("<lora:old:1>", expected_old),
                         ("<lora:peftdir/adapter_model:0.5>", {k: 0.5 * v for k, v in expected_bare.items()})):
        activation = manager.activate(model, lora_dir, tags(prompt))
        assert activation.warnings == [], prompt
        params = dict(model.named_parameters())
        for name, delta in want.items():
            torch.testing.assert_close(params[name], saved[name] + delta, rtol=1e-6, atol=1e-6)
        assert changed(model, saved) == set(want), prompt
    manager.activate(model, lora_dir, [])
    assert_identical(model, saved)


@pytest.mark.parametrize("style", ["kohya", "peft"])
def test_merge_matches_diffusers_fuse_lora(tiny_checkpoints, layout, lora_dir, style):
    """diffusers as the oracle: its load_lora_weights + fuse_lora on the same tiny pipeline gives
    the weights our merge gives (kohya names with alphas incl. LoCon convs; PEFT names with
    lora_adapter_metadata). One alpha per component: diffusers 0.42 loses per-module kohya alphas
    of attention layers (its alpha_pattern keys keep the old processor names); per-module alphas
    are covered by the formula tests above."""
    from diffusers import StableDiffusionPipeline

    # diffusers 0.42 renames kohya text-encoder attention LoRAs to "to_q_lora", which transformers 5's
    # CLIPTextModel rejects (they are dropped): its kohya oracle covers the text encoder's MLP only.
    modules = [LINEAR, LINEAR_K, CONV1, GEGLU, TEXT_FC1] + ([CONV3] if style == "kohya" else [TEXT_Q])
    file = {}
    for seed, module in enumerate(modules):
        down, up = lora_pair(shape_of(layout, module), 4, seed * 10)
        if style == "kohya":
            file.update({kohya(module) + ".lora_down.weight": down, kohya(module) + ".lora_up.weight": up,
                         kohya(module) + ".alpha": torch.tensor(3.0 if module.startswith("text") else 2.0)})
        else:
            prefix = "text_encoder." if module.startswith("text_model.") else "unet."
            file.update({f"{prefix}{module}.lora_A.weight": down, f"{prefix}{module}.lora_B.weight": up})
    metadata = {"lora_adapter_metadata": json.dumps({
        "unet.r": 4, "unet.lora_alpha": 2, "unet.target_modules": [m for m in modules if not m.startswith("text")],
        "text_encoder.r": 4, "text_encoder.lora_alpha": 6,
        "text_encoder.target_modules": [m.removeprefix("text_model.") for m in modules if m.startswith("text")]})}
    save_file(file, lora_dir / "x.safetensors", metadata=metadata if style == "peft" else None)

    pipe = StableDiffusionPipeline.from_pretrained(tiny_checkpoints["diffusers"], safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.load_lora_weights(str(lora_dir / "x.safetensors"))
    pipe.fuse_lora(lora_scale=0.6)

    def fused(module):
        return {k.replace(".base_layer.", "."): v for k, v in module.state_dict().items() if ".lora_" not in k}

    model = load_model(tiny_checkpoints["safetensors"])
    saved = snapshot(model)
    assert LoraManager().activate(model, lora_dir, tags("<lora:x:0.6>")).warnings == []
    params = dict(model.named_parameters())
    theirs = {**{ours(layout, k[:-7]): v for k, v in fused(pipe.unet).items() if k.endswith(".weight")},
              **{ours(layout, "text_model." + k.removeprefix("text_model.")[:-7]): v
                 for k, v in fused(pipe.text_encoder).items() if k.endswith(".weight") and "embedding" not in k}}
    assert changed(model, saved) == {ours(layout, m) for m in modules}
    for name, value in theirs.items():
        torch.testing.assert_close(params[name], value, rtol=1e-6, atol=1e-6, msg=name)


def test_several_loras_at_once_and_switching_weights(model, layout, lora_dir):
    saved = snapshot(model)
    shape = shape_of(layout, LINEAR)
    a_down, a_up = lora_pair(shape, 4, 1)
    b_down, b_up = lora_pair(shape, 8, 2)
    c_down, c_up = lora_pair(shape_of(layout, CONV3), 4, 3)
    save_file({kohya(LINEAR) + ".lora_down.weight": a_down, kohya(LINEAR) + ".lora_up.weight": a_up,
               kohya(LINEAR) + ".alpha": torch.tensor(1.0)}, lora_dir / "a.safetensors")
    save_file({kohya(LINEAR) + ".lora_down.weight": b_down, kohya(LINEAR) + ".lora_up.weight": b_up,
               kohya(CONV3) + ".lora_down.weight": c_down, kohya(CONV3) + ".lora_up.weight": c_up},
              lora_dir / "b.safetensors")  # no alpha: scale 1
    name, conv = ours(layout, LINEAR), ours(layout, CONV3)
    delta_a, delta_b = updown(a_up, a_down, shape) / 4, updown(b_up, b_down, shape)
    delta_c = updown(c_up, c_down, shape_of(layout, CONV3))
    manager = LoraManager()

    for wa, wb in ((1.0, 0.5), (0.25, -1.0), (1.0, 0.5)):
        manager.activate(model, lora_dir, tags(f"x <lora:a:{wa}> y <lora:b:{wb}>"))
        params = dict(model.named_parameters())
        torch.testing.assert_close(params[name], saved[name] + wa * delta_a + wb * delta_b, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(params[conv], saved[conv] + wb * delta_c, rtol=1e-6, atol=1e-6)
        assert changed(model, saved) == {name, conv}
    first = params[name].clone()
    manager.activate(model, lora_dir, tags("<lora:a:1> <lora:b:0.5>"))
    assert torch.equal(dict(model.named_parameters())[name], first)  # same request: same bits

    manager.activate(model, lora_dir, tags("<lora:b:0>"))  # weight 0: nothing merged at all
    assert_identical(model, saved)
    manager.activate(model, lora_dir, tags("<lora:a:1>"))
    manager.activate(model, lora_dir, [])
    assert_identical(model, saved)


def test_dylora_rank_full_diffs_and_unsupported_kinds(model, layout, lora_dir):
    saved = snapshot(model)
    shape = shape_of(layout, LINEAR)
    down, up = lora_pair(shape, 8, 1)
    diff, diff_b = rand(*shape_of(layout, CONV1), seed=2), rand(shape_of(layout, CONV1)[0], seed=3)
    save_file({kohya(LINEAR) + ".lora_down.weight": down, kohya(LINEAR) + ".lora_up.weight": up,
               kohya(LINEAR) + ".alpha": torch.tensor(8.0),
               kohya(CONV1) + ".diff": diff, kohya(CONV1) + ".diff_b": diff_b,
               kohya(TEXT_Q) + ".lora_down.weight": rand(4, 64), kohya(TEXT_Q) + ".lora_up.weight": rand(64, 4),
               kohya(TEXT_Q) + ".dora_scale": rand(1, 64)}, lora_dir / "dyn.safetensors")
    manager = LoraManager()
    activation = manager.activate(model, lora_dir, tags("<lora:dyn:1:dyn=2>"))
    assert activation.warnings == [f"LoRA dyn: 1 of 3 entries skipped: {kohya(TEXT_Q)} (DoRA (not supported))"]
    params = dict(model.named_parameters())
    linear, conv = ours(layout, LINEAR), ours(layout, CONV1)
    bias = conv[: -len("weight")] + "bias"
    # DyLoRA: the first 2 of 8 ranks, the scale still alpha / 8 (as A1111 reads dyn).
    torch.testing.assert_close(params[linear], saved[linear] + (up[:, :2] @ down[:2]), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(params[conv], saved[conv] + diff, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(params[bias], saved[bias] + diff_b, rtol=1e-6, atol=1e-6)
    assert changed(model, saved) == {linear, conv, bias}
    manager.activate(model, lora_dir, [])
    assert_identical(model, saved)


# --- tags -------------------------------------------------------------------------------------------

def test_tags_parse_with_the_prompt_language():
    text, found = extract_extra_networks("a cat <lora:film:0.6>, <lora:sub/x y:0.8:0.5> <lora:n:te=0.2:unet=1.5:dyn=8> <lora:plain>")
    assert text == "a cat ,   "
    requests = [parse_tag(t) for t in found]
    assert [(r.name, r.te, r.unet, r.dyn) for r in requests] == [
        ("film", 0.6, 0.6, None), ("sub/x y", 0.8, 0.5, None), ("n", 0.2, 1.5, 8), ("plain", 1.0, 1.0, None)]
    with pytest.raises(ValueError):
        parse_tag(ExtraNetworkTag("lora", "x", ["nan"]))


# --- the engine end to end ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def studio(tiny_checkpoints, tmp_path_factory, layout):
    root = tmp_path_factory.mktemp("lora-engine")
    extensions = root / "extensions"
    shutil.copytree(ROOT / "extensions" / "lora", extensions / "lora", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "models" / "Lora" / "sub").mkdir(parents=True)
    file = {}
    for seed, module in enumerate([LINEAR, CONV1, CONV3, GEGLU, TEXT_Q, TEXT_FC1]):
        down, up = lora_pair(shape_of(layout, module), 4, seed * 10)
        file.update({kohya(module) + ".lora_down.weight": down * 3, kohya(module) + ".lora_up.weight": up * 3,
                     kohya(module) + ".alpha": torch.tensor(4.0)})
    path = root / "models" / "Lora" / "x.safetensors"
    save_file(file, path, metadata={"ss_output_name": "x-style"})
    shutil.copy(path, root / "models" / "Lora" / "sub" / "y.safetensors")
    engine = Engine(device="cpu", ckpt_dir=tiny_checkpoints["safetensors"].parent, output_dir=root / "out",
                    hash_cache=root / "hashes.json", extensions_dir=extensions, models_dir=root / "models")
    assert engine.extensions.extensions["lora"].enabled, engine.extensions.extensions["lora"].error
    return SimpleNamespace(engine=engine, lora=root / "models" / "Lora", x=path)


def generate(engine, prompt, **kwargs):
    # One Euler step without the unconditional pass: the cheapest job that still runs every layer.
    params = GenerationParams(**{**dict(prompt=prompt, steps=1, cfg_scale=1.0, width=64, height=64, seed=3,
                                        checkpoint="tiny.safetensors"), **kwargs})
    return engine.txt2img(params, save=False)[0]


def pixels(result):
    return np.asarray(result.image, dtype=np.int16)


@pytest.fixture(scope="module")
def reference(studio):
    """The plain image and its weights, the image with <lora:x:1> and its weights."""
    plain = generate(studio.engine, "a cat")
    saved = snapshot(studio.engine.loaded.model)
    with_lora = generate(studio.engine, "a cat <lora:x:1>")
    merged = snapshot(studio.engine.loaded.model)
    return SimpleNamespace(plain=plain, saved=saved, with_lora=with_lora, merged=merged)


def test_engine_applies_switches_and_removes_a_lora(studio, reference):
    engine = studio.engine
    assert np.abs(pixels(reference.with_lora) - pixels(reference.plain)).mean() > 1
    assert "Lora hashes" not in reference.plain.infotext
    zero = generate(engine, "a cat <lora:x:0>")
    assert np.array_equal(pixels(zero), pixels(reference.plain))
    assert_identical(engine.loaded.model, reference.saved)

    half = generate(engine, "a cat <lora:x:0.5>")
    assert 0 < np.abs(pixels(half) - pixels(reference.plain)).mean() < np.abs(pixels(reference.with_lora) - pixels(reference.plain)).mean()
    full = generate(engine, "a cat <lora:x:1>")  # back from 0.5 to 1: the same image as the first time
    assert np.array_equal(pixels(full), pixels(reference.with_lora))

    again = generate(engine, "a cat")
    assert np.array_equal(pixels(again), pixels(reference.plain))
    assert_identical(engine.loaded.model, reference.saved)


def test_infotext_records_a1111_lora_hashes(studio, reference):
    data = studio.x.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    expected = hashlib.sha256(data[8 + header_len:]).hexdigest()[:12]
    assert f'Lora hashes: "x: {expected}"' in reference.with_lora.infotext
    result = generate(studio.engine, "a cat <lora:x:0.8>, <lora:sub/y:0.2>")  # a subfolder name too
    assert f'Lora hashes: "x: {expected}, sub/y: {expected}"' in result.infotext
    # y is a copy of x: 0.8 of x + 0.2 of y is x at 1, up to float rounding (the random tiny
    # model amplifies rounding too much to compare the images).
    params = dict(studio.engine.loaded.model.named_parameters())
    for name, value in reference.merged.items():
        torch.testing.assert_close(params[name], value, rtol=1e-6, atol=1e-6)


def test_missing_and_foreign_loras_warn_and_generation_goes_on(studio, reference, layout, caplog):
    engine = studio.engine
    plain, saved = reference.plain, reference.saved
    caplog.set_level(logging.WARNING)

    result = generate(engine, "a cat <lora:no-such-lora:1>")
    assert np.array_equal(pixels(result), pixels(plain))
    assert "LoRA not found: no-such-lora" in caplog.text
    assert any("no-such-lora" in note for note in result.notes)

    # An SDXL LoRA (two text encoders) on an SD 1.x model: skipped as a whole, with the reason.
    save_file({"lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": rand(4, 768),
               "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": rand(768, 4),
               "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": rand(4, 1280),
               "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": rand(1280, 4)},
              studio.lora / "xl.safetensors")
    caplog.clear()
    result = generate(engine, "a cat <lora:xl:1>")
    assert np.array_equal(pixels(result), pixels(plain))
    assert "LoRA xl: made for SDXL, the loaded model is SD 1.x; skipped all 2 modules" in caplog.text
    assert_identical(engine.loaded.model, saved)

    # Keys that match nothing (and a wrong shape) are listed; what does match is applied.
    down, up = lora_pair(shape_of(layout, LINEAR), 4, 7)
    save_file({kohya(LINEAR) + ".lora_down.weight": down, kohya(LINEAR) + ".lora_up.weight": up,
               "lora_unet_no_such_block_to_q.lora_down.weight": down.clone(),
               "lora_unet_no_such_block_to_q.lora_up.weight": up.clone(),
               kohya(CONV1) + ".lora_down.weight": rand(4, 7, 1, 1), kohya(CONV1) + ".lora_up.weight": rand(32, 4, 1, 1),
               "something_else": torch.zeros(2)}, studio.lora / "odd.safetensors")
    caplog.clear()
    result = generate(engine, "a cat <lora:odd:1>")
    assert "LoRA odd: 3 of 4 entries skipped" in caplog.text
    assert "lora_unet_no_such_block_to_q (no such layer in this model)" in caplog.text
    assert f"{kohya(CONV1)} (shape:" in caplog.text and "something_else (unknown key)" in caplog.text
    assert changed(engine.loaded.model, saved) == {ours(layout, LINEAR)}
    assert any("odd" in note for note in result.notes)

    # Nothing matching at all: a warning, the image as without it.
    save_file({"lora_unet_nowhere.lora_down.weight": down, "lora_unet_nowhere.lora_up.weight": up},
              studio.lora / "nothing.safetensors")
    caplog.clear()
    result = generate(engine, "a cat <lora:nothing:1>")
    assert "LoRA nothing: nothing in it matches the loaded model; skipped: lora_unet_nowhere" in caplog.text
    assert np.array_equal(pixels(result), pixels(plain))
    assert_identical(engine.loaded.model, saved)
    assert engine.extensions.extensions["lora"].enabled


class _Payload:
    """Pickles to "call exec(...)": a .pt that would run code when unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def test_a_pickle_that_would_run_code_is_refused(studio, reference, tmp_path, caplog):
    marker = tmp_path / "pwned"
    torch.save({"lora_unet_x.lora_down.weight": torch.zeros(1), "payload": _Payload(marker)}, studio.lora / "evil.pt")
    caplog.set_level(logging.WARNING)
    result = generate(studio.engine, "a cat <lora:evil:1>")
    assert not marker.exists()
    assert "LoRA evil: cannot be used: evil.pt: refused to load" in caplog.text
    assert np.array_equal(pixels(result), pixels(reference.plain))
    # A plain .pt of tensors loads (through torch.load(weights_only=True)).
    torch.save(load_file(studio.x), studio.lora / "x-copy.pt")
    assert np.array_equal(pixels(generate(studio.engine, "a cat <lora:x-copy:1>")), pixels(reference.with_lora))
    (studio.lora / "evil.pt").unlink()
    (studio.lora / "x-copy.pt").unlink()


# --- listing ---------------------------------------------------------------------------------------

def test_list_loras_and_name_lookup(tmp_path):
    folder = tmp_path / "Lora"
    (folder / "styles").mkdir(parents=True)
    (folder / "other").mkdir()
    tensors = {"lora_unet_a.lora_down.weight": torch.ones(1, 2), "lora_unet_a.lora_up.weight": torch.ones(2, 1)}
    save_file(tensors, folder / "ink.safetensors", metadata={"ss_output_name": "ink_v2"})
    (folder / "ink.preview.png").write_bytes(b"png")
    save_file(tensors, folder / "styles" / "film.safetensors")
    (folder / "styles" / "film.jpg").write_bytes(b"jpg")
    torch.save(tensors, folder / "styles" / "same.pt")
    torch.save(tensors, folder / "other" / "same.pt")
    (folder / "notes.txt").write_text("not a LoRA")

    items = {item["relative"]: item for item in list_loras(tmp_path, with_hash=True)}
    assert set(items) == {"ink", "styles/film", "styles/same", "other/same"}
    ink = items["ink"]
    assert (ink["name"], ink["alias"], Path(ink["preview"]).name) == ("ink", "ink_v2", "ink.preview.png")
    data = (folder / "ink.safetensors").read_bytes()
    assert ink["hash"] == hashlib.sha256(data[8 + struct.unpack("<Q", data[:8])[0]:]).hexdigest()[:12]
    assert Path(items["styles/film"]["preview"]).name == "film.jpg" and items["styles/film"]["name"] == "film"
    assert items["styles/same"]["name"] == "styles/same" and items["styles/same"]["preview"] is None
    assert items["other/same"]["hash"] == hashlib.sha256((folder / "other" / "same.pt").read_bytes()).hexdigest()[:12]
    assert "hash" not in list_loras(tmp_path)[0]

    assert find_lora(folder, "film")[0] == folder / "styles" / "film.safetensors"
    assert find_lora(folder, "styles/film")[0] == folder / "styles" / "film.safetensors"
    assert find_lora(folder, "ink_v2")[0] == folder / "ink.safetensors"
    assert find_lora(folder, "INK")[0] == folder / "ink.safetensors"
    assert find_lora(folder, "other/same")[0] == folder / "other" / "same.pt"
    path, note = find_lora(folder, "same")
    assert path is not None and "matches 2 files" in note
    assert find_lora(folder, "../Lora/ink")[0] is None
    assert find_lora(folder, "nope") == (None, "")
    assert list_loras(tmp_path / "missing") == []


def test_lora_dir_option_points_the_extension_elsewhere(studio, reference, tiny_checkpoints, tmp_path):
    elsewhere = tmp_path / "my-loras"
    elsewhere.mkdir()
    shutil.copy(studio.x, elsewhere / "moved.safetensors")
    engine = Engine(device="cpu", ckpt_dir=tiny_checkpoints["safetensors"].parent, output_dir=tmp_path / "out",
                    hash_cache=tmp_path / "h.json", extensions_dir=studio.engine.extensions.extensions["lora"].path.parent,
                    models_dir=tmp_path / "models", lora_dir=elsewhere)
    moved = generate(engine, "a cat <lora:moved:1>")
    assert np.array_equal(pixels(moved), pixels(reference.with_lora))
    assert "Lora hashes" in moved.infotext


def test_xyz_plot_varies_a_lora_weight_by_prompt_sr(studio, tmp_path):
    """A1111's way to compare LoRA weights: an X/Y/Z plot whose Prompt S/R axis replaces the
    tag's weight. Each cell is the picture a plain job at that weight makes."""
    import base64
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    from app.server import create_app
    from test_scripts import xyz_args

    job = dict(prompt="a cat <lora:x:0>", steps=1, cfg_scale=1.0, width=64, height=64, seed=3, sampler_name="Euler",
               save_images=False)
    app = create_app(studio.engine, api=True, ui=False, options_path=tmp_path / "config.json")

    def pictures(body: dict) -> list[np.ndarray]:
        return [np.asarray(Image.open(io.BytesIO(base64.b64decode(text))), dtype=np.int16) for text in body["images"]]

    with TestClient(app, base_url="http://127.0.0.1") as client:
        args = xyz_args("Prompt S/R", "<lora:x:0>, <lora:x:0.5>, <lora:x:1>", include_lone_images=True)
        grid, *cells = pictures(client.post("/sdapi/v1/txt2img", json={**job, "script_name": "x/y/z plot",
                                                                         "script_args": args}).json())
        plain = [pictures(client.post("/sdapi/v1/txt2img", json={**job, "prompt": f"a cat <lora:x:{weight}>"}).json())[0]
                 for weight in ("0", "0.5", "1")]
    assert len(cells) == 3 and grid.shape[1] >= 3 * 64
    for cell, alone in zip(cells, plain):
        assert np.array_equal(cell, alone)
    away = [np.abs(cell - cells[0]).mean() for cell in cells]
    assert 0 == away[0] < away[1] < away[2]  # the weight shows, growing
