"""Upscaler model files read by spandrel: ESRGAN, Real-ESRGAN (and its compact net), SwinIR,
DAT, HAT, SCUNet and whatever else spandrel detects from the weights' names and shapes.

Files are read here, never by spandrel's own ``ModelLoader.load_from_file``: spandrel reads
``.pth`` with ``torch.load(pickle_module=<its own restricted unpickler>)``, which is not
``weights_only``. We read ``.pth``/``.pt`` with ``torch.load(weights_only=True)`` (torch's
allow-list unpickler: tensors and plain containers only, a pickle that would run code is
refused) and ``.safetensors`` with safetensors, then hand the state dict to spandrel's
``load_from_state_dict``, which only detects the architecture and builds the network.
"""
from __future__ import annotations

import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from core.devices import resolve_dtype
from core.errors import NOT_FOUND, EngineError
from core.modelfiles import is_safetensors, walk
from core.upscaling.passes import upscale_in_passes
from core.upscaling.registry import ProgressFn, UpscalerInfo, scan_folders
from core.upscaling.spandrel_import import import_spandrel
from core.upscaling.tiling import run_tiled

KIND = "spandrel"

# The A1111 folders that hold upscaler models (all read by spandrel here).
FOLDERS = ("ESRGAN", "RealESRGAN", "BSRGAN", "SwinIR", "DAT", "HAT", "ScuNET")
SUFFIXES = (".pth", ".pt", ".safetensors")
# The upscalers A1111 offers by name and downloads on first use, by the file they download
# (stem, lowercase) -> (A1111's name, scale). Such a file, put in its folder by hand, is listed
# under A1111's name, so a request, a setting or an infotext naming it finds it here too.
A1111_DOWNLOADS = {
    "realesr-general-x4v3": ("R-ESRGAN General 4xV3", 4),
    "realesr-general-wdn-x4v3": ("R-ESRGAN General WDN 4xV3", 4),
    "realesr-animevideov3": ("R-ESRGAN AnimeVideo", 4),
    "realesrgan_x4plus": ("R-ESRGAN 4x+", 4),
    "realesrgan_x4plus_anime_6b": ("R-ESRGAN 4x+ Anime6B", 4),
    "realesrgan_x2plus": ("R-ESRGAN 2x+", 2),
    "scunet_color_real_gan": ("ScuNET GAN", 1),
    "scunet_color_real_psnr": ("ScuNET PSNR", 1),
    "003_realsr_bsrgan_dfowmfc_s64w8_swinir-l_x4_gan": ("SwinIR 4x", 4),
    "dat_x2": ("DAT x2", 2),
    "dat_x3": ("DAT x3", 3),
    "dat_x4": ("DAT x4", 4),
}

# Of those, A1111's Real-ESRGAN models (its GET /realesrgan-models lists them).
A1111_REAL_ESRGAN = frozenset(list(A1111_DOWNLOADS)[:6])


def offered_name(path: Path) -> str:
    """The name a model file is listed under: A1111's for the files A1111 downloads, else its stem."""
    known = A1111_DOWNLOADS.get(path.stem.lower())
    return known[0] if known else path.stem


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    line = text.splitlines()[0].strip() if text else type(error).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def _unpickling_message(path: Path, error: pickle.UnpicklingError) -> str:
    """torch's weights-only unpickler says why it stopped after "WeightsUnpickler error:"."""
    message = str(error)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", message)
    if found:
        return (f"{path.name}: refused to load: the file holds objects other than tensors ({found.group(1)}); "
                "only plain weight files are read")
    _, _, reason = message.partition("WeightsUnpickler error:")
    reason = next((line.strip() for line in reason.splitlines() if line.strip()), "") or _first_line(error)
    return f"{path.name}: not a model file torch can read safely ({reason[:200]})"


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of an upscaler file, unwrapped (``params_ema``, ``state_dict``, ``module.``
    prefixes ...) the way spandrel expects. Never runs code from the file."""
    path = Path(path)
    if is_safetensors(path):
        from safetensors.torch import load_file

        from core.loading import read_safetensors_header

        read_safetensors_header(path)  # a malformed header is refused here, naming the file
        try:
            data = load_file(str(path), device="cpu")
        except Exception as e:  # SafetensorError, OSError, ...
            raise EngineError(f"not a readable .safetensors file ({_first_line(e)})", label=path.name) from None
    else:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise EngineError(_unpickling_message(path, e)) from None
        except Exception as e:  # RuntimeError (bad zip), EOFError, ValueError, OSError ...
            raise EngineError(f"not a model file torch can read ({_first_line(e)})", label=path.name) from None
    if not isinstance(data, dict):
        raise EngineError(f"not an upscaler model (the file holds a {type(data).__name__}, not weights)", label=path.name)
    spandrel = import_spandrel()
    data = spandrel.canonicalize_state_dict(data)
    tensors = {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise EngineError("not an upscaler model (no weights in the file)", label=path.name)
    return tensors


def describe(path: Path, state_dict: dict[str, torch.Tensor]):
    """spandrel's ImageModelDescriptor for the weights (built on the CPU), or a one-line error."""
    spandrel = import_spandrel()
    try:
        descriptor = spandrel.ModelLoader(device="cpu").load_from_state_dict(state_dict)
    except spandrel.UnsupportedModelError:
        raise EngineError("not an upscaler model spandrel understands (unknown architecture)", label=path.name) from None
    except EngineError:
        raise
    except Exception as e:  # a known key pattern with inconsistent shapes, ...
        raise EngineError(f"not an upscaler model spandrel can build ({type(e).__name__}: {_first_line(e)})", label=path.name) from None
    arch = descriptor.architecture.name
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise EngineError(f"a {arch} model for {descriptor.purpose}, not an upscaler", label=path.name)
    if descriptor.purpose == "FaceSR":
        raise EngineError(f"a {arch} face restoration model, not an upscaler", label=path.name)
    if descriptor.input_channels not in (1, 3) or descriptor.output_channels != descriptor.input_channels:
        raise EngineError(
            f"{path.name}: a {arch} model with {descriptor.input_channels} input and "
            f"{descriptor.output_channels} output channels; only RGB or grayscale models are supported"
        )
    return descriptor


def choose_dtype(descriptor, device: torch.device, requested: torch.dtype | None) -> torch.dtype:
    """The requested dtype if the model supports it; by default the device's auto precision
    (core.devices.resolve_dtype: bf16 on CPUs with native bf16, else fp32; fp16 on GPUs), a GPU
    falling back to bf16, then fp32, when the model does not run in fp16."""
    wanted = requested or resolve_dtype("auto", device)
    if wanted == torch.float16 and not descriptor.supports_half:
        wanted = torch.bfloat16 if device.type == "cuda" and requested is None else torch.float32
    if wanted == torch.bfloat16 and not descriptor.supports_bfloat16:
        wanted = torch.float32
    return wanted


def _out_of_memory_errors() -> tuple[type[BaseException], ...]:
    found = [getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None)]
    return tuple({e for e in found if e is not None})


@dataclass
class SpandrelUpscaler:
    info: UpscalerInfo
    descriptor: object
    device: torch.device
    dtype: torch.dtype
    scale: int = field(init=False)

    def __post_init__(self):
        self.scale = int(self.descriptor.scale)

    @property
    def architecture(self) -> str:
        return self.descriptor.architecture.name

    def effective_tile(self, tile: int) -> int:
        """``tile`` adjusted to the model: none for models that tile internally, at least the
        model's minimum size, a multiple of the size it needs (so tiles need no padding)."""
        spandrel = import_spandrel()
        if tile <= 0 or self.descriptor.tiling == spandrel.ModelTiling.INTERNAL:
            return 0
        req = self.descriptor.size_requirements
        tile = max(tile, req.minimum, 8)
        if tile % req.multiple_of:
            tile += req.multiple_of - tile % req.multiple_of
        return tile

    def upscale(self, image: Image.Image, size: tuple[int, int], *, tile: int, overlap: int,
                identity: bool = False, progress: ProgressFn | None = None) -> Image.Image:
        mode = "L" if self.descriptor.input_channels == 1 else "RGB"
        return upscale_in_passes(
            image, size, self.scale, identity, lambda img: self.one_pass(img, tile, overlap, progress), mode=mode
        )

    def one_pass(self, image: Image.Image, tile: int, overlap: int, progress: ProgressFn | None = None) -> Image.Image:
        """One application of the network (image in the model's mode), tiled."""
        array = np.asarray(image, dtype=np.uint8)
        pixels = torch.from_numpy(array.copy())
        pixels = pixels[None, None] if pixels.ndim == 2 else pixels.permute(2, 0, 1)[None]
        pixels = pixels.float().div_(255.0)
        out = self._run(pixels, self.effective_tile(tile), max(0, overlap), progress)
        if not torch.isfinite(out).all() and self.dtype != torch.float32:
            # half precision overflowed somewhere: this model runs in fp32 from now on
            self.descriptor.to(dtype=torch.float32)
            self.dtype = torch.float32
            out = self._run(pixels, self.effective_tile(tile), max(0, overlap), progress)
        out = out[0].clamp(0, 1).mul(255).round().to(torch.uint8)
        array = out[0].numpy() if out.shape[0] == 1 else out.permute(1, 2, 0).contiguous().numpy()
        return Image.fromarray(array)  # (H, W) uint8 -> "L", (H, W, 3) -> "RGB"

    def _run(self, pixels: torch.Tensor, tile: int, overlap: int, progress: ProgressFn | None) -> torch.Tensor:
        def network(piece: torch.Tensor) -> torch.Tensor:
            try:
                return self.descriptor(piece.to(self.device, self.dtype))
            except _out_of_memory_errors():
                raise
            except Exception as e:  # a file whose weights do not fit how spandrel runs the net
                raise EngineError(
                    f"upscaler {self.info.name} ({self.architecture}) failed on a "
                    f"{piece.shape[-1]}x{piece.shape[-2]} tile: {type(e).__name__}: {_first_line(e)}"
                ) from None

        while True:
            try:
                return run_tiled(network, pixels, self.scale, tile, overlap, progress)
            except _out_of_memory_errors():
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                current = tile or max(pixels.shape[-2:])
                smaller = self.effective_tile(current // 2)
                if current // 2 < 16 or smaller >= current:
                    raise EngineError(f"upscaler {self.info.name}: out of memory even with {current}px tiles") from None
                tile = smaller


class SpandrelKind:
    name = KIND
    folders = FOLDERS

    def list(self, models_root: Path) -> list[UpscalerInfo]:
        def candidates(base: Path):
            for directory, subdirs, files in walk(base):
                subdirs[:] = [d for d in subdirs if not d.startswith(".")]
                yield from (directory / name for name in files if not name.startswith(".") and (directory / name).is_file())

        return [UpscalerInfo(offered_name(path), path, KIND)
                for path in scan_folders(models_root, self.folders, candidates, self.claims)]

    def claims(self, path: Path) -> bool:
        return Path(path).suffix.lower() in SUFFIXES

    def load(self, info: UpscalerInfo, device: torch.device, dtype: torch.dtype | None) -> SpandrelUpscaler:
        if info.path is None or not Path(info.path).is_file():
            raise EngineError(f"model file {info.path} not found", kind=NOT_FOUND, label=f"upscaler {info.name}")
        state_dict = read_state_dict(info.path)
        descriptor = describe(info.path, state_dict)
        chosen = choose_dtype(descriptor, device, dtype)
        try:
            descriptor.to(device=device, dtype=chosen)
        except Exception:  # spandrel's UnsupportedDtypeError, or a device without that dtype
            chosen = torch.float32
            descriptor.to(device=device, dtype=chosen)
        descriptor.eval()
        return SpandrelUpscaler(info, descriptor, device, chosen)
