"""One upscale job (A1111's Extras tab): the command line, the REST API and the page all run it.

A job names an upscaler, optionally a second one blended over the first (A1111's
``upscaler_2`` at ``upscaler_2_visibility``), and the size: a factor, an exact size, or A1111's
"scale to" (the picture enlarged to cover a width and height, then cropped to it or not). The
models run tiled, the last one is kept in a model cache, and a progress callback hears every
tile and may raise to stop the job there.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from core.errors import EngineError
from core.upscaling.registry import ModelCache, ProgressFn, UpscalerInfo, find_upscaler, load_upscaler
from core.upscaling.upscale import DEFAULT_OVERLAP, DEFAULT_TILE, postprocess_infotext, target_size

NO_UPSCALER = ("", "None")
KEEP_AS_IS = "None"  # as the first upscaler: the picture comes back unchanged


@dataclass(frozen=True)
class ExtrasPlan:
    """The sizes of one picture's job: ``upscaled`` what the upscalers make, ``final`` after the
    crop; ``identity`` whether the upscalers were asked for factor 1; ``info`` the infotext's
    ``scale=`` or ``size=``."""

    upscaled: tuple[int, int]
    final: tuple[int, int]
    identity: bool
    info: dict


@dataclass(frozen=True)
class ExtrasJob:
    """What to do to each picture. ``size`` (width, height): with ``crop=None`` the result is
    exactly that size (a side given as 0 follows the aspect ratio); with ``crop`` True or False,
    A1111's "scale to": enlarged by the factor that covers both sides, then cropped to the size
    around the centre (True) or left whole (False). ``x4``: settings of the SD x4 upscaler
    (prompt, noise_level, steps, ...) for this job, applied where the upscaler is one."""

    upscaler: str
    scale: float | None = None
    size: tuple[int, int] | None = None
    crop: bool | None = None
    upscaler_2: str = ""
    upscaler_2_visibility: float = 0.0
    tile: int = DEFAULT_TILE
    overlap: int = DEFAULT_OVERLAP
    x4: dict[str, Any] = field(default_factory=dict)

    @property
    def blends(self) -> bool:
        """Whether a second upscaler is blended in."""
        return self.upscaler_2 not in NO_UPSCALER and self.upscaler_2_visibility > 0

    @property
    def upscaler_label(self) -> str:
        """The infotext's upscaler name: both names when a second one is blended in."""
        return f"{self.upscaler}, {self.upscaler_2}" if self.blends else self.upscaler

    def upscalers(self, models_root: str | os.PathLike) -> list[UpscalerInfo]:
        """The upscalers this job runs, looked up (a bad name fails before any work)."""
        if not 0 <= self.upscaler_2_visibility <= 1:
            raise EngineError(f"must be between 0 and 1, got {self.upscaler_2_visibility}", "upscaler_2_visibility")
        if self.tile < 0 or self.overlap < 0:
            raise EngineError(f"tile ({self.tile}) and overlap ({self.overlap}) must not be negative", "upscale")
        found = [find_upscaler(self.upscaler, models_root)]
        if self.blends:
            found.append(_find_second(self.upscaler_2, models_root))
        return found

    def plan(self, image_size: tuple[int, int]) -> ExtrasPlan:
        """The sizes for a picture of ``image_size``; EngineError when over the limits."""
        if self.crop is None or self.size is None:
            upscaled, identity = target_size(image_size, self.scale, self.size)
            info = {"scale": self.scale} if self.size is None else {"size": upscaled}
            return ExtrasPlan(upscaled, upscaled, identity, info)
        if self.scale is not None:
            raise EngineError("give a scale or a target size, not both", "upscale")
        width, height = image_size
        want_w, want_h = (int(n or 0) for n in self.size)
        if want_w <= 0 or want_h <= 0:
            raise EngineError(f"target size {self.size!r} needs a positive width and height", "upscale")
        factor = max(want_w / width, want_h / height)
        cover = (max(want_w, round(width * factor)), max(want_h, round(height * factor)))
        upscaled, identity = target_size(image_size, size=cover)
        return ExtrasPlan(upscaled, (want_w, want_h) if self.crop else upscaled, identity, {"size": (want_w, want_h)})


def _find_second(name: str, models_root) -> UpscalerInfo:
    """The second upscaler; its errors name upscaler_2, not the first one's field."""
    try:
        return find_upscaler(name, models_root)
    except EngineError as e:
        if e.field != "upscaler":
            raise
        raise e.renamed("upscaler_2") from None


@dataclass
class ExtrasResult:
    image: Image.Image
    infotext: str


def run_extras(
    image: Image.Image,
    job: ExtrasJob,
    *,
    models_root: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    cache: ModelCache | None = None,
    progress: ProgressFn | None = None,
    source_infotext: str | None = None,
) -> ExtrasResult:
    """``image`` through ``job``: the upscaler (blended with the second one), then the crop, with
    A1111's extras infotext (after ``source_infotext``, the picture's own parameters, by default
    its PNG ``parameters`` chunk). ``progress(done, total)`` is called after every tile and may
    raise to stop the job."""
    if not isinstance(image, Image.Image):
        raise EngineError(f"the input is not an image (got {type(image).__name__})", "upscale")
    infos = job.upscalers(models_root)
    if source_infotext is None and isinstance(image.info.get("parameters"), str):
        source_infotext = image.info["parameters"]
    if job.upscaler == KEEP_AS_IS:
        # A1111's extras upscale step returns at once when its first upscaler is "None": no
        # resampling, no crop, no second upscaler, no upscale fields in the infotext. (Elsewhere,
        # in hires fix and SD upscale, "None" still reaches the size by Lanczos, as there.)
        return ExtrasResult(image.copy(), source_infotext or "")
    plan = job.plan(image.size)

    def one(info: UpscalerInfo) -> Image.Image:
        upscaler = load_upscaler(info, device, dtype, cache)
        extra = {"settings": upscaler.with_settings(**job.x4)} if job.x4 and info.kind == "x4" else {}
        return upscaler.upscale(image, plan.upscaled, tile=int(job.tile), overlap=int(job.overlap),
                                identity=plan.identity, progress=progress, **extra)

    result = one(infos[0])
    if len(infos) > 1:
        second = one(infos[1])
        mode = "RGBA" if "A" in result.getbands() else "RGB"
        second = second.resize(result.size) if second.size != result.size else second
        result = Image.blend(result.convert(mode), second.convert(mode), job.upscaler_2_visibility)
    if plan.final != result.size:
        w, h = plan.final
        left, top = (result.width - w) // 2, (result.height - h) // 2
        result = result.crop((left, top, left + w, top + h))
    infotext = postprocess_infotext(job.upscaler_label, source=source_infotext, **plan.info)
    return ExtrasResult(result, infotext)
