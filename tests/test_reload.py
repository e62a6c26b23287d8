"""The reload machinery on its own: settings file and model directory on disk, no broker."""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from structlog.testing import capture_logs
from support import write_config

from detector.metrics import Metrics
from detector.model import save_model
from detector.reload import Loaded, Reloader, carry_states, load
from detector.schema import Observation
from detector.scoring import Detector
from detector.testing import tiny_model


def _reloads(metrics: Metrics, outcome: str) -> float:
    return metrics.registry.get_sample_value("detector_reloads_total", {"outcome": outcome}) or 0.0


class Fixture:
    """A model directory, a settings file naming it, and a Reloader whose swaps are recorded."""

    def __init__(self, root: Path):
        self.model_dir = save_model(tiny_model(), root / "model")
        self.config = root / "c.toml"
        self.write()
        self.current = load(self.config)
        self.metrics = Metrics(process_metrics=False)
        self.swapped: list[Detector] = []
        self.reloader = Reloader(self.config, self.current, self.swapped.append, self.metrics)

    def write(self, scoring: dict | None = None, **sections: dict) -> None:
        write_config(self.config, model={"path": str(self.model_dir)}, scoring=scoring or {}, **sections)

    def reload(self) -> tuple[str, list[dict]]:
        with capture_logs() as events:
            outcome = self.reloader.reload()
        return outcome, events


@pytest.fixture
def setup(tmp_path: Path) -> Fixture:
    return Fixture(tmp_path)


def test_new_run_time_values_are_applied_to_the_same_model(setup: Fixture):
    before = Detector(setup.current.scoring_model()).threshold
    setup.write(scoring={"false_alarm_rate": 1e-5, "close_after": 3})
    outcome, events = setup.reload()
    assert outcome == "applied" and len(setup.swapped) == 1
    detector = setup.swapped[0]
    assert detector.model.version == "tiny" and detector.threshold > before
    assert detector.settings.false_alarm_rate == 1e-5 and detector.settings.close_after == 3
    [applied] = [e for e in events if e["event"] == "reload.applied"]
    assert applied["changed"] == {
        "scoring.false_alarm_rate": {"value": 1e-5, "from": "file"},
        "scoring.close_after": {"value": 3, "from": "file"},
    }
    assert applied["alert_probability"] == round(detector.threshold, 4)
    assert applied["entity_states"] == "carried over"
    assert _reloads(setup.metrics, "applied") == 1


def test_a_reload_that_finds_nothing_new_swaps_nothing(setup: Fixture):
    assert setup.reload()[0] == "unchanged" and not setup.swapped
    setup.write(scoring={"false_alarm_rate": 1e-5})
    assert setup.reload()[0] == "applied"
    assert setup.reload()[0] == "unchanged", "compared with what was applied last"
    assert len(setup.swapped) == 1 and _reloads(setup.metrics, "unchanged") == 2


def test_a_new_model_in_the_directory_is_loaded(setup: Fixture):
    save_model(replace(tiny_model(seed=1), version="tiny-2"), setup.model_dir)
    outcome, events = setup.reload()
    assert outcome == "applied" and setup.swapped[0].model.version == "tiny-2"
    [applied] = [e for e in events if e["event"] == "reload.applied"]
    assert applied["previous_model_version"] == "tiny" and applied["entity_states"] == "rolled out entity by entity"


def _refused(setup: Fixture) -> dict:
    outcome, events = setup.reload()
    assert outcome == "refused" and not setup.swapped and _reloads(setup.metrics, "refused") == 1
    [refused] = [e for e in events if e["event"] == "reload.refused"]
    assert refused["log_level"] == "error" and refused["model_version"] == "tiny"
    return refused


def test_a_corrupt_model_is_refused(setup: Fixture):
    (setup.model_dir / "model.json").write_text("{not json")
    assert "model.json is not valid JSON" in _refused(setup)["reason"]


def test_a_model_whose_scores_are_not_finite_is_refused(setup: Fixture):
    broken = replace(tiny_model(), version="tiny-nan")
    with torch.no_grad():
        next(broken.network.parameters()).fill_(float("nan"))
    save_model(broken, setup.model_dir)
    assert "scores a normal message nan" in _refused(setup)["reason"]


def test_a_missing_model_directory_is_refused(setup: Fixture, tmp_path: Path):
    write_config(setup.config, model={"path": str(tmp_path / "nowhere")})
    assert "no model in" in _refused(setup)["reason"]


def test_invalid_settings_are_refused(setup: Fixture):
    setup.write(scoring={"false_alarm_rate": 2.0})
    assert "scoring.false_alarm_rate" in _refused(setup)["reason"]


def test_a_fit_time_setting_that_differs_from_the_model_s_is_refused(setup: Fixture):
    setup.write(scoring={"seasonal_bins": 12, "false_alarm_rate": 1e-5})
    refused = _refused(setup)
    assert "scoring.seasonal_bins=12" in refused["reason"] and "detector fit" in refused["help"]


def test_start_up_settings_are_not_applied_but_named(setup: Fixture):
    setup.write(kafka={"group_id": "elsewhere"}, stream={"batch_max_ms": 50})
    outcome, events = setup.reload()
    assert outcome == "unchanged" and not setup.swapped
    [warning] = [e for e in events if e["event"] == "reload.restart_needed"]
    assert warning["settings"] == ["kafka.group_id", "stream.batch_max_ms"] and warning["log_level"] == "warning"


def test_sighup_reloads_on_the_reloader_s_thread(setup: Fixture):
    swapped = threading.Event()
    reloader = Reloader(setup.config, setup.current, lambda _: swapped.set(), setup.metrics).start()
    previous = signal.signal(signal.SIGHUP, reloader.request)
    try:
        setup.write(scoring={"top_features": 1})
        os.kill(os.getpid(), signal.SIGHUP)
        assert swapped.wait(timeout=30), "no detector was handed over"
    finally:
        signal.signal(signal.SIGHUP, previous)
        reloader.close()
    assert _reloads(setup.metrics, "applied") == 1


def test_carried_states_score_the_next_messages_as_the_old_detector_would(setup: Fixture):
    old, new = Detector(setup.current.scoring_model()), Detector(setup.current.scoring_model())
    for t in range(30):
        old.process([Observation("p1", t, [0.1 * t, 0.2]), Observation("p2", t, [0.3, 0.1 * t])], owner=[1, 2])
    assert carry_states(old, new, [1, 2]) == 2
    upcoming = [Observation("p1", 30.0, [5.0, 0.2]), Observation("p2", 30.0, [0.3, 3.0])]
    assert new.process(upcoming, owner=[1, 2]) == old.process(upcoming, owner=[1, 2])


def test_load_resolves_the_run_time_values_against_the_model(setup: Fixture, monkeypatch: pytest.MonkeyPatch):
    setup.write(scoring={"close_after": 2, "top_features": 2})
    monkeypatch.setenv("DETECTOR_SCORING__TOP_FEATURES", "1")
    loaded = load(setup.config)
    assert isinstance(loaded, Loaded) and loaded.model.scoring["close_after"] == 10, "the model as recorded"
    assert loaded.scoring.settings.close_after == 2 and loaded.scoring.sources["close_after"] == "file"
    assert loaded.scoring.settings.top_features == 1 and loaded.scoring.sources["top_features"] == "environment"
    assert loaded.scoring.sources["false_alarm_rate"] == "model"
    assert loaded.scoring_model().scoring["close_after"] == 2


def test_a_watched_settings_file_or_model_directory_reloads_without_a_signal(setup: Fixture):
    setup.write(scoring={}, stream={"reload_watch_s": 0.1})
    current = load(setup.config)
    swapped: list[Detector] = []
    arrived = threading.Semaphore(0)

    def replace_detector(detector: Detector) -> None:
        swapped.append(detector)
        arrived.release()

    reloader = Reloader(setup.config, current, replace_detector, setup.metrics).start()
    try:
        setup.write(scoring={"close_after": 4}, stream={"reload_watch_s": 0.1})
        assert arrived.acquire(timeout=30), "the changed settings file was not seen"
        assert swapped[-1].settings.close_after == 4 and swapped[-1].model.version == "tiny"
        save_model(replace(tiny_model(seed=1), version="tiny-2"), setup.model_dir)
        assert arrived.acquire(timeout=30), "the new model was not seen"
        assert swapped[-1].model.version == "tiny-2"
    finally:
        reloader.close()
    assert not arrived.acquire(timeout=0.5), "nothing else changed: nothing else swapped"
