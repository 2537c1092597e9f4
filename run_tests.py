"""Run the test suite, setting up its environment first.

    python run_tests.py [pytest args...]      (default: -q tests)

Creates venv/ and installs requirements-test.txt (and, when present,
requirements-nodeps.txt and requirements-test-nodeps.txt with --no-deps) if
the current interpreter lacks them, then runs pytest from the repository root and exits with its code.
Pytest's "no tests collected" (5) is reported as a failure like any other
non-zero code.  ``--skip-install`` is consumed here and not passed to pytest.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import bootstrap  # noqa: E402  (standard library only)

NO_TESTS_COLLECTED = 5


def main(argv: list[str]) -> int:
    skip = bootstrap.SKIP_FLAG in argv
    pytest_args = [a for a in argv if a != bootstrap.SKIP_FLAG] or ["-q", "tests"]
    bootstrap.ensure_environment(
        ["requirements-test.txt"],
        extra_no_deps=["requirements-nodeps.txt", "requirements-test-nodeps.txt"],
        skip_install=skip,
    )
    cmd = [sys.executable, "-m", "pytest", *pytest_args]
    sys.stdout.flush()
    rc = subprocess.call(cmd, cwd=ROOT)
    if rc == NO_TESTS_COLLECTED:
        print("run_tests.py: error: pytest collected no tests; counting that as a failure", file=sys.stderr)
    elif rc != 0:
        print(f"run_tests.py: pytest exited with code {rc}", file=sys.stderr)
    return rc


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
