"""The latent-diffusion UNet (Rombach et al. 2022), in one file.

Module names mirror the single-file checkpoint keys under ``model.diffusion_model.``
(``input_blocks.1.1.transformer_blocks.0.attn2.to_k``...), so a state dict loads with no
conversion table. One config dataclass covers SD 1.x, SD 2.x, SDXL and the x4 upscaler: what
differs between them is data (channel widths, transformer depth per level, head size, linear or
1x1-conv projections, an extra "label" embedding: SDXL's size/pooled-text vector through an MLP,
the upscaler's noise level through an embedding table; the upscaler's cross-attention-only
blocks), not code.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from core.models.convolution import Conv2d
from core.models.normalization import GroupNorm32


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    # Transformer blocks per SpatialTransformer at each level; 0 = no attention there.
    transformer_depth: tuple[int, ...] = (1, 1, 1, 0)
    transformer_depth_middle: int = 1
    context_dim: int = 768
    # SD 1.x fixes the head count; SD 2.x/SDXL fix the head width instead.
    num_heads: int | None = 8
    head_dim: int | None = None
    use_linear_projection: bool = False  # SD 2.x/SDXL: Linear proj_in/out instead of 1x1 conv
    adm_in_channels: int | None = None  # SDXL: size/crop (and pooled text) embedding input
    num_classes: int | None = None  # x4 upscaler: noise level -> nn.Embedding(num_classes, 4 * ch)
    # x4 upscaler: per level, attn1 attends to the context instead of itself (ldm's
    # disable_self_attentions); () = self-attention everywhere.
    disable_self_attn: tuple[bool, ...] = ()
    disable_middle_self_attn: bool = False
    # GroupNorm groups everywhere. Every released checkpoint uses 32; a narrow model (the demo's
    # 32-channel top level) needs fewer, or each channel is normalised alone and a flat
    # region's absolute value (its colour) cannot pass through.
    norm_groups: int = 32

    def heads_for(self, channels: int) -> tuple[int, int]:
        if self.head_dim is not None:
            return channels // self.head_dim, self.head_dim
        return self.num_heads, channels // self.num_heads


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding, cosine half first (the layout every SD checkpoint was trained with)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """channels_last for a 4-D map stored that way (and not also channels-first, as a 1x1 map
    or a single channel is), else contiguous_format."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def normalization(channels: int, eps: float = 1e-5, groups: int = 32) -> nn.GroupNorm:
    return GroupNorm32(groups, channels, eps=eps)


class ResBlock(nn.Module):
    def __init__(self, channels: int, emb_channels: int, out_channels: int, groups: int = 32):
        super().__init__()
        self.in_layers = nn.Sequential(normalization(channels, groups=groups), nn.SiLU(), Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            normalization(out_channels, groups=groups), nn.SiLU(), nn.Dropout(0.0), Conv2d(out_channels, out_channels, 3, padding=1)
        )
        self.skip_connection = nn.Identity() if out_channels == channels else Conv2d(channels, out_channels, 1)

    def forward(self, x, emb):
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        h = self.out_layers(h)
        return self.skip_connection(x) + h


class Attention(nn.Module):
    """Multi-head attention; self-attention when no context is given."""

    def __init__(self, query_dim: int, context_dim: int | None, heads: int, head_dim: int):
        super().__init__()
        inner = heads * head_dim
        context_dim = context_dim or query_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(0.0))

    def forward(self, x, context=None):
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        b, n, _ = q.shape
        q, k, v = (t.reshape(b, -1, self.heads, t.shape[-1] // self.heads).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x):
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim))

    def forward(self, x):
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, context_dim: int, heads: int, head_dim: int, disable_self_attn: bool = False):
        super().__init__()
        self.disable_self_attn = disable_self_attn
        self.attn1 = Attention(dim, context_dim if disable_self_attn else None, heads, head_dim)
        self.ff = FeedForward(dim)
        self.attn2 = Attention(dim, context_dim, heads, head_dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x, context):
        x = self.attn1(self.norm1(x), context if self.disable_self_attn else None) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    def __init__(
        self, channels: int, depth: int, context_dim: int, heads: int, head_dim: int, use_linear: bool,
        disable_self_attn: bool = False, groups: int = 32,
    ):
        super().__init__()
        self.use_linear = use_linear
        self.norm = normalization(channels, eps=1e-6, groups=groups)
        inner = heads * head_dim
        self.proj_in = nn.Linear(channels, inner) if use_linear else Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, context_dim, heads, head_dim, disable_self_attn) for _ in range(depth)
        )
        self.proj_out = nn.Linear(inner, channels) if use_linear else Conv2d(inner, channels, 1)

    def forward(self, x, context):
        b, c, h, w = x.shape
        x_in = x
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        x = x.permute(0, 2, 3, 1).reshape(b, h * w, -1)
        if self.use_linear:
            x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, context)
        if self.use_linear:
            x = self.proj_out(x)
        # Back in the input's memory format: a permuted (channels-last) map reaching the convs of
        # a channels-first network drags it into format conversions (a third slower on CPU);
        # in a channels-last network the permuted map already is the layout the convs want.
        x = x.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous(memory_format=memory_format_of(x_in))
        if not self.use_linear:
            x = self.proj_out(x)
        return x + x_in


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, padding=1)

    def forward(self, x, size=None):
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode="nearest")
        return self.conv(x)


class TimestepSequential(nn.Sequential):
    """A stage of the UNet: passes the time embedding to ResBlocks and the context to transformers."""

    def forward(self, x, emb, context, upsample_size=None):
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            elif isinstance(layer, Upsample):
                x = layer(x, upsample_size)
            else:
                x = layer(x)
        return x


class UNetModel(nn.Module):
    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        c = config
        ch = c.model_channels
        emb_dim = ch * 4
        self.time_embed = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if c.adm_in_channels is not None:
            self.label_emb = nn.Sequential(
                nn.Sequential(nn.Linear(c.adm_in_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
            )
        elif c.num_classes is not None:
            self.label_emb = nn.Embedding(c.num_classes, emb_dim)

        def transformer(channels: int, depth: int, level: int | None) -> SpatialTransformer:
            heads, head_dim = c.heads_for(channels)
            if level is None:
                no_self = c.disable_middle_self_attn
            else:
                no_self = bool(c.disable_self_attn) and c.disable_self_attn[level]
            return SpatialTransformer(channels, depth, c.context_dim, heads, head_dim, c.use_linear_projection, no_self, c.norm_groups)

        self.input_blocks = nn.ModuleList([TimestepSequential(Conv2d(c.in_channels, ch, 3, padding=1))])
        skip_channels = [ch]
        levels = len(c.channel_mult)
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.num_res_blocks):
                layers = [ResBlock(ch, emb_dim, mult * c.model_channels, c.norm_groups)]
                ch = mult * c.model_channels
                if c.transformer_depth[level]:
                    layers.append(transformer(ch, c.transformer_depth[level], level))
                self.input_blocks.append(TimestepSequential(*layers))
                skip_channels.append(ch)
            if level != levels - 1:
                self.input_blocks.append(TimestepSequential(Downsample(ch)))
                skip_channels.append(ch)

        middle = [ResBlock(ch, emb_dim, ch, c.norm_groups)]
        if c.transformer_depth_middle:
            middle.append(transformer(ch, c.transformer_depth_middle, None))
        middle.append(ResBlock(ch, emb_dim, ch, c.norm_groups))
        self.middle_block = TimestepSequential(*middle)

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            for i in range(c.num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), emb_dim, mult * c.model_channels, c.norm_groups)]
                ch = mult * c.model_channels
                if c.transformer_depth[level]:
                    layers.append(transformer(ch, c.transformer_depth[level], level))
                if level and i == c.num_res_blocks:
                    layers.append(Upsample(ch))
                self.output_blocks.append(TimestepSequential(*layers))

        self.out = nn.Sequential(normalization(ch, groups=c.norm_groups), nn.SiLU(), Conv2d(ch, c.out_channels, 3, padding=1))
        self.memory_format = torch.contiguous_format  # of the feature maps: see use_memory_format

    @property
    def dtype(self) -> torch.dtype:
        return self.out[2].weight.dtype

    def use_memory_format(self, memory_format: torch.memory_format) -> "UNetModel":
        """Run the feature maps in ``memory_format`` (channels_last: oneDNN's fast layout on a
        CPU). The weights keep the checkpoint's layout: on a CPU the convolutions read arranged
        copies of them (``core.models.convolution``), elsewhere the kernels adapt."""
        self.memory_format = memory_format
        return self

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor, y: torch.Tensor | None = None):
        """x: noisy latent (B, C, H, W); timesteps: (B,) possibly fractional; context: (B, T, D);
        y: SDXL's added conditioning vector (B, adm_in_channels), or the x4 upscaler's integer
        noise levels (B,)."""
        dtype = self.dtype
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels).to(dtype))
        if self.config.adm_in_channels is not None or self.config.num_classes is not None:
            if y is None:
                raise ValueError("this UNet needs the added conditioning y (SDXL vector or upscaler noise level)")
            if self.config.num_classes is not None:
                emb = emb + self.label_emb(y.to(emb.device).long())
            else:
                emb = emb + self.label_emb(y.to(dtype))
        h = x.to(dtype, memory_format=self.memory_format)
        context = context.to(dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb, context)
            skips.append(h)
        h = self.middle_block(h, emb, context)
        for block in self.output_blocks:
            skip = skips.pop()
            h = torch.cat([h, skip], dim=1)
            # Odd latent sizes: upsample to the size of the skip connection waiting one stage up.
            h = block(h, emb, context, upsample_size=skips[-1].shape[-2:] if skips else None)
        return self.out(h).to(x.dtype, memory_format=torch.contiguous_format)
