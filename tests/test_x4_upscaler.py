"""The SD x4 upscaler as an upscaler (core/upscaling/x4.py): found among the checkpoints of
models/Stable-diffusion and models/LDSR, listed by name beside the resamplers and ESRGAN-style
models, run through the latent-diffusion pipeline (whole or in tiles), on the command line,
in the page's list and through the A1111 API. Tiny random x4 checkpoints (tests/tiny_models.py)."""
from __future__ import annotations

import base64
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import tiny_models
from core.errors import EngineError
from core.upscaling import ModelCache, X4Settings, find_upscaler, list_upscalers, load_upscaler, upscale_image

W, H = 32, 24


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A models folder: the x4 checkpoint as .safetensors in Stable-diffusion/ (beside an SD 2.x
    checkpoint, which is no upscaler), as .ckpt and as a diffusers folder in LDSR/ (beside a file
    that is no checkpoint at all)."""
    made = tmp_path_factory.mktemp("x4-made")
    x4 = tiny_models.save_x4(made / "x4")
    sd2 = tiny_models.save_sd2(made / "sd2")
    root = tmp_path_factory.mktemp("x4-models") / "models"
    (root / "Stable-diffusion").mkdir(parents=True)
    (root / "LDSR").mkdir()
    shutil.copy(x4["safetensors"], root / "Stable-diffusion" / "tiny-x4.safetensors")
    shutil.copy(sd2["safetensors"], root / "Stable-diffusion" / "tiny-sd2.safetensors")
    shutil.copy(x4["ckpt"], root / "LDSR" / "tiny-x4-ckpt.ckpt")
    shutil.copytree(x4["diffusers"], root / "LDSR" / "tiny-x4-folder")
    (root / "LDSR" / "model.ckpt").write_bytes(b"not a checkpoint")
    return root


@pytest.fixture(scope="module")
def upscaler(root):
    return load_upscaler(find_upscaler("tiny-x4", root), "cpu", cache=ModelCache())


def picture(seed: int = 0) -> Image.Image:
    """32x24: smooth gradients and a disc, like a small photo more than like noise."""
    yy, xx = np.mgrid[0:H, 0:W]
    array = np.stack([xx * 8, yy * 10, 128 + 60 * np.sin(xx / 4 + seed)], -1)
    array[(xx - 12) ** 2 + (yy - 10) ** 2 < 30] = [220, 40, 30]
    return Image.fromarray(array.clip(0, 255).astype(np.uint8))


def as_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float64)


def test_x4_checkpoints_are_listed_by_name_and_nothing_else(root):
    found = {u.name: u for u in list_upscalers(root) if u.kind == "x4"}
    assert found.keys() == {"tiny-x4", "tiny-x4-ckpt", "tiny-x4-folder"}
    assert found["tiny-x4"].path == root / "Stable-diffusion" / "tiny-x4.safetensors"
    assert found["tiny-x4-folder"].path == root / "LDSR" / "tiny-x4-folder"
    names = [u.name for u in list_upscalers(root)]
    assert names[:4] == ["None", "Lanczos", "Nearest", "Bicubic"]
    assert "tiny-sd2" not in names and "model" not in names  # an SD checkpoint and a broken file are no upscalers
    # Given by path, an x4 .safetensors file belongs to the x4 kind (not to spandrel).
    assert find_upscaler("Stable-diffusion/tiny-x4.safetensors", root).kind == "x4"
    with pytest.raises(EngineError, match="not an upscaler model spandrel understands"):
        load_upscaler(find_upscaler("Stable-diffusion/tiny-sd2.safetensors", root), "cpu", cache=ModelCache())


def test_upscales_4x_with_the_default_settings(root, upscaler):
    from core.pipelines.x4_upscale import upscale_x4

    assert upscaler.settings == X4Settings(prompt="", noise_level=20, steps=20, cfg_scale=9.0, sampler="DDIM", seed=0)
    image = picture()
    out = upscale_image(image, "tiny-x4", scale=4, models_root=root, tile=0, cache=ModelCache())
    assert out.size == (4 * W, 4 * H) and out.mode == "RGB"
    # Exactly the pipeline with those settings; with no text, guidance is skipped (cfg 1) and
    # gives what cfg 9 gives, up to rounding.
    model, conditioner = upscaler.model, upscaler.conditioner
    same = upscale_x4(model, image, "", 20, 20, cfg_scale=1.0, seed=0, sampler="DDIM", conditioner=conditioner, tile=None)
    assert np.array_equal(as_array(out), as_array(same))
    guided = upscale_x4(model, image, "", 20, 20, cfg_scale=9.0, seed=0, sampler="DDIM", conditioner=conditioner, tile=None)
    assert np.abs(as_array(out) - as_array(guided)).max() <= 1
    assert as_array(out).std() > 10  # a picture, not a flat field
    # Another factor: one 4x pass, then Lanczos to the size asked for.
    half = upscaler.upscale(image, (2 * W, 2 * H), tile=0, overlap=0)
    assert half.size == (2 * W, 2 * H)
    assert np.array_equal(as_array(half), as_array(out.resize((2 * W, 2 * H), Image.LANCZOS)))


def test_tiled_run_is_the_right_size_and_close_to_the_whole(upscaler):
    """16 px tiles with 8 px overlap: 3 x 2 tiles. A tile's UNet and VAE see only the tile (group
    norms, attention), so the result is not the whole-picture one exactly: measured mean absolute
    difference 16.6 of 255 with these random weights, against 72.6 between two seeds. Asserted:
    below 24 of 255 and below a third of the seed-to-seed difference."""
    image = picture()
    whole = as_array(upscaler.upscale(image, (4 * W, 4 * H), tile=0, overlap=0))
    other_seed = as_array(upscaler.upscale(image, (4 * W, 4 * H), tile=0, overlap=0,
                                           settings=upscaler.with_settings(seed=1)))
    seen = []
    tiled_image = upscaler.upscale(image, (4 * W, 4 * H), tile=16, overlap=8, progress=lambda d, t: seen.append((d, t)))
    assert tiled_image.size == (4 * W, 4 * H)
    assert seen[-1] == (6 * 20, 6 * 20) and len(seen) == 6 * 20  # six tiles of 20 steps
    tiled = as_array(tiled_image)
    error, spread = np.abs(tiled - whole).mean(), np.abs(other_seed - whole).mean()
    assert 0 < error < 24
    assert error < spread / 3
    # A tile as large as the picture is the whole run, bit for bit.
    assert np.array_equal(as_array(upscaler.upscale(image, (4 * W, 4 * H), tile=64, overlap=8)), whole)


def test_settings_are_checked(upscaler):
    with pytest.raises(EngineError, match="noise level must be between 0 and 350"):
        upscaler.with_settings(noise_level=351)
    with pytest.raises(EngineError, match="steps"):
        upscaler.upscale(picture(), (4 * W, 4 * H), tile=0, overlap=0, settings=X4Settings(steps=0))
    assert X4Settings(prompt="a cat").guidance == 9.0 and X4Settings().guidance == 1.0


def test_other_layouts_load(root):
    for name in ("tiny-x4-ckpt", "tiny-x4-folder"):
        loaded = load_upscaler(find_upscaler(name, root), "cpu", cache=ModelCache())
        assert loaded.model.spec.is_upscaler and loaded.dtype == torch.float32
        out = loaded.upscale(picture(), (4 * W, 4 * H), tile=0, overlap=0, settings=loaded.with_settings(steps=2))
        assert out.size == (4 * W, 4 * H)


def test_command_line_takes_the_x4_settings(root, upscaler, tmp_path, capsys):
    from core.__main__ import main
    from core.images import read_infotext

    source = tmp_path / "in.png"
    picture().save(source)
    out = tmp_path / "out"
    common = ["upscale", "--image", str(source), "--upscaler", "tiny-x4", "--scale", "4", "--out", str(out),
              "--models-dir", str(root), "--device", "cpu"]
    assert main([*common, "--noise-level", "40", "--steps", "3", "--prompt", "a red disc", "--seed", "5"]) == 0
    (written,) = out.iterdir()
    expected = upscaler.upscale(picture(), (4 * W, 4 * H), tile=256, overlap=32, settings=upscaler.with_settings(
        noise_level=40, steps=3, prompt="a red disc", seed=5))
    with Image.open(written) as saved:
        assert np.array_equal(as_array(saved), as_array(expected))
    assert read_infotext(written) == "Postprocess upscale by: 4, Postprocess upscaler: tiny-x4"
    capsys.readouterr()
    assert main(["upscale", "--image", str(source), "--upscaler", "Lanczos", "--out", str(out), "--models-dir", str(root),
                 "--noise-level", "40"]) == 2
    assert "--noise-level: only for the x4 upscaler, not Lanczos" in capsys.readouterr().err


def test_page_and_api_list_it_and_the_api_upscales_through_it(root, upscaler, tmp_path):
    from test_api import LiveServer

    from app.server import create_app
    from app.settings import Settings
    from app.page.studio import StudioUI
    from app.styles import StyleDatabase
    from core.engine import Engine

    (tmp_path / "no-extensions").mkdir()
    engine = Engine(device="cpu", ckpt_dir=root / "Stable-diffusion", output_dir=tmp_path / "outputs",
                    hash_cache=tmp_path / "hashes.json", models_dir=root, extensions_dir=tmp_path / "no-extensions")
    ui = StudioUI(engine, settings=Settings(tmp_path / "config.json"), styles=StyleDatabase(tmp_path / "styles.csv"))
    assert {"tiny-x4", "tiny-x4-ckpt", "tiny-x4-folder"} <= set(ui.models.upscalers())

    with LiveServer(create_app(engine, api=True, ui=False, options_path=tmp_path / "api.json")) as server:
        listed = {u["name"]: u for u in server.get("/sdapi/v1/upscalers").json()}
        assert listed["tiny-x4"]["model_name"] == "x4" and listed["tiny-x4"]["scale"] == 4
        assert listed["tiny-x4"]["model_path"].endswith("tiny-x4.safetensors")
        buffer = io.BytesIO()
        picture().save(buffer, format="PNG")
        body = {"image": base64.b64encode(buffer.getvalue()).decode(), "upscaler_1": "tiny-x4", "upscaling_resize": 4}
        answer = server.post("/sdapi/v1/extra-single-image", body)
        assert answer.status_code == 200, answer.text
        result = Image.open(io.BytesIO(base64.b64decode(answer.json()["image"])))
        assert result.size == (4 * W, 4 * H)
        # The API's default tile (256) holds the whole 32x24 picture: the untiled result.
        assert np.array_equal(as_array(result), as_array(upscaler.upscale(picture(), (4 * W, 4 * H), tile=0, overlap=0)))
        assert "Postprocess upscaler: tiny-x4" in answer.json()["html_info"]


def test_the_engine_lists_x4_checkpoints_as_upscalers_not_as_checkpoints(root, tmp_path):
    from core.demo import is_demo
    from core.engine import Engine

    engine = Engine(device="cpu", ckpt_dir=root / "Stable-diffusion", models_dir=root, output_dir=tmp_path / "out",
                    hash_cache=tmp_path / "h.json")
    assert [n for n in engine.list_checkpoints() if not is_demo(n)] == ["tiny-sd2.safetensors"]
