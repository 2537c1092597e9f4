"""The layout of the Super-resolution tab: one picture or a folder, an upscaler and a size,
and the SD upscale options."""
from __future__ import annotations

from typing import Any

import gradio as gr

from app.forms import FORM_DEFAULTS
from app.page.layout.generation import JOB
from app.page.models import sampler_choices
from app.page.studio import StudioUI
from app.page.superres import BATCH, default_upscaler
from app.page.uploads import picture_input


def superres_tab(ui: StudioUI, upscalers: list[str]) -> dict[str, Any]:
    """Lay out the tab and wire its events; -> its parts other tabs use ("image", "mode",
    "upscaler", "items", "selected", and the "send" buttons by target)."""
    parts: dict[str, Any] = {"send": {}}
    with gr.Row():
        with gr.Column():
            inputs = _source_inputs(parts, upscalers)
            sd = _sd_upscale_inputs()
            with gr.Row():
                run = gr.Button("Upscale", variant="primary", elem_id="extras_generate", scale=3)
                stop = gr.Button("Interrupt", elem_id="extras_interrupt", scale=1)
            stop.click(ui.generation.interrupt, concurrency_limit=None, show_progress="hidden")
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
    run.click(ui.superres.page_job(list(sd)), inputs=[*inputs, *sd.values()],
              outputs=[gallery, info, log_box, parts["items"]], api_name="upscale", concurrency_id=JOB,
              concurrency_limit=1).then(lambda: 0, outputs=[parts["selected"]], show_progress="hidden")
    gallery.select(ui.generation.picked, inputs=[parts["items"]], outputs=[parts["selected"], info],
                   concurrency_limit=None, show_progress="hidden")
    return parts


def _source_inputs(parts: dict[str, Any], upscalers: list[str]) -> list[Any]:
    """The picture or folder, the upscaler and the size: the Upscale event's first inputs."""
    parts["mode"] = gr.Radio(["Single image", BATCH], value="Single image", label="Source", elem_id="extras_mode")
    parts["image"] = picture_input(label="Image", type="filepath", image_mode=None, sources=["upload", "clipboard"],
                              elem_id="extras_image", height=360)
    with gr.Row(visible=False, elem_id="extras_batch_folders") as folders:
        input_dir = gr.Textbox(label="Input folder (batch)", elem_id="extras_input_dir")
        output_dir = gr.Textbox(label="Output folder (batch; empty = the Super-resolution folder)",
                                elem_id="extras_output_dir")
    parts["upscaler"] = gr.Dropdown(choices=upscalers, value=default_upscaler(upscalers), label="Upscaler",
                                    elem_id="extras_upscaler",
                                    info=None if upscalers else "upscaling is not available (see the log)")
    resize_mode = gr.Radio(["Scale by", "Scale to"], value="Scale by", label="Resize", elem_id="extras_resize_mode")
    with gr.Row():
        scale = gr.Slider(1.0, 8.0, value=2.0, step=0.05, label="Scale by", elem_id="extras_scale")
        width = gr.Number(value=1024, precision=0, label="Width (0 = keep aspect)", elem_id="extras_width")
        height = gr.Number(value=0, precision=0, label="Height (0 = keep aspect)", elem_id="extras_height")
    parts["mode"].change(source_fields, inputs=[parts["mode"]], outputs=[parts["image"], folders],
                         concurrency_limit=None, show_progress="hidden")
    return [parts["mode"], parts["image"], input_dir, output_dir, parts["upscaler"], resize_mode, scale, width, height]


def source_fields(mode: str) -> tuple[Any, Any]:
    """(the picture field, the folder fields) as the source mode wants them: one shows."""
    batch = mode == BATCH
    return gr.Image(visible=not batch), gr.Row(visible=batch)


def _sd_upscale_inputs() -> dict[str, Any]:
    """The SD upscale fields by name (form fields, plus enabled, tile and overlap)."""
    sd: dict[str, Any] = {}
    with gr.Accordion("SD upscale: redraw the enlarged picture in tiles with the checkpoint", open=False,
                      elem_id="extras_sd_upscale"):
        sd["enabled"] = gr.Checkbox(False, label="Use SD upscale", elem_id="extras_sd_enabled")
        sd["prompt"] = gr.Textbox(label="Prompt", lines=2, elem_id="extras_sd_prompt")
        sd["negative_prompt"] = gr.Textbox(label="Negative prompt", lines=1, elem_id="extras_sd_neg_prompt")
        with gr.Row():
            sd["denoising_strength"] = gr.Slider(0.0, 1.0, value=0.3, step=0.01, label="Denoising strength",
                                                 elem_id="extras_sd_denoising")
            sd["steps"] = gr.Slider(1, 150, value=FORM_DEFAULTS["steps"], step=1, label="Sampling steps",
                                    elem_id="extras_sd_steps")
            sd["cfg_scale"] = gr.Slider(1.0, 30.0, value=FORM_DEFAULTS["cfg_scale"], step=0.5, label="CFG scale",
                                        elem_id="extras_sd_cfg")
        with gr.Row():
            sd["sampler"] = gr.Dropdown(sampler_choices()[0], value=FORM_DEFAULTS["sampler"], label="Sampler",
                                        elem_id="extras_sd_sampler")
            sd["seed"] = gr.Number(value=FORM_DEFAULTS["seed"], precision=0, label="Seed (-1 = random)",
                                   elem_id="extras_sd_seed")
            sd["tile"] = gr.Slider(64, 1024, value=512, step=8, label="Tile size", elem_id="extras_sd_tile")
            sd["overlap"] = gr.Slider(0, 256, value=64, step=8, label="Tile overlap", elem_id="extras_sd_overlap")
    return sd
