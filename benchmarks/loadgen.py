"""Rate-limited load generator for the latency benchmark, run as its own process.

Produces the demo workload (``detector.demo.generate_stream``: 8 features, ``--entities``
entities, normal behaviour, no injected faults) at ``--rate`` messages per second for
``--seconds``; each message's ``timestamp`` is the wall-clock time at which it is handed to
the producer, so the latency the service measures (message timestamp -> decision) includes the
producer's batching delay and the broker.

It uses confluent-kafka (librdkafka, C) rather than kafka-python: at 12,500 msg/s kafka-python's
producer took 0.6-0.8 of the machine's 2 cores, confluent-kafka takes about 0.2, leaving the
service and broker the CPU they would have on a production host.

``--linger-ms`` (default 20) matters on the bundled Tansu broker: with 5 ms, i.e. record batches
of one to a few messages, the time for a produced record to reach a bare consumer grew steadily
over a 20 s run (p50 18 -> 416 ms at 12,500 msg/s, 12 -> 128 ms at 2,500 msg/s) and the
broker's CPU rose, while with 20 ms it stayed flat (p50 about 20 ms, p99 50 ms). Apache Kafka
indexes batches by offset and is not expected to show this.

Prints one line ``ready`` once connected, then at the end one JSON line: messages sent, seconds,
CPU seconds, and the send -> acknowledgement delay (p50, p99) of every 20th message.

    python benchmarks/loadgen.py BOOTSTRAP TOPIC --rate 12500 --seconds 30 --entities 10000
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def message_pool(entities: int, messages: int) -> list[tuple[bytes, bytes, bytes]]:
    """(key, JSON head up to the timestamp, JSON tail) for ``messages`` demo messages.

    >>> key, head, tail = message_pool(2, 4)[0]
    >>> json.loads(head + b"1795568400.0" + tail)["timestamp"]
    1795568400.0
    """
    from detector.demo import FEATURES, generate_stream

    per_entity = messages // entities + 1
    return [
        (
            m.entity.encode(),
            json.dumps({"entity": m.entity}).encode()[:-1] + b', "timestamp": ',
            b', "values": ' + json.dumps(dict(zip(FEATURES, m.values, strict=True))).encode() + b"}",
        )
        for m in generate_stream(entities, per_entity, seed=3)
    ]


def produce(
    producer, topic: str, pool: list[tuple[bytes, bytes, bytes]], rate: float, seconds: float
) -> tuple[int, list[float]]:
    """Send at ``rate`` msg/s for ``seconds``; (messages sent, sampled send -> ack delays)."""
    acked: list[float] = []
    begin, sent = time.perf_counter(), 0
    while (elapsed := time.perf_counter() - begin) < seconds:
        due = int(elapsed * rate)
        while sent < due:
            key, head, tail = pool[sent % len(pool)]
            stamp = time.time()
            if sent % 20 == 0:
                producer.produce(
                    topic,
                    head + repr(stamp).encode() + tail,
                    key,
                    on_delivery=lambda _e, _m, stamp=stamp: acked.append(time.time() - stamp),
                )
            else:
                producer.produce(topic, head + repr(stamp).encode() + tail, key)
            sent += 1
        producer.poll(0)
        time.sleep(0.001)
    producer.flush(30)
    return sent, acked


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("bootstrap")
    p.add_argument("topic")
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--entities", type=int, default=10_000)
    p.add_argument("--linger-ms", type=int, default=20)
    args = p.parse_args()
    from confluent_kafka import Producer

    # long enough never to wrap around: a wrap is a jump in every entity's series, i.e. an anomaly
    # per entity every len(pool)/entities messages, and alerts are not the workload measured here
    pool = message_pool(args.entities, int(args.rate * args.seconds * 1.05) + args.entities)
    producer = Producer(
        {
            "bootstrap.servers": args.bootstrap,
            "linger.ms": args.linger_ms,
            "acks": 1,
            "enable.idempotence": False,
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    producer.list_topics(args.topic, timeout=30)  # connected and the topic's metadata known
    print("ready", flush=True)
    cpu0, started = time.process_time(), time.time()
    sent, acked = produce(producer, args.topic, pool, args.rate, args.seconds)
    ended = time.time()
    print(
        json.dumps(
            {
                "sent": sent,
                "started": started,
                "ended": ended,
                "cpu_s": time.process_time() - cpu0,
                "ack_p50": _quantile(acked, 0.5),
                "ack_p99": _quantile(acked, 0.99),
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
