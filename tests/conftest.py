"""Shared fixtures: a Kafka-protocol broker for the integration tests.

Set KAFKA_BOOTSTRAP_SERVERS to run against a real Apache Kafka; otherwise
the bundled Tansu broker (detector.broker) is started once per session.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator

import pytest

from detector.broker import create_topics, start_broker


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers ("host:port") of the broker shared by the whole session."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    with start_broker() as broker:
        yield broker.bootstrap_servers


@pytest.fixture
def topic_factory(kafka_bootstrap: str, request: pytest.FixtureRequest) -> Callable[..., str]:
    """Create a topic with a unique name: ``topic_factory(partitions=4, config=None) -> name``."""
    prefix = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name)[:80]

    def make(partitions: int = 1, config: dict[str, str] | None = None) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        create_topics(kafka_bootstrap, [name], partitions, config)
        return name

    return make
