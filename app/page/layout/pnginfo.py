"""The layout of the PNG Info tab: drop a picture, read how it was made, send it on."""
from __future__ import annotations

from typing import Any

import gradio as gr

from app.page.layout.gallery import SEND_TARGETS
from app.page.studio import StudioUI
from app.page.uploads import picture_input


def pnginfo_tab(ui: StudioUI) -> dict[str, Any]:
    """Lay out the tab and wire its event; -> "image", "parameters" and the "send" buttons."""
    parts: dict[str, Any] = {"send": {}}
    with gr.Row():
        with gr.Column():
            parts["image"] = picture_input(label="Drop a PNG, JPEG or WebP", type="filepath", image_mode=None,
                                      sources=["upload", "clipboard"], elem_id="pnginfo_image", height=420)
        with gr.Column():
            parts["parameters"] = gr.Textbox(label="Parameters", lines=6, interactive=False,
                                             elem_id="pnginfo_parameters", buttons=["copy"])
            with gr.Row(elem_classes="studio-actions"):
                for target, label in SEND_TARGETS:
                    parts["send"][target] = gr.Button(label, size="sm", elem_id=f"pnginfo_send_to_{target}")
            details = gr.HTML("", elem_id="pnginfo_details")
    parts["image"].change(ui.gallery.png_text, inputs=[parts["image"]], outputs=[parts["parameters"], details],
                          concurrency_limit=None, api_name="png_info")
    return parts
