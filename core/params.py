"""Generation parameters: one plain dataclass shared by the command line, the UI and the API."""
from __future__ import annotations

from dataclasses import dataclass, field

from core.errors import EngineError

MAX_SIZE = 8192
MAX_STEPS = 500


@dataclass
class GenerationParams:
    prompt: str = ""
    negative_prompt: str = ""
    steps: int = 20
    cfg_scale: float = 7.0
    seed: int = -1  # -1: a random seed; image i of a run gets seed + i
    width: int = 512
    height: int = 512
    sampler: str = "Euler"  # A1111's names; old combined ones ("DPM++ 2M Karras") are accepted
    scheduler: str = "Automatic"  # the schedule type; Automatic = the sampler's default
    eta: float | None = None  # ancestral/SDE noise amount; None = the sampler's default
    s_noise: float | None = None
    subseed: int = -1  # variation seed (-1: random when subseed_strength > 0)
    subseed_strength: float = 0.0
    seed_resize_from_w: int = 0  # "resize seed from width/height": 0 = off
    seed_resize_from_h: int = 0
    emphasis: str = "Original"  # how (word:1.2) weights apply: Original, No norm, None
    batch_size: int = 1  # images made together on the device
    batch_count: int = 1  # batches made one after another
    clip_skip: int = 1
    checkpoint: str | None = None  # name in the checkpoint folder, or a path; None = the loaded one
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        """Raise EngineError naming the first bad field."""
        from core.conditioning import EMPHASIS_MODES
        from core.sampling.samplers import resolve_sampler_name
        from core.sampling.schedules import resolve_schedule_name

        def bad(name: str, why: str):
            raise EngineError(f"{name}: {why}")

        for name in ("steps", "seed", "subseed", "width", "height", "batch_size", "batch_count", "clip_skip",
                     "seed_resize_from_w", "seed_resize_from_h"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                bad(name, f"must be a whole number, got {value!r}")
        if not 1 <= self.steps <= MAX_STEPS:
            bad("steps", f"must be between 1 and {MAX_STEPS}, got {self.steps}")
        for name in ("width", "height"):
            value = getattr(self, name)
            if value % 8 or not 8 <= value <= MAX_SIZE:
                bad(name, f"must be a multiple of 8 between 8 and {MAX_SIZE}, got {value}")
        if not isinstance(self.cfg_scale, (int, float)) or not 0 <= self.cfg_scale <= 100:
            bad("cfg_scale", f"must be a number between 0 and 100, got {self.cfg_scale!r}")
        if self.seed < -1 or self.seed >= 2**32:
            bad("seed", f"must be -1 (random) or between 0 and {2**32 - 1}, got {self.seed}")
        if not 1 <= self.batch_size <= 64:
            bad("batch_size", f"must be between 1 and 64, got {self.batch_size}")
        if not 1 <= self.batch_count <= 1000:
            bad("batch_count", f"must be between 1 and 1000, got {self.batch_count}")
        if not 1 <= self.clip_skip <= 12:
            bad("clip_skip", f"must be between 1 and 12, got {self.clip_skip}")
        resolve_sampler_name(self.sampler)
        resolve_schedule_name(self.scheduler)
        if self.subseed < -1 or self.subseed >= 2**32:
            bad("subseed", f"must be -1 (random) or between 0 and {2**32 - 1}, got {self.subseed}")
        if not isinstance(self.subseed_strength, (int, float)) or not 0 <= self.subseed_strength <= 1:
            bad("subseed_strength", f"must be between 0 and 1, got {self.subseed_strength!r}")
        for name in ("eta", "s_noise"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, float)) or not 0 <= value <= 10):
                bad(name, f"must be a number between 0 and 10, got {value!r}")
        if self.emphasis not in EMPHASIS_MODES:
            bad("emphasis", f"must be one of {', '.join(EMPHASIS_MODES)}, got {self.emphasis!r}")
        if not isinstance(self.prompt, str) or not isinstance(self.negative_prompt, str):
            bad("prompt", "must be text")
