"""The detector's Prometheus series: names, help texts, label sets and buckets.

Label values come from the small fixed sets below (or topic/partition for lag), never from
entity names, so the number of series stays bounded however many entities report.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, PlatformCollector, ProcessCollector

from detector.batch_histogram import BatchHistogram

__all__ = [
    "ALERT_KINDS",
    "DEAD_LETTER_REASONS",
    "EVICTION_REASONS",
    "MESSAGE_OUTCOMES",
    "RELOAD_OUTCOMES",
    "RESTORE_FALLBACK_REASONS",
    "MetricDefinitions",
]


MESSAGE_OUTCOMES: tuple[str, ...] = ("scored", "dead_letter")
DEAD_LETTER_REASONS: tuple[str, ...] = (
    "not_json",
    "schema",
    "missing_feature",
    "non_numeric",
    "non_finite",
    "too_large",
    "timestamp",
    "stale_timestamp",
    "future_timestamp",
    "internal_error",
)
ALERT_KINDS: tuple[str, ...] = ("open", "close")
EVICTION_REASONS: tuple[str, ...] = ("ttl", "capacity")
RESTORE_FALLBACK_REASONS: tuple[str, ...] = ("corrupt", "invalid", "schema_mismatch", "missing", "model_version")
RELOAD_OUTCOMES: tuple[str, ...] = ("applied", "unchanged", "refused")

SCORE_BUCKETS = (0.5, 1, 2, 3, 5, 8, 13, 21, 34, 55, 100, 250, 1000)
PROBABILITY_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
STEP_DURATION_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
)
END_TO_END_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
CHECKPOINT_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class MetricDefinitions:
    """Creates every ``detector_*`` series on a private ``CollectorRegistry``.

    Each instance owns its registry, so tests can create several side by side. Every fixed
    label value is created at 0, so rates and ratios exist from the first scrape.
    :class:`detector.metrics.Metrics` adds the calls that record facts on these series.
    """

    def __init__(self, *, process_metrics: bool = True, clock: Callable[[], float] = time.time) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._clock = clock
        self._started_at = clock()
        self._last_checkpoint: float | None = None
        self._lock = threading.Lock()
        if process_metrics:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
        self._define_flow_metrics()
        self._define_state_metrics()
        self._define_checkpoint_metrics()
        self._define_info_metrics()
        self._prime_labels()

    # ------------------------------------------------------------ definitions
    def _define_flow_metrics(self) -> None:
        r = self.registry
        self.messages_total = Counter(
            "detector_messages_total", "Messages consumed, by outcome.", ["outcome"], registry=r
        )
        self.dead_letters_total = Counter(
            "detector_dead_letters_total", "Messages sent to the dead-letter topic, by reason.", ["reason"], registry=r
        )
        self.alerts_total = Counter(
            "detector_alerts_total", "Alerts published, by kind (open/close).", ["kind"], registry=r
        )
        self.anomaly_score = BatchHistogram(
            "detector_anomaly_score", "Anomaly score of scored messages.", buckets=SCORE_BUCKETS, registry=r
        )
        self.anomaly_probability = BatchHistogram(
            "detector_anomaly_probability",
            "Anomaly probability of scored messages.",
            buckets=PROBABILITY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "detector_batch_size_messages", "Messages per batched model step.", buckets=BATCH_SIZE_BUCKETS, registry=r
        )
        self.step_duration = Histogram(
            "detector_step_duration_seconds",
            "Latency of one batched model step.",
            buckets=STEP_DURATION_BUCKETS,
            registry=r,
        )
        self.end_to_end_latency = BatchHistogram(
            "detector_end_to_end_latency_seconds",
            "Time from the message timestamp to the scoring decision.",
            buckets=END_TO_END_BUCKETS,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "detector_consumer_lag_messages", "Consumer lag per assigned partition.", ["topic", "partition"], registry=r
        )
        self.commit_failures_total = Counter("detector_commit_failures_total", "Failed offset commits.", registry=r)
        self.broker_reconnects_total = Counter(
            "detector_broker_reconnects_total", "Reconnections to the Kafka brokers.", registry=r
        )
        self.publish_failures_total = Counter(
            "detector_publish_failures_total",
            "Failed publishes of alerts, scores and dead letters, per attempt.",
            registry=r,
        )
        self.publish_fatal_total = Counter(
            "detector_publish_fatal_total",
            "Publishes that failed in a way retrying cannot mend (the service stops), by error.",
            ["error"],
            registry=r,
        )
        self.loop_last_progress = Gauge(
            "detector_loop_last_progress_timestamp_seconds",
            "Unix time of the last processing-loop iteration.",
            registry=r,
        )

    def _define_state_metrics(self) -> None:
        r = self.registry
        self.partitions_assigned = Gauge(
            "detector_partitions_assigned", "Input partitions currently assigned.", registry=r
        )
        self.entities_tracked = Gauge("detector_entities_tracked", "Entities with live model state.", registry=r)
        self.entities_on_previous_model = Gauge(
            "detector_entities_on_previous_model",
            "Entities still decided by a previous model version while the new one warms up (a rollout).",
            registry=r,
        )
        self.entity_evictions_total = Counter(
            "detector_entity_evictions_total", "Entity states evicted, by reason.", ["reason"], registry=r
        )
        self.state_restore_fallbacks_total = Counter(
            "detector_state_restore_fallbacks_total",
            "Partition state restores that fell back to fresh state, by reason.",
            ["reason"],
            registry=r,
        )

    def _define_checkpoint_metrics(self) -> None:
        r = self.registry
        self.checkpoint_duration = Histogram(
            "detector_checkpoint_duration_seconds",
            "Duration of one checkpoint.",
            buckets=CHECKPOINT_DURATION_BUCKETS,
            registry=r,
        )
        self.checkpoint_last_success = Gauge(
            "detector_checkpoint_last_success_timestamp_seconds",
            "Unix time of the last successful checkpoint (0 before the first).",
            registry=r,
        )
        self.checkpoint_age = Gauge(
            "detector_checkpoint_age_seconds",
            "Seconds since the last successful checkpoint (since process start before the first).",
            registry=r,
        )
        self.checkpoint_age.set_function(self.checkpoint_age_seconds)
        self.checkpoint_failures_total = Counter(
            "detector_checkpoint_failures_total", "Failed checkpoints.", registry=r
        )

    def checkpoint_age_seconds(self) -> float:
        """Read at scrape time: seconds since the last successful checkpoint, or since start before the first."""
        with self._lock:
            since = self._started_at if self._last_checkpoint is None else self._last_checkpoint
        return max(0.0, self._clock() - since)

    def _define_info_metrics(self) -> None:
        # Info("detector_model") is exposed as detector_model_info{...} 1.0
        self.model_info = Info("detector_model", "Loaded model.", registry=self.registry)
        self.build_info = Info("detector_build", "Build of the detector.", registry=self.registry)
        self.alert_threshold = Gauge(
            "detector_alert_threshold",
            "Probability at or above which an alert opens (set by scoring.false_alarm_rate).",
            registry=self.registry,
        )
        self.reloads_total = Counter(
            "detector_reloads_total",
            "Reloads of the settings and the model (SIGHUP), by outcome (applied/unchanged/refused).",
            ["outcome"],
            registry=self.registry,
        )

    def _prime_labels(self) -> None:
        """Create every fixed label child at 0, so rates and ratios exist from the start."""
        for outcome in MESSAGE_OUTCOMES:
            self.messages_total.labels(outcome=outcome)
        for reason in DEAD_LETTER_REASONS:
            self.dead_letters_total.labels(reason=reason)
        for kind in ALERT_KINDS:
            self.alerts_total.labels(kind=kind)
        for reason in EVICTION_REASONS:
            self.entity_evictions_total.labels(reason=reason)
        for reason in RESTORE_FALLBACK_REASONS:
            self.state_restore_fallbacks_total.labels(reason=reason)
        for outcome in RELOAD_OUTCOMES:
            self.reloads_total.labels(outcome=outcome)
