"""The API's request and response models: A1111's names, defaults and types. Requests ignore
unknown fields (clients send extension fields) and refuse NaN, infinities and lone surrogates;
the options model is generated from app/settings.py's registry."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from app.api.errors import check_unicode
from app.settings import API_OPTIONS

API_PREFIX = "/sdapi/v1"


class _Request(BaseModel):
    # Unknown fields are ignored (clients send extension fields), NaN/inf are refused.
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, protected_namespaces=())

    @field_validator("*", mode="after")
    @classmethod
    def _valid_unicode(cls, value: Any) -> Any:
        check_unicode(value)
        return value


class GenerationRequest(_Request):
    prompt: str | None = ""
    negative_prompt: str | None = ""
    styles: list[str] | None = None
    seed: int | None = Field(-1, description="-1 for a random seed; image i of the run gets seed + i")
    subseed: int | None = -1
    subseed_strength: float | None = 0
    seed_resize_from_h: int | None = -1
    seed_resize_from_w: int | None = -1
    sampler_name: str | None = Field(None, description="A1111's sampler names; old combined ones "
                                                       "('DPM++ 2M Karras') are accepted. GET /samplers lists them")
    scheduler: str | None = Field(None, description="Schedule type; GET /schedulers lists them")
    batch_size: int | None = 1
    n_iter: int | None = 1
    steps: int | None = 50
    cfg_scale: float | None = 7.0
    distilled_cfg_scale: float | None = Field(3.5, description="FLUX.1 dev's guidance input (Forge's "
                                                               "'Distilled CFG Scale'); other models ignore it")
    width: int | None = Field(512, description="a multiple of 8; txt2img without it: the checkpoint's native size "
                                                "(512 SD 1.x, 768 SD 2.x v, 1024 SDXL)")
    height: int | None = Field(512, description="a multiple of 8; txt2img without it: the checkpoint's native size")
    restore_faces: bool | None = None
    tiling: bool | None = Field(None, description="seamless tiling: the picture's edges continue each other")
    do_not_save_samples: bool | None = False
    do_not_save_grid: bool | None = False
    eta: float | None = None
    denoising_strength: float | None = 0.75
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] | None = Field(
        None, description="Settings (as in GET /options) for this request only, e.g. sd_model_checkpoint")
    override_settings_restore_afterwards: bool | None = True
    refiner_checkpoint: str | None = Field(None, description="a second checkpoint (the SDXL refiner) that "
                                                             "takes over for the last steps (GET /sd-models lists them)")
    refiner_switch_at: float | None = Field(None, description="the fraction of the denoising done before the refiner "
                                                              "takes over (0.8 when not given)")
    disable_extra_networks: bool | None = False
    firstpass_image: str | None = None
    comments: dict[str, Any] | None = None
    sampler_index: str | None = "Euler"
    script_name: str | None = None
    script_args: list = Field(default_factory=list)
    send_images: bool | None = True
    save_images: bool | None = False
    alwayson_scripts: dict[str, Any] | None = Field(default_factory=dict)
    force_task_id: str | None = None
    infotext: str | None = Field(None, description="Generation parameters text; its fields fill the ones "
                                                    "this request does not set")


class StableDiffusionProcessingTxt2Img(GenerationRequest):
    enable_hr: bool | None = False
    firstphase_width: int | None = 0
    firstphase_height: int | None = 0
    hr_scale: float | None = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int | None = 0
    hr_resize_x: int | None = 0
    hr_resize_y: int | None = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str | None = ""
    hr_negative_prompt: str | None = ""


class StableDiffusionProcessingImg2Img(GenerationRequest):
    init_images: list[str] | None = Field(None, description="base64 pictures (one is supported)")
    resize_mode: int | None = Field(0, description="0 just resize, 1 crop and resize, 2 resize and fill, "
                                                   "3 just resize (latent upscale)")
    image_cfg_scale: float | None = None
    mask: str | None = Field(None, description="base64 mask: white is repainted (inpainting)")
    mask_blur_x: int | None = 4
    mask_blur_y: int | None = 4
    mask_blur: int | None = None
    mask_round: bool | None = True
    inpainting_fill: int | None = Field(0, description="0 fill, 1 original, 2 latent noise, 3 latent nothing")
    inpaint_full_res: bool | None = Field(True, description="True: only the masked area (with padding)")
    inpaint_full_res_padding: int | None = 0
    inpainting_mask_invert: int | None = Field(0, description="1: repaint what is not masked")
    initial_noise_multiplier: float | None = None
    latent_mask: str | None = None
    include_init_images: bool | None = Field(False, exclude=True)


class TextToImageResponse(BaseModel):
    images: list[str] | None = Field(None, description="The generated images, base64 PNG")
    parameters: dict
    info: str


class ImageToImageResponse(TextToImageResponse):
    pass


class ExtrasBaseRequest(_Request):
    resize_mode: Literal[0, 1] = Field(0, description="0: upscale by upscaling_resize; 1: to upscaling_resize_w x _h")
    show_extras_results: bool = True
    gfpgan_visibility: float = Field(0, ge=0, le=1)
    codeformer_visibility: float = Field(0, ge=0, le=1)
    codeformer_weight: float = Field(0, ge=0, le=1)
    upscaling_resize: float = Field(2, gt=0)
    upscaling_resize_w: int = Field(512, ge=1)
    upscaling_resize_h: int = Field(512, ge=1)
    upscaling_crop: bool = True
    upscaler_1: str = Field("None", description="GET /upscalers lists the names")
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = Field(0, ge=0, le=1)
    upscale_first: bool = False


class ExtrasSingleImageRequest(ExtrasBaseRequest):
    image: str = Field("", description="base64 picture")


class FileData(_Request):
    data: str = Field(description="base64 picture")
    name: str


class ExtrasBatchImagesRequest(ExtrasBaseRequest):
    imageList: list[FileData]


class ExtrasSingleImageResponse(BaseModel):
    html_info: str
    image: str | None = None


class ExtrasBatchImagesResponse(BaseModel):
    html_info: str
    images: list[str]


class PNGInfoRequest(_Request):
    image: str = Field(description="base64 picture")


class PNGInfoResponse(BaseModel):
    info: str
    items: dict
    parameters: dict


class ProgressResponse(BaseModel):
    progress: float
    eta_relative: float
    state: dict
    current_image: str | None = None
    textinfo: str | None = None


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, Any]


class SchedulerItem(BaseModel):
    name: str
    label: str
    aliases: list[str] | None = None
    default_rho: float | None = None
    need_inner_model: bool | None = None


class UpscalerItem(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    name: str
    model_name: str | None = None
    model_path: str | None = None
    model_url: str | None = None
    scale: float | None = None


class RealesrganItem(BaseModel):
    name: str
    path: str | None = None
    scale: int | None = None


class ExtensionItem(BaseModel):
    name: str
    remote: str = Field(description="the repository it came from: \"\" here (this server installs none from one)")
    branch: str
    commit_hash: str
    version: str
    commit_date: str = Field(description="\"\" where there is no repository")
    enabled: bool


class LatentUpscalerModeItem(BaseModel):
    name: str


class SDModelItem(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    title: str
    model_name: str
    hash: str | None = None
    sha256: str | None = None
    filename: str
    config: str | None = None


class SDVaeItem(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    model_name: str
    filename: str


class LoraItem(BaseModel):
    name: str
    alias: str
    path: str
    metadata: dict[str, Any]


class EmbeddingItem(BaseModel):
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    shape: int
    vectors: int


class EmbeddingsResponse(BaseModel):
    loaded: dict[str, EmbeddingItem]
    skipped: dict[str, EmbeddingItem]


class MemoryResponse(BaseModel):
    ram: dict
    cuda: dict


class ScriptsList(BaseModel):
    txt2img: list | None = None
    img2img: list | None = None


def options_model() -> type[BaseModel]:
    """GET /options' model, from the registry; kept keys of other programs come along."""
    fields = {o.key: (o.kind | None, Field(default=o.default, description=f"{o.label}: {o.help}".rstrip(": ")))
              for o in API_OPTIONS}
    return create_model("Options", __config__=ConfigDict(extra="allow"), **fields)


OptionsModel = options_model()


def value_or_default(model: BaseModel, name: str) -> Any:
    """The request's value, or the field's default where the client sent null."""
    value = getattr(model, name)
    if value is None:
        field = type(model).model_fields[name]
        return field.get_default(call_default_factory=True)
    return value
