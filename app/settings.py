"""The page's settings: kept in a JSON file, written atomically, read at every job.

Only plain values live here (folders, file name patterns, the image format, the live preview
frequency and the defaults the generation tabs start with). A value the file lacks, or holds
in a form that does not check out, falls back to its default, so an old or hand-edited file
never stops the page from coming up.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
# Where config.json and styles.csv live unless told otherwise (tests point this elsewhere).
DATA_DIR_ENV = "SD_STUDIO_DATA_DIR"

IMAGE_FORMATS = ("png", "jpg", "webp")
# The engine's own layout: <outdir>/<tab>-images/<YYYY-MM-DD>/NNNNN-SEED.png
DEFAULT_FOLDERS = {"txt2img": "txt2img-images", "img2img": "img2img-images", "extras": "extras-images"}
DEFAULT_DIR_PATTERN = "[date]"
DEFAULT_NAME_PATTERN = "[seed]"


# The folder beside launch.py that super-resolution "batch from folder" may read by default.
INPUTS_DIR = ROOT / "inputs"


def data_dir() -> Path:
    return Path(os.environ.get(DATA_DIR_ENV) or ROOT)


def default_allowed_dirs(output_dir: str | os.PathLike) -> list[Path]:
    """The folders the page may read and write by name (super-resolution batches) when
    launch.py is given no --allowed-dir: the outputs folder and inputs/ beside launch.py."""
    return [Path(output_dir), INPUTS_DIR]


@dataclass(frozen=True)
class Option:
    key: str
    default: Any
    label: str
    check: Callable[[Any], Any]  # returns the cleaned value or raises ValueError
    help: str = ""


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be text")
    return value.strip()


def _folder_name(value: Any) -> str:
    value = _text(value)
    if not value:
        raise ValueError("must not be empty")
    return value


def _pattern(value: Any) -> str:
    value = _text(value)
    if any(c in value for c in "\\\0") or ".." in value:
        raise ValueError("must not hold '\\', '..' or NUL")
    return value


def _choice(*choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        value = str(value).lower()
        if value == "jpeg":
            value = "jpg"
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value
    return check


def _one_of(*choices: str) -> Callable[[Any], str]:
    """Exactly one of ``choices`` (spelled as the API spells them: the two share config.json)."""
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value
    return check


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _int(low: int, high: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError("must be a whole number")
        number = float(value)
        if not number.is_integer() or not low <= number <= high:
            raise ValueError(f"must be a whole number from {low} to {high}")
        return int(number)
    return check


def _float(low: float, high: float) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, bool):
            raise ValueError("must be a number")
        number = float(value)
        if not low <= number <= high:
            raise ValueError(f"must be between {low} and {high}")
        return number
    return check


def _size(value: Any) -> int:
    number = _int(64, 2048)(value)
    if number % 8:
        raise ValueError("must be a multiple of 8")
    return number


def _sampler(value: Any) -> str:
    from core.sampling.samplers import SAMPLERS

    if value not in SAMPLERS:
        raise ValueError(f"unknown sampler {value!r}")
    return value


def _schedule(value: Any) -> str:
    from core.sampling.schedules import AUTOMATIC, SCHEDULES

    if value != AUTOMATIC and value not in SCHEDULES:
        raise ValueError(f"unknown schedule type {value!r}")
    return value


OPTIONS: tuple[Option, ...] = (
    Option("outdir", "", "Output folder", _text,
           "where images are saved, inside the --outdir given to launch.py (empty: that folder); "
           "a folder elsewhere needs launch.py --outdir"),
    Option("outdir_txt2img", DEFAULT_FOLDERS["txt2img"], "txt2img folder", _folder_name,
           "inside the output folder"),
    Option("outdir_img2img", DEFAULT_FOLDERS["img2img"], "img2img and inpaint folder", _folder_name),
    Option("outdir_extras", DEFAULT_FOLDERS["extras"], "Super-resolution folder", _folder_name),
    Option("directory_pattern", DEFAULT_DIR_PATTERN, "Sub-folder pattern", _pattern,
           "tokens as in the file name; empty: no sub-folder"),
    Option("filename_pattern", DEFAULT_NAME_PATTERN, "File name pattern", _pattern,
           "after the NNNNN- number: [seed] [prompt_words] [model_name] [sampler] [scheduler] [steps] [cfg] "
           "[width] [height] [date] [datetime]"),
    Option("image_format", "png", "Image format", _choice(*IMAGE_FORMATS),
           "JPEG and WebP carry the parameters in EXIF UserComment, PNG in a 'parameters' chunk"),
    Option("jpeg_quality", 90, "JPEG/WebP quality", _int(1, 100)),
    Option("ESRGAN_tile", 256, "Upscaler tile size", _int(0, 4096),
           "super-resolution models run in tiles of this many input pixels (0: the whole picture at once)"),
    Option("ESRGAN_tile_overlap", 32, "Upscaler tile overlap", _int(0, 1024), "pixels shared by neighbouring tiles"),
    Option("preview_every", 5, "Live preview every N steps", _int(0, 1000), "0: no live preview"),
    Option("default_sampler", "Euler", "Default sampler", _sampler),
    Option("default_scheduler", "Automatic", "Default schedule type", _schedule),
    Option("default_steps", 20, "Default sampling steps", _int(1, 150)),
    Option("default_cfg_scale", 7.0, "Default CFG scale", _float(1.0, 30.0)),
    Option("default_width", 512, "Default width", _size),
    Option("default_height", 512, "Default height", _size),
    Option("default_denoising_strength", 0.75, "Default denoising strength", _float(0.0, 1.0)),
    Option("sd_model_prediction", "auto", "What the checkpoint predicts", _one_of("auto", "eps", "v"),
           "auto: from its files (metadata, a .yaml beside it, SD 2.x's test pass); eps or v when that is wrong. "
           "The checkpoint is loaded again at the next job"),
    Option("sd_noise_schedule", "Default", "Noise schedule", _one_of("Default", "Zero Terminal SNR"),
           "Zero Terminal SNR: for checkpoints trained with it; Default: as the checkpoint says"),
    Option("sd_checkpoint_load_at_start", True, "Load the checkpoint when the server starts", _bool,
           "in the background, so the first Generate need not wait for it; off: it loads on first use. "
           "Applied at the next start"),
    Option("disabled_extensions", "", "Disabled extensions", _text,
           "names of folders in extensions/, separated by commas; applied at the next start"),
    Option("model_download_url", "", "Model download URL", _text,
           "offered on first run when models/Stable-diffusion holds no checkpoint; empty: SD 1.5 (pruned, EMA only)"),
    Option("model_download_sha256", "", "Model download sha256", _text,
           "checked after the download; empty: the default model's known hash, or no check for another URL"),
)


def disabled_extensions(settings: "Settings") -> set[str]:
    return {name.strip() for name in str(settings["disabled_extensions"]).split(",") if name.strip()}
OPTION_BY_KEY = {o.key: o for o in OPTIONS}


class SettingsError(ValueError):
    """A value the user entered that does not check out; the message names the setting."""


class Settings:
    """The settings in memory, backed by ``path`` (JSON). Thread-safe: jobs read while the
    Settings tab writes."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path else data_dir() / "config.json"
        self._values = {o.key: o.default for o in OPTIONS}
        self._lock = threading.Lock()
        self.load_warnings: list[str] = []
        self.save_notice: str | None = None
        self.load()

    def __getitem__(self, key: str) -> Any:
        with self._lock:
            return self._values[key]

    def values(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._values)

    def load(self) -> None:
        self.load_warnings = []
        try:
            stored = read_settings_file(self.path)
        except OSError as exc:
            self.load_warnings.append(f"{self.path}: cannot be read ({exc.strerror or exc}); using the defaults, "
                                      "and settings cannot be saved until it can be read")
            log.warning(self.load_warnings[-1])
            stored = {}
        notice = settings_file_notice(self.path)
        if notice:
            self.load_warnings.append(notice)
        values = {o.key: o.default for o in OPTIONS}
        for key, value in stored.items():
            option = OPTION_BY_KEY.get(key)
            if option is None:
                continue  # a setting of a later or earlier version: kept on disk, ignored here
            try:
                values[key] = option.check(value)
            except (ValueError, TypeError) as exc:
                self.load_warnings.append(f"{self.path}: {key}: {exc}; using {option.default!r}")
        with self._lock:
            self._values = values

    def update(self, changes: dict[str, Any]) -> list[str]:
        """Check every change, then store all of them and save; returns the keys that changed.
        Raises SettingsError naming the first bad value (nothing is stored then). Only the
        changes are written: every other key in the file (this version's or not, a value that
        does not check out included) stays as the user left it."""
        checked = {}
        for key, value in changes.items():
            option = OPTION_BY_KEY.get(key)
            if option is None:
                raise SettingsError(f"unknown setting {key!r}")
            try:
                checked[key] = option.check(value)
            except (ValueError, TypeError) as exc:
                raise SettingsError(f"{option.label}: {exc} (got {value!r})") from None
        with self._lock:
            changed = [k for k, v in checked.items() if self._values[k] != v]
            new = {**self._values, **checked}
            notice = update_settings_file(self.path, checked)
            self._values = new
        # the file became unreadable since it was loaded and was set aside by this save
        self.save_notice = notice
        if notice and notice not in self.load_warnings:
            self.load_warnings.append(notice)
        return changed


def write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable (POSIX; Windows cannot open a folder)
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


# ---------------------------------------------------------------------------------------------
# config.json on disk: shared by the page's Settings and the API's OptionsStore
# ---------------------------------------------------------------------------------------------

# One lock for every reader and writer of a settings file in this process: a read-merge-write
# by the page never interleaves with one by the API, and a broken file is set aside only once.
_settings_file_lock = threading.RLock()
# path -> what was done with its unreadable file in this process; every later reader reports it
# (the page's Settings and the API's options are built after the first read has set it aside).
_set_aside_notices: dict[Path, str] = {}


def set_aside(path: Path) -> Path:
    """Rename ``path`` to ``<name>.bad-YYYYmmdd-HHMMSS`` (``-2``, ``-3``... when taken) beside it
    and return the new path. An earlier .bad file is never replaced: the new name is made with
    os.link, which fails on an existing name."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for attempt in range(1, 1000):
        kept = path.with_name(f"{path.name}.bad-{stamp}" + (f"-{attempt}" if attempt > 1 else ""))
        try:
            os.link(path, kept)
        except FileExistsError:
            continue
        except OSError:  # a file system without hard links: check the name, then rename
            if kept.exists():
                continue
            os.rename(path, kept)
            return kept
        os.unlink(path)
        return kept
    raise OSError(f"{path}: no free name to keep it aside as {path.name}.bad-{stamp}")


def settings_file_notice(path: str | os.PathLike) -> str | None:
    """Why the settings file at ``path`` was set aside in this process, or None."""
    with _settings_file_lock:
        return _set_aside_notices.get(Path(path).absolute())


def read_settings_file(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON object in the settings file ({} when there is none). A file that is there but
    holds no JSON object (broken JSON, a list, bytes that are not UTF-8) is renamed aside by
    ``set_aside`` and {} returned, so the next save starts a new file and the user's one is kept
    whole; the warning goes to the log and to ``settings_file_notice``. A value of the wrong type
    for one key is no reason: the caller checks values key by key.

    Raises OSError when the file cannot be read or set aside: the caller must then not write."""
    path = Path(path)
    with _settings_file_lock:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return {}
        try:
            data = json.loads(raw.decode("utf-8-sig"))  # utf-8-sig: a BOM left by an editor is fine
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            why = f"not JSON ({exc})"
        else:
            if isinstance(data, dict):
                return data
            why = f"holds a JSON {type(data).__name__}, not an object"
        kept = set_aside(path)
        notice = (f"{path} could not be read: {why}. It is kept as {kept.name} and the defaults are used; "
                  "copy the settings you want back from it")
        log.warning(notice)
        _set_aside_notices[path.absolute()] = notice
        return {}


def update_settings_file(path: str | os.PathLike, changes: dict[str, Any]) -> str | None:
    """Write ``changes`` into the settings file, keeping every other key it holds, atomically.
    Returns the notice when this call found the file unreadable and set it aside (see
    ``read_settings_file``), else None. Raises OSError when the file cannot be read or written."""
    path = Path(path)
    with _settings_file_lock:
        before = settings_file_notice(path)
        stored = read_settings_file(path)
        stored.update(changes)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, json.dumps(stored, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        after = settings_file_notice(path)
        return after if after != before else None
