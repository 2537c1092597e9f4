"""The page on a FLUX.1 checkpoint in headless Chromium (issue #18): choosing it sets the fields as
Forge does (its native size, its steps and CFG scale, the Distilled CFG Scale slider shown, only the
samplers it takes), a job makes a picture with Forge's infotext, and going back to the SD 1.x
checkpoint brings the Settings' defaults back where the user left the fields alone. The models
folder holds the tiny SD 1.x checkpoint and a tiny FLUX.1 dev file (tests/tiny_flow_models.py).
Screenshots go to test-artifacts/ (flow-*.png)."""
from __future__ import annotations

import shutil

import pytest

from test_browser import (browser, go_to_tab, launched, page, pytestmark, server_folders, shot,  # noqa: F401
                          value_of, wait_text)

SD1, FLUX = "tiny.safetensors", "tiny_flux.safetensors"  # listed in this order: the page starts on SD 1.x


@pytest.fixture(scope="module")
def server(tiny_checkpoints, tmp_path_factory):
    from tiny_flow_models import flux_components, flux_scheduler, save_flow_folder, save_single_file

    root = tmp_path_factory.mktemp("browser-flow")
    ckpt_dir, out_dir, data_dir = server_folders(root)
    shutil.copy(tiny_checkpoints["safetensors"], ckpt_dir / SD1)
    # velocity_scale as tests/test_flow_engine.py: random weights otherwise draw noise of huge values
    folder = save_flow_folder(root / "build" / "flux", flux_components(0, velocity_scale=0.02), "FluxPipeline",
                              flux_scheduler("dev"))
    save_single_file(folder, ckpt_dir / FLUX)
    with launched(root, ckpt_dir, out_dir, data_dir) as started:
        yield started


def number(page, elem_id: str) -> float:
    return float(page.locator(f"#{elem_id} input[type=number]").first.input_value())


def fields(page, tab: str) -> tuple:
    """The tab's width, height, steps and CFG scale, and whether its Distilled CFG Scale slider shows."""
    return (*(number(page, f"{tab}_{name}") for name in ("width", "height", "steps", "cfg_scale")),
            page.locator(f"#{tab}_distilled_cfg_scale").is_visible())


def sampler_menu(page, tab: str) -> list[str]:
    """The names the tab's sampler menu lists (opened, read, closed)."""
    page.locator(f"#{tab}_sampler input").click()
    page.get_by_role("option").first.wait_for()
    names = page.get_by_role("option").all_inner_texts()
    page.keyboard.press("Escape")
    return [name.strip().splitlines()[-1] for name in names]  # the chosen one starts with a check mark line


def loaded(page, name: str):
    """Wait until the status line says checkpoint ``name`` is the loaded one ("Loaded: tiny" is
    also the start of "Loaded: tiny_flux")."""
    page.wait_for_function("n => document.getElementById('checkpoint_status').innerText.trim() === `Loaded: ${n}`",
                           arg=name.removesuffix(".safetensors"))


def choose_checkpoint(page, name: str, cfg_scale: float):
    """Pick ``name`` in the checkpoint menu; wait until it is loaded and txt2img's CFG scale is
    ``cfg_scale`` (the other tabs are drawn when they are first shown)."""
    page.locator("#checkpoint input").click()
    page.get_by_role("option", name=name, exact=True).click()
    loaded(page, name)
    page.wait_for_function("c => Number(document.querySelector('#txt2img_cfg_scale input[type=number]').value) === c",
                           arg=cfg_scale)


def other_tabs(page) -> dict[str, tuple]:
    """fields() of the img2img and Inpaint tabs, each shown in turn, then txt2img again."""
    seen = {}
    for tab, label in (("img2img", "img2img"), ("inpaint", "Inpaint")):
        go_to_tab(page, label)
        page.locator(f"#{tab}_width input[type=number]").first.wait_for()
        seen[tab] = fields(page, tab)
    go_to_tab(page, "txt2img")
    return seen


def test_flux_sets_the_fields_as_forge_does_and_sd1_brings_the_defaults_back(page, server):
    loaded(page, SD1)
    assert page.locator("#checkpoint input").input_value() == SD1
    assert fields(page, "txt2img") == (512, 512, 20, 7, False)
    assert "DPM++ SDE" in sampler_menu(page, "txt2img")
    shot(page, "flow-sd1")

    choose_checkpoint(page, FLUX, 1)
    assert fields(page, "txt2img") == (1024, 1024, 20, 1, True)
    assert number(page, "txt2img_distilled_cfg_scale") == 3.5
    samplers = sampler_menu(page, "txt2img")
    assert "Euler" in samplers and "DPM++ 2M" in samplers
    assert not {"DPM++ SDE", "DDIM", "UniPC", "LCM", "Restart"} & set(samplers), samplers
    shot(page, "flow-flux-chosen")
    assert other_tabs(page) == {"img2img": (1024, 1024, 20, 1, True), "inpaint": (1024, 1024, 20, 1, True)}

    for name in ("width", "height"):  # the user's size: it stays when the checkpoint changes again
        box = page.locator(f"#txt2img_{name} input[type=number]").first
        box.fill("64")
        box.press("Enter")
        box.blur()
    page.locator("#txt2img_prompt textarea").fill("a small red lighthouse")
    page.locator("#txt2img_seed input").fill("1818")
    page.locator("#txt2img_seed input").blur()
    page.locator("#txt2img_generate").click()
    wait_text(page, "txt2img_info", "Seed: 1818")
    info = value_of(page, "txt2img_info")
    assert "Steps: 20, Sampler: Euler" in info and "CFG scale: 1, Distilled CFG Scale: 3.5, Seed: 1818" in info
    assert "Size: 64x64" in info and "Model: tiny_flux" in info
    page.wait_for_selector("#txt2img_gallery img")
    shot(page, "flow-flux-picture")

    choose_checkpoint(page, SD1, 7)
    assert fields(page, "txt2img") == (64, 64, 20, 7, False)  # the size the user set stays
    assert other_tabs(page) == {"img2img": (512, 512, 20, 7, False), "inpaint": (512, 512, 20, 7, False)}
    assert "DPM++ SDE" in sampler_menu(page, "txt2img")
    shot(page, "flow-back-to-sd1")
