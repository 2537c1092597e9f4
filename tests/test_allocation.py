"""Huge pages for large CPU tensors (core/allocation.py): set by the entry points before torch
is imported, never over the user's own choice, and it does cut the page faults of a large tensor."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.allocation import HUGE_PAGES_VARIABLE, kernel_allows_huge_pages, use_huge_pages

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, *args: str, environ: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k != HUGE_PAGES_VARIABLE} | {"PYTHONPATH": str(ROOT)} | environ
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_setting_is_added_unless_the_environment_already_has_one():
    environ: dict[str, str] = {}
    assert use_huge_pages(environ) is True
    assert environ == {HUGE_PAGES_VARIABLE: "1"}
    turned_off = {HUGE_PAGES_VARIABLE: "0"}
    assert use_huge_pages(turned_off) is False
    assert turned_off == {HUGE_PAGES_VARIABLE: "0"}


def test_the_process_is_left_alone_once_torch_is_imported(monkeypatch):
    import torch  # noqa: F401  (pytest's process has it already; torch may have read the variable)

    monkeypatch.delenv(HUGE_PAGES_VARIABLE, raising=False)
    assert use_huge_pages() is False
    assert HUGE_PAGES_VARIABLE not in os.environ


@pytest.mark.parametrize("text, allowed", [
    ("always [madvise] never\n", True), ("[always] madvise never\n", True), ("always madvise [never]\n", False),
])
def test_the_kernel_setting_is_read_from_its_bracketed_mode(tmp_path, text, allowed):
    setting = tmp_path / "enabled"
    setting.write_text(text)
    assert kernel_allows_huge_pages(str(setting)) is allowed
    assert kernel_allows_huge_pages(str(tmp_path / "missing")) is False


FAULTS_OF_A_LARGE_TENSOR = """
import json, resource, sys
from core.allocation import use_huge_pages
if sys.argv[1] == "ask":
    use_huge_pages()
import torch
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
x = torch.ones(64 * 2**20)  # 256 MB, every page written
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"faults": faults, "sum": float(x.sum())}))
"""


@pytest.mark.skipif(not kernel_allows_huge_pages(), reason="this kernel gives no transparent huge pages")
def test_a_large_tensor_takes_a_fraction_of_the_page_faults():
    asked = _run(FAULTS_OF_A_LARGE_TENSOR, "ask", environ={})
    default = _run(FAULTS_OF_A_LARGE_TENSOR, "default", environ={HUGE_PAGES_VARIABLE: "0"})
    assert asked["sum"] == default["sum"] == 64 * 2**20
    assert default["faults"] >= 60_000  # 256 MB in 4 KiB pages
    # 2 MiB pages: 512 times fewer where the kernel finds them; a quarter leaves room for fallbacks.
    assert asked["faults"] < default["faults"] / 4, (asked, default)


ENTRY_POINT = """
import json, os, sys, types
from core.allocation import HUGE_PAGES_VARIABLE
seen = {}
def record(*args):
    seen.update(variable=os.environ.get(HUGE_PAGES_VARIABLE))
    return 0
if sys.argv[1] == "launch":
    import launch
    server = types.ModuleType("app.server")
    server.serve = record
    sys.modules["app.server"] = server
    launch.main(["--skip-install", "--ckpt-dir", sys.argv[2] + "/ck", "--outdir", sys.argv[2] + "/out"])
else:
    import core.__main__ as cli
    cli.run_generation = record
    cli.main(["txt2img", "--model", "none.safetensors", "--prompt", "x"])
print(json.dumps(seen))
"""


@pytest.mark.parametrize("entry", ["launch", "cli"])
def test_the_entry_points_ask_for_huge_pages_before_torch_is_imported(tmp_path, entry):
    # use_huge_pages leaves the environment alone once torch is imported: "1" shows it came first.
    assert _run(ENTRY_POINT, entry, str(tmp_path), environ={}) == {"variable": "1"}
    # the user's own setting is kept
    assert _run(ENTRY_POINT, entry, str(tmp_path), environ={HUGE_PAGES_VARIABLE: "0"})["variable"] == "0"
