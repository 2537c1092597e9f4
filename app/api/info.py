"""Routes about the running job and the server: /progress (with a live preview), /interrupt,
/skip, /png-info, /memory, /extensions, the scripts (/scripts, /script-info), the lists clients
probe for that this server has none of (/prompt-styles, /face-restorers, /hypernetworks, and old
A1111's /artist-categories and /artists), and A1111's routes for what this server cannot do
(interrogating, creating and training embeddings and hypernetworks): 501 naming what is missing."""
from __future__ import annotations

import os
from typing import Any

from fastapi import APIRouter

from app.api.errors import ApiError, error_responses
from app.api.group import RouteGroup
from app.api.images import decode_image
from app.api.scripts import script_context, script_info, scripts_list
from app.api.schemas import (ExtensionItem, MemoryResponse, PNGInfoRequest, PNGInfoResponse, ProgressResponse,
                             ScriptsList)

# A1111's routes for work this server has no models or code for -> what is missing.
NOT_IMPLEMENTED = {
    "/interrogate": "interrogate: this server has no captioning model (A1111's CLIP interrogator or DeepBooru); "
                    "a picture's own generation parameters are read by POST /png-info",
    "/create/embedding": "create/embedding: this server does not train textual-inversion embeddings; "
                         "put trained ones in models/embeddings (GET /embeddings lists them)",
    "/create/hypernetwork": "create/hypernetwork: this server has no hypernetworks (neither training nor "
                            "loading them); LoRA files in models/Lora take their place",
    "/train/embedding": "train/embedding: this server does not train textual-inversion embeddings",
    "/train/hypernetwork": "train/hypernetwork: this server has no hypernetworks (neither training nor loading them)",
}


class InfoRoutes(RouteGroup):
    """Progress and control of the running job, what a picture holds, memory, the scripts, the
    extensions, the empty lists and the 501s."""

    def register(self, router: APIRouter) -> None:
        r = router
        r.add_api_route("/png-info", self.png_info, methods=["POST"], response_model=PNGInfoResponse,
                        responses=error_responses(400, 413, 422))
        r.add_api_route("/progress", self.progress, methods=["GET"], response_model=ProgressResponse,
                        responses=error_responses(422))
        r.add_api_route("/interrupt", self.interrupt, methods=["POST"])
        r.add_api_route("/skip", self.skip, methods=["POST"])
        r.add_api_route("/memory", self.get_memory, methods=["GET"], response_model=MemoryResponse)
        r.add_api_route("/scripts", self.get_scripts, methods=["GET"], response_model=ScriptsList)
        r.add_api_route("/script-info", self.get_script_info, methods=["GET"], response_model=list[dict[str, Any]])
        # What clients probe for; this server has none of these.
        r.add_api_route("/prompt-styles", self.get_empty_list, methods=["GET"], response_model=list[dict[str, Any]])
        r.add_api_route("/face-restorers", self.get_empty_list, methods=["GET"], response_model=list[dict[str, Any]])
        r.add_api_route("/hypernetworks", self.get_empty_list, methods=["GET"], response_model=list[dict[str, Any]])
        r.add_api_route("/artist-categories", self.get_empty_list, methods=["GET"], response_model=list[str])
        r.add_api_route("/artists", self.get_empty_list, methods=["GET"], response_model=list[dict[str, Any]])
        r.add_api_route("/extensions", self.get_extensions, methods=["GET"], response_model=list[ExtensionItem])
        for path, missing in NOT_IMPLEMENTED.items():
            r.add_api_route(path, self.not_implemented(missing), methods=["POST"], responses=error_responses(501),
                            summary=f"Not available here (501): {missing.split(': ', 1)[1].split(';')[0]}")

    def png_info(self, req: PNGInfoRequest) -> PNGInfoResponse:
        """The generation parameters (and other text chunks) stored in a picture."""
        from core.infotext import parse_infotext

        image = decode_image(req.image, "image", self.limits)
        info = image.info.get("parameters")
        info = info if isinstance(info, str) else ""
        items = {k: v for k, v in image.info.items()
                 if k != "parameters" and isinstance(k, str) and isinstance(v, (str, int, float, bool))}
        return PNGInfoResponse(info=info, items=items, parameters=parse_infotext(info) if info.strip() else {})

    def progress(self, skip_current_image: bool = False) -> ProgressResponse:
        """The running API job: fraction done, seconds left, state, and a live preview."""
        done, eta = self.state.progress()
        state = self.state.as_dict()
        image = None
        if state["job_count"] and not skip_current_image and self.settings.get("live_previews_enable"):
            image = self.state.preview()
        textinfo = self.state.textinfo
        loading = self.engine.loading
        if loading is not None:  # a checkpoint being read (at start, on a switch, or for this job)
            textinfo = f"Loading {loading.name}: {loading.fraction:.0%}"
        return ProgressResponse(progress=done, eta_relative=eta, state=state, current_image=image, textinfo=textinfo)

    def interrupt(self) -> dict:
        """Stop the running job after its current step; no further batches are made."""
        self.engine.interrupt()
        self.state.flag("interrupted")
        return {}

    def skip(self) -> None:
        """Stop the running batch and go on with the next."""
        self.engine.skip()
        self.state.flag("skipped")

    def get_memory(self) -> dict:
        return {"ram": _ram_stats(), "cuda": _cuda_stats()}

    def get_scripts(self) -> dict:
        """A1111's names of the scripts a request's script_name may give, per tab."""
        return scripts_list()

    def get_script_info(self) -> list:
        """Each tab's scripts with their arguments (label, value, range, choices), as A1111 lists them."""
        return script_info(script_context(self.models_root, self.checkpoints.find))

    def get_empty_list(self) -> list:
        return []

    def get_extensions(self) -> list[dict]:
        """The extensions in this server's extensions folder (the built-in LoRA and prompt
        history, and any added), in A1111's shape. This server installs none from a repository
        and reads none, so the git fields are empty; disabled or failed ones say enabled false."""
        return [{"name": e.name, "remote": "", "branch": "", "commit_hash": "", "version": "", "commit_date": "",
                 "enabled": e.enabled and e.error is None}
                for e in self.engine.extensions.extensions.values()]

    @staticmethod
    def not_implemented(missing: str):
        """A route handler that answers 501 with ``missing``, whatever the request holds."""
        def refuse() -> None:
            raise ApiError(501, missing)

        return refuse


def _ram_stats() -> dict:
    try:
        import psutil

        process = psutil.Process(os.getpid())
        memory = psutil.virtual_memory()
        return {"free": memory.available, "used": process.memory_info().rss, "total": memory.total}
    except Exception as exc:  # noqa: BLE001 - psutil may be missing or refuse
        return {"error": f"{type(exc).__name__}: {exc}"}


def _cuda_stats() -> dict:
    try:
        import torch

        if not torch.cuda.is_available():
            return {"error": "unavailable"}
        free, total = torch.cuda.mem_get_info()
        stats = torch.cuda.memory_stats()

        def pair(key: str) -> dict:
            return {"current": stats.get(f"{key}.all.current", 0), "peak": stats.get(f"{key}.all.peak", 0)}

        return {
            "system": {"free": free, "used": total - free, "total": total},
            "active": pair("active_bytes"),
            "allocated": pair("allocated_bytes"),
            "reserved": pair("reserved_bytes"),
            "inactive": pair("inactive_split_bytes"),
            "events": {"retries": stats.get("num_alloc_retries", 0), "oom": stats.get("num_ooms", 0)},
        }
    except Exception as exc:  # noqa: BLE001
        return {"error": f"{type(exc).__name__}: {exc}"}
