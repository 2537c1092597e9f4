"""One process, one engine: the Gradio page and the A1111-compatible REST API on one FastAPI
app, served by uvicorn.

    create_app(engine, api=True, ui=True, ...) -> FastAPI    (tests build servers with this)
    serve(args) -> exit code                                  (launch.py calls this)

``/sdapi/v1/...`` is the API (the ``app/api/`` package), ``/docs`` its OpenAPI page, ``/`` the Gradio
page. With credentials (``--api-auth user:pass[,user2:pass2]``) HTTP Basic auth guards
everything the server serves. The server listens on 127.0.0.1; ``--listen`` (every interface)
is refused without credentials unless ``--insecure`` says that is intended. Whatever the auth,
a request under a Host name the server is not known by (``--allowed-host``) is refused, and so
is one from another site's page that would change something (HostOriginMiddleware).
"""
from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import ipaddress
import logging
import os
import re
import secrets
import socket
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

# An offline studio must not phone home; set before gradio is (indirectly) imported.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from fastapi import FastAPI  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402

if TYPE_CHECKING:
    from core.engine_protocol import EngineProtocol

log = logging.getLogger(__name__)

TITLE = "Stable Diffusion Studio"


# ---------------------------------------------------------------------------------------------
# Credentials and the --listen rule
# ---------------------------------------------------------------------------------------------


def parse_auth(text: str | None) -> dict[str, str]:
    """``"user:pass,user2:pass2"`` -> ``{user: pass}``; ValueError with a one-line reason.
    A password may contain ``:`` (the first one separates the user)."""
    if text is None:
        return {}
    credentials: dict[str, str] = {}
    for index, item in enumerate(part.strip() for part in text.split(",")):
        user, sep, password = item.partition(":")
        if not item or not sep or not user or not password:
            raise ValueError(f"--api-auth: entry {index + 1} is not USER:PASSWORD")
        credentials[user] = password
    if not credentials:
        raise ValueError("--api-auth: no USER:PASSWORD given")
    return credentials


def listen_problem(args: argparse.Namespace) -> str | None:
    """Why the server must not start with these arguments (launch.py's), in one line (or None)."""
    if args.listen and not args.api_auth and not args.insecure:
        return ("--listen would serve on every network interface without a password; give --api-auth USER:PASSWORD "
                "(or --insecure to serve without one)")
    return None


def refusal(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """A request refused before it reaches a route, in the API's error shape (app.api.errors.error_body)."""
    return JSONResponse({"error": "HTTPException", "detail": message, "body": "", "errors": message},
                        status_code=status, headers=headers)


class BasicAuthMiddleware:
    """HTTP Basic auth in front of every HTTP request and websocket of the app (API, docs, page)."""

    def __init__(self, app, credentials: dict[str, str], realm: str = TITLE):
        self.app = app
        self.credentials = {u.encode(): p.encode() for u, p in credentials.items()}
        self.realm = realm

    def _authorized(self, scope) -> bool:
        header = next((v for k, v in scope.get("headers", ()) if k == b"authorization"), b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"basic":
            return False
        try:
            user, sep, password = base64.b64decode(token.strip(), validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return False
        expected = self.credentials.get(user)
        # Compare even for an unknown user, so timing does not tell which users exist.
        ok = secrets.compare_digest(password, expected if expected is not None else b"\0" * max(len(password), 1))
        return bool(sep) and expected is not None and ok

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket") or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        response = refusal(401, "Incorrect username or password",
                           headers={"WWW-Authenticate": f'Basic realm="{self.realm}"'})
        await response(scope, receive, send)


class BodyLimitMiddleware:
    """Refuses (413) a request whose declared body is larger than ``limit`` bytes, and cuts off
    one that sends more than that without declaring it."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = next((v for k, v in scope.get("headers", ()) if k == b"content-length"), None)
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            response = refusal(413, f"body: larger than this server's limit of {self.limit} bytes")
            await response(scope, receive, send)
            return
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    return {"type": "http.disconnect"}
            return message

        await self.app(scope, limited_receive, send)


class FileAccessGuard:
    """In front of Gradio's file routes: they serve only images inside the served folders
    (the outputs, fixed when the server starts), or images and exported .json files that
    Gradio itself keeps in its upload and cache folders, and the preview pictures of the model
    files in the model folders (``NAME.preview.png`` beside ``NAME.safetensors``, as
    ``core.modelfiles.preview_picture`` finds them; the extra-networks cards show them: a name
    with ``..`` is refused, links the user placed in the folder are followed as the engine
    follows them). Everything else (the history
    database, config.json, styles, logs, any file elsewhere, http URLs the server would fetch,
    the proxy route) is answered 403, whatever Gradio's own allow-list says.

    The path is checked as Gradio will read it: ``scope["path"]`` (percent-decoded once, as the
    route receives it), made absolute against the working folder, links followed; the name
    asked for and the file it leads to must both carry an image suffix (Gradio picks the
    content type from the name)."""

    FILE_ROUTES = ("/gradio_api/file=", "/gradio_api/file/")
    REFUSED_ROUTES = ("/gradio_api/proxy=",)  # this app loads no remote Spaces

    def __init__(self, app, image_roots: Iterable[str | os.PathLike], gradio_dirs: Iterable[str | os.PathLike],
                 preview_roots: Iterable[str | os.PathLike] = ()):
        from app.imagefiles import IMAGE_SUFFIXES

        self.app = app
        self.image_roots = [Path(p).resolve() for p in image_roots]
        self.preview_roots = [Path(os.path.abspath(p)) for p in preview_roots]
        self.gradio_dirs = [Path(p).resolve() for p in gradio_dirs]
        self.image_suffixes = frozenset(IMAGE_SUFFIXES) | {".gif"}
        # The History tab's export reaches the browser as a .json file in Gradio's folders.
        self.gradio_suffixes = self.image_suffixes | {".json"}

    def allows(self, requested: str) -> bool:
        if "://" in requested or not requested:
            return False
        try:
            asked = Path(os.path.abspath(requested))
            real = asked.resolve()
            if not real.is_file():
                return False
        except (OSError, ValueError, RuntimeError):
            return False
        suffixes = {asked.suffix.lower(), real.suffix.lower()}
        if suffixes <= self.image_suffixes and any(real.is_relative_to(root) for root in self.image_roots):
            return True
        if suffixes <= self.image_suffixes and self._is_model_preview(requested, asked):
            return True
        return suffixes <= self.gradio_suffixes and any(real.is_relative_to(d) for d in self.gradio_dirs)

    def _is_model_preview(self, requested: str, asked: Path) -> bool:
        from core.modelfiles import is_preview_picture

        if ".." in Path(requested).parts or not any(asked.is_relative_to(root) for root in self.preview_roots):
            return False
        return is_preview_picture(asked)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            path = scope.get("path", "")
            refused = path.startswith(self.REFUSED_ROUTES)
            for prefix in self.FILE_ROUTES:
                if path.startswith(prefix):
                    refused = not self.allows(path[len(prefix):])
            if refused:
                await refusal(403, "not served: only images in the output folders are")(scope, receive, send)
                return
        await self.app(scope, receive, send)


# ---------------------------------------------------------------------------------------------
# Host and Origin: what a page on another site can make a browser send
# ---------------------------------------------------------------------------------------------

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
STATE_CHANGING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_-]*)(\.[a-z0-9_-]+)*")


def split_host(text: str) -> tuple[str, int | None] | None:
    """A Host header (or an --allowed-host value) -> (name, port): ``"Studio.lan:7860"`` ->
    ``("studio.lan", 7860)``, ``"[::1]"`` -> ``("::1", None)``; None when it names no host."""
    text = text.strip().lower()
    port_text = None
    if text.startswith("["):
        name, closed, rest = text[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            return None
        port_text = rest[1:] if rest else None
        if not _is_ip_address(name):
            return None
    elif text.count(":") > 1:  # a bare IPv6 address (an option value; a Host header brackets it)
        name = text
        if not _is_ip_address(name):
            return None
    else:
        name, colon, port_text = text.partition(":")
        port_text = port_text if colon else None
        name = name[:-1] if name.endswith(".") else name  # "localhost." is localhost
        if not _HOST_NAME.fullmatch(name):
            return None
    if port_text is None:
        return name, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return None
    return name, int(port_text)


def _is_ip_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def machine_names() -> set[str]:
    """This machine's host name, short and as mDNS gives it (``name.local``): what a LAN user types."""
    try:
        full = socket.gethostname().strip().lower().rstrip(".")
    except OSError:
        return set()
    if not full or not _HOST_NAME.fullmatch(full):
        return set()
    short = full.split(".")[0]
    return {full, short, f"{short}.local"}


class HostPolicy:
    """The names this server answers to in the Host header, on any port.

    A DNS-rebinding page reaches a server under the attacker's name, so its Host header
    carries that name: only names the server is known by are served. Always the loopback
    names; with ``listen`` (every interface) also this machine's names and any IP address: a
    LAN user reaching the studio by its address must be served, and an address cannot be
    rebound (the browser then talks to that address as its own origin). ``extra``: the
    --allowed-host values (a name or address, a port given is ignored); ValueError names a bad one."""

    def __init__(self, extra: Iterable[str] = (), listen: bool = False):
        names = set(LOOPBACK_NAMES) | (machine_names() if listen else set())
        for item in extra:
            parsed = split_host(item)
            if parsed is None:
                raise ValueError(f"--allowed-host {item!r}: not a host name or IP address")
            names.add(parsed[0])
        self.names = frozenset(names)
        self.any_address = listen

    def allows(self, name: str) -> bool:
        return name in self.names or (self.any_address and _is_ip_address(name))


def _shown(text: str) -> str:
    """Header text as it can be quoted in a message: printable ASCII, at most 100 characters."""
    return "".join(c if " " <= c <= "~" else "?" for c in text[:100])


def same_origin(origin: str, host: tuple[str, int | None]) -> bool:
    """Whether an Origin header names the site the request was sent to (its Host): same name,
    same port (a missing one is the scheme's default). ``null`` and other schemes never are."""
    try:
        parts = urllib.parse.urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return False
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return False
    name, host_port = host
    default = _DEFAULT_PORTS[scheme]
    return parts.hostname.rstrip(".") == name and (port or default) == (host_port or default)


class HostOriginMiddleware:
    """In front of everything served (API, docs, page, its queue and websockets):

    - a Host that is not one of ``policy``'s names is refused (400): DNS rebinding;
    - a request that changes state (POST, PUT, PATCH, DELETE, a websocket upgrade) whose Origin
      is another site than its Host, or without an Origin whose Sec-Fetch-Site says it comes
      from another site, is refused (403): a page elsewhere may send it without reading the
      answer. Clients that are not browsers send neither header and are served."""

    def __init__(self, app, policy: HostPolicy):
        self.app = app
        self.policy = policy

    def problem(self, scope) -> tuple[int, str] | None:
        headers: dict[bytes, bytes] = {}
        for key, value in scope.get("headers", ()):
            headers.setdefault(key, value)
        raw_host = headers.get(b"host")
        if raw_host is None:
            return 400, "Host: the request names no host (HTTP/1.1 requires the Host header)"
        host_text = raw_host.decode("latin-1")
        host = split_host(host_text)
        if host is None or not self.policy.allows(host[0]):
            name = host[0] if host else _shown(host_text)
            return 400, (f"Host {_shown(host_text)!r}: not a name this server answers to, so a page under "
                         f"another name cannot use it; if {name!r} is this server's name, start it with "
                         f"--allowed-host {name}")
        if scope["type"] == "http" and scope.get("method", "GET").upper() not in STATE_CHANGING_METHODS:
            return None
        origin = headers.get(b"origin")
        if origin is not None:
            if same_origin(origin.decode("latin-1"), host):
                return None
            return 403, (f"Origin {_shown(origin.decode('latin-1'))!r}: another site than this server "
                         f"({_shown(host_text)}); what changes something must come from this server's own page")
        fetch_site = headers.get(b"sec-fetch-site", b"").decode("latin-1").strip().lower()
        if fetch_site in ("cross-site", "same-site"):
            return 403, (f"Sec-Fetch-Site: {_shown(fetch_site)}: the request comes from another site; what changes "
                         "something must come from this server's own page")
        return None

    async def __call__(self, scope, receive, send):
        problem = self.problem(scope) if scope["type"] in ("http", "websocket") else None
        if problem is None:
            await self.app(scope, receive, send)
            return
        status, message = problem
        log.warning("refused %s %s: %s", scope.get("method", "websocket"), _shown(scope.get("path", "")), message)
        if scope["type"] == "websocket" and "websocket.http.response" not in (scope.get("extensions") or {}):
            await send({"type": "websocket.close", "code": 1008})  # the server cannot send a body: a plain 403
            return
        await refusal(status, message)(scope, receive, send)


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
        app.add_middleware(BasicAuthMiddleware, credentials=auth)
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
                        disabled_extensions=disabled_extensions(saved), compile=compile_unet(saved, args.compile))
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
