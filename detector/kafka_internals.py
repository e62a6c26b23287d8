"""The one place that reads kafka-python's private attributes.

kafka-python has no public call for two facts the service needs: whether the group coordinator
is known (an asynchronous commit without one completes the coordinator lookup's future, not the
commit's), and when the coordinator last answered a heartbeat (how a broker outage shows on an
idle service). Both live on the consumer's private ``_coordinator``. Reading them only here means
an upgrade that renames them breaks one module, and :func:`check_internals` (called once at
start-up and by the tests) says so at once instead of the service silently losing its checks.

>>> coordinator_unknown(consumer)      # doctest: +SKIP
False
>>> last_heartbeat_answer(consumer)    # doctest: +SKIP
1234.5
"""

from __future__ import annotations

from typing import Any

from kafka import KafkaConsumer

__all__ = [
    "TESTED_VERSIONS",
    "KafkaInternalsChanged",
    "check_internals",
    "coordinator_unknown",
    "last_heartbeat_answer",
]

TESTED_VERSIONS = ">=3.0.12,<3.1"  # kafka-python releases this module is tested with; pyproject.toml pins the same


class KafkaInternalsChanged(RuntimeError):
    """kafka-python no longer has an attribute this module reads."""


def _coordinator(consumer: KafkaConsumer) -> Any:
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is None:
        raise KafkaInternalsChanged(
            "KafkaConsumer has no _coordinator: kafka-python's internals changed; see detector/kafka_internals.py"
        )
    return coordinator


def coordinator_unknown(consumer: KafkaConsumer) -> bool:
    """True while the consumer group's coordinator is not known (asynchronous commits are unsafe)."""
    return bool(_coordinator(consumer).coordinator_unknown())


def last_heartbeat_answer(consumer: KafkaConsumer) -> float:
    """``time.monotonic()`` of the coordinator's last heartbeat answer; ``-inf`` before the first one."""
    return float(_coordinator(consumer).heartbeat.last_receive)


def check_internals(consumer: KafkaConsumer) -> None:
    """Raise :class:`KafkaInternalsChanged` naming what is missing if any read above would fail."""
    coordinator = _coordinator(consumer)
    missing = [
        name
        for name, found in (
            ("_coordinator.coordinator_unknown", callable(getattr(coordinator, "coordinator_unknown", None))),
            (
                "_coordinator.heartbeat.last_receive",
                isinstance(getattr(getattr(coordinator, "heartbeat", None), "last_receive", None), float),
            ),
        )
        if not found
    ]
    if missing:
        raise KafkaInternalsChanged(
            f"kafka-python lacks {', '.join(missing)}: its internals changed; see detector/kafka_internals.py"
        )
