"""Dead letters: original key, value and headers, context in detector.errors.* headers, cut to fit."""

from __future__ import annotations

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from detector import __version__
from detector.alerts import Publisher
from detector.deadletter import HEADERS, Context, dead_letter
from detector.schema import BadMessage

CONTEXT = Context("sensors", 2, 41, 1795568400123, "decode", "model-v3")


def test_a_dead_letter_is_the_original_record_with_its_context_in_headers():
    value = b"\xff\x00 not json \xed\xa0\x80"
    letter = dead_letter(
        b"pump-\xff",
        value,
        [("trace-id", b"abc"), ("empty", None)],
        BadMessage("not_json", "Expecting\nvalue", "JSONDecodeError"),
        CONTEXT,
    )
    assert letter.key == b"pump-\xff" and letter.value == value, "key and value unchanged, byte for byte"
    assert letter.headers[:2] == [("trace-id", b"abc"), ("empty", b"")], "the input's headers first"
    context = {name: letter.header(header) for name, header in HEADERS.items()}
    assert context == {
        "reason": b"not_json",
        "stage": b"decode",
        "exception": b"JSONDecodeError",
        "message": b"Expecting value",
        "topic": b"sensors",
        "partition": b"2",
        "offset": b"41",
        "timestamp": b"1795568400123",
        "version": __version__.encode(),
        "model": b"model-v3",
        "truncated": None,
        "null_value": None,
    }


def test_tombstones_pass_through_and_a_keyless_one_is_marked():
    error = BadMessage("schema", "empty message (tombstone)")
    assert dead_letter(b"pump-1", None, None, error, CONTEXT).value is None
    keyless = dead_letter(None, None, None, error, CONTEXT)
    assert (keyless.key, keyless.value, keyless.header(HEADERS["null_value"])) == (None, b"", b"true"), (
        "Kafka clients refuse a record with neither"
    )


@pytest.mark.parametrize("size", [5_000, 100_000, 1_500_000])
def test_a_value_too_large_is_cut_to_fit_and_says_so(size):
    letter = dead_letter(
        b"k",
        bytes(range(256)) * (size // 256) + b"x" * (size % 256),
        None,
        BadMessage("too_large", f"{size} bytes"),
        CONTEXT,
    )
    cut = letter.cut_to(4096)
    assert cut.size() <= 4096 and cut.value == letter.value[: len(cut.value)] and len(cut.value) > 2000
    assert cut.header(HEADERS["truncated"]) == str(size).encode() and cut.key == b"k"
    again = cut.cut_to(3000)
    assert again.header(HEADERS["truncated"]) == str(size).encode(), "a second cut keeps the original length"
    assert [k for k, _ in again.headers].count(HEADERS["truncated"]) == 1
    assert letter.cut_to(letter.size()) is letter, "a record that fits is not touched"


@pytest.mark.kafka
def test_the_publisher_cuts_a_dead_letter_the_producer_refuses_and_delivers_it(kafka_bootstrap, topic_factory):
    topic = topic_factory(1)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", max_request_size=64_000)
    publisher = Publisher(producer)
    original = bytes(range(256)) * 1000  # 256,000 bytes: four times what the producer takes
    letter = dead_letter(
        b"pump-9", original, [("trace-id", b"t1")], BadMessage("too_large", "256000 bytes > 65536"), CONTEXT
    )
    publisher.send_dead_letter(
        topic, letter, max_bytes=1_000_000
    )  # our bound is above the producer's: it refuses, we cut
    publisher.send_dead_letter(
        topic, dead_letter(b"pump-9", b"{small", None, BadMessage("not_json", "x"), CONTEXT), max_bytes=1_000_000
    )
    publisher.confirm(timeout_s=20)
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=None, enable_auto_commit=False)
    consumer.assign([TopicPartition(topic, 0)])
    consumer.seek_to_beginning()
    records = []
    for _ in range(50):
        records += [r for batch in consumer.poll(timeout_ms=200).values() for r in batch]
        if len(records) >= 2:
            break
    consumer.close()
    big, small = records
    headers = dict(big.headers)
    assert big.key == b"pump-9" and 0 < len(big.value) < 64_000 and big.value == original[: len(big.value)]
    assert (
        headers[HEADERS["truncated"]] == b"256000"
        and headers["trace-id"] == b"t1"
        and headers[HEADERS["reason"]] == b"too_large"
    )
    assert small.value == b"{small" and HEADERS["truncated"] not in dict(small.headers)
