"""``make demo``: the whole story on one machine, in about a minute.

Starts the bundled broker, fits a model on generated sensor history, runs ``detector run`` as a
separate process on a generated multi-entity stream with injected anomalies, prints the alerts
and a summary with precision and recall against the injected anomalies, and exits 0.

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

__all__ = ["FEATURES", "Message", "generate_history", "generate_stream", "main", "write_csv"]

FEATURES = ["temperature", "pressure", "vibration", "current", "voltage", "flow", "rpm", "humidity"]
START = 1_795_568_400.0  # 2026-11-25T01:00:00Z


@dataclass(frozen=True)
class Message:
    """One generated observation; ``injected`` marks an anomalous one."""

    entity: str
    timestamp: float
    values: list[float]
    injected: bool = False

    def to_json(self) -> bytes:
        """The default wire format of ``detector run``."""
        return json.dumps({"entity": self.entity, "timestamp": self.timestamp, "values": dict(zip(FEATURES, self.values))}).encode()


def _normal(entity_index: int, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Daily-ish cycles with entity-specific phase, coupled features and noise: (len(t), 8)."""
    phase = entity_index * 0.37
    base = np.sin(2 * np.pi * t / 60.0 + phase)
    slow = np.sin(2 * np.pi * t / 250.0 + 2 * phase)
    columns = [70 + 3 * base, 1.2 + 0.2 * base + 0.1 * slow, 0.5 + 0.1 * np.abs(base), 4 + 0.5 * slow, 230 + 2 * slow, 32 - 2 * base, 1500 + 50 * base, 40 + 5 * slow]
    noise_scale = np.array([0.3, 0.02, 0.02, 0.05, 0.5, 0.2, 5.0, 0.5])
    return np.stack(columns, axis=1) + rng.standard_normal((len(t), 8)) * noise_scale


def generate_history(entities: int = 20, rows: int = 400, seed: int = 1) -> list[Message]:
    """Normal history for fitting, interleaved across entities."""
    rng = np.random.default_rng(seed)
    t = np.arange(rows, dtype=float)
    series = {e: _normal(e, t, rng) for e in range(entities)}
    return [Message(f"pump-{e}", START - (rows - i) * 60.0, series[e][i].tolist()) for i in range(rows) for e in range(entities)]


def generate_stream(entities: int, messages: int, anomalous: Iterable[str] = (), seed: int = 2, offset: int = 400, anomaly_at: float = 0.6, anomaly_length: int = 8) -> list[Message]:
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
            out.append(Message(entity, START + i * 60.0, values.tolist(), injected))
    return out


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
        env = {**os.environ, "DETECTOR_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap_servers, "DETECTOR_MODEL__PATH": str(work / "model"),
               "DETECTOR_KAFKA__SESSION_TIMEOUT_MS": "6000", "DETECTOR_KAFKA__HEARTBEAT_INTERVAL_MS": "1000", "DETECTOR_METRICS__PORT": "0", "DETECTOR_LOG__FORMAT": "json"}
        service = subprocess.Popen([sys.executable, "-m", "detector.cli", "run"], env=env, stderr=open(work / "service.log", "wb"))
        alerts = _collect_alerts(broker.bootstrap_servers, KafkaConsumer, expected_opens=len(anomalous), timeout_s=90)
        service.send_signal(signal.SIGTERM)
        code = service.wait(timeout=60)
    _summarise(alerts, stream, anomalous, code, work)
    return 0 if code == 0 else 1


def _run(command: list[str]) -> None:
    print("$ detector " + " ".join(command[3:]))
    subprocess.run(command, check=True)


def _collect_alerts(bootstrap: str, consumer_class: type, expected_opens: int, timeout_s: float) -> list[dict]:
    consumer = consumer_class("detector-alerts", bootstrap_servers=bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=1000)
    alerts: list[dict] = []
    deadline = time.monotonic() + timeout_s
    quiet_since = None
    while time.monotonic() < deadline:
        batch = [json.loads(r.value) for r in consumer]
        alerts.extend(batch)
        for alert in batch:
            print(f"ALERT {alert['state']:<5} {alert['entity']:<9} {alert['timestamp']} score={alert['score']:.2f} p={alert['probability']:.4f} top={[f['feature'] for f in alert['top_features']]}")
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
    print(f"   injected faults: {len(anomalous)} entities; detected {true_positive}; precision {precision:.2f}, recall {recall:.2f}")
    print(f"   service exit code {code}; log: {work / 'service.log'}")


if __name__ == "__main__":
    sys.exit(main())
