"""The generation forms, in one place: the fields of each generation tab, their defaults,
form -> GenerationParams, and infotext -> values.

The defaults are GenerationParams' own (shown as the page's labels where the page shows a
label), and the mode lists are core's, so a default or a mode changes in one place. Nothing
here imports gradio or reads files: the page (app/page/) and the API both use it, and a bad
value raises :class:`FormError`, which each turns into its own kind of error.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Sequence

from core.params import GenerationParams
from core.pipelines.masking import FILL_MODES, INPAINT_AREAS, MASK_MODES, RESIZE_MODES

TABS = ("txt2img", "img2img", "inpaint")
OUTPAINT_DIRECTIONS = ("left", "right", "up", "down")
INPAINT_SOURCES = ("Paint the mask", "Upload a mask")
SAME = "Use same"  # the hires sampler/schedule choice for "the first pass's"
NO_REFINER = "None"

COMMON_FIELDS = (
    "prompt", "negative_prompt", "styles", "checkpoint", "sampler", "scheduler", "steps", "cfg_scale",
    "distilled_cfg_scale", "width", "height", "batch_count", "batch_size", "seed", "subseed", "subseed_strength", "clip_skip",
)
HIRES_FIELDS = (
    "enable_hr", "hr_upscaler", "hr_second_pass_steps", "hr_denoising_strength", "hr_scale", "hr_resize_x",
    "hr_resize_y", "hr_sampler_name", "hr_scheduler", "hr_prompt", "hr_negative_prompt",
)
REFINER_FIELDS = ("refiner_checkpoint", "refiner_switch_at")
# The Script menu (A1111's scripts, core/scripts/) and each script's fields; "sdu_": SD upscale,
# on img2img only. script_from_form turns them into A1111's script_args.
NO_SCRIPT = "None"
SCRIPT_DEFAULTS: dict[str, Any] = {
    "script": NO_SCRIPT,
    "xyz_x_type": "Seed", "xyz_x_values": "", "xyz_y_type": "Nothing", "xyz_y_values": "",
    "xyz_z_type": "Nothing", "xyz_z_values": "", "xyz_draw_legend": True, "xyz_include_lone_images": False,
    "xyz_no_fixed_seeds": False, "xyz_margin_size": 0,
    "matrix_put_at_start": False, "matrix_different_seeds": False, "matrix_prompt_type": "positive",
    "matrix_delimiter": "comma", "matrix_margin_size": 0,
    "pff_iterate": False, "pff_iterate_batch": False, "pff_position": "start", "pff_text": "",
    "sdu_overlap": 64, "sdu_upscaler": "Lanczos", "sdu_scale": 2.0,
}
SCRIPT_FIELDS = tuple(name for name in SCRIPT_DEFAULTS if not name.startswith("sdu_"))
SD_UPSCALE_FIELDS = tuple(name for name in SCRIPT_DEFAULTS if name.startswith("sdu_"))
# Seamless tiling (A1111's "Tiling" checkbox): on every generation tab (A1111's img2img, which
# holds inpainting, has it too).
TILING_FIELDS = ("tiling",)
FORM_FIELDS = {
    "txt2img": COMMON_FIELDS + HIRES_FIELDS + REFINER_FIELDS + TILING_FIELDS + SCRIPT_FIELDS,
    "img2img": COMMON_FIELDS + ("init_image", "resize_mode", "denoising_strength") + REFINER_FIELDS + TILING_FIELDS
    + SCRIPT_FIELDS + SD_UPSCALE_FIELDS,
    "inpaint": COMMON_FIELDS + (
        "inpaint_source", "editor", "inpaint_image", "inpaint_mask", "resize_mode", "denoising_strength",
        "mask_blur", "mask_mode", "inpainting_fill", "inpaint_full_res", "inpaint_full_res_padding",
        "outpaint_directions", "outpaint_pixels",
    ) + REFINER_FIELDS + TILING_FIELDS,
}
# Form fields with no GenerationParams attribute of their own. The hires pass has its own
# denoising strength on the page (A1111's 0.7), sent as denoising_strength of a txt2img job.
_PAGE_ONLY_DEFAULTS: dict[str, Any] = {
    "styles": [], "hr_denoising_strength": 0.7, "init_image": None, "inpaint_source": INPAINT_SOURCES[0],
    "editor": None, "inpaint_image": None, "inpaint_mask": None, "outpaint_directions": [], "outpaint_pixels": 128,
    **SCRIPT_DEFAULTS,
}
# Form fields that show a GenerationParams value as a label: field -> (attribute, labels by value).
_LABELLED = {
    "resize_mode": ("resize_mode", RESIZE_MODES),
    "mask_mode": ("inpainting_mask_invert", MASK_MODES),
    "inpainting_fill": ("inpainting_fill", FILL_MODES),
    "inpaint_full_res": ("inpaint_full_res", INPAINT_AREAS),
}
# GenerationParams' "none" for these is shown as a choice of its own.
_NONE_CHOICE = {"hr_sampler_name": SAME, "hr_scheduler": SAME, "refiner_checkpoint": NO_REFINER}


def _form_defaults() -> dict[str, Any]:
    """Every form field's default, from GenerationParams() where it has the field."""
    params = GenerationParams()
    defaults: dict[str, Any] = {}
    for name in dict.fromkeys(name for tab in TABS for name in FORM_FIELDS[tab]):
        if name in _PAGE_ONLY_DEFAULTS:
            defaults[name] = _PAGE_ONLY_DEFAULTS[name]
        elif name in _LABELLED:
            attr, labels = _LABELLED[name]
            defaults[name] = labels[int(getattr(params, attr))]
        elif name in _NONE_CHOICE:
            defaults[name] = getattr(params, name) or _NONE_CHOICE[name]
        else:
            defaults[name] = getattr(params, name)
    return defaults


FORM_DEFAULTS: dict[str, Any] = _form_defaults()
PARAM_DEFAULTS = GenerationParams()
# Settings that give a form field its value when the page loads (the rest keep FORM_DEFAULTS).
SETTING_DEFAULTS = {
    "sampler": "default_sampler", "scheduler": "default_scheduler", "steps": "default_steps",
    "cfg_scale": "default_cfg_scale", "width": "default_width", "height": "default_height",
    "denoising_strength": "default_denoising_strength",
}


class FormError(ValueError):
    """A form value that cannot become a GenerationParams value; the message names the field."""


def page_defaults(settings: Any) -> dict[str, Any]:
    """The form values the Settings' defaults give (``settings[key]`` reads a setting)."""
    return {name: settings[key] for name, key in SETTING_DEFAULTS.items()}


def complete_form(tab: str, values: Sequence[Any] | dict[str, Any]) -> dict[str, Any]:
    """Positional values in FORM_FIELDS[tab] order (as Gradio passes them), or a partial
    dict, -> a complete form."""
    names = FORM_FIELDS[tab]
    if isinstance(values, dict):
        unknown = set(values) - set(names)
        if unknown:
            raise ValueError(f"unknown fields for {tab}: {sorted(unknown)}")
        given = values
    else:
        given = dict(zip(names, values))
    return {name: given.get(name, FORM_DEFAULTS[name]) for name in names}


def label_index(value: Any, labels: Sequence[str]) -> int:
    """The index a form's choice stands for: the label's position, or the number itself."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if value in labels:
        return labels.index(value)
    return 0


class _Reader:
    """A form's values as GenerationParams wants them; an empty field takes its default."""

    def __init__(self, form: dict[str, Any]):
        self.form = form

    def whole(self, name: str) -> int:
        value = self.form.get(name)
        if value is None or value == "":
            return FORM_DEFAULTS[name]
        number = float(value)
        if not number.is_integer():
            raise FormError(f"{name}: must be a whole number, got {value}")
        return int(number)

    def real(self, name: str) -> float:
        """A number field; only None (not 0) is empty."""
        value = self.form.get(name)
        return float(value if value is not None else FORM_DEFAULTS[name])

    def real_or_default(self, name: str) -> float:
        """A number field where 0 means unset too."""
        return float(self.form.get(name) or FORM_DEFAULTS[name])

    def text(self, name: str) -> Any:
        return self.form.get(name) or FORM_DEFAULTS[name]

    def choice(self, name: str) -> str:
        """A hires sampler/schedule: "" (the first pass's) for "Use same" or nothing."""
        value = self.form.get(name)
        return "" if value in (None, "", _NONE_CHOICE[name]) else value


def _common(read: _Reader) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(
        steps=read.whole("steps"), cfg_scale=read.real("cfg_scale"), seed=read.whole("seed"),
        width=read.whole("width"), height=read.whole("height"), sampler=read.text("sampler"),
        scheduler=read.text("scheduler"), batch_size=read.whole("batch_size"), batch_count=read.whole("batch_count"),
        checkpoint=read.form.get("checkpoint") or None,
    )
    # Left out at their defaults, so a stand-in params class needs only what a job changes.
    clip_skip = read.whole("clip_skip")
    if clip_skip != PARAM_DEFAULTS.clip_skip:
        kwargs["clip_skip"] = clip_skip
    distilled = read.real("distilled_cfg_scale")
    if distilled != PARAM_DEFAULTS.distilled_cfg_scale:
        kwargs["distilled_cfg_scale"] = distilled
    strength = read.real_or_default("subseed_strength")
    if strength > 0:
        kwargs.update(subseed=read.whole("subseed"), subseed_strength=strength)
    return kwargs


def _hires(read: _Reader) -> dict[str, Any]:
    return dict(
        enable_hr=True, hr_upscaler=read.text("hr_upscaler"), hr_second_pass_steps=read.whole("hr_second_pass_steps"),
        denoising_strength=read.real("hr_denoising_strength"), hr_scale=read.real_or_default("hr_scale"),
        hr_resize_x=read.whole("hr_resize_x"), hr_resize_y=read.whole("hr_resize_y"),
        hr_sampler_name=read.choice("hr_sampler_name"), hr_scheduler=read.choice("hr_scheduler"),
        hr_prompt=read.form.get("hr_prompt") or "", hr_negative_prompt=read.form.get("hr_negative_prompt") or "",
    )


def _inpaint(read: _Reader) -> dict[str, Any]:
    form = read.form
    return dict(
        mask_blur=read.whole("mask_blur"),
        inpainting_mask_invert=label_index(form.get("mask_mode"), MASK_MODES),
        inpainting_fill=label_index(form.get("inpainting_fill"), FILL_MODES),
        inpaint_full_res=bool(label_index(form.get("inpaint_full_res"), INPAINT_AREAS)),
        inpaint_full_res_padding=read.whole("inpaint_full_res_padding"),
    )


def params_from_form(tab: str, form: dict[str, Any],
                     apply_styles: Callable[[list, str, str], tuple[str, str]]) -> GenerationParams:
    """GenerationParams from a complete form of ``tab``. ``apply_styles``
    (StyleDatabase.apply) puts the chosen styles into the prompts here, so the infotext records
    what the model was given (as A1111). Raises FormError for a value that cannot be used."""
    read = _Reader(form)
    prompt, negative = apply_styles(form.get("styles") or [], form.get("prompt") or "",
                                    form.get("negative_prompt") or "")
    kwargs = dict(prompt=prompt, negative_prompt=negative, **_common(read))
    if tab == "txt2img" and form.get("enable_hr"):
        kwargs.update(_hires(read))
    if form.get("refiner_checkpoint") not in (None, "", NO_REFINER):
        kwargs.update(refiner_checkpoint=form["refiner_checkpoint"], refiner_switch_at=read.real("refiner_switch_at"))
    if tab in ("img2img", "inpaint"):
        kwargs["denoising_strength"] = read.real("denoising_strength")
        kwargs["resize_mode"] = label_index(form.get("resize_mode"), RESIZE_MODES)
    if tab == "inpaint":
        kwargs.update(_inpaint(read))
    if form.get("tiling"):  # left out when off, as the other defaults
        kwargs["tiling"] = True
    return GenerationParams(**kwargs)


def script_from_form(tab: str, form: dict[str, Any]) -> tuple[str | None, list[Any]]:
    """The Script menu's choice as A1111's (script name, script_args); (None, []) for None.
    The X/Y/Z plot's values are always text here (csv_mode), the page has no dropdown lists."""
    title = form.get("script") or NO_SCRIPT
    if title == NO_SCRIPT:
        return None, []
    name = title.lower()
    if name == "x/y/z plot":
        axes = []
        for axis in ("x", "y", "z"):
            axes += [form.get(f"xyz_{axis}_type") or "Nothing", form.get(f"xyz_{axis}_values") or "", []]
        return name, axes + [bool(form.get("xyz_draw_legend")), bool(form.get("xyz_include_lone_images")), False,
                             bool(form.get("xyz_no_fixed_seeds")), False, False, False,
                             form.get("xyz_margin_size") or 0, True]
    if name == "prompt matrix":
        return name, [bool(form.get("matrix_put_at_start")), bool(form.get("matrix_different_seeds")),
                      form.get("matrix_prompt_type") or "positive", form.get("matrix_delimiter") or "comma",
                      form.get("matrix_margin_size") or 0]
    if name == "prompts from file or textbox":
        return name, [bool(form.get("pff_iterate")), bool(form.get("pff_iterate_batch")),
                      form.get("pff_position") or "start", form.get("pff_text") or ""]
    if name == "sd upscale" and tab == "img2img":
        return name, ["", form.get("sdu_overlap") or 0, form.get("sdu_upscaler") or "Lanczos",
                      form.get("sdu_scale") or SCRIPT_DEFAULTS["sdu_scale"]]
    raise FormError(f"Script: {title!r} is not a script of {tab}")


# ---------------------------------------------------------------------- infotext -> values

NO_PARAMETERS = "no generation parameters in this image"
# Inpainting fields A1111 writes that core.infotext does not read: key -> attribute. The
# numbers are read here; the labels become their index (or, for the area, a bool).
_INPAINT_NUMBERS = {"Mask blur": "mask_blur", "Masked area padding": "inpaint_full_res_padding"}
_INPAINT_LABELS = {"Mask mode": ("inpainting_mask_invert", MASK_MODES),
                   "Masked content": ("inpainting_fill", FILL_MODES)}
_HIRES_KEYS = ("Hires upscale", "Hires resize-1", "Hires upscaler")
_TITLE_HASH = re.compile(r" \[[0-9a-fA-F]{8,64}\]$")


def checkpoint_title_name(title: str) -> str:
    """A1111's checkpoint title ("name [short hash]") -> the name."""
    return _TITLE_HASH.sub("", title)


def values_from_infotext(text: str | None) -> tuple[dict[str, Any], dict[str, str]]:
    """What an infotext says, keyed by GenerationParams attribute (with ``enable_hr`` True when
    it names a hires pass, ``checkpoint`` and ``refiner_checkpoint`` as written), and notes on
    what it could not use, keyed by the attribute they are about ("infotext": the whole text).

    Only attributes the text names are given. Sampler names are resolved to this studio's (an
    old "DPM++ 2M Karras" gives its schedule too); an unknown sampler or schedule is left out
    with a note. A caller with its own field names maps each attribute to its name."""
    from core.infotext import FIELDS, param_attribute, params_from_infotext, parse_infotext

    if not text or not text.strip():
        return {}, {"infotext": NO_PARAMETERS}
    parsed = parse_infotext(text)
    params, unread = params_from_infotext(text)
    values: dict[str, Any] = {"prompt": params.prompt, "negative_prompt": params.negative_prompt}
    notes: dict[str, str] = {}
    for key, value in parsed.items():
        attr = param_attribute(key) or _INPAINT_NUMBERS.get(key)
        if attr is None or attr in values:
            continue
        if key in unread and key in FIELDS:  # a field core reads, with a value it could not
            notes[attr] = f"{key}: {unread[key]!r} not understood"
        elif key in _INPAINT_NUMBERS:
            try:
                values[attr] = int(float(value))
            except (TypeError, ValueError):
                notes[attr] = f"{key}: {value!r} not understood"
        else:
            values[attr] = getattr(params, attr)
    _inpaint_values(parsed, values)
    _check_sampling(values, notes)
    if any(key in parsed for key in _HIRES_KEYS):
        values["enable_hr"] = True
    if values.get("subseed_strength", 1) <= 0:
        values.pop("subseed", None)
    return values, notes


def _inpaint_values(parsed: dict[str, str], values: dict[str, Any]) -> None:
    for key, (attr, labels) in _INPAINT_LABELS.items():
        if parsed.get(key) in labels:
            values[attr] = labels.index(parsed[key])
    if "Inpaint area" in parsed:
        values["inpaint_full_res"] = parsed["Inpaint area"] == INPAINT_AREAS[1]


def _check_sampling(values: dict[str, Any], notes: dict[str, str]) -> None:
    """Samplers and schedules this studio has: old combined names resolved, others left out."""
    from core.sampling.samplers import SAMPLERS, resolve_sampler_name
    from core.sampling.schedules import AUTOMATIC, SCHEDULES

    schedules = [AUTOMATIC, *SCHEDULES]
    if "sampler" in values:
        try:
            sampler, schedule = resolve_sampler_name(values["sampler"])
        except Exception:
            notes["sampler"] = f"Sampler: {values.pop('sampler')!r} is not one this studio has"
        else:
            values["sampler"] = sampler
            if schedule != AUTOMATIC and "scheduler" not in values:
                values["scheduler"] = schedule
    if "scheduler" in values and values["scheduler"] not in schedules:
        notes["scheduler"] = f"Schedule type: {values.pop('scheduler')!r} is not one this studio has"
    for attr, known in (("hr_sampler_name", SAMPLERS), ("hr_scheduler", schedules)):
        if attr in values and values[attr] not in known:
            notes[attr] = f"{attr}: {values.pop(attr)!r} unknown"


def tab_fields(tab: str, values: dict[str, Any], notes: dict[str, str]) -> tuple[dict[str, Any], list[str]]:
    """values_from_infotext's ``values`` and ``notes`` -> the fields of ``tab`` they fill (as
    the form shows them) and the notes about those fields. On the inpaint tab the mask mode
    and the area are always set: an infotext without them was made with the defaults."""
    names = set(FORM_FIELDS[tab])
    fields: dict[str, Any] = {}
    kept = [note for attr, note in notes.items() if attr == "infotext" or _field(attr, tab) in names]
    for attr, value in values.items():
        name = _field(attr, tab)
        if name in _LABELLED:
            value = _LABELLED[name][1][int(value)]
        if name in names:
            fields[name] = value
    if tab == "inpaint":
        fields.setdefault("mask_mode", FORM_DEFAULTS["mask_mode"])
        fields.setdefault("inpaint_full_res", FORM_DEFAULTS["inpaint_full_res"])
    return fields, kept


def _field(attr: str, tab: str) -> str:
    """The form field that shows GenerationParams attribute ``attr`` on ``tab``."""
    if attr == "denoising_strength" and tab == "txt2img":
        return "hr_denoising_strength"
    return next((name for name, (labelled, _) in _LABELLED.items() if labelled == attr), attr)
