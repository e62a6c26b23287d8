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

from detector.config import example_toml, settings_table
from detector.metrics import metrics_table

__all__ = ["GENERATED", "main", "render", "replace_between", "settings_tables"]

# Settings recorded in the model directory by `detector fit`: changing them later has no effect
# until the next fit. Everything else is read when a command starts.
_FIT_TIME_SECTIONS = ("model.", "fit.", "scoring.")
_READ_AT_START = ("model.path",)


def replace_between(text: str, name: str, body: str) -> str:
    """Replace what stands between ``<!-- name:start -->`` and ``<!-- name:end -->``."""
    pattern = re.compile(rf"(<!-- {name}:start -->).*?(<!-- {name}:end -->)", re.DOTALL)
    return pattern.sub(lambda m: f"{m.group(1)}\n{body}\n{m.group(2)}", text)


def settings_tables() -> dict[str, str]:
    """The settings table split in two: ``settings-fit`` (recorded in the model) and ``settings-run``.

    >>> tables = settings_tables()
    >>> "`fit.seed`" in tables["settings-fit"], "`kafka.group_id`" in tables["settings-run"]
    (True, True)
    """
    header, rule, *rows = settings_table().splitlines()
    fit_time = [row for row in rows if _is_fit_time(row.split("`")[1])]
    run_time = [row for row in rows if not _is_fit_time(row.split("`")[1])]
    return {"settings-fit": "\n".join([header, rule, *fit_time]), "settings-run": "\n".join([header, rule, *run_time])}


def _is_fit_time(setting: str) -> bool:
    return setting.startswith(_FIT_TIME_SECTIONS) and setting not in _READ_AT_START


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
