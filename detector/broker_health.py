"""Broker health as the service sees it: group membership, heartbeats, reconnects, readiness.

The only user of :mod:`detector.kafka_internals` (kafka-python has no public call for whether
the group coordinator is known, or when it last answered a heartbeat). An idle service has
nothing to fail on, so ``/readyz`` and the ``stream.broker_lost`` / ``stream.broker_back``
events are where a broker outage shows; ``/healthz`` fails too once the loop is blocked on
work it cannot acknowledge.

>>> broker = BrokerHealth(consumer, producer, metrics, health, session_timeout_s=10)  # doctest: +SKIP
>>> broker.joined()                                 # in the assignment callback  # doctest: +SKIP
>>> broker.check(owns_partitions=True)              # about once a second         # doctest: +SKIP
"""

from __future__ import annotations

import time

from kafka import KafkaConsumer, KafkaProducer

from detector.kafka_internals import check_internals, coordinator_unknown, last_heartbeat_answer
from detector.logs import get_logger
from detector.metrics import Health, Metrics

__all__ = ["BrokerHealth"]

log = get_logger(__name__)


class BrokerHealth:
    """Tracks the group join and the coordinator's heartbeats; sets readiness and counts reconnects."""

    def __init__(
        self,
        consumer: KafkaConsumer,
        producer: KafkaProducer,
        metrics: Metrics,
        health: Health,
        session_timeout_s: float,
    ):
        check_internals(consumer)
        self.consumer, self.producer, self.metrics, self.health = consumer, producer, metrics, health
        self.session_timeout_s = session_timeout_s
        self.in_group = False  # a join completed (partitions assigned, maybe none) and no rejoin began since
        self._joined_at = float("-inf")  # monotonic time of the last completed join
        self._lost = False
        self._silent = False  # the last check found no heartbeat answer for a session timeout
        self._connections_seen: float | None = None

    def joined(self) -> None:
        """A group join completed (the assignment callback)."""
        self.in_group, self._joined_at = True, time.monotonic()

    def rejoining(self) -> None:
        """A group (re)join began (the revocation callback)."""
        self.in_group = False

    def finish_join(self, timeout_s: float) -> None:
        """Let a group join in progress complete before leaving (shutdown), for at most ``timeout_s``.

        A member that leaves while its JoinGroup is pending can stay behind as a ghost that the
        bundled Tansu broker keeps electing group leader, so no member ever gets partitions.
        Records polled here are neither processed nor committed: the next owner gets them.
        """
        deadline = time.monotonic() + timeout_s
        while not self.in_group and time.monotonic() < deadline:
            self.consumer.poll(timeout_ms=100)
        if not self.in_group:
            log.warning("service.leaving_mid_join", note="the group join did not complete before shutdown")

    def coordinator_unknown(self) -> bool:
        """True while the group coordinator is not known (asynchronous commits are unsafe)."""
        return coordinator_unknown(self.consumer)

    def check(self, owns_partitions: bool) -> None:
        """Count reconnects; judge whether the broker is lost and set readiness when that changes."""
        self._count_reconnects()
        if owns_partitions:
            self._check_heartbeats()

    def _check_heartbeats(self) -> None:
        """Lost when the coordinator has not answered a heartbeat for a session timeout, seen on
        two checks in a row (a loop that was just blocked runs a check ahead of the heartbeat's
        answer), counted from the join if it answered none since."""
        last = last_heartbeat_answer(self.consumer)
        silent = time.monotonic() - max(last, self._joined_at)
        lost = silent > self.session_timeout_s
        confirmed, self._silent = self._silent, lost
        if lost and not self._lost and not confirmed:
            return
        if lost != self._lost:
            self._lost = lost
            self.health.set_ready(not lost, f"no heartbeat answer from the broker for {silent:.0f} s" if lost else "")
            (log.error if lost else log.info)(
                "stream.broker_lost" if lost else "stream.broker_back", silent_s=round(silent, 1)
            )

    def _count_reconnects(self) -> None:
        created = 0.0
        for client in (self.consumer, self.producer):
            for values in (client.metrics() or {}).values():
                created += float(values.get("connection-creation-total", 0.0)) if isinstance(values, dict) else 0.0
        if self._connections_seen is not None and created > self._connections_seen:
            self.metrics.broker_reconnected()
            log.warning("stream.broker_reconnected", connections_created=created - self._connections_seen)
        self._connections_seen = max(created, self._connections_seen or 0.0)
