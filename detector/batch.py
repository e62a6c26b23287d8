"""Polling a micro-batch, and the batch as the later steps see it.

:class:`Poller` takes up to ``batch_max_messages`` records: it waits at most ``batch_max_ms``
for the first ones, then takes what kafka-python has already fetched without waiting, so a
service that has caught up adds no latency. Records fetched before a rebalance are dropped:
their partitions were re-restored and re-positioned, so they come again.

:class:`Batch` lines the records of several partitions up as one sequence (the order the
detector steps them in) and tells, for any position, where the record came from and whether it
is new or replayed to rebuild states.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from kafka import KafkaConsumer, TopicPartition

from detector.alerts import Source
from detector.offsets import Positions
from detector.partition_states import PartitionStates

__all__ = ["Batch", "Fetched", "Poller"]


@dataclass(slots=True)
class Fetched:
    """Records polled from one partition (in offset order), waiting to be processed."""

    tp: TopicPartition
    records: list[Any]
    epoch: int  # assignment epoch when fetched: records from before a rebalance are dropped


def count(fetched: Sequence[Fetched]) -> int:
    """Records in ``fetched``."""
    return sum(len(f.records) for f in fetched)


class Ownership(Protocol):
    """What the poller needs to know of the assignment (see :class:`detector.recovery.PartitionRecovery`)."""

    @property
    def owned(self) -> Collection[TopicPartition]: ...

    @property
    def epoch(self) -> int: ...


class Poller:
    """Polls micro-batches from the consumer for the partitions that are owned and restored."""

    def __init__(
        self,
        consumer: KafkaConsumer,
        ownership: Ownership,
        batch_max_messages: int,
        batch_max_ms: int,
        max_poll_records: int,
        stop: threading.Event,
    ):
        self.consumer, self.ownership, self.stop = consumer, ownership, stop
        self.batch_max_messages, self.batch_max_ms = batch_max_messages, batch_max_ms
        self.max_poll_records = max_poll_records

    def poll(self, held: int = 0) -> list[Fetched]:
        """Up to ``batch_max_messages - held`` records (``held``: records already in hand)."""
        deadline = time.monotonic() + self.batch_max_ms / 1000
        fetched: list[Fetched] = []
        taken = 0
        while taken + held < self.batch_max_messages and not self.stop.is_set():
            remaining_ms = 0 if taken else int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0 and not taken:
                break
            wanted = min(self.batch_max_messages - taken - held, self.max_poll_records)
            polled = self.consumer.poll(timeout_ms=remaining_ms, max_records=wanted)
            got = 0
            for tp, records in polled.items():
                got += len(records)
                if tp in self.ownership.owned:
                    fetched.append(Fetched(tp, records, self.ownership.epoch))
                    taken += len(records)
            if taken and got < wanted:
                break  # kafka-python's buffer is drained: another poll would only wait on its network thread
        epoch = self.ownership.epoch
        if not fetched or fetched[0].epoch == epoch:
            return fetched  # no rebalance since the first records were fetched (epochs only grow)
        return [f for f in fetched if f.epoch == epoch and f.tp in self.ownership.owned]


class Batch:
    """The records of a micro-batch in one sequence, with where each came from."""

    def __init__(self, fetched: Sequence[Fetched], positions: Positions):
        self.fetched = list(fetched)
        self.records = [r for f in self.fetched for r in f.records]
        self._chunk = np.repeat(np.arange(len(self.fetched)), [len(f.records) for f in self.fetched])
        self.live = self._live(positions)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def values(self) -> list[bytes | None]:
        """Each record's value, as it came."""
        return [r.value for r in self.records]

    @property
    def keys(self) -> list[bytes | None]:
        """Each record's key, as it came."""
        return [r.key for r in self.records]

    @property
    def partitions(self) -> set[TopicPartition]:
        """The partitions the batch holds records of."""
        return {f.tp for f in self.fetched}

    def owners(self, states: PartitionStates) -> np.ndarray:
        """Per record: the owner id of its partition's states."""
        return states.owners([f.tp for f in self.fetched])[self._chunk]

    def partition_of(self, position: int) -> TopicPartition:
        """The partition record ``position`` came from."""
        return self.fetched[self._chunk[position]].tp

    def source(self, position: int) -> Source:
        """Topic, partition and offset of record ``position`` (alerts and scores carry it)."""
        tp = self.partition_of(position)
        return Source(tp.topic, tp.partition, self.records[position].offset)

    def last_offsets(self) -> dict[TopicPartition, int]:
        """The last offset of each partition in the batch (chunks of a partition come in offset order)."""
        return {f.tp: f.records[-1].offset for f in self.fetched}

    def _live(self, positions: Positions) -> np.ndarray:
        """Per record: new (True) rather than replayed to rebuild state (no outputs)."""
        if not positions.replaying:
            return np.ones(len(self.records), dtype=bool)
        parts = [
            np.fromiter((positions.is_live(f.tp, r.offset) for r in f.records), dtype=bool, count=len(f.records))
            for f in self.fetched
        ]
        return np.concatenate(parts)
