"""Integration tests against a real Kafka-protocol broker over TCP.

They use the session broker from conftest (bundled Tansu, or the Apache Kafka
named by KAFKA_BOOTSTRAP_SERVERS), except the pause test, which needs a broker
process of its own to SIGSTOP.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaTimeoutError

from detector.broker import Broker, BrokerError, create_topics, start_broker, tansu_binary

pytestmark = pytest.mark.kafka

N_MESSAGES = 200
PARTITIONS = 4
# Tansu answers a group join after about session_timeout_ms / 2.
GROUP_SETTINGS: dict[str, Any] = {
    "session_timeout_ms": 6000,
    "heartbeat_interval_ms": 1000,
    "enable_auto_commit": False,
    "auto_offset_reset": "earliest",
}


# Keys and values are encoded by hand: kafka-python 3 deprecates plain callables
# as (de)serializers, and its Serializer interface differs from 2.x.
def encode(seq: int) -> dict[str, bytes]:
    return {"key": f"sensor-{seq % 10}".encode(), "value": json.dumps({"seq": seq}).encode()}


def seq_of(record: Any) -> int:
    return int(json.loads(record.value)["seq"])


def group_consumer(bootstrap: str, topic: str, group: str) -> KafkaConsumer:
    return KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, **GROUP_SETTINGS)


def poll_until(consumer: KafkaConsumer, done: Callable[[list[Any]], bool], timeout: float = 30.0) -> list[Any]:
    """Poll records until ``done(records)`` or *timeout* seconds; return all records."""
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    while not done(records) and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=200).values():
            records.extend(batch)
    return records


def join_group(consumer: KafkaConsumer, timeout: float = 30.0) -> tuple[set[TopicPartition], list[Any]]:
    """Poll until partitions are assigned; return them and any records polled meanwhile."""
    records = poll_until(consumer, lambda rs: bool(consumer.assignment()), timeout)
    assert consumer.assignment(), f"no partitions assigned within {timeout}s"
    return set(consumer.assignment()), records


def produce(producer: KafkaProducer, topic: str, seqs: range) -> None:
    futures = [producer.send(topic, **encode(s)) for s in seqs]
    producer.flush(timeout=30)
    for future in futures:
        future.get(timeout=30)


def test_round_trip_and_committed_offsets(kafka_bootstrap: str, topic_factory: Callable[..., str]) -> None:
    topic = topic_factory(partitions=PARTITIONS)
    group = f"g-{uuid.uuid4().hex[:8]}"
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    try:
        produce(producer, topic, range(N_MESSAGES))

        first = group_consumer(kafka_bootstrap, topic, group)
        try:
            records = poll_until(first, lambda rs: len(rs) >= N_MESSAGES)
            assert sorted(seq_of(r) for r in records) == list(range(N_MESSAGES))
            partitions_of_key: dict[bytes, set[int]] = {}
            for r in records:
                partitions_of_key.setdefault(r.key, set()).add(r.partition)
            assert all(len(ps) == 1 for ps in partitions_of_key.values()), partitions_of_key
            assert len({r.partition for r in records}) > 1, "keys should spread over partitions"
            first.commit()
            committed = {tp: first.committed(tp) for tp in first.assignment()}
            assert len(committed) == PARTITIONS
            assert sum(offset or 0 for offset in committed.values()) == N_MESSAGES
        finally:
            first.close()

        second = group_consumer(kafka_bootstrap, topic, group)
        try:
            assigned, replayed = join_group(second)
            assert assigned == set(committed)
            replayed += poll_until(second, lambda rs: False, timeout=2.0)
            assert replayed == [], "committed offsets were not honoured"
            assert {tp: second.position(tp) for tp in assigned} == committed

            produce(producer, topic, range(N_MESSAGES, N_MESSAGES + 5))
            fresh = poll_until(second, lambda rs: len(rs) >= 5, timeout=15.0)
            assert sorted(seq_of(r) for r in fresh) == list(range(N_MESSAGES, N_MESSAGES + 5))
        finally:
            second.close()
    finally:
        producer.close()


@pytest.fixture
def own_broker() -> Iterator[Broker]:
    """A Tansu broker of this test's own, which it may pause."""
    with start_broker() as broker:
        yield broker


@pytest.mark.slow
def test_pause_resume_loses_no_messages(own_broker: Broker) -> None:
    bootstrap = own_broker.bootstrap_servers
    topic = "paused"
    create_topics(bootstrap, [topic], PARTITIONS)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    consumer = group_consumer(bootstrap, topic, "pause-group")
    try:
        produce(producer, topic, range(50))
        before = poll_until(consumer, lambda rs: len(rs) >= 50)
        consumer.commit()

        own_broker.pause()
        try:
            during = [producer.send(topic, **encode(s)) for s in range(50, 100)]
            with pytest.raises(KafkaTimeoutError):
                during[-1].get(timeout=1)
            stalled = poll_until(consumer, lambda rs: False, timeout=3.0)
        finally:
            own_broker.resume()

        producer.flush(timeout=30)
        assert all(f.get(timeout=30) for f in during)
        after = poll_until(consumer, lambda rs: len(stalled) + len(rs) >= 50)
        consumer.commit()
        seqs = [seq_of(r) for r in before + stalled + after]
        assert sorted(seqs) == list(range(100)), "lost or duplicated messages"
        assert sum(consumer.committed(tp) or 0 for tp in consumer.assignment()) == 100
    finally:
        consumer.close()
        producer.close()


def test_create_topics_is_idempotent(kafka_bootstrap: str) -> None:
    name = f"idem-{uuid.uuid4().hex[:8]}"
    assert create_topics(kafka_bootstrap, [name], 2) == [name]
    assert create_topics(kafka_bootstrap, [name, f"{name}-b"], 2) == [f"{name}-b"]
    probe = KafkaConsumer(bootstrap_servers=kafka_bootstrap)
    try:
        assert probe.partitions_for_topic(name) == {0, 1}
    finally:
        probe.close()


def test_compacted_topic_reads_back_without_a_group(kafka_bootstrap: str, topic_factory: Callable[..., str]) -> None:
    topic = topic_factory(partitions=2, config={"cleanup.policy": "compact"})
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    try:
        for version in range(3):
            for p in range(2):
                producer.send(topic, key=f"src:{p}".encode(), value=f"v{version}".encode(), partition=p)
        producer.flush(timeout=30)
    finally:
        producer.close()
    reader = KafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in range(2)]
        reader.assign(tps)
        reader.seek_to_beginning()
        latest: dict[str, str] = {}
        # Read until the fetch high watermark: Tansu's end_offsets() can be short
        # (it reports the last batch's base offset + 1).
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            for batch in reader.poll(timeout_ms=200).values():
                latest.update({r.key.decode(): r.value.decode() for r in batch})
            hw = [reader.highwater(tp) for tp in tps]
            if None not in hw and all(reader.position(tp) >= h for tp, h in zip(tps, hw, strict=True)):
                break
        assert latest == {"src:0": "v2", "src:1": "v2"}
    finally:
        reader.close()


@pytest.mark.skipif(bool(os.environ.get("KAFKA_BOOTSTRAP_SERVERS")), reason="bundled broker only")
def test_broker_process_control() -> None:
    assert os.access(tansu_binary(), os.X_OK)
    broker = start_broker()
    pid = broker.pid
    assert broker.bootstrap_servers == f"127.0.0.1:{broker.port}"
    broker.pause()
    broker.resume()
    broker.pause()  # stop() must also end a paused broker
    broker.stop()
    broker.stop()
    assert not broker.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.skipif(bool(os.environ.get("KAFKA_BOOTSTRAP_SERVERS")), reason="bundled broker only")
def test_start_failure_reports_log(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(BrokerError, match="Address in use"):
            Broker(port, log_dir=tmp_path).start(timeout=10)
