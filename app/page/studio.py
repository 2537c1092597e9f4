"""What the page does, apart from how it is laid out: one object per area of the page, each
taking and returning plain values, so it can be tested without a browser. :class:`StudioUI`
holds them and what they share (the engine, the settings, the styles)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import gradio as gr

from app.page.extra_networks import ExtraNetworks
from app.page.gallery import Gallery
from app.page.generation import Generation
from app.page.models import Models
from app.page.outputs import Outputs
from app.page.prompt_tools import PromptTools
from app.page.styles_settings import StylesSettings
from app.page.superres import SuperResolution, default_upscaler
from app.settings import Settings, default_settings_file
from app.styles import StyleDatabase
from core.engine_protocol import EngineProtocol


class StudioUI:
    """The page's behaviour over an engine (core.engine.Engine, or any EngineProtocol).
    ``served_roots``: the folders the server serves images from, fixed at its start (default:
    the engine's output folder); the page saves only inside them. ``allowed_dirs``: the folders
    super-resolution batches may read and write (default: the output folder and inputs/ beside
    launch.py)."""

    def __init__(self, engine: EngineProtocol, settings: Settings | None = None, styles: StyleDatabase | None = None,
                 served_roots: Sequence[str | Path] | None = None,
                 allowed_dirs: Sequence[str | Path] | None = None):
        self.engine = engine
        self.settings = settings if settings is not None else Settings(default_settings_file())
        self.styles = styles if styles is not None else StyleDatabase()
        self.outputs = Outputs(engine, self.settings, served_roots)
        self.models = Models(engine, self.settings)
        self.generation = Generation(engine, self.settings, self.styles, self.outputs, self.models)
        self.superres = SuperResolution(engine, self.settings, self.outputs, self.generation, allowed_dirs)
        self.gallery = Gallery(self.outputs)
        self.styles_settings = StylesSettings(self.settings, self.styles, self.outputs, self.models)
        self.models.apply_model_settings()
        self.models.follow_vae_setting()
        self.extra_networks = ExtraNetworks(engine, self.settings)
        self.prompt_tools = PromptTools(engine, self.generation)

    def extension_tabs(self) -> list[tuple[str, str, Callable[[Any], Any]]]:
        """(extension name, tab title, build function) for every UI tab an enabled extension
        registered (``api.add_ui_tab``); a build function takes the engine."""
        return [(extension.name, getattr(build, "title", extension.name), build)  # a title is optional
                for extension in self.engine.extensions.enabled() for build in extension.ui_tabs]

    def page_load(self, default_keys: list[str], style_pickers: int, refiners: int) -> list[Any]:
        """What every page load shows anew: the Settings' defaults for the fields
        ``default_keys`` name, the checkpoint dropdown (showing the model loaded or loading),
        the ``style_pickers`` style dropdowns, the hires and Super-resolution upscalers, and
        the ``refiners`` refiner dropdowns."""
        values = self.styles_settings.page_defaults()
        current = self.models.current_checkpoint()
        upscalers = self.models.upscalers()
        return [
            *[values[key] for key in default_keys],
            gr.Dropdown(choices=self.models.checkpoint_choices(), **({"value": current} if current else {})),
            *self.styles_settings.style_choices(style_pickers),
            gr.Dropdown(choices=self.models.hires_upscalers()),
            gr.Dropdown(choices=upscalers, value=default_upscaler(upscalers)),
            *[gr.Dropdown(choices=self.models.refiner_choices()) for _ in range(refiners)],
        ]
