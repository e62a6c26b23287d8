"""The file path (each entity's rows through the network at once) scores as the stream path
(one wave of distinct entities at a time) does: one implementation of the stages, one network."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.schema import Columns
from detector.scoring import Detector, Outcomes
from detector.sequence import reconstruct_sequences
from detector.testing import tiny_model

MODELS = {
    "plain": tiny_model(warmup_steps=2),
    "level-tracking, daily context, range, time of day": tiny_model(
        feature_range=([-1.0, -1.0], [1.0, 1.0]),
        periods=(86400.0,),
        level_halflife_s=600.0,
        warmup_steps=2,
        seasonal_bins=24,
    ),
}


@st.composite
def streams(draw: st.DrawFn) -> Columns:
    """Rows of a few entities: irregular gaps (some repeated or going back in time), noise,
    spikes and lasting level shifts."""
    rows = draw(st.integers(2, 80))
    entities = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    names = [f"e{i}" for i in range(entities)]
    who = rng.integers(0, entities, rows)
    gaps = rng.choice([0.0, 1.0, 60.0, 3600.0, -30.0], size=rows, p=[0.05, 0.3, 0.5, 0.1, 0.05])
    timestamps = 1_700_000_000.0 + np.cumsum(gaps)
    values = rng.normal(0.0, 0.3, (rows, 2))
    values += np.where(rng.random((rows, 1)) < 0.05, 6.0, 0.0)  # spikes
    values += np.where(np.arange(rows)[:, None] > draw(st.integers(0, rows)), draw(st.floats(-3, 3)), 0.0)  # a shift
    return Columns([names[i] for i in who], timestamps, values)


def _as_stream(detector: Detector, columns: Columns) -> Outcomes:
    """Feed ``columns`` as the service does when each poll brings at most one message per entity."""
    parts: list[Outcomes] = []
    start = 0
    while start < len(columns):
        end, seen = start, set()
        while end < len(columns) and columns.entities[end] not in seen:
            seen.add(columns.entities[end])
            end += 1
        part = Columns(columns.entities[start:end], columns.timestamps[start:end], columns.values[start:end])
        parts.append(detector.process_columns(part, drop_stale=True, now=0.0))
        start = end
    return _joined(columns, parts)


def _joined(columns: Columns, parts: list[Outcomes]) -> Outcomes:
    events = [event for part in parts for event in part.events]
    stale = np.concatenate([part.stale for part in parts])
    return Outcomes(
        columns,
        np.concatenate([part.score for part in parts]),
        np.concatenate([part.probability for part in parts]),
        np.concatenate([part.is_anomaly for part in parts]),
        events,
        {},
        stale,
        {},
    )


@pytest.mark.parametrize("model", MODELS.values(), ids=MODELS.keys())
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(columns=streams())
def test_the_file_path_scores_as_the_stream_path(model, columns):
    stream = _as_stream(Detector(model), columns)
    whole = Detector(model)
    file = whole.process_columns(columns, drop_stale=True, now=0.0)
    np.testing.assert_array_equal(file.stale, stream.stale)
    np.testing.assert_allclose(file.score, stream.score, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(file.probability, stream.probability, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(file.is_anomaly, stream.is_anomaly)
    assert file.events == stream.events


def test_a_file_takes_the_sequence_path_and_a_wave_the_step_path(monkeypatch):
    """The equality above compares two different paths (else it could not fail)."""
    calls: list[str] = []
    import detector.scoring as scoring

    original = scoring.reconstruct_sequences
    monkeypatch.setattr(scoring, "reconstruct_sequences", lambda *a, **k: calls.append("sequence") or original(*a, **k))
    detector = Detector(MODELS["plain"])
    detector.process_columns(Columns(["a", "b"], np.array([1.0, 1.0]), np.zeros((2, 2))))
    assert calls == []
    detector.process_columns(Columns(["a", "b"] * 3, np.repeat([2.0, 3.0, 4.0], 2), np.zeros((6, 2))))
    assert calls == ["sequence"]


def test_long_sequences_run_in_windows_that_carry_the_state():
    """A file longer than one window continues each entity's state across windows."""
    model = MODELS["level-tracking, daily context, range, time of day"]
    rng = np.random.default_rng(1)
    rows, entities = 50, 3
    groups = np.repeat(np.arange(entities), rows)
    standardised = rng.normal(0.0, 1.0, (rows * entities, 2)).astype(np.float32)
    timestamps = 1.7e9 + np.tile(np.arange(rows) * 60.0, entities)
    elapsed = np.where(np.tile(np.arange(rows), entities) == 0, 0.0, 60.0)
    states = model.network.initial_state(entities)
    whole = reconstruct_sequences(model.network, states, standardised, groups, timestamps, elapsed)
    windowed = reconstruct_sequences(model.network, states, standardised, groups, timestamps, elapsed, window=7)
    np.testing.assert_allclose(windowed[0].numpy(), whole[0].numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(windowed[1].numpy(), whole[1].numpy(), rtol=0, atol=1e-5)
    assert not np.allclose(whole[1].numpy(), states.numpy()), "the states moved on"
