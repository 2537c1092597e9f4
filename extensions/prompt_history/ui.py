"""The History tab (Gradio): search, filters, favourites, thumbnails, send-to, delete,
export and import. The behaviour is in HistoryTab (plain values in, plain values out, so it
is testable without a browser); build() lays out the components and wires them.
"""
from __future__ import annotations

import datetime as dt
import html
import json
import os
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import gradio as gr

PAGE_SIZE = 30
THUMB_SIZE = 256
SCOPES = [("Prompt", "prompt"), ("Negative prompt", "negative"), ("Both", "both")]
ORDERS = [("Newest first", "newest"), ("Oldest first", "oldest"), ("Best match", "relevance")]
SEARCH_HELP = 'words (all must match), "a phrase", prefix*, -excluded, cat OR dog'


def _escape(text: Any) -> str:
    """Text for a Markdown line: no markup, no HTML."""
    out = html.escape(str(text), quote=False)
    for ch in "\\`*_{}[]()#+-.!|~>":
        out = out.replace(ch, "\\" + ch)
    return out


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "?"
    return dt.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


class HistoryTab:
    """What the tab's events do, over a HistoryStore (``store``) and its module (``history``)."""

    def __init__(self, store, history, page_size: int = PAGE_SIZE, thumb_size: int = THUMB_SIZE):
        self.store = store
        self.history = history
        self.page_size = page_size
        self.thumb_size = thumb_size
        self._thumbs: OrderedDict = OrderedDict()
        self._thumbs_lock = threading.Lock()

    # thumbnails

    def _placeholder(self):
        from PIL import Image

        return Image.new("RGB", (self.thumb_size, self.thumb_size), (64, 64, 64))

    def thumb(self, stored_path: str | None):
        """A thumbnail of a recorded image (a grey square when the file is gone), cached by
        path, size and modification time."""
        path = self.store.image_file(stored_path)
        try:
            stat = path.stat() if path is not None else None
        except OSError:
            stat = None
        if stat is None:
            return self._placeholder()
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        with self._thumbs_lock:
            if key in self._thumbs:
                self._thumbs.move_to_end(key)
                return self._thumbs[key]
        image = self.history.thumbnail(path, self.thumb_size) or self._placeholder()
        with self._thumbs_lock:
            self._thumbs[key] = image
            while len(self._thumbs) > 512:
                self._thumbs.popitem(last=False)
        return image

    # search

    def models(self) -> list[str]:
        names = sorted({m["name"] for m in self.store.models() if m["name"]})
        return ["All", *names]

    def search(self, query: str, scope: str, model: str | None, since: str, until: str, favourites: bool,
               order: str, page: int = 0) -> tuple[list, list[int], str, int]:
        """-> (gallery items, entry ids in gallery order, status line, page shown)."""
        page = max(0, int(page or 0))
        try:
            found = self.store.search(query, scope=scope or "prompt", model=model, since=since, until=until,
                                      favourites=bool(favourites), order=order or "newest",
                                      limit=self.page_size, offset=page * self.page_size)
        except self.history.HistoryError as e:
            return [], [], f"**Cannot search:** {_escape(e)}", page
        total = found["total"]
        pages = max(1, -(-total // self.page_size))
        if page >= pages and total:
            return self.search(query, scope, model, since, until, favourites, order, pages - 1)
        items, ids = [], []
        for entry in found["entries"]:
            first = entry["images"][0]["path"] if entry["images"] else None
            star = "★ " if entry["favourite"] else ""
            prompt = entry["prompt"].replace("\n", " ")
            caption = f"{star}{_when(entry['created'])} · {prompt[:80]}{'…' if len(prompt) > 80 else ''}"
            items.append((self.thumb(first), caption))
            ids.append(entry["id"])
        status = f"{total} entr{'y' if total == 1 else 'ies'} · page {page + 1} of {pages}"
        return items, ids, status, page

    # one entry

    def entry_view(self, entry_id: int | None, image_index: int | None = None) -> tuple:
        """-> (entry id, image gallery items, prompt, negative prompt, details markdown,
        infotext, send-to params, favourite button label)."""
        entry = self.store.get(entry_id) if entry_id is not None else None
        if entry is None:
            return None, [], "", "", "Select an entry.", "", {}, "☆ Favourite"
        images = [(self.thumb(image["path"]), f"seed {image['seed']}") for image in entry["images"]]
        payload = self.store.send_to(entry["id"], image_index) or {}
        seeds = [image["seed"] for image in entry["images"]]
        lines = [
            f"**{_escape(entry['kind'])}** · {_escape(_when(entry['created']))}"
            + (f" · {entry['duration']:.1f} s" if entry["duration"] is not None else "")
            + (f" · {_escape(entry['status'])}" if entry["status"] != "done" else ""),
            f"Model: {_escape(entry['model_name'] or '?')}" + (f" \\[{_escape(entry['model_hash'])}\\]" if entry["model_hash"] else ""),
            f"Seeds: {_escape(', '.join(map(str, seeds)) or entry['seed'])}",
        ]
        missing = sum(1 for image in entry["images"] if not self._exists(image["path"]))
        if missing:
            lines.append(f"{missing} image file(s) missing or not saved")
        label = "★ Unfavourite" if entry["favourite"] else "☆ Favourite"
        return (entry["id"], images, entry["prompt"], entry["negative_prompt"], "  \n".join(lines),
                payload.get("infotext", ""), payload.get("params", {}), label)

    def _exists(self, stored: str | None) -> bool:
        return self.store.image_file(stored) is not None

    def select_image(self, entry_id: int | None, index: int | None) -> tuple[str, dict]:
        """-> (infotext, send-to params) of one image of the entry."""
        if entry_id is None:
            return "", {}
        try:
            payload = self.store.send_to(entry_id, index)
        except self.history.HistoryError:
            payload = self.store.send_to(entry_id)
        return (payload or {}).get("infotext", ""), (payload or {}).get("params", {})

    def toggle_favourite(self, entry_id: int | None) -> str:
        """-> the button's new label."""
        entry = self.store.get(entry_id) if entry_id is not None else None
        if entry is None:
            return "☆ Favourite"
        self.store.set_favourite(entry_id, not entry["favourite"])
        return "☆ Favourite" if entry["favourite"] else "★ Unfavourite"

    def delete(self, entry_id: int | None) -> str:
        if entry_id is None:
            return "Nothing selected."
        deleted = self.store.delete([entry_id])
        return "Entry deleted (its image files stay in the outputs folder)." if deleted else "Already deleted."

    # export and import

    def export(self, which: str, query: str, scope: str, model: str | None, since: str, until: str,
               favourites: bool) -> tuple[str | None, str]:
        """-> (path of the JSON file, status)."""
        try:
            if which == "results":
                document = self.store.export(query=query, scope=scope or "prompt", model=model, since=since,
                                             until=until, favourites=bool(favourites))
            else:
                document = self.store.export()
        except self.history.HistoryError as e:
            return None, f"**Cannot export:** {_escape(e)}"
        folder = Path(tempfile.mkdtemp(prefix="prompt-history-"))
        path = folder / f"prompt-history-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
        path.write_text(self.history.dump_document(document), encoding="utf-8")
        return str(path), f"Exported {len(document['entries'])} entr{'y' if len(document['entries']) == 1 else 'ies'}."

    def import_file(self, file: Any, mode: str) -> str:
        if not file:
            return "Choose an exported JSON file first."
        path = file if isinstance(file, (str, os.PathLike)) else getattr(file, "name", None)
        try:
            text = Path(path).read_text(encoding="utf-8")
            counts = self.store.import_(json.loads(text), mode=mode or "skip")
        except (OSError, ValueError) as e:  # HistoryError is a ValueError
            return f"**Not imported:** {_escape(e)}"
        return f"Imported: {counts['added']} added, {counts['replaced']} replaced, {counts['skipped']} already here."


def build(store, engine=None, history=None) -> dict:
    """Lay out the tab inside the current Gradio context (the tab the UI made). Returns the
    components the page may wire further, in particular for send-to:

    ``infotext`` (Textbox: the selected image's infotext, A1111's paste format),
    ``params`` (JSON: GenerationParams fields of the selected image or job, seeds resolved),
    ``send_txt2img`` / ``send_img2img`` (Buttons with no handler of their own), and
    ``image`` (Textbox, hidden: the selected image's file path, for img2img's input).
    """
    if history is None:
        import sys

        history = sys.modules[type(store).__module__]
    tab = HistoryTab(store, history)

    with gr.Column():
        with gr.Row():
            query = gr.Textbox(label="Search prompts", placeholder=SEARCH_HELP, scale=4)
            scope = gr.Radio(SCOPES, value="prompt", label="Search in", scale=2)
            search_button = gr.Button("Search", variant="primary", scale=1)
        with gr.Row():
            model = gr.Dropdown(tab.models(), value="All", label="Model", scale=2)
            since = gr.Textbox(label="From (YYYY-MM-DD)", scale=1)
            until = gr.Textbox(label="Until (YYYY-MM-DD)", scale=1)
            favourites = gr.Checkbox(label="Favourites only", scale=1)
            order = gr.Dropdown(ORDERS, value="newest", label="Order", scale=1)
        status = gr.Markdown()
        results = gr.Gallery(label="History", columns=6, height=420, allow_preview=False, object_fit="contain",
                             elem_id="history_results", elem_classes="studio-card-list")
        with gr.Row():
            previous_page = gr.Button("◀ Previous", size="sm")
            next_page = gr.Button("Next ▶", size="sm")
            refresh = gr.Button("Refresh", size="sm")
        with gr.Row():
            with gr.Column(scale=1):
                images = gr.Gallery(label="Images of the entry", columns=3, height=360, object_fit="contain")
            with gr.Column(scale=1):
                prompt = gr.Textbox(label="Prompt", lines=3, interactive=False)
                negative = gr.Textbox(label="Negative prompt", lines=2, interactive=False)
                details = gr.Markdown("Select an entry.")
                infotext = gr.Textbox(label="Infotext (what send-to pastes)", lines=3, interactive=False)
                params = gr.JSON(label="Parameters", open=False)
                image_path = gr.Textbox(visible=False)
                with gr.Row():
                    favourite = gr.Button("☆ Favourite", size="sm")
                    send_txt2img = gr.Button("Send to txt2img", size="sm")
                    send_img2img = gr.Button("Send to img2img", size="sm")
                    delete = gr.Button("Delete entry", variant="stop", size="sm")
                    confirm_delete = gr.Button("Really delete?", variant="stop", size="sm", visible=False)
        with gr.Accordion("Export / import", open=False):
            with gr.Row():
                which = gr.Radio([("All entries", "all"), ("Search results", "results")], value="all", label="Export")
                export_button = gr.Button("Export JSON")
                export_file = gr.File(label="Exported file", interactive=False)
            with gr.Row():
                import_upload = gr.File(label="Import an exported JSON file", file_types=[".json"], type="filepath")
                mode = gr.Radio([("Keep entries already here", "skip"), ("Replace them", "replace")], value="skip",
                                label="Entries already here")
                import_button = gr.Button("Import")
            transfer_status = gr.Markdown()

    ids = gr.State([])
    page = gr.State(0)
    selected = gr.State(None)
    filters = [query, scope, model, since, until, favourites, order]

    def run_search(*values):
        *values, page_number = values
        items, entry_ids, line, shown = tab.search(*values, page_number)
        return items, entry_ids, line, shown

    def first_page(*values):
        return run_search(*values, 0)

    def step(delta):
        def go(*values):
            *values, page_number = values
            return run_search(*values, max(0, int(page_number or 0) + delta))
        return go

    search_outputs = [results, ids, status, page]
    # on page load: the newest entries (triggers=None with no inputs: the page's load event)
    gr.on(triggers=None, fn=lambda: first_page("", "prompt", "All", "", "", False, "newest"), inputs=None,
          outputs=search_outputs)
    for trigger in (search_button.click, query.submit, scope.change, model.change, favourites.change, order.change):
        trigger(first_page, inputs=filters, outputs=search_outputs)
    refresh.click(lambda *v: (*run_search(*v), gr.Dropdown(choices=tab.models())), inputs=[*filters, page],
                  outputs=[*search_outputs, model])
    previous_page.click(step(-1), inputs=[*filters, page], outputs=search_outputs)
    next_page.click(step(+1), inputs=[*filters, page], outputs=search_outputs)

    entry_outputs = [selected, images, prompt, negative, details, infotext, params, favourite]

    def choose_entry(entry_ids, evt: gr.SelectData):
        index = evt.index if isinstance(evt.index, int) else None
        entry_id = entry_ids[index] if index is not None and index < len(entry_ids or []) else None
        view = tab.entry_view(entry_id)
        payload = tab.store.send_to(entry_id) if view[0] is not None else None
        return (*view, (payload or {}).get("image") or "", gr.Button(visible=False))

    results.select(choose_entry, inputs=[ids], outputs=[*entry_outputs, image_path, confirm_delete])

    def choose_image(entry_id, evt: gr.SelectData):
        index = evt.index if isinstance(evt.index, int) else None
        text, values = tab.select_image(entry_id, index)
        payload = tab.store.send_to(entry_id, index) if entry_id is not None and index is not None else None
        return text, values, (payload or {}).get("image") or ""

    images.select(choose_image, inputs=[selected], outputs=[infotext, params, image_path])
    favourite.click(tab.toggle_favourite, inputs=[selected], outputs=[favourite])
    delete.click(lambda: gr.Button(visible=True), outputs=[confirm_delete])

    def really_delete(entry_id, *values):
        *values, page_number = values
        line = tab.delete(entry_id)
        items, entry_ids, found, shown = tab.search(*values, page_number)
        return (*tab.entry_view(None), items, entry_ids, f"{line} {found}", shown, gr.Button(visible=False))

    confirm_delete.click(really_delete, inputs=[selected, *filters, page],
                         outputs=[*entry_outputs, *search_outputs, confirm_delete])
    export_button.click(tab.export, inputs=[which, query, scope, model, since, until, favourites],
                        outputs=[export_file, transfer_status])
    import_button.click(tab.import_file, inputs=[import_upload, mode], outputs=[transfer_status])

    return {
        "tab": tab, "infotext": infotext, "params": params, "image": image_path,
        "send_txt2img": send_txt2img, "send_img2img": send_img2img, "results": results, "search": search_button,
    }
