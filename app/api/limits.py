"""What one API request may ask for."""
from __future__ import annotations

import dataclasses

from core.params import MAX_SIZE, MAX_STEPS


@dataclasses.dataclass
class ApiLimits:
    """What one request may ask for. The defaults are the engine's own limits; a server that
    must stay responsive (or a test) lowers them."""

    max_steps: int = MAX_STEPS  # steps, and hires second-pass steps
    max_size: int = MAX_SIZE  # width and height, also of the hires result
    max_images: int = 100  # batch_size * n_iter
    max_input_pixels: int = 8192 * 8192  # an uploaded picture, before any work
    max_upscale_pixels: int = 8192 * 8192  # an upscaled result
    max_batch_files: int = 64  # extra-batch-images: pictures per request
    max_body_bytes: int = 256 * 1024 * 1024  # checked by server.py's middleware
