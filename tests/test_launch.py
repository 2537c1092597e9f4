"""Tests of the one-command set-up: bootstrap.py, launch.py, run_tests.py,
.ci/run and the Gradio page in app/page/ (build.py) (with a stand-in engine).

Nothing here downloads anything or touches the real venv/: every
environment that bootstrap might create or install into is a temporary
directory, and pip runs with PIP_NO_INDEX=1.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import bootstrap  # noqa: E402

BOGUS_PACKAGE = "zz-sd-studio-no-such-package==0.0.1"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != bootstrap.GUARD_ENV}
    env["PIP_NO_INDEX"] = "1"  # belt and braces: never reach a package index
    env.update(extra)
    return env


def run_py(args: list[str], timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=kwargs.pop("cwd", ROOT),
        env=kwargs.pop("env", clean_env()),
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


@pytest.fixture
def no_guard():
    """Run with the re-exec guard unset, and restore it afterwards."""
    saved = os.environ.pop(bootstrap.GUARD_ENV, None)
    yield
    os.environ.pop(bootstrap.GUARD_ENV, None)
    if saved is not None:
        os.environ[bootstrap.GUARD_ENV] = saved


class Recorder:
    """Stands in for the command runner and os.execv."""

    def __init__(self, rc: int = 0):
        self.rc = rc
        self.commands: list[list[str]] = []
        self.execs: list[tuple[str, list[str]]] = []

    def run(self, cmd):
        self.commands.append([str(c) for c in cmd])
        return self.rc

    def execv(self, path, argv):
        self.execs.append((str(path), [str(a) for a in argv]))


@pytest.fixture
def bogus_requirements(tmp_path: Path) -> Path:
    path = tmp_path / "bogus-requirements.txt"
    path.write_text(f"# not installable\n{BOGUS_PACKAGE}\n")
    return path


# ---------------------------------------------------------------- launch.py


def test_help_lists_all_flags():
    done = run_py(["launch.py", "--help"], timeout=30)
    assert done.returncode == 0, done.stderr
    for flag in ("--skip-install", "--device", "--precision", "--ckpt-dir", "--outdir",
                 "--listen", "--port", "--nowebui", "--api", "--api-auth", "--insecure", "--ui-settings-file", "--compile",
                 "--allowed-dir"):
        assert flag in done.stdout
    for choice in ("auto,cpu,cuda,mps", "auto,fp32,fp16,bf16"):
        assert choice in done.stdout


def test_nowebui_skip_install_exits_zero_and_creates_folders(tmp_path: Path):
    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    done = run_py(["launch.py", "--nowebui", "--skip-install", "--ckpt-dir", str(ckpt), "--outdir", str(out)],
                  timeout=30)
    assert done.returncode == 0, done.stderr
    assert ckpt.is_dir() and out.is_dir()
    assert "bootstrap:" not in done.stdout + done.stderr
    assert "gradio" not in done.stdout + done.stderr  # --nowebui does not load the UI


def test_nowebui_in_satisfied_environment_does_no_setup(tmp_path: Path):
    # The interpreter running the tests has requirements.txt installed, so the
    # bootstrap check passes and nothing is installed or re-executed.
    done = run_py(["launch.py", "--nowebui", "--ckpt-dir", str(tmp_path / "c"), "--outdir", str(tmp_path / "o")],
                  timeout=30)
    assert done.returncode == 0, done.stderr
    assert "bootstrap:" not in done.stdout + done.stderr


def test_bad_choice_is_rejected():
    done = run_py(["launch.py", "--device", "tpu", "--skip-install"], timeout=30)
    assert done.returncode == 2
    assert "--device" in done.stderr


def test_launch_hands_parsed_args_to_server_serve(monkeypatch, tmp_path: Path):
    import app
    import launch

    seen = []
    fake = types.ModuleType("app.server")
    fake.serve = lambda args: seen.append(args) or 0
    monkeypatch.setitem(sys.modules, "app.server", fake)
    monkeypatch.setattr(app, "server", fake, raising=False)

    rc = launch.main(["--skip-install", "--listen", "--api-auth", "me:pw", "--port", "7861", "--device", "cpu",
                      "--precision", "fp32", "--ckpt-dir", str(tmp_path / "ck"), "--outdir", str(tmp_path / "out")])
    assert rc == 0
    (args,) = seen
    assert (args.listen, args.port, args.device, args.precision) == (True, 7861, "cpu", "fp32")
    assert (args.api, args.api_auth, args.nowebui, args.insecure) == (False, "me:pw", False, False)
    assert args.ckpt_dir == (tmp_path / "ck").resolve() and args.outdir == (tmp_path / "out").resolve()
    # --listen without a password is refused before anything is set up or served
    assert launch.main(["--skip-install", "--listen", "--ckpt-dir", str(tmp_path / "ck2")]) == 2
    assert len(seen) == 1 and not (tmp_path / "ck2").exists()


def test_launch_defaults_point_beside_launch_py():
    import launch

    args = launch.build_parser().parse_args([])
    assert args.ckpt_dir == ROOT / "models" / "Stable-diffusion"
    assert args.outdir == ROOT / "outputs"
    assert (args.port, args.listen, args.device, args.precision, args.nowebui) == (7860, False, "auto", "auto", False)


# ---------------------------------------------------------------- bootstrap


def test_ensure_environment_is_noop_in_satisfied_environment(tmp_path: Path):
    target = tmp_path / "venv"
    script = textwrap.dedent(f"""
        import json, sys
        import bootstrap
        calls, execs = [], []
        result = bootstrap.ensure_environment(
            ["requirements-test.txt"],
            extra_no_deps="requirements-test-nodeps.txt",
            venv_dir={str(target)!r},
            argv=["prog"],
            runner=lambda cmd: calls.append(list(cmd)) or 0,
            execv=lambda path, argv: execs.append(path),
        )
        print(json.dumps({{"result": result, "calls": calls, "execs": execs,
                          "torch_imported": "torch" in sys.modules}}))
    """)
    done = run_py(["-c", script], timeout=30)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"result": "satisfied", "calls": [], "execs": [], "torch_imported": False}
    assert not target.exists()
    assert "bootstrap:" not in done.stderr


def test_skip_install_flag_skips_everything(bogus_requirements: Path, tmp_path: Path, no_guard):
    rec = Recorder()
    result = bootstrap.ensure_environment([str(bogus_requirements)], venv_dir=tmp_path / "venv",
                                          argv=["prog", "--skip-install"], runner=rec.run, execv=rec.execv)
    assert result == "skipped"
    assert rec.commands == [] and rec.execs == []


def test_unsatisfied_environment_creates_venv_installs_and_reexecs(tmp_path: Path, bogus_requirements: Path,
                                                                   no_guard):
    nodeps = tmp_path / "nodeps.txt"
    nodeps.write_text("zz-sd-studio-other-package\n")
    target = tmp_path / "venv"
    rec = Recorder()
    bootstrap.ensure_environment([str(bogus_requirements)], extra_no_deps=str(nodeps), venv_dir=target,
                                 argv=["script.py", "--port", "1234"], runner=rec.run, execv=rec.execv)
    py = str(bootstrap.venv_python(target))
    assert rec.commands == [
        [sys.executable, "-m", "venv", str(target)],
        [py, "-m", "pip", "install", "-r", str(bogus_requirements)],
        [py, "-m", "pip", "install", "--no-deps", "-r", str(nodeps)],
    ]
    assert rec.execs == [(py, [py, "script.py", "--port", "1234"])]
    assert os.environ.get(bootstrap.GUARD_ENV) == str(target)


def test_missing_nodeps_file_is_ignored(tmp_path: Path, bogus_requirements: Path, no_guard):
    rec = Recorder()
    bootstrap.ensure_environment([str(bogus_requirements)], extra_no_deps=str(tmp_path / "absent.txt"),
                                 venv_dir=tmp_path / "venv", argv=["p"], runner=rec.run, execv=rec.execv)
    assert not any("--no-deps" in cmd for cmd in rec.commands)
    assert len(rec.execs) == 1


def test_several_nodeps_files_install_in_order_and_missing_ones_are_skipped(tmp_path: Path, bogus_requirements: Path,
                                                                            no_guard):
    first, second = tmp_path / "a-nodeps.txt", tmp_path / "b-nodeps.txt"
    first.write_text("zz-sd-studio-one\n")
    second.write_text("zz-sd-studio-two\n")
    target = tmp_path / "venv"
    rec = Recorder()
    bootstrap.ensure_environment([str(bogus_requirements)], extra_no_deps=[str(first), str(tmp_path / "absent.txt"),
                                                                           str(second)],
                                 venv_dir=target, argv=["p"], runner=rec.run, execv=rec.execv)
    py = str(bootstrap.venv_python(target))
    assert rec.commands[1:] == [
        [py, "-m", "pip", "install", "-r", str(bogus_requirements)],
        [py, "-m", "pip", "install", "--no-deps", "-r", str(first)],
        [py, "-m", "pip", "install", "--no-deps", "-r", str(second)],
    ]


def test_launch_and_run_tests_install_the_runtime_nodeps_file(monkeypatch, tmp_path: Path):
    # spandrel must come without its declared torchvision dependency, for the app and the tests.
    import launch
    import run_tests

    seen = []
    monkeypatch.setattr(bootstrap, "ensure_environment", lambda files, extra_no_deps=None, **kw: seen.append(extra_no_deps))
    monkeypatch.setattr(run_tests.subprocess, "call", lambda cmd, cwd=None: 0)
    assert launch.main(["--nowebui", "--ckpt-dir", str(tmp_path / "c"), "--outdir", str(tmp_path / "o")]) == 0
    assert run_tests.main(["-q", "tests/test_nothing.py"]) == 0
    assert seen == ["requirements-nodeps.txt", ["requirements-nodeps.txt", "requirements-test-nodeps.txt"]]
    assert "spandrel" in (ROOT / "requirements-nodeps.txt").read_text()
    assert not bootstrap.find_problems([ROOT / "requirements.txt", ROOT / "requirements-nodeps.txt"])


def test_reexec_guard_stops_instead_of_looping(tmp_path: Path, bogus_requirements: Path, capsys, no_guard):
    os.environ[bootstrap.GUARD_ENV] = str(tmp_path / "venv")
    rec = Recorder()
    with pytest.raises(SystemExit) as info:
        bootstrap.ensure_environment([str(bogus_requirements)], venv_dir=tmp_path / "venv", argv=["p"],
                                     runner=rec.run, execv=rec.execv)
    assert info.value.code != 0
    assert rec.commands == [] and rec.execs == []
    err_lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err_lines) == 1
    assert err_lines[0].startswith("bootstrap: error:") and "zz-sd-studio-no-such-package" in err_lines[0]


def test_guard_is_cleared_once_satisfied(no_guard):
    os.environ[bootstrap.GUARD_ENV] = "x"
    assert bootstrap.ensure_environment(["requirements.txt"], argv=["p"],
                                        runner=Recorder().run, execv=Recorder().execv) == "satisfied"
    assert bootstrap.GUARD_ENV not in os.environ


def test_pip_failure_gives_one_clear_line_and_stops(tmp_path: Path, bogus_requirements: Path, capsys, no_guard):
    rec = Recorder(rc=3)
    (tmp_path / "venv" / "bin").mkdir(parents=True)  # venv "exists": no creation step
    bootstrap.venv_python(tmp_path / "venv").write_text("")
    with pytest.raises(SystemExit) as info:
        bootstrap.ensure_environment([str(bogus_requirements), str(bogus_requirements)], venv_dir=tmp_path / "venv",
                                     argv=["p"], runner=rec.run, execv=rec.execv)
    assert info.value.code == 3
    assert len(rec.commands) == 1 and rec.execs == []  # stops at the first failing file
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err == [f"bootstrap: error: pip install -r {bogus_requirements} failed (exit code 3); "
                   "see pip's output above"]


def test_real_pip_failure_in_temporary_venv(tmp_path: Path, bogus_requirements: Path):
    # A real (pip-less, fast) venv in a temp dir; it sees the base
    # interpreter's site-packages, so `-m pip` is real pip where the base
    # interpreter has one.  Either way the install must fail, offline.
    target = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(target)],
                   check=True, timeout=30)
    script = ("import bootstrap; bootstrap.ensure_environment("
              f"[{str(bogus_requirements)!r}], venv_dir={str(target)!r}, argv=['p'])")
    done = run_py(["-c", script], timeout=60)
    assert done.returncode != 0
    ours = [line for line in done.stderr.splitlines() if line.startswith("bootstrap: error:")]
    assert len(ours) == 1
    assert str(bogus_requirements) in ours[0] and "failed" in ours[0]
    assert done.stderr.rstrip().splitlines()[-1] == ours[0]  # it is the last word


def test_unreadable_requirement_file_is_one_line_error(tmp_path: Path, capsys, no_guard):
    with pytest.raises(SystemExit) as info:
        bootstrap.ensure_environment([str(tmp_path / "nope.txt")], venv_dir=tmp_path / "v", argv=["p"],
                                     runner=Recorder().run, execv=Recorder().execv)
    assert info.value.code != 0
    assert "nope.txt not found" in capsys.readouterr().err


def test_requirement_parsing_and_version_checks(tmp_path: Path):
    (tmp_path / "base.txt").write_text("torch==2.13.0\npillow>=10,<13  # comment\nfoo[bar]~=1.4\n")
    (tmp_path / "top.txt").write_text("-r base.txt\n--index-url https://example.invalid\n"
                                      "baz ; python_version < '3'\npytest>=8\n")
    reqs = bootstrap.parse_requirements(tmp_path / "top.txt")
    assert [(r.name, r.specs) for r in reqs] == [
        ("torch", [("==", "2.13.0")]),
        ("pillow", [(">=", "10"), ("<", "13")]),
        ("foo", [("~=", "1.4")]),
        ("pytest", [(">=", "8")]),
    ]
    ok = bootstrap.version_satisfies
    assert ok("2.13.0+cpu", "==", "2.13.0") and not ok("2.12.1", "==", "2.13.0")
    assert ok("12.1.0", "<", "13") and not ok("13.0", "<", "13")
    assert ok("1.9", "~=", "1.4") and not ok("2.0", "~=", "1.4")
    assert ok("2.13.5", "==", "2.13.*") and not ok("2.14.0", "==", "2.13.*")


def test_check_mode_reports_missing_packages(bogus_requirements: Path):
    done = run_py(["bootstrap.py", "--check", str(bogus_requirements)], timeout=30)
    assert done.returncode == 1
    assert "zz-sd-studio-no-such-package is not installed" in done.stdout
    assert run_py(["bootstrap.py", "--check", "requirements.txt"], timeout=30).returncode == 0


# ---------------------------------------------------------------- run_tests.py and .ci/run


@pytest.mark.parametrize("body, expected", [
    ("def test_ok():\n    assert True\n", 0),
    ("def test_bad():\n    assert False\n", 1),
    ("", 5),  # no tests collected: non-zero, so it fails
])
def test_run_tests_returns_pytest_exit_code(tmp_path: Path, body: str, expected: int):
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_sample.py").write_text(body)
    done = run_py(["run_tests.py", "--skip-install", "-q", "-p", "no:cacheprovider", str(suite)], timeout=60)
    assert done.returncode == expected, done.stdout + done.stderr
    if expected == 5:
        assert "collected no tests" in done.stderr


def test_ci_run_calls_run_tests_and_propagates_failure(tmp_path: Path):
    ci = ROOT / ".ci" / "run"
    assert os.access(ci, os.X_OK)
    text = ci.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text

    # Run the real script in a scratch copy of the repo layout whose
    # run_tests.py only records that it was called.
    fake_root = tmp_path / "repo"
    (fake_root / ".ci").mkdir(parents=True)
    shutil.copy2(ci, fake_root / ".ci" / "run")
    (fake_root / "run_tests.py").write_text(
        "import os, pathlib, sys\n"
        "pathlib.Path('called').write_text(' '.join(sys.argv[1:]))\n"
        "sys.exit(int(os.environ['FAKE_RC']))\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for rc in (0, 4):
        done = subprocess.run([str(fake_root / ".ci" / "run")], cwd=elsewhere, env=clean_env(FAKE_RC=str(rc)),
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == rc, done.stderr
        assert (fake_root / "called").exists()  # ran from the repo root
        (fake_root / "called").unlink()


# ---------------------------------------------------------------- app/page/ (stand-in engine)


# The engine's own error type (a tiny module, no torch): the page tells it apart by class.
from core.errors import EngineError  # noqa: E402
from core.params import GenerationParams  # noqa: E402
from fake_engine import FakeEngine  # noqa: E402
from launch_args import launch_args  # noqa: E402


@pytest.fixture(scope="module")
def webui():
    import app.page.build as module

    return module


def studio(webui, engine, tmp_path):
    from app.settings import Settings
    from app.styles import StyleDatabase

    return webui.StudioUI(engine, settings=Settings(tmp_path / "config.json"),
                          styles=StyleDatabase(tmp_path / "styles.csv"))


def test_page_builds_with_checkpoints_and_samplers(webui, tmp_path: Path):
    import gradio as gr

    demo = webui.build_ui(FakeEngine(tmp_path))
    assert isinstance(demo, gr.Blocks)
    blocks = list(demo.blocks.values())
    dropdowns = {b.label: b for b in blocks if isinstance(b, gr.Dropdown)}
    assert [c[0] for c in dropdowns["Checkpoint"].choices] == ["sd15.safetensors", "sub/other.ckpt"]
    from core.sampling.samplers import SAMPLERS

    assert [c[0] for c in dropdowns["Sampler"].choices] == list(SAMPLERS)
    assert [c[0] for c in dropdowns["Schedule type"].choices][:3] == ["Automatic", "Uniform", "Karras"]
    labels = {getattr(b, "label", None) for b in blocks}
    assert {"Prompt", "Negative prompt", "Sampling steps", "CFG scale", "Width", "Height",
            "Generation info", "Output"} <= labels
    assert any(isinstance(b, gr.Button) and b.value == "Generate" for b in blocks)


def test_generate_builds_params_and_returns_saved_pngs(webui, tmp_path: Path):
    engine = FakeEngine(tmp_path)
    ui = studio(webui, engine, tmp_path)
    *_, last = ui.generation.stream("txt2img", ("a cat", "blurry", [], "sd15.safetensors", "DDIM", "Karras", 12.0, 6.5,
                                         3.5, 64.0, 96.0, 2.0, 1.0, 42.0))
    (call,) = engine.calls
    assert call.params == GenerationParams(prompt="a cat", negative_prompt="blurry", steps=12, cfg_scale=6.5, seed=42,
                                           width=64, height=96, sampler="DDIM", scheduler="Karras", batch_size=1,
                                           batch_count=2, checkpoint="sd15.safetensors")
    gallery, info, log, progress, items = last
    saved = engine.output_dir / "txt2img-images" / dt.date.today().isoformat()
    assert [path for path, _ in gallery] == [str(saved / "00000-42.png"), str(saved / "00001-43.png")]
    infotexts = [item["infotext"] for item in items]
    assert info == infotexts[0] and [text.split("\n")[0] for text in infotexts] == ["a cat", "a cat"]
    assert ["Seed: 42," in infotexts[0], "Seed: 43," in infotexts[1]] == [True, True]


def test_page_uses_the_real_generation_params(webui, tmp_path: Path):
    engine = FakeEngine(tmp_path)
    list(studio(webui, engine, tmp_path).generation.stream("txt2img", dict(prompt="a dog", checkpoint="sd15.safetensors",
                                                                seed=5)))
    (call,) = engine.calls
    params = call.params
    assert isinstance(params, GenerationParams)
    params.validate()  # what the page sends passes the engine's own checks


def test_generate_empty_seed_and_checkpoint_mean_defaults(webui, tmp_path: Path):
    engine = FakeEngine(tmp_path)
    list(studio(webui, engine, tmp_path).generation.stream("txt2img", dict(prompt="x", negative_prompt=None,
                                                                            checkpoint="", seed=None, steps=1)))
    params = engine.calls[0].params
    assert params.seed == -1 and params.checkpoint is None
    assert params.negative_prompt == ""


@pytest.mark.parametrize("error, message", [
    (EngineError("Checkpoint 'x' not found"), "Checkpoint 'x' not found"),
    (RuntimeError("boom"), "Generation failed: RuntimeError: boom"),
])
def test_generate_errors_become_messages_in_the_page(webui, tmp_path: Path, error, message):
    import gradio as gr

    ui = studio(webui, FakeEngine(tmp_path, fail=error), tmp_path)
    with pytest.raises(gr.Error) as info:
        list(ui.generation.stream("txt2img", dict(prompt="x", steps=1)))
    assert info.value.message == message


def test_server_serve_binds_host_and_port_and_reports_engine_errors(monkeypatch, tmp_path: Path):
    import app.server as server

    made, served = [], []

    class StubEngineError(Exception):
        pass

    class BuiltEngine(FakeEngine):
        """Built as serve() builds core.engine.Engine: its arguments are kept; "mps" is missing."""

        def __init__(self, **kwargs):
            made.append(kwargs)
            if kwargs["device"] == "mps":
                raise StubEngineError("MPS is not available on this machine")
            super().__init__(tmp_path, checkpoints=["first.safetensors", "second.safetensors"])

    monkeypatch.setitem(sys.modules, "core.engine", types.SimpleNamespace(Engine=BuiltEngine))
    monkeypatch.setitem(sys.modules, "core.errors", types.SimpleNamespace(EngineError=StubEngineError))
    monkeypatch.setattr(server, "create_app", lambda engine, **kw: ("app", engine, kw))
    monkeypatch.setattr(server, "run_uvicorn", lambda app, host, port: served.append((app, host, port)) or 0)

    def args(**kw):
        return launch_args(**{**dict(device="cpu", precision="fp32", ckpt_dir=tmp_path / "ck", outdir=tmp_path / "out",
                                     port=7999, ui_settings_file=tmp_path / "config.json"), **kw})

    assert server.serve(args()) == 0
    assert server.serve(args(listen=True, insecure=True, port=8123)) == 0
    assert made[0] == dict(device="cpu", precision="fp32", ckpt_dir=tmp_path / "ck", output_dir=tmp_path / "out", lora_dir=None,
                           disabled_extensions=set(), compile=False, offload="auto")
    assert [(host, port) for _, host, port in served] == [("127.0.0.1", 7999), ("0.0.0.0", 8123)]
    _, _, options = served[0][0]
    assert (options["api"], options["ui"]) == (False, True)
    assert tmp_path / "out" in options["allowed_paths"]
    assert options["load_checkpoint"] == "first.safetensors"  # sd_checkpoint_load_at_start is on by default
    (tmp_path / "config.json").write_text('{"sd_checkpoint_load_at_start": false}')
    assert server.serve(args()) == 0
    assert served[-1][0][2]["load_checkpoint"] is None
    served.pop()
    assert server.serve(args(compile=True)) == 0
    assert made[-1]["compile"] is True  # launch.py --compile reaches the engine
    served.pop()
    assert server.serve(args(offload="always")) == 0
    assert made[-1]["offload"] == "always"  # launch.py --offload reaches the engine
    served.pop()
    (tmp_path / "config.json").write_text('{"unet_compile": true}')
    assert server.serve(args()) == 0
    assert made[-1]["compile"] is True  # so does the setting, at the next start
    served.pop()

    assert server.serve(args(device="mps")) == 1
    assert server.serve(args(listen=True)) == 2
    assert len(served) == 2


def test_download_model_offline_says_so_and_goes_on(tmp_path, capsys):
    import launch

    args = launch.build_parser().parse_args(["--download-model", "http://127.0.0.1:9/model.safetensors", "--ckpt-dir", str(tmp_path)])
    args.ckpt_dir = tmp_path
    assert launch.download_model(args) == 0
    assert "Offline" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_download_model_fetches_into_the_checkpoint_folder(tmp_path, capsys):
    import hashlib
    import http.server
    import threading

    import launch

    payload = b"weights" * 1000
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "tiny.safetensors").write_bytes(payload)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(tmp_path / "srv"), **k)

        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/tiny.safetensors"
        ckpts = tmp_path / "ckpts"
        ckpts.mkdir()
        args = launch.build_parser().parse_args(["--download-model", url, "--download-sha256", hashlib.sha256(payload).hexdigest()])
        args.ckpt_dir = ckpts
        assert launch.download_model(args) == 0
        assert (ckpts / "tiny.safetensors").read_bytes() == payload
        args.download_sha256 = "0" * 64
        (ckpts / "tiny.safetensors").unlink()
        assert launch.download_model(args) == 1
        assert "checksum mismatch" in capsys.readouterr().err and not list(ckpts.iterdir())
    finally:
        httpd.shutdown()
