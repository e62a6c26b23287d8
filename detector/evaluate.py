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
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

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
from detector.logs import configure_logging, get_logger
from detector.schema import Table, parse_timestamp, read_csv
from detector.scoring import Detector, Outcomes

__all__ = [
    "FileJob",
    "FileOutcome",
    "evaluate",
    "evaluate_nab",
    "evaluate_seeds",
    "evaluate_skab",
    "print_results",
    "run_jobs",
    "write_results",
]

log = get_logger(__name__)
SKAB_TRAIN_ROWS = 400
_SKAB_LABELS = ("anomaly", "changepoint")


def fit_and_score(table: Table, train_rows: int, settings: Settings) -> Outcomes:
    """Fit on the first ``train_rows`` rows, then score every row in order in one call (the
    service's scoring, its entities' states carried from row to row)."""
    model, _ = fit_tables([_head(table, train_rows)], settings.model, settings.fit, settings.scoring, progress=False)
    return Detector(model).process_columns(table.columns())


@dataclass(frozen=True)
class FileJob:
    """One file of one benchmark, fitted with one seed: the unit of work a process takes."""

    benchmark: Literal["skab", "nab"]
    path: Path
    seed: int


@dataclass(frozen=True)
class FileOutcome:
    """What the protocols need of a scored file: each row's probability and decision."""

    probability: np.ndarray
    is_anomaly: np.ndarray


def score_job(job: FileJob, settings: Settings) -> FileOutcome:
    """Read, fit and score the file of ``job`` with its seed (see the module docstring)."""
    seeded = settings.model_copy(update={"fit": settings.fit.model_copy(update={"seed": job.seed})})
    if job.benchmark == "skab":
        table, train_rows = _read_skab(job.path)[0], SKAB_TRAIN_ROWS
    else:
        table = read_csv(job.path)
        train_rows = probationary_rows(len(table.timestamps))
    outcomes = fit_and_score(table, train_rows, seeded)
    return FileOutcome(outcomes.probability.copy(), outcomes.is_anomaly.copy())


def run_jobs(jobs: Sequence[FileJob], settings: Settings, workers: int | None = None) -> dict[FileJob, FileOutcome]:
    """Every job's outcome, the jobs spread over ``workers`` processes (default: one per core
    this process may use), each with one torch thread. A fit is seeded per file, so the outcomes
    are those of running the jobs one after the other in one process (``workers=1`` does that)."""
    workers = min(workers or len(os.sched_getaffinity(0)), len(jobs))
    if workers <= 1:
        return {job: score_job(job, settings) for job in jobs}
    largest_first = sorted(jobs, key=lambda job: -job.path.stat().st_size)  # the long files do not finish last
    with ProcessPoolExecutor(
        workers,
        mp_context=get_context("spawn"),
        initializer=_start_worker,
        initargs=(settings.log.level, settings.log.format),
    ) as pool:
        outcomes = pool.map(score_job, largest_first, [settings] * len(largest_first))
        return dict(zip(largest_first, outcomes, strict=True))


def _start_worker(log_level: str, log_format: str) -> None:
    """A worker process: one torch thread (the processes share the cores), the parent's logging."""
    torch.set_num_threads(1)
    configure_logging(log_level, log_format)


def evaluate_skab(
    directory: Path, settings: Settings, limit: int | None = None, outcomes: dict[FileJob, FileOutcome] | None = None
) -> dict[str, Any]:
    """SKAB outlier-detection protocol over every labelled file under ``directory`` (``outcomes``:
    those already computed by :func:`run_jobs`, else each file is scored here)."""
    truth, predicted, per_file = [], [], {}
    for path in _skab_files(directory)[:limit]:
        job = FileJob("skab", path, settings.fit.seed)
        outcome = outcomes[job] if outcomes is not None else score_job(job, settings)
        labels = _read_skab(path)[1]
        flags = outcome.is_anomaly[SKAB_TRAIN_ROWS:].astype(int)
        truth.append(labels[SKAB_TRAIN_ROWS:])
        predicted.append(flags)
        name = str(path.relative_to(directory))
        per_file[name] = asdict(skab_metrics(labels[SKAB_TRAIN_ROWS:], flags))
        log.info("evaluate.skab.file", file=path.name, f1=round(per_file[name]["f1"], 3))
    pooled = skab_metrics(np.concatenate(truth), np.concatenate(predicted))
    return {"files": len(per_file), "pooled": asdict(pooled), "per_file": per_file}


def evaluate_nab(
    directory: Path, settings: Settings, limit: int | None = None, outcomes: dict[FileJob, FileOutcome] | None = None
) -> dict[str, Any]:
    """NAB v1.1 protocol over every labelled data file under ``directory`` (``outcomes``: as
    :func:`evaluate_skab`'s)."""
    windows = load_windows(directory / "labels" / "combined_windows.json")
    profiles = load_profiles(directory / "config" / "profiles.json")
    by_probability, by_decision = {}, {}
    for name in _nab_files(windows, limit):
        job = FileJob("nab", directory / "data" / name, settings.fit.seed)
        outcome = outcomes[job] if outcomes is not None else score_job(job, settings)
        stamps = [datetime.fromisoformat(t) for t in read_csv(job.path).raw_timestamps]
        by_probability[name] = NabFile(stamps, outcome.probability.tolist(), windows[name])
        by_decision[name] = NabFile(stamps, outcome.is_anomaly.astype(float).tolist(), windows[name])
        log.info("evaluate.nab.file", file=name, alerts=int(outcome.is_anomaly.sum()))
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
    settings: Settings,
    skab: Path | None = None,
    nab: Path | None = None,
    limit: int | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """The protocols of the benchmarks given, with ``settings``: ``{"skab": ..., "nab": ...}``;
    the files are scored in ``workers`` processes (see :func:`run_jobs`)."""
    outcomes = run_jobs(_jobs(settings.fit.seed, skab, nab, limit), settings, workers)
    return _protocols(settings, skab, nab, limit, outcomes)


def evaluate_seeds(
    settings: Settings,
    seeds: Sequence[int],
    skab: Path | None = None,
    nab: Path | None = None,
    limit: int | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """:func:`evaluate` once per fit seed: ``{"seeds": {seed: results}, "mean": results}``, where
    the mean holds the average of every figure (SKAB F1/FAR/MAR, NAB optimised and as is). The
    files of every seed share one pool of ``workers`` processes."""
    jobs = [job for seed in seeds for job in _jobs(seed, skab, nab, limit)]
    outcomes = run_jobs(jobs, settings, workers)
    runs = {}
    for seed in seeds:
        seeded = settings.model_copy(update={"fit": settings.fit.model_copy(update={"seed": seed})})
        runs[str(seed)] = _protocols(seeded, skab, nab, limit, outcomes)
        log.info("evaluate.seed", seed=seed)
    return {"seeds": runs, "mean": _mean_results(list(runs.values()))}


def _jobs(seed: int, skab: Path | None, nab: Path | None, limit: int | None) -> list[FileJob]:
    """The files the protocols score, as jobs with fit seed ``seed``."""
    jobs = [FileJob("skab", path, seed) for path in (_skab_files(skab)[:limit] if skab else [])]
    if nab:
        windows = load_windows(nab / "labels" / "combined_windows.json")
        jobs += [FileJob("nab", nab / "data" / name, seed) for name in _nab_files(windows, limit)]
    return jobs


def _protocols(
    settings: Settings, skab: Path | None, nab: Path | None, limit: int | None, outcomes: dict[FileJob, FileOutcome]
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    if skab:
        results["skab"] = evaluate_skab(skab, settings, limit, outcomes)
    if nab:
        results["nab"] = evaluate_nab(nab, settings, limit, outcomes)
    return results


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
            f"SKAB ({results['skab']['files']} files): "
            f"F1 {pooled['f1']:.2f}  FAR {pooled['far']:.2f}%  MAR {pooled['mar']:.2f}%"
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
