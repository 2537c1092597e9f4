"""Every checkpoint format ends in the same model; bad files fail with one clear line."""
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from core.engine import Engine
from core.errors import EngineError
from core.loading import load_model, read_checkpoint
from core.params import GenerationParams

ROOT = Path(__file__).resolve().parent.parent


def weights(model):
    return {k: v.float() for k, v in model.checkpoint_state_dict().items()}


@pytest.fixture(scope="module")
def reference(tiny_checkpoints):
    return load_model(tiny_checkpoints["safetensors"])


@pytest.mark.parametrize("kind", ["ckpt", "diffusers"])
def test_formats_load_identical_weights(tiny_checkpoints, reference, kind):
    other = load_model(tiny_checkpoints[kind])
    a, b = weights(reference), weights(other)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_fp16_file_loads_and_generates_close(tiny_checkpoints, reference, tmp_path):
    half = load_model(tiny_checkpoints["fp16"])
    for key, value in weights(half).items():
        assert torch.allclose(value, weights(reference)[key], atol=1e-2, rtol=1e-2), key
    engine = Engine(device="cpu", ckpt_dir=tiny_checkpoints["safetensors"].parent, output_dir=tmp_path, hash_cache=tmp_path / "h.json")
    params = dict(prompt="a cat", steps=6, width=64, height=64, seed=11)
    full = engine.txt2img(GenerationParams(checkpoint="tiny.safetensors", **params), save=False)[0].image
    halfimg = engine.txt2img(GenerationParams(checkpoint="tiny-fp16.safetensors", **params), save=False)[0].image
    diff = torch.tensor(list(full.getdata())).float() - torch.tensor(list(halfimg.getdata())).float()
    assert diff.abs().mean() < 4  # fp16 weights, same picture within a few levels


def test_every_format_generates_the_same_image(tiny_checkpoints, tmp_path):
    engine = Engine(device="cpu", ckpt_dir=tiny_checkpoints["safetensors"].parent, output_dir=tmp_path, hash_cache=tmp_path / "h.json")
    images = []
    for name in ("tiny.safetensors", "tiny.ckpt", "tiny-diffusers"):
        result = engine.txt2img(GenerationParams(prompt="a cat", steps=4, width=64, height=64, seed=5, checkpoint=name), save=False)
        images.append(list(result[0].image.getdata()))
    assert images[0] == images[1] == images[2]


def test_safetensors_are_memory_mapped_copy_on_write(tiny_checkpoints, tmp_path):
    import shutil

    copy = tmp_path / "copy.safetensors"
    shutil.copy(tiny_checkpoints["safetensors"], copy)
    before = copy.read_bytes()
    model = load_model(copy)
    with torch.no_grad():
        model.unet.out[2].weight.add_(1.0)  # writing into a mapped tensor must not reach the file
    assert copy.read_bytes() == before


def test_checkpoint_variants(tiny_checkpoints, reference, tmp_path):
    """Old-layout text keys, EMA shadows, schedule buffers and a float position_ids still load."""
    tensors, _ = read_checkpoint(tiny_checkpoints["safetensors"])
    variant = {}
    for key, value in tensors.items():
        variant[key.replace("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer.")] = value.clone()
    variant["model_ema.decay"] = torch.tensor(0.9999)
    variant["model_ema.num_updates"] = torch.tensor(10, dtype=torch.int32)
    variant["model_ema.diffusion_modelout2weight"] = torch.zeros_like(tensors["model.diffusion_model.out.2.weight"])
    variant["betas"] = torch.linspace(0.1, 0.2, 1000)
    variant["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77.0)[None] + 0.3
    path = tmp_path / "variant.safetensors"
    save_file(variant, path)
    loaded = load_model(path)
    for key, value in weights(reference).items():
        assert torch.equal(value, weights(loaded)[key]), key


# --- bad input -------------------------------------------------------------------------------

def expect_error(path, *patterns):
    with pytest.raises(EngineError) as info:
        load_model(path)
    message = str(info.value)
    assert "\n" not in message
    for pattern in patterns:
        assert pattern in message, message
    return message


def test_truncated_safetensors(tiny_checkpoints, tmp_path):
    data = tiny_checkpoints["safetensors"].read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[: len(data) // 2])
    expect_error(path, "cut.safetensors", "truncated")


def test_corrupt_safetensors_header(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", 12) + b"not json!!!!" + b"\0" * 64)
    expect_error(path, "bad.safetensors", "not valid JSON")
    path.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    expect_error(path, "bad.safetensors", "header")
    path.write_bytes(b"abc")
    expect_error(path, "bad.safetensors", "not a safetensors file")


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_ckpt_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"a": torch.zeros(1)}, "payload": RunsCode(marker)}, path)
    expect_error(path, "evil.ckpt", "refused")
    assert not marker.exists()
    # The same with a raw (non-zip) pickle.
    raw = tmp_path / "evil2.ckpt"
    raw.write_bytes(pickle.dumps({"state_dict": RunsCode(marker)}))
    with pytest.raises(EngineError) as info:
        load_model(raw)
    assert "evil2.ckpt" in str(info.value)
    assert not marker.exists()


def test_unknown_architecture(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"encoder.weight": torch.zeros(2, 2), "decoder.bias": torch.zeros(2)}, path)
    expect_error(path, "other.safetensors", "unknown model layout", "2 tensors")


def test_missing_path_and_wrong_type(tmp_path):
    expect_error(tmp_path / "nope.safetensors", "nope.safetensors", "no such file")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    expect_error(text, "notes.txt", "unsupported file type")
    expect_error(tmp_path, "not a diffusers model")


def test_incomplete_checkpoint(tiny_checkpoints, tmp_path):
    tensors, _ = read_checkpoint(tiny_checkpoints["safetensors"])
    del tensors["model.diffusion_model.out.2.weight"]
    path = tmp_path / "partial.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, path)
    expect_error(path, "partial.safetensors", "out.2.weight")


@pytest.mark.parametrize(
    "field,value,pattern",
    [("width", 100, "width: must be a multiple of 8"), ("height", 0, "height"), ("steps", 0, "steps: must be between 1"),
     ("sampler", "Nope", "sampler: unknown 'Nope'"), ("scheduler", "Wavy", "schedule type: unknown 'Wavy'"), ("subseed_strength", 2.0, "subseed_strength"), ("seed", -5, "seed"), ("cfg_scale", "x", "cfg_scale")],
)
def test_bad_parameters(field, value, pattern):
    params = GenerationParams(**{field: value})
    with pytest.raises(EngineError, match=pattern.replace("(", r"\(")):
        params.validate()


def test_request_names_cannot_escape_the_checkpoint_folder(tiny_checkpoints, tmp_path):
    engine = Engine(device="cpu", ckpt_dir=tmp_path / "ckpts", output_dir=tmp_path, hash_cache=tmp_path / "h.json")
    (tmp_path / "ckpts").mkdir()
    with pytest.raises(EngineError, match="outside the checkpoint folder"):
        engine.resolve_checkpoint(f"../../{tiny_checkpoints['safetensors']}")
    with pytest.raises(EngineError, match="outside the checkpoint folder"):
        engine.resolve_checkpoint(str(tiny_checkpoints["safetensors"]))


def run_cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "extra,pattern",
    [(["--width", "100"], "width: must be a multiple of 8"), (["--steps", "0"], "steps: must be between 1")],
)
def test_cli_bad_fields_print_one_line(tiny_checkpoints, tmp_path, extra, pattern):
    result = run_cli("txt2img", "--model", str(tiny_checkpoints["safetensors"]), "--out", str(tmp_path), *extra)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and pattern in result.stderr
    assert not list(tmp_path.glob("*.png"))


def test_cli_bad_files_print_one_line(tmp_path):
    missing = run_cli("txt2img", "--model", str(tmp_path / "gone.safetensors"), "--out", str(tmp_path))
    assert missing.returncode == 2 and "gone.safetensors" in missing.stderr and "Traceback" not in missing.stderr
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    result = run_cli("txt2img", "--model", str(broken), "--out", str(tmp_path), "--no-progress")
    assert result.returncode == 2 and "broken.safetensors" in result.stderr and "Traceback" not in result.stderr
