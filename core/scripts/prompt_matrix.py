"""A1111's "prompt matrix": a prompt written "base | a | b" makes one picture for every
combination of the parts after the first (base; base, a; base, b; base, a, b), drawn as a grid
labelled with the parts each row and column holds.

script_args, A1111's order: put_at_start (the varying parts before the base), different_seeds
(each picture its own seed), prompt_type ("positive" or "negative": which prompt is split),
variations_delimiter ("comma" or "space"), margin_size (pixels between cells)."""
from __future__ import annotations

import math
from typing import Any, Sequence

from core.params import GenerationParams
from core.scripts import (Grid, Plan, ScriptArgument, ScriptContext, argument, as_bool, as_choice, as_number,
                          bad_argument, check_grid_size, check_jobs, first_pictures, replace)

# Parts after the base: 2**parts pictures, so 10 parts are 1024 (over the jobs limit anyway).
MAX_PARTS = 9


def combinations(prompt: str, put_at_start: bool, delimiter: str) -> tuple[list[str], list[str]]:
    """(the prompt's parts, one prompt per combination): combination n holds part i+1 when bit
    i of n is set, as A1111 numbers them."""
    parts = prompt.split("|")
    prompts = []
    for number in range(2 ** (len(parts) - 1)):
        chosen = [text.strip().strip(",") for bit, text in enumerate(parts[1:]) if number & (1 << bit)]
        ordered = chosen + [parts[0]] if put_at_start else [parts[0]] + chosen
        prompts.append(delimiter.join(ordered))
    return parts, prompts


def _label(parts: list[str], number: int) -> list[tuple[str, bool]]:
    """A row's or column's label, as A1111 draws it: every part, those it leaves out inactive."""
    return [(part.strip().strip(",").strip(), bool(number & (1 << bit))) for bit, part in enumerate(parts)]


class PromptMatrix:
    title = "Prompt matrix"
    img2img_only = False

    def arguments(self, img2img: bool, context: ScriptContext) -> list[ScriptArgument]:
        return [ScriptArgument("Put variable parts at start of prompt", False),
                ScriptArgument("Use different seed for each picture", False),
                ScriptArgument("Select prompt", "positive", choices=["positive", "negative"]),
                ScriptArgument("Select joining char", "comma", choices=["comma", "space"]),
                ScriptArgument("Grid margins (px)", 0, minimum=0, maximum=500, step=2)]

    def plan(self, params: GenerationParams, args: Sequence[Any], img2img: bool, context: ScriptContext) -> Plan:
        put_at_start = as_bool(argument(args, 0, False), "put_at_start")
        different_seeds = as_bool(argument(args, 1, False), "different_seeds")
        prompt_type = as_choice(argument(args, 2, "positive"), "prompt_type", ("positive", "negative"))
        delimiter = {"comma": ", ", "space": " "}[
            as_choice(argument(args, 3, "comma"), "variations_delimiter", ("comma", "space"))]
        margin = as_number(argument(args, 4, 0), "margin_size", 0, 500, whole=True)
        source = params.prompt if prompt_type == "positive" else params.negative_prompt
        if source.count("|") > MAX_PARTS:
            raise bad_argument("prompt_type", f"the {prompt_type} prompt has {source.count('|')} '|' parts, "
                                              f"at most {MAX_PARTS}")
        parts, prompts = combinations(source, put_at_start, delimiter)
        seed = context.random_seed() if params.seed == -1 else params.seed
        field = "prompt" if prompt_type == "positive" else "negative_prompt"
        jobs = [replace(params, **{field: text}, seed=seed + (index if different_seeds else 0), batch_size=1,
                        batch_count=1) for index, text in enumerate(prompts)]
        check_jobs(jobs, "prompt_type")
        check_grid_size(len(jobs), params.width, params.height, "prompt_type")
        varying = parts[1:]
        across = math.ceil(len(varying) / 2)  # A1111: the first half of the parts along the top
        rows = 1 << (len(varying) - across)
        column_labels = [_label(varying[:across], n) for n in range(1 << across)]
        row_labels = [_label(varying[across:], n) for n in range(rows)]

        def assemble(results: list[list[Any]]) -> list[Grid]:
            from core.scripts.grids import labelled_grid

            first = next(made[0] for made in results if made)
            grid = labelled_grid(first_pictures(results), column_labels, row_labels if rows > 1 else [""], margin)
            return [Grid(grid, first.seed, first.infotext)]

        return Plan(jobs=jobs, assemble=assemble)
