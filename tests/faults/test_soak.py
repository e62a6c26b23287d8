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

from detector.broker import free_port
from detector.demo import Message

from service_harness import ServiceProcess, TopicReader, make_topics, offsets_seen, service_env

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
    env = service_env(kafka_bootstrap, topics, model_dir, DETECTOR_METRICS__PORT=str(port), DETECTOR_METRICS__HOST="127.0.0.1",
                      DETECTOR_STREAM__ENTITY_TTL_S="90", DETECTOR_STREAM__CHECKPOINT_INTERVAL_S="15")
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
    baseline, peak = warm[0], max(warm)
    growth = (peak - baseline) / baseline
    print(f"soak: {sent[0]} messages over {SOAK_SECONDS:.0f} s; RSS after warm-up {baseline / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB, growth {100 * growth:.1f}%")
    print("soak RSS (s: MiB):", ", ".join(f"{t:.0f}: {rss / 2**20:.1f}" for t, rss in samples[::3]))  # where any growth happens
    assert growth < 0.05
