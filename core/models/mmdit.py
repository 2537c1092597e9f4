"""The MMDiT of Stable Diffusion 3 / 3.5 (Esser et al. 2024), in one file.

Module names mirror the single-file checkpoint keys under ``model.diffusion_model.``
(``joint_blocks.3.x_block.attn.qkv.weight``...), so a state dict loads with no conversion
table. One config covers SD3 medium, SD 3.5 medium and SD 3.5 large; what differs between them
is data (depth and width, the stored position table's size, RMS q/k norms in 3.5, 3.5 medium's
second self-attention over the picture tokens in its first blocks), read from a state dict's
shapes by ``detect_mmdit``.

Each joint block holds two streams of the same width, the picture's patches (``x_block``) and
the text tokens (``context_block``), each with its own weights, attending together in one
attention over both sequences. Every block is modulated (adaLN) by the time step plus the
pooled text vector.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from core.models.unet import timestep_embedding

# The layer norms inside the blocks and before the last layer carry no weights of their own:
# their scale and shift come from the modulation.
NORM_EPS = 1e-6


@dataclass(frozen=True)
class MMDiTConfig:
    depth: int = 24
    hidden_size: int = 1536
    num_heads: int = 24
    # Heads are 64 wide in every released model, so their number equals the depth.
    patch_size: int = 2
    in_channels: int = 16
    out_channels: int = 16
    # The stored position table covers a pos_embed_max_size^2 patch grid; a picture takes the
    # centre crop of its own grid size.
    pos_embed_max_size: int = 192
    context_dim: int = 4096  # T5-XXL width (CLIP-L and bigG padded to it)
    pooled_dim: int = 2048  # CLIP-L pooled (768) + bigG pooled (1280)
    mlp_hidden: int = 6144
    frequency_embedding_size: int = 256
    qk_norm: bool = False  # 3.5: RMS norm over each head's queries and keys
    # Blocks whose picture stream has a second self-attention (attn2): 3.5 medium's 0..12.
    dual_attention_blocks: tuple[int, ...] = ()

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def detect_mmdit(shapes: dict[str, tuple]) -> MMDiTConfig:
    """The config of the MMDiT whose state dict has these key -> shape pairs (keys without the
    ``model.diffusion_model.`` prefix)."""
    block_numbers = {int(m.group(1)) for key in shapes if (m := re.match(r"joint_blocks\.(\d+)\.", key))}
    if not block_numbers:
        raise ValueError("not an MMDiT state dict: no joint_blocks")
    depth = max(block_numbers) + 1
    patch_weight = shapes["x_embedder.proj.weight"]  # (hidden, in_channels, p, p)
    hidden, in_channels, patch = patch_weight[0], patch_weight[1], patch_weight[2]
    qk_norm = "joint_blocks.0.x_block.attn.ln_q.weight" in shapes
    # The q/k norm's weight is one head wide. Without it, SD3's rule: 64-wide heads
    # (heads = depth in every released model).
    head_dim = shapes["joint_blocks.0.x_block.attn.ln_q.weight"][0] if qk_norm else 64
    table_positions = shapes["pos_embed"][1]
    max_size = math.isqrt(table_positions)
    if max_size * max_size != table_positions:
        raise ValueError(f"pos_embed holds {table_positions} positions, not a square grid")
    return MMDiTConfig(
        depth=depth,
        hidden_size=hidden,
        num_heads=hidden // head_dim,
        patch_size=patch,
        in_channels=in_channels,
        out_channels=shapes["final_layer.linear.weight"][0] // (patch * patch),
        pos_embed_max_size=max_size,
        context_dim=shapes["context_embedder.weight"][1],
        pooled_dim=shapes["y_embedder.mlp.0.weight"][1],
        mlp_hidden=shapes["joint_blocks.0.x_block.mlp.fc1.weight"][0],
        frequency_embedding_size=shapes["t_embedder.mlp.0.weight"][1],
        qk_norm=qk_norm,
        dual_attention_blocks=tuple(
            n for n in sorted(block_numbers) if f"joint_blocks.{n}.x_block.attn2.qkv.weight" in shapes
        ),
    )


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dimension, with a learned scale (``weight``)."""

    def __init__(self, dim: int, eps: float = NORM_EPS):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # In float32: a bf16 mean of squares over 64 values loses the digits the scale needs.
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * self.weight.float()).to(x.dtype)


class SelfAttention(nn.Module):
    """One stream's half of an attention: fused q/k/v in, output projection out (``proj``, absent
    from the last block's text stream, whose result nothing reads)."""

    def __init__(self, dim: int, heads: int, qk_norm: bool, pre_only: bool = False):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        if qk_norm:
            self.ln_q = RMSNorm(dim // heads)
            self.ln_k = RMSNorm(dim // heads)
        if not pre_only:
            self.proj = nn.Linear(dim, dim)

    def qkv_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v as (B, heads, L, head_dim); the fused weight's rows are all q, then k, then v."""
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        if hasattr(self, "ln_q"):
            q, k = self.ln_q(q), self.ln_k(k)
        return q, k, v


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(B, heads, L, head_dim) each -> (B, L, heads * head_dim)."""
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).flatten(2)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class StreamBlock(nn.Module):
    """One stream of a joint block. Its modulation gives shift/scale/gate for the attention and
    for the MLP (6 vectors), plus a shift/scale/gate for attn2 where it has one (9), or only the
    attention's shift/scale where it is ``pre_only`` (2: the last block's text stream, which
    only feeds keys and values to the picture)."""

    def __init__(self, dim: int, heads: int, mlp_hidden: int, qk_norm: bool, pre_only: bool = False,
                 dual_attention: bool = False):
        super().__init__()
        self.pre_only = pre_only
        self.dual_attention = dual_attention
        self.attn = SelfAttention(dim, heads, qk_norm, pre_only)
        if dual_attention:
            self.attn2 = SelfAttention(dim, heads, qk_norm)
        if not pre_only:
            self.mlp = Mlp(dim, mlp_hidden)
        vectors = 2 if pre_only else 9 if dual_attention else 6
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, vectors * dim))

    def modulation(self, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.adaLN_modulation(c).chunk(self.adaLN_modulation[1].out_features // c.shape[-1], dim=-1)

    def norm(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], eps=NORM_EPS)

    def finish(self, x: torch.Tensor, attended: torch.Tensor, mod: tuple[torch.Tensor, ...],
               second: torch.Tensor | None = None) -> torch.Tensor:
        """The residual adds after the joint attention: the attention's output, attn2's
        (``second``) where there is one, then the MLP."""
        _, _, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod[:6]
        x = x + gate_msa[:, None] * self.attn.proj(attended)
        if second is not None:
            x = x + mod[8][:, None] * self.attn2.proj(second)
        return x + gate_mlp[:, None] * self.mlp(modulate(self.norm(x), shift_mlp, scale_mlp))


class JointBlock(nn.Module):
    def __init__(self, config: MMDiTConfig, index: int):
        super().__init__()
        c = config
        self.x_block = StreamBlock(c.hidden_size, c.num_heads, c.mlp_hidden, c.qk_norm,
                                   dual_attention=index in c.dual_attention_blocks)
        self.context_block = StreamBlock(c.hidden_size, c.num_heads, c.mlp_hidden, c.qk_norm,
                                         pre_only=index == c.depth - 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor, c: torch.Tensor):
        x_mod = self.x_block.modulation(c)
        ctx_mod = self.context_block.modulation(c)
        x_normed = self.x_block.norm(x)
        ctx_q, ctx_k, ctx_v = self.context_block.attn.qkv_heads(modulate(self.context_block.norm(context), *ctx_mod[:2]))
        x_q, x_k, x_v = self.x_block.attn.qkv_heads(modulate(x_normed, *x_mod[:2]))
        # One attention over text then picture tokens: each side sees both.
        joint = attention(torch.cat([ctx_q, x_q], 2), torch.cat([ctx_k, x_k], 2), torch.cat([ctx_v, x_v], 2))
        text_len = context.shape[1]
        ctx_attended, x_attended = joint[:, :text_len], joint[:, text_len:]

        second = None
        if self.x_block.dual_attention:
            # attn2 reads the same normed picture tokens (its own shift/scale), not the text.
            second = attention(*self.x_block.attn2.qkv_heads(modulate(x_normed, x_mod[6], x_mod[7])))
        x = self.x_block.finish(x, x_attended, x_mod, second)
        if self.context_block.pre_only:
            return x, None
        return x, self.context_block.finish(context, ctx_attended, ctx_mod)


class FinalLayer(nn.Module):
    def __init__(self, dim: int, patch_size: int, out_channels: int):
        super().__init__()
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(F.layer_norm(x, x.shape[-1:], eps=NORM_EPS), shift, scale))


class PatchEmbed(nn.Module):
    def __init__(self, in_channels: int, dim: int, patch_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


def embedding_mlp(in_dim: int, dim: int) -> nn.Module:
    """``t_embedder``/``y_embedder``: the checkpoint keeps the Linear-SiLU-Linear under ``mlp``."""
    module = nn.Module()
    module.mlp = nn.Sequential(nn.Linear(in_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
    return module


class MMDiT(nn.Module):
    def __init__(self, config: MMDiTConfig):
        super().__init__()
        self.config = config
        c = config
        self.x_embedder = PatchEmbed(c.in_channels, c.hidden_size, c.patch_size)
        # Stored, not computed: the released table is SD3's 2D sin-cos one, and a loader
        # assigns it like any weight.
        self.register_buffer("pos_embed", torch.zeros(1, c.pos_embed_max_size ** 2, c.hidden_size))
        self.t_embedder = embedding_mlp(c.frequency_embedding_size, c.hidden_size)
        self.y_embedder = embedding_mlp(c.pooled_dim, c.hidden_size)
        self.context_embedder = nn.Linear(c.context_dim, c.hidden_size)
        self.joint_blocks = nn.ModuleList(JointBlock(c, i) for i in range(c.depth))
        self.final_layer = FinalLayer(c.hidden_size, c.patch_size, c.out_channels)

    @property
    def dtype(self) -> torch.dtype:
        return self.context_embedder.weight.dtype

    def cropped_pos_embed(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """The centre grid_h x grid_w of the stored table, as (1, grid_h * grid_w, hidden)."""
        size = self.config.pos_embed_max_size
        if grid_h > size or grid_w > size:
            raise ValueError(f"a {grid_h}x{grid_w} patch grid is larger than this model's {size}x{size} positions")
        top, left = (size - grid_h) // 2, (size - grid_w) // 2
        table = self.pos_embed.reshape(1, size, size, -1)[:, top:top + grid_h, left:left + grid_w]
        return table.reshape(1, grid_h * grid_w, -1)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor, pooled: torch.Tensor):
        """x: noisy latent (B, in_channels, H, W); timesteps: (B,) in [0, 1000); context: text
        tokens (B, L, context_dim); pooled: pooled text vector (B, pooled_dim). Returns
        (B, out_channels, H, W)."""
        dtype, p = self.dtype, self.config.patch_size
        height, width = x.shape[-2:]
        # A latent side that is not a multiple of the patch is padded to one (circularly, as
        # ComfyUI does) and the result cropped back.
        pad_h, pad_w = -height % p, -width % p
        h = F.pad(x.to(dtype), (0, pad_w, 0, pad_h), mode="circular") if pad_h or pad_w else x.to(dtype)
        grid_h, grid_w = h.shape[-2] // p, h.shape[-1] // p
        h = self.x_embedder(h) + self.cropped_pos_embed(grid_h, grid_w).to(dtype)

        c = self.t_embedder.mlp(timestep_embedding(timesteps, self.config.frequency_embedding_size).to(dtype))
        c = c + self.y_embedder.mlp(pooled.to(dtype))
        context = self.context_embedder(context.to(dtype))
        for block in self.joint_blocks:
            h, context = block(h, context, c)

        h = self.final_layer(h, c)  # (B, grid_h * grid_w, p * p * out_channels)
        b = h.shape[0]
        h = h.reshape(b, grid_h, grid_w, p, p, -1).permute(0, 5, 1, 3, 2, 4)
        out = h.reshape(b, -1, grid_h * p, grid_w * p)[..., :height, :width]
        return out.to(x.dtype).contiguous()
