"""Checkpoint files -> a ready ``LatentDiffusion``.

Three sources end in the same model: single-file ``.safetensors`` (memory-mapped, no extra
copy), ``.ckpt``/``.pt`` (only through ``torch.load(weights_only=True)``: a pickle that would
run code is refused), and diffusers folders (``model_index.json`` with unet/ vae/ text_encoder/).
The model is built on the meta device and the file's tensors are assigned into it, so peak
memory is about one copy of the weights.
"""
from __future__ import annotations

import json
import mmap
import os
import pickle
import struct
import zipfile
from pathlib import Path

import torch

from core.errors import EngineError
from core.models import diffusers_names
from core.models.detection import TEXT, UNET, VAE, ModelSpec, detect
from core.models.stable_diffusion import TEXT_INTERNAL, LatentDiffusion, linear_alphas_cumprod

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
# Keys a checkpoint may carry that the engine has no use for: training state, EMA shadows,
# the DDPM schedule (recomputed), CLIP's position_ids (always arange).
IGNORED_PREFIXES = ("model_ema.", "loss.", "first_stage_model.loss.", "lvlb_weights")
SCHEDULE_BUFFERS = {
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "logvar", "model.alphas_cumprod",
}


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors that view a private (copy-on-write) memory map of the file, and the metadata.

    Writing into a tensor (a merged LoRA, say) never touches the file on disk."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise EngineError(f"{path.name}: not a safetensors file (only {size} bytes)")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > min(size - 8, 100_000_000):
            raise EngineError(f"{path.name}: corrupt or truncated safetensors file (header of {header_len} bytes in a {size}-byte file)")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise EngineError(f"{path.name}: corrupt safetensors file (header is not valid JSON)") from None
        if not isinstance(header, dict):
            raise EngineError(f"{path.name}: corrupt safetensors file (header is not a table)")
        metadata = header.pop("__metadata__", None) or {}
        data_start = 8 + header_len
        data_size = size - data_start
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if size else None
    tensors = {}
    for key, info in header.items():
        try:
            dtype = SAFETENSORS_DTYPES[info["dtype"]]
            shape = [int(s) for s in info["shape"]]
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise EngineError(f"{path.name}: corrupt safetensors entry for {key!r}") from None
        count = 1
        for s in shape:
            count *= s
        itemsize = torch.empty((), dtype=dtype).element_size()
        if end > data_size or begin < 0 or end - begin != count * itemsize:
            raise EngineError(
                f"{path.name}: truncated or corrupt safetensors file ({key!r} needs bytes {begin}-{end}, "
                f"the file holds {data_size})"
            )
        offset = data_start + begin
        if count == 0:
            tensors[key] = torch.empty(shape, dtype=dtype)
        elif offset % itemsize:
            # Misaligned data cannot be viewed in place; copy this one tensor.
            tensors[key] = torch.frombuffer(bytearray(mapped[offset:offset + end - begin]), dtype=dtype).reshape(shape)
        else:
            tensors[key] = torch.frombuffer(mapped, dtype=dtype, count=count, offset=offset).reshape(shape)
    return tensors, {str(k): str(v) for k, v in metadata.items()}


def read_pickle_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """``.ckpt``/``.pt``/``.bin`` through torch's restricted unpickler only (never arbitrary code)."""
    try:
        mmap_ok = zipfile.is_zipfile(path)
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap_ok)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "unsupported content"
        raise EngineError(f"{path.name}: refused to load: the file holds objects other than tensors ({first})") from None
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError) as e:
        raise EngineError(f"{path.name}: cannot read checkpoint ({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})") from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise EngineError(f"{path.name}: not a checkpoint (holds a {type(data).__name__}, not a table of tensors)")
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}


def read_tensor_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    return read_pickle_checkpoint(path), {}


def _read_diffusers_part(folder: Path, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    for name in names:
        if (folder / name).is_file():
            return read_tensor_file(folder / name)[0]
    raise EngineError(f"{folder}: no weights file ({' or '.join(names)})")


def read_diffusers_folder(folder: Path) -> dict[str, torch.Tensor]:
    """A diffusers pipeline folder, renamed into the single-file layout."""
    weights = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
    out = {}
    unet = _read_diffusers_part(folder / "unet", weights)
    for key, value in unet.items():
        out[UNET + diffusers_names.unet_key(key, unet)] = value
    vae = _read_diffusers_part(folder / "vae", weights)
    for key, value in vae.items():
        new = diffusers_names.vae_key(key, vae)
        if diffusers_names.is_vae_linear_attention(new) and value.ndim == 2:
            value = value[:, :, None, None]
        out[VAE + new] = value
    text = _read_diffusers_part(folder / "text_encoder", ("model.safetensors", "pytorch_model.bin"))
    for key, value in text.items():
        key = key.removeprefix("text_model.")
        if not key.startswith("text_projection"):
            out[TEXT + key] = value
    return out


def normalise_keys(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fold the usual variants into one layout: drop training/EMA/schedule entries, add the
    ``text_model.`` level where old merges lack it."""
    out = {}
    bare_text = "cond_stage_model.transformer."
    for key, value in tensors.items():
        if key.startswith(IGNORED_PREFIXES) or key in SCHEDULE_BUFFERS or key.endswith("position_ids"):
            continue
        if key.startswith(bare_text) and not key.startswith(TEXT):
            key = TEXT + key[len(bare_text):]
        out[key] = value
    return out


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    path = Path(path)
    if not path.exists():
        raise EngineError(f"{path}: no such file or folder")
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise EngineError(f"{path}: a folder, but not a diffusers model (no model_index.json)")
        tensors, metadata = read_diffusers_folder(path), {}
        scheduler = path / "scheduler" / "scheduler_config.json"
        if scheduler.is_file():
            prediction = json.loads(scheduler.read_text()).get("prediction_type", "epsilon")
            metadata["prediction"] = "v" if prediction == "v_prediction" else "eps"
    elif path.suffix.lower() not in CHECKPOINT_SUFFIXES:
        raise EngineError(f"{path.name}: unsupported file type {path.suffix!r} (use {', '.join(CHECKPOINT_SUFFIXES)})")
    else:
        tensors, metadata = read_tensor_file(path)
    return normalise_keys(tensors), metadata


def _to_internal(key: str) -> str:
    return TEXT_INTERNAL + key[len(TEXT):] if key.startswith(TEXT) else key


def build_model(
    tensors: dict[str, torch.Tensor], spec: ModelSpec, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
    name: str = "checkpoint",
) -> LatentDiffusion:
    """Build on the meta device, then take the file's tensors in place (converted one by one)."""
    with torch.device("meta"):
        model = LatentDiffusion(spec)
    expected = model.state_dict()
    state = {}
    for key, value in tensors.items():
        internal = _to_internal(key)
        if internal not in expected:
            continue
        if tuple(value.shape) != tuple(expected[internal].shape):
            raise EngineError(f"{name}: {key} has shape {tuple(value.shape)}, expected {tuple(expected[internal].shape)}")
        state[internal] = value.to(device=device, dtype=dtype if value.is_floating_point() else value.dtype)
    missing = [k for k in expected if k not in state and not k.endswith("position_ids")]
    if missing:
        raise EngineError(f"{name}: incomplete checkpoint, {len(missing)} weights missing (first: {missing[0]})")
    model.load_state_dict(state, strict=False, assign=True)
    # Buffers that are not in the file (position ids, schedule) are rebuilt on the target device.
    model.cond_stage_model.transformer.embeddings.register_buffer(
        "position_ids", torch.arange(spec.text.max_positions, device=device)[None], persistent=False
    )
    model.register_buffer("alphas_cumprod", linear_alphas_cumprod(spec).to(device), persistent=False)
    still_meta = [n for n, b in model.named_buffers() if b.is_meta]
    if still_meta:
        raise RuntimeError(f"buffers left on the meta device: {still_meta}")
    return model.eval().requires_grad_(False)


def load_model(path: str | os.PathLike, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> LatentDiffusion:
    path = Path(path)
    tensors, metadata = read_checkpoint(path)
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    try:
        spec = detect(shapes, metadata)
    except EngineError as e:
        raise EngineError(f"{path.name}: {e}") from None
    return build_model(tensors, spec, device=device, dtype=dtype, name=path.name)
