"""The one scoring path: batched recurrent step -> score -> probability -> alert decision.

``detector score`` (files) and ``detector run`` (Kafka) both call :meth:`Detector.process`,
so a backtest means what production does.

* score: root-mean-square of the per-feature reconstruction error, each feature's error
  divided by its fit-time residual scale (about 1 on normal data; >= 0, higher is worse),
  raised to at least an alert-level score for a message beyond its entity's range by more than
  ``range_tolerance`` of the range's width (a level never seen before; the range starts at the
  fit data's and absorbs ``range_absorb`` of each message's excess, so a new level stands out
  for a few messages). The entity's statistics below learn from the reconstruction score alone;
* probability: a Numenta-style anomaly likelihood -- a short-term average of the log score
  (half-life ``likelihood_short_halflife``) judged against the entity's long-term, unclipped
  mean/variance of it (``likelihood_long_halflife``), against the fit-time held-out
  distribution and against the entity's usual log score at this time of day (``seasonal_bins``,
  so an error recurring daily at the same hour stops alerting), the smallest of the three; it
  spikes when a change starts and decays as the entity's statistics adapt. Its z-score is
  discounted by ``novelty_discount`` unless it exceeds the entity's decaying recent peak
  (``novelty_halflife``; a new high raises it by ``novelty_margin``, up to ``open_z``, and by
  one more margin while the entity's alert is open) and raises the short-term average, and a
  discounted message stays that far below the alert level, so an event is reported by its
  onset, not by every message while it lasts nor by the calm after it; a message that escapes
  is reported beyond the alert level by at most as much as it beats the bar, so its
  probability says how clearly it is new;
* decision: an alert opens when probability reaches :attr:`Detector.threshold` (after warm-up),
  the level that a fraction ``false_alarm_rate`` of normal messages reaches (simulated, see
  :func:`null_calibration`), on a message that raises the short-term average (an excursion's
  onset, not the first calm message after it, whose average still lags), and closes
  after as many consecutive messages whose slow probability is below ``close_probability`` as it
  has had messages above it (the opening one included), at most ``close_after``: hysteresis that
  grows with the evidence, so a one-message blip is a one-message alert and a long anomaly does
  not flap. ``is_anomaly`` marks the message that opens an alert and, once the alert is sustained
  (``close_after`` anomalous messages), each of its messages whose score is beyond the fit-time
  alert level (``1 - false_alarm_rate`` of the calibration): a burst is reported once, by its
  onset, while a lasting anomaly is marked for as long as it lasts. The slow probability judges
  the log score against the fit-time distribution and the entity's robust drifting baseline (an
  exponentially weighted mean/variance with ``drift_halflife`` messages or ``drift_halflife_s``
  seconds, whichever is shorter, fed deviations clipped to ``baseline_clip`` standard
  deviations), so an alert stays open while a change lasts but a persistent change stops
  alerting after a while (a time growing with the logarithm of its size). While an alert is
  young (fewer than twice ``close_after`` anomalous messages), its messages beyond the
  fit-time alert level do not teach the baseline, so a lasting fault is not absorbed while it is
  being reported.

>>> from detector.testing import tiny_model
>>> detector = Detector(tiny_model())
>>> decision = detector.score_one("pump-1", [0.1, 0.2])
>>> decision.score >= 0 and 0 <= decision.probability <= 1, decision.is_anomaly
(True, False)
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Literal, NamedTuple

import numpy as np
import torch

from detector.config import ScoringSettings
from detector.model import FittedModel
from detector.schema import Columns, Observation
from detector.state import EntityStore

__all__ = ["Contribution", "Decision", "Detector", "NullCalibration", "Outcomes", "null_calibration", "waves"]

_MIN_VAR = 1e-2  # floor of the baseline variance of the log score (std 0.1, as the calibration's)
_TINY = 1e-9
_HOLD_EVIDENCE = 2  # a young alert: fewer anomalous messages than this many times close_after
_RANGE_GRADE_CAP = 4.0  # beyond this many tolerances out of range, a score grows in proportion to the distance
_NULL_ENTITIES, _NULL_BURN_IN, _NULL_STEPS = 1000, 1000, 2000  # simulated normal entities (see null_calibration)
_null_calibrations: dict[tuple[str, float, float], NullCalibration] = {}


class Contribution(NamedTuple):
    """A feature named in an alert: its share of the error, the value measured and the value the
    model expected (in the data's units)."""

    feature: str
    share: float
    value: float
    expected: float


@dataclass(slots=True)  # not frozen: a frozen dataclass costs ~1 us more per instance on the hot path
class Decision:
    """The outcome for one observation."""

    entity: str
    timestamp: float
    score: float
    probability: float
    is_anomaly: bool
    event: Literal["open", "close"] | None = None  # an alert opened or closed on this message
    top_features: list[Contribution] = field(default_factory=list)  # the largest contributors, for anomalous messages
    source: Any = None
    opened_at: float | None = (
        None  # on an event: when its alert opened (epoch s; None: unknown, opened before it was kept)
    )


@dataclass
class Outcomes:
    """The outcomes of a batch as columns (what the service reads; no object per message).

    ``events[i]`` is "open", "close" or None; ``top_features`` holds the positions that are
    anomalous, ``opened_at`` when the alert of each event opened (NaN: unknown). With ``drop_stale``, ``stale[i]`` marks a message older than its entity's last one:
    it was not stepped (score 0, no event) and ``previous[i]`` is that last timestamp.
    :meth:`decision` builds the :class:`Decision` of one position.
    """

    batch: Columns
    score: np.ndarray
    probability: np.ndarray
    is_anomaly: np.ndarray
    events: list[Literal["open", "close"] | None]
    top_features: dict[int, list[Contribution]]
    stale: np.ndarray
    previous: dict[int, float]
    opened_at: dict[int, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.batch)

    def decision(self, i: int) -> Decision:
        source = self.batch.sources[i] if self.batch.sources is not None else None
        opened = self.opened_at.get(i)
        return Decision(
            self.batch.entities[i],
            float(self.batch.timestamps[i]),
            float(self.score[i]),
            float(self.probability[i]),
            bool(self.is_anomaly[i]),
            self.events[i],
            self.top_features.get(i, []),
            source,
            None if opened is None or math.isnan(opened) else opened,
        )

    def decisions(self) -> list[Decision]:
        return [self.decision(i) for i in range(len(self))]


class Detector:
    """Scores observations of many entities, carrying each entity's state.

    ``max_entities`` and ``ttl_s`` bound the store (see :class:`EntityStore`). ``threshold`` is
    the probability at or above which an alert opens (see :func:`null_calibration`; with
    ``simulate_null=False``, ``1 - false_alarm_rate`` and a novelty peak starting at 0).
    """

    def __init__(
        self, model: FittedModel, max_entities: int = 1_000_000, ttl_s: float = math.inf, simulate_null: bool = True
    ):
        self.model = model
        self.settings = ScoringSettings(**model.scoring)
        calibration = model.calibration
        # the probability at or above which an alert opens, and where a new entity's novelty peak starts
        null = null_calibration(model) if simulate_null else NullCalibration(self.settings.open_probability, 0.0)
        self.threshold = null.threshold
        self._threshold_z = NormalDist().inv_cdf(min(max(null.threshold, _TINY), 1.0 - _TINY))  # its likelihood z-score
        self.store = EntityStore(
            model.network.state_size,
            baseline=(calibration.log_mean, calibration.log_std**2),
            max_entities=max_entities,
            ttl_s=ttl_s,
            n_features=len(model.features),
            start_state=model.network.initial_state(1)[0],
            seasonal_bins=self.settings.seasonal_bins,
            start_range=_standardised_range(model),
            start_peak=null.start_peak,
        )
        self._alpha = 1.0 - 2.0 ** (-1.0 / self.settings.drift_halflife)
        self._beta = 1.0 - 2.0 ** (-1.0 / self.settings.smoothing_halflife)
        self._smooth_norm = math.sqrt((2.0 - self._beta) / self._beta)  # unit variance under white noise
        self._gamma = 1.0 - 2.0 ** (-1.0 / self.settings.likelihood_short_halflife)
        self._delta = 1.0 - 2.0 ** (-1.0 / self.settings.likelihood_long_halflife)
        self._peak_decay = 2.0 ** (-1.0 / self.settings.novelty_halflife)
        # std of the short average relative to one message's, under white noise (1 = Numenta's choice)
        self._short_scale = (
            math.sqrt(self._gamma / (2.0 - self._gamma)) if self.settings.likelihood_short_scaled else 1.0
        )
        # a value beyond its range by the tolerance scores this many fit-time standard deviations above the
        # calibration's median: its short-term average alone reaches the alert level
        self._range_z = self.settings.open_z / self._gamma
        self._mean = model.feature_mean.astype(np.float32)
        self._scale = model.feature_scale.astype(np.float32)

    def score_one(self, entity: str, values: Sequence[float], timestamp: float = 0.0) -> Decision:
        """Score a single observation (convenience around :meth:`process`)."""
        return self.process([Observation(entity, timestamp, list(values))])[0]

    def process(
        self, observations: Sequence[Observation], owner: int | Sequence[int] = 0, now: float | None = None
    ) -> list[Decision]:
        """Score ``observations`` in order; one batched step per wave of distinct entities."""
        return self.process_columns(observations, owner, now).decisions()

    def process_columns(
        self,
        batch: Columns | Sequence[Observation],
        owner: int | Sequence[int] = 0,
        now: float | None = None,
        drop_stale: bool = False,
    ) -> Outcomes:
        """:meth:`process` with columns in and out (cheaper for large batches).

        ``drop_stale``: a message older than its entity's last one is not stepped but marked in
        ``Outcomes.stale`` (the service dead-letters it).

        >>> from detector.testing import tiny_model
        >>> detector = Detector(tiny_model())
        >>> out = detector.process_columns([Observation("p1", 20.0, [0.1, 0.2]), Observation("p1", 10.0, [0.1, 0.2])], drop_stale=True)
        >>> out.stale.tolist(), out.previous
        ([False, True], {1: 20.0})
        """
        columns = batch if isinstance(batch, Columns) else Columns.of(batch, len(self.model.features))
        n = len(columns)
        owners = np.broadcast_to(np.asarray(owner, dtype=np.int32), (n,))
        now = time.time() if now is None else now
        out = Outcomes(
            columns, np.zeros(n), np.zeros(n), np.zeros(n, dtype=bool), [None] * n, {}, np.zeros(n, dtype=bool), {}
        )
        for wave in waves(columns.entities):
            entities = columns.entities if len(wave) == n else [columns.entities[i] for i in wave]
            slots = self.store.slots_for(entities, owners[wave], now)
            timestamps = columns.timestamps[wave]
            if drop_stale:
                wave, slots, timestamps = self._drop_stale(out, wave, slots, timestamps)
                if not len(wave):
                    continue
            score, probability, is_anomaly, events, tops = self._step(slots, columns.values[wave], timestamps)
            out.score[wave], out.probability[wave], out.is_anomaly[wave] = score, probability, is_anomaly
            for i, (event, opened_at) in events.items():
                out.events[int(wave[i])], out.opened_at[int(wave[i])] = event, opened_at
            out.top_features.update((int(wave[i]), top) for i, top in tops.items())
        return out

    def _drop_stale(
        self, out: Outcomes, wave: np.ndarray, slots: np.ndarray, timestamps: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Mark the wave's messages older than their entity's last one; (wave, slots, timestamps) of the rest."""
        last = self.store.fields["last_ts"][slots]
        stale = timestamps < last
        if not stale.any():
            return wave, slots, timestamps
        out.stale[wave[stale]] = True
        out.previous.update(zip(wave[stale].tolist(), last[stale].tolist()))
        keep = ~stale
        return wave[keep], slots[keep], timestamps[keep]

    def _step(
        self, slots: np.ndarray, values: np.ndarray, timestamps: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict, dict]:
        """One batched step of distinct entities' slots: (scores, probabilities, is_anomaly, events
        with their alert's opening time and top features by position in the step)."""
        standardised = (values.astype(np.float32) - self._mean) / self._scale
        x = torch.from_numpy(standardised)
        index = torch.from_numpy(slots)
        elapsed = self._elapsed(slots, timestamps)
        with torch.inference_mode():
            reconstruction, new_state = self.model.network.step(
                x, self.store.rnn[index], torch.from_numpy(timestamps), torch.from_numpy(elapsed)
            )
        self.store.rnn[index] = new_state
        errors = (x - reconstruction).double().numpy() / self.model.residual_scale
        warm = self.store.fields["steps"][slots] >= self.settings.warmup_steps  # past the warm-up transient
        self.store.fields["error_ewma"][slots[~warm]] = 0.0  # smoothing starts after it
        beyond = self._beyond_range(slots, standardised)
        scores = self._score(slots, errors)
        judged = self._with_range(scores, beyond)
        probability, is_anomaly, events = self._decide(slots, scores, judged, timestamps, elapsed, warm)
        self.store.fields["last_ts"][slots] = timestamps
        if judged is not None:  # name the features out of range where the range decided the score
            errors, scores = np.where((judged > scores)[:, None], beyond, errors), judged
        anomalous = np.flatnonzero(is_anomaly)
        if len(anomalous):  # what the model expected, in the data's units
            expected = (
                reconstruction[torch.from_numpy(anomalous)].double().numpy() * self.model.feature_scale
                + self.model.feature_mean
            )
            tops = {i: self._top(errors[i], values[i], row) for i, row in zip(anomalous.tolist(), expected)}
        else:
            tops = {}
        return scores, probability, is_anomaly, events, tops

    def _score(self, slots: np.ndarray, errors: np.ndarray) -> np.ndarray:
        """max(RMS of this error, RMS of the smoothed error): spikes and small persistent shifts."""
        smoothed = self.store.fields["error_ewma"][slots]
        smoothed += self._beta * (errors - smoothed)
        self.store.fields["error_ewma"][slots] = smoothed
        instant = np.sqrt(np.mean(errors**2, axis=1))
        persistent = np.sqrt(np.mean((smoothed * self._smooth_norm) ** 2, axis=1))
        return np.maximum(instant, persistent)

    def _decide(
        self,
        slots: np.ndarray,
        scores: np.ndarray,
        judged: np.ndarray | None,
        timestamps: np.ndarray,
        elapsed: np.ndarray,
        warm: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, dict[int, tuple[Literal["open", "close"], float]]]:
        """Open on the fast likelihood (reported as ``probability``), close on the slow baseline
        after as many calm messages as the alert has had anomalous ones, at most ``close_after``:
        (probability, is_anomaly, events with their alert's opening time). ``is_anomaly`` marks the message that opens an alert and,
        once the alert is sustained (``close_after`` anomalous messages), each of its messages
        beyond the fit-time alert level: a short alert is reported by its onset alone.

        ``judged`` (None: ``scores``) is what this message is judged by, ``scores`` what the
        entity's statistics learn from: a value beyond its range is judged anomalous without
        teaching the statistics that its score is usual."""
        fields, settings, calibration = self.store.fields, self.settings, self.model.calibration
        log_score = np.log(scores + _TINY)
        log_judged = log_score if judged is None else np.log(judged + _TINY)
        steps = fields["steps"][slots]
        usual = self._seasonal(slots, log_score, timestamps, elapsed, warm)
        rising = log_judged > np.where(steps == 0, np.inf, fields["fast_mean"][slots])  # raises the short-term average
        was_open = fields["alert_open"][slots]
        probability = self._likelihood(slots, log_score, log_judged, steps == 0, warm, usual, rising, was_open)
        mean, var = fields["base_mean"][slots], fields["base_var"][slots]
        p_fit = _normal_cdf((log_judged - calibration.log_mean) / calibration.log_std)
        p_slow = np.minimum(p_fit, _normal_cdf((log_judged - mean) / np.sqrt(var)))
        beyond_level = p_fit >= settings.open_probability  # beyond the fit-time alert level
        # a young alert's messages beyond the fit-time level do not teach the baseline that they are usual:
        # otherwise a lasting fault is absorbed and its alert closes while the fault goes on
        held = was_open & beyond_level & (fields["evidence"][slots] < _HOLD_EVIDENCE * settings.close_after)
        self._update_baseline(slots, log_score, mean, var, warm & ~held, self._drift_rate(elapsed))
        quiet = p_slow < settings.close_probability
        calm = np.where(quiet, fields["calm"][slots] + 1, 0)
        evidence = np.where(was_open, fields["evidence"][slots] + ~quiet, 1)
        opening = ~was_open & warm & rising & (probability >= self.threshold)
        closing = was_open & (calm >= np.minimum(settings.close_after, evidence))
        is_open = (was_open | opening) & ~closing
        fields["alert_open"][slots], fields["calm"][slots], fields["steps"][slots] = (
            is_open,
            np.where(is_open, calm, 0),
            steps + 1,
        )
        fields["evidence"][slots] = np.where(is_open, evidence, 0)
        opened_at = np.where(opening, timestamps, fields["opened_ts"][slots])
        fields["opened_ts"][slots] = np.where(is_open, opened_at, np.nan)
        events: dict[int, tuple[Literal["open", "close"], float]] = {
            i: ("open", float(opened_at[i])) for i in np.flatnonzero(opening).tolist()
        }
        events.update((i, ("close", float(opened_at[i]))) for i in np.flatnonzero(closing).tolist())
        sustained = is_open & (evidence >= settings.close_after) & beyond_level
        return probability, opening | sustained, events

    def _likelihood(
        self,
        slots: np.ndarray,
        log_score: np.ndarray,
        log_judged: np.ndarray,
        new: np.ndarray,
        warm: np.ndarray,
        usual: np.ndarray | None,
        rising: np.ndarray | None = None,
        alert_open: np.ndarray | None = None,
    ) -> np.ndarray:
        """Numenta-style anomaly likelihood: a short-term average of the log score judged against
        the entity's longer-term (unclipped) mean and variance of it, against the fit-time
        distribution and, if given, against ``usual`` (the entity's usual log score at this time of
        day); spikes when a change starts and decays as the long-term statistics adapt. ``new`` marks
        an entity's first message (it starts from the calibration), ``warm`` the end of its warm-up.
        The message is judged by ``log_judged``; the statistics (and the novelty peak) learn ``log_score``.
        ``rising`` (None: all) marks the messages that raise the short-term average; the others are
        discounted as not novel (see :meth:`_novelty`), as are those of entities whose alert is
        ``alert_open`` (None: none, as in the simulation of normal data) unless they beat the peak
        by a further margin.

        Monotone in the score for a given entity state (the short average moves with it).
        """
        fields, calibration = self.store.fields, self.model.calibration
        before = np.where(new, log_score, fields["fast_mean"][slots])
        mean = np.where(new, calibration.log_mean, fields["long_mean"][slots])
        var = np.where(new, calibration.log_std**2, fields["long_var"][slots])
        spread = np.sqrt(var) * self._short_scale

        def z_of(fast: np.ndarray) -> np.ndarray:
            z = np.minimum(
                (fast - mean) / spread, (fast - calibration.log_mean) / (calibration.log_std * self._short_scale)
            )
            return z if usual is None else np.minimum(z, (fast - usual) / spread)

        fast = before + self._gamma * (log_score - before)
        learned = z_of(fast)
        judged = learned if log_judged is log_score else z_of(before + self._gamma * (log_judged - before))
        delta = log_score - mean
        fields["fast_mean"][slots] = fast
        fields["long_mean"][slots] = mean + self._delta * delta
        fields["long_var"][slots] = np.maximum((1 - self._delta) * (var + self._delta * delta**2), _MIN_VAR)
        return _normal_cdf(self._novelty(slots, judged, learned, warm, rising, alert_open))

    def _seasonal(
        self, slots: np.ndarray, log_score: np.ndarray, timestamps: np.ndarray, elapsed: np.ndarray, warm: np.ndarray
    ) -> np.ndarray | None:
        """The entity's usual log score in the time-of-day bin of each message (before this one),
        then that memory updated (where ``warm``, after the warm-up): an exponentially weighted mean with half-life
        ``seasonal_halflife_days`` of the bin's own time, so it means the same at any message rate.
        None when ``seasonal_bins`` is 0.

        Each message weighs the time it stands for (``elapsed``, at most one bin's width): 12
        messages an hour into a one-hour bin move it as much in a day as one message a day.
        """
        bins = self.settings.seasonal_bins
        if not bins:
            return None
        width = 86400.0 / bins
        column = (np.remainder(timestamps, 86400.0) // width).astype(np.int64).clip(0, bins - 1)
        memory = self.store.fields["seasonal"]
        usual = memory[slots, column].astype(np.float64)
        weight = 1.0 - np.exp2(-np.minimum(elapsed, width) / (self.settings.seasonal_halflife_days * width))
        weight = np.where(warm, weight, 0.0)
        memory[slots, column] = usual + weight * (log_score - usual)
        return usual

    def _novelty(
        self,
        slots: np.ndarray,
        z: np.ndarray,
        learned: np.ndarray,
        warm: np.ndarray,
        rising: np.ndarray | None = None,
        alert_open: np.ndarray | None = None,
    ) -> np.ndarray:
        """Discount ``z`` by ``novelty_discount`` unless it exceeds the entity's decaying recent peak.

        An event is reported by the message that first reaches its level, not by every message while
        it lasts or by its echoes; a larger excursion is reported again. A message that escapes the
        discount raises the peak to its z plus ``novelty_margin``, so an event rising over several
        messages is reported once -- but never above ``open_z`` (the z of ``1 - false_alarm_rate``),
        so the margin cannot withhold a new alert beyond that. While the entity's alert is open
        (``alert_open``, before this message; None: none is) its event has been reported, so a
        message must beat the peak by a further ``novelty_margin``: an event rising far beyond the
        alert level does not escape at every new high (this changes ``probability`` only: alerts
        open on entities without one). A discounted message is held
        at least ``novelty_discount`` below the alert level (the z-score of :attr:`threshold`), so
        one that is not new never reaches it, however large (a huge event's later messages stayed
        above it, each a false positive for NAB). A message that escapes is reported beyond the
        alert level by at most as much as it beats the bar (``z`` itself where the bar lies below
        the level): one that barely beats a peak raised by a recent event is barely beyond the
        level, one that beats it by far is as sure as its ``z``. This grades ``probability`` only
        (a message reaches the level exactly when it did before), so a threshold above the alert
        level asks for a clear new high, not only a high ``z``. Still monotone in ``z`` for a given
        state (the discount only applies below the bar, and the graded report grows with ``z``).
        The peak decays with ``novelty_halflife`` and ignores the warm-up transient. It learns from ``learned`` (``z`` without the range check), so a
        value beyond its range does not hide the alerts that follow it. A message that does not
        raise the short-term average (``rising`` False: the calm after an event, whose average
        still lags) is discounted too.
        """
        margin, peak = self.settings.novelty_margin, self.store.fields["peak"][slots]
        bar = (
            peak if alert_open is None else peak + np.where(alert_open, margin, 0.0)
        )  # an open alert's event is reported
        novel = z > bar if rising is None else (z > bar) & rising
        raised = np.where(
            learned > peak, np.minimum(learned + margin, np.maximum(learned, self.settings.open_z)), learned
        )
        raised = np.maximum(raised, peak * self._peak_decay)
        self.store.fields["peak"][slots] = np.where(warm, raised, peak)
        discount = self.settings.novelty_discount
        if discount <= 0:
            return z
        graded = np.minimum(z, self._threshold_z + (z - bar))  # beyond the alert level by no more than it beats the bar
        return np.where(novel, graded, np.minimum(z, self._threshold_z) - discount)

    def _beyond_range(self, slots: np.ndarray, standardised: np.ndarray) -> np.ndarray:
        """How far each value lies beyond its entity's range, in widths of that range (0 inside),
        per feature; then the range widened by ``range_absorb`` of that excess (at 0.5, a level half
        the range's width beyond it stands out by 0.5, 0.2 and 0.09 widths on its first three
        messages). An unknown range (NaN: restored from a checkpoint written before ranges were
        kept) becomes the fit data's range plus this value. Without a fit range (a model fitted
        before ranges were kept) the range is unbounded: 0."""
        low, high = self.store.fields["range_low"][slots], self.store.fields["range_high"][slots]
        unknown = np.isnan(low)
        if unknown.any():
            start_low, start_high = self.store.start_range
            low = np.where(unknown, np.minimum(start_low, standardised), low)
            high = np.where(unknown, np.maximum(start_high, standardised), high)
        above, below = np.maximum(standardised - high, 0.0), np.maximum(low - standardised, 0.0)
        beyond = np.maximum(above, below) / np.maximum(high - low, _TINY)
        absorb = self.settings.range_absorb
        self.store.fields["range_low"][slots] = low - absorb * below
        self.store.fields["range_high"][slots] = high + absorb * above
        return beyond

    def _with_range(self, scores: np.ndarray, beyond: np.ndarray) -> np.ndarray | None:
        """The scores raised for messages beyond their range by more than ``range_tolerance``
        (None when there is none): such a message scores ``_range_z`` fit-time standard deviations
        above the calibration's median at the tolerance, proportionally more further out up to 4x,
        and beyond that in proportion to its distance, so a value twice as far out scores twice as
        high and alerts can be ranked by how far out they are."""
        widths = np.sqrt(np.mean(beyond**2, axis=1))  # across features, as the score
        tolerance = self.settings.range_tolerance
        out_of_range = widths > tolerance
        if not out_of_range.any():
            return None
        calibration = self.model.calibration
        grade = np.maximum(widths / max(tolerance, _TINY), 1.0)
        range_score = np.exp(
            calibration.log_mean + calibration.log_std * self._range_z * np.minimum(grade, _RANGE_GRADE_CAP)
        )
        range_score *= np.maximum(grade / _RANGE_GRADE_CAP, 1.0)
        return np.where(out_of_range, np.maximum(scores, range_score), scores)

    def _drift_rate(self, elapsed: np.ndarray) -> np.ndarray:
        """Weight of this message in the drift baseline: half-life ``drift_halflife`` messages or
        ``drift_halflife_s`` seconds of the entity's own timestamps (``elapsed`` since its previous
        message), whichever is shorter."""
        by_time = 1.0 - np.exp2(-elapsed / self.settings.drift_halflife_s)
        return np.maximum(self._alpha, by_time)

    def _elapsed(self, slots: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
        """Seconds since each entity's previous message (0 for its first, or when out of order)."""
        elapsed = np.clip(timestamps - self.store.fields["last_ts"][slots], 0.0, np.inf)
        return np.nan_to_num(elapsed, posinf=0.0)

    def _update_baseline(
        self,
        slots: np.ndarray,
        log_score: np.ndarray,
        mean: np.ndarray,
        var: np.ndarray,
        warm: np.ndarray,
        rate: np.ndarray,
    ) -> None:
        """Exponentially weighted mean/variance of the log score, fed deviations clipped to
        ``baseline_clip`` standard deviations (skipped during warm-up).

        Clipping makes the baseline robust: an outlier barely moves it, and a persistent change is
        absorbed gradually -- the variance grows geometrically while deviations are clipped, so the
        time to absorb a change grows only with the logarithm of its size.
        """
        alpha = np.where(warm, rate, 0.0)
        bound = self.settings.baseline_clip * np.sqrt(var)
        delta = np.clip(log_score - mean, -bound, bound)
        self.store.fields["base_mean"][slots] = mean + alpha * delta
        self.store.fields["base_var"][slots] = np.maximum((1 - alpha) * (var + alpha * delta**2), _MIN_VAR)

    def _top(self, errors: np.ndarray, values: np.ndarray, expected: np.ndarray) -> list[Contribution]:
        """The ``top_features`` largest shares of the squared error, with measured and expected values."""
        squared = errors**2
        shares = squared / max(float(squared.sum()), _TINY)
        order = np.argsort(-shares)[: self.settings.top_features]
        return [
            Contribution(
                self.model.features[i], round(float(shares[i]), 4), float(values[i]), round(float(expected[i]), 6)
            )
            for i in order
        ]


def waves(entities: Sequence[str]) -> list[np.ndarray]:
    """Split positions into waves in which each entity appears at most once, keeping order.

    >>> [w.tolist() for w in waves(["a", "b", "a", "a", "c"])]
    [[0, 1, 4], [2], [3]]
    """
    if len(set(entities)) == len(entities):  # the common case: every entity once
        return [np.arange(len(entities))] if len(entities) else []
    seen: dict[str, int] = {}
    rank = np.empty(len(entities), dtype=np.int64)
    for i, entity in enumerate(entities):
        rank[i] = seen.get(entity, 0)
        seen[entity] = rank[i] + 1
    order = np.argsort(rank, kind="stable")
    boundaries = np.flatnonzero(np.diff(rank[order])) + 1
    return np.split(order, boundaries) if len(entities) else []


def _standardised_range(model: FittedModel) -> tuple[np.ndarray, np.ndarray] | None:
    """The fit data's range of each feature in the network's (standardised) units; None if unknown."""
    if model.feature_range is None:
        return None
    low, high = (model.feature_range - model.feature_mean) / model.feature_scale
    return low.astype(np.float32), high.astype(np.float32)


def _normal_cdf(z: np.ndarray) -> np.ndarray:
    return torch.special.ndtr(torch.from_numpy(np.asarray(z, dtype=np.float64))).numpy()


@dataclass(frozen=True)
class NullCalibration:
    """What a simulation of normal data sets: the opening ``threshold`` (probability) and the
    ``start_peak`` of a new entity's novelty peak (likelihood z-score)."""

    threshold: float
    start_peak: float


def null_calibration(model: FittedModel) -> NullCalibration:
    """Calibrate ``model``'s alert level on simulated normal data: log scores drawn independently
    from the fit-time calibration's normal distribution, fed through the detector's own
    likelihood (short and long averages, novelty discount) for 1,000 entities.

    * ``start_peak``: the median novelty peak of those entities after 1,000 messages, where a
      normal entity's settles; a new entity starts there, so its first messages are judged as a
      settled entity's (from 0, every early message above the mean would count as new);
    * ``threshold``: the probability that a fraction ``false_alarm_rate`` of their next 2,000
      messages reaches (2 million messages).

    Deterministic (a fixed seed) and computed once per process for given settings and
    calibration (about a second). The time-of-day memory is left out: it can only lower a
    message's likelihood, so the level errs towards fewer alerts.

    >>> from detector.testing import tiny_model
    >>> null = null_calibration(tiny_model())
    >>> 0.9 < null.threshold < 0.999, 1.5 < null.start_peak < 2.5
    (True, True)
    """
    settings, calibration = ScoringSettings(**model.scoring), model.calibration
    key = (settings.model_dump_json(), calibration.log_mean, calibration.log_std)
    if key not in _null_calibrations:
        _null_calibrations[key] = _simulate_null(model, settings)
    return _null_calibrations[key]


def _simulate_null(model: FittedModel, settings: ScoringSettings) -> NullCalibration:
    simulator = Detector(model, max_entities=_NULL_ENTITIES, simulate_null=False)
    n, calibration = _NULL_ENTITIES, model.calibration
    slots = simulator.store.slots_for([str(i) for i in range(n)], np.zeros(n, dtype=np.int32), 0.0)
    rng = np.random.default_rng(0)
    burn_in = settings.warmup_steps + _NULL_BURN_IN
    probabilities = []
    for step in range(burn_in + _NULL_STEPS):
        log_score = calibration.log_mean + calibration.log_std * rng.standard_normal(n)
        warm = np.full(n, step >= settings.warmup_steps)
        probability = simulator._likelihood(slots, log_score, log_score, np.full(n, step == 0), warm, None)
        if step == burn_in - 1:
            start_peak = float(np.median(simulator.store.fields["peak"][slots]))
        if step >= burn_in:
            probabilities.append(probability)
    return NullCalibration(
        float(np.quantile(np.concatenate(probabilities), 1.0 - settings.false_alarm_rate)), start_peak
    )
