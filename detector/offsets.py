"""Offsets and commits: where each owned partition stands, and what may be committed.

:class:`Positions` is the bookkeeping, with no Kafka in it: the next offset to process per
partition, the offset up to which a restored partition replays (updating states, publishing
nothing), and the offsets whose commit failed and are retried with the next commit. Its rules:

* a commit never moves a partition's committed offset back: while it replays up to its
  committed offset, it commits nothing (a crash meanwhile would have the next owner publish
  everything after that offset a second time);
* a failed commit is retried with the next one, never dropped.

:class:`Committer` sends the commits. They are asynchronous, with at most one in flight: the
broker round trip overlaps the next batch's poll and step, and :meth:`Committer.await_commit`
settles it before that batch publishes anything, so at most one batch is ever published but not
committed, and the duplicates a crash can cause stay within one batch.

>>> positions = Positions()
>>> tp = TopicPartition("sensors", 0)
>>> positions.start(tp, 100, replay_until=120)
>>> positions.advance({tp: 109}); positions.committable({tp})
{}
>>> positions.advance({tp: 129}); positions.committable({tp})
{TopicPartition(topic='sensors', partition=0): 130}
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata

from detector.logs import get_logger
from detector.metrics import Metrics

__all__ = ["Committer", "Positions"]

log = get_logger(__name__)


class Positions:
    """Next offset, replay boundary and commit retries of each owned partition."""

    def __init__(self) -> None:
        self.next_offset: dict[TopicPartition, int] = {}
        self.replay_until: dict[TopicPartition, int] = {}  # replayed (states only, no outputs) below this offset
        self._retry: dict[TopicPartition, int] = {}  # offsets whose commit failed

    def __contains__(self, tp: object) -> bool:
        return tp in self.next_offset

    def start(self, tp: TopicPartition, position: int, replay_until: int | None = None) -> None:
        """``tp`` is processed from ``position``; messages below ``replay_until`` only rebuild states."""
        self.next_offset[tp] = position
        if replay_until is not None and replay_until > position:
            self.replay_until[tp] = replay_until

    def get(self, tp: TopicPartition) -> int | None:
        """The next offset to process of ``tp``, if it is owned."""
        return self.next_offset.get(tp)

    def is_live(self, tp: TopicPartition, offset: int) -> bool:
        """True for a new message, False for one replayed to rebuild states (it publishes nothing)."""
        return offset >= self.replay_until.get(tp, -1)

    @property
    def replaying(self) -> bool:
        """Any partition still replaying."""
        return bool(self.replay_until)

    def advance(self, last_offsets: Mapping[TopicPartition, int]) -> None:
        """Record that every message up to ``last_offsets[tp]`` (inclusive) is processed (owned partitions)."""
        for tp, offset in last_offsets.items():
            if tp in self.next_offset:
                self.next_offset[tp] = max(self.next_offset[tp], offset + 1)

    def finish_replays(self) -> list[TopicPartition]:
        """The partitions whose replay has just reached their committed offset (now live)."""
        done = [tp for tp, until in self.replay_until.items() if self.next_offset.get(tp, 0) >= until]
        for tp in done:
            del self.replay_until[tp]
            log.info("state.replay_done", topic=tp.topic, partition=tp.partition, offset=self.next_offset.get(tp))
        return done

    def committable(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """Offsets to commit for ``partitions`` (owned ones only), with the failed ones retried.

        The retries are taken: a commit of the result that fails again hands them back through
        :meth:`commit_failed`.
        """
        offsets = {tp: self.next_offset[tp] for tp in partitions if tp in self.next_offset}
        for tp, offset in self._retry.items():
            offsets[tp] = max(offsets.get(tp, 0), offset)
        self._retry = {}
        return {
            tp: offset
            for tp, offset in offsets.items()
            if tp in self.next_offset and offset > self.replay_until.get(tp, -1)
        }

    def commit_failed(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Keep ``offsets`` for the next commit."""
        for tp, offset in offsets.items():
            self._retry[tp] = max(self._retry.get(tp, 0), offset)

    def lag(self, tp: TopicPartition, highwater: int) -> int:
        """Messages of ``tp`` not yet processed, given its high watermark."""
        return max(highwater - self.next_offset.get(tp, 0), 0)

    def forget(self, tp: TopicPartition) -> None:
        """``tp`` is no longer owned."""
        self.next_offset.pop(tp, None)
        self.replay_until.pop(tp, None)
        self._retry.pop(tp, None)


class _Commit:
    """An asynchronous offset commit; kafka-python completes it on its network thread."""

    def __init__(self, offsets: dict[TopicPartition, int]):
        self.offsets = offsets
        self.error: BaseException | None = None
        self._done = threading.Event()

    def finish(self, result: Any) -> None:
        self.error = result if isinstance(result, BaseException) else None
        self._done.set()

    def wait(self, timeout_s: float) -> bool:
        return self._done.wait(timeout_s)


class Committer:
    """Commits the offsets :class:`Positions` allows, one asynchronous commit at a time.

    ``coordinator_unknown`` tells when an asynchronous commit is unsafe (kafka-python then
    completes the coordinator lookup's future, not the commit's); the commit is synchronous then.
    """

    def __init__(
        self,
        consumer: KafkaConsumer,
        positions: Positions,
        coordinator_unknown: Callable[[], bool],
        metrics: Metrics,
        timeout_s: float,
    ):
        self.consumer, self.positions, self.metrics = consumer, positions, metrics
        self.coordinator_unknown, self.timeout_s = coordinator_unknown, timeout_s
        self._in_flight: _Commit | None = None

    def commit(self, partitions: Iterable[TopicPartition], wait: bool = False) -> None:
        """Commit the processed offsets of ``partitions`` (their outputs are acknowledged already).

        Asynchronous unless ``wait`` (shutdown); failed offsets are retried with the next commit.
        """
        offsets = self.positions.committable(partitions)
        if not offsets:
            return
        request = {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in offsets.items()}
        if wait or self.coordinator_unknown():
            try:
                self.consumer.commit(request)
            except (CommitFailedError, KafkaError) as error:
                self._failed(offsets, error)
            return
        commit = _Commit(offsets)
        self.consumer.commit_async(request).add_both(commit.finish)
        self._in_flight = commit

    def await_commit(self) -> None:
        """Wait for the commit in flight (up to the request timeout); count and retry it if it failed."""
        commit, self._in_flight = self._in_flight, None
        if commit is None:
            return
        if not commit.wait(self.timeout_s):
            commit.error = KafkaError("offset commit not answered within request_timeout_ms")
        if commit.error is not None:
            self._failed(commit.offsets, commit.error)

    def _failed(self, offsets: dict[TopicPartition, int], error: BaseException) -> None:
        self.metrics.commit_failed()
        log.warning(
            "stream.commit_failed",
            error=repr(error),
            partitions=len(offsets),
            note="retried with the next commit; replayed after a crash",
        )
        self.positions.commit_failed(offsets)
