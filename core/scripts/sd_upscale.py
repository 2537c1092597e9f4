"""A1111's "SD upscale" (img2img): the picture enlarged by an upscaler, then redrawn in
overlapping img2img tiles of the job's width x height (core/pipelines/sd_upscale.py).

script_args, A1111's order: info (a text A1111's page shows; ignored), overlap (pixels tiles
share), upscaler (a name as GET /upscalers lists it, or its index in that list),
scale_factor."""
from __future__ import annotations

from typing import Any, Sequence

from core.params import GenerationParams
from core.scripts import Plan, ScriptArgument, ScriptContext, argument, as_number, bad_argument, check_jobs

MAX_OVERLAP = 256  # A1111's slider's end


class SdUpscale:
    title = "SD upscale"
    img2img_only = True

    def arguments(self, img2img: bool, context: ScriptContext) -> list[ScriptArgument]:
        names = context.upscalers()
        return [ScriptArgument("Info", "Will upscale the image by the selected scale factor; use width and height "
                                       "sliders to set tile size"),
                ScriptArgument("Tile overlap", 64, minimum=0, maximum=MAX_OVERLAP, step=16),
                ScriptArgument("Upscaler", names[0] if names else None, choices=names),
                ScriptArgument("Scale Factor", 2.0, minimum=1.0, maximum=4.0, step=0.05)]

    def plan(self, params: GenerationParams, args: Sequence[Any], img2img: bool, context: ScriptContext) -> Plan:
        overlap = as_number(argument(args, 1, 64), "overlap", 0, MAX_OVERLAP, whole=True)
        scale = as_number(argument(args, 3, 2.0), "scale_factor", 1, 8)
        upscaler = upscaler_name(argument(args, 2, "Lanczos"), context.upscalers())
        if overlap >= min(params.width, params.height):
            raise bad_argument("overlap", f"must be smaller than the tile ({params.width}x{params.height}), got {overlap}")
        check_jobs([params], "scale_factor")
        return Plan(jobs=[params], sd_upscale={"upscaler": upscaler, "scale": scale, "overlap": overlap})


def upscaler_name(value: Any, names: list[str]) -> str:
    """An upscaler given by name (any case) or by its index in ``names`` (GET /upscalers' order)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) or (isinstance(value, str) and value.isdigit()):
        index = int(value)
        if float(value) != index or not 0 <= index < len(names):
            raise bad_argument("upscaler", f"index {value} is not in the list of {len(names)} upscalers")
        return names[index]
    for name in names:
        if str(value).strip().lower() == name.lower():
            return name
    raise bad_argument("upscaler", f"unknown upscaler {value!r}; GET /upscalers lists them: {', '.join(names)}")
