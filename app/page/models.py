"""The page's models: checkpoint choices and loading (with its progress), the refiner's
choices, the size that follows the checkpoint, upscalers, the model settings handed to the
engine, and the VAE menu."""
from __future__ import annotations

import html
import logging
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Iterator

import gradio as gr

from app.forms import FORM_DEFAULTS, NO_REFINER, page_defaults
from app.page.messages import error_message, loading_html
from app.settings import Settings, SettingsError, engine_overrides
from core.errors import EngineError
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

    def checkpoint_defaults(self, checkpoint: str | None) -> dict[str, Any] | None:
        """What the engine says a page sets up for ``checkpoint`` (EngineProtocol's
        generation_defaults: size, steps, CFG scale, Distilled CFG Scale, samplers), read from
        its header; None when there is none or it cannot be read."""
        if not checkpoint:
            return None
        try:
            return self.engine.generation_defaults(checkpoint)
        except Exception as exc:  # an unreadable file: the fields stay as they are
            log.warning("could not read %s: %s", checkpoint, exc)
            return None

    def native_size(self, checkpoint: str | None) -> int | None:
        """The checkpoint's own picture size (512 SD 1.x, 768 SD 2.x v, 1024 SDXL, SD 3.x and
        FLUX.1, or its metadata's), None when it cannot tell without loading it."""
        defaults = self.checkpoint_defaults(checkpoint)
        return defaults["size"] if defaults else None

    def follow_checkpoint(self, checkpoint: str | None, followed: dict | None, *values: Any,
                          page_load: bool = False) -> list[Any]:
        """The generation fields follow the chosen checkpoint, as Forge's do: ``values`` are each
        tab's FOLLOW_INPUTS in turn. Width and height take its native size, steps and CFG scale
        its family's own (SD 3.x, FLUX.1) or the Settings' defaults (UNet families); a tab's pair
        is changed only while it still holds what the page put there last (``followed``: by
        pair, {"size": [w, h], "sampling": [steps, cfg]}; a pair not in it: the Settings'
        defaults), one the user changed is left alone. On page load the Settings' defaults win
        unless they are the stock ones (512x512; 20 steps, CFG 7). The Distilled CFG Scale
        slider shows only for a checkpoint that takes it, and the sampler menu lists only the
        samplers it takes. -> [new followed, then each tab's FOLLOW_OUTPUTS]."""
        facts = self.checkpoint_defaults(checkpoint)
        tabs = [values[i:i + len(FOLLOW_INPUTS)] for i in range(0, len(values), len(FOLLOW_INPUTS))]
        if facts is None:
            return [followed, *[gr.skip() for _ in range(len(tabs) * len(FOLLOW_OUTPUTS))]]
        settings = page_defaults(self.settings)
        followed = dict(followed or {})
        own_sampling = None if facts["steps"] is None else [facts["steps"], facts["cfg_scale"]]
        size = _follow(followed, "size", [settings["width"], settings["height"]],
                       [facts["size"]] * 2 if facts["size"] else None, page_load)
        sampling = _follow(followed, "sampling", [settings["steps"], settings["cfg_scale"]],
                           own_sampling or [settings["steps"], settings["cfg_scale"]], page_load)
        out: list[Any] = [followed]
        for width, height, steps, cfg_scale, sampler in tabs:
            out += _followed_pair(size, [width, height]) + _followed_pair(sampling, [steps, cfg_scale])
            out += [gr.Slider(visible=facts["distilled_cfg_scale"]), self._sampler_menu(facts["samplers"], sampler)]
        return out

    def sampler_menu(self, checkpoint: str | None, sampler: str | None) -> Any:
        """The sampler menu for ``checkpoint`` (after a paste: an infotext's sampler that the
        checkpoint refuses is replaced, and said)."""
        facts = self.checkpoint_defaults(checkpoint)
        if facts is None:
            return gr.skip()
        menu = self._sampler_menu(facts["samplers"], sampler)
        if sampler and sampler not in facts["samplers"]:
            gr.Info(f"Sampler: {sampler} does not work with {checkpoint}: {menu.value} instead")
        return menu

    def _sampler_menu(self, samplers: list[str], current: str | None) -> Any:
        """The sampler dropdown listing ``samplers``, keeping ``current`` when it is one of them,
        else the Settings' default sampler, else the first."""
        default = self.settings["default_sampler"]
        value = current if current in samplers else default if default in samplers else samplers[0]
        return gr.Dropdown(choices=samplers, value=value)

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
            vae = f" with VAE {loaded.vae_path.name}" if loaded.vae_path is not None else ""
            return f'<div class="studio-note studio-model">Loaded: {html.escape(str(loaded.name) + vae)}</div>'
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

    def load_picked_checkpoint(self, name: str | None) -> Iterator[Any]:
        """After an extra-networks click: load the checkpoint a Checkpoints card named (None:
        the click was another card's, nothing to load)."""
        if not name:
            yield gr.skip()
            return
        yield from self.load_checkpoint(name)

    def apply_model_settings(self) -> bool:
        """Hand the settings' sd_model_prediction and sd_noise_schedule to the engine; True when
        that changes them (the engine loads the checkpoint again at the next job). The values
        saved last, here or through the API, are the engine's."""
        wanted = engine_overrides(self.settings.values())
        if (self.engine.prediction, self.engine.zero_terminal_snr) == wanted:
            return False
        self.engine.prediction, self.engine.zero_terminal_snr = wanted
        return True


    # ------------------------------------------------------------------ VAE

    def vae_choices(self) -> list[str]:
        """The VAE menu: Automatic, None, then the files in models/VAE."""
        from core.vae_files import VAE_CHOICES

        try:
            files = list(self.engine.list_vaes())
        except OSError as exc:
            log.warning("could not list VAE files: %s", exc)
            files = []
        return [*VAE_CHOICES, *files]

    def refresh_vaes(self) -> Any:
        choices = self.vae_choices()
        current = self.settings["sd_vae"]
        return gr.Dropdown(choices=choices, value=current if current in choices else choices[0])

    def follow_vae_setting(self) -> None:
        """The saved sd_vae (set here, or through the API) is the engine's choice; a saved file
        that is gone since falls back to Automatic with a warning (as A1111 does), so that the
        start-up load and every job do not fail on it."""
        saved = self.settings["sd_vae"]
        if saved not in self.vae_choices():
            log.warning("the VAE %r chosen in the settings is not in %s: using Automatic", saved,
                        self.engine.vae_dir)
            saved = "Automatic"
        self.engine.vae = saved

    def change_vae(self, choice: str | None) -> str:
        """The VAE menu changed: the engine applies it to the loaded model at once (after a
        running job) and the setting is saved; a file that does not fit is refused with the
        model and the setting left as they were. -> the model status line."""
        if not choice or choice == self.engine.vae:
            return self.model_status()
        kept = self.engine.vae
        try:
            with self.engine.exclusive():
                self.engine.vae = choice
                self.engine.apply_vae()
            self.settings.update({"sd_vae": choice})
        except (EngineError, SettingsError, OSError) as exc:
            self.engine.vae = kept
            raise gr.Error(error_message(exc, f"VAE {choice}"), print_exception=False) from None
        return self.model_status()


# Each generation tab's fields that follow the checkpoint: what follow_checkpoint reads of a tab, and what it sets.
FOLLOW_INPUTS = ("width", "height", "steps", "cfg_scale", "sampler")
FOLLOW_OUTPUTS = ("width", "height", "steps", "cfg_scale", "distilled_cfg_scale", "sampler")


def _follow(followed: dict, key: str, default: list, wanted: list | None, page_load: bool) -> tuple[list, list] | None:
    """(what the page put into pair ``key`` last, what it puts there now), recorded in
    ``followed``; None when the pair stays as it is: nothing is wanted, or on page load the
    Settings' ``default`` is not the stock one (FORM_DEFAULTS)."""
    stock = {"size": ["width", "height"], "sampling": ["steps", "cfg_scale"]}[key]
    if wanted is None or (page_load and not _same(default, [FORM_DEFAULTS[name] for name in stock])):
        return None
    before = followed.get(key) or default
    followed[key] = wanted
    return before, wanted


def _followed_pair(follow: tuple[list, list] | None, values: list) -> list[Any]:
    """A tab's pair: the wanted values when it still holds what the page put there, else left alone."""
    if follow is None or not _same(values, follow[0]):
        return [gr.skip(), gr.skip()]
    return list(follow[1])


def _same(values: list, others: list) -> bool:
    """The same numbers (the page sends 1024.0 for 1024, or "7" from a text box)."""
    try:
        return [float(v) for v in values] == [float(o) for o in others]
    except (TypeError, ValueError):
        return False
