"""Extra networks, token counters, the paste button and the VAE menu in Chromium (issue #17).

The server is this module's own: the page and API over a real engine on the tiny checkpoint,
served in this process, with model folders of its own (LoRA files with previews, an embedding,
a VAE file), so that nothing is written into the project's models/ folder. The browser fixtures are
tests/test_browser.py's (its ``page`` fixture uses the ``server`` defined here)."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from test_browser import TIMEOUT_MS, browser, fill, page, shot, value_of, wait_text  # noqa: F401 - fixtures

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def server(tiny_checkpoints, tmp_path_factory):
    """The page and API served in this process (test_api's LiveServer) over a real engine on
    the tiny checkpoint, with model folders of its own."""
    from app.server import create_app
    from app.settings import DATA_DIR_ENV
    from core.engine import Engine
    from test_api import LiveServer

    root = tmp_path_factory.mktemp("browser-extranet")
    models = root / "models"
    for folder in ("Stable-diffusion", "Lora/styles", "embeddings", "VAE"):
        (models / folder).mkdir(parents=True)
    (root / "data").mkdir()
    (root / "no-extensions").mkdir()
    shutil.copy(tiny_checkpoints["safetensors"], models / "Stable-diffusion" / "tiny.safetensors")
    shutil.copy(tiny_checkpoints["safetensors"], models / "Stable-diffusion" / "second.safetensors")
    Image.new("RGB", (300, 400), (200, 160, 40)).save(models / "Stable-diffusion" / "second.png")
    for index in range(12):  # more cards than a row holds
        name = f"style-{index:02d}" if index else "pastel"
        save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, str(models / "Lora" / f"{name}.safetensors"),
                  metadata={"ss_tag_frequency": json.dumps({"1_x": {"soft light": 9, name: 3}})})
        Image.new("RGB", (300, 400), (20 * index, 90, 160)).save(models / "Lora" / f"{name}.preview.png")
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)},
              str(models / "Lora" / "styles" / "ink-outline-with-a-very-long-name-that-must-wrap.safetensors"))
    torch.save({"string_to_param": {"*": torch.zeros(2, 64)}}, models / "embeddings" / "bad-hands.pt")
    vae = {key[len("first_stage_model."):]: value for key, value in load_file(str(tiny_checkpoints["safetensors"])).items()
           if key.startswith("first_stage_model.")}
    save_file(vae, str(models / "VAE" / "clearer.safetensors"))
    kept = os.environ.get(DATA_DIR_ENV)
    os.environ[DATA_DIR_ENV] = str(root / "data")  # styles.csv and config.json of this server's own
    try:
        engine = Engine(device="cpu", ckpt_dir=models / "Stable-diffusion", output_dir=root / "outputs",
                        models_dir=models, hash_cache=root / "hashes.json", extensions_dir=root / "no-extensions")
        app = create_app(engine, api=True, ui=True, options_path=root / "data" / "config.json",
                         allowed_paths=[root / "outputs"])
        with LiveServer(app) as live:
            yield type("Server", (), {"url": live.url + "/", "root": root})
    finally:
        if kept is None:
            os.environ.pop(DATA_DIR_ENV, None)
        else:
            os.environ[DATA_DIR_ENV] = kept


def open_extra_networks(page, tab: str = "txt2img"):
    page.locator(f"#{tab}_extra_networks").get_by_text("Extra networks").first.click()
    page.get_by_role("tab", name="LoRA", exact=True).first.click()
    page.locator(f"#{tab}_lora_cards .studio-card").first.wait_for()


def boxes_fit(page, selector: str, container: str) -> list[str]:
    """Each element ``selector`` finds that is wider than ``container`` (or pokes out of it)."""
    return page.evaluate("""([selector, container]) => {
        const box = document.querySelector(container).getBoundingClientRect();
        return [...document.querySelectorAll(selector)].filter(el => {
            const r = el.getBoundingClientRect();
            return r.width > box.width + 0.5 || r.left < box.left - 0.5 || r.right > box.right + 0.5;
        }).map(el => el.dataset.name || el.className);
    }""", [selector, container])


def test_cards_fit_their_box_and_show_their_previews(page):
    open_extra_networks(page)
    grid = "#txt2img_lora_cards .studio-cards"
    assert page.locator(f"{grid} .studio-card").count() == 13
    assert boxes_fit(page, f"{grid} .studio-card", grid) == []
    assert boxes_fit(page, grid, "#txt2img_extra_networks") == []
    widths = page.evaluate(f"[...document.querySelectorAll('{grid} .studio-card')].map(c => c.offsetWidth)")
    assert max(widths) < 300  # a grid of cards, not one card across the page
    pictures = f"[...document.querySelectorAll('{grid} img')]"
    page.wait_for_function(f"() => {pictures}.every(img => img.complete)")  # lazy pictures come in as shown
    loaded = page.evaluate(f"{pictures}.map(img => img.naturalWidth)")
    assert len(loaded) == 12 and all(width == 300 for width in loaded), loaded  # came through the file route
    shot(page, "extranet-cards")


def test_search_filters_the_cards(page):
    open_extra_networks(page)
    search = page.locator("#txt2img_extranet_search input, #txt2img_extranet_search textarea").first
    search.fill("INK")
    page.wait_for_function("() => document.querySelectorAll('#txt2img_lora_cards .studio-card').length === 1")
    assert page.locator("#txt2img_lora_cards .studio-card").first.get_attribute("data-name").startswith("styles/ink")
    search.fill("")
    page.wait_for_function("() => document.querySelectorAll('#txt2img_lora_cards .studio-card').length === 13")


def test_a_lora_card_adds_its_tag_and_its_info_shows_tags(page):
    open_extra_networks(page)
    fill(page, "txt2img_prompt", "a cat")
    page.locator('#txt2img_lora_cards .studio-card[data-name="pastel"] .studio-card-name').click()
    wait_text(page, "txt2img_prompt", "<lora:pastel:1>")
    assert value_of(page, "txt2img_prompt") == "a cat <lora:pastel:1>"
    page.locator('#txt2img_lora_cards .studio-card[data-name="pastel"] .studio-card-info-button').click()
    wait_text(page, "txt2img_extranet_info", "soft light")
    assert value_of(page, "txt2img_prompt") == "a cat <lora:pastel:1>"  # info leaves the prompt alone
    shot(page, "extranet-info")


def test_the_token_counter_grows_by_chunks(page):
    fill(page, "txt2img_prompt", " ".join(["cat"] * 80))
    wait_text(page, "txt2img_token_counter", "80/150")
    fill(page, "txt2img_neg_prompt", "(blurry:1.3) BREAK ugly")
    wait_text(page, "txt2img_negative_token_counter", "76/150")
    assert page.locator("#txt2img_token_counter").inner_text().strip() == "80/150"


def test_the_paste_button_fills_the_fields(page):
    infotext = "a red fox\nNegative prompt: blurry\nSteps: 33, Sampler: Euler, CFG scale: 5.5, Seed: 77, Size: 320x256"
    fill(page, "txt2img_prompt", infotext)
    page.locator("#txt2img_paste").click()
    wait_text(page, "txt2img_neg_prompt", "blurry")
    page.wait_for_function("() => document.querySelector('#txt2img_steps input[type=number]').value === '33'")
    assert value_of(page, "txt2img_prompt") == "a red fox"
    assert page.locator("#txt2img_seed input").input_value() == "77"
    assert page.locator("#txt2img_width input[type=number]").input_value() == "320"


def test_the_vae_menu_lists_the_vae_files(page):
    page.locator("#sd_vae input").click()
    options = page.locator("[role=option], ul.options li")
    options.filter(has_text="clearer.safetensors").first.wait_for(timeout=TIMEOUT_MS)
    texts = [t.replace("✓", "").strip() for t in options.all_inner_texts()]  # the chosen one has a tick
    assert {"Automatic", "None", "clearer.safetensors"} <= set(texts), texts
    shot(page, "extranet-vae-menu")


def test_cards_fit_a_phone_width_page(page):
    page.set_viewport_size({"width": 390, "height": 844})
    open_extra_networks(page)
    grid = "#txt2img_lora_cards .studio-cards"
    assert boxes_fit(page, f"{grid} .studio-card", grid) == []
    assert boxes_fit(page, grid, "#txt2img_extra_networks") == []
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # no sideways scrolling
    shot(page, "extranet-cards-phone")


def test_a_checkpoint_card_switches_the_checkpoint_and_the_vae_menu_applies(page):
    page.locator("#txt2img_extra_networks").get_by_text("Extra networks").first.click()
    page.get_by_role("tab", name="Checkpoints", exact=True).first.click()
    card = page.locator('#txt2img_checkpoints_cards .studio-card[data-name="second.safetensors"]')
    assert card.locator("img").count() == 1  # its preview, second.png
    card.locator(".studio-card-name").click()
    wait_text(page, "checkpoint_status", "Loaded: second")
    assert page.locator("#checkpoint input").input_value() == "second.safetensors"
    page.locator("#sd_vae input").click()
    page.locator("[role=option], ul.options li").filter(has_text="clearer.safetensors").first.click()
    wait_text(page, "checkpoint_status", "with VAE clearer.safetensors")
    page.locator("#sd_vae input").click()
    page.locator("[role=option], ul.options li").filter(has_text="None").first.click()
    page.wait_for_function("() => !document.getElementById('checkpoint_status').innerText.includes('with VAE')")
