"""Fit-time and run-time settings, and the scoring values that ``run`` and ``score`` use.

* fit-time settings shape the model (its network, its training, the calibration of its scores)
  and are recorded in it by ``detector fit``: they cannot change without a refit;
* run-time settings decide what to do with a probability. The values recorded in the model are
  their defaults; a value given in the settings file or the environment overrides them, in
  ``run`` and ``score`` alike, and SIGHUP reloads them in ``run`` (:mod:`detector.reload`);
* start-up settings (the Kafka, stream, metrics and log sections) are read when a command starts.

A setting that shapes the model (``[model]`` but ``path``, and the fit-time ``[scoring]`` ones)
given to ``run`` or ``score`` with another value than the model's is refused: it would silently
have no effect. Given with the model's own value it is accepted. The ``[fit]`` section drives the
training procedure of ``detector fit`` alone and is not checked, so one settings file (such as
config.example.toml) serves ``fit``, ``run`` and ``score`` with any model.

>>> kind_of("scoring.false_alarm_rate"), kind_of("scoring.smoothing_halflife"), kind_of("kafka.group_id")
('run-time', 'fit-time', 'start-up')
>>> given_settings({"scoring": {"close_after": 5}}, {"DETECTOR_SCORING__CLOSE_AFTER": "7"})
{'scoring.close_after': 'environment'}
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from detector.config import FitSettings, ModelSettings, ScoringSettings, Settings, SettingsError, read_toml
from detector.environment import setting_names
from detector.model import FittedModel

__all__ = [
    "RUN_TIME_SCORING",
    "Kind",
    "RunTimeScoring",
    "Source",
    "given_settings",
    "kind_of",
    "resolve_scoring",
    "scoring_for",
]

Kind = Literal["fit-time", "run-time", "start-up"]
Source = Literal["model", "file", "environment"]

# The [scoring] settings that need no refit: the model and its calibration do not depend on them
# (the alert level is simulated from the calibration when a Detector is built). The others,
# smoothing_halflife (the score itself, hence the calibration) and seasonal_bins (the layout of
# every entity's state and checkpoint), are fit-time, as is any setting added without a decision.
RUN_TIME_SCORING: tuple[str, ...] = (
    "false_alarm_rate",
    "close_probability",
    "close_after",
    "warmup_steps",
    "top_features",
    "drift_halflife",
    "drift_halflife_s",
    "novelty_discount",
    "seasonal_halflife_s",
    "range_tolerance",
)
_RUN_TIME = frozenset({"model.path", *(f"scoring.{name}" for name in RUN_TIME_SCORING)})
_FIT_TIME_SECTIONS: dict[str, type[BaseModel]] = {
    "model": ModelSettings,
    "fit": FitSettings,
    "scoring": ScoringSettings,
}
_RECORDED_AS = {"model": "model_settings", "fit": "fit_settings"}  # where model.info keeps the section


def kind_of(setting: str) -> Kind:
    """Whether ``setting`` (``section.key``) is fit-time, run-time or read at start-up."""
    if setting in _RUN_TIME:
        return "run-time"
    return "fit-time" if setting.split(".")[0] in _FIT_TIME_SECTIONS else "start-up"


def given_settings(file_values: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, Source]:
    """The settings that a settings file's values and ``environ`` set, ``section.key`` -> where from
    (the environment wins over the file, as it does when settings are loaded)."""
    given: dict[str, Source] = {
        f"{section}.{key}": "file"
        for section, fields in file_values.items()
        if isinstance(fields, Mapping)
        for key in fields
    }
    variables = {name.upper() for name in environ}
    given.update(
        {f"{section}.{key}": "environment" for name, (section, key) in setting_names().items() if name in variables}
    )
    return given


@dataclass(frozen=True)
class RunTimeScoring:
    """The scoring settings in effect: the model's recorded values, overridden by the run-time
    values given; ``sources`` says where each run-time value came from."""

    settings: ScoringSettings
    sources: dict[str, Source]

    def apply(self, model: FittedModel) -> FittedModel:
        """``model`` scoring with these settings (the same network and calibration, not a copy)."""
        return replace(model, scoring=self.settings.model_dump())

    def describe(self) -> dict[str, dict[str, Any]]:
        """Each run-time value and where it came from, for a log event."""
        return {
            f"scoring.{name}": {"value": getattr(self.settings, name), "from": self.sources[name]}
            for name in RUN_TIME_SCORING
        }

    def changed_from(self, other: RunTimeScoring) -> list[str]:
        """The run-time settings whose value differs from ``other``'s."""
        return [
            f"scoring.{name}"
            for name in RUN_TIME_SCORING
            if getattr(self.settings, name) != getattr(other.settings, name)
        ]


def resolve_scoring(
    settings: Settings, model: FittedModel, given: Mapping[str, Source], model_name: str
) -> RunTimeScoring:
    """The scoring settings for ``model`` (found at ``model_name``) under ``settings``, of which
    ``given`` were set by a file or the environment; :class:`SettingsError` for a fit-time setting
    given with another value than the model's."""
    _refuse_fit_time(settings, model, given, model_name)
    recorded = ScoringSettings(**model.scoring)
    overrides = {name: getattr(settings.scoring, name) for name in RUN_TIME_SCORING if f"scoring.{name}" in given}
    sources: dict[str, Source] = {name: given.get(f"scoring.{name}", "model") for name in RUN_TIME_SCORING}
    return RunTimeScoring(recorded.model_copy(update=overrides), sources)


def scoring_for(
    settings: Settings,
    model: FittedModel,
    config_path: Path | None,
    model_name: str,
    environ: Mapping[str, str] = os.environ,
) -> RunTimeScoring:
    """:func:`resolve_scoring` for a command started with the settings file ``config_path``."""
    file_values = read_toml(Path(config_path)) if config_path else {}
    return resolve_scoring(settings, model, given_settings(file_values, environ), model_name)


def _refuse_fit_time(settings: Settings, model: FittedModel, given: Mapping[str, Source], model_name: str) -> None:
    differing = []
    for setting, source in sorted(given.items()):
        section, key = setting.split(".", 1)
        if kind_of(setting) != "fit-time" or section not in _FIT_TIME_SECTIONS or section == "fit":
            continue  # [fit] is the training procedure's: it cannot change what a fitted model does
        value, recorded = getattr(getattr(settings, section), key), _recorded(model, section)
        if recorded is None:
            differing.append(f"{setting}={value!r} (from the {source}; the model does not record it)")
        elif getattr(recorded, key) != value:
            differing.append(f"{setting}={value!r} (from the {source}; the model has {getattr(recorded, key)!r})")
    if differing:
        raise SettingsError(
            f"fit-time setting given with another value than model {model_name} was fitted with: "
            + "; ".join(differing),
            help="fit-time settings are fixed by `detector fit`: fit a model with them, "
            "or leave them out of the settings of `run` and `score`",
        )


def _recorded(model: FittedModel, section: str) -> BaseModel | None:
    """The model's recorded values of a fit-time section; None when the model does not record it."""
    values = model.scoring if section == "scoring" else model.info.get(_RECORDED_AS[section])
    if not isinstance(values, Mapping):
        return None
    known = _FIT_TIME_SECTIONS[section].model_fields
    try:
        return _FIT_TIME_SECTIONS[section](**{key: value for key, value in values.items() if key in known})
    except ValidationError:
        return None
