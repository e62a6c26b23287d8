"""Regenerate the generated parts of the README and ``config.example.toml`` (``make docs``).

>>> replace_between("a <!-- x:start -->old<!-- x:end --> b", "x", "new")
'a <!-- x:start -->\\nnew\\n<!-- x:end --> b'
"""

from __future__ import annotations

import re
from pathlib import Path

from detector.config import example_toml, settings_table
from detector.metrics import metrics_table

__all__ = ["main", "render_readme", "replace_between"]


def replace_between(text: str, name: str, body: str) -> str:
    """Replace what stands between ``<!-- name:start -->`` and ``<!-- name:end -->``."""
    pattern = re.compile(rf"(<!-- {name}:start -->).*?(<!-- {name}:end -->)", re.DOTALL)
    return pattern.sub(lambda m: f"{m.group(1)}\n{body}\n{m.group(2)}", text)


def render_readme(text: str) -> str:
    """The README with its generated tables brought up to date."""
    return replace_between(replace_between(text, "settings", settings_table()), "metrics", metrics_table())


def main(root: Path = Path(".")) -> None:
    """Rewrite README.md and config.example.toml in ``root``."""
    readme = root / "README.md"
    readme.write_text(render_readme(readme.read_text()))
    (root / "config.example.toml").write_text(example_toml())


if __name__ == "__main__":
    main()
