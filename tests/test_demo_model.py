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

HOLLOW_GAIN = 0.15  # mean hollowness the LoRA must add on these large shapes (measured 0.37)
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


def test_the_pictures_show_what_the_prompt_asks(engine):
    """A floor, far below the model card's figures, that a broken export or loader cannot pass."""
    colours = shapes = 0
    for seed, prompt in enumerate(PROMPTS):
        params = GenerationParams(prompt=prompt, width=64, height=64, steps=20, cfg_scale=7.0, seed=seed)
        got = analyse(engine.txt2img(params, save=False)[0].image).attributes()
        want = S.parse_caption(prompt)
        colours += got["colour"] == want["colour"] and got["background"] == want["background"]
        shapes += got["shape"] == want["shape"]
    assert colours >= 4, colours
    assert shapes >= 3, shapes


def test_the_style_lora_outlines_the_shapes(engine):
    """Weak but measurable (model card: the autoencoder itself reconstructs rings only partly):
    hollow pixels appear inside the shapes with the LoRA and not without."""
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
