"""Every class of hostile message through the decoder and through the per-message path
(:class:`detector.guard.BatchGuard`): refused with a reason or scored, never raised."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hostile import FUTURE, HOSTILE, NOW, hostile_records
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.demo import FEATURES
from detector.guard import BatchGuard
from detector.metrics import DEAD_LETTER_REASONS
from detector.model import load_model
from detector.schema import BadMessage, MessageDecoder, MessageFields, Observation
from detector.scoring import Detector

DECODE = MessageDecoder(FEATURES, MessageFields())
SETTINGS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _verdict(raw: bytes | None, key: bytes | None) -> object:
    try:
        observation = DECODE(raw, key)
    except BadMessage as error:
        assert error.reason in DEAD_LETTER_REASONS and error.reason != "internal_error", error
        return error.reason
    assert observation.entity.startswith("h-") and len(observation.entity) <= 256
    observation.entity.encode("utf-8")  # a valid Kafka key
    assert len(observation.values) == len(FEATURES) and np.isfinite(observation.values).all()
    assert 0 <= observation.timestamp <= 253402300799
    return (observation.entity, observation.timestamp, observation.values)


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_each_hostile_class_is_refused_or_decoded_never_raised(kind):
    @SETTINGS
    @given(record=HOSTILE[kind])
    def check(record):
        key, raw = record
        verdict = _verdict(raw, key)
        ok, batch, dead = DECODE.decode_many([raw, raw], [key, key])  # the columnar path agrees
        if isinstance(verdict, str):
            assert [e.reason for _, e in dead] == [verdict, verdict] and len(batch) == 0
        else:
            assert ok.tolist() == [0, 1] and batch.observation(0).values == verdict[2]

    check()


@pytest.mark.parametrize(
    ("key", "raw", "reason"),
    [
        (b"h-a", b"[" * 30000 + b"]" * 30000, "not_json"),
        (b"h-a", b'{"entity": "h-a", "timestamp": 1, "values": {"temperature": ' + b"9" * 5000 + b"}}", "not_json"),
        (
            b"h-a",
            json.dumps({"entity": "h-a", "timestamp": 1, "values": dict.fromkeys(FEATURES, 10**400)}).encode(),
            "non_finite",
        ),
        (None, b'{"entity": "h-\\ud800", "timestamp": 1, "values": {}}', "schema"),
        (b"\xed\xa0\x80", b'{"timestamp": 1, "values": {}}', "schema"),
        (None, json.dumps({"entity": "h-a", "timestamp": -1, "values": {}}).encode(), "timestamp"),
        (None, json.dumps({"entity": "h-a", "timestamp": 253402300800000, "values": {}}).encode(), "timestamp"),
        (
            None,
            json.dumps({"entity": "h-a", "timestamp": "9999-12-31T23:59:59-01:00", "values": {}}).encode(),
            "timestamp",
        ),
        (None, json.dumps({"entity": "h-a", "timestamp": float("nan"), "values": {}}).encode(), "timestamp"),
        (b"h-a", None, "schema"),
        (b"h-a", b"", "not_json"),
        (
            None,
            json.dumps({"entity": "h-" + "x" * 300, "timestamp": 1, "values": dict.fromkeys(FEATURES, 1)}).encode(),
            "schema",
        ),
        (
            b"h-" + b"x" * 300,
            json.dumps({"timestamp": 1, "values": dict.fromkeys(FEATURES, 1)}).encode(),
            "schema",
        ),
    ],
    ids=[
        "deep",
        "digits",
        "beyond-float",
        "surrogate-entity",
        "surrogate-key",
        "negative",
        "year-10000",
        "offset-past-9999",
        "nan",
        "tombstone",
        "empty",
        "long-entity",
        "long-key",
    ],
)
def test_hand_picked_hostile_messages_get_their_reason(key, raw, reason):
    with pytest.raises(BadMessage) as caught:
        DECODE(raw, key)
    assert caught.value.reason == reason
    ok, _, dead = DECODE.decode_many([raw], [key])
    assert len(ok) == 0 and [e.reason for _, e in dead] == [reason]


def test_duplicate_keys_take_the_last_in_both_paths():
    features = ", ".join(f'"{f}": 1' for f in FEATURES)
    values = f'{{{features}, "{FEATURES[0]}": 3}}'
    raw = f'{{"entity": "h-a", "entity": "h-b", "timestamp": {NOW}, "values": {values}}}'.encode()
    fast, careful = DECODE(raw, None), DECODE.decode_many([raw, b"{"], [None, None])[1].observation(0)
    assert fast.entity == careful.entity == "h-b" and fast.values[0] == careful.values[0] == 3.0


@pytest.fixture(scope="module")
def guard(model_dir) -> BatchGuard:
    return BatchGuard(
        MessageDecoder(FEATURES, MessageFields()), Detector(load_model(model_dir)), max_future_skew_s=86400
    )


def _valid(entity: str, timestamp: float) -> bytes:
    return json.dumps({"entity": entity, "timestamp": timestamp, "values": dict.fromkeys(FEATURES, 0.1)}).encode()


def test_the_guarded_batch_accounts_for_every_hostile_message(guard):
    @settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(records=st.lists(hostile_records, min_size=1, max_size=12))
    def check(records):
        raws = [_valid(f"pump-{i}", NOW + i) for i in range(5)] + [raw for _, raw in records]
        keys = [None] * 5 + [key for key, _ in records]
        result = guard.score(raws, keys, np.zeros(len(raws), dtype=np.int32), drop_stale=True)
        refused = [r.position for r in result.refused]
        assert sorted(refused + result.accepted.tolist()) == list(range(len(raws))), (
            "every message scored or refused, once"
        )
        assert set(range(5)) <= set(result.accepted.tolist()), "the valid messages are scored"
        assert np.isfinite(result.outcomes.score).all() and np.isfinite(result.outcomes.probability).all()
        assert all(r.error.reason in DEAD_LETTER_REASONS for r in result.refused)

    check()


def test_a_timestamp_beyond_the_skew_is_refused_an_old_one_is_scored(guard):
    raws = [_valid("h-future", FUTURE), _valid("h-old", 0), _valid("h-old", 946684800), _valid("h-2000", 946684800)]
    result = guard.score(raws, [None] * 4, np.zeros(4, dtype=np.int32), drop_stale=True)
    assert [(r.position, r.error.reason, r.stage) for r in result.refused] == [(0, "future_timestamp", "validate")]
    assert result.accepted.tolist() == [1, 2, 3] and not result.outcomes.stale.any(), (
        "1970 and 2000 are scored, and do not block later messages"
    )


def test_values_beyond_float32_are_refused_before_they_reach_a_state(guard):
    store = guard.detector.store
    raws = [
        json.dumps({"entity": "h-big", "timestamp": NOW, "values": dict.fromkeys(FEATURES, 1e300)}).encode(),
        _valid("h-big", NOW + 1),
    ]
    result = guard.score(raws, [None, None], np.zeros(2, dtype=np.int32))
    assert [(r.position, r.error.reason) for r in result.refused] == [(0, "non_finite")]
    assert np.isfinite(store.rnn[store.slot_of("h-big")].numpy()).all()


class _Poisoned(Detector):
    """A detector with a bug: it steps a batch holding ``h-poison`` (its states change) and then raises."""

    def process_columns(self, batch, *args, **kwargs):
        outcomes = super().process_columns(batch, *args, **kwargs)
        if "h-poison" in getattr(batch, "entities", ()):
            raise RuntimeError("a bug in the batched step")
        return outcomes


def test_a_failed_batched_step_is_redone_message_by_message_without_double_steps(model_dir):
    detector = _Poisoned(load_model(model_dir))
    detector.process([Observation("pump-1", NOW, [0.1] * len(FEATURES))])  # pump-1 has one step before the batch
    guard = BatchGuard(MessageDecoder(FEATURES, MessageFields()), detector, max_future_skew_s=86400)
    raws = [
        _valid("pump-1", NOW + 1),
        _valid("h-poison", NOW + 1),
        _valid("pump-2", NOW + 1),
        _valid("pump-2", NOW + 2),
    ]
    result = guard.score(raws, [None] * 4, np.zeros(4, dtype=np.int32))
    assert result.fell_back and result.accepted.tolist() == [0, 2, 3]
    assert [(r.position, r.error.reason, r.error.error_type, r.stage) for r in result.refused] == [
        (1, "internal_error", "RuntimeError", "score")
    ]
    steps = detector.store.hysteresis.steps
    assert detector.store.slot_of("h-poison") is None, "the failing message's step was undone"
    assert steps[detector.store.slot_of("pump-2")] == 2, (
        "each message stepped once (the failed batch's steps were dropped)"
    )
    assert steps[detector.store.slot_of("pump-1")] == 1, "a batch entity restarts fresh: its earlier state was suspect"


def test_valid_batches_score_as_the_unguarded_detector_does(model_dir):
    """The guard changes nothing for valid input: same positions, same scores and decisions."""
    model = load_model(model_dir)
    plain, guarded = Detector(model), Detector(model)
    guard = BatchGuard(MessageDecoder(FEATURES, MessageFields()), guarded, max_future_skew_s=86400)
    raws = [_valid(f"pump-{i % 7}", NOW + i) for i in range(60)]
    for start in range(0, 60, 20):
        chunk = raws[start : start + 20]
        accepted, batch, _ = DECODE.decode_many(chunk, [None] * 20)
        expected = plain.process_columns(batch, owner=0, drop_stale=True)
        result = guard.score(chunk, [None] * 20, np.zeros(20, dtype=np.int32), drop_stale=True)
        assert (
            result.accepted.tolist() == accepted.tolist() == list(range(20))
            and not result.refused
            and not result.fell_back
        )
        assert result.outcomes.score.tolist() == expected.score.tolist() and result.outcomes.events == expected.events
