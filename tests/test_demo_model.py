"""The bundled demo model and its style LoRA, as shipped in models/: the files, the first-run
path through the Engine, and a floor on what the pictures show (the model card has the full
measurement: python -m core.eval_demo)."""
import json
import struct

import numpy as np
import pytest
from safetensors import safe_open

from core.demo import DEMO_CHECKPOINT, DEMO_LORA, DEMO_NAME
from core.engine import Engine
from core.params import GenerationParams
from core.training import shapes as S
from core.training.analyser import analyse

HOLLOW_GAIN = 0.4  # mean hollowness the LoRA must add on these large shapes (measured 0.00 -> 0.70)
PROMPTS = [
    "a large red circle in the center on a blue background",
    "a large yellow square in the center on a black background",
    "a large white triangle in the center on a green background",
    "a large green circle in the center on a purple background",
    "a large blue square in the center on a yellow background",
    "a large orange circle in the center on a white background",
]


def header(path):
    with open(path, "rb") as f:
        size = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(size))


def test_the_shipped_files_are_small_fp16_and_in_the_real_layouts():
    assert DEMO_CHECKPOINT.is_file() and DEMO_LORA.is_file()
    assert DEMO_CHECKPOINT.stat().st_size + DEMO_LORA.stat().st_size < 40e6
    meta = header(DEMO_CHECKPOINT)["__metadata__"]
    assert meta["modelspec.resolution"] == "64x64" and meta["unet_norm_groups"] == "8" and meta["vae_norm_groups"] == "8"
    with safe_open(str(DEMO_CHECKPOINT), "pt") as f:
        keys = list(f.keys())
        assert {k.split(".")[0] for k in keys} == {"model", "first_stage_model", "cond_stage_model"}
        assert all(f.get_slice(k).get_dtype() == "F16" for k in keys)
    with safe_open(str(DEMO_LORA), "pt") as f:
        names = list(f.keys())
    assert names and all(k.startswith(("lora_unet_", "lora_te_")) for k in names)
    assert any(k.endswith(".lora_down.weight") for k in names) and any(k.endswith(".alpha") for k in names)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """A fresh machine: an empty checkpoint folder, so the demo is all there is."""
    root = tmp_path_factory.mktemp("fresh")
    (root / "Stable-diffusion").mkdir()
    return Engine(device="cpu", precision="fp32", ckpt_dir=root / "Stable-diffusion", output_dir=root / "outputs",
                  hash_cache=root / "hashes.json", lora_dir=DEMO_LORA.parent)


def test_a_fresh_machine_lists_the_demo_and_uses_it_by_default(engine):
    assert engine.list_checkpoints() == [DEMO_NAME]
    result = engine.txt2img(GenerationParams(prompt=PROMPTS[0], width=64, height=64, steps=20, seed=1))[0]
    assert result.infotext.endswith("Model: demo-shapes") and result.path.is_file()
    assert engine.loaded.model.spec.default_size == 64


# One prompt per cell of the 3x3 grid, every size, shape and colour at least once.
GRID_PROMPTS = [
    "a small red circle at the top left on a blue background",
    "a medium yellow square at the top on a black background",
    "a large white triangle at the top right on a green background",
    "a medium green circle on the left on a purple background",
    "a small blue square in the center on a yellow background",
    "a large orange triangle on the right on a white background",
    "a large purple square at the bottom left on a orange background",  # the captions' grammar: always "a"
    "a small black triangle at the bottom on a red background",
    "a medium red circle at the bottom right on a white background",
]


def test_the_pictures_show_what_the_prompt_asks(engine):
    """A floor below the model card's figures (CFG 7: colour 100%, shape 91%, size 98%,
    position 83% over 200 prompts) that a broken export, loader or sampler cannot pass."""
    right = {"colour": 0, "shape": 0, "size": 0, "position": 0}
    for seed, prompt in enumerate(GRID_PROMPTS):
        params = GenerationParams(prompt=prompt, width=64, height=64, steps=20, cfg_scale=7.0, seed=seed)
        got = analyse(engine.txt2img(params, save=False)[0].image).attributes()
        want = S.parse_caption(prompt)
        right["colour"] += got["colour"] == want["colour"] and got["background"] == want["background"]
        for attribute in ("shape", "size", "position"):
            right[attribute] += got[attribute] == want[attribute]
    # Measured here: colour 9, shape 7, size 9, position 6 of 9 (chance: 1, 3, 3, 1).
    assert right["colour"] >= 8 and right["shape"] >= 5 and right["size"] >= 7 and right["position"] >= 4, right


def test_the_style_lora_outlines_the_shapes(engine):
    """Hollow shapes with the LoRA and filled ones without (model card: the autoencoder brings
    rings back at about two thirds of their hollowness, so 0.84 is out of reach)."""
    hollow = {}
    for tag in ("", " <lora:demo-outlined:1>"):
        values = []
        for seed, prompt in enumerate(PROMPTS):
            params = GenerationParams(prompt=prompt + tag, width=64, height=64, steps=20, cfg_scale=7.0, seed=seed)
            result = engine.txt2img(params, save=False)[0]
            values.append(analyse(result.image).hollowness)
        hollow[tag] = float(np.mean(values))
    assert "Lora hashes" in result.infotext
    assert hollow[" <lora:demo-outlined:1>"] > hollow[""] + HOLLOW_GAIN, hollow
