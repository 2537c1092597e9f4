"""The page's rough edges (issue #17), in headless Chromium on the tiny checkpoint: pictures and
lists fit their boxes, the gallery's Delete, non-picture uploads, super-resolution "None",
clamped numbers, the Hires. fix header, the style confirmation, the picture an Interrupt keeps,
and the polish items. Screenshots go to test-artifacts/ (page-*.png).

A fit check compares getBoundingClientRect() of an element and its container: no element wider
than its container, a result picture drawn whole (its natural aspect, object-fit: contain) inside
the visible part of its box, the box not taller than its pane and no inner scrollbar
(scrollHeight <= clientHeight). The tests share one server and run in file order: the later ones
use the pictures the earlier ones made.
"""
from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from test_browser import (TIMEOUT_MS, browser, fill, go_to_tab, open_page, page, picture,  # noqa: F401
                          pytestmark, server, set_number, shot, small_job, upload_to_editor, value_of, wait_text)

# The drawn rectangle of every picture of a pane, the visible rectangle of its scroll box, the pane's.
MEASURE_PANE = """id => {
  const pane = document.getElementById(id);
  const rect = e => { const r = e.getBoundingClientRect(); return {left: r.left, top: r.top, right: r.right,
                                                                   bottom: r.bottom, width: r.width, height: r.height}; };
  const scroller = pane.querySelector('.grid-wrap') || pane;
  const pictures = [...pane.querySelectorAll('img')].map(img => {
    const box = img.getBoundingClientRect();
    const scale = Math.min(box.width / img.naturalWidth, box.height / img.naturalHeight);
    const w = img.naturalWidth * scale, h = img.naturalHeight * scale;
    const left = box.left + (box.width - w) / 2, top = box.top + (box.height - h) / 2;
    return {left, top, right: left + w, bottom: top + h, natural: [img.naturalWidth, img.naturalHeight],
            fit: getComputedStyle(img).objectFit};
  });
  return {pane: rect(pane), parent: rect(pane.parentElement), view: rect(scroller),
          scrollHeight: scroller.scrollHeight, clientHeight: scroller.clientHeight, pictures};
}"""

# The preview's largest picture (drawn rectangle, as in MEASURE_PANE) and the pane.
MEASURE_PREVIEW = """id => {
  const pane = document.getElementById(id), p = pane.getBoundingClientRect();
  const drawn = img => { const box = img.getBoundingClientRect();
    const scale = Math.min(box.width / img.naturalWidth, box.height / img.naturalHeight,
                           getComputedStyle(img).objectFit === 'scale-down' ? 1 : Infinity);
    const w = img.naturalWidth * scale, h = img.naturalHeight * scale;
    const left = box.left + (box.width - w) / 2, top = box.top + (box.height - h) / 2;
    return {left, top, right: left + w, bottom: top + h, area: box.width * box.height, fit: getComputedStyle(img).objectFit}; };
  const pictures = [...pane.querySelectorAll('.preview img')].map(drawn).sort((a, b) => b.area - a.area);
  return {pane: {left: p.left, top: p.top, right: p.right, bottom: p.bottom}, main: pictures[0]};
}"""

ERROR_BADGES = """() => [...document.querySelectorAll('[data-testid=status-tracker] .error')]
  .filter(e => e.offsetParent !== null).length"""


def inside(inner: dict, outer: dict, slack: float = 1.0) -> bool:
    return (inner["left"] >= outer["left"] - slack and inner["right"] <= outer["right"] + slack
            and inner["top"] >= outer["top"] - slack and inner["bottom"] <= outer["bottom"] + slack)


def assert_pictures_fit(page, elem_id: str, count: int | None = None) -> dict:
    """Every picture of pane ``elem_id`` drawn whole inside the visible box, no inner scrollbar,
    the pane no wider than its column."""
    page.wait_for_function("id => [...document.querySelectorAll(`#${id} img`)].length > 0 && "
                           "[...document.querySelectorAll(`#${id} img`)].every(i => i.complete && i.naturalWidth > 0)",
                           arg=elem_id)
    measured = page.evaluate(MEASURE_PANE, elem_id)
    pictures = measured["pictures"]
    if count is not None:
        assert len(pictures) == count, measured
    assert measured["scrollHeight"] <= measured["clientHeight"], measured  # no scrollbar of its own
    assert measured["pane"]["width"] <= measured["parent"]["width"] + 1, measured
    assert inside(measured["view"], measured["pane"]), measured  # the box is not taller than the pane
    for drawn in pictures:
        assert drawn["fit"] == "contain", measured
        assert inside(drawn, measured["view"]), measured  # the whole picture is in sight
    return measured


def run_and_check_fit(page, tab: str, prompt: str, seed: int, size: int = 64) -> dict:
    """A two-step job on ``tab``; its one result picture must fit the tab's output pane."""
    fill(page, f"{tab}_prompt", prompt)
    small_job(page, tab, steps=2, size=size, seed=seed)
    page.locator(f"#{tab}_generate").click()
    wait_text(page, f"{tab}_info", f"Seed: {seed}")
    return assert_pictures_fit(page, f"{tab}_gallery", count=1)


def assert_no_error_badge(page):
    assert page.evaluate(ERROR_BADGES) == 0, "a red Error badge is shown"


def toast_text(page, needle: str):
    page.get_by_text(needle).first.wait_for()
    return page.locator(".toast-body").all_inner_texts()


# ---------------------------------------------------------------------------------- results fit


def test_txt2img_results_fit_their_pane_one_picture_and_a_batch(page, server):
    fill(page, "txt2img_prompt", "a lone lighthouse")
    small_job(page, "txt2img", steps=2, seed=2101)
    set_number(page, "txt2img_height", 128)  # a tall picture: its bottom was the part cut off
    page.locator("#txt2img_generate").click()
    wait_text(page, "txt2img_info", "Seed: 2101")
    measured = assert_pictures_fit(page, "txt2img_gallery", count=1)
    assert measured["pictures"][0]["natural"] == [64, 128]
    # the picture is drawn large: the full height of the box, not a thumbnail
    drawn = measured["pictures"][0]
    assert drawn["bottom"] - drawn["top"] >= measured["view"]["height"] * 0.8, measured
    shot(page, "page-txt2img-one")

    fill(page, "txt2img_prompt", "four pictures")
    small_job(page, "txt2img", steps=2, seed=2200)
    set_number(page, "txt2img_batch_size", 4)
    page.locator("#txt2img_generate").click()
    wait_text(page, "txt2img_info", "Seed: 2200")
    page.wait_for_function("() => document.querySelectorAll('#txt2img_gallery img').length === 4")
    assert_pictures_fit(page, "txt2img_gallery", count=4)
    shot(page, "page-txt2img-batch")
    # a picture clicked opens Gradio's preview in the pane: it too is drawn whole inside the pane
    page.locator("#txt2img_gallery .thumbnail-item").nth(1).click()
    page.wait_for_selector("#txt2img_gallery .preview img")
    preview = page.evaluate(MEASURE_PREVIEW, "txt2img_gallery")
    assert preview["main"]["fit"] in ("contain", "scale-down") and inside(preview["main"], preview["pane"]), preview
    assert preview["main"]["bottom"] - preview["main"]["top"] >= 150, preview  # drawn large, not a thumbnail
    # the preview's strip of small pictures keeps them square (the grid's rules must not reach it)
    strip = page.evaluate("id => [...document.querySelectorAll(`#${id} .preview .thumbnail-item`)]"
                          ".map(t => t.getBoundingClientRect()).map(r => Math.abs(r.width - r.height))", "txt2img_gallery")
    assert strip and max(strip) <= 1, strip
    shot(page, "page-txt2img-preview")
    assert_no_error_badge(page)


def test_img2img_input_is_drawn_large_and_its_result_fits(page, server, tmp_path):
    go_to_tab(page, "img2img")
    page.locator("#img2img_image input[type=file]").set_input_files(str(picture(tmp_path / "small.png", (64, 64))))
    page.wait_for_selector("#img2img_image img")
    frame = page.evaluate("""() => { const img = document.querySelector('#img2img_image img');
        const r = img.getBoundingClientRect(), box = document.getElementById('img2img_image').getBoundingClientRect();
        return {width: r.width, height: r.height, right: r.right, boxRight: box.right, bottom: r.bottom,
                boxBottom: box.bottom}; }""")
    # a 64-pixel upload is shown the size of its box (it was drawn at 64 px beside a large result)
    assert frame["height"] >= 200 and frame["right"] <= frame["boxRight"] + 1 and frame["bottom"] <= frame["boxBottom"] + 1
    run_and_check_fit(page, "img2img", "an oil painting", seed=2301)
    shot(page, "page-img2img")


def test_inpaint_brush_is_translucent_and_the_result_fits(page, server, tmp_path):
    go_to_tab(page, "Inpaint")
    upload_to_editor(page, "inpaint_editor", picture(tmp_path / "paint.png", (128, 128)))
    canvas = page.locator("#inpaint_editor canvas").first
    # The mouse reaches only what is in the viewport: the extra-networks panel above can push the
    # editor's middle below the fold.
    page.evaluate("() => document.querySelector('#inpaint_editor').scrollIntoView({block: 'center'})")
    time.sleep(0.3)
    box = canvas.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx - 40, cy)
    page.mouse.down()
    page.mouse.move(cx + 36, cy, steps=40)  # one horizontal stroke through the middle
    page.mouse.up()
    page.mouse.move(box["x"] + box["width"] + 30, cy)  # the brush cursor away from the stroke
    time.sleep(0.5)
    screenshot = tmp_path / "stroke.png"
    canvas.screenshot(path=str(screenshot))  # the canvas alone: its pixels by position in it
    side = min(box["width"], box["height"])
    with Image.open(screenshot) as seen:
        seen = seen.convert("RGB")
        stroke = seen.getpixel((int(box["width"] / 2 - 10), int(box["height"] / 2)))
        # the picture (128 px, zoomed to fit) is centred; its lower right quarter is unpainted blue
        blue = seen.getpixel((int(box["width"] / 2 + 0.3 * side), int(box["height"] / 2 + 0.3 * side)))
    # white at half opacity over the blue picture: lighter than the picture, but the blue shows through
    assert blue[2] > blue[0] + 100, blue
    assert stroke != (255, 255, 255) and stroke[0] > blue[0] + 40 and stroke[2] > stroke[0] + 20, (stroke, blue)
    run_and_check_fit(page, "inpaint", "a yellow sun", seed=2401, size=128)
    shot(page, "page-inpaint")


def test_super_resolution_none_keeps_the_picture_and_batch_fields_show_only_for_batches(page, server, tmp_path):
    go_to_tab(page, "Super-resolution")
    assert not page.locator("#extras_input_dir").is_visible()  # single-image mode: no folder fields
    page.locator("#extras_mode").get_by_text("Batch from folder").click()
    page.locator("#extras_input_dir").wait_for(state="visible")
    assert page.locator("#extras_output_dir").is_visible() and not page.locator("#extras_image").is_visible()
    page.locator("#extras_mode").get_by_text("Single image").click()
    page.locator("#extras_input_dir").wait_for(state="hidden")

    source = picture(tmp_path / "keep.png", (40, 30))
    page.locator("#extras_image input[type=file]").set_input_files(str(source))
    page.wait_for_selector("#extras_image img")
    page.locator("#extras_upscaler input").click()
    page.get_by_role("option", name="None", exact=True).click()
    set_number(page, "extras_scale", 2)
    before = set((server.out / "extras-images").rglob("*.png")) if (server.out / "extras-images").exists() else set()
    page.locator("#extras_generate").click()
    wait_text(page, "extras_log", "no resampling")
    made = set((server.out / "extras-images").rglob("*.png")) - before
    assert len(made) == 1
    with Image.open(made.pop()) as result, Image.open(source) as original:
        assert result.size == (40, 30)  # "None": no resampling, as A1111's extras
        assert list(result.convert("RGB").getdata()) == list(original.convert("RGB").getdata())
    assert "Postprocess upscaler" not in value_of(page, "extras_info")
    assert_pictures_fit(page, "extras_gallery", count=1)

    page.locator("#extras_upscaler input").click()
    page.get_by_role("option", name="Lanczos", exact=True).click()
    page.locator("#extras_generate").click()
    wait_text(page, "extras_info", "Postprocess upscaler: Lanczos")
    assert_pictures_fit(page, "extras_gallery", count=1)
    shot(page, "page-super-resolution")


# ---------------------------------------------------------------------------------- messages


def test_a_text_file_named_png_is_said_to_be_no_picture(page, server, tmp_path):
    go_to_tab(page, "img2img")
    fake = tmp_path / "notes.png"
    fake.write_text("these are notes, not a picture\n")
    page.locator("#img2img_image input[type=file]").set_input_files(str(fake))
    page.wait_for_function("() => !!document.querySelector('#img2img_image img')")
    fill(page, "img2img_prompt", "x")
    small_job(page, "img2img", steps=2)
    page.locator("#img2img_generate").click()
    texts = toast_text(page, "is not a picture")
    said = " ".join(texts)
    assert "Input image: notes.png is not a picture" in said, texts
    assert "preprocess" not in said and "/tmp" not in said and "UnidentifiedImageError" not in said, texts
    shot(page, "page-not-a-picture")


def test_clamped_numbers_are_said(page, server):
    box = page.locator("#txt2img_width input[type=number]")
    box.fill("10000")
    box.press("Enter")
    box.blur()
    note = page.locator("#txt2img_width .studio-clamp-note")
    note.wait_for()
    assert note.inner_text() == "Width: 10000 is above the largest, 2048: 2048 is used"
    page.wait_for_function("() => document.querySelector('#txt2img_width input[type=number]').value === '2048'")
    steps = page.locator("#txt2img_steps input[type=number]")
    steps.fill("0")
    steps.blur()
    page.locator("#txt2img_steps .studio-clamp-note").wait_for()
    assert "Sampling steps: 0 is below the smallest, 1: 1 is used" == \
        page.locator("#txt2img_steps .studio-clamp-note").inner_text()
    shot(page, "page-clamped")
    box.fill("512")
    box.press("Enter")
    note.wait_for(state="detached")  # a value in range: the note goes


def test_hires_switch_shows_in_its_header_after_png_info(page, server, tmp_path):
    header = page.locator("#txt2img_hires button").first
    switch = page.locator("#txt2img_enable_hr input")
    assert "Hires. fix: off" in header.inner_text()
    # the switch is drawn in the closed accordion's header (it was inside, out of sight)
    assert switch.is_visible() and not switch.is_checked() and not page.locator("#txt2img_hr_scale").is_visible()
    assert page.evaluate(SWITCH_IN_HEADER)
    source = tmp_path / "hires.png"
    chunk = PngInfo()
    chunk.add_text("parameters", "a hires picture\nSteps: 3, Sampler: Euler, CFG scale: 7, Seed: 77, Size: 64x64, "
                                 "Model: tiny, Denoising strength: 0.5, Hires upscale: 2, Hires upscaler: Latent")
    Image.new("RGB", (64, 64), (90, 90, 90)).save(source, pnginfo=chunk)
    go_to_tab(page, "PNG Info")
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(source))
    wait_text(page, "pnginfo_parameters", "Hires upscale: 2")
    page.locator("#pnginfo_send_to_txt2img").click()
    page.wait_for_selector("#tab_txt2img", state="visible")
    page.wait_for_function("() => document.querySelector('#txt2img_seed input').value === '77'")
    page.wait_for_function("() => document.querySelector('#txt2img_hires button').innerText.includes('Hires. fix: on')")
    assert switch.is_checked()
    page.locator("#txt2img_hr_scale").wait_for(state="visible")  # switched on from PNG Info: opened too
    assert page.evaluate(SWITCH_IN_HEADER)
    shot(page, "page-hires-header")
    header.click()  # folded: the switch still shows, and works
    page.locator("#txt2img_hr_scale").wait_for(state="hidden")
    switch.click()
    page.wait_for_function("() => document.querySelector('#txt2img_hires button').innerText.includes('Hires. fix: off')")
    assert not switch.is_checked() and not page.locator("#txt2img_hr_scale").is_visible()  # the click did not unfold it


# The header switch's box lies within the accordion's header strip (from the accordion's top to
# the bottom of its header button) and clear of the header's text.
SWITCH_IN_HEADER = """() => { const s = document.querySelector('#txt2img_enable_hr input').getBoundingClientRect();
  const a = document.getElementById('txt2img_hires').getBoundingClientRect();
  const h = document.querySelector('#txt2img_hires button').getBoundingClientRect();
  const text = document.querySelector('#txt2img_hires button span').getBoundingClientRect();
  return s.width > 0 && s.top >= a.top && s.bottom <= h.bottom && s.left > text.right && s.right <= h.right; }"""


def test_save_style_is_confirmed(page, server):
    fill(page, "txt2img_prompt", "moody light, {prompt}")
    page.get_by_text("Save prompt as a style").click()
    page.locator("#txt2img_style_name textarea, #txt2img_style_name input").first.fill("Moody")
    page.locator("#txt2img_save_style").click()
    toast_text(page, "Style 'Moody' saved")
    assert "Moody" in (server.data / "styles.csv").read_text()
    shot(page, "page-style-saved")


def test_interrupt_keeps_the_picture_so_far(page, server):
    fill(page, "txt2img_prompt", "a long job to interrupt")
    small_job(page, "txt2img", steps=150, size=128, seed=2501)
    page.locator("#txt2img_generate").click()
    wait_text(page, "txt2img_progress", "Step")
    page.locator("#txt2img_interrupt").click()
    wait_text(page, "txt2img_log", "Interrupted at step", timeout=60_000)
    log = page.locator("#txt2img_log").inner_text()
    assert re.search(r"Interrupted at step \d+ of 150: the picture so far is shown, not saved", log), log
    assert "Interrupted: 0 of 1 images made" in log
    assert "Seed: 2501" in value_of(page, "txt2img_info")
    assert_pictures_fit(page, "txt2img_gallery", count=1)
    assert not list((server.out / "txt2img-images").rglob("*-2501.png"))  # as A1111: shown, not saved
    shot(page, "page-interrupted")


# ---------------------------------------------------------------------------------- gallery and lists


def gallery_card(page, elem_id: str) -> dict:
    return page.evaluate("""id => { const pane = document.getElementById(id);
        const card = pane.querySelector('.thumbnail-item'), scroller = pane.querySelector('.grid-wrap');
        const r = card.getBoundingClientRect(), v = scroller.getBoundingClientRect();
        return {width: r.width, height: r.height, inside: r.left >= v.left - 1 && r.right <= v.right + 1 &&
                r.top >= v.top - 1 && r.bottom <= v.bottom + 1, scrolls: scroller.scrollHeight > scroller.clientHeight}; }""",
                         elem_id)


def test_gallery_delete_picks_the_next_picture_and_never_errors(page, server):
    go_to_tab(page, "Gallery")
    page.wait_for_selector("#gallery_images img")
    page.locator("#gallery_images .thumbnail-item").first.click()
    wait_text(page, "gallery_link", "Open full size")
    first = Path(page.locator("#gallery_link").inner_text().split("Open full size", 1)[1].strip())
    page.locator("#gallery_delete").click()
    wait_text(page, "gallery_status", "Moved to the trash")
    page.wait_for_function("p => document.getElementById('gallery_link').innerText.includes('Open full size') && "
                           "!document.getElementById('gallery_link').innerText.includes(p)", arg=str(first))
    second = Path(page.locator("#gallery_link").inner_text().split("Open full size", 1)[1].strip())
    assert second.is_file() and not first.exists()  # the next picture is picked, ready for another Delete
    page.locator("#gallery_delete").click()  # "Delete again": the picked one goes too
    page.wait_for_function("p => !document.getElementById('gallery_link').innerText.includes(p)", arg=str(second))
    assert not second.exists()
    assert_no_error_badge(page)

    page.locator("#gallery_refresh").click()  # nothing picked now
    page.wait_for_function("() => !document.getElementById('gallery_link').innerText.trim()")
    page.locator("#gallery_delete").click()
    toast_text(page, "pick an image first")
    assert_no_error_badge(page)
    page.locator("#gallery_refresh").click()
    page.wait_for_selector("#gallery_images img")
    assert_no_error_badge(page)
    shot(page, "page-gallery-after-deletes")

    page.get_by_text("Trash", exact=True).click()
    page.wait_for_selector("#gallery_trash_images img")
    card = gallery_card(page, "gallery_trash_images")
    assert card["width"] <= 200 and card["inside"] and not card["scrolls"], card  # a card, not a 1155-px slab
    shot(page, "page-trash")


def test_history_search_with_one_result_draws_one_card(page, server):
    go_to_tab(page, "History")
    query = page.get_by_label("Search prompts")
    query.fill('"a lone lighthouse"')
    query.press("Enter")
    page.wait_for_function("() => document.querySelectorAll('#history_results img').length === 1")
    card = gallery_card(page, "history_results")
    assert card["width"] <= 200 and card["inside"] and not card["scrolls"], card
    shot(page, "page-history-one")


# ---------------------------------------------------------------------------------- phone width


def test_phone_width_page_shows_the_whole_checkpoint_name(browser, server):
    """At 390 px the checkpoint menu showed a common name cut ("v1-5-pruned-emaon…"); it is
    shown whole, and nothing is wider than the page."""
    ckpt_dir = server.root / "models" / "Stable-diffusion"
    long_name = "v1-5-pruned-emaonly.safetensors"
    shutil.copy(ckpt_dir / "tiny.safetensors", ckpt_dir / long_name)
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=1)
    phone = context.new_page()
    phone.set_default_timeout(TIMEOUT_MS)
    try:
        open_page(phone, server.url)
        phone.locator("#refresh_checkpoints").click()
        phone.locator("#checkpoint input").click()
        phone.get_by_role("option", name=long_name, exact=True).click()
        wait_text(phone, "checkpoint_status", "Loaded: v1-5-pruned-emaonly")
        assert phone.locator("#checkpoint input").input_value() == long_name
        fits = phone.evaluate(PHONE_FIT)
        shot(phone, "page-phone")
        assert not fits["cut"] and fits["right"] <= fits["page"] and not fits["wide"], fits
        phone.locator("#checkpoint input").click()  # back to the first, for whatever runs next
        phone.get_by_role("option", name="tiny.safetensors", exact=True).click()
        phone.wait_for_function("() => document.getElementById('checkpoint_status').innerText.trim() === 'Loaded: tiny'")
    finally:
        context.close()
        (ckpt_dir / long_name).unlink()


# Where the checkpoint name's text ends against where its box stops showing it (the box's padding
# or the menu's arrow drawn over it), and the elements wider than the page.
PHONE_FIT = """() => { const input = document.querySelector('#checkpoint input');
  const style = getComputedStyle(input), box = input.getBoundingClientRect();
  const pen = document.createElement('canvas').getContext('2d');
  pen.font = `${style.fontStyle} ${style.fontWeight} ${style.fontSize} ${style.fontFamily}`;
  const textEnd = box.left + parseFloat(style.paddingLeft) + pen.measureText(input.value).width;
  const arrow = document.querySelector('#checkpoint svg.dropdown-arrow');
  const shownEnd = Math.min(box.right - parseFloat(style.paddingRight), arrow ? arrow.getBoundingClientRect().left : Infinity);
  const page = document.documentElement.clientWidth;
  const wide = [...document.querySelectorAll('#checkpoint, #tabs, #txt2img_prompt, #txt2img_gallery, #txt2img_generate')]
    .filter(e => e.getBoundingClientRect().right > page + 1).map(e => e.id);
  return {cut: textEnd > shownEnd, textEnd, shownEnd, right: document.getElementById('checkpoint').getBoundingClientRect().right,
          page, wide}; }"""
