"""A generation request -> its job: the ``GenerationParams``, the settings to keep afterwards and
what the job sets up around its model; and ``processed_info``, what the answer reports of the
finished job.

Pure functions: what they need of the server (its saved settings, its limits, the checkpoint
and upscaler look-ups) comes in a ``RequestContext``, so a test calls them without FastAPI or a
server. The order of the checks is the order of the errors a client sees: prompt sizes first
(before anything reads a prompt), then unsupported features, names, values, limits."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from app.api.errors import ApiError, engine_error
from app.api.limits import ApiLimits
from app.api.schemas import GenerationRequest, StableDiffusionProcessingTxt2Img, value_or_default
from app.forms import values_from_infotext
from app.settings import OPTION_BY_KEY, engine_overrides
from core.errors import EngineError
from core.params import MAX_PROMPT_BYTES, PROMPT_FIELDS, GenerationParams, check_prompt_length

VERSION = "sd-studio"
# The settings that change what a checkpoint predicts: the engine is set up for them around a job.
MODEL_OVERRIDES = frozenset({"sd_model_prediction", "sd_noise_schedule"})


@dataclasses.dataclass
class RequestContext:
    """What turning a request into a job needs of the server, as plain values and look-ups."""

    settings: dict[str, Any]  # the saved settings' values (Settings.values())
    limits: ApiLimits
    # (a client's name for a checkpoint, the field it came in) -> the engine's name; ApiError if none
    find_checkpoint: Callable[[Any, str], str]
    # (override_settings, "override_settings.") -> the checked settings that change something
    option_changes: Callable[[dict[str, Any], str], dict[str, Any]]
    # (an upscaler's name, the field it came in) -> the upscaler; ApiError if none
    find_upscaler: Callable[[str, str], Any]


@dataclasses.dataclass
class JobModel:
    """Set-up of a job's model beyond its name: the (prediction, zero_terminal_snr) overrides
    from override_settings (None: the engine's), and the size fields to take from the model."""
    overrides: tuple | None = None
    native_size: tuple[str, ...] = ()
    vae: str | None = None  # sd_vae for this job (the saved setting, or override_settings')


def generation_params(req: GenerationRequest, img2img: bool,
                      context: RequestContext) -> tuple[GenerationParams, dict, JobModel]:
    """The request as GenerationParams, checked; the settings to keep afterwards
    (override_settings with override_settings_restore_afterwards=false); and what the job
    sets up around the model (overrides of what the checkpoint predicts, native size).
    ``req`` is filled from its infotext in place."""
    check_prompt_sizes(req)
    if req.infotext:
        apply_infotext(req)
    refuse_unsupported(req, img2img)
    overrides = context.option_changes(req.override_settings or {}, "override_settings.")
    settings = {**context.settings, **overrides}
    values = common_values(req, settings, job_checkpoint(overrides, context))
    model = JobModel(overrides=engine_overrides(settings) if MODEL_OVERRIDES & set(overrides) else None,
                     vae=settings.get("sd_vae"))
    if img2img:
        values.update(inpainting_values(req))
    values.update(refiner_values(req, context))
    if not img2img:
        values.update(hires_values(req))
        # Sizes the client leaves out are the checkpoint's own: known once the job has the
        # checkpoint, checked against the limits then (8 until then).
        model.native_size = unset_sizes(req)
        values.update({name: 8 for name in model.native_size})
    params = checked_params(values, context)
    restore = {} if value_or_default(req, "override_settings_restore_afterwards") else overrides
    return params, restore, model


def check_prompt_sizes(req: GenerationRequest) -> None:
    """Refuses a prompt over the size limit before anything parses it; an infotext holds a
    prompt and a negative prompt and more, so it may be three times as long."""
    for name, limit in (*((n, MAX_PROMPT_BYTES) for n in PROMPT_FIELDS), ("infotext", 3 * MAX_PROMPT_BYTES)):
        try:
            check_prompt_length(name, getattr(req, name, None), limit)
        except EngineError as exc:
            raise engine_error(exc, 422) from None


# GenerationParams attributes whose A1111 request field has another name.
_REQUEST_FIELD = {"sampler": "sampler_name"}


def apply_infotext(req: GenerationRequest) -> None:
    """Fields of ``req.infotext`` fill the request fields the client did not set. The infotext is
    read by app/forms.py's ``values_from_infotext``, as the page reads it; its clip skip and
    noise schedule become override_settings, as in A1111."""
    from core.infotext import parse_infotext

    values, _ = values_from_infotext(req.infotext)
    given = req.model_fields_set
    for attr, value in values.items():
        name = _REQUEST_FIELD.get(attr, attr)
        if name in type(req).model_fields and name not in given:
            setattr(req, name, value)
    overrides = dict(req.override_settings or {})
    if "clip_skip" in values:
        overrides.setdefault("CLIP_stop_at_last_layers", values["clip_skip"])
    schedule = parse_infotext(req.infotext).get("Noise Schedule")
    if schedule in OPTION_BY_KEY["sd_noise_schedule"].choices:
        overrides.setdefault("sd_noise_schedule", schedule)
    if overrides:
        req.override_settings = overrides


def refuse_unsupported(req: GenerationRequest, img2img: bool) -> None:
    """Features this server does not have: refused by name rather than silently ignored."""
    for name in (req.alwayson_scripts or {}):
        raise ApiError(422, f"alwayson_scripts: always-on script {name!r} not found (this server has none)")
    if req.styles:
        raise ApiError(422, f"styles: prompt style {req.styles[0]!r} not found (this server has no styles)")
    if req.restore_faces:
        raise ApiError(422, "restore_faces: face restoration is not available on this server")
    if req.s_churn:
        raise ApiError(422, "s_churn: sampler churn is not supported (use 0)")
    if req.s_min_uncond:
        raise ApiError(422, "s_min_uncond: skipping the negative prompt early is not supported (use 0)")
    if req.firstpass_image:
        raise ApiError(422, "firstpass_image: not supported")
    if img2img:
        if req.initial_noise_multiplier not in (None, 1, 1.0):
            raise ApiError(422, "initial_noise_multiplier: only 1 is supported")
        if req.latent_mask:
            raise ApiError(422, "latent_mask: a separate latent mask is not supported")
    elif req.hr_checkpoint_name not in (None, "", "Use same checkpoint"):
        raise ApiError(422, "hr_checkpoint_name: a different hires checkpoint is not supported")


def job_checkpoint(overrides: dict[str, Any], context: RequestContext) -> str | None:
    """The checkpoint the job runs: override_settings' one, else the saved setting's (None, the
    loaded one, when the saved one was removed or there is none)."""
    if "sd_model_checkpoint" in overrides:
        return context.find_checkpoint(overrides["sd_model_checkpoint"], "override_settings.sd_model_checkpoint")
    saved = context.settings.get("sd_model_checkpoint")
    if not saved:
        return None
    try:
        return context.find_checkpoint(saved, "sd_model_checkpoint")
    except ApiError:  # the saved checkpoint was removed: fall back to the loaded one
        return None


def sampler_values(req: GenerationRequest) -> dict[str, Any]:
    """sampler, scheduler, eta and s_noise: the names resolved (an unknown one is refused
    naming its field); eta and s_noise only where the sampler takes them and they differ from
    its default (so the infotext records them as A1111 does)."""
    from core.sampling.samplers import get_sampler, resolve_sampler_name
    from core.sampling.schedules import resolve_schedule_name

    sampler_text = req.sampler_name or req.sampler_index or "Euler"
    field = "sampler_name" if req.sampler_name else "sampler_index"
    try:
        sampler_name, _ = resolve_sampler_name(sampler_text)
    except EngineError as exc:
        raise engine_error(exc, 422, field) from None
    try:
        scheduler = resolve_schedule_name(req.scheduler)
    except EngineError as exc:
        raise engine_error(exc, 422, "scheduler") from None
    sampler = get_sampler(sampler_name)

    def sampler_option(name: str):
        value = getattr(req, name)
        if value is None or name not in sampler.options or value == sampler.defaults.get(name):
            return None
        return value

    return dict(sampler=sampler_text, scheduler=scheduler, eta=sampler_option("eta"), s_noise=sampler_option("s_noise"))


def common_values(req: GenerationRequest, settings: dict[str, Any], checkpoint: str | None) -> dict[str, Any]:
    """The GenerationParams fields of every generation request; ``settings``: the saved ones
    with this request's override_settings."""
    sampling = sampler_values(req)
    resize_w, resize_h = value_or_default(req, "seed_resize_from_w"), value_or_default(req, "seed_resize_from_h")
    if resize_w <= 0 or resize_h <= 0:
        resize_w = resize_h = 0
    return dict(
        prompt=value_or_default(req, "prompt"),
        negative_prompt=value_or_default(req, "negative_prompt"),
        steps=value_or_default(req, "steps"),
        cfg_scale=value_or_default(req, "cfg_scale"),
        distilled_cfg_scale=value_or_default(req, "distilled_cfg_scale"),
        seed=value_or_default(req, "seed"),
        width=value_or_default(req, "width"),
        height=value_or_default(req, "height"),
        **sampling,
        subseed=value_or_default(req, "subseed"),
        subseed_strength=value_or_default(req, "subseed_strength"),
        seed_resize_from_w=resize_w,
        seed_resize_from_h=resize_h,
        emphasis=settings["emphasis"],
        clip_skip=settings["CLIP_stop_at_last_layers"],
        batch_size=value_or_default(req, "batch_size"),
        batch_count=value_or_default(req, "n_iter"),
        denoising_strength=value_or_default(req, "denoising_strength"),
        checkpoint=checkpoint,
        tiling=bool(req.tiling),
    )


def inpainting_values(req: GenerationRequest) -> dict[str, Any]:
    """img2img's own fields: resize mode and the mask's (one blur for both axes, invert 0 or 1)."""
    blur = req.mask_blur
    if blur is None:
        blur_x, blur_y = value_or_default(req, "mask_blur_x"), value_or_default(req, "mask_blur_y")
        if blur_x != blur_y:
            raise ApiError(422, "mask_blur_x: a different blur per axis is not supported; give mask_blur")
        blur = blur_x
    invert = value_or_default(req, "inpainting_mask_invert")
    if invert not in (0, 1):
        raise ApiError(422, f"inpainting_mask_invert: must be 0 or 1, got {invert}")
    return dict(
        resize_mode=value_or_default(req, "resize_mode"),
        mask_blur=blur,
        inpainting_fill=value_or_default(req, "inpainting_fill"),
        inpaint_full_res=value_or_default(req, "inpaint_full_res"),
        inpaint_full_res_padding=value_or_default(req, "inpaint_full_res_padding"),
        inpainting_mask_invert=invert,
    )


def refiner_values(req: GenerationRequest, context: RequestContext) -> dict[str, Any]:
    """The refiner checkpoint (looked up) and where it takes over; none for "" or "None"."""
    if req.refiner_checkpoint in (None, "", "None"):
        return {}
    return dict(refiner_checkpoint=context.find_checkpoint(req.refiner_checkpoint, "refiner_checkpoint"),
                refiner_switch_at=0.8 if req.refiner_switch_at is None else req.refiner_switch_at)


def hires_values(req: StableDiffusionProcessingTxt2Img) -> dict[str, Any]:
    """txt2img's hires-fix fields ("" for the second pass's sampler, scheduler and prompts: the
    first pass's)."""
    return dict(
        enable_hr=value_or_default(req, "enable_hr"),
        hr_scale=value_or_default(req, "hr_scale"),
        hr_upscaler=req.hr_upscaler or "Latent",
        hr_second_pass_steps=value_or_default(req, "hr_second_pass_steps"),
        hr_resize_x=value_or_default(req, "hr_resize_x"),
        hr_resize_y=value_or_default(req, "hr_resize_y"),
        hr_sampler_name=req.hr_sampler_name or "",
        hr_scheduler=req.hr_scheduler or "",
        hr_prompt=value_or_default(req, "hr_prompt"),
        hr_negative_prompt=value_or_default(req, "hr_negative_prompt"),
    )


def unset_sizes(req: GenerationRequest) -> tuple[str, ...]:
    """width and/or height where the client did not give them (or sent null)."""
    return tuple(n for n in ("width", "height") if getattr(req, n) is None or n not in req.model_fields_set)


def checked_params(values: dict[str, Any], context: RequestContext) -> GenerationParams:
    """``values`` as GenerationParams: validated by core, within this server's limits, its hires
    upscaler known."""
    params = GenerationParams(**values)
    try:
        params.validate()
    except EngineError as exc:
        raise engine_error(exc, 422) from None
    check_limits(params, context.limits)
    if params.enable_hr:
        check_hires_upscaler(params.hr_upscaler, context)
    return params


def check_limits(params: GenerationParams, limits: ApiLimits) -> None:
    """Refuses what is over this server's limits (steps, sizes, images, the hires size)."""
    if params.steps > limits.max_steps:
        raise ApiError(422, f"steps: at most {limits.max_steps} on this server, got {params.steps}")
    for name in ("width", "height", "seed_resize_from_w", "seed_resize_from_h"):
        value = getattr(params, name)
        if value > limits.max_size:
            raise ApiError(422, f"{name}: at most {limits.max_size} on this server, got {value}")
    images = params.batch_size * params.batch_count
    if images > limits.max_images:
        raise ApiError(422, f"n_iter: batch_size x n_iter is {images}, over this server's limit of "
                            f"{limits.max_images} images")
    if params.enable_hr:
        from core.pipelines.hires import hires_size

        width, height = hires_size(params)
        if max(width, height) > limits.max_size:
            raise ApiError(422, f"hr_scale: the hires size {width}x{height} is over this server's limit of "
                                f"{limits.max_size}")
        if params.hr_second_pass_steps > limits.max_steps:
            raise ApiError(422, f"hr_second_pass_steps: at most {limits.max_steps} on this server")


def check_hires_upscaler(name: str, context: RequestContext) -> None:
    """A hires upscaler is a latent mode or an upscaler this server has (GET /upscalers: the
    spandrel models present too); any other is refused (422) naming the known ones."""
    from core.pipelines.hires import LATENT_UPSCALE_MODES

    if name in LATENT_UPSCALE_MODES:
        return
    try:
        context.find_upscaler(name, "hr_upscaler")
    except ApiError as exc:
        raise ApiError(422, f"{exc.message}; or a latent mode: {', '.join(LATENT_UPSCALE_MODES)}") from None


def apply_native_size(params: GenerationParams, names: tuple[str, ...], size: int, limits: ApiLimits) -> None:
    """Set ``names`` (width, height) of ``params`` to the job's checkpoint's native ``size``,
    checked against this server's limits."""
    for name in names:
        setattr(params, name, size)
    check_limits(params, limits)


def processed_info(params: GenerationParams, results: list, loaded, job_timestamp: str, img2img: bool) -> dict:
    """What A1111's Processed.js() reports about a finished job."""
    from core.infotext import parse_infotext
    from core.sampling.samplers import resolve_sampler_name

    sampler, schedule = resolve_sampler_name(params.sampler)
    vae_path = getattr(loaded, "vae_path", None)  # a separate VAE the job used (None: the checkpoint's own)
    if params.scheduler not in ("", "Automatic"):
        schedule = params.scheduler
    seeds = [r.seed for r in results]
    fields = [parse_infotext(r.infotext) for r in results]
    subseeds = []
    for f in fields:
        try:
            subseeds.append(int(f.get("Variation seed", params.subseed)))
        except ValueError:
            subseeds.append(params.subseed)
    basic = {"Prompt", "Negative prompt", "Steps", "Sampler", "CFG scale", "Seed", "Size-1", "Size-2", "Model hash",
             "Model", "Batch size", "Batch pos", "Clip skip", "Denoising strength", "Variation seed",
             "Variation seed strength"}
    extra = {k: v for k, v in (fields[0] if fields else {}).items() if k not in basic}
    unet = loaded.model.spec.unet if loaded is not None else None
    count = len(results)
    return {
        "prompt": params.prompt,
        "all_prompts": [params.prompt] * count,
        "negative_prompt": params.negative_prompt,
        "all_negative_prompts": [params.negative_prompt] * count,
        "seed": seeds[0] if seeds else params.seed,
        "all_seeds": seeds,
        "subseed": subseeds[0] if subseeds else params.subseed,
        "all_subseeds": subseeds,
        "subseed_strength": params.subseed_strength,
        "width": params.width,
        "height": params.height,
        "sampler_name": sampler,
        "scheduler": schedule,
        "cfg_scale": params.cfg_scale,
        "steps": params.steps,
        "batch_size": params.batch_size,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": loaded.name if loaded is not None else None,
        "sd_model_hash": loaded.hash if loaded is not None else None,
        "sd_vae_name": vae_path.name if vae_path is not None else None,
        "sd_vae_hash": getattr(loaded, "vae_hash", None) if vae_path is not None else None,
        "seed_resize_from_w": params.seed_resize_from_w or -1,
        "seed_resize_from_h": params.seed_resize_from_h or -1,
        "denoising_strength": params.denoising_strength if (img2img or params.enable_hr) else None,
        "extra_generation_params": extra,
        "index_of_first_image": 0,
        "infotexts": [r.infotext for r in results],
        "styles": [],
        "job_timestamp": job_timestamp,
        "clip_skip": params.clip_skip,
        "is_using_inpainting_conditioning": getattr(unet, "in_channels", None) == 9,
        "version": VERSION,
    }

