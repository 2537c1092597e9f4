"""A1111's built-in scripts: "prompt matrix", "prompts from file or textbox", "x/y/z plot" and
(img2img) "sd upscale", with A1111's names and ``script_args`` orders.

A script turns a job's ``GenerationParams`` and its arguments into a ``Plan``: the jobs to run
(each one ``GenerationParams``, checked before anything runs, so a caller can hold them to its
own limits) and how their pictures become the script's grids. ``run_plan`` runs a plan on an
engine (anything with the EngineProtocol's txt2img/img2img/sd_upscale and flags) and saves the
grids in ``<kind>-grids/DATE/`` with their infotext. No gradio here: the API and the page both
call this."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from core.errors import EngineError
from core.params import MAX_SIZE, GenerationParams

# The most jobs (grid cells, prompt lines) one script run may plan; the API lowers what one
# request may make further, by its own image limit.
MAX_SCRIPT_JOBS = 1000
# The largest grid a script may draw: as many pixels as the largest picture a job may make.
MAX_GRID_PIXELS = MAX_SIZE * MAX_SIZE


@dataclass(frozen=True)
class ScriptArgument:
    """One of a script's arguments as A1111's /script-info lists it."""
    label: str
    value: Any = None
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choices: list[str] | None = None


@dataclass
class ScriptContext:
    """What planning needs of the server: names it can check, as plain values and look-ups."""
    # (a name, the argument it came in) -> the engine's checkpoint name; EngineError if none
    find_checkpoint: Callable[[str, str], str]
    upscalers: Callable[[], list[str]]  # names, in GET /upscalers order (sd upscale takes an index)
    random_seed: Callable[[], int]  # the seed a "-1" becomes when a script fixes seeds


@dataclass
class Grid:
    """A picture a script drew from its jobs' pictures, with the infotext it is saved with."""
    image: Any
    seed: int
    infotext: str


@dataclass
class Plan:
    """What a script will do: ``jobs`` one after another, then ``assemble`` (given each job's
    results, [] for a job not run) draws the grids. ``sd_upscale``: the jobs are SD upscale
    jobs with these options (upscaler, scale, overlap)."""
    jobs: list[GenerationParams]
    assemble: Callable[[list[list[Any]]], list[Grid]] = lambda results: []
    sd_upscale: dict[str, Any] | None = None
    include_pictures: bool = True  # whether the answer holds the jobs' pictures after the grids
    # The order the jobs run in (indices into jobs), when not theirs: a plot runs the cells of
    # one checkpoint together, so each checkpoint loads once. assemble still gets them in order.
    order: list[int] | None = None


@dataclass
class ScriptResult:
    grids: list[Any] = field(default_factory=list)  # GeneratedImage per grid, saved unless saving is off
    pictures: list[Any] = field(default_factory=list)  # every job's GeneratedImage
    include_pictures: bool = True

    @property
    def images(self) -> list[Any]:
        """What the answer shows, as A1111 gives it: the grids first, then the pictures (when
        the script returns them)."""
        return self.grids + (self.pictures if self.include_pictures or not self.grids else [])


class Script(Protocol):
    title: str  # A1111's title ("X/Y/Z plot"); its name is the title in lower case
    img2img_only: bool

    def arguments(self, img2img: bool, context: ScriptContext) -> list[ScriptArgument]: ...

    def plan(self, params: GenerationParams, args: Sequence[Any], img2img: bool, context: ScriptContext) -> Plan: ...


def scripts() -> tuple[Script, ...]:
    """Every script, in A1111's order of its script files."""
    from core.scripts.prompt_matrix import PromptMatrix
    from core.scripts.prompts_from_file import PromptsFromFile
    from core.scripts.sd_upscale import SdUpscale
    from core.scripts.xyz_plot import XyzPlot

    return PromptMatrix(), PromptsFromFile(), SdUpscale(), XyzPlot()


def script_names(img2img: bool) -> list[str]:
    """A1111's names (its titles in lower case) of the scripts of txt2img or img2img."""
    return [s.title.lower() for s in scripts() if img2img or not s.img2img_only]


def find_script(name: str, img2img: bool) -> Script:
    """The script called ``name`` (any case) on txt2img or img2img; EngineError naming
    script_name when there is none."""
    for script in scripts():
        if script.title.lower() == str(name).strip().lower() and (img2img or not script.img2img_only):
            return script
    tab = "img2img" if img2img else "txt2img"
    raise EngineError(f"script {name!r} not found for {tab}; this server has: {', '.join(script_names(img2img))}",
                      "script_name", "invalid")


def bad_argument(name: str, why: str) -> EngineError:
    """An error naming one of a script's arguments (as script_args.NAME)."""
    return EngineError(why, f"script_args.{name}", "invalid")


def argument(args: Sequence[Any], index: int, default: Any) -> Any:
    """``args[index]``, or ``default`` where the list is shorter or holds null."""
    value = args[index] if index < len(args) else None
    return default if value is None else value


def as_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no", ""):
        return value.strip().lower() in ("true", "1", "yes")
    raise bad_argument(name, f"must be true or false, got {value!r}")


def as_number(value: Any, name: str, low: float, high: float, whole: bool = False) -> float:
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
    except (TypeError, ValueError):
        raise bad_argument(name, f"must be a number, got {value!r}") from None
    if whole and not number.is_integer():
        raise bad_argument(name, f"must be a whole number, got {value!r}")
    if not low <= number <= high:
        raise bad_argument(name, f"must be between {low:g} and {high:g}, got {value!r}")
    return int(number) if whole else number


def as_choice(value: Any, name: str, choices: Sequence[str]) -> str:
    """One of ``choices`` (any case), or its index."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(choices):
        return choices[value]
    for choice in choices:
        if str(value).strip().lower() == choice.lower():
            return choice
    raise bad_argument(name, f"must be one of {', '.join(choices)}, got {value!r}")


def check_jobs(jobs: list[GenerationParams], name: str) -> None:
    """Each job checked as the engine would (a bad one fails before any runs), and their count."""
    if not jobs:
        raise bad_argument(name, "gives nothing to make")
    if len(jobs) > MAX_SCRIPT_JOBS:
        raise bad_argument(name, f"makes {len(jobs)} jobs, over the limit of {MAX_SCRIPT_JOBS}")
    for job in jobs:
        job.validate()


def check_grid_size(count: int, width: int, height: int, name: str) -> None:
    pixels = count * width * height
    if pixels > MAX_GRID_PIXELS:
        raise bad_argument(name, f"a grid of {count} pictures of {width}x{height} is {pixels} pixels, over the "
                                 f"limit of {MAX_GRID_PIXELS}")


def run_plan(engine: Any, plan: Plan, kind: str, image: Any = None, mask: Any = None,
             progress: Callable[[Any], None] | None = None, save: bool = True, save_grids: bool = True) -> ScriptResult:
    """Run ``plan``'s jobs on ``engine`` (``kind``: txt2img or img2img; in ``plan.order``), then
    draw its grids. Progress is reported over the whole plan (each job's batches in turn). An
    interrupt ends the plan after the job it stopped; the grids show the cells made (blank
    cells for the rest). ``pictures``: every job's, in the plan's order."""
    made_by_job: dict[int, list[Any]] = {}
    batches_before = 0
    total_batches = sum(job.batch_count for job in plan.jobs)
    for index in plan.order or range(len(plan.jobs)):
        job = plan.jobs[index]

        def report(p, before=batches_before):
            if progress is not None:
                progress(dataclasses.replace(p, batch=before + p.batch, batches=total_batches))

        if plan.sd_upscale is not None:
            made = engine.sd_upscale(job, image, progress=report, save=save, **plan.sd_upscale)
        elif kind == "txt2img":
            made = engine.txt2img(job, progress=report, save=save)
        else:
            made = engine.img2img(job, image, mask, progress=report, save=save)
        made_by_job[index] = made
        batches_before += job.batch_count
        if engine.flags.interrupted:
            break
    results = [made_by_job.get(index, []) for index in range(len(plan.jobs))]
    outcome = ScriptResult(pictures=[r for made in results for r in made], include_pictures=plan.include_pictures)
    if not outcome.pictures:
        return outcome
    from core.engine import GeneratedImage, save_image_or_say_why
    from core.scripts.grids import grid_folder

    for grid in plan.assemble(results):
        path, save_error = (save_image_or_say_why(grid.image, grid_folder(engine.output_dir, kind), grid.seed,
                                                  grid.infotext) if save and save_grids else (None, None))
        outcome.grids.append(GeneratedImage(image=grid.image, seed=grid.seed, infotext=grid.infotext, path=path,
                                            save_error=save_error))
    return outcome


def save_batch_grid(pictures: Sequence[Any], output_dir: Any, kind: str) -> Any:
    """A1111's batch grid: a job that made more than one picture saves them as one grid too,
    in ``<kind>-grids/DATE/`` with the first picture's infotext. Returns its GeneratedImage
    (path None and save_error set when the folder could not take it), or None for one picture."""
    if len(pictures) < 2:
        return None
    from core.engine import GeneratedImage, save_image_or_say_why
    from core.scripts.grids import grid_folder, image_grid

    first = pictures[0]
    grid = image_grid([p.image for p in pictures])
    path, save_error = save_image_or_say_why(grid, grid_folder(output_dir, kind), first.seed, first.infotext)
    return GeneratedImage(image=grid, seed=first.seed, infotext=first.infotext, path=path, save_error=save_error)


def blank_like(results: list[list[Any]]) -> Callable[[], Any]:
    """A maker of the blank cell A1111 puts where a job made no picture (interrupted), the size
    of the first picture made."""
    from PIL import Image

    size = next(made[0].image.size for made in results if made)
    return lambda: Image.new("RGB", size)


def first_pictures(results: list[list[Any]]) -> list[Any]:
    """Each job's first picture (a blank one for a job that made none)."""
    blank = blank_like(results)
    return [made[0].image if made else blank() for made in results]


def replace(params: GenerationParams, **changes: Any) -> GenerationParams:
    return dataclasses.replace(params, extra=dict(params.extra), **changes)
