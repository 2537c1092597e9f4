"""Routes of generation: /txt2img (with the hires fix) and /img2img (with inpainting). The request
becomes GenerationParams in ``translate``; the job runs on the device queue, tied to its
client's connection, with override_settings applied around it."""
from __future__ import annotations

import json
import logging
import threading
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from app.api.errors import ApiError, engine_error, error_responses
from app.api.extras import find_upscaler
from app.api.group import RouteGroup
from app.api.images import decode_image, encode_png
from app.api.scripts import plan_script, script_context
from app.api.schemas import (GenerationRequest, ImageToImageResponse, StableDiffusionProcessingImg2Img,
                             StableDiffusionProcessingTxt2Img, TextToImageResponse, value_or_default)
from app.api.translate import (MODEL_OVERRIDES, JobModel, RequestContext, apply_native_size, generation_params,
                               processed_info)
from core.errors import EngineError
from core.params import GenerationParams
from core.scripts import run_plan, save_batch_grid

if TYPE_CHECKING:
    from app.api.service import SdApi

log = logging.getLogger(__name__)


class GenerationRoutes(RouteGroup):
    """POST /txt2img and /img2img."""

    def __init__(self, api: SdApi):
        super().__init__(api)
        self.options_routes = api.options_routes  # override_settings are checked and saved as /options does

    def register(self, router: APIRouter) -> None:
        # The errors each route can answer are declared, so /openapi.json matches what is returned.
        job = error_responses(400, 404, 413, 422)
        router.add_api_route("/txt2img", self.txt2img, methods=["POST"], response_model=TextToImageResponse,
                             responses=job)
        router.add_api_route("/img2img", self.img2img, methods=["POST"], response_model=ImageToImageResponse,
                             responses=job)

    def context(self) -> RequestContext:
        """What translating a request needs of this server, now."""
        return RequestContext(
            settings=self.settings.values(),
            limits=self.limits,
            find_checkpoint=self.checkpoints.find,
            option_changes=lambda changes, where: self.options_routes.option_changes(changes, where,
                                                                                     keep_unknown=False),
            find_upscaler=lambda name, field: find_upscaler(name, field, self.models_root),
        )

    async def txt2img(self, req: StableDiffusionProcessingTxt2Img, request: Request) -> TextToImageResponse:
        """Text to image (with optional hires fix)."""
        params, restore, model = generation_params(req, img2img=False, context=self.context())
        planner = self.script_planner(req, img2img=False)
        planner(params)  # a bad script or argument is refused before the job waits for the device
        return await self._generate("txt2img", req, params, restore, model=model, client=request, planner=planner,
                                    grid_save=self.grid_save(req))

    async def img2img(self, req: StableDiffusionProcessingImg2Img, request: Request) -> ImageToImageResponse:
        """Image to image; with ``mask``, inpainting."""
        if not req.init_images:
            raise ApiError(422, "init_images: give one base64 picture")
        if len(req.init_images) > 1:
            raise ApiError(422, f"init_images: one picture per request is supported, got {len(req.init_images)}")
        params, restore, model = generation_params(req, img2img=True, context=self.context())
        planner = self.script_planner(req, img2img=True)
        planner(params)
        image = await run_in_threadpool(decode_image, req.init_images[0], "init_images[0]", self.limits)
        mask = await run_in_threadpool(decode_image, req.mask, "mask", self.limits) if req.mask else None
        return await self._generate("img2img", req, params, restore, image, mask, model=model, client=request,
                                    planner=planner, grid_save=self.grid_save(req))

    def grid_save(self, req: GenerationRequest) -> bool:
        """Whether the job's grids are saved: the grid_save setting (or the request's override),
        unless the request says do_not_save_grid."""
        changes = self.options_routes.option_changes(req.override_settings or {}, "override_settings.",
                                                     keep_unknown=False)
        return bool(changes.get("grid_save", self.settings.get("grid_save"))) and not req.do_not_save_grid

    def script_planner(self, req: GenerationRequest, img2img: bool):
        """params -> the request's script plan (None without a script), checked; called again
        once a job's native size is known."""
        context = script_context(self.models_root, self.checkpoints.find)
        return lambda params: plan_script(req.script_name, req.script_args, params, img2img, context, self.limits)

    def _native_size(self, params: GenerationParams, names: tuple[str, ...]) -> None:
        """Set ``names`` (width, height) of ``params`` to the job's checkpoint's native size
        (loading it, as the job would), checked against this server's limits."""
        with self.engine.exclusive():
            loaded = self.engine.job_model(params.checkpoint)
        apply_native_size(params, names, loaded.model.spec.default_size, self.limits)

    def _run_job(self, kind: str, params: GenerationParams, restore: dict, image, mask, model: JobModel,
                 save: bool, gone: threading.Event, planner=None, grid_save: bool = True):
        """The job the device queue runs: override_settings' model overrides set around it; a
        client that left (``gone``) stops it at its next step."""
        engine, state = self.engine, self.state

        def on_progress(p) -> None:
            if gone.is_set():  # called from this job's own steps: the interrupt cannot hit another job
                engine.interrupt()
                state.flag("interrupted")
            latent = (p.latent, p.latent_format) if self.settings.get("live_previews_enable") and p.latent is not None else None
            state.step(p.step, p.steps, p.batch, p.batches, latent)

        kept = (engine.prediction, engine.zero_terminal_snr)
        if model.overrides is not None:  # override_settings for this request
            engine.prediction, engine.zero_terminal_snr = model.overrides
        if model.vae is not None:  # sd_vae: the saved one, or this request's override (the job applies it)
            engine.vae = model.vae
        try:
            if model.native_size:
                self._native_size(params, model.native_size)
            plan = planner(params) if planner is not None else None
            grids = 0  # how many of the results are a script's grids (they come first)
            if plan is not None:
                outcome = run_plan(engine, plan, kind, image, mask, on_progress, save=save, save_grids=grid_save)
                results, grids = outcome.images, len(outcome.grids)
            elif kind == "txt2img":
                results = engine.txt2img(params, progress=on_progress, save=save)
            else:
                results = engine.img2img(params, image, mask, progress=on_progress, save=save)
            if plan is None and save and grid_save:
                save_batch_grid(results, engine.output_dir, kind)
        except EngineError as exc:
            raise engine_error(exc) from None
        finally:
            if model.overrides is not None and not MODEL_OVERRIDES & set(restore):
                engine.prediction, engine.zero_terminal_snr = kept
            engine.vae = restore.get("sd_vae", self.settings.get("sd_vae"))  # the saved choice again
        return results, engine.loaded, state.job_timestamp, grids

    async def _generate(self, kind: str, req: GenerationRequest, params: GenerationParams, restore: dict,
                        image=None, mask=None, model: JobModel | None = None, client: Request | None = None,
                        planner=None, grid_save: bool = True):
        save = bool(value_or_default(req, "save_images"))
        model = model or JobModel()
        gone = threading.Event()  # set when the client disconnects
        results, loaded, timestamp, grids = await self.queue.run(
            kind, lambda: self._run_job(kind, params, restore, image, mask, model, save, gone, planner,
                                        grid_save),
            params.batch_count, params.steps, client=client, gone=gone)
        if restore:
            await run_in_threadpool(self.options_routes.save_settings, restore)
        pnginfo = self.settings.get("enable_pnginfo")
        unsaved = [index for index, r in enumerate(results) if r.save_error]
        # a picture the folder could not take exists only in this answer: sent whatever send_images says
        send = value_or_default(req, "send_images") or bool(unsaved)

        def encode_all():
            return [encode_png(r.image, r.infotext if pnginfo else None) for r in results] if send else []

        images = await run_in_threadpool(encode_all)
        info = processed_info(params, results, loaded, timestamp, img2img=kind == "img2img")
        info["index_of_first_image"] = grids
        if unsaved:
            info.update(unsaved_images_note(results, unsaved))
        parameters = req.model_dump()
        if kind == "img2img" and not req.include_init_images:
            parameters["init_images"] = None
            parameters["mask"] = None
        response = TextToImageResponse if kind == "txt2img" else ImageToImageResponse
        return response(images=images, parameters=parameters, info=json.dumps(info, ensure_ascii=False))


def unsaved_images_note(results: list, unsaved: list[int]) -> dict:
    """What ``info`` says when the output folder could not take some images (full, read-only):
    the answer is still 200 with every image, as 507 Insufficient Storage is about the folder,
    not the job. ``warnings``: for people; ``save_error``: for programs."""
    message = (f"{len(unsaved)} of {len(results)} image(s) {results[unsaved[0]].save_error}; "
               "they are only in this response")
    log.warning(message)
    return {"warnings": [message],
            "save_error": {"status": 507, "reason": "Insufficient Storage", "message": message, "images": unsaved}}
