"""``RouteGroup``: what every route group of the API shares, taken from its ``SdApi``."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.api.service import SdApi


class RouteGroup:
    """The routes of one subject; each group's ``register(router)`` puts them on the API's router."""

    def __init__(self, api: SdApi):
        self.engine = api.engine
        self.settings = api.options  # the settings store, shared with the page
        self.limits = api.limits
        self.models_root = api.models_root
        self.queue = api.queue
        self.state = api.state
        self.checkpoints = api.checkpoints
