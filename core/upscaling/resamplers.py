"""The built-in upscalers: plain resampling with Pillow, under A1111's names."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from core.upscaling.registry import ProgressFn, UpscalerInfo

KIND = "resampler"

# A1111's "None" upscaler does nothing itself; its generic upscale step then resizes the image to
# the requested size with Lanczos, so at factor 1 the image comes back unchanged.
RESAMPLERS: dict[str, Image.Resampling] = {
    "None": Image.Resampling.LANCZOS,
    "Lanczos": Image.Resampling.LANCZOS,
    "Nearest": Image.Resampling.NEAREST,
    "Bicubic": Image.Resampling.BICUBIC,
}


@dataclass
class Resampler:
    info: UpscalerInfo
    method: Image.Resampling

    def upscale(self, image: Image.Image, size: tuple[int, int], *, tile: int = 0, overlap: int = 0,
                identity: bool = False, progress: ProgressFn | None = None) -> Image.Image:
        out = image if image.size == tuple(size) else image.resize(tuple(size), resample=self.method)
        if progress:
            progress(1, 1)
        return out


class ResamplerKind:
    name = KIND

    def list(self, models_root: Path) -> list[UpscalerInfo]:
        return [UpscalerInfo(name, None, KIND) for name in RESAMPLERS]

    def claims(self, path: Path) -> bool:
        return False

    def load(self, info: UpscalerInfo, device: torch.device, dtype: torch.dtype | None) -> Resampler:
        return Resampler(info, RESAMPLERS[info.name])
