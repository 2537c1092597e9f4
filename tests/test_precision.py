"""bf16 on the CPU: every path works and a bf16 picture stays close to the float32 one; what
``--precision auto`` picks for a processor.

Each case runs the same job (same seed) on two engines, float32 and bf16, over one models
folder: the demo model with its style LoRA and tiny checkpoints in the real layouts (SD 1.x
inpainting, SD 2.x v-prediction, SDXL base and refiner, the x4 upscaler, an ESRGAN file read by
spandrel). ``BOUNDS`` holds the most a bf16 picture may differ from the float32 one, per pixel
and channel on the 0..255 scale: measured with

    PYTHONPATH=. python tests/test_precision.py --seeds 8

(which prints the mean and max difference of every case over seeds 1..8) and widened by the
margin ``docs/PERFORMANCE.md`` ("bf16 quality") states.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from core.devices import NATIVE_BF16_FLAGS, resolve_dtype
from core.engine import Engine
from core.models.normalization import GroupNorm32
from core.params import GenerationParams
from core.upscaling.extras import ExtrasJob

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "Stable-diffusion" / "demo-shapes.safetensors"
DEMO_LORA = ROOT / "models" / "Lora" / "demo-outlined.safetensors"
PROMPT = "a small red circle at the top left on a blue background"

pytestmark = pytest.mark.usefixtures("one_thread")
# bf16 against float32 decode of the same latents (mean, max; 0..255): measured 0.24 / 2 at 32x32
# (0.23 / 4 at 64x64), bounds twice that
VAE_BOUNDS = (0.5, 8)


# --- what auto picks ----------------------------------------------------------------------


@pytest.mark.parametrize("flags, expected", [
    ({"sse2", "avx2", "amx_bf16", "amx_tile"}, torch.bfloat16),  # Sapphire Rapids and later
    ({"sse2", "avx2", "avx512f", "avx512_bf16"}, torch.bfloat16),  # Cooper Lake, Zen 4
    ({"sse2", "avx2", "avx512f", "avx512bw"}, torch.float32),  # AVX512 without its bf16 part
    (set(), torch.float32),
])
def test_auto_precision_on_the_cpu_follows_the_native_bf16_flags(flags, expected):
    assert resolve_dtype("auto", torch.device("cpu"), lambda: flags) == expected


def test_auto_precision_elsewhere_and_asked_for_precisions_ignore_the_cpu():
    everything = lambda: NATIVE_BF16_FLAGS  # noqa: E731
    assert resolve_dtype("auto", torch.device("cuda"), everything) == torch.float16
    assert resolve_dtype("auto", torch.device("mps"), everything) == torch.float16
    assert resolve_dtype("fp32", torch.device("cpu"), everything) == torch.float32
    assert resolve_dtype("bf16", torch.device("cpu"), lambda: set()) == torch.bfloat16


def test_the_auto_choice_is_logged_once(caplog):
    flags = {"avx512_bf16", "a-flag-only-this-test-uses"}
    with caplog.at_level("INFO", logger="core.devices"):
        for _ in range(3):
            assert resolve_dtype("auto", torch.device("cpu"), lambda: flags) == torch.bfloat16
    assert [r.getMessage() for r in caplog.records] == ["precision auto on the CPU: bf16 (the processor has avx512_bf16)"]


def test_this_machines_auto_choice_matches_its_flags():
    from core.devices import cpu_flags

    native = not NATIVE_BF16_FLAGS.isdisjoint(cpu_flags())
    assert resolve_dtype("auto", torch.device("cpu")) == (torch.bfloat16 if native else torch.float32)


# --- GroupNorm ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_group_norm_computes_in_float32_and_returns_the_input_dtype(dtype):
    torch.manual_seed(0)
    norm = GroupNorm32(4, 16)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.1 * torch.randn(16))
        norm.bias.copy_(0.1 * torch.randn(16))
    # A flat map with small differences on a large offset: what bf16 statistics lose.
    x = (3.0 + 0.01 * torch.randn(2, 16, 32, 32)).to(dtype)
    exact = torch.nn.functional.group_norm(x.double(), 4, norm.weight.double(), norm.bias.double(), norm.eps)
    out = norm(x)
    assert out.dtype == dtype
    rounding = torch.finfo(dtype).eps * exact.abs().max()
    assert (out.double() - exact).abs().max() <= rounding
    half_params = GroupNorm32(4, 16).to(dtype)  # parameters in the low precision work as well
    assert half_params(x).dtype == dtype


def test_loading_in_bf16_keeps_group_norm_parameters_in_float32():
    from core.loading import load_model

    model = load_model(DEMO, dtype=torch.bfloat16)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(m.weight.dtype == m.bias.dtype == torch.float32 for m in norms)
    assert model.unet.dtype == model.vae.dtype == torch.bfloat16
    assert model.text_encoder.transformer.embeddings.token_embedding.weight.dtype == torch.bfloat16


# --- the VAE -------------------------------------------------------------------------------


def gradient_picture(size: int) -> torch.Tensor:
    """Smooth ramps in every channel, in [-1, 1]: where a coarse number format shows as bands."""
    ramp = torch.linspace(-1, 1, size)
    return torch.stack([ramp[None, :].expand(size, size), ramp[:, None].expand(size, size), ramp[None, :] * ramp[:, None]])[None]


def test_vae_decodes_in_bf16_without_visible_banding():
    """The decision docs/PERFORMANCE.md records: the VAE runs in bf16 with the UNet. On the demo
    model's smooth gradient its picture is within a few levels of the float32 decode, and it has
    as many distinct levels along a row (a banded picture has fewer)."""
    from core.loading import load_model

    full, half = (load_model(DEMO, dtype=dtype).vae for dtype in (torch.float32, torch.bfloat16))
    with torch.no_grad():
        latents = full.encode(gradient_picture(32))
        pictures = [((vae.decode(latents).float().clamp(-1, 1) + 1) * 127.5).round() for vae in (full, half)]
    diff = (pictures[1] - pictures[0]).abs()
    assert diff.mean() <= VAE_BOUNDS[0] and diff.max() <= VAE_BOUNDS[1], (float(diff.mean()), float(diff.max()))
    levels = [len(torch.unique(picture[0, 0, 16])) for picture in pictures]
    assert levels[1] >= levels[0] - 2, levels


# --- bf16 pictures against float32 ones ---------------------------------------------------


def input_picture(size: int = 64) -> Image.Image:
    """A blue picture with a yellow square: flat regions (where banding would show) and edges."""
    picture = Image.new("RGB", (size, size), (30, 60, 200))
    picture.paste((240, 220, 40), (size // 4, size // 4, size * 5 // 8, size * 5 // 8))
    return picture


def square_mask(size: int = 64) -> Image.Image:
    mask = Image.new("L", (size, size))
    mask.paste(255, (size // 2, size // 2, size * 7 // 8, size * 7 // 8))
    return mask


def params(checkpoint: str, seed: int, **changes) -> GenerationParams:
    base = dict(prompt=PROMPT, negative_prompt="", steps=4, width=64, height=64, seed=seed, checkpoint=checkpoint)
    return GenerationParams(**{**base, **changes})


@dataclass(frozen=True)
class Case:
    """A job run on both engines; ``mean``/``max``: the bounds on the bf16 picture's per-pixel
    difference from the float32 one (0..255)."""
    run: Callable[[Engine, int], Image.Image]
    mean: float
    max: int


def _txt2img(checkpoint: str, **changes):
    return lambda engine, seed: engine.txt2img(params(checkpoint, seed, **changes), save=False)[0].image


def _inpaint(checkpoint: str, **changes):
    def run(engine, seed):
        return engine.img2img(params(checkpoint, seed, **changes), input_picture(), square_mask(), save=False)[0].image
    return run


def _extras(upscaler: str, **x4):
    def run(engine, seed):
        job = ExtrasJob(upscaler=upscaler, scale=4, tile=0, x4={**x4, "seed": seed} if x4 else {})
        return engine.extras(input_picture(16), job).image
    return run


# Bounds: twice the worst of seeds 1..8 as measured on the development machine (mean rounded up
# to 0.5, max to an even number): bf16 kernels differ between processors (AMX accumulates in
# other orders than AVX2's emulation), and a shape's edge moving by one pixel makes the max.
CASES = {
    # The command line's crash (GroupNorm32: "mixed dtype (CPU)") on the demo model.
    "demo txt2img": Case(_txt2img("demo.safetensors"), 2.5, 22),
    "demo txt2img + LoRA": Case(_txt2img("demo.safetensors", prompt=PROMPT + " <lora:demo-outlined:1>"), 3.0, 46),
    # Inpainting with a plain checkpoint: the picture encoded (img2img), the mask applied per step.
    "demo inpaint": Case(_inpaint("demo.safetensors", denoising_strength=0.8), 1.5, 134),
    "SD 1.x inpainting checkpoint": Case(_inpaint("sd1-inpainting.safetensors"), 1.0, 28),
    "SD 1.x hires fix, ESRGAN": Case(_txt2img("sd1-inpainting.safetensors", width=32, height=32, enable_hr=True,
                                              hr_upscaler="esrgan", denoising_strength=0.5), 5.5, 42),
    "SD 2.x v-prediction": Case(_txt2img("sd2.safetensors"), 4.0, 40),
    "SDXL + refiner": Case(_txt2img("sdxl.safetensors", refiner_checkpoint="refiner.safetensors",
                                    refiner_switch_at=0.5), 3.5, 30),
    "x4 upscaler": Case(_extras("x4", steps=3, noise_level=20), 2.0, 14),
}


def build_models_folder(root: Path) -> Path:
    """<root>/models: the demo model and LoRA, tiny checkpoints of every family, an ESRGAN file."""
    import tiny_models
    from safetensors.torch import save_file

    from core.upscaling.spandrel_import import import_spandrel

    made, models = root / "made", root / "models"
    checkpoints = models / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    shutil.copy(DEMO, checkpoints / "demo.safetensors")
    (models / "Lora").mkdir()
    shutil.copy(DEMO_LORA, models / "Lora")
    inpainting = tiny_models.save_diffusers_folder(made / "inpainting", in_channels=9)
    shutil.copy(tiny_models.save_single_files(inpainting, made, "inpainting")["safetensors"],
                checkpoints / "sd1-inpainting.safetensors")
    shutil.copy(tiny_models.save_sd2(made / "sd2")["safetensors"], checkpoints / "sd2.safetensors")
    shutil.copy(tiny_models.save_sdxl(made / "sdxl")["safetensors"], checkpoints / "sdxl.safetensors")
    shutil.copy(tiny_models.save_sdxl(made / "refiner", "tiny-refiner", seed=1, refiner=True)["safetensors"],
                checkpoints / "refiner.safetensors")
    shutil.copy(tiny_models.save_x4(made / "x4")["safetensors"], checkpoints / "x4.safetensors")
    import_spandrel()
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(0)
    esrgan = ESRGAN(num_filters=16, num_blocks=1, scale=4)
    (models / "ESRGAN").mkdir()
    save_file({k: v.contiguous() for k, v in esrgan.state_dict().items()}, models / "ESRGAN" / "esrgan.safetensors")
    return models


def make_engines(models: Path, output: Path) -> dict[str, Engine]:
    return {precision: Engine(device="cpu", precision=precision, ckpt_dir=models / "Stable-diffusion", models_dir=models,
                              output_dir=output, hash_cache=output / "hashes.json")
            for precision in ("fp32", "bf16")}


def difference(case: Case, engines: dict[str, Engine], seed: int) -> np.ndarray:
    pictures = [np.asarray(case.run(engines[p], seed).convert("RGB"), dtype=np.int16) for p in ("fp32", "bf16")]
    assert pictures[0].shape == pictures[1].shape
    assert pictures[0].std() > 1  # a picture, not a flat or black failure
    return np.abs(pictures[1] - pictures[0])


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    root = tmp_path_factory.mktemp("precision")
    return make_engines(build_models_folder(root), root / "outputs")


@pytest.mark.parametrize("name", list(CASES))
def test_bf16_picture_is_close_to_the_float32_one(engines, name):
    case = CASES[name]
    diff = difference(case, engines, seed=1)
    assert diff.mean() <= case.mean and diff.max() <= case.max, (name, float(diff.mean()), int(diff.max()))


@pytest.mark.parametrize("upscaler", ["esrgan", "x4"])
def test_bf16_engine_runs_upscaler_models_in_bf16(engines, upscaler):
    engine = engines["bf16"]
    assert engine.dtype == engine.upscaler_dtype == torch.bfloat16
    engine.extras(input_picture(8), ExtrasJob(upscaler=upscaler, scale=4, tile=0, x4={"steps": 1}))
    assert engine.upscaler_cache.loaded.dtype == torch.bfloat16


# --- measuring ----------------------------------------------------------------------------


def measure(seeds: int) -> None:
    """Print each case's mean and max difference over seeds 1..``seeds`` (the figures behind BOUNDS)."""
    import tempfile

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        engines = make_engines(build_models_folder(Path(tmp)), Path(tmp) / "outputs")
        print("| case | mean (worst seed) | max (worst seed) | mean over seeds | bounds tested (mean / max) |")
        print("| --- | --- | --- | --- | --- |")
        for name, case in CASES.items():
            diffs = [difference(case, engines, seed) for seed in range(1, seeds + 1)]
            means = [float(d.mean()) for d in diffs]
            print(f"| {name} | {max(means):.2f} | {max(int(d.max()) for d in diffs)} | {np.mean(means):.2f} "
                  f"| {case.mean} / {case.max} |", flush=True)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=measure.__doc__)
    parser.add_argument("--seeds", type=int, default=8)
    measure(parser.parse_args().seeds)
