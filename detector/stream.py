"""``detector run``: the consumer-group member that scores every message and publishes alerts.

:class:`Service` wires the parts and runs the loop; each step is owned by one module:

======================  =====================================================================
poll                    :mod:`detector.batch` (micro-batches, records from before a rebalance dropped)
restore                 :mod:`detector.recovery` (pause, restore from checkpoint, replay, resume)
decode, score           :mod:`detector.guard` (bad input refused with a reason, one batched step)
publish                 :mod:`detector.outputs` (scores, alerts, dead letters)
confirm                 :mod:`detector.delivery` (wait for the broker; retriable vs fatal failures)
commit                  :mod:`detector.offsets` (asynchronous, never below the committed offset)
checkpoint              :mod:`detector.checkpointing` (periodic, revoke, shutdown)
upkeep                  :mod:`detector.housekeeping`, :mod:`detector.broker_health`
======================  =====================================================================

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

import functools
import gc
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from detector import __version__
from detector.alerts import Publisher
from detector.batch import Batch, Fetched, Poller, count
from detector.broker_health import BrokerHealth
from detector.checkpointing import CheckpointScheduler
from detector.checkpoints import CheckpointStore
from detector.config import Settings, StreamSettings
from detector.delivery import PublishFatal, StoppedUnacknowledged, fatal_reason
from detector.guard import BatchGuard
from detector.housekeeping import Housekeeping
from detector.kafka_config import consumer_config, kafka_client_config, open_client, producer_config
from detector.logs import get_logger
from detector.metrics import Health, Metrics, serve
from detector.model import FittedModel
from detector.model_store import ModelStore
from detector.offsets import Committer, Positions
from detector.outputs import BatchOutputs
from detector.partition_states import PartitionStates
from detector.recovery import PartitionRecovery, names
from detector.reload import Reloader
from detector.reload import load as load_run_time
from detector.runtime import RunTimeScoring
from detector.schema import MessageDecoder, MessageFields
from detector.scoring import Detector
from detector.startup import StartupError, broker_ready

__all__ = ["Service", "consumer_config", "kafka_client_config", "producer_config", "run_service"]

log = get_logger(__name__)
_HELD_BACK_NOTE = (
    "nothing past the last acknowledged batch is committed or checkpointed; it is processed again after a restart"
)


class _Rebalance(ConsumerRebalanceListener):
    """kafka-python's rebalance callbacks, handed to the group membership and partition recovery."""

    def __init__(self, broker: BrokerHealth, recovery: PartitionRecovery):
        self.broker, self.recovery = broker, recovery

    def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        self.broker.rejoining()
        self.recovery.revoked(list(revoked))

    def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        self.broker.joined()
        self.recovery.assigned(list(assigned))


class Service:
    """The streaming service; ``run()`` blocks until :meth:`stop` or a signal. Its Kafka parts are
    built when it connects; the Detector is held by :attr:`states` alone (:meth:`replace_detector`)."""

    consumer: KafkaConsumer
    producer: KafkaProducer
    broker: BrokerHealth
    checkpoints: CheckpointScheduler
    recovery: PartitionRecovery
    committer: Committer
    poller: Poller
    outputs: BatchOutputs
    housekeeping: Housekeeping

    def __init__(
        self,
        settings: Settings,
        model: FittedModel,
        metrics: Metrics | None = None,
        run_time: RunTimeScoring | None = None,
    ):
        self.settings, self.run_time = settings, run_time
        self.metrics = metrics or Metrics()
        self.health = Health(settings.metrics.stall_after_s, metrics=self.metrics)
        self.states = PartitionStates(_bounded(settings.stream, model))
        self.guard = _guard(self.settings.stream, self.states.detector)
        self.positions = Positions()
        self.stopping = threading.Event()  # set by stop(): the loop finishes the batch in hand and returns
        self._pending: list[Fetched] = []

    @property
    def detector(self) -> Detector:
        """The Detector scoring the stream."""
        return self.states.detector

    @property
    def model(self) -> FittedModel:
        """The model of the Detector scoring the stream."""
        return self.states.detector.model

    def offer_detector(self, detector: Detector) -> None:
        """:meth:`replace_detector` from any thread (the reload thread): the loop swaps it in."""
        self.states.offer(detector)

    def replace_detector(self, detector: Detector) -> None:
        """Score with ``detector`` from the next batch on (loop thread, between batches); states carry
        over within a model version, and another version is rolled out entity by entity
        (:meth:`PartitionStates.replace`). The checkpoints and upkeep follow the states they hold."""
        if self.states.replace(detector):
            self.guard = _guard(self.settings.stream, detector)
            _show_model(self.metrics, detector)

    def stop(self, *_: Any) -> None:
        """Ask the loop to finish the batch in hand, commit, checkpoint and return."""
        self.stopping.set()

    def run(self) -> int:
        """Consume until stopped; returns the process exit code (0 on a clean shutdown)."""
        if not broker_ready(self.settings.kafka, self.stopping, self.health):
            return 0
        self._connect()
        _freeze_startup_objects()
        _log_start(self)
        code = 0
        try:
            while not self.stopping.is_set():
                self._pending.extend(self.poller.poll(held=count(self._pending)))
                self.recovery.restore_assigned()
                if (offered := self.states.take_offer()) is not None:
                    self.replace_detector(offered)
                self._process_pending()
                self._housekeeping()
        except PublishFatal as error:
            log.error(
                "publish.fatal",
                error=repr(error.error),
                reason=error.reason,
                partitions_held_back=names(self.checkpoints.held_back),
                note=_HELD_BACK_NOTE,
            )
            code = 1
        except KafkaError as error:
            log.error(
                "stream.kafka_failed",
                error=repr(error),
                partitions_held_back=names(self.checkpoints.held_back),
                note=_HELD_BACK_NOTE,
            )
            code = 1
        except StoppedUnacknowledged as error:
            log.warning(
                "service.stopped_unacknowledged",
                error=str(error),
                partitions_held_back=names(self.checkpoints.held_back),
                note="the batch in hand is processed again after a restart",
            )
        finally:
            self._shutdown()
            gc.unfreeze()  # a process running services one after another (tests) gets them collected again
        return code

    def _process_pending(self) -> None:
        """Decode, score, publish, confirm and commit the records in hand (each loop and at shutdown)."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        with self._held_back_on_failure({f.tp for f in pending}):
            batch = Batch(pending, self.positions)
            drop_stale = self.settings.stream.reject_out_of_order
            owners = batch.owners(self.states)
            guarded = self.guard.score(batch.values, batch.keys, owners, drop_stale=drop_stale)
            self.states.decide(guarded.outcomes, owners[guarded.accepted], drop_stale)
            self.metrics.observe_batch(len(guarded.outcomes), guarded.step_seconds)
            self.committer.await_commit()  # the previous batch's: nothing of this batch is out before it is committed
            scored = self.outputs.publish(batch, guarded, self.detector)
            self.outputs.confirm()
            self.positions.advance(batch.last_offsets())
            self.committer.commit(batch.partitions)
            self.outputs.count_scored(guarded.outcomes, scored)
            self.positions.finish_replays()

    @contextmanager
    def _held_back_on_failure(self, in_hand: set[TopicPartition]) -> Iterator[None]:
        """If the batch does not finish, its partitions hold states ahead of their acknowledged
        outputs: they are never checkpointed again by this instance. A producer error that
        retrying cannot mend (raised by a send itself) becomes :class:`PublishFatal`."""
        try:
            yield
        except BaseException as error:
            self.checkpoints.hold_back(in_hand)
            reason = fatal_reason(error) if isinstance(error, KafkaError) else None
            if reason is not None:
                raise PublishFatal(error, reason) from error
            raise

    def _housekeeping(self) -> None:
        """Every loop: liveness beat and checkpoints; at most once a second: eviction, gauges, broker checks."""
        self.health.beat()
        self.checkpoints.tick(self.recovery.owned)
        self.housekeeping.tick(self.recovery.owned)

    def _connect(self) -> None:
        """Create the Kafka clients and the parts that use them; subscribe."""
        kafka, stream = self.settings.kafka, self.settings.stream
        self.producer = open_client(KafkaProducer, **producer_config(kafka))
        store = CheckpointStore(self.producer, kafka.checkpoint_topic, kafka.group_id, kafka_client_config(kafka))
        self.consumer = open_client(KafkaConsumer, **consumer_config(kafka))
        self.broker = BrokerHealth(
            self.consumer, self.producer, self.metrics, self.health, kafka.session_timeout_ms / 1000
        )
        models = ModelStore(
            CheckpointStore(self.producer, kafka.checkpoint_topic, kafka.group_id, kafka_client_config(kafka)),
            functools.partial(_bounded, stream),
            self.model.features,
        )
        self.states.models = models.detector
        self.checkpoints = CheckpointScheduler(
            store, self.positions, self.states, self.metrics, stream.checkpoint_interval_s, models
        )
        self.recovery = PartitionRecovery(
            self.consumer, store, self.positions, self.states, self.checkpoints, self.metrics, self.health
        )
        self.committer = Committer(
            self.consumer,
            self.positions,
            self.broker.coordinator_unknown,
            self.metrics,
            kafka.request_timeout_ms / 1000,
        )
        self.poller = Poller(
            self.consumer,
            self.recovery,
            stream.batch_max_messages,
            stream.batch_max_ms,
            kafka.max_poll_records,
            self.stopping,
        )
        self.outputs = BatchOutputs(Publisher(self.producer), kafka, stream, self.metrics, self.stopping)
        self.housekeeping = Housekeeping(self.consumer, self.states, self.positions, self.broker, self.metrics)
        self.consumer.subscribe(kafka.input_topics, listener=_Rebalance(self.broker, self.recovery))
        _show_model(self.metrics, self.detector)
        self.metrics.set_build_info(__version__)
        self.health.set_ready(False, "waiting for partition assignment")

    def _shutdown(self) -> None:
        """Finish the batch in hand, commit and checkpoint every owned partition, close the clients."""
        log.info("service.stopping", pending=count(self._pending), partitions=len(self.recovery.owned))
        self.health.set_ready(False, "shutting down")
        try:
            self.broker.finish_join(self.settings.stream.shutdown_grace_s / 3)
            self._process_pending()
            self.committer.await_commit()
            self.committer.commit(self.recovery.owned, wait=True)
            self.checkpoints.checkpoint_now(self.recovery.owned, reason="shutdown")
        except (KafkaError, PublishFatal, StoppedUnacknowledged) as error:
            log.error("service.shutdown_incomplete", error=repr(error), note="uncommitted messages will be replayed")
        finally:
            self.consumer.close(autocommit=False)
            self.producer.close(timeout=5)
        log.info("service.stopped")


def _log_start(service: Service) -> None:
    """The ``service.start`` event: versions, topics, the alert level and where each run-time value came from."""
    log.info(
        "service.start",
        version=__version__,
        model_version=service.model.version,
        topics=service.settings.kafka.input_topics,
        group=service.settings.kafka.group_id,
        alert_probability=round(service.detector.threshold, 4),
        run_time_settings=service.run_time.describe() if service.run_time else None,
    )


def _show_model(metrics: Metrics, detector: Detector) -> None:
    """Model info and alert level gauges for ``detector``."""
    model = detector.model
    metrics.set_model_info(model.version, model.network.architecture.cell, len(model.features))
    metrics.set_alert_threshold(detector.threshold)


def _bounded(stream: StreamSettings, model: FittedModel) -> Detector:
    """A Detector of ``model`` whose store has the stream's bounds."""
    return Detector(model, max_entities=stream.max_entities, ttl_s=stream.entity_ttl_s)


def _guard(stream: StreamSettings, detector: Detector) -> BatchGuard:
    """The guard that decodes, validates and scores batches for ``detector``."""
    fields = MessageFields(
        stream.entity_field,
        stream.timestamp_field,
        stream.values_field,
        stream.max_message_bytes,
        stream.max_entity_chars,
    )
    return BatchGuard(MessageDecoder(detector.model.features, fields), detector, stream.max_future_skew_s)


def run_service(settings: Settings, config_path: Path | None = None) -> int:
    """Load the model, serve metrics, install signal handlers and run until told to stop; SIGHUP
    reloads the settings file ``config_path`` and the model (:mod:`detector.reload`)."""
    loaded = load_run_time(config_path, settings)
    service = Service(settings, loaded.scoring_model(), run_time=loaded.scoring)
    reloader = Reloader(config_path, loaded, service.offer_detector, service.metrics)
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

    Python's full collections scan every tracked object, and torch alone brings many; frozen
    objects are never scanned (``gc.freeze``), which keeps those pauses out of the loop's
    latency. Objects created later (entity states, batches) are collected as usual.
    """
    gc.collect()
    gc.freeze()


def _exit_after_grace(service: Service, grace_s: float) -> None:
    """Hard exit if a clean shutdown takes longer than the grace period (messages will replay)."""
    service.stopping.wait()
    time.sleep(grace_s)
    log.error("service.grace_exceeded", grace_s=grace_s, note="exiting; uncommitted messages will be replayed")
    os._exit(1)
