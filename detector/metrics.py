"""Prometheus metrics of the detector: one call per fact the service records.

Every :class:`Metrics` instance owns its own ``CollectorRegistry`` (so tests can
create several side by side), and no metric ever carries a per-entity label:
label values come from small fixed sets, or from topic/partition for lag.
The series themselves are declared in :mod:`detector.metric_definitions`, the
health state in :mod:`detector.health`, the HTTP endpoint in :mod:`detector.metrics_http`.

Typical wiring in the service::

    metrics = Metrics()
    metrics.set_build_info(version="0.1.0")
    metrics.set_model_info(version="2024-06-01", cell="lstm", features=8)
    health = Health(stall_after_s=60.0, metrics=metrics)
    server = serve(metrics, health, host="0.0.0.0", port=9100)
    try:
        while running:
            batch = poll()
            ...
            metrics.messages("scored", n=len(scored))
            metrics.observe_batch(len(batch), step_seconds)
            health.beat()              # also while idle
        health.set_ready(False, "shutting down")
    finally:
        server.close()

``detector_checkpoint_age_seconds`` is computed at scrape time. Before the first
successful checkpoint it is the time since this ``Metrics`` was created (process
start), so ``DetectorCheckpointTooOld`` still fires when checkpoints never happen.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import platform
from collections.abc import Iterable

import numpy as np
from numpy.typing import ArrayLike
from prometheus_client import generate_latest

from detector.batch_histogram import BatchHistogram
from detector.health import Health
from detector.metric_definitions import (
    ALERT_KINDS,
    DEAD_LETTER_REASONS,
    EVICTION_REASONS,
    MESSAGE_OUTCOMES,
    RELOAD_OUTCOMES,
    RESTORE_FALLBACK_REASONS,
    MetricDefinitions,
)
from detector.metrics_http import HTTP_CHANNEL_TIMEOUT_S, HTTP_CLEANUP_INTERVAL_S, MetricsServer, serve

__all__ = [
    "ALERT_KINDS",
    "DEAD_LETTER_REASONS",
    "EVICTION_REASONS",
    "HTTP_CHANNEL_TIMEOUT_S",
    "HTTP_CLEANUP_INTERVAL_S",
    "MESSAGE_OUTCOMES",
    "RELOAD_OUTCOMES",
    "RESTORE_FALLBACK_REASONS",
    "BatchHistogram",
    "Health",
    "Metrics",
    "MetricsServer",
    "metrics_table",
    "serve",
]


def _check(value: str, allowed: Iterable[str], what: str) -> str:
    """Return ``value`` if it belongs to ``allowed``; raise ``ValueError`` otherwise.

    Keeps label cardinality bounded: an unexpected label value is a bug, not data.
    """
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {allowed}")
    return value


def _torch_version() -> str:
    """The installed torch version, read from package metadata (no torch import)."""
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class Metrics(MetricDefinitions):
    """All detector metrics, registered on a private ``CollectorRegistry``.

    Example::

        m = Metrics()
        m.messages("scored", n=32)
        m.dead_letter("not_json")        # also counts messages_total{outcome="dead_letter"}
        m.alert("open")
        m.observe_score(4.2, probability=0.31)
        m.set_lag("sensors", 3, 120)
        m.forget_partition("sensors", 3)  # on revoke
        text = m.render()                 # bytes in the Prometheus text format
    """

    # ------------------------------------------------------------ message flow
    def messages(self, outcome: str, n: int = 1) -> None:
        """Count ``n`` consumed messages with ``outcome`` in ``MESSAGE_OUTCOMES``."""
        self.messages_total.labels(outcome=_check(outcome, MESSAGE_OUTCOMES, "outcome")).inc(n)

    def dead_letter(self, reason: str) -> None:
        """Count one dead letter by ``reason`` (and one ``dead_letter`` outcome)."""
        self.dead_letters_total.labels(reason=_check(reason, DEAD_LETTER_REASONS, "reason")).inc()
        self.messages_total.labels(outcome="dead_letter").inc()

    def alert(self, kind: str, n: int = 1) -> None:
        """Count ``n`` published alerts of ``kind`` ("open" or "close")."""
        self.alerts_total.labels(kind=_check(kind, ALERT_KINDS, "kind")).inc(n)

    def observe_score(self, score: ArrayLike, probability: ArrayLike | None = None) -> None:
        """Record the anomaly scores (and probabilities, when known) of one or many messages."""
        self.anomaly_score.observe(score)
        if probability is not None:
            self.anomaly_probability.observe(probability)

    def observe_batch(self, size: int, step_seconds: float) -> None:
        """Record one batched model step: its message count and latency."""
        self.batch_size.observe(size)
        self.step_duration.observe(step_seconds)

    def observe_end_to_end(self, seconds: ArrayLike) -> None:
        """Record message-timestamp-to-decision latencies, one or many (negative clock skew clamps to 0)."""
        self.end_to_end_latency.observe(np.maximum(np.asarray(seconds, dtype=np.float64), 0.0))

    def progress(self, at: float | None = None) -> None:
        """Mark a processing-loop iteration (Unix time, default now)."""
        self.loop_last_progress.set(self._clock() if at is None else at)

    # ------------------------------------------------------------ Kafka
    def set_lag(self, topic: str, partition: int, lag: int) -> None:
        """Set the consumer lag of one assigned partition."""
        self.consumer_lag.labels(topic=topic, partition=str(partition)).set(lag)

    def forget_partition(self, topic: str, partition: int) -> None:
        """Drop the lag series of a revoked partition (no-op if it has none)."""
        with contextlib.suppress(KeyError):
            self.consumer_lag.remove(topic, str(partition))

    def set_partitions_assigned(self, n: int) -> None:
        """Set the number of input partitions currently assigned."""
        self.partitions_assigned.set(n)

    def commit_failed(self) -> None:
        """Count one failed offset commit."""
        self.commit_failures_total.inc()

    def broker_reconnected(self) -> None:
        """Count one reconnection to the brokers."""
        self.broker_reconnects_total.inc()

    def publish_failed(self) -> None:
        """Count one failed publish."""
        self.publish_failures_total.inc()

    def publish_fatal(self, error: str) -> None:
        """Count one publish failure that stops the service (``error``: the exception's class name)."""
        self.publish_fatal_total.labels(error=error).inc()

    # ------------------------------------------------------------ entity state
    def set_entities(self, n: int) -> None:
        """Set the number of entities with live state."""
        self.entities_tracked.set(n)

    def set_entities_on_previous_model(self, n: int) -> None:
        """Set the number of entities a previous model version still decides (a rollout)."""
        self.entities_on_previous_model.set(n)

    def eviction(self, reason: str, n: int = 1) -> None:
        """Count ``n`` evicted entity states by ``reason`` ("ttl" or "capacity")."""
        self.entity_evictions_total.labels(reason=_check(reason, EVICTION_REASONS, "reason")).inc(n)

    def restore_fallback(self, reason: str) -> None:
        """Count one restore that fell back to fresh state ("corrupt", "invalid", "missing", "model_version")."""
        self.state_restore_fallbacks_total.labels(reason=_check(reason, RESTORE_FALLBACK_REASONS, "reason")).inc()

    # ------------------------------------------------------------ checkpoints
    def checkpoint_succeeded(self, duration_s: float, at: float | None = None) -> None:
        """Record a successful checkpoint that took ``duration_s`` and finished at ``at``."""
        finished = self._clock() if at is None else at
        self.checkpoint_duration.observe(duration_s)
        with self._lock:
            self._last_checkpoint = finished
        self.checkpoint_last_success.set(finished)

    def checkpoint_failed(self) -> None:
        """Count one failed checkpoint."""
        self.checkpoint_failures_total.inc()

    # ------------------------------------------------------------ info
    def set_model_info(self, version: str, cell: str, features: int) -> None:
        """Publish ``detector_model_info{version,cell,features} 1``."""
        self.model_info.info({"version": str(version), "cell": str(cell), "features": str(features)})

    def set_alert_threshold(self, probability: float) -> None:
        """Set the probability at or above which an alert opens."""
        self.alert_threshold.set(probability)

    def reload(self, outcome: str) -> None:
        """Count one reload by ``outcome`` in ``RELOAD_OUTCOMES``."""
        self.reloads_total.labels(outcome=_check(outcome, RELOAD_OUTCOMES, "outcome")).inc()

    def set_build_info(self, version: str, python: str | None = None, torch: str | None = None) -> None:
        """Publish ``detector_build_info{version,python,torch} 1`` (python/torch detected if omitted)."""
        self.build_info.info(
            {
                "version": str(version),
                "python": python or platform.python_version(),
                "torch": torch or _torch_version(),
            }
        )

    # ------------------------------------------------------------ exposition
    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format."""
        return generate_latest(self.registry)


def metrics_table() -> str:
    """A Markdown table of every ``detector_*`` metric (the README embeds it; a test keeps them equal)."""
    metrics = Metrics(process_metrics=False)
    metrics.set_lag("topic", 0, 0)
    metrics.set_model_info("v", "lstm", 1)
    metrics.set_build_info("v")
    metrics.publish_fatal_total.labels(error="KafkaError")  # open label values: one sample shows the label
    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for family in metrics.registry.collect():
        suffix = {"counter": "_total", "info": "_info"}.get(family.type, "")
        labels = sorted({k for s in family.samples for k in s.labels if k != "le"})
        shown = ", ".join(f"`{label}`" for label in labels) or "-"
        rows.append(f"| `{family.name}{suffix}` | {family.type} | {shown} | {family.documentation} |")
    return "\n".join(rows)
