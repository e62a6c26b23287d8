"""A model rollout across restarts and group members, against the bundled broker: a kill -9 in the
middle of a rollout, and a group whose members run different model versions."""

from __future__ import annotations

import re
import shutil
import signal
import time
import urllib.request
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from service_harness import ServiceProcess, TopicReader, make_topics, offsets_seen, produce, service_env

from detector.demo import generate_stream
from detector.model import load_model, save_model
from detector.rollout import FORCE_AFTER

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
ROUND = 20  # entities: one message each per round


def _event(service: ServiceProcess, name: str, where: Callable[[dict], bool] = lambda e: True, timeout_s=60) -> dict:
    """The first ``name`` event of the service's log for which ``where`` holds."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = [e for e in service.log_events() if e["event"] == name and where(e)]
        if found:
            return found[0]
        assert service.alive(), "the service process died"
        time.sleep(0.2)
    raise AssertionError(f"no {name} event within {timeout_s} s")


def _gauge(url: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    return float(re.search(r"^detector_entities_on_previous_model (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]  # served from the start


def _wait(condition: Callable[[], bool], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.2)


def _next_version(model_dir: Path, target: Path) -> str:
    """Save the model of ``model_dir`` under another version to ``target``: a new model to the service."""
    model = load_model(model_dir)
    save_model(replace(model, version=model.version + "-next"), target)
    return model.version + "-next"


def _checkpointed_to_end(service: ServiceProcess, records: list[dict]) -> bool:
    """Each partition's last checkpoint covers every record scored from it."""
    ends: dict[int, int] = {}
    for record in records:
        partition = record["source"]["partition"]
        ends[partition] = max(ends.get(partition, 0), record["source"]["offset"] + 1)
    last: dict[int, int] = {}
    for event in service.log_events():
        if event["event"] == "state.checkpoint":
            last[event["partition"]] = event["offset"]
    return all(last.get(partition) == end for partition, end in ends.items())


def test_a_rollout_killed_midway_finishes_after_a_restart(kafka_bootstrap, topic_factory, model_dir, tmp_path):
    # 36 rounds after the restart: every entity switches by then, an alert held open or not (FORCE_AFTER)
    series = generate_stream(ROUND, 24 + FORCE_AFTER * 10 - 4)
    first, handover, rest = series[: 20 * ROUND], series[20 * ROUND : 24 * ROUND], series[24 * ROUND :]
    live = shutil.copytree(model_dir, tmp_path / "model")
    old = load_model(live).version
    topics = make_topics(topic_factory, partitions=2)
    env = service_env(
        kafka_bootstrap, topics, live, DETECTOR_METRICS__HOST="127.0.0.1", DETECTOR_STREAM__CHECKPOINT_INTERVAL_S="0.5"
    )
    service = ServiceProcess(env, tmp_path / "first.log")
    restarted: ServiceProcess | None = None
    scores = TopicReader(kafka_bootstrap, topics.scores)
    try:
        url = _event(service, "metrics.serving")["url"]
        produce(kafka_bootstrap, topics.input, first)
        scores.wait_for(lambda r: len(offsets_seen(r)) >= len(first), timeout_s=120, alive=service.alive)
        new = _next_version(live, live)  # the directory now holds the new model only
        service.process.send_signal(signal.SIGHUP)
        _event(service, "rollout.started")
        _wait(lambda: _gauge(url) == ROUND)
        produce(kafka_bootstrap, topics.input, handover)  # 4 of the new states' 10 warm-up messages
        records = scores.wait_for(
            lambda r: len(offsets_seen(r)) >= len(first) + len(handover), timeout_s=120, alive=service.alive
        )
        _wait(lambda: _checkpointed_to_end(service, records))
        service.kill()

        restarted = ServiceProcess(env, tmp_path / "restarted.log")
        url = _event(restarted, "metrics.serving")["url"]
        restored = [_event(restarted, "state.restored", lambda e, p=p: e["partition"] == p) for p in (0, 1)]
        by_version = [e["by_model_version"] for e in restored]
        assert sum(v.get(new, 0) for v in by_version) == ROUND, "the new states, mid-warm-up, were restored"
        assert sum(v.get(old, 0) for v in by_version) == ROUND, "the old states were restored with the old model"
        assert _event(restarted, "model.fetched")["model_version"] == old, "fetched from the checkpoint topic"
        _wait(lambda: _gauge(url) == ROUND)
        produce(kafka_bootstrap, topics.input, rest)
        scores.wait_for(lambda r: len(offsets_seen(r)) >= len(series), timeout_s=120, alive=restarted.alive)
        _wait(lambda: _gauge(url) == 0)
        _event(restarted, "rollout.finished")
        assert not [e for e in restarted.log_events() if e["event"] == "state.restore_fallback"]
        assert restarted.terminate() == 0
    finally:
        for process in (service, restarted):
            if process is not None and process.alive():
                process.kill()
        scores.close()


def test_a_mixed_version_group_restores_the_states_that_move_both_ways(
    kafka_bootstrap, topic_factory, model_dir, tmp_path
):
    series = generate_stream(ROUND, 24)
    first, handover = series[: 20 * ROUND], series[20 * ROUND :]
    old = load_model(model_dir).version
    new = _next_version(model_dir, tmp_path / "next")
    topics = make_topics(topic_factory, partitions=2)
    fast = {"DETECTOR_STREAM__CHECKPOINT_INTERVAL_S": "0.5"}
    on_old = ServiceProcess(service_env(kafka_bootstrap, topics, model_dir, **fast), tmp_path / "old.log")
    on_new: ServiceProcess | None = None
    scores = TopicReader(kafka_bootstrap, topics.scores)
    try:
        produce(kafka_bootstrap, topics.input, first)
        records = scores.wait_for(lambda r: len(offsets_seen(r)) >= len(first), timeout_s=120, alive=on_old.alive)
        partition_of = {r["entity"]: r["source"]["partition"] for r in records}
        on_new = ServiceProcess(service_env(kafka_bootstrap, topics, tmp_path / "next", **fast), tmp_path / "new.log")
        moved = _event(on_new, "state.restored")  # a partition moved from the old-model member
        moved_entities = sum(1 for p in partition_of.values() if p == moved["partition"])
        assert moved["by_model_version"] == {old: moved_entities}, "restored with the old model, fetched"
        produce(kafka_bootstrap, topics.input, handover)
        scores.wait_for(lambda r: len(offsets_seen(r)) >= len(series), timeout_s=120, alive=on_new.alive)
        assert on_new.terminate() == 0  # its partition moves back, checkpointed with both states
        back = _event(
            on_old,
            "state.restored",
            lambda e: e["partition"] == moved["partition"] and len(e["by_model_version"]) == 2,
        )
        assert back["by_model_version"] == {old: moved_entities, new: moved_entities}, "not fresh"
        for process in (on_old, on_new):
            assert not [e for e in process.log_events() if e["event"] == "state.restore_fallback"]
        assert on_old.terminate() == 0
    finally:
        for process in (on_old, on_new):
            if process is not None and process.alive():
                process.kill()
        scores.close()
