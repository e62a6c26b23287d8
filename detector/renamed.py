"""Settings renamed or removed, and what an old name's value means now.

The rule: a half-life counts the entity's messages unless its name ends in a unit, and the only
time unit is seconds (``_s``). A settings file or ``DETECTOR_*`` variable that still uses an old
name is refused with the new name and the converted value, since a silent rename would hide the
change of unit. A model fitted before a rename records the old name; :func:`upgrade_scoring`
reads it as the new one, so the model scores as it did.

A setting removed because its rule did not earn its place (measured in a decision record) is
refused the same way, saying what the detector does instead; a model that records it loads
without it.

>>> upgrade_scoring({"close_after": 10, "seasonal_halflife_days": 2.0})
{'close_after': 10, 'seasonal_halflife_s': 172800.0}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["REMOVED", "RENAMES", "Removed", "Rename", "renamed_setting", "upgrade_scoring", "without_removed_defaults"]


@dataclass(frozen=True)
class Rename:
    """A setting of ``section`` once called ``old``, now ``new``; new value = old value x ``factor``."""

    section: str
    old: str
    new: str
    factor: float

    def variable(self, key: str) -> str:
        """The ``DETECTOR_*`` variable of ``key`` (the old or the new name) in this section."""
        return f"DETECTOR_{self.section}__{key}".upper()

    def converted(self, value: Any) -> float | None:
        """``value`` (given under the old name) under the new name; None when it is not a number."""
        try:
            return float(value) * self.factor
        except (TypeError, ValueError):
            return None


RENAMES: tuple[Rename, ...] = (Rename("scoring", "seasonal_halflife_days", "seasonal_halflife_s", 86400.0),)


@dataclass(frozen=True)
class Removed:
    """A setting of ``section`` once called ``name``, removed; ``now`` says what the detector does instead,
    ``value`` is the value the rule now always has (a file that gives it is accepted with a warning)."""

    section: str
    name: str
    now: str
    value: Any


REMOVED: tuple[Removed, ...] = (
    Removed(
        "scoring",
        "novelty_margin",
        "a message must always beat the novelty peak by 1 standard deviation (decision 052)",
        1.0,
    ),
    Removed(
        "scoring",
        "novelty_halflife",
        "the novelty peak always decays with a half-life of 1000 messages (decision 050)",
        1000.0,
    ),
    Removed(
        "scoring",
        "baseline_clip",
        "deviations are always clipped at 3 baseline standard deviations (decision 049)",
        3.0,
    ),
    Removed(
        "scoring",
        "likelihood_long_halflife",
        "the entity's long-term statistics always have a half-life of 500 messages (decision 048)",
        500.0,
    ),
    Removed(
        "scoring",
        "likelihood_short_scaled",
        "the short-term average is always judged against one message's spread (decision 045)",
        False,
    ),
    Removed(
        "scoring",
        "likelihood_short_halflife",
        "the likelihood's short-term average always has a half-life of 1 message (decision 046)",
        1.0,
    ),
    Removed(
        "scoring",
        "range_absorb",
        "the range always absorbs half of a message's excess beyond it (decision 047)",
        0.5,
    ),
)


def upgrade_scoring(recorded: Mapping[str, Any]) -> dict[str, Any]:
    """A model's recorded ``[scoring]`` values with each old name replaced by its new one."""
    upgraded = dict(recorded)
    for rename in RENAMES:
        if rename.section == "scoring" and rename.old in upgraded and rename.new not in upgraded:
            upgraded[rename.new] = rename.converted(upgraded.pop(rename.old))
    for removed in REMOVED:
        if removed.section == "scoring":
            upgraded.pop(removed.name, None)
    return upgraded


def without_removed_defaults(file_values: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``file_values`` less each removed setting given at the value its rule now always has, and a
    warning line for each: an old settings file that only repeats the defaults still starts.

    >>> without_removed_defaults({"scoring": {"range_absorb": 0.5, "warmup_steps": 10}})[0]
    {'scoring': {'warmup_steps': 10}}
    """
    kept = {section: dict(fields) if isinstance(fields, Mapping) else fields for section, fields in file_values.items()}
    warnings = []
    for removed in REMOVED:
        section = kept.get(removed.section)
        if isinstance(section, dict) and removed.name in section and _same(section[removed.name], removed.value):
            del section[removed.name]
            warnings.append(
                f"warning: setting {removed.section}.{removed.name} in the settings file was removed and is ignored: "
                f"{removed.now}; delete it"
            )
    return kept, warnings


def _same(given: Any, value: Any) -> bool:
    if isinstance(value, bool) or isinstance(given, bool):
        return given is value
    try:
        return float(given) == float(value)
    except (TypeError, ValueError):
        return False


def renamed_setting(file_values: Mapping[str, Any], environ: Mapping[str, str]) -> tuple[str, str] | None:
    """(message, help) for the first old name that a settings file's values or ``environ`` use, or None.

    >>> renamed_setting({}, {"DETECTOR_SCORING__SEASONAL_HALFLIFE_DAYS": "1.5"})[1]
    'write DETECTOR_SCORING__SEASONAL_HALFLIFE_S=129600.0 (the same value in seconds)'
    """
    variables = {name.upper(): value for name, value in environ.items()}
    for removed in REMOVED:  # a removed DETECTOR_* variable is ignored with a warning, as any unknown one
        section = file_values.get(removed.section)
        if isinstance(section, Mapping) and removed.name in section:
            where = f"{removed.section}.{removed.name} = {section[removed.name]!r} in the settings file"
            return f"setting {where} was removed: {removed.now}", (
                f"delete {removed.name} from [{removed.section}]; only {removed.value!r} is accepted, with a warning"
            )
    for rename in RENAMES:
        old_variable = rename.variable(rename.old)
        if old_variable in variables:
            value, new_value = variables[old_variable], rename.converted(variables[old_variable])
            wanted = f"{rename.variable(rename.new)}={new_value!r}"
            where = f"{old_variable}={value!r}"
        else:
            section = file_values.get(rename.section)
            if not isinstance(section, Mapping) or rename.old not in section:
                continue
            value, new_value = section[rename.old], rename.converted(section[rename.old])
            wanted = f"{rename.new} = {new_value!r} in [{rename.section}]"
            where = f"{rename.section}.{rename.old} = {value!r} in the settings file"
        message = f"setting {where} is now {rename.section}.{rename.new}"
        if new_value is None:
            return message, f"give {rename.new} instead: the old value x {rename.factor:g}"
        return message, f"write {wanted} (the same value in seconds)"
    return None
