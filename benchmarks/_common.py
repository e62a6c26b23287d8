"""Helpers shared by the benchmark scripts (not a test suite: they print figures, never assert)."""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import sys
import tempfile
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
PAGE = os.sysconf("SC_PAGE_SIZE")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Row:
    """One line of the results table."""

    benchmark: str
    measure: str
    value: str
    target: str = ""
    status: str = ""  # "met" / "not met" / "" (informational)
    note: str = ""


def verdict(ok: bool) -> str:
    return "met" if ok else "not met"


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke test (< 2 min)")
    p.add_argument("--json", type=Path, default=None, help="also write the result rows here (used by run_all.py)")
    return p


def emit(rows: list[Row], json_path: Path | None, extra: dict | None = None) -> None:
    """Print the rows and, if asked, write them (plus ``extra`` details) as JSON."""
    print()
    print(markdown_table(rows))
    if json_path is not None:
        json_path.write_text(
            json.dumps({"rows": [asdict(r) for r in rows], "details": extra or {}}, indent=2, default=str)
        )


def markdown_table(rows: list[Row]) -> str:
    lines = ["| benchmark | measure | value | target | status | note |", "|---|---|---|---|---|---|"]
    for r in rows:
        cells = [r.benchmark, r.measure, r.value, r.target, r.status, r.note]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def say(*parts: object) -> None:
    print(*parts, flush=True)


# --- process figures --------------------------------------------------------------------------


def rss_bytes(pid: int | str = "self") -> int:
    """Current resident set size (from /proc/<pid>/statm)."""
    with open(f"/proc/{pid}/statm") as handle:
        return int(handle.read().split()[1]) * PAGE


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (ru_maxrss, KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` (its threads included)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    except (OSError, IndexError, ValueError):
        return float("nan")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- models -------------------------------------------------------------------------------------


def history_table(entities: int = 20, rows: int = 400, seed: int = 1):
    """generate_history as a :class:`detector.schema.Table` (what `detector fit` reads from CSV)."""
    from detector.demo import FEATURES, generate_history
    from detector.schema import Table

    messages = generate_history(entities=entities, rows=rows, seed=seed)
    return Table(
        timestamps=[m.timestamp for m in messages],
        raw_timestamps=[f"{m.timestamp:.3f}" for m in messages],
        entities=[m.entity for m in messages],
        features=list(FEATURES),
        values=np.asarray([m.values for m in messages], dtype=np.float64),
    )


def fit_default_model(directory: Path | None = None, **fit_overrides: object) -> Path:
    """`detector fit` with default settings on generate_history(20, 400); returns the model directory."""
    from detector.config import load_settings
    from detector.fit import fit_tables, write_model

    settings = load_settings(None, fit={"report": False, **fit_overrides})
    directory = directory or Path(tempfile.mkdtemp(prefix="detector-bench-model-"))
    model, history = fit_tables([history_table()], settings.model, settings.fit, settings.scoring, progress=False)
    write_model(model, history, directory, report=False)
    return directory


# --- Prometheus text ----------------------------------------------------------------------------


def scrape(port: int, timeout: float = 2.0) -> dict[str, float] | None:
    """Samples of the service's /metrics as {'name{labels}': value}; None if it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as response:
            text = response.read().decode()
    except OSError:
        return None
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            samples[name] = float(value)
        except ValueError:
            continue
    return samples


def scored(samples: dict[str, float] | None) -> float:
    return (samples or {}).get('detector_messages_total{outcome="scored"}', 0.0)


def histogram(samples: dict[str, float], name: str) -> list[tuple[float, float]]:
    """Cumulative buckets [(le, count)] of a label-less histogram, sorted by le (+Inf last)."""
    prefix = f'{name}_bucket{{le="'
    buckets = []
    for key, value in samples.items():
        if key.startswith(prefix):
            le = key[len(prefix) : -2]
            buckets.append((float("inf") if le == "+Inf" else float(le), value))
    return sorted(buckets)


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket holding rank q*total."""
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return float("nan")
    rank, lower, below = q * total, 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return lower  # Prometheus returns the upper bound of the last finite bucket
            return lower + (le - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = le, count
    return lower


def fmt_int(x: float) -> str:
    return f"{x:,.0f}"


def python() -> str:
    return sys.executable


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far, from /proc/stat (all cores)."""
    with open("/proc/stat") as handle:
        fields = [int(x) for x in handle.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])
    return total - idle, total


def machine_busy(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Cores' worth of CPU the whole machine used between two machine_jiffies() readings."""
    busy, total = after[0] - before[0], after[1] - before[1]
    return (os.cpu_count() or 1) * busy / total if total > 0 else float("nan")
