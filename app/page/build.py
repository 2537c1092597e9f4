"""The Gradio page: txt2img, img2img, Inpaint, Super-resolution, Gallery, PNG Info, Styles and
Settings tabs. ``build_ui(engine)`` is the entry point servers import.

The tabs are laid out by app/page/layout/; what their events do is in the area objects of
:class:`app.page.studio.StudioUI`, and the engine (``core``) does the image work. The page uses
only what ``core.engine_protocol.EngineProtocol`` lists, so it can be built (and tested) over
the tests' fake engine.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

# An offline studio must not phone home; set before gradio is imported.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from app.first_run import download_panel  # noqa: E402
from app.forms import SETTING_DEFAULTS, TABS  # noqa: E402
from app.page.layout.extensions import extension_tabs  # noqa: E402
from app.page.layout.gallery import gallery_tab  # noqa: E402
from app.page.layout.generation import JOB, GenerationTab, generation_tab  # noqa: E402
from app.page.layout.pnginfo import pnginfo_tab  # noqa: E402
from app.page.layout.send import SendTo, picture_and_text  # noqa: E402
from app.page.layout.settings import settings_tab  # noqa: E402
from app.page.layout.styles import styles_tab, wire_styles  # noqa: E402
from app.page.layout.superres import superres_tab  # noqa: E402
from core.engine_protocol import EngineProtocol  # noqa: E402
from app.page.models import FOLLOW_INPUTS, FOLLOW_OUTPUTS, sampler_choices  # noqa: E402
from app.page.studio import StudioUI  # noqa: E402
from app.settings import Settings  # noqa: E402
from app.styles import StyleDatabase  # noqa: E402

TITLE = "Stable Diffusion Studio"
STATIC = Path(__file__).resolve().parent.parent / "static"
TAB_LABELS = {"txt2img": "txt2img", "img2img": "img2img", "inpaint": "Inpaint"}


def page_assets() -> dict[str, str]:
    """The page's CSS, its keyboard script, and ``load_js``: both as one function the browser
    runs when the page loads. They travel with the Blocks this way, however it is served
    (``launch()``, or ``gr.mount_gradio_app`` which drops css/head given to Blocks)."""
    css = (STATIC / "studio.css").read_text(encoding="utf-8")
    script = (STATIC / "studio.js").read_text(encoding="utf-8")
    script += "\n" + (STATIC / "extranet.js").read_text(encoding="utf-8")  # extra-network cards, token counters
    load_js = (
        "() => {\n"
        f"  const css = {json.dumps(css)};\n"
        "  if (!document.getElementById('studio-style')) {\n"
        "    const style = document.createElement('style');\n"
        "    style.id = 'studio-style';\n"
        "    style.textContent = css;\n"
        "    document.head.appendChild(style);\n"
        "  }\n"
        f"{script}\n"
        "}"
    )
    return {"css": css, "script": script, "load_js": load_js}


def build_ui(engine: EngineProtocol, settings: Settings | None = None,
             styles: StyleDatabase | None = None, served_roots: list[Path] | None = None,
             allowed_dirs: list[Path] | None = None) -> gr.Blocks:
    """The page. ``served_roots``: the folders the server serves images from (the page saves
    only inside them); ``allowed_dirs``: the folders super-resolution batches may use (see
    StudioUI)."""
    ui = StudioUI(engine, settings=settings, styles=styles, served_roots=served_roots,
                  allowed_dirs=allowed_dirs)
    ui.outputs.create_root()
    samplers, schedules = sampler_choices()
    defaults = ui.styles_settings.page_defaults()
    demo = gr.Blocks(title=TITLE, analytics_enabled=False)
    tabs = {name: GenerationTab(name) for name in TABS}
    with demo:
        header = _model_header(demo, ui)
        with gr.Tabs(elem_id="tabs") as tab_bar:
            for name, tab in tabs.items():
                with gr.Tab(TAB_LABELS[name], id=name, elem_id=f"tab_{name}"):
                    generation_tab(ui, tab, header["checkpoint"], samplers, schedules, defaults)
            with gr.Tab("Super-resolution", id="extras", elem_id="tab_extras"):
                extras = superres_tab(ui, ui.models.upscalers())
            with gr.Tab("Gallery", id="gallery", elem_id="tab_gallery") as gallery_page:
                browse = gallery_tab(ui)
            open_gallery, open_inputs, open_outputs = browse["open"]
            gallery_page.select(open_gallery, inputs=open_inputs, outputs=open_outputs, concurrency_limit=None,
                                show_progress="hidden")
            with gr.Tab("PNG Info", id="pnginfo", elem_id="tab_pnginfo"):
                pnginfo = pnginfo_tab(ui)
            with gr.Tab("Styles", id="styles", elem_id="tab_styles"):
                style_editor = styles_tab(ui)
            with gr.Tab("Settings", id="settings", elem_id="tab_settings"):
                settings_components = settings_tab(demo, ui, samplers, schedules)
            extensions = extension_tabs(ui)
        _wire_send_to(ui, SendTo(ui, tab_bar, tabs, extras), tabs, extras, browse, pnginfo, extensions)
        wire_styles(ui, list(tabs.values()), style_editor)
        _wire_page_load(demo, ui, header, tabs, extras)
        _wire_checkpoint_cards(ui, header, tabs)
    demo.studio = ui  # handy for tests and scripting
    demo.studio_tabs = tabs
    demo.studio_settings_components = settings_components
    return demo


def _model_header(demo: gr.Blocks, ui: StudioUI) -> dict[str, Any]:
    """The checkpoint dropdown, its refresh button and status line, and the download offer;
    -> "checkpoint", "status" and "refreshed" (the refresh event, for what follows it)."""
    checkpoints = ui.models.checkpoints()
    with gr.Row(equal_height=True):
        checkpoint = gr.Dropdown(
            choices=ui.models.checkpoint_choices(), value=checkpoints[0] if checkpoints else None,
            label="Checkpoint",
            info=None if checkpoints else "No checkpoints found: put .safetensors files in models/Stable-diffusion",
            scale=6, elem_id="checkpoint",
        )
        vae = _vae_menu(ui)
        refresh = gr.Button("↻", scale=0, elem_classes="studio-tool", elem_id="refresh_checkpoints")
    status = gr.HTML(ui.models.model_status(), elem_id="checkpoint_status")
    _wire_vae_menu(demo, ui, vae, refresh, status)
    # Choosing a checkpoint loads it at once (after a running job), with its progress.
    checkpoint.change(ui.models.load_checkpoint, inputs=[checkpoint], outputs=[status], concurrency_id=JOB,
                      concurrency_limit=1, show_progress="hidden")
    refreshed = refresh.click(ui.models.refresh_checkpoints, inputs=[checkpoint], outputs=[checkpoint],
                              api_name="refresh_checkpoints", concurrency_limit=None, show_progress="hidden")
    download_notice, model_offer = download_panel(ui.models, checkpoint)
    demo.load(model_offer.notice, outputs=[download_notice])
    return {"checkpoint": checkpoint, "status": status, "refreshed": refreshed}


def _vae_menu(ui: StudioUI) -> gr.Dropdown:
    """A1111's SD VAE menu beside the checkpoint: Automatic, None and the files in models/VAE."""
    choices = ui.models.vae_choices()
    saved = ui.settings["sd_vae"]
    # min_width: on a phone the menu wraps below the checkpoint instead of cutting its name short
    return gr.Dropdown(choices=choices, value=saved if saved in choices else choices[0], label="SD VAE", scale=2,
                       min_width=240, elem_id="sd_vae")


def _wire_vae_menu(demo: gr.Blocks, ui: StudioUI, vae: gr.Dropdown, refresh: gr.Button, status: gr.HTML) -> None:
    # Applied at once (after a running job); the refresh button and every page load list the files anew.
    vae.change(ui.models.change_vae, inputs=[vae], outputs=[status], concurrency_id=JOB, concurrency_limit=1,
               show_progress="hidden")
    refresh.click(ui.models.refresh_vaes, outputs=[vae], concurrency_limit=None, show_progress="hidden")
    demo.load(ui.models.refresh_vaes, outputs=[vae], concurrency_limit=None, show_progress="hidden")


def _wire_checkpoint_cards(ui: StudioUI, header: dict[str, Any], tabs: dict[str, GenerationTab]) -> None:
    """A Checkpoints card clicked in a tab's extra networks loads it, with its progress in the status line."""
    for tab in tabs.values():
        tab.tools["extranet_picked"].then(ui.models.load_picked_checkpoint, inputs=[tab.tools["picked_checkpoint"]],
                                          outputs=[header["status"]], concurrency_id=JOB, concurrency_limit=1,
                                          show_progress="hidden")


def _wire_send_to(ui: StudioUI, send: SendTo, tabs: dict[str, GenerationTab], extras: dict[str, Any],
                  browse: dict[str, Any], pnginfo: dict[str, Any], extensions: list[dict[str, Any]]) -> None:
    """Every send-to button: extension tabs', each results gallery's, the Gallery's and PNG Info's."""
    for components in extensions:
        send.wire_extension(components)
    for tab in tabs.values():
        send.wire_all(tab.send, [tab.items, tab.selected], ui.generation.sent_result)
    send.wire_all(extras["send"], [extras["items"], extras["selected"]], ui.generation.sent_result)
    send.wire_all(browse["send"], [browse["path"], browse["info"]], picture_and_text)
    send.wire_all(pnginfo["send"], [pnginfo["image"], pnginfo["parameters"]], picture_and_text)


def _wire_page_load(demo: gr.Blocks, ui: StudioUI, header: dict[str, Any], tabs: dict[str, GenerationTab],
                    extras: dict[str, Any]) -> None:
    """On every page load: the current defaults, models and styles; and the fields that follow
    the checkpoint (Models.follow_checkpoint: size, steps, CFG scale, the Distilled CFG Scale
    slider, the samplers) follow it while the user leaves them."""
    checkpoint = header["checkpoint"]
    defaulted = [(tab.fields[name], name) for tab in tabs.values() for name in SETTING_DEFAULTS if name in tab.fields]
    pickers = [tab.fields["styles"] for tab in tabs.values()]
    refiners = [tab.fields["refiner_checkpoint"] for tab in tabs.values()]
    for refiner in refiners:
        header["refreshed"].then(ui.models.refresh_refiners, inputs=[refiner], outputs=[refiner],
                                 show_progress="hidden")
    following = [tab.fields[key] for tab in tabs.values() for key in FOLLOW_INPUTS]
    followers = [tab.fields[key] for tab in tabs.values() for key in FOLLOW_OUTPUTS]
    followed = gr.State(None)  # what the page last put into the fields that follow the checkpoint
    checkpoint.change(ui.models.follow_checkpoint, inputs=[checkpoint, followed, *following],
                      outputs=[followed, *followers], concurrency_limit=None, show_progress="hidden")

    def follow_on_load(name, page_set, *values):
        return ui.models.follow_checkpoint(name, page_set, *values, page_load=True)

    demo.load(None, js=page_assets()["load_js"])
    demo.load(ui.models.watch_model, outputs=[header["status"]], concurrency_limit=None, show_progress="hidden")
    demo.load(lambda: ui.page_load([key for _, key in defaulted], len(pickers), len(refiners)),
              outputs=[*(c for c, _ in defaulted), checkpoint, *pickers, tabs["txt2img"].fields["hr_upscaler"],
                       extras["upscaler"], *refiners],
              concurrency_limit=None, show_progress="hidden").then(
        follow_on_load, inputs=[checkpoint, followed, *following], outputs=[followed, *followers],
        show_progress="hidden").then(
        None, js="() => { window.studioPageReady = true; }")
