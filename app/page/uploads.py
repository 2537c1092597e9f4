"""The pictures of an img2img or inpaint job, from what the page's image fields hold: an
upload, the inpaint editor's painted layers, an uploaded mask, or an outpainting canvas."""
from __future__ import annotations

from typing import Any

import gradio as gr
from PIL import Image, ImageChops, UnidentifiedImageError

from app.forms import INPAINT_SOURCES


def picture_input(**options: Any) -> gr.Image:
    """gr.Image(**options) that says "not a picture" when the uploaded file is none. Gradio opens
    an upload with Pillow before the event runs and reports a failure as "Could not preprocess
    input component at index N ..." with the server's temporary path; this names the field and
    the file as the person called it. (The instance's preprocess is wrapped: a gr.Image subclass
    would make Gradio write a .pyi file beside this module at import.)"""
    image = gr.Image(**options)
    read = image.preprocess

    def preprocess(payload: Any) -> Any:
        try:
            return read(payload)
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError):
            name = getattr(payload, "orig_name", None) or "the uploaded file"
            raise gr.Error(f"{image.label or 'Image'}: {name} is not a picture (PNG, JPEG or WebP expected)",
                           print_exception=False) from None

    image.preprocess = preprocess
    return image


def snap_to_8(width: int, height: int) -> tuple[int, int]:
    """A picture's size as a job size: the nearest multiples of 8, at least 64."""
    return max(64, round(width / 8) * 8), max(64, round(height / 8) * 8)


def size_from_image(value: Any) -> tuple[int, int]:
    """Width and height for the size fields from an image field (or the editor's value)."""
    if value is None:
        raise gr.Error("Upload an image first", print_exception=False)
    image = editor_image_and_mask(value)[0] if isinstance(value, dict) else value
    return snap_to_8(image.width, image.height)


def job_pictures(tab: str, form: dict[str, Any], params: Any) -> tuple[Any, Any, list[str]]:
    """(image, mask, notes) for an img2img/inpaint job; raises gr.Error when missing. An
    outpainting job's working size is set on ``params``."""
    if tab == "img2img":
        image = form.get("init_image")
        if image is None:
            raise gr.Error("img2img: upload an input image first", print_exception=False)
        return open_upload(image, "input image"), None, []
    if form.get("inpaint_source") == INPAINT_SOURCES[1]:
        image, mask = form.get("inpaint_image"), form.get("inpaint_mask")
        if image is None:
            raise gr.Error("Inpaint: upload an image first", print_exception=False)
        if mask is None:
            raise gr.Error("Inpaint: upload a mask (white = repaint) or paint one", print_exception=False)
        image, mask = open_upload(image, "image"), open_upload(mask, "mask")
    else:
        image, mask = editor_image_and_mask(form.get("editor"))
    directions = [d for d in (form.get("outpaint_directions") or []) if d]
    if directions:
        return _outpaint(image, mask, directions, int(float(form.get("outpaint_pixels") or 0)), params)
    if mask is None:
        raise gr.Error("Inpaint: paint over the part of the image to repaint, or upload a mask",
                       print_exception=False)
    return image, mask, []


def _outpaint(image: Image.Image, mask: Image.Image | None, directions: list[str], pixels: int,
              params: Any) -> tuple[Image.Image, Image.Image, list[str]]:
    """The canvas grown towards ``directions`` and its mask (plus what was painted, moved
    with the image); the job's size becomes the canvas's."""
    from core.pipelines.masking import outpaint_canvas

    left = -(-pixels // 8) * 8 if "left" in directions else 0
    up = -(-pixels // 8) * 8 if "up" in directions else 0
    canvas = outpaint_canvas(image.convert("RGB"), pixels, tuple(directions))
    grown = canvas.mask
    if mask is not None and mask.getbbox() is not None:
        painted = Image.new("L", grown.size, 0)
        painted.paste(mask.convert("L").resize(image.size), (left, up))
        grown = ImageChops.lighter(grown, painted)
    width, height = snap_to_8(canvas.image.width, canvas.image.height)
    params.width, params.height = width, height
    return canvas.image, grown, [f"outpainting {', '.join(directions)} by {pixels}px: working size {width}x{height}"]


def open_upload(value: Any, what: str) -> Image.Image:
    if isinstance(value, Image.Image):
        return value
    try:
        with Image.open(value) as image:
            image.load()
            return image.copy()
    except Exception as exc:
        raise gr.Error(f"{what}: not a readable image ({type(exc).__name__})", print_exception=False) from None


def editor_image_and_mask(value: Any) -> tuple[Image.Image, Image.Image | None]:
    """gr.ImageEditor's value -> (the image, an L mask: white where any layer was painted).
    The mask is None when nothing was painted."""
    if not isinstance(value, dict) or value.get("background") is None:
        raise gr.Error("Inpaint: upload an image to paint on first", print_exception=False)
    background = open_upload(value["background"], "image")
    mask = Image.new("L", background.size, 0)
    painted = False
    for layer in value.get("layers") or []:
        if layer is None:
            continue
        layer = open_upload(layer, "mask layer")
        if layer.mode != "RGBA":
            layer = layer.convert("RGBA")
        alpha = layer.getchannel("A")
        if alpha.size != background.size:
            alpha = alpha.resize(background.size, Image.NEAREST)
        if alpha.getbbox() is None:
            continue
        mask = ImageChops.lighter(mask, alpha.point(lambda v: 255 if v > 0 else 0))
        painted = True
    return background, (mask if painted else None)


def mask_source_groups(source: str) -> tuple[Any, Any]:
    """The inpaint tab's (painting group, upload group) updates: the one ``source`` names shows."""
    painting = source == INPAINT_SOURCES[0]
    return gr.Group(visible=painting), gr.Group(visible=not painting)
