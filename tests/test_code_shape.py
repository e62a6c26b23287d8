"""The package stays easy to live in: no module over 400 lines, no class over 200 (issue 22's bar)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "detector"
MAX_MODULE_LINES, MAX_CLASS_LINES = 400, 200
MODULES = sorted(PACKAGE.glob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=[p.stem for p in MODULES])
def test_module_and_its_classes_stay_small(path: Path) -> None:
    source = path.read_text()
    lines = len(source.splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.name} has {lines} lines: split it by concern"
    big = {
        node.name: node.end_lineno - node.lineno + 1
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.ClassDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES
    }
    assert not big, f"classes over {MAX_CLASS_LINES} lines in {path.name}: {big}"


def test_the_measure_counts_a_long_class() -> None:
    source = "class Big:\n" + "    x = 1\n" * (MAX_CLASS_LINES + 1)
    node = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ClassDef))
    assert node.end_lineno is not None and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES
