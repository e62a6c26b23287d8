"""Fault injection against the bundled broker: kills, broker outage, rebalance storm, bad input,
corrupted model and checkpoints. Every message is accounted for. Run with `make faults`."""

from __future__ import annotations

import json
import random
import signal
import threading
import time
import urllib.request
from datetime import UTC

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from kafka import KafkaProducer
from service_harness import (
    ServiceProcess,
    TopicReader,
    dead_letter_view,
    http_status,
    make_topics,
    offline_decisions,
    offsets_seen,
    produce,
    run_until_exit,
    service_env,
)

from detector.broker import free_port, start_broker
from detector.demo import FEATURES, generate_stream
from detector.model import load_model
from detector.schema import BadMessage, MessageDecoder, MessageFields, parse_message, parse_timestamp

pytestmark = [pytest.mark.kafka, pytest.mark.faults]
FIGURES: dict[str, object] = {}


def _check_scores(records, expected):
    for r in records:
        d = expected[(r["entity"], parse_timestamp(r["timestamp"]))]  # ISO 8601 on every topic
        assert r["score"] == pytest.approx(d.score, abs=1e-5) and r["is_anomaly"] == int(d.is_anomaly), r


def _alert_events(expected):
    """(entity, state, ISO timestamp) of every alert event the uninterrupted run makes."""
    from datetime import datetime

    iso = lambda t: datetime.fromtimestamp(t, tz=UTC).isoformat().replace("+00:00", "Z")  # noqa: E731
    return {(d.entity, d.event, iso(d.timestamp)) for d in expected.values() if d.event}


def test_repeated_kill_9_loses_nothing(kafka_bootstrap, topic_factory, model_dir, tmp_path):
    stream = generate_stream(80, 400, {f"pump-{e}" for e in range(0, 80, 8)}, seed=11)
    topics = make_topics(topic_factory)
    produce(kafka_bootstrap, topics.input, stream)
    batch = 50
    env = service_env(
        kafka_bootstrap,
        topics,
        model_dir,
        DETECTOR_STREAM__BATCH_MAX_MESSAGES=str(batch),
        DETECTOR_STREAM__CHECKPOINT_INTERVAL_S="0.5",
    )
    reader = TopicReader(kafka_bootstrap, topics.scores)
    rng, kills = random.Random(5), 0
    while kills < 6:
        service = ServiceProcess(env, tmp_path / f"run{kills}.log")
        before = len(reader.read(0.2))
        target = before + rng.randint(100, 600)
        reader.wait_for(lambda r, target=target: len(r) >= min(target, len(stream)), timeout_s=120, alive=service.alive)
        service.kill()
        kills += 1
        if len(offsets_seen(reader.read(0.5))) >= len(stream):
            break
    final = ServiceProcess(env, tmp_path / "final.log")
    try:
        records = reader.wait_for(lambda r: len(offsets_seen(r)) >= len(stream), timeout_s=180, alive=final.alive)
        time.sleep(1)
        records = reader.read(0.5)
    finally:
        assert final.terminate() == 0
    duplicates = len(records) - len(offsets_seen(records))
    FIGURES["kill9"] = {
        "messages": len(stream),
        "kills": kills,
        "duplicates": duplicates,
        "lost": len(stream) - len(offsets_seen(records)),
    }
    print("kill -9 figures:", FIGURES["kill9"])
    assert kills >= 5
    assert len(offsets_seen(records)) == len(stream), "every message scored at least once"
    assert duplicates <= kills * batch, "duplicates bounded by one batch per kill"
    expected = offline_decisions(model_dir, stream)
    _check_scores(records, expected)
    alerts = TopicReader(kafka_bootstrap, topics.alerts).read(2.0)
    published = {(a["entity"], a["state"], a["timestamp"]) for a in alerts}
    wanted = _alert_events(expected)
    assert wanted and wanted <= published, "no alert lost"
    FIGURES["kill9"]["alerts"] = len(wanted)


def test_broker_outage_20s(model_dir, tmp_path):
    with start_broker() as broker:
        from detector.broker import create_topics

        names = {k: f"outage-{k}" for k in ("in", "alerts", "dead", "ckpt", "scores")}
        create_topics(broker.bootstrap_servers, [names["in"]], 4)
        create_topics(broker.bootstrap_servers, [names[k] for k in ("alerts", "dead", "ckpt", "scores")], 1)
        from service_harness import ServiceTopics

        topics = ServiceTopics(names["in"], names["alerts"], names["dead"], names["ckpt"], names["scores"])
        stream = generate_stream(50, 60, {"pump-4"}, seed=12)
        half = len(stream) // 2
        produce(broker.bootstrap_servers, topics.input, stream[:half])
        port = free_port()
        env = service_env(
            broker.bootstrap_servers,
            topics,
            model_dir,
            DETECTOR_METRICS__PORT=str(port),
            DETECTOR_METRICS__HOST="127.0.0.1",
            DETECTOR_METRICS__STALL_AFTER_S="5",
        )
        service = ServiceProcess(env, tmp_path / "service.log")
        reader = TopicReader(broker.bootstrap_servers, topics.scores)
        try:
            reader.wait_for(lambda r: len(offsets_seen(r)) >= half, timeout_s=120, alive=service.alive)
            reader.consumer.close()
            broker.pause()
            health_during, ready_during = [], []
            for _ in range(20):
                time.sleep(1)
                health_during.append(http_status(f"http://127.0.0.1:{port}/healthz"))
                ready_during.append(http_status(f"http://127.0.0.1:{port}/readyz"))
                assert service.alive(), "the service survives the outage"
            broker.resume()
            produce(broker.bootstrap_servers, topics.input, stream[half:])
            reader = TopicReader(broker.bootstrap_servers, topics.scores)
            records = reader.wait_for(lambda r: len(offsets_seen(r)) >= len(stream), timeout_s=180, alive=service.alive)
            time.sleep(2)
            health_after = http_status(f"http://127.0.0.1:{port}/healthz")
            ready_after = http_status(f"http://127.0.0.1:{port}/readyz")
        finally:
            code = service.terminate()
        FIGURES["outage"] = {
            "messages": len(stream),
            "lost": len(stream) - len(offsets_seen(records)),
            "healthz_during": sorted(set(health_during)),
            "readyz_during": sorted(set(ready_during)),
            "healthz_after": health_after,
            "readyz_after": ready_after,
        }
        print("outage figures:", FIGURES["outage"])
        assert code == 0
        assert len(offsets_seen(records)) == len(stream)
        assert health_after == 200 and ready_after == 200
        assert 503 in ready_during[-10:], "/readyz reflects the broker outage"
        _check_scores(records, offline_decisions(model_dir, stream))


def test_rebalance_storm_states_follow_partitions(kafka_bootstrap, topic_factory, model_dir, tmp_path):
    stream = generate_stream(60, 100, {"pump-5", "pump-33"}, seed=13)
    topics = make_topics(topic_factory, partitions=6)
    env = service_env(kafka_bootstrap, topics, model_dir, DETECTOR_STREAM__CHECKPOINT_INTERVAL_S="1")
    anchor = ServiceProcess(env, tmp_path / "anchor.log")

    def trickle():
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=5)
        for i, m in enumerate(stream):
            producer.send(topics.input, key=m.entity.encode(), value=m.to_json())
            if i % 200 == 0:
                producer.flush()
                time.sleep(1.5)  # ~45 s of traffic: room for 8 joins and 8 leaves
        producer.flush()
        producer.close()

    feeder = threading.Thread(target=trickle)
    feeder.start()
    churn, rng = 0, random.Random(3)
    try:
        while feeder.is_alive() and churn < 8:
            guest = ServiceProcess(env, tmp_path / f"guest{churn}.log")
            time.sleep(rng.uniform(3, 6))
            guest.terminate()  # leaves the group, often while its first join is still in progress
            churn += 1
        feeder.join()
        reader = TopicReader(kafka_bootstrap, topics.scores)
        records = reader.wait_for(lambda r: len(offsets_seen(r)) >= len(stream), timeout_s=180, alive=anchor.alive)
    finally:
        anchor.terminate()
    FIGURES["rebalance"] = {
        "messages": len(stream),
        "membership_changes": churn * 2,
        "duplicates": len(records) - len(offsets_seen(records)),
        "lost": len(stream) - len(offsets_seen(records)),
    }
    print("rebalance figures:", FIGURES["rebalance"])
    assert len(offsets_seen(records)) == len(stream)
    _check_scores(records, offline_decisions(model_dir, stream))


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_feature_values = st.fixed_dictionaries(
    {},
    optional={
        f: st.one_of(
            st.floats(allow_nan=True, allow_infinity=True),
            st.text(max_size=3),
            st.none(),
            st.booleans(),
            st.integers(min_value=-(10**400), max_value=10**400),
        )
        for f in FEATURES
    },
)
_shaped = st.fixed_dictionaries(
    {},
    optional={
        "entity": st.one_of(st.text(max_size=5), st.integers(), st.none()),
        "timestamp": st.one_of(st.integers(min_value=-10, max_value=10**14), st.text(max_size=25), st.floats()),
        "values": st.one_of(_feature_values, _json_values),
    },
)
_bad_bytes = st.one_of(
    st.binary(max_size=64),
    _json_values.map(lambda v: json.dumps(v).encode()),
    _shaped.map(lambda v: json.dumps(v).encode()),
)


@given(value=_bad_bytes)
@settings(max_examples=400, deadline=None)
def test_parser_rejects_or_accepts_never_crashes(value):
    """Both validators (parse_message and the service's MessageDecoder) reach the same verdict."""
    verdicts = []
    for parse in (lambda raw: parse_message(raw, None, FEATURES, MessageFields()), lambda raw: DECODE(raw, None)):
        try:
            obs = parse(value)
        except BadMessage as error:
            assert error.reason in {
                "not_json",
                "schema",
                "missing_feature",
                "non_numeric",
                "non_finite",
                "too_large",
                "timestamp",
            }
            verdicts.append(error.reason)
        else:
            assert len(obs.values) == len(FEATURES) and all(np.isfinite(obs.values)) and obs.entity
            verdicts.append((obs.entity, obs.timestamp, obs.values))
    assert verdicts[0] == verdicts[1]


DECODE = MessageDecoder(FEATURES, MessageFields())


@given(messages=st.lists(_bad_bytes, min_size=150, max_size=150))
@settings(max_examples=1, deadline=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck))
def test_fuzzed_messages_in_a_live_stream(messages, kafka_bootstrap, topic_factory, model_dir, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("fuzz")
    valid = generate_stream(10, 30, (), seed=14)
    topics = make_topics(topic_factory, partitions=2)
    mixed, verdicts = [], []
    for i, m in enumerate(valid):
        mixed.append((m.entity.encode(), m.to_json()))
        if i < len(messages):
            mixed.append((m.entity.encode(), messages[i]))
            try:
                obs = parse_message(messages[i], m.entity.encode(), FEATURES, MessageFields())
                verdicts.append("ok" if obs.timestamp >= m.timestamp else "stale_timestamp")
            except BadMessage as error:
                verdicts.append(error.reason)
    produce(kafka_bootstrap, topics.input, mixed)
    service = ServiceProcess(service_env(kafka_bootstrap, topics, model_dir), tmp_path / "service.log")
    scores, dead = (
        TopicReader(kafka_bootstrap, topics.scores),
        TopicReader(kafka_bootstrap, topics.dead_letters, dead_letter_view),
    )
    bad = [v for v in verdicts if v != "ok"]
    try:
        dead.wait_for(lambda r: len(r) >= len(bad), timeout_s=120, alive=service.alive)
        scores.wait_for(lambda r: len(r) + len(dead.records) >= len(mixed), timeout_s=120, alive=service.alive)
        assert service.alive()
    finally:
        assert service.terminate() == 0
    FIGURES["fuzz"] = {"messages": len(mixed), "dead_letters": len(dead.records), "scored": len(scores.records)}
    assert len(scores.records) + len(dead.records) == len(mixed), "every message scored or dead-lettered"
    assert all(letter["reason"] and letter["detail"] for letter in dead.records)


def test_corrupt_or_mismatched_model_is_a_clear_error(model_dir, tmp_path, kafka_bootstrap, topic_factory):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    (broken / "weights.pt").write_bytes(b"not a model")
    topics = make_topics(topic_factory)
    result = run_until_exit(service_env(kafka_bootstrap, topics, broken))
    assert result.returncode == 2 and "corrupt" in result.stderr and "broken" in result.stderr
    meta = json.loads((model_dir / "model.json").read_text())
    mismatched = tmp_path / "mismatched"
    shutil.copytree(model_dir, mismatched)
    meta["architecture"]["hidden_size"] = 5
    (mismatched / "model.json").write_text(json.dumps(meta))
    result = run_until_exit(service_env(kafka_bootstrap, topics, mismatched))
    assert result.returncode == 2 and "incompatible" in result.stderr


def test_corrupt_checkpoint_falls_back_to_fresh_state(kafka_bootstrap, topic_factory, model_dir, tmp_path):
    stream = generate_stream(20, 40, (), seed=15)
    topics = make_topics(topic_factory, partitions=2)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    producer.send(topics.checkpoints, key=f"{topics.group}/{topics.input}/0".encode(), value=b"{garbage")
    manifest = {
        "id": "x",
        "chunks": 1,
        "next_offset": 0,
        "model_version": load_model(model_dir).version,
        "written_at": 0,
    }
    producer.send(topics.checkpoints, key=f"{topics.group}/{topics.input}/1/x/0".encode(), value=b"\x00\x01 not torch")
    producer.send(
        topics.checkpoints, key=f"{topics.group}/{topics.input}/1".encode(), value=json.dumps(manifest).encode()
    )
    producer.flush()
    produce(kafka_bootstrap, topics.input, stream)
    port = free_port()
    env = service_env(
        kafka_bootstrap, topics, model_dir, DETECTOR_METRICS__PORT=str(port), DETECTOR_METRICS__HOST="127.0.0.1"
    )
    service = ServiceProcess(env, tmp_path / "service.log")
    try:
        TopicReader(kafka_bootstrap, topics.scores).wait_for(
            lambda r: len(r) >= len(stream), timeout_s=120, alive=service.alive
        )
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        assert service.terminate() == 0
    assert 'detector_state_restore_fallbacks_total{reason="corrupt"} 2.0' in metrics
    fallbacks = [e for e in service.log_events() if e["event"] == "state.restore_fallback"]
    assert len(fallbacks) == 2 and all(e["level"] == "error" for e in fallbacks)


def test_stop_while_alerts_unacknowledged_loses_no_alert(model_dir, tmp_path):
    """The broker stops answering while a batch's alerts are in flight, the service is told to
    stop meanwhile and the broker comes back during its shutdown: the shutdown commit and
    checkpoint must not cover the batch whose alerts never arrived, so after a restart every
    alert of an uninterrupted run is published and every score matches it."""
    from service_harness import ServiceTopics

    from detector.broker import create_topics

    stream = generate_stream(40, 300, {f"pump-{e}" for e in range(0, 40, 4)}, seed=16)
    expected = offline_decisions(model_dir, stream)
    with start_broker() as broker:
        names = {k: f"unacked-{k}" for k in ("in", "alerts", "dead", "ckpt", "scores")}
        create_topics(broker.bootstrap_servers, [names["in"]], 4)
        create_topics(broker.bootstrap_servers, [names[k] for k in ("alerts", "dead", "ckpt", "scores")], 1)
        topics = ServiceTopics(names["in"], names["alerts"], names["dead"], names["ckpt"], names["scores"])
        produce(broker.bootstrap_servers, topics.input, stream)
        env = service_env(
            broker.bootstrap_servers,
            topics,
            model_dir,
            DETECTOR_STREAM__BATCH_MAX_MESSAGES="200",
            DETECTOR_STREAM__CHECKPOINT_INTERVAL_S="0.5",
            DETECTOR_KAFKA__REQUEST_TIMEOUT_MS="7000",
        )
        first = ServiceProcess(env, tmp_path / "first.log")
        reader = TopicReader(broker.bootstrap_servers, topics.scores)
        reader.wait_for(lambda r: len(r) >= len(stream) // 3, timeout_s=120, alive=first.alive)
        reader.consumer.close()
        broker.pause()
        try:
            time.sleep(1)
            first.process.send_signal(signal.SIGTERM)
            time.sleep(10)  # the batch in flight times out (7 s) while the shutdown waits for the broker
        finally:
            broker.resume()
        first_code = first.process.wait(timeout=60)
        events = {e["event"] for e in first.log_events()}
        second = ServiceProcess(env, tmp_path / "second.log")
        try:
            reader = TopicReader(broker.bootstrap_servers, topics.scores)
            records = reader.wait_for(lambda r: len(offsets_seen(r)) >= len(stream), timeout_s=180, alive=second.alive)
            time.sleep(1)
            alerts = TopicReader(broker.bootstrap_servers, topics.alerts).read(2.0)
        finally:
            assert second.terminate() == 0
    FIGURES["unacknowledged_stop"] = {
        "messages": len(stream),
        "first_exit": first_code,
        "held_back": "service.stopped_unacknowledged" in events,
        "duplicates": len(records) - len(offsets_seen(records)),
    }
    print("unacknowledged-stop figures:", FIGURES["unacknowledged_stop"])
    assert len(offsets_seen(records)) == len(stream)
    wanted = _alert_events(expected)
    published = {(a["entity"], a["state"], a["timestamp"]) for a in alerts}
    assert wanted and wanted <= published, (
        f"{len(wanted - published)} alerts lost, e.g. {sorted(wanted - published)[:3]}"
    )
    _check_scores(records, expected)
    assert first_code == 0, "a stop during a failed publish is a clean stop"
