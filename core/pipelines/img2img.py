"""Image to image and inpainting (outpainting is inpainting on a grown canvas).

The picture is resized to the working size, encoded, noised to the level the denoising
strength asks for and sampled from there (core/pipelines/sampling_run.sample_latents). With a mask:
regular checkpoints get the known latent blended back outside the mask at every step;
inpainting checkpoints (9 input channels) get the mask and the masked picture's latent as
extra channels. The result is pasted back through the blurred mask, so that pixels outside it
are the input's, bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from core.conditioning import TextConditioner
from core.params import GenerationParams
from core.pipelines.common import decode_latents, encode_pixels, to_pil
from core.pipelines.masking import composite, fill_masked, flatten, masked_region, prepare_mask, resize_image
from core.pipelines.sampling_run import image_noise, sample_latents


@dataclass
class PreparedInput:
    """What one img2img/inpaint job needs, computed once for all its batches."""

    image: torch.Tensor  # the working picture in [-1, 1], (1, 3, H, W)
    init_latent: torch.Tensor  # (1, C, h, w)
    original: Image.Image  # the input at its own size, for pasting back
    paste_mask: Image.Image | None = None  # blurred, at the original's size (white = generated)
    crop_box: tuple[int, int, int, int] | None = None  # "only masked": where the work area came from
    latent_mask: torch.Tensor | None = None  # (1, 1, h, w), 1 = repaint
    work_mask: Image.Image | None = None  # the mask at the working size
    notes: list[str] = field(default_factory=list)
    empty_mask: bool = False


def to_tensor(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1
    return torch.from_numpy(array).permute(2, 0, 1)[None]


@torch.no_grad()
def encode(model, image: torch.Tensor, notes: list[str] | None = None) -> torch.Tensor:
    """Pixels in [-1, 1] -> latents (the posterior mean: deterministic for a given picture),
    tiled when large, redone in float32 when half precision overflows (see
    ``common.encode_pixels``; ``notes`` hears of it)."""
    return encode_pixels(model.vae, image.to(model.device), notes=notes)


@torch.no_grad()
def prepare_input(model, params: GenerationParams, image: Image.Image, mask: Image.Image | None = None) -> PreparedInput:
    image = flatten(image)
    notes: list[str] = []
    W, H = params.width, params.height
    paste_mask = crop_box = None
    if mask is not None:
        paste_mask = prepare_mask(mask, image.size, bool(params.inpainting_mask_invert), params.mask_blur, notes)
        if not params.inpaint_full_res:
            # The whole picture is the work area: as A1111, the picture and its (blurred) mask are
            # brought to width x height by the resize mode first, and the answer has that size.
            image = resize_image(image, W, H, params.resize_mode)
            paste_mask = resize_image(paste_mask, W, H, params.resize_mode)
        if paste_mask.getextrema()[1] == 0:
            notes.append("the mask is empty: nothing to inpaint, the input is returned unchanged")
            return PreparedInput(to_tensor(image), torch.empty(0), image, paste_mask, notes=notes, empty_mask=True)
        if params.inpaint_full_res:
            crop_box = masked_region(paste_mask, params.inpaint_full_res_padding, W, H)
            work_image = image.crop(crop_box).resize((W, H), Image.LANCZOS)
            work_mask = paste_mask.crop(crop_box).resize((W, H), Image.LANCZOS)
        else:
            work_image, work_mask = image, paste_mask
        if params.inpainting_fill == 0:
            work_image = fill_masked(work_image, work_mask)
    else:
        work_image = resize_image(image, W, H, params.resize_mode)
        work_mask = None

    factor = model.vae.config.downsample_factor
    if params.resize_mode == 3 and mask is None:
        # Latent upscale: encode at the picture's own size (rounded to the latent grid), then
        # resize the latent.
        w8, h8 = max(factor, image.width // factor * factor), max(factor, image.height // factor * factor)
        init_latent = encode(model, to_tensor(image.resize((w8, h8), Image.LANCZOS)), notes)
        init_latent = F.interpolate(init_latent, size=(H // factor, W // factor), mode="bilinear")
    else:
        init_latent = encode(model, to_tensor(work_image), notes)
    prepared = PreparedInput(to_tensor(work_image), init_latent, image, paste_mask, crop_box, notes=notes)
    if work_mask is not None:
        small = work_mask.resize((W // factor, H // factor), Image.LANCZOS)
        latent_mask = torch.from_numpy(np.around(np.asarray(small, dtype=np.float32) / 255))[None, None]
        prepared.latent_mask = latent_mask.to(init_latent.device)
        prepared.work_mask = work_mask
    return prepared


@torch.no_grad()
def inpainting_conditioning(model, prepared: PreparedInput, weight: float) -> torch.Tensor:
    """For 9-channel checkpoints: [mask, latent of the picture with the masked part greyed out].
    ``weight`` < 1 lets some of the original show through ("conditional mask weight")."""
    image = prepared.image.to(model.device)
    if prepared.work_mask is not None:
        mask = torch.from_numpy(np.asarray(prepared.work_mask, dtype=np.float32) / 255).round()[None, None].to(image.device)
    else:
        mask = torch.ones_like(image[:, :1])
    masked = torch.lerp(image, image * (1 - mask), weight)
    latent = encode(model, masked, prepared.notes)
    small_mask = F.interpolate(mask, size=latent.shape[-2:])
    return torch.cat([small_mask, latent], dim=1)


@torch.no_grad()
def img2img_latents(
    model, conditioner: TextConditioner, params: GenerationParams, prepared: PreparedInput, seeds: list[int],
    callback=None, subseeds=None, refiner=None,
) -> torch.Tensor:
    """``refiner`` (pipelines.sampling_run.Refiner): a second checkpoint takes the late steps, with
    the same latent blending; an inpainting checkpoint's extra channels stay with the first."""
    n = len(seeds)
    init_latent = prepared.init_latent.expand(n, -1, -1, -1)
    if params.denoising_strength == 0:
        return init_latent  # nothing to denoise: the input through the autoencoder only
    keep_mask = None
    image_conditioning = None
    is_inpainting_model = model.takes_image_conditioning
    if prepared.latent_mask is not None:
        repaint = prepared.latent_mask.to(init_latent)
        keep_mask = (1 - repaint).expand(n, -1, -1, -1)
        if params.inpainting_fill in (2, 3):
            replacement = torch.zeros_like(init_latent)
            if params.inpainting_fill == 2:
                replacement = image_noise(model, params, seeds, subseeds).first().to(init_latent)
            init_latent = init_latent * keep_mask + replacement * repaint
        if is_inpainting_model:
            keep_mask = None  # the checkpoint sees the mask itself; no blending during sampling
    if is_inpainting_model:
        image_conditioning = inpainting_conditioning(model, prepared, params.inpainting_mask_weight).expand(n, -1, -1, -1)
    return sample_latents(
        model, conditioner, params, seeds, callback, subseeds, init_latent=init_latent,
        denoising_strength=params.denoising_strength, keep_mask=keep_mask, image_conditioning=image_conditioning,
        refiner=refiner,
    )


def finish(images: list[Image.Image], prepared: PreparedInput) -> list[Image.Image]:
    """Paste results back: into the crop box for "only masked", through the blurred mask for
    any inpainting."""
    if prepared.paste_mask is None:
        return images
    out = []
    for image in images:
        if prepared.crop_box is not None:
            x1, y1, x2, y2 = prepared.crop_box
            canvas = prepared.original.copy()
            canvas.paste(image.resize((x2 - x1, y2 - y1), Image.LANCZOS), (x1, y1))
            image = canvas
        out.append(composite(image, prepared.original, prepared.paste_mask))
    return out


def img2img(model, conditioner, params, prepared: PreparedInput, seeds, callback=None, subseeds=None,
            refiner=None) -> list[Image.Image]:
    if prepared.empty_mask:
        return [prepared.original.copy() for _ in seeds]
    latents = img2img_latents(model, conditioner, params, prepared, seeds, callback, subseeds, refiner)
    vae = refiner.model.vae if refiner is not None and refiner.used else model.vae
    return finish(to_pil(decode_latents(vae, latents)), prepared)
