"""A batch's way from raw records to outcomes, where one message's failure is only its own.

:class:`BatchGuard` decodes a micro-batch, refuses what cannot be scored (a timestamp too far
ahead of the wall clock, a value the model's float32 arithmetic cannot hold) and steps the
rest in one batch. Every refusal is a :class:`Refused` (position, :class:`BadMessage`, stage)
for the dead-letter topic; nothing raised by one message escapes.

A batched step that raises, or gives a non-finite score, cannot be pinned to one message: the
states of the batch's entities are dropped (the step may have half-updated them, and applying
a message twice would corrupt them silently) and the batch is stepped again message by
message, each step undone and dead-lettered if it fails. Those entities restart from fresh
states: exactness is given up for them, only on this path, never the loop.

>>> from detector.testing import tiny_model
>>> from detector.scoring import Detector
>>> from detector.schema import MessageFields
>>> decoder = MessageDecoder(["a", "b"], MessageFields())
>>> guard = BatchGuard(decoder, Detector(tiny_model()), max_future_skew_s=86400, clock=lambda: 2e9)
>>> raws = [
...     b'{"entity": "p1", "timestamp": 1e9, "values": {"a": 1, "b": 2}}',
...     b'{"entity": "p1", "timestamp": 3e9, "values": {"a": 1, "b": 2}}',
...     b"[[[",
... ]
>>> result = guard.score(raws, [None] * 3, np.zeros(3, dtype=np.int32))
>>> result.accepted.tolist(), [(r.position, r.error.reason, r.stage) for r in result.refused]
([0], [(2, 'not_json', 'decode'), (1, 'future_timestamp', 'validate')])
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from detector.logs import get_logger
from detector.schema import BadMessage, Columns, MessageDecoder
from detector.scoring import Detector, Outcomes

__all__ = ["BatchGuard", "Guarded", "Refused"]

log = get_logger(__name__)
_FAILURE_LOG_EVERY_S = 10.0


class Refused(NamedTuple):
    """A message of the batch that becomes a dead letter, and where it failed (decode, validate, score)."""

    position: int
    error: BadMessage
    stage: str


@dataclass
class Guarded:
    """A guarded batch: positions scored (ascending), their outcomes, the refused messages."""

    accepted: np.ndarray
    outcomes: Outcomes
    refused: list[Refused] = field(default_factory=list)
    step_seconds: float = 0.0
    fell_back: bool = False  # the batched step failed and the batch was stepped message by message


class BatchGuard:
    """Decode, validate and step micro-batches for one detector (see the module docstring)."""

    def __init__(
        self,
        decode: MessageDecoder,
        detector: Detector,
        max_future_skew_s: float,
        clock: Callable[[], float] = time.time,
    ):
        self.decode, self.detector = decode, detector
        self.max_future_skew_s, self.clock = max_future_skew_s, clock
        model = detector.model
        self._mean, self._scale = model.feature_mean.astype(np.float32), model.feature_scale.astype(np.float32)
        # below this magnitude no value can overflow once standardised: the exact check is skipped
        self._safe = float(np.finfo(np.float32).max) / 2 * min(1.0, float(self._scale.min())) - float(
            np.abs(self._mean).max(initial=0.0)
        )
        self._failures, self._last_failure_log = 0, float("-inf")  # batched steps that failed; when last logged

    def score(
        self, raws: Sequence[bytes | None], keys: Sequence[bytes | None], owners: np.ndarray, drop_stale: bool = False
    ) -> Guarded:
        """Outcomes of the batch; ``owners[i]`` is the owner id (partition) of record ``i``."""
        accepted, batch, refused = self._decode(raws, keys)
        accepted, batch = self._validate(accepted, batch, refused)
        started = time.perf_counter()
        now = self.clock()
        try:
            outcomes = self.detector.process_columns(batch, owner=owners[accepted], now=now, drop_stale=drop_stale)
            _check_finite(outcomes)
            return Guarded(accepted, outcomes, refused, time.perf_counter() - started)
        except Exception as error:  # noqa: BLE001 - any failure of the batched step falls back to one by one
            self._log_failure(error, len(batch))
        self.detector.store.forget(batch.entities)
        keep, outcomes = self._one_by_one(accepted, batch, owners[accepted], now, drop_stale, refused)
        return Guarded(accepted[keep], outcomes, refused, time.perf_counter() - started, fell_back=True)

    def _log_failure(self, error: BaseException, messages: int) -> None:
        """One error event per failure, at most one every ten seconds (with the count since the last)."""
        self._failures += 1
        if time.monotonic() - self._last_failure_log >= _FAILURE_LOG_EVERY_S:
            self._last_failure_log = time.monotonic()
            log.error(
                "stream.batch_step_failed",
                error=_describe(error),
                messages=messages,
                failures=self._failures,
                note="stepping the batch message by message; its entities restart from fresh states",
            )
            self._failures = 0

    def _decode(
        self, raws: Sequence[bytes | None], keys: Sequence[bytes | None]
    ) -> tuple[np.ndarray, Columns, list[Refused]]:
        try:
            accepted, batch, dead = self.decode.decode_many(raws, keys)
            return accepted, batch, [Refused(i, error, "decode") for i, error in dead]
        except Exception:  # noqa: BLE001 - the decoder guards each message; this is the guard of that guard
            pass
        positions, observations, refused = [], [], []
        for i, (raw, key) in enumerate(zip(raws, keys, strict=True)):
            try:
                observations.append(self.decode(raw, key))
                positions.append(i)
            except BadMessage as error:
                refused.append(Refused(i, error, "decode"))
            except Exception as error:  # noqa: BLE001 - whatever one message raises makes it a dead letter
                refused.append(Refused(i, BadMessage.unexpected(error), "decode"))
        return np.asarray(positions, dtype=np.int64), Columns.of(observations, len(self.decode.features)), refused

    def _validate(self, accepted: np.ndarray, batch: Columns, refused: list[Refused]) -> tuple[np.ndarray, Columns]:
        """Refuse timestamps beyond the allowed skew and values that overflow the model's float32."""
        overflow = np.zeros(len(batch), dtype=bool)
        if len(batch) and np.abs(batch.values).max() > self._safe:
            with np.errstate(over="ignore", invalid="ignore"):
                standardised = (
                    batch.values.astype(np.float32) - self._mean
                ) / self._scale  # as the detector's step computes it
            overflow = ~np.isfinite(standardised).all(axis=1)
        future = batch.timestamps > self.clock() + self.max_future_skew_s
        bad = overflow | future
        if not bad.any():
            return accepted, batch
        for i in np.flatnonzero(bad).tolist():
            if future[i]:
                error = BadMessage(
                    "future_timestamp",
                    f"timestamp {batch.timestamps[i]:.0f} is more than stream.max_future_skew_s "
                    f"({self.max_future_skew_s:g} s) ahead of the clock",
                )
            else:
                error = BadMessage("non_finite", "a feature value is beyond the range the model computes in (float32)")
            refused.append(Refused(int(accepted[i]), error, "validate"))
        keep = np.flatnonzero(~bad)
        return accepted[keep], _subset(batch, keep)

    def _one_by_one(
        self,
        accepted: np.ndarray,
        batch: Columns,
        owners: np.ndarray,
        now: float,
        drop_stale: bool,
        refused: list[Refused],
    ) -> tuple[np.ndarray, Outcomes]:
        """Step each message alone; a failing one is undone and refused.

        Returns the kept positions in ``batch`` and their outcomes."""
        store, kept, parts = self.detector.store, [], []
        for i in range(len(batch)):
            single = _subset(batch, np.array([i]))
            before = store.snapshot(single.entities)
            try:
                outcome = self.detector.process_columns(single, owner=int(owners[i]), now=now, drop_stale=drop_stale)
                _check_finite(outcome)
            except Exception as error:  # noqa: BLE001 - one message's failure is only its own: undo it, refuse it
                store.roll_back(before)
                reason = error if isinstance(error, BadMessage) else BadMessage.unexpected(error)
                refused.append(Refused(int(accepted[i]), reason, "score"))
                continue
            kept.append(i)
            parts.append(outcome)
        keep = np.asarray(kept, dtype=np.int64)
        return keep, _concatenate(_subset(batch, keep), parts)


def _check_finite(outcomes: Outcomes) -> None:
    """Raise when a stepped message got a non-finite score or probability (its state is then suspect)."""
    stepped = ~outcomes.stale
    if not (np.isfinite(outcomes.score[stepped]).all() and np.isfinite(outcomes.probability[stepped]).all()):
        raise BadMessage("non_finite", "scoring gave a non-finite score")


def _subset(batch: Columns, keep: np.ndarray) -> Columns:
    sources = [batch.sources[i] for i in keep] if batch.sources is not None else None
    return Columns([batch.entities[i] for i in keep], batch.timestamps[keep], batch.values[keep], sources)


def _concatenate(batch: Columns, parts: list[Outcomes]) -> Outcomes:
    """One :class:`Outcomes` of single-message outcomes, in order."""
    n = len(parts)
    out = Outcomes(
        batch, np.zeros(n), np.zeros(n), np.zeros(n, dtype=bool), [None] * n, {}, np.zeros(n, dtype=bool), {}
    )
    for i, part in enumerate(parts):
        out.score[i], out.probability[i], out.is_anomaly[i], out.stale[i] = (
            part.score[0],
            part.probability[0],
            part.is_anomaly[0],
            part.stale[0],
        )
        out.events[i] = part.events[0]
        if 0 in part.top_features:
            out.top_features[i] = part.top_features[0]
        if 0 in part.previous:
            out.previous[i] = part.previous[0]
    return out


def _describe(error: BaseException) -> str:
    try:
        return f"{type(error).__name__}: {error}"[:300]
    except Exception:  # noqa: BLE001 - an exception whose str() raises is still described by its type
        return type(error).__name__
