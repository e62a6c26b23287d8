"""Observability of `detector run` against real parts: a real Prometheus scraping the service,
/healthz while the broker is frozen, /readyz and the lifecycle log from start to SIGTERM."""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from service_harness import (
    ServiceProcess,
    ServiceTopics,
    TopicReader,
    dead_letter_view,
    make_topics,
    offsets_seen,
    produce,
    service_env,
)

from detector import __version__
from detector.broker import create_topics, free_port, start_broker
from detector.demo import FEATURES, generate_stream

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[1]
ALERTS_YML = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS = Path("/usr/bin/prometheus")


# --------------------------------------------------------------------------- helpers


def http_get(url: str, timeout: float = 2.0) -> tuple[int | None, str]:
    """(status, body); status None when nothing answers (not listening yet, timeout)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except (urllib.error.URLError, OSError):
        return None, ""


def wait_until(
    condition: Callable[[], Any],
    timeout_s: float,
    what: str,
    interval_s: float = 0.25,
    alive: Callable[[], bool] = lambda: True,
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        assert alive(), f"the service process died while waiting for {what}"
        time.sleep(interval_s)
    raise AssertionError(f"{what}: not within {timeout_s} s (last: {last!r})")


class PrometheusServer:
    """A real Prometheus (the Debian package) scraping one detector every second."""

    def __init__(self, workdir: Path, target: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  scrape_timeout: 1s\n"
            "  evaluation_interval: 1s\n"
            "rule_files:\n"
            f"  - {json.dumps(str(ALERTS_YML))}\n"
            "scrape_configs:\n"
            "  - job_name: detector\n"
            "    metrics_path: /metrics\n"
            "    static_configs:\n"
            f'      - targets: ["{target}"]\n'
        )
        self.log_path = workdir / "prometheus.log"
        self.process = subprocess.Popen(
            [
                str(PROMETHEUS),
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.log_path.open("ab"),
            cwd=workdir,
        )

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_ready(self, timeout_s: float = 30) -> None:
        wait_until(
            lambda: http_get(self.url + "/-/ready")[0] == 200,
            timeout_s,
            f"Prometheus ready (log {self.log_path}: {self.log_tail()})",
            alive=self.alive,
        )

    def log_tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-10:]) if self.log_path.exists() else ""

    def api(self, path: str, **params: str) -> Any:
        query = ("?" + urllib.parse.urlencode(params)) if params else ""
        status, body = http_get(f"{self.url}/api/v1/{path}{query}", timeout=5)
        assert status == 200, f"Prometheus /api/v1/{path} answered {status}: {body[:500]}"
        answer = json.loads(body)
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expr: str) -> list[tuple[dict[str, str], float]]:
        """An instant query: [(labels, value)] of a vector result."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        return [(r["metric"], float(r["value"][1])) for r in data["result"]]

    def value(self, expr: str) -> float | None:
        """The single value of an instant query, None when the result is empty."""
        result = self.query(expr)
        assert len(result) <= 1, f"{expr}: expected one series, got {result}"
        return result[0][1] if result else None

    def stop(self) -> None:
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def malformed_messages(entities: list[str]) -> list[tuple[tuple[bytes, bytes | None], str]]:
    """Bad input ((key, value), expected dead-letter reason), keyed by real entities."""
    good = dict.fromkeys(FEATURES, 1.0)
    out = []
    for i, entity in enumerate(entities):
        body: bytes | None
        body, reason = [
            (b"{not json", "not_json"),
            (b"[1, 2, 3]", "schema"),
            (
                json.dumps({"entity": entity, "timestamp": 1795568400.0, "values": {"temperature": 1.0}}).encode(),
                "missing_feature",
            ),
            (
                json.dumps({"entity": entity, "timestamp": 1795568400.0, "values": {**good, "rpm": "fast"}}).encode(),
                "non_numeric",
            ),
            (json.dumps({"entity": entity, "timestamp": "not a time", "values": good}).encode(), "timestamp"),
        ][i % 5]
        out.append(((entity.encode(), body), reason))
    return out


# --------------------------------------------------------------------------- 1. Prometheus


def test_prometheus_scrapes_the_running_service(kafka_bootstrap, topic_factory, model_dir, tmp_path):
    if not PROMETHEUS.exists():
        pytest.skip(f"no Prometheus server at {PROMETHEUS} (install the Debian package `prometheus`)")
    import yaml

    entities, per_entity, partitions = 30, 40, 4
    anomalous = {"pump-4", "pump-11", "pump-23"}
    stream = generate_stream(entities, per_entity, anomalous, seed=11)
    bad = malformed_messages([f"pump-{e}" for e in range(0, entities, 3)])  # 10 malformed messages
    mixed: list[tuple[bytes, bytes | None]] = []
    step = len(stream) // len(bad)
    for i, message in enumerate(stream):
        mixed.append((message.entity.encode(), message.to_json()))
        if i % step == step // 2 and i // step < len(bad):
            mixed.append(bad[i // step][0])
    assert len(mixed) == len(stream) + len(bad)
    topics = make_topics(topic_factory, partitions=partitions)
    produce(kafka_bootstrap, topics.input, mixed)

    port = free_port()
    env = service_env(
        kafka_bootstrap, topics, model_dir, DETECTOR_METRICS__PORT=str(port), DETECTOR_METRICS__HOST="127.0.0.1"
    )
    service = ServiceProcess(env, tmp_path / "service.log")
    prometheus = PrometheusServer(tmp_path / "prometheus", f"127.0.0.1:{port}")
    scores, alerts = (TopicReader(kafka_bootstrap, t) for t in (topics.scores, topics.alerts))
    dead = TopicReader(kafka_bootstrap, topics.dead_letters, dead_letter_view)
    try:
        prometheus.wait_ready()
        scores.wait_for(lambda r: len(offsets_seen(r)) >= len(stream), timeout_s=90, alive=service.alive)
        dead.wait_for(lambda r: len(r) >= len(bad), timeout_s=30, alive=service.alive)
        opened = [a for a in alerts.read(1.0) if a["state"] == "open"]
        assert len(scores.records) == len(stream) and len(dead.records) == len(bad), (
            "a clean run publishes each decision once"
        )
        assert anomalous <= {a["entity"] for a in opened}, "every injected anomaly opened an alert"

        job = '{job="detector"}'
        # The last scrape may predate the last batch: wait until Prometheus has the final counts.
        wait_until(
            lambda: prometheus.value('detector_messages_total{job="detector",outcome="scored"}') == len(stream),
            30,
            "Prometheus has every scored message",
            alive=service.alive,
        )
        wait_until(
            lambda: (lag := prometheus.query(f"detector_consumer_lag_messages{job}")) and all(v == 0 for _, v in lag),
            30,
            "lag 0 on every partition in Prometheus",
            alive=service.alive,
        )

        assert prometheus.value(f"up{job}") == 1
        assert prometheus.value('detector_messages_total{job="detector",outcome="scored"}') == len(stream)
        assert prometheus.value('detector_messages_total{job="detector",outcome="dead_letter"}') == len(bad)
        by_reason = {labels["reason"]: v for labels, v in prometheus.query(f"detector_dead_letters_total{job}")}
        assert {r: v for r, v in by_reason.items() if v} == dict(Counter(reason for _, reason in bad))
        alerts_opened = prometheus.value('detector_alerts_total{job="detector",kind="open"}')
        assert alerts_opened >= len(anomalous)
        assert alerts_opened == len(opened), "the counter matches the open alerts on the alert topic"
        assert prometheus.value(f"detector_anomaly_score_count{job}") == len(stream)
        assert prometheus.value(f"detector_anomaly_probability_count{job}") == len(stream)
        for q in (0.5, 0.99):
            step_q = prometheus.value(
                f"histogram_quantile({q}, sum by (le) (detector_step_duration_seconds_bucket{job}))"
            )
            assert step_q is not None and math.isfinite(step_q) and 0 < step_q < 5, (q, step_q)
        assert prometheus.value(f"detector_step_duration_seconds_count{job}") > 0
        assert prometheus.value(f"detector_batch_size_messages_sum{job}") == len(stream)
        assert prometheus.value(f"detector_end_to_end_latency_seconds_count{job}") == len(stream)

        lag = prometheus.query(f"detector_consumer_lag_messages{job}")
        assert sorted(labels["partition"] for labels, _ in lag) == [str(p) for p in range(partitions)]
        assert {labels["topic"] for labels, _ in lag} == {topics.input}
        assert all(v == 0 for _, v in lag), lag
        assert prometheus.value(f"detector_entities_tracked{job}") == entities
        assert prometheus.value(f"detector_partitions_assigned{job}") == partitions
        age = prometheus.value(f"detector_checkpoint_age_seconds{job}")
        assert age is not None and 0 <= age < 120
        assert prometheus.value(f"detector_checkpoint_duration_seconds_count{job}") >= partitions, (
            "an initial checkpoint per partition"
        )
        for failures in (
            "detector_commit_failures_total",
            "detector_publish_failures_total",
            "detector_checkpoint_failures_total",
        ):
            assert prometheus.value(f"{failures}{job}") == 0, failures

        model_version = json.loads((model_dir / "model.json").read_text())["version"]
        [(model_labels, one)] = prometheus.query(f"detector_model_info{job}")
        assert one == 1 and model_labels["version"] == model_version
        assert model_labels["cell"] == "lstm" and model_labels["features"] == str(len(FEATURES))
        [(build_labels, one)] = prometheus.query(f"detector_build_info{job}")
        assert one == 1 and build_labels["version"] == __version__ and build_labels["python"] and build_labels["torch"]
        assert prometheus.value(f"process_resident_memory_bytes{job}") > 0
        progress_age = prometheus.value(f"time() - detector_loop_last_progress_timestamp_seconds{job}")
        assert progress_age is not None and progress_age < 30

        # The rule groups of deploy/prometheus/alerts.yml are loaded and evaluate without error.
        expected = {
            g["name"]: [r["alert"] for r in g["rules"]] for g in yaml.safe_load(ALERTS_YML.read_text())["groups"]
        }

        def rules_ok() -> dict | None:
            groups = prometheus.api("rules")["groups"]
            loaded = {g["name"]: [r["name"] for r in g["rules"]] for g in groups}
            assert loaded == expected
            healthy = all(r["health"] == "ok" for g in groups for r in g["rules"])
            return groups if healthy else None

        groups = wait_until(rules_ok, 30, "every alerting rule evaluated with health ok")
        assert all(g["file"] == str(ALERTS_YML) for g in groups)
        firing = [a for a in prometheus.api("alerts")["alerts"] if a["state"] == "firing"]
        assert not firing, f"no alert fires on a healthy run: {firing}"
        assert service.alive()
    finally:
        prometheus.stop()
        for reader in (scores, dead, alerts):
            reader.close()
        if service.alive():
            service.terminate()
    print(f"prometheus: {len(stream)} scored, {len(bad)} dead letters, {int(alerts_opened)} alerts opened")


# --------------------------------------------------------------------------- 2. /healthz


def test_healthz_fails_while_the_loop_is_blocked_on_a_frozen_broker_and_recovers(model_dir, tmp_path):
    """A frozen broker (SIGSTOP) fails /healthz only when the loop has work in hand.

    * Idle (everything processed): poll() keeps returning empty batches after ``batch_max_ms``
      and the loop keeps beating, so /healthz (and /readyz) stay 200 -- a frozen broker is not a
      stuck loop.
    * With a backlog: the loop blocks waiting for the broker's acknowledgements (publish
      confirm, then the synchronous offset commit), /healthz turns 503 after ``stall_after_s``
      and stays 503 while the freeze lasts (kept shorter than ``request_timeout_ms`` here), and
      returns to 200 once the broker is back; every message is then scored, none lost.
    """
    with start_broker() as broker:
        bootstrap = broker.bootstrap_servers
        names = [f"health-{kind}-{uuid.uuid4().hex[:6]}" for kind in ("in", "alerts", "dead", "ckpt", "scores")]
        create_topics(bootstrap, names[:1], 2)
        create_topics(bootstrap, names[1:], 1)
        topics = ServiceTopics(*names)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = service_env(
            bootstrap,
            topics,
            model_dir,
            DETECTOR_METRICS__PORT=str(port),
            DETECTOR_METRICS__HOST="127.0.0.1",
            DETECTOR_METRICS__STALL_AFTER_S="2",
            DETECTOR_KAFKA__REQUEST_TIMEOUT_MS="10000",
            # many broker round trips per message: the broker is on the loop's path
            DETECTOR_STREAM__BATCH_MAX_MESSAGES="50",
        )
        entities = 400
        stream = generate_stream(entities, 50, (), seed=12)  # 20000 messages, time-ordered
        first, rest = stream[:entities], stream[entities:]
        service = ServiceProcess(env, tmp_path / "service.log")
        reader = TopicReader(bootstrap, topics.scores)
        try:
            produce(bootstrap, topics.input, first)
            reader.wait_for(lambda r: len(offsets_seen(r)) >= len(first), timeout_s=60, alive=service.alive)
            assert http_get(url + "/healthz") == (200, "ok\n")

            # Idle: freezing the broker for twice the stall limit leaves /healthz at 200.
            broker.pause()
            idle = []
            for _ in range(16):
                idle.append(http_get(url + "/healthz")[0])
                time.sleep(0.25)
            ready_while_frozen = http_get(url + "/readyz")[0]
            broker.resume()
            assert idle == [200] * len(idle), f"an idle loop keeps beating while the broker is frozen: {idle}"
            assert ready_while_frozen == 200

            produce(bootstrap, topics.input, rest)
            behind = len(offsets_seen(reader.read(0.3)))
            assert behind < len(stream), (
                "the service must still have a backlog when the broker freezes (make the stream longer)"
            )
            broker.pause()
            paused_at = time.monotonic()
            statuses: list[tuple[float, int | None, str]] = []

            def unhealthy() -> bool:
                status, body = http_get(url + "/healthz")
                statuses.append((round(time.monotonic() - paused_at, 1), status, body.strip()))
                return status == 503

            wait_until(unhealthy, 20, "/healthz 503 while the broker is frozen", interval_s=0.2, alive=service.alive)
            stalled = [s for s in statuses if s[1] == 503]
            assert "processing loop stalled" in stalled[0][2], statuses
            held = []  # stay frozen 5 s more: the loop stays blocked (request timeout 10 s)
            while time.monotonic() - paused_at < stalled[0][0] + 5:
                held.append(http_get(url + "/healthz")[0])
                time.sleep(0.25)
            broker.resume()
            assert held and set(held) == {503}, f"/healthz stays 503 while the loop is blocked: {held}"
            resumed_at = time.monotonic()
            print(
                f"\nhealthz while frozen ({len(statuses)} polls, {behind} of {len(stream)} scored at the freeze): "
                f"first 503 after {stalled[0][0]} s: {stalled[0][2]}"
            )

            wait_until(
                lambda: http_get(url + "/healthz")[0] == 200,
                30,
                "/healthz 200 after the broker resumed",
                alive=service.alive,
            )
            records = reader.wait_for(lambda r: len(offsets_seen(r)) >= len(stream), timeout_s=90, alive=service.alive)
            print(
                f"all {len(stream)} scored {time.monotonic() - resumed_at:.1f} s after the resume; "
                f"{len(records) - len(stream)} duplicates"
            )
            later = []
            for _ in range(5):
                later.append(http_get(url + "/healthz")[0])
                time.sleep(0.3)
            assert later == [200] * 5, "healthy again once the backlog is processed"
            assert service.terminate() == 0
        finally:
            with contextlib.suppress(Exception):
                broker.resume()  # a failed assertion may leave it frozen
            reader.close()
            if service.alive():
                service.kill()

    seen = offsets_seen(records)
    per_partition = Counter(p for p, _ in seen)
    assert sum(per_partition.values()) == len(stream), "every input message was scored: nothing lost"
    assert seen == {(p, o) for p, count in per_partition.items() for o in range(count)}, "no offset skipped"
    own_errors = [
        e for e in service.log_events() if e["level"] == "error" and e.get("logger", "").startswith("detector")
    ]
    assert not own_errors, (
        "no request timed out: the loop just waited for the broker (kafka-python's own errors are logged too)"
    )


# --------------------------------------------------------------------------- 3. /readyz and lifecycle


def test_readyz_goes_ready_after_assignment_and_the_lifecycle_is_logged(
    kafka_bootstrap, topic_factory, model_dir, tmp_path
):
    stream = generate_stream(10, 30, (), seed=13)
    topics = make_topics(topic_factory, partitions=3)
    produce(kafka_bootstrap, topics.input, stream)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = service_env(
        kafka_bootstrap, topics, model_dir, DETECTOR_METRICS__PORT=str(port), DETECTOR_METRICS__HOST="127.0.0.1"
    )
    samples: list[tuple[float, int | None, str]] = []
    stop = threading.Event()

    def poll_readyz(started: float) -> None:
        while not stop.is_set():
            status, body = http_get(url + "/readyz", timeout=1)
            samples.append((time.monotonic() - started, status, body.strip()))
            time.sleep(0.05)

    reader = TopicReader(kafka_bootstrap, topics.scores)
    poller = threading.Thread(target=poll_readyz, args=(time.monotonic(),), daemon=True)
    poller.start()
    service = ServiceProcess(env, tmp_path / "service.log")
    try:
        reader.wait_for(lambda r: len(offsets_seen(r)) >= len(stream), timeout_s=60, alive=service.alive)
        time.sleep(0.5)
        stop.set()
        poller.join(timeout=5)
        assert http_get(url + "/readyz") == (200, "ok\n")
        assert http_get(url + "/healthz") == (200, "ok\n")
        code = service.terminate()
    finally:
        stop.set()
        reader.close()
        if service.alive():
            service.kill()
    assert code == 0, "a clean shutdown on SIGTERM"

    answered = [(t, status, body) for t, status, body in samples if status is not None]
    codes = [status for _, status, _ in answered]
    assert answered, "the service answered /readyz"
    assert codes[0] == 503, f"not ready before the partitions are assigned: {answered[:3]}"
    assert codes[-1] == 200
    first_ok = codes.index(200)
    assert set(codes[:first_ok]) == {503} and set(codes[first_ok:]) == {200}, f"one transition 503 -> 200: {codes}"
    reasons = {body for _, status, body in answered if status == 503}
    assert reasons <= {
        "starting",
        "connecting to the broker",
        "waiting for partition assignment",
        "restoring checkpoints",
    }, reasons
    not_ready_for = answered[first_ok][0] - answered[0][0]
    assert not_ready_for > 1.0, f"the group join takes seconds, yet ready after {not_ready_for:.2f} s"
    print(
        f"\n/readyz: {first_ok} x 503 ({sorted(reasons)}) for {not_ready_for:.1f} s, then {len(codes) - first_ok} x 200"
    )

    events = service.log_events()
    names = [e["event"] for e in events]

    def index(name: str, where: Callable[[dict], bool] = lambda e: True) -> int:
        found = [i for i, e in enumerate(events) if e["event"] == name and where(e)]
        assert found, f"no {name} event in the log: {names}"
        return found[0]

    serving = events[index("metrics.serving")]
    assert serving["url"] == url
    start = index("service.start")
    assert events[start]["model_version"] == json.loads((model_dir / "model.json").read_text())["version"]
    assigned = index("partitions.assigned", lambda e: e["partitions"])
    assert sorted(events[assigned]["partitions"]) == [f"{topics.input}/{p}" for p in range(3)]
    restores = [e for e in events if e["event"] == "state.restore"]
    assert sorted(e["partition"] for e in restores) == [0, 1, 2]
    restore = index("state.restore")
    initial = index(
        "state.checkpoint", lambda e: e["reason"] == "initial"
    )  # a fresh partition is checkpointed as it is restored
    stopping, stopped = index("service.stopping"), index("service.stopped")
    final = index("state.checkpoint", lambda e: e["reason"] == "shutdown")
    assert (
        start < assigned < min(restore, initial)
        and max(restore, initial) < stopping < final < stopped == len(events) - 1
    ), names
    reasons = [e["reason"] for e in events if e["event"] == "state.checkpoint"]
    assert reasons.count("initial") == 3 and reasons.count("shutdown") == 3, reasons
    assert not [e for e in events if e["level"] in ("error", "critical")], "no errors in a clean run"
