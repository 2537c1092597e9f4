"""Issue #15's size rule for app/, kept by a test so that a later change cannot quietly grow it
back: no module in app/ over 600 lines, no function (or method) over 80."""
from __future__ import annotations

import ast
from pathlib import Path

APP = Path(__file__).resolve().parent.parent / "app"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


def oversized(root: Path) -> list[str]:
    """'path: N lines' for each module, 'path:line name N lines' for each function over the rule."""
    found = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        name = path.relative_to(root.parent).as_posix()
        if text.count("\n") > MAX_MODULE_LINES:
            found.append(f"{name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{name}:{node.lineno} {node.name} {length} lines")
    return found


def test_no_app_module_or_function_is_over_the_size_rule():
    assert oversized(APP) == []


def test_the_rule_finds_a_long_module_and_a_long_function(tmp_path):
    package = tmp_path / "app"
    package.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (package / "long.py").write_text(f"def long_one():\n{body}\n" + "\n" * MAX_MODULE_LINES)
    assert oversized(package) == [f"app/long.py: {MAX_MODULE_LINES + MAX_FUNCTION_LINES + 1} lines",
                                  f"app/long.py:1 long_one {MAX_FUNCTION_LINES + 1} lines"]
