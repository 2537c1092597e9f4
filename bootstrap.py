"""One-command environment set-up shared by ``launch.py`` and ``run_tests.py``.

Standard library only: this module runs before any third-party package is
available.

``ensure_environment(files)`` checks cheaply whether the running interpreter
already satisfies the requirement files (package metadata plus
``importlib.util.find_spec`` of the key modules; nothing heavy such as torch
is imported).  If it does, nothing happens.  Otherwise it creates ``venv/``
beside this file (when missing), pip-installs the requirement files into it,
optionally installs extra files with ``--no-deps``, and re-executes the
running script with the venv's interpreter and the same arguments.  An
environment variable guards against re-exec loops.

``python bootstrap.py --check FILE...`` prints what is missing and exits 1,
or exits 0 when the interpreter satisfies the files.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterable, Sequence

ROOT = Path(__file__).resolve().parent
DEFAULT_VENV_DIR = ROOT / "venv"

# Set (to the venv path) just before re-executing into the venv.  If the
# re-executed process still finds the environment unsatisfied, it stops with an
# error instead of installing and re-executing again.
GUARD_ENV = "SD_STUDIO_BOOTSTRAPPED"

SKIP_FLAG = "--skip-install"
MIN_PYTHON = (3, 10)

# Distribution name (normalised) -> top-level module that must be importable.
# Only the key modules are probed with find_spec; every other requirement is
# checked through its installed distribution metadata.
KEY_MODULES = {
    "torch": "torch",
    "transformers": "transformers",
    "safetensors": "safetensors",
    "gradio": "gradio",
    "pillow": "PIL",
    "numpy": "numpy",
    "opencv-python": "cv2",
    "opencv-python-headless": "cv2",
    "opencv-contrib-python": "cv2",
    "opencv-contrib-python-headless": "cv2",
    "peft": "peft",
    "ftfy": "ftfy",
    "pytest": "pytest",
    "diffusers": "diffusers",
}

# The engine is tested with exactly this torch release; a "+cpu"/"+cu121"
# local suffix is fine.
TORCH_PREFIX = "2.13.0"

Runner = Callable[[Sequence[str]], int]
Execer = Callable[[str, Sequence[str]], object]


# --------------------------------------------------------------------------
# Requirement parsing and checking
# --------------------------------------------------------------------------

_NAME_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*)$")
_SPEC_RE = re.compile(r"^\s*(===|~=|==|!=|<=|>=|<|>)\s*([^\s,]+)\s*$")
_RELEASE_RE = re.compile(r"^\s*v?(?:\d+!)?(\d+(?:\.\d+)*)")


def normalize_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


class Requirement:
    """One ``name[extras] <specs>`` line of a requirements file."""

    def __init__(self, name: str, specs: list[tuple[str, str]], source: Path):
        self.name = name
        self.specs = specs
        self.source = source

    def __repr__(self) -> str:
        spec = ",".join(op + v for op, v in self.specs)
        return f"Requirement({self.name}{spec})"


def _strip_comment(line: str) -> str:
    # pip treats '#' at the start or after whitespace as a comment.
    return re.split(r"(?:^|\s)#", line, maxsplit=1)[0].strip()


def parse_requirements(path: Path, _seen: set[Path] | None = None) -> list[Requirement]:
    """Requirements named in ``path``, following ``-r`` includes.

    Lines this small parser does not understand (URLs, editable installs,
    environment markers, options) are skipped: they are left to pip and are
    not part of the cheap check.
    """
    path = Path(path).resolve()
    seen = _seen if _seen is not None else set()
    if path in seen:
        return []
    seen.add(path)
    result: list[Requirement] = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = _strip_comment(raw)
        if not line:
            continue
        include = re.match(r"^(?:-r|--requirement)(?:\s*=\s*|\s+|(?=[^\s=]))(.+)$", line)
        if include:
            result.extend(parse_requirements(path.parent / include.group(1).strip(), seen))
            continue
        if line.startswith("-") or ";" in line or "://" in line or " @ " in line:
            continue
        match = _NAME_RE.match(line)
        if not match:
            continue
        name, _extras, rest = match.groups()
        specs: list[tuple[str, str]] = []
        ok = True
        for part in filter(None, (p.strip() for p in rest.split(","))):
            spec = _SPEC_RE.match(part)
            if not spec:
                ok = False
                break
            specs.append((spec.group(1), spec.group(2)))
        if ok:
            result.append(Requirement(name, specs, path))
    return result


def _release(version: str) -> tuple[int, ...] | None:
    match = _RELEASE_RE.match(version)
    if not match:
        return None
    return tuple(int(x) for x in match.group(1).split("."))


def _padded(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    width = max(len(a), len(b))
    return a + (0,) * (width - len(a)), b + (0,) * (width - len(b))


def version_satisfies(installed: str, op: str, wanted: str) -> bool:
    """Compare release numbers only (enough for the pins this project uses).

    Local labels ("+cpu") and pre-release tags are ignored; an unparsable
    version never blocks.
    """
    if op == "===":
        return installed.strip() == wanted.strip()
    have = _release(installed)
    if have is None:
        return True
    if wanted.endswith(".*") and op in ("==", "!="):
        prefix = _release(wanted[:-2])
        if prefix is None:
            return True
        head, prefix = _padded(have[: len(prefix)], prefix)
        return (head == prefix) == (op == "==")
    want = _release(wanted)
    if want is None:
        return True
    a, b = _padded(have, want)
    if op == "==":
        return a == b
    if op == "!=":
        return a != b
    if op == ">=":
        return a >= b
    if op == "<=":
        return a <= b
    if op == ">":
        return a > b
    if op == "<":
        return a < b
    if op == "~=":
        if len(want) < 2:
            return a >= b
        stem, want_stem = _padded(have[: len(want) - 1], want[:-1])
        return a >= b and stem == want_stem
    return True


def _installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
    except Exception:  # broken metadata: treat as missing
        return None


def find_problems(requirement_paths: Iterable[Path]) -> list[str]:
    """What the *running* interpreter lacks; an empty list means satisfied.

    Uses package metadata and ``find_spec`` only, so nothing is imported.
    """
    problems: list[str] = []
    seen: set[Path] = set()
    checked: set[str] = set()
    for path in requirement_paths:
        for req in parse_requirements(Path(path), seen):
            key = normalize_name(req.name)
            if key in checked:
                continue
            checked.add(key)
            version = _installed_version(req.name)
            if version is None:
                problems.append(f"{req.name} is not installed")
                continue
            for op, wanted in req.specs:
                if not version_satisfies(version, op, wanted):
                    problems.append(f"{req.name} {version} does not satisfy {op}{wanted}")
                    break
            if key == "torch" and not version.startswith(TORCH_PREFIX):
                problems.append(f"torch {version} is not {TORCH_PREFIX}")
            module = KEY_MODULES.get(key)
            if module is not None and importlib.util.find_spec(module) is None:
                problems.append(f"module {module} (from {req.name}) is not importable")
    return problems


# --------------------------------------------------------------------------
# Environment creation
# --------------------------------------------------------------------------


def venv_python(venv_dir: Path) -> Path:
    if os.name == "nt":
        return Path(venv_dir) / "Scripts" / "python.exe"
    return Path(venv_dir) / "bin" / "python"


def _running_in(venv_dir: Path) -> bool:
    try:
        return Path(sys.prefix).resolve() == Path(venv_dir).resolve()
    except OSError:
        return False


def _run_streaming(cmd: Sequence[str]) -> int:
    """Run a command with its output going straight to our stdout/stderr."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        return subprocess.call(list(cmd))
    except OSError as exc:
        print(f"bootstrap: could not run {cmd[0]}: {exc}", file=sys.stderr)
        return 127


def _execv(path: str, argv: Sequence[str]) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    if os.name == "nt":  # os.execv does not really replace the process there
        raise SystemExit(subprocess.call([path, *argv[1:]]))
    os.execv(path, list(argv))


def _venv_satisfied(python: Path, files: Sequence[Path]) -> bool:
    """Ask the venv's interpreter (in a subprocess) whether it is complete."""
    if not python.exists():
        return False
    cmd = [str(python), str(Path(__file__).resolve()), "--check", *map(str, files)]
    try:
        done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def _fail(message: str, code: int = 1) -> None:
    sys.stdout.flush()
    print(f"bootstrap: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def _display(path: Path) -> str:
    try:
        return str(Path(os.path.abspath(path)).relative_to(ROOT))
    except ValueError:
        return str(path)


def ensure_environment(
    requirement_files: list[str],
    extra_no_deps: str | Sequence[str] | None = None,
    *,
    venv_dir: str | os.PathLike | None = None,
    skip_install: bool | None = None,
    argv: Sequence[str] | None = None,
    runner: Runner | None = None,
    execv: Execer | None = None,
) -> str:
    """Make sure the packages in ``requirement_files`` are available.

    Returns ``"skipped"`` (``--skip-install``) or ``"satisfied"`` (nothing to
    do).  Otherwise it installs into ``venv_dir`` (default ``venv/`` beside
    this file) and re-executes ``argv`` (default ``sys.argv``) with the venv's
    interpreter, so it does not return.  ``extra_no_deps`` (one file or
    several; those that do not exist are skipped) is installed after them with
    ``pip install --no-deps``.  Exits non-zero with one
    ``bootstrap: error: ...`` line when something fails.

    ``runner`` (runs a command, returns its exit code) and ``execv`` exist so
    tests can observe what would be run.
    """
    argv = list(sys.argv if argv is None else argv)
    if skip_install is None:
        skip_install = SKIP_FLAG in argv[1:]
    if skip_install:
        return "skipped"
    if sys.version_info < MIN_PYTHON:
        _fail(
            "Python %d.%d or newer is required (this is %d.%d)"
            % (*MIN_PYTHON, *sys.version_info[:2])
        )

    run = runner or _run_streaming
    do_exec = execv or _execv
    venv_path = Path(venv_dir) if venv_dir is not None else DEFAULT_VENV_DIR
    if not venv_path.is_absolute():
        venv_path = ROOT / venv_path

    files: list[Path] = []
    for name in requirement_files:
        path = Path(name)
        path = path if path.is_absolute() else ROOT / path
        if not path.is_file():
            _fail(f"requirement file {_display(path)} not found")
        files.append(path)
    no_deps: list[Path] = []
    if isinstance(extra_no_deps, (str, os.PathLike)):
        extra_no_deps = [extra_no_deps]
    for name in extra_no_deps or ():
        candidate = Path(name)
        candidate = candidate if candidate.is_absolute() else ROOT / candidate
        if candidate.is_file():  # optional: used only when someone added it
            no_deps.append(candidate)
    check_files = files + no_deps

    problems = find_problems(check_files)
    if not problems:
        os.environ.pop(GUARD_ENV, None)  # do not leak into child processes
        return "satisfied"

    if os.environ.get(GUARD_ENV):
        _fail(
            "the environment is still incomplete after installing ("
            + "; ".join(problems[:5])
            + "). Delete %s and run again, or use %s." % (_display(venv_path), SKIP_FLAG)
        )

    python = venv_python(venv_path)
    print(f"bootstrap: this interpreter lacks requirements ({problems[0]}"
          + (f", and {len(problems) - 1} more" if len(problems) > 1 else "") + ")",
          flush=True)

    fresh = not python.exists()
    if fresh:
        print(f"bootstrap: creating virtual environment {_display(venv_path)}", flush=True)
        rc = run([sys.executable, "-m", "venv", str(venv_path)])
        if rc != 0:
            _fail(
                f"could not create the virtual environment {_display(venv_path)} "
                f"(exit code {rc}); on Debian/Ubuntu install the python3-venv package",
                rc or 1,
            )

    if _running_in(venv_path) or not _venv_satisfied(python, check_files):
        steps = [(f, ["-r", str(f)]) for f in files]
        steps += [(path, ["--no-deps", "-r", str(path)]) for path in no_deps]
        for path, args in steps:
            note = " (first set-up: this downloads large packages such as torch)" if fresh else ""
            print(f"bootstrap: installing {_display(path)} into {_display(venv_path)}{note}", flush=True)
            rc = run([str(python), "-m", "pip", "install", *args])
            if rc != 0:
                _fail(
                    f"pip install {' '.join(args[:-1] + [_display(path)])} failed "
                    f"(exit code {rc}); see pip's output above",
                    rc,
                )

    os.environ[GUARD_ENV] = str(venv_path)
    print(f"bootstrap: restarting with {_display(python)}", flush=True)
    do_exec(str(python), [str(python), *argv])
    return "re-executed"  # only reached when execv is a test double


def _main(args: list[str]) -> int:
    if len(args) >= 2 and args[0] == "--check":
        problems = find_problems([Path(a) for a in args[1:]])
        for problem in problems:
            print(problem)
        return 1 if problems else 0
    print("usage: python bootstrap.py --check REQUIREMENTS_FILE...", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
