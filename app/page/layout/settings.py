"""The layout of the Settings tab: one component per setting, by section, and Apply."""
from __future__ import annotations

from typing import Any

import gradio as gr

from app.page.studio import StudioUI
from app.settings import CHECKPOINTS, DEFAULTS, OPTIONS, SAVING


def settings_tab(demo: gr.Blocks, ui: StudioUI, samplers: list[str], schedules: list[str]) -> dict[str, Any]:
    """Lay out the tab and wire Apply and the page load; -> the components by setting key."""
    values = ui.settings.values()
    components: dict[str, Any] = {}
    gr.Markdown(ui.styles_settings.settings_intro())

    def section(name: str) -> None:
        gr.Markdown(f"### {name}")
        for option in OPTIONS:
            if option.section == name:
                components[option.key] = _setting_component(option, values[option.key], samplers, schedules)

    with gr.Row():
        with gr.Column():
            section(SAVING)
        with gr.Column():
            section(DEFAULTS)
            section(CHECKPOINTS)
    save = gr.Button("Apply settings", variant="primary", elem_id="settings_apply")
    status = gr.Markdown("", elem_id="settings_status")
    keys = list(components)
    logic = ui.styles_settings
    # The values this page showed: Apply writes only the ones edited since, and the tab shows the
    # saved values again on every page load and after Apply (the API may have changed them).
    shown = gr.State(logic.settings_form(keys))
    inputs = [components[k] for k in keys]
    save.click(lambda page_shown, *page_values: logic.apply_and_show(keys, page_shown, *page_values),
               inputs=[shown, *inputs], outputs=[status, shown, *inputs], concurrency_limit=None)
    demo.load(lambda: logic.saved_settings(keys), outputs=[shown, *inputs], concurrency_limit=None,
              show_progress="hidden")
    return components


def _setting_component(option: Any, value: Any, samplers: list[str], schedules: list[str]) -> Any:
    """The component that edits ``option`` (chosen by the kind of setting it is)."""
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
