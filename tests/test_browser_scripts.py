"""The Script menu in Chromium: X/Y/Z plot on txt2img over the tiny checkpoint; the labelled
grid is shown first in the results and saved in txt2img-grids with its infotext."""
from __future__ import annotations

import datetime as dt

from PIL import Image

from test_browser import (browser, fill, go_to_tab, open_page, page, server, shot, small_job,  # noqa: F401
                          value_of, wait_text)

import pytest

pytestmark = [pytest.mark.slow]


def test_xyz_plot_on_txt2img_shows_the_grid_first_and_saves_it(page, server):
    go_to_tab(page, "txt2img")
    fill(page, "txt2img_prompt", "a red circle")
    small_job(page, "txt2img", steps=2, size=64, seed=7)
    for group in ("xyz", "matrix", "prompts"):
        assert not page.locator(f"#txt2img_script_{group}").is_visible()
    page.locator("#txt2img_script input").click()
    page.get_by_role("option", name="X/Y/Z plot", exact=True).click()
    page.locator("#txt2img_script_xyz").wait_for(state="visible")
    assert not page.locator("#txt2img_script_matrix").is_visible()
    fill(page, "txt2img_xyz_x_values", "7, 8")  # X type: Seed (the default), Y: Nothing: a 2x1 grid
    page.locator("#txt2img_xyz_include_lone_images input").check()
    shot(page, "scripts-xyz-chosen")
    page.locator("#txt2img_generate").click()
    wait_text(page, "txt2img_info", "X Type: Seed")
    page.wait_for_function("() => document.querySelectorAll('#txt2img_gallery img').length >= 1")
    grids = list((server.out / "txt2img-grids" / dt.date.today().isoformat()).glob("*.png"))
    assert len(grids) == 1
    with Image.open(grids[0]) as grid:
        assert grid.width == 2 * 64 and grid.height > 64  # two cells under their labels
        assert "X Values: \"7, 8\"" in grid.info["parameters"]
        size = grid.size
    info = value_of(page, "txt2img_info")
    assert info.startswith("a red circle\nSteps: 2") and "Seed: 7," in info
    # the first picture of the results is the grid: its natural size is the grid's
    first = page.locator("#txt2img_gallery img").first
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=first.element_handle())
    natural = first.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    assert tuple(natural) == size
    shot(page, "scripts-xyz-result")
