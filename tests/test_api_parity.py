"""A1111 parity of the API beyond its own tests (issue #17): seamless tiling by request, form and
infotext; GET /realesrgan-models, /extensions, POST /refresh-embeddings; 501 for what this server
cannot do; whole-picture inpainting answering at width x height; hires and extras upscalers
named as GET /upscalers lists them (A1111's names for its downloads, stems, other model files);
the send_seed setting."""
from __future__ import annotations

import base64
import io
import json
import shutil

import pytest
import torch
from PIL import Image, ImageDraw

from core.infotext import parse_infotext

pytestmark = pytest.mark.usefixtures("one_thread")

UPSCALER_FILES = ("RealESRGAN/RealESRGAN_x2plus.safetensors", "ESRGAN/compact-x2.safetensors")


@pytest.fixture(scope="module")
def models(tiny_checkpoints, tmp_path_factory):
    from safetensors.torch import save_file

    from test_api import CompactSR

    root = tmp_path_factory.mktemp("parity") / "models"
    (root / "Stable-diffusion").mkdir(parents=True)
    shutil.copy(tiny_checkpoints["safetensors"], root / "Stable-diffusion" / "tiny.safetensors")
    (root / "embeddings").mkdir()
    torch.manual_seed(0)
    weights = {k: v.contiguous() * 0.3 for k, v in CompactSR().state_dict().items()}
    for name in UPSCALER_FILES:  # the first under the file name A1111 downloads "R-ESRGAN 2x+" to
        (root / name).parent.mkdir(exist_ok=True)
        save_file(weights, str(root / name))
    return root


@pytest.fixture(scope="module")
def engine(models):
    from core.engine import Engine

    out = models.parent / "outputs"
    (out / "no-extensions").mkdir(parents=True)
    return Engine(device="cpu", ckpt_dir=models / "Stable-diffusion", output_dir=out / "images",
                  hash_cache=out / "hashes.json", models_dir=models, extensions_dir=out / "no-extensions")


@pytest.fixture(scope="module")
def client(engine, models):
    from fastapi.testclient import TestClient

    from app.server import create_app

    app = create_app(engine, api=True, ui=False, options_path=models.parent / "config.json")
    with TestClient(app, base_url="http://127.0.0.1") as test_client:
        yield test_client


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def unb64(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text)))


def tiny(**extra) -> dict:
    return {"prompt": "a red circle", "steps": 2, "width": 64, "height": 64, "seed": 3, "sampler_name": "Euler", **extra}


def answer(response) -> tuple[Image.Image, dict]:
    """A generation's first picture and its infotext's fields."""
    assert response.status_code == 200, response.text
    body = response.json()
    return unb64(body["images"][0]), parse_infotext(json.loads(body["info"])["infotexts"][0])


# ------------------------------------------------------------------ tiling


def test_tiling_by_request_is_recorded_and_read_back(client):
    image, fields = answer(client.post("/sdapi/v1/txt2img", json=tiny(tiling=True)))
    assert image.size == (64, 64) and fields["Tiling"] == "True"
    _, plain = answer(client.post("/sdapi/v1/txt2img", json=tiny(tiling=False)))
    assert "Tiling" not in plain
    # An infotext with Tiling: True makes a tiled job again.
    infotext = "a red circle\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 3, Size: 64x64, Tiling: True"
    _, again = answer(client.post("/sdapi/v1/txt2img", json={"infotext": infotext}))
    assert again["Tiling"] == "True"


def test_tiling_on_the_page_forms():
    from app.forms import FORM_DEFAULTS, FORM_FIELDS, complete_form, params_from_form, tab_fields, values_from_infotext

    assert all("tiling" in FORM_FIELDS[tab] for tab in ("txt2img", "img2img", "inpaint"))
    assert FORM_DEFAULTS["tiling"] is False

    def no_styles(styles, prompt, negative):
        return prompt, negative

    assert params_from_form("txt2img", complete_form("txt2img", {"tiling": True}), no_styles).tiling is True
    assert params_from_form("img2img", complete_form("img2img", {}), no_styles).tiling is False
    values, _ = values_from_infotext("x\nSteps: 2, Sampler: Euler, Seed: 1, Tiling: True")
    assert tab_fields("img2img", values, {})[0]["tiling"] is True


def test_the_command_line_takes_tiling():
    from core.__main__ import build_parser, params_from_args

    args = build_parser().parse_args(["txt2img", "--model", "m.safetensors", "--tiling", "--width", "64",
                                      "--height", "64"])
    assert params_from_args(args).tiling is True


# ------------------------------------------------------------------ routes


def test_realesrgan_models_lists_the_files_present_under_a1111s_names(client, models):
    listed = client.get("/sdapi/v1/realesrgan-models").json()
    assert listed == [{"name": "R-ESRGAN 2x+", "path": str(models / UPSCALER_FILES[0]), "scale": 2}]
    names = [u["name"] for u in client.get("/sdapi/v1/upscalers").json()]
    assert "R-ESRGAN 2x+" in names and "compact-x2" in names


def test_extensions_in_a1111s_shape(engine, client):
    engine.extensions.add("sketchbook", lambda api: None)
    try:
        listed = client.get("/sdapi/v1/extensions").json()
    finally:
        engine.extensions.extensions.pop("sketchbook")
    assert {"name": "sketchbook", "remote": "", "branch": "", "commit_hash": "", "version": "", "commit_date": "",
            "enabled": True} in listed


def test_refresh_embeddings_reads_the_folder_again(client, models):
    answer(client.post("/sdapi/v1/txt2img", json=tiny()))  # a loaded checkpoint, with its embeddings read
    assert "glossy" not in client.get("/sdapi/v1/embeddings").json()["loaded"]
    torch.save({"string_to_param": {"*": torch.randn(2, 64)}}, models / "embeddings" / "glossy.pt")
    try:
        assert "glossy" not in client.get("/sdapi/v1/embeddings").json()["loaded"]  # read at load time
        assert client.post("/sdapi/v1/refresh-embeddings").status_code == 200
        assert client.get("/sdapi/v1/embeddings").json()["loaded"]["glossy"] == {
            "step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": 64, "vectors": 2}
    finally:
        (models / "embeddings" / "glossy.pt").unlink()
        client.post("/sdapi/v1/refresh-embeddings")


@pytest.mark.parametrize("path, words", [
    ("interrogate", "captioning model"), ("create/embedding", "textual-inversion"),
    ("create/hypernetwork", "hypernetworks"), ("train/embedding", "textual-inversion"),
    ("train/hypernetwork", "hypernetworks"),
])
def test_what_this_server_cannot_do_answers_501_naming_it(client, path, words):
    response = client.post(f"/sdapi/v1/{path}", json={"image": "", "model": "clip"})
    assert response.status_code == 501
    assert response.json()["errors"].startswith(f"{path}: ") and words in response.json()["errors"]
    spec = client.get("/openapi.json").json()
    assert "501" in spec["paths"][f"/sdapi/v1/{path}"]["post"]["responses"]


# ------------------------------------------------------------------ whole-picture inpainting


def big_picture() -> tuple[Image.Image, Image.Image]:
    image = Image.new("RGB", (512, 384), (40, 90, 160))
    ImageDraw.Draw(image).ellipse((96, 96, 320, 320), fill=(230, 200, 40))
    mask = Image.new("L", (512, 384), 0)
    ImageDraw.Draw(mask).rectangle((128, 128, 384, 300), fill=255)
    return image, mask


@pytest.mark.parametrize("resize_mode", [0, 1, 2])
@pytest.mark.parametrize("with_mask", [True, False])
def test_the_answer_has_the_size_the_infotext_says(client, resize_mode, with_mask):
    image, mask = big_picture()
    body = tiny(init_images=[b64(image)], resize_mode=resize_mode, inpaint_full_res=False, denoising_strength=0.5)
    if with_mask:
        body["mask"] = b64(mask)
    result, fields = answer(client.post("/sdapi/v1/img2img", json=body))
    assert result.size == (64, 64) == (int(fields["Size-1"]), int(fields["Size-2"]))


def test_only_masked_inpainting_answers_at_the_pictures_size(client):
    image, mask = big_picture()  # as A1111: the work area is pasted back into the whole picture
    body = tiny(init_images=[b64(image)], mask=b64(mask), inpaint_full_res=True, inpaint_full_res_padding=8)
    result, _ = answer(client.post("/sdapi/v1/img2img", json=body))
    assert result.size == (512, 384)


# ------------------------------------------------------------------ upscaler names


@pytest.mark.parametrize("name", ["R-ESRGAN 2x+", "RealESRGAN_x2plus", "compact-x2", "Lanczos"])
def test_hires_takes_the_upscalers_listed(client, name):
    result, fields = answer(client.post("/sdapi/v1/txt2img", json=tiny(enable_hr=True, hr_upscaler=name, hr_scale=2,
                                                                      denoising_strength=0.3)))
    assert result.size == (128, 128)
    assert fields["Hires upscaler"] == name


def test_an_unknown_upscaler_is_refused_naming_the_known_ones(client):
    response = client.post("/sdapi/v1/txt2img", json=tiny(enable_hr=True, hr_upscaler="R-ESRGAN 4x+"))
    assert response.status_code == 422
    message = response.json()["errors"]
    assert message.startswith("hr_upscaler: unknown upscaler 'R-ESRGAN 4x+'")
    assert all(name in message for name in ("R-ESRGAN 2x+", "compact-x2", "Lanczos", "Latent (bicubic)"))
    extras = client.post("/sdapi/v1/extra-single-image", json={"image": b64(big_picture()[0]), "upscaler_1": "4x-Gone"})
    assert extras.status_code == 422
    assert extras.json()["errors"].startswith("upscaler_1: unknown upscaler '4x-Gone'")
    assert "R-ESRGAN 2x+" in extras.json()["errors"]


def test_extras_takes_a1111s_name_for_a_downloaded_file(client):
    picture = big_picture()[0].resize((32, 24))
    response = client.post("/sdapi/v1/extra-single-image",
                           json={"image": b64(picture), "upscaler_1": "R-ESRGAN 2x+", "upscaling_resize": 2})
    assert response.status_code == 200, response.text
    assert unb64(response.json()["image"]).size == (64, 48)


# ------------------------------------------------------------------ send_seed


def test_send_seed_off_keeps_the_target_tabs_seed(tmp_path):
    import gradio as gr

    from app.page.generation import text_fields
    from app.page.studio import StudioUI
    from app.settings import Settings
    from app.styles import StyleDatabase
    from fake_engine import FakeEngine

    settings = Settings(tmp_path / "config.json")
    ui = StudioUI(FakeEngine(tmp_path), settings=settings, styles=StyleDatabase(tmp_path / "styles.csv"))
    text = "a cat\nSteps: 5, Sampler: Euler, CFG scale: 7, Seed: 1234, Size: 64x64, Variation seed: 99, " \
           "Variation seed strength: 0.5"
    names = text_fields("txt2img")

    def sent(name: str):
        updates = ui.generation.send_to("txt2img", None, text, names)[1:]  # after the tab selection
        return updates[names.index(name)]

    assert sent("seed") == 1234 and sent("subseed") == 99 and sent("steps") == 5
    settings.update({"send_seed": False})
    assert isinstance(sent("seed"), type(gr.skip())) and isinstance(sent("subseed"), type(gr.skip()))
    assert sent("steps") == 5


def test_the_pages_tiling_checkbox_reaches_the_job(tmp_path):
    import gradio as gr

    from app.page.build import build_ui
    from app.page.studio import StudioUI
    from app.settings import Settings
    from app.styles import StyleDatabase
    from fake_engine import FakeEngine

    engine = FakeEngine(tmp_path)
    page = build_ui(engine, settings=Settings(tmp_path / "page.json"), styles=StyleDatabase(tmp_path / "s.csv"))
    boxes = {b.elem_id: b.label for b in page.blocks.values() if isinstance(b, gr.Checkbox)}
    assert all(boxes.get(f"{tab}_tiling") == "Tiling" for tab in ("txt2img", "img2img", "inpaint"))
    ui = StudioUI(engine, settings=Settings(tmp_path / "config.json"), styles=StyleDatabase(tmp_path / "styles.csv"))
    list(ui.generation.stream("txt2img", dict(prompt="a pattern", steps=1, width=64, height=64, tiling=True)))
    list(ui.generation.stream("txt2img", dict(prompt="a pattern", steps=1, width=64, height=64)))
    assert [call.params.tiling for call in engine.calls] == [True, False]


def test_the_page_reads_an_upscalers_file_name_as_its_listed_name(tmp_path, models):
    from app.page.studio import StudioUI
    from app.settings import Settings
    from app.styles import StyleDatabase
    from fake_engine import FakeEngine

    engine = FakeEngine(tmp_path)
    (engine.models_dir / "RealESRGAN").mkdir(parents=True)
    shutil.copy(models / UPSCALER_FILES[0], engine.models_dir / UPSCALER_FILES[0])
    ui = StudioUI(engine, settings=Settings(tmp_path / "config.json"), styles=StyleDatabase(tmp_path / "styles.csv"))
    base = "a cat\nSteps: 5, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64, Hires upscale: 2, Hires upscaler: "
    for written in ("RealESRGAN_x2plus", "R-ESRGAN 2x+"):  # an older infotext of this studio, and A1111's
        fields, notes = ui.generation.fields_from_infotext(base + written, "txt2img")
        assert fields["hr_upscaler"] == "R-ESRGAN 2x+" and notes == []
    fields, notes = ui.generation.fields_from_infotext(base + '"R-ESRGAN 4x+"', "txt2img")
    assert "hr_upscaler" not in fields and notes == ["Hires upscaler: 'R-ESRGAN 4x+' is not available"]
