"""The server's trust boundary: its middleware, outermost first as app/server.py's create_app
stacks them, and the rules they apply (docs/SECURITY.md says what each refuses).

- HostOriginMiddleware (with HostPolicy): a request under a Host name the server is not known by
  is refused, and so is one from another site's page that would change something;
- BasicAuthMiddleware: HTTP Basic credentials (``--api-auth``), compared in constant time;
- BodyLimitMiddleware: no request body beyond the server's limit;
- FileAccessGuard: Gradio's file routes serve only images from the folders fixed at start.

Also the --listen rule (``listen_problem``) and the credentials' parsing (``parse_auth``).
"""
from __future__ import annotations

import argparse
import base64
import binascii
import ipaddress
import logging
import os
import re
import secrets
import socket
import urllib.parse
from pathlib import Path
from typing import Iterable

from fastapi.responses import JSONResponse

log = logging.getLogger(__name__)

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

    def __init__(self, app, credentials: dict[str, str], realm: str):
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
