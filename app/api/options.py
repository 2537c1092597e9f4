"""Routes of the settings: /options (app/settings.py's registry under A1111's names, shared with
the page) and /cmd-flags. Setting sd_model_checkpoint loads it; setting what checkpoints
predict loads the current one again."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool

from app.api.checkpoints import load_checkpoint
from app.api.errors import ApiError, check_unicode, engine_error, error_responses
from app.api.group import RouteGroup
from app.api.schemas import OptionsModel
from app.api.translate import MODEL_OVERRIDES
from app.settings import API_OPTIONS, MAX_KEPT_KEYS, OPTION_BY_KEY, SettingsError, check_kept, engine_overrides
from core.errors import EngineError

if TYPE_CHECKING:
    from app.api.service import SdApi

_SECRET_FLAGS = ("api_auth",)


class OptionRoutes(RouteGroup):
    """GET and POST /options, GET /cmd-flags; ``option_changes`` and ``save_settings`` also
    serve a generation's override_settings."""

    def __init__(self, api: SdApi):
        super().__init__(api)
        self.cmd_flags = api.cmd_flags  # passwords already hidden (public_flags)

    def register(self, router: APIRouter) -> None:
        router.add_api_route("/options", self.get_options, methods=["GET"], response_model=OptionsModel)
        router.add_api_route("/options", self.set_options, methods=["POST"],
                             responses=error_responses(400, 404, 413, 422, 500))
        router.add_api_route("/cmd-flags", self.get_cmd_flags, methods=["GET"], response_model=dict[str, Any])

    def _settings_warning(self, response: Response) -> None:
        """A settings file that was set aside (not JSON, not an object) is told to every client
        of /options in an HTTP ``Warning`` header (code 199, "miscellaneous warning")."""
        if self.settings.notice:
            text = " ".join(self.settings.notice.split()).replace("\\", "\\\\").replace('"', '\\"')
            response.headers["Warning"] = f'199 - "{text.encode("ascii", "backslashreplace").decode()}"'

    def get_options(self, response: Response) -> dict:
        self._settings_warning(response)
        return self.options_now()

    def options_now(self) -> dict:
        """What GET /options reports: the registry's API options, the current checkpoint and its
        hash, and the keys kept for other programs."""
        values = self.settings.values()
        shown = {o.key: values[o.key] for o in API_OPTIONS}
        entry = self.checkpoints.current()
        shown["sd_model_checkpoint"] = entry.title if entry else values["sd_model_checkpoint"]
        shown["sd_checkpoint_hash"] = entry.sha256 if entry else None
        return {**self.settings.kept(), **shown}

    def option_changes(self, req: dict[str, Any], where: str = "", keep_unknown: bool = True) -> dict[str, Any]:
        """``req``'s settings, checked, less the ones that would change nothing: as A1111 does, a
        client may send back every option it read (read-only ones included) with one edited. A
        read-only option sent with another value (null aside: the client did not know it) is
        refused; so is a key outside the registry unless ``keep_unknown``. sd_model_checkpoint
        is left to the caller (it is resolved and loaded)."""
        if len(req) > len(OPTION_BY_KEY) + MAX_KEPT_KEYS:
            most = len(OPTION_BY_KEY) + MAX_KEPT_KEYS
            raise ApiError(413, f"{where or 'body'}: at most {most} settings in one request")
        current = self.options_now() if set(req) - {"sd_model_checkpoint"} else {}
        changes = {}
        for key, value in req.items():
            if key == "sd_model_checkpoint" and value is not None:
                changes[key] = check_option(key, value, where)
                continue
            if key in current and _same(value, current[key]):
                continue
            option = OPTION_BY_KEY.get(key)
            if option is not None and option.read_only and value is None:
                continue
            if option is None and not keep_unknown:
                raise ApiError(422, f"{where}{key}: not a setting this server uses, so it cannot change this job")
            changes[key] = check_option(key, value, where)
        return changes

    async def set_options(self, req: dict[str, Any], response: Response) -> None:
        """Change settings (A1111's names); they are saved at once. Options sent back unchanged
        are ignored. Setting sd_model_checkpoint loads that checkpoint."""
        changes = self.option_changes(req)
        checkpoint = None
        if "sd_model_checkpoint" in changes:
            sent = changes.pop("sd_model_checkpoint")
            checkpoint = self.checkpoints.find(sent, "sd_model_checkpoint")
            current = self.checkpoints.current()
            if current is None or sent != current.title:  # the title GET reported, sent back, is no new choice
                changes["sd_model_checkpoint"] = checkpoint
        if MODEL_OVERRIDES & set(changes):
            wanted = engine_overrides({**self.settings.values(), **changes})
            reload = checkpoint is None  # else the load below applies them
            await self.queue.run("load checkpoint", lambda: self._set_model_overrides(*wanted, reload=reload))
        if checkpoint is not None:
            await self.queue.run("load checkpoint", lambda: load_checkpoint(self.engine, checkpoint))
        if "sd_vae" in changes:
            await self.queue.run("load VAE", lambda: self._set_vae(changes["sd_vae"]))
        if changes:
            await run_in_threadpool(self.save_settings, changes)
        self._settings_warning(response)
        return None

    def _set_model_overrides(self, prediction: str, zero_terminal_snr: bool | None, reload: bool = True) -> None:
        """The engine's overrides; the loaded checkpoint is loaded again at once if they changed it."""
        engine = self.engine
        try:
            with engine.exclusive():
                engine.prediction, engine.zero_terminal_snr = prediction, zero_terminal_snr
                if reload and engine.loaded is not None:
                    engine.load(str(engine.loaded.path), allow_paths=True)
        except EngineError as exc:
            raise engine_error(exc) from None

    def _set_vae(self, choice: str) -> None:
        """sd_vae given to the engine and applied to the loaded model at once; a file that is
        missing or does not fit is refused (the setting and the model stay as they were)."""
        engine = self.engine
        with engine.exclusive():
            kept = engine.vae
            engine.vae = choice
            try:
                engine.apply_vae()
            except EngineError as exc:
                engine.vae = kept
                raise engine_error(exc) from None

    def save_settings(self, changes: dict) -> None:
        try:
            self.settings.update(changes)
        except SettingsError as exc:
            raise ApiError(422, str(exc)) from None
        except OSError as exc:
            raise ApiError(500, f"settings: cannot write {self.settings.path}: {exc.strerror or exc}") from None

    def get_cmd_flags(self) -> dict:
        return self.cmd_flags


def check_option(key: str, value: Any, where: str = "") -> Any:
    """A value a client sets for ``key``, checked; ApiError(422) naming ``where + key`` if wrong.
    A key outside the registry (an A1111 setting this server does not use) is kept if its value
    is JSON of bounded size."""
    name = f"{where}{key}"
    try:
        check_unicode([key, value])
    except ValueError as exc:
        raise ApiError(422, f"{name}: {exc}") from None
    option = OPTION_BY_KEY.get(key)
    try:
        if option is None:
            return check_kept(key, value)
        if not option.api:
            raise ValueError("a setting of the page (its Settings tab), not of the API")
        if option.read_only:
            raise ValueError("read-only setting")
        return option.check(value)
    except (ValueError, TypeError) as exc:
        raise ApiError(422, f"{name}: {exc}, got {value!r}"[:300]) from None


def _same(a: Any, b: Any) -> bool:
    """Equal JSON values (True is not 1 here)."""
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def public_flags(flags: dict) -> dict:
    """Command-line flags as JSON; passwords are never sent back."""
    out = {}
    for key, value in flags.items():
        if key in _SECRET_FLAGS and value:
            value = "<hidden>"
        elif isinstance(value, Path):
            value = str(value)
        elif not isinstance(value, (str, int, float, bool, type(None), list, dict)):
            value = str(value)
        out[key] = value
    return out
