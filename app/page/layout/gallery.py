"""The layout of the Gallery tab: the pictures of the output folders by tab and date, the
picked one's generation info, and the trash."""
from __future__ import annotations

from typing import Any

import gradio as gr

from app.page.gallery import GALLERY_TABS
from app.page.studio import StudioUI

SEND_TARGETS = (("txt2img", "→ txt2img"), ("img2img", "→ img2img"), ("inpaint", "→ Inpaint"),
                ("extras", "→ Super-resolution"))


def gallery_tab(ui: StudioUI) -> dict[str, Any]:
    """Lay out the tab and wire its events; -> its parts other code uses ("info", "path", the
    "send" buttons by target, and "open": (event function, inputs, outputs) for opening it)."""
    parts: dict[str, Any] = {"send": {}}
    with gr.Row():
        which = gr.Dropdown(list(GALLERY_TABS), value="All", label="Tab", elem_id="gallery_tab", scale=2)
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
                for target, label in SEND_TARGETS:
                    parts["send"][target] = gr.Button(label, size="sm", elem_id=f"gallery_send_to_{target}")
            delete = gr.Button("Delete (to trash)", variant="stop", size="sm", elem_id="gallery_delete")
            status = gr.Markdown("", elem_id="gallery_status")
    with gr.Accordion("Trash", open=False, elem_id="gallery_trash"):
        trash = gr.Gallery(label="Deleted images", columns=8, height=240, object_fit="contain",
                           elem_id="gallery_trash_images", elem_classes="studio-card-list")
        restore = gr.Button("Restore selected", size="sm", elem_id="gallery_restore")
    paths = gr.State([])
    parts["path"] = gr.State("")
    trash_paths = gr.State([])
    trash_pick = gr.State("")

    quick = dict(concurrency_limit=None, show_progress="hidden")
    list_outputs = [pictures, date, paths, note, parts["info"], link, parts["path"]]
    for event in (refresh.click, which.change, date.change):
        event(ui.gallery.listing, inputs=[which, date], outputs=list_outputs, **quick)
    pictures.select(ui.gallery.picked, inputs=[paths], outputs=[parts["info"], link, parts["path"]], **quick)
    delete.click(ui.gallery.delete_and_list, inputs=[parts["path"], which, date, paths],
                 outputs=[status, *list_outputs, trash, trash_paths], concurrency_limit=None)
    trash.select(ui.gallery.trash_picked, inputs=[trash_paths], outputs=[trash_pick], **quick)
    restore.click(ui.gallery.restore_and_list, inputs=[trash_pick, which, date],
                  outputs=[status, *list_outputs, trash, trash_paths, trash_pick], concurrency_limit=None)
    parts["open"] = (ui.gallery.opened, [which, date], [*list_outputs, trash, trash_paths])
    return parts
