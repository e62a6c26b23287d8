"""The scoring stages, one compiled function each: from one message's reconstruction error to
its score, probability and alert decision.

Each stage reads and writes its own per-entity state (:mod:`detector.stage_state`) at the
message's ``slot`` and is callable from Python as it is (the tests call them one by one);
:func:`detector.kernel.score_rows` chains them over the rows of a batch. The settings they use
come in one :class:`Params` (see :func:`detector.params.params_of`). The order, with the reason
for each rule in docs/scoring.md:

1. :func:`smooth_error` -- score: max(RMS of the error, RMS of its smoothed value);
2. :func:`range_excess` and :func:`range_judged` -- a value beyond the entity's range is
   judged anomalous however well it is reconstructed;
3. :func:`seasonal_usual` -- the entity's usual log score at this time of day;
4. :func:`likelihood` (with :func:`novelty`) -- the probability: a short-term average of the
   log score judged against the entity's long-term statistics, discounted unless it is new;
5. :func:`update_baseline` -- the robust drifting baseline the alert closes on;
6. :func:`hysteresis` -- open, hold and close the entity's alert.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from detector import stage_state as state
from detector.jit import njit

__all__ = [
    "EVENT_CLOSE",
    "EVENT_NONE",
    "EVENT_OPEN",
    "Params",
    "decide",
    "drift_rate",
    "hysteresis",
    "likelihood",
    "normal_cdf",
    "novelty",
    "range_excess",
    "range_judged",
    "seasonal_usual",
    "smooth_error",
    "update_baseline",
]

MIN_VAR = 1e-2  # floor of a variance of the log score (std 0.1, as the calibration's)
TINY = 1e-9
HOLD_EVIDENCE = 2  # a young alert: fewer anomalous messages than this many times close_after
RANGE_GRADE_CAP = 4.0  # beyond this many tolerances out of range, a score grows in proportion to the distance
EVENT_NONE, EVENT_OPEN, EVENT_CLOSE = 0, 1, 2
_SQRT1_2 = 0.7071067811865476
Real = Any  # a float64 or float32 scalar: numba compiles the helpers below for each


class Params(NamedTuple):
    """Everything the stages need from the settings and the model's calibration, as numbers."""

    warmup_steps: int
    error_smoothing_rate: float  # weight of a message in the smoothed error (smoothing_halflife)
    smoothed_error_norm: float  # makes the smoothed error's RMS unit-variance under white noise
    range_absorb: float
    range_tolerance: float
    range_z: float  # z-score, above the calibration's median, of a value at the range tolerance
    likelihood_short_rate: float  # weight of a message in the short-term average (SHORT_AVERAGE_HALFLIFE)
    likelihood_long_rate: float  # weight of a message in the long-term mean/variance (LONG_STATS_HALFLIFE)
    peak_decay: float  # per message (NOVELTY_HALFLIFE)
    novelty_margin: float
    novelty_discount: float
    open_z: float  # z-score of 1 - false_alarm_rate
    threshold: float  # probability at or above which an alert opens
    threshold_z: float  # its z-score
    seasonal_bins: int
    seasonal_halflife_days: float
    baseline_rate_per_message: float  # weight of a message in the drift baseline (drift_halflife)
    drift_halflife_s: float
    baseline_clip: float
    open_probability: float
    close_probability: float
    close_after: int
    log_mean: float  # the fit-time calibration of the log score
    log_std: float


@njit
def _max(a: Real, b: Real) -> Real:
    """numpy's maximum for scalars: NaN wins."""
    return a if (a >= b or a != a) else b


@njit
def _min(a: Real, b: Real) -> Real:
    """numpy's minimum for scalars: NaN wins."""
    return a if (a <= b or a != a) else b


@njit
def _mean_square(row: np.ndarray, scale: Real) -> Real:
    """Mean of ``(row * scale) ** 2`` in the row's precision, summed in numpy's order (eight
    partial sums from eight values on), so a score is the very number numpy computes."""
    n = row.shape[0]
    total = np.float32(0.0)  # widens to the row's precision
    if n < 8:
        for f in range(n):
            total += (row[f] * scale) * (row[f] * scale)
        return total / np.float32(n)
    r0, r1, r2, r3 = row[0] * scale, row[1] * scale, row[2] * scale, row[3] * scale
    r4, r5, r6, r7 = row[4] * scale, row[5] * scale, row[6] * scale, row[7] * scale
    r0, r1, r2, r3, r4, r5, r6, r7 = r0 * r0, r1 * r1, r2 * r2, r3 * r3, r4 * r4, r5 * r5, r6 * r6, r7 * r7
    f = 8
    while f + 8 <= n:
        values = row[f : f + 8]
        r0 += (values[0] * scale) * (values[0] * scale)
        r1 += (values[1] * scale) * (values[1] * scale)
        r2 += (values[2] * scale) * (values[2] * scale)
        r3 += (values[3] * scale) * (values[3] * scale)
        r4 += (values[4] * scale) * (values[4] * scale)
        r5 += (values[5] * scale) * (values[5] * scale)
        r6 += (values[6] * scale) * (values[6] * scale)
        r7 += (values[7] * scale) * (values[7] * scale)
        f += 8
    total += ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while f < n:
        total += (row[f] * scale) * (row[f] * scale)
        f += 1
    return total / np.float32(n)


@njit
def normal_cdf(z: float) -> float:
    """The standard normal distribution function."""
    return 0.5 * math.erfc(-z * _SQRT1_2)


@njit
def smooth_error(error: state.ErrorState, slot: int, errors: np.ndarray, warm: bool, p: Params) -> float:
    """The reconstruction score of one message: max(RMS of its per-feature error, RMS of the
    entity's smoothed error), so both spikes and small persistent shifts score. The smoothing
    starts after the warm-up (its transient would otherwise linger)."""
    smoothed = error.smoothed[slot]
    if not warm:
        smoothed[:] = 0.0
    for f in range(errors.shape[0]):
        smoothed[f] += p.error_smoothing_rate * (errors[f] - smoothed[f])
    instant = math.sqrt(_mean_square(errors, 1.0))
    persistent = math.sqrt(_mean_square(smoothed, p.smoothed_error_norm))
    return _max(instant, persistent)


@njit
def range_excess(
    ranges: state.RangeState,
    slot: int,
    standardised: np.ndarray,
    start_low: np.ndarray,
    start_high: np.ndarray,
    p: Params,
    beyond: np.ndarray,
) -> float:
    """How far the message lies beyond its entity's range, in widths of that range: per feature
    into ``beyond`` (0 inside), and their RMS returned. Then the range widens by ``range_absorb`` (half)
    of the excess, so a new level stands out for a few messages and one wild value widens it by
    only a share. An unknown range (NaN: restored from a checkpoint written before ranges were
    kept) becomes the fit data's (``start_low``, ``start_high``) plus this value."""
    low, high = ranges.low[slot], ranges.high[slot]
    absorb = np.float32(p.range_absorb)
    zero, tiny = np.float32(0.0), np.float32(TINY)
    for f in range(standardised.shape[0]):
        value = standardised[f]
        if math.isnan(low[f]):
            low[f] = _min(start_low[f], value)
        if math.isnan(high[f]):
            high[f] = _max(start_high[f], value)
        above, below = _max(value - high[f], zero), _max(low[f] - value, zero)
        beyond[f] = _max(above, below) / _max(high[f] - low[f], tiny)
        low[f] = low[f] - absorb * below
        high[f] = high[f] + absorb * above
    return np.sqrt(_mean_square(beyond, np.float32(1.0)))


@njit
def range_judged(score: float, width: float, p: Params) -> float:
    """The score a message is judged by: raised, for one beyond its range by more than
    ``range_tolerance`` (``width`` from :func:`range_excess`), to ``range_z`` fit-time standard
    deviations above the calibration's median at the tolerance, proportionally more further out
    up to 4x, and beyond that in proportion to the distance (alerts rank by how far out)."""
    tolerance = np.float32(p.range_tolerance)
    width32 = np.float32(width)
    if not width32 > tolerance:
        return score
    grade = _max(width32 / np.float32(_max(p.range_tolerance, TINY)), np.float32(1.0))
    cap = np.float32(RANGE_GRADE_CAP)
    exponent = np.float32(p.log_mean) + np.float32(p.log_std * p.range_z) * _min(grade, cap)
    range_score = np.exp(exponent) * _max(grade / cap, np.float32(1.0))
    return _max(score, float(range_score))


@njit
def seasonal_usual(
    seasonal: state.SeasonalState, slot: int, log_score: float, timestamp: float, elapsed: float, warm: bool, p: Params
) -> float:
    """The entity's usual log score in the time-of-day bin of ``timestamp`` (before this message),
    then that memory updated after the warm-up: an exponentially weighted mean with half-life
    ``seasonal_halflife_days`` of the bin's own time, each message weighing the time it stands for
    (``elapsed``, at most one bin), so it means the same at any message rate. NaN without bins."""
    bins = p.seasonal_bins
    if bins == 0:
        return math.nan
    width = 86400.0 / bins
    position = (timestamp % 86400.0) // width
    column = 0 if math.isnan(position) else int(_min(_max(position, 0.0), bins - 1.0))
    usual = float(seasonal.usual[slot, column])
    weight = 1.0 - np.exp2(-_min(elapsed, width) / (p.seasonal_halflife_days * width)) if warm else 0.0
    seasonal.usual[slot, column] = usual + weight * (log_score - usual)
    return usual


@njit
def novelty(
    peaks: state.NoveltyState,
    slot: int,
    z: float,
    learned: float,
    warm: bool,
    rising: bool,
    alert_open: bool,
    p: Params,
) -> float:
    """Discount ``z`` by ``novelty_discount`` unless it beats the entity's decaying recent peak
    (by one more ``novelty_margin`` while its alert is open) on a message that raises the short
    average (``rising``), so an event is reported by its onset, not by every message while it lasts
    nor by the calm after it. A discounted message stays that far below the alert level (the
    z-score of the threshold); one that escapes is reported beyond it by at most as much as it
    beats the bar. The peak learns ``learned`` (z without the range check) after the warm-up: a
    new high raises it by the margin, but not beyond ``open_z``. Monotone in ``z``."""
    margin, peak = p.novelty_margin, peaks.peak[slot]
    bar = peak + margin if alert_open else peak + 0.0
    novel = z > bar and rising
    raised = _min(learned + margin, _max(learned, p.open_z)) if learned > peak else learned
    raised = _max(raised, peak * p.peak_decay)
    if warm:
        peaks.peak[slot] = raised
    if p.novelty_discount <= 0:
        return z
    if novel:
        return _min(z, p.threshold_z + (z - bar))
    return _min(z, p.threshold_z) - p.novelty_discount


@njit
def likelihood(
    stats: state.LikelihoodState,
    peaks: state.NoveltyState,
    slot: int,
    log_score: float,
    log_judged: float,
    new: bool,
    warm: bool,
    usual: float,
    rising: bool,
    alert_open: bool,
    p: Params,
) -> float:
    """Numenta-style anomaly likelihood of one message: the short-term average of the log score
    judged against the entity's long-term (unclipped) mean and variance, against the fit-time
    distribution and against ``usual`` (NaN: no time-of-day memory), the smallest z of the
    three, through :func:`novelty`. It spikes when a change starts and decays as the entity's
    statistics adapt. The message is judged by ``log_judged``; the statistics learn ``log_score``.
    A ``new`` entity starts from the calibration. Monotone in the score for a given state."""
    before = log_score if new else stats.fast_mean[slot]
    mean = p.log_mean if new else stats.long_mean[slot]
    var = p.log_std**2 if new else stats.long_var[slot]
    spread = math.sqrt(var)  # one message's spread, as Numenta's likelihood
    fit_spread = p.log_std
    fast = before + p.likelihood_short_rate * (log_score - before)
    learned = _min((fast - mean) / spread, (fast - p.log_mean) / fit_spread)
    fast_judged = before + p.likelihood_short_rate * (log_judged - before)
    judged = _min((fast_judged - mean) / spread, (fast_judged - p.log_mean) / fit_spread)
    if not math.isnan(usual):
        learned = _min(learned, (fast - usual) / spread)
        judged = _min(judged, (fast_judged - usual) / spread)
    delta = log_score - mean
    rate = p.likelihood_long_rate
    stats.fast_mean[slot] = fast
    stats.long_mean[slot] = mean + rate * delta
    stats.long_var[slot] = _max((1 - rate) * (var + rate * delta**2), MIN_VAR)
    return normal_cdf(novelty(peaks, slot, judged, learned, warm, rising, alert_open, p))


@njit
def drift_rate(elapsed: float, p: Params) -> float:
    """Weight of a message in the drift baseline: half-life ``drift_halflife`` messages or
    ``drift_halflife_s`` seconds since the entity's previous message, whichever is shorter."""
    return _max(p.baseline_rate_per_message, 1.0 - np.exp2(-elapsed / p.drift_halflife_s))


@njit
def update_baseline(baseline: state.BaselineState, slot: int, log_score: float, rate: float, p: Params) -> None:
    """Exponentially weighted mean/variance of the log score fed deviations clipped to
    ``baseline_clip`` standard deviations: an outlier barely moves it, and a persistent change is
    absorbed in a time growing with the logarithm of its size (the variance grows geometrically
    while deviations are clipped)."""
    mean, var = baseline.mean[slot], baseline.var[slot]
    bound = p.baseline_clip * math.sqrt(var)
    delta = _min(_max(log_score - mean, -bound), bound)
    baseline.mean[slot] = mean + rate * delta
    baseline.var[slot] = _max((1 - rate) * (var + rate * delta**2), MIN_VAR)


@njit
def hysteresis(
    alerts: state.HysteresisState,
    slot: int,
    probability: float,
    p_slow: float,
    beyond_level: bool,
    rising: bool,
    warm: bool,
    timestamp: float,
    p: Params,
) -> tuple[int, bool, float]:
    """Open on the fast probability, close on the slow one: (event, is_anomaly, the alert's
    opening time). An alert opens when ``probability`` reaches the threshold after the warm-up
    on a ``rising`` message, and closes after as many consecutive messages with ``p_slow`` below
    ``close_probability`` as it has had messages above it, at most ``close_after``: a blip is a
    one-message alert, a long anomaly does not flap. ``is_anomaly`` marks the opening message and,
    once the alert is sustained (``close_after`` anomalous messages), each message
    ``beyond_level`` (the fit-time alert level) that the closing rule does not count as calm: once
    the entity's baseline has absorbed a lasting change, its messages are no longer marked.
    Counts this message (``steps``)."""
    was_open = alerts.alert_open[slot]
    quiet = p_slow < p.close_probability
    calm = alerts.calm[slot] + 1 if quiet else 0
    evidence = alerts.evidence[slot] + (0 if quiet else 1) if was_open else 1
    opening = (not was_open) and warm and rising and probability >= p.threshold
    closing = was_open and calm >= min(p.close_after, evidence)
    is_open = (was_open or opening) and not closing
    alerts.alert_open[slot] = is_open
    alerts.calm[slot] = calm if is_open else 0
    alerts.steps[slot] += 1
    alerts.evidence[slot] = evidence if is_open else 0
    opened_at = timestamp if opening else alerts.opened_ts[slot]
    alerts.opened_ts[slot] = opened_at if is_open else math.nan
    event = EVENT_OPEN if opening else (EVENT_CLOSE if closing else EVENT_NONE)
    sustained = is_open and evidence >= p.close_after and beyond_level and not quiet
    return event, opening or sustained, opened_at


@njit
def decide(
    seasonal: state.SeasonalState,
    stats: state.LikelihoodState,
    peaks: state.NoveltyState,
    baseline: state.BaselineState,
    alerts: state.HysteresisState,
    slot: int,
    score: float,
    judged: float,
    timestamp: float,
    elapsed: float,
    warm: bool,
    p: Params,
) -> tuple[float, bool, int, float]:
    """From a message's ``score`` (what the entity's statistics learn) and ``judged`` score (what
    it is judged by: the range check may raise it) to (probability, is_anomaly, event, the
    alert's opening time). The baseline learns the message unless it belongs to a young alert
    (fewer than twice ``close_after`` anomalous messages) and lies beyond the fit-time alert
    level, so a lasting fault is not absorbed while it is being reported."""
    log_score, log_judged = math.log(score + TINY), math.log(judged + TINY)
    new = alerts.steps[slot] == 0
    usual = seasonal_usual(seasonal, slot, log_score, timestamp, elapsed, warm, p)
    rising = log_judged > (math.inf if new else stats.fast_mean[slot])  # raises the short-term average
    was_open = alerts.alert_open[slot]
    probability = likelihood(stats, peaks, slot, log_score, log_judged, new, warm, usual, rising, was_open, p)
    p_fit = normal_cdf((log_judged - p.log_mean) / p.log_std)
    p_slow = _min(p_fit, normal_cdf((log_judged - baseline.mean[slot]) / math.sqrt(baseline.var[slot])))
    beyond_level = p_fit >= p.open_probability
    held = was_open and beyond_level and alerts.evidence[slot] < HOLD_EVIDENCE * p.close_after
    update_baseline(baseline, slot, log_score, drift_rate(elapsed, p) if warm and not held else 0.0, p)
    event, is_anomaly, opened_at = hysteresis(
        alerts, slot, probability, p_slow, beyond_level, rising, warm, timestamp, p
    )
    return probability, is_anomaly, event, opened_at
