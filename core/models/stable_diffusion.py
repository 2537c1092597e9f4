"""The whole latent diffusion model: UNet, autoencoder and text encoder in one module tree.

Attribute names follow the single-file checkpoint (``model.diffusion_model``,
``first_stage_model``, ``cond_stage_model``), so ``state_dict()`` keys are the file's keys
(apart from the ``text_model.`` level that transformers 5 no longer has).
"""
from __future__ import annotations

import torch
from torch import nn

from core.models.clip import FrozenCLIPEmbedder
from core.models.detection import TEXT, ModelSpec
from core.models.unet import UNetModel
from core.models.vae import AutoencoderKL

# Our module tree's name for the text encoder's weights, and the checkpoint's.
TEXT_INTERNAL = "cond_stage_model.transformer."


def linear_alphas_cumprod(spec: ModelSpec) -> torch.Tensor:
    """SD's "scaled linear" beta schedule, computed in float64 as the original code does."""
    betas = torch.linspace(spec.linear_start**0.5, spec.linear_end**0.5, spec.num_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).float()


class LatentDiffusion(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.model = nn.Module()
        self.model.diffusion_model = UNetModel(spec.unet)
        self.first_stage_model = AutoencoderKL(spec.vae)
        self.cond_stage_model = FrozenCLIPEmbedder(spec.text)
        self.register_buffer("alphas_cumprod", linear_alphas_cumprod(spec), persistent=False)

    @property
    def unet(self) -> UNetModel:
        return self.model.diffusion_model

    @property
    def vae(self) -> AutoencoderKL:
        return self.first_stage_model

    @property
    def text_encoder(self) -> FrozenCLIPEmbedder:
        return self.cond_stage_model

    def checkpoint_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict under the single-file checkpoint's key names."""
        out = {}
        for key, value in self.state_dict().items():
            if key.startswith(TEXT_INTERNAL):
                if key.endswith("position_ids"):
                    continue
                key = TEXT + key[len(TEXT_INTERNAL):]
            out[key] = value
        return out
