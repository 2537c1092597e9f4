"""First run without a checkpoint: offer to download one, with progress; offline, say so once
and go on with the bundled demo model.

The download itself (resume, sha256 check, never a broken file) is core.download's; this module
decides the URL and file name, checks the network once per process and fits the result into
the checkpoint list.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import unquote, urlparse

from core.demo import is_demo
from core.download import DEFAULT_MODEL_SHA256, DEFAULT_MODEL_URL, DownloadProgress, download, network_reachable
from core.errors import UNAVAILABLE, EngineError

if TYPE_CHECKING:
    from app.page.models import Models
    from core.engine_protocol import EngineProtocol

SUFFIXES = (".safetensors", ".ckpt")


class ModelOffer:
    """What the page needs to offer a download. ``reachable`` is injectable for tests."""

    def __init__(self, engine: EngineProtocol, settings: Any = None, reachable: Callable[[str], bool] = network_reachable):
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

    def offline(self) -> bool:
        """True when a download is wanted but its host cannot be reached."""
        return self.needed() and not self.online(self.url())

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
            raise EngineError(f"the URL must name a .safetensors or .ckpt file, got {name or url!r}", "download")
        if name.startswith(".") or is_demo(name):
            raise EngineError(f"{name!r} is not an acceptable file name", "download")
        return Path(self.engine.ckpt_dir) / name

    def fetch(self, progress: Callable[[DownloadProgress], None] | None = None) -> str:
        """Download the settings' URL (never one a request names) into the checkpoint folder,
        checked against the settings' sha256 when there is one (a mismatch is deleted);
        returns the new checkpoint's name."""
        url = self.url()
        if urlparse(url).scheme not in ("http", "https"):
            raise EngineError(f"only http(s) URLs are supported, got {url!r}", "download")
        target = self.target(url)
        if target.exists():
            return target.name
        if not self.online(url):
            raise EngineError(f"{urlparse(url).hostname} cannot be reached (offline?); the demo model stays in use", "download", UNAVAILABLE)
        download(url, target, self.sha256(url), progress=progress)
        return target.name

    def try_load(self, name: str) -> str | None:
        """Load the downloaded checkpoint (after any running job); None when it loaded, else
        why not. Nothing is selected before this says it loads."""
        try:
            with self.engine.exclusive():
                self.engine.load(name)
        except Exception as exc:  # noqa: BLE001 - any failure is reported, the selection stays
            return f"{type(exc).__name__}: {exc}" if not isinstance(exc, EngineError) else str(exc)
        return None


def download_panel(models: Models, checkpoint: Any) -> tuple[Any, ModelOffer]:
    """The first-run accordion above the tabs (shown when there is no checkpoint of one's own).
    Returns its notice and the offer: the caller fills the notice on page load (the network
    probe may take seconds, so not while the page is built)."""
    import gradio as gr

    offer = ModelOffer(models.engine, models.settings)
    needed = offer.needed()

    def describe() -> str:
        url = offer.url()
        sha = offer.sha256(url)
        return (f"From `{url}`" + (f", sha256 `{sha}`" if sha else ", no sha256 to check")
                + " (Settings: Model download URL / sha256)")

    with gr.Accordion("Get a Stable Diffusion model", open=needed, visible=needed, elem_id="model_download") as panel:
        notice = gr.Markdown(elem_id="model_download_notice")
        # Shown, not editable: the URL and sha256 are settings (launch.py --download-model is the
        # command line's way), so no request can make the server fetch another address.
        gr.Markdown(describe, elem_id="model_download_source")  # a callable: read again at every page load
        button = gr.Button("Download", variant="primary", elem_id="model_download_button")

    def run(current: str | None, progress=gr.Progress()):
        def show(p: DownloadProgress) -> None:
            if p.total:
                progress(p.fraction, desc=f"downloading: {p.done / 2**20:.0f} / {p.total / 2**20:.0f} MB")

        try:
            name = offer.fetch(show)
        except EngineError as exc:
            return f"**{exc}**", gr.Dropdown()
        problem = offer.try_load(name)
        if problem is not None:
            kept = f"**{current}** stays selected" if current else "nothing is selected"
            return (f"**Downloaded {name}, but it does not load: {problem}**; {kept}.",
                    gr.Dropdown(choices=models.checkpoint_choices(), value=current))
        return f"Downloaded and loaded **{name}**; it is now selected.", models.refresh_checkpoints(name)

    button.click(run, inputs=[checkpoint], outputs=[notice, checkpoint], api_name="download_model")

    def fold_when_offline(_notice: str) -> tuple[Any, Any]:
        """Offline, nothing can be downloaded: the panel folds to its one-line header (open, it
        pushed the results below the fold) and its button stops calling for a click."""
        offline = offer.offline()
        return gr.Accordion(open=not offline), gr.Button(variant="secondary" if offline else "primary")

    notice.change(fold_when_offline, inputs=[notice], outputs=[panel, button], show_progress="hidden")
    return notice, offer
