"""Where the time of the service's hot path goes.

Part 1, offline (no broker): the workload of throughput.py -- 10,000 entities x 20 messages of
8 features, as the JSON bytes the service receives (--quick: 2,000 x 10) -- is validated with
MessageDecoder.decode_many (the service's validator) and stepped with
Detector.process_columns in batches of 1,000, as Service._process_pending does. Printed:

* a stage breakdown measured without a profiler, by wrapping the stages (MessageDecoder,
  waves, EntityStore.slots_for, the network step, _score, _decide, _top; the rest of
  Detector._step is building inputs and gathering/scattering state);
* pyinstrument's flat self-time list and call tree (cProfile's if pyinstrument is missing);
* Detector.process throughput by batch size on already-tracked entities.

Part 2, the service loop in-process against the bundled broker (Service.run in this thread,
stopped once every message is scored): wall-time shares of the loop's parts, measured by
wrapping Service methods, plus pyinstrument's call tree for the kafka-python internals.

    .venv/bin/python benchmarks/profile_hot_path.py [--quick] [--model DIR] [--no-service]
"""

from __future__ import annotations

import collections
import functools
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _common as c
from _common import Row, say

BATCH = 1_000

try:
    from pyinstrument import Profiler
except ImportError:  # pragma: no cover - optional
    Profiler = None  # type: ignore[assignment,misc]


class Stopwatch:
    """Wall time spent in wrapped callables, by name (nested wrapped calls are counted in both)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self.calls: dict[str, int] = collections.defaultdict(int)

    def wrap(self, name: str, function: Callable) -> Callable:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - started
                self.calls[name] += 1

        return timed

    def patch(self, owner: object, attribute: str, name: str | None = None) -> Callable[[], None]:
        """Time ``owner.attribute`` (a no-op if the code no longer has it); returns the undo."""
        original = getattr(owner, attribute, None)
        if original is None:
            return lambda: None
        setattr(owner, attribute, self.wrap(name or attribute, original))
        return lambda: setattr(owner, attribute, original)


def workload(entities: int, per_entity: int) -> list[tuple[bytes, bytes]]:
    from detector.demo import generate_stream

    return [(m.entity.encode(), m.to_json()) for m in generate_stream(entities, per_entity, seed=2)]


def hot_path(model, raw: list[tuple[bytes, bytes]], detector=None) -> tuple[float, float, int]:
    """parse + process in batches of BATCH; returns (parse seconds, process seconds, anomalous decisions)."""
    from detector.schema import MessageDecoder, MessageFields
    from detector.scoring import Detector

    detector = detector or Detector(model)
    decode = MessageDecoder(model.features, MessageFields())
    parse_s = process_s = 0.0
    anomalous = 0
    for first in range(0, len(raw), BATCH):
        started = time.perf_counter()
        chunk = raw[first : first + BATCH]
        _, batch, _ = decode.decode_many([value for _, value in chunk], [key for key, _ in chunk])
        middle = time.perf_counter()
        outcomes = detector.process_columns(batch, owner=0, drop_stale=True)
        process_s += time.perf_counter() - middle
        parse_s += middle - started
        anomalous += int(outcomes.is_anomaly.sum())
    return parse_s, process_s, anomalous


def stage_breakdown(model, raw: list[tuple[bytes, bytes]]) -> dict:
    import detector.schema as schema
    import detector.scoring as scoring
    from detector.scoring import Detector

    watch = Stopwatch()
    detector = Detector(model)
    undo = [
        watch.patch(scoring, "waves"),
        watch.patch(detector.store, "slots_for", "EntityStore.slots_for"),
        watch.patch(model.network, "step", "network.step (torch)"),
        watch.patch(scoring, "score_rows", "score_rows (compiled stages)"),
        watch.patch(detector, "_top", "Detector._top (anomalous messages only)"),
    ]
    try:
        parse_s, process_s, anomalous = hot_path(model, raw, detector)
    finally:
        for u in undo:
            u()
    del schema
    stages = dict(watch.seconds)
    if "Detector._step" in stages:
        inner = sum(v for k, v in stages.items() if k != "Detector._step")
        stages["Detector._step: rest (inputs, state gather/scatter, Decision objects)"] = stages.pop(
            "Detector._step"
        ) - (inner - stages.get("waves", 0.0))
    stages["Detector.process: rest"] = process_s - sum(v for k, v in stages.items())
    stages["MessageDecoder (json + validation)"] = parse_s
    return {
        "stages": stages,
        "total": parse_s + process_s,
        "anomalous": anomalous,
        "messages": len(raw),
        "calls": dict(watch.calls),
    }


def profiled(model, raw: list[tuple[bytes, bytes]]) -> str:
    if Profiler is not None:
        profiler = Profiler(interval=0.0005)
        profiler.start()
        hot_path(model, raw)
        profiler.stop()
        tree = profiler.output_text(unicode=False, color=False, time="percent_of_total")
        return (
            "pyinstrument, top functions by self time:\n"
            + self_times(profiler)
            + "\n\npyinstrument, call tree:\n"
            + tree
        )
    import cProfile
    import io
    import pstats

    profile = cProfile.Profile()
    profile.runcall(hot_path, model, raw)
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(25)
    return "cProfile (pyinstrument not installed), by self time:\n" + out.getvalue()


def self_times(profiler, top: int = 25) -> str:
    """Self time per function (summed over every place it is called from), from a pyinstrument session."""
    root = profiler.last_session.root_frame() if profiler.last_session else None
    if root is None:
        return "(no samples)"
    totals: dict[str, float] = collections.defaultdict(float)
    stack = [root]
    while stack:
        frame = stack.pop()
        stack.extend(frame.children)
        if frame.is_synthetic:
            continue
        totals[f"{frame.function}  {frame.file_path_short}:{frame.line_no}"] += frame.total_self_time
    grand = root.time or 1.0
    lines = [f"  {100 * t / grand:5.1f}%  {name}" for name, t in sorted(totals.items(), key=lambda kv: -kv[1])[:top]]
    return "\n".join(lines)


def batch_sizes(model, raw: list[tuple[bytes, bytes]], sizes: list[int], repeats: int = 3) -> dict[int, float]:
    """Detector.process messages/s by batch size, on entities that are already tracked.

    Sizes are run interleaved, ``repeats`` times, and the best rate of each is kept (the least
    disturbed by whatever else runs on the machine).
    """
    from detector.schema import MessageDecoder, MessageFields
    from detector.scoring import Detector

    decode = MessageDecoder(model.features, MessageFields())
    _, columns, _ = decode.decode_many([value for _, value in raw[:100_000]], [key for key, _ in raw[:100_000]])
    observations = [columns.observation(i) for i in range(len(columns))]
    entities = len(set(columns.entities))
    rates: dict[int, float] = dict.fromkeys(sizes, 0.0)
    for _ in range(repeats):
        for size in sizes:
            detector = Detector(model)
            detector.process(observations[:entities])  # track every entity first (stream order: one message each)
            rest = observations[entities:]
            started = time.perf_counter()
            for first in range(0, len(rest), size):
                detector.process(rest[first : first + size])
            rates[size] = max(rates[size], len(rest) / (time.perf_counter() - started))
    return rates


def service_loop(model_dir: Path, raw: list[tuple[bytes, bytes]], partitions: int = 8) -> tuple[dict, float, int, str]:
    """Service.run in this thread on the bundled broker until every message is scored."""
    from kafka import KafkaProducer

    from detector.broker import create_topics, start_broker
    from detector.config import load_settings
    from detector.model import load_model
    from detector.stream import Service

    with start_broker() as broker:
        bootstrap = broker.bootstrap_servers
        suffix = uuid.uuid4().hex[:6]
        names = {k: f"{k}-{suffix}" for k in ("input", "alerts", "dead", "checkpoints")}
        create_topics(bootstrap, [names["input"]], partitions)
        create_topics(bootstrap, [names["alerts"], names["dead"], names["checkpoints"]], 1)
        producer = KafkaProducer(
            bootstrap_servers=bootstrap, acks=1, linger_ms=20, batch_size=256 * 1024, enable_idempotence=False
        )
        for key, value in raw:
            producer.send(names["input"], key=key, value=value)
        producer.flush()
        producer.close()
        settings = load_settings(
            None,
            kafka={
                "bootstrap_servers": bootstrap,
                "input_topics": [names["input"]],
                "alert_topic": names["alerts"],
                "dead_letter_topic": names["dead"],
                "checkpoint_topic": names["checkpoints"],
                "group_id": f"profile-{suffix}",
                "session_timeout_ms": 6000,
                "heartbeat_interval_ms": 1000,
            },
        )
        service = Service(settings, load_model(model_dir))
        watch = Stopwatch()
        for name in (
            "_poll",
            "_process_pending",
            "_await_commit",
            "_publish_alerts",
            "_publish_dead_letters",
            "_confirm",
            "_commit",
            "_record_outcomes",
            "_housekeeping",
            "_count_reconnects",
            "_restore_assigned",
            "_checkpoint",
        ):
            watch.patch(service, name, f"Service.{name}")
        watch.patch(service.detector, "process_columns", "Detector.process_columns")
        watch.patch(service.guard.decode, "decode_many", "MessageDecoder.decode_many")
        marks: dict[str, float] = {}
        marks_seconds: dict[str, float] = {}
        scored = service.metrics.messages_total.labels(outcome="scored")

        def watcher() -> None:
            while True:
                count = scored._value.get()
                if count > 0 and "first" not in marks:
                    marks["first"] = time.perf_counter()
                    # from here on: steady state; reset the stopwatch
                    watch.seconds.clear()
                    watch.calls.clear()
                if count >= len(raw):
                    marks["last"] = time.perf_counter()
                    marks_seconds.update(watch.seconds)
                    service.stop()
                    return
                time.sleep(0.01)

        threading.Thread(target=watcher, daemon=True).start()
        profiler = Profiler(interval=0.001) if Profiler is not None else None
        if profiler:
            profiler.start()
        service.run()
        if profiler:
            profiler.stop()
        tree = (
            profiler.output_text(unicode=False, color=False, time="percent_of_total")
            if profiler
            else "(pyinstrument not installed)"
        )
        window = marks.get("last", time.perf_counter()) - marks.get("first", 0.0)
        return dict(marks_seconds or watch.seconds), window, int(scored._value.get()), tree


def main() -> int:
    p = c.parser(__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=None, help="model directory (default: fit one like `detector fit`)")
    p.add_argument("--no-service", action="store_true", help="skip part 2 (needs the bundled broker)")
    args = p.parse_args()
    quick = args.quick
    entities, per_entity = (2_000, 10) if quick else (10_000, 20)
    say(
        f"== profile ({'quick' if quick else 'full'}): {entities:,} entities x {per_entity} messages, "
        f"batches of {BATCH:,}"
    )
    model_dir = args.model or (c.fit_default_model(max_epochs=3) if quick else c.fit_default_model())
    from detector.demo import FEATURES
    from detector.model import load_model

    model = load_model(
        model_dir, features=list(FEATURES)
    )  # refused if the workload's messages would all be dead letters
    raw = workload(entities, per_entity)
    hot_path(model, raw[: 5 * BATCH])  # warm-up

    b = stage_breakdown(model, raw)
    total, n = b["total"], b["messages"]
    say(
        f"\n-- part 1: MessageDecoder + Detector.process, no profiler: {n / total:,.0f} msg/s, "
        f"{1e6 * total / n:.1f} us/msg; "
        f"{b['anomalous']:,} of {n:,} decisions anomalous ({100 * b['anomalous'] / n:.1f}%)"
    )
    ordered = sorted(b["stages"].items(), key=lambda kv: -kv[1])
    for name, seconds in ordered:
        say(f"  {100 * seconds / total:5.1f}%  {1e6 * seconds / n:6.2f} us/msg  {name}")
    say("\n" + profiled(model, raw[: min(len(raw), 100_000)]))
    sizes = batch_sizes(model, raw, [100, 1000, 5000])
    say(
        "  Detector.process by batch size (entities already tracked): "
        + ", ".join(f"{k:,}: {v:,.0f} msg/s" for k, v in sizes.items())
    )

    rows = [
        Row(
            "profile",
            "MessageDecoder + Detector.process (offline)",
            f"{n / total:,.0f} msg/s",
            "",
            "",
            f"{1e6 * total / n:.1f} us/msg; {100 * b['anomalous'] / n:.0f}% of decisions anomalous",
        )
    ]
    for name, seconds in ordered[:6]:
        rows.append(
            Row("profile", f"share: {name}", f"{100 * seconds / total:.1f}%", "", "", f"{1e6 * seconds / n:.1f} us/msg")
        )
    rows.append(
        Row(
            "profile",
            "Detector.process by batch size",
            ", ".join(f"{k:,}: {v:,.0f}/s" for k, v in sizes.items()),
            "",
            "",
            "entities already tracked; best of 3",
        )
    )
    details: dict = {"offline": b, "batch_sizes": sizes}

    if not args.no_service:
        seconds, window, count, tree = service_loop(model_dir, raw)
        say(
            f"\n-- part 2: Service.run in-process, {count:,} messages scored, "
            f"{count / window:,.0f} msg/s from the first scored to the last "
            f"(profiled with pyinstrument: slower than unprofiled); wall-time shares of that window:"
        )
        for name, spent in sorted(seconds.items(), key=lambda kv: -kv[1]):
            say(f"  {100 * spent / window:5.1f}%  {name}")
        say("\n" + "\n".join(line for line in tree.splitlines() if line.strip())[:20000])
        shares = {k: v / window for k, v in seconds.items()}
        rows.append(
            Row(
                "profile",
                "service loop (in-process, profiled)",
                f"{count / window:,.0f} msg/s",
                "",
                "",
                "; ".join(
                    f"{k.replace('Service.', '')} {100 * v:.0f}%"
                    for k, v in sorted(shares.items(), key=lambda kv: -kv[1])[:7]
                ),
            )
        )
        details["service"] = {"shares": shares, "window_s": window, "scored": count}
    c.emit(rows, args.json, details)
    return 0


if __name__ == "__main__":
    sys.exit(main())
