"""Alert and dead-letter records, and a publisher that knows when the broker has them.

An alert is published when an entity's alert opens and when it closes (hysteresis lives in
:mod:`detector.scoring`), keyed by entity. Its ``open`` and ``close`` share an ``alert_id``, and
the ``close`` says when the alert opened and how long it lasted. Every timestamp on every topic
is ISO 8601 in UTC (``2026-11-25T01:00:00Z``):

>>> from detector.scoring import Contribution, Decision
>>> record = alert_record(Decision("pump-7", 1795568400.0, 9.5, 0.9995, True, "open", [Contribution("temperature", 0.8, 91.5, 70.2)],
...                                opened_at=1795568400.0), threshold=0.999, model_version="v1", source=Source("sensors", 3, 1200))
>>> record["state"], record["entity"], record["timestamp"], record["source"]["offset"], record["top_features"][0]
('open', 'pump-7', '2026-11-25T01:00:00Z', 1200, {'feature': 'temperature', 'share': 0.8, 'value': 91.5, 'expected': 70.2})
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from kafka import KafkaProducer

from detector.scoring import Decision

__all__ = ["Publisher", "Source", "alert_id", "alert_record", "dead_letter_record", "score_record"]


@dataclass(frozen=True)
class Source:
    """Where a message came from."""

    topic: str
    partition: int
    offset: int


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat().replace("+00:00", "Z")


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
        "top_features": [{"feature": c.feature, "share": c.share, "value": c.value, "expected": c.expected} for c in decision.top_features],
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


def dead_letter_record(raw: bytes | None, reason: str, detail: str, source: Source) -> dict[str, Any]:
    """The JSON body of a dead letter: original bytes (base64), reason and source position."""
    return {
        "type": "dead_letter",
        "reason": reason,
        "detail": detail[:500],
        "source": {"topic": source.topic, "partition": source.partition, "offset": source.offset},
        "original_base64": base64.b64encode(raw).decode() if raw is not None else None,
        "received_at": _iso(time.time()),
    }


class Publisher:
    """Sends JSON records and waits for the broker's acknowledgement of all of them.

    Records whose delivery failed are kept and sent again by :meth:`retry_failed`, so the
    caller can hold its offsets back until everything it produced is acknowledged.
    """

    def __init__(self, producer: KafkaProducer):
        self.producer = producer
        self._pending: list[tuple[str, bytes | None, bytes, Any]] = []
        self._failed: list[tuple[str, bytes | None, bytes]] = []

    def send(self, topic: str, key: str | None, record: dict[str, Any]) -> None:
        """Queue a record (asynchronous)."""
        self._send(topic, key.encode() if key else None, json.dumps(record, separators=(",", ":")).encode())

    def _send(self, topic: str, key: bytes | None, body: bytes) -> None:
        self._pending.append((topic, key, body, self.producer.send(topic, key=key, value=body)))

    def confirm(self, timeout_s: float) -> None:
        """Block until every queued record is acknowledged; raises the first delivery error.

        On a timeout every record stays queued (the producer still holds it), so the next
        ``confirm`` waits for it again; records whose delivery failed are kept for
        :meth:`retry_failed`. Nothing leaves the queue unacknowledged.
        """
        if not self._pending:
            return
        self.producer.flush(timeout=timeout_s)  # raises KafkaTimeoutError, keeping the queue
        pending, self._pending = self._pending, []
        first_error: BaseException | None = None
        for topic, key, body, future in pending:
            if not future.is_done:
                self._pending.append((topic, key, body, future))
                first_error = first_error or TimeoutError("record not acknowledged yet")
            elif future.failed():
                self._failed.append((topic, key, body))
                first_error = first_error or future.exception
        if first_error is not None:
            raise first_error

    def retry_failed(self) -> int:
        """Queue the records whose delivery failed again; returns how many."""
        failed, self._failed = self._failed, []
        for topic, key, body in failed:
            self._send(topic, key, body)
        return len(failed)
