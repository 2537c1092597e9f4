"""The Gallery tab (the pictures in the output folders, the trash) and the PNG Info tab (what
a picture file says about how it was made)."""
from __future__ import annotations

import html
import json
from typing import Any

import gradio as gr

from app import gallery as gallery_files
from app.imagefiles import read_metadata
from app.page.outputs import Outputs

GALLERY_TABS = ("All", "txt2img", "img2img", "extras")
OPENED_UPDATES = 9  # what Gallery.opened returns: the listing's seven updates and the trash's two


class Gallery:
    def __init__(self, outputs: Outputs):
        self.outputs = outputs

    def images(self, tab: str | None, date: str | None) -> tuple[list, list[str], list[str], str]:
        """(gallery items, date choices, listed paths, note) for the Gallery tab."""
        root = self.outputs.output_root()
        everything = gallery_files.list_images(self.outputs.folders(), tab, None, exclude=root / gallery_files.TRASH)
        entries = [e for e in everything if date in (None, "", "All") or e.date == date]
        note = ""
        if len(entries) > gallery_files.MAX_LISTED:
            note = f"showing the newest {gallery_files.MAX_LISTED} of {len(entries)} images"
            entries = entries[:gallery_files.MAX_LISTED]
        items = [(str(e.path), f"{e.tab} · {e.path.name}") for e in entries]
        return items, ["All", *gallery_files.dates(everything)], [str(e.path) for e in entries], note

    def listing(self, tab: str | None, day: str | None) -> list[Any]:
        """The tab's updates for a new listing: pictures, date choices, their paths, the note,
        and the picked picture's info, link and path cleared."""
        items, days, listed, text = self.images(tab, day)
        return [items, gr.Dropdown(choices=days, value=day if day in days else "All"), listed, text, "", "", ""]

    def opened(self, tab: str | None, day: str | None) -> list[Any]:
        """The listing and the trash, when the tab is opened."""
        return [*self.listing(tab, day), *self.trash()]

    def select(self, paths: list[str] | None, index: int | None) -> tuple[str, str, str]:
        """(infotext, html link to the full-size file, path) of the picked image."""
        if not paths or index is None or not 0 <= index < len(paths):
            return "", "", ""
        path = paths[index]
        try:
            text = read_metadata(path).get("parameters") or ""
        except Exception as exc:
            text = f"(cannot read: {exc})"
        link = (f'<a class="studio-open" href="/gradio_api/file={html.escape(path)}" target="_blank" '
                f'rel="noopener">Open full size</a> <code>{html.escape(path)}</code>')
        return text, link, path

    def picked(self, listed: list[str] | None, evt: gr.SelectData) -> tuple[str, str, str]:
        return self.select(listed, evt.index if isinstance(evt.index, int) else None)

    def delete(self, path: str | None) -> str:
        if not path:
            raise gr.Error("Gallery: pick an image first", print_exception=False)
        root = self.outputs.output_root()
        try:
            moved = gallery_files.delete_to_trash(root, path, list(self.outputs.folders().values()))
        except gallery_files.GalleryError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        return f"Moved to the trash: {moved}"

    def delete_and_list(self, path: str | None, tab: str | None, day: str | None,
                        listed: list[str] | None = None) -> list[Any]:
        """The Delete button's updates: the message, the new listing with the picture that took
        the deleted one's place picked (the last one when it was last), and the trash. A refusal
        (nothing picked, a file outside the outputs) is a warning and leaves the page as it is:
        an error here would mark every one of these outputs as failed."""
        try:
            message = self.delete(path)
        except gr.Error as exc:
            gr.Warning(exc.message)
            return [exc.message, *[gr.skip()] * OPENED_UPDATES]
        place = listed.index(path) if listed and path in listed else 0
        updates = self.opened(tab, day)
        remaining = updates[2]
        if remaining:
            picked = min(place, len(remaining) - 1)
            updates[0] = gr.Gallery(value=updates[0], selected_index=picked)
            updates[4:7] = self.select(remaining, picked)
        return [message, *updates]

    def trash(self) -> tuple[list, list[str]]:
        entries = gallery_files.list_trash(self.outputs.output_root())
        return [(str(e.path), e.path.name) for e in entries], [str(e.path) for e in entries]

    @staticmethod
    def trash_picked(listed: list[str], evt: gr.SelectData) -> str:
        index = evt.index if isinstance(evt.index, int) else -1
        return listed[index] if 0 <= index < len(listed) else ""

    def restore(self, path: str | None) -> str:
        if not path:
            raise gr.Error("Trash: pick an image to restore", print_exception=False)
        try:
            back = gallery_files.restore(self.outputs.output_root(), path)
        except gallery_files.GalleryError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        return f"Restored: {back}"

    def restore_and_list(self, path: str | None, tab: str | None, day: str | None) -> list[Any]:
        """The Restore button's updates; a refusal is a warning, as in delete_and_list."""
        try:
            message = self.restore(path)
        except gr.Error as exc:
            gr.Warning(exc.message)
            return [exc.message, *[gr.skip()] * (OPENED_UPDATES + 1)]
        return [message, *self.opened(tab, day), ""]

    @staticmethod
    def png_info(path: str | None) -> tuple[str, str, dict]:
        """(infotext, html of the other metadata, raw items) of an uploaded image file."""
        if not path:
            return "", "", {}
        try:
            meta = read_metadata(path)
        except FileNotFoundError:
            raise gr.Error("PNG Info: the file is gone, upload it again", print_exception=False) from None
        except Exception as exc:
            raise gr.Error(f"PNG Info: not a readable image ({type(exc).__name__}: {exc})",
                           print_exception=False) from None
        rows = [f"<p><b>{html.escape(str(meta.get('format') or 'image'))}</b> {html.escape(meta['size'])}"]
        if meta["source"]:
            rows.append(f" — parameters from the {html.escape(meta['source'])}")
        rows.append("</p>")
        if not meta["parameters"]:
            rows.append("<p>No generation parameters found in this image.</p>")
        for key, value in meta["items"].items():
            if not isinstance(value, str):
                value = json.dumps(value, indent=1, ensure_ascii=False)
            shown = value if len(value) <= 4000 else value[:4000] + "…"
            rows.append(f"<div class='studio-chunk'><b>{html.escape(str(key))}</b><pre>{html.escape(shown)}</pre></div>")
        return meta["parameters"] or "", "".join(rows), meta["items"]

    def png_text(self, path: str | None) -> tuple[str, str]:
        """The PNG Info tab's (parameters, details)."""
        return self.png_info(path)[:2]
