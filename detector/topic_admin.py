"""Topic administration and readiness checks over the Kafka protocol.

Works against any broker: the bundled Tansu (see :mod:`detector.broker`) or a real cluster.
Metadata is read with a consumer, not ``KafkaAdminClient.list_topics()``, which kafka-python
2.x cannot parse from Tansu.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Mapping
from typing import Any

import kafka.errors
from kafka import KafkaAdminClient, KafkaConsumer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from detector.kafka_config import open_client

__all__ = ["BrokerError", "create_topics", "metadata_ping", "wait_until_ready"]


class BrokerError(RuntimeError):
    """A broker cannot be reached in time, or the bundled one cannot be found or started."""


def wait_until_ready(bootstrap_servers: str, timeout: float = 30.0) -> None:
    """Block until the broker at *bootstrap_servers* answers a Kafka metadata request.

    >>> wait_until_ready("127.0.0.1:9092", timeout=10)   # doctest: +SKIP

    Raises:
        BrokerError: no answer within *timeout* seconds.
    """
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            metadata_ping(bootstrap_servers, deadline - time.monotonic())
            return
        except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
            last = exc
            time.sleep(0.1)
    raise BrokerError(f"no Kafka broker answered at {bootstrap_servers} within {timeout:.0f}s: {last!r}")


def _bounded_configs(client_class: Any, timeout: float) -> dict[str, Any]:
    """Client configs so that connecting gives up after about *timeout* seconds."""
    ms = max(1000, int(timeout * 1000))
    configs: dict[str, Any] = {"request_timeout_ms": ms}
    # The bootstrap wait is bootstrap_timeout_ms in kafka-python 3.x (default
    # 30 s, not bounded by request_timeout_ms) and api_version_auto_timeout_ms in 2.x.
    for key in ("bootstrap_timeout_ms", "api_version_auto_timeout_ms"):
        if key in client_class.DEFAULT_CONFIG:
            configs[key] = ms
    return configs


def _admin(bootstrap_servers: str, timeout: float) -> KafkaAdminClient:
    return open_client(
        KafkaAdminClient,
        bootstrap_servers=bootstrap_servers,
        client_id="detector-broker-admin",
        **_bounded_configs(KafkaAdminClient, timeout),
    )


def _list_topics(bootstrap_servers: str, timeout: float) -> set[str]:
    """Topic names from a fresh metadata request.

    Not KafkaAdminClient.list_topics(): kafka-python 2.x fails on Tansu's
    answer there with ``ValueError: 14 is not a valid ACLOperation``.
    """
    consumer = open_client(
        KafkaConsumer,
        bootstrap_servers=bootstrap_servers,
        client_id="detector-broker-metadata",
        fetch_max_wait_ms=100,
        enable_auto_commit=False,
        **_bounded_configs(KafkaConsumer, timeout),
    )
    try:
        return set(consumer.topics())
    finally:
        consumer.close()


def metadata_ping(bootstrap_servers: str, timeout: float) -> None:
    """Raise unless the broker answers one metadata request within about *timeout* seconds."""
    _list_topics(bootstrap_servers, timeout)


def create_topics(
    bootstrap_servers: str,
    names: str | Iterable[str],
    partitions: int,
    config: Mapping[str, str] | None = None,
    *,
    replication_factor: int = 1,
    timeout: float = 30.0,
) -> list[str]:
    """Create topics idempotently; return the names that did not exist yet.

    A topic that already exists is left as it is (its partition count and
    config are not checked). *config* is passed as topic configs, e.g.
    ``{"cleanup.policy": "compact"}`` (Tansu stores them without validating).

    >>> create_topics("127.0.0.1:9092", ["events", "scores"], partitions=4)  # doctest: +SKIP
    ['events', 'scores']
    >>> create_topics("127.0.0.1:9092", "events", partitions=4)              # doctest: +SKIP
    []

    Raises:
        kafka.errors.KafkaError: the broker refused a topic for another reason.
        BrokerError: a new topic did not show up in metadata within *timeout*.
    """
    wanted = [names] if isinstance(names, str) else list(names)
    configs = {str(k): str(v) for k, v in (config or {}).items()}
    created: list[str] = []
    admin = _admin(bootstrap_servers, timeout)
    try:
        for name in wanted:
            # One request per topic: an "already exists" error must not hide the others.
            try:
                response = admin.create_topics([NewTopic(name, partitions, replication_factor, topic_configs=configs)])
            except TopicAlreadyExistsError:  # kafka-python 3.x raises
                continue
            code = _create_error_code(response)
            if code == TopicAlreadyExistsError.errno:  # kafka-python 2.x returns it
                continue
            if code:
                raise kafka.errors.for_code(code)(f"creating topic {name!r}")
            created.append(name)
    finally:
        admin.close()
    _wait_for_topics(bootstrap_servers, created, timeout)
    return created


def _create_error_code(response: Any) -> int:
    """The error code of a one-topic CreateTopics answer (a dict in kafka-python 3.x, a struct in 2.x)."""
    if isinstance(response, dict):
        return int(response["topics"][0]["error_code"])
    return int(response.topic_errors[0][1])


def _wait_for_topics(bootstrap_servers: str, names: list[str], timeout: float) -> None:
    """Wait until *names* are in the cluster metadata."""
    if not names:
        return
    deadline = time.monotonic() + timeout
    missing = set(names)
    while True:
        with contextlib.suppress(KafkaError):
            missing = set(names) - _list_topics(bootstrap_servers, max(1.0, deadline - time.monotonic()))
        if not missing:
            return
        if time.monotonic() >= deadline:
            raise BrokerError(f"topics {sorted(missing)} not in metadata after {timeout:.0f}s")
        time.sleep(0.05)
