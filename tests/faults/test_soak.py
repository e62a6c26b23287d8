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
from service_harness import ServiceProcess, http_status, make_topics, service_env

from detector.broker import free_port
from detector.demo import Message

pytestmark = [pytest.mark.kafka, pytest.mark.faults]
SOAK_SECONDS = float(os.environ.get("DETECTOR_SOAK_SECONDS", "600"))
RATE = 400  # messages per second
ACTIVE = 2000  # entities active at any time; the population rotates every minute


def _sample(port: int) -> tuple[float, float, float]:
    """(resident bytes, consumer lag summed over partitions, entities tracked) from /metrics: the
    lag and the entities tell a growth that follows them (bounded) from one that does not (a leak)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    lag = sum(float(v) for v in re.findall(r"^detector_consumer_lag_messages\{.*\} ([0-9.e+]+)$", text, re.M))
    rss = re.search(r"^process_resident_memory_bytes ([0-9.e+]+)$", text, re.M)
    entities = re.search(r"^detector_entities_tracked ([0-9.e+]+)$", text, re.M)
    assert rss and entities, "/metrics lacks the resident memory or the entity count"
    return float(rss.group(1)), lag, float(entities.group(1))


def _wait_ready(port: int, service: ServiceProcess, timeout_s: float = 120) -> None:
    """Until the service answers /readyz with 200: its start-up (torch, the model, the group
    join) takes from 5 s on an idle machine to over 15 s on a busy one."""
    deadline = time.time() + timeout_s
    while http_status(f"http://127.0.0.1:{port}/readyz") != 200:
        assert service.alive(), "the service died during start-up"
        assert time.time() < deadline, f"the service was not ready within {timeout_s:.0f} s"
        time.sleep(0.5)


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
    _wait_ready(port, service)
    feeder.start()
    started = time.time()
    try:
        while time.time() - started < SOAK_SECONDS:
            time.sleep(10)
            assert service.alive(), "the service died during the soak"
            samples.append((time.time() - started, *_sample(port)))
        stop.set()
        feeder.join()
    finally:
        stop.set()
        code = service.terminate()
    assert code == 0
    warm = [rss for t, rss, _, _ in samples if t >= SOAK_SECONDS * 0.3]
    trend, spike = _growth(warm)
    print(
        f"soak: {sent[0]} messages over {SOAK_SECONDS:.0f} s; "
        f"RSS after warm-up {warm[0] / 2**20:.1f} MiB, peak {max(warm) / 2**20:.1f} MiB; "
        f"trend {100 * trend:.1f}% (median of the last third against the first), "
        f"peak {100 * spike:.1f}% above the first third"
    )
    print(  # where any growth happens, and whether it follows the lag or the entities
        "soak (s: RSS MiB, lag, entities):",
        ", ".join(f"{t:.0f}: {rss / 2**20:.1f} {lag:.0f} {n:.0f}" for t, rss, lag, n in samples[::3]),
    )
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
