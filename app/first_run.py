"""First run without a checkpoint: offer to download one, with progress; offline, say so once
and go on with the bundled demo model.

The download itself (resume, sha256 check, never a broken file) is core.download's; this module
decides the URL and file name, checks the network once per process and fits the result into
the checkpoint list.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable
from urllib.parse import unquote, urlparse

from core.demo import is_demo
from core.download import DEFAULT_MODEL_SHA256, DEFAULT_MODEL_URL, DownloadProgress, download, network_reachable
from core.errors import EngineError

SUFFIXES = (".safetensors", ".ckpt")


class ModelOffer:
    """What the page needs to offer a download. ``reachable`` is injectable for tests."""

    def __init__(self, engine: Any, settings: Any = None, reachable: Callable[[str], bool] = network_reachable):
        self.engine = engine
        self.settings = settings
        self.reachable = reachable
        self._network: dict[str, bool] = {}  # url host -> answer, asked once per process
        self._lock = threading.Lock()

    def _setting(self, key: str) -> str:
        try:
            return str(self.settings[key]).strip() if self.settings is not None else ""
        except KeyError:
            return ""

    def url(self) -> str:
        return self._setting("model_download_url") or DEFAULT_MODEL_URL

    def sha256(self, url: str) -> str | None:
        return self._setting("model_download_sha256") or (DEFAULT_MODEL_SHA256 if url == DEFAULT_MODEL_URL else None)

    def needed(self) -> bool:
        """True when the user has no checkpoint of their own (the demo does not count)."""
        return not [name for name in self.engine.list_checkpoints() if not is_demo(name)]

    def online(self, url: str) -> bool:
        host = urlparse(url).hostname or ""
        with self._lock:
            if host not in self._network:
                self._network[host] = bool(host) and self.reachable(url)
            return self._network[host]

    def notice(self) -> str:
        """One line for the page: what there is and what can be done."""
        if not self.needed():
            return ""
        url = self.url()
        if not self.online(url):
            return (f"Offline: {urlparse(url).hostname or url} cannot be reached, so no model can be downloaded. "
                    "Using the bundled demo model (64x64 coloured shapes); put checkpoints in models/Stable-diffusion.")
        return f"No checkpoint yet. Download one (about 4 GB) from {url}, or put your own in models/Stable-diffusion."

    def target(self, url: str) -> Path:
        name = Path(unquote(urlparse(url).path)).name
        if not name.lower().endswith(SUFFIXES):
            raise EngineError(f"download: the URL must name a .safetensors or .ckpt file, got {name or url!r}")
        if name.startswith(".") or is_demo(name):
            raise EngineError(f"download: {name!r} is not an acceptable file name")
        return Path(self.engine.ckpt_dir) / name

    def fetch(self, url: str | None = None, sha256: str | None = None,
              progress: Callable[[DownloadProgress], None] | None = None) -> str:
        """Download into the checkpoint folder; returns the new checkpoint's name."""
        url = (url or "").strip() or self.url()
        if urlparse(url).scheme not in ("http", "https"):
            raise EngineError(f"download: only http(s) URLs are supported, got {url!r}")
        target = self.target(url)
        if target.exists():
            return target.name
        if not self.online(url):
            raise EngineError(f"download: {urlparse(url).hostname} cannot be reached (offline?); the demo model stays in use")
        download(url, target, (sha256 or "").strip() or self.sha256(url), progress=progress)
        return target.name


def download_panel(ui: Any, checkpoint: Any) -> tuple[Any, ModelOffer]:
    """The first-run accordion above the tabs (shown when there is no checkpoint of one's own).
    Returns its notice and the offer: the caller fills the notice on page load (the network
    probe may take seconds, so not while the page is built)."""
    import gradio as gr

    offer = ModelOffer(ui.engine, getattr(ui, "settings", None))
    needed = offer.needed()
    with gr.Accordion("Get a Stable Diffusion model", open=needed, visible=needed, elem_id="model_download"):
        notice = gr.Markdown(elem_id="model_download_notice")
        with gr.Row():
            url = gr.Textbox(label="Checkpoint URL", value=offer.url(), scale=4, elem_id="model_download_url")
            sha = gr.Textbox(label="sha256 (optional)", value=offer.sha256(offer.url()) or "", scale=2,
                             elem_id="model_download_sha256")
        button = gr.Button("Download", variant="primary", elem_id="model_download_button")

    def run(url_value: str, sha_value: str, current: str | None, progress=gr.Progress()):
        def show(p: DownloadProgress) -> None:
            if p.total:
                progress(p.fraction, desc=f"downloading: {p.done / 2**20:.0f} / {p.total / 2**20:.0f} MB")

        try:
            name = offer.fetch(url_value, sha_value, show)
        except EngineError as exc:
            return f"**{exc}**", gr.Dropdown()
        dropdown = ui.refresh_checkpoints(name)
        return f"Downloaded **{name}**; it is now selected.", dropdown

    button.click(run, inputs=[url, sha, checkpoint], outputs=[notice, checkpoint], api_name="download_model")
    return notice, offer
