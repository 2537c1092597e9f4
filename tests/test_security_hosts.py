"""Cross-site and host checks (issue 14): DNS rebinding and cross-site requests must not give a
web page the API of a studio served on 127.0.0.1.

A rebinding page reaches the server under the attacker's name, so its requests carry
``Host: attacker.example``: refused (400) on everything served, API, docs and page. A page on
another site may still send requests that change state (a body-less POST needs no CORS
preflight): refused (403) when their Origin, or without one their Sec-Fetch-Site, says they
come from another site. Clients that are not browsers (curl, webuiapi) send no Origin and are
served as before. Real servers (uvicorn on a loopback port) over the tiny checkpoint.
"""
from __future__ import annotations

import asyncio
import io
import json
import threading
import time

import pytest
import requests
from fastapi import WebSocket
from PIL import Image

from test_api import LiveServer, serve, tiny  # noqa: F401 - serve is a fixture (over this module's engine)

from app.guards import HostPolicy
from app.server import create_app
from launch_args import launch_args

ATTACKER = "attacker.example"


@pytest.fixture(scope="module")
def engine(tiny_checkpoints, tmp_path_factory):
    from tiny_models import engine_on_tiny_checkpoint

    root = tmp_path_factory.mktemp("hosts")
    (root / "no-extensions").mkdir()
    return engine_on_tiny_checkpoint(root, tiny_checkpoints["safetensors"], models_dir=root / "models",
                                     extensions_dir=root / "no-extensions")


def get(server: LiveServer, path: str, host: str | None = None, **kwargs) -> requests.Response:
    headers = kwargs.pop("headers", {})
    if host is not None:
        headers["Host"] = host
    return requests.get(server.url + path, headers=headers, timeout=60, **kwargs)


def post(server: LiveServer, path: str, origin: str | None = None, **kwargs) -> requests.Response:
    headers = kwargs.pop("headers", {})
    if origin is not None:
        headers["Origin"] = origin
    return requests.post(server.url + path, headers=headers, timeout=120, **kwargs)


def assert_refused(response: requests.Response, status: int, *words: str) -> None:
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json")
    message = response.json()["errors"]
    assert all(word in message for word in words), message


# ---------------------------------------------------------------- the Host header


def test_wrong_host_is_refused_on_api_docs_and_page(serve, tmp_path, monkeypatch):
    monkeypatch.setenv("SD_STUDIO_DATA_DIR", str(tmp_path / "page-data"))
    server = serve(ui=True)
    for path in ("/sdapi/v1/options", "/docs", "/openapi.json", "/", "/gradio_api/info"):
        assert_refused(get(server, path, host=ATTACKER), 400, ATTACKER, "--allowed-host")
        assert_refused(get(server, path, host=f"{ATTACKER}:{server.port}"), 400, ATTACKER)
        assert get(server, path).status_code == 200, path  # Host: 127.0.0.1:PORT
    assert_refused(post(server, "/sdapi/v1/interrupt", headers={"Host": ATTACKER}), 400, ATTACKER)
    # The loopback names are allowed, on any port (an SSH tunnel or a proxy changes the port).
    for host in (f"localhost:{server.port}", "localhost", "LOCALHOST.", "127.0.0.1:1", f"[::1]:{server.port}"):
        assert get(server, "/sdapi/v1/options", host=host).status_code == 200, host
    # A LAN address is not, on a server that only listens on 127.0.0.1; nor are malformed ones.
    for host in ("192.168.1.20:7860", "localhost.attacker.example", "127.0.0.1.attacker.example", "[::1",
                 "localhost:port", ""):
        assert get(server, "/sdapi/v1/options", host=host).status_code == 400, host


def test_allowed_host_names_are_served(serve):
    server = serve(allowed_hosts=HostPolicy(extra=["Studio.LAN", "[fd00::7]:7860"]))
    assert get(server, "/sdapi/v1/options", host=f"studio.lan:{server.port}").status_code == 200
    assert get(server, "/sdapi/v1/options", host="[fd00::7]").status_code == 200
    assert get(server, "/sdapi/v1/options", host="localhost").status_code == 200  # the defaults stay
    assert_refused(get(server, "/sdapi/v1/options", host="other.lan"), 400, "other.lan")


def test_listen_serves_the_machines_names_and_any_address(engine, tmp_path):
    """With --listen a LAN user reaches the studio by its IP or host name: both served. An IP
    address cannot be a rebinding (that needs the attacker's name), so every address is served."""
    import socket

    from fastapi.testclient import TestClient

    app = create_app(engine, api=True, ui=False, options_path=tmp_path / "config.json",
                     allowed_hosts=HostPolicy(listen=True))
    name = socket.gethostname().lower()
    for base in ("http://192.168.1.20:7860", "http://10.0.0.5", "http://[fe80::1]:7860", f"http://{name}:7860",
                 "http://localhost"):
        assert TestClient(app, base_url=base).get("/sdapi/v1/progress").status_code == 200, base
    assert TestClient(app, base_url=f"http://{ATTACKER}").get("/sdapi/v1/progress").status_code == 400
    loopback_only = create_app(engine, api=True, ui=False, options_path=tmp_path / "config.json")
    assert TestClient(loopback_only, base_url="http://192.168.1.20:7860").get("/sdapi/v1/progress").status_code == 400


# ---------------------------------------------------------------- requests from another site


def test_cross_site_interrupt_is_refused_and_the_job_goes_on(engine, serve):
    server = serve()
    finished = {}
    body = tiny(steps=100, n_iter=2)  # long enough to be running while the other site tries

    def generate():
        finished["response"] = requests.post(server.url + "/sdapi/v1/txt2img", json=body, timeout=300)

    worker = threading.Thread(target=generate)
    worker.start()
    try:
        limit = time.monotonic() + 120
        while get(server, "/sdapi/v1/progress").json()["state"]["sampling_step"] < 1:
            assert worker.is_alive() and time.monotonic() < limit, "the job did not start"
            time.sleep(0.02)
        refused = post(server, "/sdapi/v1/interrupt", origin=f"http://{ATTACKER}")
        assert_refused(refused, 403, f"http://{ATTACKER}")
        assert_refused(post(server, "/sdapi/v1/interrupt", origin="null"), 403)
        assert_refused(post(server, "/sdapi/v1/interrupt", headers={"Sec-Fetch-Site": "cross-site"}), 403,
                       "cross-site")
        # Another page on this machine (another port) is another site too.
        assert_refused(post(server, "/sdapi/v1/interrupt", origin="http://127.0.0.1:1"), 403)
        assert not engine.flags.interrupted
        assert not get(server, "/sdapi/v1/progress").json()["state"]["interrupted"]
    finally:
        worker.join(300)
    made = finished["response"]
    assert made.status_code == 200 and len(made.json()["images"]) == 2  # both batches: never interrupted


def test_same_origin_and_clients_without_origin_may_interrupt(engine, serve):
    server = serve()
    same = post(server, "/sdapi/v1/interrupt", origin=server.url, headers={"Sec-Fetch-Site": "same-origin"})
    assert same.status_code == 200 and engine.flags.interrupted
    engine.flags.interrupted = False
    assert post(server, "/sdapi/v1/interrupt").status_code == 200 and engine.flags.interrupted  # curl-like
    engine.flags.interrupted = False
    # The page opened under another loopback name: its Origin and Host agree.
    named = post(server, "/sdapi/v1/interrupt", origin="http://localhost:%d" % server.port,
                 headers={"Host": f"localhost:{server.port}"})
    assert named.status_code == 200 and engine.flags.interrupted
    engine.flags.interrupted = False
    # Reading is not refused for an Origin (the browser keeps the answer from the other site).
    assert get(server, "/sdapi/v1/progress", headers={"Origin": f"http://{ATTACKER}"}).status_code == 200


def test_cross_site_unload_is_refused_and_the_checkpoint_stays_loaded(engine, serve):
    server = serve()
    api = server.client()
    assert api.util_get_current_model().startswith("tiny")
    assert post(server, "/sdapi/v1/reload-checkpoint").status_code == 200 and engine.loaded is not None
    assert_refused(post(server, "/sdapi/v1/unload-checkpoint", origin=f"http://{ATTACKER}"), 403)
    assert_refused(post(server, "/sdapi/v1/unload-checkpoint", origin=f"https://{ATTACKER}:8443"), 403)
    assert_refused(post(server, "/sdapi/v1/unload-checkpoint", headers={"Sec-Fetch-Site": "same-site"}), 403)
    assert_refused(requests.put(server.url + "/sdapi/v1/unload-checkpoint", timeout=30,
                                headers={"Origin": f"http://{ATTACKER}"}), 403)
    assert engine.loaded is not None and engine.loaded.name == "tiny"
    # A setting changed cross-site with a JSON body is refused just the same.
    assert_refused(post(server, "/sdapi/v1/options", origin=f"http://{ATTACKER}", json={"samples_format": "jpg"}), 403)
    assert get(server, "/sdapi/v1/options").json()["samples_format"] == "png"
    # Clients without an Origin (curl, webuiapi) do what they ask.
    assert post(server, "/sdapi/v1/unload-checkpoint").status_code == 200 and engine.loaded is None
    assert api.txt2img(prompt="x", width=64, height=64, steps=1, seed=1).images[0].size == (64, 64)


def test_with_auth_both_checks_still_apply(engine, serve):
    server = serve(auth={"alice": "s3cret"})
    login = ("alice", "s3cret")
    # A wrong Host is refused before the password is asked for (no login prompt for the other site).
    refused = get(server, "/sdapi/v1/options", host=ATTACKER, auth=login)
    assert_refused(refused, 400, ATTACKER)
    assert "WWW-Authenticate" not in get(server, "/sdapi/v1/options", host=ATTACKER).headers
    engine.flags.interrupted = False
    assert_refused(post(server, "/sdapi/v1/interrupt", origin=f"http://{ATTACKER}", auth=login), 403)
    assert not engine.flags.interrupted
    assert post(server, "/sdapi/v1/interrupt", origin=server.url).status_code == 401
    assert post(server, "/sdapi/v1/interrupt", origin=server.url, auth=login).status_code == 200
    assert engine.flags.interrupted
    engine.flags.interrupted = False


def test_the_page_works_from_its_own_origin(serve, tmp_path, monkeypatch):
    """What the Gradio page does from the browser: read its config, upload a picture with its
    own Origin; the same upload from another site is refused."""
    monkeypatch.setenv("SD_STUDIO_DATA_DIR", str(tmp_path / "page-data"))
    server = serve(ui=True)
    assert get(server, "/config", headers={"Sec-Fetch-Site": "same-origin"}).status_code == 200
    png = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(png, format="PNG")

    def upload(origin: str, fetch_site: str) -> requests.Response:
        files = {"files": ("red.png", png.getvalue(), "image/png")}
        return requests.post(server.url + "/gradio_api/upload", files=files,
                             headers={"Origin": origin, "Sec-Fetch-Site": fetch_site}, timeout=60)

    same = upload(server.url, "same-origin")
    assert same.status_code == 200 and same.json()[0].endswith("red.png"), same.text[:300]
    assert_refused(upload(f"http://{ATTACKER}", "cross-site"), 403, ATTACKER)


# ---------------------------------------------------------------- websockets (at the ASGI level)


def _websocket_attempt(app, headers: list[tuple[bytes, bytes]], denial_extension: bool) -> list[dict]:
    """Run one websocket handshake through ``app`` as an ASGI server would; the messages it sent."""
    scope = {"type": "websocket", "path": "/ws-probe", "raw_path": b"/ws-probe", "query_string": b"",
             "headers": headers, "scheme": "ws", "server": ("127.0.0.1", 7860), "client": ("127.0.0.1", 5000),
             "root_path": "", "subprotocols": [], "asgi": {"version": "3.0"},
             "extensions": {"websocket.http.response": {}} if denial_extension else {}}
    sent: list[dict] = []
    incoming = [{"type": "websocket.connect"}, {"type": "websocket.disconnect", "code": 1000}]

    async def receive():
        return incoming.pop(0) if incoming else {"type": "websocket.disconnect", "code": 1000}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def test_cross_site_websocket_upgrades_are_refused(engine, tmp_path):
    app = create_app(engine, api=True, ui=False, options_path=tmp_path / "config.json")

    @app.websocket("/ws-probe")
    async def probe(websocket: WebSocket):
        await websocket.accept()
        await websocket.send_text("hello")
        await websocket.close()

    host = [(b"host", b"127.0.0.1:7860")]
    same = _websocket_attempt(app, host + [(b"origin", b"http://127.0.0.1:7860")], True)
    assert [m["type"] for m in same][:2] == ["websocket.accept", "websocket.send"], same
    assert _websocket_attempt(app, host, False)[0]["type"] == "websocket.accept"  # no Origin: not a browser
    foreign = _websocket_attempt(app, host + [(b"origin", b"http://attacker.example")], True)
    assert foreign[0] == {"type": "websocket.http.response.start", "status": 403, "headers": foreign[0]["headers"]}
    assert "attacker.example" in json.loads(foreign[1]["body"])["errors"]
    without_extension = _websocket_attempt(app, host + [(b"origin", b"http://attacker.example")], False)
    assert without_extension == [{"type": "websocket.close", "code": 1008}]
    rebound = _websocket_attempt(app, [(b"host", b"attacker.example")], True)
    assert rebound[0]["status"] == 400 and not any(m["type"] == "websocket.accept" for m in rebound)


# ---------------------------------------------------------------- launch.py and serve()


def test_allowed_host_flag_reaches_the_app(monkeypatch, engine, tmp_path):
    import launch

    import app.server as server

    args = launch.build_parser().parse_args(["--allowed-host", "studio.lan", "--allowed-host", "render-box"])
    assert args.allowed_host == ["studio.lan", "render-box"]
    assert launch.build_parser().parse_args([]).allowed_host == []
    calls = []
    monkeypatch.setattr(server, "run_uvicorn", lambda app, host, port: calls.append(app) or 0)

    class OneEngine:
        def __new__(cls, **kwargs):
            return engine

    import core.engine

    monkeypatch.setattr(core.engine, "Engine", OneEngine)
    namespace = launch_args(device="cpu", precision="fp32", ckpt_dir=engine.ckpt_dir, outdir=tmp_path / "out",
                            port=7901, api=True, nowebui=True, ui_settings_file=tmp_path / "config.json",
                            allowed_host=["studio.lan"])
    assert server.serve(namespace) == 0
    from fastapi.testclient import TestClient

    def status(base: str) -> int:
        return TestClient(calls[-1], base_url=base).get("/sdapi/v1/progress").status_code

    assert (status("http://studio.lan:7901"), status("http://127.0.0.1:7901"), status("http://render-box")) == \
        (200, 200, 400)
    assert status("http://192.168.1.20:7901") == 400  # not listening on the network: no LAN address
    assert server.serve(launch_args(**{**vars(namespace), "listen": True, "insecure": True})) == 0
    assert (status("http://192.168.1.20:7901"), status("http://studio.lan"), status(f"http://{ATTACKER}")) == \
        (200, 200, 400)
