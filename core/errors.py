"""The one exception type the engine raises for problems a user can fix."""


class EngineError(Exception):
    """A one-line, user-facing message: what (file, field) and why. Never a traceback."""
