"""Built-in LoRA extension: ``<lora:name:weight>`` in a prompt merges models/Lora/name.* into the
loaded model for that job (see extension.py for the hooks, docs/EXTENSIONS.md for the design).

For the UI and the REST API: ``list_loras(models_dir)``."""
from .files import find_lora, list_loras, lora_hash
from .merge import LoraManager, Request, parse_tag

__all__ = ["LoraManager", "Request", "find_lora", "list_loras", "lora_hash", "parse_tag"]
