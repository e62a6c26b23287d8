"""Soak: a steady rate with entity churn for 10 minutes (DETECTOR_SOAK_SECONDS); memory stays flat."""

from __future__ import annotations

import os
import re
import threading
import time
import urllib.request

import numpy as np
import pytest
from kafka import KafkaProducer
from service_harness import ServiceProcess, make_topics, service_env

from detector.broker import free_port
from detector.demo import Message

pytestmark = [pytest.mark.kafka, pytest.mark.faults]
SOAK_SECONDS = float(os.environ.get("DETECTOR_SOAK_SECONDS", "600"))
RATE = 400  # messages per second
ACTIVE = 2000  # entities active at any time; the population rotates every minute


def _rss(port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return float(re.search(r"^process_resident_memory_bytes ([0-9.e+]+)$", text, re.M).group(1))


def _feed(bootstrap: str, topic: str, stop: threading.Event, sent: list[int]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
    rng, start = np.random.default_rng(0), time.time()
    while not stop.is_set():
        tick = time.time()
        generation = int((tick - start) // 60)
        for _ in range(RATE // 10):
            entity = f"soak-{generation}-{rng.integers(ACTIVE)}"
            values = (70 + rng.standard_normal(8)).tolist()
            producer.send(topic, key=entity.encode(), value=Message(entity, time.time(), values).to_json())
            sent[0] += 1
        time.sleep(max(0.0, 0.1 - (time.time() - tick)))
    producer.flush()
    producer.close()


@pytest.mark.timeout(int(SOAK_SECONDS) + 300)
def test_soak_memory_flat_under_entity_churn(kafka_bootstrap, topic_factory, model_dir, tmp_path):
    topics = make_topics(topic_factory)
    port = free_port()
    env = service_env(
        kafka_bootstrap,
        topics,
        model_dir,
        DETECTOR_METRICS__PORT=str(port),
        DETECTOR_METRICS__HOST="127.0.0.1",
        DETECTOR_STREAM__ENTITY_TTL_S="90",
        DETECTOR_STREAM__CHECKPOINT_INTERVAL_S="15",
    )
    service = ServiceProcess(env, tmp_path / "service.log")
    stop, sent, samples = threading.Event(), [0], []
    feeder = threading.Thread(target=_feed, args=(kafka_bootstrap, topics.input, stop, sent))
    time.sleep(5)
    feeder.start()
    started = time.time()
    try:
        while time.time() - started < SOAK_SECONDS:
            time.sleep(10)
            assert service.alive(), "the service died during the soak"
            samples.append((time.time() - started, _rss(port)))
        stop.set()
        feeder.join()
    finally:
        stop.set()
        code = service.terminate()
    assert code == 0
    warm = [rss for t, rss in samples if t >= SOAK_SECONDS * 0.3]
    trend, spike = _growth(warm)
    print(
        f"soak: {sent[0]} messages over {SOAK_SECONDS:.0f} s; "
        f"RSS after warm-up {warm[0] / 2**20:.1f} MiB, peak {max(warm) / 2**20:.1f} MiB; "
        f"trend {100 * trend:.1f}% (median of the last third against the first), "
        f"peak {100 * spike:.1f}% above the first third"
    )
    print(
        "soak RSS (s: MiB):", ", ".join(f"{t:.0f}: {rss / 2**20:.1f}" for t, rss in samples[::3])
    )  # where any growth happens
    assert trend < 0.03, "RSS keeps growing: a leak"
    assert spike < 0.08, "RSS transient too large"


def test_the_soak_measure_fails_a_leak_and_passes_a_transient():
    flat_with_transient = [360.0] * 10 + [380.0] + [361.0] * 10  # one checkpoint buffer, then flat
    leak = [360.0 * (1 + 0.003 * i) for i in range(21)]  # +6 % over the series
    assert _growth(flat_with_transient)[0] < 0.03 and _growth(flat_with_transient)[1] < 0.08
    assert _growth(leak)[0] >= 0.03


def _growth(rss: list[float]) -> tuple[float, float]:
    """(trend, spike) of an RSS series: the median of its last third relative to the median of its
    first third, and its peak relative to the same. A leak grows the medians; one transient in the
    Kafka clients or a checkpoint buffer moves only the peak, which has its own, looser bound.

    >>> [round(g, 3) for g in _growth([100.0] * 6 + [110.0] + [100.0] * 5)]
    [0.0, 0.1]
    >>> [round(g, 3) for g in _growth([100.0 + i for i in range(12)])]
    [0.079, 0.094]
    """
    third = max(len(rss) // 3, 1)
    first = float(np.median(rss[:third]))
    return float(np.median(rss[-third:])) / first - 1.0, max(rss) / first - 1.0
