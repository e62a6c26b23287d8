"""The README's quick start, walked command by command: its ```sh blocks run as one shell script.

The script runs from the repository root, as a reader who cloned it would, with the broker on a
free port and the metrics on any port (environment settings the commands already honour), so it
can run next to other tests. The README and this test cannot drift: the commands come from the
README itself.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from detector.broker import free_port
from detector.testing import FAST_GROUP

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Quick start"

pytestmark = pytest.mark.kafka


def quickstart_commands(readme: str) -> list[str]:
    """The ```sh blocks of the README's quick-start section, in order."""
    start = readme.index(f"\n{SECTION}\n")
    following = readme.find("\n## ", start + 1)
    section = readme[start : following if following != -1 else len(readme)]
    return re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)


def test_the_quick_start_has_every_step_of_the_newcomers_path():
    script = "\n".join(quickstart_commands((ROOT / "README.md").read_text()))
    for step in (
        "make setup",
        "detector fit",
        "detector score",
        "scores.csv",
        "detector broker",
        "detector send",
        "detector run",
        "detector read",
    ):
        assert step in script, step


def test_the_quick_start_runs_as_written(tmp_path: Path):
    blocks = quickstart_commands((ROOT / "README.md").read_text())
    script = "\n".join(["set -euo pipefail", "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT", *blocks, "wait"])
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DETECTOR_")}
    environment.update(
        {
            "DETECTOR_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
            "DETECTOR_METRICS__PORT": "0",
            **FAST_GROUP,
            "DETECTOR_LOG__FORMAT": "json",
            "TMPDIR": str(tmp_path),
        }
    )
    done = subprocess.run(
        ["bash", "-c", script], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    out = done.stdout
    assert re.search(
        r"^scored 360 rows of today\.csv -> scores\.csv: \d+ anomalous, [1-9]\d* alerts opened$", out, re.MULTILINE
    ), out
    assert re.search(r",pump-1,[^\n]*,open\r?$", out, re.MULTILINE), "the score finds the fault in pump-1"
    assert "sent 360 messages from today.csv" in out
    alerts = [line for line in out.splitlines() if line.startswith('{"type":"anomaly_alert"')]
    assert len(alerts) == 2 and '"state":"open"' in alerts[0] and '"state":"close"' in alerts[1], out
    assert '"entity":"pump-1"' in alerts[0] and '"expected":' in alerts[0] and '"duration_s":' in alerts[1]
