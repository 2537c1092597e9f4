"""Pictures in and out of the API: base64 (or data-URL) uploads decoded within this server's
limits, PNG answers with their infotext, A1111's ``html_info``, and the live preview of a
running job's latent."""
from __future__ import annotations

import base64
import binascii
import html
import io
import re
from typing import Any

from PIL import Image, PngImagePlugin

from app.api.errors import ApiError
from app.api.limits import ApiLimits
from app.preview import latent_preview as preview_picture

_DATA_URL = re.compile(r"^data:[^,]*?,", re.I)


def decode_image(data: Any, field: str, limits: ApiLimits) -> Image.Image:
    """A base64 picture (optionally a ``data:image/...;base64,`` URL) -> a loaded PIL image."""
    if not isinstance(data, str) or not data.strip():
        raise ApiError(400, f"{field}: no image given (expected a base64-encoded picture)")
    text = data.strip()
    if text.startswith(("http://", "https://")):
        raise ApiError(400, f"{field}: pictures are not fetched from URLs (this server is offline); send base64")
    match = _DATA_URL.match(text)
    if match:
        text = text[match.end():]
    text = "".join(text.split())
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{field}: not valid base64") from None
    if not raw:
        raise ApiError(400, f"{field}: the decoded picture is empty")
    try:
        image = Image.open(io.BytesIO(raw))
        if image.width * image.height > limits.max_input_pixels:
            raise ApiError(400, f"{field}: {image.width}x{image.height} is over this server's limit of "
                                f"{limits.max_input_pixels} pixels")
        image.load()
    except ApiError:
        raise
    except Image.DecompressionBombError:
        raise ApiError(400, f"{field}: picture too large") from None
    except Exception as exc:  # noqa: BLE001 - anything PIL raises means "not a picture we can read"
        raise ApiError(400, f"{field}: not a readable image ({type(exc).__name__})") from None
    return image


def encode_png(image: Image.Image, infotext: str | None = None) -> str:
    """A PIL image -> base64 PNG, with the infotext in a ``parameters`` chunk when given."""
    info = None
    if infotext:
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", infotext)
    if image.mode not in ("RGB", "RGBA", "L", "LA", "I", "I;16", "P", "1"):
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def html_info(text: str) -> str:
    """Plain text as A1111's html_info: escaped lines in one paragraph."""
    return "<p>" + "<br>\n".join(html.escape(line) for line in text.split("\n")) + "</p>"


def latent_preview(latent) -> Image.Image | None:
    """A step's (latent, latent format) as a small RGB picture (1/8 of the size), through the
    running model's preview colours (app/preview.py, shared with the page)."""
    latent, latent_format = latent if isinstance(latent, tuple) else (latent, None)
    return preview_picture(latent, latent_format, scale=1)
