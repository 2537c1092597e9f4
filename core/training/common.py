"""What the demo trainers share: the demo architecture, resumable checkpoints, progress lines.

A run is a folder (``training-runs/NAME``, gitignored) holding ``checkpoint.pt`` (model,
optimiser, EMA, step, history) and ``log.txt``. Every trainer's data and noise at step k
depend only on (seed, k), so a run stopped anywhere and resumed from its last checkpoint
continues as if it had not stopped (apart from the steps after the checkpoint, redone).
"""
from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import torch

from core.models.clip import TextEncoderConfig
from core.models.detection import SD1, ModelSpec
from core.models.unet import UNetConfig
from core.models.vae import VAEConfig

ROOT = Path(__file__).resolve().parents[2]
RUNS = ROOT / "training-runs"
DEMO_CHECKPOINT = ROOT / "models" / "Stable-diffusion" / "demo-shapes.safetensors"
DEMO_LORA = ROOT / "models" / "Lora" / "demo-outlined.safetensors"

# GroupNorm groups for both networks (metadata ``unet_norm_groups``/``vae_norm_groups``): with
# SD's 32 groups a 32-channel level normalises each channel alone, which erases a flat region's
# absolute value; the first runs could not reproduce background colours. 8 groups keep 4+
# channels per group, so colour survives as the direction within a group.
DEMO_NORM_GROUPS = 8
# f=4: 64x64 pictures -> 16x16x4 latents.
DEMO_VAE = VAEConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=4, embed_dim=4, norm_groups=DEMO_NORM_GROUPS)
# 16x16 -> 8x8 -> 4x4; cross-attention at 8x8, 4x4 and in the middle (global context at 4x4).
DEMO_UNET_HEADS = 4
DEMO_UNET = UNetConfig(
    model_channels=32, channel_mult=(1, 2, 4), num_res_blocks=1, transformer_depth=(0, 1, 1),
    transformer_depth_middle=1, context_dim=128, num_heads=DEMO_UNET_HEADS, norm_groups=DEMO_NORM_GROUPS,
)
DEMO_TEXT = TextEncoderConfig(hidden_size=128, intermediate_size=512, num_layers=3)


def demo_spec(scaling_factor: float = 1.0, unet: UNetConfig = DEMO_UNET, vae: VAEConfig = DEMO_VAE,
              text: TextEncoderConfig = DEMO_TEXT) -> ModelSpec:
    from dataclasses import replace

    return ModelSpec(family=SD1, unet=unet, vae=replace(vae, scaling_factor=scaling_factor), text=text)


LR_FLOOR = 0.01


def cosine_lr(lr: float, step: int, decay_steps: int | None, warmup: int = 50) -> float:
    """Linear warm-up over ``warmup`` steps, then a cosine from ``lr`` down to ``LR_FLOOR * lr`` at
    ``decay_steps`` (flat after it; constant when ``decay_steps`` is None). A decaying rate is
    what lets the last steps settle on sharp edges and exact positions."""
    scale = min(1.0, (step + 1) / warmup)
    if decay_steps:
        progress = min(1.0, step / decay_steps)
        scale *= LR_FLOOR + (1 - LR_FLOOR) * 0.5 * (1 + math.cos(math.pi * progress))
    return lr * scale


def set_threads(threads: int) -> None:
    torch.set_num_threads(max(1, threads))
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass


def save_atomic(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(run: Path) -> dict | None:
    path = Path(run) / "checkpoint.pt"
    if not path.is_file():
        return None
    # weights_only: a checkpoint is data. Our own config dataclasses are the only classes allowed in.
    from core.models.clip import TextEncoderConfig
    from core.models.detection import ModelSpec
    from core.models.unet import UNetConfig
    from core.models.vae import VAEConfig

    with torch.serialization.safe_globals([VAEConfig, UNetConfig, TextEncoderConfig, ModelSpec]):
        return torch.load(path, map_location="cpu", weights_only=True)


def restore_progress(trainer, state: dict) -> None:
    """What every trainer takes back from its checkpoint alike (after its own weights): the
    optimizer's moments, the EMA weights, the step, the learning-rate decay, the logged history
    and evaluations."""
    trainer.opt.load_state_dict(state["optimizer"])
    trainer.ema.shadow = state["ema"]
    trainer.step = state["step"]
    trainer.decay_steps = state.get("decay_steps")
    trainer.history = state.get("history", [])
    trainer.evals = state.get("evals", [])


class Logger:
    def __init__(self, run: Path, quiet: bool = False):
        self.path = Path(run) / "log.txt"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.quiet = quiet

    def __call__(self, message: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {message}"
        with open(self.path, "a") as f:
            f.write(line + "\n")
        if not self.quiet:
            print(line, flush=True)


class EMA:
    """Exponential moving average of parameters, warming up as min(decay, (1+n)/(10+n))."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for k, v in module.state_dict().items():
            if k in self.shadow:
                self.shadow[k].mul_(d).add_(v.detach(), alpha=1 - d)

    def copy_to(self, module: torch.nn.Module) -> None:
        module.load_state_dict({**module.state_dict(), **self.shadow})


def base_arguments(description: str, default_run: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--run", type=Path, default=RUNS / default_run, help="run folder (resumed if it holds a checkpoint)")
    p.add_argument("--steps", type=int, default=None, help="stop at this total step count")
    p.add_argument("--minutes", type=float, default=None, help="stop (with a checkpoint) after this much wall time")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--save-every", type=int, default=None, help="checkpoint every N steps")
    p.add_argument("--eval-every", type=int, default=None, help="measure quality every N steps (0: never)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: on a shared CPU more threads spin and slow down)")
    p.add_argument("--quiet", action="store_true")
    return p


class Clock:
    """Steps per second and an ETA, for progress lines."""

    def __init__(self, minutes: float | None):
        self.start = time.monotonic()
        self.deadline = self.start + minutes * 60 if minutes else None
        self.last = self.start

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def elapsed(self) -> float:
        return time.monotonic() - self.start


def _stop_on_signals() -> None:
    """SIGTERM (kill PID) and SIGINT stop a run with a checkpoint: both raise KeyboardInterrupt.
    (A background job started by a shell ignores SIGINT unless the handler is put back.)"""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def run_loop(trainer, run: Path, *, steps: int | None, minutes: float | None, save_every: int, eval_every: int,
             log: Logger, log_every: int = 10) -> int:
    """The loop every trainer shares. ``trainer`` has ``step`` (steps done), ``train_step()``
    -> {name: float}, ``evaluate()`` -> str, ``state_dict()``. Checkpoints every ``save_every``
    steps, at the end, on the time limit and on Ctrl-C. Returns the step reached."""
    clock = Clock(minutes)
    target = steps if steps is not None else trainer.step + 10**9
    running: dict[str, float] = {}
    count = 0
    start_step = trainer.step
    path = Path(run) / "checkpoint.pt"

    def save():
        save_atomic(trainer.state_dict(), path)

    _stop_on_signals()
    log(f"start at step {trainer.step}" + (f", until step {target}" if steps is not None else "")
        + (f", for {minutes:g} min" if minutes else ""))
    try:
        while trainer.step < target and not clock.out_of_time():
            losses = trainer.train_step()
            trainer.step += 1
            count += 1
            for k, v in losses.items():
                running[k] = running.get(k, 0.0) + v
            if trainer.step % log_every == 0 or trainer.step == target:
                rate = (trainer.step - start_step) / max(clock.elapsed(), 1e-9)
                eta = f", ETA {(target - trainer.step) / rate / 60:.1f} min" if steps is not None and rate > 0 else ""
                text = " ".join(f"{k} {v / count:.4f}" for k, v in running.items())
                log(f"step {trainer.step} {text} ({rate:.2f} steps/s{eta})")
                trainer.history.append({"step": trainer.step, **{k: v / count for k, v in running.items()}})
                running, count = {}, 0
            if save_every and trainer.step % save_every == 0:
                save()
                log(f"checkpoint at step {trainer.step}")
            if eval_every and trainer.step % eval_every == 0:
                log(f"eval at step {trainer.step}: {trainer.evaluate()}")
    except KeyboardInterrupt:
        save()
        log(f"interrupted: checkpoint at step {trainer.step}")
        raise
    save()
    log(f"stopped at step {trainer.step}: checkpoint saved")
    return trainer.step


def run_from_arguments(trainer, args: argparse.Namespace, log: Logger, *, save_every: int, eval_every: int) -> None:
    """:func:`run_loop` as the command line asks (``--steps``, ``--minutes``, ``--save-every``,
    ``--eval-every`` over the trainer's defaults); Ctrl-C exits with status 130 once the
    checkpoint is written."""
    try:
        run_loop(trainer, args.run, steps=args.steps, minutes=args.minutes, save_every=args.save_every or save_every,
                 eval_every=eval_every if args.eval_every is None else args.eval_every, log=log)
    except KeyboardInterrupt:
        raise SystemExit(130)
