"""The numbers the scoring stages use, derived once from the settings and the model's calibration.

Half-lives become per-message weights: a half-life of ``h`` messages is a weight of
``1 - 2 ** (-1 / h)`` per message (an exponentially weighted mean then halves an old message's
influence every ``h`` messages).

>>> round(weight_per_message(1.0), 3), round(weight_per_message(10.0), 4)
(0.5, 0.067)
"""

from __future__ import annotations

import math
from statistics import NormalDist

from detector.config import ScoringSettings
from detector.model import Calibration
from detector.stages import TINY, Params

__all__ = [
    "BASELINE_CLIP",
    "LONG_STATS_HALFLIFE",
    "NOVELTY_HALFLIFE",
    "NOVELTY_MARGIN",
    "RANGE_ABSORB",
    "SHORT_AVERAGE_HALFLIFE",
    "params_of",
    "weight_per_message",
]

# Half-life (messages) of the short-term average of the log score whose likelihood is the
# reported probability: a message and, at half its weight, the one before (decision 046).
SHORT_AVERAGE_HALFLIFE = 1.0
# Share of a message's excess beyond its entity's range that the range absorbs: a new level
# stands out for a few messages, one wild value widens the range by half its excess (decision 047).
RANGE_ABSORB = 0.5
# Half-life (messages) of each entity's long-term mean and variance of its log score (decision 048).
LONG_STATS_HALFLIFE = 500.0
# Deviations beyond this many baseline standard deviations are clipped when they update it (decision 049).
BASELINE_CLIP = 3.0
# Half-life (messages) of each entity's decaying novelty peak (decision 050).
NOVELTY_HALFLIFE = 1000.0
# Standard deviations by which a message must beat the last escape's z-score to escape too, and
# one more while its entity's alert is open (decision 052).
NOVELTY_MARGIN = 1.0

_INTEGERS = ("warmup_steps", "seasonal_bins", "close_after")


def weight_per_message(halflife: float) -> float:
    """Weight of one message in an exponentially weighted mean with this half-life (in messages)."""
    return 1.0 - 2.0 ** (-1.0 / halflife)


def params_of(settings: ScoringSettings, calibration: Calibration, threshold: float) -> Params:
    """The stages' :class:`Params` for ``settings``, ``calibration`` and the opening ``threshold``
    (a probability, see :func:`detector.null_calibration.null_calibration`)."""
    error_smoothing_rate = weight_per_message(settings.smoothing_halflife)
    likelihood_short_rate = weight_per_message(SHORT_AVERAGE_HALFLIFE)
    values = {
        "warmup_steps": settings.warmup_steps,
        "error_smoothing_rate": error_smoothing_rate,
        "smoothed_error_norm": math.sqrt((2.0 - error_smoothing_rate) / error_smoothing_rate),
        "range_absorb": RANGE_ABSORB,
        "range_tolerance": settings.range_tolerance,
        # a value beyond its range by the tolerance scores this many fit-time standard deviations
        # above the calibration's median: its short-term average alone reaches the alert level
        "range_z": settings.open_z / likelihood_short_rate,
        "likelihood_short_rate": likelihood_short_rate,
        "likelihood_long_rate": weight_per_message(LONG_STATS_HALFLIFE),
        "peak_decay": 2.0 ** (-1.0 / NOVELTY_HALFLIFE),
        "novelty_margin": NOVELTY_MARGIN,
        "novelty_discount": settings.novelty_discount,
        "open_z": settings.open_z,
        "threshold": threshold,
        "threshold_z": NormalDist().inv_cdf(min(max(threshold, TINY), 1.0 - TINY)),
        "seasonal_bins": settings.seasonal_bins,
        "seasonal_halflife_days": settings.seasonal_halflife_s / 86400.0,  # the stage counts days of a bin's time
        "baseline_rate_per_message": weight_per_message(settings.drift_halflife),
        "drift_halflife_s": settings.drift_halflife_s,
        "baseline_clip": BASELINE_CLIP,
        "open_probability": settings.open_probability,
        "close_probability": settings.close_probability,
        "close_after": settings.close_after,
        "log_mean": calibration.log_mean,
        "log_std": calibration.log_std,
    }
    # one type per field whatever the settings hold (an int half-life, a numpy float), so the
    # compiled stages are compiled once
    return Params._make((int if name in _INTEGERS else float)(values[name]) for name in Params._fields)
