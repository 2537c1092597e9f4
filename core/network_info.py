"""What a model file says of itself, for the extra-networks cards' info: a LoRA's training tags
(kohya's ``ss_tag_frequency``, summed over its data folders, most frequent first) and the
metadata keys that tell what it was trained on and at what size.

Only the ``.safetensors`` header is read (``core.loading.safetensors_header``: bounded and
checked before use), never a tensor; other files have no metadata.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from core.loading import safetensors_header

MAX_TAGS = 200  # the tags shown, most frequent first; a large data set has thousands
MAX_VALUE_CHARS = 500  # a metadata value shown longer than this is cut
# Metadata keys worth a line, with the words a person reads (kohya's ss_*, the modelspec ones).
SHOWN_KEYS = (
    ("ss_sd_model_name", "Base model"),
    ("ss_base_model_version", "Base model version"),
    ("modelspec.architecture", "Architecture"),
    ("ss_resolution", "Resolution"),
    ("modelspec.resolution", "Resolution"),
    ("ss_network_module", "Network module"),
    ("ss_network_dim", "Network dim"),
    ("ss_network_alpha", "Network alpha"),
    ("ss_num_train_images", "Training images"),
    ("ss_num_epochs", "Epochs"),
    ("ss_output_name", "Output name"),
    ("modelspec.title", "Title"),
    ("ss_training_comment", "Comment"),
)


@dataclass
class NetworkInfo:
    """A model file's self-description: labelled metadata lines and training tags with counts."""
    name: str
    fields: list[tuple[str, str]] = field(default_factory=list)
    tags: list[tuple[str, int]] = field(default_factory=list)
    tag_total: int = 0  # distinct tags before MAX_TAGS cut the list


def training_tags(metadata: dict) -> list[tuple[str, int]]:
    """``ss_tag_frequency`` (a JSON text: {folder: {tag: count}}) summed over the folders,
    most frequent first (ties by name); [] when absent or not in that form."""
    text = metadata.get("ss_tag_frequency")
    try:
        folders = json.loads(text) if isinstance(text, str) else text
    except ValueError:
        return []
    if not isinstance(folders, dict):
        return []
    counts: dict[str, int] = {}
    for tags in folders.values():
        if not isinstance(tags, dict):
            continue
        for tag, count in tags.items():
            if isinstance(count, (int, float)) and not isinstance(count, bool):
                name = str(tag).strip()
                counts[name] = counts.get(name, 0) + int(count)
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def network_info(path: str | os.PathLike) -> NetworkInfo:
    """The info of the model file ``path`` (empty for a file without a readable header)."""
    path = Path(path)
    header = safetensors_header(path)  # {} for anything that is not a readable .safetensors file
    metadata = header.get("__metadata__")
    metadata = metadata if isinstance(metadata, dict) else {}
    info = NetworkInfo(name=path.name)
    seen_labels = set()
    for key, label in SHOWN_KEYS:
        value = metadata.get(key)
        if value in (None, "", "None") or label in seen_labels:
            continue
        seen_labels.add(label)
        info.fields.append((label, str(value)[:MAX_VALUE_CHARS]))
    tags = training_tags(metadata)
    info.tag_total = len(tags)
    info.tags = tags[:MAX_TAGS]
    return info
