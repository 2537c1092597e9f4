"""Two of A1111's prompt tools: the token counter beside each prompt ("80/150", counted by the
engine's own tokenizer and prompt parser) and the "read generation parameters from prompt"
button (↙): an infotext pasted into the prompt box fills the tab's fields; with an empty
prompt, the tab's last generation does."""
from __future__ import annotations

import logging
from typing import Any, Sequence

import gradio as gr

from app.page.generation import Generation
from core.engine_protocol import EngineProtocol
from core.params import MAX_PROMPT_BYTES

log = logging.getLogger(__name__)


def counter_html(tokens: int, limit: int) -> str:
    return f'<span class="studio-token-counter">{tokens}/{limit}</span>'


EMPTY_COUNT = counter_html(0, 75)


class PromptTools:
    """``engine`` is a core.engine.Engine or anything with its methods."""

    def __init__(self, engine: EngineProtocol, generation: Generation):
        self.engine = engine
        self.generation = generation

    def count(self, prompt: str | None, steps: Any = 20) -> str:
        """The counter's HTML for ``prompt`` (a prompt over the size limit counts only that far)."""
        text = (prompt or "").encode("utf-8")[:MAX_PROMPT_BYTES].decode("utf-8", "ignore")
        try:
            tokens, limit = self.engine.count_tokens(text, _steps(steps))
        except Exception as exc:  # noqa: BLE001 - a counter must never break the page
            log.warning("could not count the prompt's tokens: %s", exc)
            return '<span class="studio-token-counter">?</span>'
        return counter_html(tokens, limit)

    def count_both(self, prompt: str | None, negative: str | None, steps: Any = 20) -> tuple[str, str]:
        return self.count(prompt, steps), self.count(negative, steps)

    def paste(self, tab: str, names: Sequence[str], prompt: str | None, items: list[dict] | None) -> list[Any]:
        """The updates of the ↙ button for fields ``names``: the infotext in the prompt box, or
        with an empty box the tab's last generation's (the first picture's)."""
        text = prompt or ""
        if not text.strip():
            last = (items or [None])[0]
            text = (last or {}).get("infotext") or ""
            if not text:
                raise gr.Error("Nothing to read: paste generation parameters into the prompt, or generate first",
                               print_exception=False)
        values, notes = self.generation.field_updates(tab, text, names)
        if notes:
            gr.Info("; ".join(notes[:4]))
        return values


def _steps(value: Any) -> int:
    try:
        return max(1, min(int(float(value)), 150))  # the page's steps slider ends at 150
    except (TypeError, ValueError):
        return 20
