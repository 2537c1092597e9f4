"""What the app (the page, the REST API, the server) may use of an engine, as one Protocol.

``core.engine.Engine`` is the engine; the tests' stand-in (tests/fake_engine.py) is the other
implementation. Both are checked against this list by tests/test_engine_protocol.py, so the
app can use every member here directly instead of probing for it. A member the app starts to
use belongs here first. No torch here: the types are imported for annotations only.
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

if TYPE_CHECKING:
    from core.engine import GeneratedImage, JobFlags, LoadedModel, Loading, Progress
    from core.extensions import ExtensionRegistry
    from core.hashing import HashCache
    from core.params import GenerationParams
    from core.upscaling.extras import ExtrasJob, ExtrasResult


class EngineProtocol(Protocol):
    # Folders, fixed when the engine is built.
    ckpt_dir: Path  # the checkpoints (list_checkpoints names are relative to it)
    output_dir: Path  # where jobs save their pictures: <output_dir>/<kind>-images/<date>/
    models_dir: Path  # the models' root: upscalers, VAE, ... in folders below it
    lora_dir: Path
    embeddings_dir: Path
    vae_dir: Path  # separate VAE files (list_vaes names are relative to it)

    hashes: HashCache  # sha256 of model files, remembered (.entries: what is known without hashing)
    extensions: ExtensionRegistry  # the loaded extensions: UI tabs, API routes, hooks

    # The model: the one loaded (None before the first load), the one loading (None when none is).
    loaded: LoadedModel | None
    loading: Loading | None
    # What a checkpoint's weights cannot tell, applied at the next load: "auto", "eps" or "v";
    # None (as the checkpoint says), True or False.
    prediction: str
    zero_terminal_snr: bool | None
    # A1111's sd_vae: "Automatic", "None" or a file in vae_dir; applied at every load and job.
    vae: str

    flags: JobFlags  # the running job's interrupted / skipped, reset when a job starts

    # --- checkpoints -------------------------------------------------------------------

    def list_checkpoints(self) -> list[str]: ...

    def resolve_checkpoint(self, name: str, allow_paths: bool = False, field: str = "checkpoint") -> Path: ...

    def load(self, name: str, allow_paths: bool = False, *, prediction: str | None = None,
             zero_terminal_snr: bool | None = None, progress: Callable[[float], None] | None = None) -> LoadedModel: ...

    def unload(self, keep_refiner: bool = False) -> None: ...

    def refresh_embeddings(self) -> None: ...

    def job_model(self, checkpoint: str | None = None, allow_paths: bool = False) -> LoadedModel: ...

    def default_size(self, name: str | None = None, allow_paths: bool = False) -> int | None: ...

    # What a page sets up when checkpoint ``name`` is chosen, from its header: its size, its
    # family's own steps and CFG scale, whether it takes a Distilled CFG Scale, its samplers
    # (core.engine.generation_defaults says each).
    def generation_defaults(self, name: str | None = None, allow_paths: bool = False) -> dict[str, Any]: ...

    def model_hash(self) -> str | None: ...

    def list_vaes(self) -> list[str]: ...

    def apply_vae(self) -> None: ...

    # --- prompts -----------------------------------------------------------------------

    def count_tokens(self, prompt: str, steps: int = 20) -> tuple[int, int]: ...

    # --- jobs --------------------------------------------------------------------------

    def exclusive(self) -> AbstractContextManager: ...

    def interrupt(self) -> None: ...

    def skip(self) -> None: ...

    def txt2img(self, params: GenerationParams, progress: Callable[[Progress], None] | None = None,
                save: bool = True, allow_paths: bool = False) -> list[GeneratedImage]: ...

    def img2img(self, params: GenerationParams, image: Any, mask: Any = None,
                progress: Callable[[Progress], None] | None = None, save: bool = True,
                allow_paths: bool = False) -> list[GeneratedImage]: ...

    def sd_upscale(self, params: GenerationParams, image: Any, upscaler: str = "Lanczos", scale: float = 2.0,
                   overlap: int = 64, progress: Callable[[Progress], None] | None = None,
                   save: bool = True) -> list[GeneratedImage]: ...

    def extras(self, image: Any, job: ExtrasJob, progress: Callable[[int, int], None] | None = None,
               source_infotext: str | None = None) -> ExtrasResult: ...


def protocol_members() -> tuple[list[str], list[str]]:
    """(attributes, methods) the protocol lists, for checking an implementation."""
    attributes = list(EngineProtocol.__annotations__)
    methods = [name for name, value in vars(EngineProtocol).items() if callable(value) and not name.startswith("_")]
    return attributes, methods
