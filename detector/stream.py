"""``detector run``: the consumer-group member that scores every message and publishes alerts.

One loop iteration: poll a micro-batch (up to ``batch_max_messages`` or ``batch_max_ms``) ->
validate (bad input to the dead-letter topic) -> one batched step per wave of distinct
entities (:class:`detector.scoring.Detector`) -> wait for the previous batch's offset commit
-> publish alerts -> wait for the broker's acknowledgements -> commit the offsets (asynchronously,
overlapping the next poll). States are checkpointed per partition to Kafka every
``checkpoint_interval_s``, on revoke and on shutdown, each checkpoint tied to the offset it covers.

Delivery is at-least-once. Duplicates (alerts or dead letters published twice) can appear only
for messages processed after the last successful commit when the process dies or loses its
partitions: they are processed again by whoever owns the partition next. A restored state is
exact: the new owner replays from the checkpoint's offset to the committed offset updating
states only (publishing nothing), then carries on.

>>> service = Service(settings, load_model(settings.model.path))   # doctest: +SKIP
>>> service.run()   # until SIGTERM/SIGINT or service.stop()       # doctest: +SKIP
0
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata

from detector import __version__
from detector.alerts import Publisher, Source, alert_record, score_record
from detector.checkpoints import CheckpointStore, PendingWrite
from detector.config import Settings
from detector.deadletter import Context, dead_letter
from detector.delivery import PublishFatal, StoppedUnacknowledged, confirm_until_acknowledged, fatal_reason
from detector.guard import BatchGuard, Refused
from detector.kafka_config import consumer_config, kafka_client_config, producer_config
from detector.kafka_internals import check_internals, coordinator_unknown, last_heartbeat_answer
from detector.logs import get_logger
from detector.metrics import Health, Metrics, serve
from detector.model import FittedModel
from detector.reload import Reloader, carry_states
from detector.reload import load as load_run_time
from detector.runtime import RunTimeScoring
from detector.schema import BadMessage, MessageDecoder, MessageFields
from detector.scoring import Detector, Outcomes
from detector.startup import StartupError, check_topics, wait_for_broker
from detector.state import CheckpointError

__all__ = ["Service", "consumer_config", "kafka_client_config", "producer_config", "run_service"]

log = get_logger(__name__)
_DEAD_LETTER_LOG_EVERY_S = 10.0
_HOUSEKEEPING_EVERY_S = 1.0  # eviction, gauges and broker checks (metrics() calls are not free)


@dataclass(slots=True)
class _Fetched:
    """Records polled from one partition (in offset order), waiting to be processed."""

    tp: TopicPartition
    records: list[Any]
    epoch: int  # assignment epoch when fetched: records from before a rebalance are dropped


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


def _names(partitions: Iterable[TopicPartition]) -> list[str]:
    return sorted(f"{tp.topic}/{tp.partition}" for tp in partitions)


def _count(fetched: list[_Fetched]) -> int:
    return sum(len(f.records) for f in fetched)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, service: Service):
        self.service = service

    def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        self.service.on_revoked(list(revoked))

    def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        self.service.on_assigned(list(assigned))


class Service:
    """The streaming service; ``run()`` blocks until :meth:`stop` or a signal."""

    def __init__(
        self,
        settings: Settings,
        model: FittedModel,
        metrics: Metrics | None = None,
        run_time: RunTimeScoring | None = None,
    ):
        self.settings, self.model, self.run_time = settings, model, run_time
        self.metrics = metrics or Metrics()
        self.health = Health(settings.metrics.stall_after_s, metrics=self.metrics)
        self.detector = Detector(model, max_entities=settings.stream.max_entities, ttl_s=settings.stream.entity_ttl_s)
        stream = settings.stream
        fields = MessageFields(
            stream.entity_field,
            stream.timestamp_field,
            stream.values_field,
            stream.max_message_bytes,
            stream.max_entity_chars,
        )
        self._guard = BatchGuard(MessageDecoder(model.features, fields), self.detector, stream.max_future_skew_s)
        self._stop = threading.Event()
        self._replacement: Detector | None = None  # handed over by replace_detector, swapped in by the loop
        self._pending: list[_Fetched] = []
        self._owners: dict[TopicPartition, int] = {}
        self._assigned: set[TopicPartition] = set()
        self._next_offset: dict[TopicPartition, int] = {}
        self._replay_until: dict[TopicPartition, int] = {}
        self._awaiting_restore: set[TopicPartition] = set()
        self._epoch = 0  # bumped by every rebalance callback
        self._broker_lost = False
        self._broker_silent = False  # the last check found no heartbeat answer for a session timeout
        self._in_group = False  # a join completed (partitions assigned, maybe none) and no rejoin began since
        self._joined_at = float("-inf")  # monotonic time of the last completed join
        self._checkpointed: dict[TopicPartition, int] = {}  # offset of each partition's last checkpoint
        self._checkpoint_queue: list[TopicPartition] = []  # partitions due for their periodic checkpoint
        self._commit_in_flight: _Commit | None = None
        self._unacknowledged: set[TopicPartition] = (
            set()
        )  # states advanced by a batch whose outputs were not acknowledged
        self._commit_retry: dict[TopicPartition, int] = {}  # offsets whose commit failed
        self._last_checkpoint = time.monotonic()
        self._last_housekeeping = float("-inf")
        self._last_dead_letter_log = 0.0
        self._evictions_seen = {"ttl": 0, "capacity": 0}
        self._connections_seen: float | None = None
        self.consumer: KafkaConsumer | None = None
        self.producer: KafkaProducer | None = None

    # --- lifecycle -----------------------------------------------------------------------

    def stop(self, *_: Any) -> None:
        """Ask the loop to finish the batch in hand, commit, checkpoint and return."""
        self._stop.set()

    def run(self) -> int:
        """Consume until stopped; returns the process exit code (0 on a clean shutdown)."""
        if not self._broker_ready():
            return 0
        self._connect()
        _freeze_startup_objects()
        log.info(
            "service.start",
            version=__version__,
            model_version=self.model.version,
            topics=self.settings.kafka.input_topics,
            group=self.settings.kafka.group_id,
            alert_probability=round(self.detector.threshold, 4),
            run_time_settings=self.run_time.describe() if self.run_time else None,
        )
        code = 0
        try:
            while not self._stop.is_set():
                self._pending.extend(self._poll())
                self._restore_assigned()
                self._swap_detector()
                self._process_batch()
                self._housekeeping()
        except PublishFatal as error:
            log.error(
                "publish.fatal",
                error=repr(error.error),
                reason=error.reason,
                partitions_held_back=_names(self._unacknowledged),
                note="nothing past the last acknowledged batch is committed or checkpointed; it is processed again after a restart",
            )
            code = 1
        except KafkaError as error:
            log.error(
                "stream.kafka_failed",
                error=repr(error),
                partitions_held_back=_names(self._unacknowledged),
                note="nothing past the last acknowledged batch is committed or checkpointed; it is processed again after a restart",
            )
            code = 1
        except StoppedUnacknowledged as error:
            log.warning(
                "service.stopped_unacknowledged",
                error=str(error),
                partitions_held_back=_names(self._unacknowledged),
                note="the batch in hand is processed again after a restart",
            )
        finally:
            self._shutdown()
            gc.unfreeze()  # a process running services one after another (tests) gets them collected again
        return code

    def _process_batch(self) -> None:
        """:meth:`_process_pending`; if it does not finish, the partitions in hand hold states
        ahead of their acknowledged outputs and are never checkpointed again by this instance."""
        in_hand = {f.tp for f in self._pending}
        try:
            self._process_pending()
        except BaseException as error:
            self._unacknowledged.update(in_hand)
            reason = fatal_reason(error) if isinstance(error, KafkaError) else None
            if reason is not None:  # raised by the producer's send itself, e.g. a record over max_request_size
                raise PublishFatal(error, reason) from error
            raise

    def replace_detector(self, detector: Detector) -> None:
        """Score with ``detector`` from the next batch on (any thread may call this; the loop swaps
        it in between batches). Of the same model version it takes over every entity's state; of
        another, every entity starts fresh and the next checkpoints are written for the new model."""
        self._replacement = detector

    def _swap_detector(self) -> None:
        detector, self._replacement = self._replacement, None
        if detector is None:
            return
        if detector.model.version == self.model.version:
            try:
                carry_states(self.detector, detector, sorted(set(self._owners.values())))
            except Exception as error:  # noqa: BLE001 - states that do not carry over keep the old detector
                log.error("reload.swap_failed", error=repr(error)[:300], note="the previous detector goes on")
                return
        else:
            self._checkpointed.clear()  # the checkpoints written so far hold the old model's states
        self.detector, self.model = detector, detector.model
        decode = self._guard.decode
        if decode.features != detector.model.features:
            decode = MessageDecoder(detector.model.features, decode.fields)
        self._guard = BatchGuard(decode, detector, self._guard.max_future_skew_s)
        self._evictions_seen = {"ttl": 0, "capacity": 0}
        self.metrics.set_model_info(self.model.version, self.model.network.architecture.cell, len(self.model.features))
        self.metrics.set_alert_threshold(detector.threshold)

    def _broker_ready(self) -> bool:
        """Wait for the broker and check the output topics; False if stopped meanwhile.

        Raises :class:`detector.startup.StartupError` for a missing or forbidden topic."""
        self.health.set_ready(False, "connecting to the broker")
        admin = wait_for_broker(kafka_client_config(self.settings.kafka), self._stop, self.health)
        if admin is None:
            log.info("service.stopped", note="stopped before the broker was reached")
            return False
        try:
            check_topics(admin, self.settings.kafka)
        finally:
            admin.close()
        return True

    def _connect(self) -> None:
        kafka = self.settings.kafka
        self.producer = KafkaProducer(**producer_config(kafka))
        self.publisher = Publisher(self.producer)
        self.checkpoints = CheckpointStore(
            self.producer, kafka.checkpoint_topic, kafka.group_id, kafka_client_config(kafka)
        )
        self.consumer = KafkaConsumer(**consumer_config(kafka))
        check_internals(self.consumer)
        self.consumer.subscribe(kafka.input_topics, listener=_Rebalance(self))
        self.metrics.set_model_info(self.model.version, self.model.network.architecture.cell, len(self.model.features))
        self.metrics.set_alert_threshold(self.detector.threshold)
        self.metrics.set_build_info(__version__)
        self.health.set_ready(False, "waiting for partition assignment")

    def _shutdown(self) -> None:
        log.info("service.stopping", pending=_count(self._pending), partitions=len(self._assigned))
        self.health.set_ready(False, "shutting down")
        try:
            self._finish_join()
            self._process_batch()
            self._await_commit()
            self._commit(self._assigned, wait=True)
            self._checkpoint(self._assigned, reason="shutdown")
        except (KafkaError, PublishFatal, StoppedUnacknowledged) as error:
            log.error("service.shutdown_incomplete", error=repr(error), note="uncommitted messages will be replayed")
        finally:
            if self.consumer is not None:
                self.consumer.close(autocommit=False)
            if self.producer is not None:
                self.producer.close(timeout=5)
        log.info("service.stopped")

    def _finish_join(self) -> None:
        """Let a group join in progress complete before leaving (bounded by a third of the grace).

        A member that leaves while its JoinGroup is pending can stay behind as a ghost: the
        bundled Tansu broker kept electing such a member group leader, generation after
        generation, so no member ever got partitions (found by the rebalance-storm test).
        Records polled here are neither processed nor committed: the next owner gets them.
        """
        deadline = time.monotonic() + self.settings.stream.shutdown_grace_s / 3
        while self.consumer is not None and not self._in_group and time.monotonic() < deadline:
            self.consumer.poll(timeout_ms=100)
        if not self._in_group:
            log.warning("service.leaving_mid_join", note="the group join did not complete before shutdown")

    # --- polling and processing ----------------------------------------------------------

    def _poll(self) -> list[_Fetched]:
        """Up to ``batch_max_messages`` records: wait at most ``batch_max_ms`` for the first ones,
        then take what is already fetched without waiting (no added latency once caught up)."""
        stream = self.settings.stream
        deadline = time.monotonic() + stream.batch_max_ms / 1000
        fetched: list[_Fetched] = []
        taken, held = 0, _count(self._pending)
        while taken + held < stream.batch_max_messages and not self._stop.is_set():
            remaining_ms = 0 if taken else int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0 and not taken:
                break
            wanted = min(stream.batch_max_messages - taken - held, self.settings.kafka.max_poll_records)
            polled = self.consumer.poll(timeout_ms=remaining_ms, max_records=wanted)  # type: ignore[union-attr]
            got = 0
            for tp, records in polled.items():
                got += len(records)
                if tp in self._assigned:
                    fetched.append(_Fetched(tp, records, self._epoch))
                    taken += len(records)
            if taken and got < wanted:
                break  # kafka-python's buffer is drained; another poll would cost a round trip to its network thread for nothing
        if not fetched or fetched[0].epoch == self._epoch:
            return fetched  # no rebalance since the first records were fetched (epochs only grow)
        # A rebalance inside a later poll call invalidates what earlier calls fetched: the
        # partitions were re-restored and re-positioned, so those records will come again.
        return [f for f in fetched if f.epoch == self._epoch and f.tp in self._assigned]

    def _process_pending(self) -> None:
        """Score, publish, confirm, commit the records in hand (each loop and at shutdown)."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        records = [r for f in pending for r in f.records]
        chunk = np.repeat(np.arange(len(pending)), [len(f.records) for f in pending])  # record position -> its _Fetched
        live = self._live(pending)
        owners = np.fromiter((self._owners[f.tp] for f in pending), dtype=np.int32, count=len(pending))[chunk]
        guarded = self._guard.score(
            [r.value for r in records],
            [r.key for r in records],
            owners,
            drop_stale=self.settings.stream.reject_out_of_order,
        )
        accepted, outcomes, dead = guarded.accepted, guarded.outcomes, guarded.refused
        self.metrics.observe_batch(len(outcomes), guarded.step_seconds)
        dead.extend(self._stale(outcomes, accepted))
        scored = live[accepted] & ~outcomes.stale
        self._await_commit()  # the previous batch's: nothing of this batch is out before it is committed
        dead.extend(self._publish_alerts(pending, records, chunk, accepted, outcomes, scored))
        self._publish_dead_letters(pending, records, chunk, [refused for refused in dead if live[refused.position]])
        self._confirm()
        last_offsets = {f.tp: f.records[-1].offset for f in pending}  # chunks of a partition come in offset order
        for tp, offset in last_offsets.items():
            self._next_offset[tp] = max(self._next_offset.get(tp, 0), offset + 1)
        self._commit(last_offsets)
        self._record_outcomes(outcomes, scored)

    @staticmethod
    def _stale(outcomes: Outcomes, accepted: np.ndarray) -> list[Refused]:
        """The messages refused as older than their entity's last."""
        return [
            Refused(
                int(accepted[i]),
                BadMessage(
                    "stale_timestamp",
                    f"timestamp {outcomes.batch.timestamps[i]} older than the entity's last {previous}",
                ),
                "validate",
            )
            for i, previous in sorted(outcomes.previous.items())
        ]

    def _live(self, pending: list[_Fetched]) -> np.ndarray:
        """Per record: new (True) rather than replayed to rebuild state (no outputs)."""
        if not self._replay_until:
            return np.ones(_count(pending), dtype=bool)
        parts = [
            np.fromiter(
                (r.offset >= self._replay_until.get(f.tp, -1) for r in f.records), dtype=bool, count=len(f.records)
            )
            for f in pending
        ]
        return np.concatenate(parts)

    def _publish_alerts(
        self,
        pending: list[_Fetched],
        records: list[Any],
        chunk: np.ndarray,
        accepted: np.ndarray,
        outcomes: Outcomes,
        scored: np.ndarray,
    ) -> list[Refused]:
        """Publish the scored messages' records; a message whose records cannot be built is
        unmarked in ``scored`` and returned for the dead-letter topic."""
        scores_topic, alert_topic = self.settings.kafka.scores_topic, self.settings.kafka.alert_topic
        positions = (
            np.flatnonzero(scored)
            if scores_topic
            else [i for i, event in enumerate(outcomes.events) if event and scored[i]]
        )
        failed: list[Refused] = []
        for i in positions:
            position = int(accepted[i])
            try:
                decision = outcomes.decision(int(i))
                tp = pending[chunk[position]].tp
                source = Source(tp.topic, tp.partition, records[position].offset)
                built = [(scores_topic, score_record(decision, source))] if scores_topic else []
                if decision.event:
                    built.append(
                        (alert_topic, alert_record(decision, self.detector.threshold, self.model.version, source))
                    )
            except Exception as error:  # one message's output, never the loop
                scored[i] = False
                failed.append(Refused(position, BadMessage.unexpected(error), "output"))
                continue
            for topic, record in built:
                self.publisher.send(topic, decision.entity, record)
            if decision.event:
                self.metrics.alert(decision.event)
        return failed

    def _publish_dead_letters(
        self, pending: list[_Fetched], records: list[Any], chunk: np.ndarray, dead: list[Refused]
    ) -> None:
        """Each refused message's record, as it came, to the dead-letter topic (see :mod:`detector.deadletter`)."""
        topic, max_bytes = self.settings.kafka.dead_letter_topic, self.settings.stream.dead_letter_max_bytes
        for position, error, stage in dead:
            tp, record = pending[chunk[position]].tp, records[position]
            context = Context(
                tp.topic, tp.partition, record.offset, getattr(record, "timestamp", None), stage, self.model.version
            )
            try:
                letter = dead_letter(record.key, record.value, getattr(record, "headers", None), error, context)
            except Exception:  # unusable input headers: the letter goes without them
                letter = dead_letter(record.key, record.value, None, error, context)
            self.publisher.send_dead_letter(topic, letter, max_bytes)
            self.metrics.dead_letter(error.reason)
        if dead and time.monotonic() - self._last_dead_letter_log > _DEAD_LETTER_LOG_EVERY_S:
            self._last_dead_letter_log = time.monotonic()
            position, error, _ = dead[-1]
            tp = pending[chunk[position]].tp
            log.warning(
                "stream.dead_letters",
                count=len(dead),
                example_reason=error.reason,
                example_detail=error.detail[:200],
                topic=tp.topic,
                partition=tp.partition,
                offset=records[position].offset,
            )

    def _confirm(self) -> None:
        """Wait for the broker to acknowledge the batch's outputs (see :mod:`detector.delivery`)."""
        confirm_until_acknowledged(
            self.publisher, self.settings.kafka.request_timeout_ms / 1000, self._stop, self.metrics
        )

    def _commit(self, partitions: Iterable[TopicPartition], wait: bool = False) -> None:
        """Commit the processed offsets of ``partitions`` (their alerts are acknowledged already).

        Asynchronous: the broker round trip overlaps the next batch's poll and step, and
        :meth:`_await_commit` settles it before that batch publishes anything, so at most one
        batch is ever published but not committed -- duplicates after a crash stay bounded by one
        batch. (A synchronous commit cost a round trip per batch, 40 % of the loop at 29,000 msg/s;
        unawaited asynchronous commits gave 258 duplicates per kill -9 instead of <= 50.)
        ``wait``: commit synchronously (shutdown). Failed offsets are retried with the next commit.
        """
        offsets = {tp: self._next_offset[tp] for tp in partitions if tp in self._next_offset}
        for tp, offset in self._commit_retry.items():
            offsets[tp] = max(offsets.get(tp, 0), offset)
        self._commit_retry = {}
        # a partition replaying up to its committed offset must not move that offset back: a
        # crash meanwhile would have the next owner publish everything after it a second time
        offsets = {
            tp: offset
            for tp, offset in offsets.items()
            if tp in self._assigned and offset > self._replay_until.get(tp, -1)
        }
        if not offsets:
            return
        request = {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in offsets.items()}
        # without a known coordinator kafka-python's async commit returns the lookup's future, not the commit's
        if wait or coordinator_unknown(self.consumer):  # type: ignore[arg-type]
            try:
                self.consumer.commit(request)  # type: ignore[union-attr]
            except (CommitFailedError, KafkaError) as error:
                self._commit_failed(offsets, error)
            return
        commit = _Commit(offsets)
        self.consumer.commit_async(request).add_both(commit.finish)  # type: ignore[union-attr]
        self._commit_in_flight = commit

    def _await_commit(self) -> None:
        """Wait for the commit in flight (up to the request timeout); count and retry it if it failed."""
        commit, self._commit_in_flight = self._commit_in_flight, None
        if commit is None:
            return
        if not commit.wait(self.settings.kafka.request_timeout_ms / 1000):
            commit.error = KafkaError("offset commit not answered within request_timeout_ms")
        if commit.error is not None:
            self._commit_failed(commit.offsets, commit.error)

    def _commit_failed(self, offsets: dict[TopicPartition, int], error: BaseException) -> None:
        self.metrics.commit_failed()
        log.warning(
            "stream.commit_failed",
            error=repr(error),
            partitions=len(offsets),
            note="retried with the next commit; replayed after a crash",
        )
        for tp, offset in offsets.items():
            self._commit_retry[tp] = max(self._commit_retry.get(tp, 0), offset)

    def _record_outcomes(self, outcomes: Outcomes, scored: np.ndarray) -> None:
        self.metrics.messages("scored", int(scored.sum()))
        if scored.any():
            self.metrics.observe_score(outcomes.score[scored], outcomes.probability[scored])
            self.metrics.observe_end_to_end(time.time() - outcomes.batch.timestamps[scored])
        for tp in [tp for tp, until in self._replay_until.items() if self._next_offset.get(tp, 0) >= until]:
            del self._replay_until[tp]
            log.info("state.replay_done", topic=tp.topic, partition=tp.partition, offset=self._next_offset[tp])

    # --- housekeeping, checkpoints, rebalances -------------------------------------------

    def _housekeeping(self) -> None:
        """Every loop: heartbeat and checkpoint timer; at most once a second: eviction, gauges, broker checks."""
        self.health.beat()
        self._settle_checkpoints()
        if time.monotonic() - self._last_checkpoint >= self.settings.stream.checkpoint_interval_s:
            self._last_checkpoint = time.monotonic()
            self._checkpoint_queue = sorted(self._assigned, reverse=True)  # popped from the end: in partition order
        self._checkpoint_next()
        if time.monotonic() - self._last_housekeeping < _HOUSEKEEPING_EVERY_S:
            return
        self._last_housekeeping = time.monotonic()
        self.detector.store.evict_idle(time.time())
        for reason, total in self.detector.store.evictions.items():
            if total > self._evictions_seen[reason]:
                self.metrics.eviction(reason, total - self._evictions_seen[reason])
                self._evictions_seen[reason] = total
        self.metrics.set_entities(len(self.detector.store))
        for tp in self._assigned:
            highwater = self.consumer.highwater(tp)  # type: ignore[union-attr]
            if highwater is not None:
                self.metrics.set_lag(tp.topic, tp.partition, max(highwater - self._next_offset.get(tp, 0), 0))
        self._count_reconnects()
        self._check_broker()

    def _check_broker(self) -> None:
        """Not ready while the group coordinator has not answered a heartbeat for a session timeout
        (seen on two checks in a row, a second apart), counted from the join if it has answered none
        since: a broker lost before the first heartbeat is reported too.

        An idle service has nothing to fail on, so /readyz (and the log) is where a broker outage
        shows; /healthz fails too once the loop is blocked on work it cannot acknowledge.
        """
        if not self._assigned or self.consumer is None:
            return
        last = last_heartbeat_answer(self.consumer)
        silent = time.monotonic() - max(last, self._joined_at)  # no answer since the join: silent since the join
        broker_lost = silent > self.settings.kafka.session_timeout_ms / 1000
        confirmed, self._broker_silent = self._broker_silent, broker_lost
        if broker_lost and not self._broker_lost and not confirmed:
            return  # judged again at the next check: a loop that was just blocked runs this ahead of the heartbeat's answer
        if broker_lost != self._broker_lost:
            self._broker_lost = broker_lost
            self.health.set_ready(
                not broker_lost, f"no heartbeat answer from the broker for {silent:.0f} s" if broker_lost else ""
            )
            (log.error if broker_lost else log.info)(
                "stream.broker_lost" if broker_lost else "stream.broker_back", silent_s=round(silent, 1)
            )

    def _count_reconnects(self) -> None:
        created = 0.0
        for client in (self.consumer, self.producer):
            for group, values in (client.metrics() or {}).items():  # type: ignore[union-attr]
                created += float(values.get("connection-creation-total", 0.0)) if isinstance(values, dict) else 0.0
        if self._connections_seen is not None and created > self._connections_seen:
            self.metrics.broker_reconnected()
            log.warning("stream.broker_reconnected", connections_created=created - self._connections_seen)
        self._connections_seen = max(created, self._connections_seen or 0.0)

    def _checkpoint(self, partitions: Iterable[TopicPartition], reason: str) -> None:
        """Checkpoint ``partitions`` and wait for the broker (initial, revoke, shutdown checkpoints)."""
        self._last_checkpoint = time.monotonic()
        for pending, error in self.checkpoints.settle_all():  # periodic ones in flight first, in order
            self._checkpoint_settled(pending, error)
        for tp in list(partitions):
            if self._needs_checkpoint(tp):
                self._send_checkpoint(tp, reason)
        for pending, error in self.checkpoints.settle_all():
            self._checkpoint_settled(pending, error)

    def _checkpoint_next(self) -> None:
        """Start the periodic checkpoint of one due partition without waiting for it.

        One partition per loop iteration: the loop stalls only for exporting one partition's
        states (about 2 ms per 1,000 entities), never for the broker's acknowledgement.
        """
        while self._checkpoint_queue:
            tp = self._checkpoint_queue.pop()
            if (
                tp in self._assigned
                and self._needs_checkpoint(tp)
                and self.checkpoints.in_flight(tp.topic, tp.partition) is None
            ):
                self._send_checkpoint(tp, "periodic")
                return

    def _settle_checkpoints(self) -> None:
        """Account for the checkpoints in flight that the broker has answered."""
        for pending, error in self.checkpoints.settle_done():
            self._checkpoint_settled(pending, error)

    def _needs_checkpoint(self, tp: TopicPartition) -> bool:
        """Processed since its last checkpoint (settled or in flight)."""
        if tp not in self._next_offset:
            return False
        in_flight = self.checkpoints.in_flight(tp.topic, tp.partition)
        return self._next_offset[tp] not in (self._checkpointed.get(tp), in_flight.next_offset if in_flight else None)

    def _send_checkpoint(self, tp: TopicPartition, reason: str) -> None:
        if tp in self._unacknowledged:
            log.warning(
                "state.checkpoint_skipped",
                topic=tp.topic,
                partition=tp.partition,
                reason=reason,
                note="its states include messages whose outputs were not acknowledged; the last checkpoint stays",
            )
            return
        started = time.perf_counter()
        try:
            blob = self.detector.store.export(self._owners[tp], tag=self.model.version)
            self.checkpoints.send(
                tp.topic, tp.partition, self._next_offset[tp], self.model.version, blob, reason=reason, started=started
            )
        except KafkaError as error:
            self.metrics.checkpoint_failed()
            log.error(
                "state.checkpoint_failed", topic=tp.topic, partition=tp.partition, reason=reason, error=repr(error)
            )

    def _checkpoint_settled(self, pending: PendingWrite, error: KafkaError | None) -> None:
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
        if tp in self._next_offset:  # still this instance's partition
            self._checkpointed[tp] = pending.next_offset
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

    # kafka-python runs rebalance callbacks inside its network loop, where no blocking consumer
    # call (commit, committed) may run. At most the last batch's commit is still in flight
    # there; the revoke checkpoint records the offset after that batch (its outputs are
    # acknowledged), so the next owner starts after it even if the commit fails. Restores run
    # after the poll.

    def on_revoked(self, revoked: list[TopicPartition]) -> None:
        """Checkpoint the revoked partitions (all their work is published) and drop their states."""
        self._epoch += 1
        self._in_group = False  # called as a (re)join begins
        if revoked:
            log.info("partitions.revoked", partitions=[f"{tp.topic}/{tp.partition}" for tp in revoked])
        self._checkpoint([tp for tp in revoked if tp in self._assigned], reason="revoke")
        for tp in revoked:
            self._forget(tp)
            self._awaiting_restore.discard(tp)
        self.metrics.set_partitions_assigned(len(self._assigned))

    def _forget(self, tp: TopicPartition) -> None:
        if tp in self._owners:
            self.detector.store.drop_owner(self._owners[tp])
        self._assigned.discard(tp)
        self._next_offset.pop(tp, None)
        self._replay_until.pop(tp, None)
        self._commit_retry.pop(tp, None)
        self._checkpointed.pop(tp, None)
        self.metrics.forget_partition(tp.topic, tp.partition)

    def on_assigned(self, assigned: list[TopicPartition]) -> None:
        """Hold new partitions (paused) until their states are restored after this poll."""
        self._epoch += 1
        self._in_group, self._joined_at = True, time.monotonic()
        log.info("partitions.assigned", partitions=[f"{tp.topic}/{tp.partition}" for tp in assigned])
        fresh = [tp for tp in assigned if tp not in self._assigned]
        if fresh:
            self.consumer.pause(*fresh)  # type: ignore[union-attr]
            self._awaiting_restore.update(fresh)
            self.health.set_ready(False, "restoring checkpoints")

    def _restore_assigned(self) -> None:
        """Restore each newly assigned partition's states from its checkpoint before scoring it."""
        if not self._awaiting_restore:
            return
        fresh, self._awaiting_restore = sorted(self._awaiting_restore), set()
        try:
            found = self.checkpoints.read_latest([(tp.topic, tp.partition) for tp in fresh])
        except (KafkaError, TimeoutError, ValueError) as error:
            self.metrics.restore_fallback("missing")
            log.error("state.restore_failed", error=repr(error), note="starting these partitions with fresh states")
            found = {}
        for tp in fresh:
            self._owners.setdefault(tp, len(self._owners) + 1)
            self._restore(tp, found.get((tp.topic, tp.partition)))
            self._assigned.add(tp)
        self.consumer.resume(*fresh)  # type: ignore[union-attr]
        self.metrics.set_partitions_assigned(len(self._assigned))
        self.health.set_ready(True, "")

    def _restore(self, tp: TopicPartition, checkpoint: Any) -> None:
        committed = self.consumer.committed(tp)  # type: ignore[union-attr]
        restored = checkpoint is not None and self._load(tp, checkpoint, committed)
        if restored:
            self._checkpointed[tp] = checkpoint.next_offset
            self.consumer.seek(tp, checkpoint.next_offset)  # type: ignore[union-attr]
            self._next_offset[tp] = checkpoint.next_offset
            if committed is not None and committed > checkpoint.next_offset:
                self._replay_until[tp] = committed
        else:
            self._start_fresh(tp, committed, had_checkpoint=checkpoint is not None)
        log.info(
            "state.restore",
            topic=tp.topic,
            partition=tp.partition,
            from_checkpoint=bool(restored),
            position=self._next_offset.get(tp),
            committed=committed,
            replay_until=self._replay_until.get(tp),
        )

    def _start_fresh(self, tp: TopicPartition, committed: int | None, had_checkpoint: bool) -> None:
        """No usable checkpoint: fresh states from the committed offset (or the partition start).

        A checkpoint of the fresh state is written at once, so a crash before the first periodic
        checkpoint still restores exactly (replaying from here). Committed offsets without any
        checkpoint mean the states before them are gone: counted and logged as a fallback.
        """
        if committed is None:
            position = self.consumer.beginning_offsets([tp])[tp]  # type: ignore[union-attr]
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
        self.consumer.seek(tp, position)  # type: ignore[union-attr]
        self._next_offset[tp] = position
        self._checkpoint([tp], reason="initial")

    def _load(self, tp: TopicPartition, checkpoint: Any, committed: int | None) -> bool:
        """Restore ``tp``'s states from ``checkpoint`` if every part of it checks out (see
        :mod:`detector.checkpoints` and :meth:`EntityStore.restore`); else count the fallback.

        Its offset must lie in the partition: from the first offset to the end, or to the
        committed offset where that is beyond the end the broker reports (the bundled Tansu
        broker reports the last batch's first offset plus one)."""
        if checkpoint.corrupt or checkpoint.invalid:
            return self._fallback(
                tp, "corrupt" if checkpoint.corrupt else "invalid", checkpoint.corrupt or checkpoint.invalid
            )
        if checkpoint.model_version != self.model.version:
            self.metrics.restore_fallback("schema_mismatch")
            log.warning(
                "state.restore_fallback",
                topic=tp.topic,
                partition=tp.partition,
                reason="checkpoint from model " + checkpoint.model_version,
            )
            return False
        first = self.consumer.beginning_offsets([tp])[tp]  # type: ignore[union-attr]
        end = max(self.consumer.end_offsets([tp])[tp], committed or 0)  # type: ignore[union-attr]
        if not first <= checkpoint.next_offset <= end:
            return self._fallback(
                tp, "invalid", f"checkpoint offset {checkpoint.next_offset} outside the partition's {first}..{end}"
            )
        owner = self._owners[tp]
        try:
            count = self.detector.store.restore(checkpoint.blob, owner, time.time(), tag=self.model.version)
        except CheckpointError as error:
            return self._fallback(tp, error.reason, str(error))
        except Exception as error:  # checked states that still did not fit: none of them stays
            self.detector.store.drop_owner(owner)
            return self._fallback(tp, "invalid", f"{type(error).__name__}: {error}"[:300])
        log.info(
            "state.restored", topic=tp.topic, partition=tp.partition, entities=count, offset=checkpoint.next_offset
        )
        return True

    def _fallback(self, tp: TopicPartition, reason: str, detail: str) -> bool:
        """Count and log an unusable checkpoint (the partition starts from fresh states); False."""
        self.metrics.restore_fallback(reason)
        log.error("state.restore_fallback", topic=tp.topic, partition=tp.partition, reason=detail, fallback=reason)
        return False


def run_service(settings: Settings, config_path: Path | None = None) -> int:
    """Load the model, serve metrics, install signal handlers and run until told to stop; SIGHUP
    reloads the settings file ``config_path`` and the model (:mod:`detector.reload`)."""
    loaded = load_run_time(config_path, settings)
    service = Service(settings, loaded.scoring_model(), run_time=loaded.scoring)
    reloader = Reloader(config_path, loaded, service.replace_detector, service.metrics)
    server = serve(service.metrics, service.health, settings.metrics.host, settings.metrics.port)
    log.info("metrics.serving", url=server.url)
    signal.signal(signal.SIGTERM, service.stop)
    signal.signal(signal.SIGINT, service.stop)
    signal.signal(signal.SIGHUP, reloader.request)
    reloader.start()
    watchdog = threading.Thread(target=_exit_after_grace, args=(service, settings.stream.shutdown_grace_s), daemon=True)
    watchdog.start()
    try:
        return service.run()
    except StartupError as error:
        print(f"detector run: {error}", file=sys.stderr)
        return 2
    finally:
        reloader.close()
        server.close()


def _freeze_startup_objects() -> None:
    """Exclude everything allocated so far (torch, kafka-python, the model) from garbage collection
    while the service runs (:meth:`Service.run` unfreezes them when it returns).

    Python's full (generation 2) collections scan every tracked object; with torch imported
    that took up to 216 ms in the loop, the largest single cause of the latency tail at 12,500
    msg/s. Frozen objects are never scanned (``gc.freeze``), and after this the full collections
    took 4-18 ms. Objects created later (entity states, batches) are collected as usual.
    """
    gc.collect()
    gc.freeze()


def _exit_after_grace(service: Service, grace_s: float) -> None:
    """Hard exit if a clean shutdown takes longer than the grace period (messages will replay)."""
    service._stop.wait()
    time.sleep(grace_s)
    log.error("service.grace_exceeded", grace_s=grace_s, note="exiting; uncommitted messages will be replayed")
    os._exit(1)
