"""Partition recovery: pause on assignment, restore from the checkpoint, replay, resume; forget on revoke.

kafka-python runs rebalance callbacks inside its network loop, where no blocking consumer call
(commit, committed) may run, so :meth:`PartitionRecovery.assigned` only pauses the new
partitions, and :meth:`PartitionRecovery.restore_assigned` (called after the poll) restores them:

1. read each partition's latest checkpoint and its committed offset;
2. if the checkpoint checks out (readable, valid, offset within the partition), load its states
   and seek to its offset; messages from there up to the committed offset are replayed, updating
   states only, so the restored states are exact. Each model version's section is loaded into
   that model's states (:class:`~detector.partition_states.PartitionStates`); a section whose
   model cannot be had is skipped, counted as ``model_version``;
3. otherwise start from fresh states at the committed offset (or the partition's start),
   counted in ``detector_state_restore_fallbacks_total{reason}``, and checkpoint them at once;
4. resume the partitions.

On revoke the partitions processed since their last checkpoint are checkpointed (their outputs
are acknowledged), so the next owner starts after them even if the last commit fails; then
their states are dropped.
"""

from __future__ import annotations

from collections.abc import Iterable

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from detector.checkpointing import CheckpointScheduler
from detector.checkpoints import Checkpoint, CheckpointStore
from detector.logs import get_logger
from detector.metrics import Health, Metrics
from detector.offsets import Positions
from detector.partition_states import PartitionStates
from detector.state import CheckpointError

__all__ = ["PartitionRecovery", "names"]

log = get_logger(__name__)


def names(partitions: Iterable[TopicPartition]) -> list[str]:
    """``topic/partition`` names, sorted, for logs."""
    return sorted(f"{tp.topic}/{tp.partition}" for tp in partitions)


class PartitionRecovery:
    """Which partitions this instance owns, and how each one's states come and go."""

    def __init__(
        self,
        consumer: KafkaConsumer,
        store: CheckpointStore,
        positions: Positions,
        states: PartitionStates,
        scheduler: CheckpointScheduler,
        metrics: Metrics,
        health: Health,
    ):
        self.consumer, self.store, self.positions, self.states = consumer, store, positions, states
        self.scheduler, self.metrics, self.health = scheduler, metrics, health
        self.owned: set[TopicPartition] = set()  # restored and being consumed
        self.epoch = 0  # bumped by every rebalance callback: records fetched before one are stale
        self._awaiting_restore: set[TopicPartition] = set()

    def revoked(self, revoked: list[TopicPartition]) -> None:
        """Checkpoint the revoked partitions (all their work is published) and drop their states."""
        self.epoch += 1
        if revoked:
            log.info("partitions.revoked", partitions=[f"{tp.topic}/{tp.partition}" for tp in revoked])
        self.scheduler.checkpoint_now([tp for tp in revoked if tp in self.owned], reason="revoke")
        for tp in revoked:
            self._forget(tp)
            self._awaiting_restore.discard(tp)
        self.metrics.set_partitions_assigned(len(self.owned))

    def assigned(self, assigned: list[TopicPartition]) -> None:
        """Hold new partitions (paused) until their states are restored after this poll."""
        self.epoch += 1
        log.info("partitions.assigned", partitions=[f"{tp.topic}/{tp.partition}" for tp in assigned])
        fresh = [tp for tp in assigned if tp not in self.owned]
        if fresh:
            self.consumer.pause(*fresh)
            self._awaiting_restore.update(fresh)
            self.health.set_ready(False, "restoring checkpoints")

    def restore_assigned(self) -> None:
        """Restore each newly assigned partition's states from its checkpoint, then resume it."""
        if not self._awaiting_restore:
            return
        fresh, self._awaiting_restore = sorted(self._awaiting_restore), set()
        try:
            found = self.store.read_latest([(tp.topic, tp.partition) for tp in fresh])
        except (KafkaError, TimeoutError, ValueError) as error:
            self.metrics.restore_fallback("missing")
            log.error("state.restore_failed", error=repr(error), note="starting these partitions with fresh states")
            found = {}
        for tp in fresh:
            self.states.owner(tp)
            self._restore(tp, found.get((tp.topic, tp.partition)))
            self.owned.add(tp)
        self.consumer.resume(*fresh)
        self.metrics.set_partitions_assigned(len(self.owned))
        self.health.set_ready(True, "")

    def _forget(self, tp: TopicPartition) -> None:
        self.states.drop(tp)
        self.owned.discard(tp)
        self.positions.forget(tp)
        self.scheduler.forget(tp)
        self.metrics.forget_partition(tp.topic, tp.partition)

    def _restore(self, tp: TopicPartition, checkpoint: Checkpoint | None) -> None:
        committed = self.consumer.committed(tp)
        restored = checkpoint is not None and self._load(tp, checkpoint, committed)
        if checkpoint is not None and restored:
            self.scheduler.restored(tp, checkpoint.next_offset)
            self.consumer.seek(tp, checkpoint.next_offset)
            self.positions.start(tp, checkpoint.next_offset, replay_until=committed)
        else:
            self._start_fresh(tp, committed, had_checkpoint=checkpoint is not None)
        log.info(
            "state.restore",
            topic=tp.topic,
            partition=tp.partition,
            from_checkpoint=bool(restored),
            position=self.positions.get(tp),
            committed=committed,
            replay_until=self.positions.replay_until.get(tp),
        )

    def _start_fresh(self, tp: TopicPartition, committed: int | None, had_checkpoint: bool) -> None:
        """No usable checkpoint: fresh states from the committed offset (or the partition start).

        Committed offsets without any checkpoint mean the states before them are gone: counted
        and logged as a fallback.
        """
        if committed is None:
            position = self.consumer.beginning_offsets([tp])[tp]
        else:
            position = committed
            if not had_checkpoint:
                self.metrics.restore_fallback("missing")
                log.warning(
                    "state.restore_fallback",
                    topic=tp.topic,
                    partition=tp.partition,
                    reason="no checkpoint; entity states start fresh",
                    committed=committed,
                )
        self.consumer.seek(tp, position)
        self.positions.start(tp, position)
        self.scheduler.checkpoint_now([tp], reason="initial")

    def _load(self, tp: TopicPartition, checkpoint: Checkpoint, committed: int | None) -> bool:
        """Restore ``tp``'s states from ``checkpoint`` if every part of it checks out (see
        :mod:`detector.checkpoints` and :meth:`EntityStore.restore`); else count the fallback.

        Its offset must lie in the partition: from the first offset to the end, or to the
        committed offset where that is beyond the end the broker reports (the bundled Tansu
        broker reports the last batch's first offset plus one)."""
        if checkpoint.corrupt or checkpoint.invalid:
            return self._fallback(
                tp, "corrupt" if checkpoint.corrupt else "invalid", checkpoint.corrupt or checkpoint.invalid
            )
        first = self.consumer.beginning_offsets([tp])[tp]
        end = max(self.consumer.end_offsets([tp])[tp], committed or 0)
        if not first <= checkpoint.next_offset <= end:
            return self._fallback(
                tp, "invalid", f"checkpoint offset {checkpoint.next_offset} outside the partition's {first}..{end}"
            )
        try:
            restored = self.states.restore(tp, checkpoint.sections())
        except CheckpointError as error:
            return self._fallback(tp, error.reason, str(error))
        except Exception as error:  # noqa: BLE001 -- checked states that still did not fit: a fallback, never a crash
            return self._fallback(tp, "invalid", f"{type(error).__name__}: {error}"[:300])
        for version, why in restored.skipped.items():
            self.metrics.restore_fallback("model_version")
            log.warning(
                "state.restore_fallback",
                topic=tp.topic,
                partition=tp.partition,
                reason=f"states of model {version} start fresh: {why}",
                fallback="model_version",
            )
        if not restored.entities:
            return False
        log.info(
            "state.restored",
            topic=tp.topic,
            partition=tp.partition,
            entities=restored.total,
            by_model_version=restored.entities,
            offset=checkpoint.next_offset,
        )
        return True

    def _fallback(self, tp: TopicPartition, reason: str, detail: str) -> bool:
        """Count and log an unusable checkpoint (the partition starts from fresh states); False."""
        self.metrics.restore_fallback(reason)
        log.error("state.restore_fallback", topic=tp.topic, partition=tp.partition, reason=detail, fallback=reason)
        return False
