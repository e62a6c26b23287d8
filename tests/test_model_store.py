"""Models published to the checkpoint topic and fetched back by another instance (against the broker)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from kafka import KafkaProducer

from detector.checkpoints import CheckpointStore
from detector.model import save_model
from detector.model_store import ModelStore, pack
from detector.partition_states import ModelUnavailable
from detector.schema import Observation
from detector.scoring import Detector
from detector.testing import tiny_model

pytestmark = pytest.mark.kafka


@pytest.fixture
def stores(kafka_bootstrap, topic_factory):
    """Two instances' model stores on one checkpoint topic."""
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=5)
    topic = topic_factory(1)

    def make(features: list[str]) -> ModelStore:
        store = CheckpointStore(producer, topic, "group-a", {"bootstrap_servers": kafka_bootstrap})
        return ModelStore(store, Detector, features)

    yield make(["a", "b"]), make(["a", "b"]), make(["x", "y"]), producer
    producer.close(timeout=5)


def test_a_published_model_is_fetched_by_another_instance_and_scores_the_same(stores):
    mine, theirs, _, _ = stores
    model = replace(tiny_model(seed=3), version="v-pub")
    assert mine.publish(model) and mine.publish(model), "once per version"
    fetched = theirs.detector("v-pub")
    assert fetched.model.version == "v-pub"
    observation = [Observation("p1", 1e9, [0.3, -0.2])]
    assert fetched.process(observation)[0].score == Detector(model).process(observation)[0].score


def test_a_model_never_published_or_of_other_features_cannot_be_had(stores):
    mine, theirs, other_features, _ = stores
    with pytest.raises(ModelUnavailable, match="never published"):
        theirs.detector("v-none")
    with pytest.raises(ModelUnavailable, match="never published"):
        theirs.detector("v-none")  # not read again: the reason is remembered
    mine.publish(replace(tiny_model(), version="v-ab"))
    with pytest.raises(ModelUnavailable, match="feature schema mismatch"):
        other_features.detector("v-ab")


def test_a_crafted_model_record_is_refused_with_the_reason(stores, tmp_path):
    mine, theirs, _, _ = stores
    renamed = save_model(replace(tiny_model(), version="v-real"), tmp_path / "m")
    blob = pack(renamed)
    mine.store.settle(mine.store.send("#model/v-claimed", 0, 0, "v-claimed", blob))
    with pytest.raises(ModelUnavailable, match="is version v-real"):
        theirs.detector("v-claimed")
    mine.store.settle(mine.store.send("#model/v-junk", 0, 0, "v-junk", np.arange(3, dtype=np.int64).tobytes()))
    with pytest.raises(ModelUnavailable, match="not a packed model"):
        theirs.detector("v-junk")
