"""A1111's prompt language: attention weights, prompt editing, alternation, AND, extra networks.

Pure Python; see :mod:`core.prompts.parser` for the grammar and a worked example.
"""
from core.prompts.parser import (
    Alternation,
    Edit,
    ExtraNetworkTag,
    Fragment,
    ParsedPrompt,
    ScheduledText,
    SubPrompt,
    Text,
    WeightedPrompt,
    extract_extra_networks,
    get_schedules,
    parse_attention,
    parse_editing,
    parse_prompt,
    schedule_text_at,
    split_and,
)

__all__ = [
    "Alternation",
    "Edit",
    "ExtraNetworkTag",
    "Fragment",
    "ParsedPrompt",
    "ScheduledText",
    "SubPrompt",
    "Text",
    "WeightedPrompt",
    "extract_extra_networks",
    "get_schedules",
    "parse_attention",
    "parse_editing",
    "parse_prompt",
    "schedule_text_at",
    "split_and",
]
