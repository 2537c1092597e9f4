"""One process, one engine: the Gradio page and the A1111-compatible REST API on one FastAPI
app, served by uvicorn.

    create_app(engine, api=True, ui=True, ...) -> FastAPI    (tests build servers with this)
    serve(args) -> exit code                                  (launch.py calls this)

``/sdapi/v1/...`` is the API (the ``app/api/`` package), ``/docs`` its OpenAPI page, ``/`` the Gradio
page. With credentials (``--api-auth user:pass[,user2:pass2]``) HTTP Basic auth guards
everything the server serves. The server listens on 127.0.0.1; ``--listen`` (every interface)
is refused without credentials unless ``--insecure`` says that is intended. Whatever the auth,
a request under a Host name the server is not known by (``--allowed-host``) is refused, and so
is one from another site's page that would change something (app/guards.py: the middleware).
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

# An offline studio must not phone home; set before gradio is (indirectly) imported.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from fastapi import FastAPI  # noqa: E402

from app.guards import (BasicAuthMiddleware, BodyLimitMiddleware, FileAccessGuard, HostOriginMiddleware,  # noqa: E402
                        HostPolicy, listen_problem, parse_auth)

if TYPE_CHECKING:
    from core.engine_protocol import EngineProtocol

log = logging.getLogger(__name__)

TITLE = "Stable Diffusion Studio"


# ---------------------------------------------------------------------------------------------
# Loading the checkpoint when the server starts
# ---------------------------------------------------------------------------------------------


def startup_checkpoint(engine: EngineProtocol, settings_path: str | os.PathLike) -> str | None:
    """The checkpoint to load as the server starts, or None: the setting
    ``sd_checkpoint_load_at_start`` is off, or there is no checkpoint. It is the one the setting
    ``sd_model_checkpoint`` (set through the API) names, when that still resolves, else the
    first listed: the one the page's dropdown shows and a job would load."""
    from app.settings import Settings

    settings = Settings(settings_path)
    if not settings["sd_checkpoint_load_at_start"]:
        return None
    chosen = settings["sd_model_checkpoint"]
    if chosen:
        try:
            engine.resolve_checkpoint(chosen)
            return chosen
        except Exception as exc:  # noqa: BLE001 - gone or renamed: fall back to the first
            log.warning("sd_model_checkpoint %r: %s; loading the first checkpoint instead", chosen, exc)
    names = engine.list_checkpoints()
    return names[0] if names else None


def preload_checkpoint(engine: EngineProtocol, name: str) -> threading.Thread:
    """Load ``name`` (and its hash, which the first job's infotext needs) in a background
    thread under the engine's job lock: the server answers at once, a job sent meanwhile
    waits for the load instead of starting its own, and the page shows the load's progress
    (engine.loading). A failure is logged; the next job tries again and reports it."""
    def work() -> None:
        started = time.monotonic()
        print(f"Loading checkpoint {name} in the background…", flush=True)
        try:
            with engine.exclusive():
                loaded = engine.load(name)
                engine.model_hash()
        except Exception as exc:  # noqa: BLE001 - the server stays up; the page and API say why later
            log.error("loading %s at start failed: %s", name, exc)
            print(f"Loading checkpoint {name} failed: {exc}", flush=True)
            return
        print(f"Loaded checkpoint {loaded.name} in {time.monotonic() - started:.1f}s", flush=True)

    thread = threading.Thread(target=work, name="preload-checkpoint", daemon=True)
    thread.start()
    return thread


# ---------------------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------------------


def create_app(
    engine: EngineProtocol,
    api: bool = True,
    ui: bool = True,
    *,
    auth: dict[str, str] | None = None,
    options_path: str | os.PathLike | None = None,
    limits=None,
    cmd_flags: dict | None = None,
    allowed_paths: Iterable[str | os.PathLike] | None = None,
    models_root: str | os.PathLike | None = None,
    load_checkpoint: str | None = None,
    allowed_hosts: HostPolicy | None = None,
    allowed_dirs: Iterable[str | os.PathLike] | None = None,
) -> FastAPI:
    """A FastAPI app around one engine: the REST API under /sdapi/v1 (``api``), the Gradio page
    at / (``ui``), both behind HTTP Basic auth when ``auth`` ({user: password}) is given.

    ``options_path``: the settings file (config.json) of the page and the API, which share one
    ``app.settings.Settings`` over it (None: kept in memory);
    ``limits``: an ``app.api.limits.ApiLimits``; ``cmd_flags``: what /cmd-flags reports;
    ``load_checkpoint``: a checkpoint to load in the background once the app has started
    (``app.state.preload`` is its thread); ``allowed_hosts``: the Host names served (None:
    the loopback names), checked with the Origin of what changes state (HostOriginMiddleware);
    ``allowed_paths``: the folders whose images the page serves (default: the engine's output
    folder), fixed here: nothing the page does widens them; ``allowed_dirs``: the folders
    super-resolution batches may read and write (default: the output folder and inputs/ beside
    launch.py). ``app.state.page`` is the Gradio page."""
    if not api and not ui:
        raise ValueError("create_app: nothing to serve (api and ui are both off)")
    from app.settings import Settings

    settings = Settings(options_path)  # one store for the page and the API: neither writes over the other
    sd_api = None
    if api:
        from app.api.limits import ApiLimits
        from app.api.service import SdApi

        sd_api = SdApi(engine, settings=settings, limits=limits or ApiLimits(), cmd_flags=cmd_flags,
                       models_root=models_root)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        if load_checkpoint:
            _app.state.preload = preload_checkpoint(engine, load_checkpoint)
        yield
        if sd_api is not None:
            sd_api.shutdown()

    app = FastAPI(
        title=TITLE,
        description="AUTOMATIC1111-compatible REST API (/sdapi/v1) of an offline Stable Diffusion studio.",
        version="1.0",
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
        lifespan=lifespan,
    )
    app.state.sdapi = sd_api
    app.state.engine = engine
    app.state.preload = None
    app.state.page = None
    if sd_api is not None:
        mount_api(app, engine, sd_api)
    if ui:
        app.state.page = mount_page(app, engine, settings, options_path, allowed_paths, allowed_dirs)
    if auth:
        app.add_middleware(BasicAuthMiddleware, credentials=auth, realm=TITLE)
    # Outermost (added last): another site's request is refused before any login prompt.
    app.add_middleware(HostOriginMiddleware, policy=allowed_hosts or HostPolicy())
    return app


def mount_api(app: FastAPI, engine: EngineProtocol, sd_api) -> None:
    """The REST API's routes, its error shapes, the extensions' routes and the body limit."""
    from app.api.errors import install_error_handlers

    install_error_handlers(app)
    app.include_router(sd_api.router)
    engine.extensions.mount_api_routes(app)  # e.g. the prompt history's /history/...
    app.add_middleware(BodyLimitMiddleware, limit=sd_api.limits.max_body_bytes)


def mount_page(app: FastAPI, engine: EngineProtocol, settings, options_path: str | os.PathLike | None,
               allowed_paths: Iterable[str | os.PathLike] | None,
               allowed_dirs: Iterable[str | os.PathLike] | None):
    """The Gradio page at /, with the files it may serve and read (see create_app); returns it."""
    import gradio as gr
    from gradio.utils import get_cache_folder, get_upload_folder

    from app.settings import data_dir, default_settings_file
    from app.page.build import build_ui

    paths = [str(Path(p).resolve()) for p in (allowed_paths or [engine.output_dir]) if p]
    demo = build_ui(engine, settings=settings, served_roots=[Path(p) for p in paths],
                    allowed_dirs=[Path(p).resolve() for p in allowed_dirs] if allowed_dirs else None)
    # Gradio's allow-list also decides which files a callback may hand to the page (Gradio
    # copies them into its cache folder first): the batch folders' results are among them.
    # What the file routes serve directly is FileAccessGuard's choice: the outputs only.
    readable = paths + [str(Path(d).resolve()) for d in (allowed_dirs or ()) if str(Path(d).resolve()) not in paths]
    # The model folders, for their preview pictures only (FileAccessGuard serves nothing else there).
    previews = preview_folders(engine)
    readable += [str(Path(d).resolve()) for d in previews if str(Path(d).resolve()) not in readable]
    # Gradio's own check, behind FileAccessGuard: the settings and styles are never files to serve.
    blocked = [str(Path(p).resolve()) for p in (options_path, default_settings_file(), data_dir() / "styles.csv")
               if p]
    gr.mount_gradio_app(app, demo, path="/", allowed_paths=readable, blocked_paths=blocked, show_error=True,
                        ssr_mode=False)
    app.add_middleware(FileAccessGuard, image_roots=paths, gradio_dirs=[get_upload_folder(), get_cache_folder()],
                       preview_roots=previews)
    return demo


def preview_folders(engine: EngineProtocol) -> list[Path]:
    """The model folders whose cards show preview pictures: checkpoints, embeddings, LoRA."""
    return [Path(engine.ckpt_dir), Path(engine.embeddings_dir), Path(engine.lora_dir)]


# ---------------------------------------------------------------------------------------------
# Serving
# ---------------------------------------------------------------------------------------------


def _error(message: str) -> None:
    print(f"launch.py: error: {message}", file=sys.stderr)


def run_uvicorn(app: FastAPI, host: str, port: int) -> int:
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits when it cannot bind; its log says why
        return int(exc.code or 1)
    return 0 if server.started else 1


def serve(args: argparse.Namespace) -> int:
    """Build the engine and serve the page and/or the API until interrupted. ``args``: as
    launch.py's parser makes them (every option there, defaults included)."""
    problem = listen_problem(args)
    if problem:
        _error(problem)
        return 2
    try:
        credentials = parse_auth(args.api_auth)
        hosts = HostPolicy(args.allowed_host, listen=args.listen)
    except ValueError as exc:
        _error(str(exc))
        return 2
    api, ui = args.api, not args.nowebui
    if not api and not ui:
        print("Nothing to serve (--nowebui without --api).")
        return 0
    try:
        from core.engine import Engine
        from core.errors import EngineError
    except ImportError as exc:
        _error(f"the engine (core.engine) cannot be imported: {exc}")
        return 1
    try:
        from app.settings import Settings, compile_unet, default_settings_file, disabled_extensions

        settings = args.ui_settings_file or default_settings_file()
        saved = Settings(settings)
        engine = Engine(device=args.device, precision=args.precision, ckpt_dir=Path(args.ckpt_dir),
                        output_dir=Path(args.outdir), lora_dir=args.lora_dir,
                        disabled_extensions=disabled_extensions(saved), compile=compile_unet(saved, args.compile),
                        offload=args.offload)
    except EngineError as exc:
        _error(str(exc))
        return 1

    flags = dict(vars(args))
    from app.settings import default_allowed_dirs

    allowed_dirs = [Path(d).expanduser().resolve() for d in args.allowed_dir or default_allowed_dirs(args.outdir)]
    app = create_app(engine, api=api, ui=ui, auth=credentials or None, options_path=settings, cmd_flags=flags,
                     allowed_paths=[Path(args.outdir)], load_checkpoint=startup_checkpoint(engine, settings),
                     allowed_hosts=hosts, allowed_dirs=allowed_dirs)
    host = "0.0.0.0" if args.listen else "127.0.0.1"
    port = int(args.port)
    parts = (["page: /"] if ui else []) + (["API: /sdapi/v1, docs: /docs"] if api else [])
    print(f"Serving on http://{host}:{port} ({', '.join(parts)})" + (" with HTTP Basic auth" if credentials else ""),
          flush=True)
    return run_uvicorn(app, host, port)
