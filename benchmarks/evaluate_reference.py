"""Per-row outcomes of ``detector evaluate``, to prove a change leaves its results alone.

    python benchmarks/evaluate_reference.py dump OUT_DIR      # fit (seed 7) and score every file
    python benchmarks/evaluate_reference.py compare BEFORE AFTER

``dump`` writes each file's per-row score, probability, is_anomaly and event (``fNNN.npz``), its
fitted model (``models/fNNN``) and the evaluation results; ``compare`` prints the largest
probability difference, how many probabilities are not bit-identical, and how many decisions
and events differ.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

import detector.evaluate as evaluate
from detector.config import Settings, load_settings
from detector.fit import fit_tables
from detector.model import save_model
from detector.schema import Table
from detector.scoring import Detector, Outcomes

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def dump(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    files = iter(range(1_000_000))

    def fit_and_score(table: Table, train_rows: int, settings: Settings) -> Outcomes:
        """``evaluate.fit_and_score``, keeping each file's model and per-row outcomes."""
        name = f"f{next(files):03d}"
        head = evaluate._head(table, train_rows)
        model, _ = fit_tables([head], settings.model, settings.fit, settings.scoring, progress=False)
        save_model(model, out / "models" / name)
        outcomes = Detector(model).process_columns(table.columns())
        np.savez(
            out / f"{name}.npz",
            score=outcomes.score.copy(),
            probability=outcomes.probability.copy(),
            is_anomaly=outcomes.is_anomaly.copy(),
            events=np.array([str(event) for event in outcomes.events]),
        )
        return outcomes

    evaluate.fit_and_score = fit_and_score
    # one process: worker processes would import the unpatched fit_and_score
    results = evaluate.evaluate(load_settings(None), skab=DATA / "skab", nab=DATA / "nab", workers=1)
    (out / "results.json").write_text(json.dumps(results, default=float, indent=1))


def compare(before: Path, after: Path) -> dict[str, Any]:
    worst, rows, not_bitwise, flips, events = 0.0, 0, 0, 0, 0
    for path in sorted(before.glob("f*.npz")):
        old, new = np.load(path), np.load(after / path.name)
        worst = max(worst, float(np.abs(old["probability"] - new["probability"]).max()))
        rows += len(old["probability"])
        not_bitwise += int((old["probability"] != new["probability"]).sum())
        flips += int((old["is_anomaly"] != new["is_anomaly"]).sum())
        events += int((old["events"] != new["events"]).sum())
    old_results, new_results = (json.loads((d / "results.json").read_text()) for d in (before, after))
    return {
        "rows": rows,
        "max_probability_difference": worst,
        "probabilities_not_bit_identical": not_bitwise,
        "is_anomaly_differences": flips,
        "event_differences": events,
        "scores_identical": _without_thresholds(old_results) == _without_thresholds(new_results),
    }


def _without_thresholds(results: Any) -> Any:
    """The evaluation results without NAB's optimised thresholds (probabilities, not scores)."""
    if isinstance(results, dict):
        return {key: _without_thresholds(value) for key, value in results.items() if key != "threshold"}
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("dump", help="fit (seed 7) and score every file into OUT").add_argument("out", type=Path)
    differences = commands.add_parser("compare", help="how two dumps differ")
    differences.add_argument("before", type=Path)
    differences.add_argument("after", type=Path)
    args = parser.parse_args(argv)
    if args.command == "dump":
        dump(args.out)
    else:
        print(json.dumps(compare(args.before, args.after), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
