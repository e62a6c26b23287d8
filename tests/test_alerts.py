"""The publisher never lets an unacknowledged record go (against a broker that freezes)."""

import json

import pytest
from kafka import KafkaProducer
from kafka.errors import KafkaError
from service_harness import TopicReader

from detector.alerts import Publisher, Source, alert_record
from detector.broker import create_topics, start_broker
from detector.scoring import Contribution, Decision

pytestmark = pytest.mark.kafka


def test_records_survive_a_frozen_broker_until_acknowledged():
    with start_broker() as broker:
        create_topics(broker.bootstrap_servers, ["alerts"], 1)
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all", request_timeout_ms=3000)
        publisher = Publisher(producer)
        publisher.send("alerts", "warm-up", {"n": -1})
        publisher.confirm(timeout_s=10)
        broker.pause()
        for n in range(5):
            publisher.send("alerts", "pump-1", {"n": n})
        with pytest.raises((KafkaError, TimeoutError)):
            publisher.confirm(timeout_s=1)
        with pytest.raises((KafkaError, TimeoutError)):
            publisher.confirm(timeout_s=0.5)  # still waiting: the records were not dropped
        broker.resume()
        for _ in range(30):
            try:
                publisher.confirm(timeout_s=5)
                break
            except (KafkaError, TimeoutError):
                publisher.retry_failed()
        records = TopicReader(broker.bootstrap_servers, "alerts").read(2.0)
        producer.close()
    assert {r["n"] for r in records} >= {-1, 0, 1, 2, 3, 4}


def test_alert_records():
    decision = Decision(
        "pump-7",
        1795568400.0,
        9.5,
        0.9995,
        True,
        "open",
        [Contribution("flow", 0.7, 12.0, 32.0), Contribution("pressure", 0.2, 2.5, 1.2)],
        opened_at=1795568400.0,
    )
    alert = alert_record(decision, threshold=0.999, model_version="v9", source=Source("sensors", 3, 1200))
    assert (
        alert["timestamp"] == "2026-11-25T01:00:00Z" and alert["model_version"] == "v9" and alert["threshold"] == 0.999
    )
    assert alert["top_features"] == [
        {"feature": "flow", "share": 0.7, "value": 12.0, "expected": 32.0},
        {"feature": "pressure", "share": 0.2, "value": 2.5, "expected": 1.2},
    ]
    assert json.loads(json.dumps(alert)) == alert
