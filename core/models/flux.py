"""The FLUX.1 transformer (Black Forest Labs 2024, dev and schnell), in one file.

Module names mirror the single-file checkpoint keys (the BFL/ComfyUI layout: ``double_blocks.N.
img_attn.qkv``..., with or without a ``model.diffusion_model.`` prefix), so a state dict loads with
no conversion table. The network is a rectified-flow transformer over 2x2 patches of the
16-channel latent: "double" blocks keep image and text tokens in two streams with their own weights
and attend jointly; "single" blocks run the concatenated sequence through one parallel
attention + MLP layer. Every block is modulated (shift, scale, gate) by one vector made of the
timestep, the pooled CLIP text and, for dev, the distilled guidance value. Positions enter only
through rotary embeddings over (t, h, w) ids: text tokens all at 0, image patches at their row and
column.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

CHECKPOINT_PREFIX = "model.diffusion_model."


@dataclass(frozen=True)
class FluxConfig:
    """FLUX.1 dev by default; schnell is the same without the guidance embedding."""

    in_channels: int = 64  # packed: latent channels x 2 x 2
    out_channels: int = 64
    hidden_size: int = 3072
    num_heads: int = 24
    depth: int = 19  # double-stream blocks
    depth_single: int = 38  # single-stream blocks
    mlp_ratio: float = 4.0
    context_dim: int = 4096  # T5-XXL hidden size
    pooled_dim: int = 768  # CLIP-L pooled output
    guidance_embed: bool = True  # dev: distilled guidance value; schnell: none
    axes_dim: tuple[int, ...] = (16, 56, 56)  # rotary widths for the (t, h, w) ids; sum = head width
    theta: float = 10000.0
    qkv_bias: bool = True

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)


def strip_checkpoint_prefix(state_dict: dict) -> dict:
    """The transformer's own keys, whether the file stores them under ``model.diffusion_model.``
    (a checkpoint with bundled VAE/text encoders) or bare (a transformer-only file)."""
    if any(key.startswith(CHECKPOINT_PREFIX) for key in state_dict):
        return {key[len(CHECKPOINT_PREFIX):]: value for key, value in state_dict.items() if key.startswith(CHECKPOINT_PREFIX)}
    return dict(state_dict)


def detect_flux(shapes: dict[str, tuple]) -> FluxConfig:
    """FluxConfig from checkpoint key names and tensor shapes (prefixed or bare)."""
    shapes = strip_checkpoint_prefix(shapes)
    hidden, in_channels = shapes["img_in.weight"]

    def block_count(family: str) -> int:
        return 1 + max(int(key.split(".")[1]) for key in shapes if key.startswith(family + "."))

    # The q/k RMSNorm scales are one head wide; every released FLUX.1 has 128-wide heads.
    head_dim = shapes["double_blocks.0.img_attn.norm.query_norm.scale"][0]
    return FluxConfig(
        in_channels=in_channels,
        out_channels=shapes["final_layer.linear.weight"][0],
        hidden_size=hidden,
        num_heads=hidden // head_dim,
        depth=block_count("double_blocks"),
        depth_single=block_count("single_blocks"),
        mlp_ratio=shapes["double_blocks.0.img_mlp.0.weight"][0] / hidden,
        context_dim=shapes["txt_in.weight"][1],
        pooled_dim=shapes["vector_in.in_layer.weight"][1],
        guidance_embed="guidance_in.in_layer.weight" in shapes,
        qkv_bias="double_blocks.0.img_attn.qkv.bias" in shapes,
    )


def timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of t x 1000 (FLUX takes times in [0, 1]), cosine half first."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def rope_angles(ids: torch.Tensor, axes_dim: tuple[int, ...], theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each (N, head_dim / 2), for position ids (N, axes): each axis turns its own
    slice of the head's channel pairs at frequencies theta^(-2i/width). Angles in float64, as the
    reference computes them: positions reach the hundreds and float32 would lose the slow pairs."""
    angles = []
    for axis, width in enumerate(axes_dim):
        omega = 1.0 / theta ** (torch.arange(0, width, 2, dtype=torch.float64, device=ids.device) / width)
        angles.append(ids[:, axis].double()[:, None] * omega[None])
    angles = torch.cat(angles, dim=-1)
    return torch.cos(angles).float(), torch.sin(angles).float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each adjacent channel pair (2i, 2i+1) of x (B, heads, N, head_dim) by its angle."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1)
    return rotated.reshape(x.shape).type_as(x)


def attention(q, k, v, cos, sin) -> torch.Tensor:
    """Joint attention over (B, heads, N, head_dim) after the rotary turn; (B, N, heads x head_dim)."""
    out = F.scaled_dot_product_attention(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v)
    return out.transpose(1, 2).flatten(2)


def split_heads(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, N, 3 x heads x head_dim) -> q, k, v each (B, heads, N, head_dim)."""
    b, n, _ = qkv.shape
    q, k, v = qkv.reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
    return q, k, v


class MLPEmbedder(nn.Module):
    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.in_layer = nn.Linear(in_dim, hidden)
        self.out_layer = nn.Linear(hidden, hidden)

    def forward(self, x):
        return self.out_layer(F.silu(self.in_layer(x)))


class RMSNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # In float32: a bf16 mean of squares over 128 channels is too coarse for the q/k logits.
        normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)
        return normed.to(x.dtype) * self.scale


class QKNorm(nn.Module):
    def __init__(self, head_dim: int):
        super().__init__()
        self.query_norm = RMSNorm(head_dim)
        self.key_norm = RMSNorm(head_dim)

    def forward(self, q, k, v):
        return self.query_norm(q).to(v.dtype), self.key_norm(k).to(v.dtype)


class SelfAttention(nn.Module):
    """The double block's per-stream projections; the attention itself runs over both streams."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool):
        super().__init__()
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.norm = QKNorm(dim // heads)
        self.proj = nn.Linear(dim, dim)


class Modulation(nn.Module):
    """(shift, scale, gate) triples from the conditioning vector: two for a double block's
    attention and MLP, one for a single block."""

    def __init__(self, dim: int, triples: int):
        super().__init__()
        self.triples = triples
        self.lin = nn.Linear(dim, 3 * triples * dim)

    def forward(self, vec) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        chunks = self.lin(F.silu(vec))[:, None, :].chunk(3 * self.triples, dim=-1)
        return [chunks[i:i + 3] for i in range(0, len(chunks), 3)]


def modulate(x, shift, scale):
    return (1 + scale) * x + shift


def plain_layer_norm(dim: int) -> nn.LayerNorm:
    """LayerNorm without weights: the modulation supplies the scale and shift."""
    return nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)


def gelu_mlp(dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))


class DoubleStreamBlock(nn.Module):
    def __init__(self, config: FluxConfig):
        super().__init__()
        dim, self.heads = config.hidden_size, config.num_heads
        for stream in ("img", "txt"):
            setattr(self, f"{stream}_mod", Modulation(dim, triples=2))
            setattr(self, f"{stream}_norm1", plain_layer_norm(dim))
            setattr(self, f"{stream}_attn", SelfAttention(dim, self.heads, config.qkv_bias))
            setattr(self, f"{stream}_norm2", plain_layer_norm(dim))
            setattr(self, f"{stream}_mlp", gelu_mlp(dim, config.mlp_hidden))

    def _stream_qkv(self, stream: str, x, modulation):
        shift, scale, _ = modulation
        attn = getattr(self, f"{stream}_attn")
        q, k, v = split_heads(attn.qkv(modulate(getattr(self, f"{stream}_norm1")(x), shift, scale)), self.heads)
        q, k = attn.norm(q, k, v)
        return q, k, v

    def _stream_update(self, stream: str, x, attn_out, modulations):
        (_, _, attn_gate), (mlp_shift, mlp_scale, mlp_gate) = modulations
        x = x + attn_gate * getattr(self, f"{stream}_attn").proj(attn_out)
        mlp_in = modulate(getattr(self, f"{stream}_norm2")(x), mlp_shift, mlp_scale)
        return x + mlp_gate * getattr(self, f"{stream}_mlp")(mlp_in)

    def forward(self, img, txt, vec, cos, sin):
        img_mods, txt_mods = self.img_mod(vec), self.txt_mod(vec)
        img_q, img_k, img_v = self._stream_qkv("img", img, img_mods[0])
        txt_q, txt_k, txt_v = self._stream_qkv("txt", txt, txt_mods[0])
        # Text first: the rotary ids are laid out [text, image].
        joint = attention(torch.cat((txt_q, img_q), 2), torch.cat((txt_k, img_k), 2), torch.cat((txt_v, img_v), 2), cos, sin)
        txt_out, img_out = joint[:, :txt.shape[1]], joint[:, txt.shape[1]:]
        return self._stream_update("img", img, img_out, img_mods), self._stream_update("txt", txt, txt_out, txt_mods)


class SingleStreamBlock(nn.Module):
    """Attention and MLP side by side: one input projection (q, k, v and the MLP's hidden layer)
    and one output projection over [attention out, activated MLP hidden]."""

    def __init__(self, config: FluxConfig):
        super().__init__()
        dim, self.heads, self.mlp_hidden = config.hidden_size, config.num_heads, config.mlp_hidden
        self.linear1 = nn.Linear(dim, dim * 3 + self.mlp_hidden)
        self.linear2 = nn.Linear(dim + self.mlp_hidden, dim)
        self.norm = QKNorm(config.head_dim)
        self.pre_norm = plain_layer_norm(dim)
        self.mlp_act = nn.GELU(approximate="tanh")
        self.modulation = Modulation(dim, triples=1)

    def forward(self, x, vec, cos, sin):
        (shift, scale, gate), = self.modulation(vec)
        qkv, mlp = self.linear1(modulate(self.pre_norm(x), shift, scale)).split([x.shape[-1] * 3, self.mlp_hidden], dim=-1)
        q, k, v = split_heads(qkv, self.heads)
        q, k = self.norm(q, k, v)
        out = self.linear2(torch.cat((attention(q, k, v, cos, sin), self.mlp_act(mlp)), dim=2))
        return x + gate * out


class LastLayer(nn.Module):
    def __init__(self, dim: int, out_channels: int):
        super().__init__()
        self.norm_final = plain_layer_norm(dim)
        self.linear = nn.Linear(dim, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x, vec):
        shift, scale = self.adaLN_modulation(vec)[:, None, :].chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


def pack_latent(latent: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/2 x W/2, C x 4): each 2x2 patch one token, channel-major."""
    b, c, h, w = latent.shape
    return latent.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latent(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of pack_latent for a (height, width) latent."""
    b, _, packed = tokens.shape
    grid = tokens.reshape(b, height // 2, width // 2, packed // 4, 2, 2)
    return grid.permute(0, 3, 1, 4, 2, 5).reshape(b, packed // 4, height, width)


def position_ids(text_tokens: int, height: int, width: int, device) -> torch.Tensor:
    """(text_tokens + H/2 x W/2, 3) ids in sequence order [text, image]: text at (0, 0, 0),
    image patches at (0, row, column)."""
    rows, cols = torch.meshgrid(torch.arange(height // 2, device=device), torch.arange(width // 2, device=device), indexing="ij")
    image = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3)
    return torch.cat([torch.zeros(text_tokens, 3, dtype=image.dtype, device=device), image]).float()


class FluxTransformer(nn.Module):
    def __init__(self, config: FluxConfig):
        super().__init__()
        if sum(config.axes_dim) != config.head_dim:
            raise ValueError(f"rotary axes {config.axes_dim} must add up to the head width {config.head_dim}")
        self.config = config
        dim = config.hidden_size
        self.img_in = nn.Linear(config.in_channels, dim)
        self.time_in = MLPEmbedder(256, dim)
        self.vector_in = MLPEmbedder(config.pooled_dim, dim)
        if config.guidance_embed:
            self.guidance_in = MLPEmbedder(256, dim)
        self.txt_in = nn.Linear(config.context_dim, dim)
        self.double_blocks = nn.ModuleList([DoubleStreamBlock(config) for _ in range(config.depth)])
        self.single_blocks = nn.ModuleList([SingleStreamBlock(config) for _ in range(config.depth_single)])
        self.final_layer = LastLayer(dim, config.out_channels)

    @property
    def dtype(self) -> torch.dtype:
        return self.img_in.weight.dtype

    def forward(self, img: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor, pooled: torch.Tensor,
                guidance: torch.Tensor | None = None) -> torch.Tensor:
        """img (B, C, H, W) latent, H and W even; timesteps (B,) in [0, 1] (the flow's sigma);
        context (B, L, 4096) T5 states; pooled (B, 768) CLIP-L; guidance (B,) the distilled
        guidance value (dev; required there, ignored by schnell) -> the velocity, (B, C, H, W)."""
        full_height, full_width = img.shape[-2:]
        # FLUX packs 2x2 latent patches: an odd side (a picture side that is not a multiple of 16)
        # is padded to even (circularly, as ComfyUI does) and the answer cropped back.
        if full_height % 2 or full_width % 2:
            img = F.pad(img, (0, full_width % 2, 0, full_height % 2), mode="circular")
        height, width = img.shape[-2:]
        dtype = self.img_in.weight.dtype
        x = self.img_in(pack_latent(img).to(dtype))
        vec = self.time_in(timestep_embedding(timesteps).to(dtype))
        if self.config.guidance_embed:
            if guidance is None:
                raise ValueError("this FLUX model (dev) needs a guidance value")
            vec = vec + self.guidance_in(timestep_embedding(guidance).to(dtype))
        vec = vec + self.vector_in(pooled.to(dtype))
        txt = self.txt_in(context.to(dtype))
        cos, sin = rope_angles(position_ids(txt.shape[1], height, width, img.device), self.config.axes_dim, self.config.theta)
        for block in self.double_blocks:
            x, txt = block(x, txt, vec, cos, sin)
        x = torch.cat((txt, x), 1)
        for block in self.single_blocks:
            x = block(x, vec, cos, sin)
        x = self.final_layer(x[:, txt.shape[1]:], vec)
        return unpack_latent(x, height, width)[..., :full_height, :full_width]
