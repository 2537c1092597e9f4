"""A1111's "prompts from file or textbox": one job per line of a text, each line a prompt or
A1111's options (``--prompt "a cat" --negative_prompt "blur" --steps 10 --seed 5``).

script_args, A1111's current order: checkbox_iterate (the seed grows by each job's pictures,
line after line), checkbox_iterate_batch (one random seed for every line), prompt_position
("start" or "end": where a line's prompt goes beside the job's own prompt), prompt_txt. The
older three-argument form (checkbox_iterate, checkbox_iterate_batch, prompt_txt) is read too."""
from __future__ import annotations

import shlex
from typing import Any, Callable, Sequence

from core.errors import EngineError
from core.params import GenerationParams
from core.scripts import Plan, ScriptArgument, ScriptContext, argument, as_bool, as_choice, bad_argument, check_jobs, \
    replace

MAX_LINES = 1000  # lines with a prompt; the API bounds the pictures they make further


def _whole(text: str) -> int:
    return int(text)


def _boolean(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise ValueError(text)
    return text.lower() == "true"


def _text(text: str) -> str:
    return text


# A1111's allowed keys with how each value is read, and the GenerationParams field it sets
# (None: a key A1111 allows that this server does not take: refused by name).
OPTIONS: dict[str, tuple[Callable[[str], Any], str | None]] = {
    "sd_model": (_text, "checkpoint"),
    "outpath_samples": (_text, None),
    "outpath_grids": (_text, None),
    "prompt_for_display": (_text, ""),  # shown by A1111's page only: accepted, no effect
    "prompt": (_text, "prompt"),
    "negative_prompt": (_text, "negative_prompt"),
    "styles": (_text, None),
    "seed": (_whole, "seed"),
    "subseed_strength": (float, "subseed_strength"),
    "subseed": (_whole, "subseed"),
    "seed_resize_from_h": (_whole, "seed_resize_from_h"),
    "seed_resize_from_w": (_whole, "seed_resize_from_w"),
    "sampler_index": (_text, "sampler"),
    "sampler_name": (_text, "sampler"),
    "batch_size": (_whole, "batch_size"),
    "n_iter": (_whole, "batch_count"),
    "steps": (_whole, "steps"),
    "cfg_scale": (float, "cfg_scale"),
    "width": (_whole, "width"),
    "height": (_whole, "height"),
    "restore_faces": (_boolean, None),
    "tiling": (_boolean, None),
    "do_not_save_samples": (_boolean, None),
    "do_not_save_grid": (_boolean, None),
}


def parse_line(line: str, number: int) -> dict[str, Any]:
    """One line's options by GenerationParams field: a plain line is the prompt; a line of
    ``--key value`` pairs (a prompt's words may go unquoted, as in A1111) is read by key."""
    where = f"prompt_txt (line {number})"
    if not line.startswith("--"):
        return {"prompt": line}
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise bad_argument(where, f"cannot be read: {exc}") from None
    values: dict[str, Any] = {}
    position = 0
    while position < len(words):
        word = words[position]
        if not word.startswith("--"):
            raise bad_argument(where, f"expected --option, got {word!r}")
        key = word[2:]
        if key not in OPTIONS:
            raise bad_argument(where, f"unknown option --{key}; A1111's are: "
                                      f"{', '.join('--' + k for k in OPTIONS)}")
        read, target = OPTIONS[key]
        if target is None:
            raise bad_argument(where, f"--{key} is not supported by this server")
        if position + 1 >= len(words):
            raise bad_argument(where, f"--{key} needs a value")
        position += 1
        text = words[position]
        position += 1
        if key in ("prompt", "negative_prompt"):  # A1111 joins the words up to the next option
            while position < len(words) and not words[position].startswith("--"):
                text += " " + words[position]
                position += 1
        try:
            value = read(text)
        except ValueError:
            raise bad_argument(where, f"--{key}: cannot read {text!r}") from None
        if target:
            values[target] = value
    return values


class PromptsFromFile:
    title = "Prompts from file or textbox"
    img2img_only = False

    def arguments(self, img2img: bool, context: ScriptContext) -> list[ScriptArgument]:
        return [ScriptArgument("Iterate seed every line", False),
                ScriptArgument("Use same random seed for all lines", False),
                ScriptArgument("Insert prompts at the", "start", choices=["start", "end"]),
                ScriptArgument("List of prompt inputs", "")]

    def plan(self, params: GenerationParams, args: Sequence[Any], img2img: bool, context: ScriptContext) -> Plan:
        iterate = as_bool(argument(args, 0, False), "checkbox_iterate")
        same_seed = as_bool(argument(args, 1, False), "checkbox_iterate_batch")
        if len(args) == 3:  # A1111's older form, before prompt_position
            position, text = "start", argument(args, 2, "")
        else:
            position = as_choice(argument(args, 2, "start"), "prompt_position", ("start", "end"))
            text = argument(args, 3, "")
        if not isinstance(text, str):
            raise bad_argument("prompt_txt", f"must be text, got {type(text).__name__}")
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if len(lines) > MAX_LINES:
            raise bad_argument("prompt_txt", f"has {len(lines)} lines, over the limit of {MAX_LINES}")
        if not lines:
            raise bad_argument("prompt_txt", "holds no prompt")
        seed = params.seed
        if (iterate or same_seed) and seed == -1:
            seed = context.random_seed()
        jobs = []
        for number, line in enumerate(lines, 1):
            values = parse_line(line, number)
            if "checkpoint" in values:
                try:
                    values["checkpoint"] = context.find_checkpoint(values["checkpoint"], f"prompt_txt (line {number})")
                except EngineError as exc:
                    raise exc.renamed(f"script_args.prompt_txt (line {number})") from None
            for name in ("prompt", "negative_prompt"):
                own = getattr(params, name)
                if values.get(name) and own:
                    values[name] = f"{values[name]} {own}" if position == "start" else f"{own} {values[name]}"
            job = replace(params, **{"seed": seed, **values})
            jobs.append(job)
            if iterate:
                seed += job.batch_size * job.batch_count
        try:
            check_jobs(jobs, "prompt_txt")
        except EngineError as exc:
            if exc.field and exc.field.startswith("script_args."):
                raise
            index = next(i for i, job in enumerate(jobs, 1) if _fails(job))
            raise bad_argument(f"prompt_txt (line {index})", f"{exc.field}: {exc.reason}") from None
        return Plan(jobs=jobs)


def _fails(job: GenerationParams) -> bool:
    try:
        job.validate()
    except EngineError:
        return True
    return False
