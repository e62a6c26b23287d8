"""Throughput, scale-out and latency of `detector run` against the bundled broker.

One broker, one input topic (8 partitions), produced once; every consumer below reads that same
topic with its own consumer group:

1. ceiling   -- a bare kafka-python KafkaConsumer that only polls and json-decodes;
2. service   -- `python -m detector.cli run` as a subprocess, for a few batch/poll settings;
3. naive     -- the same service stepping one message at a time (stream.batch_max_messages=1),
                stopped after a fixed time;
4. scale-out -- two `detector run` processes in one group, on a topic of their own that is filled
                (confluent-kafka, the same messages) only once both own partitions, so they
                score side by side from the start whatever the group join takes;
5. latency   -- a rate-limited load generator process (benchmarks/loadgen.py, confluent-kafka;
                message timestamp = send time) at half the maximum rate of the settings measured,
                on a 2-partition topic (see LATENCY_PARTITIONS) of a fresh broker (this one
                slows down with all it stores), while one service consumes; five variants:
                [default] the service's default settings, measured with its own histogram;
                [best sweep] the throughput sweep's best batch settings (larger batches);
                [exact] defaults with a scores topic, exact per-message latency from it, at the
                        low-load rate (publishing every score costs more than scoring);
                [low load] a tenth of the default settings' maximum;
                [default, 8 partitions] as [default] on an 8-partition topic. See ``latency()``.
                Broker references: a bare consumer under the same load on 2 and 8 partitions.

The ceiling is measured twice, before the service runs and after them, and the higher of the two
is the reference (the conservative choice on a machine whose load varies).

Every run also reports CPU use (service, broker, producer, whole machine) over its window: on a
2-core machine shared with other work, a figure is only meaningful with the CPU it was given.

Rates are measured between two scrapes of the service's /metrics (every 0.25 s) that both lie
inside the period of activity: from the first scrape that saw scored messages to the last scrape
after which scoring still progressed. That excludes process start, group join, state restore and
the idle tail. The ceiling is measured the same way: from the first polled batch to the last
record, not counting the first batch.

    .venv/bin/python benchmarks/throughput.py [--quick]
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import _common as c
from _common import Row, say

if TYPE_CHECKING:
    from detector.testing import ServiceTopics

PARTITIONS = 8
# The latency runs use a 2-partition topic. Tansu's in-memory store (the bundled broker) answers a
# fetch more slowly the more record batches a partition holds: at 16.3k msg/s a bare consumer's p50
# grew from 22 to 241 ms within 60 s on 8 partitions and stayed at 20-26 ms on 1 or 2 (a producer
# lingering 20 ms writes ~50 batches per partition per second either way). Apache Kafka indexes
# its log by offset and does not slow down; the [default, 8 partitions] variant and the bare
# consumer references show the effect on this broker. For the same reason each latency run gets a
# broker of its own: after the throughput runs and earlier latency runs the shared broker held
# millions of records, and a bare consumer's p99 on a fresh 2-partition topic was 174 ms there
# against 49 ms on a fresh broker.
LATENCY_PARTITIONS = 2


def _default_batch() -> tuple[int, int]:
    """The defaults of (stream.batch_max_messages, kafka.max_poll_records)."""
    from detector.config import KafkaSettings, StreamSettings

    return StreamSettings.model_fields["batch_max_messages"].default, KafkaSettings.model_fields[
        "max_poll_records"
    ].default


DEFAULT_BATCH = _default_batch()
IDLE_S = 5.0  # CPU use of the default run once it has caught up, over this long
SCRAPE_EVERY_S = 0.25


# --- workload -----------------------------------------------------------------------------------


def workload(entities: int, per_entity: int) -> list[tuple[bytes, bytes]]:
    """generate_stream(entities, per_entity) as (key, JSON body) pairs, keyed by entity."""
    from detector.demo import generate_stream

    started = time.perf_counter()
    bodies = [(m.entity.encode(), m.to_json()) for m in generate_stream(entities, per_entity, seed=2)]
    say(
        f"  generated {len(bodies):,} messages in {time.perf_counter() - started:.1f} s "
        f"(mean {sum(len(b) for _, b in bodies) / len(bodies):.0f} bytes)"
    )
    return bodies


def produce_workload(bootstrap: str, topic: str, bodies: list[tuple[bytes, bytes]]) -> tuple[int, float, int]:
    """``bodies`` to ``topic`` (kafka-python); returns (count, seconds, bytes)."""
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks=1, linger_ms=20, batch_size=256 * 1024, enable_idempotence=False
    )
    started = time.perf_counter()
    for key, body in bodies:
        producer.send(topic, key=key, value=body)
    producer.flush()
    producer.close()
    elapsed = time.perf_counter() - started
    return len(bodies), elapsed, sum(len(b) for _, b in bodies)


def produce_fast(bootstrap: str, topic: str, bodies: list[tuple[bytes, bytes]]) -> float:
    """``bodies`` to ``topic`` with confluent-kafka (librdkafka: several times kafka-python's rate,
    so consumers that start with it soon have a backlog), partitioned by key as kafka-python
    does (murmur2); returns the seconds it took."""
    from confluent_kafka import Producer

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": 1,
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "enable.idempotence": False,
            "partitioner": "murmur2_random",
            "queue.buffering.max.messages": 2_000_000,
        }
    )
    started = time.perf_counter()
    for key, body in bodies:
        producer.produce(topic, body, key)
        producer.poll(0)
    producer.flush(120)
    return time.perf_counter() - started


def await_assignment(services: Services, partitions: int, timeout_s: float) -> float | None:
    """Wait until every process owns partitions and together they own all ``partitions``, for two
    scrapes in a row (group joins settled); the seconds it took, or None at the timeout."""
    started, settled = time.perf_counter(), 0
    while time.perf_counter() - started < timeout_s and services.alive():
        owned = [(c.scrape(port) or {}).get("detector_partitions_assigned", 0.0) for port in services.ports]
        settled = settled + 1 if all(n > 0 for n in owned) and sum(owned) == partitions else 0
        if settled >= 2:
            return time.perf_counter() - started
        time.sleep(SCRAPE_EVERY_S)
    return None


def bare_consumer(bootstrap: str, topic: str, **config):
    """A kafka-python consumer of ``topic`` in a fresh group, from the start, committing nothing."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=f"bare-{uuid.uuid4().hex[:8]}",
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **config,
    )
    consumer.subscribe([topic])
    return consumer


def ceiling(bootstrap: str, topic: str, expected: int, max_poll_records: int, timeout_s: float) -> dict:
    """A bare consumer in a fresh group that only polls and json-decodes."""
    consumer = bare_consumer(bootstrap, topic, max_poll_records=max_poll_records)
    count, first_at, first_batch, last_at = 0, None, 0, None
    deadline = time.monotonic() + timeout_s
    cpu0 = cpu1 = 0.0
    machine0 = machine1 = (0, 0)
    while count < expected and time.monotonic() < deadline:
        polled = consumer.poll(timeout_ms=500)
        batch = 0
        for records in polled.values():
            for record in records:
                json.loads(record.value)
                batch += 1
        if batch:
            now = time.perf_counter()
            if first_at is None:
                first_at, first_batch, cpu0, machine0 = now, batch, time.process_time(), c.machine_jiffies()
            count += batch
            last_at, cpu1, machine1 = now, time.process_time(), c.machine_jiffies()
    cpu = cpu1 - cpu0
    consumer.close()
    if first_at is None or last_at is None or last_at <= first_at:
        return {"rate": float("nan"), "count": count}
    return {
        "rate": (count - first_batch) / (last_at - first_at),
        "count": count,
        "seconds": last_at - first_at,
        "cpu_s": cpu,
        "machine_cpu": c.machine_busy(machine0, machine1),
    }


# --- service runs --------------------------------------------------------------------------------


@dataclass
class Deployment:
    """Topics and group of one service run (fresh each time, so no state or offsets carry over)."""

    input_topic: str
    group: str = field(default_factory=lambda: f"bench-{uuid.uuid4().hex[:8]}")
    scores_topic: str | None = None

    def topics(self, bootstrap: str) -> ServiceTopics:
        """Create this run's output topics; the scores topic only when the run reads scores."""
        from detector.broker import create_topics
        from detector.testing import ServiceTopics

        suffix = self.group
        topics = ServiceTopics(
            input=self.input_topic,
            alerts=f"alerts-{suffix}",
            dead_letters=f"dead-{suffix}",
            checkpoints=f"checkpoints-{suffix}",
            scores=self.scores_topic,
            group=self.group,
        )
        create_topics(bootstrap, [topics.alerts, topics.dead_letters], 1)
        create_topics(bootstrap, [topics.checkpoints], 1, {"cleanup.policy": "compact"})
        return topics


@dataclass
class Scrape:
    at: float  # perf_counter
    samples: list[dict[str, float]]  # one per process
    cpu: list[float]  # CPU seconds per process
    broker_cpu: float
    machine: tuple[int, int]  # machine_jiffies()


class Services:
    """``count`` `detector run` processes in one group, with their /metrics ports and logs."""

    def __init__(
        self,
        bootstrap: str,
        deployment: Deployment,
        model_dir: Path,
        count: int,
        extra: dict[str, str],
        log_dir: Path,
        python: str | None = None,
    ):
        from detector.testing import service_env

        topics = deployment.topics(bootstrap)
        command = [python or c.python(), "-m", "detector.cli", "run"]
        self.ports = [c.free_port() for _ in range(count)]
        self.logs = [log_dir / f"{deployment.group}-{i}.log" for i in range(count)]
        self._last: list[dict[str, float]] = [{} for _ in self.ports]  # last figures each process gave
        self.processes = [
            subprocess.Popen(
                command,
                env=service_env(
                    bootstrap,
                    topics,
                    model_dir,
                    DETECTOR_METRICS__PORT=str(port),
                    DETECTOR_METRICS__HOST="127.0.0.1",
                    **extra,
                ),
                stdout=subprocess.DEVNULL,
                stderr=log.open("wb"),
            )
            for port, log in zip(self.ports, self.logs, strict=True)
        ]

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.processes)

    def scrape(self, broker_pid: int) -> Scrape:
        samples = []
        for i, port in enumerate(self.ports):
            got = c.scrape(port)
            if got is None:  # no answer (busy or starting): keep the last known figures
                got = self._last[i]
            samples.append(got)
        self._last = samples
        return Scrape(
            time.perf_counter(),
            samples,
            [c.cpu_seconds(p.pid) for p in self.processes],
            c.cpu_seconds(broker_pid),
            c.machine_jiffies(),
        )

    def idle_cpu(self, seconds: float) -> list[float]:
        """Cores each process keeps busy over ``seconds`` (call when no messages are arriving)."""
        before, started = [c.cpu_seconds(p.pid) for p in self.processes], time.perf_counter()
        time.sleep(seconds)
        elapsed = time.perf_counter() - started
        return [(c.cpu_seconds(p.pid) - b) / elapsed for p, b in zip(self.processes, before, strict=True)]

    def stop(self) -> list[int | None]:
        for p in self.processes:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes: list[int | None] = []
        for p in self.processes:
            try:
                codes.append(p.wait(timeout=60))
            except subprocess.TimeoutExpired:
                p.kill()
                codes.append(p.wait())
        return codes

    def events(self, name: str) -> list[int]:
        """How many log events called ``name`` each process wrote."""
        counts = []
        for log in self.logs:
            counts.append(
                sum(
                    1
                    for line in log.read_text(errors="replace").splitlines()
                    if f'"event": "{name}"' in line or f'"event":"{name}"' in line
                )
            )
        return counts

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join("\n".join(log.read_text(errors="replace").splitlines()[-lines:]) for log in self.logs)


def run_services(
    broker,
    model_dir: Path,
    topic: str,
    expected: int,
    extra: dict[str, str],
    log_dir: Path,
    processes: int = 1,
    time_limit_s: float | None = None,
    timeout_s: float = 300.0,
    fill: Callable[[], float] | None = None,
    python: str | None = None,
    idle_s: float = 0.0,
) -> dict:
    """Start the processes, scrape until ``expected`` messages are scored (or the time limit), stop them.

    ``fill``: ``topic`` starts empty; once every process owns its partitions (see
    :func:`await_assignment`), ``fill`` produces the messages (returning its seconds), so the
    processes score side by side from the first message instead of one taking everything while
    the other still joins the group. ``python``: the interpreter that runs the service (default:
    this one), for comparing revisions (``benchmarks/compare_revisions.py``). ``idle_s``: once
    every message is scored, also measure the processes' CPU use over that many seconds without
    new messages (``idle_cpu``, cores per process).
    """
    services = Services(broker.bootstrap_servers, Deployment(topic), model_dir, processes, extra, log_dir, python)
    scrapes: list[Scrape] = []
    started, first_scored_at, outcome = time.perf_counter(), None, "done"
    joined_s = fill_s = None
    try:
        if fill is not None:
            joined_s = await_assignment(services, PARTITIONS, timeout_s / 2)
            say(
                f"  every process owns partitions after {joined_s:.1f} s; producing"
                if joined_s is not None
                else "  ! the processes did not all own partitions in time; producing anyway"
            )
            fill_s = fill()
        while True:
            time.sleep(SCRAPE_EVERY_S)
            scrape = services.scrape(broker.pid)
            scrapes.append(scrape)
            total = sum(c.scored(s) for s in scrape.samples)
            if total > 0 and first_scored_at is None:
                first_scored_at = scrape.at
            if total >= expected:
                break
            if not services.alive():
                outcome = "a service process died"
                break
            if time_limit_s is not None and first_scored_at is not None and scrape.at - first_scored_at >= time_limit_s:
                outcome = "time limit"
                break
            if scrape.at - started > timeout_s:
                outcome = "timeout"
                break
        idle_cpu = services.idle_cpu(idle_s) if idle_s > 0 and outcome == "done" else None
    finally:
        codes = services.stop()
    result = summarise(scrapes, processes)
    result.update(
        idle_cpu=idle_cpu,
        outcome=outcome,
        exit_codes=codes,
        startup_s=(first_scored_at - started) if first_scored_at else None,
        joined_s=joined_s,
        fill_s=fill_s,
        assignments=services.events("partitions.assigned"),
        revocations=services.events("partitions.revoked"),
    )
    if outcome not in ("done", "time limit") or any(code not in (0, None) for code in codes):
        say("  ! service log tail:\n" + services.log_tail())
    return result


def summarise(scrapes: list[Scrape], processes: int) -> dict:
    """Rate and resource use over the window in which every process was scoring (see module doc)."""
    counts = [[c.scored(s.samples[p]) for s in scrapes] for p in range(processes)]
    moving = [k for k in range(len(scrapes) - 1) if all(counts[p][k + 1] > counts[p][k] for p in range(processes))]
    started = [k for k in moving if all(counts[p][k] > 0 for p in range(processes))]
    totals = [sum(counts[p][k] for p in range(processes)) for k in range(len(scrapes))]
    begun = next((k for k, t in enumerate(totals) if t > 0), None)
    # drain rate: from the first scrape that saw anything scored to the first that saw the final count
    drain = float("nan")
    if begun is not None:
        end = next(k for k, t in enumerate(totals) if t >= totals[-1])
        if end > begun:
            drain = (totals[end] - totals[begun]) / (scrapes[end].at - scrapes[begun].at)
    if not started or started[0] >= moving[-1]:
        return {"rate": float("nan"), "drain_rate": drain, "scored": totals[-1] if scrapes else 0}
    a, b = started[0], moving[-1]
    sa, sb = scrapes[a], scrapes[b]
    seconds = sb.at - sa.at
    scored = sum(counts[p][b] - counts[p][a] for p in range(processes))

    def delta(name: str) -> float:
        return sum(sb.samples[p].get(name, 0.0) - sa.samples[p].get(name, 0.0) for p in range(processes))

    batches = delta("detector_batch_size_messages_count")
    return {
        "rate": scored / seconds,
        "drain_rate": drain,
        "per_process_rate": [(counts[p][b] - counts[p][a]) / seconds for p in range(processes)],
        "window_s": seconds,
        "window_scored": scored,
        "scored": sum(counts[p][-1] for p in range(processes)),
        "service_cpu": [(sb.cpu[p] - sa.cpu[p]) / seconds for p in range(processes)],  # cores busy
        "broker_cpu": (sb.broker_cpu - sa.broker_cpu) / seconds,
        "machine_cpu": c.machine_busy(sa.machine, sb.machine),  # cores busy on the whole machine (all processes)
        "step_share": delta("detector_step_duration_seconds_sum") / seconds / processes,  # of wall time
        "mean_batch": delta("detector_batch_size_messages_sum") / batches if batches else float("nan"),
        "alerts_opened": sum(
            scrapes[-1].samples[p].get('detector_alerts_total{kind="open"}', 0.0) for p in range(processes)
        ),
        "partitions": [
            scrapes[(a + b) // 2].samples[p].get("detector_partitions_assigned", float("nan")) for p in range(processes)
        ],
    }


def describe(label: str, r: dict) -> None:
    if r.get("rate") != r.get("rate"):
        say(f"  {label}: no rate ({r.get('outcome')}, scored {r.get('scored')})")
        return
    cpu = "+".join(f"{x:.2f}" for x in r["service_cpu"])
    say(
        f"  {label}: {r['rate']:,.0f} msg/s over {r['window_s']:.1f} s ({r['window_scored']:,.0f} msgs; "
        f"total scored {r['scored']:,.0f}; "
        f"first-to-last drain rate {r['drain_rate']:,.0f} msg/s); "
        f"service CPU {cpu} cores, broker {r['broker_cpu']:.2f}, "
        f"whole machine {r['machine_cpu']:.2f} of {os.cpu_count()}; "
        f"Detector.process {100 * r['step_share']:.0f}% of wall time; "
        f"mean batch {r['mean_batch']:.0f}; partitions {r['partitions']}; alerts opened {r['alerts_opened']:.0f}; "
        f"start-up to first scored {r['startup_s'] or float('nan'):.1f} s; "
        f"partition assignments per process {r['assignments']}; {r['outcome']}"
        + (
            f"; CPU while idle afterwards {'+'.join(f'{x:.2f}' for x in r['idle_cpu'])} cores"
            if r.get("idle_cpu")
            else ""
        )
    )


# --- latency ----------------------------------------------------------------------------------------


def latency(
    broker,
    model_dir: Path,
    extra: dict[str, str],
    rate: float,
    duration_s: float,
    warmup_s: float,
    entities: int,
    log_dir: Path,
    exact: bool,
    partitions: int = LATENCY_PARTITIONS,
) -> dict:
    """Produce at ``rate`` msg/s (timestamp = send time) while one service consumes a fresh topic.

    exact=False: the service's own histogram detector_end_to_end_latency_seconds, differenced between
    the end of the warm-up and the end of the run. It is observed after the batch's alerts were
    acknowledged and its offsets committed, i.e. it covers the whole loop. 0.1 s is a bucket
    boundary, so the fraction <= 100 ms (the target) is exact; p99 is interpolated inside a bucket.

    exact=True: the service also publishes every decision to a scores topic; latency per message =
    the Kafka CreateTime of its score record (stamped by the service's producer when it sends the
    record, right after the batched step) minus the message timestamp. Exact to the millisecond, but
    it stops at the send (before acknowledgement and commit), and the extra records add load.
    """
    from kafka import KafkaConsumer, TopicPartition

    from detector.broker import create_topics

    topic = f"latency-{uuid.uuid4().hex[:8]}"
    create_topics(broker.bootstrap_servers, [topic], partitions)
    deployment = Deployment(topic)
    if exact:
        deployment.scores_topic = f"scores-{deployment.group}"
        create_topics(broker.bootstrap_servers, [deployment.scores_topic], partitions)
    services = Services(broker.bootstrap_servers, deployment, model_dir, 1, extra, log_dir)
    generator = None
    try:
        ready_deadline = time.monotonic() + 120
        while time.monotonic() < ready_deadline:
            samples = c.scrape(services.ports[0])
            if (
                samples
                and samples.get("detector_partitions_assigned", 0) >= partitions
                and samples.get("detector_loop_last_progress_timestamp_seconds", 0) > 0
            ):
                break
            if not services.alive():
                raise RuntimeError("service died:\n" + services.log_tail())
            time.sleep(0.2)
        time.sleep(1.0)  # let the first (initial-checkpoint) iterations pass
        generator = start_load(broker.bootstrap_servers, topic, rate, warmup_s + duration_s, entities)
        time.sleep(warmup_s)
        before = c.scrape(services.ports[0]) or {}
        cpu0, bcpu0, t0 = c.cpu_seconds(services.processes[0].pid), c.cpu_seconds(broker.pid), time.perf_counter()
        machine0 = c.machine_jiffies()
        lags = []
        while time.perf_counter() - t0 < duration_s:
            time.sleep(0.5)
            samples = c.scrape(services.ports[0]) or {}
            lags.append(sum(v for k, v in samples.items() if k.startswith("detector_consumer_lag_messages{")))
        measured_s = time.perf_counter() - t0
        machine_cpu = c.machine_busy(machine0, c.machine_jiffies())
        cpu = (c.cpu_seconds(services.processes[0].pid) - cpu0) / measured_s
        bcpu = (c.cpu_seconds(broker.pid) - bcpu0) / measured_s
        produced = json.loads(generator.communicate(timeout=120)[0].strip().splitlines()[-1])
        drain_deadline = time.monotonic() + 60
        after = c.scrape(services.ports[0]) or {}
        while c.scored(after) < produced["sent"] and time.monotonic() < drain_deadline:
            time.sleep(0.25)
            after = c.scrape(services.ports[0]) or after
    finally:
        if generator is not None and generator.poll() is None:
            generator.kill()
        codes = services.stop()
    name = "detector_end_to_end_latency_seconds"
    hb, ha = dict(c.histogram(before, name)), c.histogram(after, name)
    buckets = [(le, count - hb.get(le, 0.0)) for le, count in ha]
    total = buckets[-1][1] if buckets else 0.0
    within = dict(buckets).get(0.1, 0.0)
    result = {
        "rate_target": rate,
        "sent": produced["sent"],
        "produced_rate": produced["sent"] / (produced["ended"] - produced["started"]),
        "observed": total,
        "fraction_le_100ms": within / total if total else float("nan"),
        "fraction_le_50ms": dict(buckets).get(0.05, 0.0) / total if total else float("nan"),
        "p50_interp": c.histogram_quantile(0.5, buckets),
        "p99_interp": c.histogram_quantile(0.99, buckets),
        "mean": (after.get(f"{name}_sum", 0) - before.get(f"{name}_sum", 0)) / total if total else float("nan"),
        "service_cpu": cpu,
        "broker_cpu": bcpu,
        "producer_cpu": produced["cpu_s"] / (produced["ended"] - produced["started"]),  # the load generator process
        "machine_cpu": machine_cpu,
        "exit_codes": codes,
        "scored": c.scored(after),
        "producer_ack_p50": produced["ack_p50"],
        "producer_ack_p99": produced["ack_p99"],
        "lag_mean": sum(lags) / len(lags) if lags else float("nan"),
        "lag_last": lags[-1] if lags else float("nan"),
    }
    if exact:
        from detector.schema import parse_timestamp

        consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap_servers, enable_auto_commit=False, group_id=None)
        scores_partitions = [TopicPartition(deployment.scores_topic, p) for p in range(partitions)]
        consumer.assign(scores_partitions)
        consumer.seek_to_beginning(*scores_partitions)
        latencies, kinds, idle_since = [], set(), time.monotonic()
        start_ts = produced["started"] + warmup_s
        end_ts = start_ts + duration_s
        while time.monotonic() - idle_since < 3.0:
            polled = consumer.poll(timeout_ms=500)
            for records in polled.values():
                for r in records:
                    body = json.loads(r.value)
                    kinds.add(r.timestamp_type)
                    sent = parse_timestamp(body["timestamp"])  # the scores topic writes ISO 8601
                    if start_ts <= sent < end_ts:
                        latencies.append(r.timestamp / 1000 - sent)
                idle_since = time.monotonic()
        consumer.close()
        import numpy as np

        lat = np.asarray(latencies)
        result.update(
            exact_count=len(lat),
            timestamp_types=sorted(kinds),
            exact_p50=float(np.quantile(lat, 0.5)) if len(lat) else float("nan"),
            exact_p99=float(np.quantile(lat, 0.99)) if len(lat) else float("nan"),
            exact_max=float(lat.max()) if len(lat) else float("nan"),
            exact_fraction_le_100ms=float((lat <= 0.1).mean()) if len(lat) else float("nan"),
        )
    return result


def start_load(bootstrap: str, topic: str, rate: float, seconds: float, entities: int) -> subprocess.Popen:
    """The load generator process (benchmarks/loadgen.py), connected and about to send."""
    generator = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).with_name("loadgen.py")),
            bootstrap,
            topic,
            "--rate",
            str(rate),
            "--seconds",
            str(seconds),
            "--entities",
            str(entities),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
    )
    if generator.stdout.readline().strip() != "ready":  # type: ignore[union-attr]
        raise RuntimeError(f"load generator failed to start (exit {generator.wait()})")
    return generator


def bare_latency(broker, rate: float, duration_s: float, warmup_s: float, entities: int, partitions: int) -> dict:
    """The broker's own share: a bare kafka-python consumer (poll + json.loads, no commits) under the
    same load generator; latency = poll return time - message timestamp, after the warm-up."""
    import numpy as np

    from detector.broker import create_topics

    topic = f"bare-{uuid.uuid4().hex[:8]}"
    create_topics(broker.bootstrap_servers, [topic], partitions)
    consumer = bare_consumer(broker.bootstrap_servers, topic, fetch_max_wait_ms=10)
    try:
        while not consumer.assignment():
            consumer.poll(timeout_ms=100)
        generator = start_load(broker.bootstrap_servers, topic, rate, warmup_s + duration_s, entities)
        measure_from = time.time() + warmup_s
        latencies: list[float] = []
        while generator.poll() is None:
            polled = consumer.poll(timeout_ms=100, max_records=2000)
            now = time.time()
            if now >= measure_from:
                latencies.extend(now - json.loads(r.value)["timestamp"] for records in polled.values() for r in records)
        generator.communicate(timeout=60)
    finally:
        consumer.close(autocommit=False)
    lat = np.asarray(latencies)
    return {
        "partitions": partitions,
        "count": len(lat),
        "p50": float(np.quantile(lat, 0.5)) if len(lat) else float("nan"),
        "p99": float(np.quantile(lat, 0.99)) if len(lat) else float("nan"),
    }


# --- main ----------------------------------------------------------------------------------------------


def main() -> int:
    p = c.parser(__doc__.split("\n")[0])
    p.add_argument(
        "--model", type=Path, default=None, help="model directory (default: fit one now, like `detector fit`)"
    )
    args = p.parse_args()
    quick = args.quick
    entities, per_entity = (
        (2_000, 10) if quick else (10_000, 50)
    )  # 500k: two processes need a few seconds of steady state
    configs = [DEFAULT_BATCH] if quick else [DEFAULT_BATCH, (2000, 2000), (5000, 2000), (5000, 5000)]
    naive_s = 4.0 if quick else 20.0
    lat_duration, lat_warmup = (3.0, 1.0) if quick else (30.0, 5.0)
    timeout = 120.0 if quick else 400.0

    from detector.broker import create_topics, start_broker

    log_dir = Path(tempfile.mkdtemp(prefix="detector-bench-logs-"))
    say(
        f"== throughput ({'quick' if quick else 'full'}): {entities:,} entities x {per_entity} messages, "
        f"{PARTITIONS} partitions; logs in {log_dir}"
    )
    if args.model is None:
        started = time.perf_counter()
        model_dir = c.fit_default_model(max_epochs=3) if quick else c.fit_default_model()
        say(
            f"  fitted the model (`detector fit` defaults{', 3 epochs' if quick else ''}) in "
            f"{time.perf_counter() - started:.0f} s: {model_dir}"
        )
    else:
        model_dir = args.model
    rows: list[Row] = []
    details: dict = {"entities": entities, "messages_per_entity": per_entity}
    with start_broker() as broker:
        topic = "sensors-bench"
        create_topics(broker.bootstrap_servers, [topic], PARTITIONS)
        bodies = workload(entities, per_entity)
        n, seconds, size = produce_workload(broker.bootstrap_servers, topic, bodies)
        say(f"  produced {n:,} messages ({size / 1e6:.1f} MB) once in {seconds:.1f} s ({n / seconds:,.0f} msg/s)")

        ceil = ceiling(broker.bootstrap_servers, topic, n, max_poll_records=10_000, timeout_s=timeout)
        say(
            "  ceiling (bare KafkaConsumer, poll + json.loads, "
            f"max_poll_records=10000): {ceil['rate']:,.0f} msg/s over {ceil.get('seconds', 0):.1f} s, "
            f"CPU {ceil.get('cpu_s', 0) / max(ceil.get('seconds', 1), 1e-9):.2f} cores (consumer process, "
            "its I/O thread included), "
            f"whole machine {ceil.get('machine_cpu', float('nan')):.2f} of {os.cpu_count()}"
        )
        details["ceiling"] = ceil

        sweep = {}
        for batch, poll in configs:
            extra = {"DETECTOR_STREAM__BATCH_MAX_MESSAGES": str(batch), "DETECTOR_KAFKA__MAX_POLL_RECORDS": str(poll)}
            idle = IDLE_S if (batch, poll) == DEFAULT_BATCH else 0.0
            r = run_services(broker, model_dir, topic, n, extra, log_dir, timeout_s=timeout, idle_s=idle)
            describe(f"service batch_max_messages={batch} max_poll_records={poll}", r)
            sweep[(batch, poll)] = r
        details["sweep"] = {f"{b}/{m}": r for (b, m), r in sweep.items()}
        again = ceiling(broker.bootstrap_servers, topic, n, max_poll_records=10_000, timeout_s=timeout)
        say(
            f"  ceiling again, after the sweep: {again['rate']:,.0f} msg/s (first: {ceil['rate']:,.0f}); "
            "the higher is the reference"
        )
        details["ceiling_again"] = again
        ceil = max(ceil, again, key=lambda r: r["rate"] if r["rate"] == r["rate"] else -1)
        best_cfg = max(sweep, key=lambda k: sweep[k]["rate"] if sweep[k]["rate"] == sweep[k]["rate"] else -1)
        best = sweep[best_cfg]
        if best["rate"] != best["rate"]:  # NaN: no service run produced a rate
            say("  ! no service run scored anything; skipping the naive, scale-out and latency runs")
            rows = [
                Row("throughput", "ceiling: bare KafkaConsumer poll + json.loads", f"{ceil['rate']:,.0f} msg/s"),
                Row(
                    "throughput",
                    "`detector run`",
                    "no rate",
                    "",
                    "failed",
                    f"{best.get('outcome')}; see the service log above",
                ),
            ]
            c.emit(rows, args.json, details)
            return 1
        best_extra = {
            "DETECTOR_STREAM__BATCH_MAX_MESSAGES": str(best_cfg[0]),
            "DETECTOR_KAFKA__MAX_POLL_RECORDS": str(best_cfg[1]),
        }

        naive = run_services(
            broker,
            model_dir,
            topic,
            n,
            {"DETECTOR_STREAM__BATCH_MAX_MESSAGES": "1"},
            log_dir,
            time_limit_s=naive_s,
            timeout_s=timeout,
        )
        describe(f"naive baseline (batch_max_messages=1, stopped after {naive_s:.0f} s)", naive)
        details["naive"] = naive

        scale_topic = "sensors-scale-out"  # empty until both processes own partitions (see run_services)
        create_topics(broker.bootstrap_servers, [scale_topic], PARTITIONS)
        two = run_services(
            broker,
            model_dir,
            scale_topic,
            n,
            best_extra,
            log_dir,
            processes=2,
            timeout_s=timeout,
            fill=lambda: produce_fast(broker.bootstrap_servers, scale_topic, bodies),
        )
        describe(f"scale-out: 2 processes, batch_max_messages={best_cfg[0]} max_poll_records={best_cfg[1]}", two)
        details["scale_out"] = two

        # "half of the maximum throughput" of the settings being measured: the default settings'
        # maximum is the sweep run with the defaults, the larger batches' is the best run
        default_rate = sweep.get(DEFAULT_BATCH, best)["rate"]
        variants = [
            (
                "default",
                "the service's default settings at half their maximum; service histogram",
                {},
                default_rate / 2,
                False,
                LATENCY_PARTITIONS,
            ),
            (
                "best sweep",
                "settings of the best sweep run (larger batches) at half their maximum; service histogram",
                best_extra,
                best["rate"] / 2,
                False,
                LATENCY_PARTITIONS,
            ),
            # publishing a score record per message costs more than scoring it (the scores topic
            # is a debugging aid), so the exact cross-check runs at the low-load rate
            (
                "exact",
                "default settings at a tenth of their maximum, scores topic on (every decision published); "
                "exact per-message latency",
                {},
                default_rate / 10,
                True,
                LATENCY_PARTITIONS,
            ),
            (
                "low load",
                "default settings at a tenth of their maximum; histogram",
                {},
                default_rate / 10,
                False,
                LATENCY_PARTITIONS,
            ),
            (
                "default, 8 partitions",
                f"as [default] on a {PARTITIONS}-partition topic, where this broker slows down as batches pile up",
                {},
                default_rate / 2,
                False,
                PARTITIONS,
            ),
        ]
        lats: dict[str, dict] = {}
        for name, label, extra, rate_, exact, parts in variants:
            with (
                start_broker() as fresh
            ):  # the bundled broker slows down with all it stores (the sweep's topic, earlier runs)
                r = latency(
                    fresh,
                    model_dir,
                    extra,
                    rate_,
                    lat_duration,
                    lat_warmup,
                    entities,
                    log_dir,
                    exact=exact,
                    partitions=parts,
                )
            lats[name] = r
            line = (
                f"  latency [{name}] {label}: {parts} partitions, target {rate_:,.0f} msg/s, "
                f"produced {r['produced_rate']:,.0f}; histogram over {r['observed']:,.0f} msgs: "
                f"<=50 ms {100 * r['fraction_le_50ms']:.1f}%, <=100 ms {100 * r['fraction_le_100ms']:.2f}%, "
                f"p50~{1000 * r['p50_interp']:.0f} ms, "
                f"p99~{1000 * r['p99_interp']:.0f} ms; producer send->ack p50 {1000 * r['producer_ack_p50']:.0f} ms, "
                f"p99 {1000 * r['producer_ack_p99']:.0f} ms; "
                f"CPU cores: service {r['service_cpu']:.2f}, producer {r['producer_cpu']:.2f}, "
                f"broker {r['broker_cpu']:.2f}, "
                f"whole machine {r['machine_cpu']:.2f} of {os.cpu_count()}; mean lag {r['lag_mean']:.0f}"
            )
            if exact:
                line += (
                    f"\n      exact (score record CreateTime - message timestamp, {r.get('exact_count', 0):,} msgs, "
                    f"timestamp types {r.get('timestamp_types')}): "
                    f"p50 {1000 * r.get('exact_p50', float('nan')):.1f} ms, "
                    f"p99 {1000 * r.get('exact_p99', float('nan')):.1f} ms, "
                    f"max {1000 * r.get('exact_max', float('nan')):.0f} ms, "
                    f"<=100 ms {100 * r.get('exact_fraction_le_100ms', float('nan')):.2f}%"
                )
            say(line)
        bare = {}
        for parts in (LATENCY_PARTITIONS, PARTITIONS):
            with start_broker() as fresh:
                bare[parts] = bare_latency(fresh, default_rate / 2, lat_duration, lat_warmup, entities, parts)
        for parts, r in bare.items():
            say(
                "  broker reference: bare consumer (poll + json.loads, no model, "
                f"no commits) at {default_rate / 2:,.0f} msg/s, {parts} partitions: "
                f"p50 {1000 * r['p50']:.1f} ms, p99 {1000 * r['p99']:.1f} ms over {r['count']:,} msgs"
            )
        details["bare_latency"] = bare
        details["latency"] = lats

    ceil_rate, rate, naive_rate, two_rate = ceil["rate"], best["rate"], naive["rate"], two["rate"]
    idle_cpu = (sweep.get(DEFAULT_BATCH, {}).get("idle_cpu") or [float("nan")])[0]
    two_how = "both processes scoring"
    if two_rate != two_rate:  # NaN: the two never scored side by side for two scrapes (tiny --quick topic)
        two_rate, two_how = two.get("drain_rate", float("nan")), "drain rate: the processes never scored side by side"
    cfg = f"batch_max_messages={best_cfg[0]}, max_poll_records={best_cfg[1]}"
    rows += [
        Row(
            "throughput",
            "ceiling: bare KafkaConsumer poll + json.loads",
            f"{ceil_rate:,.0f} msg/s",
            "",
            "",
            f"higher of two runs ({details['ceiling']['rate']:,.0f} before the sweep, "
            f"{details['ceiling_again']['rate']:,.0f} after); {n:,} msgs, {entities:,} entities, "
            f"{PARTITIONS} partitions; "
            f"consumer CPU {ceil.get('cpu_s', 0) / max(ceil.get('seconds', 1), 1e-9):.2f} cores",
        ),
        Row(
            "throughput",
            "`detector run`, 1 process (best of sweep)",
            f"{rate:,.0f} msg/s",
            ">= 0.8 x ceiling",
            c.verdict(rate >= 0.8 * ceil_rate),
            f"{rate / ceil_rate:.2f} x ceiling; {cfg}; service CPU {best['service_cpu'][0]:.2f} cores; "
            f"{best['alerts_opened']:,.0f} alerts opened",
        ),
        Row(
            "throughput",
            "service CPU while idle (caught up, no new messages), default settings",
            f"{idle_cpu:.2f} cores" if idle_cpu == idle_cpu else "not measured",
            "",
            "",
            f"over {IDLE_S:.0f} s after the default run scored everything: kafka-python's fetch loop "
            "(`kafka.fetch_max_wait_ms`), the metrics endpoint, the housekeeping timers",
        ),
        Row(
            "throughput",
            "naive baseline (batch_max_messages=1)",
            f"{naive_rate:,.0f} msg/s",
            "",
            "",
            f"stopped after {naive_s:.0f} s",
        ),
        Row(
            "throughput",
            "1 process vs naive",
            f"{rate / naive_rate:.1f} x",
            ">= 10 x naive",
            c.verdict(rate >= 10 * naive_rate),
            "",
        ),
        Row(
            "scale-out",
            "2 processes, one group",
            f"{two_rate:,.0f} msg/s",
            ">= 1.6 x one process",
            c.verdict(two_rate >= 1.6 * rate),
            f"{two_rate / rate:.2f} x ({two_how}); "
            f"both owned partitions {two.get('joined_s') or float('nan'):.1f} s after start, "
            f"filled in {two.get('fill_s') or float('nan'):.1f} s; "
            f"drain rate {two.get('drain_rate', float('nan')):,.0f} msg/s; "
            f"CPU: services {'+'.join(f'{x:.2f}' for x in two.get('service_cpu', []))}, "
            f"broker {two.get('broker_cpu', float('nan')):.2f}, "
            f"machine {two.get('machine_cpu', float('nan')):.2f}/{os.cpu_count()}",
        ),
    ]
    for name, label, _, rate_, exact, parts in variants:
        r = lats[name]
        fell_short = ", producer fell short" if r["produced_rate"] < 0.9 * rate_ else ""
        short = f"{r['produced_rate']:,.0f} msg/s produced (target {rate_:,.0f}{fell_short})"
        rows.append(
            Row(
                "latency",
                f"p99 timestamp -> decision [{name}]: {label}; {parts} partitions",
                f"~{1000 * r['p99_interp']:.0f} ms interpolated; {100 * r['fraction_le_100ms']:.2f}% <= 100 ms",
                "p99 < 100 ms",
                c.verdict(r["fraction_le_100ms"] >= 0.99),
                f"{short}; p50~{1000 * r['p50_interp']:.0f} ms; CPU: service {r['service_cpu']:.2f}, "
                f"producer {r['producer_cpu']:.2f}, "
                f"machine {r['machine_cpu']:.2f}/{os.cpu_count()}",
            )
        )
        if exact:
            rows.append(
                Row(
                    "latency",
                    "p99 exact [exact]: score record CreateTime - message timestamp",
                    f"{1000 * r.get('exact_p99', float('nan')):.1f} ms",
                    "p99 < 100 ms",
                    c.verdict(r.get("exact_p99", 1.0) < 0.1),
                    f"p50 {1000 * r.get('exact_p50', float('nan')):.1f} ms, "
                    f"max {1000 * r.get('exact_max', float('nan')):.0f} ms; {r.get('exact_count', 0):,} msgs",
                )
            )
    for parts, r in details["bare_latency"].items():
        rows.append(
            Row(
                "latency",
                f"broker reference: bare consumer latency at {default_rate / 2:,.0f} msg/s, "
                f"{parts} partitions (no model, no commits)",
                f"p99 {1000 * r['p99']:.1f} ms",
                "",
                "",
                f"p50 {1000 * r['p50']:.1f} ms; {r['count']:,} msgs after the warm-up",
            )
        )
    for (b, m), r in sweep.items():
        rows.append(
            Row(
                "throughput",
                f"sweep batch_max_messages={b}, max_poll_records={m}",
                f"{r['rate']:,.0f} msg/s",
                "",
                "",
                f"CPU: service {'+'.join(f'{x:.2f}' for x in r.get('service_cpu', []))}, "
                f"machine {r.get('machine_cpu', float('nan')):.2f}/{os.cpu_count()}; "
                f"Detector.process {100 * r.get('step_share', float('nan')):.0f}% of wall; "
                f"mean batch {r.get('mean_batch', float('nan')):.0f}",
            )
        )
    c.emit(rows, args.json, details)
    return 0


if __name__ == "__main__":
    sys.exit(main())
