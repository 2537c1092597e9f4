"""The whole latent diffusion model: UNet, autoencoder and text encoder(s) in one module tree.

Attribute names follow the single-file checkpoint (``model.diffusion_model``,
``first_stage_model``, ``cond_stage_model`` for SD 1.x/2.x and the x4 upscaler,
``conditioner.embedders.N`` for SDXL), so UNet and VAE keys are the file's keys. Text encoder
keys differ (transformers 5 has no ``text_model.`` level; OpenCLIP towers are converted to
CLIPTextModel): ``checkpoint_state_dict`` and ``internal_state`` translate both ways.
"""
from __future__ import annotations

import torch
from torch import nn

from core.models.clip import FrozenCLIPEmbedder, make_embedder
from core.models.detection import ModelSpec
from core.models.unet import UNetModel
from core.models.vae import AutoencoderKL
from core.sampling.denoiser import DiscreteDenoiser
from core.sampling.schedules import DiscreteSchedule

# Our module tree's name for SD 1.x's text encoder weights.
TEXT_INTERNAL = "cond_stage_model.transformer."


def linear_alphas_cumprod(spec: ModelSpec) -> torch.Tensor:
    """SD's "scaled linear" beta schedule (ldm's "linear"), computed in float64 as the original
    code does; rescaled to zero terminal SNR when the spec asks for it."""
    betas = torch.linspace(spec.linear_start**0.5, spec.linear_end**0.5, spec.num_timesteps, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    if spec.zero_terminal_snr:
        alphas_cumprod = rescale_zero_terminal_snr(alphas_cumprod)
    return alphas_cumprod.float()


def rescale_zero_terminal_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Alg. 1:
    shift sqrt(alphas_cumprod) so the last step is pure noise and scale it so the first is
    unchanged. As A1111 and ComfyUI do, the last value is then set to a tiny positive number
    instead of 0, so that sigma_max stays finite (about 4500) for samplers that start from it."""
    root = alphas_cumprod.double().sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    out = root**2
    out[-1] = 4.8973451890853435e-08
    return out.to(alphas_cumprod.dtype)


def rebuild_position_ids(encoders, device) -> None:
    for encoder in encoders:
        embeddings = getattr(encoder.transformer, "embeddings", None)  # CLIP towers; T5 has none
        if embeddings is not None:
            embeddings.register_buffer(
                "position_ids", torch.arange(encoder.config.max_positions, device=device)[None], persistent=False)


class CheckpointNames:
    """Translation between a container's module tree and the single-file checkpoint's names:
    every key is the file's own except the text encoders', which each embedder converts
    (``from_checkpoint`` / ``to_checkpoint`` / ``internal_names``; an embedder without them,
    T5, is stored as it is). The container lists its encoders with their prefixes (``_slots``)."""

    def _slots(self) -> list:
        raise NotImplementedError

    @staticmethod
    def _converter(embedder, name: str):
        return getattr(type(embedder), name, None) or (lambda mine: dict(mine))

    def _convert_text_encoders(self, tensors: dict[str, torch.Tensor], convert) -> dict[str, torch.Tensor]:
        """``tensors`` with each text encoder's share replaced by ``convert(embedder, share)``
        (keys relative to that encoder's prefix); every other tensor kept as it is."""
        slots = self._slots()
        out = {}
        for key, value in tensors.items():
            if not any(key.startswith(prefix) for prefix, _ in slots):
                out[key] = value
        for prefix, embedder in slots:
            mine = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            out.update({prefix + k: v for k, v in convert(embedder, mine).items()})
        return out

    def checkpoint_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict under the single-file checkpoint's key names (OpenCLIP q/k/v fused)."""
        return self._convert_text_encoders(
            self.state_dict(), lambda embedder, mine: self._converter(embedder, "to_checkpoint")(mine))

    def internal_names(self, checkpoint_key: str) -> list[tuple[str, int | None]]:
        """Where a checkpoint key lives in this module tree: [(parameter name, third)], third
        being 0/1/2 for the q/k/v rows of a fused OpenCLIP in-projection, else None."""
        for prefix, embedder in self._slots():
            if checkpoint_key.startswith(prefix):
                names = getattr(type(embedder), "internal_names", None)
                relative = checkpoint_key[len(prefix):]
                found = names(relative) if names is not None else [(relative, None)]
                return [(prefix + name, third) for name, third in found]
        return [(checkpoint_key, None)]

    def internal_state(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Checkpoint-named tensors -> our state-dict names (text encoders converted; OpenCLIP
        in-projections split into views, no copy)."""
        return self._convert_text_encoders(
            tensors, lambda embedder, mine: self._converter(embedder, "from_checkpoint")(mine))


class LatentDiffusion(CheckpointNames, nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.model = nn.Module()
        self.model.diffusion_model = UNetModel(spec.unet)
        self.first_stage_model = AutoencoderKL(spec.vae)
        if spec.family_info.text_in_conditioner:
            self.conditioner = nn.Module()
            self.conditioner.embedders = nn.ModuleList(make_embedder(t) for t in spec.text_encoders)
        else:
            self.cond_stage_model = make_embedder(spec.text)
        self.register_buffer("alphas_cumprod", linear_alphas_cumprod(spec), persistent=False)

    @property
    def unet(self) -> UNetModel:
        return self.model.diffusion_model

    @property
    def vae(self) -> AutoencoderKL:
        return self.first_stage_model

    @property
    def text_encoders(self) -> list[FrozenCLIPEmbedder]:
        """SDXL base: [CLIP-L, OpenCLIP bigG]; every other family: its one encoder."""
        if self.spec.family_info.text_in_conditioner:
            return list(self.conditioner.embedders)
        return [self.cond_stage_model]

    @property
    def text_encoder(self) -> FrozenCLIPEmbedder:
        """The first text encoder (SD 1.x/2.x: the only one; use ``text_encoders`` for SDXL)."""
        return self.text_encoders[0]

    def _slots(self) -> list[tuple[str, FrozenCLIPEmbedder]]:
        return list(zip(self.spec.text_prefixes, self.text_encoders))

    @property
    def encoder_modules(self) -> list[nn.Module]:
        """Every text encoder module (what the code common to all families iterates)."""
        return self.text_encoders

    @property
    def device(self) -> torch.device:
        return self.alphas_cumprod.device

    def rebuild_buffers(self, device) -> None:
        """The buffers a file does not hold (position ids, the noise schedule), made on ``device``
        after the weights were assigned to a model built on the meta device."""
        rebuild_position_ids(self.encoder_modules, device)
        self.register_buffer("alphas_cumprod", linear_alphas_cumprod(self.spec).to(device), persistent=False)

    @property
    def takes_image_conditioning(self) -> bool:
        """An inpainting (or x4) UNet: more input channels than the latent has."""
        return self.unet.config.in_channels > self.vae.config.embed_dim

    def noise_schedule(self, height: int, width: int) -> DiscreteSchedule:
        """The 1000-step training schedule (the same for every picture size)."""
        return DiscreteSchedule(self.alphas_cumprod)

    def make_denoiser(self, schedule: DiscreteSchedule, distilled_guidance: float | None = None) -> DiscreteDenoiser:
        return DiscreteDenoiser(self.unet, schedule, self.spec.prediction)
