"""``SdApi``: the API of one engine. It holds the parts the route groups share (the settings
store, the limits, the device queue and the state /progress reports, the checkpoint list) and
puts every group's routes on one router under /sdapi/v1."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

from fastapi import APIRouter

from app.api.checkpoints import Checkpoints
from app.api.extras import ExtrasRoutes
from app.api.generation import GenerationRoutes
from app.api.info import InfoRoutes
from app.api.jobs import DeviceQueue, JobState
from app.api.limits import ApiLimits
from app.api.models import ModelRoutes
from app.api.options import OptionRoutes, public_flags
from app.api.schemas import API_PREFIX
from app.settings import Settings, engine_overrides


class SdApi:
    """``router`` holds the routes; ``shutdown()`` stops the running job and the worker."""

    def __init__(
        self,
        engine,
        *,
        settings: Settings | None = None,
        limits: ApiLimits | None = None,
        cmd_flags: dict | None = None,
        models_root: str | os.PathLike | None = None,
    ):
        self.engine = engine
        self.limits = limits or ApiLimits()
        self.options = settings if settings is not None else Settings(None)  # the page's store when served together
        self.cmd_flags = public_flags(cmd_flags or {})
        if models_root is None:
            models_root = engine.models_dir
        self.models_root = Path(models_root)
        self.state = JobState()
        self.queue = DeviceQueue(self.state)
        self.checkpoints = Checkpoints(engine, self.options)
        self.options_routes = OptionRoutes(self)
        self.generation_routes = GenerationRoutes(self)
        self.extras_routes = ExtrasRoutes(self)
        self.info_routes = InfoRoutes(self)
        self.models_routes = ModelRoutes(self)
        self.router = APIRouter(prefix=API_PREFIX, tags=["sdapi"])
        for group in (self.generation_routes, self.extras_routes, self.info_routes, self.options_routes,
                      self.models_routes):
            group.register(self.router)
        # The saved choice of what checkpoints predict, for the next load.
        engine.prediction, engine.zero_terminal_snr = engine_overrides(self.options.values())

    def shutdown(self) -> None:
        with contextlib.suppress(Exception):
            self.engine.interrupt()
        self.queue.shutdown()
