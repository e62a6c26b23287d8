"""The documentation generated from the settings models: ``config.example.toml`` and the settings table.

``make docs`` writes both; a test fails when the committed copies are stale. A setting marked
:data:`~detector.config_models.ADVANCED` (it tunes one rule's internals) comes after the others
of its section, under a comment in the example file and apart in the docs.

>>> is_advanced("scoring.novelty_discount"), is_advanced("scoring.false_alarm_rate")
(True, False)
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from detector.config_models import ADVANCED, Settings

__all__ = ["ADVANCED_COMMENT", "example_toml", "is_advanced", "settings_table"]

ADVANCED_COMMENT = "# advanced: tune one rule's internals; leave as they are unless you measured"


def _sections() -> list[tuple[str, type[BaseModel]]]:
    return [(name, info.annotation) for name, info in Settings.model_fields.items()]  # type: ignore[misc]


def _fields(model: type[BaseModel]) -> list[tuple[str, FieldInfo]]:
    """The fields of a section, the ones users set first and the advanced ones after them."""
    return sorted(model.model_fields.items(), key=lambda item: item[1].json_schema_extra == ADVANCED)


def is_advanced(setting: str) -> bool:
    """Whether ``setting`` (``section.key``) tunes one rule's internals rather than being one users set."""
    section, key = setting.split(".", 1)
    return dict(_sections())[section].model_fields[key].json_schema_extra == ADVANCED


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
        first_advanced = next((name for name, info in _fields(model) if info.json_schema_extra == ADVANCED), None)
        for name, info in _fields(model):
            if name == first_advanced:
                lines.extend(["", ADVANCED_COMMENT])
            lines.append(f"# {info.description}")
            default = info.get_default(call_default_factory=True)
            lines.append(f"{name} = {_toml_value(default)}" if default is not None else f"# {name} =")
        lines.append("")
    return "\n".join(lines)


def settings_table() -> str:
    """A Markdown table of every setting (the README embeds it; a test keeps them equal)."""
    rows = ["| setting | environment variable | default | meaning |", "|---|---|---|---|"]
    for section, model in _sections():
        for name, info in _fields(model):
            default = info.get_default(call_default_factory=True)
            shown = "(unset)" if default is None else _toml_value(default).replace("|", "\\|")
            env = f"DETECTOR_{section.upper()}__{name.upper()}"
            rows.append(f"| `{section}.{name}` | `{env}` | `{shown}` | {info.description} |")
    return "\n".join(rows)
