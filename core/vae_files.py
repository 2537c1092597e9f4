"""Standalone VAE files, as A1111's ``sd_vae`` setting uses them: the files in ``models/VAE``
(``.safetensors``, or ``.pt``/``.ckpt`` read with ``torch.load(weights_only=True)`` only), the
one "Automatic" picks for a checkpoint, reading one into the layout of the model's
``first_stage_model``, and swapping it into a loaded model and back.

A VAE file holds the ``first_stage_model.*`` tensors of a checkpoint without that prefix
(tests/reference/vae_standalone.json); files with the prefix (a whole checkpoint) and diffusers
``AutoencoderKL`` files (``sdxl_vae.safetensors`` as published) are read too. Training leftovers
(``model_ema.*``, ``loss.*``) are dropped, as A1111 drops them.

The swap replaces the VAE's tensors in place of the checkpoint's own, which are kept aside so
that "None" (or a checkpoint change) brings them back without reading the checkpoint again. A
file that does not fit the model (a key missing, a shape that differs) is refused by name before
anything is replaced.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from core.errors import INVALID, NOT_FOUND, EngineError
from core.loading import IGNORED_PREFIXES, read_tensor_file
from core.modelfiles import has_suffix, model_files, name_in_folder
from core.models import diffusers_names
from core.models.detection import VAE

AUTOMATIC = "Automatic"  # a VAE named like the checkpoint, else the checkpoint's own
NO_VAE = "None"  # the checkpoint's own VAE
VAE_CHOICES = (AUTOMATIC, NO_VAE)
VAE_SUFFIXES = (".safetensors", ".pt", ".ckpt")
_DIFFUSERS_MARK = "encoder.down_blocks."  # a key only diffusers' AutoencoderKL layout has


def list_vae_files(folder: str | os.PathLike) -> list[str]:
    """The VAE files under ``folder`` (links followed), as names relative to it, sorted."""
    folder = Path(folder)
    return sorted(path.relative_to(folder).as_posix() for path in model_files(folder, VAE_SUFFIXES))


def _bare_stem(path: Path) -> str:
    """``x.vae.safetensors`` -> ``x``; ``x.safetensors`` -> ``x``."""
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    return stem[: -len(".vae")] if stem.lower().endswith(".vae") else stem


def automatic_vae(checkpoint: Path, folder: str | os.PathLike) -> Path | None:
    """The VAE "Automatic" uses for ``checkpoint``: ``NAME.vae.safetensors`` (``.pt``, ``.ckpt``)
    beside it, else a file in ``folder`` named like it (``NAME.safetensors`` or
    ``NAME.vae.pt``); None when there is none (the checkpoint's own VAE is used)."""
    checkpoint = Path(checkpoint)
    stem = checkpoint.name if checkpoint.is_dir() else _bare_stem(checkpoint)
    for suffix in VAE_SUFFIXES:
        beside = checkpoint.with_name(f"{stem}.vae{suffix}")
        if beside.is_file():
            return beside
    for path in model_files(folder, VAE_SUFFIXES):
        if _bare_stem(path) == stem:
            return path
    return None


def resolve_vae_choice(choice: str, checkpoint: Path | None, folder: str | os.PathLike,
                       field: str = "sd_vae") -> Path | None:
    """The VAE file ``choice`` means for ``checkpoint``: None for the checkpoint's own. A file
    name is judged as written (inside ``folder``, no ``..``) and must be a listed VAE file."""
    if choice in (None, "", NO_VAE):
        return None
    if choice == AUTOMATIC:
        return automatic_vae(checkpoint, folder) if checkpoint is not None else None
    path = name_in_folder(folder, choice, field, "VAE folder")
    if not has_suffix(path, VAE_SUFFIXES):
        raise EngineError(f"{choice!r} is not a VAE file (use {', '.join(VAE_SUFFIXES)})", field, INVALID)
    if not path.is_file():
        listed = ", ".join(list_vae_files(folder)[:10]) or "none"
        raise EngineError(f"VAE {choice!r} not found in {folder} (there: {listed})", field, NOT_FOUND)
    return path


def read_vae_file(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of the VAE file ``path`` under ``first_stage_model``'s own names."""
    tensors, _ = read_tensor_file(Path(path))
    if any(key.startswith(VAE) for key in tensors):  # a whole checkpoint: its VAE part
        tensors = {key[len(VAE):]: value for key, value in tensors.items() if key.startswith(VAE)}
    tensors = {key: value for key, value in tensors.items() if not key.startswith(IGNORED_PREFIXES)}
    if any(key.startswith(_DIFFUSERS_MARK) for key in tensors):
        try:
            tensors = diffusers_names.vae_state(tensors)
        except KeyError as e:
            raise EngineError(f"not a VAE file (unknown weight {e.args[0]!r})", label=Path(path).name) from None
    return tensors


def fitted_vae_state(vae: torch.nn.Module, tensors: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """``tensors`` made ready to replace ``vae``'s: every weight it has, with its shape, on its
    device and in its dtype (GroupNorm weights stay float32 in a half-precision model). A file
    that lacks one or differs in shape is refused, naming the file."""
    expected = vae.state_dict()
    missing = [key for key in expected if key not in tensors]
    if missing:
        raise EngineError(f"not a VAE for this model: {len(missing)} of {len(expected)} weights missing "
                          f"(first: {missing[0]})", label=name)
    state = {}
    for key, current in expected.items():
        value = tensors[key]
        if tuple(value.shape) != tuple(current.shape):
            raise EngineError(f"not a VAE for this model: {key} has shape {tuple(value.shape)}, "
                              f"expected {tuple(current.shape)}", label=name)
        state[key] = value.to(device=current.device, dtype=current.dtype)
    return state


def swap_vae_state(vae: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Put ``state`` (from :func:`fitted_vae_state`, or one this returned) into ``vae``; -> the
    tensors it held before, to put back later."""
    before = {key: value.detach() for key, value in vae.state_dict().items()}
    vae.load_state_dict(state, strict=True, assign=True)
    return before
