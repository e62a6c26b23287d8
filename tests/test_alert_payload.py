"""Outputs that explain themselves: a lasting fault stays alerted, alerts carry values and ids,
checkpoints keep the alert's opening, the range score ranks faults, one timestamp format."""

from __future__ import annotations

import numpy as np
import pytest
from support import checkpoint_without

from detector.alerts import Source, alert_id, alert_record, score_record
from detector.demo import generate_stream
from detector.schema import Observation
from detector.scoring import Decision, Detector
from detector.testing import decide, tiny_model

SOURCE = Source("sensors", 0, 1)
RANGE = ([-1.0, -1.0], [1.0, 1.0])  # the fit data's range of the tiny model's two features: 20 is far beyond it


def _feed(detector: Detector, log_scores: list[float], every_s: float = 60.0) -> list[tuple[bool, str | None]]:
    """(is_anomaly, event) of one entity fed these log scores (the tiny model's calibration: 0 is
    normal, the fit-time alert level is 3.09), one message every ``every_s`` seconds."""
    slot = int(detector.store.slots_for(["pump"], np.zeros(1, dtype=np.int32), 0.0)[0])
    return [decide(detector, slot, float(np.exp(x)), i * every_s, every_s)[1:] for i, x in enumerate(log_scores)]


def test_a_lasting_fault_stays_alerted_while_it_lasts():
    """80 messages at seven times the alert level, one a minute: the alert stays open until the
    fault is over (the entity's baseline used to learn the fault and close it 57 messages in). Its
    messages are marked until the baseline has absorbed the fault and the closing rule counts them
    calm."""
    rng = np.random.default_rng(0)
    fault = range(200, 280)
    log_scores = [5.0 + 0.3 * rng.standard_normal() if i in fault else rng.standard_normal() for i in range(600)]
    run = _feed(Detector(tiny_model(warmup_steps=0, close_after=10)), log_scores)
    events = [(i, event) for i, (_, event) in enumerate(run) if event]
    assert events[0] == (200, "open") and events[1][1] == "close" and 280 <= events[1][0] <= 300, events
    assert len(events) == 2
    marked = [i for i, (flag, _) in enumerate(run) if flag]
    assert marked[0] == 200 and set(range(209, 250)) <= set(marked), "marked from the onset's hysteresis on"
    assert not set(range(270, 280)) <= set(marked), "not once the baseline has absorbed the fault"
    assert max(marked) < 280, "nothing after the fault"


def test_a_lasting_level_shift_in_generated_pumps_keeps_its_alert_open(model_dir):
    """Three generated pumps; pump-1's vibration runs high for 80 messages (a bearing fault). Its
    alert used to close 72 messages in, while the fault went on at seven times the alert level."""
    from detector.model import load_model

    stream = generate_stream(3, 260, seed=2)
    fault = range(100, 180)
    observations = [
        Observation(
            m.entity,
            m.timestamp,
            [v + (0.5 if f == 2 and m.entity == "pump-1" and i // 3 in fault else 0.0) for f, v in enumerate(m.values)],
        )
        for i, m in enumerate(stream)
    ]
    decisions = [d for d in Detector(load_model(model_dir)).process(observations) if d.entity == "pump-1"]
    events = [(i, d.event) for i, d in enumerate(decisions) if d.event]
    assert events and events[0][1] == "open" and fault.start <= events[0][0] < fault.start + 3, events
    assert all(i >= fault.stop for i, event in events if event == "close"), events
    assert sum(d.is_anomaly for d in decisions[fault.start : fault.stop]) >= len(fault) - 10
    opened = decisions[events[0][0]]
    vibration = next(c for c in opened.top_features if c.feature == "vibration")
    assert vibration.value > vibration.expected + 0.3, "the alert shows what was measured against what was expected"


def test_open_and_close_share_an_id_and_the_close_gives_the_duration():
    detector = Detector(tiny_model(warmup_steps=0, close_after=3, feature_range=RANGE))
    observations = [Observation("p", 60.0 * i, [20.0 if 30 <= i < 35 else 0.0, 0.0]) for i in range(60)]
    decisions = [d for d in detector.process(observations) if d.event]
    assert [d.event for d in decisions] == ["open", "close"]
    opened, closed = (alert_record(d, 0.9, "v", SOURCE) for d in decisions)
    assert opened["alert_id"] == closed["alert_id"] == alert_id("p", 30 * 60.0)
    assert opened["opened_at"] == closed["opened_at"] == "1970-01-01T00:30:00Z" and opened["duration_s"] == 0.0
    assert closed["duration_s"] == decisions[1].timestamp - 30 * 60.0 > 0
    top = opened["top_features"][0]
    assert top["feature"] == "a" and top["value"] == 20.0 and abs(top["expected"]) < 5.0


def _open_then_checkpoint(without: str | None = None) -> tuple[Detector, bytes]:
    detector = Detector(tiny_model(warmup_steps=0, close_after=10, feature_range=RANGE))
    detector.process([Observation("p", 60.0 * i, [20.0 if i == 30 else 0.0, 0.0]) for i in range(31)])
    blob = detector.store.export(0)
    return detector, checkpoint_without(blob, without) if without else blob


def _close(detector: Detector) -> Decision:
    return next(d for d in detector.process([Observation("p", 60.0 * i, [0.0, 0.0]) for i in range(31, 60)]) if d.event)


@pytest.mark.parametrize("old", [False, True])
def test_the_opening_time_survives_a_checkpoint_and_old_checkpoints_restore(old: bool):
    _, blob = _open_then_checkpoint("opened_ts" if old else None)
    restored = Detector(tiny_model(warmup_steps=0, close_after=10, feature_range=RANGE))
    assert restored.store.restore(blob, owner=0, now=0.0) == 1
    closed = _close(restored)
    record = alert_record(closed, 0.9, "v", SOURCE)
    assert closed.event == "close"
    if old:  # written before the opening time was kept: no id to share, no duration
        assert record["alert_id"] is None and record["opened_at"] is None and record["duration_s"] is None
    else:
        assert record["alert_id"] == alert_id("p", 30 * 60.0) and record["duration_s"] == closed.timestamp - 30 * 60.0


def test_the_score_beyond_the_range_grows_with_the_distance():
    """Far beyond the range a score used to sit at one capped value for every fault."""
    scores = {}
    for excess in (2.0, 4.0, 8.0, 16.0):
        detector = Detector(tiny_model(warmup_steps=0, feature_range=RANGE))
        decisions = detector.process(
            [Observation("p", 60.0 * i, [0.0, 0.0]) for i in range(20)]
            + [Observation("p", 1200.0, [1.0 + 2.0 * excess, 0.0])]
        )
        scores[excess] = decisions[-1].score
        assert decisions[-1].event == "open"
    assert scores[2.0] < scores[4.0] < scores[8.0] < scores[16.0]
    assert scores[16.0] / scores[8.0] == pytest.approx(2.0, rel=0.05), "twice as far out, twice the score"


def test_every_topic_writes_timestamps_in_iso_8601():
    decision = Decision("p", 1795568400.5, 1.0, 0.5, False)
    assert score_record(decision, SOURCE)["timestamp"] == "2026-11-25T01:00:00.500000Z"
    assert (
        alert_record(Decision("p", 1795568400.5, 1.0, 0.5, True, "open", opened_at=1795568400.5), 0.9, "v", SOURCE)[
            "timestamp"
        ]
        == "2026-11-25T01:00:00.500000Z"
    )
