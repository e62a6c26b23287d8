"""``detector evaluate``: fit and score public benchmarks with their standard protocols.

* SKAB (outlier detection): per file, fit on the first 400 rows, score the whole file as a
  stream, and pool the test rows' ``is_anomaly`` decisions: F1, FAR, MAR.
* NAB v1.1: per file, fit on the probationary period (first 15%, at most 750 rows), score the
  whole file as a stream; NAB score per profile, both with the threshold on ``probability``
  optimised over the corpus (as NAB's scoreboard does) and from ``is_anomaly`` as is.

>>> results = {"skab": evaluate_skab(Path("../shared/data/skab"), load_settings(None))}  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from detector.benchmark import NabFile, load_profiles, load_windows, optimise_threshold, probationary_rows, score_from_decisions, skab_metrics
from detector.config import Settings
from detector.fit import fit_tables
from detector.logs import get_logger
from detector.schema import Table, observations_from_table, parse_timestamp, read_csv
from detector.scoring import Decision, Detector

__all__ = ["evaluate_nab", "evaluate_skab", "print_results", "write_results"]

log = get_logger(__name__)
SKAB_TRAIN_ROWS = 400
_SKAB_LABELS = ("anomaly", "changepoint")


def fit_and_score(table: Table, train_rows: int, settings: Settings) -> list[Decision]:
    """Fit on the first ``train_rows`` rows, then score every row in order (the service's path)."""
    model, _ = fit_tables([_head(table, train_rows)], settings.model, settings.fit, settings.scoring, progress=False)
    return Detector(model).process(list(observations_from_table(table)))


def evaluate_skab(directory: Path, settings: Settings, limit: int | None = None) -> dict[str, Any]:
    """SKAB outlier-detection protocol over every labelled file under ``directory``."""
    truth, predicted, per_file = [], [], {}
    for path in _skab_files(directory)[:limit]:
        table, labels = _read_skab(path)
        decisions = fit_and_score(table, SKAB_TRAIN_ROWS, settings)
        flags = np.array([d.is_anomaly for d in decisions[SKAB_TRAIN_ROWS:]], dtype=int)
        truth.append(labels[SKAB_TRAIN_ROWS:])
        predicted.append(flags)
        per_file[str(path.relative_to(directory))] = asdict(skab_metrics(labels[SKAB_TRAIN_ROWS:], flags))
        log.info("evaluate.skab.file", file=path.name, f1=round(per_file[str(path.relative_to(directory))]["f1"], 3))
    pooled = skab_metrics(np.concatenate(truth), np.concatenate(predicted))
    return {"files": len(per_file), "pooled": asdict(pooled), "per_file": per_file}


def evaluate_nab(directory: Path, settings: Settings, limit: int | None = None) -> dict[str, Any]:
    """NAB v1.1 protocol over every labelled data file under ``directory``."""
    windows = load_windows(directory / "labels" / "combined_windows.json")
    profiles = load_profiles(directory / "config" / "profiles.json")
    by_probability, by_decision = {}, {}
    for name in sorted(windows)[:limit]:
        table = read_csv(directory / "data" / name)
        decisions = fit_and_score(table, probationary_rows(len(table.timestamps)), settings)
        stamps = [datetime.fromisoformat(t) for t in table.raw_timestamps]
        by_probability[name] = NabFile(stamps, [d.probability for d in decisions], windows[name])
        by_decision[name] = NabFile(stamps, [float(d.is_anomaly) for d in decisions], windows[name])
        log.info("evaluate.nab.file", file=name, alerts=int(sum(d.is_anomaly for d in decisions)))
    results: dict[str, Any] = {"files": len(by_probability), "profiles": {}}
    for profile_name, profile in profiles.items():
        threshold, optimised = optimise_threshold(by_probability, profile)
        results["profiles"][profile_name] = {
            "optimised": optimised,
            "threshold": threshold,
            "as_is": score_from_decisions(by_decision, profile),
        }
    return results


def print_results(results: dict[str, Any]) -> None:
    """Print the evaluation table (what the README shows)."""
    if "skab" in results:
        pooled = results["skab"]["pooled"]
        print(f"SKAB ({results['skab']['files']} files): F1 {pooled['f1']:.2f}  FAR {pooled['far']:.2f}%  MAR {pooled['mar']:.2f}%")
    if "nab" in results:
        print(f"NAB ({results['nab']['files']} files)    optimised threshold    is_anomaly as is")
        for name, row in results["nab"]["profiles"].items():
            print(f"  {name:<20} {row['optimised']:8.1f} (p>={row['threshold']:.4f}) {row['as_is']:10.1f}")


def write_results(results: dict[str, Any], path: Path) -> None:
    """Write the results as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=float))


def _head(table: Table, rows: int) -> Table:
    entities = table.entities[:rows] if table.entities is not None else None
    return Table(table.timestamps[:rows], table.raw_timestamps[:rows], entities, table.features, table.values[:rows])


def _skab_files(directory: Path) -> list[Path]:
    files = [p for p in directory.rglob("*.csv") if p.parent.name != "anomaly-free"]
    return sorted(files, key=lambda p: (str(p.parent), int(p.stem) if p.stem.isdigit() else p.stem))


def _read_skab(path: Path) -> tuple[Table, np.ndarray]:
    """A SKAB file (';'-separated, CRLF) as a contract table plus its ``anomaly`` labels."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle, delimiter=";"))
    header, body = rows[0], [r for r in rows[1:] if r]
    features = [c for c in header[1:] if c not in _SKAB_LABELS]
    columns = [header.index(c) for c in features]
    values = np.array([[float(r[c]) for c in columns] for r in body])
    raw = [r[0] for r in body]
    labels = np.array([int(float(r[header.index("anomaly")])) for r in body])
    return Table([parse_timestamp(t) for t in raw], raw, None, features, values), labels
