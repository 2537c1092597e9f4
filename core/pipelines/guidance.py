"""Prompt and negative prompt -> the guided denoiser that samplers call.

Applies the prompt language: extra-network tags are taken out (extensions handle them),
``AND`` splits the prompt into weighted sub-prompts, prompt editing and alternation become
per-step schedules, and each scheduled text is encoded with emphasis and chunking.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from core.conditioning import TextConditioner
from core.prompts.parser import extract_extra_networks, get_schedules, split_and
from core.sampling.denoiser import CFGDenoiser, ScheduledContext


@dataclass
class PreparedPrompt:
    """The prompt as the sampler sees it, plus what was taken out of it."""

    positive: list[tuple[list[tuple[int, str]], float]]  # sub-prompts: (schedule, weight)
    negative: list[tuple[int, str]]
    extra_networks: list = field(default_factory=list)


def prepare_prompt(prompt: str, negative_prompt: str, steps: int) -> PreparedPrompt:
    prompt, tags = extract_extra_networks(prompt)
    negative_prompt, negative_tags = extract_extra_networks(negative_prompt)
    parts = split_and(prompt)
    schedules = get_schedules([p.text for p in parts] + [negative_prompt], steps)
    positive = [([(s.end_at_step, s.text) for s in schedule], part.weight) for part, schedule in zip(parts, schedules)]
    negative = [(s.end_at_step, s.text) for s in schedules[-1]]
    return PreparedPrompt(positive=positive, negative=negative, extra_networks=tags + negative_tags)


def build_guided_denoiser(
    denoiser, conditioner: TextConditioner, prepared: PreparedPrompt, cfg_scale: float,
    image_size: tuple[int, int] | None = None,
) -> CFGDenoiser:
    """``image_size`` (height, width): SDXL's size conditioning (the conditioner's ``finish``
    turns an encoded text into context + added vector); ignored by SD 1.x/2.x."""
    positive_texts = {text for schedule, _ in prepared.positive for _, text in schedule}
    negative_texts = {text for _, text in prepared.negative}
    encoded = {text: conditioner.encode(text) for text in positive_texts | negative_texts}
    finish = getattr(conditioner, "finish", None)
    negatives = {text: encoded[text] for text in negative_texts}
    if getattr(conditioner, "zero_empty_negative", False) and all(text == "" for text in negative_texts):
        # SDXL: an empty negative prompt is zeros, context and pooled (A1111, sgm, diffusers).
        negatives = {text: conditioner.zeros_like(e) for text, e in negatives.items()}
    length = max(e.shape[0] for e in [*encoded.values(), *negatives.values()])

    def final(e, negative: bool):
        e = conditioner.pad_to(e, length)
        return finish(e, image_size, negative) if finish is not None else e

    def scheduled(schedule, negative: bool):
        table = negatives if negative else encoded
        return ScheduledContext([(end, final(table[text], negative)) for end, text in schedule])

    conds = [(scheduled(schedule, False), weight) for schedule, weight in prepared.positive]
    return CFGDenoiser(denoiser, conds, scheduled(prepared.negative, True), cfg_scale)
