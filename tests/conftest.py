"""Shared fixtures: a Kafka-protocol broker for the integration tests, and a fitted model.

Set KAFKA_BOOTSTRAP_SERVERS to run against a real Apache Kafka; otherwise
the bundled Tansu broker (detector.broker) is started once per session.

Every test that uses the broker fixture is marked ``kafka`` here, so `make unit`
(``-m "not kafka and not slow"``) leaves it out; a test that starts a broker of its
own must carry the mark itself, and fails saying so if it does not.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from service_harness import TopicReader

from detector.broker import Broker, create_topics, start_broker

BROKER_FIXTURE = "kafka_bootstrap"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``kafka`` every test that asks for the broker, directly or through another fixture."""
    for item in items:
        if BROKER_FIXTURE in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.kafka)


@pytest.fixture(autouse=True)
def _close_topic_readers() -> Iterator[None]:
    """Close the topic readers a test left open: their consumer threads would log into later tests."""
    yield
    TopicReader.close_all()


@pytest.fixture(autouse=True)
def _broker_only_in_kafka_tests(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make a test that is not marked ``kafka`` fail if it starts a broker in this process."""
    if request.node.get_closest_marker("kafka") is not None:
        return
    test = request.node.nodeid

    def refuse(self: Broker, timeout: float = 30.0) -> Broker:
        raise AssertionError(f"{test} starts a broker: mark it `@pytest.mark.kafka` so `make unit` leaves it out")

    monkeypatch.setattr(Broker, "start", refuse)


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


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model fitted once per session on generated sensor history (the demo's generator)."""
    import numpy as np

    from detector.config import FitSettings, ModelSettings, ScoringSettings
    from detector.demo import FEATURES, generate_history
    from detector.fit import fit_tables, write_model
    from detector.schema import Table

    history = generate_history(entities=10, rows=300)
    table = Table(
        [m.timestamp for m in history],
        [str(m.timestamp) for m in history],
        [m.entity for m in history],
        FEATURES,
        np.array([m.values for m in history]),
    )
    model, fit_history = fit_tables(
        [table], ModelSettings(), FitSettings(report=False), ScoringSettings(), progress=False
    )
    directory = tmp_path_factory.mktemp("model")
    write_model(model, fit_history, directory, report=False)
    return directory
