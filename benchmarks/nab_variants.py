"""Judge scoring variants on NAB and SKAB over several fit seeds: fit once, replay the stages.

A scoring setting decides what to do with the network's output, so a variant of it needs no
refit. Each file of both benchmarks is fitted per seed as ``detector evaluate`` fits it (models
kept in ``--cache``), its rows go through the network once, and every variant re-runs
:meth:`Detector.process_columns` on those reconstructions with its settings. The figures equal
``detector evaluate``'s for the same settings. Per variant it prints, per seed and their mean,
NAB standard (optimised threshold and as is) and SKAB valve1 F1 / FAR, then the
leave-one-category-out table of ``nab_breakdown.py``:

    nice -n 19 .venv/bin/python benchmarks/nab_variants.py --nab ../shared/data/nab \\
        --skab ../shared/data/skab --cache /tmp/nab-models --seeds 7,8,9 \\
        --variant 'no seasonal:seasonal_bins=0' --variant 'discount 2:novelty_discount=2'

A variant is ``LABEL:KEY=VALUE[,KEY=VALUE...]`` (scoring settings, JSON values); ``base`` (the
defaults) is always measured. Settings that shape the fit (``smoothing_halflife``) need a refit:
give them to ``--fit-scoring`` with a cache of their own. A study script can register a
prototype of the stages in :data:`PROTOTYPES` (a stand-in for ``score_rows``) and name it in a
variant as ``prototype="NAME"``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
from nab_breakdown import Trace, leave_one_category_out, nab_files

import detector.scoring as scoring_module
from detector.benchmark import (
    CostMatrix,
    Window,
    load_profiles,
    load_windows,
    optimise_threshold,
    probationary_rows,
    score_from_decisions,
)
from detector.config import Settings, load_settings
from detector.evaluate import SKAB_TRAIN_ROWS, _head, _nab_files, _read_skab, _skab_files
from detector.fit import fit_tables
from detector.kernel import score_rows
from detector.model import FittedModel, load_model, save_model
from detector.schema import Table, read_csv
from detector.scoring import Detector
from detector.sequence import reconstruct_sequences
from detector.skab import skab_metrics

PROTOTYPES: dict[str, Callable[..., Any]] = {}  # stand-ins for detector.kernel.score_rows, by name


@dataclass(frozen=True)
class Job:
    """One file of one benchmark fitted with one seed."""

    benchmark: str
    path: Path
    seed: int
    train_rows: int

    def directory(self, cache: Path) -> Path:
        return cache / f"seed{self.seed}" / self.benchmark / f"{self.path.parent.name}__{self.path.stem}"


@dataclass
class Scored:
    """A fitted file ready for replays: its model, table and the network's output on its rows."""

    job: Job
    model: FittedModel
    table: Table
    reconstruction: tuple[torch.Tensor, torch.Tensor]
    labels: np.ndarray | None  # SKAB's anomaly labels


def read_table(job: Job) -> tuple[Table, np.ndarray | None]:
    if job.benchmark == "skab":
        return _read_skab(job.path)
    return read_csv(job.path), None


def fit_job(job: Job, settings: Settings, cache: Path) -> Path:
    """Fit ``job``'s file on its training rows into the cache (unless there)."""
    directory = job.directory(cache)
    if not (directory / "model.json").is_file():
        seeded = settings.model_copy(update={"fit": settings.fit.model_copy(update={"seed": job.seed})})
        table = read_table(job)[0]
        model, _ = fit_tables([_head(table, job.train_rows)], seeded.model, seeded.fit, seeded.scoring, progress=False)
        save_model(model, directory)
    return directory


def _one_thread() -> None:
    torch.set_num_threads(1)


def fit_all(jobs: list[Job], settings: Settings, cache: Path, workers: int) -> None:
    largest_first = sorted(jobs, key=lambda job: -job.path.stat().st_size)
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_one_thread) as pool:
        for directory in pool.map(fit_job, largest_first, [settings] * len(jobs), [cache] * len(jobs)):
            print(f"fitted {directory}", file=sys.stderr, flush=True)


@contextmanager
def cached_network(output: tuple[torch.Tensor, torch.Tensor]) -> Iterator[None]:
    """Within the block, the detector's sequence path returns ``output`` instead of running the network."""
    scoring_module.reconstruct_sequences = lambda *_args, **_kw: (output[0].clone(), output[1].clone())
    try:
        yield
    finally:
        scoring_module.reconstruct_sequences = reconstruct_sequences


def prepare(job: Job, cache: Path) -> Scored:
    """Load ``job``'s model and run its file's rows through the network once."""
    model = load_model(job.directory(cache))
    table, labels = read_table(job)
    captured: list[tuple[torch.Tensor, torch.Tensor]] = []

    def capture(*args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        out = reconstruct_sequences(*args, **kwargs)
        captured.append((out[0].clone(), out[1].clone()))
        return out

    scoring_module.reconstruct_sequences = capture
    try:
        Detector(model).process_columns(table.columns())
    finally:
        scoring_module.reconstruct_sequences = reconstruct_sequences
    return Scored(job, model, table, captured[0], labels)


def replay(scored: Scored, overrides: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(probability, is_anomaly) of every row of ``scored`` with the scoring ``overrides``."""
    settings = {key: value for key, value in overrides.items() if key != "prototype"}
    model = replace(scored.model, scoring={**scored.model.scoring, **settings})
    kernel = PROTOTYPES[overrides["prototype"]] if "prototype" in overrides else score_rows
    scoring_module.score_rows = kernel  # type: ignore[assignment]  # a prototype may stand in for the compiled kernel
    try:
        with cached_network(scored.reconstruction):
            out = Detector(model).process_columns(scored.table.columns())
    finally:
        scoring_module.score_rows = score_rows
    return out.probability.copy(), out.is_anomaly.copy()


def measure(
    files: dict[int, list[Scored]], overrides: dict[str, Any], nab: Path
) -> tuple[dict[int, dict[str, float]], list[dict[str, Trace]]]:
    """Per seed: NAB standard optimised / as is, SKAB F1 / FAR; and each seed's NAB traces."""
    windows = load_windows(nab / "labels" / "combined_windows.json")
    profile = load_profiles(nab / "config" / "profiles.json")["standard"]
    figures, runs = {}, []
    for seed, scored_files in files.items():
        traces: dict[str, Trace] = {}
        truth, flags = [], []
        for scored in scored_files:
            probability, is_anomaly = replay(scored, overrides)
            if scored.job.benchmark == "nab":
                trace = nab_trace(scored.job, scored.table, probability, is_anomaly, windows)
                traces[trace.name] = trace
            else:
                assert scored.labels is not None
                truth.append(scored.labels[SKAB_TRAIN_ROWS:])
                flags.append(is_anomaly[SKAB_TRAIN_ROWS:].astype(int))
        figures[seed] = benchmark_figures(traces, truth, flags, profile)
        runs.append(traces)
    return figures, runs


def nab_trace(
    job: Job, table: Table, probability: np.ndarray, is_anomaly: np.ndarray, windows: dict[str, list[Window]]
) -> Trace:
    """The NAB trace of ``job``'s file: each row's probability and decision, with its timestamps and windows."""
    name = f"{job.path.parent.name}/{job.path.name}"
    stamps = [datetime.fromisoformat(t) for t in table.raw_timestamps]
    return Trace(name, stamps, windows[name], {"probability": probability, "is_anomaly": is_anomaly.astype(float)})


def benchmark_figures(
    traces: dict[str, Trace], truth: list[np.ndarray], flags: list[np.ndarray], profile: CostMatrix
) -> dict[str, float]:
    """NAB optimised / as is of ``traces`` and SKAB F1 / FAR of the pooled test rows, each where given."""
    row: dict[str, float] = {}
    if traces:
        row["nab_optimised"] = optimise_threshold(nab_files(traces, "probability"), profile)[1]
        row["nab_as_is"] = score_from_decisions(nab_files(traces, "is_anomaly"), profile)
    if truth:
        pooled = skab_metrics(np.concatenate(truth), np.concatenate(flags))
        row["skab_f1"], row["skab_far"] = pooled.f1, pooled.far
    return row


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``LABEL:KEY=VALUE,...`` as (label, overrides)."""
    label, _, spec = text.partition(":")
    overrides = {}
    for item in filter(None, spec.split(",")):
        key, _, value = item.partition("=")
        overrides[key.strip()] = json.loads(value)
    return label, overrides


def jobs_of(seeds: list[int], nab: Path | None, skab: Path | None) -> list[Job]:
    jobs = []
    for seed in seeds:
        if nab is not None:
            for name in _nab_files(load_windows(nab / "labels" / "combined_windows.json"), None):
                path = nab / "data" / name
                jobs.append(Job("nab", path, seed, probationary_rows(len(read_csv(path).timestamps))))
        if skab is not None:
            jobs += [Job("skab", path, seed, SKAB_TRAIN_ROWS) for path in _skab_files(skab)]
    return jobs


def print_figures(label: str, figures: dict[int, dict[str, float]]) -> None:
    keys = list(next(iter(figures.values())))
    mean = {key: float(np.mean([row[key] for row in figures.values()])) for key in keys}
    cells = []
    for key in keys:
        per_seed = " / ".join(_fmt(key, row[key]) for row in figures.values())
        cells.append(f"{key} {per_seed} ({_fmt(key, mean[key])})")
    print(f"| {label} | " + " | ".join(cells) + " |", flush=True)


def _fmt(key: str, value: float) -> str:
    return f"{value:.3f}" if key.startswith("skab") else f"{value:.1f}"


def study_arguments(description: str) -> argparse.ArgumentParser:
    """A parser with the arguments of a study of NAB and SKAB over fit seeds."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--nab", type=Path, required=True, help="NAB directory (data/, labels/, config/)")
    parser.add_argument("--skab", type=Path, default=None, help="SKAB directory (valve1/)")
    parser.add_argument("--cache", type=Path, required=True, help="directory of fitted models, reused if present")
    parser.add_argument("--seeds", default="7,8,9", help="fit seeds, comma-separated")
    parser.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)), help="processes")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = study_arguments(__doc__.splitlines()[0])
    parser.add_argument("--fit-scoring", default="", help="KEY=VALUE,... scoring settings the fit uses")
    parser.add_argument("--variant", action="append", default=[], help="LABEL:KEY=VALUE,... (JSON values)")
    parser.add_argument("--no-loco", action="store_true", help="skip the leave-one-category-out table")
    args = parser.parse_args(argv)
    settings = load_settings(None)
    fit_overrides = parse_variant(f"fit:{args.fit_scoring}")[1]
    if fit_overrides:
        scoring = settings.scoring.model_validate({**settings.scoring.model_dump(), **fit_overrides})
        settings = settings.model_copy(update={"scoring": scoring})
    seeds = [int(s) for s in args.seeds.split(",")]
    jobs = jobs_of(seeds, args.nab, args.skab)
    fit_all(jobs, settings, args.cache, args.jobs)
    torch.set_num_threads(1)
    files: dict[int, list[Scored]] = {seed: [] for seed in seeds}
    for job in jobs:
        files[job.seed].append(prepare(job, args.cache))
    variants = [("base", {}), *(parse_variant(v) for v in args.variant)]
    all_runs: dict[str, list[dict[str, Trace]]] = {}
    for label, overrides in variants:
        figures, runs = measure(files, overrides, args.nab)
        print_figures(label, figures)
        all_runs[label] = runs
    if not args.no_loco:
        profile = load_profiles(args.nab / "config" / "profiles.json")["standard"]
        leave_one_category_out(all_runs, profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
