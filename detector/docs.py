"""Regenerate the generated parts of docs/ and ``config.example.toml`` (``make docs``).

The settings tables in ``docs/configuration.md`` and the metrics table in ``docs/operations.md``
are generated from the code, so they cannot drift from it; ``tests/test_docs.py`` fails when a
generated section is stale. A section is whatever stands between two markers:

>>> replace_between("a <!-- x:start -->old<!-- x:end --> b", "x", "new")
'a <!-- x:start -->\\nnew\\n<!-- x:end --> b'
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from detector.config import example_toml, is_advanced, settings_table
from detector.metrics import metrics_table
from detector.runtime import kind_of

__all__ = ["GENERATED", "main", "render", "replace_between", "settings_tables"]


def replace_between(text: str, name: str, body: str) -> str:
    """Replace what stands between ``<!-- name:start -->`` and ``<!-- name:end -->``."""
    pattern = re.compile(rf"(<!-- {name}:start -->).*?(<!-- {name}:end -->)", re.DOTALL)
    return pattern.sub(lambda m: f"{m.group(1)}\n{body}\n{m.group(2)}", text)


def settings_tables() -> dict[str, str]:
    """The settings table split in three, each row marked with its kind (:func:`detector.runtime.kind_of`):
    ``settings-fit`` the fit-time settings (recorded in the model), ``settings-run`` the others, and
    ``settings-advanced`` those that tune one rule's internals (:func:`detector.config.is_advanced`),
    of either kind.

    >>> tables = settings_tables()
    >>> "`fit.seed` | fit-time" in tables["settings-fit"], "`scoring.close_after` | run-time" in tables["settings-run"]
    (True, True)
    >>> "`scoring.novelty_discount` | run-time" in tables["settings-advanced"]
    True
    """
    _, _, *rows = settings_table().splitlines()
    header = ["| setting | kind | environment variable | default | meaning |", "|---|---|---|---|---|"]
    tables: dict[str, list[str]] = {"settings-fit": [], "settings-run": [], "settings-advanced": []}
    for row in rows:
        name_cell, rest = row.split(" | ", 1)
        setting = name_cell.split("`")[1]
        kind = kind_of(setting)
        table = (
            "settings-advanced" if is_advanced(setting) else "settings-fit" if kind == "fit-time" else "settings-run"
        )
        tables[table].append(f"{name_cell} | {kind} | {rest}")
    return {name: "\n".join([*header, *table]) for name, table in tables.items()}


# file (relative to the repository root) -> its generated sections
GENERATED: dict[str, Callable[[], dict[str, str]]] = {
    "docs/configuration.md": settings_tables,
    "docs/operations.md": lambda: {"metrics": metrics_table()},
}


def render(path: str, text: str) -> str:
    """``text`` (the content of ``path``) with its generated sections brought up to date."""
    for name, body in GENERATED[path]().items():
        text = replace_between(text, name, body)
    return text


def main(root: Path = Path(".")) -> None:
    """Rewrite the generated sections of the files in :data:`GENERATED` and ``config.example.toml``."""
    for path in GENERATED:
        target = root / path
        target.write_text(render(path, target.read_text()))
    (root / "config.example.toml").write_text(example_toml())


if __name__ == "__main__":
    main()
