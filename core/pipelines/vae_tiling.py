"""Encoding and decoding large pictures through the VAE in overlapping tiles.

The decoder's activations at full resolution dominate memory (128 channels per pixel for SD's
VAE, several live at once), so a 4096x4096 decode needs tens of GB in one piece. Tiles are
decoded one at a time and blended with linear ramps across their overlap.

A tile alone would normalise with its own group-norm statistics and come out brighter or
darker than its neighbours. So a first pass runs the whole input at a reduced size and records
every group norm's statistics; the tiles are then normalised with those shared statistics
(the convolutional network sees the same content at both scales). What remains is the
middle attention seeing one tile instead of the whole: the result differs slightly from an
untiled decode (measured in the tests). Tiles are used only when the whole would not fit,
unless asked for.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from core.devices import available_memory
from core.models.vae import AutoencoderKL

# Bytes per output pixel of an untiled decode, per image: the decoder holds about six
# full-resolution 128-channel float maps at its peak (measured for SD's VAE in float32).
DECODE_BYTES_PER_PIXEL = 128 * 4 * 6


def needs_tiling(vae: AutoencoderKL, pixels: int, device: torch.device, budget_fraction: float = 0.5) -> bool:
    """Whether coding ``pixels`` picture pixels (all images of a batch) in one piece would take
    more than ``budget_fraction`` of the free memory."""
    scale = vae.config.ch / 128 * torch.empty((), dtype=vae.dtype).element_size() / 4
    return pixels * DECODE_BYTES_PER_PIXEL * scale > available_memory(device) * budget_fraction


def tile_size(vae: AutoencoderKL, device: torch.device, budget_fraction: float = 0.25) -> int:
    """The largest tile side (latent pixels, a multiple of 8, 32..256) whose decode fits a
    quarter of the free memory: fewer, larger tiles are faster and closer to untiled."""
    scale = vae.config.ch / 128 * torch.empty((), dtype=vae.dtype).element_size() / 4
    pixels = available_memory(device) * budget_fraction / (DECODE_BYTES_PER_PIXEL * scale)
    side = int(pixels**0.5) // vae.config.downsample_factor
    return max(32, min(256, side // 8 * 8))


def _ramp(length: int, overlap: int, at_start: bool, at_end: bool, device) -> torch.Tensor:
    """1 in the middle, rising/falling linearly across the overlap on sides that have a neighbour."""
    weight = torch.ones(length, device=device)
    if overlap > 0:
        ramp = (torch.arange(overlap, device=device, dtype=torch.float32) + 0.5) / overlap
        if not at_start:
            weight[:overlap] = ramp
        if not at_end:
            weight[-overlap:] = ramp.flip(0)
    return weight


def _starts(size: int, tile: int, stride: int) -> list[int]:
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return starts


@contextlib.contextmanager
def shared_group_norms(network: nn.Module, stats: dict, record: bool):
    """Record (record=True) or impose (False) per-group mean and variance of every GroupNorm."""

    def hook(module, inputs, output):
        x = inputs[0]
        b, c = x.shape[:2]
        groups = x.float().reshape(b, module.num_groups, -1)
        if record:
            stats[module] = (groups.mean(dim=-1), groups.var(dim=-1, unbiased=False))
            return output
        mean, var = stats[module]
        normed = (groups - mean[..., None]) / torch.sqrt(var[..., None] + module.eps)
        normed = normed.reshape(x.shape)
        if module.affine:
            normed = normed * module.weight.float()[None, :, None, None] + module.bias.float()[None, :, None, None]
        return normed.to(output.dtype)

    handles = [m.register_forward_hook(hook) for m in network.modules() if isinstance(m, nn.GroupNorm)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _tiled(function, x: torch.Tensor, tile: int, overlap: int, scale: float, out_channels: int, network: nn.Module | None = None, margin: int = 0) -> torch.Tensor:
    """Apply ``function`` (input tile -> output tile ``scale`` times larger) over overlapping tiles,
    normalising every tile with the statistics of a reduced whole (see the module docstring)."""
    b, _, h, w = x.shape
    stats: dict = {}
    if network is not None and (h > tile or w > tile):
        shrink = min(1.0, tile / max(h, w))
        small = F.interpolate(x, size=(max(1, round(h * shrink)), max(1, round(w * shrink))), mode="area")
        with shared_group_norms(network, stats, record=True):
            function(small)
    context = shared_group_norms(network, stats, record=False) if stats else contextlib.nullcontext()
    with context:
        return _blend_tiles(function, x, tile, overlap, scale, out_channels, margin)


def _blend_tiles(function, x: torch.Tensor, tile: int, overlap: int, scale: float, out_channels: int, margin: int) -> torch.Tensor:
    """Each tile is run with ``margin`` extra input pixels of context on every side (cropped off
    afterwards), so the convolutions near its edges see real neighbours instead of padding."""
    b, _, h, w = x.shape
    stride = max(1, tile - overlap)
    out_h, out_w = round(h * scale), round(w * scale)
    out = torch.zeros(b, out_channels, out_h, out_w, device=x.device)
    total = torch.zeros(1, 1, out_h, out_w, device=x.device)
    ys, xs = _starts(h, tile, stride), _starts(w, tile, stride)
    o = round(overlap * scale)
    for y in ys:
        for x0 in xs:
            th, tw = min(tile, h - y), min(tile, w - x0)
            y1, x1 = max(0, y - margin), max(0, x0 - margin)
            y2, x2 = min(h, y + th + margin), min(w, x0 + tw + margin)
            piece = function(x[:, :, y1:y2, x1:x2]).float()
            top, left = round((y - y1) * scale), round((x0 - x1) * scale)
            ph, pw = round(th * scale), round(tw * scale)
            piece = piece[:, :, top:top + ph, left:left + pw]
            oy, ox = round(y * scale), round(x0 * scale)
            wy = _ramp(ph, o, y == ys[0], y == ys[-1], x.device)
            wx = _ramp(pw, o, x0 == xs[0], x0 == xs[-1], x.device)
            weight = wy[:, None] * wx[None, :]
            out[:, :, oy:oy + ph, ox:ox + pw] += piece * weight
            total[:, :, oy:oy + ph, ox:ox + pw] += weight
    return out / total


@torch.no_grad()
def decode_tiled(vae: AutoencoderKL, latents: torch.Tensor, tile: int | None = None, overlap: int = 16, margin: int = 8) -> torch.Tensor:
    """Scaled latents -> images in [-1, 1]; ``tile`` (default: from free memory), ``overlap`` and
    ``margin`` in latent pixels."""
    tile = tile or tile_size(vae, latents.device)
    return _tiled(vae.decode, latents, tile, overlap, vae.config.downsample_factor, vae.config.out_channels, vae.decoder, margin)


@torch.no_grad()
def encode_tiled(vae: AutoencoderKL, images: torch.Tensor, tile: int | None = None, overlap: int = 64, margin: int = 32) -> torch.Tensor:
    """Images in [-1, 1] -> scaled latents (posterior means); sizes in pixels."""
    factor = vae.config.downsample_factor
    tile = tile or tile_size(vae, images.device) * factor
    tile, overlap, margin = (n // factor * factor for n in (tile, overlap, margin))
    return _tiled(vae.encode, images, tile, overlap, 1 / factor, vae.config.embed_dim, vae.encoder, margin)
