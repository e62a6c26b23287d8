"""Before consuming: an unreachable broker is waited for, missing or forbidden topics stop the start."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time

import pytest
from kafka import KafkaAdminClient
from service_harness import RUN_COMMAND, http_status, make_topics, run_until_exit, service_env

from detector.broker import free_port
from detector.config import KafkaSettings
from detector.kafka_config import kafka_client_config
from detector.metrics import Health
from detector.startup import StartupError, _check_one, check_topics, wait_for_broker


@pytest.mark.slow
def test_unreachable_broker_waits_quietly_not_ready_and_stops_on_sigterm(model_dir, tmp_path):
    """30 s against a closed port: one detector event saying so, at most a dozen lines in all,
    /readyz 503 throughout, and SIGTERM ends it with exit 0 without waiting for the broker."""
    metrics_port, closed = free_port(), free_port()
    env = {
        **service_env(f"127.0.0.1:{closed}", make_topics(lambda partitions=1: "unused"), model_dir),
        "DETECTOR_METRICS__PORT": str(metrics_port),
        "DETECTOR_METRICS__HOST": "127.0.0.1",
    }
    process = subprocess.Popen(
        RUN_COMMAND,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        started = time.monotonic()
        while http_status(f"http://127.0.0.1:{metrics_port}/readyz") == -1 and time.monotonic() - started < 60:
            time.sleep(0.2)  # the metrics server is up once the model is loaded
        statuses, live = [], []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            statuses.append(http_status(f"http://127.0.0.1:{metrics_port}/readyz"))
            live.append(http_status(f"http://127.0.0.1:{metrics_port}/healthz"))
            time.sleep(1)
        assert process.poll() is None, "still waiting for the broker"
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.stderr is not None
    # kafka-python's selector warns of a slow task when the CPU is busy: not about the broker
    lines = [line for line in process.stderr.read().splitlines() if "blocking the event loop" not in line]
    events = [json.loads(line) for line in lines if line.startswith("{")]
    assert code == 0
    assert set(statuses) == {503}, statuses
    assert set(live) == {200}, "alive while waiting: a restart would not bring the broker back"
    assert len(lines) <= 12, "\n".join(lines)
    assert not any("Traceback" in line for line in lines)
    [unreachable] = [e for e in events if e["event"] == "kafka.unreachable"]
    assert unreachable["bootstrap_servers"] == f"127.0.0.1:{closed}" and unreachable["retry_every_s"] > 0
    assert all(e["level"] in ("info", "warning") for e in events if e["logger"].startswith("kafka")), (
        "kafka-python's lines are warnings"
    )


def test_stop_while_waiting_for_the_broker_returns_none():
    stop, health = threading.Event(), Health(60.0)
    stop.set()
    assert (
        wait_for_broker(kafka_client_config(KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}")), stop, health)
        is None
    )


@pytest.mark.kafka
def test_missing_output_topic_is_one_line_and_exit_2(kafka_bootstrap, topic_factory, model_dir):
    topics = make_topics(topic_factory)
    topics.alerts = f"missing-alerts-{topics.group}"
    result = run_until_exit(service_env(kafka_bootstrap, topics, model_dir))
    plain = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    assert result.returncode == 2
    assert plain[0] == f"detector run: alert topic '{topics.alerts}' does not exist", result.stderr
    assert plain[1].startswith("help: ") and len(plain) == 2
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        assert topics.alerts not in admin.list_topics(), "the check itself creates nothing"
    finally:
        admin.close()


@pytest.mark.kafka
def test_create_topics_creates_the_missing_output_topics(kafka_bootstrap, topic_factory):
    suffix = topic_factory(1)
    kafka = KafkaSettings(
        bootstrap_servers=kafka_bootstrap,
        alert_topic=f"{suffix}-a",
        dead_letter_topic=f"{suffix}-d",
        checkpoint_topic=f"{suffix}-c",
        scores_topic=suffix,
        create_topics=True,
    )
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        created = check_topics(admin, kafka)
        assert sorted(created) == sorted([kafka.alert_topic, kafka.dead_letter_topic, kafka.checkpoint_topic])
        assert {kafka.alert_topic, kafka.dead_letter_topic, kafka.checkpoint_topic} <= set(admin.list_topics())
        assert check_topics(admin, kafka) == [], "nothing to create the second time"
        with pytest.raises(StartupError, match=f"dead-letter topic '{suffix}-missing'"):
            check_topics(
                admin, kafka.model_copy(update={"dead_letter_topic": f"{suffix}-missing", "create_topics": False})
            )
    finally:
        admin.close()


def test_forbidden_topics_are_named():
    with pytest.raises(StartupError, match="checkpoint topic 'ckpt': not authorised to describe"):
        _check_one("ckpt", "checkpoint", {"error_code": 29})
    read_only = ["READ", "DESCRIBE"]  # as kafka-python's describe_topics decodes a topic's authorized operations
    with pytest.raises(StartupError, match="alert topic 'alerts': not authorised to write"):
        _check_one("alerts", "alert", {"error_code": 0, "authorized_operations": read_only})
    _check_one("alerts", "alert", {"error_code": 0, "authorized_operations": [*read_only, "WRITE"]})
    _check_one("alerts", "alert", {"error_code": 0, "authorized_operations": ["ALL"]})
    _check_one(
        "alerts", "alert", {"error_code": 0, "authorized_operations": None}
    )  # a broker that does not report operations
