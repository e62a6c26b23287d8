"""A batch's outputs: scores and alerts for the scored messages, dead letters for the refused ones.

Messages replayed to rebuild states publish nothing. A message whose output record cannot be
built becomes a dead letter itself (stage ``output``), and a message older than its entity's
last is refused as ``stale_timestamp``. :meth:`BatchOutputs.confirm` then blocks until the broker
has acknowledged every record of the batch (see :mod:`detector.delivery`): only after that are
its offsets committed.

>>> outputs = BatchOutputs(publisher, settings.kafka, settings.stream, metrics, stop)  # doctest: +SKIP
>>> scored = outputs.publish(batch, guarded, detector)                                # doctest: +SKIP
>>> outputs.confirm()                                                                 # doctest: +SKIP
"""

from __future__ import annotations

import threading
import time

import numpy as np

from detector.alerts import Publisher, alert_record, score_record
from detector.batch import Batch
from detector.config import KafkaSettings, StreamSettings
from detector.deadletter import Context, dead_letter
from detector.delivery import confirm_until_acknowledged
from detector.guard import Guarded, Refused
from detector.logs import get_logger
from detector.metrics import Metrics
from detector.schema import BadMessage
from detector.scoring import Detector, Outcomes

__all__ = ["BatchOutputs", "stale_refusals"]

log = get_logger(__name__)
_DEAD_LETTER_LOG_EVERY_S = 10.0


def stale_refusals(outcomes: Outcomes, accepted: np.ndarray) -> list[Refused]:
    """The messages the detector refused as older than their entity's last."""
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


class BatchOutputs:
    """Publishes a batch's scores, alerts and dead letters, and waits for their acknowledgement."""

    def __init__(
        self,
        publisher: Publisher,
        kafka: KafkaSettings,
        stream: StreamSettings,
        metrics: Metrics,
        stop: threading.Event,
    ):
        self.publisher, self.kafka, self.stream, self.metrics, self.stop = publisher, kafka, stream, metrics, stop
        self._last_dead_letter_log = 0.0

    def publish(self, batch: Batch, guarded: Guarded, detector: Detector) -> np.ndarray:
        """Queue the batch's outputs; returns, per accepted message, whether it counts as scored."""
        accepted, outcomes = guarded.accepted, guarded.outcomes
        dead = [*guarded.refused, *stale_refusals(outcomes, accepted)]
        scored = batch.live[accepted] & ~outcomes.stale
        dead.extend(self._publish_scored(batch, accepted, outcomes, scored, detector))
        self._publish_dead_letters(batch, [refused for refused in dead if batch.live[refused.position]], detector)
        return scored

    def confirm(self) -> None:
        """Block until the broker has acknowledged every queued output (see :mod:`detector.delivery`)."""
        confirm_until_acknowledged(self.publisher, self.kafka.request_timeout_ms / 1000, self.stop, self.metrics)

    def count_scored(self, outcomes: Outcomes, scored: np.ndarray) -> None:
        """Metrics of the messages scored: how many, their scores and probabilities, their end-to-end latency."""
        self.metrics.messages("scored", int(scored.sum()))
        if scored.any():
            self.metrics.observe_score(outcomes.score[scored], outcomes.probability[scored])
            self.metrics.observe_end_to_end(time.time() - outcomes.batch.timestamps[scored])

    def _publish_scored(
        self, batch: Batch, accepted: np.ndarray, outcomes: Outcomes, scored: np.ndarray, detector: Detector
    ) -> list[Refused]:
        """Publish the scored messages' records; a message whose records cannot be built is
        unmarked in ``scored`` and returned for the dead-letter topic."""
        scores_topic, alert_topic = self.kafka.scores_topic, self.kafka.alert_topic
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
                source = batch.source(position)
                built = [(scores_topic, score_record(decision, source))] if scores_topic else []
                if decision.event:
                    decider = outcomes.decided_by.get(int(i), (detector.model.version, detector.threshold))
                    built.append((alert_topic, alert_record(decision, decider[1], decider[0], source)))
            except Exception as error:  # noqa: BLE001 -- one message's output failing is that message's dead letter
                scored[i] = False
                failed.append(Refused(position, BadMessage.unexpected(error), "output"))
                continue
            for topic, record in built:
                self.publisher.send(topic, decision.entity, record)
            if decision.event:
                self.metrics.alert(decision.event)
        return failed

    def _publish_dead_letters(self, batch: Batch, dead: list[Refused], detector: Detector) -> None:
        """Each refused message's record, as it came, to the dead-letter topic (see :mod:`detector.deadletter`)."""
        topic, max_bytes = self.kafka.dead_letter_topic, self.stream.dead_letter_max_bytes
        for position, error, stage in dead:
            tp, record = batch.partition_of(position), batch.records[position]
            context = Context(
                tp.topic, tp.partition, record.offset, getattr(record, "timestamp", None), stage, detector.model.version
            )
            try:
                letter = dead_letter(record.key, record.value, getattr(record, "headers", None), error, context)
            except Exception:  # noqa: BLE001 -- unusable input headers: the letter goes without them
                letter = dead_letter(record.key, record.value, None, error, context)
            self.publisher.send_dead_letter(topic, letter, max_bytes)
            self.metrics.dead_letter(error.reason)
        if dead and time.monotonic() - self._last_dead_letter_log > _DEAD_LETTER_LOG_EVERY_S:
            self._last_dead_letter_log = time.monotonic()
            position, error, _ = dead[-1]
            tp = batch.partition_of(position)
            log.warning(
                "stream.dead_letters",
                count=len(dead),
                example_reason=error.reason,
                example_detail=error.detail[:200],
                topic=tp.topic,
                partition=tp.partition,
                offset=batch.records[position].offset,
            )
