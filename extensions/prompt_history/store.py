"""The prompt history database: one SQLite file beside the outputs, no UI code.

One *entry* per job (the prompt, the negative prompt, every parameter, the model, the time it
took) with its *images* (seed, variation seed, file, infotext) in a second table. Entries are
searched through an FTS5 index over the prompts that triggers keep in step with the table.

Safety against crashes and concurrent writers:

* WAL journal and ``synchronous=FULL``: a commit is on disk when it returns; a process killed
  at any moment leaves the database as of its last commit (SQLite rolls back the rest).
* Every write is one short ``BEGIN IMMEDIATE`` transaction on its own connection: the write
  lock is taken up front, so waiting writers queue on ``busy_timeout`` instead of failing,
  and a transaction that still reports SQLITE_BUSY is rolled back and retried with back-off.
* Constraints (NOT NULL, CHECK, foreign keys) refuse incomplete rows, so a row that exists
  is whole.

Only the standard library is imported at module level (Pillow only for thumbnails), so a
writer process starts fast and the module is usable headless.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import logging
import math
import os
import random
import re
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable

log = logging.getLogger(__name__)

DB_NAME = "history.sqlite3"
# What a recorded image may be: the page, the REST route and an import all hold paths to this
# (a path in the database may come from an imported document, so it is never trusted).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".avif", ".gif", ".bmp", ".tif", ".tiff"})
SCHEMA_VERSION = 1
EXPORT_FORMAT = "sd-studio-prompt-history"
EXPORT_VERSION = 1
MAX_LIMIT = 500

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id              INTEGER PRIMARY KEY,
    uid             TEXT    NOT NULL UNIQUE CHECK (length(uid) > 0),
    created         REAL    NOT NULL,
    finished        REAL,
    duration        REAL,
    kind            TEXT    NOT NULL,
    status          TEXT    NOT NULL DEFAULT 'running',
    prompt          TEXT    NOT NULL,
    negative_prompt TEXT    NOT NULL,
    params          TEXT    NOT NULL CHECK (json_valid(params) AND json_type(params) = 'object'),
    model_name      TEXT,
    model_hash      TEXT,
    seed            INTEGER,
    favourite       INTEGER NOT NULL DEFAULT 0 CHECK (favourite IN (0, 1))
);
CREATE INDEX IF NOT EXISTS entries_created ON entries (created);
CREATE INDEX IF NOT EXISTS entries_model ON entries (model_name, created);
CREATE INDEX IF NOT EXISTS entries_favourite ON entries (favourite, created);

CREATE TABLE IF NOT EXISTS images (
    id       INTEGER PRIMARY KEY,
    entry_id INTEGER NOT NULL REFERENCES entries (id) ON DELETE CASCADE,
    position INTEGER NOT NULL CHECK (position >= 0),
    seed     INTEGER NOT NULL,
    subseed  INTEGER,
    path     TEXT,
    infotext TEXT    NOT NULL,
    created  REAL    NOT NULL,
    UNIQUE (entry_id, position)
);

CREATE VIRTUAL TABLE IF NOT EXISTS entries_fts USING fts5 (
    prompt, negative_prompt,
    content = 'entries', content_rowid = 'id',
    tokenize = 'unicode61 remove_diacritics 2'
);

CREATE TRIGGER IF NOT EXISTS entries_ai AFTER INSERT ON entries BEGIN
    INSERT INTO entries_fts (rowid, prompt, negative_prompt) VALUES (new.id, new.prompt, new.negative_prompt);
END;
CREATE TRIGGER IF NOT EXISTS entries_ad AFTER DELETE ON entries BEGIN
    INSERT INTO entries_fts (entries_fts, rowid, prompt, negative_prompt)
        VALUES ('delete', old.id, old.prompt, old.negative_prompt);
    DELETE FROM images WHERE entry_id = old.id;
END;
CREATE TRIGGER IF NOT EXISTS entries_au AFTER UPDATE OF prompt, negative_prompt ON entries BEGIN
    INSERT INTO entries_fts (entries_fts, rowid, prompt, negative_prompt)
        VALUES ('delete', old.id, old.prompt, old.negative_prompt);
    INSERT INTO entries_fts (rowid, prompt, negative_prompt) VALUES (new.id, new.prompt, new.negative_prompt);
END;
"""

ENTRY_FIELDS = ("uid", "created", "finished", "duration", "kind", "status", "prompt", "negative_prompt",
                "params", "model_name", "model_hash", "seed", "favourite")
IMAGE_FIELDS = ("position", "seed", "subseed", "path", "infotext", "created")
SCOPES = {"prompt": "{prompt}", "negative": "{negative_prompt}", "both": "{prompt negative_prompt}"}
ORDERS = ("newest", "oldest", "relevance")


class HistoryError(ValueError):
    """A request the history cannot carry out (bad import document, bad filter value)."""


# --- parameters as JSON ----------------------------------------------------------------------

class _Unserialisable(Exception):
    pass


def _jsonable(value: Any) -> Any:
    """``value`` as plain JSON data; raises _Unserialisable for anything else. Dict entries
    and list items that cannot be stored are dropped (an image, a tensor, a callback)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):  # JSON has no NaN or infinity
            raise _Unserialisable("float")
        return value
    if isinstance(value, enum.Enum):
        return _jsonable(value.value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                continue
            try:
                out[key] = _jsonable(item)
            except _Unserialisable:
                continue
        return out
    if isinstance(value, (list, tuple)):
        out_list = []
        for item in value:
            try:
                out_list.append(_jsonable(item))
            except _Unserialisable:
                continue
        return out_list
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return params_to_dict(value)
    raise _Unserialisable(type(value).__name__)


def params_to_dict(params: Any) -> dict:
    """A GenerationParams (any dataclass, or a dict) as a JSON-ready dict in field order:
    ``dataclasses.asdict`` without its deep copy, leaving out values JSON cannot hold."""
    if dataclasses.is_dataclass(params) and not isinstance(params, type):
        items = ((f.name, getattr(params, f.name)) for f in dataclasses.fields(params))
    elif isinstance(params, dict):
        items = params.items()
    else:
        raise HistoryError(f"params: expected a dataclass or a dict, got {type(params).__name__}")
    out = {}
    for key, value in items:
        try:
            out[str(key)] = _jsonable(value)
        except _Unserialisable:
            continue
    return out


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


# --- the search language ---------------------------------------------------------------------

_TERM = re.compile(r'(-?)"([^"]*)"?(\*?)|(\S+)')


def parse_query(text: str | None) -> tuple[list[list[str]], list[str]]:
    """A search box's text -> (groups of FTS5 terms, excluded terms).

    ``red cat``: both words (any order); ``"red cat"``: the phrase; ``mast*``: a prefix;
    ``-ugly`` / ``-"bad hands"``: without; ``cat OR dog``: either side (OR binds loosest).
    Every term is passed to FTS5 as a quoted string, so the prompt language's punctuation
    (``(word:1.2)``, ``<lora:x:1>``) never makes a syntax error; terms without a letter or a
    digit are ignored. Each group is a list of terms that must all match; the groups are ORed.
    """
    groups: list[list[str]] = [[]]
    excluded: list[str] = []
    for match in _TERM.finditer(text or ""):
        negate, phrase, star, word = match.groups()
        if word is not None:
            if word == "OR":
                if groups[-1]:
                    groups.append([])
                continue
            negate = "-" if word.startswith("-") and len(word) > 1 else ""
            word = word[1:] if negate else word
            star = "*" if word.endswith("*") else ""
            phrase = word.rstrip("*")
        if not any(ch.isalnum() for ch in phrase):
            continue
        term = '"' + phrase.replace('"', '""') + '"' + star
        (excluded if negate else groups[-1]).append(term)
    return [g for g in groups if g], excluded


def match_expressions(text: str | None, scope: str = "prompt") -> tuple[str | None, str | None]:
    """FTS5 MATCH expressions (wanted, excluded) for a search text, limited to ``scope``
    ("prompt", "negative" or "both"); None where there is nothing to match."""
    if scope not in SCOPES:
        raise HistoryError(f"scope: must be one of {', '.join(SCOPES)}, got {scope!r}")
    groups, excluded = parse_query(text)
    columns = SCOPES[scope]
    wanted = " OR ".join("(" + " AND ".join(g) + ")" for g in groups)
    return (f"{columns} : ({wanted})" if wanted else None,
            f"{columns} : ({' OR '.join(excluded)})" if excluded else None)


def to_timestamp(value: Any, end_of_day: bool = False) -> float | None:
    """A date filter value -> a Unix time. Accepts None/"", a number (Unix time), a datetime,
    a date, or text: "YYYY-MM-DD" (local midnight; the next midnight with ``end_of_day``, for
    an inclusive "until") or an ISO date-time."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise HistoryError(f"date: expected a date, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dt.datetime):
        return value.timestamp()
    if isinstance(value, dt.date):
        day = dt.datetime.combine(value, dt.time())
        return (day + dt.timedelta(days=1) if end_of_day else day).timestamp()
    if isinstance(value, str):
        text = value.strip()
        try:
            if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
                return to_timestamp(dt.date.fromisoformat(text), end_of_day)
            return dt.datetime.fromisoformat(text).timestamp()
        except ValueError:
            pass
        try:
            return float(text)
        except ValueError:
            raise HistoryError(f"date: expected YYYY-MM-DD, an ISO date-time or a Unix time, got {value!r}") from None
    raise HistoryError(f"date: expected a date, got {type(value).__name__}")


# --- import documents --------------------------------------------------------------------------

def _is_int(v) -> bool:
    """A whole number SQLite can store (64 bits)."""
    return isinstance(v, int) and not isinstance(v, bool) and -2**63 <= v < 2**63


def _is_number(v) -> bool:
    return (_is_int(v) or isinstance(v, float)) and not isinstance(v, bool)


def _strict_json(value) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


_ENTRY_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "uid": (lambda v: isinstance(v, str) and 0 < len(v) <= 200, "a non-empty text of at most 200 characters"),
    "created": (lambda v: _is_number(v) and math.isfinite(v), "a Unix time"),
    "finished": (lambda v: v is None or (_is_number(v) and math.isfinite(v)), "a Unix time or null"),
    "duration": (lambda v: v is None or (_is_number(v) and math.isfinite(v)), "a number of seconds or null"),
    "kind": (lambda v: isinstance(v, str) and v != "", "a non-empty text"),
    "status": (lambda v: isinstance(v, str) and v != "", "a non-empty text"),
    "prompt": (lambda v: isinstance(v, str), "a text"),
    "negative_prompt": (lambda v: isinstance(v, str), "a text"),
    "params": (lambda v: isinstance(v, dict) and _strict_json(v), "an object (no NaN or infinity)"),
    "model_name": (lambda v: v is None or isinstance(v, str), "a text or null"),
    "model_hash": (lambda v: v is None or isinstance(v, str), "a text or null"),
    "seed": (lambda v: v is None or _is_int(v), "a whole number or null"),
    "favourite": (lambda v: isinstance(v, bool), "true or false"),
}
_IMAGE_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "position": (lambda v: _is_int(v) and v >= 0, "a whole number >= 0"),
    "seed": (_is_int, "a whole number"),
    "subseed": (lambda v: v is None or _is_int(v), "a whole number or null"),
    "path": (lambda v: v is None or isinstance(v, str), "a text or null"),
    "infotext": (lambda v: isinstance(v, str), "a text"),
    "created": (lambda v: _is_number(v) and math.isfinite(v), "a Unix time"),
}


def _check_record(record: Any, checks: dict, where: str) -> None:
    if not isinstance(record, dict):
        raise HistoryError(f"{where}: expected an object, got {type(record).__name__}")
    unknown = sorted(set(record) - set(checks) - {"images"})
    if unknown:
        raise HistoryError(f"{where}: unknown field(s) {', '.join(unknown)}")
    for key, (ok, what) in checks.items():
        if key not in record:
            raise HistoryError(f"{where}: missing field {key!r}")
        if not ok(record[key]):
            raise HistoryError(f"{where}.{key}: must be {what}, got {record[key]!r}")


def validate_document(document: Any) -> list[dict]:
    """The entries of an export document, checked whole before anything is written; raises
    HistoryError naming the first bad field."""
    if isinstance(document, (str, bytes)):
        try:
            document = json.loads(document)
        except ValueError as e:
            raise HistoryError(f"not JSON: {e}") from None
    if not isinstance(document, dict):
        raise HistoryError("expected an export document (a JSON object)")
    if document.get("format") != EXPORT_FORMAT:
        raise HistoryError(f"format: expected {EXPORT_FORMAT!r}, got {document.get('format')!r}")
    version = document.get("version")
    if not _is_int(version) or not 1 <= version <= EXPORT_VERSION:
        raise HistoryError(f"version: this history reads version {EXPORT_VERSION} or older, got {version!r}")
    entries = document.get("entries")
    if not isinstance(entries, list):
        raise HistoryError("entries: expected a list")
    seen: set[str] = set()
    for n, entry in enumerate(entries):
        where = f"entries[{n}]"
        _check_record(entry, _ENTRY_CHECKS, where)
        if entry["uid"] in seen:
            raise HistoryError(f"{where}.uid: {entry['uid']!r} appears twice")
        seen.add(entry["uid"])
        images = entry.get("images")
        if not isinstance(images, list):
            raise HistoryError(f"{where}.images: expected a list")
        positions: set[int] = set()
        for m, image in enumerate(images):
            _check_record(image, _IMAGE_CHECKS, f"{where}.images[{m}]")
            if image["position"] in positions:
                raise HistoryError(f"{where}.images[{m}].position: {image['position']} appears twice")
            positions.add(image["position"])
    return entries


# --- thumbnails -----------------------------------------------------------------------------------

def thumbnail(path: str | os.PathLike, size: int = 256):
    """A small RGB copy of an image file (PIL), or None when it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.draft("RGB", (size, size))
            image = image.convert("RGB")
            image.thumbnail((size, size))
            return image
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


# --- the store --------------------------------------------------------------------------------------

def _busy(error: sqlite3.Error) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    text = str(error).lower()
    return "locked" in text or "busy" in text


class HistoryStore:
    """The history database at ``path``. Safe to share between threads (each call opens its
    own connection) and between processes (SQLite locking, retried)."""

    def __init__(self, path: str | os.PathLike, timeout: float = 30.0):
        self.path = Path(path)
        self.root = self.path.parent  # image paths inside it are stored relative to it
        self.timeout = float(timeout)
        self.root.mkdir(parents=True, exist_ok=True)
        self.journal_mode = self._retry(self._set_wal)
        if self.journal_mode != "wal":
            log.warning("prompt history: %s is in %s journal mode, not WAL", self.path, self.journal_mode)
        self._write(self._create_schema)
        self._users_file = None
        self.abandoned = self._mark_abandoned_entries()

    def _mark_abandoned_entries(self) -> int:
        """Mark "interrupted" the entries left "running" by processes that died mid-job (a killed
        server never finishes its entry); returns how many. Every store holds a shared lock on
        ``<db>.lock`` while it is open: only an opener that can take it exclusively knows that no
        other process (nor another store in this one) has a job in progress. Without file locks
        (Windows) every open marks them: at worst a job of another live process reads
        "interrupted" until it finishes and sets its own status."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            fcntl = None
        sole_user = True
        if fcntl is not None:
            self._users_file = open(self.path.with_name(self.path.name + ".lock"), "a+b")  # noqa: SIM115 - held open
            try:
                fcntl.flock(self._users_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                sole_user = False
        marked = 0
        if sole_user:
            marked = self._write(lambda conn: conn.execute(
                "UPDATE entries SET status = 'interrupted' WHERE status = 'running'").rowcount)
            if marked:
                log.warning("prompt history: %d job(s) left running by a stopped server marked interrupted", marked)
        if fcntl is not None:
            fcntl.flock(self._users_file, fcntl.LOCK_SH)  # others may open it now, and must not mark ours
        return marked

    def close(self) -> None:
        """Let go of the lock that tells other openers this store is in use (also done when the
        store is garbage-collected or the process ends)."""
        if self._users_file is not None:
            self._users_file.close()
            self._users_file = None

    # connections and transactions

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=min(self.timeout, 10.0), isolation_level=None,
                               check_same_thread=False)
        try:
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA synchronous = FULL")
        except BaseException:
            conn.close()
            raise
        conn.row_factory = sqlite3.Row
        return conn

    def _retry(self, attempt: Callable[[], Any]) -> Any:
        """Run ``attempt`` until it does not fail with SQLITE_BUSY/LOCKED, for up to ``timeout``
        seconds, sleeping a little longer (with jitter) each time."""
        deadline = time.monotonic() + self.timeout
        delay = 0.005
        while True:
            try:
                return attempt()
            except sqlite3.OperationalError as e:
                if not _busy(e) or time.monotonic() >= deadline:
                    raise
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.25)

    def _transaction(self, fn: Callable[[sqlite3.Connection], Any], begin: str) -> Any:
        def attempt():
            conn = self._connect()
            try:
                conn.execute(begin)
                try:
                    result = fn(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                return result
            finally:
                conn.close()

        return self._retry(attempt)

    def _write(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """One short write transaction; the write lock is taken at BEGIN."""
        return self._transaction(fn, "BEGIN IMMEDIATE")

    def _read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """One read transaction: a consistent snapshot, never blocking writers (WAL)."""
        return self._transaction(fn, "BEGIN")

    def _set_wal(self) -> str:
        conn = self._connect()
        try:
            return conn.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower()
        finally:
            conn.close()

    @staticmethod
    def _create_schema(conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise HistoryError(f"the history database has schema version {version}; this version reads {SCHEMA_VERSION}")
        for statement in _statements(SCHEMA):
            conn.execute(statement)
        if version < SCHEMA_VERSION:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # paths

    def stored_path(self, path: str | os.PathLike | None) -> str | None:
        """How a file is recorded: relative to the database's folder when inside it (so the
        outputs folder can move with its history), else absolute."""
        if path is None:
            return None
        p = Path(path)
        try:
            return p.resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return str(p.resolve())

    def file_path(self, stored: str | None) -> Path | None:
        """A recorded path as a path to open (None when none was recorded)."""
        if stored is None:
            return None
        p = Path(stored)
        return p if p.is_absolute() else self.root / p

    def inside_root(self, path: Path) -> bool:
        try:
            return path.resolve().is_relative_to(self.root.resolve())
        except (OSError, ValueError):
            return False

    def path_problem(self, stored: str | None) -> str | None:
        """Why a recorded path may not be shown or served (None: it may, or none is recorded):
        only an image, by its suffix and by what a link points to, inside the outputs folder."""
        path = self.file_path(stored)
        if path is None:
            return None
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            return f"{stored!r} is not an image ({', '.join(sorted(IMAGE_SUFFIXES))})"
        if not self.inside_root(path):
            return f"{stored!r} is outside the outputs folder {self.root}"
        try:
            real_suffix = path.resolve().suffix.lower()
        except (OSError, ValueError):
            real_suffix = ""
        if real_suffix not in IMAGE_SUFFIXES:
            return f"{stored!r} leads to a file that is not an image"
        return None

    def image_file(self, stored: str | None) -> Path | None:
        """The recorded image as a file to read or serve, or None: nothing recorded, the file
        is gone, or the path fails ``path_problem``. The one check the tab, the send-to
        payload and the REST route share."""
        path = self.file_path(stored)
        if path is None or self.path_problem(stored) is not None:
            return None
        return path if path.is_file() else None

    # writing

    def begin_entry(self, entry: dict, images: Iterable[dict] = ()) -> int:
        """Insert an entry (status "running" unless given) and its first images in one
        transaction; returns its id. Missing fields get defaults (a new uid, now, ...)."""
        row = self._entry_row(entry)
        image_rows = [self._image_row(image) for image in images]

        def write(conn):
            entry_id = self._insert_entry(conn, row)
            for image in image_rows:
                self._insert_image(conn, entry_id, image)
            return entry_id

        return self._write(write)

    add_entry = begin_entry  # the whole entry at once: pass status="done" and all its images

    def add_images(self, entry_id: int, images: Iterable[dict]) -> None:
        rows = [self._image_row(image) for image in images]

        def write(conn):
            for image in rows:
                self._insert_image(conn, entry_id, image)

        self._write(write)

    def finish_entry(self, entry_id: int, status: str = "done", finished: float | None = None,
                     duration: float | None = None) -> None:
        finished = time.time() if finished is None else float(finished)

        def write(conn):
            if duration is None:
                conn.execute("UPDATE entries SET status = ?, finished = ?, duration = ? - created WHERE id = ?",
                             (status, finished, finished, entry_id))
            else:
                conn.execute("UPDATE entries SET status = ?, finished = ?, duration = ? WHERE id = ?",
                             (status, finished, float(duration), entry_id))

        self._write(write)

    def set_favourite(self, entry_id: int, favourite: bool = True) -> bool:
        """Mark or unmark; False when there is no such entry."""
        return self._write(lambda conn: conn.execute(
            "UPDATE entries SET favourite = ? WHERE id = ?", (1 if favourite else 0, int(entry_id))).rowcount > 0)

    def set_image_path(self, image_id: int, path: str | os.PathLike | None) -> bool:
        """Record where an image was saved after the fact (a UI that saves images itself)."""
        stored = self.stored_path(path)
        return self._write(lambda conn: conn.execute(
            "UPDATE images SET path = ? WHERE id = ?", (stored, int(image_id))).rowcount > 0)

    def delete(self, entry_ids: Iterable[int]) -> int:
        """Forget entries (and their image records); the image files stay where they are
        (deleting files is the outputs gallery's job, with its trash). Returns how many."""
        ids = [int(i) for i in entry_ids]

        def write(conn):
            count = 0
            for chunk in _chunks(ids, 500):
                marks = ",".join("?" * len(chunk))
                count += conn.execute(f"DELETE FROM entries WHERE id IN ({marks})", chunk).rowcount
            return count

        return self._write(write) if ids else 0

    def _entry_row(self, entry: dict) -> dict:
        unknown = set(entry) - set(ENTRY_FIELDS) - {"images"}
        if unknown:
            raise HistoryError(f"unknown entry field(s): {', '.join(sorted(unknown))}")
        params = entry.get("params", {})
        params = params_to_dict(params)
        created = entry.get("created")
        return {
            "uid": entry.get("uid") or uuid.uuid4().hex,
            "created": time.time() if created is None else float(created),
            "finished": entry.get("finished"),
            "duration": entry.get("duration"),
            "kind": entry.get("kind") or "txt2img",
            "status": entry.get("status") or "running",
            "prompt": entry.get("prompt", params.get("prompt", "")) or "",
            "negative_prompt": entry.get("negative_prompt", params.get("negative_prompt", "")) or "",
            "params": _dump(params),
            "model_name": entry.get("model_name"),
            "model_hash": entry.get("model_hash"),
            "seed": entry.get("seed"),
            "favourite": 1 if entry.get("favourite") else 0,
        }

    def _image_row(self, image: dict) -> dict:
        unknown = set(image) - set(IMAGE_FIELDS)
        if unknown:
            raise HistoryError(f"unknown image field(s): {', '.join(sorted(unknown))}")
        created = image.get("created")
        return {
            "position": image.get("position"),
            "seed": int(image["seed"]),
            "subseed": image.get("subseed"),
            "path": self.stored_path(image.get("path")),
            "infotext": image.get("infotext") or "",
            "created": time.time() if created is None else float(created),
        }

    @staticmethod
    def _insert_entry(conn: sqlite3.Connection, row: dict) -> int:
        names = ", ".join(ENTRY_FIELDS)
        marks = ", ".join(f":{name}" for name in ENTRY_FIELDS)
        return conn.execute(f"INSERT INTO entries ({names}) VALUES ({marks})", row).lastrowid

    @staticmethod
    def _insert_image(conn: sqlite3.Connection, entry_id: int, row: dict) -> int:
        row = dict(row, entry_id=entry_id)
        if row["position"] is None:  # next free place
            row["position"] = conn.execute("SELECT coalesce(max(position) + 1, 0) FROM images WHERE entry_id = ?",
                                           (entry_id,)).fetchone()[0]
        return conn.execute(
            "INSERT INTO images (entry_id, position, seed, subseed, path, infotext, created) "
            "VALUES (:entry_id, :position, :seed, :subseed, :path, :infotext, :created)", row).lastrowid

    # reading

    def get(self, entry_id: int) -> dict | None:
        def read(conn):
            row = conn.execute("SELECT * FROM entries WHERE id = ?", (int(entry_id),)).fetchone()
            return self._entries(conn, [row])[0] if row else None

        return self._read(read)

    def get_image(self, image_id: int) -> dict | None:
        def read(conn):
            row = conn.execute("SELECT * FROM images WHERE id = ?", (int(image_id),)).fetchone()
            return self._image(row) if row else None

        return self._read(read)

    def count(self) -> int:
        return self._read(lambda conn: conn.execute("SELECT count(*) FROM entries").fetchone()[0])

    def models(self) -> list[dict]:
        """The models entries were made with: [{"name", "hash", "count"}], by name."""
        return self._read(lambda conn: [
            {"name": r[0], "hash": r[1], "count": r[2]} for r in conn.execute(
                "SELECT model_name, model_hash, count(*) FROM entries GROUP BY model_name, model_hash "
                "ORDER BY model_name IS NULL, model_name, model_hash")])

    def _where(self, query: str | None, scope: str, model: str | None, since: Any, until: Any,
               favourites: bool, kind: str | None, ids: Iterable[int] | None) -> tuple[str, str, list]:
        """(JOIN clause, WHERE clause, parameters) for the search filters."""
        wanted, excluded = match_expressions(query, scope)
        join, clauses, args = "", [], []
        if wanted:
            join = ("JOIN (SELECT rowid AS fts_id, bm25(entries_fts) AS score FROM entries_fts "
                    "WHERE entries_fts MATCH ?) AS hits ON hits.fts_id = e.id")
            args.append(wanted)
        if excluded:
            clauses.append("e.id NOT IN (SELECT rowid FROM entries_fts WHERE entries_fts MATCH ?)")
            args.append(excluded)
        if model not in (None, "", "All"):
            clauses.append("(e.model_name = ? OR e.model_hash = ?)")
            args += [model, model]
        start, end = to_timestamp(since), to_timestamp(until, end_of_day=True)
        if start is not None:
            clauses.append("e.created >= ?")
            args.append(start)
        if end is not None:
            clauses.append("e.created < ?")
            args.append(end)
        if favourites:
            clauses.append("e.favourite = 1")
        if kind not in (None, "", "All"):
            clauses.append("e.kind = ?")
            args.append(kind)
        if ids is not None:
            ids = [int(i) for i in ids]
            clauses.append(f"e.id IN ({','.join('?' * len(ids)) or 'NULL'})")
            args += ids
        return join, ("WHERE " + " AND ".join(clauses)) if clauses else "", args

    def search(self, query: str | None = "", *, scope: str = "prompt", model: str | None = None,
               since: Any = None, until: Any = None, favourites: bool = False, kind: str | None = None,
               order: str = "newest", limit: int = 50, offset: int = 0) -> dict:
        """Entries matching the search text (see parse_query) and filters, with their images:
        ``{"total": n, "entries": [...]}``. ``model`` matches a model name or hash, ``since``
        and ``until`` are dates (``until`` inclusive, see to_timestamp), ``order`` is newest,
        oldest or relevance (best match first; newest without a search text)."""
        if order not in ORDERS:
            raise HistoryError(f"order: must be one of {', '.join(ORDERS)}, got {order!r}")
        limit = max(1, min(int(limit), MAX_LIMIT))
        offset = max(0, int(offset))
        join, where, args = self._where(query, scope, model, since, until, favourites, kind, None)
        if order == "oldest":
            order_by = "e.created ASC, e.id ASC"
        elif order == "relevance" and join:
            order_by = "hits.score ASC, e.created DESC, e.id DESC"
        else:
            order_by = "e.created DESC, e.id DESC"

        def read(conn):
            total = conn.execute(f"SELECT count(*) FROM entries AS e {join} {where}", args).fetchone()[0]
            rows = conn.execute(f"SELECT e.* FROM entries AS e {join} {where} ORDER BY {order_by} LIMIT ? OFFSET ?",
                                [*args, limit, offset]).fetchall()
            return {"total": total, "entries": self._entries(conn, rows)}

        return self._read(read)

    def _entries(self, conn: sqlite3.Connection, rows: list) -> list[dict]:
        entries = [self._entry(row) for row in rows]
        by_id = {e["id"]: e for e in entries}
        for chunk in _chunks(list(by_id), 500):
            marks = ",".join("?" * len(chunk))
            for row in conn.execute(f"SELECT * FROM images WHERE entry_id IN ({marks}) ORDER BY entry_id, position", chunk):
                by_id[row["entry_id"]]["images"].append(self._image(row))
        return entries

    @staticmethod
    def _entry(row: sqlite3.Row) -> dict:
        entry = {"id": row["id"]}
        for name in ENTRY_FIELDS:
            entry[name] = row[name]
        entry["params"] = json.loads(row["params"])
        entry["favourite"] = bool(row["favourite"])
        entry["images"] = []
        return entry

    @staticmethod
    def _image(row: sqlite3.Row) -> dict:
        image = {"id": row["id"], "entry_id": row["entry_id"]}
        for name in IMAGE_FIELDS:
            image[name] = row[name]
        return image

    # send to txt2img / img2img

    def send_to(self, entry_id: int, image_index: int | None = None) -> dict | None:
        """What "send to txt2img/img2img" needs: ``{"kind", "infotext", "params", "image"}``.

        ``params`` is the recorded GenerationParams dict with the seeds that were drawn (a
        random seed, -1, becomes the one used), the checkpoint filled in from the model when
        the job used the loaded one: ``GenerationParams(**params)`` makes the same images.
        With ``image_index`` it is that one image (its seed, batch of one) and ``infotext``
        its infotext; without, the whole job and the first image's infotext. ``image`` is the
        chosen (or first) image's file, or None."""
        entry = self.get(entry_id)
        if entry is None:
            return None
        params = dict(entry["params"])
        images = entry["images"]
        image = None
        if images:
            if image_index is None:
                image = images[0]
            elif 0 <= int(image_index) < len(images):
                image = images[int(image_index)]
            else:
                raise HistoryError(f"image: entry {entry_id} has {len(images)} image(s), no index {image_index}")
        if image_index is not None:
            params["seed"] = image["seed"]
            if image["subseed"] is not None:
                params["subseed"] = image["subseed"]
            params["batch_size"] = params["batch_count"] = 1
        else:
            if entry["seed"] is not None:
                params["seed"] = entry["seed"]
            if image is not None and image["subseed"] is not None and params.get("subseed", -1) == -1:
                params["subseed"] = image["subseed"]
        if not params.get("checkpoint") and entry["model_name"]:
            params["checkpoint"] = entry["model_name"]
        path = self.image_file(image["path"]) if image else None
        return {
            "entry_id": entry["id"],
            "kind": entry["kind"],
            "infotext": image["infotext"] if image else "",
            "params": params,
            "image": str(path) if path is not None else None,
        }

    # export and import

    def export(self, ids: Iterable[int] | None = None, **filters) -> dict:
        """Entries (all; those in ``ids``; or those the search ``filters`` find: query, scope,
        model, since, until, favourites, kind) as an export document, oldest first."""
        join, where, args = self._where(filters.get("query"), filters.get("scope", "prompt"), filters.get("model"),
                                        filters.get("since"), filters.get("until"), filters.get("favourites", False),
                                        filters.get("kind"), ids)

        def read(conn):
            rows = conn.execute(f"SELECT e.* FROM entries AS e {join} {where} ORDER BY e.created, e.uid", args).fetchall()
            return self._entries(conn, rows)

        out = []
        for entry in self._read(read):
            record = {name: entry[name] for name in ENTRY_FIELDS}
            record["images"] = [{name: image[name] for name in IMAGE_FIELDS} for image in entry["images"]]
            out.append(record)
        return {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "entries": out}

    def export_json(self, ids: Iterable[int] | None = None, **filters) -> str:
        return dump_document(self.export(ids, **filters))

    def import_(self, document: Any, mode: str = "skip", chunk: int = 200) -> dict:
        """Add the entries of an export document (a dict, or its JSON text). An entry whose uid
        is already here is skipped (``mode="skip"``) or replaced (``"replace"``). The document
        is checked whole first: a bad one changes nothing. Entries are written ``chunk`` at a
        time (short transactions); a crash part-way leaves whole entries, and importing the
        same document again adds the rest. Returns ``{"added", "replaced", "skipped"}``."""
        if mode not in ("skip", "replace"):
            raise HistoryError(f"mode: must be skip or replace, got {mode!r}")
        entries = validate_document(document)
        for n, entry in enumerate(entries):
            for m, image in enumerate(entry["images"]):
                problem = self.path_problem(image["path"])
                if problem is not None:
                    raise HistoryError(f"entries[{n}].images[{m}].path: {problem}; nothing was imported")
        counts = {"added": 0, "replaced": 0, "skipped": 0}

        def write(batch):
            def run(conn):
                result = {"added": 0, "replaced": 0, "skipped": 0}
                for entry in batch:
                    existing = conn.execute("SELECT id FROM entries WHERE uid = ?", (entry["uid"],)).fetchone()
                    if existing and mode == "skip":
                        result["skipped"] += 1
                        continue
                    if existing:
                        conn.execute("DELETE FROM entries WHERE id = ?", (existing[0],))
                    row = {name: entry[name] for name in ENTRY_FIELDS}
                    row["params"] = _dump(entry["params"])
                    row["favourite"] = 1 if entry["favourite"] else 0
                    entry_id = self._insert_entry(conn, row)
                    for image in entry["images"]:
                        self._insert_image(conn, entry_id, {name: image[name] for name in IMAGE_FIELDS})
                    result["replaced" if existing else "added"] += 1
                return result
            return run

        for batch in _chunks(entries, max(1, chunk)):
            for key, value in self._write(write(batch)).items():
                counts[key] += value
        return counts

    # checks

    def check(self) -> list[str]:
        """Problems found by SQLite's integrity check, the FTS index check and the history's
        own rules; an empty list means the database is sound."""
        def run(conn):
            problems = [r[0] for r in conn.execute("PRAGMA integrity_check") if r[0] != "ok"]
            problems += [f"foreign key: {tuple(r)}" for r in conn.execute("PRAGMA foreign_key_check")]
            try:
                conn.execute("INSERT INTO entries_fts (entries_fts, rank) VALUES ('integrity-check', 1)")
            except sqlite3.DatabaseError as e:
                problems.append(f"search index: {e}")
            orphans = conn.execute("SELECT count(*) FROM images WHERE entry_id NOT IN (SELECT id FROM entries)").fetchone()[0]
            if orphans:
                problems.append(f"{orphans} image record(s) without an entry")
            return problems

        return self._write(run)


def dump_document(document: dict) -> str:
    """An export document as JSON text; the same document always gives the same text."""
    return json.dumps(document, ensure_ascii=False, indent=1) + "\n"


def _chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _statements(script: str) -> list[str]:
    """Split a schema script into statements (sqlite3.complete_statement keeps triggers whole)."""
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    return [s for s in statements if s]
