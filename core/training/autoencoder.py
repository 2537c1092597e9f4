"""Train the demo's KL autoencoder (f=4: 64x64x3 <-> 16x16x4).

    nice -n 10 python -m core.training.autoencoder --minutes 10     # resumable; run again to continue

Loss: L1 reconstruction with the shape's pixels weighted x10 (a small shape is a few percent of
the picture, and it is what the captions talk about) and the pixels on a colour edge weighted
x10 more (a blurred edge is what turns a small square into a medium circle for the analyser),
plus a cheap patch term (L1 between the images' horizontal and vertical differences: keeps
edges sharp), plus KL to N(0, 1) with a small weight. A share of each batch is drawn in the
LoRA's outlined style (``--outlined-share``), so the autoencoder can carry thin rings; the
learning rate follows a cosine from ``--lr`` down to 1% of it over ``--decay-steps``. The
latent scaling factor (1 / std of the latents) is measured on held-out pictures and kept in
the checkpoint; the export writes it to ``latent_scale_factor``.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from core.models.vae import AutoencoderKL, VAEConfig
from core.training import shapes as S
from core.training.common import (DEMO_VAE, EMA, Logger, base_arguments, cosine_lr, load_checkpoint, restore_progress,
                                  run_from_arguments, set_threads)

SHAPE_WEIGHT = 10.0
EDGE_WEIGHT = 10.0
OUTLINED_SHARE = 0.25
PATCH_WEIGHT = 1.0
KL_WEIGHT = 1e-5
LOGVAR_INIT = -8.0


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [-1, 1]."""
    mse = ((a.clamp(-1, 1) - b) / 2).square().flatten(1).mean(1)
    return -10 * torch.log10(mse.clamp_min(1e-10))


def patch_term(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    dx = lambda t: t[..., :, 1:] - t[..., :, :-1]  # noqa: E731
    dy = lambda t: t[..., 1:, :] - t[..., :-1, :]  # noqa: E731
    return (dx(x) - dx(y)).abs().mean() + (dy(x) - dy(y)).abs().mean()


def edge_band(images: torch.Tensor) -> torch.Tensor:
    """1 where a pixel's 3x3 neighbourhood holds more than one colour (both sides of every edge of
    these flat pictures), else 0; (B, 1, H, W)."""
    pool = torch.nn.functional.max_pool2d
    spread = pool(images, 3, 1, 1) + pool(-images, 3, 1, 1)  # local max - local min, per channel
    return (spread.amax(1, keepdim=True) > 1e-3).float()


def mixed_batch(seed: int, indices: np.ndarray, outlined_share: float) -> S.Batch:
    """The scenes at ``indices``, the first ``outlined_share`` of them drawn outlined."""
    hollow = int(round(len(indices) * outlined_share))
    if hollow == 0:
        return S.make_batch(seed, indices)
    parts = [S.make_batch(seed, indices[:hollow], outlined=True), S.make_batch(seed, indices[hollow:])]
    return S.Batch(images=torch.cat([p.images for p in parts]), masks=torch.cat([p.masks for p in parts]),
                   captions=parts[0].captions + parts[1].captions, scenes=parts[0].scenes + parts[1].scenes)


def autoencoder_loss(vae: AutoencoderKL, images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
    mean, logvar = vae.encode_moments(images)
    z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=generator)
    recon = vae.decoder(vae.post_quant_conv(z))
    weight = 1.0 + (SHAPE_WEIGHT - 1.0) * masks + EDGE_WEIGHT * edge_band(images)
    rec = ((recon - images).abs() * weight).mean() / weight.mean()
    patch = patch_term(recon, images)
    kl = 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).mean()
    total = rec + PATCH_WEIGHT * patch + KL_WEIGHT * kl
    return {"loss": total, "rec": rec, "patch": patch, "kl": kl}


@torch.no_grad()
def measure_scaling_factor(vae: AutoencoderKL, count: int = 256) -> float:
    batch = S.make_batch(S.HELDOUT_SEED, range(count))
    mean, _ = vae.encode_moments(batch.images)
    return float(1.0 / mean.float().std())


@torch.no_grad()
def evaluate_autoencoder(vae: AutoencoderKL, count: int = 256, seed: int = S.HELDOUT_SEED, outlined: bool = False) -> dict[str, float]:
    """PSNR (dB) on held-out pictures, the share whose reconstruction the analyser reads exactly
    like the original (every attribute right), and the analyser's scores of the reconstructions
    (``rec_hollowness``: how hollow the shapes come back; 0.84 for the outlined originals)."""
    from core.training.analyser import score

    was_training = vae.training
    vae.eval()
    psnrs, images, prompts = [], [], []
    for start in range(0, count, 64):
        batch = S.make_batch(seed, range(start, min(count, start + 64)), outlined=outlined)
        mean, _ = vae.encode_moments(batch.images)
        recon = vae.decoder(vae.post_quant_conv(mean)).float()
        psnrs.append(psnr(recon, batch.images))
        images.extend(((recon.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy())
        prompts.extend(batch.captions)
    vae.train(was_training)
    scores = score(images, prompts)
    return {"psnr": float(torch.cat(psnrs).mean()), "recognisable": scores["all"], **{f"rec_{k}": v for k, v in scores.items()}}


class AutoencoderTrainer:
    def __init__(self, run: Path, config: VAEConfig = DEMO_VAE, batch: int = 16, lr: float = 1e-3, seed: int = S.TRAIN_SEED,
                 eval_count: int = 256, decoder_only: bool = False, outlined_share: float = OUTLINED_SHARE,
                 decay_steps: int | None = None, init_from: Path | None = None):
        self.run = Path(run)
        state = load_checkpoint(self.run)
        self.config = config = state["config"] if state is not None else config  # a resumed run keeps its architecture
        self.batch = batch
        self.lr = lr
        self.seed = seed
        self.eval_count = eval_count
        torch.manual_seed(0)
        self.vae = AutoencoderKL(config)
        # Start with a narrow posterior (std ~0.02, not 1): with the KL weight this small the
        # posterior ends up narrow anyway, and starting wide, the sampling noise drowned the
        # latents for the first few hundred steps (PSNR 11.6 dB at step 200 against 13.7).
        with torch.no_grad():
            self.vae.quant_conv.bias[config.embed_dim:].fill_(LOGVAR_INIT)
        self.opt = torch.optim.Adam(self.vae.parameters(), lr=lr)
        self.ema = EMA(self.vae, 0.999)
        self.step = 0
        self.history: list[dict] = []
        self.evals: list[dict] = []
        self.decoder_only = False
        self.outlined_share = outlined_share
        self.decay_steps = decay_steps
        self.phase_start = 0  # the step the learning-rate schedule counts from (a decoder-only phase restarts it)
        if state is not None:
            self.load_state_dict(state)
        elif init_from is not None:
            # Fine-tune another run's (EMA) autoencoder: its latent space, which a UNet may
            # already know, moves less than a fresh one would.
            start, _ = load_autoencoder(init_from)
            self.vae.load_state_dict(start.state_dict())
            self.ema = EMA(self.vae, 0.999)
        if decoder_only and not self.decoder_only:
            self.freeze_encoder()
            # A new phase: warm up and decay again from here (over --decay-steps, if given).
            self.phase_start, self.decay_steps = self.step, decay_steps

    def freeze_encoder(self) -> None:
        """From here on train only the decoder, starting from the EMA weights: the encoder (and
        so the latents a UNet is being trained on) stays exactly as it is."""
        self.vae.load_state_dict({**self.vae.state_dict(), **self.ema.shadow})
        for part in (self.vae.encoder, self.vae.quant_conv):
            part.requires_grad_(False)
        self.opt = torch.optim.Adam([p for p in self.vae.parameters() if p.requires_grad], lr=self.lr)
        self.decoder_only = True

    def state_dict(self) -> dict:
        return {"kind": "autoencoder", "config": self.config, "step": self.step, "decoder_only": self.decoder_only, "batch": self.batch, "lr": self.lr,
                "seed": self.seed, "outlined_share": self.outlined_share, "decay_steps": self.decay_steps, "phase_start": self.phase_start, "vae": self.vae.state_dict(), "optimizer": self.opt.state_dict(),
                "ema": self.ema.shadow, "history": self.history, "evals": self.evals,
                "scaling_factor": self.scaling_factor()}

    def load_state_dict(self, state: dict) -> None:
        self.vae.load_state_dict(state["vae"])
        if state.get("decoder_only"):
            self.ema.shadow = state["ema"]
            self.freeze_encoder()
            self.vae.load_state_dict(state["vae"])
        restore_progress(self, state)
        self.outlined_share = state.get("outlined_share", 0.0)
        self.phase_start = state.get("phase_start", 0)

    def ema_model(self) -> AutoencoderKL:
        model = AutoencoderKL(self.config)
        model.load_state_dict(self.vae.state_dict())
        self.ema.copy_to(model)
        return model.eval()

    def scaling_factor(self) -> float:
        return measure_scaling_factor(self.ema_model(), 64)

    def train_step(self) -> dict[str, float]:
        # Data and noise of step k depend only on (seed, k): resuming repeats nothing.
        indices = np.arange(self.step * self.batch, (self.step + 1) * self.batch)
        batch = mixed_batch(self.seed, indices, self.outlined_share)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.step)
        for group in self.opt.param_groups:
            group["lr"] = cosine_lr(self.lr, self.step - self.phase_start, self.decay_steps)
        losses = autoencoder_loss(self.vae, batch.images, batch.masks, generator)
        self.opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_([p for p in self.vae.parameters() if p.requires_grad], 1.0)
        self.opt.step()
        self.ema.update(self.vae, self.step)
        return {k: float(v.detach()) for k, v in losses.items()}

    def evaluate(self) -> str:
        model = self.ema_model()
        result = evaluate_autoencoder(model, self.eval_count)
        hollow = evaluate_autoencoder(model, min(64, self.eval_count), outlined=True)
        result.update({f"outlined_{k}": v for k, v in hollow.items()})
        self.evals.append({"step": self.step, **result})
        return (f"PSNR {result['psnr']:.2f} dB, recognisable {100 * result['recognisable']:.1f}% "
                f"(shape {100 * result['rec_shape']:.0f}%, size {100 * result['rec_size']:.0f}%); outlined: PSNR "
                f"{hollow['psnr']:.2f} dB, hollowness {hollow['rec_hollowness']:.2f} (EMA weights)")


def load_autoencoder(run: Path) -> tuple[AutoencoderKL, float]:
    """The EMA autoencoder of a run and its latent scaling factor."""
    state = load_checkpoint(Path(run))
    if state is None or state.get("kind") != "autoencoder":
        raise FileNotFoundError(f"{run}: no autoencoder checkpoint (train one with python -m core.training.autoencoder)")
    vae = AutoencoderKL(state["config"])
    vae.load_state_dict(state["vae"])
    vae.load_state_dict({**vae.state_dict(), **state["ema"]})
    return vae.eval().requires_grad_(False), float(state["scaling_factor"])


def main(argv=None) -> None:
    p = base_arguments(__doc__.splitlines()[0], "autoencoder")
    p.add_argument("--decoder-only", action="store_true",
                   help="freeze the encoder (latents stay fixed for a UNet being trained) and refine the decoder")
    p.add_argument("--outlined-share", type=float, default=OUTLINED_SHARE,
                   help="share of each batch drawn in the outlined (LoRA) style (a new run's setting; kept on resume)")
    p.add_argument("--decay-steps", type=int, default=None,
                   help="cosine learning-rate decay to 1%% over this many steps (a new run's setting; kept on resume)")
    p.add_argument("--res-blocks", type=int, default=DEMO_VAE.num_res_blocks, help="res blocks per level (a new run's setting)")
    p.add_argument("--init-from", type=Path, default=None, help="a new run starts from this autoencoder run's EMA weights")
    args = p.parse_args(argv)
    set_threads(args.threads)
    config = replace(DEMO_VAE, num_res_blocks=args.res_blocks)
    trainer = AutoencoderTrainer(args.run, config=config, batch=args.batch or 16, lr=args.lr or 1e-3, decoder_only=args.decoder_only,
                                 outlined_share=args.outlined_share, decay_steps=args.decay_steps, init_from=args.init_from)
    log = Logger(args.run, args.quiet)
    params = sum(p.numel() for p in trainer.vae.parameters())
    log(f"autoencoder {params / 1e6:.2f}M params, batch {trainer.batch}, run {args.run}")
    run_from_arguments(trainer, args, log, save_every=100, eval_every=200)
    log(f"final: {trainer.evaluate()}; latent scaling factor {trainer.scaling_factor():.4f}")


if __name__ == "__main__":
    main()
