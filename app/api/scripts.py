"""A1111's scripts by API: ``script_name`` + ``script_args`` of a txt2img/img2img request become
core's script plan (core/scripts/), held to this server's limits before anything runs; GET
/scripts and /script-info list them in A1111's shapes."""
from __future__ import annotations

import random
from typing import Any

from app.api.errors import ApiError, engine_error
from app.api.limits import ApiLimits
from app.api.translate import check_limits
from core.errors import NOT_FOUND, EngineError
from core.params import GenerationParams
from core.scripts import Plan, ScriptContext, find_script, script_names, scripts


def script_context(models_root: Any, find_checkpoint) -> ScriptContext:
    """What planning needs of this server: its checkpoints (a client's names resolved as every
    request's are), its upscalers in GET /upscalers order, a source of random seeds."""
    from core.upscaling import list_upscalers

    def find(name: str, field: str) -> str:
        try:
            return find_checkpoint(name, field)
        except ApiError as exc:
            raise EngineError(exc.message.split(": ", 1)[-1], field, NOT_FOUND) from None

    return ScriptContext(
        find_checkpoint=find,
        upscalers=lambda: [u.name for u in list_upscalers(models_root)],
        random_seed=lambda: random.randrange(4294967294),
    )


def plan_script(name: str | None, args: Any, params: GenerationParams, img2img: bool, context: ScriptContext,
                limits: ApiLimits) -> Plan | None:
    """The request's script as a checked plan (None without one); a client error (422, or 404
    for a checkpoint not found) naming the argument otherwise."""
    if not name or str(name).strip().lower() == "none":
        return None
    if not isinstance(args, list):
        raise ApiError(422, "script_args: must be a list")
    try:
        plan = find_script(name, img2img).plan(params, args, img2img, context)
    except EngineError as exc:
        raise engine_error(exc, 422) from None
    check_plan_limits(plan, limits)
    return plan


def check_plan_limits(plan: Plan, limits: ApiLimits) -> None:
    """A plan's jobs within what one request may ask for: each job's steps and sizes, the
    pictures of all jobs together, and their sampling steps (as many as the most pictures at
    the most steps)."""
    for job in plan.jobs:
        try:
            check_limits(job, limits)
        except ApiError as exc:
            raise ApiError(exc.status, f"script_args: a job of the script: {exc.message}") from None
    pictures = sum(job.batch_size * job.batch_count for job in plan.jobs)
    if pictures > limits.max_images:
        raise ApiError(422, f"script_args: the script makes {pictures} pictures, over this server's limit of "
                            f"{limits.max_images} images")
    steps = sum(job.steps * job.batch_count for job in plan.jobs)
    if steps > limits.max_steps * limits.max_images:
        raise ApiError(422, f"script_args: the script takes {steps} sampling steps, over this server's limit of "
                            f"{limits.max_steps * limits.max_images}")


def scripts_list() -> dict[str, list[str]]:
    """GET /scripts: A1111's names of the scripts of each tab."""
    return {"txt2img": script_names(False), "img2img": script_names(True)}


def script_info(context: ScriptContext) -> list[dict[str, Any]]:
    """GET /script-info: every script of each tab with its arguments, in A1111's shape."""
    out = []
    for img2img in (False, True):
        for script in scripts():
            if script.img2img_only and not img2img:
                continue
            out.append({
                "name": script.title.lower(), "is_alwayson": False, "is_img2img": img2img,
                "args": [{"label": a.label, "value": a.value, "minimum": a.minimum, "maximum": a.maximum,
                          "step": a.step, "choices": a.choices} for a in script.arguments(img2img, context)],
            })
    return out
