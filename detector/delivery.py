"""Waiting for the broker to acknowledge a batch's outputs, and what a failure means.

A batch's offsets are committed, and its partitions' states checkpointed, only once every alert,
score and dead letter it produced is acknowledged. A failure is one of two kinds:

* retriable (timeouts, a broker or leader away, a full buffer): the records are sent again with
  a growing pause (0.5 s doubling to 10 s) until the broker takes them or the service is told to
  stop; each attempt is an error event and a count in ``detector_publish_failures_total``;
* fatal (the record is larger than the broker accepts, the topic does not exist, the service may
  not write to it): retrying cannot help, so :class:`PublishFatal` ends the service with exit
  code 1, one ``publish.fatal`` event and a count in ``detector_publish_fatal_total{error}``.

In both cases nothing past the last acknowledged batch is committed or checkpointed, so after a
restart the batch is processed, and its alerts published, again.
"""

from __future__ import annotations

import threading
from typing import Protocol

from kafka import errors as kafka_errors

from detector.logs import get_logger
from detector.metrics import Metrics

__all__ = ["PublishFatal", "StoppedUnacknowledged", "confirm_until_acknowledged", "fatal_reason"]

log = get_logger(__name__)

_FATAL: tuple[tuple[type[BaseException], str], ...] = (
    (kafka_errors.MessageSizeTooLargeError, "a record is larger than the broker accepts (max.message.bytes)"),
    (kafka_errors.RecordListTooLargeError, "a record batch is larger than the broker accepts"),
    (kafka_errors.UnknownTopicOrPartitionError, "an output topic does not exist"),
    (kafka_errors.InvalidTopicError, "an output topic name is invalid"),
    (kafka_errors.AuthorizationError, "the service is not authorised to write to an output topic"),
    (kafka_errors.SaslAuthenticationFailedError, "the broker refused the service's credentials"),
)


class PublishFatal(Exception):
    """A publish failed in a way that retrying cannot mend; the service stops with exit 1."""

    def __init__(self, error: BaseException, reason: str):
        super().__init__(f"outputs could not be published: {reason} ({type(error).__name__})")
        self.error, self.reason = error, reason


class StoppedUnacknowledged(Exception):
    """Told to stop while the batch's outputs were still unacknowledged."""


class _Publisher(Protocol):
    def confirm(self, timeout_s: float) -> None: ...

    def retry_failed(self) -> int: ...


def fatal_reason(error: BaseException) -> str | None:
    """What makes ``error`` fatal, or None when the publish may succeed if retried."""
    for kind, reason in _FATAL:
        if isinstance(error, kind):
            return reason
    return None


def confirm_until_acknowledged(
    publisher: _Publisher, timeout_s: float, stop: threading.Event, metrics: Metrics
) -> None:
    """Block until every record ``publisher`` holds is acknowledged, retrying retriable failures.

    Raises :class:`PublishFatal` on a fatal failure, :class:`StoppedUnacknowledged` when ``stop``
    is set while a failure is being retried.
    """
    delay = 0.5
    while True:
        try:
            publisher.confirm(timeout_s=timeout_s)
            return
        except Exception as error:
            metrics.publish_failed()
            reason = fatal_reason(error)
            if reason is not None:
                metrics.publish_fatal(type(error).__name__)
                raise PublishFatal(error, reason) from error
            log.error("stream.publish_failed", error=repr(error), retry_in_s=delay)
            if stop.wait(delay):
                raise StoppedUnacknowledged(f"outputs not acknowledged at shutdown: {error!r}") from error
            delay = min(delay * 2, 10.0)
            publisher.retry_failed()
