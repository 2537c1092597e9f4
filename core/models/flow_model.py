"""SD 3.x and FLUX.1 as one module tree: transformer, 16-channel autoencoder, text encoders.

Attribute names follow ComfyUI's single-file layout, which every loader path produces
(core/flow_files.py): ``model.diffusion_model`` (the MMDiT or FLUX transformer, under the
file's own key names), ``first_stage_model`` (the autoencoder, no quant convolutions) and
``text_encoders.{clip_l,clip_g,t5xxl}`` (those present; SD3 may do without T5). So the file's
keys are our keys, except the CLIP towers' ``text_model.`` level (transformers 5 has none),
which ``checkpoint_state_dict``/``internal_state`` translate as for the UNet families.

Both families are rectified flows: x_sigma = (1 - sigma) x0 + sigma noise, the network predicts
the velocity (noise - x0), sigma in [0, 1] with a shifted schedule (core/sampling/flow.py).
What differs is how the network is called: SD3's MMDiT takes the timestep sigma * 1000,
FLUX takes sigma itself and, for dev, the distilled guidance value.
"""
from __future__ import annotations

import torch
from torch import nn

from core.models.clip import PooledCLIPEmbedder
from core.models.detection import FLOW_TEXT, ModelSpec
from core.models.flux import FluxConfig, FluxTransformer
from core.models.mmdit import MMDiT
from core.models.stable_diffusion import CheckpointNames, rebuild_position_ids
from core.models.vae import AutoencoderKL


def make_text_part(name: str, config) -> nn.Module:
    if name == "t5xxl":
        from core.models.t5 import T5Encoder

        return T5Encoder(config)
    return PooledCLIPEmbedder(config)


class LatentFlow(CheckpointNames, nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.model = nn.Module()
        flux = isinstance(spec.transformer, FluxConfig)
        self.model.diffusion_model = FluxTransformer(spec.transformer) if flux else MMDiT(spec.transformer)
        self.first_stage_model = AutoencoderKL(spec.vae)
        self.text_encoders = nn.ModuleDict({name: make_text_part(name, config) for name, config in spec.text_parts})
        # The T5 tokenizer (core/text/t5_tokenizer.py), found beside the files at load time;
        # None when there is no T5 encoder.
        self.t5_tokenizer = None

    @property
    def unet(self) -> nn.Module:
        """The denoising network, a transformer here: named as the UNet families name theirs,
        since the code that treats every family alike (LoRA merging, compilation, seamless
        tiling, the sampling run) addresses it so."""
        return self.model.diffusion_model

    @property
    def vae(self) -> AutoencoderKL:
        return self.first_stage_model

    @property
    def encoder_modules(self) -> list[nn.Module]:
        return list(self.text_encoders.values())

    def text_part(self, name: str) -> nn.Module | None:
        return self.text_encoders[name] if name in self.text_encoders else None

    def _slots(self) -> list[tuple[str, nn.Module]]:
        return [(f"{FLOW_TEXT}{name}.", module) for name, module in self.text_encoders.items()]

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def rebuild_buffers(self, device) -> None:
        """After the weights were assigned: CLIP's position ids made on ``device``, and T5's
        embedding table tied again (assignment leaves two copies of it)."""
        rebuild_position_ids([m for name, m in self.text_encoders.items() if name != "t5xxl"], device)
        if "t5xxl" in self.text_encoders:
            self.text_encoders["t5xxl"].tie_embedding()

    @property
    def takes_image_conditioning(self) -> bool:
        return False

    @property
    def is_flux(self) -> bool:
        return isinstance(self.spec.transformer, FluxConfig)

    def noise_schedule(self, height: int, width: int):
        """The shifted flow schedule (core/sampling/flow.py) for a picture of this size: the
        family's fixed shift, or FLUX dev's resolution-dependent one."""
        from core.sampling.flow import FlowSchedule, flux_shift

        shift = self.spec.family_info.flow.shift
        return FlowSchedule(shift if shift is not None else flux_shift(height, width), timestep_scale=1.0 if self.is_flux else 1000.0)

    def make_denoiser(self, schedule, distilled_guidance: float | None = None):
        """The denoiser samplers call: the network's velocity turned into a clean estimate.
        ``distilled_guidance``: FLUX dev's guidance input (its "Distilled CFG Scale")."""
        from core.sampling.flow import FlowDenoiser

        network = self.unet
        if self.is_flux:
            guidance = distilled_guidance if self.spec.family_info.flow.distilled_guidance else None

            def velocity(x, t, context, y=None):
                value = None if guidance is None else torch.full((x.shape[0],), float(guidance), device=x.device)
                return network(x, t, context, y, guidance=value)
        else:
            def velocity(x, t, context, y=None):
                return network(x, t, context, y)
        return FlowDenoiser(velocity, schedule)
