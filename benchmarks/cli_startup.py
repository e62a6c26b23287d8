"""Start-up time of the command line: `detector --help` and a start-up error, as a user waits for them.

Each command runs as a fresh process (the console script's interpreter, ``python -m detector.cli``)
``--repeat`` times (default 7, --quick 3); the table gives the median and the best wall time.
Two start-up errors: `detector fit` on a CSV file that does not exist (refused while the
arguments are parsed) and `detector run` with a list setting in the environment that is not
JSON (the settings are loaded, with pydantic); torch is never imported. The target is well
under a second for each.

    .venv/bin/python benchmarks/cli_startup.py [--quick] [--repeat N]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as c
from _common import Row, say

TARGET_S = 1.0


def wall_times(command: list[str], repeat: int, expected_code: int, environment: dict[str, str]) -> list[float]:
    """Wall seconds of ``repeat`` runs of ``command`` with ``environment`` added.

    Each run must exit with ``expected_code``."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        code = subprocess.run(
            command, cwd=c.ROOT, capture_output=True, check=False, env={**os.environ, **environment}
        ).returncode
        times.append(time.perf_counter() - started)
        if code != expected_code:
            raise SystemExit(f"{' '.join(command)} exited {code}, expected {expected_code}")
    return times


def main() -> int:
    p = c.parser(__doc__.split("\n")[0])
    p.add_argument("--repeat", type=int, default=None, help="runs per command (default 7, --quick 3)")
    args = p.parse_args()
    repeat = args.repeat or (3 if args.quick else 7)
    missing = Path(tempfile.mkdtemp(prefix="detector-bench-")) / "missing.csv"
    cli = [sys.executable, "-m", "detector.cli"]
    commands = {
        "`detector --help`": ([*cli, "--help"], 0, {}),
        "start-up error: `detector fit` on a missing file": (
            [*cli, "fit", "--data", str(missing), "--out", str(missing.parent / "m")],
            2,
            {},
        ),
        "start-up error: `detector run` with a bad setting": (
            [*cli, "run"],
            2,
            {"DETECTOR_KAFKA__INPUT_TOPICS": "sensors"},
        ),
    }
    rows, details = [], {}
    for label, (command, code, environment) in commands.items():
        times = wall_times(command, repeat, code, environment)
        details[label] = times
        median = statistics.median(times)
        say(f"{label}: median {median:.3f} s, best {min(times):.3f} s over {repeat} runs")
        rows.append(
            Row(
                "cli start-up",
                label,
                f"{median:.2f} s (best {min(times):.2f} s, {repeat} runs)",
                f"< {TARGET_S:.0f} s",
                c.verdict(median < TARGET_S),
                "fresh process each run",
            )
        )
    c.emit(rows, args.json, details)
    return 0


if __name__ == "__main__":
    sys.exit(main())
