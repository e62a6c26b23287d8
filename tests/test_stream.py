"""`detector run` against a real broker: scoring, alerts, dead letters, restarts, takeovers."""

from __future__ import annotations

import json
import time

import pytest
from service_harness import (
    ServiceProcess,
    TopicReader,
    dead_letter_view,
    make_topics,
    offline_decisions,
    offsets_seen,
    produce,
    service_env,
)

from detector.demo import generate_stream
from detector.schema import parse_timestamp
from detector.scoring import Decision

pytestmark = pytest.mark.kafka


def _assert_scores_match(records: list[dict], expected: dict[tuple[str, float], Decision]) -> None:
    assert records
    for r in records:
        decision = expected[(r["entity"], parse_timestamp(r["timestamp"]))]  # ISO 8601 on every topic
        assert r["score"] == pytest.approx(decision.score, abs=1e-5), r
        assert r["probability"] == pytest.approx(decision.probability, abs=1e-5), r
        assert r["is_anomaly"] == int(decision.is_anomaly), r


def test_thousand_entities_alerts_and_false_alarm_rate(kafka_bootstrap, topic_factory, model_dir, tmp_path):
    anomalous = {f"pump-{e}" for e in range(0, 1000, 10)}
    stream = generate_stream(1000, 50, anomalous, anomaly_at=0.7)
    topics = make_topics(topic_factory)
    produce(kafka_bootstrap, topics.input, stream)
    service = ServiceProcess(service_env(kafka_bootstrap, topics, model_dir), tmp_path / "service.log")
    scores = TopicReader(kafka_bootstrap, topics.scores)
    try:
        scores.wait_for(lambda r: len(offsets_seen(r)) >= len(stream), timeout_s=240, alive=service.alive)
        time.sleep(1)
        assert service.terminate() == 0
    finally:
        if service.alive():
            service.kill()
    alerts = TopicReader(kafka_bootstrap, topics.alerts).read(2.0)
    opened = [a for a in alerts if a["state"] == "open"]
    assert anomalous <= {a["entity"] for a in opened}, "every injected anomaly raises an alert"
    for alert in opened[:5]:
        assert {
            "entity",
            "timestamp",
            "score",
            "probability",
            "threshold",
            "model_version",
            "source",
            "top_features",
        } <= set(alert)
    clean_opens = sum(a["entity"] not in anomalous for a in opened)
    clean_messages = sum(m.entity not in anomalous for m in stream)
    rate = float(json.loads((model_dir / "model.json").read_text())["scoring"]["false_alarm_rate"])
    print(f"clean opens {clean_opens} over {clean_messages} messages (calibrated rate {rate})")
    assert clean_opens <= max(3 * rate * clean_messages, 5)
    per_entity = {}
    for a in alerts:
        per_entity.setdefault(a["entity"], []).append(a["state"])
    assert all(states.count("open") <= 2 for states in per_entity.values()), "hysteresis: one anomaly is one alert"


def test_service_scores_equal_offline_score(kafka_bootstrap, topic_factory, model_dir, tmp_path):
    stream = generate_stream(30, 40, {"pump-3"}, seed=5)
    topics = make_topics(topic_factory, partitions=3)
    produce(kafka_bootstrap, topics.input, stream)
    env = service_env(kafka_bootstrap, topics, model_dir, DETECTOR_STREAM__BATCH_MAX_MESSAGES="37")
    service = ServiceProcess(env, tmp_path / "service.log")
    reader = TopicReader(kafka_bootstrap, topics.scores)
    try:
        records = reader.wait_for(lambda r: len(offsets_seen(r)) >= len(stream), timeout_s=120, alive=service.alive)
    finally:
        service.terminate()
    assert len(records) == len(stream), "each message scored exactly once in a clean run"
    _assert_scores_match(records, offline_decisions(model_dir, stream))


def test_kill_9_and_restart_loses_nothing_and_restores_exact_states(
    kafka_bootstrap, topic_factory, model_dir, tmp_path
):
    stream = generate_stream(60, 80, {"pump-1", "pump-7"}, seed=6)
    topics = make_topics(topic_factory)
    # the second half arrives only after the kill: a fast service cannot finish before it
    produce(kafka_bootstrap, topics.input, stream[: len(stream) // 2])
    env = service_env(
        kafka_bootstrap,
        topics,
        model_dir,
        DETECTOR_STREAM__BATCH_MAX_MESSAGES="40",
        DETECTOR_STREAM__CHECKPOINT_INTERVAL_S="0.3",
    )
    reader = TopicReader(kafka_bootstrap, topics.scores)
    first = ServiceProcess(env, tmp_path / "first.log")
    reader.wait_for(lambda r: len(r) >= len(stream) // 3, timeout_s=120, alive=first.alive)
    first.kill()
    killed_at = len(reader.read(1.0))
    produce(kafka_bootstrap, topics.input, stream[len(stream) // 2 :])
    second = ServiceProcess(env, tmp_path / "second.log")
    try:
        records = reader.wait_for(lambda r: len(offsets_seen(r)) >= len(stream), timeout_s=120, alive=second.alive)
    finally:
        second.terminate()
    assert len(offsets_seen(records)) == len(stream), "every message processed"
    restored = [e for e in second.log_events() if e["event"] == "state.restored"]
    assert restored, "the restart restored checkpoints"
    _assert_scores_match(records, offline_decisions(model_dir, stream))
    print(f"kill after {killed_at} scores; {len(records) - len(stream)} duplicates")


def test_second_instance_takes_over_partitions_with_their_states(kafka_bootstrap, topic_factory, model_dir, tmp_path):
    first_half = generate_stream(40, 60, {"pump-2"}, seed=7)
    topics = make_topics(topic_factory)
    env = service_env(kafka_bootstrap, topics, model_dir)
    a, b = ServiceProcess(env, tmp_path / "a.log"), ServiceProcess(env, tmp_path / "b.log")
    reader = TopicReader(kafka_bootstrap, topics.scores)
    try:
        time.sleep(8)  # both join the group
        early = [m for m in first_half if m.timestamp < first_half[0].timestamp + 30 * 60]
        late = [m for m in first_half if m not in early]
        produce(kafka_bootstrap, topics.input, early)
        reader.wait_for(lambda r: len(offsets_seen(r)) >= len(early), timeout_s=120, alive=a.alive)
        b_assigned = [e for e in b.log_events() if e["event"] == "partitions.assigned" and e["partitions"]]
        assert b_assigned, "both instances own partitions"
        assert b.terminate() == 0
        produce(kafka_bootstrap, topics.input, late)
        records = reader.wait_for(lambda r: len(offsets_seen(r)) >= len(first_half), timeout_s=120, alive=a.alive)
    finally:
        for process in (a, b):
            if process.alive():
                process.terminate()
    taken_over = [e for e in a.log_events() if e["event"] == "state.restored"]
    assert taken_over, "the remaining instance restored the stopped one's states"
    _assert_scores_match(records, offline_decisions(model_dir, first_half))


def _malformed(entity: str, timestamp: float) -> list[tuple[bytes | None, bytes | None, str]]:
    good = {
        "temperature": 1,
        "pressure": 1,
        "vibration": 1,
        "current": 1,
        "voltage": 1,
        "flow": 1,
        "rpm": 1,
        "humidity": 1,
    }
    body = lambda **kw: json.dumps({"entity": entity, "timestamp": timestamp, "values": good, **kw}).encode()  # noqa: E731
    return [
        (entity.encode(), b"\x00\xff binary", "not_json"),
        (entity.encode(), b'{"entity": "x", ', "not_json"),
        (entity.encode(), b"[1, 2, 3]", "schema"),
        (entity.encode(), None, "schema"),
        (entity.encode(), body(values={"temperature": 1}), "missing_feature"),
        (entity.encode(), body(values={**good, "rpm": "fast"}), "non_numeric"),
        (entity.encode(), body(values={**good, "rpm": None}), "non_numeric"),
        (entity.encode(), body().replace(b'"rpm": 1', b'"rpm": NaN'), "non_finite"),
        (entity.encode(), body().replace(b'"rpm": 1', b'"rpm": Infinity'), "non_finite"),
        (entity.encode(), body(timestamp="not a time"), "timestamp"),
        (entity.encode(), body(timestamp=timestamp - 86400), "stale_timestamp"),
        (entity.encode(), body(padding="x" * 70000), "too_large"),
        (entity.encode(), body(values="hot"), "schema"),
    ]


def test_malformed_messages_go_to_dead_letters_and_valid_ones_are_scored(
    kafka_bootstrap, topic_factory, model_dir, tmp_path
):
    stream = generate_stream(20, 30, (), seed=8)
    topics = make_topics(topic_factory, partitions=2)
    mixed, expected_reasons = [], []
    for i, message in enumerate(stream):
        mixed.append((message.entity.encode(), message.to_json()))
        if i % 40 == 20:
            for key, value, reason in _malformed(message.entity, message.timestamp):
                mixed.append((key, value))
                expected_reasons.append(reason)
    produce(kafka_bootstrap, topics.input, mixed)
    service = ServiceProcess(service_env(kafka_bootstrap, topics, model_dir), tmp_path / "service.log")
    scores, dead = (
        TopicReader(kafka_bootstrap, topics.scores),
        TopicReader(kafka_bootstrap, topics.dead_letters, dead_letter_view),
    )
    try:
        scores.wait_for(lambda r: len(r) >= len(stream), timeout_s=120, alive=service.alive)
        letters = dead.wait_for(lambda r: len(r) >= len(expected_reasons), timeout_s=60, alive=service.alive)
        assert service.alive()
    finally:
        assert service.terminate() == 0
    assert sorted(letter["reason"] for letter in letters) == sorted(expected_reasons)
    assert all(
        letter["source"]["topic"] == topics.input and "offset" in letter["source"] and letter["detail"]
        for letter in letters
    )
    assert len(scores.records) == len(stream)
    _assert_scores_match(scores.records, offline_decisions(model_dir, stream))


def test_replay_after_a_restart_never_moves_committed_offsets_back(kafka_bootstrap, topic_factory, model_dir, tmp_path):
    """A restarted service replays from its checkpoint to the committed offsets (to rebuild
    states) without committing anything lower: a crash during the replay must not have the next
    owner publish again what the first one published."""
    from kafka import KafkaConsumer, TopicPartition

    stream = generate_stream(40, 100, {"pump-3"}, seed=17)
    topics = make_topics(topic_factory)
    produce(kafka_bootstrap, topics.input, stream)
    env = service_env(
        kafka_bootstrap,
        topics,
        model_dir,
        DETECTOR_STREAM__BATCH_MAX_MESSAGES="50",
        DETECTOR_STREAM__CHECKPOINT_INTERVAL_S="3600",
    )
    reader = TopicReader(kafka_bootstrap, topics.scores)
    first = ServiceProcess(env, tmp_path / "first.log")
    reader.wait_for(lambda r: len(offsets_seen(r)) >= len(stream), timeout_s=120, alive=first.alive)
    time.sleep(1)  # the last batch's commit lands
    first.kill()
    watcher = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=topics.group, enable_auto_commit=False)
    partitions = [TopicPartition(topics.input, p) for p in range(4)]
    committed_at_kill = {tp: watcher.committed(tp) for tp in partitions}
    assert all(committed_at_kill.values()), committed_at_kill
    second = ServiceProcess(env, tmp_path / "second.log")
    lowest = dict(committed_at_kill)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and sum(e["event"] == "state.replay_done" for e in second.log_events()) < len(
            partitions
        ):
            for tp in partitions:
                lowest[tp] = min(lowest[tp], watcher.committed(tp) or 0)
            time.sleep(0.05)
        replays = [e for e in second.log_events() if e["event"] == "state.restore"]
    finally:
        watcher.close()
        assert second.terminate() == 0
    assert all(e["replay_until"] for e in replays), "every partition replayed from the start-up checkpoint"
    assert lowest == committed_at_kill
