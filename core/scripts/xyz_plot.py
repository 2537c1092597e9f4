"""A1111's "X/Y/Z plot": one job per combination of up to three axes' values, drawn as a grid
(one X/Y grid per Z value, side by side) with each axis' values as labels.

script_args, A1111's order: x_type, x_values, x_values_dropdown, y_type, y_values,
y_values_dropdown, z_type, z_values, z_values_dropdown, draw_legend, include_lone_images,
include_sub_grids, no_fixed_seeds, vary_seeds_x, vary_seeds_y, vary_seeds_z, margin_size,
csv_mode. An axis type is an index into A1111's axis list of the tab (txt2img and img2img
differ: AXES below) or an axis label. Values follow A1111's syntax: comma-separated (CSV
quoting), number ranges "1-5", "1-10 (+2)", "1-10 [5]". Axes in A1111's list this engine
cannot honour are refused by name."""
from __future__ import annotations

import csv
import io
import itertools
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from core.errors import EngineError
from core.params import GenerationParams
from core.scripts import (Grid, Plan, ScriptArgument, ScriptContext, argument, as_bool, as_number, bad_argument,
                          check_grid_size, check_jobs, first_pictures, replace)

TXT2IMG, IMG2IMG, BOTH = "txt2img", "img2img", "both"


@dataclass(frozen=True)
class Axis:
    """One entry of A1111's axis list: its label, the tab(s) it is on, its value type, how a
    value changes a job (None: this engine cannot honour it) and how a label is written."""
    label: str
    tab: str = BOTH
    kind: type | str = str  # int, float, str, or "permutations" (Prompt order)
    apply: Callable[[GenerationParams, Any, list], GenerationParams] | None = None
    named_label: bool = True  # "Steps: 10" (True) or just "10"
    choices: str | None = None  # values come from a dropdown: "samplers", "schedules", "checkpoints", ...


def _field(name: str) -> Callable[[GenerationParams, Any, list], GenerationParams]:
    return lambda params, value, values: replace(params, **{name: value})


def _prompt_sr(params: GenerationParams, value: str, values: list) -> GenerationParams:
    """Prompt S/R: the first value is searched for in both prompts and replaced by this one."""
    return replace(params, prompt=params.prompt.replace(values[0], value),
                   negative_prompt=params.negative_prompt.replace(values[0], value))


def _prompt_order(params: GenerationParams, order: tuple, values: list) -> GenerationParams:
    """Prompt order: the listed words put in this order where they stand in the prompt."""
    prompt = params.prompt
    found = sorted((prompt.find(token), token) for token in order)
    parts = []
    for _, token in found:
        at = prompt.find(token)
        parts.append(prompt[:at])
        prompt = prompt[at + len(token):]
    return replace(params, prompt="".join(part + token for part, token in zip(parts, order)) + prompt)


def _size(params: GenerationParams, value: str, values: list) -> GenerationParams:
    width, _, height = value.lower().partition("x")
    return replace(params, width=int(width), height=int(height))


def _checkpoint_or_none(params: GenerationParams, value: str, values: list) -> GenerationParams:
    return replace(params, refiner_checkpoint=None if value in ("", "None", "none") else value)


# A1111's axis list (scripts/xyz_grid.py), in its order; each tab sees the entries for both tabs
# and its own, and an axis type is an index into that view.
AXES: tuple[Axis, ...] = (
    Axis("Nothing", named_label=False),
    Axis("Seed", kind=int, apply=_field("seed")),
    Axis("Var. seed", kind=int, apply=_field("subseed")),
    Axis("Var. strength", kind=float, apply=_field("subseed_strength")),
    Axis("Steps", kind=int, apply=_field("steps")),
    Axis("Hires steps", TXT2IMG, int, _field("hr_second_pass_steps")),
    Axis("CFG Scale", kind=float, apply=_field("cfg_scale")),
    Axis("Image CFG Scale", IMG2IMG, float),
    Axis("Prompt S/R", apply=_prompt_sr, named_label=False),
    Axis("Prompt order", kind="permutations", apply=_prompt_order, named_label=False),
    Axis("Sampler", TXT2IMG, apply=_field("sampler"), named_label=False, choices="samplers"),
    Axis("Hires sampler", TXT2IMG, apply=_field("hr_sampler_name"), choices="samplers"),
    Axis("Sampler", IMG2IMG, apply=_field("sampler"), named_label=False, choices="samplers"),
    Axis("Checkpoint name", apply=_field("checkpoint"), named_label=False, choices="checkpoints"),
    Axis("Negative Guidance minimum sigma", kind=float),
    Axis("Sigma Churn", kind=float),
    Axis("Sigma min", kind=float),
    Axis("Sigma max", kind=float),
    Axis("Sigma noise", kind=float, apply=_field("s_noise")),
    Axis("Schedule type", apply=_field("scheduler"), choices="schedules"),
    Axis("Schedule min sigma", kind=float),
    Axis("Schedule max sigma", kind=float),
    Axis("Schedule rho", kind=float),
    Axis("Skip Early CFG", kind=float),
    Axis("Beta schedule alpha", kind=float),
    Axis("Beta schedule beta", kind=float),
    Axis("Eta", kind=float, apply=_field("eta")),
    Axis("Clip skip", kind=int, apply=_field("clip_skip")),
    Axis("Denoising", kind=float, apply=_field("denoising_strength")),
    Axis("Initial noise multiplier", kind=float),
    Axis("Extra noise", kind=float),
    Axis("Hires upscaler", TXT2IMG, apply=_field("hr_upscaler"), choices="upscalers"),
    Axis("Cond. Image Mask Weight", IMG2IMG, float, _field("inpainting_mask_weight")),
    Axis("VAE", choices="vae"),
    Axis("Styles", choices="styles"),
    Axis("UniPC Order", kind=int),
    Axis("Face restore", named_label=False),
    Axis("Token merging ratio", kind=float),
    Axis("Token merging ratio high-res", kind=float),
    Axis("Always discard next-to-last sigma", choices="booleans"),
    Axis("SGM noise multiplier", choices="booleans"),
    Axis("Refiner checkpoint", apply=_checkpoint_or_none, named_label=False, choices="checkpoints"),
    Axis("Refiner switch at", kind=float, apply=_field("refiner_switch_at")),
    Axis("RNG source", choices="rng"),
    Axis("FP8 mode", choices="fp8"),
    Axis("Size", apply=_size),
)
AXIS_NAMES = ("x", "y", "z")


def axes_for(img2img: bool) -> list[Axis]:
    """The axis list of the txt2img or img2img tab, as A1111 indexes it."""
    tab = IMG2IMG if img2img else TXT2IMG
    return [axis for axis in AXES if axis.tab in (BOTH, tab)]


def find_axis(value: Any, img2img: bool, name: str) -> Axis:
    """An axis type: its index in the tab's list, or its label (any case)."""
    axes = axes_for(img2img)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value < len(axes):
            return axes[value]
        raise bad_argument(name, f"must be an axis index from 0 to {len(axes) - 1} or an axis label, got {value}")
    for axis in axes:
        if str(value).strip().lower() == axis.label.lower():
            return axis
    raise bad_argument(name, f"unknown axis {value!r}; the axes are: {', '.join(a.label for a in axes)}")


_INT_RANGE = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\(([+-]\d+)\s*\))?\s*")
_FLOAT_RANGE = re.compile(r"\s*([+-]?\s*\d+(?:\.\d*)?)\s*-\s*([+-]?\s*\d+(?:\.\d*)?)(?:\s*\(([+-]\d+(?:\.\d*)?)\s*\))?\s*")
_INT_COUNT = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\[(\d+)\s*])?\s*")
_FLOAT_COUNT = re.compile(r"\s*([+-]?\s*\d+(?:\.\d*)?)\s*-\s*([+-]?\s*\d+(?:\.\d*)?)(?:\s*\[(\d+(?:\.\d*)?)\s*])?\s*")
MAX_AXIS_VALUES = 1000  # a range like "1-1000000" is refused before it is expanded


def split_values(text: str) -> list[str]:
    """A1111's value list: CSV (quotes keep commas), each value stripped, empty values kept
    only where they are written (Prompt S/R may replace with nothing)."""
    rows = csv.reader(io.StringIO(text))
    return [value.strip() for value in itertools.chain.from_iterable(rows)]


def _number(text: str, kind: type, name: str) -> Any:
    try:
        return kind(text.replace(" ", "")) if kind is int else float(text)
    except ValueError:
        raise bad_argument(name, f"{text!r} is not a{' whole' if kind is int else ''} number") from None


def _expand(values: list[str], kind: type, name: str) -> list[Any]:
    """Number ranges expanded as A1111 does: "1-5", "1-10 (+2)" (a step), "1-10 [5]" (a count)."""
    ranged, counted = (_INT_RANGE, _INT_COUNT) if kind is int else (_FLOAT_RANGE, _FLOAT_COUNT)
    out: list[Any] = []
    for value in values:
        by_step, by_count = ranged.fullmatch(value), counted.fullmatch(value)
        if by_step is not None:
            start, end = _number(by_step.group(1), kind, name), _number(by_step.group(2), kind, name)
            step = _number(by_step.group(3), kind, name) if by_step.group(3) else 1
            if step == 0 or abs((end - start) / step) > MAX_AXIS_VALUES:
                raise bad_argument(name, f"the range {value!r} gives too many values (at most {MAX_AXIS_VALUES})")
            if kind is int:
                out += list(range(start, end + 1, step))
            else:
                out += np.arange(start, end + step, step).tolist()
        elif by_count is not None:
            start, end = _number(by_count.group(1), kind, name), _number(by_count.group(2), kind, name)
            count = int(float(by_count.group(3))) if by_count.group(3) else 1
            if count > MAX_AXIS_VALUES:
                raise bad_argument(name, f"the range {value!r} gives too many values (at most {MAX_AXIS_VALUES})")
            spaced = np.linspace(start, end, count).tolist()
            out += [int(v) for v in spaced] if kind is int else spaced
        else:
            out.append(_number(value, kind, name))
        if len(out) > MAX_AXIS_VALUES:
            raise bad_argument(name, f"has over {MAX_AXIS_VALUES} values")
    return out


def axis_values(axis: Axis, text: Any, dropdown: Any, csv_mode: bool, name: str) -> list[Any]:
    """An axis' values. An axis with choices takes them from the dropdown list (as A1111 does
    unless csv_mode), or from the text when the dropdown is empty."""
    if axis.label == "Nothing":
        return [None]
    if axis.choices and not csv_mode and dropdown:
        if not isinstance(dropdown, list):
            raise bad_argument(f"{name}_values_dropdown", f"must be a list, got {dropdown!r}")
        values = [str(v).strip() for v in dropdown]
    else:
        values = split_values(str(text or ""))
    if not values or values == [""]:
        raise bad_argument(f"{name}_values", f"gives no values for the {axis.label} axis")
    if axis.kind in (int, float):
        return _expand(values, axis.kind, f"{name}_values")
    if axis.kind == "permutations":
        if len(values) > 6:
            raise bad_argument(f"{name}_values", "Prompt order takes at most 6 values (720 orders)")
        return list(itertools.permutations(values))
    return values


def _confirm(axis: Axis, values: list[Any], params: GenerationParams, context: ScriptContext, name: str) -> list[Any]:
    """Names checked before anything runs (A1111's confirm): samplers, schedules, checkpoints,
    upscalers, sizes; Prompt S/R's first value must be in a prompt."""
    from core.sampling.samplers import resolve_sampler_name
    from core.sampling.schedules import resolve_schedule_name

    where = f"{name}_values"
    try:
        if axis.choices == "samplers":
            for value in values:
                resolve_sampler_name(value)
        elif axis.choices == "schedules":
            values = [resolve_schedule_name(value) for value in values]
        elif axis.choices == "checkpoints":
            values = [value if value in ("", "None", "none") and axis.label == "Refiner checkpoint"
                      else context.find_checkpoint(value, where) for value in values]
        elif axis.choices == "upscalers":
            from core.pipelines.hires import LATENT_UPSCALE_MODES

            known = context.upscalers()
            for value in values:
                if value not in LATENT_UPSCALE_MODES and value not in known:
                    raise bad_argument(where, f"unknown upscaler {value!r}")
    except EngineError as exc:
        raise exc.renamed(f"script_args.{where}") from None
    if axis.label == "Prompt S/R" and values[0] not in params.prompt and values[0] not in params.negative_prompt:
        raise bad_argument(where, f"Prompt S/R did not find {values[0]!r} in the prompt or negative prompt")
    if axis.label == "Size":
        for value in values:
            if not re.fullmatch(r"\d+\s*[xX]\s*\d+", value):
                raise bad_argument(where, f"a size is WIDTHxHEIGHT, got {value!r}")
    return values


def _label(axis: Axis, value: Any) -> str:
    """A1111's label of a value: "Steps: 10", or the value alone for names and prompts."""
    if axis.label == "Nothing":
        return ""
    if axis.kind == "permutations":
        return ", ".join(value)
    if isinstance(value, float):
        value = round(value, 8)
    if axis.label in ("Checkpoint name", "Refiner checkpoint"):
        value = str(value).replace("\\", "/").rsplit("/", 1)[-1]
    return f"{axis.label}: {value}" if axis.named_label else str(value)


class XyzPlot:
    title = "X/Y/Z plot"
    img2img_only = False

    def arguments(self, img2img: bool, context: ScriptContext) -> list[ScriptArgument]:
        labels = [axis.label for axis in axes_for(img2img)]
        out = []
        for name, default in zip(AXIS_NAMES, (labels[1], labels[0], labels[0])):
            out += [ScriptArgument(f"{name.upper()} type", default, choices=labels),
                    ScriptArgument(f"{name.upper()} values", ""),
                    ScriptArgument(f"{name.upper()} values", None, choices=[])]
        return out + [
            ScriptArgument("Draw legend", True), ScriptArgument("Include Sub Images", False),
            ScriptArgument("Include Sub Grids", False), ScriptArgument("Keep -1 for seeds", False),
            ScriptArgument("Vary seeds for X", False), ScriptArgument("Vary seeds for Y", False),
            ScriptArgument("Vary seeds for Z", False),
            ScriptArgument("Grid margins (px)", 0, minimum=0, maximum=500, step=2),
            ScriptArgument("Use text inputs instead of dropdowns", False),
        ]

    def plan(self, params: GenerationParams, args: Sequence[Any], img2img: bool, context: ScriptContext) -> Plan:
        csv_mode = as_bool(argument(args, 17, False), "csv_mode")
        axes, values = [], []
        for index, name in enumerate(AXIS_NAMES):
            axis = find_axis(argument(args, 3 * index, 1 if name == "x" else 0), img2img, f"{name}_type")
            if axis.label != "Nothing" and axis.apply is None:
                raise bad_argument(f"{name}_type", f"the {axis.label} axis is not supported by this server")
            found = axis_values(axis, argument(args, 3 * index + 1, ""), argument(args, 3 * index + 2, []),
                                csv_mode, name)
            axes.append(axis)
            values.append(_confirm(axis, found, params, context, name) if axis.label != "Nothing" else found)
        draw_legend = as_bool(argument(args, 9, True), "draw_legend")
        include_lone_images = as_bool(argument(args, 10, False), "include_lone_images")
        include_sub_grids = as_bool(argument(args, 11, False), "include_sub_grids")
        no_fixed_seeds = as_bool(argument(args, 12, False), "no_fixed_seeds")
        vary = [as_bool(argument(args, 13 + i, False), f"vary_seeds_{n}") for i, n in enumerate(AXIS_NAMES)]
        margin = as_number(argument(args, 16, 0), "margin_size", 0, 500, whole=True)
        if not no_fixed_seeds:
            params = replace(params, seed=context.random_seed() if params.seed == -1 else params.seed)
            values = [[context.random_seed() if axis.label in ("Seed", "Var. seed") and v == -1 else v for v in vs]
                      for axis, vs in zip(axes, values)]
        xs, ys, zs = values
        jobs = [_cell(params, axes, values, (ix, iy, iz), vary)
                for iz in range(len(zs)) for iy in range(len(ys)) for ix in range(len(xs))]
        try:
            check_jobs(jobs, "x_values")
        except EngineError as exc:
            if exc.field and exc.field.startswith("script_args."):
                raise
            raise bad_argument("x_values", f"a grid cell's {exc.field or 'value'}: {exc.reason}") from None
        widest = max(jobs, key=lambda j: j.width * j.height)
        check_grid_size(len(jobs), widest.width, widest.height, "x_values")
        labels = [[_label(axis, v) for v in vs] for axis, vs in zip(axes, values)]
        fields = _infotext_fields(axes, values)

        def assemble(results: list[list[Any]]) -> list[Grid]:
            return _grids(results, labels, len(xs), len(ys), len(zs), draw_legend, include_sub_grids, margin, fields)

        return Plan(jobs=jobs, assemble=assemble, include_pictures=include_lone_images,
                    order=_run_order(axes, [len(xs), len(ys), len(zs)]))


def _cell(params: GenerationParams, axes: list[Axis], values: list[list[Any]], index: tuple[int, int, int],
          vary: list[bool]) -> GenerationParams:
    """The job of one grid cell: each axis' value applied; with vary_seeds_x/y/z its seed moved
    on by the cell's place along those axes (A1111's numbering)."""
    job = params
    for axis, value_index, all_values in zip(axes, index, values):
        if axis.apply is not None:
            job = axis.apply(job, all_values[value_index], all_values)
    offset, stride = 0, 1
    for varies, position, all_values in zip(vary, index, values):
        if varies:
            offset += position * stride
            stride *= len(all_values)
    return replace(job, seed=job.seed + offset) if offset and job.seed != -1 else job


# Axes whose change loads a model: A1111 makes them the outer loops (its axis "cost").
_COSTLY = frozenset({"Checkpoint name", "Refiner checkpoint"})


def _run_order(axes: list[Axis], counts: list[int]) -> list[int] | None:
    """Cells in the order that changes a costly axis least often (it becomes the slowest
    loop), as A1111 orders them; None when the grid's own order (x fastest) will do."""
    costly = [i for i, axis in enumerate(axes) if axis.label in _COSTLY]
    if not costly or costly == [2]:
        return None
    loops = costly + [i for i in (2, 1, 0) if i not in costly]  # outermost first
    strides = [1, counts[0], counts[0] * counts[1]]  # a cell's index: x + y * len(xs) + z * len(xs) * len(ys)
    return [sum(position * strides[axis] for position, axis in zip(positions, loops))
            for positions in itertools.product(*(range(counts[axis]) for axis in loops))]


def _infotext_fields(axes: list[Axis], values: list[list[Any]]) -> dict[str, str]:
    """What A1111 adds to a plot's infotext: each used axis' type and values."""
    fields = {}
    for name, axis, vs in zip(AXIS_NAMES, axes, values):
        if axis.label != "Nothing":
            fields[f"{name.upper()} Type"] = axis.label
            fields[f"{name.upper()} Values"] = ", ".join(", ".join(v) if isinstance(v, tuple) else str(v) for v in vs)
    return fields


def _with_fields(infotext: str, fields: dict[str, str]) -> str:
    from core.infotext import quote

    extra = ", ".join(f"{key}: {quote(value)}" for key, value in fields.items())
    return f"{infotext}, {extra}" if extra else infotext


def _grids(results: list[list[Any]], labels: list[list[str]], columns: int, rows: int, layers: int,
           draw_legend: bool, include_sub_grids: bool, margin: int, fields: dict[str, str]) -> list[Grid]:
    """The plot: one X/Y grid per Z value (labelled when draw_legend), side by side under the Z
    labels; the X/Y grids after it when include_sub_grids and there are several."""
    from core.scripts.grids import image_grid, labelled_grid

    pictures = first_pictures(results)
    firsts = [next((made[0] for made in results[i:i + columns * rows] if made), None)
              for i in range(0, len(results), columns * rows)]
    first = next(r for r in firsts if r is not None)
    x_labels, y_labels, z_labels = labels
    sub_grids = []
    for layer in range(layers):
        cells = pictures[layer * columns * rows:(layer + 1) * columns * rows]
        if draw_legend:
            sub_grids.append(labelled_grid(cells, x_labels, y_labels, margin))
        else:
            sub_grids.append(image_grid(cells, rows, margin))
    if layers == 1:
        whole = sub_grids[0]
    elif draw_legend:
        whole = labelled_grid(sub_grids, z_labels, [""], 0)
    else:
        whole = image_grid(sub_grids, 1)
    grids = [Grid(whole, first.seed, _with_fields(first.infotext, fields))]
    if include_sub_grids and layers > 1:
        grids += [Grid(grid, (made or first).seed, _with_fields((made or first).infotext, fields))
                  for grid, made in zip(sub_grids, firsts)]
    return grids
