"""Resident memory per tracked entity, and with ``max_entities`` set.

Each measurement runs in a fresh child process (this script re-invoked with ``--child``):

* growth:  a Detector without a bound is fed distinct entities (one message each, batches of
           1,000, as the service steps them); RSS above a baseline is read from /proc/self/statm
           at exactly 100,000 and 1,000,000 tracked entities (--quick: 10,000 and 100,000).
           The baseline is taken after imports, model load and a warm-up on a throw-away
           Detector, just before the measured Detector starts tracking entities.
* bounded: a Detector with max_entities=100,000 is fed 1,000,000 distinct entities; RSS at
           200k, 500k and 1M fed should stay flat (--quick: 10,000 / 20k, 50k, 100k).

The model is the default architecture of `detector fit` (LSTM, hidden 32, 1 layer, 8 features:
72 floats of state per entity), because memory per entity depends on the state size, not on the
weights; detector.testing.tiny_model (hidden 8: 24 floats) would understate it.

The store's arrays grow by doubling (1,024 x 2^k slots): at 100,000 entities they have 131,072
slots, at 1,000,000 they have 1,048,576, so the per-entity figure at 100k carries 31% unused slots.

    .venv/bin/python benchmarks/memory.py [--quick] [--model DIR]
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _common as c
from _common import Row, say

BATCH = 1_000
TARGET_BYTES = 1.5 * 1024


def _feed(detector, start: int, stop: int, values: list[list[float]], now: float) -> None:
    from detector.schema import Observation

    for first in range(start, stop, BATCH):
        batch = [
            Observation(f"device-{i:07d}", now, values[i % len(values)]) for i in range(first, min(first + BATCH, stop))
        ]
        detector.process(batch, owner=0, now=now)


def _store_bytes(store) -> tuple[int, int]:
    """(bytes of the slot arrays, slots)."""
    arrays = store.nbytes()
    return arrays, int(store.rnn.shape[0])


def child(mode: str, model_dir: Path, checkpoints: list[int], bound: int | None) -> dict:
    import numpy as np

    from detector.model import load_model
    from detector.scoring import Detector

    model = load_model(model_dir)
    rng = np.random.default_rng(0)
    values = (model.feature_mean + rng.standard_normal((4096, len(model.features))) * model.feature_scale).tolist()
    now = time.time()
    warm = Detector(model)  # warm-up: lazy allocations of torch/numpy kernels, code paths
    _feed(warm, 0, 3 * BATCH, values, now)
    del warm
    gc.collect()
    detector = Detector(model, max_entities=bound) if bound else Detector(model)
    baseline = c.rss_bytes()
    out: dict[str, Any] = {"mode": mode, "baseline_rss": baseline, "state_size": model.network.state_size, "points": []}
    fed, started = 0, time.perf_counter()
    for point in checkpoints:
        _feed(detector, fed, point, values, now)
        fed = point
        gc.collect()
        rss = c.rss_bytes()
        arrays, slots = _store_bytes(detector.store)
        out["points"].append(
            {
                "fed": fed,
                "tracked": len(detector.store),
                "rss": rss,
                "growth": rss - baseline,
                "per_entity": (rss - baseline) / len(detector.store),
                "slots": slots,
                "array_bytes": arrays,
                "evictions": dict(detector.store.evictions),
                "seconds": time.perf_counter() - started,
            }
        )
    out["peak_rss"] = c.peak_rss_bytes()
    return out


def run_child(mode: str, model_dir: Path, checkpoints: list[int], bound: int | None) -> dict:
    command = [
        c.python(),
        __file__,
        "--child",
        mode,
        "--model",
        str(model_dir),
        "--points",
        ",".join(map(str, checkpoints)),
    ]
    if bound:
        command += ["--bound", str(bound)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory child {mode} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    p = c.parser(__doc__.split("\n")[0])
    p.add_argument(
        "--model", type=Path, default=None, help="model directory (default: fit one with the default architecture)"
    )
    p.add_argument("--child", default=None, help="internal")
    p.add_argument("--points", default="", help="internal")
    p.add_argument("--bound", type=int, default=None, help="internal")
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.model, [int(x) for x in args.points.split(",")], args.bound)))
        return 0

    quick = args.quick
    growth_points = [10_000, 100_000] if quick else [100_000, 1_000_000]
    bound = 10_000 if quick else 100_000
    bounded_points = [20_000, 50_000, 100_000] if quick else [200_000, 500_000, 1_000_000]
    say(f"== memory ({'quick' if quick else 'full'})")
    model_dir = args.model
    if model_dir is None:
        model_dir = c.fit_default_model(max_epochs=1)  # weights do not matter for memory; the architecture does
        say(f"  model (default architecture, 1 epoch): {model_dir}")

    growth = run_child("growth", model_dir, growth_points, None)
    state_size = growth["state_size"]
    say(
        f"  baseline RSS {growth['baseline_rss'] / 2**20:.0f} MiB (after imports, model, warm-up); "
        f"state size {state_size} floats"
    )
    rows: list[Row] = []
    for point in growth["points"]:
        say(
            f"  {point['tracked']:>9,} entities: RSS +{point['growth'] / 2**20:7.1f} MiB = {point['per_entity']:6.0f} "
            "B/entity "
            f"(slot arrays {point['array_bytes'] / 2**20:.1f} MiB for {point['slots']:,} slots = "
            f"{point['array_bytes'] / point['slots']:.0f} B/slot; "
            f"fed in {point['seconds']:.0f} s)"
        )
        rows.append(
            Row(
                "memory",
                f"RSS growth per tracked entity at {point['tracked']:,}",
                f"{point['per_entity']:,.0f} B",
                "<= 1.5 KB (1,536 B)",
                c.verdict(point["per_entity"] <= TARGET_BYTES),
                f"+{point['growth'] / 2**20:.0f} MiB; "
                f"{point['slots']:,} slots x {point['array_bytes'] / point['slots']:.0f} B arrays",
            )
        )
    say(f"  peak RSS of that process {growth['peak_rss'] / 2**20:.0f} MiB (array doubling copies old + new)")

    bounded = run_child("bounded", model_dir, bounded_points, bound)
    first = bounded["points"][0]
    for point in bounded["points"]:
        say(
            f"  max_entities={bound:,}: {point['fed']:>9,} fed, {point['tracked']:,} tracked, "
            f"RSS +{point['growth'] / 2**20:6.1f} MiB "
            f"({point['evictions']['capacity']:,} evicted, {point['slots']:,} slots)"
        )
    last = bounded["points"][-1]
    drift = last["growth"] - first["growth"]
    flat = abs(drift) <= max(0.05 * first["growth"], 2**20)  # within 5% (or 1 MiB)
    rss_list = ", ".join(f"{p['fed'] // 1000}k: +{p['growth'] / 2**20:.1f}" for p in bounded["points"])
    rows.append(
        Row(
            "memory",
            f"RSS with max_entities={bound:,} fed {bounded_points[-1]:,} distinct entities",
            f"{rss_list} MiB",
            "flat",
            c.verdict(flat),
            f"{drift / 2**20:+.1f} MiB from {first['fed'] // 1000}k to {last['fed'] // 1000}k fed (flat = within 5% "
            "or 1 MiB)",
        )
    )
    c.emit(rows, args.json, {"growth": growth, "bounded": bounded})
    return 0


if __name__ == "__main__":
    sys.exit(main())
