"""Generation parameters: one plain dataclass shared by the command line, the UI and the API."""
from __future__ import annotations

from dataclasses import dataclass, field

from core.errors import TOO_LARGE, EngineError

MAX_SIZE = 8192
MAX_STEPS = 500
# Pixels one batch may hold (batch_size x width x height, also at the hires size): as many as
# one picture of the largest size, so a batch never needs more memory than that picture.
MAX_BATCH_PIXELS = MAX_SIZE * MAX_SIZE
# A prompt (each of prompt, negative prompt, hires prompts, after styles were applied), in UTF-8
# bytes: far beyond what a text encoder uses (a 75-token chunk is ~400 characters), small
# enough that parsing and encoding it takes seconds, not minutes.
MAX_PROMPT_BYTES = 64 * 1024
PROMPT_FIELDS = ("prompt", "negative_prompt", "hr_prompt", "hr_negative_prompt")


def check_prompt_length(name: str, text, limit: int = MAX_PROMPT_BYTES) -> None:
    """Raise EngineError when ``text`` (a prompt field called ``name``) is over ``limit`` UTF-8 bytes."""
    if isinstance(text, str) and len(text) > limit // 4:  # a character is 4 bytes at most
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > limit:
            raise EngineError(f"{size} bytes long, over the limit of {limit} bytes ({limit // 1024} KiB)", name, TOO_LARGE)


@dataclass
class GenerationParams:
    prompt: str = ""
    negative_prompt: str = ""
    steps: int = 20
    cfg_scale: float = 7.0
    # FLUX.1 dev's guidance input (Forge's "Distilled CFG Scale"); other families ignore it.
    distilled_cfg_scale: float = 3.5
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
    # img2img and inpainting (A1111's names)
    denoising_strength: float = 0.75
    resize_mode: int = 0  # 0 just resize, 1 crop and resize, 2 resize and fill, 3 latent upscale
    mask_blur: int = 4
    inpainting_fill: int = 1  # masked content: 0 fill, 1 original, 2 latent noise, 3 latent nothing
    inpaint_full_res: bool = False  # inpaint area: False whole picture, True only masked
    inpaint_full_res_padding: int = 32
    inpainting_mask_invert: int = 0  # 0 inpaint masked, 1 inpaint not masked
    inpainting_mask_weight: float = 1.0  # inpainting checkpoints: conditional mask weight
    # hires fix (txt2img)
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_upscaler: str = "Latent"
    hr_second_pass_steps: int = 0  # 0 = the same number of steps as the first pass
    hr_resize_x: int = 0  # a target size instead of hr_scale (0 = use the scale)
    hr_resize_y: int = 0
    hr_sampler_name: str = ""  # "" = the first pass's
    hr_scheduler: str = ""
    hr_prompt: str = ""  # "" = the first pass's prompt
    hr_negative_prompt: str = ""
    batch_size: int = 1  # images made together on the device
    batch_count: int = 1  # batches made one after another
    clip_skip: int = 1
    checkpoint: str | None = None  # name in the checkpoint folder, or a path; None = the loaded one
    # SDXL refiner (A1111's names): a second checkpoint takes over once this fraction of the
    # denoising is done (by the current noise level's timestep); None or "" = no refiner.
    refiner_checkpoint: str | None = None
    refiner_switch_at: float = 0.8
    # Seamless tiling (A1111's "Tiling"): the picture's edges continue each other, so copies of
    # it laid side by side show no seam (core/pipelines/seamless.py).
    tiling: bool = False
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        """Raise EngineError naming the first bad field."""
        from core.conditioning import EMPHASIS_MODES
        from core.sampling.samplers import resolve_sampler_name
        from core.sampling.schedules import resolve_schedule_name

        def bad(name: str, why: str, kind: str = "invalid"):
            raise EngineError(why, name, kind)

        for name in PROMPT_FIELDS:  # first: a huge prompt is refused before anything reads it
            value = getattr(self, name)
            if not isinstance(value, str):
                bad(name, "must be text")
            check_prompt_length(name, value)
        for name in ("steps", "seed", "subseed", "width", "height", "batch_size", "batch_count", "clip_skip",
                     "seed_resize_from_w", "seed_resize_from_h", "hr_second_pass_steps", "hr_resize_x", "hr_resize_y"):
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
        if isinstance(self.distilled_cfg_scale, bool) or not isinstance(self.distilled_cfg_scale, (int, float)) \
                or not 0 <= self.distilled_cfg_scale <= 30:
            bad("distilled_cfg_scale", f"must be a number between 0 and 30, got {self.distilled_cfg_scale!r}")
        if self.seed < -1 or self.seed >= 2**32:
            bad("seed", f"must be -1 (random) or between 0 and {2**32 - 1}, got {self.seed}")
        if not 1 <= self.batch_size <= 64:
            bad("batch_size", f"must be between 1 and 64, got {self.batch_size}")
        if not 1 <= self.batch_count <= 1000:
            bad("batch_count", f"must be between 1 and 1000, got {self.batch_count}")
        if not 1 <= self.clip_skip <= 12:
            bad("clip_skip", f"must be between 1 and 12, got {self.clip_skip}")
        self._check_batch_pixels("batch_size", self.width, self.height)
        for name in ("seed_resize_from_w", "seed_resize_from_h"):
            # The seed's noise is drawn at this size (and a variation seed's too): bounded as width/height.
            value = getattr(self, name)
            if value not in (-1, 0) and not 8 <= value <= MAX_SIZE:
                bad(name, f"must be 0 (off) or between 8 and {MAX_SIZE}, got {value}")
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
        if not isinstance(self.denoising_strength, (int, float)) or not 0 <= self.denoising_strength <= 1:
            bad("denoising_strength", f"must be between 0 and 1, got {self.denoising_strength!r}")
        if self.resize_mode not in (0, 1, 2, 3):
            bad("resize_mode", f"must be 0, 1, 2 or 3, got {self.resize_mode!r}")
        if self.inpainting_fill not in (0, 1, 2, 3):
            bad("inpainting_fill", f"must be 0 (fill), 1 (original), 2 (latent noise) or 3 (latent nothing), got {self.inpainting_fill!r}")
        if not isinstance(self.mask_blur, int) or not 0 <= self.mask_blur <= 256:
            bad("mask_blur", f"must be a whole number between 0 and 256, got {self.mask_blur!r}")
        if not isinstance(self.inpaint_full_res_padding, int) or not 0 <= self.inpaint_full_res_padding <= 1024:
            bad("inpaint_full_res_padding", f"must be between 0 and 1024, got {self.inpaint_full_res_padding!r}")
        if not 0 <= self.inpainting_mask_weight <= 1:
            bad("inpainting_mask_weight", f"must be between 0 and 1, got {self.inpainting_mask_weight!r}")
        if self.enable_hr:
            from core.pipelines.hires import hires_size

            if isinstance(self.hr_scale, bool) or not isinstance(self.hr_scale, (int, float)) or not 1 <= self.hr_scale <= 8:
                bad("hr_scale", f"must be between 1 and 8, got {self.hr_scale!r}")
            if not 0 <= self.hr_second_pass_steps <= MAX_STEPS:
                bad("hr_second_pass_steps", f"must be between 0 and {MAX_STEPS}, got {self.hr_second_pass_steps}")
            for name in ("hr_resize_x", "hr_resize_y"):
                value = getattr(self, name)
                if value and (value % 8 or not 8 <= value <= MAX_SIZE):
                    bad(name, f"must be 0 or a multiple of 8 up to {MAX_SIZE}, got {value}")
            # The second pass works at the hires size: the same limits as width and height.
            # Given one of hr_resize_x/y, the other side follows the aspect ratio.
            width, height = hires_size(self)
            source = "hr_resize_x" if self.hr_resize_x else "hr_resize_y" if self.hr_resize_y else "hr_scale"
            if max(width, height) > MAX_SIZE:
                bad(source, f"the hires size {width}x{height} is over the limit of {MAX_SIZE}x{MAX_SIZE}", TOO_LARGE)
            self._check_batch_pixels("batch_size", width, height, " at the hires size")
            # Their own names in the error: "sampler: unknown" would point at the first pass.
            for name, resolve in (("hr_sampler_name", resolve_sampler_name), ("hr_scheduler", resolve_schedule_name)):
                if getattr(self, name):
                    try:
                        resolve(getattr(self, name))
                    except EngineError as e:
                        raise e.renamed(name) from None
        if not isinstance(self.refiner_switch_at, (int, float)) or not 0 <= self.refiner_switch_at <= 1:
            bad("refiner_switch_at", f"must be between 0 and 1, got {self.refiner_switch_at!r}")
        if self.emphasis not in EMPHASIS_MODES:
            bad("emphasis", f"must be one of {', '.join(EMPHASIS_MODES)}, got {self.emphasis!r}")
        if not isinstance(self.tiling, bool):
            bad("tiling", f"must be true or false, got {self.tiling!r}")

    def _check_batch_pixels(self, name: str, width: int, height: int, where: str = "") -> None:
        pixels = self.batch_size * width * height
        if pixels > MAX_BATCH_PIXELS:
            raise EngineError(f"{self.batch_size} pictures of {width}x{height}{where} are {pixels} pixels, "
                              f"over the limit of {MAX_BATCH_PIXELS} pixels per batch ({MAX_SIZE}x{MAX_SIZE})", name, TOO_LARGE)
