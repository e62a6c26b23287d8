"""The detector: observations in, a score, a probability and an alert decision out per message.

``detector score`` (files), ``fit``'s held-out part, ``evaluate`` and ``detector run`` (Kafka)
all call :meth:`Detector.process_columns`, so a backtest means what production does. For each
batch it runs the recurrent network -- one batched step per wave of distinct entities, or each
entity's rows in one call when a batch holds many rows per entity (:mod:`detector.sequence`) --
and then the compiled scoring stages over the rows in order (:mod:`detector.kernel`,
:mod:`detector.stages`): reconstruction error, range check, time-of-day memory, likelihood with
novelty, drifting baseline, hysteresis. Each entity's state lives in :class:`EntityStore`, one
named structure per stage. docs/scoring.md gives the method and the reason for each rule.

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
from typing import Any, Literal, NamedTuple

import numpy as np
import torch

from detector.config import ScoringSettings
from detector.inference import stepping
from detector.kernel import score_rows, timeline
from detector.model import FittedModel
from detector.null_calibration import NullCalibration, null_calibration
from detector.params import params_of
from detector.schema import Columns, Observation
from detector.sequence import reconstruct_sequences
from detector.stages import EVENT_OPEN, TINY
from detector.state import EntityStore

__all__ = ["Contribution", "Decision", "Detector", "NullCalibration", "Outcomes", "null_calibration", "waves"]

_SEQUENCE_ROWS_PER_ENTITY = 2  # a batch with at least this many rows per entity takes the sequence path


class Contribution(NamedTuple):
    """A feature named in an alert: its share of the error, the value measured and the value the
    model expected (in the data's units)."""

    feature: str
    share: float
    value: float
    expected: float


@dataclass(slots=True)  # not frozen: cheaper to build, and one is built per message
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
    anomalous, ``opened_at`` when the alert of each event opened (NaN: unknown). With
    ``drop_stale``, ``stale[i]`` marks a message older than its entity's last one: it was not
    stepped (score 0, no event) and ``previous[i]`` is that last timestamp.
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
    # events decided by a model other than the Detector's (a rollout): position -> (model version, alert level)
    decided_by: dict[int, tuple[str, float]] = field(default_factory=dict)

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
    ``params`` holds the numbers the stages use (:mod:`detector.stages`).
    """

    def __init__(
        self, model: FittedModel, max_entities: int = 1_000_000, ttl_s: float = math.inf, simulate_null: bool = True
    ):
        self.model = model
        self.settings = ScoringSettings(**model.scoring)
        calibration = model.calibration
        # the probability at or above which an alert opens, and where a new entity's novelty peak starts
        null = null_calibration(model) if simulate_null else NullCalibration(self.settings.open_probability, 0.0)
        self.params = params_of(self.settings, calibration, null.threshold)
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
        self._mean = model.feature_mean.astype(np.float32)
        self._scale = model.feature_scale.astype(np.float32)

    @property
    def threshold(self) -> float:
        """The probability at or above which an alert opens."""
        return self.params.threshold

    @threshold.setter
    def threshold(self, threshold: float) -> None:
        self.params = params_of(self.settings, self.model.calibration, threshold)

    def score_one(self, entity: str, values: Sequence[float], timestamp: float = 0.0) -> Decision:
        """Score a single observation (convenience around :meth:`process`)."""
        return self.process([Observation(entity, timestamp, list(values))])[0]

    def process(
        self, observations: Sequence[Observation], owner: int | Sequence[int] | np.ndarray = 0, now: float | None = None
    ) -> list[Decision]:
        """Score ``observations`` in order (see :meth:`process_columns`)."""
        return self.process_columns(observations, owner, now).decisions()

    def process_columns(
        self,
        batch: Columns | Sequence[Observation],
        owner: int | Sequence[int] | np.ndarray = 0,
        now: float | None = None,
        drop_stale: bool = False,
    ) -> Outcomes:
        """:meth:`process` with columns in and out (cheaper for large batches).

        A batch with many rows per entity runs the network over each entity's rows in one call
        (:mod:`detector.sequence`); otherwise one batched step per wave of distinct entities.
        Both feed the same compiled stages, in the rows' order.

        ``drop_stale``: a message older than its entity's last one is not stepped but marked in
        ``Outcomes.stale`` (the service dead-letters it).

        >>> from detector.testing import tiny_model
        >>> detector = Detector(tiny_model())
        >>> late = [Observation("p1", 20.0, [0.1, 0.2]), Observation("p1", 10.0, [0.1, 0.2])]
        >>> out = detector.process_columns(late, drop_stale=True)
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
        distinct = dict.fromkeys(columns.entities)
        if n >= _SEQUENCE_ROWS_PER_ENTITY * len(distinct) and len(distinct) <= self.store.max_entities:
            self._score_sequences(out, list(distinct), owners, now, drop_stale)
            return out
        for wave in waves(columns.entities):
            entities = columns.entities if len(wave) == n else [columns.entities[i] for i in wave]
            slots = self.store.slots_for(entities, owners[wave], now)
            elapsed, rows = self._timeline(out, wave, np.arange(len(wave)), slots, drop_stale)
            if not len(rows):
                continue
            wave, slots = wave[rows], slots[rows]
            standardised = self._standardise(columns.values[wave])
            x, index = torch.from_numpy(standardised), torch.from_numpy(slots)
            with stepping():
                reconstruction, new_state = self.model.network.step(
                    x,
                    self.store.rnn[index],
                    torch.from_numpy(columns.timestamps[wave]),
                    torch.from_numpy(elapsed[rows]),
                )
            self.store.rnn[index] = new_state
            self._score(out, wave, slots, standardised, reconstruction, elapsed[rows])
        return out

    def _score_sequences(
        self, out: Outcomes, distinct: list[str], owners: np.ndarray, now: float, drop_stale: bool
    ) -> None:
        """Score a batch with many rows per entity: the network over each entity's rows at once."""
        columns = out.batch
        number = {entity: i for i, entity in enumerate(distinct)}
        groups = np.fromiter(map(number.__getitem__, columns.entities), dtype=np.int64, count=len(columns))
        last_owner = np.zeros(len(distinct), dtype=np.int32)
        last_owner[groups] = owners  # each entity's owner: its last row's, as stepping would leave it
        slots = self.store.slots_for(distinct, last_owner, now)
        elapsed, rows = self._timeline(out, np.arange(len(columns)), groups, slots, drop_stale)
        standardised = self._standardise(columns.values[rows])
        index = torch.from_numpy(slots)
        reconstruction, new_states = reconstruct_sequences(
            self.model.network,
            self.store.rnn[index],
            standardised,
            groups[rows],
            columns.timestamps[rows],
            elapsed[rows],
        )
        self.store.rnn[index] = new_states
        self._score(out, rows, slots[groups[rows]], standardised, reconstruction, elapsed[rows])

    def _timeline(
        self, out: Outcomes, positions: np.ndarray, groups: np.ndarray, slots: np.ndarray, drop_stale: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """(elapsed seconds of each row at ``positions``, the rows to score): stale rows are marked in ``out``."""
        elapsed, stale, previous = timeline(
            groups, out.batch.timestamps[positions], self.store.hysteresis.last_ts[slots], drop_stale
        )
        if stale.any():
            out.stale[positions[stale]] = True
            out.previous.update(zip(positions[stale].tolist(), previous[stale].tolist(), strict=True))
        return elapsed, np.flatnonzero(~stale)

    def _standardise(self, values: np.ndarray) -> np.ndarray:
        return (values.astype(np.float32) - self._mean) / self._scale

    def _score(
        self,
        out: Outcomes,
        positions: np.ndarray,
        slots: np.ndarray,
        standardised: np.ndarray,
        reconstruction: torch.Tensor,
        elapsed: np.ndarray,
    ) -> None:
        """Run the stages over rows ``positions`` of ``out``'s batch (in order) and fill in their outcomes."""
        store, model = self.store, self.model
        errors = (torch.from_numpy(standardised) - reconstruction).double().numpy() / model.residual_scale
        score, probability, is_anomaly, event, opened_at, range_decided, beyond = score_rows(
            slots,
            errors,
            standardised,
            out.batch.timestamps[positions],
            elapsed,
            store.error,
            store.range,
            store.seasonal,
            store.likelihood,
            store.novelty,
            store.baseline,
            store.hysteresis,
            *store.start_range,
            self.params,
        )
        out.score[positions], out.probability[positions], out.is_anomaly[positions] = score, probability, is_anomaly
        for i in np.flatnonzero(event).tolist():
            position = int(positions[i])
            out.events[position] = "open" if event[i] == EVENT_OPEN else "close"
            out.opened_at[position] = float(opened_at[i])
        anomalous = np.flatnonzero(is_anomaly)
        if len(anomalous):  # what the model expected, in the data's units; the features out of range where it decided
            expected = reconstruction[torch.from_numpy(anomalous)].double().numpy() * model.feature_scale
            expected += model.feature_mean
            values = out.batch.values[positions[anomalous]]
            for row, i in enumerate(anomalous.tolist()):
                share_of = beyond[i].astype(np.float64) if range_decided[i] else errors[i]
                out.top_features[int(positions[i])] = self._top(share_of, values[row], expected[row])

    def _top(self, errors: np.ndarray, values: np.ndarray, expected: np.ndarray) -> list[Contribution]:
        """The ``top_features`` largest shares of the squared error, with measured and expected values."""
        squared = errors**2
        shares = squared / max(float(squared.sum()), TINY)
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
