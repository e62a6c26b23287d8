"""How the service builds and reads its Kafka clients: security settings, kafka-python's
internals (one adapter, pinned versions) and kafka-python's log lines."""

from __future__ import annotations

import logging
import socket
import threading
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.errors import KafkaTimeoutError
from packaging.specifiers import SpecifierSet

from detector.broker import free_port
from detector.checkpoints import CheckpointStore
from detector.config import KafkaSettings
from detector.kafka_config import consumer_config, kafka_client_config, open_client, producer_config
from detector.kafka_internals import (
    TESTED_VERSIONS,
    KafkaInternalsChanged,
    check_internals,
    coordinator_unknown,
    last_heartbeat_answer,
)
from detector.logs import KafkaLogLimiter

ROOT = Path(__file__).resolve().parents[1]
SECURE = KafkaSettings(
    security_protocol="SASL_SSL",
    ssl_cafile=Path("/etc/ca.pem"),
    ssl_certfile=Path("/etc/client.pem"),
    ssl_keyfile=Path("/etc/client.key"),
    ssl_password="keypass",
    sasl_mechanism="SCRAM-SHA-512",
    sasl_username="detector",
    sasl_password="hunter2",
)
EXPECTED_SECURITY = {
    "security_protocol": "SASL_SSL",
    "ssl_cafile": "/etc/ca.pem",
    "ssl_certfile": "/etc/client.pem",
    "ssl_keyfile": "/etc/client.key",
    "ssl_password": "keypass",
    "sasl_mechanism": "SCRAM-SHA-512",
    "sasl_plain_username": "detector",
    "sasl_plain_password": "hunter2",
}


@pytest.mark.parametrize(
    "build", [producer_config, consumer_config, kafka_client_config], ids=["producer", "consumer", "checkpoint-reader"]
)
def test_security_settings_reach_every_client(build):
    config = build(SECURE)
    assert {key: config.get(key) for key in EXPECTED_SECURITY} == EXPECTED_SECURITY


def test_checkpoint_reader_gets_the_security_settings():
    store = CheckpointStore(producer=None, topic="ckpt", group="g", consumer_config=kafka_client_config(SECURE))  # type: ignore[arg-type]
    assert {key: store.consumer_config.get(key) for key in EXPECTED_SECURITY} == EXPECTED_SECURITY


def test_plaintext_sends_no_security_settings():
    config = consumer_config(KafkaSettings())
    assert config["security_protocol"] == "PLAINTEXT" and not any(key.startswith(("ssl_", "sasl_")) for key in config)


@pytest.mark.parametrize("client", [KafkaProducer, KafkaConsumer, KafkaAdminClient])
def test_kafka_python_accepts_the_security_settings(client):
    """kafka-python refuses unknown configuration keys at once; with these it goes on to connect
    (and times out against a closed port), so every key the service sends is one it knows."""
    config = {
        **(
            consumer_config(SECURE)
            if client is KafkaConsumer
            else producer_config(SECURE)
            if client is KafkaProducer
            else kafka_client_config(SECURE)
        )
    }
    config.update(
        bootstrap_servers=[f"127.0.0.1:{free_port()}"],
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        bootstrap_timeout_ms=300,
    )
    for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_password"):
        config.pop(key)  # no files here; SSL keys are checked by the build test above
    with pytest.raises(KafkaTimeoutError):
        open_client(client, **config)


def _network_threads() -> set[str]:
    return {thread.name for thread in threading.enumerate() if thread.name.startswith("kafka-io-")}


@pytest.mark.parametrize("client", [KafkaProducer, KafkaConsumer, KafkaAdminClient])
@pytest.mark.parametrize("peer", ["closed port", "silent listener"])
def test_a_client_that_cannot_bootstrap_leaves_no_thread(client, peer):
    """A failed constructor must not leave kafka-python's network thread reconnecting for ever:
    the start-up wait retries every few seconds while a broker is down."""
    before = _network_threads()
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        if peer == "silent listener":
            silent.listen()  # accepts the TCP connection, never answers a request
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(KafkaTimeoutError):
            open_client(client, bootstrap_servers=address, client_id=f"leak-{peer}", bootstrap_timeout_ms=300)
    assert _network_threads() == before


@pytest.mark.skip(
    reason="the bundled Tansu 0.6 broker cannot serve SSL or SASL to a test: its --cert and --key options exclude "
    "each other and a combined PEM failed the TLS handshake ('early eof'); SASL users are created with `tansu user` "
    "against a persistent storage engine, not the in-memory one the tests run. "
    "Use KAFKA_BOOTSTRAP_SERVERS with a secured Apache Kafka instead."
)
def test_security_against_the_bundled_broker():
    raise AssertionError("not supported by the bundled broker")


@pytest.mark.kafka
def test_kafka_python_internals_the_service_reads_exist(kafka_bootstrap, topic_factory):
    consumer = KafkaConsumer(
        bootstrap_servers=kafka_bootstrap,
        group_id="internals",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    try:
        check_internals(consumer)
        assert last_heartbeat_answer(consumer) == float("-inf"), "no heartbeat answered before joining"
        assert coordinator_unknown(consumer) is True
        consumer.subscribe([topic_factory(1)])
        for _ in range(100):
            consumer.poll(timeout_ms=100)
            if consumer.assignment():
                break
        assert consumer.assignment(), "joined the group"
        assert coordinator_unknown(consumer) is False
        for _ in range(30):
            consumer.poll(timeout_ms=100)
        assert last_heartbeat_answer(consumer) > float("-inf"), "a heartbeat was answered after the join"
    finally:
        consumer.close()


def test_missing_internals_fail_loudly():
    class Upgraded:
        _coordinator = type("Coordinator", (), {"heartbeat": object()})()

    with pytest.raises(KafkaInternalsChanged, match=r"coordinator_unknown.*last_receive"):
        check_internals(Upgraded())  # type: ignore[arg-type]
    with pytest.raises(KafkaInternalsChanged, match="_coordinator"):
        coordinator_unknown(object())  # type: ignore[arg-type]


def test_kafka_python_is_pinned_to_the_tested_range():
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    [pin] = [d for d in dependencies if d.startswith("kafka-python")]
    assert SpecifierSet(pin.removeprefix("kafka-python")) == SpecifierSet(TESTED_VERSIONS)
    assert version("kafka-python") in SpecifierSet(TESTED_VERSIONS)


def _record(name: str, msg: str, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, ("x",), None)


def test_kafka_python_lines_are_rate_limited_warnings():
    now = [0.0]
    limiter = KafkaLogLimiter(every_s=30.0, per_window=6, clock=lambda: now[0])
    kinds = [f"kind {i}: %s" for i in range(10)]
    passed = []
    for step in range(300):  # a line of each kind every second for 30 s, as against a down broker
        now[0] = step * 0.1
        record = _record(f"kafka.net.{step % 3}", kinds[step % len(kinds)])
        if limiter.filter(record):
            passed.append(record)
    assert len(passed) == 6, "all 300 lines fall in one 30 s window: exactly per_window pass"
    assert all(r.levelno == logging.WARNING and r.levelname == "WARNING" for r in passed)
    now[0] = 31.0
    assert limiter.filter(_record("kafka.net.0", kinds[0])), "a kind passes again after the window"


def test_own_and_info_lines_are_not_limited():
    limiter = KafkaLogLimiter(clock=lambda: 0.0)
    assert all(limiter.filter(_record("detector.stream", "same")) for _ in range(50))
    assert all(limiter.filter(_record("kafka.conn", "same", logging.INFO)) for _ in range(50))
