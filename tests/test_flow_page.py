"""The page on SD 3.x and FLUX.1 checkpoints (issue #18), without a browser: steps, CFG scale, the
Distilled CFG Scale slider and the sampler menu follow the chosen checkpoint's family as width and
height do (Models.follow_checkpoint over the fake engine), and the real engine's
generation_defaults reads them from tiny checkpoints' headers (tests/tiny_flow_models.py).
tests/test_browser_flow.py does the same in Chromium."""
from __future__ import annotations

import shutil

import gradio as gr
import pytest

from app.forms import FORM_FIELDS
from app.page.models import FOLLOW_INPUTS, FOLLOW_OUTPUTS
from app.page.studio import StudioUI
from app.settings import Settings
from app.styles import StyleDatabase
from core.models.families import FLUX_DEV, FLUX_SCHNELL, SD3
from fake_engine import FakeEngine

ALL_SAMPLERS_BUT_FLOW = {"DPM++ SDE", "DPM++ 2M SDE", "DPM++ 3M SDE", "DDIM", "PLMS", "UniPC", "LCM", "Restart"}
STOCK = (512, 512, 20, 7.0, "Euler")  # a tab as a fresh page shows it: width, height, steps, CFG scale, sampler


@pytest.fixture
def studio(tmp_path):
    engine = FakeEngine(tmp_path, checkpoints=["sd15.safetensors", "flux-dev.safetensors", "flux-schnell.safetensors",
                                               "sd3.5-medium"],
                        families={"flux-dev.safetensors": FLUX_DEV, "flux-schnell.safetensors": FLUX_SCHNELL,
                                  "sd3.5-medium": SD3})
    sizes = {"sd15.safetensors": 512}
    engine.default_size = lambda name, allow_paths=False: sizes.get(name, 1024)
    return StudioUI(engine, settings=Settings(tmp_path / "config.json"), styles=StyleDatabase(tmp_path / "styles.csv"))


def by_tab(out: list) -> list[dict]:
    """A follow_checkpoint answer, each tab's outputs by field name (skipped ones left out)."""
    per_tab = len(FOLLOW_OUTPUTS)
    tabs = [dict(zip(FOLLOW_OUTPUTS, out[i:i + per_tab])) for i in range(1, len(out), per_tab)]
    return [{name: value for name, value in tab.items() if not isinstance(value, type(gr.skip()))} for tab in tabs]


def shown(tab: dict) -> dict:
    """What a tab shows after the update: numbers, the slider's visibility, the sampler and its menu."""
    return {"width": tab.get("width"), "height": tab.get("height"), "steps": tab.get("steps"),
            "cfg_scale": tab.get("cfg_scale"), "distilled": tab["distilled_cfg_scale"].visible,
            "sampler": tab["sampler"].value, "samplers": [value for _, value in tab["sampler"].choices]}


def test_each_family_brings_its_steps_cfg_slider_and_samplers(studio):
    """From a fresh page, each checkpoint as Forge sets it up; back on SD 1.x, the Settings' defaults
    and the whole sampler list."""
    expected = {"flux-dev.safetensors": (1024, 20, 1.0, True), "flux-schnell.safetensors": (1024, 4, 1.0, False),
                "sd3.5-medium": (1024, 28, 5.0, False)}
    for name, (size, steps, cfg, distilled) in expected.items():
        out = studio.models.follow_checkpoint(name, None, *STOCK)
        seen = shown(by_tab(out)[0])
        assert out[0] == {"size": [size, size], "sampling": [steps, cfg]}, name
        assert (seen["width"], seen["height"], seen["steps"], seen["cfg_scale"], seen["distilled"]) == \
            (size, size, steps, cfg, distilled), name
        assert seen["sampler"] == "Euler" and "Euler a" in seen["samplers"], name
        assert not ALL_SAMPLERS_BUT_FLOW & set(seen["samplers"]), name

    out = studio.models.follow_checkpoint("flux-dev.safetensors", None, *STOCK)
    back = studio.models.follow_checkpoint("sd15.safetensors", out[0], 1024, 1024, 20, 1.0, "Euler")
    seen = shown(by_tab(back)[0])
    assert back[0] == {"size": [512, 512], "sampling": [20, 7.0]}
    assert (seen["width"], seen["steps"], seen["cfg_scale"], seen["distilled"]) == (512, 20, 7.0, False)
    assert ALL_SAMPLERS_BUT_FLOW <= set(seen["samplers"])


def test_steps_and_cfg_the_user_changed_stay(studio):
    """Per tab and per pair: a tab whose steps or CFG the user set keeps both; its untouched size
    still follows; the other tabs follow."""
    out = studio.models.follow_checkpoint("flux-dev.safetensors", None, *STOCK, 512, 512, 30, 7.0, "Euler", *STOCK)
    first, second, third = by_tab(out)
    assert (first["steps"], first["cfg_scale"]) == (20, 1.0) == (third["steps"], third["cfg_scale"])
    assert "steps" not in second and "cfg_scale" not in second and second["width"] == 1024
    # FLUX dev -> schnell: a tab still at dev's 20 / 1 takes schnell's 4 / 1; one at 25 steps keeps them
    out = studio.models.follow_checkpoint("flux-schnell.safetensors", out[0], 1024, 1024, 20, 1.0, "Euler",
                                          1024, 1024, 25, 1.0, "Euler")
    first, second = by_tab(out)
    assert (first["steps"], first["cfg_scale"]) == (4, 1.0) and "steps" not in second
    # the Settings' defaults are what a UNet checkpoint goes back to
    studio.settings.update({"default_steps": 32, "default_cfg_scale": 6.5})
    out = studio.models.follow_checkpoint("sd15.safetensors", out[0], 1024, 1024, 4, 1.0, "Euler")
    assert (by_tab(out)[0]["steps"], by_tab(out)[0]["cfg_scale"]) == (32, 6.5)


def test_on_page_load_settings_that_are_not_stock_win(studio):
    """As the size does: on page load, Settings' steps or CFG other than 20 / 7 are the user's
    choice; the slider and the samplers follow the checkpoint all the same."""
    out = studio.models.follow_checkpoint("flux-dev.safetensors", None, *STOCK, page_load=True)
    assert out[0]["sampling"] == [20, 1.0] and by_tab(out)[0]["cfg_scale"] == 1.0
    studio.settings.update({"default_cfg_scale": 4.0})
    out = studio.models.follow_checkpoint("flux-dev.safetensors", None, 512, 512, 20, 4.0, "Euler", page_load=True)
    tab = by_tab(out)[0]
    assert "sampling" not in out[0] and "steps" not in tab and "cfg_scale" not in tab and tab["width"] == 1024
    assert tab["distilled_cfg_scale"].visible is True and "DDIM" not in [v for _, v in tab["sampler"].choices]


def test_a_sampler_the_flow_families_refuse_is_replaced(studio, monkeypatch):
    """A chosen DPM++ SDE becomes the Settings' default sampler (if the family takes it, else the
    first) when FLUX is chosen; after a paste, with a note saying so."""
    out = studio.models.follow_checkpoint("flux-dev.safetensors", None, 512, 512, 20, 7.0, "DPM++ SDE")
    assert by_tab(out)[0]["sampler"].value == "Euler"
    studio.settings.update({"default_sampler": "DPM++ 2M"})
    assert by_tab(studio.models.follow_checkpoint("sd3.5-medium", None, 512, 512, 20, 7.0, "DDIM"))[0]["sampler"].value \
        == "DPM++ 2M"
    studio.settings.update({"default_sampler": "UniPC"})
    assert by_tab(studio.models.follow_checkpoint("sd3.5-medium", None, 512, 512, 20, 7.0, "DDIM"))[0]["sampler"].value \
        == "Euler"
    kept = studio.models.follow_checkpoint("flux-dev.safetensors", None, 512, 512, 20, 7.0, "Heun")
    assert by_tab(kept)[0]["sampler"].value == "Heun"
    assert studio.models.sampler_menu("sd15.safetensors", "DPM++ SDE").value == "DPM++ SDE"
    notes = []
    monkeypatch.setattr(gr, "Info", notes.append)
    menu = studio.models.sampler_menu("flux-dev.safetensors", "DPM++ SDE")
    assert menu.value == "Euler" and notes == ["Sampler: DPM++ SDE does not work with flux-dev.safetensors: Euler instead"]


def test_an_unreadable_checkpoint_changes_nothing(studio):
    out = studio.models.follow_checkpoint("gone.safetensors", {"size": [1024, 1024]}, *STOCK, *STOCK)
    assert out[0] == {"size": [1024, 1024]} and by_tab(out) == [{}, {}]
    assert isinstance(studio.models.sampler_menu("gone.safetensors", "Euler"), type(gr.skip()))


def test_the_page_wires_every_tab(tmp_path, studio):
    """Each generation tab has the fields that follow the checkpoint, the slider starts hidden
    (the page load shows it for FLUX.1 dev) and its value still goes into the form."""
    from app.page.build import build_ui

    demo = build_ui(studio.engine, settings=studio.settings, styles=StyleDatabase(tmp_path / "s.csv"))
    for name, tab in demo.studio_tabs.items():
        assert set(FOLLOW_INPUTS) | set(FOLLOW_OUTPUTS) <= set(tab.fields) and "distilled_cfg_scale" in FORM_FIELDS[name]
        assert tab.fields["distilled_cfg_scale"].visible is False
    params = studio.generation.make_params("txt2img", studio.generation.form("txt2img", {"distilled_cfg_scale": 2.5}))
    assert params.distilled_cfg_scale == 2.5


# ------------------------------------------------------------------ the real engine, from the files' headers


@pytest.fixture(scope="module")
def real_engine(tiny_checkpoints, tmp_path_factory):
    from core.engine import Engine
    from tiny_flow_models import SD3_SCHEDULER, flux_components, flux_scheduler, save_flow_folder, save_single_file, \
        sd3_components

    root = tmp_path_factory.mktemp("flow-page") / "models"
    checkpoints = root / "Stable-diffusion"
    for kind, dev in (("dev", True), ("schnell", False)):
        folder = save_flow_folder(root.parent / "build" / kind, flux_components(0, dev=dev), "FluxPipeline",
                                  flux_scheduler(kind))
        save_single_file(folder, checkpoints / f"tiny-flux-{kind}.safetensors")
    save_flow_folder(checkpoints / "tiny-sd3", sd3_components(0, with_t5=False), "StableDiffusion3Pipeline", SD3_SCHEDULER)
    shutil.copy(tiny_checkpoints["safetensors"], checkpoints / "tiny.safetensors")
    (root.parent / "no-extensions").mkdir()
    return Engine(device="cpu", ckpt_dir=checkpoints, output_dir=root.parent / "outputs",
                  hash_cache=root.parent / "hashes.json", models_dir=root, extensions_dir=root.parent / "no-extensions")


@pytest.mark.usefixtures("one_thread")
def test_the_engine_reads_each_familys_defaults_without_loading(real_engine):
    from core.sampling.flow import FLOW_SAMPLERS
    from core.sampling.samplers import SAMPLERS

    flow = list(FLOW_SAMPLERS)
    assert real_engine.generation_defaults("tiny-flux-dev.safetensors") == dict(
        size=1024, steps=20, cfg_scale=1.0, distilled_cfg_scale=True, samplers=flow)
    assert real_engine.generation_defaults("tiny-flux-schnell.safetensors") == dict(
        size=1024, steps=4, cfg_scale=1.0, distilled_cfg_scale=False, samplers=flow)
    assert real_engine.generation_defaults("tiny-sd3") == dict(
        size=1024, steps=28, cfg_scale=5.0, distilled_cfg_scale=False, samplers=flow)
    assert real_engine.generation_defaults("tiny.safetensors") == dict(
        size=512, steps=None, cfg_scale=None, distilled_cfg_scale=False, samplers=list(SAMPLERS))
    assert real_engine.loaded is None  # all of it from the headers
    assert real_engine.default_size("tiny-flux-schnell.safetensors") == 1024 and real_engine.default_size() is None
    assert real_engine.generation_defaults()["samplers"] == list(SAMPLERS)  # nothing loaded: taken as a UNet one
    real_engine.load("tiny.safetensors")
    assert real_engine.generation_defaults() == real_engine.generation_defaults("tiny.safetensors")
