"""A1111's "parameters" text: how an image records the settings that made it.

    a prompt
    Negative prompt: a negative prompt
    Steps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 512x512, Model hash: 0123456789, Model: name
"""
from __future__ import annotations

from core.params import GenerationParams


def format_number(value: float) -> str:
    """7.0 -> "7", 7.5 -> "7.5": A1111 writes whole numbers without a decimal part."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def quote(value: str) -> str:
    """Values holding the field separators are written as JSON strings, as A1111 does."""
    import json

    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ',:\n"') else text


def create_infotext(
    params: GenerationParams, seed: int, model_name: str | None, model_hash: str | None,
    batch_index: int = 0, extra: dict | None = None,
) -> str:
    fields: dict[str, object] = {
        "Steps": params.steps,
        "Sampler": params.sampler,
        "CFG scale": format_number(params.cfg_scale),
        "Seed": seed,
        "Size": f"{params.width}x{params.height}",
        "Model hash": model_hash,
        "Model": model_name,
    }
    if params.batch_size > 1:
        fields["Batch size"] = params.batch_size
        fields["Batch pos"] = batch_index
    if params.clip_skip > 1:
        fields["Clip skip"] = params.clip_skip
    fields.update(extra or {})
    settings = ", ".join(f"{k}: {quote(v)}" for k, v in fields.items() if v is not None)
    lines = [params.prompt]
    if params.negative_prompt:
        lines.append(f"Negative prompt: {params.negative_prompt}")
    lines.append(settings)
    return "\n".join(lines)
