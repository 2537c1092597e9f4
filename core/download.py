"""Fetching a checkpoint over HTTP(S): resumable, checksummed, never leaving a broken file.

The data goes to ``NAME.part`` beside the target; an interrupted transfer resumes from the
part's length with an HTTP Range request; when the whole file is there its sha256 is checked
and only then is it renamed into place. A mismatch deletes the part and says so.
"""
from __future__ import annotations

import hashlib
import os
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

from core.errors import UNAVAILABLE, EngineError

# The default offered on first run when models/Stable-diffusion is empty; both are settings.
DEFAULT_MODEL_URL = "https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5/resolve/main/v1-5-pruned-emaonly.safetensors"
DEFAULT_MODEL_SHA256 = "6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa"
CHUNK = 1 << 20


@dataclass
class DownloadProgress:
    done: int
    total: int | None

    @property
    def fraction(self) -> float | None:
        return self.done / self.total if self.total else None


def network_reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether the URL's host answers a TCP connection at all (offline machines say no fast)."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def download(
    url: str,
    target: str | os.PathLike,
    sha256: str | None = None,
    progress: Callable[[DownloadProgress], None] | None = None,
    timeout: float = 30.0,
) -> Path:
    """Download ``url`` to ``target``, resuming a ``target.part`` left by an earlier attempt."""
    target = Path(target)
    if urlparse(url).scheme not in ("http", "https"):
        raise EngineError(f"only http(s) URLs are supported, got {url!r}", "download")
    if target.exists():
        raise EngineError(f"{target.name} already exists; not overwriting it", "download")
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    start = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - scheme checked above
    except urllib.error.HTTPError as e:
        if e.code == 416 and start:  # the part is already complete
            response = None
        else:
            raise EngineError(f"{url}: HTTP {e.code} {e.reason}", "download", UNAVAILABLE) from None
    except (urllib.error.URLError, OSError) as e:
        raise EngineError(f"{url}: cannot connect ({getattr(e, 'reason', e)})", "download", UNAVAILABLE) from None
    if response is not None:
        with response:
            if start and response.status != 206:
                start = 0  # the server ignored the Range header: start over
            length = response.headers.get("Content-Length")
            total = start + int(length) if length is not None else None
            done = start
            try:
                with open(part, "ab" if start else "wb") as f:
                    while block := response.read(CHUNK):
                        f.write(block)
                        done += len(block)
                        if progress:
                            progress(DownloadProgress(done, total))
                    f.flush()
                    os.fsync(f.fileno())
            except (OSError, ConnectionError) as e:
                raise EngineError(f"interrupted after {done} bytes ({e}); run it again to resume", "download", UNAVAILABLE) from None
            if total is not None and done < total:
                raise EngineError(f"interrupted after {done} of {total} bytes; run it again to resume", "download", UNAVAILABLE)
    if sha256:
        actual = _sha256(part)
        if actual.lower() != sha256.lower():
            part.unlink()
            raise EngineError(
                f"{target.name}: checksum mismatch (expected {sha256[:12]}..., got {actual[:12]}...); "
                "the partial file was deleted", "download"
            )
    os.replace(part, target)
    return target
