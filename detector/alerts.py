"""Alert records, and a publisher that knows when the broker has them.

Dead letters have their own module, :mod:`detector.deadletter`.

An alert is published when an entity's alert opens and when it closes (hysteresis lives in
:mod:`detector.scoring`), keyed by entity. Its ``open`` and ``close`` share an ``alert_id``, and
the ``close`` says when the alert opened and how long it lasted. Every timestamp on every topic
is ISO 8601 in UTC (``2026-11-25T01:00:00Z``):

>>> from detector.scoring import Contribution, Decision
>>> top = [Contribution("temperature", 0.8, 91.5, 70.2)]
>>> decision = Decision("pump-7", 1795568400.0, 9.5, 0.9995, True, "open", top, opened_at=1795568400.0)
>>> record = alert_record(decision, threshold=0.999, model_version="v1", source=Source("sensors", 3, 1200))
>>> record["state"], record["entity"], record["timestamp"], record["source"]["offset"]
('open', 'pump-7', '2026-11-25T01:00:00Z', 1200)
>>> record["top_features"][0]
{'feature': 'temperature', 'share': 0.8, 'value': 91.5, 'expected': 70.2}
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kafka import KafkaProducer
from kafka.errors import MessageSizeTooLargeError

from detector.deadletter import DeadLetter
from detector.scoring import Decision

__all__ = ["Publisher", "Source", "alert_id", "alert_record", "score_record"]


@dataclass(frozen=True)
class Source:
    """Where a message came from."""

    topic: str
    partition: int
    offset: int


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat().replace("+00:00", "Z")


_ALERT_IDS = uuid.UUID("5b0c3a52-8f1e-4c67-9d3e-2a51f0c7d9e4")  # namespace of alert ids


def alert_id(entity: str, opened_at: float) -> str:
    """The id of the entity's alert that opened at ``opened_at``: the same for its ``open`` and
    ``close``, and for a replayed duplicate of either (a UUID derived from both, no counter to keep).

    >>> alert_id("pump-7", 1795568400.0) == alert_id("pump-7", 1795568400.0) != alert_id("pump-8", 1795568400.0)
    True
    """
    return str(uuid.uuid5(_ALERT_IDS, f"{entity}\x00{opened_at!r}"))


def alert_record(decision: Decision, threshold: float, model_version: str, source: Source) -> dict[str, Any]:
    """The JSON body of an alert (state ``open`` or ``close``). ``alert_id``, ``opened_at`` and
    ``duration_s`` are null only for an alert opened before the service kept its opening time."""
    opened = decision.opened_at
    return {
        "type": "anomaly_alert",
        "state": decision.event,
        "alert_id": alert_id(decision.entity, opened) if opened is not None else None,
        "entity": decision.entity,
        "timestamp": _iso(decision.timestamp),
        "opened_at": _iso(opened) if opened is not None else None,
        "duration_s": round(decision.timestamp - opened, 3) if opened is not None else None,
        "score": round(decision.score, 6),
        "probability": round(decision.probability, 6),
        "threshold": threshold,
        "model_version": model_version,
        "source": {"topic": source.topic, "partition": source.partition, "offset": source.offset},
        "top_features": [
            {"feature": c.feature, "share": c.share, "value": c.value, "expected": c.expected}
            for c in decision.top_features
        ],
        "decided_at": _iso(time.time()),
    }


def score_record(decision: Decision, source: Source) -> dict[str, Any]:
    """The JSON body of a per-message decision (published only when ``scores_topic`` is set)."""
    return {
        "entity": decision.entity,
        "timestamp": _iso(decision.timestamp),
        "score": decision.score,
        "probability": decision.probability,
        "is_anomaly": int(decision.is_anomaly),
        "source": {"topic": source.topic, "partition": source.partition, "offset": source.offset},
    }


@dataclass
class _Sent:
    """A record handed to the producer, kept until the broker acknowledges it."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None
    future: Any = None
    letter: DeadLetter | None = None  # a dead letter, whose value may be cut to fit


class Publisher:
    """Sends records and waits for the broker's acknowledgement of all of them.

    Records whose delivery failed are kept and sent again by :meth:`retry_failed`, so the
    caller can hold its offsets back until everything it produced is acknowledged. A dead
    letter too large for the producer or the broker is sent again with its value cut to half
    its size, until it fits or has no value left: never retried unchanged for ever.
    """

    def __init__(self, producer: KafkaProducer):
        self.producer = producer
        self._pending: list[_Sent] = []
        self._failed: list[_Sent] = []

    def send(self, topic: str, key: str | None, record: dict[str, Any]) -> None:
        """Queue a JSON record (asynchronous)."""
        self._send(
            _Sent(topic, key.encode() if key else None, json.dumps(record, separators=(",", ":")).encode(), None)
        )

    def send_dead_letter(self, topic: str, letter: DeadLetter, max_bytes: int) -> None:
        """Queue a dead letter, its value cut to keep the record within ``max_bytes``."""
        self._send(_letter(topic, letter.cut_to(max_bytes)))

    def _send(self, sent: _Sent) -> None:
        while True:
            try:
                sent.future = self.producer.send(sent.topic, key=sent.key, value=sent.value, headers=sent.headers)
                break
            except MessageSizeTooLargeError:  # above the producer's max_request_size
                smaller = _smaller(sent)
                if smaller is None:
                    raise
                sent = smaller
        self._pending.append(sent)

    def confirm(self, timeout_s: float) -> None:
        """Block until every queued record is acknowledged; raises the first delivery error.

        On a timeout every record stays queued (the producer still holds it), so the next
        ``confirm`` waits for it again; records whose delivery failed are kept for
        :meth:`retry_failed`. Nothing leaves the queue unacknowledged.
        """
        while self._pending:
            self.producer.flush(timeout=timeout_s)  # raises KafkaTimeoutError, keeping the queue
            pending, self._pending = self._pending, []
            first_error: BaseException | None = None
            for sent in pending:
                if not sent.future.is_done:
                    self._pending.append(sent)
                    first_error = first_error or TimeoutError("record not acknowledged yet")
                elif sent.future.failed():
                    smaller = _smaller(sent) if isinstance(sent.future.exception, MessageSizeTooLargeError) else None
                    if smaller is not None:
                        self._send(smaller)  # the broker's limit is below ours: waited for on the next round
                    else:
                        self._failed.append(sent)
                        first_error = first_error or sent.future.exception
            if first_error is not None:
                raise first_error

    def retry_failed(self) -> int:
        """Queue the records whose delivery failed again; returns how many."""
        failed, self._failed = self._failed, []
        for sent in failed:
            self._send(_Sent(sent.topic, sent.key, sent.value, sent.headers, letter=sent.letter))
        return len(failed)


def _letter(topic: str, letter: DeadLetter) -> _Sent:
    return _Sent(topic, letter.key, letter.value, letter.headers, letter=letter)


def _smaller(sent: _Sent) -> _Sent | None:
    """The dead letter ``sent`` with its value cut to half its record size; None when it is not a
    dead letter or has no value left to cut."""
    if sent.letter is None or not sent.letter.value:
        return None
    return _letter(sent.topic, sent.letter.cut_to(sent.letter.size() // 2))
