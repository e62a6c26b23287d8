"""When each owned partition's states are checkpointed, and which states never are.

A partition is checkpointed:

1. periodically, every ``checkpoint_interval_s``: one partition per loop iteration, sent without
   waiting (the loop pauses only to export that partition's states, never for the broker);
2. on revoke and on shutdown, for every partition processed since its last checkpoint, waiting
   for the broker, so the next owner restores exactly where this one stopped;
3. once when it starts from fresh states, so a crash before the first periodic checkpoint
   still restores exactly.

Before the first checkpoint naming a model version, that model is published to the topic
(:mod:`detector.model_store`; retried every :data:`PUBLISH_RETRY_S` if the broker refuses it), so
whoever restores the checkpoint can load it.

Each checkpoint records the offset it covers (:class:`~detector.offsets.Positions`). A
partition whose states have advanced past outputs that were never acknowledged is held back
and never checkpointed again by this instance: its last checkpoint stays, and the batch is
processed, and its alerts published, again after a restart.

>>> scheduler = CheckpointScheduler(store, positions, states, metrics, interval_s=10)  # doctest: +SKIP
>>> scheduler.tick(assigned)                              # each loop iteration  # doctest: +SKIP
>>> scheduler.checkpoint_now(assigned, reason="shutdown")                        # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable

from kafka import TopicPartition
from kafka.errors import KafkaError

from detector.checkpoints import CheckpointStore, PendingWrite
from detector.logs import get_logger
from detector.metrics import Metrics
from detector.model_store import ModelStore
from detector.offsets import Positions
from detector.partition_states import PartitionStates

__all__ = ["CheckpointScheduler"]

log = get_logger(__name__)
PUBLISH_RETRY_S = 60.0  # a model the broker did not take is published again after this


class CheckpointScheduler:
    """Starts, settles and accounts for the checkpoints of the owned partitions."""

    def __init__(
        self,
        store: CheckpointStore,
        positions: Positions,
        states: PartitionStates,
        metrics: Metrics,
        interval_s: float,
        models: ModelStore | None = None,
    ):
        self.store, self.positions, self.states, self.metrics = store, positions, states, metrics
        self.interval_s, self.models = interval_s, models
        self.checkpointed: dict[TopicPartition, int] = {}  # offset of each partition's last settled checkpoint
        self.held_back: set[TopicPartition] = set()  # states ahead of unacknowledged outputs: never checkpointed
        self._queue: list[TopicPartition] = []  # partitions due for their periodic checkpoint
        self._last = time.monotonic()
        self._model_version: str | None = None  # the target model of the checkpoints settled so far
        self._publish_after = 0.0  # when to (try to) publish the target model next (monotonic)

    def tick(self, assigned: Collection[TopicPartition]) -> None:
        """Each loop iteration: settle answered checkpoints; start the next periodic one if due."""
        self._follow_model()
        for pending, error in self.store.settle_done():
            self._settled(pending, error)
        if time.monotonic() - self._last >= self.interval_s:
            self._last = time.monotonic()
            self._queue = sorted(assigned, reverse=True)  # popped from the end: in partition order
        while self._queue:
            tp = self._queue.pop()
            if tp in assigned and self._needs_checkpoint(tp) and self.store.in_flight(tp.topic, tp.partition) is None:
                self._send(tp, "periodic")
                return

    def checkpoint_now(self, partitions: Iterable[TopicPartition], reason: str) -> None:
        """Checkpoint ``partitions`` and wait for the broker (initial, revoke, shutdown checkpoints)."""
        self._last = time.monotonic()
        self._follow_model()
        for pending, error in self.store.settle_all():  # periodic ones in flight first, in order
            self._settled(pending, error)
        for tp in list(partitions):
            if self._needs_checkpoint(tp):
                self._send(tp, reason)
        for pending, error in self.store.settle_all():
            self._settled(pending, error)

    def hold_back(self, partitions: Iterable[TopicPartition]) -> None:
        """Never checkpoint ``partitions`` again: their states include unacknowledged outputs."""
        self.held_back.update(partitions)

    def restored(self, tp: TopicPartition, offset: int) -> None:
        """``tp``'s states were restored from its checkpoint at ``offset``."""
        self.checkpointed[tp] = offset

    def forget(self, tp: TopicPartition) -> None:
        """``tp`` is no longer owned."""
        self.checkpointed.pop(tp, None)

    def _follow_model(self) -> None:
        """A new target model (a rollout began): every owned partition is checkpointed again when next
        due, so each checkpoint names the model its first section belongs to."""
        if self.states.model_version != self._model_version:
            self._model_version = self.states.model_version
            self.checkpointed.clear()
            self._publish_after = 0.0
        if self.models is not None and time.monotonic() >= self._publish_after:
            published = self.models.publish(self.states.detector.model)  # at once if already published
            self._publish_after = float("inf") if published else time.monotonic() + PUBLISH_RETRY_S

    def _needs_checkpoint(self, tp: TopicPartition) -> bool:
        """Processed since its last checkpoint (settled or in flight)."""
        position = self.positions.get(tp)
        if position is None:
            return False
        in_flight = self.store.in_flight(tp.topic, tp.partition)
        return position not in (self.checkpointed.get(tp), in_flight.next_offset if in_flight else None)

    def _send(self, tp: TopicPartition, reason: str) -> None:
        if tp in self.held_back:
            log.warning(
                "state.checkpoint_skipped",
                topic=tp.topic,
                partition=tp.partition,
                reason=reason,
                note="its states include messages whose outputs were not acknowledged; the last checkpoint stays",
            )
            return
        started = time.perf_counter()
        position = self.positions.next_offset[tp]
        try:
            sections = self.states.export(tp)
            version = self.states.model_version
            blob = sections.pop(version)
            self.store.send(
                tp.topic, tp.partition, position, version, blob, others=sections, reason=reason, started=started
            )
        except KafkaError as error:
            self.metrics.checkpoint_failed()
            log.error(
                "state.checkpoint_failed", topic=tp.topic, partition=tp.partition, reason=reason, error=repr(error)
            )

    def _settled(self, pending: PendingWrite, error: KafkaError | None) -> None:
        tp = TopicPartition(pending.topic, pending.partition)
        if error is not None:
            self.metrics.checkpoint_failed()
            log.error(
                "state.checkpoint_failed",
                topic=tp.topic,
                partition=tp.partition,
                reason=pending.reason,
                error=repr(error),
            )
            return
        duration = time.perf_counter() - pending.started
        if tp in self.positions:  # still this instance's partition
            self.checkpointed[tp] = pending.next_offset
        self.metrics.checkpoint_succeeded(duration)
        log.info(
            "state.checkpoint",
            reason=pending.reason,
            topic=tp.topic,
            partition=tp.partition,
            offset=pending.next_offset,
            bytes=pending.size,
            seconds=round(duration, 3),
        )
