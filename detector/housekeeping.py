"""Once-a-second upkeep of the running service: idle entities evicted, gauges set, broker checked.

It follows the Detector :class:`~detector.partition_states.PartitionStates` holds: a new one
(a reload) counts its evictions from zero.

Each of these reads counters or clients that are not free to read (kafka-python's ``metrics()``
builds a dict per call), so they run at most once a second rather than every loop iteration.
"""

from __future__ import annotations

import time
from collections.abc import Collection

from kafka import KafkaConsumer, TopicPartition

from detector.broker_health import BrokerHealth
from detector.logs import get_logger
from detector.metrics import Metrics
from detector.offsets import Positions
from detector.partition_states import PartitionStates

__all__ = ["Housekeeping"]

log = get_logger(__name__)
EVERY_S = 1.0


class Housekeeping:
    """Evicts idle entities, sets the entity, eviction and lag metrics, and runs the broker checks."""

    def __init__(
        self,
        consumer: KafkaConsumer,
        states: PartitionStates,
        positions: Positions,
        broker: BrokerHealth,
        metrics: Metrics,
    ):
        self.consumer, self.states, self.positions, self.broker, self.metrics = (
            consumer,
            states,
            positions,
            broker,
            metrics,
        )
        self._last = float("-inf")
        self._store = states.detector.store  # whose evictions were seen
        self._evictions_seen = {"ttl": 0, "capacity": 0}

    def tick(self, owned: Collection[TopicPartition]) -> None:
        """Run the upkeep if a second has passed since the last time."""
        if time.monotonic() - self._last < EVERY_S:
            return
        self._last = time.monotonic()
        store, now = self.states.detector.store, time.time()
        if store is not self._store:
            self._store, self._evictions_seen = store, {"ttl": 0, "capacity": 0}
        store.evict_idle(now)
        self.states.rollout.evict_idle(now)
        self.metrics.set_entities_on_previous_model(self.states.rollout.entities())
        for reason, total in store.evictions.items():
            seen = self._evictions_seen.get(reason, 0)
            if total > seen:
                self.metrics.eviction(reason, total - seen)
                self._evictions_seen[reason] = total
        self.metrics.set_entities(len(store))
        for tp in owned:
            highwater = self.consumer.highwater(tp)
            if highwater is not None:
                self.metrics.set_lag(tp.topic, tp.partition, self.positions.lag(tp, highwater))
        self.broker.check(owns_partitions=bool(owned))
