"""The one exception type the engine raises for problems a user can fix.

An error carries what a caller needs to answer it without reading its text:

* ``field``: the GenerationParams field (or the argument) at fault, ``None`` when no single
  one is (a broken checkpoint file, a job that was asked for something impossible);
* ``kind``: what went wrong, one of

  - ``invalid``: a value out of its range or of the wrong type, a file that is not what it
    claims (the default);
  - ``not_found``: a name that was looked up and is not there (a sampler, a schedule type, a
    checkpoint, an upscaler, a model file the user named);
  - ``too_large``: a value or a result over one of the engine's size limits (pixels, bytes);
  - ``unavailable``: a well-formed request this engine or machine cannot serve (a device
    torch does not see, a model family recognised but not supported, a download offline).

The message the user sees is ``"<label>: <reason>"`` when a field is given (``label`` is the
field unless a friendlier name is given, as "schedule type" for ``scheduler``), else the reason
alone. The REST API maps ``kind`` to an HTTP status and ``field`` to its own field names.
"""
from __future__ import annotations

INVALID = "invalid"
NOT_FOUND = "not_found"
TOO_LARGE = "too_large"
UNAVAILABLE = "unavailable"
KINDS = (INVALID, NOT_FOUND, TOO_LARGE, UNAVAILABLE)


class EngineError(Exception):
    """A one-line, user-facing message: what (file, field) and why. Never a traceback."""

    def __init__(self, reason: str, field: str | None = None, kind: str = INVALID, label: str | None = None):
        if kind not in KINDS:
            raise ValueError(f"EngineError kind must be one of {', '.join(KINDS)}, got {kind!r}")
        self.reason = reason
        self.field = field
        self.kind = kind
        self.label = label or field
        super().__init__(f"{self.label}: {reason}" if self.label else reason)

    def renamed(self, field: str | None, label: str | None = None) -> "EngineError":
        """The same error about another field (a hires sampler checked by the sampler lookup)."""
        return EngineError(self.reason, field, self.kind, label)
