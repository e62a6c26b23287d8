"""``make demo``: the whole story on one machine, in about a minute.

Starts the bundled broker, fits a model on generated sensor history, runs ``detector run`` as a
separate process on a generated multi-entity stream with injected anomalies, prints the alerts
and a summary with precision and recall against the injected anomalies, and exits 0. It then
says what ``scoring.false_alarm_rate`` means for the demo's fleet (false alerts a day) and
re-scores the stream offline with a rate sized for the fleet, to show the precision it gives.

The generator is also what the integration tests and benchmarks use:

>>> stream = generate_stream(entities=3, messages=20, anomalous={"pump-1"}, seed=0)
>>> len(stream), stream[0].entity, len(stream[0].values)
(60, 'pump-0', 8)
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "FEATURES",
    "Message",
    "RateOutcome",
    "generate_history",
    "generate_stream",
    "main",
    "rate_outcomes",
    "write_csv",
]

FEATURES = ["temperature", "pressure", "vibration", "current", "voltage", "flow", "rpm", "humidity"]
START = 1_795_568_400.0  # 2026-11-25T01:00:00Z
INTERVAL_S = 60.0  # one message a minute per entity
FLEET_FALSE_ALERTS_PER_DAY = 3.0  # what the fleet-sized rate aims at for the whole fleet


@dataclass(frozen=True)
class Message:
    """One generated observation; ``injected`` marks an anomalous one."""

    entity: str
    timestamp: float
    values: list[float]
    injected: bool = False

    def to_json(self) -> bytes:
        """The default wire format of ``detector run``."""
        return json.dumps(
            {
                "entity": self.entity,
                "timestamp": self.timestamp,
                "values": dict(zip(FEATURES, self.values, strict=True)),
            }
        ).encode()


def _normal(entity_index: int, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Daily-ish cycles with entity-specific phase, coupled features and noise: (len(t), 8)."""
    phase = entity_index * 0.37
    base = np.sin(2 * np.pi * t / 60.0 + phase)
    slow = np.sin(2 * np.pi * t / 250.0 + 2 * phase)
    columns = [
        70 + 3 * base,
        1.2 + 0.2 * base + 0.1 * slow,
        0.5 + 0.1 * np.abs(base),
        4 + 0.5 * slow,
        230 + 2 * slow,
        32 - 2 * base,
        1500 + 50 * base,
        40 + 5 * slow,
    ]
    noise_scale = np.array([0.3, 0.02, 0.02, 0.05, 0.5, 0.2, 5.0, 0.5])
    return np.stack(columns, axis=1) + rng.standard_normal((len(t), 8)) * noise_scale


def generate_history(entities: int = 20, rows: int = 400, seed: int = 1) -> list[Message]:
    """Normal history for fitting, interleaved across entities."""
    rng = np.random.default_rng(seed)
    t = np.arange(rows, dtype=float)
    series = {e: _normal(e, t, rng) for e in range(entities)}
    return [
        Message(f"pump-{e}", START - (rows - i) * 60.0, series[e][i].tolist())
        for i in range(rows)
        for e in range(entities)
    ]


def generate_stream(
    entities: int,
    messages: int,
    anomalous: Iterable[str] = (),
    seed: int = 2,
    offset: int = 400,
    anomaly_at: float = 0.6,
    anomaly_length: int = 8,
) -> list[Message]:
    """A live stream continuing the history; entities in ``anomalous`` get a burst of faults.

    The fault: from message ``anomaly_at * messages`` on, for ``anomaly_length`` messages,
    pressure and flow break away from their coupling with temperature (a blocked pipe).
    """
    rng, anomalous = np.random.default_rng(seed), set(anomalous)
    t = np.arange(offset, offset + messages, dtype=float)
    start = int(anomaly_at * messages)
    out = []
    series = {e: _normal(e, t, rng) for e in range(entities)}
    for i in range(messages):
        for e in range(entities):
            entity, values = f"pump-{e}", series[e][i].copy()
            injected = entity in anomalous and start <= i < start + anomaly_length
            if injected:
                values[1] += 1.5  # pressure
                values[5] -= 8.0  # flow
                values[2] += 0.6  # vibration
            out.append(Message(entity, START + i * INTERVAL_S, values.tolist(), injected))
    return out


@dataclass(frozen=True)
class RateOutcome:
    """What one ``false_alarm_rate`` gives on a stream: the alert level and the alerts' quality."""

    rate: float
    alert_level: float  # probability at or above which an alert opens
    false_alerts_per_day: float  # expected on normal data, for the whole fleet
    alerted: int  # entities with an alert in the stream
    precision: float
    recall: float

    def describe(self, entities: int) -> str:
        """Two lines for the demo's output."""
        return (
            f"   false_alarm_rate {self.rate:.2g}: alerts open at probability >= {self.alert_level:.4f}; "
            f"on normal data that is {self.false_alerts_per_day / entities:.2f} false alerts a day per entity, "
            f"{self.false_alerts_per_day:,.0f} a day for {entities} entities\n"
            f"      on this stream: {self.alerted} entities alerted, "
            f"precision {self.precision:.2f}, recall {self.recall:.2f}"
        )


def fleet_rate(
    entities: int, interval_s: float = INTERVAL_S, false_alerts_per_day: float = FLEET_FALSE_ALERTS_PER_DAY
) -> float:
    """The per-message rate at which ``entities`` reporting every ``interval_s`` seconds make
    about ``false_alerts_per_day`` false alerts a day together (at least 1e-5, what the
    simulated alert level resolves).

    >>> round(fleet_rate(200), 7)
    1.04e-05
    """
    return max(false_alerts_per_day / (entities * 86400.0 / interval_s), 1e-5)


def rate_outcomes(
    model_dir: Path, stream: list[Message], anomalous: set[str], rates: Iterable[float], interval_s: float = INTERVAL_S
) -> list[RateOutcome]:
    """Score ``stream`` offline (the service's step function) at each ``false_alarm_rate``."""
    from dataclasses import replace

    from detector.model import load_model
    from detector.schema import Observation
    from detector.scoring import Detector

    model = load_model(model_dir)
    entities = len({m.entity for m in stream})
    outcomes = []
    for rate in rates:
        detector = Detector(replace(model, scoring={**model.scoring, "false_alarm_rate": rate}))
        decisions = detector.process([Observation(m.entity, m.timestamp, m.values) for m in stream])
        opened = {d.entity for d in decisions if d.event == "open"}
        hits = len(opened & anomalous)
        outcomes.append(
            RateOutcome(
                rate,
                detector.threshold,
                rate * entities * 86400.0 / interval_s,
                len(opened),
                hits / len(opened) if opened else 0.0,
                hits / len(anomalous) if anomalous else 0.0,
            )
        )
    return outcomes


def write_csv(messages: Iterable[Message], path: Path) -> Path:
    """Messages as a contract CSV (timestamp, entity, features)."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["timestamp", "entity", *FEATURES])
        for m in messages:
            writer.writerow([f"{m.timestamp:.3f}", m.entity, *[f"{v:.6f}" for v in m.values]])
    return path


def main() -> int:  # pragma: no cover - exercised by `make demo`
    """Run the demo end to end."""
    from kafka import KafkaConsumer, KafkaProducer

    from detector.broker import create_topics, start_broker
    from detector.testing import FAST_GROUP

    entities, messages = 200, 60
    anomalous = {f"pump-{e}" for e in range(0, entities, 10)}
    work = Path(tempfile.mkdtemp(prefix="detector-demo-"))
    print(f"== detector demo (work dir {work})")
    history = write_csv(generate_history(entities=20, rows=400), work / "history.csv")
    _run([sys.executable, "-m", "detector.cli", "fit", "--data", str(history), "--out", str(work / "model")])
    stream = generate_stream(entities, messages, anomalous)
    with start_broker() as broker:
        print(f"== broker (Tansu) at {broker.bootstrap_servers}")
        create_topics(broker.bootstrap_servers, ["sensors"], 4)
        create_topics(broker.bootstrap_servers, ["detector-alerts", "detector-dead-letters", "detector-checkpoints"], 1)
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all", linger_ms=20)
        for m in stream:
            producer.send("sensors", key=m.entity.encode(), value=m.to_json())
        producer.send("sensors", key=b"pump-1", value=b"{not json")  # one bad message for the dead-letter topic
        producer.flush()
        print(f"== produced {len(stream) + 1} messages ({len(anomalous)} entities with injected faults, 1 malformed)")
        env = {
            **os.environ,
            **FAST_GROUP,
            "DETECTOR_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "DETECTOR_MODEL__PATH": str(work / "model"),
            "DETECTOR_METRICS__PORT": "0",
            "DETECTOR_LOG__FORMAT": "json",
        }
        with (work / "service.log").open("wb") as service_log:
            service = subprocess.Popen([sys.executable, "-m", "detector.cli", "run"], env=env, stderr=service_log)
            alerts = _collect_alerts(
                broker.bootstrap_servers, KafkaConsumer, expected_opens=len(anomalous), timeout_s=90
            )
            service.send_signal(signal.SIGTERM)
            code = service.wait(timeout=60)
    _summarise(alerts, stream, anomalous, code, work)
    _explain_rate(work / "model", stream, anomalous, entities)
    return 0 if code == 0 else 1


def _explain_rate(model_dir: Path, stream: list[Message], anomalous: set[str], entities: int) -> None:
    """What the alert level means for this fleet, and the precision of a rate sized for it."""
    default = json.loads((model_dir / "model.json").read_text())["scoring"]["false_alarm_rate"]
    print(
        f"== what false_alarm_rate means here: {entities} entities, one message a minute each "
        f"({entities * 86400 / INTERVAL_S:,.0f} messages a day); re-scored offline with the service's step function"
    )
    for outcome in rate_outcomes(model_dir, stream, anomalous, [default, fleet_rate(entities)]):
        print(outcome.describe(entities))
    print(
        f"   the default rate suits a few entities; for a fleet, size it to the false alerts you can afford: about\n"
        f"   false alerts a day / (entities x messages a day per entity), "
        f"e.g. DETECTOR_SCORING__FALSE_ALARM_RATE={fleet_rate(entities):.2g} "
        f"for {FLEET_FALSE_ALERTS_PER_DAY:g} a day here,\n"
        "   given to `detector run` or `detector score`, no refit needed (SIGHUP reloads it in a running service)"
    )


def _run(command: list[str]) -> None:
    print("$ detector " + " ".join(command[3:]))
    subprocess.run(command, check=True)


def _collect_alerts(bootstrap: str, consumer_class: type, expected_opens: int, timeout_s: float) -> list[dict]:
    consumer = consumer_class(
        "detector-alerts", bootstrap_servers=bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=1000
    )
    alerts: list[dict] = []
    deadline = time.monotonic() + timeout_s
    quiet_since = None
    while time.monotonic() < deadline:
        batch = [json.loads(r.value) for r in consumer]
        alerts.extend(batch)
        for alert in batch:
            top = [f["feature"] for f in alert["top_features"]]
            print(
                f"ALERT {alert['state']:<5} {alert['entity']:<9} {alert['timestamp']} "
                f"score={alert['score']:.2f} p={alert['probability']:.4f} top={top}"
            )
        opens = sum(a["state"] == "open" for a in alerts)
        quiet_since = (quiet_since or time.monotonic()) if not batch else None
        if opens >= expected_opens and quiet_since and time.monotonic() - quiet_since > 5:
            break
    consumer.close()
    return alerts


def _summarise(alerts: list[dict], stream: list, anomalous: set[str], code: int, work: Path) -> None:
    opened = {a["entity"] for a in alerts if a["state"] == "open"}
    true_positive = len(opened & anomalous)
    precision = true_positive / len(opened) if opened else 0.0
    recall = true_positive / len(anomalous)
    print(f"== summary: {len(stream)} messages, {len(alerts)} alert events, {len(opened)} entities alerted")
    print(
        f"   injected faults: {len(anomalous)} entities; detected {true_positive}; "
        f"precision {precision:.2f}, recall {recall:.2f}"
    )
    print(f"   service exit code {code}; log: {work / 'service.log'}")


if __name__ == "__main__":
    sys.exit(main())
