"""How the service configures its Kafka clients: the producer, the group consumer and the
checkpoint reader share the connection and security settings.

>>> settings = KafkaSettings(
...     security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_username="u", sasl_password="p"
... )
>>> kafka_client_config(settings)["sasl_plain_username"]
'u'
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, TypeVar

from detector.config import KafkaSettings

__all__ = ["consumer_config", "kafka_client_config", "open_client", "producer_config"]

Client = TypeVar("Client")


def kafka_client_config(kafka: KafkaSettings) -> dict[str, Any]:
    """Connection and security settings shared by every client of the service."""
    config: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers.split(","),
        "client_id": kafka.client_id,
        "security_protocol": kafka.security_protocol,
        "request_timeout_ms": kafka.request_timeout_ms,
    }
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        config.update(
            ssl_cafile=_str(kafka.ssl_cafile),
            ssl_certfile=_str(kafka.ssl_certfile),
            ssl_keyfile=_str(kafka.ssl_keyfile),
        )
        if kafka.ssl_password:
            config["ssl_password"] = kafka.ssl_password.get_secret_value()
    if kafka.security_protocol.startswith("SASL"):
        config.update(sasl_mechanism=kafka.sasl_mechanism, sasl_plain_username=kafka.sasl_username)
        config["sasl_plain_password"] = kafka.sasl_password.get_secret_value() if kafka.sasl_password else None
    return config


def producer_config(kafka: KafkaSettings) -> dict[str, Any]:
    """The service's producer: every record acknowledged by all in-sync replicas."""
    return {
        **kafka_client_config(kafka),
        "acks": "all",
        "linger_ms": 5,
        "retries": 5,
        "max_request_size": 2 * 1024 * 1024,
    }


def consumer_config(kafka: KafkaSettings) -> dict[str, Any]:
    """The service's group member: offsets committed by the service, never automatically."""
    return {
        **kafka_client_config(kafka),
        "group_id": kafka.group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": kafka.session_timeout_ms,
        "heartbeat_interval_ms": kafka.heartbeat_interval_ms,
        "max_poll_interval_ms": kafka.max_poll_interval_ms,
        "max_poll_records": kafka.max_poll_records,
        "fetch_max_wait_ms": kafka.fetch_max_wait_ms,
        "fetch_min_bytes": kafka.fetch_min_bytes,
    }


def open_client(client_class: Callable[..., Client], **config: Any) -> Client:
    """``client_class(**config)`` (a kafka-python client) that leaves no thread behind when it fails.

    kafka-python starts a client's network thread before it contacts the bootstrap servers; when
    that fails the constructor raises and the thread lives on, reconnecting and logging warnings
    for ever (one more thread per retry while a broker is down). The client's network part is
    created through ``kafka_client`` here, so it can be closed when the constructor raises.

    Use it as the constructor: ``open_client(KafkaConsumer, **consumer_config(settings))``.
    """
    from kafka.net import KafkaNetClient  # the default network client of every kafka-python client class

    created: list[Any] = []

    def network_client(**kwargs: Any) -> Any:
        created.append(KafkaNetClient(**kwargs))
        return created[-1]

    try:
        return client_class(**config, kafka_client=network_client)
    except BaseException:
        for client in created:
            with contextlib.suppress(Exception):
                client.close()
        raise


def _str(value: Any) -> str | None:
    return str(value) if value is not None else None
