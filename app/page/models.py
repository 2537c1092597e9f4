"""The page's models: checkpoint choices and loading (with its progress), the refiner's
choices, the size that follows the checkpoint, upscalers, the model settings handed to the
engine, and the LoRA cards."""
from __future__ import annotations

import html
import logging
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Iterator

import gradio as gr
from PIL import Image, ImageDraw

from app.forms import FORM_DEFAULTS, NO_REFINER, page_defaults
from app.page.messages import error_message, loading_html
from app.settings import Settings, engine_overrides
from core.errors import EngineError
from core.modelfiles import LORA_SUFFIXES, preview_picture
from core.engine_protocol import EngineProtocol

log = logging.getLogger(__name__)

def sampler_choices() -> tuple[list[str], list[str]]:
    """Sampler names and schedule types, as the engine knows them."""
    from core.sampling.samplers import SAMPLERS
    from core.sampling.schedules import AUTOMATIC, SCHEDULES

    return list(SAMPLERS), [AUTOMATIC, *SCHEDULES]


def latent_upscale_modes() -> list[str]:
    from core.pipelines.hires import LATENT_UPSCALE_MODES

    return list(LATENT_UPSCALE_MODES)


class Models:
    """``engine`` is a core.engine.Engine or anything with its methods."""

    def __init__(self, engine: EngineProtocol, settings: Settings):
        self.engine = engine
        self.settings = settings

    # ------------------------------------------------------------------ checkpoints

    def checkpoints(self) -> list[str]:
        try:
            return list(self.engine.list_checkpoints())
        except Exception as exc:  # the page must come up even if the folder is odd
            log.warning("could not list checkpoints: %s", exc)
            return []

    def checkpoint_choices(self) -> list[tuple[str, str]]:
        """(label, name) pairs for a dropdown: the bundled demo model says what it is."""
        from core.demo import label

        return [(label(name), name) for name in self.checkpoints()]

    def refresh_checkpoints(self, current: str | None) -> Any:
        choices = self.checkpoint_choices()
        names = [name for _, name in choices]
        value = current if current in names else (names[0] if names else None)
        return gr.Dropdown(choices=choices, value=value)

    def refiner_choices(self) -> list[tuple[str, str]]:
        """The Refiner dropdown: "None" (no refiner), then every checkpoint."""
        return [(NO_REFINER, NO_REFINER), *self.checkpoint_choices()]

    def refresh_refiners(self, current: str | None) -> Any:
        choices = self.refiner_choices()
        return gr.Dropdown(choices=choices, value=current if current in [n for _, n in choices] else NO_REFINER)

    def native_size(self, checkpoint: str | None) -> int | None:
        """The checkpoint's own picture size (Engine.default_size: 512 SD 1.x, 768 SD 2.x v,
        1024 SDXL, or its metadata's), None when it cannot tell without loading it."""
        if not checkpoint:
            return None
        try:
            return self.engine.default_size(checkpoint)
        except Exception as exc:  # an unreadable file: the size stays as it is
            log.warning("could not read the size of %s: %s", checkpoint, exc)
            return None

    def follow_checkpoint_size(self, checkpoint: str | None, page_set: list | None, *sizes: Any,
                               page_load: bool = False) -> list[Any]:
        """Width and height follow the checkpoint: ``sizes`` are each tab's (width, height) in
        turn; a tab whose size is still the one the page put there (``page_set``, the native
        size it last applied; None: the Settings defaults) gets the new checkpoint's native
        size, one the user changed is left alone. On page load the defaults from Settings win
        unless they are the stock 512x512. -> [new page_set, width, height, width, height, ...]."""
        native = self.native_size(checkpoint)
        defaults = page_defaults(self.settings)
        default = [defaults["width"], defaults["height"]]
        if native is None or (page_load and default != [FORM_DEFAULTS["width"], FORM_DEFAULTS["height"]]):
            return [page_set, *[gr.skip() for _ in sizes]]
        before = list(page_set) if page_set else default
        out: list[Any] = [[native, native]]
        for width, height in zip(sizes[::2], sizes[1::2]):
            untouched = [_number(width), _number(height)] == before
            out += [native, native] if untouched else [gr.skip(), gr.skip()]
        return out

    def models_root(self) -> Path:
        return Path(self.engine.models_dir)

    def upscalers(self) -> list[str]:
        """Upscaler names from core.upscaling (built-in resamplers and model files)."""
        try:
            from core.upscaling import list_upscalers
        except ImportError as exc:
            log.warning("upscaling is not available: %s", exc)
            return []
        try:
            return [info.name for info in list_upscalers(self.models_root())]
        except Exception as exc:
            log.warning("could not list upscalers: %s", exc)
            return []

    def hires_upscalers(self) -> list[str]:
        return latent_upscale_modes() + [name for name in self.upscalers() if name != "None"]

    def listed_hires_upscaler(self, name: str) -> str | None:
        """The hires menu's entry for ``name`` (from an infotext): itself, or the name its model
        file is listed under (an older infotext may give the file's stem where the menu shows
        A1111's name); None when there is none."""
        choices = self.hires_upscalers()
        if name in choices:
            return name
        try:
            from core.upscaling import find_upscaler

            listed = find_upscaler(name, self.models_root()).name
        except (EngineError, ImportError):
            return None
        return listed if listed in choices else None

    def match_checkpoint(self, model: str) -> str | None:
        names = self.checkpoints()
        for name in names:
            if name == model or Path(name).stem == model or Path(name).name == model:
                return name
        lowered = model.lower()
        return next((n for n in names if Path(n).stem.lower() == lowered), None)


    # ------------------------------------------------------------------ loading

    def loading_bar(self) -> str:
        """The loading bar while the engine loads a checkpoint (for whatever reason), else ""."""
        loading = self.engine.loading
        return loading_html(loading.name, loading.fraction) if loading is not None else ""

    def model_status(self) -> str:
        """The line under the checkpoint dropdown: the checkpoint loading (with its bar), the
        one loaded, or that none is yet."""
        bar = self.loading_bar()
        if bar:
            return bar
        loaded = self.engine.loaded
        if loaded is not None:
            return f'<div class="studio-note studio-model">Loaded: {html.escape(str(loaded.name))}</div>'
        return '<div class="studio-note studio-model">No checkpoint loaded yet: it loads on first use</div>'

    def current_checkpoint(self) -> str | None:
        """The dropdown's name of the checkpoint loading (or else loaded), None when none is or
        it is not in the list."""
        current = self.engine.loading or self.engine.loaded
        if current is None:
            return None
        for name in self.checkpoints():
            try:
                if Path(self.engine.resolve_checkpoint(name)).resolve() == Path(current.path).resolve():
                    return name
            except Exception:  # noqa: BLE001 - a name that no longer resolves is not the loaded one
                continue
        return None

    def watch_model(self) -> Iterator[str]:
        """The model status, again and again while a checkpoint loads (the page opened during
        the load at start, say), then once more."""
        shown = None
        while True:
            status = self.model_status()
            if status != shown:
                shown = status
                yield status
            if self.engine.loading is None:
                return
            time.sleep(0.25)

    def load_checkpoint(self, name: str | None) -> Iterator[str]:
        """Load ``name`` now (the dropdown was changed), letting the previous model go, while
        yielding the status with the loading bar. Waits for a running job (the engine's job
        lock); a failure ends as the status and an error toast."""
        if not name:
            yield self.model_status()
            return
        outcome: dict[str, BaseException] = {}

        def work() -> None:
            try:
                with self.engine.exclusive():
                    self.engine.load(name)
            except BaseException as exc:  # reported below
                outcome["error"] = exc

        thread = threading.Thread(target=work, name="studio-load", daemon=True)
        thread.start()
        shown = None
        while thread.is_alive():
            thread.join(0.2)
            status = self.model_status()
            if status != shown:
                shown = status
                yield status
        if "error" in outcome:
            message = error_message(outcome["error"], f"Loading {name}")
            if not isinstance(outcome["error"], EngineError):
                log.error("loading %s failed:\n%s", name, "".join(traceback.format_exception(outcome["error"])))
            yield f'<div class="studio-error">{html.escape(message)}</div>'
            raise gr.Error(message, print_exception=False)
        yield self.model_status()

    def apply_model_settings(self) -> bool:
        """Hand the settings' sd_model_prediction and sd_noise_schedule to the engine; True when
        that changes them (the engine loads the checkpoint again at the next job). The values
        saved last, here or through the API, are the engine's."""
        wanted = engine_overrides(self.settings.values())
        if (self.engine.prediction, self.engine.zero_terminal_snr) == wanted:
            return False
        self.engine.prediction, self.engine.zero_terminal_snr = wanted
        return True


    # ------------------------------------------------------------------ LoRA cards

    def lora_entries(self, query: str = "") -> list[tuple[str, Path | None]]:
        """(tag name, preview picture or None) for every LoRA file whose name contains ``query``
        (case-insensitive): the name is the path below the LoRA folder without its suffix."""
        from core.modelfiles import model_files  # linked files and folders followed

        folder = Path(self.engine.lora_dir)
        found = []
        for path in sorted(model_files(folder, LORA_SUFFIXES)):
            name = path.relative_to(folder).with_suffix("").as_posix()
            if query.strip().lower() not in name.lower():
                continue
            found.append((name, preview_picture(path)))
        return found

    def lora_cards(self, query: str = "") -> list[tuple[Any, str]]:
        """Gallery items: the preview picture, or a plain card with the name's first letter."""
        cards = []
        for name, preview in self.lora_entries(query):
            picture = str(preview) if preview else _letter_card(Path(name).name)
            cards.append((picture, name))
        return cards

    @staticmethod
    def insert_lora(prompt: str, name: str, weight: float = 1.0) -> str:
        """The prompt with ``<lora:name:weight>`` added at the end (once)."""
        tag = f"<lora:{name}:{weight:g}>"
        if f"<lora:{name}:" in (prompt or ""):
            return prompt
        return f"{(prompt or '').rstrip()} {tag}".strip()


    def add_lora(self, prompt: str, query: str, weight: float, evt: gr.SelectData) -> str:
        """The prompt with the LoRA card picked (``evt``) among those ``query`` lists added."""
        entries = self.lora_entries(query)
        if evt.index is None or not 0 <= int(evt.index) < len(entries):
            return prompt
        return self.insert_lora(prompt, entries[int(evt.index)][0], weight)


def _letter_card(name: str, size: int = 128) -> Image.Image:
    card = Image.new("RGB", (size, size), (58, 64, 84))
    ImageDraw.Draw(card).text((size // 2 - 4, size // 2 - 6), (name[:1] or "?").upper(), fill=(230, 230, 240))
    return card


def _number(value: Any) -> Any:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return value
