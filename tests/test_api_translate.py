"""A generation request -> GenerationParams (app/api/translate.py), without FastAPI, a server or
an engine: the look-ups the server would do come from a small RequestContext made here."""
from __future__ import annotations

import sys
import types

import pytest

from app.api.errors import ApiError
from app.api.limits import ApiLimits
from app.api.options import check_option
from app.api.schemas import StableDiffusionProcessingImg2Img, StableDiffusionProcessingTxt2Img
from app.api.translate import RequestContext, apply_native_size, generation_params, processed_info
from app.settings import OPTIONS

# What clients may call each checkpoint -> the engine's name for it.
CHECKPOINTS = {"sd15.safetensors": "sd15.safetensors", "sd15": "sd15.safetensors",
               "refiner.safetensors": "refiner.safetensors"}
UPSCALERS = {"Lanczos", "Nearest"}


def find_checkpoint(wanted, field: str) -> str:
    if wanted not in CHECKPOINTS:
        raise ApiError(404, f"{field}: checkpoint {wanted!r} not found")
    return CHECKPOINTS[wanted]


def find_upscaler(name: str, field: str) -> str:
    if name not in UPSCALERS:
        raise ApiError(404, f"{field}: upscaler {name!r} not found")
    return name


def context(limits: ApiLimits | None = None, **saved) -> RequestContext:
    """The defaults of every setting with ``saved`` over them; override_settings checked one by one."""
    settings = {o.key: o.default for o in OPTIONS} | saved
    return RequestContext(
        settings=settings,
        limits=limits or ApiLimits(),
        find_checkpoint=find_checkpoint,
        option_changes=lambda changes, where: {k: check_option(k, v, where) for k, v in changes.items()},
        find_upscaler=find_upscaler,
    )


def txt2img(**fields):
    return StableDiffusionProcessingTxt2Img(**fields)


def test_txt2img_hires_fields_become_the_params_hires_values():
    req = txt2img(prompt="a lighthouse", width=64, height=96, steps=4, enable_hr=True, hr_scale=1.5,
                  hr_upscaler="Lanczos", hr_second_pass_steps=3, hr_sampler_name="DPM++ 2M", hr_prompt="sharper")
    params, restore, model = generation_params(req, False, context())
    assert (params.enable_hr, params.hr_scale, params.hr_upscaler, params.hr_second_pass_steps) == (
        True, 1.5, "Lanczos", 3)
    assert (params.hr_resize_x, params.hr_resize_y) == (0, 0)
    # "" is "as the first pass" for the second pass's sampler, scheduler and negative prompt
    assert (params.hr_sampler_name, params.hr_scheduler, params.hr_prompt, params.hr_negative_prompt) == (
        "DPM++ 2M", "", "sharper", "")
    assert (params.prompt, params.width, params.height, params.steps) == ("a lighthouse", 64, 96, 4)
    assert restore == {} and model.native_size == () and model.overrides is None


def test_hires_without_an_upscaler_is_latent_and_an_unknown_one_is_refused_by_its_field():
    params, _, _ = generation_params(txt2img(width=64, height=64, enable_hr=True), False, context())
    assert params.hr_upscaler == "Latent"
    with pytest.raises(ApiError) as refused:
        generation_params(txt2img(width=64, height=64, enable_hr=True, hr_upscaler="4x-Nowhere"), False, context())
    assert refused.value.status == 422
    assert refused.value.message.startswith("hr_upscaler: upscaler '4x-Nowhere' not found; or a latent mode: Latent, ")


def test_the_hires_size_is_held_to_the_servers_limit():
    with pytest.raises(ApiError) as refused:
        generation_params(txt2img(width=64, height=64, enable_hr=True, hr_scale=4), False,
                          context(ApiLimits(max_size=128)))
    assert refused.value.status == 422
    assert refused.value.message == "hr_scale: the hires size 256x256 is over this server's limit of 128"


def test_an_infotext_fills_only_the_fields_the_client_did_not_set():
    infotext = ("a cat on a mat\nNegative prompt: blurry\n"
                "Steps: 12, Sampler: Euler a, CFG scale: 5.5, Seed: 42, Size: 64x96, Clip skip: 2")
    # seed=-1 is the default, but sent: the client's choice, not the infotext's
    req = txt2img(prompt="my own prompt", steps=3, seed=-1, infotext=infotext)
    params, _, model = generation_params(req, False, context())
    assert (params.prompt, params.negative_prompt) == ("my own prompt", "blurry")
    assert (params.steps, params.seed) == (3, -1)
    assert (params.sampler, params.cfg_scale, params.width, params.height) == ("Euler a", 5.5, 64, 96)
    assert params.clip_skip == 2  # through override_settings, as A1111 applies it
    assert model.native_size == ()  # the infotext gave the size
    assert params.subseed == -1 and params.enable_hr is False  # not in the infotext: the request's defaults


def test_an_infotext_with_hires_fields_turns_hires_on_unless_the_client_said_otherwise():
    infotext = "x\nSteps: 5, Sampler: Euler, Seed: 1, Size: 64x64, Hires upscale: 2, Hires upscaler: Lanczos"
    params, _, _ = generation_params(txt2img(infotext=infotext), False, context())
    assert (params.enable_hr, params.hr_scale, params.hr_upscaler) == (True, 2.0, "Lanczos")
    params, _, _ = generation_params(txt2img(infotext=infotext, enable_hr=False), False, context())
    assert params.enable_hr is False


def test_the_api_reads_an_infotext_as_the_page_does():
    """One reader (app/forms.values_from_infotext) for both: an old combined sampler name is
    split into sampler and schedule, and the inpaint fields fill an img2img request."""
    from app.forms import tab_fields, values_from_infotext

    infotext = ("x\nSteps: 5, Sampler: DPM++ 2M Karras, Seed: 1, Size: 64x64, Denoising strength: 0.4, "
                "Mask blur: 8, Masked content: latent noise, Inpaint area: Only masked")
    req = StableDiffusionProcessingImg2Img(init_images=[], infotext=infotext)
    params, _, _ = generation_params(req, True, context())
    page, _ = tab_fields("inpaint", *values_from_infotext(infotext))
    assert (params.sampler, params.scheduler) == (page["sampler"], page["scheduler"]) == ("DPM++ 2M", "Karras")
    assert params.mask_blur == page["mask_blur"] == 8 and params.denoising_strength == 0.4
    assert params.inpainting_fill == 2 and page["inpainting_fill"] == "latent noise"
    assert params.inpaint_full_res is True and page["inpaint_full_res"] == "Only masked"


@pytest.mark.parametrize("img2img", [False, True])
def test_tiling_becomes_the_params_tiling(img2img):
    make = StableDiffusionProcessingImg2Img if img2img else StableDiffusionProcessingTxt2Img
    for sent, tiled in ((True, True), (False, False), (None, False)):
        params, _, _ = generation_params(make(width=64, height=64, tiling=sent), img2img, context())
        assert params.tiling is tiled


@pytest.mark.parametrize("field, value, message", [
    ("restore_faces", True, "restore_faces: face restoration is not available on this server"),
    ("alwayson_scripts", {"controlnet": {}},
     "alwayson_scripts: always-on script 'controlnet' not found (this server has none)"),
    ("hr_checkpoint_name", "sd15.safetensors", "hr_checkpoint_name: a different hires checkpoint is not supported"),
])
def test_an_unsupported_field_is_refused_naming_it(field, value, message):
    with pytest.raises(ApiError) as refused:
        generation_params(txt2img(width=64, height=64, **{field: value}), False, context())
    assert (refused.value.status, refused.value.message) == (422, message)


def test_img2img_refuses_its_own_unsupported_fields_and_a_blur_per_axis():
    for fields, message in (({"latent_mask": "abc"}, "latent_mask: a separate latent mask is not supported"),
                            ({"initial_noise_multiplier": 0.5}, "initial_noise_multiplier: only 1 is supported"),
                            ({"mask_blur_x": 2, "mask_blur_y": 6},
                             "mask_blur_x: a different blur per axis is not supported; give mask_blur")):
        with pytest.raises(ApiError) as refused:
            generation_params(StableDiffusionProcessingImg2Img(init_images=["x"], **fields), True, context())
        assert (refused.value.status, refused.value.message) == (422, message)
    params, _, model = generation_params(
        StableDiffusionProcessingImg2Img(init_images=["x"], mask_blur_x=6, mask_blur_y=6, inpainting_fill=1),
        True, context())
    assert (params.mask_blur, params.inpainting_fill, params.inpaint_full_res) == (6, 1, True)
    assert model.native_size == ()  # img2img's size is the request's (512 when not given)


def test_the_batch_pixel_limit_refuses_before_any_prompt_is_parsed(monkeypatch):
    import core.prompts.parser as parser

    parsed = []

    def parse_nothing(*args, **kwargs):
        parsed.append(args)
        raise AssertionError("a prompt was parsed")

    # Every binding of the parser's functions, in whichever of the project's modules imported them.
    functions = {id(value) for value in vars(parser).values()
                 if isinstance(value, types.FunctionType) and value.__module__ == parser.__name__}
    for module_name, module in list(sys.modules.items()):
        if module is None or module_name.split(".")[0] not in ("core", "app", "extensions"):
            continue
        for name, value in list(vars(module).items()):
            if id(value) in functions:
                monkeypatch.setattr(module, name, parse_nothing)
    req = txt2img(prompt="a <lora:nowhere:1.0> fox [in:a:field:0.5]", width=8192, height=8192, batch_size=2)
    with pytest.raises(ApiError) as refused:
        generation_params(req, False, context())
    assert refused.value.status == 422
    assert refused.value.message.startswith("batch_size: 2 pictures of 8192x8192 are 134217728 pixels, over the limit")
    assert parsed == []


def test_a_prompt_over_the_size_limit_is_refused_first():
    from core.params import MAX_PROMPT_BYTES

    with pytest.raises(ApiError) as refused:
        generation_params(txt2img(prompt="x" * (MAX_PROMPT_BYTES + 1), restore_faces=True), False, context())
    assert refused.value.status == 422 and refused.value.message.startswith("prompt: 65537 bytes long")


def test_the_servers_image_limit_names_n_iter():
    with pytest.raises(ApiError) as refused:
        generation_params(txt2img(width=64, height=64, batch_size=4, n_iter=3), False,
                          context(ApiLimits(max_images=8)))
    assert refused.value.message == "n_iter: batch_size x n_iter is 12, over this server's limit of 8 images"


def test_override_settings_apply_to_the_job_and_are_kept_only_when_asked():
    once = txt2img(width=64, height=64, override_settings={"CLIP_stop_at_last_layers": 3})
    params, restore, _ = generation_params(once, False, context())
    assert params.clip_skip == 3 and restore == {}
    kept = txt2img(width=64, height=64, override_settings={"CLIP_stop_at_last_layers": 3},
                   override_settings_restore_afterwards=False)
    params, restore, _ = generation_params(kept, False, context())
    assert params.clip_skip == 3 and restore == {"CLIP_stop_at_last_layers": 3}


def test_prediction_overrides_are_set_up_around_the_job():
    req = txt2img(width=64, height=64, override_settings={"sd_model_prediction": "v",
                                                           "sd_noise_schedule": "Zero Terminal SNR"})
    _, _, model = generation_params(req, False, context())
    assert model.overrides == ("v", True)


def test_the_jobs_checkpoint_comes_from_override_settings_else_the_saved_setting():
    params, _, _ = generation_params(txt2img(width=64, height=64, override_settings={"sd_model_checkpoint": "sd15"}),
                                     False, context())
    assert params.checkpoint == "sd15.safetensors"
    params, _, _ = generation_params(txt2img(width=64, height=64), False, context(sd_model_checkpoint="sd15"))
    assert params.checkpoint == "sd15.safetensors"
    # a saved checkpoint that was removed: the loaded one (None) rather than an error
    params, _, _ = generation_params(txt2img(width=64, height=64), False, context(sd_model_checkpoint="gone"))
    assert params.checkpoint is None
    with pytest.raises(ApiError) as refused:
        generation_params(txt2img(override_settings={"sd_model_checkpoint": "gone"}), False, context())
    assert (refused.value.status, refused.value.message) == (
        404, "override_settings.sd_model_checkpoint: checkpoint 'gone' not found")


def test_a_refiner_is_looked_up_and_switches_at_0_8_unless_told():
    params, _, _ = generation_params(txt2img(width=64, height=64, refiner_checkpoint="refiner.safetensors"),
                                     False, context())
    assert (params.refiner_checkpoint, params.refiner_switch_at) == ("refiner.safetensors", 0.8)
    params, _, _ = generation_params(txt2img(width=64, height=64, refiner_checkpoint="None"), False, context())
    assert params.refiner_checkpoint is None


def test_sizes_left_out_wait_for_the_checkpoints_native_size_within_the_limits():
    params, _, model = generation_params(txt2img(height=64), False, context())
    assert model.native_size == ("width",) and (params.width, params.height) == (8, 64)
    apply_native_size(params, model.native_size, 512, ApiLimits())
    assert (params.width, params.height) == (512, 64)
    with pytest.raises(ApiError) as refused:
        apply_native_size(params, model.native_size, 1024, ApiLimits(max_size=768))
    assert refused.value.message == "width: at most 768 on this server, got 1024"


def test_an_unknown_sampler_is_refused_by_the_field_it_came_in():
    with pytest.raises(ApiError) as refused:
        generation_params(txt2img(width=64, height=64, sampler_name="Nope"), False, context())
    assert refused.value.status == 404 and refused.value.message.startswith("sampler_name: ")
    params, _, _ = generation_params(txt2img(width=64, height=64, sampler_name="DPM++ 2M Karras"), False, context())
    assert (params.sampler, params.scheduler) == ("DPM++ 2M Karras", "Automatic")


def test_processed_info_reports_the_finished_job_as_a1111_does():
    params, _, _ = generation_params(txt2img(prompt="a fox", width=64, height=64, seed=5, steps=4,
                                             sampler_name="DPM++ 2M Karras"), False, context())
    results = [types.SimpleNamespace(seed=5 + i, infotext=f"a fox\nSteps: 4, Sampler: DPM++ 2M, Schedule type: Karras, "
                                                          f"Seed: {5 + i}, Size: 64x64, Variation seed: {9 + i}, "
                                                          f"Tiling: none")
               for i in range(2)]
    inpainting_unet = types.SimpleNamespace(in_channels=9)  # what an inpainting checkpoint's UNet takes
    loaded = types.SimpleNamespace(name="sd15", hash="abcdef1234",
                                   model=types.SimpleNamespace(spec=types.SimpleNamespace(unet=inpainting_unet)))
    info = processed_info(params, results, loaded, "20260101120000", img2img=False)
    assert (info["all_seeds"], info["all_subseeds"]) == ([5, 6], [9, 10])
    assert (info["sampler_name"], info["scheduler"]) == ("DPM++ 2M", "Karras")
    assert info["extra_generation_params"] == {"Schedule type": "Karras", "Tiling": "none"}
    assert info["denoising_strength"] is None  # txt2img without hires
    assert info["is_using_inpainting_conditioning"] is True
    assert (info["sd_model_name"], info["job_timestamp"], info["all_prompts"]) == ("sd15", "20260101120000",
                                                                                   ["a fox", "a fox"])
    assert info["seed_resize_from_w"] == -1
