"""The alert level, calibrated on simulated normal data.

The probability a message gets depends on the entity's history (short and long averages, the
novelty discount), so the level at which a fraction ``false_alarm_rate`` of normal messages
alerts is not ``1 - false_alarm_rate``: it is found by feeding simulated normal log scores
through the detector's own likelihood.

>>> from detector.testing import tiny_model
>>> null = null_calibration(tiny_model())
>>> 0.9 < null.threshold < 0.999, 1.5 < null.start_peak < 2.5
(True, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detector.config import ScoringSettings
from detector.jit import njit
from detector.model import FittedModel
from detector.params import params_of
from detector.stage_state import LikelihoodState, NoveltyState
from detector.stages import Params, likelihood

__all__ = ["NullCalibration", "null_calibration"]

_ENTITIES, _BURN_IN, _STEPS = 1000, 1000, 2000  # simulated normal entities, their settling and judged messages
_cache: dict[tuple[str, float, float], NullCalibration] = {}


@dataclass(frozen=True)
class NullCalibration:
    """What a simulation of normal data sets: the opening ``threshold`` (probability) and the
    ``start_peak`` of a new entity's novelty peak (likelihood z-score)."""

    threshold: float
    start_peak: float


def null_calibration(model: FittedModel) -> NullCalibration:
    """Calibrate ``model``'s alert level: log scores drawn independently from the fit-time
    calibration's normal distribution, fed through the likelihood (short and long averages,
    novelty discount) of 1,000 entities.

    * ``start_peak``: the median novelty peak of those entities after 1,000 messages, where a
      normal entity's settles; a new entity starts there, so its first messages are judged as a
      settled entity's (from 0, every early message above the mean would count as new);
    * ``threshold``: the probability that a fraction ``false_alarm_rate`` of their next 2,000
      messages reaches.

    Deterministic (a fixed seed) and computed once per process for given settings and
    calibration. The time-of-day memory is left out: it can only lower a message's likelihood,
    so the level errs towards fewer alerts.
    """
    settings, calibration = ScoringSettings(**model.scoring), model.calibration
    key = (settings.model_dump_json(), calibration.log_mean, calibration.log_std)
    if key not in _cache:
        draws = np.random.default_rng(0).standard_normal((settings.warmup_steps + _BURN_IN + _STEPS, _ENTITIES))
        log_scores = calibration.log_mean + calibration.log_std * draws
        # simulated without a calibrated level: the novelty discount holds messages below the fit-time one
        p = params_of(settings, calibration, settings.open_probability)
        peaks, probabilities = _simulate(log_scores, settings.warmup_steps + _BURN_IN, p)
        threshold = float(np.quantile(probabilities, 1.0 - settings.false_alarm_rate))
        _cache[key] = NullCalibration(threshold, float(np.median(peaks)))
    return _cache[key]


@njit
def _simulate(log_scores: np.ndarray, burn_in: int, p: Params) -> tuple[np.ndarray, np.ndarray]:
    """(novelty peaks after ``burn_in`` messages, probabilities of the messages after them) of
    entities fed ``log_scores`` (messages, entities), each starting fresh with a peak of 0."""
    steps, entities = log_scores.shape
    zeros = np.zeros(entities)
    stats, peaks = LikelihoodState(zeros.copy(), zeros.copy(), zeros.copy()), NoveltyState(zeros.copy())
    settled = np.empty(entities)
    probabilities = np.empty((steps - burn_in, entities))
    for step in range(steps):
        warm = step >= p.warmup_steps
        for e in range(entities):
            x = log_scores[step, e]
            probability = likelihood(stats, peaks, e, x, x, step == 0, warm, np.nan, True, False, p)
            if step >= burn_in:
                probabilities[step - burn_in, e] = probability
        if step == burn_in - 1:
            settled[:] = peaks.peak
    return settled, probabilities.ravel()
