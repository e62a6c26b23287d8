"""Run `detector run` as a real subprocess against the test broker, and read what it wrote."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from detector.demo import Message
from detector.model import load_model
from detector.schema import Observation
from detector.scoring import Decision, Detector
from detector.testing import ServiceTopics, service_env

__all__ = [
    "ServiceProcess",
    "ServiceTopics",
    "TopicReader",
    "dead_letter_view",
    "http_status",
    "make_topics",
    "offline_decisions",
    "offsets_seen",
    "produce",
    "service_env",
]


def make_topics(topic_factory: Callable[..., str], partitions: int = 4) -> ServiceTopics:
    """Fresh topics for one deployment: the input with ``partitions``, the others with one."""
    return ServiceTopics(
        topic_factory(partitions), topic_factory(1), topic_factory(1), topic_factory(1), topic_factory(1)
    )


def offline_decisions(model_dir: Path, messages: list[Message]) -> dict[tuple[str, float], Decision]:
    """What `detector run` should publish for ``messages``: the uninterrupted offline scoring,
    by (entity, timestamp)."""
    decisions = Detector(load_model(model_dir)).process(
        [Observation(m.entity, m.timestamp, m.values) for m in messages]
    )
    return {(d.entity, d.timestamp): d for d in decisions}


RUN_COMMAND = [sys.executable, "-m", "detector.cli", "run"]


def run_until_exit(env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`detector run` for a start that should end by itself (a refused start-up): its exit and output."""
    return subprocess.run(RUN_COMMAND, env=env, capture_output=True, text=True, timeout=timeout)


class ServiceProcess:
    """`python -m detector.cli run` with its log in a file."""

    def __init__(self, env: dict[str, str], log_path: Path):
        self.log_path = log_path
        self.process = subprocess.Popen(
            RUN_COMMAND,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log_path.open("ab"),
        )

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def terminate(self, timeout: float = 60) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def log_events(self) -> list[dict]:
        events = []
        for line in self.log_path.read_text().splitlines():
            if line.startswith("{"):
                events.append(json.loads(line))
        return events


def http_status(url: str) -> int:
    """The HTTP status ``url`` answers with; -1 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return -1


def produce(bootstrap: str, topic: str, messages: Iterable[Message | tuple[bytes | None, bytes | None]]) -> int:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=10)
    count = 0
    for m in messages:
        key, value = (m.entity.encode(), m.to_json()) if isinstance(m, Message) else m
        producer.send(topic, key=key, value=value)
        count += 1
    producer.flush()
    producer.close()
    return count


def json_view(record: Any) -> dict:
    return json.loads(record.value)


def dead_letter_view(record: Any) -> dict:
    """A dead letter (original key and value, context in ``detector.errors.*`` headers) as a dict."""
    headers = {k: v.decode() for k, v in record.headers or []}
    return {
        "reason": headers["detector.errors.reason"],
        "detail": headers["detector.errors.exception.message"],
        "exception": headers["detector.errors.exception.class.name"],
        "stage": headers["detector.errors.stage"],
        "source": {
            "topic": headers["detector.errors.topic"],
            "partition": int(headers["detector.errors.partition"]),
            "offset": int(headers["detector.errors.offset"]),
        },
        "key": record.key,
        "value": record.value,
        "headers": headers,
    }


class TopicReader:
    """Incrementally reads a whole topic (all partitions) from the beginning, without a group;
    ``view`` turns each record into the dict kept (default: its JSON value).

    Every reader still open when its test ends is closed by :meth:`close_all` (an autouse fixture
    in conftest.py), so no consumer thread outlives its test and logs into later ones.
    """

    opened: ClassVar[list[TopicReader]] = []

    def __init__(self, bootstrap: str, topic: str, view: Callable[[Any], dict] = json_view):
        self.view = view
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
        TopicReader.opened.append(self)
        partitions = [TopicPartition(topic, p) for p in sorted(self.consumer.partitions_for_topic(topic) or {0})]
        self.consumer.assign(partitions)
        self.consumer.seek_to_beginning(*partitions)
        self.records: list[dict] = []

    def read(self, timeout_s: float = 1.0) -> list[dict]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for batch in self.consumer.poll(timeout_ms=200).values():
                self.records.extend(self.view(r) for r in batch)
        return self.records

    def wait_for(
        self, condition: Callable[[list[dict]], bool], timeout_s: float, alive: Callable[[], bool] = lambda: True
    ) -> list[dict]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition(self.read(0.5)):
                return self.records
            assert alive(), "the service process died"
        raise AssertionError(f"condition not met within {timeout_s} s ({len(self.records)} records)")

    def close(self) -> None:
        self.consumer.close()

    @classmethod
    def close_all(cls) -> None:
        """Close every reader opened since the last call."""
        while cls.opened:
            cls.opened.pop().close()


def offsets_seen(records: list[dict]) -> set[tuple[int, int]]:
    return {(r["source"]["partition"], r["source"]["offset"]) for r in records}
