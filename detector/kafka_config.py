"""How the service configures its Kafka clients: the producer, the group consumer and the
checkpoint reader share the connection and security settings.

>>> settings = KafkaSettings(
...     security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_username="u", sasl_password="p"
... )
>>> kafka_client_config(settings)["sasl_plain_username"]
'u'
"""

from __future__ import annotations

from typing import Any

from detector.config import KafkaSettings

__all__ = ["consumer_config", "kafka_client_config", "producer_config"]


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


def _str(value: Any) -> str | None:
    return str(value) if value is not None else None
