"""What a failed publish leads to: retried until acknowledged, or a fatal stop (detector.delivery)."""

from __future__ import annotations

import threading

import pytest
from kafka import errors as kafka_errors

from detector.delivery import PublishFatal, StoppedUnacknowledged, confirm_until_acknowledged, fatal_reason
from detector.metrics import Metrics


class FailingPublisher:
    """A publisher whose ``confirm`` raises each of ``failures`` in turn, then succeeds."""

    def __init__(self, *failures: BaseException):
        self.failures = list(failures)
        self.confirms = self.retries = 0

    def confirm(self, timeout_s: float) -> None:
        self.confirms += 1
        if self.failures:
            raise self.failures.pop(0)

    def retry_failed(self) -> int:
        self.retries += 1
        return 1


def _count(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels or None) or 0.0


@pytest.mark.parametrize(
    "error",
    [
        kafka_errors.MessageSizeTooLargeError(),
        kafka_errors.UnknownTopicOrPartitionError(),
        kafka_errors.TopicAuthorizationFailedError(),
        kafka_errors.InvalidTopicError(),
    ],
    ids=lambda e: type(e).__name__,
)
def test_fatal_errors_stop_at_once_with_a_reason_and_a_metric(error):
    publisher, metrics = FailingPublisher(error), Metrics()
    with pytest.raises(PublishFatal) as raised:
        confirm_until_acknowledged(publisher, 1.0, threading.Event(), metrics)
    assert publisher.confirms == 1 and publisher.retries == 0, "never retried"
    assert raised.value.error is error and type(error).__name__ in str(raised.value)
    assert _count(metrics, "detector_publish_fatal_total", error=type(error).__name__) == 1


def test_retriable_errors_are_retried_until_acknowledged():
    publisher, metrics = (
        FailingPublisher(kafka_errors.KafkaTimeoutError(), kafka_errors.NotLeaderForPartitionError()),
        Metrics(),
    )
    confirm_until_acknowledged(publisher, 1.0, threading.Event(), metrics)
    assert publisher.confirms == 3 and publisher.retries == 2
    assert _count(metrics, "detector_publish_failures_total") == 2


def test_a_stop_during_retries_ends_them_unacknowledged():
    stop = threading.Event()
    stop.set()
    publisher = FailingPublisher(kafka_errors.KafkaTimeoutError(), kafka_errors.KafkaTimeoutError())
    with pytest.raises(StoppedUnacknowledged):
        confirm_until_acknowledged(publisher, 1.0, stop, Metrics())
    assert publisher.confirms == 1


def test_only_unmendable_errors_are_fatal():
    assert fatal_reason(kafka_errors.RecordListTooLargeError()) and fatal_reason(
        kafka_errors.ClusterAuthorizationFailedError()
    )
    assert fatal_reason(kafka_errors.KafkaTimeoutError()) is None
    assert fatal_reason(kafka_errors.KafkaConnectionError()) is None
    assert fatal_reason(TimeoutError("record not acknowledged yet")) is None
