"""Train a small LoRA on the demo model that gives it a style (outlined, hollow shapes), and
save it in kohya-ss/sd-scripts' file format.

    nice -n 10 python -m core.training.lora --minutes 10     # resumable; writes models/Lora/demo-outlined.safetensors

Targets are kohya's defaults: every Linear / 1x1 conv inside the UNet's spatial transformers
(proj_in, proj_out, attn1/attn2 to_q/to_k/to_v/to_out.0, ff.net.0.proj, ff.net.2) and the
text encoder's self_attn q/k/v/out_proj and mlp fc1/fc2. Names follow kohya: the diffusers
module path with dots as underscores under ``lora_unet_`` / ``lora_te_`` (``kohya_name``
maps single-file checkpoint keys to them for any UNet depth); each module stores
``NAME.lora_down.weight`` [r, in(, 1, 1)], ``NAME.lora_up.weight`` [out, r(, 1, 1)] and
``NAME.alpha`` (0-dim); delta W = up @ down * alpha / r.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from core.models.detection import TEXT, UNET
from core.models.stable_diffusion import TEXT_INTERNAL
from core.models.unet import UNetConfig
from core.training import shapes as S
from core.training.common import DEMO_LORA, RUNS, Logger, base_arguments, load_checkpoint, run_from_arguments, set_threads

UNET_TARGET = re.compile(
    r"^model\.diffusion_model\.(input_blocks|middle_block|output_blocks)\..*\.(proj_in|proj_out|"
    r"transformer_blocks\.\d+\.(attn[12]\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.0\.proj|ff\.net\.2))$"
)
TEXT_TARGET = re.compile(r"^cond_stage_model\.transformer\..*\.(self_attn\.(q_proj|k_proj|v_proj|out_proj)|mlp\.fc[12])$")


def kohya_name(checkpoint_key: str, unet: UNetConfig) -> str:
    """Single-file weight key (``model.diffusion_model.input_blocks.1.1.proj_in.weight``) ->
    kohya LoRA module name (``lora_unet_down_blocks_0_attentions_0_proj_in``)."""
    key = checkpoint_key.removesuffix(".weight")
    if key.startswith(TEXT):
        return "lora_te_text_model_" + key[len(TEXT):].replace(".", "_")
    if not key.startswith(UNET):
        raise ValueError(f"not a UNet or text encoder key: {checkpoint_key}")
    key = key[len(UNET):]
    per_level = unet.num_res_blocks + 1
    levels = len(unet.channel_mult)
    if m := re.match(r"input_blocks\.(\d+)\.1\.(.*)", key):
        level, i = divmod(int(m.group(1)) - 1, per_level)
        path = f"down_blocks.{level}.attentions.{i}.{m.group(2)}"
    elif m := re.match(r"middle_block\.1\.(.*)", key):
        path = f"mid_block.attentions.0.{m.group(1)}"
    elif m := re.match(r"output_blocks\.(\d+)\.1\.(.*)", key):
        up, i = divmod(int(m.group(1)), per_level)
        if up >= levels:
            raise ValueError(f"output block out of range: {checkpoint_key}")
        path = f"up_blocks.{up}.attentions.{i}.{m.group(2)}"
    else:
        raise ValueError(f"not a LoRA target: {checkpoint_key}")
    return "lora_unet_" + path.replace(".", "_")


def checkpoint_key(internal_name: str) -> str:
    """Module name in LatentDiffusion -> the single-file key of its weight."""
    if internal_name.startswith(TEXT_INTERNAL):
        return TEXT + internal_name[len(TEXT_INTERNAL):] + ".weight"
    return internal_name + ".weight"


class LoRAModule(nn.Module):
    """base(x) + up(down(x)) * alpha / rank around a Linear or 1x1 Conv2d."""

    def __init__(self, base: nn.Module, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.conv = isinstance(base, nn.Conv2d)
        fan_in = base.in_channels if self.conv else base.in_features
        fan_out = base.out_channels if self.conv else base.out_features
        self.rank, self.alpha = rank, float(alpha)
        self.lora_down = nn.Parameter(torch.empty(rank, fan_in))
        nn.init.kaiming_uniform_(self.lora_down, a=math.sqrt(5))
        self.lora_up = nn.Parameter(torch.zeros(fan_out, rank))
        self.multiplier = 1.0

    def forward(self, x):
        out = self.base(x)
        scale = self.alpha / self.rank * self.multiplier
        if self.conv:
            delta = F.conv2d(F.conv2d(x, self.lora_down[:, :, None, None].to(x.dtype)), self.lora_up[:, :, None, None].to(x.dtype))
        else:
            delta = F.linear(F.linear(x, self.lora_down.to(x.dtype)), self.lora_up.to(x.dtype))
        return out + delta * scale


def inject_lora(model, rank: int = 4, alpha: float = 4.0, text: bool = True) -> dict[str, LoRAModule]:
    """Wrap every kohya target of a LatentDiffusion; returns {kohya name: LoRAModule}."""
    targets = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)) and (UNET_TARGET.match(name) or (text and TEXT_TARGET.match(name))):
            if isinstance(module, nn.Conv2d) and module.kernel_size != (1, 1):
                continue
            targets.append((name, module))
    found = {}
    for name, module in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        wrapped = LoRAModule(module, rank, alpha)
        if isinstance(parent, nn.Sequential) or attr.isdigit():
            parent[int(attr)] = wrapped
        else:
            setattr(parent, attr, wrapped)
        found[kohya_name(checkpoint_key(name), model.spec.unet)] = wrapped
    return found


def lora_state_dict(modules: dict[str, LoRAModule], dtype=torch.float16) -> dict[str, torch.Tensor]:
    out = {}
    for name, m in modules.items():
        down, up = m.lora_down.detach(), m.lora_up.detach()
        if m.conv:
            down, up = down[:, :, None, None], up[:, :, None, None]
        out[f"{name}.lora_down.weight"] = down.to(dtype).contiguous().clone()
        out[f"{name}.lora_up.weight"] = up.to(dtype).contiguous().clone()
        out[f"{name}.alpha"] = torch.tensor(m.alpha, dtype=dtype)
    return out


def save_kohya(modules: dict[str, LoRAModule], path: Path, metadata: dict | None = None) -> Path:
    from safetensors.torch import save_file

    any_module = next(iter(modules.values()))
    meta = {"ss_network_module": "networks.lora", "ss_network_dim": str(any_module.rank),
            "ss_network_alpha": repr(any_module.alpha), "ss_base_model_version": "sd_v1",
            "ss_sd_model_name": "demo-shapes", "ss_output_name": Path(path).stem,
            "ss_training_comment": "outlined (hollow) shapes style for the demo-shapes model; see models/demo/README.md"}
    meta.update(metadata or {})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(lora_state_dict(modules), str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def set_multiplier(modules: dict[str, LoRAModule], value: float) -> None:
    for m in modules.values():
        m.multiplier = value


class LoRATrainer:
    def __init__(self, run: Path, base_run: Path, rank: int = 4, alpha: float = 4.0, batch: int = 32, lr: float = 2e-3,
                 seed: int = S.TRAIN_SEED + 7, cache_size: int = 2048, eval_count: int = 32, log=print):
        from core.training.diffusion import build_latent_cache, load_diffusion, tokenize

        self.run, self.base_run = Path(run), Path(base_run)
        self.rank, self.alpha, self.batch, self.lr, self.seed, self.eval_count = rank, alpha, batch, lr, seed, eval_count
        self.model = load_diffusion(self.base_run)
        base_state = load_checkpoint(self.base_run)
        self.base_step = base_state["step"]
        self.scaling_factor = float(base_state["scaling_factor"])
        torch.manual_seed(0)
        self.modules = inject_lora(self.model, rank, alpha)
        self.params = [p for m in self.modules.values() for p in (m.lora_down, m.lora_up)]
        for p in self.params:
            p.requires_grad_(True)
        self.opt = torch.optim.AdamW(self.params, lr=lr, weight_decay=0.0)
        self.step = 0
        self.history: list[dict] = []
        self.evals: list[dict] = []
        state = load_checkpoint(self.run)
        if state is not None:
            self.load_state_dict(state)
        self.cache = build_latent_cache(self.model.vae, self.run / "latents.pt", cache_size, seed, outlined=True, log=log)
        self.empty_ids = tokenize([""])[0]

    def state_dict(self) -> dict:
        return {"kind": "lora", "step": self.step, "rank": self.rank, "alpha": self.alpha, "batch": self.batch,
                "lr": self.lr, "base_run": str(self.base_run), "base_step": self.base_step,
                "lora": {k: (m.lora_down.detach().clone(), m.lora_up.detach().clone()) for k, m in self.modules.items()},
                "optimizer": self.opt.state_dict(), "history": self.history, "evals": self.evals}

    def load_state_dict(self, state: dict) -> None:
        for k, (down, up) in state["lora"].items():
            self.modules[k].lora_down.data.copy_(down)
            self.modules[k].lora_up.data.copy_(up)
        self.opt.load_state_dict(state["optimizer"])
        self.step = state["step"]
        self.history = state.get("history", [])
        self.evals = state.get("evals", [])

    def train_step(self) -> dict[str, float]:
        from core.training.diffusion import CAPTION_DROPOUT, diffusion_loss

        g = torch.Generator().manual_seed(self.seed * 7919 + self.step)
        idx = torch.randint(0, self.cache["count"], (self.batch,), generator=g)
        mean, std = self.cache["mean"][idx].float(), self.cache["std"][idx].float()
        latents = (mean + std * torch.randn(mean.shape, generator=g)) * self.scaling_factor
        ids = self.cache["ids"][idx].clone()
        ids[torch.rand(self.batch, generator=g) < CAPTION_DROPOUT] = self.empty_ids
        loss = diffusion_loss(self.model, latents, ids, g)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"loss": float(loss.detach())}

    def evaluate(self) -> str:
        from core.training.analyser import score
        from core.training.sampling import generate

        prompts = S.random_prompts(S.PROMPT_SEED, self.eval_count)
        results = {}
        for mult in (0.0, 1.0):
            set_multiplier(self.modules, mult)
            results[mult] = score(generate(self.model, prompts, cfg_scale=7.0, steps=20, seed=0), prompts)
        set_multiplier(self.modules, 1.0)
        self.evals.append({"step": self.step, "hollowness_off": results[0.0]["hollowness"], "hollowness_on": results[1.0]["hollowness"],
                           "all_on": results[1.0]["all"]})
        return (f"hollowness without LoRA {results[0.0]['hollowness']:.2f}, with LoRA {results[1.0]['hollowness']:.2f} "
                f"(ground truth: filled 0, outlined ~0.8); all attributes right with LoRA {100 * results[1.0]['all']:.0f}%")

    def export(self, path: Path = DEMO_LORA) -> Path:
        return save_kohya(self.modules, path, {"ss_steps": str(self.step), "demo.base_steps": str(self.base_step)})


def main(argv=None) -> None:
    p = base_arguments(__doc__.splitlines()[0], "lora")
    p.add_argument("--base-run", type=Path, default=RUNS / "diffusion", help="the diffusion run to train on top of")
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--alpha", type=float, default=4.0)
    p.add_argument("--out", type=Path, default=DEMO_LORA)
    args = p.parse_args(argv)
    set_threads(args.threads)
    log = Logger(args.run, args.quiet)
    trainer = LoRATrainer(args.run, args.base_run, rank=args.rank, alpha=args.alpha, batch=args.batch or 32, lr=args.lr or 2e-3, log=log)
    log(f"LoRA rank {trainer.rank}: {len(trainer.modules)} modules, {sum(p.numel() for p in trainer.params) / 1e3:.0f}k params")
    run_from_arguments(trainer, args, log, save_every=50, eval_every=200)
    log(f"wrote {trainer.export(args.out)}")


if __name__ == "__main__":
    main()


@torch.no_grad()
def merge_kohya(model, path: Path, multiplier: float = 1.0) -> int:
    """Add a kohya LoRA file's deltas into a LatentDiffusion's weights (for measuring; the
    studio's LoRA extension does this for real). Returns the number of modules merged."""
    from core.loading import read_safetensors

    tensors, _ = read_safetensors(Path(path))
    merged = 0
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d)) or not (UNET_TARGET.match(name) or TEXT_TARGET.match(name)):
            continue
        kname = kohya_name(checkpoint_key(name), model.spec.unet)
        if f"{kname}.lora_down.weight" not in tensors:
            continue
        down = tensors[f"{kname}.lora_down.weight"].float().flatten(1)
        up = tensors[f"{kname}.lora_up.weight"].float().flatten(1)
        alpha = float(tensors[f"{kname}.alpha"]) if f"{kname}.alpha" in tensors else down.shape[0]
        delta = (up @ down) * (alpha / down.shape[0]) * multiplier
        # Summed in float32, rounded once: a bf16 weight plus a bf16-rounded delta rounds twice.
        module.weight.copy_(module.weight.float() + delta.reshape(module.weight.shape))
        merged += 1
    return merged
