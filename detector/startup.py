"""Before consuming: wait for the broker, then check (or create) the topics the service writes to.

A broker that cannot be reached is a run-time condition, not an error: the service says so once
(``kafka.unreachable``: where it tried, when it tries again), keeps trying with ``/readyz`` at 503
and its liveness beating, says ``kafka.reachable`` when it gets through, and stops at once when
told to. A missing or forbidden output topic is a set-up mistake: :class:`StartupError` carries
one line naming the topic and the problem (``detector run`` exits 2), unless
``kafka.create_topics`` is set, in which case missing topics are created.

>>> admin = wait_for_broker(kafka_client_config(settings.kafka), stop, health)   # doctest: +SKIP
>>> check_topics(admin, settings.kafka)                                          # doctest: +SKIP
"""

from __future__ import annotations

import threading
import time
from typing import Any

from kafka import KafkaAdminClient
from kafka import errors as kafka_errors

from detector.config import KafkaSettings
from detector.kafka_config import kafka_client_config, open_client
from detector.logs import get_logger
from detector.metrics import Health

__all__ = ["StartupError", "broker_ready", "check_topics", "output_topics", "wait_for_broker"]

log = get_logger(__name__)

BOOTSTRAP_TIMEOUT_MS = 2000  # one connection attempt: also the longest a stop waits while trying
RETRY_EVERY_S = 5.0
_UNREACHABLE = (kafka_errors.KafkaTimeoutError, kafka_errors.KafkaConnectionError)


class StartupError(Exception):
    """A set-up mistake found before consuming; the message is one line (plus a help line)."""


def wait_for_broker(
    client_config: dict[str, Any], stop: threading.Event, health: Health, retry_s: float = RETRY_EVERY_S
) -> KafkaAdminClient | None:
    """An admin client once the bootstrap servers answer; None if ``stop`` is set first."""
    servers = ",".join(client_config["bootstrap_servers"])
    failed_since: float | None = None
    while not stop.is_set():
        health.beat()
        try:
            admin = open_client(KafkaAdminClient, **client_config, bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS)
        except _UNREACHABLE as error:
            if failed_since is None:
                failed_since = time.monotonic()
                log.error(
                    "kafka.unreachable",
                    bootstrap_servers=servers,
                    error=repr(error),
                    retry_every_s=retry_s,
                    note="retrying until the broker answers; /readyz answers 503 meanwhile",
                )
            health.set_ready(False, f"broker {servers} unreachable")
            stop.wait(retry_s)
            continue
        except kafka_errors.KafkaError as error:
            raise StartupError(
                f"the broker at {servers} refused the connection: {error}\n"
                "help: check kafka.security_protocol and the SSL/SASL settings"
            ) from error
        if failed_since is not None:
            log.info("kafka.reachable", bootstrap_servers=servers, waited_s=round(time.monotonic() - failed_since, 1))
        return admin
    return None


def broker_ready(kafka: KafkaSettings, stop: threading.Event, health: Health) -> bool:
    """Wait for the broker and check the output topics; False if ``stop`` is set meanwhile.

    Raises :class:`StartupError` for a missing or forbidden topic.
    """
    health.set_ready(False, "connecting to the broker")
    admin = wait_for_broker(kafka_client_config(kafka), stop, health)
    if admin is None:
        log.info("service.stopped", note="stopped before the broker was reached")
        return False
    try:
        check_topics(admin, kafka)
    finally:
        admin.close()
    return True


def output_topics(kafka: KafkaSettings) -> dict[str, str]:
    """Topic name -> its role, for every topic the service writes to."""
    topics = {kafka.alert_topic: "alert", kafka.dead_letter_topic: "dead-letter", kafka.checkpoint_topic: "checkpoint"}
    if kafka.scores_topic:
        topics[kafka.scores_topic] = "scores"
    return topics


def check_topics(admin: KafkaAdminClient, kafka: KafkaSettings) -> list[str]:
    """Raise :class:`StartupError` for the first output topic that is missing or not writable;
    with ``kafka.create_topics`` missing ones are created first. Returns the topics created."""
    roles = output_topics(kafka)
    described = {t["name"]: t for t in admin.describe_topics(list(roles))}
    missing = [
        name
        for name in roles
        if described.get(name, {}).get("error_code", 3) == kafka_errors.UnknownTopicOrPartitionError.errno
    ]
    if missing and kafka.create_topics:
        _create(admin, {name: roles[name] for name in missing})
        described.update({t["name"]: t for t in admin.describe_topics(missing)})
    for name, role in roles.items():
        _check_one(name, role, described.get(name, {}))
    return missing if kafka.create_topics else []


def _create(admin: KafkaAdminClient, roles: dict[str, str]) -> None:
    for name, role in roles.items():
        configs = {"cleanup.policy": "compact"} if role == "checkpoint" else {}
        try:
            admin.create_topics(
                {name: {"num_partitions": 1, "replication_factor": -1, "configs": configs}}, wait_for_metadata=True
            )
        except kafka_errors.TopicAlreadyExistsError:
            continue  # another replica created it meanwhile
        except kafka_errors.KafkaError as error:
            raise StartupError(f"topic {name!r} could not be created: {error}") from error
        log.info("kafka.topic_created", topic=name, config=configs)


def _check_one(name: str, role: str, description: dict[str, Any]) -> None:
    code = description.get("error_code", kafka_errors.UnknownTopicOrPartitionError.errno)
    if code == kafka_errors.UnknownTopicOrPartitionError.errno:
        raise StartupError(
            f"{role} topic {name!r} does not exist\n"
            "help: create it, or set kafka.create_topics = true to let the service create it"
        )
    if code == kafka_errors.TopicAuthorizationFailedError.errno:
        raise StartupError(
            f"{role} topic {name!r}: not authorised to describe it\n"
            "help: grant the service's principal DESCRIBE and WRITE on the topic"
        )
    if code:
        raise StartupError(f"{role} topic {name!r}: the broker answered {kafka_errors.for_code(code).__name__}")
    operations = set(
        description.get("authorized_operations") or ()
    )  # names kafka-python decodes; empty when the broker does not report them
    if operations and not operations & {"WRITE", "ALL"}:
        raise StartupError(
            f"{role} topic {name!r}: not authorised to write to it\n"
            "help: grant the service's principal WRITE on the topic"
        )
