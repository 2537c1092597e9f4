"""Train the demo's text-conditioned UNet and its small CLIP text encoder, jointly, on the
frozen autoencoder's latents.

    nice -n 10 python -m core.training.diffusion --minutes 30     # resumable; run again to continue

As SD 1.x: eps-prediction, the scaled-linear beta schedule (0.00085..0.012, 1000 steps), the
real CLIP tokenizer (77 ids, padded with end-of-text), a transformers CLIPTextModel (3 layers,
128 wide, trained from scratch), captions dropped to "" 10% of the time for classifier-free
guidance. The loss is min-SNR-5 weighted (Hang et al. 2023), which converges faster than
plain MSE, with offset noise (0.1) so that the model learns to set flat background colours.
A share of each batch (``--high-noise-share``) draws its timesteps from the noisier half of
the schedule, where a picture's layout (position, size) is decided; the rest is uniform. The
learning rate can decay on a cosine (``--decay-steps``), and a run can start from another
run's weights (``--init-from``: its text encoder already knows the caption words, and its UNet
adapts to a fine-tuned autoencoder's latents quickly). The first run encodes a fixed set of
pictures once (``latents.pt`` in the run folder: posterior mean and std), so each step only
samples a latent and runs UNet + CLIP.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from core.models.stable_diffusion import LatentDiffusion
from core.text.tokenizer import load_clip_tokenizer
from core.training import shapes as S
from core.training.autoencoder import load_autoencoder
from core.training.common import (EMA, RUNS, Logger, base_arguments, cosine_lr, demo_spec, load_checkpoint, restore_progress,
                                  run_from_arguments, save_atomic, set_threads)

CAPTION_DROPOUT = 0.1
MIN_SNR_GAMMA = 5.0
OFFSET_NOISE = 0.1
HIGH_NOISE_SHARE = 0.0


def tokenize(captions: list[str]) -> torch.Tensor:
    tokenizer = load_clip_tokenizer()
    return torch.tensor([tokenizer.encode_padded(c) for c in captions], dtype=torch.long)


@torch.no_grad()
def build_latent_cache(vae, path: Path, count: int, seed: int, outlined: bool = False, log=print, chunk: int = 256) -> dict:
    """Encode pictures 0..count-1 of ``seed`` once: posterior mean/std (unscaled) and token ids."""
    if path.is_file():
        cache = torch.load(path, weights_only=True)
        if cache["count"] == count and cache["seed"] == seed and cache.get("outlined", False) == outlined:
            return cache
    means, stds, captions = [], [], []
    for start in range(0, count, chunk):
        batch = S.make_batch(seed, range(start, min(count, start + chunk)), outlined=outlined)
        mean, logvar = vae.encode_moments(batch.images)
        means.append(mean.half())
        stds.append(torch.exp(0.5 * logvar).half())
        captions.extend(batch.captions)
        log(f"encoding pictures: {min(count, start + chunk)}/{count}")
    cache = {"count": count, "seed": seed, "outlined": outlined, "mean": torch.cat(means), "std": torch.cat(stds),
             "ids": tokenize(captions), "captions": captions}
    save_atomic(cache, path)
    return cache


def sample_timesteps(b: int, steps: int, high_noise_share: float, generator: torch.Generator) -> torch.Tensor:
    """Uniform timesteps, except that the first ``high_noise_share`` of the batch is drawn from the
    noisier half of the schedule."""
    t = torch.randint(0, steps, (b,), generator=generator)
    high = int(round(b * high_noise_share))
    if high:
        t[:high] = torch.randint(steps // 2, steps, (high,), generator=generator)
    return t


def diffusion_loss(model: LatentDiffusion, latents: torch.Tensor, ids: torch.Tensor, generator: torch.Generator,
                   high_noise_share: float = HIGH_NOISE_SHARE) -> torch.Tensor:
    """min-SNR weighted eps-prediction loss of one batch (latents already scaled)."""
    b = latents.shape[0]
    t = sample_timesteps(b, model.alphas_cumprod.shape[0], high_noise_share, generator)
    noise = torch.randn(latents.shape, generator=generator)
    # Offset noise: a per-picture, per-channel constant in the noise. SD's schedule never
    # reaches pure noise, so without it the model never learns to set a picture's mean (the
    # background colour) from scratch, and sampling keeps whatever mean the start noise had.
    noise = noise + OFFSET_NOISE * torch.randn(latents.shape[:2] + (1, 1), generator=generator)
    a = model.alphas_cumprod[t][:, None, None, None]
    noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
    context = model.text_encoder(ids)
    pred = model.unet(noisy, t, context)
    snr = (a / (1 - a)).flatten()
    weight = snr.clamp(max=MIN_SNR_GAMMA) / snr
    return (weight * (pred - noise).square().flatten(1).mean(1)).mean()


class Trainable(nn.Module):
    """The parts that learn: the UNet and the CLIP text transformer."""

    def __init__(self, model: LatentDiffusion):
        super().__init__()
        self.unet = model.unet
        self.text = model.text_encoder.transformer


class DiffusionTrainer:
    def __init__(self, run: Path, vae_run: Path, batch: int = 64, lr: float = 1e-3, seed: int = S.TRAIN_SEED,
                 cache_size: int = 8192, eval_count: int = 64, eval_steps: int = 20, ema_decay: float = 0.995, log=print, spec=None,
                 high_noise_share: float = HIGH_NOISE_SHARE, decay_steps: int | None = None, init_from: Path | None = None):
        self.run = Path(run)
        state = load_checkpoint(self.run)
        # A resumed run keeps the autoencoder its cached latents came from, whatever --vae-run
        # says (unless that folder has gone: then the one given).
        stored = Path(state["vae_run"]) if state is not None else None
        self.vae_run = stored if stored is not None and stored.is_dir() else Path(vae_run).resolve()
        self.batch, self.lr, self.seed, self.eval_count, self.eval_steps = batch, lr, seed, eval_count, eval_steps
        vae, scale = load_autoencoder(self.vae_run)
        self.scaling_factor = scale
        self.spec = spec or demo_spec(scale)
        torch.manual_seed(0)
        self.model = LatentDiffusion(self.spec)
        self.model.first_stage_model.load_state_dict(vae.state_dict())
        self.model.first_stage_model.requires_grad_(False).eval()
        self.model.text_encoder.transformer.requires_grad_(True)
        self.trainable = Trainable(self.model)
        self.opt = torch.optim.AdamW(self.trainable.parameters(), lr=lr, weight_decay=0.0)
        self.ema = EMA(self.trainable, ema_decay)
        self.step = 0
        self.history: list[dict] = []
        self.evals: list[dict] = []
        self.high_noise_share, self.decay_steps = high_noise_share, decay_steps
        if state is not None:
            self.load_state_dict(state)
        elif init_from is not None:
            start = load_checkpoint(Path(init_from))
            if start is None or start.get("kind") != "diffusion":
                raise FileNotFoundError(f"{init_from}: no diffusion checkpoint to start from")
            self.trainable.load_state_dict({**start["trainable"], **start["ema"]})
            self.ema = EMA(self.trainable, ema_decay)
            log(f"starting from the EMA weights of {init_from} (step {start['step']})")
        self.cache = build_latent_cache(self.model.vae, self.run / "latents.pt", cache_size, seed, log=log)
        self.empty_ids = tokenize([""])[0]

    def state_dict(self) -> dict:
        return {"kind": "diffusion", "spec": self.spec, "step": self.step, "batch": self.batch, "lr": self.lr,
                "seed": self.seed, "high_noise_share": self.high_noise_share, "decay_steps": self.decay_steps, "vae_run": str(self.vae_run), "scaling_factor": self.scaling_factor,
                "trainable": self.trainable.state_dict(), "optimizer": self.opt.state_dict(), "ema": self.ema.shadow,
                "vae": self.model.vae.state_dict(), "history": self.history, "evals": self.evals}

    def load_state_dict(self, state: dict) -> None:
        self.trainable.load_state_dict(state["trainable"])
        restore_progress(self, state)
        self.high_noise_share = state.get("high_noise_share", 0.0)

    def train_step(self) -> dict[str, float]:
        g = torch.Generator().manual_seed(self.seed * 7919 + self.step)
        n = self.cache["count"]
        idx = torch.randint(0, n, (self.batch,), generator=g)
        mean, std = self.cache["mean"][idx].float(), self.cache["std"][idx].float()
        latents = (mean + std * torch.randn(mean.shape, generator=g)) * self.scaling_factor
        ids = self.cache["ids"][idx].clone()
        drop = torch.rand(self.batch, generator=g) < CAPTION_DROPOUT
        ids[drop] = self.empty_ids
        for group in self.opt.param_groups:
            group["lr"] = cosine_lr(self.lr, self.step, self.decay_steps, warmup=100)
        self.model.unet.train()
        loss = diffusion_loss(self.model, latents, ids, g, self.high_noise_share)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.trainable.parameters(), 1.0)
        self.opt.step()
        self.ema.update(self.trainable, self.step)
        return {"loss": float(loss.detach())}

    def ema_model(self) -> LatentDiffusion:
        model = copy.deepcopy(self.model)
        self.ema.copy_to(Trainable(model))
        return model.eval().requires_grad_(False)

    def evaluate(self) -> str:
        from core.training.analyser import format_scores, score
        from core.training.sampling import generate

        prompts = S.random_prompts(S.PROMPT_SEED, self.eval_count)
        images = generate(self.ema_model(), prompts, cfg_scale=7.0, steps=self.eval_steps, seed=0)
        result = score(images, prompts)
        self.evals.append({"step": self.step, **result})
        return f"{format_scores(result)} (CFG 7, {self.eval_steps} Euler steps, {len(prompts)} prompts, EMA weights)"


def load_diffusion(run: Path) -> LatentDiffusion:
    """The EMA LatentDiffusion of a diffusion run (fp32, eval mode)."""
    state = load_checkpoint(Path(run))
    if state is None or state.get("kind") != "diffusion":
        raise FileNotFoundError(f"{run}: no diffusion checkpoint (train one with python -m core.training.diffusion)")
    model = LatentDiffusion(state["spec"])
    model.first_stage_model.load_state_dict(state["vae"])
    trainable = Trainable(model)
    trainable.load_state_dict(state["trainable"])
    trainable.load_state_dict({**trainable.state_dict(), **state["ema"]})
    return model.eval().requires_grad_(False)


def main(argv=None) -> None:
    p = base_arguments(__doc__.splitlines()[0], "diffusion")
    p.add_argument("--vae-run", type=Path, default=RUNS / "autoencoder", help="the autoencoder run to encode with")
    p.add_argument("--cache-size", type=int, default=8192, help="pictures encoded once and sampled from")
    p.add_argument("--high-noise-share", type=float, default=HIGH_NOISE_SHARE,
                   help="share of each batch with timesteps from the noisier half (a new run's setting; kept on resume)")
    p.add_argument("--decay-steps", type=int, default=None,
                   help="cosine learning-rate decay to 1%% over this many steps (a new run's setting; kept on resume)")
    p.add_argument("--init-from", type=Path, default=None, help="a new run starts from this diffusion run's EMA weights")
    args = p.parse_args(argv)
    set_threads(args.threads)
    log = Logger(args.run, args.quiet)
    trainer = DiffusionTrainer(args.run, args.vae_run, batch=args.batch or 64, lr=args.lr or 1e-3,
                               cache_size=args.cache_size, log=log, high_noise_share=args.high_noise_share,
                               decay_steps=args.decay_steps, init_from=args.init_from)
    unet = sum(p.numel() for p in trainer.model.unet.parameters())
    text = sum(p.numel() for p in trainer.model.text_encoder.parameters())
    log(f"UNet {unet / 1e6:.2f}M + text encoder {text / 1e6:.2f}M params, batch {trainer.batch}, run {args.run}")
    run_from_arguments(trainer, args, log, save_every=50, eval_every=300)


if __name__ == "__main__":
    main()
