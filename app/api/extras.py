"""Routes of A1111's Extras tab: /extra-single-image and /extra-batch-images upscale pictures
through core's one upscale job (``ExtrasJob``). Names and result sizes are checked before any
work; the pictures are upscaled on the device queue, stopping when the client leaves."""
from __future__ import annotations

import threading

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from PIL import Image

from app.api.errors import ApiError, engine_error, error_responses
from app.api.group import RouteGroup
from app.api.images import decode_image, encode_png, html_info
from app.api.jobs import ClientGone
from app.api.schemas import (ExtrasBaseRequest, ExtrasBatchImagesRequest, ExtrasBatchImagesResponse,
                             ExtrasSingleImageRequest, ExtrasSingleImageResponse)
from core.errors import EngineError


def find_upscaler(name: str, field: str, models_root):
    """The upscaler called ``name``; a client error naming ``field`` if there is none."""
    from core.upscaling import find_upscaler as find

    try:
        return find(name, models_root)
    except EngineError as exc:
        raise upscaler_error(exc, field) from None


def upscaler_error(exc: EngineError, field: str | None) -> ApiError:
    """A request naming an upscaler this server lacks holds a value it cannot use: 422 (not
    404, as for a missing route), the message naming the field and the upscalers it has."""
    error = engine_error(exc, 422, field)
    error.status = 422
    return error


class ExtrasRoutes(RouteGroup):
    """POST /extra-single-image and /extra-batch-images."""

    def register(self, router: APIRouter) -> None:
        job = error_responses(400, 404, 413, 422)
        router.add_api_route("/extra-single-image", self.extra_single_image, methods=["POST"],
                             response_model=ExtrasSingleImageResponse, responses=job)
        router.add_api_route("/extra-batch-images", self.extra_batch_images, methods=["POST"],
                             response_model=ExtrasBatchImagesResponse, responses=job)

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
            tile=self.settings.get("ESRGAN_tile"),
            overlap=self.settings.get("ESRGAN_tile_overlap"),
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
            raise upscaler_error(exc, {"upscaler": "upscaler_1"}.get(exc.field)) from None
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
        pnginfo = self.settings.get("enable_pnginfo")
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
