"""The compiled loops: each entity's clock, its tracked level, and the scoring stages over rows.

:func:`score_rows` is the one implementation of the scoring recurrences for streams and files.
It walks rows in order, each row reading and writing its entity's state at its slot: in the
stream a batch's rows are distinct entities (a wave), in a file the same slot repeats in time
order. Same code, so the same results.
"""

from __future__ import annotations

import math

import numpy as np

from detector import stage_state as state
from detector.jit import njit
from detector.stages import Params, decide, range_excess, range_judged, smooth_error

__all__ = ["decide_rows", "score_rows", "timeline", "track_levels"]


@njit
def timeline(
    groups: np.ndarray, timestamps: np.ndarray, last_ts: np.ndarray, drop_stale: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's seconds since its entity's previous message (0 for the first, or when out of
    order), whether it is stale (older than that message; only with ``drop_stale``: it is not
    scored), and that previous timestamp. ``groups[i]`` numbers row i's entity, ``last_ts[g]`` is
    entity g's last timestamp before these rows (-inf: none)."""
    last = last_ts.copy()
    n = timestamps.shape[0]
    elapsed, stale, previous = np.zeros(n), np.zeros(n, dtype=np.bool_), np.empty(n)
    for i in range(n):
        g, t = groups[i], timestamps[i]
        previous[i] = last[g]
        if drop_stale and t < last[g]:
            stale[i] = True
            continue
        gap = t - last[g]
        elapsed[i] = gap if gap > 0.0 and gap != math.inf else 0.0
        last[g] = t
    return elapsed, stale, previous


@njit
def track_levels(values: np.ndarray, start: np.ndarray, rates: np.ndarray) -> np.ndarray:
    """An entity's tracked level before each step and after the last one, (batch, time + 1,
    features) float32: ``level += rate * (value - level)`` per step, in float32 as the network's
    own step computes it."""
    batch, steps, features = values.shape
    levels = np.empty((batch, steps + 1, features), dtype=np.float32)
    for b in range(batch):
        for f in range(features):
            level = start[b, f]
            for t in range(steps):
                levels[b, t, f] = level
                level = level + rates[b, t] * (values[b, t, f] - level)
            levels[b, steps, f] = level
    return levels


@njit
def score_rows(
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
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Score rows in order: (score each is judged by, probability, is_anomaly, event code,
    opening time of its alert, whether the range check decided the score, per-feature widths
    beyond the range). ``errors`` are the rows' reconstruction errors in
    residual units, ``standardised`` their values in the network's units, ``elapsed`` the
    seconds since each entity's previous row."""
    n = slots.shape[0]
    score, probability = np.empty(n), np.empty(n)
    is_anomaly, event, opened_at = np.zeros(n, dtype=np.bool_), np.zeros(n, dtype=np.int8), np.empty(n)
    range_decided, beyond = np.zeros(n, dtype=np.bool_), np.empty(standardised.shape, dtype=np.float32)
    for i in range(n):
        slot = slots[i]
        warm = alerts.steps[slot] >= p.warmup_steps  # past the warm-up transient
        width = range_excess(ranges, slot, standardised[i], start_low, start_high, p, beyond[i])
        learned = smooth_error(error, slot, errors[i], warm, p)
        judged = range_judged(learned, width, p)
        probability[i], is_anomaly[i], event[i], opened_at[i] = decide(
            seasonal, stats, peaks, baseline, alerts, slot, learned, judged, timestamps[i], elapsed[i], warm, p
        )
        alerts.last_ts[slot] = timestamps[i]
        score[i], range_decided[i] = judged, judged > learned
    return score, probability, is_anomaly, event, opened_at, range_decided, beyond


@njit
def decide_rows(
    slots: np.ndarray,
    scores: np.ndarray,
    timestamp: float,
    elapsed: float,
    seasonal: state.SeasonalState,
    stats: state.LikelihoodState,
    peaks: state.NoveltyState,
    baseline: state.BaselineState,
    alerts: state.HysteresisState,
    p: Params,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The decision stages alone over rows in order, each judged by its ``scores`` as if its
    message had been reconstructed that well (past warm-up): (probability, is_anomaly, event
    code). What simulations of normal data feed, a whole step of many entities in one call."""
    n = slots.shape[0]
    probability, is_anomaly, event = np.empty(n), np.zeros(n, dtype=np.bool_), np.zeros(n, dtype=np.int8)
    for i in range(n):
        probability[i], is_anomaly[i], event[i], _ = decide(
            seasonal, stats, peaks, baseline, alerts, slots[i], scores[i], scores[i], timestamp, elapsed, True, p
        )
    return probability, is_anomaly, event
