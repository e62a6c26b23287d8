"""Metrics and health endpoint, over real HTTP on loopback (no mocks)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest
import requests

from detector.metrics import (
    ALERT_KINDS,
    DEAD_LETTER_REASONS,
    EVICTION_REASONS,
    RESTORE_FALLBACK_REASONS,
    Health,
    Metrics,
    MetricsServer,
    serve,
)

EXPECTED_METRICS = [
    "detector_messages_total",
    "detector_dead_letters_total",
    "detector_alerts_total",
    "detector_anomaly_score_bucket",
    "detector_anomaly_probability_bucket",
    "detector_batch_size_messages_bucket",
    "detector_step_duration_seconds_bucket",
    "detector_end_to_end_latency_seconds_bucket",
    "detector_consumer_lag_messages",
    "detector_partitions_assigned",
    "detector_entities_tracked",
    "detector_entity_evictions_total",
    "detector_checkpoint_duration_seconds_bucket",
    "detector_checkpoint_last_success_timestamp_seconds",
    "detector_checkpoint_age_seconds",
    "detector_checkpoint_failures_total",
    "detector_state_restore_fallbacks_total",
    "detector_commit_failures_total",
    "detector_broker_reconnects_total",
    "detector_publish_failures_total",
    "detector_loop_last_progress_timestamp_seconds",
    "detector_model_info",
    "detector_build_info",
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
]

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", re.M)


def samples(text: str) -> dict[str, list[tuple[str, float]]]:
    """Parse exposition text into {name: [(labels, value), ...]}."""
    out: dict[str, list[tuple[str, float]]] = {}
    for name, labels, value in SAMPLE.findall(text):
        out.setdefault(name, []).append((labels or "", float(value)))
    return out


def value(text: str, name: str, labels: str = "") -> float:
    for got_labels, got in samples(text).get(name, []):
        if all(part in got_labels for part in labels.split(",") if part):
            return got
    raise AssertionError(f"{name}{{{labels}}} not in output")


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def health(metrics: Metrics) -> Health:
    return Health(stall_after_s=0.3, metrics=metrics)


@pytest.fixture
def server(metrics: Metrics, health: Health) -> Iterator[MetricsServer]:
    srv = serve(metrics, health, host="127.0.0.1", port=0)
    yield srv
    srv.close()


def get(server: MetricsServer, path: str) -> requests.Response:
    return requests.get(server.url + path, timeout=5)


def exercise(m: Metrics) -> None:
    """A few observations of every kind."""
    m.messages("scored", n=10)
    for reason in DEAD_LETTER_REASONS:
        m.dead_letter(reason)
    for kind in ALERT_KINDS:
        m.alert(kind)
    m.observe_score(2.5, probability=0.2)
    m.observe_score(400.0, probability=0.99)
    m.observe_batch(32, 0.004)
    m.observe_end_to_end(0.12)
    m.set_lag("sensors", 0, 17)
    m.set_lag("sensors", 1, 0)
    m.set_partitions_assigned(2)
    m.set_entities(1234)
    for reason in EVICTION_REASONS:
        m.eviction(reason)
    for reason in RESTORE_FALLBACK_REASONS:
        m.restore_fallback(reason)
    m.checkpoint_succeeded(0.05)
    m.checkpoint_failed()
    m.commit_failed()
    m.broker_reconnected()
    m.publish_failed()
    m.progress()
    m.set_model_info(version="2024-06-01", cell="lstm", features=8)
    m.set_build_info(version="0.1.0")


def test_metrics_endpoint_exposes_every_metric(metrics: Metrics, server: MetricsServer) -> None:
    exercise(metrics)
    resp = get(server, "/metrics")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=")
    names = samples(resp.text)
    missing = [name for name in EXPECTED_METRICS if name not in names]
    assert not missing, missing
    assert value(resp.text, "detector_messages_total", 'outcome="scored"') == 10
    assert value(resp.text, "detector_messages_total", 'outcome="dead_letter"') == len(DEAD_LETTER_REASONS)
    assert value(resp.text, "detector_dead_letters_total", 'reason="not_json"') == 1
    assert value(resp.text, "detector_consumer_lag_messages", 'topic="sensors",partition="0"') == 17
    assert value(resp.text, "detector_model_info", 'cell="lstm",features="8"') == 1
    assert value(resp.text, "detector_build_info", 'version="0.1.0"') == 1
    assert value(resp.text, "detector_anomaly_score_bucket", 'le="1000.0"') == 2
    assert value(resp.text, "detector_anomaly_score_bucket", 'le="3.0"') == 1


def test_fixed_label_series_exist_before_any_event(metrics: Metrics) -> None:
    text = metrics.render().decode()
    assert value(text, "detector_messages_total", 'outcome="dead_letter"') == 0
    assert value(text, "detector_alerts_total", 'kind="open"') == 0
    assert value(text, "detector_entity_evictions_total", 'reason="capacity"') == 0


def test_no_metric_has_an_entity_label(metrics: Metrics) -> None:
    exercise(metrics)
    text = metrics.render().decode()
    for name, series in samples(text).items():
        for labels, _ in series:
            assert not re.search(r"[{,]\s*entity[a-z_]*=", labels), (name, labels)
    for family in metrics.registry.collect():
        for sample in family.samples:
            assert not any(key.startswith("entity") for key in sample.labels), sample


def test_unknown_label_values_are_rejected(metrics: Metrics) -> None:
    with pytest.raises(ValueError):
        metrics.dead_letter("sensor-42")
    with pytest.raises(ValueError):
        metrics.messages("weird")
    with pytest.raises(ValueError):
        metrics.alert("maybe")
    with pytest.raises(ValueError):
        metrics.eviction("random")


def test_forget_partition_removes_lag_series(metrics: Metrics) -> None:
    metrics.set_lag("sensors", 5, 100)
    assert 'partition="5"' in metrics.render().decode()
    metrics.forget_partition("sensors", 5)
    metrics.forget_partition("sensors", 5)  # second call is a no-op
    assert 'partition="5"' not in metrics.render().decode()


def test_checkpoint_age_grows_and_resets(metrics: Metrics, server: MetricsServer) -> None:
    first = value(get(server, "/metrics").text, "detector_checkpoint_age_seconds")
    time.sleep(0.2)
    second = value(get(server, "/metrics").text, "detector_checkpoint_age_seconds")
    assert second >= first + 0.15  # counts from process start before any checkpoint
    metrics.checkpoint_succeeded(0.01)
    text = get(server, "/metrics").text
    assert value(text, "detector_checkpoint_age_seconds") < 0.15
    assert value(text, "detector_checkpoint_last_success_timestamp_seconds") > time.time() - 60
    time.sleep(0.2)
    assert value(get(server, "/metrics").text, "detector_checkpoint_age_seconds") >= 0.2


def test_healthz_turns_503_when_beats_stop(health: Health, server: MetricsServer) -> None:
    health.beat()
    ok = get(server, "/healthz")
    assert (ok.status_code, ok.text.strip()) == (200, "ok")
    time.sleep(0.45)
    stalled = get(server, "/healthz")
    assert stalled.status_code == 503
    assert "stalled" in stalled.text
    health.beat()
    assert get(server, "/healthz").status_code == 200


def test_beat_sets_loop_progress_gauge(metrics: Metrics, health: Health) -> None:
    health.beat()
    text = metrics.render().decode()
    assert abs(value(text, "detector_loop_last_progress_timestamp_seconds") - time.time()) < 5


def test_readyz_is_503_until_ready(health: Health, server: MetricsServer) -> None:
    health.beat()
    starting = get(server, "/readyz")
    assert starting.status_code == 503
    assert "starting" in starting.text
    health.set_ready(True)
    assert get(server, "/readyz").status_code == 200
    health.set_ready(False, "rebalancing")
    not_ready = get(server, "/readyz")
    assert (not_ready.status_code, not_ready.text.strip()) == (503, "rebalancing")


def test_unknown_path_is_404(server: MetricsServer) -> None:
    assert get(server, "/nope").status_code == 404


def test_several_instances_and_servers_coexist() -> None:
    servers = [serve(Metrics(), Health(), host="127.0.0.1", port=0) for _ in range(2)]
    try:
        assert servers[0].port != servers[1].port
        for srv in servers:
            assert "detector_messages_total" in get(srv, "/metrics").text
    finally:
        for srv in servers:
            srv.close()


def _serving_threads_cpu_s() -> float:
    """CPU seconds used so far by every live serving thread of this process (Linux /proc)."""
    import os
    import threading

    ticks = 0
    for thread in threading.enumerate():
        if thread.name == "metrics-http" and thread.native_id is not None:
            with open(f"/proc/self/task/{thread.native_id}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime + stime
    return ticks / os.sysconf("SC_CLK_TCK")


def test_an_idle_server_waits_instead_of_spinning(server: MetricsServer) -> None:
    """Between requests the serving thread sleeps in poll(): a busy loop would burn a core and take
    the GIL from the scoring loop (it did, when a fractional poll wait was truncated to 0)."""
    assert get(server, "/metrics").status_code == 200
    before = _serving_threads_cpu_s()
    time.sleep(1.0)
    used = _serving_threads_cpu_s() - before
    assert used < 0.2, f"the idle serving thread used {used:.2f} s of CPU in 1 s"


def test_close_stops_the_serving_thread_and_frees_the_port() -> None:
    import socket
    import threading

    srv = serve(Metrics(), Health(), host="127.0.0.1", port=0)
    assert get(srv, "/healthz").status_code == 200
    srv.close()
    assert not any(t.name == "metrics-http" and t.is_alive() for t in threading.enumerate())
    with socket.socket() as probe:
        probe.bind((srv.host, srv.port))  # the port is free again
    srv.close()  # idempotent


def test_held_open_connections_leave_the_endpoint_answering(server: MetricsServer) -> None:
    """200 clients that connect and never send hold no thread: /metrics still answers, within a
    second (a behaviour bound, generous against a loaded machine, not a benchmark)."""
    import socket
    import threading

    threads_before = threading.active_count()
    idle = [socket.create_connection((server.host, server.port), timeout=5) for _ in range(200)]
    half_sent = [socket.create_connection((server.host, server.port), timeout=5) for _ in range(20)]
    try:
        for conn in half_sent:
            conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # a request that never ends
        time.sleep(0.5)  # the server has accepted them all
        started = time.monotonic()
        response = requests.get(server.url + "/metrics", timeout=5)
        elapsed = time.monotonic() - started
        assert response.status_code == 200 and b"detector_messages_total" in response.content
        assert elapsed < 1.0, f"/metrics took {elapsed:.2f} s behind 220 stuck connections"
        assert threading.active_count() <= threads_before + 8, "stuck clients hold no thread each"
    finally:
        for conn in idle + half_sent:
            conn.close()


@pytest.mark.slow
def test_idle_connections_are_closed_after_the_channel_timeout(server: MetricsServer) -> None:
    """An idle connection does not hold its file descriptor for ever."""
    import socket

    from detector.metrics import HTTP_CHANNEL_TIMEOUT_S, HTTP_CLEANUP_INTERVAL_S

    conn = socket.create_connection(
        (server.host, server.port), timeout=HTTP_CHANNEL_TIMEOUT_S + 2 * HTTP_CLEANUP_INTERVAL_S + 5
    )
    try:
        assert conn.recv(1) == b"", "the server closed the idle connection"
    finally:
        conn.close()
