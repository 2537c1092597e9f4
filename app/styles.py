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

from app.settings import data_dir, write_atomically

log = logging.getLogger(__name__)

FIELDS = ("name", "prompt", "negative_prompt")
PLACEHOLDER = "{prompt}"


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
        styles: dict[str, Style] = {}
        if self.path.is_file():
            try:
                text = self.path.read_text(encoding="utf-8-sig")
                for row in csv.DictReader(io.StringIO(text), skipinitialspace=True):
                    name = (row.get("name") or "").strip()
                    if not name:
                        continue
                    styles[name] = Style(name, row.get("prompt") or "", row.get("negative_prompt") or "")
            except (OSError, UnicodeDecodeError, csv.Error) as exc:
                self.warning = f"{self.path}: not readable ({exc})"
                log.warning(self.warning)
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
        with self._lock:
            styles = dict(self._styles)
            styles[name] = style
            self._write(styles)
            self._styles = styles
        return style

    def delete_style(self, name: str) -> None:
        with self._lock:
            if name not in self._styles:
                raise StyleError(f"styles: no style named {name!r}")
            styles = {k: v for k, v in self._styles.items() if k != name}
            self._write(styles)
            self._styles = styles

    def _write(self, styles: dict[str, Style]) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        for style in styles.values():
            writer.writerow({"name": style.name, "prompt": style.prompt, "negative_prompt": style.negative_prompt})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(self.path, buffer.getvalue())
