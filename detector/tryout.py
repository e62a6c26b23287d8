"""``detector broker | send | read``: what a newcomer needs to try the service on one machine.

* ``broker`` runs the bundled Tansu broker (in memory) where ``kafka.bootstrap_servers`` points,
  creates the service's topics and runs until Ctrl-C or SIGTERM;
* ``send`` publishes the rows of a CSV file as the service's JSON messages, keyed by entity;
* ``read`` prints a topic's records (the alerts, by default) as JSON lines, from the beginning.

They are for trying things out; production uses its own Kafka and tooling.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from detector.config import Settings
from detector.schema import DataError, observations_from_table, read_csv

__all__ = ["read_topic", "run_broker", "send_csv"]

_COMPACTED = {"cleanup.policy": "compact"}


def run_broker(settings: Settings) -> int:
    """Serve the bundled broker on the port of ``kafka.bootstrap_servers`` until stopped."""
    from detector.broker import Broker, BrokerError, create_topics

    host, _, port = settings.kafka.bootstrap_servers.split(",")[0].rpartition(":")
    if host not in ("127.0.0.1", "localhost") or not port.isdigit():
        raise DataError(
            "kafka.bootstrap_servers",
            f"the bundled broker runs on 127.0.0.1 only, not {settings.kafka.bootstrap_servers!r}",
            help="set DETECTOR_KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:PORT",
        )
    stop = _stop_on_signals()
    try:
        broker = Broker(int(port)).start()
    except BrokerError as error:
        print(f"detector broker: {error}", file=sys.stderr)
        return 1
    with broker:
        kafka = settings.kafka
        create_topics(broker.bootstrap_servers, kafka.input_topics, 1)
        create_topics(
            broker.bootstrap_servers,
            [kafka.alert_topic, kafka.dead_letter_topic, *([kafka.scores_topic] if kafka.scores_topic else [])],
            1,
        )
        create_topics(broker.bootstrap_servers, [kafka.checkpoint_topic], 1, _COMPACTED)
        print(
            f"broker ready at {broker.bootstrap_servers} (topics {', '.join(kafka.input_topics)}, {kafka.alert_topic}, "
            f"{kafka.dead_letter_topic}, {kafka.checkpoint_topic}); Ctrl-C stops it",
            flush=True,
        )
        while not stop:
            time.sleep(0.2)
    return 0


def _stop_on_signals() -> list[int]:
    """A list that gets the signal number once SIGINT or SIGTERM arrives."""
    received: list[int] = []

    def handler(number: int, _frame: FrameType | None) -> None:
        received.append(number)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return received


def send_csv(settings: Settings, path: Path, topic: str | None) -> int:
    """Publish every row of the CSV file at ``path`` as a message of the stream's format."""
    from kafka import KafkaProducer

    from detector.broker import create_topics, wait_until_ready

    table = read_csv(path)
    topic = topic or settings.kafka.input_topics[0]
    wait_until_ready(settings.kafka.bootstrap_servers)
    create_topics(settings.kafka.bootstrap_servers, [topic], 1)
    fields = settings.stream
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all")
    for row in observations_from_table(table):
        body = {
            fields.entity_field: row.entity,
            fields.timestamp_field: row.timestamp,
            fields.values_field: dict(zip(table.features, row.values, strict=True)),
        }
        producer.send(topic, key=row.entity.encode(), value=json.dumps(body).encode())
    producer.flush()
    producer.close()
    print(f"sent {len(table.timestamps)} messages from {path} to {topic} at {settings.kafka.bootstrap_servers}")
    return 0


def read_topic(settings: Settings, topic: str | None, count: int, timeout_s: float) -> int:
    """Print ``topic``'s records from the beginning as JSON lines until ``count`` were read (exit
    0) or ``timeout_s`` seconds have passed (exit 1: fewer arrived)."""
    from kafka import KafkaConsumer

    from detector.broker import wait_until_ready

    topic = topic or settings.kafka.alert_topic
    wait_until_ready(settings.kafka.bootstrap_servers, timeout=timeout_s)
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka.bootstrap_servers,
        auto_offset_reset="earliest",
        group_id=None,
        enable_auto_commit=False,
        consumer_timeout_ms=500,
    )
    seen, deadline = 0, time.monotonic() + timeout_s
    try:
        while seen < count and time.monotonic() < deadline:
            for record in consumer:
                print(record.value.decode("utf-8", errors="replace"), flush=True)
                seen += 1
                if seen >= count:
                    break
    finally:
        consumer.close()
    if seen < count:
        print(f"detector read: {seen} of {count} records on {topic} within {timeout_s:g} s", file=sys.stderr)
        return 1
    return 0
