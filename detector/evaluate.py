"""``detector evaluate``: fit and score public benchmarks with their standard protocols.

* SKAB (outlier detection): per file, fit on the first 400 rows, score the whole file as a
  stream, and pool the test rows' ``is_anomaly`` decisions: F1, FAR, MAR.
* NAB v1.1: per file, fit on the probationary period (first 15%, at most 750 rows), score the
  whole file as a stream; NAB score per profile, both with the threshold on ``probability``
  optimised over the corpus (as NAB's scoreboard does) and from ``is_anomaly`` as is.

A fit on a few hundred rows depends on its random seed (NAB's optimised score moves by about
two points between seeds 7, 8 and 9), so a change is judged over several seeds:
:func:`evaluate_seeds` runs the protocols once per seed and adds the mean.

>>> results = {"skab": evaluate_skab(Path("../shared/data/skab"), load_settings(None))}  # doctest: +SKIP
>>> over_seeds = evaluate_seeds(load_settings(None), [7, 8, 9], nab=Path("../shared/data/nab"))  # doctest: +SKIP
>>> over_seeds["mean"]["nab"]["profiles"]["standard"]["optimised"]  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from detector.benchmark import (
    NabFile,
    Window,
    load_profiles,
    load_windows,
    optimise_threshold,
    probationary_rows,
    score_from_decisions,
    skab_metrics,
)
from detector.config import Settings
from detector.fit import fit_tables
from detector.logs import get_logger
from detector.schema import Table, observations_from_table, parse_timestamp, read_csv
from detector.scoring import Decision, Detector

__all__ = ["evaluate", "evaluate_nab", "evaluate_seeds", "evaluate_skab", "print_results", "write_results"]

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
    for name in _nab_files(windows, limit):
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


def evaluate(
    settings: Settings, skab: Path | None = None, nab: Path | None = None, limit: int | None = None
) -> dict[str, Any]:
    """The protocols of the benchmarks given, with ``settings``: ``{"skab": ..., "nab": ...}``."""
    results: dict[str, Any] = {}
    if skab:
        results["skab"] = evaluate_skab(skab, settings, limit=limit)
    if nab:
        results["nab"] = evaluate_nab(nab, settings, limit=limit)
    return results


def evaluate_seeds(
    settings: Settings,
    seeds: Sequence[int],
    skab: Path | None = None,
    nab: Path | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """:func:`evaluate` once per fit seed: ``{"seeds": {seed: results}, "mean": results}``, where
    the mean holds the average of every figure (SKAB F1/FAR/MAR, NAB optimised and as is)."""
    runs = {}
    for seed in seeds:
        seeded = settings.model_copy(update={"fit": settings.fit.model_copy(update={"seed": seed})})
        runs[str(seed)] = evaluate(seeded, skab, nab, limit)
        log.info("evaluate.seed", seed=seed)
    return {"seeds": runs, "mean": _mean_results(list(runs.values()))}


def _mean_results(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures :func:`print_results` shows, averaged over ``runs`` (no threshold: each run has its own)."""
    mean: dict[str, Any] = {}
    if "skab" in runs[0]:
        pooled = {key: float(np.mean([r["skab"]["pooled"][key] for r in runs])) for key in ("f1", "far", "mar")}
        mean["skab"] = {"files": runs[0]["skab"]["files"], "pooled": pooled}
    if "nab" in runs[0]:
        profiles = {
            name: {
                key: float(np.mean([r["nab"]["profiles"][name][key] for r in runs])) for key in ("optimised", "as_is")
            }
            for name in runs[0]["nab"]["profiles"]
        }
        mean["nab"] = {"files": runs[0]["nab"]["files"], "profiles": profiles}
    return mean


def print_results(results: dict[str, Any]) -> None:
    """Print the evaluation table (what the README shows); per seed and their mean for the
    results of :func:`evaluate_seeds`."""
    if "seeds" in results:
        for seed, run in results["seeds"].items():
            print(f"fit seed {seed}")
            print_results(run)
        print(f"mean over seeds {', '.join(results['seeds'])}")
        print_results(results["mean"])
        return
    if "skab" in results:
        pooled = results["skab"]["pooled"]
        print(
            f"SKAB ({results['skab']['files']} files): F1 {pooled['f1']:.2f}  FAR {pooled['far']:.2f}%  MAR {pooled['mar']:.2f}%"
        )
    if "nab" in results:
        print(f"NAB ({results['nab']['files']} files)    optimised threshold    is_anomaly as is")
        for name, row in results["nab"]["profiles"].items():
            at = f"(p>={row['threshold']:.4f})" if "threshold" in row else " " * 11
            print(f"  {name:<20} {row['optimised']:8.1f} {at} {row['as_is']:10.1f}")


def write_results(results: dict[str, Any], path: Path) -> None:
    """Write the results as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=float))


def _nab_files(windows: dict[str, list[Window]], limit: int | None) -> list[str]:
    """Every file, or with ``limit`` the first that many with a labelled window (the NAB score of
    files without any is undefined: a quick check on the first files would have none).

    >>> day = (datetime(2014, 4, 10), datetime(2014, 4, 11))
    >>> _nab_files({"b.csv": [], "a.csv": [], "c.csv": [day]}, 1), _nab_files({"b.csv": [], "a.csv": [day]}, None)
    (['c.csv'], ['a.csv', 'b.csv'])
    """
    names = sorted(windows)
    return names if limit is None else [name for name in names if windows[name]][:limit]


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
