"""Routes of what the server has: checkpoints (listed, refreshed, unloaded, reloaded), VAEs, LoRAs,
embeddings, samplers, schedulers, upscalers (A1111's Real-ESRGAN list too) and latent upscale
modes. Lists are read from the folders on every request: the refresh routes have nothing to do,
but for embeddings, which a checkpoint reads as it loads (/refresh-embeddings reads them again)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fastapi import APIRouter

from app.api.checkpoints import load_checkpoint
from app.api.errors import ApiError, error_responses
from app.api.group import RouteGroup
from app.api.schemas import (EmbeddingsResponse, LatentUpscalerModeItem, LoraItem, RealesrganItem, SamplerItem,
                             SchedulerItem, SDModelItem, SDVaeItem, UpscalerItem)
from core.errors import EngineError
from core.modelfiles import LORA_SUFFIXES

# Schedule type -> (default rho, needs the model's own sigmas), as A1111 describes them.
_SCHEDULER_TRAITS = {
    "Automatic": (None, False), "Uniform": (None, True), "Karras": (7.0, False), "Exponential": (None, False),
    "Polyexponential": (1.0, False), "SGM Uniform": (None, True), "Simple": (None, True), "Normal": (None, True),
    "DDIM": (None, True), "Beta": (None, True), "Align Your Steps": (None, False),
}


class ModelRoutes(RouteGroup):
    """/samplers, /schedulers, /upscalers, /realesrgan-models, /latent-upscale-modes, /sd-models,
    /sd-vae, /loras, /embeddings, the refresh routes and the checkpoint routes (unload, reload)."""

    def register(self, router: APIRouter) -> None:
        r = router
        r.add_api_route("/samplers", self.get_samplers, methods=["GET"], response_model=list[SamplerItem])
        r.add_api_route("/schedulers", self.get_schedulers, methods=["GET"], response_model=list[SchedulerItem])
        r.add_api_route("/upscalers", self.get_upscalers, methods=["GET"], response_model=list[UpscalerItem])
        r.add_api_route("/latent-upscale-modes", self.get_latent_upscale_modes, methods=["GET"],
                        response_model=list[LatentUpscalerModeItem])
        r.add_api_route("/sd-models", self.get_sd_models, methods=["GET"], response_model=list[SDModelItem])
        r.add_api_route("/sd-vae", self.get_sd_vae, methods=["GET"], response_model=list[SDVaeItem])
        r.add_api_route("/loras", self.get_loras, methods=["GET"], response_model=list[LoraItem])
        r.add_api_route("/embeddings", self.get_embeddings, methods=["GET"], response_model=EmbeddingsResponse)
        r.add_api_route("/refresh-checkpoints", self.refresh_checkpoints, methods=["POST"])
        r.add_api_route("/refresh-vae", self.refresh_vae, methods=["POST"])
        r.add_api_route("/refresh-loras", self.refresh_loras, methods=["POST"])
        r.add_api_route("/realesrgan-models", self.get_realesrgan_models, methods=["GET"],
                        response_model=list[RealesrganItem])
        r.add_api_route("/refresh-embeddings", self.refresh_embeddings, methods=["POST"])
        r.add_api_route("/unload-checkpoint", self.unload_checkpoint, methods=["POST"])
        r.add_api_route("/reload-checkpoint", self.reload_checkpoint, methods=["POST"],
                        responses=error_responses(400, 404))

    def get_samplers(self) -> list[dict]:
        from core.sampling.samplers import SAMPLERS

        items = []
        for sampler in SAMPLERS.values():
            options: dict[str, Any] = dict(sampler.defaults)
            if sampler.default_schedule not in (None, "Uniform"):
                options["scheduler"] = _scheduler_name(sampler.default_schedule)
            if sampler.discard_penultimate_sigma:
                options["discard_next_to_last_sigma"] = True
            items.append({"name": sampler.name, "aliases": list(sampler.aliases), "options": options})
        return items

    def get_schedulers(self) -> list[dict]:
        from core.sampling.schedules import AUTOMATIC, SCHEDULE_SPELLINGS, SCHEDULES

        items = []
        for label in (AUTOMATIC, *SCHEDULES):
            name = _scheduler_name(label)
            aliases = sorted({s for s, lab in SCHEDULE_SPELLINGS.items() if lab == label} - {name, label.lower()})
            rho, inner = _SCHEDULER_TRAITS.get(label, (None, None))
            items.append({"name": name, "label": label, "aliases": aliases or None, "default_rho": rho,
                          "need_inner_model": inner})
        return items

    def get_upscalers(self) -> list[dict]:
        from core.upscaling import list_upscalers

        return [{"name": u.name, "model_name": None if u.path is None else u.kind,
                 "model_path": str(u.path) if u.path else None, "model_url": None,
                 "scale": _upscaler_scale(u.name) if u.path else None}
                for u in list_upscalers(self.models_root)]

    def get_realesrgan_models(self) -> list[dict]:
        """A1111's Real-ESRGAN list: the model files in models/RealESRGAN, and A1111's Real-ESRGAN
        downloads wherever the upscalers are read from, under A1111's names. This server downloads
        none: only files present are listed."""
        from core.modelfiles import listed_name
        from core.upscaling import list_upscalers
        from core.upscaling.spandrel_models import A1111_DOWNLOADS, A1111_REAL_ESRGAN

        folder = self.models_root / "RealESRGAN"
        items = []
        for upscaler in list_upscalers(self.models_root):
            if upscaler.path is None:
                continue
            stem = upscaler.path.stem.lower()
            if stem in A1111_REAL_ESRGAN or listed_name(upscaler.path, folder) is not None:
                scale = A1111_DOWNLOADS[stem][1] if stem in A1111_DOWNLOADS else _upscaler_scale(upscaler.name)
                items.append({"name": upscaler.name, "path": str(upscaler.path),
                              "scale": None if scale is None else int(scale)})
        return items

    def get_latent_upscale_modes(self) -> list[dict]:
        from core.pipelines.hires import LATENT_UPSCALE_MODES

        return [{"name": name} for name in LATENT_UPSCALE_MODES]

    def get_sd_models(self) -> list[dict]:
        return [{"title": e.title, "model_name": e.model_name, "hash": e.short_hash, "sha256": e.sha256,
                 "filename": str(e.path), "config": None} for e in self.checkpoints.entries()]

    def get_sd_vae(self) -> list[dict]:
        """The files sd_vae may name (the engine's list: what it can load), as A1111 lists them."""
        folder = Path(self.engine.vae_dir)
        return [{"model_name": name, "filename": str(folder / name)} for name in self.engine.list_vaes()]

    def get_loras(self) -> list[dict]:
        items = []
        for path in _files(self.engine.lora_dir, LORA_SUFFIXES):
            metadata = safetensors_metadata(path)
            alias = metadata.get("ss_output_name") if isinstance(metadata.get("ss_output_name"), str) else path.stem
            items.append({"name": path.stem, "alias": alias, "path": str(path), "metadata": metadata})
        return items

    def get_embeddings(self) -> dict:
        loaded = self.engine.loaded
        database = loaded.embeddings if loaded is not None else None
        if database is None:
            return {"loaded": {}, "skipped": {}}
        found = {name: {"shape": int(e.vectors.shape[-1]), "vectors": int(e.vectors.shape[0])}
                 for name, e in database.by_name.items()}
        skipped = {}
        folder = Path(self.engine.embeddings_dir)
        for name in database.skipped:
            vectors = _embedding_shape(folder, name)
            if vectors is not None:
                skipped[name] = {"shape": vectors[1], "vectors": vectors[0]}
        return {"loaded": found, "skipped": skipped}

    def refresh_checkpoints(self) -> None:
        """Checkpoints are listed from the folder on every request: nothing is cached."""
        return None

    def refresh_vae(self) -> None:
        return None

    def refresh_loras(self) -> None:
        return None

    async def refresh_embeddings(self) -> None:
        """Read the embeddings folder again: files added, changed or removed since the checkpoint
        loaded count from the next job (on the device queue, so no job is encoding meanwhile)."""
        def refresh():
            with self.engine.exclusive():
                self.engine.refresh_embeddings()

        await self.queue.run("refresh embeddings", refresh)

    async def unload_checkpoint(self) -> dict:
        """Free the loaded checkpoint (the next job loads it again)."""
        def unload():
            with self.engine.exclusive():
                self.engine.unload()

        await self.queue.run("unload checkpoint", unload)
        return {}

    async def reload_checkpoint(self) -> dict:
        """Load the current checkpoint (the settings' one, or the first) if it is not loaded."""
        entry = self.checkpoints.current()
        if entry is None:
            raise ApiError(404, f"sd_model_checkpoint: no checkpoint found in {self.engine.ckpt_dir}")
        await self.queue.run("load checkpoint", lambda: load_checkpoint(self.engine, entry.name))
        return {}


def _files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    from core.modelfiles import model_files  # linked files and folders followed, suffixes in any case

    return sorted(model_files(folder, suffixes), key=lambda p: p.as_posix().lower())


def safetensors_metadata(path: Path) -> dict:
    """The ``__metadata__`` of a .safetensors header (read without loading any tensor; {} when
    the file is not a valid safetensors file)."""
    from core.loading import safetensors_header

    metadata = safetensors_header(path).get("__metadata__")
    return metadata if isinstance(metadata, dict) else {}


def _scheduler_name(label: str) -> str:
    return label.lower().replace(" ", "_")


def _upscaler_scale(name: str) -> float | None:
    match = re.search(r"(?<![0-9])([1-8])x(?![0-9a-z])|(?<![0-9a-z])x([1-8])(?![0-9])", name.lower())
    if not match:
        return None
    return float(match.group(1) or match.group(2))


def _embedding_shape(folder: Path, name: str) -> tuple[int, int] | None:
    from core.embeddings import SUFFIXES, read_embedding_vectors

    for path in _files(folder, SUFFIXES):
        if path.stem == name:
            try:
                vectors = read_embedding_vectors(path)
            except EngineError:
                return None
            return int(vectors.shape[0]), int(vectors.shape[-1])
    return None
