"""Settings: a TOML file overridden by ``DETECTOR_*`` environment variables.

Precedence, highest first: environment (``DETECTOR_MODEL__PATH=/models/v2``), the TOML
file given with ``--config``, then the defaults in :mod:`detector.config_models`
(which ``config.example.toml`` mirrors).

>>> settings = load_settings(None)
>>> settings.model.cell
'lstm'
>>> settings.kafka.alert_topic
'detector-alerts'
"""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import SettingsError as PydanticSettingsError

from detector.config_docs import example_toml, is_advanced, settings_table
from detector.config_models import (
    FitSettings,
    KafkaSettings,
    LogSettings,
    MetricsSettings,
    ModelSettings,
    ScoringSettings,
    Settings,
    StreamSettings,
)

__all__ = [
    "FitSettings",
    "KafkaSettings",
    "LogSettings",
    "MetricsSettings",
    "ModelSettings",
    "ScoringSettings",
    "Settings",
    "SettingsError",
    "StreamSettings",
    "example_toml",
    "is_advanced",
    "load_settings",
    "read_toml",
    "settings_from",
    "settings_table",
]


class SettingsError(ValueError):
    """Settings could not be loaded; the message names the file and the field, ``help`` what to do."""

    def __init__(self, message: str, help: str | None = None):
        super().__init__(message)
        self.help = help


def load_settings(config_path: Path | str | None, **overrides: Any) -> Settings:
    """Load settings from ``config_path`` (TOML) and the environment.

    Raises :class:`SettingsError` naming the offending field, e.g.
    ``invalid setting model.num_layers: Input should be less than or equal to 2``.
    """
    return settings_from(read_toml(Path(config_path)) if config_path else {}, config_path, **overrides)


def settings_from(file_values: dict[str, Any], source: Path | str | None, **overrides: Any) -> Settings:
    """Settings from the values of a TOML file already read (``source`` names it in errors) and the
    environment; :func:`load_settings` without reading the file, for a caller that needs its values too."""
    from detector.environment import bad_json_value
    from detector.renamed import renamed_setting, without_removed_defaults

    bad = bad_json_value(os.environ)
    if bad is not None:
        raise SettingsError(f"invalid setting {bad[0]}={bad[1]!r}: not a JSON list", help=bad[2])
    file_values, warnings = without_removed_defaults(file_values)
    for warning in warnings:
        print(warning, file=sys.stderr)
    renamed = renamed_setting(file_values, os.environ)
    if renamed is not None:
        raise SettingsError(renamed[0], help=renamed[1])
    values: dict[str, Any] = {
        section: dict(fields) if isinstance(fields, dict) else fields for section, fields in file_values.items()
    }
    for section, fields in overrides.items():
        values.setdefault(section, {}).update(fields)
    try:
        return Settings(**values)
    except ValidationError as error:
        raise SettingsError(_describe(error, source)) from None
    except PydanticSettingsError as error:  # a value the environment source cannot parse
        raise SettingsError(f"invalid DETECTOR_* environment: {error}", help="write lists and tables as JSON") from None


def read_toml(path: Path) -> dict[str, Any]:
    """The values of the TOML file at ``path``; :class:`SettingsError` if it is missing or not TOML."""
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise SettingsError(
            f"config file not found: {path}",
            help="give --config an existing TOML file, or leave it out for the defaults",
        ) from None
    except tomllib.TOMLDecodeError as error:
        raise SettingsError(f"config file {path} is not valid TOML: {error}") from None


def _describe(error: ValidationError, source: Path | str | None) -> str:
    where = f" (from {source} or DETECTOR_* environment)" if source else " (from DETECTOR_* environment)"
    lines = [
        f"invalid setting {'.'.join(str(part) for part in issue['loc']) or '<root>'}: {issue['msg']}"
        for issue in error.errors()
    ]
    return "; ".join(lines) + where
