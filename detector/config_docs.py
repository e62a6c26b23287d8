"""The documentation generated from the settings models: ``config.example.toml`` and the settings table.

``make docs`` writes both; a test fails when the committed copies are stale.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from detector.config_models import Settings

__all__ = ["example_toml", "settings_table"]


def _sections() -> list[tuple[str, type[BaseModel]]]:
    return [(name, info.annotation) for name, info in Settings.model_fields.items()]  # type: ignore[misc]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value) + '"'


def example_toml() -> str:
    """The text of ``config.example.toml``: every setting at its default, described."""
    lines = [
        "# detector settings. Every value here is the default; environment variables override them:",
        "# DETECTOR_<SECTION>__<KEY>, e.g. DETECTOR_MODEL__PATH=/models/v2 or "
        "DETECTOR_KAFKA__BOOTSTRAP_SERVERS=kafka:9092",
        "",
    ]
    for section, model in _sections():
        lines.append(f"[{section}]")
        for name, info in model.model_fields.items():
            lines.append(f"# {info.description}")
            default = info.get_default(call_default_factory=True)
            lines.append(f"{name} = {_toml_value(default)}" if default is not None else f"# {name} =")
        lines.append("")
    return "\n".join(lines)


def settings_table() -> str:
    """A Markdown table of every setting (the README embeds it; a test keeps them equal)."""
    rows = ["| setting | environment variable | default | meaning |", "|---|---|---|---|"]
    for section, model in _sections():
        for name, info in model.model_fields.items():
            default = info.get_default(call_default_factory=True)
            shown = "(unset)" if default is None else _toml_value(default).replace("|", "\\|")
            env = f"DETECTOR_{section.upper()}__{name.upper()}"
            rows.append(f"| `{section}.{name}` | `{env}` | `{shown}` | {info.description} |")
    return "\n".join(rows)
