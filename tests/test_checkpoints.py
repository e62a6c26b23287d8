"""CheckpointStore against the real broker: asynchronous writes, settling, order and tombstones."""

from __future__ import annotations

import time

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from detector.checkpoints import CHUNK_BYTES, CheckpointStore

pytestmark = pytest.mark.kafka


@pytest.fixture
def store(kafka_bootstrap, topic_factory):
    producer = KafkaProducer(
        bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=5, max_request_size=2 * 1024 * 1024
    )
    yield CheckpointStore(producer, topic_factory(1), "group-a", {"bootstrap_servers": kafka_bootstrap})
    producer.close(timeout=5)


def _settle_eventually(store: CheckpointStore, timeout_s: float = 20.0) -> list:
    deadline, settled = time.monotonic() + timeout_s, []
    while time.monotonic() < deadline and (
        not settled or any(store.in_flight(p.topic, p.partition) for p, _ in settled)
    ):
        settled += store.settle_done()
        time.sleep(0.05)
    return settled


def _records(bootstrap: str, topic: str) -> list[tuple[str, bytes | None]]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    end, out = consumer.end_offsets([tp])[tp], []
    deadline = time.monotonic() + 20
    while consumer.position(tp) < end and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=200).values():
            out += [(r.key.decode(), r.value) for r in records]
    consumer.close()
    return out


def test_a_sent_checkpoint_counts_only_once_settled_and_then_reads_back(store):
    blob = bytes(range(256)) * (CHUNK_BYTES // 256 * 2 + 3)  # three chunks
    pending = store.send("sensors", 3, next_offset=1200, model_version="v1", blob=blob)
    assert store.in_flight("sensors", 3) is pending, "tracked until settled"
    settled = _settle_eventually(store)
    assert [(p.next_offset, error) for p, error in settled] == [(1200, None)]
    assert store.in_flight("sensors", 3) is None
    restored = store.read_latest([("sensors", 3)])[("sensors", 3)]
    assert (restored.next_offset, restored.model_version, restored.blob) == (1200, "v1", blob)


def test_a_second_checkpoint_waits_for_the_first_and_tombstones_its_chunks(store, kafka_bootstrap):
    first = store.send("sensors", 0, next_offset=10, model_version="v1", blob=b"a" * 100)
    second = store.send("sensors", 0, next_offset=20, model_version="v1", blob=b"b" * 100)
    assert first.done, "sending the second settled the first"
    assert store.in_flight("sensors", 0) is second
    assert [(p.next_offset, error) for p, error in store.settle_all()] == [(20, None)]
    assert store.read_latest([("sensors", 0)])[("sensors", 0)].blob == b"b" * 100
    store.producer.flush(timeout=10)  # the tombstones are best effort, sent on settling
    records = _records(kafka_bootstrap, store.topic)
    assert (first.keys[0], None) in records, "the first checkpoint's chunk was tombstoned"
    assert (second.keys[0], b"b" * 100) in records and (second.keys[0], None) not in records


def test_settle_all_waits_for_every_partition_in_flight(store):
    for partition in range(4):
        store.send("sensors", partition, next_offset=partition + 1, model_version="v1", blob=bytes([partition]) * 1000)
    settled = store.settle_all()
    assert sorted((p.partition, p.next_offset, error) for p, error in settled) == [(p, p + 1, None) for p in range(4)]
    assert all(store.in_flight("sensors", p) is None for p in range(4))
    latest = store.read_latest([("sensors", p) for p in range(4)])
    assert {key[1]: c.next_offset for key, c in latest.items()} == {0: 1, 1: 2, 2: 3, 3: 4}
