"""A live `detector run` reloads on SIGHUP against the bundled broker: it keeps its pid, applies a new
alert level from the settings file with every entity's state carried over, refuses a bad model,
and rolls out a new model version with no entity unwatched while the new states warm up."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from service_harness import ServiceProcess, TopicReader, make_topics, offsets_seen, produce, service_env
from support import write_config

from detector.demo import generate_stream
from detector.model import load_model, save_model
from detector.reload import carry_states
from detector.schema import Observation, parse_timestamp
from detector.scoring import Detector

pytestmark = pytest.mark.kafka


class ConfiguredService(ServiceProcess):
    """`detector run --config FILE` (the harness's process runs without a settings file)."""

    def __init__(self, env: dict[str, str], log_path: Path, config: Path):
        self.log_path = log_path
        self.process = subprocess.Popen(
            [sys.executable, "-m", "detector.cli", "run", "--config", str(config)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log_path.open("ab"),
        )

    def wait_for_event(self, name: str, after: int = 0, timeout_s: float = 60) -> tuple[int, dict]:
        """(index, event) of the first ``name`` event past index ``after`` of the log."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            events = self.log_events()
            for index in range(after, len(events)):
                if events[index]["event"] == name:
                    return index, events[index]
            assert self.alive(), "the service process died"
            time.sleep(0.2)
        raise AssertionError(f"no {name} event within {timeout_s} s")


def _metric(url: str, name: str, labels: str = "") -> tuple[float, str]:
    """(value, labels) of the first sample of ``name`` whose labels contain ``labels``."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    for found_labels, value in re.findall(rf"^{name}(\{{[^}}]*\}})? (\S+)$", text, re.M):
        if labels in found_labels:
            return float(value), found_labels
    raise AssertionError(f"{name}{{{labels}}} not served")


def test_sighup_reloads_the_alert_level_refuses_a_bad_model_and_rolls_out_a_new_one(
    kafka_bootstrap, topic_factory, model_dir, tmp_path
):
    # pump-3's fault: rounds 30-37, after the reload; pump-5's: rounds 43-50, in the rollout's handover
    series = _series(90, {"pump-3": 30, "pump-5": 43})
    stream, more = series[: 20 * 40], series[20 * 40 :]
    before, after = stream[: 20 * 20], stream[20 * 20 :]
    topics = make_topics(topic_factory, partitions=2)
    env = service_env(kafka_bootstrap, topics, model_dir, DETECTOR_METRICS__HOST="127.0.0.1")
    del env["DETECTOR_MODEL__PATH"]  # the settings file names the model: a reload may point it elsewhere
    config = write_config(tmp_path / "detector.toml", model={"path": str(model_dir)})
    service = ConfiguredService(env, tmp_path / "service.log", config)
    scores = TopicReader(kafka_bootstrap, topics.scores)
    try:
        _, start = service.wait_for_event("service.start")
        url = service.wait_for_event("metrics.serving")[1]["url"]
        level = start["alert_probability"]
        assert start["run_time_settings"]["scoring.false_alarm_rate"] == {"value": 1e-3, "from": "model"}
        assert _metric(url, "detector_alert_threshold")[0] == pytest.approx(level, abs=1e-4)
        produce(kafka_bootstrap, topics.input, before)
        scores.wait_for(lambda r: len(offsets_seen(r)) >= len(before), timeout_s=120, alive=service.alive)

        write_config(config, model={"path": str(model_dir)}, scoring={"false_alarm_rate": 1e-5})
        pid = service.process.pid
        service.process.send_signal(signal.SIGHUP)
        at, applied = service.wait_for_event("reload.applied")
        assert applied["changed"] == {"scoring.false_alarm_rate": {"value": 1e-5, "from": "file"}}
        assert applied["alert_probability"] > level and applied["entity_states"] == "carried over"
        _wait(
            lambda: _metric(url, "detector_alert_threshold")[0] == pytest.approx(applied["alert_probability"], abs=1e-4)
        )
        assert _metric(url, "detector_reloads_total", 'outcome="applied"')[0] == 1
        produce(kafka_bootstrap, topics.input, after)
        records = scores.wait_for(lambda r: len(offsets_seen(r)) >= len(stream), timeout_s=120, alive=service.alive)

        broken_dir = _broken_copy(model_dir, tmp_path / "broken")
        write_config(config, model={"path": str(broken_dir)}, scoring={"false_alarm_rate": 1e-5})
        service.process.send_signal(signal.SIGHUP)
        _, refused = service.wait_for_event("reload.refused", after=at)
        assert "scores a normal message nan" in refused["reason"] and refused["level"] == "error"
        _wait(lambda: _metric(url, "detector_reloads_total", 'outcome="refused"')[0] == 1)
        version = load_model(model_dir).version
        assert f'version="{version}"' in _metric(url, "detector_model_info")[1], "the old model goes on"

        renamed = load_model(model_dir)  # the same weights under another version: a new model to the service
        save_model(replace(renamed, version=renamed.version + "-next"), tmp_path / "next")
        write_config(config, model={"path": str(tmp_path / "next")}, scoring={"false_alarm_rate": 1e-5})
        service.process.send_signal(signal.SIGHUP)
        _, switched = service.wait_for_event("reload.applied", after=at + 1)
        assert switched["model_version"] == renamed.version + "-next"
        assert switched["entity_states"] == "rolled out entity by entity"
        _wait(lambda: f'version="{renamed.version}-next"' in _metric(url, "detector_model_info")[1])
        _wait(lambda: _metric(url, "detector_entities_on_previous_model")[0] == 20)  # all on the old model
        _, started = service.wait_for_event("rollout.started")
        assert started["previous_model_versions"] == [version] and started["entities_on_previous"] == 20
        produce(kafka_bootstrap, topics.input, more)
        scores.wait_for(lambda r: len(offsets_seen(r)) >= len(stream) + len(more), timeout_s=120, alive=service.alive)
        _wait(lambda: _metric(url, "detector_entities_on_previous_model")[0] == 0)  # every entity switched
        service.wait_for_event("rollout.finished")
        assert service.alive() and service.process.pid == pid
        assert service.terminate() == 0
    finally:
        if service.alive():
            service.kill()
        scores.close()

    expected = {(d.entity, d.timestamp): d.score for d in _offline(model_dir, before, after)}
    checked = [r for r in records if (r["entity"], parse_timestamp(r["timestamp"])) in expected]
    assert len(checked) == len(stream) and len(records) == len(stream) + len(more)
    for record in checked:
        assert record["score"] == pytest.approx(
            expected[(record["entity"], parse_timestamp(record["timestamp"]))], abs=1e-5
        ), "each entity's state went on through the reload, as offline with the states carried over"
    alerts = TopicReader(kafka_bootstrap, topics.alerts).read(2.0)
    opened = [a for a in alerts if a["state"] == "open" and a["entity"] == "pump-3"]
    assert opened and opened[-1]["threshold"] == pytest.approx(applied["alert_probability"], abs=1e-4)
    fault = [m.timestamp for m in more if m.injected]
    in_handover = [
        a
        for a in alerts
        if a["state"] == "open" and a["entity"] == "pump-5" and parse_timestamp(a["timestamp"]) >= fault[0]
    ]
    assert in_handover and parse_timestamp(in_handover[0]["timestamp"]) <= fault[-1], "alerted by the old model"
    assert in_handover[0]["model_version"] == version, "the alert names the model that decided it"
    closed = [a for a in alerts if a["state"] == "close" and a["entity"] == "pump-3"]
    assert closed and parse_timestamp(closed[-1]["timestamp"]) > more[0].timestamp, (
        "the alert open at the swap was closed by the model that opened it"
    )


def _series(rounds: int, faults: dict[str, int]) -> list:
    """20 entities' messages for ``rounds`` rounds; each entity of ``faults`` has its fault from that round."""
    streams = {
        entity: generate_stream(20, rounds, {entity}, anomaly_at=(start + 0.5) / rounds)
        for entity, start in faults.items()
    }
    plain = generate_stream(20, rounds)  # the same series: a fault consumes no random draws
    return [streams[m.entity][i] if m.entity in streams else m for i, m in enumerate(plain)]


def _offline(model_dir: Path, before: list, after: list) -> list:
    """The decisions of ``before`` at the model's alert level, then of ``after`` at 1e-5 with every
    entity's state carried over (the score of a message beyond its range grows with the level)."""
    model = load_model(model_dir)
    first = Detector(model)
    decisions = first.process([Observation(m.entity, m.timestamp, m.values) for m in before])
    second = Detector(replace(model, scoring={**model.scoring, "false_alarm_rate": 1e-5}))
    carry_states(first, second, [0])
    return decisions + second.process([Observation(m.entity, m.timestamp, m.values) for m in after])


def _broken_copy(model_dir: Path, target: Path) -> Path:
    """A copy of the model under another version whose weights are NaN: it loads, but scores nothing."""
    model = load_model(model_dir)
    with torch.no_grad():
        next(model.network.parameters()).fill_(float("nan"))
    return save_model(replace(model, version=model.version + "-broken"), target)


def _wait(condition: Callable[[], bool], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.2)
