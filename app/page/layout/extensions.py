"""A tab per UI function an enabled extension registered (``api.add_ui_tab``)."""
from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from app.page.studio import StudioUI

log = logging.getLogger(__name__)


def extension_tabs(ui: StudioUI) -> list[dict[str, Any]]:
    """Build each extension tab; -> the components of those that return them by name. A tab
    that fails to build shows the error instead and the rest of the page is unaffected."""
    built = []
    for name, title, build in ui.extension_tabs():
        with gr.Tab(title, id=f"ext_{name}", elem_id=f"tab_ext_{name}"):
            try:
                components = build(ui.engine)
            except Exception as exc:  # noqa: BLE001 - one extension must not break the page
                log.exception("extension %s: its tab failed to build", name)
                gr.Markdown(f"**{name}** could not build its tab: `{type(exc).__name__}: {exc}`")
                continue
        if isinstance(components, dict):
            built.append(components)
    return built
