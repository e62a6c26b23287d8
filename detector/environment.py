"""``DETECTOR_*`` environment variables checked against the settings before they are loaded.

Two mistakes get a message of their own instead of a pydantic traceback:

* a variable that names no setting (a typo) is reported with the closest real name and
  ignored, as pydantic-settings ignores a variable of an unknown section;
* a list or table setting whose value is not JSON (``DETECTOR_KAFKA__INPUT_TOPICS=sensors``)
  is refused with the way to write it.

>>> [v.suggestion for v in unknown_variables({"DETECTOR_KAFKA__INPUT_TOPIC": "x", "HOME": "/"})]
['DETECTOR_KAFKA__INPUT_TOPICS']
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, get_origin

from pydantic import BaseModel

__all__ = ["PREFIX", "UnknownVariable", "bad_json_value", "known_only", "setting_names", "unknown_variables"]

PREFIX, DELIMITER = "DETECTOR_", "__"


@dataclass(frozen=True)
class UnknownVariable:
    """A ``DETECTOR_*`` variable that names no setting, and the closest name that does."""

    name: str
    suggestion: str | None

    def message(self) -> str:
        """The warning the command line prints (two lines when there is a close name)."""
        line = f"warning: environment variable {self.name} matches no setting (ignored)"
        return line + (f"\nhelp: did you mean {self.suggestion}?" if self.suggestion else "")


def _sections() -> dict[str, type[BaseModel]]:
    from detector.config import Settings

    return {name: info.annotation for name, info in Settings.model_fields.items()}  # type: ignore[misc]


def setting_names() -> dict[str, tuple[str, str]]:
    """Every setting's variable name -> (section, key), e.g. ``DETECTOR_MODEL__PATH``."""
    return {
        f"{PREFIX}{section}{DELIMITER}{key}".upper(): (section, key)
        for section, model in _sections().items()
        for key in model.model_fields
    }


def unknown_variables(environ: Mapping[str, str]) -> list[UnknownVariable]:
    """The ``DETECTOR_*`` variables of ``environ`` that name no setting, in name order."""
    from detector.renamed import RENAMES

    known = setting_names()
    renamed = {rename.variable(rename.old) for rename in RENAMES}  # refused with the new name instead
    unknown = sorted(
        name
        for name in environ
        if name.upper().startswith(PREFIX) and name.upper() not in known and name.upper() not in renamed
    )
    return [
        UnknownVariable(name, next(iter(difflib.get_close_matches(name.upper(), known, n=1, cutoff=0.8)), None))
        for name in unknown
    ]


def known_only(values: dict[str, Any]) -> dict[str, Any]:
    """The environment source's nested values without the keys that name no setting."""
    sections = _sections()
    return {
        section: {key: value for key, value in fields.items() if key in sections[section].model_fields}
        for section, fields in values.items()
        if section in sections and isinstance(fields, dict)
    }


def bad_json_value(environ: Mapping[str, str]) -> tuple[str, str, str] | None:
    """(variable, value, help) of the first list setting whose value is not a JSON list, or None."""
    for name, (section, key) in setting_names().items():
        value = next((v for k, v in environ.items() if k.upper() == name), None)
        annotation = _sections()[section].model_fields[key].annotation
        if value is None or get_origin(annotation) is not list:
            continue
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = None
        if not isinstance(parsed, list):
            example = json.dumps(
                [_json_or_text(part.strip()) for part in value.strip("[]").split(",") if part.strip()] or ["..."]
            )
            return name, value, f"write lists as JSON, e.g. {name}='{example}'"
    return None


def _json_or_text(text: str) -> Any:
    """``text`` as the JSON value it spells (a number), else as a string."""
    try:
        return json.loads(text)
    except ValueError:
        return text
