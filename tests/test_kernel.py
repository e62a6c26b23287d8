"""The compiled loops do what their one-row counterparts do, row after row."""

from __future__ import annotations

import numpy as np

from detector.scoring import Detector
from detector.testing import decide, decide_step, tiny_model


def test_decide_rows_is_decide_row_after_row() -> None:
    model = tiny_model(warmup_steps=0, seasonal_bins=0)
    batched, single = Detector(model), Detector(model)
    names = [f"e{i}" for i in range(5)]
    slots = batched.store.slots_for(names, np.zeros(5, dtype=np.int32), 0.0)
    single_slots = single.store.slots_for(names, np.zeros(5, dtype=np.int32), 0.0)
    scores = np.exp(np.random.default_rng(3).normal(0.0, 2.0, (60, 5)))
    scores[40:45, 2] = 1e4  # an alert opens and closes on one entity
    events = []
    for step in scores:
        probability, step_events = decide_step(batched, slots, step)  # kernel.decide_rows
        expected = [decide(single, int(slot), float(score)) for slot, score in zip(single_slots, step, strict=True)]
        assert probability.tolist() == [p for p, _, _ in expected]
        assert step_events == [e for _, _, e in expected]
        events += [e for _, _, e in expected if e]
    assert "open" in events and "close" in events, "the comparison covers an alert's events"
