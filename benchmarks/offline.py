"""The offline path: `detector score` on long files, its peak memory, and `detector evaluate`.

Every figure runs the command line as a subprocess (`python -m detector.cli ...`), as a user does:

* single entity: a file of one series (100,000 rows a minute apart; --quick 20,000); rows/s after
  start-up = (rows of the file - rows of a 1,000-row file) / (difference of their wall times), so
  imports, model load and the alert level's simulation are left out (a first run of the small
  file, not timed, fills any compilation cache). Rows per CPU-second (user + system time of the
  process, from ``os.wait4``) are given too: on a shared machine they depend less on the load.
  In the same run, the plain ``torch.nn.LSTM`` forward over a sequence of the same length (the model's input and hidden
  widths, one thread) as the physical reference of what the network costs;
* multi-entity: 1,000 entities x 1,000 rows, interleaved (--quick 200 x 500), the same way;
* peak RSS: `detector score` on 1,000 entities x 1,000 rows and x 10,000 rows (1 and 10 million
  rows; --quick 0.1 and 1 million), the files written to /tmp first and removed after; peak RSS
  of the scoring process from ``os.wait4``;
* evaluate: wall time of `make evaluate` (`detector evaluate` on the development data, SKAB and
  NAB, one process per core) and of the same with ``--seeds 7,8,9`` (skipped with --no-seeds;
  --quick: ``--limit 2``).

    .venv/bin/python benchmarks/offline.py [--quick] [--model DIR] [--only score,rss,evaluate]
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as c
import numpy as np
from _common import Row, say

DATA = Path(os.environ.get("DETECTOR_SHARED_DATA", c.ROOT.parent / "shared" / "data"))  # as the tests find it
START = 1_795_568_400


def write_csv(path: Path, entities: int, rows: int, model_dir: Path, seed: int = 0) -> int:
    """A file of ``entities`` interleaved series of ``rows`` rows each (a minute apart), about
    the fit data's levels: sine plus noise per feature. Returns its row count."""
    meta = json.loads((model_dir / "model.json").read_text())
    mean, scale, features = np.asarray(meta["feature_mean"]), np.asarray(meta["feature_scale"]), meta["features"]
    rng = np.random.default_rng(seed)
    per_chunk = max(1, 200_000 // entities)
    with path.open("w") as handle:
        handle.write(",".join(["timestamp", *(["entity"] if entities > 1 else []), *features]) + "\n")
        for first in range(0, rows, per_chunk):
            steps = np.arange(first, min(first + per_chunk, rows))
            phase = steps[:, None, None] / 60.0 + np.arange(entities)[None, :, None] + np.arange(len(features))
            values = mean + scale * (np.sin(phase) + 0.2 * rng.standard_normal(phase.shape))
            times = START + 60 * np.repeat(steps, entities)
            names = np.tile([f"pump-{e}" for e in range(entities)], len(steps))
            cells = np.char.mod("%.5g", values.reshape(-1, len(features)))
            lines = [",".join(row) for row in cells.tolist()]
            if entities > 1:
                handle.writelines(f"{t},{e},{line}\n" for t, e, line in zip(times, names, lines, strict=True))
            else:
                handle.writelines(f"{t},{line}\n" for t, line in zip(times, lines, strict=True))
    return entities * rows


def run_score(model_dir: Path, data: Path, out: Path) -> tuple[float, int, float]:
    """Wall seconds, peak RSS (bytes) and CPU seconds (user + system) of `detector score` on ``data``."""
    command = [
        c.python(),
        "-m",
        "detector.cli",
        "score",
        "--model",
        str(model_dir),
        "--data",
        str(data),
        "--out",
        str(out),
    ]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=c.ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"detector score failed: {process.stderr.read().decode()[-2000:] if process.stderr else ''}")
    return seconds, usage.ru_maxrss * 1024, usage.ru_utime + usage.ru_stime


def rows_per_second(model_dir: Path, work: Path, entities: int, rows: int, small_rows: int) -> dict:
    """`detector score` rows/s after start-up: a file of ``rows`` per entity against one of ``small_rows``."""
    figures: dict = {}
    for label, count in (("warm-up", small_rows), ("small", small_rows), ("large", rows)):
        data = work / f"{label}-{entities}.csv"
        n = write_csv(data, entities, count, model_dir)
        seconds, _, cpu = run_score(model_dir, data, work / "scores.csv")  # the warm-up fills compilation caches
        figures[label] = {"rows": n, "seconds": seconds, "cpu_s": cpu}
        data.unlink()
    large, small = figures["large"], figures["small"]
    extra_s = large["seconds"] - small["seconds"]
    extra_cpu = large["cpu_s"] - small["cpu_s"]
    figures["rate"] = (large["rows"] - small["rows"]) / extra_s if extra_s > 0 else float("nan")
    figures["cpu_rate"] = (large["rows"] - small["rows"]) / extra_cpu if extra_cpu > 0 else float("nan")
    return figures


def lstm_reference(model_dir: Path, rows: int) -> dict:
    """Seconds of a plain torch.nn.LSTM forward over one sequence of ``rows`` steps, of the
    model's widths (median of 3, after one warm-up run)."""
    import torch

    torch.set_num_threads(1)
    meta = json.loads((model_dir / "model.json").read_text())
    arch = meta["architecture"]
    inputs = 2 * arch["n_features"] + 2 * len(arch.get("periods", []))
    lstm = torch.nn.LSTM(inputs, arch["hidden_size"], arch["num_layers"], batch_first=True).eval()
    x = torch.randn(1, rows, inputs)
    times = []
    with torch.inference_mode():
        for _ in range(4):
            started = time.perf_counter()
            lstm(x)
            times.append(time.perf_counter() - started)
    seconds = float(np.median(times[1:]))
    return {"rows": rows, "seconds": seconds, "rate": rows / seconds, "input": inputs, "hidden": arch["hidden_size"]}


def peak_rss(model_dir: Path, work: Path, entities: int, rows_each: list[int]) -> list[dict]:
    points = []
    for rows in rows_each:
        data = work / f"rss-{entities}x{rows}.csv"
        n = write_csv(data, entities, rows, model_dir)
        size = data.stat().st_size
        seconds, peak, _ = run_score(model_dir, data, work / "scores.csv")
        data.unlink()
        (work / "scores.csv").unlink(missing_ok=True)
        points.append({"rows": n, "file_bytes": size, "seconds": seconds, "peak_rss": peak})
        say(
            f"  {n:>11,} rows ({size / 1e6:,.0f} MB): peak RSS {peak / 2**20:,.0f} MiB, "
            f"{seconds:,.0f} s ({n / seconds:,.0f} rows/s)"
        )
    return points


def evaluate_wall(extra: list[str]) -> dict:
    out = Path(tempfile.mkdtemp(prefix="detector-bench-eval-")) / "evaluation.json"
    command = [c.python(), "-m", "detector.cli", "evaluate", "--skab", str(DATA / "skab"), "--nab", str(DATA / "nab")]
    command += ["--out", str(out), *extra]
    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    done = subprocess.run(command, cwd=c.ROOT, capture_output=True, text=True, check=False)
    seconds, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)  # its worker processes included
    if done.returncode != 0:
        raise RuntimeError(f"detector evaluate failed: {done.stderr[-2000:]}")
    say("    " + "\n    ".join(done.stdout.strip().splitlines()))
    return {"seconds": seconds, "cpu_s": cpu, "command": " ".join(command[1:]), "printed": done.stdout}


def main() -> int:
    p = c.parser(__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=None, help="model directory (default: fit one now)")
    p.add_argument("--only", default="score,rss,evaluate", help="comma-separated subset of score,rss,evaluate")
    p.add_argument("--no-seeds", action="store_true", help="skip `detector evaluate --seeds 7,8,9`")
    args = p.parse_args()
    quick, chosen = args.quick, set(args.only.split(","))
    model_dir = args.model or (c.fit_default_model(max_epochs=3) if quick else c.fit_default_model())
    work = Path(tempfile.mkdtemp(prefix="detector-bench-offline-", dir="/tmp"))
    rows: list[Row] = []
    details: dict = {}
    say(f"== offline ({'quick' if quick else 'full'}): model {model_dir}, files in {work}")
    if "score" in chosen:
        single_rows = 20_000 if quick else 100_000
        single = rows_per_second(model_dir, work, 1, single_rows, 1_000)
        reference = lstm_reference(model_dir, single_rows)
        say(
            f"  single entity: {single['large']['rows']:,} rows in {single['large']['seconds']:.1f} s, "
            f"1,000 rows in {single['small']['seconds']:.1f} s: {single['rate']:,.0f} rows/s after start-up; "
            f"nn.LSTM forward over {single_rows:,} steps: {reference['seconds'] * 1000:.1f} ms "
            f"({reference['rate']:,.0f} steps/s)"
        )
        entities, per_entity = (200, 500) if quick else (1_000, 1_000)
        multi = rows_per_second(model_dir, work, entities, per_entity, 2)
        say(
            f"  multi-entity: {multi['large']['rows']:,} rows in {multi['large']['seconds']:.1f} s: "
            f"{multi['rate']:,.0f} rows/s after start-up"
        )
        details.update(single=single, reference=reference, multi=multi)
        rows += [
            Row(
                "offline",
                f"`detector score`, 1 entity x {single_rows:,} rows",
                f"{single['rate']:,.0f} rows/s",
                ">= 50,000 rows/s",
                c.verdict(single["rate"] >= 50_000),
                f"after start-up ({single['large']['seconds']:.1f} s for the file, "
                f"{single['small']['seconds']:.1f} s for 1,000 rows); {single['cpu_rate']:,.0f} rows per CPU-second",
            ),
            Row(
                "offline",
                f"reference: torch.nn.LSTM forward over {single_rows:,} steps",
                f"{reference['seconds'] * 1000:.1f} ms",
                "",
                "",
                f"{reference['rate']:,.0f} steps/s; input {reference['input']}, hidden {reference['hidden']}, 1 thread",
            ),
            Row(
                "offline",
                f"`detector score`, {entities:,} entities x {per_entity:,} rows",
                f"{multi['rate']:,.0f} rows/s",
                ">= 100,000 rows/s",
                c.verdict(multi["rate"] >= 100_000),
                f"after start-up ({multi['large']['seconds']:.1f} s for the file); "
                f"{multi['cpu_rate']:,.0f} rows per CPU-second",
            ),
        ]
    if "rss" in chosen:
        entities, sizes = (100, [1_000, 10_000]) if quick else (1_000, [1_000, 10_000])
        points = peak_rss(model_dir, work, entities, sizes)
        ratio = points[1]["peak_rss"] / points[0]["peak_rss"]
        details["rss"] = points
        rows.append(
            Row(
                "offline",
                f"peak RSS of `detector score`, {points[1]['rows']:,} vs {points[0]['rows']:,} rows",
                f"{ratio:.2f} x",
                "<= 1.5 x",
                c.verdict(ratio <= 1.5),
                f"{points[1]['peak_rss'] / 2**20:,.0f} vs {points[0]['peak_rss'] / 2**20:,.0f} MiB; "
                f"{entities:,} entities; "
                f"{points[1]['seconds']:,.0f} s for the larger file",
            )
        )
    if "evaluate" in chosen and not (DATA / "nab").is_dir():
        say(f"  `make evaluate` not measured: no benchmark data in {DATA} (set DETECTOR_SHARED_DATA)")
        rows.append(
            Row("offline", "`make evaluate` wall time", "not measured", "<= 90 s on 2 cores", "", f"no data in {DATA}")
        )
    elif "evaluate" in chosen:
        for label, extra, target in (
            ("`make evaluate`", [], 90.0),
            ("`detector evaluate --seeds 7,8,9`", ["--seeds", "7,8,9"], 300.0),
        ):
            if extra and args.no_seeds:
                continue
            extra = extra + (["--limit", "2"] if quick else [])
            say(f"  {label}{' --limit 2' if quick else ''} ...")
            result = evaluate_wall(extra)
            details.setdefault("evaluate", []).append(result)
            rows.append(
                Row(
                    "offline",
                    f"{label} wall time{' (--limit 2)' if quick else ''}",
                    f"{result['seconds']:.0f} s",
                    f"<= {target:.0f} s on 2 cores",
                    c.verdict(result["seconds"] <= target) if not quick else "",
                    f"{os.cpu_count()} CPUs, one process per core; {result['cpu_s']:.0f} CPU-seconds",
                )
            )
    c.emit(rows, args.json, details)
    return 0


if __name__ == "__main__":
    sys.exit(main())
