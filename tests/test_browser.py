"""End to end in a real browser: `launch.py` serves the page on the tiny checkpoint, headless
Chromium (Debian's `chromium`, driven by playwright) uses it as a person would.

Screenshots of each tab go to test-artifacts/ (gitignored). Skipped, with the reason, when
/usr/bin/chromium or playwright is missing; `.ci/run` installs chromium.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 90_000

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium (apt-get install -y chromium)"),
]
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed "
                                                                   "(pip install -r requirements-test.txt)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_folders(root: Path) -> tuple[Path, Path, Path]:
    """The checkpoints, outputs and data folders ``launched`` serves under ``root`` (the first and
    last made, empty)."""
    ckpt_dir, out_dir, data_dir = root / "models" / "Stable-diffusion", root / "outputs", root / "data"
    ckpt_dir.mkdir(parents=True)
    data_dir.mkdir()
    return ckpt_dir, out_dir, data_dir


@pytest.fixture(scope="module")
def server(tiny_checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    ckpt_dir, out_dir, data_dir = server_folders(root)
    shutil.copy(tiny_checkpoints["safetensors"], ckpt_dir / "tiny.safetensors")
    shutil.copy(tiny_checkpoints["fp16"], ckpt_dir / "tiny_fp16.safetensors")  # listed after tiny.safetensors
    (data_dir / "config.json").write_text(json.dumps({"preview_every": 1}))
    (data_dir / "styles.csv").write_text("name,prompt,negative_prompt\nCinematic,\"{prompt}, cinematic\",cartoon\n")
    with launched(root, ckpt_dir, out_dir, data_dir) as started:
        yield started


@contextlib.contextmanager
def launched(root: Path, ckpt_dir: Path, out_dir: Path, data_dir: Path):
    """launch.py serving ``ckpt_dir`` on a free port until the block ends -> what tests need of it."""
    port = free_port()
    env = {**os.environ, "SD_STUDIO_DATA_DIR": str(data_dir), "GRADIO_ANALYTICS_ENABLED": "False",
           "PYTHONUNBUFFERED": "1"}
    log_path = root / "server.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "launch.py", "--skip-install", "--device", "cpu", "--port", str(port),
             "--ckpt-dir", str(ckpt_dir), "--outdir", str(out_dir)],
            cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"launch.py exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the page did not come up in 180 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield type("Server", (), {"url": url, "out": out_dir, "root": root, "data": data_dir, "log": log_path})
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server, request):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    open_page(page, server.url)
    yield page
    try:  # how the page looked at the end of each test (the failing one included)
        shot(page, f"end-{request.node.name}")
    finally:
        context.close()
    assert not errors, errors


def open_page(page, url):
    page.goto(url)
    page.wait_for_selector("#txt2img_prompt textarea")
    # the page's load events (defaults, model list, keyboard script) have run
    page.wait_for_function("() => window.studioKeysInstalled === true && window.studioPageReady === true")


def shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def go_to_tab(page, label: str):
    page.get_by_role("tab", name=label, exact=True).click()


def set_number(page, elem_id: str, value):
    box = page.locator(f"#{elem_id} input[type=number]").first
    box.fill(str(value))
    box.press("Enter")
    box.blur()


def fill(page, elem_id: str, text: str):
    page.locator(f"#{elem_id} textarea").first.fill(text)


def value_of(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first.input_value()


def wait_text(page, elem_id: str, needle: str, timeout: int = TIMEOUT_MS):
    page.wait_for_function(
        """([id, needle]) => {
            const el = document.getElementById(id);
            if (!el) return false;
            const area = el.querySelector('textarea');
            return (area ? area.value : el.innerText).includes(needle);
        }""", arg=[elem_id, needle], timeout=timeout)


def small_job(page, tab: str, steps: int = 3, size: int = 64, seed: int | None = None):
    set_number(page, f"{tab}_steps", steps)
    set_number(page, f"{tab}_width", size)
    set_number(page, f"{tab}_height", size)
    if seed is not None:
        page.locator(f"#{tab}_seed input").fill(str(seed))
        page.locator(f"#{tab}_seed input").blur()


def upload_to_editor(page, elem_id: str, path: Path):
    """Put a picture into a gr.ImageEditor the way a person would, once it can take one.

    The editor draws with PixiJS: when its tab is first shown it creates two canvases (the
    editor and its crop tool) asynchronously, and only then its layers. Its file input is there
    before that; a file given to it earlier is dropped with "Cannot read properties of undefined
    (reading 'reset_layers')" (this made the inpaint test flaky on a loaded machine). So: wait
    for both canvases, upload, then wait until the picture is in, the brush is the active tool
    and the zoom to fit has finished (the zoom shown stays the same)."""
    page.wait_for_function("id => document.querySelectorAll(`#${id} canvas`).length >= 2", arg=elem_id)
    page.locator(f"#{elem_id} input[type=file]").set_input_files(str(path))
    page.wait_for_function("id => !document.getElementById(id).innerText.includes('Upload an image')", arg=elem_id)
    page.locator(f"#{elem_id} button[title='Brush Size']").wait_for()
    zoom = "id => (document.getElementById(id).innerText.match(/\\d+%/) || [''])[0]"
    shown, deadline = None, time.monotonic() + 30
    while time.monotonic() < deadline:
        now = page.evaluate(zoom, elem_id)
        if now and now == shown:
            break
        shown = now
        time.sleep(0.5)


def changed_rows(result_path: Path, original_path: Path) -> list[int]:
    with Image.open(result_path) as result, Image.open(original_path) as original:
        a, b = result.convert("RGB"), original.convert("RGB")
        return [y for y in range(a.height) if any(a.getpixel((x, y)) != b.getpixel((x, y)) for x in range(a.width))]


def gallery_image_count(page, elem_id: str) -> int:
    return page.locator(f"#{elem_id} img").count()


def picture(path: Path, size=(96, 80)) -> Path:
    image = Image.new("RGB", size, (30, 60, 200))
    ImageDraw.Draw(image).ellipse((15, 10, 70, 65), fill=(220, 40, 30))
    image.save(path)
    return path


# ---------------------------------------------------------------------------------- tests


def test_txt2img_generates_shows_image_and_infotext_and_saves_the_file(page, server):
    fill(page, "txt2img_prompt", "a red fox in the snow")
    fill(page, "txt2img_neg_prompt", "blurry")
    small_job(page, "txt2img", steps=4, seed=4242)
    # Ctrl+Up/Down change the weight of the selected word, as in A1111
    area = page.locator("#txt2img_prompt textarea")
    area.evaluate("a => { const i = a.value.indexOf('fox'); a.focus(); a.setSelectionRange(i, i + 3); }")
    area.press("Control+ArrowUp")
    assert area.input_value() == "a red (fox:1.1) in the snow"
    area.press("Control+ArrowUp")
    assert area.input_value() == "a red (fox:1.2) in the snow"
    area.press("Control+ArrowDown")
    area.press("Control+ArrowDown")
    assert area.input_value() == "a red fox in the snow"
    area.press("Control+Enter")  # generates
    wait_text(page, "txt2img_info", "Seed: 4242")
    info = value_of(page, "txt2img_info")
    assert info.startswith("a red fox in the snow\nNegative prompt: blurry\nSteps: 4, Sampler: Euler")
    assert "Size: 64x64" in info and "Model: tiny" in info
    page.wait_for_selector("#txt2img_gallery img")
    saved = server.out / "txt2img-images" / dt.date.today().isoformat() / "00000-4242.png"
    assert saved.is_file()
    with Image.open(saved) as image:
        assert image.size == (64, 64) and image.info["parameters"] == info
    wait_text(page, "txt2img_log", "saved to")
    shot(page, "txt2img")


def test_img2img_with_an_uploaded_image(page, server, tmp_path):
    go_to_tab(page, "img2img")
    page.locator("#img2img_image input[type=file]").set_input_files(str(picture(tmp_path / "input.png")))
    page.wait_for_selector("#img2img_image img")
    fill(page, "img2img_prompt", "an oil painting")
    small_job(page, "img2img", steps=4, seed=11)
    set_number(page, "img2img_denoising_strength", 0.6)
    page.locator("#img2img_generate").click()
    wait_text(page, "img2img_info", "Denoising strength: 0.6")
    assert "Seed: 11" in value_of(page, "img2img_info")
    assert list((server.out / "img2img-images").rglob("*-11.png"))
    shot(page, "img2img")
    page.locator("#img2img_send_to_inpaint").click()  # the result, and its parameters, to the Inpaint tab
    page.wait_for_selector("#tab_inpaint", state="visible")
    page.wait_for_function("() => document.querySelector('#inpaint_prompt textarea').value === 'an oil painting'")
    page.locator("#inpaint_editor canvas").first.wait_for()
    assert page.locator("#inpaint_seed input").input_value() == "11"


def test_inpaint_paint_a_mask_and_run(page, server, tmp_path):
    go_to_tab(page, "Inpaint")
    source = picture(tmp_path / "paint.png", (128, 128))
    upload_to_editor(page, "inpaint_editor", source)
    # The brush size is adjustable in the editor: its Brush Size button opens a slider, which
    # starts at the page's default (gr.Brush(default_size=24)).
    page.locator("#inpaint_editor button[title='Brush Size']").click()
    size = page.locator("#inpaint_editor input[type=range]")
    assert size.input_value() == "24"
    size.fill("10")
    assert size.input_value() == "10"
    page.locator("#inpaint_editor button[title='Brush Size']").click()  # closes the slider
    canvas = page.locator("#inpaint_editor canvas").first
    box = canvas.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx - 40, cy)
    page.mouse.down()
    for i in range(20):
        page.mouse.move(cx - 40 + i * 4, cy, steps=2)
    page.mouse.up()
    fill(page, "inpaint_prompt", "a yellow sun")
    small_job(page, "inpaint", steps=3, size=128, seed=5)
    set_number(page, "inpaint_mask_blur", 0)
    page.locator("#inpaint_generate").click()
    wait_text(page, "inpaint_info", "Mask blur: 0")
    info = value_of(page, "inpaint_info")
    assert "Seed: 5" in info and "Masked content: original" in info
    made = list((server.out / "img2img-images").rglob("*-5.png"))
    assert made
    with Image.open(made[0]) as result, Image.open(source) as original:
        # the corners were not painted: they come back unchanged
        assert result.convert("RGB").getpixel((2, 2)) == original.convert("RGB").getpixel((2, 2))
    # Without mask blur only the painted band changes: a horizontal stroke of brush size 10 is
    # about 20 picture rows high (the default 24 paints about 48).
    rows = changed_rows(made[0], source)
    assert 16 <= len(rows) <= 28 and rows[-1] - rows[0] + 1 == len(rows), rows
    shot(page, "inpaint")


def test_super_resolution(page, server, tmp_path):
    go_to_tab(page, "Super-resolution")
    source = picture(tmp_path / "small.png", (40, 30))
    page.locator("#extras_image input[type=file]").set_input_files(str(source))
    page.wait_for_selector("#extras_image img")
    set_number(page, "extras_scale", 2)
    page.locator("#extras_generate").click()
    wait_text(page, "extras_info", "Postprocess upscale by: 2")
    made = list((server.out / "extras-images").rglob("*.png"))
    assert len(made) == 1
    with Image.open(made[0]) as image:
        assert image.size == (80, 60)
    page.wait_for_selector("#extras_gallery img")
    shot(page, "super-resolution")


def test_png_info_of_a_generated_file_fills_txt2img(page, server):
    fill(page, "txt2img_prompt", "a tiny lighthouse")
    fill(page, "txt2img_neg_prompt", "fog, lowres")
    small_job(page, "txt2img", steps=5, size=72, seed=777)
    page.locator("#txt2img_cfg_scale input[type=number]").fill("5.5")
    page.locator("#txt2img_cfg_scale input[type=number]").press("Enter")
    page.locator("#txt2img_generate").click()
    wait_text(page, "txt2img_info", "Seed: 777")
    made = next((server.out / "txt2img-images").rglob("*-777.png"))

    open_page(page, server.url)  # a fresh page: every field back to its default
    assert value_of(page, "txt2img_prompt") == "" and value_of(page, "txt2img_steps") == "20"
    go_to_tab(page, "PNG Info")
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(made))
    wait_text(page, "pnginfo_parameters", "Seed: 777")
    shot(page, "png-info")
    page.locator("#pnginfo_send_to_txt2img").click()
    page.wait_for_selector("#tab_txt2img", state="visible")
    page.wait_for_function("() => document.querySelector('#txt2img_seed input').value === '777'")
    assert value_of(page, "txt2img_prompt") == "a tiny lighthouse"
    assert value_of(page, "txt2img_neg_prompt") == "fog, lowres"
    assert value_of(page, "txt2img_steps") == "5"
    assert value_of(page, "txt2img_cfg_scale") == "5.5"
    assert value_of(page, "txt2img_width") == "72" and value_of(page, "txt2img_height") == "72"
    assert page.locator("#txt2img_sampler input").input_value() == "Euler"
    assert page.locator("#checkpoint input").input_value() == "tiny.safetensors"


def test_interrupt_a_long_job(page, server):
    fill(page, "txt2img_prompt", "a long job")
    small_job(page, "txt2img", steps=150, size=128, seed=900)
    set_number(page, "txt2img_batch_count", 40)
    page.locator("#txt2img_generate").click()
    wait_text(page, "txt2img_progress", "Step")
    progress = page.locator("#txt2img_progress").inner_text()
    assert re.search(r"Step \d+/150 · batch 1/40 · \d+% · ETA", progress), progress
    page.wait_for_selector("#txt2img_gallery img")  # the live preview
    shot(page, "txt2img-progress")
    started = time.monotonic()
    page.locator("#txt2img_interrupt").click()
    wait_text(page, "txt2img_log", "Interrupted", timeout=60_000)
    assert time.monotonic() - started < 60
    made = list((server.out / "txt2img-images").rglob("*.png"))
    assert len([p for p in made if re.match(r"\d{5}-9(0\d|[1-3]\d)\.png$", p.name)]) < 40
    # the page is still usable: a short job runs after it
    small_job(page, "txt2img", steps=2, size=64, seed=5150)
    set_number(page, "txt2img_batch_count", 1)
    page.locator("#txt2img_generate").click()
    wait_text(page, "txt2img_info", "Seed: 5150")


def test_errors_show_as_messages(page, server):
    fill(page, "txt2img_prompt", "x")
    small_job(page, "txt2img", steps=2, size=64)
    go_to_tab(page, "img2img")
    page.locator("#img2img_generate").click()  # no input image
    wait_text(page, "img2img_log", "upload an input image first")
    page.get_by_text("upload an input image first").first.wait_for()


def test_gallery_settings_and_styles_tabs(page, server):
    go_to_tab(page, "Gallery")
    page.wait_for_selector("#gallery_images img")
    count = gallery_image_count(page, "gallery_images")
    assert count >= 3
    page.locator("#gallery_images button.thumbnail-item, #gallery_images .thumbnail-item").first.click()
    wait_text(page, "gallery_info", "Steps:")
    shot(page, "gallery")
    path_html = page.locator("#gallery_link").inner_text()
    deleted = Path(path_html.split("Open full size", 1)[1].strip())
    href = page.locator("#gallery_link a").get_attribute("href")
    response = page.request.get(server.url.rstrip("/") + href)  # "Open full size" serves the file itself
    assert response.ok and response.body() == deleted.read_bytes()
    page.locator("#gallery_delete").click()
    wait_text(page, "gallery_status", "Moved to the trash")
    assert not deleted.exists() and list((server.out / "trash").rglob(deleted.name))

    go_to_tab(page, "Settings")
    set_number(page, "setting_default_steps", 33)
    page.locator("#settings_apply").click()
    wait_text(page, "settings_status", "Saved 1 setting")
    assert json.loads((server.data / "config.json").read_text())["default_steps"] == 33
    shot(page, "settings")
    open_page(page, server.url)
    page.wait_for_function("() => document.querySelector('#txt2img_steps input[type=number]').value === '33'")

    go_to_tab(page, "Styles")
    page.locator("#styles_pick input").click()
    page.get_by_role("option", name="Cinematic").click()
    wait_text(page, "styles_prompt", "{prompt}, cinematic")
    shot(page, "styles")


def test_checkpoint_loads_at_start_and_switching_shows_the_loaded_model(page, server):
    # sd_checkpoint_load_at_start is on by default: the first checkpoint is loaded without a job
    wait_text(page, "checkpoint_status", "Loaded: tiny")
    assert re.search(r"Loaded checkpoint tiny in \d+\.\ds", server.log.read_text())
    assert page.locator("#checkpoint input").input_value() == "tiny.safetensors"
    page.locator("#checkpoint input").click()
    page.get_by_role("option", name="tiny_fp16.safetensors", exact=True).click()
    wait_text(page, "checkpoint_status", "Loaded: tiny_fp16")
    shot(page, "checkpoint-switched")
    # a job uses the model the dropdown shows, and a new page shows the loaded one
    fill(page, "txt2img_prompt", "a switched model")
    small_job(page, "txt2img", steps=2, size=64, seed=31337)
    page.locator("#txt2img_generate").click()
    wait_text(page, "txt2img_info", "Seed: 31337")
    assert "Model: tiny_fp16" in value_of(page, "txt2img_info")
    open_page(page, server.url)
    assert page.locator("#checkpoint input").input_value() == "tiny_fp16.safetensors"
    wait_text(page, "checkpoint_status", "Loaded: tiny_fp16")
    # back to the first, for the other tests
    page.locator("#checkpoint input").click()
    page.get_by_role("option", name="tiny.safetensors", exact=True).click()
    page.wait_for_function("() => document.getElementById('checkpoint_status').innerText.trim() === 'Loaded: tiny'")
