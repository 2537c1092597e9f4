"""SD 3.x and FLUX.1 through the whole studio: the engine's jobs (txt2img, img2img, inpainting,
hires fix), Forge's infotext fields, the A1111 API and the command line, on tiny checkpoints in the
real layouts (tests/tiny_flow_models.py)."""
from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from core.engine import Engine
from core.errors import EngineError
from core.images import read_infotext
from core.infotext import params_from_infotext
from core.params import GenerationParams
from tiny_flow_models import SD3_SCHEDULER, flux_components, flux_scheduler, save_flow_folder, save_single_file, sd3_components

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """models/Stable-diffusion with a FLUX.1 dev file (its T5 tokenizer beside it) and an SD3
    diffusers folder."""
    root = tmp_path_factory.mktemp("flow") / "models"
    checkpoints = root / "Stable-diffusion"
    flux = flux_components(0, velocity_scale=0.02)  # so that img2img's starting picture shows through
    save_single_file(save_flow_folder(root.parent / "build" / "flux", flux, "FluxPipeline", flux_scheduler("dev")),
                     checkpoints / "tiny-flux.safetensors")
    save_flow_folder(checkpoints / "tiny-sd3", sd3_components(0), "StableDiffusion3Pipeline", SD3_SCHEDULER)
    return root


@pytest.fixture(scope="module")
def engine(models):
    out = models.parent / "outputs"
    (out / "no-extensions").mkdir(parents=True)
    return Engine(device="cpu", ckpt_dir=models / "Stable-diffusion", output_dir=out / "images", hash_cache=out / "hashes.json",
                  models_dir=models, extensions_dir=out / "no-extensions")


def pixels(result) -> np.ndarray:
    return np.asarray(result.image, dtype=np.int16)


def flux_job(**changes) -> GenerationParams:
    base = dict(prompt="a red cat on the mat", steps=3, width=64, height=48, seed=3, cfg_scale=1.0,
                checkpoint="tiny-flux.safetensors")
    return GenerationParams(**{**base, **changes})


def test_both_families_are_listed_with_their_native_size(engine):
    assert {"tiny-flux.safetensors", "tiny-sd3"} <= set(engine.list_checkpoints())
    assert engine.default_size("tiny-flux.safetensors") == 1024
    assert engine.default_size("tiny-sd3") == 1024


def test_flux_txt2img_writes_forge_infotext_and_saves(engine):
    (result,) = engine.txt2img(flux_job(distilled_cfg_scale=4.5))
    assert result.image.size == (64, 48) and pixels(result).std() > 1
    assert "CFG scale: 1, Distilled CFG Scale: 4.5, Seed: 3, Size: 64x48" in result.infotext
    assert "Model: tiny-flux" in result.infotext
    assert read_infotext(result.path) == result.infotext
    # Pasted back, the infotext gives the same job (the page's and the API's reading).
    assert params_from_infotext(result.infotext)[0].distilled_cfg_scale == 4.5
    (again,) = engine.txt2img(flux_job(distilled_cfg_scale=4.5), save=False)
    assert np.array_equal(pixels(again), pixels(result))
    (other,) = engine.txt2img(flux_job(distilled_cfg_scale=1.0), save=False)
    assert np.abs(pixels(other) - pixels(result)).mean() > 1


def test_sd3_folder_txt2img_with_real_cfg_and_no_distilled_field(engine):
    (result,) = engine.txt2img(GenerationParams(prompt="a photo of the dog", negative_prompt="cat", steps=3, width=48, height=48,
                                                seed=1, cfg_scale=4.0, checkpoint="tiny-sd3"), save=False)
    assert pixels(result).std() > 1
    assert "Distilled CFG Scale" not in result.infotext and "Model: tiny-sd3" in result.infotext


def textured(seed: int) -> Image.Image:
    """A picture with texture: a flat one would encode to nothing through the random VAE's first
    group norm (every channel constant)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))


def test_img2img_follows_the_picture_and_the_strength(engine):
    from core.pipelines.common import decode_latents, encode_pixels
    from core.pipelines.img2img import to_tensor

    first, second = textured(1), textured(2)
    a, b = (engine.img2img(flux_job(denoising_strength=0.5), picture, save=False)[0] for picture in (first, second))
    assert np.abs(pixels(a) - pixels(b)).mean() > 1  # the starting picture shows through
    # The weaker the strength, the nearer the result to the starting picture (as this VAE draws it).
    vae = engine.loaded.model.vae
    drawn = decode_latents(vae, encode_pixels(vae, to_tensor(first)))[0].permute(1, 2, 0).numpy() * 255
    distances = [np.abs(pixels(engine.img2img(flux_job(denoising_strength=s), first, save=False)[0]) - drawn).mean()
                 for s in (0.2, 0.6, 1.0)]
    assert distances == sorted(distances) and distances[2] > distances[0] + 1


def test_inpainting_keeps_what_is_outside_the_mask(engine):
    picture = Image.new("RGB", (64, 48), (40, 160, 90))
    ImageDraw.Draw(picture).ellipse((5, 5, 30, 30), fill=(250, 240, 10))
    mask = Image.new("L", (64, 48), 0)
    ImageDraw.Draw(mask).rectangle((32, 0, 63, 47), fill=255)
    (result,) = engine.img2img(flux_job(denoising_strength=0.9, mask_blur=0), picture, mask, save=False)
    outside, inside = pixels(result)[:, :32], pixels(result)[:, 32:]
    assert np.array_equal(outside, np.asarray(picture, dtype=np.int16)[:, :32])
    assert np.abs(inside - np.asarray(picture, dtype=np.int16)[:, 32:]).mean() > 5


def test_hires_fix_to_a_size_off_the_patch_grid(engine):
    (result,) = engine.txt2img(flux_job(enable_hr=True, hr_scale=1.5, hr_second_pass_steps=2, denoising_strength=0.6), save=False)
    assert result.image.size == (96, 72)  # a 12x9 latent: FLUX pads the odd side and crops it back
    assert pixels(result).std() > 1


def test_samplers_for_other_noise_and_refiners_are_refused_by_name(engine):
    with pytest.raises(EngineError, match="DPM\\+\\+ 2M SDE is not for flow-matching"):
        engine.txt2img(flux_job(sampler="DPM++ 2M SDE"), save=False)
    with pytest.raises(EngineError, match="take no refiner"):
        engine.txt2img(flux_job(refiner_checkpoint="tiny-sd3"), save=False)
    with pytest.raises(EngineError, match="seamless tiling works with UNet checkpoints, not FLUX.1 dev") as refused:
        engine.txt2img(flux_job(tiling=True), save=False)
    assert refused.value.field == "tiling"


@pytest.fixture(scope="module")
def client(engine, models):
    from fastapi.testclient import TestClient

    from app.server import create_app

    app = create_app(engine, api=True, ui=False, options_path=models.parent / "config.json")
    with TestClient(app, base_url="http://127.0.0.1") as test_client:
        yield test_client


def test_api_txt2img_takes_forge_distilled_cfg_scale(client):
    body = dict(prompt="a red cat", steps=2, width=64, height=48, seed=9, cfg_scale=1, distilled_cfg_scale=2.5,
                override_settings={"sd_model_checkpoint": "tiny-flux.safetensors"})
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert "Distilled CFG Scale: 2.5" in info["infotexts"][0]
    picture = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))
    assert picture.size == (64, 48)
    assert client.post("/sdapi/v1/txt2img", json={**body, "distilled_cfg_scale": 99}).status_code == 422


def test_command_line_runs_sd3_and_flux(models, tmp_path):
    for model in (models / "Stable-diffusion" / "tiny-flux.safetensors", models / "Stable-diffusion" / "tiny-sd3"):
        out = tmp_path / model.stem
        result = subprocess.run(
            [sys.executable, "-m", "core", "txt2img", "--model", str(model), "--prompt", "a red cat", "--steps", "2",
             "--width", "48", "--height", "48", "--cfg", "1", "--distilled-cfg", "3", "--seed", "2", "--out", str(out),
             "--no-progress"], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        (file,) = out.glob("*.png")
        assert Image.open(file).size == (48, 48)
        assert ("Distilled CFG Scale: 3" in read_infotext(file)) == (model.suffix == ".safetensors")


def test_a_file_without_its_parts_takes_them_from_the_folders_and_names_them(engine, models):
    """A transformer-only FLUX file: refused naming what to put where; once the parts are in
    models/text_encoder and models/VAE, the same picture as the bundled file, and Forge's
    "Module N" fields name the files used."""
    from safetensors.torch import load_file, save_file

    bundled = load_file(models / "Stable-diffusion" / "tiny-flux.safetensors")
    bare = models / "Stable-diffusion" / "bare-flux.safetensors"
    save_file({k: v for k, v in bundled.items() if k.startswith("model.diffusion_model.")}, bare)
    encoders, vaes = models / "text_encoder", models / "VAE"
    try:
        with pytest.raises(EngineError, match="no text encoders or VAE: put clip_l and t5xxl in models/text_encoder"):
            engine.txt2img(flux_job(checkpoint="bare-flux.safetensors"), save=False)
        encoders.mkdir(), vaes.mkdir()
        for name, prefix in (("clip_l", "text_encoders.clip_l."), ("t5xxl_fp16", "text_encoders.t5xxl."),
                             ("ae", "first_stage_model.")):
            folder = vaes if name == "ae" else encoders
            save_file({k[len(prefix):]: v for k, v in bundled.items() if k.startswith(prefix)}, folder / f"{name}.safetensors")
        shutil.copy(models / "Stable-diffusion" / "tokenizer.json", encoders / "tokenizer.json")
        (separate,) = engine.txt2img(flux_job(checkpoint="bare-flux.safetensors"), save=False)
        (whole,) = engine.txt2img(flux_job(), save=False)
        assert np.array_equal(pixels(separate), pixels(whole))
        assert "Module 1: ae, Module 2: clip_l, Module 3: t5xxl_fp16" in separate.infotext
        assert "Module 1" not in whole.infotext and "Schedule type: Simple" in whole.infotext
    finally:
        bare.unlink()
        shutil.rmtree(encoders, ignore_errors=True)
        shutil.rmtree(vaes, ignore_errors=True)


def test_reading_a_checkpoints_spec_touches_no_weights(models, tmp_path, monkeypatch):
    """What the page asks when a checkpoint is chosen (its size and defaults) comes from the
    headers alone, even for an fp8 file whose encoders are separate files: no weight is mapped
    or widened (FLUX.1's would be gigabytes)."""
    import torch
    from safetensors.torch import load_file, save_file

    import core.loading as loading
    from core.loading import read_spec

    bundled = load_file(models / "Stable-diffusion" / "tiny-flux.safetensors")
    save_file({k: v.to(torch.float8_e4m3fn) for k, v in bundled.items() if k.startswith("model.diffusion_model.")},
              tmp_path / "flux-fp8.safetensors")
    encoders = tmp_path / "text_encoder"
    encoders.mkdir()
    for name, prefix in (("clip_l", "text_encoders.clip_l."), ("t5xxl_fp8_e4m3fn", "text_encoders.t5xxl."), ("ae", "first_stage_model.")):
        save_file({k[len(prefix):]: v.to(torch.float8_e4m3fn) if name != "ae" else v for k, v in bundled.items()
                   if k.startswith(prefix)}, encoders / f"{name}.safetensors")

    def mapped(*args, **kwargs):
        raise AssertionError("a weight was read")

    monkeypatch.setattr(loading, "read_safetensors", mapped)
    spec = read_spec(tmp_path / "flux-fp8.safetensors", parts_folders=(encoders,))
    assert spec.family == "flux-dev" and spec.default_size == 1024
    assert [name for name, _ in spec.text_parts] == ["clip_l", "t5xxl"] and dict(spec.part_files).keys() == {"clip_l", "t5xxl", "vae16"}
