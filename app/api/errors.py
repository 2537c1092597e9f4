"""The API's errors: ``ApiError`` (a client error whose message names the field), A1111's error
body and its OpenAPI model, the messages of requests that fail validation, the handlers that
answer every error in that shape, and ``engine_error`` (a core ``EngineError`` by its kind)."""
from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.errors import NOT_FOUND, EngineError

log = logging.getLogger(__name__)


class ApiError(Exception):
    """A client error with a one-line message that names the field."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _printable(text: str) -> str:
    """Text that can be sent as UTF-8 (lone surrogates from the client become escapes)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_body(kind: str, message: str, detail: Any = None) -> dict:
    """A1111's error shape: error (type), detail, body, errors (the message)."""
    message = _printable(message)
    return {"error": kind, "detail": message if detail is None else detail, "body": "", "errors": message}


class ValidationErrorItem(BaseModel):
    """One field error of a 422 from request validation."""

    type: str
    loc: list[str | int] = Field(description='where: ["body", "steps"], ["query", "skip_current_image"]')
    msg: str


class ErrorResponse(BaseModel):
    """Every error the API answers (400, 404, 413, 422, 500), in A1111's shape (``error_body``)."""

    error: str = Field(description="the kind: HTTPException, RequestValidationError, or an internal error's type")
    detail: str | list[ValidationErrorItem] = Field(
        description="the message; for a request that fails validation, the list of field errors")
    body: str
    errors: str = Field(description="the message, one line naming the field")


_ERROR_MEANINGS = {
    400: "A value the server cannot use: an undecodable picture or body, or a checkpoint that fails to load",
    404: "A named sampler, scheduler, checkpoint or upscaler that does not exist",
    413: "The body is larger than this server's limit",
    422: "A value out of range, over this server's limits, or not supported",
    500: "The server could not do it (e.g. cannot write its settings file)",
    501: "A feature of A1111's API this server does not have; the message names what is missing",
}


def error_responses(*statuses: int) -> dict[int, dict]:
    """The ``responses=`` of a route for the error statuses it can answer, with their body."""
    return {status: {"model": ErrorResponse, "description": _ERROR_MEANINGS[status]} for status in statuses}


def check_unicode(value: Any) -> None:
    """ValueError if any text inside ``value`` is not valid Unicode (a lone surrogate, which
    JSON allows as an escape but no PNG chunk or UTF-8 response can carry)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("text must be valid Unicode (it holds a lone surrogate)") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            check_unicode(key)
            check_unicode(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            check_unicode(item)


def _location(loc: tuple | list) -> str:
    """("body", "init_images", 0) -> "init_images[0]"."""
    text = ""
    for part in loc:
        if part in ("body", "query", "path", "header") and not text:
            continue
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"


def _validation_message(errors: list[dict]) -> str:
    parts = []
    for error in errors[:5]:
        where = _location(error.get("loc", ()))
        message = str(error.get("msg", "invalid value"))
        if error.get("type") == "json_invalid":
            where = "body"
            message = "malformed JSON" + (f" ({error['ctx']['error']})" if error.get("ctx", {}).get("error") else "")
        parts.append(f"{where}: {message}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


def install_error_handlers(app: FastAPI) -> None:
    """Map every error to A1111's error body; client errors with a message naming the field."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return JSONResponse(error_body("HTTPException", exc.message), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        detail = [{k: (_printable(v) if isinstance(v, str) else
                       [_printable(p) if isinstance(p, str) else p for p in v] if k == "loc" else v)
                   for k, v in e.items() if k in ("type", "loc", "msg")} for e in errors]
        return JSONResponse(error_body("RequestValidationError", _validation_message(errors), detail), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        return JSONResponse(error_body("HTTPException", message), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("API error: %s %s", request.method, request.url.path)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        message = f"internal error: {type(exc).__name__}" + (f": {first}" if first else "")
        return JSONResponse(error_body(type(exc).__name__, message), status_code=500)


# GenerationParams fields -> the request's (A1111's) names, for the messages of EngineErrors.
_FIELD_NAMES = {
    "sampler": "sampler_name",
    "batch_count": "n_iter",
    "clip_skip": "CLIP_stop_at_last_layers",
    "checkpoint": "sd_model_checkpoint",
    "image": "init_images[0]",
}


def engine_error(exc: EngineError, status: int = 400, field: str | None = None) -> ApiError:
    """A core EngineError as a client error, by its kind: a name that was not found is 404, the
    rest (invalid, too large, unavailable) ``status`` (422 where a request is checked before it
    runs, 400 for a job that failed). ``field``: the request's name for the field at fault,
    when the route knows it better (upscaler_1 for core's "upscaler")."""
    if field is None and exc.field is not None:
        field = _FIELD_NAMES.get(exc.field, exc.field)
    message = f"{field}: {exc.reason}" if field else str(exc)
    message = message.strip().splitlines()[0] if message.strip() else "invalid request"
    return ApiError(404 if exc.kind == NOT_FOUND else status, message)
