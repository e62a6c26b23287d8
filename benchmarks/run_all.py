"""Run every benchmark in sequence and print one Markdown results table (``make bench``).

    .venv/bin/python benchmarks/run_all.py            # full run (~15-25 min on 2 idle cores)
    .venv/bin/python benchmarks/run_all.py --quick    # smoke test, small sizes (a few minutes)
    .venv/bin/python benchmarks/run_all.py --only throughput,memory

Each benchmark runs as its own process (memory needs a fresh one anyway), prints its details as it
goes, and hands its rows back as JSON. The model is fitted once, like `detector fit` with default
settings on generate_history(20, 400) (--quick: 3 epochs), and shared.

The table is written to benchmarks/results.md (--quick: benchmarks/results-quick.md, so a smoke
test never overwrites full results; --out to choose). Figures depend on the machine and on what
else runs on it: the header records the CPU count and load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import _common as c
from _common import Row

SCRIPTS = {
    "throughput": ("throughput.py", True),  # (file, takes --model)
    "memory": ("memory.py", True),
    "fit": ("fit_bench.py", False),
    "offline": ("offline.py", True),
    "profile": ("profile_hot_path.py", True),
    "cli": ("cli_startup.py", False),
}


def git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=c.ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=c.ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return rev + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("--only", default=",".join(SCRIPTS), help=f"comma-separated subset of {','.join(SCRIPTS)}")
    parser.add_argument("--out", type=Path, default=None, help="where to write the Markdown table")
    args = parser.parse_args()
    out = args.out or c.BENCH_DIR / ("results-quick.md" if args.quick else "results.md")
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in SCRIPTS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(SCRIPTS)}")

    started_at, started, load_before = datetime.now(UTC), time.perf_counter(), load()
    work = Path(tempfile.mkdtemp(prefix="detector-bench-"))
    rows: list[Row] = []
    durations: dict[str, float] = {}
    model_dir = None
    if any(SCRIPTS[name][1] for name in chosen):
        c.say(f"== fitting the shared model (`detector fit` defaults{', 3 epochs' if args.quick else ''}) ...")
        t = time.perf_counter()
        model_dir = c.fit_default_model(work / "model", **({"max_epochs": 3} if args.quick else {}))
        durations["model fit"] = time.perf_counter() - t
    for name in chosen:
        script, takes_model = SCRIPTS[name]
        result = work / f"{name}.json"
        command = [sys.executable, str(c.BENCH_DIR / script), "--json", str(result)]
        if args.quick:
            command.append("--quick")
        if takes_model and model_dir is not None:
            command += ["--model", str(model_dir)]
        c.say(f"\n######## {name}: {' '.join(command[1:])}  (load average {load()})")
        t = time.perf_counter()
        code = subprocess.run(command, cwd=c.ROOT, check=False).returncode
        durations[name] = time.perf_counter() - t
        if code != 0 or not result.exists():
            rows.append(Row(name, "(benchmark failed)", f"exit code {code}", "", "failed", "see its output above"))
            continue
        rows.extend(Row(**r) for r in json.loads(result.read_text())["rows"])

    total = time.perf_counter() - started
    header = [
        f"# Benchmark results{' (quick run: small sizes, smoke test only)' if args.quick else ''}",
        "",
        f"- {started_at:%Y-%m-%d %H:%M} UTC, revision {git_revision()}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, load average {load_before} before / {load()} after",
        "- durations: " + ", ".join(f"{k} {v:.0f} s" for k, v in durations.items()) + f"; total {total / 60:.1f} min",
        "- command: `.venv/bin/python benchmarks/run_all.py"
        + (" --quick" if args.quick else "")
        + "`; details of each figure in the scripts' docstrings",
        "",
        "",
    ]
    text = "\n".join(header) + c.markdown_table(rows) + "\n"
    out.write_text(text)
    print("\n" + text)
    print(f"(written to {out})")
    return 0 if not any(r.status == "failed" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
