"""ComfyUI's PNG chunks -> an A1111 infotext, so PNG Info can send them to the tabs.

ComfyUI stores its graph twice: ``prompt`` (the API form: ``{id: {class_type, inputs}}``, links
as ``[node_id, slot]``) and ``workflow`` (the editor's form: ``nodes`` with ``widgets_values``
and a ``links`` table). The sampler node (KSampler, KSamplerAdvanced and look-alikes) gives
seed, steps, CFG, sampler and scheduler; following its ``positive``/``negative`` links up to a
node with a text gives the prompts, ``latent_image`` gives the size, ``model`` the checkpoint.
"""
from __future__ import annotations

import json
from typing import Any

# ComfyUI sampler names -> A1111's
SAMPLER_NAMES = {
    "euler": "Euler", "euler_ancestral": "Euler a", "heun": "Heun", "dpm_2": "DPM2", "dpm_2_ancestral": "DPM2 a",
    "lms": "LMS", "dpm_fast": "DPM fast", "dpm_adaptive": "DPM adaptive", "dpmpp_2s_ancestral": "DPM++ 2S a",
    "dpmpp_sde": "DPM++ SDE", "dpmpp_sde_gpu": "DPM++ SDE", "dpmpp_2m": "DPM++ 2M", "dpmpp_2m_sde": "DPM++ 2M SDE",
    "dpmpp_2m_sde_gpu": "DPM++ 2M SDE", "dpmpp_3m_sde": "DPM++ 3M SDE", "dpmpp_3m_sde_gpu": "DPM++ 3M SDE",
    "ddim": "DDIM", "uni_pc": "UniPC", "uni_pc_bh2": "UniPC", "lcm": "LCM", "restart": "Restart",
}
SCHEDULER_NAMES = {
    "normal": "Automatic", "karras": "Karras", "exponential": "Exponential", "sgm_uniform": "SGM Uniform",
    "simple": "Simple", "ddim_uniform": "DDIM", "beta": "Beta", "align_your_steps": "Align Your Steps",
    "polyexponential": "Polyexponential",
}
TEXT_KEYS = ("text", "text_g", "text_l", "prompt", "positive", "string")
SIZE_CLASSES = ("EmptyLatentImage", "EmptySD3LatentImage", "EmptyHunyuanLatentVideo")


def _load(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


def _is_sampler(node: dict) -> bool:
    inputs = node.get("inputs") or {}
    return isinstance(inputs, dict) and "positive" in inputs and ("steps" in inputs or "seed" in inputs
                                                                  or "noise_seed" in inputs)


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)


def from_prompt_graph(graph: dict) -> dict[str, Any] | None:
    """Fields from the API-form graph, or None if it has no sampler node."""
    samplers = [(k, n) for k, n in graph.items() if isinstance(n, dict) and _is_sampler(n)]
    if not samplers:
        return None
    # The first sampler in id order is the base pass; later ones are usually refiners/hires.
    samplers.sort(key=lambda kv: (len(str(kv[0])), str(kv[0])))
    inputs = samplers[0][1]["inputs"]

    def follow(link: Any, want: tuple[str, ...], seen: set | None = None) -> Any:
        seen = seen or set()
        if not _is_link(link) or str(link[0]) in seen:
            return None
        node = graph.get(str(link[0]))
        if not isinstance(node, dict):
            return None
        seen.add(str(link[0]))
        node_inputs = node.get("inputs") or {}
        for key in want:
            value = node_inputs.get(key)
            if value is not None and not _is_link(value):
                return value
        for value in node_inputs.values():  # go upstream: conditioning combines, encoders, ...
            found = follow(value, want, seen)
            if found is not None:
                return found
        return None

    def number(key: str, *alternatives: str) -> Any:
        for k in (key, *alternatives):
            value = inputs.get(k)
            if value is not None and not _is_link(value):
                return value
            if _is_link(value):
                found = follow(value, ("value", "seed", "noise_seed", "int", "float"))
                if found is not None:
                    return found
        return None

    fields: dict[str, Any] = {
        "prompt": follow(inputs.get("positive"), TEXT_KEYS) or "",
        "negative_prompt": follow(inputs.get("negative"), TEXT_KEYS) or "",
        "seed": number("seed", "noise_seed"),
        "steps": number("steps"),
        "cfg": number("cfg"),
        "sampler": number("sampler_name"),
        "scheduler": number("scheduler"),
        "denoise": number("denoise"),
        "width": follow(inputs.get("latent_image"), ("width",)),
        "height": follow(inputs.get("latent_image"), ("height",)),
        "model": follow(inputs.get("model"), ("ckpt_name", "unet_name", "model_name")),
    }
    clip_layer = next((n.get("inputs", {}).get("stop_at_clip_layer") for n in graph.values()
                       if isinstance(n, dict) and n.get("class_type") == "CLIPSetLastLayer"), None)
    if isinstance(clip_layer, int) and clip_layer < -1:
        fields["clip_skip"] = -clip_layer
    return fields


def from_workflow(workflow: dict) -> dict[str, Any] | None:
    """Fields from the editor-form graph (used when a file has no ``prompt`` chunk)."""
    nodes = {n.get("id"): n for n in workflow.get("nodes") or [] if isinstance(n, dict)}
    links = {}
    for link in workflow.get("links") or []:
        if isinstance(link, list) and len(link) >= 4:
            links[link[0]] = link[1]  # link id -> origin node id
        elif isinstance(link, dict) and "id" in link:
            links[link["id"]] = link.get("origin_id")
    sampler = next((n for n in nodes.values() if str(n.get("type", "")).startswith("KSampler")), None)
    if sampler is None:
        return None
    widgets = sampler.get("widgets_values") or []
    advanced = sampler.get("type") == "KSamplerAdvanced"
    # KSampler: seed, control, steps, cfg, sampler, scheduler, denoise.
    # KSamplerAdvanced: add_noise, seed, control, steps, cfg, sampler, scheduler, start, end, leftover.
    offset = 1 if advanced else 0
    values = list(widgets) + [None] * 10

    def upstream(input_name: str, keys: tuple[str, ...] = ()) -> Any:
        start = next((i.get("link") for i in sampler.get("inputs") or [] if i.get("name") == input_name), None)
        seen = set()
        queue = [links.get(start)]
        while queue:
            node = nodes.get(queue.pop(0))
            if node is None or node.get("id") in seen:
                continue
            seen.add(node.get("id"))
            widget = node.get("widgets_values") or []
            if keys == ("size",):
                if node.get("type") in SIZE_CLASSES and len(widget) >= 2:
                    return widget[0], widget[1]
            elif keys == ("model",):
                if "Checkpoint" in str(node.get("type")) and widget:
                    return widget[0]
            elif widget and isinstance(widget[0], str) and "Encode" in str(node.get("type")):
                return widget[0]
            queue.extend(links.get(i.get("link")) for i in node.get("inputs") or [] if i.get("link") is not None)
        return None

    size = upstream("latent_image", ("size",)) or (None, None)
    return {
        "prompt": upstream("positive") or "",
        "negative_prompt": upstream("negative") or "",
        "seed": values[offset],
        "steps": values[offset + 2],
        "cfg": values[offset + 3],
        "sampler": values[offset + 4],
        "scheduler": values[offset + 5],
        "denoise": None if advanced else values[6],
        "width": size[0],
        "height": size[1],
        "model": upstream("model", ("model",)),
    }


def infotext_from_comfy(prompt: Any, workflow: Any) -> str | None:
    """An A1111 infotext for a ComfyUI image, or None when the graph has no sampler."""
    fields = None
    graph = _load(prompt)
    if isinstance(graph, dict):
        fields = from_prompt_graph(graph)
    if fields is None:
        flow = _load(workflow)
        if isinstance(flow, dict):
            fields = from_workflow(flow)
    if fields is None:
        return None
    from core.infotext import format_number, quote

    parts = []

    def add(key: str, value: Any) -> None:
        if value is None or value == "":
            return
        if isinstance(value, float):
            value = format_number(value)
        parts.append(f"{key}: {quote(str(value))}")

    add("Steps", fields.get("steps"))
    sampler = fields.get("sampler")
    add("Sampler", SAMPLER_NAMES.get(sampler, sampler) if isinstance(sampler, str) else None)
    scheduler = fields.get("scheduler")
    if isinstance(scheduler, str) and SCHEDULER_NAMES.get(scheduler, scheduler) != "Automatic":
        add("Schedule type", SCHEDULER_NAMES.get(scheduler, scheduler))
    cfg = fields.get("cfg")
    add("CFG scale", float(cfg) if isinstance(cfg, (int, float)) else None)
    add("Seed", fields.get("seed"))
    if fields.get("width") and fields.get("height"):
        add("Size", f"{fields['width']}x{fields['height']}")
    model = fields.get("model")
    if isinstance(model, str) and model:
        add("Model", model.replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0])
    denoise = fields.get("denoise")
    if isinstance(denoise, (int, float)) and denoise != 1:
        add("Denoising strength", float(denoise))
    add("Clip skip", fields.get("clip_skip"))
    lines = [str(fields.get("prompt") or "")]
    if fields.get("negative_prompt"):
        lines.append(f"Negative prompt: {fields['negative_prompt']}")
    lines.append(", ".join(parts))
    return "\n".join(lines)
