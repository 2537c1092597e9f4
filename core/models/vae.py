"""The KL-regularised autoencoder of latent diffusion (``first_stage_model.*`` in a checkpoint).

Module names mirror the checkpoint keys (``encoder.down.0.block.1.conv2``,
``decoder.mid.attn_1.q``...). The downsampling factor is 2 ** (levels - 1): SD uses
f=8 (four levels), the paper's LDM-4 and the x4 upscaler f=4 (three levels).

SD3 and FLUX.1 use the same network with a 16-channel latent and without the 1x1
``quant_conv`` / ``post_quant_conv`` around it (``use_quant_conv=False``): the encoder's last
convolution gives the mean and log-variance directly, and the decoder takes the latent as is.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from core.devices import available_memory
from core.models.normalization import GroupNorm32


@dataclass(frozen=True)
class VAEConfig:
    """The autoencoder's shape under ldm's ``ddconfig`` names: level i is ``ch * ch_mult[i]``
    channels wide with ``num_res_blocks`` resnets; the encoder ends in ``2 * z_channels``
    channels, which quant_conv maps to the mean and log-variance of an ``embed_dim``-channel
    latent (without quant convs, SD3/FLUX, ``embed_dim`` equals ``z_channels``). Then how
    sampling scales that latent, and the GroupNorm groups."""

    in_channels: int = 3
    out_channels: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 4
    embed_dim: int = 4
    scaling_factor: float = 0.18215
    shift_factor: float = 0.0  # sampling latent = (VAE latent - shift) * scale; the family's (0 for SD)
    norm_groups: int = 32  # GroupNorm groups; see UNetConfig.norm_groups
    use_quant_conv: bool = True  # SD 1.x/2.x/XL: True; SD3 and FLUX.1: False (no quant_conv, post_quant_conv)

    def __post_init__(self):
        if not self.use_quant_conv and self.embed_dim != self.z_channels:
            raise ValueError(f"without quant convs the latent has z_channels={self.z_channels} channels, not embed_dim={self.embed_dim}")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


def normalization(channels: int, groups: int = 32) -> nn.GroupNorm:
    return GroupNorm32(groups, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, groups: int = 32):
        super().__init__()
        self.norm1 = normalization(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = normalization(out_channels, groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels (only in the middle, at the lowest resolution)."""

    def __init__(self, channels: int, groups: int = 32):
        super().__init__()
        self.norm = normalization(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        y = self.norm(x)
        # Contiguous (pixels, channels) rows: SDPA's fused kernels (flash and memory-efficient, on
        # the CPU as on GPUs) need the last dimension dense; a transposed view falls back to the
        # math kernel, which builds the whole score matrix (1.5x slower at a 64x64 latent on the CPU).
        q, k, v = (t.reshape(b, 1, c, h * w).transpose(2, 3).contiguous() for t in (self.q(y), self.k(y), self.v(y)))
        out = chunked_attention(q, k, v)
        return x + self.proj_out(out.transpose(2, 3).reshape(b, c, h, w))


# Bytes per element of the (queries x keys) score matrix at the peak of one attention call:
# the scores and their softmax are both alive (measured about 2.2x on the CPU); 3 leaves room.
ATTENTION_COPIES = 3


def attention_query_chunk(q: torch.Tensor, k: torch.Tensor, budget: int) -> int:
    """How many queries one attention call may take so that its score matrices fit ``budget`` bytes."""
    batch_heads = q.shape[0] * q.shape[1]
    per_query = batch_heads * k.shape[-2] * q.element_size() * ATTENTION_COPIES
    return max(1, min(q.shape[-2], budget // per_query))


def chunked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, budget: int | None = None,
                      budget_fraction: float = 0.25) -> torch.Tensor:
    """softmax(q kT / sqrt(d)) v, computed a block of queries at a time when the whole score
    matrix would not fit ``budget`` bytes (default: ``budget_fraction`` of the free memory).

    The VAE attends over every latent pixel: a 2048x2048 picture has 65536 of them, a score
    matrix of 16 GiB in float32, which the CPU (and torch's math fallback on GPUs) builds in
    full. Each query's softmax involves only its own row, so query blocks give the same result."""
    queries = q.shape[-2]
    if budget is None:
        budget = int(available_memory(q.device) * budget_fraction)
    chunk = attention_query_chunk(q, k, budget)
    if chunk >= queries:
        return F.scaled_dot_product_attention(q, k, v)
    out = torch.empty(*q.shape[:-1], v.shape[-1], dtype=q.dtype, device=q.device)
    for start in range(0, queries, chunk):
        out[..., start:start + chunk, :] = F.scaled_dot_product_attention(q[..., start:start + chunk, :], k, v)
    return out


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x):
        # Asymmetric padding (right and bottom only), as the checkpoints were trained.
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class MidBlock(nn.Module):
    def __init__(self, channels: int, groups: int = 32):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, groups)
        self.attn_1 = AttnBlock(channels, groups)
        self.block_2 = ResnetBlock(channels, channels, groups)

    def forward(self, x):
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    def __init__(self, c: VAEConfig):
        super().__init__()
        self.conv_in = nn.Conv2d(c.in_channels, c.ch, 3, padding=1)
        self.down = nn.ModuleList()
        block_in = c.ch
        for level, mult in enumerate(c.ch_mult):
            stage = nn.Module()
            stage.block = nn.ModuleList()
            for _ in range(c.num_res_blocks):
                stage.block.append(ResnetBlock(block_in, c.ch * mult, c.norm_groups))
                block_in = c.ch * mult
            if level != len(c.ch_mult) - 1:
                stage.downsample = Downsample(block_in)
            self.down.append(stage)
        self.mid = MidBlock(block_in, c.norm_groups)
        self.norm_out = normalization(block_in, c.norm_groups)
        self.conv_out = nn.Conv2d(block_in, 2 * c.z_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for stage in self.down:
            for block in stage.block:
                h = block(h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, c: VAEConfig):
        super().__init__()
        block_in = c.ch * c.ch_mult[-1]
        self.conv_in = nn.Conv2d(c.z_channels, block_in, 3, padding=1)
        self.mid = MidBlock(block_in, c.norm_groups)
        # Built from the lowest resolution up, but stored by level index like the encoder.
        stages = []
        for level in reversed(range(len(c.ch_mult))):
            stage = nn.Module()
            stage.block = nn.ModuleList()
            for _ in range(c.num_res_blocks + 1):
                stage.block.append(ResnetBlock(block_in, c.ch * c.ch_mult[level], c.norm_groups))
                block_in = c.ch * c.ch_mult[level]
            if level != 0:
                stage.upsample = Upsample(block_in)
            stages.insert(0, stage)
        self.up = nn.ModuleList(stages)
        self.norm_out = normalization(block_in, c.norm_groups)
        self.conv_out = nn.Conv2d(block_in, c.out_channels, 3, padding=1)

    def forward(self, z):
        h = self.mid(self.conv_in(z))
        for stage in reversed(self.up):
            for block in stage.block:
                h = block(h)
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class AutoencoderKL(nn.Module):
    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        if config.use_quant_conv:
            self.quant_conv = nn.Conv2d(2 * config.z_channels, 2 * config.embed_dim, 1)
            self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1)

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.encoder.conv_in.weight.device

    def encode_moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images in [-1, 1] -> (mean, logvar) of the posterior, unscaled."""
        moments = self.encoder(images.to(self.dtype))
        if self.config.use_quant_conv:
            moments = self.quant_conv(moments)
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """images in [-1, 1] -> scaled latents. Deterministic (the posterior mean) unless a
        generator is given, in which case the posterior is sampled with noise drawn on the CPU."""
        mean, logvar = self.encode_moments(images)
        if generator is not None:
            noise = torch.randn(mean.shape, generator=generator, dtype=torch.float32).to(mean.device, mean.dtype)
            mean = mean + torch.exp(0.5 * logvar) * noise
        return (mean - self.config.shift_factor) * self.config.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """scaled latents -> images in [-1, 1] (not clamped)."""
        z = latents.to(self.dtype) / self.config.scaling_factor + self.config.shift_factor
        return self.decoder(self.post_quant_conv(z) if self.config.use_quant_conv else z)
