"""Checkpoints are untrusted input: each crafted one gives fresh states, counted as invalid."""

from __future__ import annotations

import json
import math
import re
import urllib.request

import pytest
import torch
from kafka import KafkaProducer
from service_harness import ServiceProcess, TopicReader, make_topics, offsets_seen, produce, service_env
from support import checkpoint_without

from detector.broker import free_port
from detector.checkpoints import MAX_CHUNKS, _manifest
from detector.demo import generate_stream
from detector.model import load_model
from detector.scoring import Detector
from detector.state import CheckpointError, EntityStore

GOOD_MANIFEST = {"id": "c1", "chunks": 1, "next_offset": 0, "model_version": "v1", "written_at": 0.0}


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"chunks": 10**12}, "1000000000000 chunks"),
        ({"chunks": "1"}, "field 'chunks' is str"),
        ({"next_offset": 1.5}, "field 'next_offset' is float"),
        ({"next_offset": True}, "field 'next_offset' is bool"),
        ({"next_offset": -3}, "negative offset"),
        ({"id": "a/b"}, "bad id"),
        ({"model_version": None}, "field 'model_version' is NoneType"),
        ({"bytes": 10**12}, "does not fit"),
    ],
)
def test_a_manifest_with_a_field_off_is_invalid(change, words):
    parsed = _manifest(json.dumps({**GOOD_MANIFEST, **change}).encode())
    assert set(parsed) == {"invalid"} and words in parsed["invalid"]


def test_a_manifest_that_is_not_json_is_corrupt_and_a_good_one_passes():
    assert set(_manifest(b"{garbage")) == {"error"}
    assert _manifest(b'{"id": "c1", "chunks": 1, "next_offset": 0, "model_version": "v1", "written_at": NaN}') == {
        "invalid": "manifest: written_at is not finite"
    }
    assert _manifest(json.dumps(GOOD_MANIFEST).encode()) == GOOD_MANIFEST and MAX_CHUNKS * 512 * 1024 <= 2**31


def _store(**kw) -> EntityStore:
    return EntityStore(state_size=4, baseline=(0.0, 1.0), n_features=2, seasonal_bins=4, **kw)


def _export(entities: int = 3, tweak=None) -> bytes:
    store = _store()
    store.slots_for([f"e{i}" for i in range(entities)], owner=0, now=0.0)
    if tweak:
        tweak(store)
    return store.export(owner=0)


def _rewritten(blob: bytes, **fields) -> bytes:
    import io

    payload = torch.load(io.BytesIO(blob), weights_only=True)
    payload.update(fields)
    out = io.BytesIO()
    torch.save(payload, out)
    return out.getvalue()


@pytest.mark.parametrize(
    ("blob", "words"),
    [
        (_export(tweak=lambda s: s.rnn.__setitem__(0, math.nan)), "recurrent states are not finite"),
        (_export(tweak=lambda s: s.likelihood.long_var.__setitem__(1, math.inf)), "long_var is not finite"),
        (_export(tweak=lambda s: s.hysteresis.steps.__setitem__(1, -5)), "steps is negative"),
        (_export(tweak=lambda s: s.hysteresis.last_ts.__setitem__(0, math.nan)), "last_ts is NaN"),
        (_export(entities=6), "more than max_entities (5)"),
        (_rewritten(_export(), entities=["a", "a", "b"]), "distinct names"),
        (_rewritten(_export(), entities="abc"), "distinct names"),
        (_rewritten(_export(), rnn=[[0.0] * 4] * 3), "shapes do not match"),
        (_rewritten(_export(), calm=torch.zeros(2, dtype=torch.int32)), "calm is missing or not one row per entity"),
        (checkpoint_without(_export(), "steps"), "steps is missing"),
    ],
    ids=[
        "nan-rnn",
        "inf-var",
        "negative-count",
        "nan-time",
        "too-many",
        "repeated-names",
        "names-not-a-list",
        "rnn-not-a-tensor",
        "short-field",
        "missing-field",
    ],
)
def test_crafted_states_are_invalid_and_change_nothing(blob, words):
    store = _store(max_entities=5)
    with pytest.raises(CheckpointError, match=re.escape(words)) as caught:
        store.restore(blob, owner=0, now=0.0)
    assert caught.value.reason == "invalid" and len(store) == 0


def test_a_blob_that_is_not_a_checkpoint_is_corrupt():
    with pytest.raises(CheckpointError) as caught:
        _store().restore(b"\x00\x01 not torch", owner=0, now=0.0)
    assert caught.value.reason == "corrupt"


@pytest.mark.kafka
def test_crafted_checkpoints_give_fresh_states_and_every_message_is_scored(
    kafka_bootstrap, topic_factory, model_dir, tmp_path
):
    model = load_model(model_dir)
    store = Detector(model, max_entities=5).store

    def blob(entities: int, nan: bool = False) -> bytes:
        store.drop_owner(1)
        store.slots_for([f"pump-{i}" for i in range(entities)], owner=1, now=0.0)
        if nan:
            store.rnn[store.slot_of("pump-0")] = math.nan
        return store.export(owner=1, tag=model.version)

    manifest = {"chunks": 1, "next_offset": 0, "model_version": model.version, "written_at": 0.0}
    many = Detector(model).store  # no bound: a checkpoint of 8 entities, for a service allowed 5
    many.slots_for([f"pump-{i}" for i in range(8)], owner=1, now=0.0)
    crafted = {  # partition -> (manifest, chunk)
        0: ({**manifest, "id": "c0", "chunks": "1"}, blob(2)),  # wrong type
        1: ({**manifest, "id": "c1", "chunks": 10**12}, blob(2)),  # would allocate a trillion chunk slots
        2: ({**manifest, "id": "c2"}, blob(2, nan=True)),  # NaN states
        3: ({**manifest, "id": "c3", "next_offset": 10**9}, blob(2)),  # beyond the partition's end
        4: ({**manifest, "id": "c4"}, many.export(owner=1, tag=model.version)),  # more entities than max_entities
        5: (  # four model versions' sections: more than a rollout holds
            {**manifest, "id": "c5", "sections": [[v, len(blob(2))] for v in (model.version, "v2", "v3", "v4")]},
            blob(2) * 4,
        ),
        6: ({**manifest, "id": "c6", "model_version": "never-published"}, blob(2)),  # a model nobody published
    }
    topics = make_topics(topic_factory, partitions=7)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", max_request_size=4 * 1024 * 1024)
    for partition, (body, chunk) in crafted.items():
        base = f"{topics.group}/{topics.input}/{partition}"
        producer.send(topics.checkpoints, key=f"{base}/{body['id']}/0".encode(), value=chunk)
        producer.send(topics.checkpoints, key=base.encode(), value=json.dumps(body).encode())
    producer.flush()
    producer.close()
    stream = generate_stream(10, 20, (), seed=21)
    produce(kafka_bootstrap, topics.input, stream)
    port = free_port()
    env = service_env(
        kafka_bootstrap,
        topics,
        model_dir,
        DETECTOR_METRICS__PORT=str(port),
        DETECTOR_METRICS__HOST="127.0.0.1",
        DETECTOR_STREAM__MAX_ENTITIES="5",
    )
    service = ServiceProcess(env, tmp_path / "service.log")
    try:
        records = TopicReader(kafka_bootstrap, topics.scores).wait_for(
            lambda r: len(offsets_seen(r)) >= len(stream), timeout_s=120, alive=service.alive
        )
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        assert service.terminate() == 0
    assert len(offsets_seen(records)) == len(stream), "no message skipped"
    assert 'detector_state_restore_fallbacks_total{reason="invalid"} 6.0' in metrics
    assert 'detector_state_restore_fallbacks_total{reason="model_version"} 1.0' in metrics
    fallbacks = {e["partition"]: e for e in service.log_events() if e["event"] == "state.restore_fallback"}
    assert sorted(fallbacks) == [0, 1, 2, 3, 4, 5, 6] and all(
        e["level"] == "error" and e["fallback"] == "invalid" for p, e in fallbacks.items() if p != 6
    )
    assert "outside the partition" in fallbacks[3]["reason"] and "max_entities" in fallbacks[4]["reason"]
    assert "4 model versions" in fallbacks[5]["reason"]
    assert fallbacks[6]["fallback"] == "model_version" and "never published" in fallbacks[6]["reason"]
