"""A model rollout entity by entity, without a broker: who decides each message, when an entity
switches, and the checkpoint sections that carry both states."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from kafka import TopicPartition
from structlog.testing import capture_logs

from detector.checkpoints import _manifest
from detector.partition_states import ModelUnavailable, PartitionStates
from detector.rollout import FORCE_AFTER, MAX_PREVIOUS
from detector.schema import Observation
from detector.scoring import Detector, Outcomes
from detector.state import CheckpointError
from detector.testing import tiny_model

P0 = TopicPartition("sensors", 0)
WARMUP = 5
RANGE = ([0.0, 0.0], [0.3, 0.5])  # the fit data's range: a message far beyond it alerts once warm


def _old() -> Detector:
    return Detector(tiny_model(warmup_steps=WARMUP, feature_range=RANGE))


def _new(version: str = "tiny-2") -> Detector:
    return Detector(replace(tiny_model(seed=1, warmup_steps=WARMUP, feature_range=RANGE), version=version))


def _normal(entity: str, start: int, n: int) -> list[Observation]:
    return [Observation(entity, 1e9 + t, [float(t % 3) * 0.1, float(t % 5) * 0.1]) for t in range(start, start + n)]


def _step(states: PartitionStates, observations: list[Observation]) -> Outcomes:
    """What the service does with a batch: the target steps it, then the rollout decides."""
    owners = np.full(len(observations), states.owner(P0), dtype=np.int32)
    out = states.detector.process_columns(observations, owner=owners, now=0.0)
    states.rollout.decide(states.detector, out, owners, 0.0, drop_stale=False)
    return out


def _warmed(n: int = 30) -> tuple[PartitionStates, Detector]:
    """States whose target (the old model) has seen ``n`` messages of pump-1, and a twin old detector."""
    states, twin = PartitionStates(_old()), _old()
    history = _normal("pump-1", 0, n)
    _step(states, history)
    twin.process(history, owner=1)
    return states, twin


def test_the_old_model_decides_until_the_new_state_is_warm_then_the_new_one_does():
    states, twin = _warmed()
    new = _new()
    with capture_logs() as events:
        assert states.replace(new)
    assert states.detector is new and states.rollout.entities() == 1
    [started] = [e for e in events if e["event"] == "rollout.started"]
    assert started["previous_model_versions"] == ["tiny"] and started["entities_on_previous"] == 1

    reference = _new()  # the new model alone, from a fresh state
    for t in range(30, 30 + WARMUP):  # one message per batch: the new state warms up
        message = _normal("pump-1", t, 1)
        got, old_alone, new_alone = _step(states, message), twin.process(message, owner=1), reference.process(message)
        assert got.score[0] == old_alone[0].score != new_alone[0].score, "the old model decides"
    assert states.rollout.entities() == 0, "the new state has seen warmup_steps messages: switched"
    with capture_logs() as events:
        message = _normal("pump-1", 30 + WARMUP, 1)
        got, new_alone = _step(states, message), reference.process(message)
    assert got.score[0] == new_alone[0].score, "the new model decides, its state stepped all along"
    assert not events, "nothing is left to roll out"


def test_an_anomaly_during_the_handover_is_alerted_by_the_old_model():
    states, twin = _warmed(60)
    states.replace(_new())
    spike = [Observation("pump-1", 1e9 + 60, [40.0, -40.0])]
    got, old_alone = _step(states, spike), twin.process(spike, owner=1)
    assert old_alone[0].event == "open", "the old model, warm, opens an alert"
    assert _new().process(spike)[0].event is None, "the new model, not yet warm, would not"
    assert got.events[0] == "open" and got.is_anomaly[0] and got.top_features[0] == old_alone[0].top_features
    assert got.decided_by == {0: ("tiny", twin.threshold)}, "the alert names the model that decided it"


def test_an_open_alert_of_the_old_model_holds_the_switch_at_most_force_after_warmups():
    states, _ = _warmed(60)
    states.replace(_new())
    held = states.rollout.previous["tiny"]
    _step(states, [Observation("pump-1", 1e9 + 60, [40.0, -40.0])])
    held.store.hysteresis.alert_open[held.store.slot_of("pump-1")] = True  # an alert that will not close
    held.store.hysteresis.calm[:] = 0
    for t in range(61, 60 + FORCE_AFTER * WARMUP - 1):
        _step(states, [Observation("pump-1", 1e9 + t, [40.0, -40.0])])
    assert states.rollout.entities() == 1, "held while the old alert is open"
    for t in range(60 + FORCE_AFTER * WARMUP - 1, 60 + FORCE_AFTER * WARMUP + 1):
        _step(states, [Observation("pump-1", 1e9 + t, [0.1, 0.1])])
    assert states.rollout.entities() == 0, "switched after FORCE_AFTER warm-ups"


def test_an_entity_new_to_every_model_warms_up_on_the_new_one_only():
    states, _ = _warmed()
    states.replace(_new())
    message = _normal("pump-9", 0, 1)
    got, new_alone = _step(states, message), _new().process(message)
    assert got.score[0] == new_alone[0].score
    assert states.rollout.previous["tiny"].store.slot_of("pump-9") is None


def test_a_batch_steps_each_previous_model_once_over_its_entities_only():
    states, _ = _warmed()
    states.replace(_new())
    previous = states.rollout.previous["tiny"]
    calls = []
    original = previous.process_columns
    previous.process_columns = lambda batch, **kw: calls.append(list(batch.entities)) or original(batch, **kw)  # type: ignore[method-assign]  # spy
    _step(states, _normal("pump-1", 30, 1) + _normal("pump-7", 0, 1) + _normal("pump-1", 31, 1))
    assert calls == [["pump-1", "pump-1"]]


def test_a_failing_previous_model_ends_its_entities_rollout_and_never_raises():
    states, _ = _warmed()
    states.replace(_new())
    previous = states.rollout.previous["tiny"]

    def broken(*_: object, **__: object) -> Outcomes:
        raise RuntimeError("boom")

    previous.process_columns = broken  # type: ignore[method-assign]  # a model that fails
    with capture_logs() as events:
        got = _step(states, _normal("pump-1", 30, 1))
    assert np.isfinite(got.score[0]) and states.rollout.entities() == 0
    assert [e["event"] for e in events] == ["rollout.step_failed", "rollout.finished"]


def test_a_rollback_to_a_version_still_held_takes_its_states_back():
    states, twin = _warmed()
    states.replace(_new())
    _step(states, _normal("pump-1", 30, 1))
    twin.process(_normal("pump-1", 30, 1), owner=1)
    states.replace(_old())  # the operator rolls back mid-rollout
    assert not states.rollout.previous, "its warm states decide at once: nothing to roll out"
    message = _normal("pump-1", 31, 1)
    assert _step(states, message).score[0] == twin.process(message, owner=1)[0].score


def test_at_most_max_previous_versions_are_held():
    states, _ = _warmed()
    for i in range(MAX_PREVIOUS + 1):
        states.replace(_new(f"v{i}"))
        _step(states, _normal("pump-1", 30 + i, 1))
    assert len(states.rollout.previous) == MAX_PREVIOUS


# --- checkpoint sections ----------------------------------------------------------------------


def test_a_checkpoint_during_a_rollout_holds_both_states_and_restores_them():
    states, _ = _warmed()
    states.replace(_new())
    _step(states, _normal("pump-1", 30, 2))
    sections = states.export(P0)
    assert list(sections) == ["tiny-2", "tiny"], "the target's section first"

    after = PartitionStates(_new())
    after.models = lambda version: {"tiny": _old()}[version]
    restored = after.restore(P0, sections)
    assert restored.entities == {"tiny-2": 1, "tiny": 1} and not restored.skipped
    assert after.rollout.entities() == 1
    message = _normal("pump-1", 32, 1)
    assert _step(after, message).score[0] == _step(states, message).score[0], "carries on where it stood"


def test_a_section_of_a_model_that_cannot_be_had_is_skipped_with_the_reason():
    states, _ = _warmed()
    states.replace(_new())
    after = PartitionStates(_new())

    def unavailable(version: str) -> Detector:
        raise ModelUnavailable(f"model {version} was never published")

    after.models = unavailable
    restored = after.restore(P0, states.export(P0))
    assert restored.entities == {"tiny-2": 0} and restored.skipped == {"tiny": "model tiny was never published"}
    assert PartitionStates(_new()).restore(P0, {"tiny": states.export(P0)["tiny"]}).skipped, "no model source"


def test_a_checkpoint_with_too_many_versions_or_a_bad_section_restores_nothing():
    states, _ = _warmed()
    blob = states.export(P0)["tiny"]
    after = PartitionStates(_old())
    after.models = lambda version: Detector(replace(tiny_model(warmup_steps=WARMUP), version=version))
    too_many = {f"v{i}": blob for i in range(MAX_PREVIOUS + 2)}
    with pytest.raises(CheckpointError, match="model versions"):
        after.restore(P0, too_many)
    with pytest.raises(CheckpointError):
        after.restore(P0, {"tiny": blob, "v9": b"not torch"})
    assert len(after.detector.store) == 0 and after.rollout.entities() == 0, "none of the partition's states stays"


@pytest.mark.parametrize(
    ("sections", "words"),
    [
        ([["v1", 1], ["v1", 2]], "distinct versions"),
        ([["v2", 1]], "model_version's first"),
        ([["v1", -1]], "not a [version, bytes] pair"),
        ([["v1", True]], "not a [version, bytes] pair"),
        ([["", 1]], "not a [version, bytes] pair"),
        ("v1", "a list of 1 to"),
        ([["v1", 1]] + [[f"x{i}", 1] for i in range(8)], "a list of 1 to"),
    ],
)
def test_a_manifest_with_bad_sections_is_invalid(sections, words):
    manifest = {"id": "c1", "chunks": 1, "next_offset": 0, "model_version": "v1", "written_at": 0.0}
    parsed = _manifest(json.dumps({**manifest, "sections": sections}).encode())
    assert words in parsed["invalid"]


def test_idle_or_revoked_entities_leave_the_rollout_and_an_empty_previous_model_is_dropped():
    states, _ = _warmed()
    states.replace(_new())
    with capture_logs() as events:
        states.drop(P0)
    assert states.rollout.entities() == 0 and not states.rollout.previous
    assert [(e["event"], e["last_entities"]) for e in events] == [("rollout.finished", "revoked")]

    states, _ = _warmed()
    states.replace(_new())
    for detector in (states.detector, states.rollout.previous["tiny"]):
        detector.store.ttl_s = 60.0
    with capture_logs() as events:
        states.rollout.evict_idle(now=1e9 + 3600)
    assert not states.rollout.previous and [e["last_entities"] for e in events] == ["idle"]


def test_a_previous_model_built_for_an_empty_section_is_not_kept():
    states = PartitionStates(_new())
    states.models = lambda version: Detector(replace(tiny_model(warmup_steps=WARMUP), version=version))
    empty = _old().store.export(owner=1, tag="tiny")
    assert states.restore(P0, {"tiny-2": _new().store.export(owner=1, tag="tiny-2"), "tiny": empty}).entities == {
        "tiny-2": 0,
        "tiny": 0,
    }
    assert not states.rollout.previous


def test_an_alert_the_new_model_opened_during_the_handover_holds_the_switch_until_it_closes():
    states, _ = _warmed()
    states.replace(_new())
    for t in range(30, 30 + WARMUP - 1):
        _step(states, _normal("pump-1", t, 1))
    target = states.detector.store
    slot = target.slot_of("pump-1")
    target.hysteresis.alert_open[slot], target.hysteresis.evidence[slot] = True, 100  # opened unseen
    _step(states, _normal("pump-1", 30 + WARMUP, 1))
    assert states.rollout.entities() == 1, "no close is published for an alert nobody saw open"
    target.hysteresis.alert_open[slot] = False
    _step(states, _normal("pump-1", 31 + WARMUP, 1))
    assert states.rollout.entities() == 0
