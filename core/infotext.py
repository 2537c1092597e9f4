"""A1111's "parameters" text: how an image records the settings that made it.

    a prompt
    Negative prompt: a negative prompt
    Steps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 512x512, Model hash: 0123456789, Model: name

The prompt and the negative prompt may take several lines; the last line holds ``Key: value``
fields separated by ``, ``. A value holding ``,`` ``:`` or a newline is written as a JSON string.

:func:`create_infotext` writes it, :func:`parse_infotext` reads it back into A1111's field
dictionary and :func:`params_from_infotext` into :class:`GenerationParams`.
"""
from __future__ import annotations

import dataclasses
import json
import re

from core.params import GenerationParams


def format_number(value: float) -> str:
    """7.0 -> "7", 7.5 -> "7.5": whole numbers without a decimal part (as A1111's UI gives
    them), others in the shortest form that reads back as the same float."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def quote(value) -> str:
    """A value holding ``,`` ``:`` or a newline is written as a JSON string, as A1111 does.

    Also quoted, so that they read back unchanged: values holding ``"`` or a carriage return,
    values with whitespace at either end, and the empty string (A1111 reads all of these
    JSON strings back correctly)."""
    text = str(value)
    if text == "" or text != text.strip() or any(c in text for c in ',:\n\r"'):
        return json.dumps(text, ensure_ascii=False)
    return text


def unquote(text: str) -> str:
    """A JSON string back to its text; anything else (or broken JSON) unchanged."""
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, str) else text


# A1111 field -> (GenerationParams attribute, type). A field whose attribute GenerationParams
# does not have (yet) goes into params.extra under its A1111 key instead, typed; "WxH" fields
# are split into "-1"/"-2" keys, as A1111 does. Attribute names for fields GenerationParams
# lacks follow A1111's StableDiffusionProcessing.
FIELDS: dict[str, tuple[str | None, type]] = {
    "Steps": ("steps", int),
    "Sampler": ("sampler", str),
    "Schedule type": ("scheduler", str),
    "CFG scale": ("cfg_scale", float),
    "Distilled CFG Scale": ("distilled_cfg_scale", float),  # Forge's, FLUX.1 dev
    "Seed": ("seed", int),
    "Size-1": ("width", int),
    "Size-2": ("height", int),
    "Model hash": (None, str),
    "Model": ("checkpoint", str),
    "VAE hash": (None, str),  # a separate VAE's short sha256 and file name (A1111's sd_vae)
    "VAE": (None, str),
    "Clip skip": ("clip_skip", int),
    "Batch size": ("batch_size", int),
    "Variation seed": ("subseed", int),
    "Variation seed strength": ("subseed_strength", float),
    "Seed resize from-1": ("seed_resize_from_w", int),
    "Seed resize from-2": ("seed_resize_from_h", int),
    "Denoising strength": ("denoising_strength", float),
    "Eta": ("eta", float),
    "S noise": ("s_noise", float),
    "Emphasis": ("emphasis", str),
    "Hires upscale": ("hr_scale", float),
    "Hires steps": ("hr_second_pass_steps", int),
    "Hires upscaler": ("hr_upscaler", str),
    "Hires resize-1": ("hr_resize_x", int),
    "Hires resize-2": ("hr_resize_y", int),
    "Hires sampler": ("hr_sampler_name", str),
    "Hires schedule type": ("hr_scheduler", str),
    "Hires CFG Scale": ("hr_cfg", float),
    "Hires checkpoint": ("hr_checkpoint_name", str),
    "Hires prompt": ("hr_prompt", str),
    "Hires negative prompt": ("hr_negative_prompt", str),
    "Refiner": ("refiner_checkpoint", str),  # "name [short hash]", as A1111 writes it
    "Refiner switch at": ("refiner_switch_at", float),
    "Noise Schedule": ("sd_noise_schedule", str),  # A1111's setting: "Zero Terminal SNR"
    "Tiling": ("tiling", bool),
}

_PARAM_NAMES = {f.name for f in dataclasses.fields(GenerationParams)}


def param_attribute(key: str) -> str | None:
    """The GenerationParams attribute an infotext field sets; None: it goes to params.extra."""
    attr = FIELDS[key][0] if key in FIELDS else None
    return attr if attr in _PARAM_NAMES else None


# Where create_infotext writes the fields it finds in params.extra (A1111's order).
_EXTRA_BEFORE_CFG = ("Schedule type",)
_EXTRA_AFTER_CFG = ("Distilled CFG Scale",)
_EXTRA_AFTER_MODEL = (
    "VAE hash", "VAE",
    "Variation seed", "Variation seed strength", "Seed resize from", "Denoising strength", "Eta", "S noise", "Emphasis",
)
_EXTRA_HIRES = (
    "Hires upscale", "Hires steps", "Hires upscaler", "Hires resize", "Hires sampler",
    "Hires schedule type", "Hires CFG Scale", "Hires checkpoint", "Hires prompt", "Hires negative prompt",
)


def _value(value) -> str:
    return format_number(value) if isinstance(value, float) else str(value)


def _extra_field(extra: dict, key: str):
    """params.extra's value for an infotext key; "WxH" keys are rebuilt from "-1"/"-2"."""
    if key in extra:
        return extra[key]
    w, h = extra.get(f"{key}-1"), extra.get(f"{key}-2")
    if w is not None and h is not None:
        return f"{w}x{h}"
    return None


def create_infotext(
    params: GenerationParams, seed: int, model_name: str | None, model_hash: str | None,
    batch_index: int = 0, extra: dict | None = None,
) -> str:
    """The infotext of image ``batch_index`` of a batch made with ``params`` and ``seed``.

    Known A1111 fields that params_from_infotext put in ``params.extra`` (FIELDS without a
    GenerationParams attribute) are written too. Fields for the other GenerationParams
    attributes beyond the basic ones (schedule type, variation seed, ...) are the caller's to
    pass in ``extra``, which adds ``key: value`` fields (and overrides those of the same name).
    A field whose value is None is left out.
    """
    known = {**(params.extra or {}), **(extra or {})}  # placed in A1111's order where it has one
    fields: dict[str, object] = {"Steps": params.steps, "Sampler": params.sampler}
    for key in _EXTRA_BEFORE_CFG:
        fields[key] = _extra_field(known, key)
    fields["CFG scale"] = format_number(params.cfg_scale)
    for key in _EXTRA_AFTER_CFG:
        fields[key] = _extra_field(known, key)
    fields.update({
        "Seed": seed,
        "Size": f"{params.width}x{params.height}",
        "Model hash": model_hash if model_hash is not None else known.get("Model hash"),
        "Model": model_name,
    })
    for key in _EXTRA_AFTER_MODEL:
        fields[key] = _extra_field(known, key)
    if params.batch_size > 1:
        fields["Batch size"] = params.batch_size
        fields["Batch pos"] = batch_index
    if params.clip_skip > 1:
        fields["Clip skip"] = params.clip_skip
    for key in _EXTRA_HIRES:
        fields[key] = _extra_field(known, key)
    fields = {k: v for k, v in fields.items() if v is not None}
    fields.update({k: v for k, v in (extra or {}).items() if k not in fields})  # new keys go at the end
    settings = ", ".join(f"{k}: {quote(_value(v))}" for k, v in fields.items() if v is not None)
    lines = [params.prompt]
    if params.negative_prompt:
        lines.append(f"Negative prompt: {params.negative_prompt}")
    lines.append(settings)
    return "\n".join(lines)


# One "Key: value" field of the last line: a label that starts with a word character, then a
# JSON string or anything up to the next comma.
_FIELD = re.compile(
    r"""\s*
    (\w[\w\ /-]+)
    :\s*
    ( "(?:\\.|[^\\"])+"
    | [^,]*
    )
    (?:,|$)""",
    re.X,
)
_SIZE = re.compile(r"^(\d+)x(\d+)$")
_NEGATIVE = "Negative prompt:"


def parse_infotext(text: str) -> dict[str, str]:
    """A1111's parse_generation_parameters, without its UI defaults.

    Returns ``{"Prompt": ..., "Negative prompt": ..., field: value, ...}`` with every field of
    the last line as text (JSON strings decoded); a ``WxH`` value ``v`` of field ``K`` becomes
    ``K-1`` and ``K-2``. The last line counts as fields only if it holds at least three, as in
    A1111; otherwise it is part of the prompt. Lines are stripped; lines from the first one
    starting with ``Negative prompt:`` on form the negative prompt. Unlike A1111 an empty value
    is kept (as "") rather than dropped, and no defaults (``Clip skip: 1``, ...) are added.
    """
    *lines, last = text.strip().split("\n")
    fields = _FIELD.findall(last)
    if len(fields) < 3:
        lines.append(last)
        fields = []

    prompt: list[str] = []
    negative: list[str] = []
    target = prompt
    for line in lines:
        line = line.strip()
        if line.startswith(_NEGATIVE):
            target = negative
            line = line[len(_NEGATIVE):].strip()
        if target or line:  # as A1111: empty lines are skipped while the text is still empty
            target.append(line)
    res: dict[str, str] = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}

    for key, value in fields:
        value = unquote(value)
        size = _SIZE.match(value)
        if size:
            res[f"{key}-1"], res[f"{key}-2"] = size.group(1), size.group(2)
        else:
            res[key] = value
    return res


def _convert(kind: type, value: str):
    if kind is bool:  # A1111 writes True/False; bool("False") would be True
        if value.strip().lower() not in ("true", "false"):
            raise ValueError(f"not true or false: {value!r}")
        return value.strip().lower() == "true"
    if kind is int:
        try:
            return int(value)
        except ValueError:
            number = float(value)
            if not number.is_integer():
                raise
            return int(number)
    return kind(value)


def params_from_infotext(text: str) -> tuple[GenerationParams, dict[str, str]]:
    """GenerationParams from an infotext, and the fields it has no place for.

    Known fields (FIELDS) set their GenerationParams attribute, or, where GenerationParams has
    no such attribute, go typed into ``params.extra`` under their A1111 key; everything else
    (and a known field whose value does not convert) is returned in the second dict, as text.
    """
    fields = parse_infotext(text)
    params = GenerationParams(prompt=fields.pop("Prompt"), negative_prompt=fields.pop("Negative prompt"))
    rest: dict[str, str] = {}
    for key, value in fields.items():
        if key in FIELDS:
            try:
                converted = _convert(FIELDS[key][1], value)
            except (ValueError, OverflowError):
                rest[key] = value
                continue
            attr = param_attribute(key)
            if attr:
                setattr(params, attr, converted)
            else:
                params.extra[key] = converted
        else:
            rest[key] = value
    return params, rest
