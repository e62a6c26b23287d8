"""Per-entity state of each scoring stage: named arrays, one row per entity slot.

Each stage keeps its own small structure of arrays (a ``NamedTuple``, so that the compiled
kernel in :mod:`detector.kernel` reads and writes the same arrays by name). :data:`LAYOUT`
lists every array once: the stage it belongs to, its attribute, the name it has in a checkpoint
(unchanged since checkpoints were first written), its dtype, its width and the checks a restored
value must pass.

>>> [spec.checkpoint_name for spec in LAYOUT if spec.stage == "likelihood"]
['fast_mean', 'long_mean', 'long_var']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np

__all__ = [
    "LAYOUT",
    "STAGES",
    "ArraySpec",
    "BaselineState",
    "BookkeepingState",
    "ErrorState",
    "HysteresisState",
    "LikelihoodState",
    "NoveltyState",
    "RangeState",
    "SeasonalState",
    "StageArrays",
]


class ErrorState(NamedTuple):
    """Reconstruction error: the smoothed per-feature error (capacity, features)."""

    smoothed: np.ndarray


class RangeState(NamedTuple):
    """Range check: the range of standardised values each entity has shown (capacity, features)."""

    low: np.ndarray
    high: np.ndarray


class LikelihoodState(NamedTuple):
    """Anomaly likelihood: the short-term average of the log score and its long-term mean/variance."""

    fast_mean: np.ndarray
    long_mean: np.ndarray
    long_var: np.ndarray


class NoveltyState(NamedTuple):
    """Novelty: the decaying peak of the likelihood's z-score."""

    peak: np.ndarray


class SeasonalState(NamedTuple):
    """Time-of-day memory: the usual log score in each time-of-day bin (capacity, bins)."""

    usual: np.ndarray


class BaselineState(NamedTuple):
    """Drift baseline: the robust running mean/variance of the log score."""

    mean: np.ndarray
    var: np.ndarray


class HysteresisState(NamedTuple):
    """Alert hysteresis and the entity's clock."""

    alert_open: np.ndarray  # an alert is open
    calm: np.ndarray  # consecutive calm messages while open
    evidence: np.ndarray  # messages of the open alert that were not calm
    opened_ts: np.ndarray  # timestamp of the message that opened the alert (NaN: none, or unknown)
    steps: np.ndarray  # messages scored
    last_ts: np.ndarray  # the last message's timestamp (epoch s)


class BookkeepingState(NamedTuple):
    """What the store needs, not the scoring: when an entity was last seen, and its owner."""

    last_seen: np.ndarray  # wall-clock time, for TTL eviction
    owner: np.ndarray  # partition (or other owner id) its messages come from


STAGES: dict[str, type] = {
    "error": ErrorState,
    "range": RangeState,
    "likelihood": LikelihoodState,
    "novelty": NoveltyState,
    "seasonal": SeasonalState,
    "baseline": BaselineState,
    "hysteresis": HysteresisState,
    "bookkeeping": BookkeepingState,
}

Width = Literal["one", "features", "bins"]


@dataclass(frozen=True)
class ArraySpec:
    """One per-entity array: where it lives, how a checkpoint names it, and what it may hold."""

    stage: str
    attribute: str
    checkpoint_name: str
    dtype: type
    width: Width = "one"
    finite: bool = False  # must be finite in any state
    non_negative: bool = False
    checkpointed: bool = True
    added_later: bool = False  # checkpoints written before it existed lack it


LAYOUT: tuple[ArraySpec, ...] = (
    ArraySpec("baseline", "mean", "base_mean", np.float64, finite=True),
    ArraySpec("baseline", "var", "base_var", np.float64, finite=True, non_negative=True),
    ArraySpec("likelihood", "fast_mean", "fast_mean", np.float64, finite=True),
    ArraySpec("likelihood", "long_mean", "long_mean", np.float64, finite=True),
    ArraySpec("likelihood", "long_var", "long_var", np.float64, finite=True, non_negative=True),
    ArraySpec("novelty", "peak", "peak", np.float64, finite=True),
    ArraySpec("hysteresis", "steps", "steps", np.int64, non_negative=True),
    ArraySpec("hysteresis", "alert_open", "alert_open", np.bool_),
    ArraySpec("hysteresis", "calm", "calm", np.int32, non_negative=True),
    ArraySpec("hysteresis", "evidence", "evidence", np.int32, non_negative=True, added_later=True),
    ArraySpec("hysteresis", "opened_ts", "opened_ts", np.float64, added_later=True),
    ArraySpec("hysteresis", "last_ts", "last_ts", np.float64),
    ArraySpec("bookkeeping", "last_seen", "last_seen", np.float64, checkpointed=False),
    ArraySpec("bookkeeping", "owner", "owner", np.int32, checkpointed=False),
    ArraySpec("error", "smoothed", "error_ewma", np.float64, "features", finite=True),
    ArraySpec("seasonal", "usual", "seasonal", np.float32, "bins", finite=True, added_later=True),
    ArraySpec("range", "low", "range_low", np.float32, "features", added_later=True),
    ArraySpec("range", "high", "range_high", np.float32, "features", added_later=True),
)


class StageArrays:
    """Every stage's per-entity arrays, one row per slot (``self.likelihood.fast_mean``...).

    A fresh entity starts with the ``baseline`` (mean, variance) of the log score in its baseline
    and time-of-day memory, the range ``start_range`` (low, high; unbounded when None), the
    novelty peak ``start_peak``, no previous timestamp, and zeros elsewhere.

    >>> arrays = StageArrays(capacity=2, n_features=3, seasonal_bins=4, baseline=(0.0, 0.5))
    >>> arrays.error.smoothed.shape, arrays.seasonal.usual.shape, arrays._fresh("base_var")
    ((2, 3), (2, 4), 0.5)
    """

    error: ErrorState
    range: RangeState
    likelihood: LikelihoodState
    novelty: NoveltyState
    seasonal: SeasonalState
    baseline: BaselineState
    hysteresis: HysteresisState
    bookkeeping: BookkeepingState

    def __init__(
        self,
        capacity: int,
        n_features: int,
        seasonal_bins: int,
        baseline: tuple[float, float],
        start_range: tuple[np.ndarray, np.ndarray] | None = None,
        start_peak: float = 0.0,
    ):
        self._widths = {"one": (), "features": (n_features,), "bins": (seasonal_bins,)}
        # where a new entity's range starts (the fit data's); unbounded when unknown
        self.start_range = start_range or (
            np.full(n_features, -np.inf, np.float32),
            np.full(n_features, np.inf, np.float32),
        )
        self._fresh_values: dict[str, Any] = {
            "base_mean": baseline[0],
            "seasonal": baseline[0],
            "base_var": baseline[1],
            "last_ts": -np.inf,
            "range_low": self.start_range[0],
            "range_high": self.start_range[1],
            "peak": start_peak,
            "opened_ts": np.nan,
        }
        self._allocate_arrays(capacity)

    def array(self, spec: ArraySpec) -> np.ndarray:
        """The array that ``spec`` describes (all rows)."""
        array: np.ndarray = getattr(getattr(self, spec.stage), spec.attribute)
        return array

    def _allocate_arrays(self, capacity: int, keep: int = 0) -> None:
        """(Re)allocate every stage's arrays with ``capacity`` rows, keeping the first ``keep``."""
        arrays: dict[str, dict[str, np.ndarray]] = {stage: {} for stage in STAGES}
        for spec in LAYOUT:
            array: np.ndarray = np.zeros((capacity, *self._widths[spec.width]), dtype=spec.dtype)
            if keep:
                array[:keep] = self.array(spec)[:keep]
            arrays[spec.stage][spec.attribute] = array
        for stage, kind in STAGES.items():
            setattr(self, stage, kind(**arrays[stage]))

    def _reset_arrays(self, slot: int) -> None:
        """Give ``slot`` a fresh entity's values."""
        for spec in LAYOUT:
            self.array(spec)[slot] = self._fresh(spec.checkpoint_name)

    def _fresh(self, name: str) -> Any:
        """The value of the array named ``name`` in checkpoints for an entity never seen before."""
        return self._fresh_values.get(name, 0)
