"""The A1111-compatible REST API (the app/api/ package) and the server around it (app/server.py).

Real servers (uvicorn in a thread, on 127.0.0.1 only) over tiny generated checkpoints, driven
by the ``webuiapi`` client that talks to AUTOMATIC1111, by plain HTTP for bad input, and by
schemathesis against /openapi.json. Sizes stay at 64x64 and a few steps.
"""
from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
import torch.nn as nn
from PIL import Image, ImageDraw
from PIL.PngImagePlugin import PngInfo

ROOT = Path(__file__).resolve().parents[1]

webuiapi = pytest.importorskip("webuiapi")

from app.api.limits import ApiLimits  # noqa: E402
from app.server import create_app  # noqa: E402

LIMITS = ApiLimits(max_steps=400, max_size=256, max_images=8, max_upscale_pixels=512 * 512,
                   max_input_pixels=1024 * 1024)


# ---------------------------------------------------------------- fixtures


class LiveServer:
    """uvicorn serving ``app`` in a thread on a loopback port chosen by the system."""

    def __init__(self, app):
        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()

    def client(self, **kwargs) -> "webuiapi.WebUIApi":
        return webuiapi.WebUIApi(host="127.0.0.1", port=self.port, sampler="Euler", steps=2, **kwargs)

    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(self.url + path, timeout=60, **kwargs)

    def post(self, path: str, body=None, **kwargs) -> requests.Response:
        if body is not None:
            kwargs["json"] = body
        return requests.post(self.url + path, timeout=120, **kwargs)


class CompactSR(nn.Module):
    """Real-ESRGAN's small "compact" upscaler layout (convs, PReLU, pixel shuffle), x2."""

    def __init__(self, features: int = 8, scale: int = 2):
        super().__init__()
        self.body = nn.ModuleList([nn.Conv2d(3, features, 3, 1, 1), nn.PReLU(features),
                                   nn.Conv2d(features, features, 3, 1, 1), nn.PReLU(features),
                                   nn.Conv2d(features, 3 * scale * scale, 3, 1, 1)])


@pytest.fixture(scope="module")
def models_dir(tiny_checkpoints, tiny_inpaint_checkpoint, tmp_path_factory) -> Path:
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("api-models") / "models"
    ckpts = root / "Stable-diffusion"
    ckpts.mkdir(parents=True)
    shutil.copy(tiny_checkpoints["safetensors"], ckpts / "tiny.safetensors")
    shutil.copy(tiny_inpaint_checkpoint, ckpts / "tiny-inpainting.safetensors")
    (root / "Lora").mkdir()
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, str(root / "Lora" / "grain.safetensors"),
              metadata={"ss_output_name": "film grain", "ss_network_dim": "2"})
    (root / "VAE").mkdir()
    save_file({"decoder.conv_in.weight": torch.zeros(1)}, str(root / "VAE" / "vae-ft.safetensors"))
    (root / "embeddings").mkdir()
    torch.save({"string_to_param": {"*": torch.randn(2, 64)}}, root / "embeddings" / "shiny.pt")
    torch.save({"string_to_param": {"*": torch.randn(1, 768)}}, root / "embeddings" / "too-wide.pt")
    torch.manual_seed(0)
    net = CompactSR()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(0.3)
    (root / "RealESRGAN").mkdir()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(root / "RealESRGAN" / "compact-x2.safetensors"))
    return root


@pytest.fixture(scope="module")
def engine(models_dir, tmp_path_factory):
    from core.engine import Engine

    out = tmp_path_factory.mktemp("api-outputs")
    (out / "no-extensions").mkdir()
    return Engine(device="cpu", ckpt_dir=models_dir / "Stable-diffusion", output_dir=out / "images",
                  hash_cache=out / "hashes.json", models_dir=models_dir, extensions_dir=out / "no-extensions")


@pytest.fixture
def serve(engine, tmp_path):
    """serve(**create_app kwargs) -> a started LiveServer (stopped after the test)."""
    with contextlib.ExitStack() as stack:
        def start(**kwargs) -> LiveServer:
            kwargs.setdefault("ui", False)
            kwargs.setdefault("limits", LIMITS)
            kwargs.setdefault("options_path", tmp_path / "config.json")
            return stack.enter_context(LiveServer(create_app(engine, **kwargs)))

        yield start


@pytest.fixture(scope="module")
def shared(engine, tmp_path_factory):
    """One server for the tests that do not change settings."""
    options = tmp_path_factory.mktemp("api-shared") / "config.json"
    with LiveServer(create_app(engine, api=True, ui=False, limits=LIMITS, options_path=options)) as server:
        yield server


def picture(width: int = 64, height: int = 64, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (width, height), tuple(int(c) for c in rng.integers(0, 255, 3)))
    draw = ImageDraw.Draw(image)
    draw.ellipse((8, 10, 40, 44), fill=(220, 40, 30))
    draw.rectangle((44, 4, 60, 24), fill=(250, 250, 40))
    return image


def b64(image: Image.Image, fmt: str = "PNG", pnginfo: PngInfo | None = None) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, pnginfo=pnginfo)
    return base64.b64encode(buffer.getvalue()).decode()


def unb64(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text)))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def tiny(**extra) -> dict:
    return {"prompt": "a red circle", "steps": 2, "width": 64, "height": 64, "seed": 1, "sampler_name": "Euler",
            **extra}


# ---------------------------------------------------------------- generation


def test_txt2img_with_webuiapi(shared, engine):
    api = shared.client()
    result = api.txt2img(prompt="a red cube", negative_prompt="blur", seed=11, width=64, height=64, steps=2,
                         cfg_scale=5, batch_size=2)
    assert [im.size for im in result.images] == [(64, 64), (64, 64)]
    assert result.info["all_seeds"] == [11, 12] and result.info["seed"] == 11
    assert result.info["sd_model_name"] in ("tiny", "tiny-inpainting")
    assert result.info["sampler_name"] == "Euler" and result.info["steps"] == 2
    assert result.parameters["prompt"] == "a red cube" and result.parameters["negative_prompt"] == "blur"
    infotext = result.images[0].info["parameters"]
    assert infotext == result.info["infotexts"][0]
    assert infotext.startswith("a red cube\nNegative prompt: blur\nSteps: 2, Sampler: Euler, CFG scale: 5, Seed: 11")

    again = api.txt2img(prompt="a red cube", negative_prompt="blur", seed=11, width=64, height=64, steps=2,
                        cfg_scale=5, batch_size=2)
    assert all(np.array_equal(pixels(a), pixels(b)) for a, b in zip(result.images, again.images))


def test_txt2img_save_send_and_sampler_names(shared, engine):
    saved_before = set((engine.output_dir).rglob("*.png"))
    response = shared.post("/sdapi/v1/txt2img", tiny(send_images=False, save_images=True, seed=21))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["images"] == []
    new = set(engine.output_dir.rglob("*.png")) - saved_before
    assert len(new) == 1 and "txt2img" in str(next(iter(new)))
    assert Image.open(next(iter(new))).info["parameters"] == json.loads(body["info"])["infotexts"][0]
    # not saved by default (A1111's save_images=false)
    assert shared.post("/sdapi/v1/txt2img", tiny(seed=22)).status_code == 200
    assert set(engine.output_dir.rglob("*.png")) - saved_before == new

    # An old combined name becomes sampler + schedule type; sampler_index is used without sampler_name.
    old = shared.post("/sdapi/v1/txt2img", tiny(sampler_name="DPM++ 2M Karras")).json()
    info = json.loads(old["info"])
    assert (info["sampler_name"], info["scheduler"]) == ("DPM++ 2M", "Karras")
    assert "Sampler: DPM++ 2M, Schedule type: Karras" in info["infotexts"][0]
    by_index = shared.post("/sdapi/v1/txt2img", {**tiny(), "sampler_name": None, "sampler_index": "k_euler_a"})
    assert json.loads(by_index.json()["info"])["sampler_name"] == "Euler a"


def test_infotext_field_fills_unset_fields(shared):
    body = shared.post("/sdapi/v1/txt2img", {"infotext": "a blue square\nNegative prompt: dark\n"
                                                         "Steps: 3, Sampler: Heun, CFG scale: 4, Seed: 99, "
                                                         "Size: 64x64, Clip skip: 2",
                                             "steps": 2}).json()
    info = json.loads(body["info"])
    assert (info["prompt"], info["negative_prompt"], info["sampler_name"], info["seed"]) == \
        ("a blue square", "dark", "Heun", 99)
    assert info["steps"] == 2 and info["cfg_scale"] == 4 and info["clip_skip"] == 2


def test_img2img_and_inpainting(shared):
    api = shared.client()
    source = picture()
    result = api.img2img(images=[source], denoising_strength=0.6, seed=3, steps=4, width=64, height=64,
                         inpaint_full_res=False)
    assert result.images[0].size == (64, 64)
    assert "Denoising strength: 0.6" in result.info["infotexts"][0]
    assert result.parameters["init_images"] is None  # not echoed back unless include_init_images

    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((16, 16, 47, 47), fill=255)
    inpainted = api.img2img(images=[source], mask_image=mask, mask_blur=0, inpainting_fill=1, inpaint_full_res=False,
                            denoising_strength=1.0, seed=4, steps=4, width=64, height=64)
    out, src = pixels(inpainted.images[0]), pixels(source)
    outside = np.ones((64, 64), bool)
    outside[16:48, 16:48] = False
    assert np.array_equal(out[outside], src[outside])  # untouched outside the mask, bit for bit
    assert not np.array_equal(out[~outside], src[~outside])
    infotext = inpainted.info["infotexts"][0]
    assert "Mask blur: 0" in infotext and "Masked content: original" in infotext

    # "only masked" with padding, and a 9-channel inpainting checkpoint for this request only
    only_masked = shared.post("/sdapi/v1/img2img", {
        **tiny(seed=5), "init_images": [b64(source)], "mask": b64(mask), "inpaint_full_res": True,
        "inpaint_full_res_padding": 8, "override_settings": {"sd_model_checkpoint": "tiny-inpainting"}})
    assert only_masked.status_code == 200, only_masked.text
    info = json.loads(only_masked.json()["info"])
    assert info["sd_model_name"] == "tiny-inpainting" and info["is_using_inpainting_conditioning"] is True
    assert "Inpaint area: Only masked" in info["infotexts"][0]


def test_upscaling(shared):
    api = shared.client()
    source = picture()
    lanczos = api.extra_single_image(image=source, upscaler_1="Lanczos", upscaling_resize=2)
    assert lanczos.image.size == (128, 128)
    assert "Postprocess upscale by: 2, Postprocess upscaler: Lanczos" in lanczos.info
    model = api.extra_single_image(image=source, upscaler_1="compact-x2", upscaling_resize=2)
    assert model.image.size == (128, 128)
    assert not np.array_equal(pixels(model.image), pixels(lanczos.image))
    cropped = api.extra_single_image(image=source, upscaler_1="Nearest", resize_mode=1, upscaling_resize_w=100,
                                     upscaling_resize_h=40, upscaling_crop=True)
    assert cropped.image.size == (100, 40)
    blended = api.extra_single_image(image=source, upscaler_1="Lanczos", upscaler_2="Nearest",
                                     extras_upscaler_2_visibility=0.5, upscaling_resize=2)
    assert blended.image.size == (128, 128)

    batch = api.extra_batch_images(images=[source, picture(32, 48, seed=1)], upscaler_1="Nearest", upscaling_resize=2)
    assert [im.size for im in batch.images] == [(128, 128), (64, 96)]
    # Nearest x2 repeats every pixel twice in both directions
    assert np.array_equal(pixels(batch.images[0])[::2, ::2], pixels(source))


def test_png_info(shared):
    api = shared.client()
    made = api.txt2img(prompt="a tree", seed=7, width=64, height=64, steps=2)
    info = api.png_info(made.images[0])
    assert info.info == made.info["infotexts"][0]
    assert info.parameters["Prompt"] == "a tree" and info.parameters["Seed"] == "7"
    assert info.parameters["Size-1"] == "64"

    extra = PngInfo()
    extra.add_text("Software", "paint")
    plain = shared.post("/sdapi/v1/png-info", {"image": "data:image/png;base64," + b64(picture(), pnginfo=extra)}).json()
    assert plain == {"info": "", "items": {"Software": "paint"}, "parameters": {}}
    jpeg = shared.post("/sdapi/v1/png-info", {"image": b64(picture(), "JPEG")})
    assert jpeg.status_code == 200 and jpeg.json()["info"] == ""


# ---------------------------------------------------------------- settings and models


def test_options_are_saved_atomically_and_survive_a_restart(engine, serve, tmp_path):
    config = tmp_path / "settings" / "config.json"
    config.parent.mkdir()
    config.write_text(json.dumps({"outdir": "kept by the page"}))  # another component's key
    first = serve(options_path=config)
    api = first.client()
    assert api.get_options()["CLIP_stop_at_last_layers"] == 1
    assert api.set_options({"CLIP_stop_at_last_layers": 2, "enable_pnginfo": False}) is None
    assert api.get_options()["CLIP_stop_at_last_layers"] == 2
    assert json.loads(config.read_text()) == {"outdir": "kept by the page", "CLIP_stop_at_last_layers": 2,
                                              "enable_pnginfo": False}
    assert [p.name for p in config.parent.iterdir()] == ["config.json"]  # no temporary file left

    made = api.txt2img(prompt="x", seed=1, width=64, height=64, steps=2)
    assert "parameters" not in made.images[0].info  # enable_pnginfo off
    assert "Clip skip: 2" in made.info["infotexts"][0]

    bad = first.post("/sdapi/v1/options", {"CLIP_stop_at_last_layers": 3, "emphasis": "Loud"})
    assert bad.status_code == 422 and "emphasis" in bad.json()["detail"]
    assert json.loads(config.read_text())["CLIP_stop_at_last_layers"] == 2  # nothing of a bad request is kept

    # override_settings apply to one request; with restore_afterwards=false they are kept
    once = first.post("/sdapi/v1/txt2img", tiny(override_settings={"CLIP_stop_at_last_layers": 3})).json()
    assert json.loads(once["info"])["clip_skip"] == 3 and api.get_options()["CLIP_stop_at_last_layers"] == 2
    kept = first.post("/sdapi/v1/txt2img", tiny(override_settings={"CLIP_stop_at_last_layers": 1},
                                                override_settings_restore_afterwards=False))
    assert kept.status_code == 200 and api.get_options()["CLIP_stop_at_last_layers"] == 1

    first.__exit__(None, None, None)
    second = serve(options_path=config)
    options = second.client().get_options()
    assert (options["CLIP_stop_at_last_layers"], options["enable_pnginfo"]) == (1, False)


def test_model_list_and_switching(engine, serve):
    server = serve()
    api = server.client()
    models = api.get_sd_models()
    from core.demo import DEMO_CHECKPOINT

    bundled = ["demo-shapes"] if DEMO_CHECKPOINT.is_file() else []  # the demo is always listed
    assert sorted(m["model_name"] for m in models) == sorted(["tiny", "tiny-inpainting", *bundled])
    assert all(Path(m["filename"]).is_file() for m in models)

    api.set_options({"sd_model_checkpoint": "tiny-inpainting.safetensors"})
    assert engine.loaded.name == "tiny-inpainting"  # loaded when set, as A1111 does
    assert api.util_get_current_model().startswith("tiny-inpainting.safetensors")
    assert api.txt2img(prompt="x", seed=1, width=64, height=64, steps=2).info["sd_model_name"] == "tiny-inpainting"
    # titles carry the short hash once the engine has hashed the file; the title is accepted back
    title = next(m["title"] for m in api.get_sd_models() if m["model_name"] == "tiny-inpainting")
    assert title.startswith("tiny-inpainting.safetensors [") and title.endswith("]")

    once = api.txt2img(prompt="x", seed=1, width=64, height=64, steps=2,
                       override_settings={"sd_model_checkpoint": "tiny"})
    assert once.info["sd_model_name"] == "tiny"
    assert api.txt2img(prompt="x", seed=1, width=64, height=64, steps=2).info["sd_model_name"] == "tiny-inpainting"

    api.util_set_model(next(m["title"] for m in api.get_sd_models() if m["model_name"] == "tiny"), find_closest=False)
    assert api.get_options()["sd_model_checkpoint"].startswith("tiny.safetensors")
    assert api.txt2img(prompt="x", seed=1, width=64, height=64, steps=2).info["sd_model_name"] == "tiny"

    assert server.post("/sdapi/v1/unload-checkpoint").json() == {}
    assert engine.loaded is None
    assert server.post("/sdapi/v1/reload-checkpoint").json() == {}
    assert engine.loaded.name == "tiny"
    assert server.post("/sdapi/v1/refresh-checkpoints").status_code == 200


def test_lists(shared, engine, serve):
    from core.sampling.samplers import SAMPLERS

    api = shared.client()
    assert [s["name"] for s in api.get_samplers()] == list(SAMPLERS)
    assert next(s for s in api.get_samplers() if s["name"] == "DPM++ 2M")["options"]["scheduler"] == "karras"
    schedulers = api.get_schedulers()
    assert schedulers[0]["name"] == "automatic" and {"karras", "exponential", "sgm_uniform"} <= {s["name"] for s in schedulers}
    upscalers = {u["name"]: u for u in api.get_upscalers()}
    assert list(upscalers)[:4] == ["None", "Lanczos", "Nearest", "Bicubic"]
    assert upscalers["compact-x2"]["model_path"].endswith("compact-x2.safetensors") and upscalers["compact-x2"]["scale"] == 2
    assert [m["name"] for m in api.get_latent_upscale_modes()][0] == "Latent"
    assert [v["model_name"] for v in api.get_sd_vae()] == ["vae-ft.safetensors"]
    (lora,) = api.get_loras()
    assert (lora["name"], lora["alias"], lora["metadata"]["ss_network_dim"]) == ("grain", "film grain", "2")
    assert shared.post("/sdapi/v1/refresh-loras").status_code == 200
    assert shared.post("/sdapi/v1/refresh-vae").status_code == 200

    shared.post("/sdapi/v1/txt2img", tiny())  # a model is loaded: its embeddings are known
    embeddings = api.get_embeddings()
    assert embeddings["loaded"]["shiny"]["vectors"] == 2 and embeddings["loaded"]["shiny"]["shape"] == 64
    assert embeddings["skipped"]["too-wide"]["shape"] == 768
    memory = api.get_memory()
    assert memory["ram"]["total"] > 0 and "cuda" in memory
    assert shared.get("/sdapi/v1/scripts").json() == {
        "txt2img": ["prompt matrix", "prompts from file or textbox", "x/y/z plot"],
        "img2img": ["prompt matrix", "prompts from file or textbox", "sd upscale", "x/y/z plot"]}

    flagged = serve(cmd_flags={"port": 7860, "ckpt_dir": Path("/x"), "api_auth": "me:secret"})
    flags = flagged.get("/sdapi/v1/cmd-flags").json()
    assert flags == {"port": 7860, "ckpt_dir": "/x", "api_auth": "<hidden>"}


# ---------------------------------------------------------------- progress, interrupt, skip


def _wait_for(server: LiveServer, condition, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        progress = server.get("/sdapi/v1/progress").json()
        if condition(progress):
            return progress
        time.sleep(0.03)
    raise AssertionError("timed out waiting for progress")


def _in_thread(fn):
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("result", fn()), daemon=True)
    thread.start()
    return thread, box


def test_progress_polling_and_interrupt(shared):
    assert shared.get("/sdapi/v1/progress").json()["state"]["job_count"] == 0
    thread, box = _in_thread(lambda: shared.post("/sdapi/v1/txt2img", tiny(steps=400, seed=5)))
    seen = []
    first = _wait_for(shared, lambda p: p["state"]["sampling_step"] >= 1)
    for _ in range(5):
        seen.append(shared.get("/sdapi/v1/progress").json())
        time.sleep(0.05)
    assert first["state"]["job"] == "txt2img" and first["state"]["sampling_steps"] == 400
    assert 0 < first["progress"] < 1 and first["eta_relative"] > 0
    steps = [p["state"]["sampling_step"] for p in [first, *seen]]
    assert steps == sorted(steps)
    preview = unb64(seen[-1]["current_image"])
    assert preview.size == (8, 8)  # the cheap latent preview: 1/8 of 64x64
    assert shared.get("/sdapi/v1/progress", params={"skip_current_image": "true"}).json()["current_image"] is None

    started = time.monotonic()
    assert shared.post("/sdapi/v1/interrupt").json() == {}
    interrupted = shared.get("/sdapi/v1/progress").json()
    thread.join(30)
    assert not thread.is_alive() and time.monotonic() - started < 10
    assert interrupted["state"]["interrupted"] is True
    response = box["result"]
    # as A1111 answers: the one picture the interrupted sampling had reached, at 64x64
    assert response.status_code == 200 and [unb64(i).size for i in response.json()["images"]] == [(64, 64)]
    idle = shared.get("/sdapi/v1/progress").json()
    assert (idle["progress"], idle["state"]["job_count"], idle["current_image"]) == (0, 0, None)
    assert shared.post("/sdapi/v1/txt2img", tiny()).status_code == 200  # and the next job runs


def test_skip_ends_only_the_running_batch(shared):
    thread, box = _in_thread(lambda: shared.post("/sdapi/v1/txt2img", tiny(steps=30, n_iter=3, seed=40)))
    _wait_for(shared, lambda p: p["state"]["job_no"] == 0 and p["state"]["sampling_step"] >= 2)
    shared.post("/sdapi/v1/skip")
    later = _wait_for(shared, lambda p: p["state"]["job_no"] >= 1)
    assert later["state"]["job_count"] == 3
    thread.join(60)
    info = json.loads(box["result"].json()["info"])
    assert info["all_seeds"] == [41, 42]  # the first batch (seed 40) was skipped


def test_eight_clients_four_requests_each(shared):
    seeds = {(client, i): 1000 + 10 * client + i for client in range(8) for i in range(4)}
    results: dict[tuple[int, int], tuple] = {}
    errors = []
    progress_times = []
    stop = threading.Event()

    def client(n: int):
        api = shared.client()
        for i in range(4):
            try:
                out = api.txt2img(prompt=f"client {n}", seed=seeds[n, i], width=64, height=64, steps=2)
                results[n, i] = (out.info["all_seeds"], out.images[0])
            except Exception as exc:  # noqa: BLE001
                errors.append(repr(exc))

    def poll():  # the event loop keeps answering while jobs queue up
        while not stop.is_set():
            t = time.monotonic()
            assert shared.get("/sdapi/v1/progress").status_code == 200
            progress_times.append(time.monotonic() - t)
            time.sleep(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    stop.set()
    poller.join(5)
    assert not errors and len(results) == 32
    for key, (all_seeds, _) in results.items():
        assert all_seeds == [seeds[key]]
    assert max(progress_times) < 2.0

    api = shared.client()
    for key, (_, image) in results.items():
        alone = api.txt2img(prompt=f"client {key[0]}", seed=seeds[key], width=64, height=64, steps=2).images[0]
        assert np.array_equal(pixels(image), pixels(alone)), key
    assert len({pixels(image).tobytes() for _, image in results.values()}) == 32


# ---------------------------------------------------------------- bad input


def _png_header(width: int, height: int) -> str:
    """A PNG that claims a huge size (its pixels are never there)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return base64.b64encode(b"\x89PNG\r\n\x1a\n" + chunk).decode()


GOOD = {
    "txt2img": lambda: tiny(steps=1),
    "img2img": lambda: {**tiny(steps=1), "init_images": [b64(picture())]},
    "extra-single-image": lambda: {"image": b64(picture()), "upscaler_1": "Nearest"},
    "extra-batch-images": lambda: {"imageList": [{"data": b64(picture()), "name": "a"}], "upscaler_1": "Nearest"},
    "png-info": lambda: {"image": b64(picture())},
    "options": lambda: {"CLIP_stop_at_last_layers": 1},
}
NOT_AN_IMAGE = base64.b64encode(b"hello, I am text").decode()

BAD = [
    # endpoint, body (dict: merged into a good body; bytes: sent raw as JSON), status, words in the message
    ("txt2img", b"{not json", 422, "malformed JSON"),
    ("txt2img", b"[1, 2]", 422, "body"),
    ("txt2img", {"steps": "many"}, 422, "steps"),
    ("txt2img", {"steps": 0}, 422, "steps"),
    ("txt2img", {"steps": 10**6}, 422, "steps"),
    ("txt2img", {"steps": 401}, 422, "steps: at most 400"),
    ("txt2img", {"width": 65}, 422, "width"),
    ("txt2img", {"width": 10**9}, 422, "width"),
    ("txt2img", {"height": 512}, 422, "height: at most 256"),
    ("txt2img", {"height": -8}, 422, "height"),
    ("txt2img", b'{"cfg_scale": NaN}', 422, "cfg_scale"),
    ("txt2img", {"cfg_scale": 1000}, 422, "cfg_scale"),
    ("txt2img", {"seed": "abc"}, 422, "seed"),
    ("txt2img", {"seed": 2**40}, 422, "seed"),
    ("txt2img", {"sampler_name": "Nope"}, 404, "sampler_name"),
    ("txt2img", {"scheduler": "nope"}, 404, "scheduler"),
    ("txt2img", {"override_settings": {"sd_model_checkpoint": "missing"}}, 404, "sd_model_checkpoint"),
    ("txt2img", {"override_settings": {"nope": 1}}, 422, "override_settings.nope"),
    ("txt2img", {"override_settings": {"CLIP_stop_at_last_layers": 99}}, 422, "CLIP_stop_at_last_layers"),
    ("txt2img", {"batch_size": 100}, 422, "batch_size"),
    ("txt2img", {"n_iter": 9}, 422, "n_iter"),
    ("txt2img", {"enable_hr": True, "hr_scale": 8}, 422, "hr_scale"),
    ("txt2img", {"enable_hr": True, "hr_upscaler": "nope"}, 422, "hr_upscaler"),
    ("txt2img", {"script_name": "loopback"}, 422, "script_name"),
    ("txt2img", {"alwayson_scripts": {"controlnet": {"args": []}}}, 422, "alwayson_scripts"),
    ("txt2img", {"restore_faces": True}, 422, "restore_faces"),
    ("img2img", {"init_images": None}, 422, "init_images"),
    ("img2img", {"init_images": ["%%% not base64 %%%"]}, 400, "init_images[0]: not valid base64"),
    ("img2img", {"init_images": [NOT_AN_IMAGE]}, 400, "init_images[0]: not a readable image"),
    ("img2img", {"init_images": [123]}, 422, "init_images[0]"),
    ("img2img", {"init_images": ["http://example.invalid/a.png"]}, 400, "init_images[0]"),
    ("img2img", {"init_images": [_png_header(100_000, 100_000)]}, 400, "init_images[0]"),
    ("img2img", {"mask": "AAAA"}, 400, "mask"),
    ("img2img", {"inpainting_fill": 7}, 422, "inpainting_fill"),
    ("img2img", {"resize_mode": 9}, 422, "resize_mode"),
    ("img2img", {"denoising_strength": 2}, 422, "denoising_strength"),
    ("img2img", {"inpainting_mask_invert": 3}, 422, "inpainting_mask_invert"),
    ("extra-single-image", {"image": ""}, 400, "image"),
    ("extra-single-image", {"image": "!!!"}, 400, "image"),
    ("extra-single-image", {"upscaler_1": "nope"}, 422, "upscaler_1"),
    ("extra-single-image", {"upscaling_resize": 0}, 422, "upscaling_resize"),
    ("extra-single-image", {"upscaling_resize": 1000}, 422, "upscaling_resize"),
    ("extra-single-image", {"resize_mode": 5}, 422, "resize_mode"),
    ("extra-single-image", {"gfpgan_visibility": 0.5}, 422, "gfpgan_visibility"),
    ("extra-batch-images", {"imageList": None}, 422, "imageList"),
    ("extra-batch-images", {"imageList": []}, 422, "imageList"),
    ("extra-batch-images", {"imageList": [{"data": "zzz", "name": "a"}]}, 400, "imageList[0].data"),
    ("png-info", {"image": None}, 422, "image"),
    ("png-info", {"image": "!!!"}, 400, "image"),
    ("png-info", {"image": NOT_AN_IMAGE}, 400, "image"),
    ("options", {"nope": "x" * 20_000}, 422, "nope"),
    ("options", {"outdir": "/"}, 422, "outdir"),
    ("options", {"CLIP_stop_at_last_layers": "two"}, 422, "CLIP_stop_at_last_layers"),
    ("options", {"sd_model_checkpoint": "missing"}, 404, "sd_model_checkpoint"),
    ("options", {"sd_checkpoint_hash": "abc"}, 422, "sd_checkpoint_hash"),
    ("options", b"[1, 2]", 422, "body"),
    ("options", b'{"CLIP_stop_at_last_layers": 1, "sd_vae": "\\ud800"}', 422, "sd_vae"),
    ("txt2img", b'{"prompt": "\\ud800 lone surrogate", "steps": 1}', 422, "prompt"),
    ("txt2img", {"override_settings": {"sd_model_checkpoint": "\ud800"}}, 422, "override_settings"),
]


@pytest.mark.parametrize("endpoint, body, status, words", BAD, ids=[f"{e}-{i}" for i, (e, *_) in enumerate(BAD)])
def test_bad_input_gives_4xx_naming_the_field_and_the_server_goes_on(shared, endpoint, body, status, words):
    url = f"/sdapi/v1/{endpoint}"
    if isinstance(body, bytes):
        response = shared.post(url, data=body, headers={"Content-Type": "application/json"})
    else:
        response = shared.post(url, {**GOOD[endpoint](), **body})
    assert response.status_code == status, response.text
    error = response.json()
    assert words in error["errors"], error
    assert "\n" not in error["errors"]
    good = shared.post(url, GOOD[endpoint]())
    assert good.status_code == 200, good.text


def test_pictures_of_every_mode_are_accepted(shared):
    modes = {
        "16-bit grey": (Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 15).astype(np.uint16)), "PNG"),
        "palette": (picture().convert("P"), "PNG"),
        "grey + alpha": (Image.new("LA", (64, 64), (100, 50)), "PNG"),
        "CMYK": (picture().convert("CMYK"), "TIFF"),
        "1-bit": (Image.new("1", (64, 64), 1), "PNG"),
        "float": (Image.fromarray(np.random.default_rng(0).random((64, 64), dtype=np.float32)), "TIFF"),
        "JPEG": (picture(), "JPEG"),
        "WebP": (picture(), "WEBP"),
    }
    for name, (image, fmt) in modes.items():
        data = b64(image, fmt)
        for endpoint, body in (("img2img", {**tiny(steps=1), "init_images": [data], "mask": data}),
                               ("extra-single-image", {"image": data, "upscaler_1": "Lanczos"}),
                               ("png-info", {"image": data})):
            response = shared.post(f"/sdapi/v1/{endpoint}", body)
            assert response.status_code == 200, (name, endpoint, response.text)


def test_unknown_routes_and_methods(shared):
    assert shared.get("/sdapi/v1/nope").status_code == 404
    assert shared.get("/sdapi/v1/txt2img").status_code == 405
    assert shared.get("/sdapi/v1/progress", params={"skip_current_image": "maybe"}).status_code == 422


def test_body_over_the_limit_is_refused(serve):
    server = serve(limits=ApiLimits(max_body_bytes=1000))
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    big = server.post("/sdapi/v1/png-info", {"image": b64(noise)})
    assert big.status_code == 413 and big.json()["errors"].startswith("body: larger than")
    assert server.post("/sdapi/v1/png-info", {"image": b64(Image.new("RGB", (4, 4)))}).status_code == 200


def test_openapi_and_docs(shared):
    schema = shared.get("/openapi.json").json()
    paths = set(schema["paths"])
    for name in ("txt2img", "img2img", "extra-single-image", "extra-batch-images", "png-info", "progress", "interrupt",
                 "skip", "options", "cmd-flags", "samplers", "schedulers", "upscalers", "latent-upscale-modes",
                 "sd-models", "sd-vae", "refresh-checkpoints", "refresh-vae", "loras", "refresh-loras", "embeddings",
                 "memory", "unload-checkpoint", "reload-checkpoint"):
        assert f"/sdapi/v1/{name}" in paths, name
    txt2img = schema["components"]["schemas"]["StableDiffusionProcessingTxt2Img"]["properties"]
    assert txt2img["steps"]["default"] == 50 and txt2img["sampler_index"]["default"] == "Euler"
    img2img = schema["components"]["schemas"]["StableDiffusionProcessingImg2Img"]["properties"]
    assert (img2img["inpainting_fill"]["default"], img2img["inpaint_full_res"]["default"]) == (0, True)
    assert "swagger" in shared.get("/docs").text.lower()
    # The errors are declared with the body really sent: detail is the message, or the field errors.
    error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
    for path, statuses in (("/sdapi/v1/txt2img", {"400", "404", "422"}), ("/sdapi/v1/png-info", {"400", "422"})):
        declared = schema["paths"][path]["post"]["responses"]
        assert statuses <= set(declared), (path, set(declared))
        assert all(declared[s]["content"]["application/json"]["schema"] == error_ref for s in statuses)
    detail = schema["components"]["schemas"]["ErrorResponse"]["properties"]["detail"]["anyOf"]
    assert {d.get("type") for d in detail} == {"string", "array"}
    invalid = shared.post("/sdapi/v1/txt2img", {"steps": "many"}).json()
    assert invalid["error"] == "RequestValidationError" and invalid["detail"][0]["loc"] == ["body", "steps"]
    refused = shared.post("/sdapi/v1/txt2img", tiny(steps=100000)).json()
    assert isinstance(refused["detail"], str) and refused["detail"].startswith("steps:")


def test_schemathesis_finds_no_server_errors(engine, serve, tmp_path):
    """Property-based requests to every operation in /openapi.json: never a 5xx, and every
    answer is one the spec declares (status code, content type, body schema: the 422 and
    400/404 error bodies included). Generation is kept cheap by this server's limits
    (2 steps, 64 px, 2 images) and the run by its time budget."""
    limits = ApiLimits(max_steps=2, max_size=64, max_images=2, max_upscale_pixels=128 * 128,
                       max_input_pixels=256 * 256, max_batch_files=2)
    pytest.importorskip("schemathesis", reason="schemathesis is not installed (pip install -r requirements-test.txt)")
    server = serve(limits=limits, options_path=tmp_path / "fuzz-config.json")
    cli = "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())"
    from app.api.info import NOT_IMPLEMENTED

    # A1111's routes for what this server cannot do answer 501 by design (tests/test_api_parity.py).
    not_implemented = [arg for path in NOT_IMPLEMENTED for arg in ("--exclude-path", f"/sdapi/v1{path}")]
    done = subprocess.run(
        [sys.executable, "-c", cli, "run", f"{server.url}/openapi.json", "--checks",
         "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
         "--max-examples", "5",
         "--max-time", "20", "--workers", "1", "--request-timeout", "60", "--seed", "1", "--no-color",
         "--generation-database", "none", "--phases", "examples,coverage,fuzzing", "--suppress-health-check", "all",
         "--exclude-path", "/sdapi/v1/interrupt", "--exclude-path", "/sdapi/v1/skip", *not_implemented],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert server.post("/sdapi/v1/txt2img", tiny()).status_code == 200


# ---------------------------------------------------------------- auth, listen, launch


def test_basic_auth(serve):
    server = serve(auth={"alice": "s3cret", "bob": "pa:ss"})
    anonymous = server.get("/sdapi/v1/samplers")
    assert anonymous.status_code == 401 and anonymous.headers["WWW-Authenticate"].startswith("Basic")
    assert server.get("/sdapi/v1/samplers", auth=("alice", "wrong")).status_code == 401
    assert server.get("/sdapi/v1/samplers", auth=("mallory", "s3cret")).status_code == 401
    assert server.get("/sdapi/v1/samplers", headers={"Authorization": "Basic !!!"}).status_code == 401
    assert server.get("/sdapi/v1/samplers", auth=("alice", "s3cret")).status_code == 200
    assert server.get("/sdapi/v1/samplers", auth=("bob", "pa:ss")).status_code == 200
    assert server.get("/docs").status_code == 401 and server.get("/openapi.json").status_code == 401
    assert server.post("/sdapi/v1/txt2img", tiny()).status_code == 401
    api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port, username="alice", password="s3cret", steps=2)
    assert api.txt2img(prompt="x", width=64, height=64, steps=1, seed=1).images[0].size == (64, 64)


def _launch(*args: str, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SD_STUDIO_BOOTSTRAPPED"}
    return subprocess.run([sys.executable, str(ROOT / "launch.py"), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env, **kwargs)


@pytest.mark.parametrize("flags", [["--api", "--nowebui"], ["--api"], []])
def test_listen_without_auth_is_refused_in_one_line(flags, tmp_path):
    done = _launch("--skip-install", "--listen", "--port", "7999", *flags, "--ckpt-dir", str(tmp_path / "c"),
                   "--outdir", str(tmp_path / "o"))
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("launch.py: error: --listen")
    assert "--api-auth" in lines[0] and "--insecure" in lines[0]
    assert "Serving" not in done.stdout
    assert not (tmp_path / "c").exists()  # refused before any set-up


def test_bad_api_auth_is_refused(tmp_path):
    done = _launch("--skip-install", "--api", "--api-auth", "nopassword", "--ckpt-dir", str(tmp_path / "c"))
    assert done.returncode == 2 and done.stderr.strip() == "launch.py: error: --api-auth: entry 1 is not USER:PASSWORD"


def test_serve_builds_one_engine_and_binds_loopback(monkeypatch, models_dir, tmp_path):
    import app.server as server
    from launch_args import launch_args

    calls = []
    monkeypatch.setattr(server, "run_uvicorn", lambda app, host, port: calls.append((app, host, port)) or 0)

    def args(**kw):
        base = dict(device="cpu", precision="fp32", ckpt_dir=models_dir / "Stable-diffusion", outdir=tmp_path / "out",
                    port=7901, api=True, nowebui=True, ui_settings_file=tmp_path / "config.json")
        return launch_args(**{**base, **kw})

    assert server.serve(args()) == 0
    assert server.serve(args(listen=True, api_auth="u:p", port=7902)) == 0
    assert server.serve(args(listen=True, insecure=True, port=7903)) == 0
    assert [(host, port) for _, host, port in calls] == [("127.0.0.1", 7901), ("0.0.0.0", 7902), ("0.0.0.0", 7903)]
    api_only = calls[0][0]
    assert api_only.state.sdapi is not None and api_only.state.engine.ckpt_dir == models_dir / "Stable-diffusion"
    assert not any(getattr(r, "path", None) == "" or type(r).__name__ == "Mount" for r in api_only.routes)
    assert server.serve(args(listen=True)) == 2 and len(calls) == 3
    assert server.serve(args(device="tpu")) == 1 and len(calls) == 3
    assert server.serve(args(api=False, nowebui=True)) == 0 and len(calls) == 3


def test_launch_nowebui_api_serves_the_api_alone(tiny_checkpoints, tmp_path):
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    shutil.copy(tiny_checkpoints["safetensors"], ckpts / "tiny.safetensors")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "SD_STUDIO_BOOTSTRAPPED"}
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "launch.py"), "--skip-install", "--nowebui", "--api", "--device", "cpu",
         "--port", str(port), "--ckpt-dir", str(ckpts), "--outdir", str(tmp_path / "out"),
         "--ui-settings-file", str(tmp_path / "config.json")],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                response = requests.get(url + "/sdapi/v1/sd-models", timeout=2)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "server did not come up"
                time.sleep(0.3)
        # The title gains " [hash]" once the background load at start has hashed the file.
        from core.demo import DEMO_CHECKPOINT, DEMO_NAME

        bundled = [DEMO_NAME] if DEMO_CHECKPOINT.is_file() else []  # always listed, after the user's own
        assert [m["title"].split(" [")[0] for m in response.json()] == ["tiny.safetensors", *bundled]
        assert requests.get(url + "/", timeout=5).status_code == 404  # no page with --nowebui
        assert requests.get(url + "/docs", timeout=5).status_code == 200
        made = requests.post(url + "/sdapi/v1/txt2img", json=tiny(), timeout=120)
        assert made.status_code == 200 and len(made.json()["images"]) == 1
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0]
    assert f"Serving on http://127.0.0.1:{port}" in output


def test_api_beside_the_page(engine, serve, tmp_path, monkeypatch):
    monkeypatch.setenv("SD_STUDIO_DATA_DIR", str(tmp_path / "page-data"))
    server = serve(ui=True)
    page = server.get("/")
    assert page.status_code == 200 and "<html" in page.text.lower()
    assert server.get("/sdapi/v1/samplers").status_code == 200
    assert server.post("/sdapi/v1/txt2img", tiny()).status_code == 200
    assert server.get("/docs").status_code == 200


# ---------------------------------------------------------------- model families: refiner, prediction, native size


@pytest.fixture(scope="module")
def family_engine(tiny_checkpoints, tmp_path_factory):
    """SDXL base and refiner, and the tiny SD 1.x model with a native size of 96 in its metadata."""
    import tiny_models
    from safetensors.torch import load_file, save_file

    from core.engine import Engine

    root = tmp_path_factory.mktemp("api-families")
    ckpts = root / "Stable-diffusion"
    ckpts.mkdir()
    sdxl = tiny_models.save_sdxl(root / "made")
    refiner = tiny_models.save_sdxl(root / "made", "tiny-refiner", seed=1, refiner=True)
    shutil.copy(sdxl["safetensors"], ckpts / "tiny-sdxl.safetensors")
    shutil.copy(refiner["safetensors"], ckpts / "tiny-refiner.safetensors")
    save_file(load_file(tiny_checkpoints["safetensors"]), str(ckpts / "tiny-96.safetensors"),
              metadata={"modelspec.resolution": "96x96"})
    (root / "no-extensions").mkdir()
    return Engine(device="cpu", ckpt_dir=ckpts, output_dir=root / "images", hash_cache=root / "hashes.json",
                  models_dir=root, extensions_dir=root / "no-extensions")


@pytest.fixture
def family_server(family_engine, tmp_path):
    with LiveServer(create_app(family_engine, api=True, ui=False, limits=LIMITS,
                               options_path=tmp_path / "config.json")) as server:
        yield server


def test_txt2img_with_the_sdxl_refiner(family_engine, family_server):
    from core.hashing import HashCache

    sdxl = {"sd_model_checkpoint": "tiny-sdxl"}
    base = tiny(steps=4, width=48, height=48, seed=3, override_settings=sdxl)
    plain = family_server.post("/sdapi/v1/txt2img", base)
    assert plain.status_code == 200, plain.text
    refined = family_server.post("/sdapi/v1/txt2img", {**base, "refiner_checkpoint": "tiny-refiner",
                                                       "refiner_switch_at": 0.5})
    assert refined.status_code == 200, refined.text
    info = json.loads(refined.json()["info"])
    short = HashCache(None).short(family_engine.ckpt_dir / "tiny-refiner.safetensors")
    assert info["infotexts"][0].endswith(f"Refiner: tiny-refiner [{short}], Refiner switch at: 0.5")
    assert info["extra_generation_params"]["Refiner"] == f"tiny-refiner [{short}]"
    a, b = (pixels(unb64(r.json()["images"][0])) for r in (plain, refined))
    assert np.abs(a - b).mean() > 1
    assert family_engine.refiner is not None and family_engine.refiner.name == "tiny-refiner"

    # its infotext gives the same picture back (the refiner named by its title)
    again = family_server.post("/sdapi/v1/txt2img", {"infotext": info["infotexts"][0], "override_settings": sdxl})
    assert again.status_code == 200, again.text
    assert np.array_equal(pixels(unb64(again.json()["images"][0])), b)

    for body, status, words in (
        ({"refiner_checkpoint": "nope"}, 404, "refiner_checkpoint"),
        ({"refiner_checkpoint": "tiny-refiner", "refiner_switch_at": 1.5}, 422, "refiner_switch_at"),
    ):
        response = family_server.post("/sdapi/v1/txt2img", {**base, **body})
        assert response.status_code == status and words in response.json()["errors"], response.text
    # img2img takes a refiner too (the late steps of its shortened schedule)
    img2img = {**base, "init_images": [b64(picture(48, 48))], "denoising_strength": 0.8}
    alone = family_server.post("/sdapi/v1/img2img", img2img)
    with_refiner = family_server.post("/sdapi/v1/img2img", {**img2img, "refiner_checkpoint": "tiny-refiner",
                                                            "refiner_switch_at": 0.5})
    assert alone.status_code == 200 and with_refiner.status_code == 200, with_refiner.text
    assert "Refiner: tiny-refiner [" in json.loads(with_refiner.json()["info"])["infotexts"][0]
    a, b = (pixels(unb64(r.json()["images"][0])) for r in (alone, with_refiner))
    assert np.abs(a - b).mean() > 1


def test_txt2img_without_a_size_uses_the_checkpoints_own(family_server):
    body = {"prompt": "a cat", "steps": 1, "seed": 1, "override_settings": {"sd_model_checkpoint": "tiny-96"}}
    made = family_server.post("/sdapi/v1/txt2img", body)
    assert made.status_code == 200, made.text
    assert unb64(made.json()["images"][0]).size == (96, 96)
    info = json.loads(made.json()["info"])
    assert (info["width"], info["height"]) == (96, 96) and "Size: 96x96" in info["infotexts"][0]
    one = family_server.post("/sdapi/v1/txt2img", {**body, "width": 64, "height": None})
    assert unb64(one.json()["images"][0]).size == (64, 96)
    # SDXL's 1024 is over this server's limit of 256: refused, naming the field
    big = family_server.post("/sdapi/v1/txt2img", {**body, "override_settings": {"sd_model_checkpoint": "tiny-sdxl"}})
    assert big.status_code == 422 and "width: at most 256" in big.json()["errors"]


def test_prediction_and_noise_schedule_options(family_engine, family_server, tmp_path):
    api = family_server.client()
    options = api.get_options()
    assert (options["sd_model_prediction"], options["sd_noise_schedule"]) == ("auto", "Default")
    body = tiny(override_settings={"sd_model_checkpoint": "tiny-96"})
    auto = family_server.post("/sdapi/v1/txt2img", body).json()
    assert family_engine.loaded.model.spec.prediction == "eps"

    assert api.set_options({"sd_model_prediction": "v"}) is None
    assert family_engine.prediction == "v"
    assert family_engine.loaded.model.spec.prediction == "v"  # loaded again at once
    assert api.get_options()["sd_model_prediction"] == "v"
    assert json.loads((tmp_path / "config.json").read_text())["sd_model_prediction"] == "v"
    v = family_server.post("/sdapi/v1/txt2img", body).json()
    assert np.abs(pixels(unb64(v["images"][0])) - pixels(unb64(auto["images"][0]))).mean() > 1

    bad = family_server.post("/sdapi/v1/options", {"sd_model_prediction": "x0"})
    assert bad.status_code == 422 and "sd_model_prediction" in bad.json()["errors"]

    assert api.set_options({"sd_noise_schedule": "Zero Terminal SNR"}) is None
    assert family_engine.loaded.model.spec.zero_terminal_snr
    made = family_server.post("/sdapi/v1/txt2img", body).json()
    assert "Noise Schedule: Zero Terminal SNR" in json.loads(made["info"])["infotexts"][0]
    # for one request only
    once = family_server.post("/sdapi/v1/txt2img", {**body, "override_settings": {
        "sd_model_checkpoint": "tiny-96", "sd_noise_schedule": "Default", "sd_model_prediction": "eps"}}).json()
    assert "Noise Schedule" not in json.loads(once["info"])["infotexts"][0]
    assert np.array_equal(pixels(unb64(once["images"][0])), pixels(unb64(auto["images"][0])))
    assert (family_engine.prediction, family_engine.zero_terminal_snr) == ("v", True)

    # a restart reads them back and hands them to the engine
    family_server.__exit__(None, None, None)
    family_engine.prediction, family_engine.zero_terminal_snr = "auto", None
    with LiveServer(create_app(family_engine, api=True, ui=False, limits=LIMITS,
                               options_path=tmp_path / "config.json")) as again:
        assert (family_engine.prediction, family_engine.zero_terminal_snr) == ("v", True)
        assert again.client().set_options({"sd_model_prediction": "auto", "sd_noise_schedule": "Default"}) is None
    assert (family_engine.prediction, family_engine.zero_terminal_snr) == ("auto", None)
    assert family_engine.loaded.model.spec.prediction == "eps"


def test_progress_tells_a_checkpoint_load(shared, engine):
    """While the engine reads a checkpoint (at start, on a switch, for a job), /progress says so."""
    from core.engine import Loading

    engine.loading = Loading("big-model", Path("big-model.safetensors"), 0.42)
    try:
        assert shared.get("/sdapi/v1/progress").json()["textinfo"] == "Loading big-model: 42%"
    finally:
        engine.loading = None
    assert shared.get("/sdapi/v1/progress").json()["textinfo"] != "Loading big-model: 42%"
