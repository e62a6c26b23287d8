"""Prototype: a range check per hour of the day, measured with ``nab_variants.py``.

The range check judges a value against everything its entity has shown. A daily pattern whose
low level comes at the wrong hour (NAB's ``art_daily_jumpsdown``) stays inside that range, and the
model follows it. Here each entity also keeps, per hour of its own UTC day, the range of the
values seen in that hour; once an hour has been seen for two hours of the entity's time (two
days of it), a value beyond that hour's range by more than ``range_tolerance`` of the entity's
whole range's width is judged as one beyond the whole range, and the hour's range absorbs
``range_absorb`` of the excess. No new setting. Variant ``seasonal range``:

    nice -n 19 .venv/bin/python benchmarks/nab_seasonal_range.py --nab ../shared/data/nab \\
        --skab ../shared/data/skab --cache /tmp/nab-models --seeds 7,8,9
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np
from nab_variants import PROTOTYPES
from nab_variants import main as variants_main

from detector import stage_state as state
from detector.jit import njit
from detector.stages import Params, decide, range_excess, range_judged, smooth_error

_HOURS = 24
_SEEN_S = 2 * 3600.0  # an hour's range judges once it has been seen for two hours (two days of it)


@njit
def _hour_excess(
    low: np.ndarray,
    high: np.ndarray,
    seen: np.ndarray,
    value: np.ndarray,
    width: np.ndarray,
    hour: int,
    elapsed: float,
    p: Params,
) -> float:
    """RMS over features of how far ``value`` lies beyond its hour's range, in widths of the
    whole range (0 while the hour is young); then the hour's range absorbs its share."""
    total = 0.0
    judged = seen[hour] >= _SEEN_S
    for f in range(value.shape[0]):
        x = value[f]
        if math.isnan(low[hour, f]):
            low[hour, f], high[hour, f] = x, x
        above, below = max(x - high[hour, f], 0.0), max(low[hour, f] - x, 0.0)
        excess = max(above, below) / max(width[f], 1e-9)
        total += excess * excess
        low[hour, f] -= p.range_absorb * below if judged else below
        high[hour, f] += p.range_absorb * above if judged else above
    seen[hour] += min(elapsed, 3600.0)
    return math.sqrt(total / value.shape[0]) if judged else 0.0


@njit
def _score_rows(
    slots: np.ndarray,
    errors: np.ndarray,
    standardised: np.ndarray,
    timestamps: np.ndarray,
    elapsed: np.ndarray,
    error: state.ErrorState,
    ranges: state.RangeState,
    seasonal: state.SeasonalState,
    stats: state.LikelihoodState,
    peaks: state.NoveltyState,
    baseline: state.BaselineState,
    alerts: state.HysteresisState,
    start_low: np.ndarray,
    start_high: np.ndarray,
    p: Params,
    low: np.ndarray,
    high: np.ndarray,
    seen: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`detector.kernel.score_rows` with the hour's range check (one entity per call)."""
    n = slots.shape[0]
    score, probability = np.empty(n), np.empty(n)
    is_anomaly, event, opened_at = np.zeros(n, dtype=np.bool_), np.zeros(n, dtype=np.int8), np.empty(n)
    range_decided, beyond = np.zeros(n, dtype=np.bool_), np.empty(standardised.shape, dtype=np.float32)
    for i in range(n):
        slot = slots[i]
        warm = alerts.steps[slot] >= p.warmup_steps
        width = range_excess(ranges, slot, standardised[i], start_low, start_high, p, beyond[i])
        whole = (ranges.high[slot] - ranges.low[slot]).astype(np.float64)
        hour = int((timestamps[i] % 86400.0) // 3600.0) % _HOURS
        hour_width = _hour_excess(low, high, seen, standardised[i].astype(np.float64), whole, hour, elapsed[i], p)
        learned = smooth_error(error, slot, errors[i], warm, p)
        judged = range_judged(learned, max(width, hour_width), p)
        probability[i], is_anomaly[i], event[i], opened_at[i] = decide(
            seasonal, stats, peaks, baseline, alerts, slot, learned, judged, timestamps[i], elapsed[i], warm, p
        )
        alerts.last_ts[slot] = timestamps[i]
        score[i], range_decided[i] = judged, judged > learned
    return score, probability, is_anomaly, event, opened_at, range_decided, beyond


def seasonal_range_rows(*args: Any) -> Any:
    """A stand-in for ``score_rows`` with fresh hour ranges (each replay is one file, one entity)."""
    features = args[2].shape[1]
    low = np.full((_HOURS, features), np.nan)
    return _score_rows(*args, low, np.full_like(low, np.nan), np.zeros(_HOURS))


PROTOTYPES["seasonal range"] = seasonal_range_rows

if __name__ == "__main__":
    sys.exit(variants_main([*sys.argv[1:], "--variant", 'seasonal range:prototype="seasonal range"']))
