"""Wrappers that turn the UNet into k-diffusion's denoiser ``model(x, sigma) -> clean estimate``."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from core.sampling.schedules import DiscreteSchedule


class DiscreteDenoiser:
    """An eps- or v-prediction UNet trained on discrete timesteps, seen as a denoiser of
    variance-exploding inputs x = x0 + sigma * noise."""

    def __init__(self, unet, schedule: DiscreteSchedule, prediction: str = "eps"):
        self.unet = unet
        self.schedule = schedule
        self.prediction = prediction

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor, c_concat: torch.Tensor | None = None, **unet_kwargs) -> torch.Tensor:
        sigma = torch.as_tensor(sigma).reshape(-1).to(x.device, x.dtype).expand(x.shape[0])
        s = sigma[:, None, None, None]
        c_in = 1 / (s**2 + 1) ** 0.5
        t = self.schedule.sigma_to_t(sigma)
        x_in = x * c_in
        if c_concat is not None:
            x_in = torch.cat([x_in, c_concat], dim=1)
        out = self.unet(x_in, t, context, **unet_kwargs).to(x.dtype)
        if self.prediction == "v":
            return x * (1 / (s**2 + 1)) - out * s * c_in
        return x - out * s


@dataclass
class Conditioning:
    """A context with SDXL's added vector (pooled text + size numbers), which travels with it
    through schedules and guidance. SD 1.x/2.x contexts are plain tensors."""

    context: torch.Tensor  # (tokens, hidden)
    vector: torch.Tensor | None = None  # (adm_in_channels,)

    @property
    def shape(self) -> torch.Size:
        return self.context.shape


@dataclass
class ScheduledContext:
    """A prompt whose text changes during sampling (prompt editing, alternation):
    ``parts[i] = (last step it applies to, context)``, in step order."""

    parts: list[tuple[int, torch.Tensor]]

    def at(self, step: int) -> torch.Tensor:
        for end, context in self.parts:
            if step <= end:
                return context
        return self.parts[0][1]  # A1111's fallback past the last entry

    @classmethod
    def fixed(cls, context: torch.Tensor) -> "ScheduledContext":
        return cls([(1 << 30, context)])


class CFGDenoiser:
    """Classifier-free guidance with composable prompts (A1111's ``AND``):
    denoised = uncond + cfg_scale * sum_i weight_i * (cond_i - uncond), in one batched call.

    ``step`` is advanced by the pipeline after each sampler step, so scheduled prompts switch
    at the right step even for samplers that call the model several times per step."""

    def __init__(self, denoiser, conds: list[tuple[ScheduledContext, float]], uncond: ScheduledContext, cfg_scale: float):
        self.denoiser = denoiser
        self.conds = conds
        self.uncond = uncond
        self.cfg_scale = cfg_scale
        self.step = 0
        # Inpainting checkpoints: mask + masked-image latent, concatenated to the UNet input.
        self.image_conditioning: torch.Tensor | None = None
        # Regular checkpoints inpainting: the known latent and where to keep it (1 = keep).
        self.init_latent: torch.Tensor | None = None
        self.keep_mask: torch.Tensor | None = None
        # Per-image class labels for the UNet (the x4 upscaler's noise level), (n,).
        self.class_labels: torch.Tensor | None = None
        # (contexts, n, device, (context batch, kwargs)) of the last call, see _batched_contexts.
        self._batch: tuple | None = None

    def _batched_contexts(self, contexts: list, n: int, device) -> tuple[torch.Tensor, dict]:
        """The UNet's context batch (and SDXL's added vectors) for these contexts, each repeated
        for the ``n`` images: built once and reused while the scheduled prompts stay the same
        (every step but those where prompt editing switches text)."""
        if self._batch is not None:
            previous, previous_n, previous_device, batch = self._batch
            if previous_n == n and previous_device == device and len(previous) == len(contexts) \
                    and all(a is b for a, b in zip(previous, contexts)):
                return batch[0], dict(batch[1])  # a copy: the caller adds its own arguments
        kwargs = {}
        plain = contexts
        if isinstance(contexts[0], Conditioning):
            if contexts[0].vector is not None:
                kwargs["y"] = torch.cat([c.vector[None].expand(n, -1) for c in contexts]).to(device)
            plain = [c.context for c in contexts]
        # Contexts are (tokens, hidden), all padded to one length when the guidance was built.
        context = torch.cat([c[None].expand(n, -1, -1) for c in plain])
        self._batch = (contexts, n, device, (context, kwargs))
        return context, dict(kwargs)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        contexts = [cond.at(self.step) for cond, _ in self.conds]
        use_uncond = not (self.cfg_scale == 1.0 and len(self.conds) == 1 and self.conds[0][1] == 1.0)
        if use_uncond:
            contexts.insert(0, self.uncond.at(self.step))
        context, kwargs = self._batched_contexts(contexts, n, x.device)
        x_in = x.repeat(len(contexts), 1, 1, 1)
        if self.class_labels is not None:
            kwargs["y"] = self.class_labels.to(x.device).repeat(len(contexts))
        if self.image_conditioning is not None:
            kwargs["c_concat"] = self.image_conditioning.to(x).repeat(len(contexts), 1, 1, 1)
        out = self.denoiser(x_in, sigma, context, **kwargs).chunk(len(contexts))
        if not use_uncond:
            guided = out[0]
        else:
            uncond, conds = out[0], out[1:]
            guided = uncond  # each sum below is a new tensor: uncond itself is never written
            for (_, weight), cond in zip(self.conds, conds):
                guided = guided + (cond - uncond) * (self.cfg_scale * weight)
        if self.keep_mask is not None:
            # A1111's inpainting with a regular checkpoint: outside the mask the model is told
            # the answer at every step.
            guided = self.init_latent * self.keep_mask + guided * (1 - self.keep_mask)
        return guided

