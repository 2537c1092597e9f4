"""A REST API that speaks AUTOMATIC1111's ``/sdapi/v1`` dialect.

Request and response bodies use A1111's field names, defaults and types, so existing clients
(``webuiapi``, editor plug-ins, bots) work unchanged. Every request shares the one
``core.engine.Engine`` that the server built; work that touches the device (generation,
upscaling, loading or unloading a checkpoint) runs one job at a time on a single worker thread,
so the event loop stays free to answer ``progress``, ``interrupt`` and ``skip`` meanwhile.

Bad input never gives a 500: undecodable payloads are 400, unknown names (sampler, scheduler,
checkpoint, upscaler) 404, values out of range or over this server's limits 422. Every error
body carries a one-line message naming the field, in A1111's error shape
(``{"error", "detail", "body", "errors"}``).

``SdApi(engine, ...).router`` holds the routes; ``install_error_handlers(app)`` adds the error
mapping. ``app/server.py`` puts both on the FastAPI app, beside the Gradio page.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import dataclasses
import datetime as dt
import html
import io
import json
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable, Literal

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from PIL import Image, PngImagePlugin
from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.preview import latent_preview as preview_picture
from app.settings import (API_OPTIONS, MAX_KEPT_KEYS, OPTION_BY_KEY, Settings, SettingsError, check_kept,
                          engine_overrides)
from core.errors import EngineError
from core.params import MAX_PROMPT_BYTES, MAX_SIZE, MAX_STEPS, PROMPT_FIELDS, GenerationParams, check_prompt_length

log = logging.getLogger(__name__)

API_PREFIX = "/sdapi/v1"
VERSION = "sd-studio"


# ---------------------------------------------------------------------------------------------
# Limits and errors
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ApiLimits:
    """What one request may ask for. The defaults are the engine's own limits; a server that
    must stay responsive (or a test) lowers them."""

    max_steps: int = MAX_STEPS  # steps, and hires second-pass steps
    max_size: int = MAX_SIZE  # width and height, also of the hires result
    max_images: int = 100  # batch_size * n_iter
    max_input_pixels: int = 8192 * 8192  # an uploaded picture, before any work
    max_upscale_pixels: int = 8192 * 8192  # an upscaled result
    max_batch_files: int = 64  # extra-batch-images: pictures per request
    max_body_bytes: int = 256 * 1024 * 1024  # checked by server.py's middleware


class ApiError(Exception):
    """A client error with a one-line message that names the field."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _printable(text: str) -> str:
    """Text that can be sent as UTF-8 (lone surrogates from the client become escapes)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_body(kind: str, message: str, detail: Any = None) -> dict:
    """A1111's error shape: error (type), detail, body, errors (the message)."""
    message = _printable(message)
    return {"error": kind, "detail": message if detail is None else detail, "body": "", "errors": message}


class ValidationErrorItem(BaseModel):
    """One field error of a 422 from request validation."""

    type: str
    loc: list[str | int] = Field(description='where: ["body", "steps"], ["query", "skip_current_image"]')
    msg: str


class ErrorResponse(BaseModel):
    """Every error the API answers (400, 404, 413, 422, 500), in A1111's shape (``error_body``)."""

    error: str = Field(description="the kind: HTTPException, RequestValidationError, or an internal error's type")
    detail: str | list[ValidationErrorItem] = Field(
        description="the message; for a request that fails validation, the list of field errors")
    body: str
    errors: str = Field(description="the message, one line naming the field")


_ERROR_MEANINGS = {
    400: "A value the server cannot use: an undecodable picture or body, or a checkpoint that fails to load",
    404: "A named sampler, scheduler, checkpoint or upscaler that does not exist",
    413: "The body is larger than this server's limit",
    422: "A value out of range, over this server's limits, or not supported",
    500: "The server could not do it (e.g. cannot write its settings file)",
}


def error_responses(*statuses: int) -> dict[int, dict]:
    """The ``responses=`` of a route for the error statuses it can answer, with their body."""
    return {status: {"model": ErrorResponse, "description": _ERROR_MEANINGS[status]} for status in statuses}


def check_unicode(value: Any) -> None:
    """ValueError if any text inside ``value`` is not valid Unicode (a lone surrogate, which
    JSON allows as an escape but no PNG chunk or UTF-8 response can carry)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("text must be valid Unicode (it holds a lone surrogate)") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            check_unicode(key)
            check_unicode(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            check_unicode(item)


def _location(loc: tuple | list) -> str:
    """("body", "init_images", 0) -> "init_images[0]"."""
    text = ""
    for part in loc:
        if part in ("body", "query", "path", "header") and not text:
            continue
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"


def _validation_message(errors: list[dict]) -> str:
    parts = []
    for error in errors[:5]:
        where = _location(error.get("loc", ()))
        message = str(error.get("msg", "invalid value"))
        if error.get("type") == "json_invalid":
            where = "body"
            message = "malformed JSON" + (f" ({error['ctx']['error']})" if error.get("ctx", {}).get("error") else "")
        parts.append(f"{where}: {message}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


def install_error_handlers(app: FastAPI) -> None:
    """Map every error to A1111's error body; client errors with a message naming the field."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return JSONResponse(error_body("HTTPException", exc.message), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        detail = [{k: (_printable(v) if isinstance(v, str) else
                       [_printable(p) if isinstance(p, str) else p for p in v] if k == "loc" else v)
                   for k, v in e.items() if k in ("type", "loc", "msg")} for e in errors]
        return JSONResponse(error_body("RequestValidationError", _validation_message(errors), detail), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        return JSONResponse(error_body("HTTPException", message), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("API error: %s %s", request.method, request.url.path)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        message = f"internal error: {type(exc).__name__}" + (f": {first}" if first else "")
        return JSONResponse(error_body(type(exc).__name__, message), status_code=500)


# GenerationParams fields -> the request's (A1111's) names, for the messages of EngineErrors.
_FIELD_NAMES = {
    "sampler": "sampler_name",
    "batch_count": "n_iter",
    "clip_skip": "CLIP_stop_at_last_layers",
    "checkpoint": "sd_model_checkpoint",
    "image": "init_images[0]",
}


def engine_error(exc: EngineError, status: int = 400, field: str | None = None) -> ApiError:
    """A core EngineError as a client error, by its kind: a name that was not found is 404, the
    rest (invalid, too large, unavailable) ``status`` (422 where a request is checked before it
    runs, 400 for a job that failed). ``field``: the request's name for the field at fault,
    when the route knows it better (upscaler_1 for core's "upscaler")."""
    from core.errors import NOT_FOUND

    if field is None and exc.field is not None:
        field = _FIELD_NAMES.get(exc.field, exc.field)
    message = f"{field}: {exc.reason}" if field else str(exc)
    message = message.strip().splitlines()[0] if message.strip() else "invalid request"
    return ApiError(404 if exc.kind == NOT_FOUND else status, message)


# ---------------------------------------------------------------------------------------------
# Pictures in and out
# ---------------------------------------------------------------------------------------------

_DATA_URL = re.compile(r"^data:[^,]*?,", re.I)


def decode_image(data: Any, field: str, limits: ApiLimits) -> Image.Image:
    """A base64 picture (optionally a ``data:image/...;base64,`` URL) -> a loaded PIL image."""
    if not isinstance(data, str) or not data.strip():
        raise ApiError(400, f"{field}: no image given (expected a base64-encoded picture)")
    text = data.strip()
    if text.startswith(("http://", "https://")):
        raise ApiError(400, f"{field}: pictures are not fetched from URLs (this server is offline); send base64")
    match = _DATA_URL.match(text)
    if match:
        text = text[match.end():]
    text = "".join(text.split())
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{field}: not valid base64") from None
    if not raw:
        raise ApiError(400, f"{field}: the decoded picture is empty")
    try:
        image = Image.open(io.BytesIO(raw))
        if image.width * image.height > limits.max_input_pixels:
            raise ApiError(400, f"{field}: {image.width}x{image.height} is over this server's limit of "
                                f"{limits.max_input_pixels} pixels")
        image.load()
    except ApiError:
        raise
    except Image.DecompressionBombError:
        raise ApiError(400, f"{field}: picture too large") from None
    except Exception as exc:  # noqa: BLE001 - anything PIL raises means "not a picture we can read"
        raise ApiError(400, f"{field}: not a readable image ({type(exc).__name__})") from None
    return image


def encode_png(image: Image.Image, infotext: str | None = None) -> str:
    """A PIL image -> base64 PNG, with the infotext in a ``parameters`` chunk when given."""
    info = None
    if infotext:
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", infotext)
    if image.mode not in ("RGB", "RGBA", "L", "LA", "I", "I;16", "P", "1"):
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def html_info(text: str) -> str:
    """Plain text as A1111's html_info: escaped lines in one paragraph."""
    return "<p>" + "<br>\n".join(html.escape(line) for line in text.split("\n")) + "</p>"


def latent_preview(latent) -> Image.Image | None:
    """A step's (latent, latent format) as a small RGB picture (1/8 of the size), through the
    running model's preview colours (app/preview.py, shared with the page)."""
    latent, latent_format = latent if isinstance(latent, tuple) else (latent, None)
    return preview_picture(latent, latent_format, scale=1)


# ---------------------------------------------------------------------------------------------
# Request and response models (A1111's names, defaults and types)
# ---------------------------------------------------------------------------------------------


class _Request(BaseModel):
    # Unknown fields are ignored (clients send extension fields), NaN/inf are refused.
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, protected_namespaces=())

    @field_validator("*", mode="after")
    @classmethod
    def _valid_unicode(cls, value: Any) -> Any:
        check_unicode(value)
        return value


class _GenerationRequest(_Request):
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
    width: int | None = Field(512, description="a multiple of 8; txt2img without it: the checkpoint's native size "
                                                "(512 SD 1.x, 768 SD 2.x v, 1024 SDXL)")
    height: int | None = Field(512, description="a multiple of 8; txt2img without it: the checkpoint's native size")
    restore_faces: bool | None = None
    tiling: bool | None = None
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


class StableDiffusionProcessingTxt2Img(_GenerationRequest):
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


class StableDiffusionProcessingImg2Img(_GenerationRequest):
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


# ---------------------------------------------------------------------------------------------
# Options: app/settings.py's registry, A1111's names
# ---------------------------------------------------------------------------------------------


def check_option(key: str, value: Any, where: str = "") -> Any:
    """A value a client sets for ``key``, checked; ApiError(422) naming ``where + key`` if wrong.
    A key outside the registry (an A1111 setting this server does not use) is kept if its value
    is JSON of bounded size."""
    name = f"{where}{key}"
    try:
        check_unicode([key, value])
    except ValueError as exc:
        raise ApiError(422, f"{name}: {exc}") from None
    option = OPTION_BY_KEY.get(key)
    try:
        if option is None:
            return check_kept(key, value)
        if not option.api:
            raise ValueError("a setting of the page (its Settings tab), not of the API")
        if option.read_only:
            raise ValueError("read-only setting")
        return option.check(value)
    except (ValueError, TypeError) as exc:
        raise ApiError(422, f"{name}: {exc}, got {value!r}"[:300]) from None


def _same(a: Any, b: Any) -> bool:
    """Equal JSON values (True is not 1 here)."""
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def options_model() -> type[BaseModel]:
    """GET /options' model, from the registry; kept keys of other programs come along."""
    fields = {o.key: (o.kind | None, Field(default=o.default, description=f"{o.label}: {o.help}".rstrip(": ")))
              for o in API_OPTIONS}
    return create_model("Options", __config__=ConfigDict(extra="allow"), **fields)


OptionsModel = options_model()


# ---------------------------------------------------------------------------------------------
# The running job, as /progress reports it
# ---------------------------------------------------------------------------------------------


class JobState:
    """A1111's shared.state for API jobs: set by the worker thread, read by /progress."""

    def __init__(self):
        self._lock = threading.Lock()
        self.job = ""
        self.job_count = 0
        self.job_no = 0
        self.sampling_step = 0
        self.sampling_steps = 0
        self.interrupted = False
        self.skipped = False
        self.job_timestamp = "0"
        self.time_start = 0.0
        self.textinfo: str | None = None
        self.latent = None
        self._preview_key = None
        self._preview: str | None = None
        self._serial = 0

    def begin(self, job: str, job_count: int = 1, steps: int = 0) -> None:
        with self._lock:
            self._serial += 1
            self.job, self.job_count, self.job_no = job, max(job_count, 1), 0
            self.sampling_step, self.sampling_steps = 0, steps
            self.interrupted = self.skipped = False
            self.job_timestamp = dt.datetime.now().strftime("%Y%m%d%H%M%S")
            self.time_start = time.time()
            self.latent, self._preview_key, self._preview = None, None, None

    def end(self) -> None:
        with self._lock:
            self.job, self.job_count, self.job_no = "", 0, 0
            self.sampling_step = self.sampling_steps = 0
            self.latent, self._preview_key, self._preview = None, None, None

    def step(self, step: int, steps: int, job_no: int, job_count: int | None = None, latent=None) -> None:
        with self._lock:
            self.sampling_step, self.sampling_steps, self.job_no = step, steps, job_no
            if job_count:
                self.job_count = job_count
            if latent is not None:
                self.latent = latent

    def flag(self, name: str) -> None:
        with self._lock:
            if self.job_count:
                setattr(self, name, True)

    def as_dict(self) -> dict:
        with self._lock:
            return {
                "skipped": self.skipped, "interrupted": self.interrupted, "stopping_generation": False,
                "job": self.job, "job_count": self.job_count, "job_timestamp": self.job_timestamp,
                "job_no": self.job_no, "sampling_step": self.sampling_step, "sampling_steps": self.sampling_steps,
            }

    def progress(self) -> tuple[float, float]:
        """(fraction done, seconds left) the way A1111 estimates them."""
        with self._lock:
            if self.job_count == 0:
                return 0.0, 0.0
            done = 0.01 + self.job_no / self.job_count
            if self.sampling_steps > 0:
                done += self.sampling_step / self.sampling_steps / self.job_count
            elapsed = time.time() - self.time_start
            return min(done, 1.0), max(0.0, elapsed / done - elapsed)

    def preview(self) -> str | None:
        with self._lock:
            latent, key = self.latent, (self._serial, self.job_no, self.sampling_step)
            if latent is None:
                return None
            if key == self._preview_key:
                return self._preview
        image = latent_preview(latent)
        encoded = encode_png(image) if image is not None else None
        with self._lock:
            self._preview_key, self._preview = key, encoded
        return encoded


class ClientGone(ApiError):
    """The client closed its connection before its job ended; nobody reads this answer."""

    def __init__(self):
        super().__init__(499, "client closed the request")  # 499: nginx's "client closed request"


async def until_disconnected(request: Request) -> None:
    """Returns once the client of ``request`` has closed its connection. Only for a request
    whose body has been read (FastAPI reads it before the route runs): the server's ``receive``
    then has nothing left to give but ``http.disconnect``."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class DeviceQueue:
    """One worker thread: device jobs run one at a time, in arrival order."""

    def __init__(self, state: JobState):
        self.state = state
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sdapi-job")

    async def run(self, job: str, fn: Callable[[], Any], job_count: int = 1, steps: int = 0,
                  client: Request | None = None, gone: threading.Event | None = None) -> Any:
        """``fn()`` on the worker. With ``client``: once it disconnects, ``gone`` is set and
        ClientGone raised at once; a job still waiting in the queue then never starts, and a
        running one is for ``fn`` itself to stop (it sees ``gone``: only it can tell that the
        engine is running its work and not another client's)."""
        gone = gone if gone is not None else threading.Event()

        def wrapped():
            if gone.is_set():  # its client left while it waited: the cancel below came too late
                raise ClientGone()
            self.state.begin(job, job_count, steps)
            try:
                return fn()
            finally:
                self.state.end()

        future = self._executor.submit(wrapped)
        result = asyncio.wrap_future(future)
        watcher = asyncio.ensure_future(until_disconnected(client)) if client is not None else None
        try:
            if watcher is not None:
                await asyncio.wait({result, watcher}, return_when=asyncio.FIRST_COMPLETED)
                if not result.done():
                    gone.set()
                    if future.cancel():
                        log.info("%s: client gone, the queued job is dropped", job)
                    else:
                        log.info("%s: client gone, the running job is stopped", job)
                    raise ClientGone()
            return await result
        except asyncio.CancelledError:
            gone.set()
            future.cancel()  # the client went away: drop the job if it has not started
            raise
        finally:
            if watcher is not None:
                watcher.cancel()

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


# ---------------------------------------------------------------------------------------------
# Files the API lists (checkpoints come from the engine)
# ---------------------------------------------------------------------------------------------

_LORA_SUFFIXES = (".safetensors", ".pt", ".ckpt", ".bin")
_VAE_SUFFIXES = (".safetensors", ".pt", ".ckpt", ".bin")
_HASH_SUFFIX = re.compile(r"^(.*?)\s*\[([0-9a-fA-F]{8,64})\]$")


def _files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    from core.modelfiles import model_files  # linked files and folders followed, suffixes in any case

    return sorted(model_files(folder, suffixes), key=lambda p: p.as_posix().lower())


def safetensors_metadata(path: Path) -> dict:
    """The ``__metadata__`` of a .safetensors header (read without loading any tensor; {} when
    the file is not a valid safetensors file)."""
    from core.loading import safetensors_header

    metadata = safetensors_header(path).get("__metadata__")
    return metadata if isinstance(metadata, dict) else {}


@dataclasses.dataclass
class CheckpointEntry:
    name: str  # as the engine lists it, relative to the checkpoint folder
    path: Path
    sha256: str | None

    @property
    def model_name(self) -> str:
        return os.path.splitext(self.name.replace("/", "_").replace("\\", "_"))[0] if Path(self.name).suffix else \
            self.name.replace("/", "_")

    @property
    def short_hash(self) -> str | None:
        return self.sha256[:10] if self.sha256 else None

    @property
    def title(self) -> str:
        return f"{self.name} [{self.short_hash}]" if self.short_hash else self.name


def _cached_sha256(engine, path: Path) -> str | None:
    """The checkpoint's sha256 if the engine's hash cache already has it (never computed here:
    hashing a multi-GB file takes a while; the engine hashes a model when it first uses it)."""
    try:
        from core.hashing import model_file

        target = model_file(path).resolve()
        stat = target.stat()
        entry = getattr(getattr(engine, "hashes", None), "entries", {}).get(str(target))
    except (OSError, ImportError):
        return None
    if isinstance(entry, dict) and entry.get("size") == stat.st_size and entry.get("mtime") == stat.st_mtime:
        return entry.get("sha256")
    return None


# ---------------------------------------------------------------------------------------------
# The API
# ---------------------------------------------------------------------------------------------


def _default(model: BaseModel, name: str) -> Any:
    """The request's value, or the field's default where the client sent null."""
    value = getattr(model, name)
    if value is None:
        field = type(model).model_fields[name]
        return field.get_default(call_default_factory=True)
    return value


@dataclasses.dataclass
class JobModel:
    """Set-up of a job's model beyond its name: the (prediction, zero_terminal_snr) overrides
    from override_settings (None: the engine's), and the size fields to take from the model."""
    overrides: tuple | None = None
    native_size: tuple[str, ...] = ()


def _engine_lock(engine):
    lock = engine.exclusive() if hasattr(engine, "exclusive") else None
    return lock if lock is not None else contextlib.nullcontext()


class SdApi:
    def __init__(
        self,
        engine,
        *,
        settings: Settings | None = None,
        limits: ApiLimits | None = None,
        cmd_flags: dict | None = None,
        models_root: str | os.PathLike | None = None,
    ):
        self.engine = engine
        self.limits = limits or ApiLimits()
        self.options = settings if settings is not None else Settings(None)  # the page's store when served together
        self.cmd_flags = _public_flags(cmd_flags or {})
        if models_root is None:
            models_root = getattr(engine, "models_dir", None) or Path(engine.ckpt_dir).parent
        self.models_root = Path(models_root)
        self.state = JobState()
        self.queue = DeviceQueue(self.state)
        self.router = APIRouter(prefix=API_PREFIX, tags=["sdapi"])
        self._add_routes()
        if hasattr(engine, "prediction"):  # the saved choice of what checkpoints predict, for the next load
            engine.prediction, engine.zero_terminal_snr = engine_overrides(self.options.values())

    def shutdown(self) -> None:
        with contextlib.suppress(Exception):
            self.engine.interrupt()
        self.queue.shutdown()

    # --- routes -------------------------------------------------------------------------------

    def _add_routes(self) -> None:
        r = self.router
        # The errors each route can answer are declared, so /openapi.json matches what is returned.
        job = error_responses(400, 404, 413, 422)
        r.add_api_route("/txt2img", self.txt2img, methods=["POST"], response_model=TextToImageResponse, responses=job)
        r.add_api_route("/img2img", self.img2img, methods=["POST"], response_model=ImageToImageResponse, responses=job)
        r.add_api_route("/extra-single-image", self.extra_single_image, methods=["POST"],
                        response_model=ExtrasSingleImageResponse, responses=job)
        r.add_api_route("/extra-batch-images", self.extra_batch_images, methods=["POST"],
                        response_model=ExtrasBatchImagesResponse, responses=job)
        r.add_api_route("/png-info", self.png_info, methods=["POST"], response_model=PNGInfoResponse,
                        responses=error_responses(400, 413, 422))
        r.add_api_route("/progress", self.progress, methods=["GET"], response_model=ProgressResponse,
                        responses=error_responses(422))
        r.add_api_route("/interrupt", self.interrupt, methods=["POST"])
        r.add_api_route("/skip", self.skip, methods=["POST"])
        r.add_api_route("/options", self.get_options, methods=["GET"], response_model=OptionsModel)
        r.add_api_route("/options", self.set_options, methods=["POST"],
                        responses=error_responses(400, 404, 413, 422, 500))
        r.add_api_route("/cmd-flags", self.get_cmd_flags, methods=["GET"], response_model=dict[str, Any])
        r.add_api_route("/samplers", self.get_samplers, methods=["GET"], response_model=list[SamplerItem])
        r.add_api_route("/schedulers", self.get_schedulers, methods=["GET"], response_model=list[SchedulerItem])
        r.add_api_route("/upscalers", self.get_upscalers, methods=["GET"], response_model=list[UpscalerItem])
        r.add_api_route("/latent-upscale-modes", self.get_latent_upscale_modes, methods=["GET"],
                        response_model=list[LatentUpscalerModeItem])
        r.add_api_route("/sd-models", self.get_sd_models, methods=["GET"], response_model=list[SDModelItem])
        r.add_api_route("/sd-vae", self.get_sd_vae, methods=["GET"], response_model=list[SDVaeItem])
        r.add_api_route("/loras", self.get_loras, methods=["GET"], response_model=list[LoraItem])
        r.add_api_route("/embeddings", self.get_embeddings, methods=["GET"], response_model=EmbeddingsResponse)
        r.add_api_route("/memory", self.get_memory, methods=["GET"], response_model=MemoryResponse)
        r.add_api_route("/refresh-checkpoints", self.refresh_checkpoints, methods=["POST"])
        r.add_api_route("/refresh-vae", self.refresh_vae, methods=["POST"])
        r.add_api_route("/refresh-loras", self.refresh_loras, methods=["POST"])
        r.add_api_route("/unload-checkpoint", self.unload_checkpoint, methods=["POST"])
        r.add_api_route("/reload-checkpoint", self.reload_checkpoint, methods=["POST"],
                        responses=error_responses(400, 404))
        # What clients probe for; this server has none of these.
        r.add_api_route("/scripts", self.get_scripts, methods=["GET"], response_model=ScriptsList)
        r.add_api_route("/script-info", self.get_empty_list, methods=["GET"], response_model=list[dict[str, Any]])
        r.add_api_route("/prompt-styles", self.get_empty_list, methods=["GET"], response_model=list[dict[str, Any]])
        r.add_api_route("/face-restorers", self.get_empty_list, methods=["GET"], response_model=list[dict[str, Any]])
        r.add_api_route("/hypernetworks", self.get_empty_list, methods=["GET"], response_model=list[dict[str, Any]])

    # --- generation ---------------------------------------------------------------------------

    async def txt2img(self, req: StableDiffusionProcessingTxt2Img, request: Request) -> TextToImageResponse:
        """Text to image (with optional hires fix)."""
        params, restore, model = self._params(req, img2img=False)
        return await self._generate("txt2img", req, params, restore, model=model, client=request)

    async def img2img(self, req: StableDiffusionProcessingImg2Img, request: Request) -> ImageToImageResponse:
        """Image to image; with ``mask``, inpainting."""
        if not req.init_images:
            raise ApiError(422, "init_images: give one base64 picture")
        if len(req.init_images) > 1:
            raise ApiError(422, f"init_images: one picture per request is supported, got {len(req.init_images)}")
        params, restore, model = self._params(req, img2img=True)
        image = await run_in_threadpool(decode_image, req.init_images[0], "init_images[0]", self.limits)
        mask = await run_in_threadpool(decode_image, req.mask, "mask", self.limits) if req.mask else None
        return await self._generate("img2img", req, params, restore, image, mask, model=model, client=request)

    def _params(self, req: _GenerationRequest, img2img: bool) -> tuple[GenerationParams, dict, JobModel]:
        """The request as GenerationParams, checked; the settings to keep afterwards
        (override_settings with override_settings_restore_afterwards=false); and what the job
        sets up around the model (overrides of what the checkpoint predicts, native size)."""
        # Refused before any parsing; an infotext holds a prompt and a negative prompt and more.
        for name, limit in (*((n, MAX_PROMPT_BYTES) for n in PROMPT_FIELDS), ("infotext", 3 * MAX_PROMPT_BYTES)):
            try:
                check_prompt_length(name, getattr(req, name, None), limit)
            except EngineError as exc:
                raise engine_error(exc, 422) from None
        if req.infotext:
            self._apply_infotext(req)
        self._refuse_unsupported(req, img2img)
        overrides = self._option_changes(req.override_settings or {}, "override_settings.", keep_unknown=False)
        settings = {**self.options.values(), **overrides}

        checkpoint = None
        if "sd_model_checkpoint" in overrides:
            checkpoint = self.find_checkpoint(overrides["sd_model_checkpoint"], "override_settings.sd_model_checkpoint")
        elif self.options.get("sd_model_checkpoint"):
            try:
                checkpoint = self.find_checkpoint(self.options.get("sd_model_checkpoint"), "sd_model_checkpoint")
            except ApiError:  # the saved checkpoint was removed: fall back to the loaded one
                checkpoint = None

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
            """eta/s_noise only where the sampler takes them and they differ from its default
            (so the infotext records them as A1111 does)."""
            value = getattr(req, name)
            if value is None or name not in sampler.options or value == sampler.defaults.get(name):
                return None
            return value

        resize_w, resize_h = _default(req, "seed_resize_from_w"), _default(req, "seed_resize_from_h")
        if resize_w <= 0 or resize_h <= 0:
            resize_w = resize_h = 0
        values: dict[str, Any] = dict(
            prompt=_default(req, "prompt"),
            negative_prompt=_default(req, "negative_prompt"),
            steps=_default(req, "steps"),
            cfg_scale=_default(req, "cfg_scale"),
            seed=_default(req, "seed"),
            width=_default(req, "width"),
            height=_default(req, "height"),
            sampler=sampler_text,
            scheduler=scheduler,
            eta=sampler_option("eta"),
            s_noise=sampler_option("s_noise"),
            subseed=_default(req, "subseed"),
            subseed_strength=_default(req, "subseed_strength"),
            seed_resize_from_w=resize_w,
            seed_resize_from_h=resize_h,
            emphasis=settings["emphasis"],
            clip_skip=settings["CLIP_stop_at_last_layers"],
            batch_size=_default(req, "batch_size"),
            batch_count=_default(req, "n_iter"),
            denoising_strength=_default(req, "denoising_strength"),
            checkpoint=checkpoint,
        )
        model = JobModel()
        if "sd_model_prediction" in overrides or "sd_noise_schedule" in overrides:
            model.overrides = engine_overrides(settings)
        if img2img:
            blur = req.mask_blur
            if blur is None:
                blur_x, blur_y = _default(req, "mask_blur_x"), _default(req, "mask_blur_y")
                if blur_x != blur_y:
                    raise ApiError(422, "mask_blur_x: a different blur per axis is not supported; give mask_blur")
                blur = blur_x
            invert = _default(req, "inpainting_mask_invert")
            if invert not in (0, 1):
                raise ApiError(422, f"inpainting_mask_invert: must be 0 or 1, got {invert}")
            values.update(
                resize_mode=_default(req, "resize_mode"),
                mask_blur=blur,
                inpainting_fill=_default(req, "inpainting_fill"),
                inpaint_full_res=_default(req, "inpaint_full_res"),
                inpaint_full_res_padding=_default(req, "inpaint_full_res_padding"),
                inpainting_mask_invert=invert,
            )
        if req.refiner_checkpoint not in (None, "", "None"):
            values.update(refiner_checkpoint=self.find_checkpoint(req.refiner_checkpoint, "refiner_checkpoint"),
                          refiner_switch_at=0.8 if req.refiner_switch_at is None else req.refiner_switch_at)
        if not img2img:
            hr_upscaler = req.hr_upscaler or "Latent"
            values.update(
                enable_hr=_default(req, "enable_hr"),
                hr_scale=_default(req, "hr_scale"),
                hr_upscaler=hr_upscaler,
                hr_second_pass_steps=_default(req, "hr_second_pass_steps"),
                hr_resize_x=_default(req, "hr_resize_x"),
                hr_resize_y=_default(req, "hr_resize_y"),
                hr_sampler_name=req.hr_sampler_name or "",
                hr_scheduler=req.hr_scheduler or "",
                hr_prompt=_default(req, "hr_prompt"),
                hr_negative_prompt=_default(req, "hr_negative_prompt"),
            )
            # Sizes the client leaves out are the checkpoint's own: known once the job has the
            # checkpoint, checked against the limits then (8 until then).
            model.native_size = tuple(n for n in ("width", "height")
                                      if getattr(req, n) is None or n not in req.model_fields_set)
            values.update({name: 8 for name in model.native_size})
        params = GenerationParams(**values)
        try:
            params.validate()
        except EngineError as exc:
            raise engine_error(exc, 422) from None
        self._check_limits(params)
        if params.enable_hr:
            self._check_hires_upscaler(params.hr_upscaler)
        restore = {} if _default(req, "override_settings_restore_afterwards") else overrides
        return params, restore, model

    def _apply_infotext(self, req: _GenerationRequest) -> None:
        """Fields of ``req.infotext`` fill the request fields the client did not set."""
        from core.infotext import params_from_infotext

        parsed, _ = params_from_infotext(req.infotext)
        given = req.model_fields_set
        names = {"prompt": "prompt", "negative_prompt": "negative_prompt", "steps": "steps", "sampler": "sampler_name",
                 "scheduler": "scheduler", "cfg_scale": "cfg_scale", "seed": "seed", "width": "width",
                 "height": "height", "subseed": "subseed", "subseed_strength": "subseed_strength",
                 "seed_resize_from_w": "seed_resize_from_w", "seed_resize_from_h": "seed_resize_from_h",
                 "denoising_strength": "denoising_strength", "eta": "eta", "s_noise": "s_noise"}
        if isinstance(req, StableDiffusionProcessingTxt2Img):
            names.update({n: n for n in ("hr_scale", "hr_second_pass_steps", "hr_upscaler", "hr_resize_x",
                                         "hr_resize_y", "hr_sampler_name", "hr_scheduler", "hr_prompt",
                                         "hr_negative_prompt", "refiner_checkpoint", "refiner_switch_at")})
        fields = _infotext_fields(req.infotext)
        for attr, name in names.items():
            if name in given or name not in type(req).model_fields:
                continue
            if attr in ("prompt", "negative_prompt") or _infotext_has(fields, attr):
                setattr(req, name, getattr(parsed, attr))
        if isinstance(req, StableDiffusionProcessingTxt2Img) and "enable_hr" not in given and (
                "Hires upscale" in fields or "Hires resize-1" in fields):
            req.enable_hr = True
        if "Clip skip" in fields:
            overrides = dict(req.override_settings or {})
            overrides.setdefault("CLIP_stop_at_last_layers", parsed.clip_skip)
            req.override_settings = overrides
        if fields.get("Noise Schedule") in OPTION_BY_KEY["sd_noise_schedule"].choices:
            overrides = dict(req.override_settings or {})
            overrides.setdefault("sd_noise_schedule", fields["Noise Schedule"])
            req.override_settings = overrides

    def _refuse_unsupported(self, req: _GenerationRequest, img2img: bool) -> None:
        """Features this server does not have: refused by name rather than silently ignored."""
        if req.script_name:
            raise ApiError(422, f"script_name: script {req.script_name!r} not found (this server has no scripts)")
        for name in (req.alwayson_scripts or {}):
            raise ApiError(422, f"alwayson_scripts: always-on script {name!r} not found (this server has none)")
        if req.styles:
            raise ApiError(422, f"styles: prompt style {req.styles[0]!r} not found (this server has no styles)")
        if req.restore_faces:
            raise ApiError(422, "restore_faces: face restoration is not available on this server")
        if req.tiling:
            raise ApiError(422, "tiling: seamless tiling is not supported")
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

    def _check_limits(self, params: GenerationParams) -> None:
        limits = self.limits
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

    def _native_size(self, params: GenerationParams, names: tuple[str, ...]) -> None:
        """Set ``names`` (width, height) of ``params`` to the job's checkpoint's native size
        (loading it, as the job would), checked against this server's limits."""
        with _engine_lock(self.engine):
            loaded = self.engine.job_model(params.checkpoint)
        size = loaded.model.spec.default_size
        for name in names:
            setattr(params, name, size)
        self._check_limits(params)

    def _check_hires_upscaler(self, name: str) -> None:
        from core.pipelines.hires import LATENT_UPSCALE_MODES

        if name in LATENT_UPSCALE_MODES:
            return
        self._find_upscaler(name, "hr_upscaler")

    async def _generate(self, kind: str, req, params: GenerationParams, restore: dict, image=None, mask=None,
                        model: JobModel | None = None, client: Request | None = None):
        save = bool(_default(req, "save_images"))
        engine, state = self.engine, self.state
        model = model or JobModel()
        gone = threading.Event()  # set when the client disconnects

        def on_progress(p) -> None:
            if gone.is_set():  # called from this job's own steps: the interrupt cannot hit another job
                engine.interrupt()
                state.flag("interrupted")
            latent = (p.latent, p.latent_format) if self.options.get("live_previews_enable") and p.latent is not None else None
            state.step(p.step, p.steps, p.batch, p.batches, latent)

        def job():
            kept = (getattr(engine, "prediction", "auto"), getattr(engine, "zero_terminal_snr", None))
            if model.overrides is not None:  # override_settings for this request
                engine.prediction, engine.zero_terminal_snr = model.overrides
            try:
                if model.native_size:
                    self._native_size(params, model.native_size)
                if kind == "txt2img":
                    results = engine.txt2img(params, progress=on_progress, save=save)
                else:
                    results = engine.img2img(params, image, mask, progress=on_progress, save=save)
            except EngineError as exc:
                raise engine_error(exc) from None
            finally:
                if model.overrides is not None and not {"sd_model_prediction", "sd_noise_schedule"} & set(restore):
                    engine.prediction, engine.zero_terminal_snr = kept
            loaded = engine.loaded
            return results, loaded, state.job_timestamp

        results, loaded, timestamp = await self.queue.run(kind, job, params.batch_count, params.steps,
                                                          client=client, gone=gone)
        if restore:
            await run_in_threadpool(self._save_settings, restore)
        pnginfo = self.options.get("enable_pnginfo")
        unsaved = [index for index, r in enumerate(results) if getattr(r, "save_error", None)]
        # a picture the folder could not take exists only in this answer: sent whatever send_images says
        send = _default(req, "send_images") or bool(unsaved)

        def encode_all():
            return [encode_png(r.image, r.infotext if pnginfo else None) for r in results] if send else []

        images = await run_in_threadpool(encode_all)
        info = processed_info(params, results, loaded, timestamp, img2img=kind == "img2img")
        if unsaved:
            info.update(unsaved_images_note(results, unsaved))
        parameters = req.model_dump()
        if kind == "img2img" and not req.include_init_images:
            parameters["init_images"] = None
            parameters["mask"] = None
        response = TextToImageResponse if kind == "txt2img" else ImageToImageResponse
        return response(images=images, parameters=parameters, info=json.dumps(info, ensure_ascii=False))

    # --- extras (upscaling) ------------------------------------------------------------------

    def _find_upscaler(self, name: str, field: str):
        from core.upscaling import find_upscaler

        try:
            return find_upscaler(name, self.models_root)
        except EngineError as exc:
            raise engine_error(exc, 422, field) from None

    def _extras_job(self, req: ExtrasBaseRequest):
        """The request as core's upscale job, with this server's tile settings."""
        from core.upscaling.extras import ExtrasJob

        by_size = req.resize_mode == 1
        return ExtrasJob(
            upscaler=req.upscaler_1,
            scale=None if by_size else req.upscaling_resize,
            size=(req.upscaling_resize_w, req.upscaling_resize_h) if by_size else None,
            crop=bool(req.upscaling_crop) if by_size else None,
            upscaler_2=req.upscaler_2,
            upscaler_2_visibility=req.extras_upscaler_2_visibility,
            tile=self.options.get("ESRGAN_tile"),
            overlap=self.options.get("ESRGAN_tile_overlap"),
        )

    def _check_extras_size(self, job, req: ExtrasBaseRequest, size: tuple[int, int], field: str) -> None:
        """Refuses a picture whose result would be over this server's limit, before any work."""
        where = "upscaling_resize_w" if req.resize_mode == 1 else "upscaling_resize"
        try:
            out = job.plan(size).upscaled
        except EngineError as exc:
            raise engine_error(exc, 422, where) from None
        if out[0] * out[1] > self.limits.max_upscale_pixels:
            raise ApiError(422, f"{where}: {field} would become {out[0]}x{out[1]}, over this server's limit of "
                                f"{self.limits.max_upscale_pixels} pixels")

    def _check_extras(self, req: ExtrasBaseRequest):
        """The request's upscale job, its upscalers looked up (a bad name fails before any work)."""
        for name in ("gfpgan_visibility", "codeformer_visibility"):
            if getattr(req, name):
                raise ApiError(422, f"{name}: face restoration is not available on this server")
        job = self._extras_job(req)
        try:
            job.upscalers(self.models_root)
        except EngineError as exc:
            raise engine_error(exc, 422, {"upscaler": "upscaler_1"}.get(exc.field)) from None
        return job

    async def _extras(self, kind: str, pictures: list[tuple[Image.Image, str]], req: ExtrasBaseRequest, job,
                      client: Request | None = None):
        for image, field in pictures:
            self._check_extras_size(job, req, image.size, field)
        gone = threading.Event()  # set when the client disconnects: the rest is not upscaled for nobody
        count = len(pictures)

        def work():
            results = []
            for number, (image, _) in enumerate(pictures):
                if gone.is_set():
                    raise ClientGone()

                def progress(done: int, total: int, number=number) -> None:
                    if gone.is_set():  # stops the picture at its next tile
                        raise ClientGone()
                    self.state.step(done, total, number, count)

                try:
                    results.append(self.engine.extras(image, job, progress=progress))
                except EngineError as exc:
                    raise engine_error(exc) from None
            return results

        results = await self.queue.run(kind, work, job_count=count, client=client, gone=gone)
        pnginfo = self.options.get("enable_pnginfo")
        encoded = await run_in_threadpool(
            lambda: [encode_png(r.image, r.infotext if pnginfo else None) for r in results])
        return encoded, [r.infotext for r in results]

    async def extra_single_image(self, req: ExtrasSingleImageRequest, request: Request) -> ExtrasSingleImageResponse:
        """Upscale one picture (A1111's Extras tab)."""
        job = self._check_extras(req)
        image = await run_in_threadpool(decode_image, req.image, "image", self.limits)
        encoded, infotexts = await self._extras("extras-single-image", [(image, "image")], req, job, request)
        return ExtrasSingleImageResponse(image=encoded[0], html_info=html_info(infotexts[0]))

    async def extra_batch_images(self, req: ExtrasBatchImagesRequest, request: Request) -> ExtrasBatchImagesResponse:
        """Upscale several pictures with the same settings."""
        if not req.imageList:
            raise ApiError(422, "imageList: give at least one picture")
        if len(req.imageList) > self.limits.max_batch_files:
            raise ApiError(422, f"imageList: at most {self.limits.max_batch_files} pictures per request")
        job = self._check_extras(req)

        def decode_all():
            return [(decode_image(f.data, f"imageList[{i}].data", self.limits), f"imageList[{i}]")
                    for i, f in enumerate(req.imageList)]

        pictures = await run_in_threadpool(decode_all)
        encoded, infotexts = await self._extras("extras-batch-images", pictures, req, job, request)
        return ExtrasBatchImagesResponse(images=encoded, html_info=html_info(infotexts[0] if infotexts else ""))

    def png_info(self, req: PNGInfoRequest) -> PNGInfoResponse:
        """The generation parameters (and other text chunks) stored in a picture."""
        from core.infotext import parse_infotext

        image = decode_image(req.image, "image", self.limits)
        info = image.info.get("parameters")
        info = info if isinstance(info, str) else ""
        items = {k: v for k, v in image.info.items()
                 if k != "parameters" and isinstance(k, str) and isinstance(v, (str, int, float, bool))}
        return PNGInfoResponse(info=info, items=items, parameters=parse_infotext(info) if info.strip() else {})

    # --- progress and control ------------------------------------------------------------------

    def progress(self, skip_current_image: bool = False) -> ProgressResponse:
        """The running API job: fraction done, seconds left, state, and a live preview."""
        done, eta = self.state.progress()
        state = self.state.as_dict()
        image = None
        if state["job_count"] and not skip_current_image and self.options.get("live_previews_enable"):
            image = self.state.preview()
        textinfo = self.state.textinfo
        loading = getattr(self.engine, "loading", None)
        if loading is not None:  # a checkpoint being read (at start, on a switch, or for this job)
            textinfo = f"Loading {loading.name}: {loading.fraction:.0%}"
        return ProgressResponse(progress=done, eta_relative=eta, state=state, current_image=image, textinfo=textinfo)

    def interrupt(self) -> dict:
        """Stop the running job after its current step; no further batches are made."""
        self.engine.interrupt()
        self.state.flag("interrupted")
        return {}

    def skip(self) -> None:
        """Stop the running batch and go on with the next."""
        self.engine.skip()
        self.state.flag("skipped")

    # --- options ----------------------------------------------------------------------------------

    def _settings_warning(self, response: Response) -> None:
        """A settings file that was set aside (not JSON, not an object) is told to every client
        of /options in an HTTP ``Warning`` header (code 199, "miscellaneous warning")."""
        if self.options.notice:
            text = " ".join(self.options.notice.split()).replace("\\", "\\\\").replace('"', '\\"')
            response.headers["Warning"] = f'199 - "{text.encode("ascii", "backslashreplace").decode()}"'

    def get_options(self, response: Response) -> dict:
        self._settings_warning(response)
        return self._options_now()

    def _options_now(self) -> dict:
        """What GET /options reports: the registry's API options, the current checkpoint and its
        hash, and the keys kept for other programs."""
        values = self.options.values()
        shown = {o.key: values[o.key] for o in API_OPTIONS}
        entry = self._current_checkpoint()
        shown["sd_model_checkpoint"] = entry.title if entry else values["sd_model_checkpoint"]
        shown["sd_checkpoint_hash"] = entry.sha256 if entry else None
        return {**self.options.kept(), **shown}

    def _option_changes(self, req: dict[str, Any], where: str = "", keep_unknown: bool = True) -> dict[str, Any]:
        """``req``'s settings, checked, less the ones that would change nothing: as A1111 does, a
        client may send back every option it read (read-only ones included) with one edited. A
        read-only option sent with another value (null aside: the client did not know it) is
        refused; so is a key outside the registry unless ``keep_unknown``. sd_model_checkpoint
        is left to the caller (it is resolved and loaded)."""
        if len(req) > len(OPTION_BY_KEY) + MAX_KEPT_KEYS:
            most = len(OPTION_BY_KEY) + MAX_KEPT_KEYS
            raise ApiError(413, f"{where or 'body'}: at most {most} settings in one request")
        current = self._options_now() if set(req) - {"sd_model_checkpoint"} else {}
        changes = {}
        for key, value in req.items():
            if key == "sd_model_checkpoint" and value is not None:
                changes[key] = check_option(key, value, where)
                continue
            if key in current and _same(value, current[key]):
                continue
            option = OPTION_BY_KEY.get(key)
            if option is not None and option.read_only and value is None:
                continue
            if option is None and not keep_unknown:
                raise ApiError(422, f"{where}{key}: not a setting this server uses, so it cannot change this job")
            changes[key] = check_option(key, value, where)
        return changes

    async def set_options(self, req: dict[str, Any], response: Response) -> None:
        """Change settings (A1111's names); they are saved at once. Options sent back unchanged
        are ignored. Setting sd_model_checkpoint loads that checkpoint."""
        changes = self._option_changes(req)
        checkpoint = None
        if "sd_model_checkpoint" in changes:
            sent = changes.pop("sd_model_checkpoint")
            checkpoint = self.find_checkpoint(sent, "sd_model_checkpoint")
            current = self._current_checkpoint()
            if current is None or sent != current.title:  # the title GET reported, sent back, is no new choice
                changes["sd_model_checkpoint"] = checkpoint
        if {"sd_model_prediction", "sd_noise_schedule"} & set(changes) and hasattr(self.engine, "prediction"):
            wanted = engine_overrides({**self.options.values(), **changes})
            reload = checkpoint is None  # else the load below applies them
            await self.queue.run("load checkpoint", lambda: self._set_model_overrides(*wanted, reload=reload))
        if checkpoint is not None:
            await self.queue.run("load checkpoint", lambda: self._load(checkpoint))
        if changes:
            await run_in_threadpool(self._save_settings, changes)
        self._settings_warning(response)
        return None

    def _set_model_overrides(self, prediction: str, zero_terminal_snr: bool | None, reload: bool = True) -> None:
        """The engine's overrides; the loaded checkpoint is loaded again at once if they changed it."""
        engine = self.engine
        try:
            with _engine_lock(engine):
                engine.prediction, engine.zero_terminal_snr = prediction, zero_terminal_snr
                if reload and engine.loaded is not None:
                    engine.load(str(engine.loaded.path), allow_paths=True)
        except EngineError as exc:
            raise engine_error(exc) from None

    def _save_settings(self, changes: dict) -> None:
        try:
            self.options.update(changes)
        except SettingsError as exc:
            raise ApiError(422, str(exc)) from None
        except OSError as exc:
            raise ApiError(500, f"settings: cannot write {self.options.path}: {exc.strerror or exc}") from None

    def _load(self, name: str) -> None:
        try:
            with _engine_lock(self.engine):
                self.engine.load(name)
        except EngineError as exc:
            raise engine_error(exc) from None

    def get_cmd_flags(self) -> dict:
        return self.cmd_flags

    # --- lists ------------------------------------------------------------------------------------

    def get_samplers(self) -> list[dict]:
        from core.sampling.samplers import SAMPLERS

        items = []
        for sampler in SAMPLERS.values():
            options: dict[str, Any] = dict(sampler.defaults)
            if sampler.default_schedule not in (None, "Uniform"):
                options["scheduler"] = _scheduler_name(sampler.default_schedule)
            if sampler.discard_penultimate_sigma:
                options["discard_next_to_last_sigma"] = True
            items.append({"name": sampler.name, "aliases": list(sampler.aliases), "options": options})
        return items

    def get_schedulers(self) -> list[dict]:
        from core.sampling.schedules import AUTOMATIC, SCHEDULE_SPELLINGS, SCHEDULES

        items = []
        for label in (AUTOMATIC, *SCHEDULES):
            name = _scheduler_name(label)
            aliases = sorted({s for s, lab in SCHEDULE_SPELLINGS.items() if lab == label} - {name, label.lower()})
            rho, inner = _SCHEDULER_TRAITS.get(label, (None, None))
            items.append({"name": name, "label": label, "aliases": aliases or None, "default_rho": rho,
                          "need_inner_model": inner})
        return items

    def get_upscalers(self) -> list[dict]:
        from core.upscaling import list_upscalers

        return [{"name": u.name, "model_name": None if u.path is None else u.kind,
                 "model_path": str(u.path) if u.path else None, "model_url": None,
                 "scale": _upscaler_scale(u.name) if u.path else None}
                for u in list_upscalers(self.models_root)]

    def get_latent_upscale_modes(self) -> list[dict]:
        from core.pipelines.hires import LATENT_UPSCALE_MODES

        return [{"name": name} for name in LATENT_UPSCALE_MODES]

    def checkpoints(self) -> list[CheckpointEntry]:
        entries = []
        for name in self.engine.list_checkpoints():
            path = self.engine.resolve_checkpoint(name)  # the bundled demo lives outside ckpt_dir
            entries.append(CheckpointEntry(name, path, _cached_sha256(self.engine, path)))
        return entries

    def find_checkpoint(self, wanted: Any, field: str) -> str:
        """A checkpoint as clients name it (title with [hash], file name, model name, stem, hash)
        -> the engine's name for it; 404 naming ``field`` if there is none."""
        if not isinstance(wanted, str) or not wanted.strip():
            raise ApiError(422, f"{field}: give a checkpoint name (GET {API_PREFIX}/sd-models lists them)")
        text = wanted.strip()
        entries = self.checkpoints()
        match = _HASH_SUFFIX.match(text)
        base, digest = (match.group(1), match.group(2).lower()) if match else (text, None)
        for candidate in (text, base):
            for entry in entries:
                if candidate in (entry.name, entry.title, entry.model_name, Path(entry.name).stem,
                                 Path(entry.name).name):
                    return entry.name
        hexes = [h for h in (digest, text.lower()) if h and re.fullmatch(r"[0-9a-f]{8,64}", h)]
        for h in hexes:
            for entry in entries:
                if entry.sha256 and entry.sha256.startswith(h):
                    return entry.name
        known = ", ".join(e.name for e in entries[:20]) or "none; put checkpoints in " + str(self.engine.ckpt_dir)
        raise ApiError(404, f"{field}: checkpoint {text!r} not found (known: {known})"[:500])

    def _current_checkpoint(self) -> CheckpointEntry | None:
        """The settings' checkpoint, else the loaded one, else the first (what a job would use)."""
        entries = self.checkpoints()
        chosen = self.options.get("sd_model_checkpoint")
        if chosen:
            for entry in entries:
                if entry.name == chosen:
                    return entry
        loaded = getattr(self.engine, "loaded", None)
        if loaded is not None:
            for entry in entries:
                with contextlib.suppress(OSError):
                    if entry.path.resolve() == Path(loaded.path).resolve():
                        return entry
        return entries[0] if entries else None

    def get_sd_models(self) -> list[dict]:
        return [{"title": e.title, "model_name": e.model_name, "hash": e.short_hash, "sha256": e.sha256,
                 "filename": str(e.path), "config": None} for e in self.checkpoints()]

    def get_sd_vae(self) -> list[dict]:
        folder = self.models_root / "VAE"
        return [{"model_name": p.relative_to(folder).as_posix(), "filename": str(p)}
                for p in _files(folder, _VAE_SUFFIXES)]

    def get_loras(self) -> list[dict]:
        items = []
        for path in _files(getattr(self.engine, "lora_dir", None) or self.models_root / "Lora", _LORA_SUFFIXES):
            metadata = safetensors_metadata(path)
            alias = metadata.get("ss_output_name") if isinstance(metadata.get("ss_output_name"), str) else path.stem
            items.append({"name": path.stem, "alias": alias, "path": str(path), "metadata": metadata})
        return items

    def get_embeddings(self) -> dict:
        loaded = getattr(self.engine, "loaded", None)
        database = getattr(loaded, "embeddings", None)
        if database is None:
            return {"loaded": {}, "skipped": {}}
        found = {name: {"shape": int(e.vectors.shape[-1]), "vectors": int(e.vectors.shape[0])}
                 for name, e in database.by_name.items()}
        skipped = {}
        folder = Path(getattr(self.engine, "embeddings_dir", self.models_root / "embeddings"))
        for name in database.skipped:
            vectors = _embedding_shape(folder, name)
            if vectors is not None:
                skipped[name] = {"shape": vectors[1], "vectors": vectors[0]}
        return {"loaded": found, "skipped": skipped}

    def get_memory(self) -> dict:
        return {"ram": _ram_stats(), "cuda": _cuda_stats()}

    def get_scripts(self) -> dict:
        return {"txt2img": [], "img2img": []}

    def get_empty_list(self) -> list:
        return []

    def refresh_checkpoints(self) -> None:
        """Checkpoints are listed from the folder on every request: nothing is cached."""
        return None

    def refresh_vae(self) -> None:
        return None

    def refresh_loras(self) -> None:
        return None

    async def unload_checkpoint(self) -> dict:
        """Free the loaded checkpoint (the next job loads it again)."""
        def unload():
            with _engine_lock(self.engine):
                self.engine.unload()

        await self.queue.run("unload checkpoint", unload)
        return {}

    async def reload_checkpoint(self) -> dict:
        """Load the current checkpoint (the settings' one, or the first) if it is not loaded."""
        entry = self._current_checkpoint()
        if entry is None:
            raise ApiError(404, f"sd_model_checkpoint: no checkpoint found in {self.engine.ckpt_dir}")
        await self.queue.run("load checkpoint", lambda: self._load(entry.name))
        return {}


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

# Schedule type -> (default rho, needs the model's own sigmas), as A1111 describes them.
_SCHEDULER_TRAITS = {
    "Automatic": (None, False), "Uniform": (None, True), "Karras": (7.0, False), "Exponential": (None, False),
    "Polyexponential": (1.0, False), "SGM Uniform": (None, True), "Simple": (None, True), "Normal": (None, True),
    "DDIM": (None, True), "Beta": (None, True), "Align Your Steps": (None, False),
}


def unsaved_images_note(results: list, unsaved: list[int]) -> dict:
    """What ``info`` says when the output folder could not take some images (full, read-only):
    the answer is still 200 with every image, as 507 Insufficient Storage is about the folder,
    not the job. ``warnings``: for people; ``save_error``: for programs."""
    message = (f"{len(unsaved)} of {len(results)} image(s) {results[unsaved[0]].save_error}; "
               "they are only in this response")
    log.warning(message)
    return {"warnings": [message],
            "save_error": {"status": 507, "reason": "Insufficient Storage", "message": message, "images": unsaved}}


def _scheduler_name(label: str) -> str:
    return label.lower().replace(" ", "_")


def _upscaler_scale(name: str) -> float | None:
    match = re.search(r"(?<![0-9])([1-8])x(?![0-9a-z])|(?<![0-9a-z])x([1-8])(?![0-9])", name.lower())
    if not match:
        return None
    return float(match.group(1) or match.group(2))


def _infotext_fields(text: str) -> dict:
    from core.infotext import parse_infotext

    return parse_infotext(text)


def _infotext_has(fields: dict, attr: str) -> bool:
    from core.infotext import FIELDS

    keys = [key for key, (name, _) in FIELDS.items() if name == attr]
    return any(key in fields for key in keys)


def processed_info(params: GenerationParams, results: list, loaded, job_timestamp: str, img2img: bool) -> dict:
    """What A1111's Processed.js() reports about a finished job."""
    from core.infotext import parse_infotext
    from core.sampling.samplers import resolve_sampler_name

    sampler, schedule = resolve_sampler_name(params.sampler)
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
    spec = getattr(getattr(getattr(loaded, "model", None), "spec", None), "unet", None)
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
        "sd_model_name": getattr(loaded, "name", None),
        "sd_model_hash": getattr(loaded, "hash", None),
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": params.seed_resize_from_w or -1,
        "seed_resize_from_h": params.seed_resize_from_h or -1,
        "denoising_strength": params.denoising_strength if (img2img or params.enable_hr) else None,
        "extra_generation_params": extra,
        "index_of_first_image": 0,
        "infotexts": [r.infotext for r in results],
        "styles": [],
        "job_timestamp": job_timestamp,
        "clip_skip": params.clip_skip,
        "is_using_inpainting_conditioning": getattr(spec, "in_channels", 4) == 9,
        "version": VERSION,
    }


def _embedding_shape(folder: Path, name: str) -> tuple[int, int] | None:
    from core.embeddings import SUFFIXES, read_embedding_vectors

    for path in _files(folder, SUFFIXES):
        if path.stem == name:
            try:
                vectors = read_embedding_vectors(path)
            except EngineError:
                return None
            return int(vectors.shape[0]), int(vectors.shape[-1])
    return None


def _ram_stats() -> dict:
    try:
        import psutil

        process = psutil.Process(os.getpid())
        memory = psutil.virtual_memory()
        return {"free": memory.available, "used": process.memory_info().rss, "total": memory.total}
    except Exception as exc:  # noqa: BLE001 - psutil may be missing or refuse
        return {"error": f"{type(exc).__name__}: {exc}"}


def _cuda_stats() -> dict:
    try:
        import torch

        if not torch.cuda.is_available():
            return {"error": "unavailable"}
        free, total = torch.cuda.mem_get_info()
        stats = torch.cuda.memory_stats()

        def pair(key: str) -> dict:
            return {"current": stats.get(f"{key}.all.current", 0), "peak": stats.get(f"{key}.all.peak", 0)}

        return {
            "system": {"free": free, "used": total - free, "total": total},
            "active": pair("active_bytes"),
            "allocated": pair("allocated_bytes"),
            "reserved": pair("reserved_bytes"),
            "inactive": pair("inactive_split_bytes"),
            "events": {"retries": stats.get("num_alloc_retries", 0), "oom": stats.get("num_ooms", 0)},
        }
    except Exception as exc:  # noqa: BLE001
        return {"error": f"{type(exc).__name__}: {exc}"}


_SECRET_FLAGS = ("api_auth",)


def _public_flags(flags: dict) -> dict:
    """Command-line flags as JSON; passwords are never sent back."""
    out = {}
    for key, value in flags.items():
        if key in _SECRET_FLAGS and value:
            value = "<hidden>"
        elif isinstance(value, Path):
            value = str(value)
        elif not isinstance(value, (str, int, float, bool, type(None), list, dict)):
            value = str(value)
        out[key] = value
    return out
