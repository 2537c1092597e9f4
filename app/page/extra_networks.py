"""The generation tabs' extra networks, as A1111 has them: Checkpoints, Textual Inversion and LoRA
cards with the preview picture stored beside each file, a search box, each card's info (a LoRA's
training tags and base model from its safetensors header), and what a click does: a LoRA card
adds ``<lora:NAME:multiplier>`` to the prompt, a Textual Inversion card its name, a Checkpoint
card switches the checkpoint.

The cards are HTML drawn here; a click reaches :meth:`ExtraNetworks.pick` through a hidden text
box and button (app/static/studio.js). Whatever a click sends names a card only: it is looked up
in the folder's listing, never used as a path. Preview pictures are served by the file route
from the model folders, which FileAccessGuard opens for model previews only (app/guards.py).
"""
from __future__ import annotations

import html
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import gradio as gr

from app.settings import Settings
from core.engine_protocol import EngineProtocol
from core.modelfiles import LORA_SUFFIXES, model_files, preview_picture

log = logging.getLogger(__name__)

# Tab key -> label, in A1111's order.
KINDS = {"checkpoints": "Checkpoints", "textual_inversion": "Textual Inversion", "lora": "LoRA"}
MAX_CARDS = 400  # cards drawn per tab; the search narrows a larger folder
MAX_QUERY = 200  # characters of a search
MAX_PICK = 2000  # characters a click may send
EMBEDDING_SUFFIXES = (".pt", ".safetensors", ".bin")  # core/embeddings.py's, without importing torch here


@dataclass
class Card:
    kind: str
    name: str  # what the prompt or the checkpoint menu gets: the path below the folder (LoRA, TI: no suffix)
    path: Path | None  # the model file (None: the bundled demo model outside the folder)
    preview: Path | None


class ExtraNetworks:
    """``engine`` is a core.engine.Engine or anything with its methods."""

    def __init__(self, engine: EngineProtocol, settings: Settings):
        self.engine = engine
        self.settings = settings

    # ------------------------------------------------------------------ listing

    def cards(self, kind: str, query: str = "") -> list[Card]:
        """The cards of tab ``kind`` whose name holds ``query`` (any case), at most MAX_CARDS."""
        wanted = (query or "")[:MAX_QUERY].strip().lower()
        found = [card for card in self._all(kind) if wanted in card.name.lower()]
        return found[:MAX_CARDS]

    def _all(self, kind: str) -> list[Card]:
        if kind == "checkpoints":
            return [self._checkpoint_card(name) for name in self._checkpoint_names()]
        if kind == "lora":
            return self._folder_cards(kind, Path(self.engine.lora_dir), LORA_SUFFIXES)
        if kind == "textual_inversion":
            return self._folder_cards(kind, Path(self.engine.embeddings_dir), EMBEDDING_SUFFIXES)
        raise gr.Error(f"no such extra-networks tab: {kind!r}", print_exception=False)

    def _checkpoint_names(self) -> list[str]:
        try:
            return list(self.engine.list_checkpoints())
        except Exception as exc:  # an odd folder must not stop the page
            log.warning("could not list checkpoints: %s", exc)
            return []

    def _checkpoint_card(self, name: str) -> Card:
        path = Path(self.engine.ckpt_dir) / name
        return Card("checkpoints", name, path if path.exists() else None,
                    preview_picture(path) if path.is_file() else None)

    @staticmethod
    def _folder_cards(kind: str, folder: Path, suffixes: tuple[str, ...]) -> list[Card]:
        try:
            files = sorted(model_files(folder, suffixes))
        except OSError as exc:
            log.warning("could not list %s: %s", folder, exc)
            return []
        return [Card(kind, path.relative_to(folder).with_suffix("").as_posix(), path, preview_picture(path))
                for path in files]

    # ------------------------------------------------------------------ the cards

    def cards_html(self, tab: str, kind: str, query: str = "") -> str:
        """The card grid of ``kind`` for generation tab ``tab``; a line when there is none."""
        cards = self.cards(kind, query)
        if not cards:
            where = {"checkpoints": self.engine.ckpt_dir, "lora": self.engine.lora_dir,
                     "textual_inversion": self.engine.embeddings_dir}[kind]
            what = f"nothing matches {query.strip()!r}" if (query or "").strip() else f"no files in {where}"
            return f'<div class="studio-note studio-cards-empty">{html.escape(what)}</div>'
        items = "".join(_card_html(tab, card) for card in cards)
        return f'<div class="studio-cards" data-tab="{html.escape(tab)}" data-kind="{kind}">{items}</div>'

    # ------------------------------------------------------------------ clicks

    def multiplier(self) -> float:
        return float(self.settings["extra_networks_default_multiplier"])

    def pick(self, payload: str, prompt: str) -> tuple[Any, Any, str, str | None]:
        """A card's click (``payload``: JSON {"kind", "name", "action": "use" | "info"}) ->
        (the prompt, the checkpoint menu, the info panel, the checkpoint to load now or None);
        what it leaves alone is gr.skip()."""
        kind, name, action = _read_pick(payload)
        card = next((c for c in self._all(kind) if c.name == name), None)
        if card is None:
            raise gr.Error(f"{KINDS[kind]}: {name!r} is no longer in its folder (refresh the cards)",
                           print_exception=False)
        if action == "info":
            return gr.skip(), gr.skip(), self.info_html(card), None
        if kind == "checkpoints":
            return gr.skip(), name, gr.skip(), name
        if kind == "lora":
            tag = f"<lora:{name}:{self.multiplier():g}>"
            return add_to_prompt(prompt, tag, f"<lora:{name}:"), gr.skip(), gr.skip(), None
        return add_to_prompt(prompt, Path(name).name), gr.skip(), gr.skip(), None

    def info_html(self, card: Card) -> str:
        """A card's file, its metadata lines and its training tags (most frequent first)."""
        from core.network_info import network_info

        rows = [("File", str(card.path) if card.path else card.name)]
        tags_html = ""
        if card.path is not None and card.path.is_file():
            info = network_info(card.path)
            rows += info.fields
            if info.tags:
                shown = "".join(f'<span class="studio-tag">{html.escape(tag)} <b>{count}</b></span>'
                                for tag, count in info.tags)
                more = f" (the first {len(info.tags)} of {info.tag_total})" if info.tag_total > len(info.tags) else ""
                tags_html = f'<div class="studio-tags-title">Training tags{more}</div><div class="studio-tags">{shown}</div>'
        table = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
        return (f'<div class="studio-card-info"><div class="studio-card-info-name">{html.escape(card.name)}</div>'
                f'<table>{table}</table>{tags_html}</div>')


def add_to_prompt(prompt: str | None, text: str, marker: str | None = None) -> str:
    """``prompt`` with ``text`` added at the end, unless it holds ``marker`` (``text``) already."""
    prompt = prompt or ""
    if (marker or text) in prompt:
        return prompt
    return f"{prompt.rstrip()} {text}".strip() if prompt.strip() else text


def _read_pick(payload: str) -> tuple[str, str, str]:
    try:
        data = json.loads((payload or "")[:MAX_PICK])
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise gr.Error("the card's click could not be read", print_exception=False)
    kind, name, action = data.get("kind"), data.get("name"), data.get("action", "use")
    if kind not in KINDS or not isinstance(name, str) or action not in ("use", "info"):
        raise gr.Error("the card's click could not be read", print_exception=False)
    return kind, name, action


def preview_url(path: Path) -> str:
    """The file route's address of a preview picture (FileAccessGuard serves model previews)."""
    return "/gradio_api/file=" + quote(str(path.absolute()), safe="/")


def _card_html(tab: str, card: Card) -> str:
    label = Path(card.name).name
    if card.preview is not None:
        picture = f'<img class="studio-card-picture" src="{html.escape(preview_url(card.preview))}" alt="" loading="lazy">'
    else:
        picture = f'<div class="studio-card-picture studio-card-letter">{html.escape((label[:1] or "?").upper())}</div>'
    name = html.escape(card.name)
    return (f'<div class="studio-card" role="button" tabindex="0" data-kind="{card.kind}" data-name="{name}" '
            f'title="{name}">{picture}<div class="studio-card-name">{html.escape(label)}</div>'
            f'<button class="studio-card-info-button" type="button" title="Info: metadata and training tags" '
            f'aria-label="Info">i</button></div>')
