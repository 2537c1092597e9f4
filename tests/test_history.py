"""The prompt history extension (extensions/prompt_history): recording through the engine's
hooks, search, favourites, delete, lossless export/import, crash safety, concurrent writers,
REST routes and the UI tab's behaviour."""
import dataclasses
import importlib.util
import json
import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from core.params import GenerationParams

ROOT = Path(__file__).resolve().parent.parent
HISTORY_DIR = ROOT / "extensions" / "prompt_history"


def load(name):
    """A module of the extension, under the name the extension itself gives it."""
    module_name = f"sd_extension_prompt_history_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, HISTORY_DIR / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


@pytest.fixture(scope="module")
def history():
    return load("store")


# A writer process for the crash and concurrency tests: the standard library and store.py only.
WRITER = r'''
import importlib.util, os, sys, time

def expected(tag, i, root):
    """Entry i of writer ``tag``: (entry fields, images), all derived from i."""
    count = 1 + i % 4
    entry = {
        "uid": f"{tag}-{i}", "created": 1700000000.0 + i, "kind": "txt2img" if i % 2 else "img2img",
        "prompt": f"entry {tag} number{i} " + "lorem ipsum dolor " * 100, "negative_prompt": f"negative {i}",
        "params": {"prompt": f"entry {tag} number{i}", "steps": i, "cfg_scale": i / 7, "extra": {"i": [i, None, "é"]}},
        "model_name": f"model{i % 3}", "model_hash": f"{i:010x}", "seed": 1000 * i,
    }
    images = [{"position": k, "seed": 1000 * i + k, "subseed": None if k % 2 else k,
               "path": os.path.join(root, "img", tag, f"{i}-{k}.png"), "infotext": f"infotext {i} {k} " + "x" * 400,
               "created": 1700000000.0 + i + k / 8} for k in range(count)]
    return entry, images

def write(store, tag, i):
    entry, images = expected(tag, i, str(store.root))
    if i % 2:  # the whole entry in one transaction
        store.add_entry(dict(entry, status="done", finished=entry["created"] + 1.5, duration=1.5), images)
    else:  # as the extension records a job: the first image, then one by one, then finished
        entry_id = store.begin_entry(entry, images[:1])
        for image in images[1:]:
            store.add_images(entry_id, [image])
        store.finish_entry(entry_id, "done", finished=entry["created"] + 1.5, duration=1.5)

if __name__ == "__main__":
    store_file, db, tag, count, go = sys.argv[1:6]
    spec = importlib.util.spec_from_file_location("history_store", store_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    store = module.HistoryStore(db)
    while go != "-" and not os.path.exists(go):
        time.sleep(0.002)
    i = 0
    while count == "forever" or i < int(count):
        write(store, tag, i)
        print(i, flush=True)  # entry i is committed
        i += 1
'''


@pytest.fixture(scope="module")
def writer(tmp_path_factory):
    path = tmp_path_factory.mktemp("writer") / "writer.py"
    path.write_text(WRITER)
    namespace = {"__name__": "writer"}
    exec(compile(WRITER, str(path), "exec"), namespace)
    namespace["path"] = path
    return namespace


def start_writer(writer, db, tag, count="forever", go="-"):
    return subprocess.Popen([sys.executable, str(writer["path"]), str(HISTORY_DIR / "store.py"), str(db), tag, str(count), str(go)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def check_entries(store, writer, tag, committed: set[int]) -> None:
    """Every committed entry of ``tag`` is there and whole; entries are numbered without gaps;
    only the last one may be unfinished (killed part-way), holding the first of its images."""
    found = {e["uid"]: e for e in store.export()["entries"] if e["uid"].startswith(f"{tag}-")}
    numbers = sorted(int(uid.split("-")[1]) for uid in found)
    assert numbers == list(range(len(numbers))), "no entry lost in between"
    assert committed <= set(numbers)
    for n in numbers:
        entry = found[f"{tag}-{n}"]
        want, images = writer["expected"](tag, n, str(store.root))
        for key, value in want.items():
            assert entry[key] == value, (n, key)
        for image in images:
            image["path"] = store.stored_path(image["path"])
        if entry["status"] == "done":
            assert entry["images"] == images and entry["duration"] == 1.5
        else:
            # "interrupted" once a store opened with no other user marked it, else still "running"
            assert entry["status"] in ("running", "interrupted") and n == numbers[-1] and n not in committed
            saved = len(entry["images"])  # the images written before the kill, in order
            assert 1 <= saved <= len(images)
            assert entry["images"] == images[:saved]


def integrity_ok(db: Path) -> bool:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()


# --- recording through the engine -------------------------------------------------------------

@pytest.fixture(scope="module")
def engine(tiny_checkpoints, tmp_path_factory):
    from core.engine import Engine

    out = tmp_path_factory.mktemp("history-engine")
    return Engine(device="cpu", ckpt_dir=tiny_checkpoints["safetensors"].parent, output_dir=out / "outputs",
                  hash_cache=out / "hashes.json", extensions_dir=ROOT / "extensions")


def gen_params(**kwargs):
    return GenerationParams(**{**dict(prompt="a red fox, (masterpiece:1.2)", negative_prompt="blurry", steps=2,
                                      width=64, height=64, checkpoint="tiny.safetensors"), **kwargs})


def test_every_job_is_recorded_with_its_images(engine, history):
    ext = engine.extensions.extensions["prompt_history"]
    assert ext.enabled, ext.error
    assert len(ext.ui_tabs) == 1 and len(ext.api_routes) == 1
    params = gen_params(seed=-1, batch_size=2, cfg_scale=6.5, extra={"Note": "kept", "dropped": object()})
    before = time.time()
    results = engine.txt2img(params)
    after = time.time()

    db = engine.output_dir / "history.sqlite3"
    assert db.is_file()
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    store = history.HistoryStore(db)
    (entry,) = store.search("fox")["entries"]
    assert entry["prompt"] == params.prompt and entry["negative_prompt"] == "blurry"
    assert entry["kind"] == "txt2img" and entry["status"] == "done"
    assert entry["model_name"] == "tiny" and entry["model_hash"] == engine.model_hash() and len(entry["model_hash"]) == 10
    assert before <= entry["created"] <= entry["finished"] <= after and 0 < entry["duration"] <= after - before
    # every parameter, as the job ran it (the object in extra is not serialisable: left out)
    expected = {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
    expected["extra"] = {"Note": "kept"}
    assert entry["params"] == expected
    assert GenerationParams(**entry["params"]).cfg_scale == 6.5
    assert entry["seed"] == results[0].seed
    assert [i["seed"] for i in entry["images"]] == [r.seed for r in results] == [results[0].seed, results[0].seed + 1]
    assert [store.file_path(i["path"]) for i in entry["images"]] == [r.path for r in results]
    assert [i["infotext"] for i in entry["images"]] == [r.infotext for r in results]
    assert all(not Path(i["path"]).is_absolute() for i in entry["images"])  # relative to the outputs folder

    # "send to txt2img" gives everything needed to make the same images again
    payload = store.send_to(entry["id"])
    again = engine.txt2img(GenerationParams(**payload["params"]), save=False)
    assert [r.seed for r in again] == [r.seed for r in results]
    for a, b in zip(again, results):
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    one = store.send_to(entry["id"], 1)
    assert one["params"]["seed"] == results[1].seed and one["params"]["batch_size"] == 1
    assert one["infotext"] == results[1].infotext and Path(one["image"]) == results[1].path

    # unsaved images are recorded too (no path); the re-run above was an entry of its own
    assert store.search("fox")["total"] == 2
    newest = store.search("fox")["entries"][0]
    assert [i["path"] for i in newest["images"]] == [None, None]
    assert store.check() == []


def test_an_interrupted_job_keeps_what_it_made(engine, history):
    def progress(p):
        if p.batch == 1:
            engine.interrupt()

    results = engine.txt2img(gen_params(prompt="a interrupted walrus", seed=11, batch_count=3), progress=progress)
    # the first batch, and the picture the interrupted second had reached (shown, not saved)
    assert [(r.seed, r.incomplete) for r in results] == [(11, False), (12, True)]
    store = history.HistoryStore(engine.output_dir / "history.sqlite3")
    (entry,) = store.search("walrus")["entries"]
    assert entry["status"] == "interrupted" and [i["seed"] for i in entry["images"]] == [11]
    assert entry["params"]["batch_count"] == 3


def test_a_job_that_fails_is_marked_failed_and_keeps_what_it_made(engine, history):
    """A job that raises half-way (here the second batch's sampling) still reaches after_job:
    its entry says "failed" at once, with the images made before, instead of "running" until
    the next start."""

    def progress(p):
        if p.batch == 1:
            raise RuntimeError("the device fell over")

    with pytest.raises(RuntimeError, match="fell over"):
        engine.txt2img(gen_params(prompt="a failing narwhal", seed=21, batch_count=3), progress=progress)
    store = history.HistoryStore(engine.output_dir / "history.sqlite3")
    (entry,) = store.search("narwhal")["entries"]
    assert entry["status"] == "failed" and [i["seed"] for i in entry["images"]] == [21]
    assert entry["finished"] is not None and entry["duration"] > 0
    assert len(engine.txt2img(gen_params(prompt="a narwhal after the failure", seed=5), save=False)) == 1


def test_params_that_json_cannot_hold_are_left_out(history):
    @dataclasses.dataclass
    class P:
        prompt: str = "x"
        path: Path = Path("/a/b")
        sizes: tuple = (1, 2)
        extra: dict = dataclasses.field(default_factory=lambda: {"ok": 1.5, "fn": print, "nan": float("nan"),
                                                                 "nested": {"bad": object(), "n": None}})
        model: object = dataclasses.field(default_factory=object)

    assert history.params_to_dict(P()) == {"prompt": "x", "path": "/a/b", "sizes": [1, 2],
                                           "extra": {"ok": 1.5, "nested": {"n": None}}}


# --- search, favourites, delete ----------------------------------------------------------------

def make_entry(store, prompt, negative="", model="alpha", created=None, kind="txt2img", images=1, favourite=False):
    created = time.time() if created is None else created
    return store.add_entry({"prompt": prompt, "negative_prompt": negative, "model_name": model,
                            "model_hash": f"hash-{model}", "created": created, "kind": kind, "status": "done",
                            "favourite": favourite, "params": {"prompt": prompt, "negative_prompt": negative}},
                           [{"seed": n, "infotext": prompt, "created": created} for n in range(images)])


@pytest.fixture
def filled(history, tmp_path):
    store = history.HistoryStore(tmp_path / "out" / "history.sqlite3")
    day = 86400
    now = time.time()
    ids = {
        "cat": make_entry(store, "a red cat sitting on a mat, (masterpiece:1.2)", "ugly, blurry", created=now - 3 * day),
        "dog": make_entry(store, "a blue dog, <lora:style:0.8>", "red", model="beta", created=now - 2 * day, kind="img2img"),
        "mat": make_entry(store, "mat cat red", "", created=now - day),
        "café": make_entry(store, "Café au lait, long_hair, masterful", "bad hands", model="beta", created=now),
    }
    return store, ids, now


def found(store, *args, **kwargs):
    return [e["id"] for e in store.search(*args, **kwargs)["entries"]]


def test_full_text_search_words_phrases_prefixes(filled):
    store, ids, _ = filled
    assert found(store, "red") == [ids["mat"], ids["cat"]]  # newest first; "red" in the dog's negative does not count
    assert found(store, "red cat") == [ids["mat"], ids["cat"]]  # all words, any order
    assert found(store, '"red cat"') == [ids["cat"]]  # the phrase
    assert found(store, '"cat red"') == [ids["mat"]]
    assert found(store, "master*") == [ids["café"], ids["cat"]]  # prefix
    assert found(store, '"red ca"*') == [ids["cat"]]  # phrase ending in a prefix
    assert found(store, "cat -mat") == []  # excluded word
    assert found(store, "red -sitting") == [ids["mat"]]
    assert found(store, "-cat") == [ids["café"], ids["dog"]]
    assert found(store, "dog OR cafe") == [ids["café"], ids["dog"]]  # accents folded
    assert found(store, "long hair") == found(store, '"long hair"') == [ids["café"]]  # long_hair is two words
    assert found(store, "(masterpiece:1.2)") == [ids["cat"]]  # prompt syntax is no query syntax error
    assert found(store, "<lora:style:0.8>") == [ids["dog"]]
    assert found(store, '( ) * : , - "') == found(store, "") == [ids["café"], ids["mat"], ids["dog"], ids["cat"]]
    assert found(store, "NOT AND") == []  # FTS5 operators other than OR are plain words here
    assert found(store, "red", scope="negative") == [ids["dog"]]
    assert found(store, "red", scope="both") == [ids["mat"], ids["dog"], ids["cat"]]
    assert found(store, '"bad hands"', scope="both") == [ids["café"]]
    assert found(store, "cat", order="oldest") == [ids["cat"], ids["mat"]]
    assert found(store, "mat", order="relevance")[0] == ids["mat"]  # "mat" fills more of the short prompt
    with pytest.raises(store_error(store)):
        store.search("x", scope="title")


def store_error(store):
    return sys.modules[type(store).__module__].HistoryError


def test_filters_by_model_date_favourite_and_kind(filled):
    store, ids, now = filled
    assert found(store, model="beta") == [ids["café"], ids["dog"]]
    assert found(store, model="hash-alpha") == [ids["mat"], ids["cat"]]
    assert found(store, "red", model="beta") == []
    import datetime as dt

    day = lambda ago: dt.date.fromtimestamp(now - ago * 86400).isoformat()  # noqa: E731
    assert found(store, since=day(1)) == [ids["café"], ids["mat"]]
    assert found(store, until=day(2)) == [ids["dog"], ids["cat"]]  # the "until" day is included
    assert found(store, since=day(2), until=day(2)) == [ids["dog"]]
    assert found(store, since=now - 1.5 * 86400) == [ids["café"], ids["mat"]]  # Unix times too
    assert found(store, kind="img2img") == [ids["dog"]]
    with pytest.raises(store_error(store)):
        store.search(since="last tuesday")
    page = store.search(limit=2, offset=1)
    assert page["total"] == 4 and [e["id"] for e in page["entries"]] == [ids["mat"], ids["dog"]]
    assert {(m["name"], m["count"]) for m in store.models()} == {("alpha", 2), ("beta", 2)}


def test_favourites(filled):
    store, ids, _ = filled
    assert found(store, favourites=True) == []
    assert store.set_favourite(ids["dog"]) and store.set_favourite(ids["cat"], True)
    assert found(store, favourites=True) == [ids["dog"], ids["cat"]]
    assert found(store, "cat", favourites=True) == [ids["cat"]]
    assert store.get(ids["dog"])["favourite"] is True
    assert store.set_favourite(ids["dog"], False)
    assert found(store, favourites=True) == [ids["cat"]]
    assert not store.set_favourite(12345)


def test_delete_removes_the_entry_its_images_and_its_search_hits(filled, tmp_path):
    store, ids, _ = filled
    image = tmp_path / "out" / "kept.png"
    image.write_bytes(b"png")
    entry_id = make_entry(store, "a deletable giraffe", images=3)
    store.set_image_path(store.get(entry_id)["images"][0]["id"], image)
    assert found(store, "giraffe") == [entry_id]
    assert store.delete([entry_id, ids["dog"], 999]) == 2
    assert found(store, "giraffe") == [] and store.get(entry_id) is None and store.get(ids["dog"]) is None
    assert found(store, "dog OR giraffe", scope="both") == []
    conn = sqlite3.connect(store.path)
    assert conn.execute("SELECT count(*) FROM images WHERE entry_id IN (?, ?)", (entry_id, ids["dog"])).fetchone() == (0,)
    conn.close()
    assert image.read_bytes() == b"png"  # the file stays (the outputs gallery deletes files, to its trash)
    assert store.check() == [] and store.count() == 3


# --- export and import ---------------------------------------------------------------------------

def test_export_import_export_is_identical(history, tmp_path):
    store = history.HistoryStore(tmp_path / "a" / "history.sqlite3")
    tricky = "line one\nline \"two\", with: commas\r\n\ttab 🦊 ünïcödé \\ backslash \u2028 \x00 nul"
    first = store.add_entry({
        "prompt": tricky, "negative_prompt": "", "model_name": None, "model_hash": None, "seed": None,
        "created": 1700000000.123456789, "kind": "img2img", "status": "running", "favourite": True,
        "params": {"prompt": tricky, "cfg_scale": 0.1, "eta": None, "tiny": 1e-300, "big": 2**62, "neg": -0.0,
                   "flag": False, "list": [1, "two", [3.5]], "extra": {"Schedule type": "Karras", "nested": {"a": {}}}},
    }, [{"seed": 2**32 - 1, "subseed": 7, "path": str(tmp_path / "a" / "sub" / "x.png"), "infotext": tricky,
         "created": 1700000000.5},
        {"seed": 0, "subseed": None, "path": str(tmp_path / "a" / "y.png"), "infotext": "", "created": 1700000001.0},
        {"seed": 1, "subseed": None, "path": None, "infotext": "z", "created": 1700000002.0}])
    store.finish_entry(first, "interrupted", finished=1700000003.0, duration=2.75)
    make_entry(store, "plain second", images=0, created=1700000000.0)  # same time: ordered by uid
    make_entry(store, "plain third", model="beta", favourite=True, created=1600000000.0)

    text = store.export_json()
    fresh = history.HistoryStore(tmp_path / "b" / "history.sqlite3")
    assert fresh.import_(json.loads(text)) == {"added": 3, "replaced": 0, "skipped": 0}
    assert fresh.export_json() == text
    strip = lambda entries: [{k: v for k, v in e.items() if k not in ("id",)} | {  # noqa: E731
        "images": [{k: v for k, v in i.items() if k not in ("id", "entry_id")} for i in e["images"]]} for e in entries]
    assert strip(fresh.search(limit=10)["entries"]) == strip(store.search(limit=10)["entries"])
    assert found(fresh, "ünïcödé") == found(fresh, "unicode") != []
    assert fresh.check() == []

    # importing again adds nothing; "replace" rewrites; an export of some entries holds those
    assert fresh.import_(text) == {"added": 0, "replaced": 0, "skipped": 3}
    assert fresh.import_(text, mode="replace") == {"added": 0, "replaced": 3, "skipped": 0}
    assert fresh.export_json() == text
    assert [e["prompt"] for e in store.export(favourites=True)["entries"]] == ["plain third", tricky]
    assert [e["prompt"] for e in store.export(query="second")["entries"]] == ["plain second"]


def test_a_bad_import_document_changes_nothing(history, tmp_path):
    store = history.HistoryStore(tmp_path / "history.sqlite3")
    make_entry(store, "already here")
    good = store.export()
    HistoryError = history.HistoryError
    broken = json.loads(json.dumps(good))
    broken["entries"].append(dict(broken["entries"][0], uid="new", created="yesterday"))
    for document, message in [
        ("{not json", "not JSON"), ({"format": "other"}, "format"), (dict(good, version=99), "version"),
        (broken, "entries[1].created"),
        (dict(good, entries=[dict(good["entries"][0], uid="x", colour="red")]), "unknown field"),
        (dict(good, entries=[dict(good["entries"][0], uid="x", images=[{"seed": 1}])]), "missing field"),
        (dict(good, entries=[dict(good["entries"][0], uid="x")] * 2), "appears twice"),
        ('{"format": "sd-studio-prompt-history", "version": 1, "entries": [%s]}'
         % json.dumps(dict(good["entries"][0], uid="x", params={"cfg_scale": float("nan")})), r"params"),
        (dict(good, entries=[dict(good["entries"][0], uid="x", seed=2**64)]), r"seed"),
    ]:
        with pytest.raises(HistoryError, match=message.replace("[", r"\[").replace("]", r"\]")):
            store.import_(document)
    assert store.count() == 1


# --- crashes and concurrency ------------------------------------------------------------------------

def test_a_writer_killed_mid_write_leaves_a_consistent_database(history, writer, tmp_path):
    db = tmp_path / "out" / "history.sqlite3"
    rng = random.Random(1234)
    for round_number in range(4):
        tag = f"r{round_number}"
        proc = start_writer(writer, db, tag)
        committed: set[int] = set()
        wanted = rng.randint(3, 12)
        deadline = time.monotonic() + 30
        while len(committed) < wanted:
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            line = proc.stdout.readline() if ready else ""
            assert line, f"writer stopped: {proc.stderr.read() if proc.poll() is not None else 'timeout'}"
            committed.add(int(line))
        time.sleep(rng.random() * 0.02)  # somewhere in the middle of a transaction, most likely
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        committed.update(int(line) for line in proc.stdout.read().split())
        proc.stdout.close()
        proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL

        assert integrity_ok(db)
        store = history.HistoryStore(db)
        assert store.check() == []
        for earlier in range(round_number + 1):  # what earlier rounds wrote is untouched too
            check_entries(store, writer, f"r{earlier}", committed if earlier == round_number else set())
    # an entry left "running" by the kill is still searchable, and new writes go on normally
    store.add_entry({"prompt": "after the crashes", "status": "done"})
    assert found(store, "crashes") != [] and store.check() == []


def test_concurrent_writers_threads_and_processes(history, writer, tmp_path):
    db = tmp_path / "out" / "history.sqlite3"
    store = history.HistoryStore(db)
    go = tmp_path / "go"
    per_writer = 15
    procs = [start_writer(writer, db, f"p{n}", per_writer, go) for n in range(2)]
    errors: list[BaseException] = []
    stop_reading = threading.Event()

    def thread_writer(tag):
        try:
            own = history.HistoryStore(db) if tag.endswith("1") else store  # shared and separate stores
            while not go.exists():
                time.sleep(0.002)
            for i in range(per_writer):
                writer["write"](own, tag, i)
                if i % 5 == 0:
                    own.set_favourite(own.search(f'"{tag} number{i}"')["entries"][0]["id"])
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    def reader():
        try:
            while not stop_reading.is_set():
                result = store.search("lorem", limit=5)
                assert all(e["images"] for e in result["entries"])
                store.export(query="number1*")
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=thread_writer, args=(f"t{n}",)) for n in range(4)]
    read_thread = threading.Thread(target=reader)
    for t in [*threads, read_thread]:
        t.start()
    time.sleep(0.3)  # let the processes start
    go.touch()
    for t in threads:
        t.join(60)
    outputs = [p.communicate(timeout=60) for p in procs]
    stop_reading.set()
    read_thread.join(10)
    assert not errors, errors
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err
        assert out.split() == [str(i) for i in range(per_writer)]
    assert store.count() == 6 * per_writer
    for tag in ["p0", "p1", "t0", "t1", "t2", "t3"]:
        check_entries(store, writer, tag, set(range(per_writer)))
    assert len(store.search(favourites=True, limit=100)["entries"]) == 4 * 3
    assert integrity_ok(db) and store.check() == []


def test_a_held_write_lock_is_waited_for_not_failed(history, tmp_path):
    db = tmp_path / "history.sqlite3"
    store = history.HistoryStore(db)
    blocker = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.4, lambda: blocker.execute("COMMIT"))
    release.start()
    started = time.monotonic()
    make_entry(store, "waited for the lock")
    assert time.monotonic() - started >= 0.3
    release.join()
    # a lock held past the store's timeout is an error, not a hang
    impatient = history.HistoryStore(db, timeout=0.2)
    blocker.execute("BEGIN IMMEDIATE")
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        make_entry(impatient, "never written")
    blocker.execute("ROLLBACK")
    blocker.close()
    assert found(store, "") == found(store, "waited") and store.count() == 1


# --- REST routes and the UI tab --------------------------------------------------------------------

def test_rest_routes(engine, history, tmp_path):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    app = FastAPI()
    for add_routes in engine.extensions.extensions["prompt_history"].api_routes:
        add_routes(app, engine)
    client = TestClient(app)
    engine.txt2img(gen_params(prompt="a rest api heron", seed=5))
    hits = client.get("/history/search", params={"q": "hero*", "model": "tiny"}).json()
    assert hits["total"] == 1
    entry = hits["entries"][0]
    image_id = entry["images"][0]["id"]
    assert client.get("/history/search", params={"q": "heron", "since": "2000-01-01", "until": "2000-01-02"}).json()["total"] == 0
    assert client.get("/history/search", params={"order": "sideways"}).status_code == 400
    assert {"name": "tiny", "hash": engine.model_hash()}.items() <= client.get("/history/models").json()[0].items()

    assert client.post(f"/history/entries/{entry['id']}/favourite", json={"favourite": True}).json()["favourite"] is True
    assert client.get("/history/search", params={"favourites": "true"}).json()["entries"][0]["id"] == entry["id"]
    sent = client.get(f"/history/entries/{entry['id']}/send", params={"image": 0}).json()
    assert sent["params"]["seed"] == 5 and sent["infotext"].startswith("a rest api heron\n")
    assert client.get(f"/history/entries/{entry['id']}/send", params={"image": 3}).status_code == 400
    assert client.get("/history/entries/99999").status_code == 404

    full = client.get(f"/history/images/{image_id}")
    assert full.status_code == 200 and full.content[:4] == b"\x89PNG"
    thumb = client.get(f"/history/images/{image_id}", params={"size": 16})
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"

    exported = client.post("/history/export", json={"q": "heron"})
    document = exported.json()
    assert [e["prompt"] for e in document["entries"]] == ["a rest api heron"]
    assert client.get("/history/export").json()["entries"]
    # an imported path outside the outputs folder is refused, and one already in the database
    # (recorded before imports were checked) is never served
    document["entries"][0].update(uid="imported", prompt="an imported heron")
    document["entries"][0]["images"][0]["path"] = str(ROOT / "README.md")
    refused = client.post("/history/import", json=document)
    assert refused.status_code == 400 and "entries[0].images[0].path" in refused.json()["detail"]
    assert client.get("/history/search", params={"q": "imported"}).json()["total"] == 0
    document["entries"][0]["images"][0]["path"] = entry["images"][0]["path"]
    assert client.post("/history/import", json=document).json() == {"added": 1, "replaced": 0, "skipped": 0}
    assert client.post("/history/import", json={"format": "nope"}).status_code == 400
    imported = client.get("/history/search", params={"q": "imported"}).json()["entries"][0]
    assert client.get(f"/history/images/{imported['images'][0]['id']}").status_code == 200
    history.HistoryStore(Path(engine.output_dir) / history.DB_NAME).set_image_path(
        imported["images"][0]["id"], ROOT / "README.md")
    assert client.get(f"/history/images/{imported['images'][0]['id']}").status_code == 404

    assert client.delete(f"/history/entries/{entry['id']}").json() == {"deleted": 1}
    assert client.delete(f"/history/entries/{entry['id']}").status_code == 404
    assert client.post("/history/delete", json={"ids": [imported["id"]]}).json() == {"deleted": 1}
    assert client.get("/history/search", params={"q": "heron"}).json()["total"] == 0


def test_ui_tab_builds_and_its_handlers_work(engine, history, tmp_path):
    import gradio as gr

    (build_tab,) = engine.extensions.extensions["prompt_history"].ui_tabs
    with gr.Blocks():
        with gr.Tab(build_tab.title):
            parts = build_tab(engine)
    assert {"infotext", "params", "image", "send_txt2img", "send_img2img"} <= set(parts)
    tab = parts["tab"]
    results = engine.txt2img(gen_params(prompt="a ui pelican", seed=9, batch_size=2))

    items, ids, status, page = tab.search("pelican", "prompt", "All", "", "", False, "newest")
    assert len(items) == len(ids) == 1 and status.startswith("1 entry") and page == 0
    thumb, caption = items[0]
    assert thumb.size == (64, 64) and "a ui pelican" in caption
    assert "tiny" in tab.models()

    entry_id, images, prompt, negative, details, infotext, params, label = tab.entry_view(ids[0])
    assert entry_id == ids[0] and len(images) == 2 and prompt == "a ui pelican" and negative == "blurry"
    assert "Seeds: 9, 10" in details and infotext == results[0].infotext and params["seed"] == 9
    assert tab.select_image(entry_id, 1) == (results[1].infotext, {**params, "seed": 10, "batch_size": 1, "batch_count": 1})
    assert tab.toggle_favourite(entry_id) == "★ Unfavourite"
    assert tab.search("pelican", "prompt", "tiny", "", "", True, "newest")[1] == [entry_id]

    path, message = tab.export("results", "pelican", "prompt", "All", "", "", False)
    assert message == "Exported 1 entry." and json.loads(Path(path).read_text())["entries"][0]["favourite"] is True
    assert tab.delete(entry_id).startswith("Entry deleted")
    assert tab.search("pelican", "prompt", "All", "", "", False, "newest")[1] == []
    assert tab.import_file(path, "skip") == "Imported: 1 added, 0 replaced, 0 already here."
    assert tab.search("pelican", "prompt", "All", "", "", False, "newest")[2].startswith("1 entry")
    assert tab.import_file(str(tmp_path / "missing.json"), "skip").startswith("**Not imported:**")
