"""Prompt styles: named prompt/negative-prompt pairs in an A1111-compatible ``styles.csv``.

The file has the columns ``name,prompt,negative_prompt`` (A1111 also reads files without the
negative column, and so does this). A style's text holding ``{prompt}`` has the user's prompt put
in its place; otherwise the style is added after the prompt, separated by ``", "``.
"""
from __future__ import annotations

import csv
import io
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from app.settings import data_dir, set_aside, write_atomically

log = logging.getLogger(__name__)

FIELDS = ("name", "prompt", "negative_prompt")
PLACEHOLDER = "{prompt}"
# Tried in order; latin-1 decodes any bytes, so it is the last resort.
READ_ENCODINGS = ("utf-8-sig", "cp1252", "latin-1")


@dataclass(frozen=True)
class Style:
    name: str
    prompt: str = ""
    negative_prompt: str = ""


class StyleError(ValueError):
    pass


def merge(style_text: str, text: str) -> str:
    """One style's text applied to a prompt, as A1111 does."""
    if not style_text:
        return text
    if PLACEHOLDER in style_text:
        return style_text.replace(PLACEHOLDER, text)
    if not text:
        return style_text
    return f"{text}, {style_text}"


class StyleDatabase:
    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path else data_dir() / "styles.csv"
        self._styles: dict[str, Style] = {}
        self._lock = threading.Lock()
        self.warning: str | None = None
        self.reload()

    def names(self) -> list[str]:
        with self._lock:
            return list(self._styles)

    def get(self, name: str) -> Style | None:
        with self._lock:
            return self._styles.get(name)

    def reload(self) -> None:
        self.warning = None
        try:
            styles, encoding = read_styles(self.path)
        except (OSError, csv.Error) as exc:
            styles = {}
            self.warning = (f"{self.path}: not readable ({exc}); its styles are not shown, and saving a style first "
                            "keeps it aside as a .bad file")
            log.warning(self.warning)
        else:
            if encoding not in (None, "utf-8-sig"):
                self.warning = f"{self.path}: not UTF-8, read as {encoding}; it is written as UTF-8 at the next change"
                log.info(self.warning)
        with self._lock:
            self._styles = styles

    def apply(self, names: list[str] | None, prompt: str, negative_prompt: str) -> tuple[str, str]:
        """The prompt and negative prompt with the named styles applied in order. Unknown
        names raise StyleError (a style deleted in another tab, a stale page)."""
        for name in names or []:
            style = self.get(name)
            if style is None:
                raise StyleError(f"styles: no style named {name!r} (refresh the list)")
            prompt = merge(style.prompt, prompt)
            negative_prompt = merge(style.negative_prompt, negative_prompt)
        return prompt, negative_prompt

    def save_style(self, name: str, prompt: str, negative_prompt: str) -> Style:
        """Add a style, or replace the one of the same name; the file is rewritten atomically."""
        name = (name or "").strip()
        if not name:
            raise StyleError("styles: give the style a name")
        style = Style(name, prompt or "", negative_prompt or "")
        self._change(lambda styles: styles.__setitem__(name, style))
        return style

    def delete_style(self, name: str) -> None:
        def delete(styles: dict[str, Style]) -> None:
            if name not in styles:
                raise StyleError(f"styles: no style named {name!r}")
            del styles[name]

        self._change(delete)

    def _change(self, change) -> None:
        """Apply ``change`` to the styles the file holds now (not to the list read at the last
        reload: rows added or edited by hand since are kept) and write the result atomically. A
        file that cannot be read is never written over: it is set aside as ``styles.csv.bad-DATE``
        and this change refused with a message saying so (the next save starts a new file)."""
        with self._lock:
            try:
                styles, _ = read_styles(self.path)
            except (OSError, csv.Error) as exc:
                kept = set_aside(self.path)
                self.warning = f"{self.path}: not readable ({exc}); kept as {kept.name}"
                log.warning(self.warning)
                self._styles = {}
                raise StyleError(f"styles: {self.path.name} could not be read ({exc}), so nothing was saved over it; "
                                 f"it is kept as {kept.name} (copy its styles back from it). Save again to start "
                                 "a new styles file") from None
            change(styles)
            self._write(styles)
            self._styles = styles
            self.warning = None  # what it said of the file read before (not UTF-8, say) is no longer so

    def _write(self, styles: dict[str, Style]) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        for style in styles.values():
            writer.writerow({"name": style.name, "prompt": style.prompt, "negative_prompt": style.negative_prompt})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(self.path, buffer.getvalue())


def read_styles(path: Path) -> tuple[dict[str, Style], str | None]:
    """The styles in ``path`` and the encoding they were read with (None: no file). UTF-8 (with
    or without a BOM) first; a file saved by a Windows editor decodes as cp1252, anything else as
    latin-1, which every byte sequence is: one odd byte never hides the whole file. Raises
    OSError or csv.Error when the file cannot be read or parsed."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}, None
    for encoding in READ_ENCODINGS:
        try:
            text = raw.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    styles: dict[str, Style] = {}
    for row in csv.DictReader(io.StringIO(text, newline=""), skipinitialspace=True):
        name = (row.get("name") or "").strip()
        if name:
            styles[name] = Style(name, row.get("prompt") or "", row.get("negative_prompt") or "")
    return styles, encoding
