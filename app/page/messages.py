"""What the page says: one-line error messages, and the HTML of the progress bar, the
checkpoint loading bar and the notes under the results."""
from __future__ import annotations

import html
import sys
from typing import Any, Sequence

import gradio as gr

from app import gallery as gallery_files
from app.forms import FormError
from app.settings import SettingsError
from app.styles import StyleError
from core.errors import EngineError


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    # torch's own class, when torch is loaded (no torch error can exist before): the page itself
    # does not import torch.
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def error_message(exc: BaseException, what: str = "Generation") -> str:
    """One line a person can act on, for any failure of a job."""
    if isinstance(exc, gr.Error):
        return exc.message
    if isinstance(exc, (EngineError, FormError, StyleError, SettingsError, gallery_files.GalleryError)):
        return str(exc)
    if _is_out_of_memory(exc):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return (f"Out of memory: try a smaller size, a smaller batch size or a lower hires scale ({first[:200]})")
    return f"{what} failed: {type(exc).__name__}: {exc}"




def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "…"
    seconds = max(0, int(round(seconds)))
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes:02d}:{seconds:02d}"


def progress_html(progress: Any | None, started: float | None = None, text: str | None = None) -> str:
    """The bar above the results: fraction, step, batch, ETA."""
    if progress is None and text is None:
        return ""
    if progress is None:
        return f'<div class="studio-progress"><div class="studio-progress-text">{html.escape(text or "")}</div></div>'
    fraction = float(progress.fraction)
    parts = [f"Step {progress.step}/{progress.steps}"]
    if progress.batches > 1:
        parts.append(f"batch {progress.batch + 1}/{progress.batches}")
    parts.append(f"{fraction * 100:.0f}%")
    parts.append(f"ETA {format_eta(progress.eta_seconds)}")
    label = " · ".join(parts)
    return (f'<div class="studio-progress" data-fraction="{fraction:.3f}">'
            f'<div class="studio-progress-bar" style="width:{fraction * 100:.1f}%"></div>'
            f'<div class="studio-progress-text">{html.escape(label)}</div></div>')


def loading_html(name: str, fraction: float) -> str:
    """The bar shown while a checkpoint loads: "Loading <name>… N%"."""
    fraction = min(1.0, max(0.0, float(fraction)))
    label = f"Loading {name}… {fraction * 100:.0f}%"
    return (f'<div class="studio-progress studio-loading" data-fraction="{fraction:.3f}">'
            f'<div class="studio-progress-bar" style="width:{fraction * 100:.1f}%"></div>'
            f'<div class="studio-progress-text">{html.escape(label)}</div></div>')


def log_html(lines: Sequence[str], error: str | None = None) -> str:
    out = []
    if error:
        out.append(f'<div class="studio-error">{html.escape(error)}</div>')
    out.extend(f'<div class="studio-note">{html.escape(line)}</div>' for line in lines if line)
    return "".join(out)


