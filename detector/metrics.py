"""Prometheus metrics and the health/metrics HTTP endpoint of the detector.

Every :class:`Metrics` instance owns its own ``CollectorRegistry`` (so tests can
create several side by side), and no metric ever carries a per-entity label:
label values come from small fixed sets, or from topic/partition for lag.

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

Endpoints served by :func:`serve`:

* ``GET /metrics`` -- Prometheus text exposition of the instance's registry.
* ``GET /healthz`` -- 200 ``ok`` while the loop beats; 503 with the reason otherwise.
* ``GET /readyz``  -- 200 ``ok`` once ``set_ready(True)``; 503 with the reason otherwise.

``detector_checkpoint_age_seconds`` is computed at scrape time. Before the first
successful checkpoint it is the time since this ``Metrics`` was created (process
start), so ``DetectorCheckpointTooOld`` still fires when checkpoints never happen.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import platform
import threading
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from waitress import wasyncore
from waitress.server import create_server

__all__ = [
    "ALERT_KINDS",
    "DEAD_LETTER_REASONS",
    "EVICTION_REASONS",
    "MESSAGE_OUTCOMES",
    "RELOAD_OUTCOMES",
    "RESTORE_FALLBACK_REASONS",
    "Health",
    "Metrics",
    "MetricsServer",
    "serve",
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
RESTORE_FALLBACK_REASONS: tuple[str, ...] = ("corrupt", "invalid", "schema_mismatch", "missing")
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


class BatchHistogram(Collector):
    """A Prometheus histogram that takes a whole batch of observations in one call.

    ``prometheus_client.Histogram.observe`` costs about a microsecond per value; the service
    observes three values per message, so it records each batch with one numpy pass instead.
    Exposed exactly like a ``Histogram`` (``_bucket``/``_count``/``_sum``/``_created``).

    >>> h = BatchHistogram("demo_seconds", "Demo.", buckets=(0.1, 1.0))
    >>> h.observe([0.05, 0.1, 0.5, 5.0])
    >>> [(s.labels.get("le"), s.value) for s in next(iter(h.collect())).samples if s.name == "demo_seconds_bucket"]
    [('0.1', 2), ('1.0', 3), ('+Inf', 4)]
    """

    def __init__(
        self, name: str, documentation: str, buckets: Iterable[float], registry: CollectorRegistry | None = None
    ) -> None:
        self.name, self.documentation = name, documentation
        self._bounds = np.asarray(sorted(float(b) for b in buckets if b != float("inf")))
        self._counts = np.zeros(len(self._bounds) + 1, dtype=np.int64)  # last: above every bound
        self._sum = 0.0
        self._created = time.time()
        self._lock = threading.Lock()
        if registry is not None:
            registry.register(self)

    def observe(self, values: ArrayLike) -> None:
        """Record one value or an array of values (NaN is ignored)."""
        array = np.asarray(values, dtype=np.float64).ravel()
        array = array[~np.isnan(array)]
        counts = np.bincount(np.searchsorted(self._bounds, array, side="left"), minlength=len(self._counts))
        with self._lock:
            self._counts += counts
            self._sum += float(array.sum())

    def collect(self) -> Iterable[HistogramMetricFamily]:
        with self._lock:
            cumulative, total = np.cumsum(self._counts).tolist(), self._sum
        # one count more than bounds: the last is the +Inf bucket
        finite = zip(self._bounds.tolist(), cumulative[:-1], strict=True)
        buckets = [(floatToGoString(bound), count) for bound, count in finite] + [("+Inf", cumulative[-1])]
        family = HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=total)
        family.add_sample(f"{self.name}_created", {}, self._created)
        yield family

    def describe(self) -> Iterable[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.documentation)


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


class Metrics:
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

    def eviction(self, reason: str, n: int = 1) -> None:
        """Count ``n`` evicted entity states by ``reason`` ("ttl" or "capacity")."""
        self.entity_evictions_total.labels(reason=_check(reason, EVICTION_REASONS, "reason")).inc(n)

    def restore_fallback(self, reason: str) -> None:
        """Count one restore that fell back to fresh state ("corrupt", "schema_mismatch", "missing")."""
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

    def checkpoint_age_seconds(self) -> float:
        """Seconds since the last successful checkpoint, or since start before the first."""
        with self._lock:
            since = self._started_at if self._last_checkpoint is None else self._last_checkpoint
        return max(0.0, self._clock() - since)

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


class Health:
    """Thread-safe liveness/readiness state of the processing loop.

    Liveness fails when :meth:`beat` has not been called for ``stall_after_s``
    (before the first beat, for ``max(stall_after_s, startup_grace_s)`` after
    construction). Readiness is whatever :meth:`set_ready` last said; it starts
    not ready with reason "starting".

    Example::

        health = Health(stall_after_s=60.0, metrics=metrics)
        health.set_ready(True)        # after partitions are assigned and state restored
        while running:
            ...
            health.beat()             # after each iteration, also while idle
        health.is_alive()             # -> (True, "ok")

    When ``metrics`` is given, :meth:`beat` also sets
    ``detector_loop_last_progress_timestamp_seconds``.
    """

    def __init__(
        self,
        stall_after_s: float = 60.0,
        *,
        metrics: Metrics | None = None,
        startup_grace_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if stall_after_s <= 0:
            raise ValueError("stall_after_s must be > 0")
        self.stall_after_s = stall_after_s
        self._startup_allowance = max(stall_after_s, startup_grace_s)
        self._metrics = metrics
        self._clock = clock
        self._lock = threading.Lock()
        self._last_beat = clock()
        self._beaten = False
        self._ready = False
        self._ready_reason = "starting"

    def beat(self) -> None:
        """Record that the processing loop made one iteration."""
        with self._lock:
            self._last_beat = self._clock()
            self._beaten = True
        if self._metrics is not None:
            self._metrics.progress()

    def set_ready(self, ready: bool, reason: str = "") -> None:
        """Set readiness; ``reason`` explains a not-ready state (shown by /readyz)."""
        with self._lock:
            self._ready = ready
            self._ready_reason = reason or ("ok" if ready else "not ready")

    def is_alive(self) -> tuple[bool, str]:
        """``(True, "ok")`` or ``(False, reason)`` when the loop stalled."""
        with self._lock:
            silent = self._clock() - self._last_beat
            allowed = self.stall_after_s if self._beaten else self._startup_allowance
        if silent > allowed:
            return False, f"processing loop stalled: no progress for {silent:.1f}s (limit {allowed:g}s)"
        return True, "ok"

    def is_ready(self) -> tuple[bool, str]:
        """``(True, "ok")`` when ready and alive, else ``(False, reason)``."""
        with self._lock:
            ready, reason = self._ready, self._ready_reason
        if not ready:
            return False, reason
        alive, why = self.is_alive()
        return (True, "ok") if alive else (False, why)


# The endpoint's bounds: requests run on a few threads, and a connection only reaches one once
# its request has arrived (waitress reads requests asynchronously), so idle or slow clients hold
# a file descriptor each, never a thread; beyond the connection limit new ones wait in the
# listen backlog, and idle connections are closed after the channel timeout.
HTTP_THREADS = 4
HTTP_CONNECTION_LIMIT = 400
HTTP_CHANNEL_TIMEOUT_S = 10
HTTP_CLEANUP_INTERVAL_S = 5


class MetricsServer:
    """A running metrics/health HTTP server; see :func:`serve`."""

    def __init__(self, server: Any, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        # a host name with several addresses ("localhost") gives one socket each: the first is shown
        host, port = (
            server.effective_listen[0]
            if hasattr(server, "effective_listen")
            else (server.effective_host, server.effective_port)
        )
        self.host: str = host
        self.port: int = int(port)

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:9100``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def close(self) -> None:
        """Stop serving and release the port (idempotent)."""
        self._server.task_dispatcher.shutdown()
        sockets = self._server.map if hasattr(self._server, "map") else self._server._map
        wasyncore.close_all(sockets)  # empties the map: the serving loop returns
        self._thread.join(timeout=5)


def _make_app(metrics: Metrics, health: Health) -> Callable[[dict[str, Any], Callable[..., Any]], list[bytes]]:
    """The WSGI application serving ``metrics`` and ``health``."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "")
        ctype = "text/plain; charset=utf-8"
        if method not in ("GET", "HEAD"):
            status, body = 405, b"method not allowed\n"
        elif path == "/metrics":
            status, body, ctype = 200, metrics.render(), CONTENT_TYPE_LATEST
        elif path in ("/healthz", "/readyz"):
            ok, reason = health.is_alive() if path == "/healthz" else health.is_ready()
            status, body = 200 if ok else 503, (reason + "\n").encode()
        else:
            status, body = 404, b"not found\n"
        start_response(
            f"{status} {HTTPStatus(status).phrase}",
            [("Content-Type", ctype), ("Content-Length", str(len(body))), ("Cache-Control", "no-store")],
        )
        return [body] if method == "GET" else []

    return app


def serve(metrics: Metrics, health: Health, host: str = "0.0.0.0", port: int = 9100) -> MetricsServer:
    """Serve /metrics, /healthz and /readyz in a daemon thread, within the bounds above.

    ``port=0`` picks a free port; read it back from ``.port``::

        server = serve(Metrics(), Health(), host="127.0.0.1", port=0)
        print(server.url + "/metrics")
        server.close()
    """
    server = create_server(
        _make_app(metrics, health),
        host=host,
        port=port,
        ident="detector",
        threads=HTTP_THREADS,
        connection_limit=HTTP_CONNECTION_LIMIT,
        channel_timeout=HTTP_CHANNEL_TIMEOUT_S,
        cleanup_interval=HTTP_CLEANUP_INTERVAL_S,
        asyncore_use_poll=True,
        asyncore_loop_timeout=0.2,
    )
    thread = threading.Thread(target=server.run, name="metrics-http", daemon=True)
    thread.start()
    return MetricsServer(server, thread)


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
