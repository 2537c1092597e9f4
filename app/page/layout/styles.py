"""The layout of the Styles tab, and the style events that reach every generation tab (their
style pickers follow the styles file)."""
from __future__ import annotations

from typing import Any

import gradio as gr

from app.page.studio import StudioUI


def styles_tab(ui: StudioUI) -> dict[str, Any]:
    """Lay out the tab; -> its parts by name (wired by wire_styles)."""
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
    parts["pick"].change(ui.styles_settings.show_style, inputs=[parts["pick"]],
                         outputs=[parts["name"], parts["prompt"], parts["negative"]], concurrency_limit=None,
                         show_progress="hidden")
    return parts


def wire_styles(ui: StudioUI, tabs: list[Any], editor: dict[str, Any]) -> None:
    """Saving a style (in a generation tab or the Styles tab), deleting or reloading them
    updates every style picker: the generation ``tabs``' and the Styles tab's (``editor``)."""
    logic = ui.styles_settings
    pickers = [*(tab.fields["styles"] for tab in tabs), editor["pick"]]

    def choices():
        return logic.style_choices(len(pickers))

    for tab in tabs:
        tab.save_style.click(logic.save_style, inputs=[tab.style_name, tab.fields["prompt"],
                                                       tab.fields["negative_prompt"]],
                             outputs=[tab.log], concurrency_limit=None).then(choices, outputs=pickers)
    editor["save"].click(logic.save_style, inputs=[editor["name"], editor["prompt"], editor["negative"]],
                         outputs=[editor["status"]], concurrency_limit=None).then(choices, outputs=pickers)
    editor["delete"].click(logic.delete_style, inputs=[editor["pick"]], outputs=[editor["status"]],
                           concurrency_limit=None).then(choices, outputs=pickers)
    editor["refresh"].click(lambda: logic.reload_styles(len(pickers)), outputs=[*pickers, editor["status"]],
                            concurrency_limit=None)
