"""The observation types every path shares, and the timestamp rule.

An :class:`Observation` is one validated reading of one entity; :class:`Columns` holds many
of them as arrays, which is what the detector steps. :func:`parse_timestamp` is the one rule
for timestamps, used by CSV files and JSON messages alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

__all__ = ["MAX_EPOCH_S", "MS_THRESHOLD", "Columns", "Observation", "parse_timestamp"]

MS_THRESHOLD = 1e11  # epoch values above this are milliseconds (year 5138 in seconds)
MAX_EPOCH_S = 253402300799.0  # 9999-12-31T23:59:59Z: the last second an ISO 8601 timestamp can show


@dataclass(slots=True)  # not frozen: a frozen dataclass costs ~1 us more per instance on the hot path
class Observation:
    """One validated observation of one entity."""

    entity: str
    timestamp: float  # epoch seconds
    values: list[float]
    source: Any = field(default=None, compare=False)  # where it came from (a Kafka record, a row)


@dataclass(slots=True)
class Columns:
    """Observations as columns: what :meth:`detector.scoring.Detector.process_columns` steps.

    >>> batch = Columns.of([Observation("p1", 10.0, [1.0, 2.0]), Observation("p2", 11.0, [3.0, 4.0])])
    >>> len(batch), batch.entities, batch.values.shape, batch.observation(1)
    (2, ['p1', 'p2'], (2, 2), Observation(entity='p2', timestamp=11.0, values=[3.0, 4.0], source=None))
    """

    entities: list[str]
    timestamps: np.ndarray  # (n,) float64 epoch seconds
    values: np.ndarray  # (n, features) float64
    sources: Sequence[Any] | None = None  # where each came from (a Kafka record, a row), or None

    def __len__(self) -> int:
        return len(self.entities)

    @classmethod
    def of(cls, observations: Sequence[Observation], n_features: int | None = None) -> Columns:
        """Columns of ``observations`` (``n_features`` shapes an empty batch)."""
        width = n_features if n_features is not None else (len(observations[0].values) if observations else 0)
        values = np.asarray([o.values for o in observations], dtype=np.float64).reshape(len(observations), width)
        return cls(
            [o.entity for o in observations],
            np.asarray([o.timestamp for o in observations], dtype=np.float64),
            values,
            [o.source for o in observations],
        )

    def observation(self, i: int) -> Observation:
        """Position ``i`` as an :class:`Observation`."""
        return Observation(
            self.entities[i],
            float(self.timestamps[i]),
            self.values[i].tolist(),
            self.sources[i] if self.sources is not None else None,
        )


def parse_timestamp(value: Any) -> float:
    """Epoch seconds from ISO 8601 text or epoch seconds/milliseconds (number or numeric text).

    >>> parse_timestamp("2026-11-25T01:00:00Z"), parse_timestamp(1795568400000)
    (1795568400.0, 1795568400.0)
    """
    if isinstance(value, bool):
        raise ValueError("timestamp must be a number or ISO 8601 text")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            parsed = datetime.fromisoformat(value.strip())
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            number = parsed.timestamp()
            if not 0 <= number <= MAX_EPOCH_S:
                raise ValueError("timestamp must lie between 1970 and 9999") from None
            return number
    else:
        raise ValueError("timestamp must be a number or ISO 8601 text")
    if not math.isfinite(number) or number < 0:
        raise ValueError("timestamp must be a finite, non-negative epoch")
    seconds = number / 1000.0 if number > MS_THRESHOLD else number
    if seconds > MAX_EPOCH_S:
        raise ValueError("timestamp lies beyond the year 9999 (in seconds or milliseconds)")
    return seconds
