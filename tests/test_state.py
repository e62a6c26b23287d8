"""The per-entity state store: fresh slots, checkpoint round trips and refused checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support import checkpoint_without

from detector.stage_state import LAYOUT
from detector.state import CheckpointError, EntityStore

SCORED = [spec for spec in LAYOUT if spec.stage != "bookkeeping"]

BASELINE = (-0.5, 0.25)


def _store(state_size: int = 3, seasonal_bins: int = 4, n_features: int = 2, max_entities: int = 10) -> EntityStore:
    start_range = (np.full(n_features, -1.0, np.float32), np.full(n_features, 2.0, np.float32))
    return EntityStore(
        state_size,
        BASELINE,
        max_entities=max_entities,
        n_features=n_features,
        seasonal_bins=seasonal_bins,
        start_range=start_range,
    )


def _busy_store() -> EntityStore:
    """Two entities of owner 0 whose every field holds something a fresh entity would not."""
    store = _store()
    slots = store.slots_for(["a", "b"], owner=0, now=0.0)
    store.rnn[torch.from_numpy(slots)] = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    for spec in SCORED:
        array = store.array(spec)
        array[slots] = np.arange(1, 3).reshape(-1, *([1] * (array.ndim - 1))).astype(array.dtype)
    return store


def test_a_reused_slot_starts_as_a_new_entity():
    store = _busy_store()
    store.max_entities = 2
    slot = int(store.slots_for(["c"], owner=0, now=1.0)[0])  # evicts "a" and takes its slot
    assert store.baseline.mean[slot] == BASELINE[0] and store.baseline.var[slot] == BASELINE[1]
    assert (store.seasonal.usual[slot] == np.float32(BASELINE[0])).all() and (store.error.smoothed[slot] == 0).all()
    assert store.hysteresis.last_ts[slot] == -np.inf and store.hysteresis.steps[slot] == 0
    assert not store.hysteresis.alert_open[slot]
    assert store.range.low[slot].tolist() == [-1.0, -1.0] and store.range.high[slot].tolist() == [2.0, 2.0], (
        "the fit data's range"
    )


def test_a_checkpoint_restores_every_field_exactly():
    source = _busy_store()
    target = _store()
    assert target.restore(source.export(owner=0, tag="v1"), owner=5, now=0.0, tag="v1") == 2
    for entity in ("a", "b"):
        s, t = source.slot_of(entity), target.slot_of(entity)
        assert torch.equal(source.rnn[s], target.rnn[t])
        for spec in SCORED:
            assert np.array_equal(source.array(spec)[s], target.array(spec)[t]), spec.checkpoint_name
        assert target.bookkeeping.owner[t] == 5


def test_a_checkpoint_from_before_the_time_of_day_memory_and_the_range_restores_them_fresh_or_unknown():
    target = _store()
    target.restore(
        checkpoint_without(_busy_store().export(owner=0), "seasonal", "evidence", "range_low", "range_high"),
        owner=0,
        now=0.0,
    )
    slot = target.slot_of("b")
    assert (target.seasonal.usual[slot] == np.float32(BASELINE[0])).all()
    assert np.isnan(target.range.low[slot]).all() and np.isnan(target.range.high[slot]).all(), (
        "unknown: the scorer completes it"
    )
    assert target.hysteresis.evidence[slot] == 1 << 20
    assert target.hysteresis.steps[slot] == 2, "the fields it has are restored"


@pytest.mark.parametrize(
    ("blob", "store", "tag", "message"),
    [
        (b"not a checkpoint", _store(), "", "corrupt checkpoint"),
        (_busy_store().export(owner=0, tag="model-1"), _store(), "model-2", "is for 'model-1'"),
        (_busy_store().export(owner=0), _store(state_size=4), "", "state size 4"),
        (_busy_store().export(owner=0), _store(seasonal_bins=24), "", "field seasonal has shape"),
        (_busy_store().export(owner=0), _store(n_features=3), "", "field error_ewma has shape"),
        (checkpoint_without(_busy_store().export(owner=0), "peak"), _store(), "", "field peak is missing"),
    ],
    ids=["garbage", "other-tag", "state-size", "seasonal-bins", "features", "missing-field"],
)
def test_a_checkpoint_that_does_not_fit_is_refused_and_changes_nothing(blob, store, tag, message):
    with pytest.raises(CheckpointError, match=message):
        store.restore(blob, owner=0, now=0.0, tag=tag)
    assert len(store) == 0
