"""The settings of the page and of /sdapi/v1/options: one registry, one store, one JSON file.

``OPTIONS`` is the only list of settings: each ``Option`` has its key (A1111's name where A1111
has the setting), check, default, label and help, the Settings tab section that shows it, and
whether the API reports and sets it (``api``) or only reports it (``read_only``). The page's
Settings tab and the API's options model are built from it; a new setting is one entry here.

``Settings`` keeps the values, backed by config.json (written atomically, re-read before every
write). A value the file lacks, or holds in a form that does not check out, falls back to its
default, so an old or hand-edited file never stops the server from coming up; keys outside the
registry (A1111's settings that this server does not use) are kept and reported back.
"""
from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from core.conditioning import EMPHASIS_MODES
from core.upscaling.upscale import DEFAULT_OVERLAP, DEFAULT_TILE

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


def default_settings_file() -> Path:
    """config.json, where the page and /sdapi/v1/options keep their settings unless
    launch.py --ui-settings-file says otherwise."""
    return data_dir() / "config.json"


def default_allowed_dirs(output_dir: str | os.PathLike) -> list[Path]:
    """The folders the page may read and write by name (super-resolution batches) when
    launch.py is given no --allowed-dir: the outputs folder and inputs/ beside launch.py."""
    return [Path(output_dir), INPUTS_DIR]


# Where an option shows on the page's Settings tab (None: not on the page).
SAVING, DEFAULTS, CHECKPOINTS = "Saving images", "Defaults of the generation tabs", "Reading checkpoints"


@dataclass(frozen=True)
class Option:
    """One setting: its key in config.json (A1111's name where A1111 has the setting), its
    default, its label and help for people, and who may read and change it."""
    key: str
    default: Any
    label: str
    check: Callable[[Any], Any] | None = None  # the cleaned value, or ValueError; None: one of ``choices``
    help: str = ""
    choices: tuple | None = None
    kind: type | None = None  # the JSON type clients see (None: the default's type)
    section: str | None = None  # where the Settings tab shows it (None: not on the page)
    api: bool = False  # reported and set by /sdapi/v1/options
    read_only: bool = False  # reported only: the server works it out (a client that sends it back unchanged is fine)

    def __post_init__(self):
        if self.check is None:
            object.__setattr__(self, "check", _one_of(*self.choices))
        if self.kind is None:
            object.__setattr__(self, "kind", type(self.default))

    def clean(self, value: Any) -> Any:
        """``value`` checked; SettingsError naming the setting if it does not check out."""
        try:
            return self.check(value)
        except (ValueError, TypeError) as exc:
            raise SettingsError(f"{self.label}: {exc} (got {value!r})"[:300]) from None


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


def _image_format(value: Any) -> str:
    value = str(value).lower()
    if value == "jpeg":
        value = "jpg"
    if value not in IMAGE_FORMATS:
        raise ValueError(f"must be one of {', '.join(IMAGE_FORMATS)}")
    return value


def _one_of(*choices: Any) -> Callable[[Any], Any]:
    """Exactly one of ``choices``, spelled as given."""
    def check(value: Any) -> Any:
        if value not in choices or isinstance(value, bool) != any(isinstance(c, bool) for c in choices):
            raise ValueError(f"must be one of {', '.join(map(str, choices))}")
        return value
    return check


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _number(value: Any) -> float:
    """A JSON number (the page's number boxes give ints and floats; text is no number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError("must be a number")
    return value


def _int(low: int, high: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        number = _number(value)
        if not float(number).is_integer() or not low <= number <= high:
            raise ValueError(f"must be a whole number from {low} to {high}")
        return int(number)
    return check


def _float(low: float, high: float) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        number = float(_number(value))
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


def _checkpoint(value: Any) -> str:
    """A checkpoint's name as the engine lists it (the API resolves what clients send first)."""
    return _folder_name(value)


def _vae_choice(value: Any) -> str:
    """A1111's sd_vae: "Automatic", "None" or a VAE file's name inside models/VAE (the engine
    checks that it exists when it applies it)."""
    if value in ("Automatic", "None"):
        return value
    return _folder_name(value)


OPTIONS: tuple[Option, ...] = (
    Option("outdir", "", "Output folder", _text,
           "where images are saved, inside the --outdir given to launch.py (empty: that folder); "
           "a folder elsewhere needs launch.py --outdir", section=SAVING),
    Option("outdir_txt2img", DEFAULT_FOLDERS["txt2img"], "txt2img folder", _folder_name,
           "inside the output folder", section=SAVING),
    Option("outdir_img2img", DEFAULT_FOLDERS["img2img"], "img2img and inpaint folder", _folder_name, section=SAVING),
    Option("outdir_extras", DEFAULT_FOLDERS["extras"], "Super-resolution folder", _folder_name, section=SAVING),
    Option("directory_pattern", DEFAULT_DIR_PATTERN, "Sub-folder pattern", _pattern,
           "tokens as in the file name; empty: no sub-folder", section=SAVING),
    Option("filename_pattern", DEFAULT_NAME_PATTERN, "File name pattern", _pattern,
           "after the NNNNN- number: [seed] [prompt_words] [model_name] [sampler] [scheduler] [steps] [cfg] "
           "[width] [height] [date] [datetime]", section=SAVING),
    Option("image_format", "png", "Image format", _image_format,
           "JPEG and WebP carry the parameters in EXIF UserComment, PNG in a 'parameters' chunk",
           choices=IMAGE_FORMATS, section=SAVING),
    Option("jpeg_quality", 90, "JPEG/WebP quality", _int(1, 100), section=SAVING, api=True),
    Option("preview_every", 5, "Live preview every N steps", _int(0, 1000), "0: no live preview", section=SAVING),
    Option("grid_save", True, "Save grids", _bool,
           "a job of several pictures, and a script's plot, saved as one grid too, in txt2img-grids / img2img-grids",
           section=SAVING, api=True),
    Option("default_sampler", "Euler", "Default sampler", _sampler, section=DEFAULTS),
    Option("default_scheduler", "Automatic", "Default schedule type", _schedule, section=DEFAULTS),
    Option("default_steps", 20, "Default sampling steps", _int(1, 150), section=DEFAULTS),
    Option("default_cfg_scale", 7.0, "Default CFG scale", _float(1.0, 30.0), section=DEFAULTS),
    Option("default_width", 512, "Default width", _size, section=DEFAULTS),
    Option("default_height", 512, "Default height", _size, section=DEFAULTS),
    Option("default_denoising_strength", 0.75, "Default denoising strength", _float(0.0, 1.0), section=DEFAULTS),
    Option("send_seed", True, "Send the seed when sending a picture to another tab", _bool,
           "off: the tab it goes to keeps its own seed and variation seed (A1111's send_seed)",
           section=DEFAULTS, api=True),
    Option("sd_model_prediction", "auto", "What the checkpoint predicts",
           help="auto: from its files (metadata, a .yaml beside it, SD 2.x's test pass); eps or v when that is "
                "wrong. The checkpoint is loaded again at the next job",
           choices=("auto", "eps", "v"), section=CHECKPOINTS, api=True),
    Option("sd_noise_schedule", "Default", "Noise schedule",
           help="Zero Terminal SNR: for checkpoints trained with it; Default: as the checkpoint says",
           choices=("Default", "Zero Terminal SNR"), section=CHECKPOINTS, api=True),
    Option("sd_checkpoint_load_at_start", True, "Load the checkpoint when the server starts", _bool,
           "in the background, so the first Generate need not wait for it; off: it loads on first use. "
           "Applied at the next start", section=CHECKPOINTS),
    Option("unet_compile", False, "Compile the UNet with torch.compile", _bool,
           "inductor, cached on disk: the first steps at each new picture size take minutes, later ones are faster; "
           "without a working compiler the model runs uncompiled (a warning in the log). Applied at the next start; "
           "launch.py --compile turns it on for one run", section=CHECKPOINTS),
    Option("disabled_extensions", "", "Disabled extensions", _text,
           "names of folders in extensions/, separated by commas; applied at the next start", section=SAVING),
    Option("model_download_url", "", "Model download URL", _text,
           "offered on first run when models/Stable-diffusion holds no checkpoint; empty: SD 1.5 (pruned, EMA only)",
           section=SAVING),
    Option("model_download_sha256", "", "Model download sha256", _text,
           "checked after the download; empty: the default model's known hash, or no check for another URL",
           section=SAVING),
    # The API's own (A1111's names), not on the Settings tab.
    Option("sd_model_checkpoint", None, "Stable Diffusion checkpoint", _checkpoint, kind=str, api=True,
           help="the one jobs use; none set: the loaded one, else the first listed. Setting it loads it"),
    Option("sd_checkpoint_hash", None, "SHA256 hash of the current checkpoint", _text, kind=str, api=True,
           read_only=True),
    Option("sd_vae", "Automatic", "SD VAE", _vae_choice, api=True,
           help="Automatic: a VAE named like the checkpoint (NAME.vae.safetensors beside it, or in models/VAE), "
                "else the checkpoint's own; None: the checkpoint's own; or a file in models/VAE"),
    Option("extra_networks_default_multiplier", 1.0, "Default multiplier for extra networks", _float(0.0, 2.0),
           "the weight a LoRA card puts in <lora:name:weight>", section=DEFAULTS, api=True),
    Option("CLIP_stop_at_last_layers", 1, "Clip skip", _int(1, 12), api=True),
    Option("emphasis", "Original", "Emphasis mode", choices=EMPHASIS_MODES, api=True),
    Option("eta_noise_seed_delta", 0, "Eta noise seed delta", help="only 0 is supported", choices=(0,), api=True),
    Option("samples_format", "png", "File format for images the API saves", choices=("png",), api=True),
    Option("enable_pnginfo", True, "Save generation parameters as text chunks in PNG files", _bool, api=True),
    Option("live_previews_enable", True, "Show live previews of the image being made (progress)", _bool, api=True),
    Option("ESRGAN_tile", DEFAULT_TILE, "Tile size for upscaler models", _int(0, 4096), "0: no tiling", api=True),
    Option("ESRGAN_tile_overlap", DEFAULT_OVERLAP, "Tile overlap for upscaler models", _int(0, 1024), api=True),
)
OPTION_BY_KEY = {o.key: o for o in OPTIONS}
API_OPTIONS = tuple(o for o in OPTIONS if o.api)

# Keys of other programs' settings (A1111's send_size, ...) that clients set through the API are
# kept in the file and reported back, bounded: a request can neither grow the file without end
# nor make every later GET /options huge.
MAX_KEPT_KEYS = 1000
MAX_KEPT_KEY_CHARS = 200
MAX_KEPT_VALUE_BYTES = 16 * 1024


def check_kept(key: str, value: Any) -> Any:
    """A value for a key outside the registry, kept as it is if it is JSON of bounded size."""
    if len(key) > MAX_KEPT_KEY_CHARS:
        raise ValueError(f"a setting name of at most {MAX_KEPT_KEY_CHARS} characters")
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError):
        raise ValueError("must be a JSON value") from None
    if len(text.encode("utf-8", "surrogatepass")) > MAX_KEPT_VALUE_BYTES:
        raise ValueError(f"at most {MAX_KEPT_VALUE_BYTES} bytes of JSON for a setting this server does not use")
    return value


def compile_unet(settings: "Settings", flag: bool) -> bool:
    """Whether the engine compiles its UNet: the unet_compile setting, or launch.py --compile."""
    return bool(flag or settings["unet_compile"])


def disabled_extensions(settings: "Settings") -> set[str]:
    return {name.strip() for name in str(settings["disabled_extensions"]).split(",") if name.strip()}


def engine_overrides(values: dict[str, Any]) -> tuple[str, bool | None]:
    """sd_model_prediction and sd_noise_schedule -> the engine's (prediction, zero_terminal_snr):
    "Default" leaves zero-terminal-SNR to the checkpoint (None)."""
    return values["sd_model_prediction"], True if values["sd_noise_schedule"] == "Zero Terminal SNR" else None


class SettingsError(ValueError):
    """A value that does not check out; the message names the setting."""


def _signature(path: Path) -> tuple | None:
    """What changes when the file is replaced or written (None: there is none)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class Settings:
    """The settings store, backed by ``path`` (JSON; None: in memory only). One per file: the
    page and the API served together hold the same object.

    Every write re-reads the file under a lock, merges the changes in and replaces it atomically,
    so neither another store nor another process loses its keys; every read first re-reads a file
    that changed since (a read never sets a broken file aside: the next write does, see
    ``read_settings_file``). Keys outside the registry are kept, and reported by ``kept``."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._stored: dict[str, Any] = {}  # the file's object as last read or written, every key
        self._values = {o.key: o.default for o in OPTIONS}
        self._signature: tuple | None = None
        self._unreadable: str | None = None
        self.load_warnings: list[str] = []
        self.save_notice: str | None = None
        self.load()

    def __getitem__(self, key: str) -> Any:
        self._refresh()
        with self._lock:
            return self._values[key]

    def get(self, key: str, default: Any = None) -> Any:
        """A registry option's value; ``default`` for any other key (as ``dict.get``)."""
        self._refresh()
        with self._lock:
            return self._values.get(key, default)

    def values(self) -> dict[str, Any]:
        """Every registry option's value."""
        self._refresh()
        with self._lock:
            return dict(self._values)

    def kept(self) -> dict[str, Any]:
        """The file's keys outside the registry whose values are within the bounds of ``check_kept``."""
        self._refresh()
        with self._lock:
            stored = dict(self._stored)
        kept = {}
        for key, value in stored.items():
            if key in OPTION_BY_KEY or len(kept) >= MAX_KEPT_KEYS:
                continue
            try:
                kept[key] = check_kept(key, value)
            except ValueError:
                continue  # too big to hand out: stays in the file
        return kept

    @property
    def place(self) -> str:
        """Where the values are kept, for messages."""
        return str(self.path) if self.path is not None else "memory only (no settings file)"

    @property
    def notice(self) -> str | None:
        """Why the file's settings are not in use, if they are not: set aside, or unreadable."""
        return (settings_file_notice(self.path) if self.path else None) or self._unreadable

    def load(self) -> None:
        self.load_warnings = []
        self._unreadable = None
        stored: dict[str, Any] = {}
        signature = None
        if self.path is not None:
            with _settings_file_lock:
                signature = _signature(self.path)
                try:
                    stored = read_settings_file(self.path)
                except OSError as exc:
                    self._unreadable = (f"{self.path}: cannot be read ({exc.strerror or exc}); using the defaults, "
                                        "and settings cannot be saved until it can be read")
                    log.warning(self._unreadable)
                    self.load_warnings.append(self._unreadable)
                signature = signature if self.path.exists() else None  # None once set aside
            notice = settings_file_notice(self.path)
            if notice:
                self.load_warnings.append(notice)
        self.load_warnings += self._take(stored, signature)

    def _checked(self, stored: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """The registry's values in ``stored`` (the file's object), and what did not check out."""
        values = {o.key: o.default for o in OPTIONS}
        warnings = []
        for key, value in stored.items():
            option = OPTION_BY_KEY.get(key)
            if option is None or option.read_only:
                continue  # kept in the file as it is; read-only values are worked out, never read
            try:
                values[key] = option.check(value)
            except (ValueError, TypeError) as exc:
                warnings.append(f"{self.path}: {key}: {exc}; using {option.default!r}")
        return values, warnings

    def _take(self, stored: dict[str, Any], signature: tuple | None) -> list[str]:
        """Make ``stored`` (the file's object) the values; returns what did not check out."""
        values, warnings = self._checked(stored)
        with self._lock:
            self._stored, self._values, self._signature = stored, values, signature
        return warnings

    def _refresh(self) -> None:
        """Re-read a file that another writer (a second server, a hand edit) changed."""
        if self.path is None or _signature(self.path) == self._signature:
            return
        with _settings_file_lock:
            signature = _signature(self.path)  # before reading: a later change is seen next time
            if signature == self._signature:
                return
            stored = parse_settings_file(self.path)
            if stored is None:  # unreadable for now: the values stay; the next write sets it aside
                with self._lock:
                    self._signature = signature
                return
            self._take(stored, signature)

    def update(self, changes: dict[str, Any]) -> list[str]:
        """Check every change, then merge them into the file as it is now and save it; returns
        the keys whose values changed. Raises SettingsError naming the first bad value (nothing
        is stored then), OSError when the file cannot be read or written. Every other key in the
        file (this version's or not, a value that does not check out included) stays as it is."""
        checked = {}
        for key, value in changes.items():
            option = OPTION_BY_KEY.get(key)
            if option is None:
                try:
                    checked[key] = check_kept(key, value)
                except ValueError as exc:
                    raise SettingsError(f"{key}: {exc}") from None
            elif option.read_only:
                raise SettingsError(f"{key}: read-only setting ({option.label})")
            else:
                checked[key] = option.clean(value)
        with _settings_file_lock:
            before = settings_file_notice(self.path) if self.path else None
            stored = read_settings_file(self.path) if self.path else dict(self._stored)
            was = {**stored, **self._checked(stored)[0]}
            new = {k for k in checked if k not in OPTION_BY_KEY and k not in stored}
            if new and sum(k not in OPTION_BY_KEY for k in stored) + len(new) > MAX_KEPT_KEYS:
                raise SettingsError(f"{sorted(new)[0]}: at most {MAX_KEPT_KEYS} settings this server does not use "
                                    "are kept")
            merged = {**stored, **checked}
            signature = None
            if self.path:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                written = write_atomically(self.path, json.dumps(merged, indent=2, sort_keys=True,
                                                                 ensure_ascii=False) + "\n")
                signature = (written.st_ino, written.st_mtime_ns, written.st_size)
            self._take(merged, signature)
            after = settings_file_notice(self.path) if self.path else None
        # the file became unreadable since it was loaded and was set aside by this save
        self.save_notice = after if after != before else None
        if self.save_notice and self.save_notice not in self.load_warnings:
            self.load_warnings.append(self.save_notice)
        return [k for k, v in checked.items() if k not in was or was[k] != v]


def write_atomically(path: Path, text: str) -> os.stat_result:
    """Replace ``path`` with ``text`` in one step; returns the new file's stat."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
            written = os.fstat(f.fileno())  # the rename keeps the inode, its time and size
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
        return written
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
    return written


# ---------------------------------------------------------------------------------------------
# config.json on disk
# ---------------------------------------------------------------------------------------------

# One lock for every reader and writer of a settings file in this process: a read-merge-write
# by one store never interleaves with another's, and a broken file is set aside only once.
_settings_file_lock = threading.RLock()
# path -> what was done with its unreadable file in this process; every later reader reports it
# (a store made after the first read has set it aside says so too).
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


def _parse(raw: bytes) -> dict[str, Any] | str:
    """The JSON object in ``raw``, or why there is none."""
    try:
        data = json.loads(raw.decode("utf-8-sig"))  # utf-8-sig: a BOM left by an editor is fine
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return f"not JSON ({exc})"
    if isinstance(data, dict):
        return data
    return f"holds a JSON {type(data).__name__}, not an object"


def parse_settings_file(path: Path) -> dict[str, Any] | None:
    """The JSON object in the settings file ({} when there is none), or None when it cannot be
    read or holds no object; unlike ``read_settings_file``, it leaves such a file where it is."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError:
        return None
    data = _parse(raw)
    return data if isinstance(data, dict) else None


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
        data = _parse(raw)
        if isinstance(data, dict):
            return data
        kept = set_aside(path)
        notice = (f"{path} could not be read: {data}. It is kept as {kept.name} and the defaults are used; "
                  "copy the settings you want back from it")
        log.warning(notice)
        _set_aside_notices[path.absolute()] = notice
        return {}
