"""NAB v1.1 inputs: application profiles, label windows and the per-file record the scorer takes.

:func:`load_profiles` and :func:`load_windows` read the files of NAB's repository
(``config/profiles.json``, ``labels/combined_windows.json``); :class:`NabFile` holds one data
file's timestamps, anomaly scores and windows.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

__all__ = ["CostMatrix", "NabFile", "NabFileLike", "Window", "load_profiles", "load_windows"]

Window = tuple[datetime, datetime]
"""A label window: its first and last timestamp, both inclusive."""


@dataclass(frozen=True)
class CostMatrix:
    """A NAB application profile; NAB's scorer never uses ``tn``."""

    tp: float
    fp: float
    fn: float
    tn: float


class NabFileLike(Protocol):
    """What the corpus functions need to know about one NAB file."""

    @property
    def timestamps(self) -> Sequence[datetime]: ...

    @property
    def scores(self) -> Sequence[float]: ...

    @property
    def windows(self) -> Sequence[Window]: ...


@dataclass(frozen=True)
class NabFile:
    """One NAB file: row timestamps, per-row anomaly scores, label windows."""

    timestamps: Sequence[datetime]
    scores: Sequence[float]
    windows: Sequence[Window]


def load_profiles(path: str | Path) -> dict[str, CostMatrix]:
    """Read NAB's ``config/profiles.json`` into cost matrices by profile name.

    >>> import json, tempfile
    >>> entry = {"tpWeight": 1, "fpWeight": 0.11, "fnWeight": 1, "tnWeight": 1}
    >>> with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
    ...     json.dump({"standard": {"CostMatrix": entry}}, f)
    >>> load_profiles(f.name)["standard"]
    CostMatrix(tp=1.0, fp=0.11, fn=1.0, tn=1.0)
    """
    raw = json.loads(Path(path).read_text())
    return {name: _cost_matrix(entry.get("CostMatrix", entry)) for name, entry in raw.items()}


def _cost_matrix(weights: Mapping[str, float]) -> CostMatrix:
    return CostMatrix(
        tp=float(weights["tpWeight"]),
        fp=float(weights["fpWeight"]),
        fn=float(weights["fnWeight"]),
        tn=float(weights["tnWeight"]),
    )


def load_windows(path: str | Path) -> dict[str, list[Window]]:
    """Read NAB's ``labels/combined_windows.json``: windows by data-file path.

    >>> import json, tempfile
    >>> labels = {"a/x.csv": [["2014-04-10 07:15:00.000000", "2014-04-11 16:45:00.000000"]]}
    >>> with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
    ...     json.dump(labels, f)
    >>> [(str(s), str(e)) for s, e in load_windows(f.name)["a/x.csv"]]
    [('2014-04-10 07:15:00', '2014-04-11 16:45:00')]
    """
    raw = json.loads(Path(path).read_text())
    return {name: [_window(pair) for pair in pairs] for name, pairs in raw.items()}


def _window(pair: Sequence[str]) -> Window:
    start, end = pair
    return datetime.fromisoformat(start), datetime.fromisoformat(end)
