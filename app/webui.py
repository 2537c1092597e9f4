"""The Gradio page: txt2img, img2img, Inpaint, Super-resolution, Gallery, PNG Info, Styles and
Settings tabs.

This module only lays the page out and wires events; what each event does is in
``app/studio.py`` (``StudioUI``), and the engine (``core``) does the image work. ``core`` is
imported lazily so the page can be built (and tested) with any object that offers the same
methods as the engine. ``build_ui(engine)`` is the entry point servers import.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

# An offline studio must not phone home; set before gradio is imported.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from app.first_run import download_panel  # noqa: E402
from app.settings import CHECKPOINTS, DEFAULTS, OPTIONS, SAVING, Settings  # noqa: E402
from app.studio import (  # noqa: E402,F401  (re-exported for servers and tests)
    FILL_MODES,
    FORM_FIELDS,
    INPAINT_AREAS,
    INPAINT_SOURCES,
    MASK_MODES,
    NO_REFINER,
    OUTPAINT_DIRECTIONS,
    RESIZE_MODES,
    SAME,
    StudioUI,
    error_message,
    sampler_choices,
)
from app.styles import StyleDatabase  # noqa: E402

log = logging.getLogger(__name__)

TITLE = "Stable Diffusion Studio"
STATIC = Path(__file__).resolve().parent / "static"
JOB = "studio-job"  # concurrency group: jobs on the device run one at a time
GENERATION_TABS = ("txt2img", "img2img", "inpaint")
# form fields that "send to" never fills from an infotext (pictures, per-tab choices)
_NOT_FROM_TEXT = {"styles", "init_image", "editor", "inpaint_image", "inpaint_mask", "inpaint_source",
                  "outpaint_directions", "outpaint_pixels", "resize_mode"}


def page_assets() -> dict[str, str]:
    """The page's CSS, its keyboard script, and ``load_js``: both as one function the browser
    runs when the page loads. They travel with the Blocks this way, however it is served
    (``launch()``, or ``gr.mount_gradio_app`` which drops css/head given to Blocks)."""
    css = (STATIC / "studio.css").read_text(encoding="utf-8")
    script = (STATIC / "studio.js").read_text(encoding="utf-8")
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


class _Tab:
    """The components of one generation tab, by form field name, plus its result widgets."""

    def __init__(self, name: str):
        self.name = name
        self.fields: dict[str, Any] = {}
        self.gallery: Any = None
        self.info: Any = None
        self.log: Any = None
        self.progress: Any = None
        self.items: Any = None  # gr.State: [{"path", "infotext", "seed"}]
        self.selected: Any = None  # gr.State: index picked in the gallery
        self.generate: Any = None
        self.send: dict[str, Any] = {}

    def inputs(self) -> list[Any]:
        return [self.fields[name] for name in FORM_FIELDS[self.name]]


def build_ui(engine: Any, params_cls: Callable[..., Any] | None = None, settings: Settings | None = None,
             styles: StyleDatabase | None = None, served_roots: list[Path] | None = None,
             allowed_dirs: list[Path] | None = None) -> gr.Blocks:
    """The page. ``served_roots``: the folders the server serves images from (the page saves
    only inside them); ``allowed_dirs``: the folders super-resolution batches may use (see
    StudioUI)."""
    ui = StudioUI(engine, params_cls, settings=settings, styles=styles, served_roots=served_roots,
                  allowed_dirs=allowed_dirs)
    try:
        ui.output_root().mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # saving says so at the first job; the page still comes up
        log.warning("cannot create the output folder %s: %s", ui.output_root(), exc)
    checkpoints = ui.checkpoints()
    checkpoint_choices = ui.checkpoint_choices()
    samplers, schedules = sampler_choices()
    upscalers = ui.upscalers()
    defaults = ui.page_defaults()
    assets = page_assets()

    demo = gr.Blocks(title=TITLE, analytics_enabled=False)

    tabs: dict[str, _Tab] = {name: _Tab(name) for name in GENERATION_TABS}
    with demo:
        with gr.Row(equal_height=True):
            checkpoint = gr.Dropdown(
                choices=checkpoint_choices, value=checkpoints[0] if checkpoints else None, label="Checkpoint",
                info=None if checkpoints else "No checkpoints found: put .safetensors files in models/Stable-diffusion",
                scale=6, elem_id="checkpoint",
            )
            refresh = gr.Button("↻", scale=0, elem_classes="studio-tool", elem_id="refresh_checkpoints")
        model_status = gr.HTML(ui.model_status(), elem_id="checkpoint_status")
        # Choosing a checkpoint loads it at once (after a running job), with its progress.
        checkpoint.change(ui.load_checkpoint, inputs=[checkpoint], outputs=[model_status], concurrency_id=JOB,
                          concurrency_limit=1, show_progress="hidden")
        refreshed = refresh.click(ui.refresh_checkpoints, inputs=[checkpoint], outputs=[checkpoint],
                                  api_name="refresh_checkpoints", concurrency_limit=None, show_progress="hidden")
        download_notice, model_offer = download_panel(ui, checkpoint)
        demo.load(model_offer.notice, outputs=[download_notice])

        with gr.Tabs(elem_id="tabs") as tab_bar:
            for name, label in (("txt2img", "txt2img"), ("img2img", "img2img"), ("inpaint", "Inpaint")):
                with gr.Tab(label, id=name, elem_id=f"tab_{name}"):
                    _generation_tab(ui, tabs[name], checkpoint, samplers, schedules, defaults)
            with gr.Tab("Super-resolution", id="extras", elem_id="tab_extras"):
                extras = _extras_tab(ui, upscalers)
            with gr.Tab("Gallery", id="gallery", elem_id="tab_gallery") as gallery_tab:
                browse = _gallery_tab(ui)
            open_gallery, open_inputs, open_outputs = browse["open"]
            gallery_tab.select(open_gallery, inputs=open_inputs, outputs=open_outputs, concurrency_limit=None,
                               show_progress="hidden")
            with gr.Tab("PNG Info", id="pnginfo", elem_id="tab_pnginfo"):
                pnginfo = _pnginfo_tab(ui)
            with gr.Tab("Styles", id="styles", elem_id="tab_styles"):
                style_editor = _styles_tab(ui)
            with gr.Tab("Settings", id="settings", elem_id="tab_settings"):
                settings_components = _settings_tab(demo, ui, samplers, schedules)
            extension_tabs = _extension_tabs(engine)

        # ---- send-to: results, gallery and PNG info feed the tabs
        def targets() -> dict[str, tuple[list[Any], Callable[[str | None, str], list[Any]]]]:
            out = {}
            for name in GENERATION_TABS:
                tab = tabs[name]
                field_names = [f for f in FORM_FIELDS[name] if f not in _NOT_FROM_TEXT]
                components = [tab.fields[f] for f in field_names]
                picture = {"txt2img": [], "img2img": ["init_image"], "inpaint": ["editor", "inpaint_image"]}[name]
                picture = [tab.fields[p] for p in picture]

                def fill(path, infotext, name=name, field_names=field_names, picture=picture):
                    values, notes = ui.field_updates(name, infotext, field_names)
                    if notes:
                        gr.Info("; ".join(notes[:4]))
                    pics = []
                    if name == "img2img":
                        pics = [path] if path else [gr.skip()]
                    elif name == "inpaint":
                        pics = ([{"background": path, "layers": [], "composite": path}, path] if path
                                else [gr.skip(), gr.skip()])
                    return [gr.Tabs(selected=name), *pics, *values]

                out[name] = ([tab_bar, *picture, *components], fill)
            out["extras"] = ([tab_bar, extras["image"], extras["mode"]],
                             lambda path, infotext: [gr.Tabs(selected="extras"),
                                                     path if path else gr.skip(), "Single image"])
            return out

        send_targets = targets()

        def wire_send(button: Any, target: str, source_inputs: list[Any],
                      resolve: Callable[..., tuple[str | None, str]]) -> None:
            outputs, fill = send_targets[target]

            def handler(*values):
                path, infotext = resolve(*values)
                if not path and not infotext:
                    raise gr.Error("Nothing to send: make or pick an image first", print_exception=False)
                return fill(path, infotext or "")

            button.click(handler, inputs=source_inputs, outputs=outputs, concurrency_limit=None,
                         show_progress="hidden")

        for components in extension_tabs:
            # An extension tab may offer send-to buttons next to an infotext and an image path.
            for key, target in (("send_txt2img", "txt2img"), ("send_img2img", "img2img")):
                if key in components and "infotext" in components:
                    sources = [components.get("image") or components["infotext"], components["infotext"]]
                    if "image" in components:
                        # the path comes from a hidden text box, which a request can fill with any
                        # path: only an image inside the served folders is passed on
                        wire_send(components[key], target, sources,
                                  lambda path, info: (ui.served_image(path), info))
                    else:
                        wire_send(components[key], target, [components["infotext"]], lambda info: (None, info))

        def from_results(items, index):
            item = ui.selected_item(items, index)
            return (item["path"] or item.get("image"), item["infotext"]) if item else (None, "")

        for name in GENERATION_TABS:
            tab = tabs[name]
            for target, button in tab.send.items():
                wire_send(button, target, [tab.items, tab.selected], from_results)
        for target, button in extras["send"].items():
            wire_send(button, target, [extras["items"], extras["selected"]], from_results)
        for target, button in browse["send"].items():
            wire_send(button, target, [browse["path"], browse["info"]], lambda path, info: (path or None, info))
        for target, button in pnginfo["send"].items():
            wire_send(button, target, [pnginfo["image"], pnginfo["parameters"]],
                      lambda path, info: (path or None, info))

        # ---- styles: every tab's multi-select follows the file
        style_dropdowns = [tabs[n].fields["styles"] for n in GENERATION_TABS]

        def style_choices():
            names = ui.styles.names()
            return [gr.Dropdown(choices=names) for _ in style_dropdowns] + [gr.Dropdown(choices=names)]

        for name in GENERATION_TABS:
            tab = tabs[name]
            tab.save_style.click(ui.save_style, inputs=[tab.style_name, tab.fields["prompt"],
                                                        tab.fields["negative_prompt"]],
                                 outputs=[tab.log], concurrency_limit=None).then(
                style_choices, outputs=[*style_dropdowns, style_editor["pick"]])
        style_editor["save"].click(
            ui.save_style, inputs=[style_editor["name"], style_editor["prompt"], style_editor["negative"]],
            outputs=[style_editor["status"]], concurrency_limit=None,
        ).then(style_choices, outputs=[*style_dropdowns, style_editor["pick"]])
        style_editor["delete"].click(ui.delete_style, inputs=[style_editor["pick"]], outputs=[style_editor["status"]],
                                     concurrency_limit=None).then(
            style_choices, outputs=[*style_dropdowns, style_editor["pick"]])

        def reload_styles():
            ui.styles.reload()
            note = ui.styles.warning or f"{len(ui.styles.names())} style(s) from {ui.styles.path}"
            return [*style_choices(), note]

        style_editor["refresh"].click(reload_styles, outputs=[*style_dropdowns, style_editor["pick"],
                                                              style_editor["status"]], concurrency_limit=None)

        # ---- on every page load: the current defaults, models and styles
        default_targets = []
        for name in GENERATION_TABS:
            for key in ("sampler", "scheduler", "steps", "cfg_scale", "width", "height"):
                default_targets.append((tabs[name].fields[key], key))
            if name != "txt2img":
                default_targets.append((tabs[name].fields["denoising_strength"], "denoising_strength"))

        def on_load():
            values = ui.page_defaults()
            current = ui.current_checkpoint()  # the dropdown shows the model loaded (or loading)
            ups = ui.upscalers()
            return [
                *[values[key] for _, key in default_targets],
                gr.Dropdown(choices=ui.checkpoint_choices(), **({"value": current} if current else {})),
                *[gr.Dropdown(choices=ui.styles.names()) for _ in style_dropdowns],
                gr.Dropdown(choices=ui.hires_upscalers()),
                gr.Dropdown(choices=ups, value=extras_default(ups)),
                *[gr.Dropdown(choices=ui.refiner_choices()) for _ in refiners],
            ]

        # ---- width and height follow the checkpoint's native size while the user leaves them
        refiners = [tabs[n].fields["refiner_checkpoint"] for n in GENERATION_TABS]
        for refiner in refiners:
            refreshed.then(ui.refresh_refiners, inputs=[refiner], outputs=[refiner], show_progress="hidden")
        sizes = [tabs[n].fields[k] for n in GENERATION_TABS for k in ("width", "height")]
        page_size = gr.State(None)  # the native size the page last put into the size fields
        checkpoint.change(ui.follow_checkpoint_size, inputs=[checkpoint, page_size, *sizes],
                          outputs=[page_size, *sizes], concurrency_limit=None, show_progress="hidden")

        def follow_on_load(name, page_set, *values):
            return ui.follow_checkpoint_size(name, page_set, *values, page_load=True)

        demo.load(None, js=assets["load_js"])
        demo.load(ui.watch_model, outputs=[model_status], concurrency_limit=None, show_progress="hidden")
        demo.load(on_load, outputs=[*[c for c, _ in default_targets], checkpoint, *style_dropdowns,
                                    tabs["txt2img"].fields["hr_upscaler"], extras["upscaler"], *refiners],
                  concurrency_limit=None, show_progress="hidden").then(
            follow_on_load, inputs=[checkpoint, page_size, *sizes], outputs=[page_size, *sizes],
            show_progress="hidden").then(
            None, js="() => { window.studioPageReady = true; }")

    demo.studio = ui  # handy for tests and scripting
    demo.studio_tabs = tabs
    demo.studio_settings_components = settings_components
    return demo


def _extension_tabs(engine: Any) -> list[dict[str, Any]]:
    """One tab per UI function an enabled extension registered (``api.add_ui_tab``). A tab that
    fails to build shows the error instead and the rest of the page is unaffected."""
    built = []
    registry = getattr(engine, "extensions", None)
    for extension in registry.enabled() if registry is not None else []:
        for build in extension.ui_tabs:
            title = getattr(build, "title", extension.name)
            with gr.Tab(title, id=f"ext_{extension.name}", elem_id=f"tab_ext_{extension.name}"):
                try:
                    components = build(engine)
                except Exception as exc:  # noqa: BLE001 - one extension must not break the page
                    log.exception("extension %s: its tab failed to build", extension.name)
                    gr.Markdown(f"**{extension.name}** could not build its tab: `{type(exc).__name__}: {exc}`")
                    continue
            if isinstance(components, dict):
                built.append(components)
    return built


def extras_default(upscalers: list[str]) -> str | None:
    if "Lanczos" in upscalers:
        return "Lanczos"
    return upscalers[0] if upscalers else None


def _tool(label: str, elem_id: str) -> gr.Button:
    wide = len(label) > 2
    return gr.Button(label, elem_id=elem_id, elem_classes="studio-tool-wide" if wide else "studio-tool", scale=0,
                     min_width=70 if wide else 40, size="sm" if wide else "lg")


def _generation_tab(ui: StudioUI, tab: _Tab, checkpoint: Any, samplers: list[str], schedules: list[str],
                    defaults: dict[str, Any]) -> None:
    name = tab.name
    f = tab.fields
    f["checkpoint"] = checkpoint
    with gr.Row():
        with gr.Column(scale=6):
            f["prompt"] = gr.Textbox(label="Prompt", lines=3, elem_id=f"{name}_prompt",
                                     placeholder="Prompt (Ctrl+Enter to generate, Ctrl+Up/Down to change a word's weight)")
            f["negative_prompt"] = gr.Textbox(label="Negative prompt", lines=2, elem_id=f"{name}_neg_prompt",
                                              placeholder="Negative prompt")
        with gr.Column(scale=2, min_width=220):
            tab.generate = gr.Button("Generate", variant="primary", elem_id=f"{name}_generate")
            with gr.Row():
                interrupt = gr.Button("Interrupt", elem_id=f"{name}_interrupt", size="sm")
                skip = gr.Button("Skip", elem_id=f"{name}_skip", size="sm")
            f["styles"] = gr.Dropdown(choices=ui.styles.names(), value=[], multiselect=True, label="Styles",
                                      elem_id=f"{name}_styles")
            with gr.Row():
                apply_styles = gr.Button("Apply styles to prompt", size="sm", elem_id=f"{name}_apply_styles")
            with gr.Accordion("Save prompt as a style", open=False):
                tab.style_name = gr.Textbox(label="Style name", elem_id=f"{name}_style_name")
                tab.save_style = gr.Button("Save style", size="sm", elem_id=f"{name}_save_style")

    with gr.Accordion("LoRA", open=False, elem_id=f"{name}_lora"):
        with gr.Row():
            lora_search = gr.Textbox(label="Search", scale=4, elem_id=f"{name}_lora_search")
            lora_weight = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Weight", scale=2)
            lora_refresh = _tool("↻", f"{name}_lora_refresh")
        lora_cards = gr.Gallery(value=ui.lora_cards(""), label="Click a card to add its tag to the prompt", columns=8,
                                height=200, allow_preview=False, elem_id=f"{name}_lora_cards")
    lora_search.change(ui.lora_cards, inputs=lora_search, outputs=lora_cards, show_progress="hidden")
    lora_refresh.click(ui.lora_cards, inputs=lora_search, outputs=lora_cards, show_progress="hidden")

    def add_lora(prompt, query, weight, evt: gr.SelectData):
        entries = ui.lora_entries(query)
        if evt.index is None or not 0 <= int(evt.index) < len(entries):
            return prompt
        return ui.insert_lora(prompt, entries[int(evt.index)][0], weight)

    lora_cards.select(add_lora, inputs=[f["prompt"], lora_search, lora_weight], outputs=f["prompt"], show_progress="hidden")

    with gr.Row():
        with gr.Column(scale=1):
            if name == "img2img":
                f["init_image"] = gr.Image(label="Input image", type="pil", image_mode=None, height=360,
                                           sources=["upload", "clipboard"], elem_id="img2img_image")
                f["resize_mode"] = gr.Radio(list(RESIZE_MODES), value=RESIZE_MODES[0], label="Resize mode",
                                            elem_id="img2img_resize_mode")
            if name == "inpaint":
                _inpaint_inputs(f)
            with gr.Row():
                f["sampler"] = gr.Dropdown(choices=samplers, value=defaults["sampler"], label="Sampler",
                                           elem_id=f"{name}_sampler")
                f["scheduler"] = gr.Dropdown(choices=schedules, value=defaults["scheduler"], label="Schedule type",
                                             elem_id=f"{name}_scheduler")
            f["steps"] = gr.Slider(1, 150, value=defaults["steps"], step=1, label="Sampling steps",
                                   elem_id=f"{name}_steps")
            with gr.Row(equal_height=True):
                with gr.Column(scale=6):
                    f["width"] = gr.Slider(64, 2048, value=defaults["width"], step=8, label="Width",
                                           elem_id=f"{name}_width")
                    f["height"] = gr.Slider(64, 2048, value=defaults["height"], step=8, label="Height",
                                            elem_id=f"{name}_height")
                with gr.Column(scale=0, min_width=48):
                    swap = _tool("⇅", f"{name}_swap_size")
                    from_image = _tool("⤢", f"{name}_size_from_image") if name != "txt2img" else None
                with gr.Column(scale=3, min_width=120):
                    f["batch_count"] = gr.Slider(1, 100, value=1, step=1, label="Batch count",
                                                 elem_id=f"{name}_batch_count")
                    f["batch_size"] = gr.Slider(1, 8, value=1, step=1, label="Batch size",
                                                elem_id=f"{name}_batch_size")
            f["cfg_scale"] = gr.Slider(1.0, 30.0, value=defaults["cfg_scale"], step=0.5, label="CFG scale",
                                       elem_id=f"{name}_cfg_scale")
            if name != "txt2img":
                f["denoising_strength"] = gr.Slider(0.0, 1.0, value=defaults["denoising_strength"], step=0.01,
                                                    label="Denoising strength", elem_id=f"{name}_denoising_strength")
            with gr.Row(equal_height=True):
                f["seed"] = gr.Number(value=-1, precision=0, label="Seed (-1 = random)", elem_id=f"{name}_seed",
                                      scale=6)
                dice = _tool("Random", f"{name}_random_seed")
                reuse = _tool("Reuse", f"{name}_reuse_seed")
            with gr.Accordion("Variation seed", open=False, elem_id=f"{name}_variation"):
                with gr.Row():
                    f["subseed"] = gr.Number(value=-1, precision=0, label="Variation seed", elem_id=f"{name}_subseed")
                    f["subseed_strength"] = gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="Variation strength",
                                                      elem_id=f"{name}_subseed_strength")
            f["clip_skip"] = gr.Slider(1, 12, value=1, step=1, label="Clip skip", elem_id=f"{name}_clip_skip")
            if name == "txt2img":
                _hires_inputs(ui, f, samplers, schedules)
            _refiner_inputs(ui, f, name)
            if name == "inpaint":
                _inpaint_options(f)

        with gr.Column(scale=1):
            tab.progress = gr.HTML("", elem_id=f"{name}_progress")
            tab.gallery = gr.Gallery(label="Output", format="png", columns=2, object_fit="contain", height=480,
                                     elem_id=f"{name}_gallery", buttons=["download", "fullscreen"])
            with gr.Row(elem_classes="studio-actions"):
                for target, label in (("img2img", "→ img2img"), ("inpaint", "→ Inpaint"),
                                      ("extras", "→ Super-resolution")):
                    tab.send[target] = gr.Button(label, size="sm", elem_id=f"{name}_send_to_{target}")
            tab.info = gr.Textbox(label="Generation info", lines=4, interactive=False, elem_id=f"{name}_info",
                                  buttons=["copy"])
            tab.log = gr.HTML("", elem_id=f"{name}_log")
            tab.items = gr.State([])
            tab.selected = gr.State(0)

    # ---- events
    outputs = [tab.gallery, tab.info, tab.log, tab.progress, tab.items]

    def run(*values, _name=name):
        yield from ui.stream(_name, values)

    tab.generate.click(run, inputs=tab.inputs(), outputs=outputs, api_name=name, concurrency_id=JOB,
                       concurrency_limit=1, show_progress="minimal").then(
        lambda: 0, outputs=[tab.selected], show_progress="hidden")
    interrupt.click(ui.interrupt, concurrency_limit=None, show_progress="hidden", api_name=f"{name}_interrupt")
    skip.click(ui.skip, concurrency_limit=None, show_progress="hidden", api_name=f"{name}_skip")
    swap.click(lambda w, h: (h, w), inputs=[f["width"], f["height"]], outputs=[f["width"], f["height"]],
               concurrency_limit=None, show_progress="hidden")
    dice.click(lambda: -1, outputs=[f["seed"]], concurrency_limit=None, show_progress="hidden")
    reuse.click(ui.reuse_seed, inputs=[tab.items, tab.selected], outputs=[f["seed"]], concurrency_limit=None,
                show_progress="hidden")
    apply_styles.click(ui.apply_styles_to_prompt, inputs=[f["styles"], f["prompt"], f["negative_prompt"]],
                       outputs=[f["prompt"], f["negative_prompt"], f["styles"]], concurrency_limit=None,
                       show_progress="hidden")

    def picked(items, evt: gr.SelectData):
        index = evt.index if isinstance(evt.index, int) else 0
        return index, ui.select_result(items, index)

    tab.gallery.select(picked, inputs=[tab.items], outputs=[tab.selected, tab.info], concurrency_limit=None,
                       show_progress="hidden")
    if from_image is not None:
        source = f["init_image"] if name == "img2img" else f["editor"]

        def size_of(value):
            from app.studio import editor_image_and_mask

            if value is None:
                raise gr.Error("Upload an image first", print_exception=False)
            image = editor_image_and_mask(value)[0] if isinstance(value, dict) else value
            return max(64, round(image.width / 8) * 8), max(64, round(image.height / 8) * 8)

        from_image.click(size_of, inputs=[source], outputs=[f["width"], f["height"]], concurrency_limit=None,
                         show_progress="hidden")


def _hires_inputs(ui: StudioUI, f: dict[str, Any], samplers: list[str], schedules: list[str]) -> None:
    hires_choices = ui.hires_upscalers()
    with gr.Accordion("Hires. fix", open=False, elem_id="txt2img_hires"):
        f["enable_hr"] = gr.Checkbox(False, label="Enable hires. fix", elem_id="txt2img_enable_hr")
        with gr.Row():
            f["hr_upscaler"] = gr.Dropdown(choices=hires_choices, value="Latent", label="Upscaler",
                                           elem_id="txt2img_hr_upscaler")
            f["hr_second_pass_steps"] = gr.Slider(0, 150, value=0, step=1, label="Hires steps (0 = same)",
                                                  elem_id="txt2img_hires_steps")
            f["hr_denoising_strength"] = gr.Slider(0.0, 1.0, value=0.7, step=0.01, label="Denoising strength",
                                                   elem_id="txt2img_hr_denoising_strength")
        with gr.Row():
            f["hr_scale"] = gr.Slider(1.0, 4.0, value=2.0, step=0.05, label="Upscale by", elem_id="txt2img_hr_scale")
            f["hr_resize_x"] = gr.Slider(0, 4096, value=0, step=8, label="Resize width to (0 = by scale)",
                                         elem_id="txt2img_hr_resize_x")
            f["hr_resize_y"] = gr.Slider(0, 4096, value=0, step=8, label="Resize height to (0 = by scale)",
                                         elem_id="txt2img_hr_resize_y")
        with gr.Row():
            f["hr_sampler_name"] = gr.Dropdown(choices=[SAME, *samplers], value=SAME, label="Hires sampler",
                                               elem_id="txt2img_hr_sampler")
            f["hr_scheduler"] = gr.Dropdown(choices=[SAME, *schedules], value=SAME, label="Hires schedule type",
                                            elem_id="txt2img_hr_scheduler")
        f["hr_prompt"] = gr.Textbox(label="Hires prompt (empty = the same)", lines=1, elem_id="txt2img_hr_prompt")
        f["hr_negative_prompt"] = gr.Textbox(label="Hires negative prompt (empty = the same)", lines=1,
                                             elem_id="txt2img_hr_neg_prompt")


def _refiner_inputs(ui: StudioUI, f: dict[str, Any], name: str) -> None:
    with gr.Accordion("Refiner", open=False, elem_id=f"{name}_refiner"):
        with gr.Row():
            f["refiner_checkpoint"] = gr.Dropdown(
                choices=ui.refiner_choices(), value=NO_REFINER, label="Refiner checkpoint",
                info="takes over for the last steps (SDXL: the refiner); None: no refiner",
                elem_id=f"{name}_refiner_checkpoint", scale=3)
            f["refiner_switch_at"] = gr.Slider(0.01, 1.0, value=0.8, step=0.01, label="Switch at",
                                               info="fraction of the denoising done before it takes over; 1: never",
                                               elem_id=f"{name}_refiner_switch_at", scale=2)


def _inpaint_inputs(f: dict[str, Any]) -> None:
    f["inpaint_source"] = gr.Radio(list(INPAINT_SOURCES), value=INPAINT_SOURCES[0], label="Mask",
                                   elem_id="inpaint_source")
    with gr.Group(visible=True) as paint_group:
        f["editor"] = gr.ImageEditor(
            label="Image — paint over what to repaint", type="pil", image_mode="RGBA", height=420,
            sources=["upload", "clipboard"], layers=False, transforms=(),
            brush=gr.Brush(default_size=24, colors=["#ffffff"], default_color="#ffffff", color_mode="fixed"),
            eraser=gr.Eraser(default_size=24), elem_id="inpaint_editor",
        )
    with gr.Group(visible=False) as upload_group:
        with gr.Row():
            f["inpaint_image"] = gr.Image(label="Image", type="pil", image_mode=None, sources=["upload", "clipboard"],
                                          elem_id="inpaint_image", height=300)
            f["inpaint_mask"] = gr.Image(label="Mask (white = repaint)", type="pil", image_mode=None,
                                         sources=["upload", "clipboard"], elem_id="inpaint_mask", height=300)
    f["inpaint_source"].change(
        lambda source: (gr.Group(visible=source == INPAINT_SOURCES[0]), gr.Group(visible=source != INPAINT_SOURCES[0])),
        inputs=[f["inpaint_source"]], outputs=[paint_group, upload_group], concurrency_limit=None,
        show_progress="hidden")
    f["resize_mode"] = gr.Radio(list(RESIZE_MODES), value=RESIZE_MODES[0], label="Resize mode",
                                elem_id="inpaint_resize_mode")


def _inpaint_options(f: dict[str, Any]) -> None:
    with gr.Accordion("Inpainting", open=True, elem_id="inpaint_options"):
        with gr.Row():
            f["mask_blur"] = gr.Slider(0, 64, value=4, step=1, label="Mask blur", elem_id="inpaint_mask_blur")
            f["mask_mode"] = gr.Radio(list(MASK_MODES), value=MASK_MODES[0], label="Mask mode",
                                      elem_id="inpaint_mask_mode")
        f["inpainting_fill"] = gr.Radio(list(FILL_MODES), value="original", label="Masked content",
                                        elem_id="inpaint_fill")
        with gr.Row():
            f["inpaint_full_res"] = gr.Radio(list(INPAINT_AREAS), value=INPAINT_AREAS[0], label="Inpaint area",
                                             elem_id="inpaint_area")
            f["inpaint_full_res_padding"] = gr.Slider(0, 256, value=32, step=4, label="Only masked padding, pixels",
                                                      elem_id="inpaint_padding")
    with gr.Accordion("Outpainting", open=False, elem_id="outpaint_options"):
        with gr.Row():
            f["outpaint_directions"] = gr.CheckboxGroup(list(OUTPAINT_DIRECTIONS), value=[],
                                                        label="Grow the canvas towards", elem_id="outpaint_directions")
            f["outpaint_pixels"] = gr.Slider(8, 512, value=128, step=8, label="Pixels to expand",
                                             elem_id="outpaint_pixels")


def _extras_tab(ui: StudioUI, upscalers: list[str]) -> dict[str, Any]:
    parts: dict[str, Any] = {"send": {}}
    with gr.Row():
        with gr.Column():
            parts["mode"] = gr.Radio(["Single image", "Batch from folder"], value="Single image", label="Source",
                                     elem_id="extras_mode")
            parts["image"] = gr.Image(label="Image", type="filepath", image_mode=None, sources=["upload", "clipboard"],
                                      elem_id="extras_image", height=360)
            with gr.Row():
                input_dir = gr.Textbox(label="Input folder (batch)", elem_id="extras_input_dir")
                output_dir = gr.Textbox(label="Output folder (batch; empty = the Super-resolution folder)",
                                        elem_id="extras_output_dir")
            parts["upscaler"] = gr.Dropdown(choices=upscalers, value=extras_default(upscalers), label="Upscaler",
                                            elem_id="extras_upscaler",
                                            info=None if upscalers else "upscaling is not available (see the log)")
            resize_mode = gr.Radio(["Scale by", "Scale to"], value="Scale by", label="Resize",
                                   elem_id="extras_resize_mode")
            with gr.Row():
                scale = gr.Slider(1.0, 8.0, value=2.0, step=0.05, label="Scale by", elem_id="extras_scale")
                width = gr.Number(value=1024, precision=0, label="Width (0 = keep aspect)", elem_id="extras_width")
                height = gr.Number(value=0, precision=0, label="Height (0 = keep aspect)", elem_id="extras_height")
            with gr.Accordion("SD upscale: redraw the enlarged picture in tiles with the checkpoint", open=False,
                              elem_id="extras_sd_upscale"):
                sd: dict[str, Any] = {}
                sd["enabled"] = gr.Checkbox(False, label="Use SD upscale", elem_id="extras_sd_enabled")
                sd["prompt"] = gr.Textbox(label="Prompt", lines=2, elem_id="extras_sd_prompt")
                sd["negative_prompt"] = gr.Textbox(label="Negative prompt", lines=1, elem_id="extras_sd_neg_prompt")
                with gr.Row():
                    sd["denoising_strength"] = gr.Slider(0.0, 1.0, value=0.3, step=0.01, label="Denoising strength",
                                                         elem_id="extras_sd_denoising")
                    sd["steps"] = gr.Slider(1, 150, value=20, step=1, label="Sampling steps", elem_id="extras_sd_steps")
                    sd["cfg_scale"] = gr.Slider(1.0, 30.0, value=7.0, step=0.5, label="CFG scale",
                                                elem_id="extras_sd_cfg")
                with gr.Row():
                    sd["sampler"] = gr.Dropdown(sampler_choices()[0], value="Euler", label="Sampler",
                                                elem_id="extras_sd_sampler")
                    sd["seed"] = gr.Number(value=-1, precision=0, label="Seed (-1 = random)", elem_id="extras_sd_seed")
                    sd["tile"] = gr.Slider(64, 1024, value=512, step=8, label="Tile size", elem_id="extras_sd_tile")
                    sd["overlap"] = gr.Slider(0, 256, value=64, step=8, label="Tile overlap",
                                              elem_id="extras_sd_overlap")
            with gr.Row():
                run = gr.Button("Upscale", variant="primary", elem_id="extras_generate", scale=3)
                stop = gr.Button("Interrupt", elem_id="extras_interrupt", scale=1)
            stop.click(ui.interrupt, concurrency_limit=None, show_progress="hidden")
        with gr.Column():
            gallery = gr.Gallery(label="Output", format="png", columns=2, object_fit="contain", height=480,
                                 elem_id="extras_gallery", buttons=["download", "fullscreen"])
            with gr.Row(elem_classes="studio-actions"):
                for target, label in (("img2img", "→ img2img"), ("inpaint", "→ Inpaint")):
                    parts["send"][target] = gr.Button(label, size="sm", elem_id=f"extras_send_to_{target}")
            info = gr.Textbox(label="Info", lines=3, interactive=False, elem_id="extras_info")
            log_box = gr.HTML("", elem_id="extras_log")
    parts["items"] = gr.State([])
    parts["selected"] = gr.State(0)

    sd_keys = list(sd)

    def upscale(mode, image, in_dir, out_dir, upscaler, how, factor, w, h, *sd_values, progress=gr.Progress()):
        return ui.upscale(mode, image, in_dir, out_dir, upscaler, how, factor, w, h,
                          progress=lambda frac, desc: progress(frac, desc=desc), sd=dict(zip(sd_keys, sd_values)))

    run.click(upscale, inputs=[parts["mode"], parts["image"], input_dir, output_dir, parts["upscaler"], resize_mode,
                               scale, width, height, *sd.values()],
              outputs=[gallery, info, log_box, parts["items"]], api_name="upscale", concurrency_id=JOB,
              concurrency_limit=1).then(lambda: 0, outputs=[parts["selected"]], show_progress="hidden")

    def picked(items, evt: gr.SelectData):
        index = evt.index if isinstance(evt.index, int) else 0
        return index, ui.select_result(items, index)

    gallery.select(picked, inputs=[parts["items"]], outputs=[parts["selected"], info], concurrency_limit=None,
                   show_progress="hidden")
    return parts


def _gallery_tab(ui: StudioUI) -> dict[str, Any]:
    parts: dict[str, Any] = {"send": {}}
    with gr.Row():
        which = gr.Dropdown(["All", "txt2img", "img2img", "extras"], value="All", label="Tab", elem_id="gallery_tab",
                            scale=2)
        date = gr.Dropdown(["All"], value="All", label="Date", elem_id="gallery_date", scale=2)
        refresh = gr.Button("↻ Refresh", elem_id="gallery_refresh", scale=1)
    note = gr.Markdown("")
    with gr.Row():
        with gr.Column(scale=3):
            pictures = gr.Gallery(label="Images (newest first)", columns=6, height=560, object_fit="contain",
                                  elem_id="gallery_images", allow_preview=True, buttons=["download", "fullscreen"])
        with gr.Column(scale=2):
            parts["info"] = gr.Textbox(label="Generation info", lines=6, interactive=False, elem_id="gallery_info")
            link = gr.HTML("", elem_id="gallery_link")
            with gr.Row(elem_classes="studio-actions"):
                for target, label in (("txt2img", "→ txt2img"), ("img2img", "→ img2img"), ("inpaint", "→ Inpaint"),
                                      ("extras", "→ Super-resolution")):
                    parts["send"][target] = gr.Button(label, size="sm", elem_id=f"gallery_send_to_{target}")
            delete = gr.Button("Delete (to trash)", variant="stop", size="sm", elem_id="gallery_delete")
            status = gr.Markdown("", elem_id="gallery_status")
    with gr.Accordion("Trash", open=False, elem_id="gallery_trash"):
        trash = gr.Gallery(label="Deleted images", columns=8, height=240, object_fit="contain",
                           elem_id="gallery_trash_images")
        restore = gr.Button("Restore selected", size="sm", elem_id="gallery_restore")
    paths = gr.State([])
    parts["path"] = gr.State("")
    trash_paths = gr.State([])
    trash_pick = gr.State("")

    def listing(tab, day):
        items, days, listed, text = ui.gallery(tab, day)
        return items, gr.Dropdown(choices=days, value=day if day in days else "All"), listed, text, "", "", ""

    list_outputs = [pictures, date, paths, note, parts["info"], link, parts["path"]]
    for event in (refresh.click, which.change, date.change):
        event(listing, inputs=[which, date], outputs=list_outputs, concurrency_limit=None, show_progress="hidden")

    def picked(listed, evt: gr.SelectData):
        return ui.gallery_select(listed, evt.index if isinstance(evt.index, int) else None)

    pictures.select(picked, inputs=[paths], outputs=[parts["info"], link, parts["path"]], concurrency_limit=None,
                    show_progress="hidden")

    def do_delete(path, tab, day):
        message = ui.gallery_delete(path)
        return [message, *listing(tab, day), *ui.trash()]

    delete.click(do_delete, inputs=[parts["path"], which, date],
                 outputs=[status, *list_outputs, trash, trash_paths], concurrency_limit=None)

    def trash_picked(listed, evt: gr.SelectData):
        index = evt.index if isinstance(evt.index, int) else -1
        return listed[index] if 0 <= index < len(listed) else ""

    trash.select(trash_picked, inputs=[trash_paths], outputs=[trash_pick], concurrency_limit=None,
                 show_progress="hidden")

    def do_restore(path, tab, day):
        message = ui.restore(path)
        return [message, *listing(tab, day), *ui.trash(), ""]

    restore.click(do_restore, inputs=[trash_pick, which, date],
                  outputs=[status, *list_outputs, trash, trash_paths, trash_pick], concurrency_limit=None)

    parts["open"] = (lambda tab, day: [*listing(tab, day), *ui.trash()], [which, date],
                     [*list_outputs, trash, trash_paths])
    return parts


def _pnginfo_tab(ui: StudioUI) -> dict[str, Any]:
    parts: dict[str, Any] = {"send": {}}
    with gr.Row():
        with gr.Column():
            parts["image"] = gr.Image(label="Drop a PNG, JPEG or WebP", type="filepath", image_mode=None,
                                      sources=["upload", "clipboard"], elem_id="pnginfo_image", height=420)
        with gr.Column():
            parts["parameters"] = gr.Textbox(label="Parameters", lines=6, interactive=False,
                                             elem_id="pnginfo_parameters", buttons=["copy"])
            with gr.Row(elem_classes="studio-actions"):
                for target, label in (("txt2img", "→ txt2img"), ("img2img", "→ img2img"), ("inpaint", "→ Inpaint"),
                                      ("extras", "→ Super-resolution")):
                    parts["send"][target] = gr.Button(label, size="sm", elem_id=f"pnginfo_send_to_{target}")
            details = gr.HTML("", elem_id="pnginfo_details")
    parts["image"].change(lambda path: ui.png_info(path)[:2], inputs=[parts["image"]],
                          outputs=[parts["parameters"], details], concurrency_limit=None, api_name="png_info")
    return parts


def _styles_tab(ui: StudioUI) -> dict[str, Any]:
    parts: dict[str, Any] = {}
    gr.Markdown(f"Styles are kept in `{ui.styles.path}` (A1111 format: name, prompt, negative_prompt). "
                "Put `{prompt}` in a style's text to choose where the prompt goes; otherwise the style is added "
                "after it.")
    with gr.Row():
        parts["pick"] = gr.Dropdown(choices=ui.styles.names(), value=None, label="Style", elem_id="styles_pick",
                                    scale=4)
        parts["refresh"] = gr.Button("↻ Reload file", elem_id="styles_refresh", scale=1)
    parts["name"] = gr.Textbox(label="Name", elem_id="styles_name")
    parts["prompt"] = gr.Textbox(label="Prompt", lines=2, elem_id="styles_prompt")
    parts["negative"] = gr.Textbox(label="Negative prompt", lines=2, elem_id="styles_negative")
    with gr.Row():
        parts["save"] = gr.Button("Save style", variant="primary", elem_id="styles_save")
        parts["delete"] = gr.Button("Delete style", variant="stop", elem_id="styles_delete")
    # an unreadable or non-UTF-8 styles.csv is said at once, not only after "Reload file"
    parts["status"] = gr.Markdown(ui.styles.warning or "", elem_id="styles_status")

    def show(name):
        style = ui.styles.get(name) if name else None
        if style is None:
            return "", "", ""
        return style.name, style.prompt, style.negative_prompt

    parts["pick"].change(show, inputs=[parts["pick"]], outputs=[parts["name"], parts["prompt"], parts["negative"]],
                         concurrency_limit=None, show_progress="hidden")
    return parts


def _settings_tab(demo: gr.Blocks, ui: StudioUI, samplers: list[str], schedules: list[str]) -> dict[str, Any]:
    values = ui.settings.values()
    components: dict[str, Any] = {}
    intro = (f"Saved to `{ui.settings.place}`. Folders, format and preview apply to the next job; defaults apply "
             "when the page is reloaded.")
    warnings = [*ui.settings.load_warnings, *(f"{p}: ignored" for p in ui.folder_problems({}))]
    if warnings:
        intro += "\n\n" + "\n".join(f"- {w}" for w in warnings)
    gr.Markdown(intro)

    def section(name: str) -> None:
        for option in OPTIONS:
            if option.section == name:
                components[option.key] = _setting_component(option, values[option.key], samplers, schedules)

    with gr.Row():
        with gr.Column():
            gr.Markdown(f"### {SAVING}")
            section(SAVING)
        with gr.Column():
            gr.Markdown(f"### {DEFAULTS}")
            section(DEFAULTS)
            gr.Markdown(f"### {CHECKPOINTS}")
            section(CHECKPOINTS)
    save = gr.Button("Apply settings", variant="primary", elem_id="settings_apply")
    status = gr.Markdown("", elem_id="settings_status")
    keys = list(components)
    # The values this page showed: Apply writes only the ones edited since, and the tab shows the
    # saved values again on every page load and after Apply (the API may have changed them).
    shown = gr.State(ui.settings_form(keys))

    def saved() -> list[Any]:
        now = ui.settings_form(keys)
        return [now, *now.values()]

    def apply(page_shown: dict[str, Any], *page_values: Any) -> list[Any]:
        return [ui.apply_settings(keys, page_values, page_shown), *saved()]

    inputs = [components[k] for k in keys]
    save.click(apply, inputs=[shown, *inputs], outputs=[status, shown, *inputs], concurrency_limit=None)
    demo.load(saved, outputs=[shown, *inputs], concurrency_limit=None, show_progress="hidden")
    return components


def _setting_component(option: Any, value: Any, samplers: list[str], schedules: list[str]) -> Any:
    elem_id = f"setting_{option.key}"
    if option.choices:
        return gr.Radio(list(option.choices), value=value, label=option.label, info=option.help or None,
                        elem_id=elem_id)
    if option.key == "default_sampler":
        return gr.Dropdown(samplers, value=value, label=option.label, elem_id=elem_id)
    if option.key == "default_scheduler":
        return gr.Dropdown(schedules, value=value, label=option.label, elem_id=elem_id)
    if isinstance(option.default, bool):
        return gr.Checkbox(value, label=option.label, info=option.help, elem_id=elem_id)
    if isinstance(option.default, (int, float)):
        return gr.Number(value, label=option.label, info=option.help or None, elem_id=elem_id,
                         precision=0 if isinstance(option.default, int) else None)
    return gr.Textbox(value, label=option.label, info=option.help or None, elem_id=elem_id)

