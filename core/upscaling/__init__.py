"""Super-resolution upscalers, A1111 style.

* built-in resamplers ``None``, ``Lanczos``, ``Nearest``, ``Bicubic`` (``resamplers.py``);
* model files in ``models/ESRGAN``, ``models/RealESRGAN``, ``models/SwinIR``, ``models/DAT``,
  ``models/HAT``, ``models/ScuNET`` (and ``models/BSRGAN``), ``.pth``/``.pt``/``.safetensors``,
  read safely and built by spandrel (``spandrel_models.py``), run in blended tiles
  (``tiling.py``) as many times as the factor needs, then resized exactly with Lanczos
  (``passes.py``).

API::

    list_upscalers(models_root) -> [UpscalerInfo(name, path | None, kind)]
    find_upscaler(name, models_root) -> UpscalerInfo
    load_upscaler(info, device, dtype, cache=None) -> Upscaler     (last model cached)
    upscale_image(image, upscaler_name, scale=None, size=None, models_root=..., device="cpu",
                  tile=256, overlap=32) -> PIL.Image

* the Stable Diffusion x4 upscaler: x4 checkpoints found in ``models/Stable-diffusion`` and
  ``models/LDSR`` (``x4.py``), run through the latent diffusion pipeline in overlapping tiles.

A kind of upscaler is an object with ``name``, ``list``, ``claims`` and ``load`` (see
``registry.UpscalerKind``) passed to :func:`register_kind`. spandrel itself is imported only
when a model is loaded.
"""
from core.upscaling.registry import (
    DEFAULT_CACHE,
    DEFAULT_MODELS_ROOT,
    ModelCache,
    Upscaler,
    UpscalerInfo,
    UpscalerKind,
    find_upscaler,
    get_kind,
    kinds,
    list_upscalers,
    load_upscaler,
    register_kind,
)
from core.upscaling.resamplers import ResamplerKind
from core.upscaling.spandrel_models import SpandrelKind
from core.upscaling.x4 import X4Kind, X4Settings
from core.upscaling.upscale import (
    DEFAULT_OVERLAP,
    DEFAULT_TILE,
    open_image,
    postprocess_infotext,
    target_size,
    upscale_image,
)

register_kind(ResamplerKind())
# Before spandrel: for a file given by path, the x4 kind claims only real x4 checkpoints (it looks
# inside), spandrel any .safetensors.
register_kind(X4Kind())
register_kind(SpandrelKind())

__all__ = [
    "DEFAULT_CACHE", "DEFAULT_MODELS_ROOT", "DEFAULT_OVERLAP", "DEFAULT_TILE", "ModelCache", "ResamplerKind",
    "SpandrelKind", "Upscaler", "UpscalerInfo", "UpscalerKind", "find_upscaler", "get_kind", "kinds",
    "list_upscalers", "load_upscaler", "open_image", "postprocess_infotext", "register_kind", "target_size",
    "upscale_image", "X4Kind", "X4Settings",
]
