"""Streaming throughput of several code revisions, side by side on one broker and one workload.

For finding a throughput regression: each revision is a checkout of its own (a `git worktree`
or a clone), fits its own model with its own code (model formats change between revisions), and
runs `detector run` on the same 500,000 produced messages, the revisions taking turns so that a
change in the machine's load touches them all alike. Per run it prints the rate at the default
batch settings and/or at a batch of one message (the fixed cost per batch), with the service's
CPU use and the share of wall time in ``Detector.process``, measured as ``throughput.py`` does.

    git worktree add /tmp/rev-old a6e40f6
    nice -n 0 .venv/bin/python benchmarks/compare_revisions.py old=/tmp/rev-old new=. --naive 15 --repeat 2

A revision is ``LABEL=DIR`` (run with this interpreter and ``PYTHONPATH=DIR``) or
``LABEL=DIR:PYTHON`` (a checkout with a virtual environment of its own). A profile of one run
(e.g. ``py-spy record --gil``) shows where the time goes; see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import throughput as t
from _common import say


@dataclass
class Revision:
    label: str
    directory: Path
    python: str
    model: Path | None = None

    @classmethod
    def parse(cls, text: str) -> Revision:
        label, _, rest = text.partition("=")
        directory, _, python = rest.partition(":")
        if not label or not directory:
            raise SystemExit(f"error: a revision is LABEL=DIR[:PYTHON], not {text!r}")
        return cls(label, Path(directory).resolve(), python or sys.executable)

    def fit(self) -> None:
        """Fit the default benchmark model with this revision's own code."""
        code = (
            f"import sys; sys.path.insert(0, {str(self.directory / 'benchmarks')!r}); import _common, detector; "
            "model = _common.fit_default_model(); print('@package', detector.__file__); print('@model', model)"
        )
        out = subprocess.run(
            [self.python, "-c", code],
            env={**os.environ, "PYTHONPATH": str(self.directory)},
            cwd=tempfile.gettempdir(),
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            raise SystemExit(f"error: fitting with {self.label} failed:\n{out.stderr[-2000:]}")
        said = dict(line.split(" ", 1) for line in out.stdout.splitlines() if line.startswith("@"))
        package, model = said["@package"], said["@model"]
        if not Path(package).resolve().is_relative_to(self.directory):
            raise SystemExit(f"error: {self.label} imported {package}, not the package under {self.directory}")
        self.model = Path(model)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("revisions", nargs="+", metavar="LABEL=DIR[:PYTHON]")
    p.add_argument("--naive", type=float, default=15.0, help="seconds of batch-of-one runs (0: none)")
    p.add_argument("--no-default", action="store_true", help="skip the runs at the default batch settings")
    p.add_argument("--repeat", type=int, default=2, help="rounds of every revision, taking turns")
    p.add_argument("--entities", type=int, default=10_000)
    p.add_argument("--per-entity", type=int, default=50)
    args = p.parse_args()
    revisions = [Revision.parse(text) for text in args.revisions]
    # `python -m` puts the working directory before PYTHONPATH: run from one without a package
    os.chdir(tempfile.gettempdir())
    for revision in revisions:
        revision.fit()
        say(f"{revision.label}: {revision.directory} ({revision.python}); model {revision.model}")
    runs: list[tuple[str, dict[str, str], float | None]] = []
    if not args.no_default:
        runs.append(("default", {}, None))
    if args.naive > 0:
        runs.append(("batch of 1", {"DETECTOR_STREAM__BATCH_MAX_MESSAGES": "1"}, args.naive))

    from detector.broker import create_topics, start_broker

    log_dir = Path(tempfile.mkdtemp(prefix="detector-compare-logs-"))
    results: list[tuple[str, str, int, dict]] = []
    with start_broker() as broker:
        topic = "sensors-compare"
        create_topics(broker.bootstrap_servers, [topic], t.PARTITIONS)
        n, seconds, _ = t.produce_workload(broker.bootstrap_servers, topic, t.workload(args.entities, args.per_entity))
        say(f"produced {n:,} messages in {seconds:.1f} s; service logs in {log_dir}")
        for round_ in range(args.repeat):
            for revision in revisions:
                assert revision.model is not None
                for name, extra, limit in runs:
                    r = t.run_services(
                        broker,
                        revision.model,
                        topic,
                        n,
                        {**extra, "PYTHONPATH": str(revision.directory)},
                        log_dir,
                        time_limit_s=limit,
                        python=revision.python,
                        idle_s=t.IDLE_S if limit is None else 0.0,
                    )
                    results.append((revision.label, name, round_, r))
                    t.describe(f"{revision.label}, {name}, round {round_ + 1}", r)
    say("\n| revision | settings | round | msg/s | service CPU (cores) | Detector.process share | CPU idle after |")
    say("|---|---|---|---|---|---|---|")
    for label, name, round_, r in results:
        cpu = "+".join(f"{x:.2f}" for x in r.get("service_cpu", []))
        idle = "+".join(f"{x:.2f}" for x in r.get("idle_cpu") or [])
        share = r.get("step_share", float("nan"))
        say(f"| {label} | {name} | {round_ + 1} | {r['rate']:,.0f} | {cpu} | {share:.2f} | {idle} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
