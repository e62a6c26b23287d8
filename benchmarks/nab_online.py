"""Learning while streaming, an offline study: does updating the network on recent normal rows,
as a file streams, earn its place?

Each file of NAB and SKAB valve1 is scored as ``detector evaluate`` scores it: its first model
fitted on its probationary (NAB) or training (SKAB) rows, the models of ``nab_variants.py
--cache`` reused, then one :class:`~detector.scoring.Detector` over every row in order. Here the
rows go through in chunks of ``period`` rows, ``period`` being the rows the first model was fitted
on (no new setting), and from row ``2 * period`` on, before each chunk, the network learns from
the last ``2 * period`` rows: the loss counts only rows judged normal (neither ``is_anomaly`` nor
in an open alert), so an update sees only past rows and no label. Variants:

* ``as-built``: no update (the figures of ``detector evaluate``);
* ``tune``: the current network trained further for at most ``fit.patience`` epochs of the fit's
  truncated BPTT, kept at its best epoch on the block's held-out normal tail, and only if that
  beats the current network there (the fit's own early stopping);
* ``refit``: a fresh network trained on the block with the fit's schedule (``fit.max_epochs``);
* ``tune-rescale``: ``tune``, then the residual scale measured again on the block's normal rows;
* ``tune-keep-state``: ``tune`` without the replay below.

After an update the entity's recurrent state is replayed: the new network runs over the block
from the state held before it (outputs dropped), so it holds what it would have, had it scored
those rows (a refit starts that replay from its own start state; the tracked level and last
value do not depend on the weights). Feature scaling, residual scale, calibration, alert level
and every scoring stage's state stay: they are in the units the first fit set, the calibration
describes the scores of normal data, and a network that predicts better only lowers them.

    cd /work/h25s && PYTHONPATH=. nice -n 19 /work/main/.venv/bin/python benchmarks/nab_online.py \\
        --nab ../shared/data/nab --skab ../shared/data/skab --cache /tmp/h25q-models --seeds 7,8,9 \\
        --variant tune --out /tmp/h25s

It prints, per variant, NAB standard (optimised threshold and as is) and SKAB valve1 F1 / FAR per
seed and their mean, the updates taken, and the leave-one-category-out table of
``nab_breakdown.py``. ``--out`` keeps each variant's and seed's NAB trace (for ``nab_breakdown.py
--loco``) and the streamed outcomes, which ``--reuse`` judges again, merged across runs.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import math
import pickle
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from itertools import repeat
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from nab_breakdown import Trace, leave_one_category_out
from nab_variants import (
    Job,
    benchmark_figures,
    fit_all,
    jobs_of,
    nab_trace,
    print_figures,
    read_table,
    study_arguments,
)

from detector.benchmark import load_profiles, load_windows
from detector.config import FitSettings, Settings, load_settings
from detector.evaluate import SKAB_TRAIN_ROWS
from detector.fit import _split, _streams, _train_epoch  # the fit's own steps, so an update trains as a fit does
from detector.model import FittedModel, StreamAutoencoder, load_model
from detector.observation import Columns
from detector.schema import Table
from detector.scoring import Detector
from detector.sequence import reconstruct_sequences
from detector.state import tracked

VARIANTS = ("as-built", "tune", "refit", "tune-rescale", "tune-keep-state")
_RESIDUAL_FLOOR = 1e-2  # the fit's floor of a residual scale, in standardised units
_MIN_DELTA = 1e-6  # the fit's smallest improvement of the held-out loss


@dataclass(frozen=True)
class Block:
    """The recent rows an update learns from: the network's inputs, the rows judged normal, and the
    entity's state before the first of them."""

    values: np.ndarray  # (rows, features) standardised, float32
    times: np.ndarray  # (rows,) epoch seconds
    elapsed: np.ndarray  # (rows,) seconds since the previous row
    normal: np.ndarray  # (rows,) bool
    state: torch.Tensor  # (1, state_size)
    entity: str

    def reconstruct(
        self, network: StreamAutoencoder, state: torch.Tensor | None = None
    ) -> tuple[np.ndarray, torch.Tensor]:
        """(reconstruction of every row, the state after the last) from ``state`` (default: the block's)."""
        groups = np.zeros(len(self.values), dtype=np.int64)
        start = self.state if state is None else state
        reconstruction, after = reconstruct_sequences(network, start, self.values, groups, self.times, self.elapsed)
        return reconstruction.double().numpy(), after


@dataclass
class Streamed:
    """One file streamed with one variant: each row's probability and decision, and the updates."""

    probability: np.ndarray
    is_anomaly: np.ndarray
    applied: int
    tried: int


def heldout_loss(network: StreamAutoencoder, block: Block, split: int) -> float:
    """Mean squared error of the normal rows from ``split`` on (NaN: none), the state run from the block's start."""
    reconstruction, _ = block.reconstruct(network)
    errors = ((reconstruction - block.values) ** 2).mean(axis=1)[split:][block.normal[split:]]
    return float(errors.mean()) if len(errors) else math.nan


def train(
    network: StreamAutoencoder, block: Block, fit: FitSettings, max_epochs: int, must_beat_current: bool
) -> StreamAutoencoder | None:
    """``network`` trained on the block's head as the fit trains (truncated BPTT in streams, loss on
    normal rows only) and kept at its best epoch on the held-out tail; None when no epoch improves
    on the start (with ``must_beat_current``: on the network as given) or the block is too abnormal."""
    split = _split(len(block.values), fit.holdout_fraction)
    if block.normal[:split].sum() < fit.window or not block.normal[split:].any():
        return None
    values, padding = _streams([block.values[:split]], fit.streams, fit.window, np.float32)
    clock, _ = _streams([np.stack([block.times, block.elapsed], axis=1)[:split]], fit.streams, fit.window, np.float64)
    normal, _ = _streams([block.normal[:split, None].astype(np.float32)], fit.streams, fit.window, np.float32)
    best = heldout_loss(network, block, split) if must_beat_current else math.inf
    optimiser = torch.optim.Adam(network.parameters(), lr=fit.learning_rate)
    best_weights, best_epoch = None, -1
    for epoch in range(max_epochs):
        network.train()
        _train_epoch(network, optimiser, (values, clock[..., 0], clock[..., 1]), padding * normal, fit)
        network.eval()
        loss = heldout_loss(network, block, split)
        if loss < best - _MIN_DELTA:
            best, best_weights, best_epoch = loss, copy.deepcopy(network.state_dict()), epoch
        elif epoch - best_epoch >= fit.patience:
            break
    if best_weights is None:
        return None
    network.load_state_dict(best_weights)
    return network


def update(detector: Detector, block: Block, variant: str, fit: FitSettings) -> bool:
    """Update ``detector``'s network on ``block`` as ``variant`` does (see the module docstring);
    whether the new network was taken."""
    current = detector.model.network
    fresh = variant == "refit"
    if fresh:
        torch.manual_seed(fit.seed)
        network = StreamAutoencoder.build(current.architecture)
    else:
        network = copy.deepcopy(current)
    trained = train(network, block, fit, fit.max_epochs if fresh else fit.patience, must_beat_current=not fresh)
    if trained is None:
        return False
    trained.eval()
    model = replace(detector.model, network=trained)
    if variant == "tune-rescale":
        reconstruction, _ = block.reconstruct(trained)
        residuals = (reconstruction - block.values)[block.normal]
        model = replace(model, residual_scale=np.maximum(np.sqrt((residuals**2).mean(axis=0)), _RESIDUAL_FLOOR))
    detector.model = model
    if variant != "tune-keep-state":
        start = block.state.clone()
        if fresh:  # the recurrent part of the old network's state means nothing to a fresh one
            arch = trained.architecture
            recurrent = trained.state_size - arch.n_features * (2 if arch.level_halflife_s > 0 else 1)
            start[:, :recurrent] = trained.start_state[:recurrent]
        _, after = block.reconstruct(trained, start)
        detector.store.rnn[_slot(detector, block.entity)] = after[0]
    return True


def stream(model: FittedModel, table: Table, period: int, variant: str, fit: FitSettings) -> Streamed:
    """Every row of ``table`` scored in order by a Detector on ``model``, updated as ``variant`` does."""
    detector = Detector(replace(model, network=copy.deepcopy(model.network)))
    columns = table.columns()
    n, times = len(columns), columns.timestamps
    elapsed = np.maximum(np.diff(times, prepend=times[:1]), 0.0)
    standardised = (columns.values.astype(np.float32) - model.feature_mean.astype(np.float32)) / (
        model.feature_scale.astype(np.float32)
    )
    probability, is_anomaly, normal = np.zeros(n), np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    states: dict[int, torch.Tensor] = {}
    alert_open, applied, tried = False, 0, 0
    for start, end in itertools.pairwise([0, *range(period, n, period), n]):
        if variant != "as-built" and start >= 2 * period:
            begin = start - 2 * period
            recent = slice(begin, start)
            block = Block(
                standardised[recent], times[recent], elapsed[recent], normal[recent], states[begin], columns.entities[0]
            )
            tried += 1
            applied += update(detector, block, variant, fit)
        slots = tracked(detector.store, columns.entities[:1])[1]
        held = detector.store.rnn[torch.from_numpy(slots)] if len(slots) else detector.model.network.initial_state(1)
        states[start] = held.clone()
        chunk = Columns(columns.entities[start:end], times[start:end], columns.values[start:end])
        out = detector.process_columns(chunk)
        probability[start:end], is_anomaly[start:end] = out.probability, out.is_anomaly
        in_alert = np.zeros(end - start, dtype=bool)
        for i, event in enumerate(out.events):
            was_open = alert_open
            alert_open = {"open": True, "close": False}.get(event or "", alert_open)
            in_alert[i] = was_open or alert_open
        normal[start:end] = ~out.is_anomaly & ~in_alert
    return Streamed(probability, is_anomaly, applied, tried)


def _slot(detector: Detector, entity: str) -> int:
    return int(tracked(detector.store, [entity])[1][0])


def run_job(job: Job, cache: Path, variants: list[str], fit: FitSettings) -> dict[str, Streamed]:
    """``job``'s file streamed with each variant (its cached first model, the job's seed)."""
    model = load_model(job.directory(cache))
    table = read_table(job)[0]
    seeded = fit.model_copy(update={"seed": job.seed})
    began = time.monotonic()
    outcome = {variant: stream(model, table, job.train_rows, variant, seeded) for variant in variants}
    print(
        f"streamed {job.path.parent.name}/{job.path.name} seed {job.seed}: {time.monotonic() - began:.1f} s",
        file=sys.stderr,
        flush=True,
    )
    return outcome


def _one_thread() -> None:
    torch.set_num_threads(1)


def judge(
    results: dict[Job, dict[str, Streamed]], variant: str, seeds: list[int], nab: Path
) -> tuple[dict[int, dict[str, float]], list[dict[str, Trace]]]:
    """Per seed: NAB standard optimised / as is, SKAB F1 / FAR, updates applied; and each seed's NAB traces."""
    windows = load_windows(nab / "labels" / "combined_windows.json")
    profile = load_profiles(nab / "config" / "profiles.json")["standard"]
    figures, runs = {}, []
    for seed in seeds:
        traces: dict[str, Trace] = {}
        truth, flags, applied, tried = [], [], 0, 0
        for job, outcome in results.items():
            if job.seed != seed:
                continue
            streamed = outcome[variant]
            applied, tried = applied + streamed.applied, tried + streamed.tried
            if job.benchmark == "nab":
                trace = nab_trace(job, _table(job), streamed.probability, streamed.is_anomaly, windows)
                traces[trace.name] = trace
            else:
                truth.append(_labels(job)[SKAB_TRAIN_ROWS:])
                flags.append(streamed.is_anomaly[SKAB_TRAIN_ROWS:].astype(int))
        row = benchmark_figures(traces, truth, flags, profile)
        row["updates"] = float(applied)
        print(f"{variant} seed {seed}: {applied} of {tried} updates taken", file=sys.stderr, flush=True)
        figures[seed] = row
        runs.append(traces)
    return figures, runs


_TABLES: dict[Path, tuple[Table, np.ndarray | None]] = {}


def _table(job: Job) -> Table:
    if job.path not in _TABLES:
        _TABLES[job.path] = read_table(job)
    return _TABLES[job.path][0]


def _labels(job: Job) -> np.ndarray:
    _table(job)
    labels = _TABLES[job.path][1]
    assert labels is not None
    return labels


def save_traces(runs: list[dict[str, Trace]], seeds: list[int], label: str, out: Path) -> None:
    """Each seed's NAB traces as ``out/LABEL-seedN.npz`` (FILE::FIELD arrays, as nab_trace.py writes)."""
    out.mkdir(parents=True, exist_ok=True)
    for seed, traces in zip(seeds, runs, strict=True):
        arrays = {f"{name}::{key}": values for name, trace in traces.items() for key, values in trace.fields.items()}
        np.savez_compressed(out / f"{label}-seed{seed}.npz", allow_pickle=False, **arrays)


def stream_all(
    jobs: list[Job], variants: list[str], settings: Settings, args: argparse.Namespace
) -> dict[Job, dict[str, Streamed]]:
    """Every job streamed with every variant, ``args.jobs`` processes (the longest files first)."""
    missing = [job for job in jobs if not (job.directory(args.cache) / "model.json").is_file()]
    if missing:
        fit_all(missing, settings, args.cache, args.jobs)
    largest_first = sorted(jobs, key=lambda job: -job.path.stat().st_size)
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn"), initializer=_one_thread) as pool:
        outcomes = pool.map(run_job, largest_first, repeat(args.cache), repeat(variants), repeat(settings.fit))
        return dict(zip(largest_first, outcomes, strict=True))


def main(argv: list[str] | None = None) -> int:
    parser = study_arguments(__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", default=[], choices=VARIANTS[1:], help="besides as-built")
    parser.add_argument("--only", action="append", default=[], help="only files whose path contains this")
    parser.add_argument("--out", type=Path, default=None, help="directory for the NAB traces (.npz)")
    parser.add_argument(
        "--reuse", type=Path, action="append", default=[], help="judge streamed-*.pkl saved by --out (merged)"
    )
    parser.add_argument("--no-loco", action="store_true", help="skip the leave-one-category-out table")
    args = parser.parse_args(argv)
    began = time.monotonic()
    settings = load_settings(None)
    seeds = [int(s) for s in args.seeds.split(",")]
    jobs = [j for j in jobs_of(seeds, args.nab, args.skab) if not args.only or any(p in str(j.path) for p in args.only)]
    if args.reuse:
        results: dict[Job, dict[str, Streamed]] = {job: {} for job in jobs}
        for path in args.reuse:
            for job, outcome in pickle.loads(path.read_bytes()).items():
                if job in results:
                    results[job].update(outcome)
        variants = list(dict.fromkeys(v for outcome in results.values() for v in outcome))
    else:
        variants = ["as-built", *args.variant]
        results = stream_all(jobs, variants, settings, args)
        print(f"streamed {len(jobs)} files in {time.monotonic() - began:.0f} s", file=sys.stderr, flush=True)
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"streamed-{'+'.join(variants)}.pkl").write_bytes(pickle.dumps(results))
    all_runs: dict[str, list[dict[str, Trace]]] = {}
    for variant in variants:
        figures, runs = judge(results, variant, seeds, args.nab)
        print_figures(variant, figures)
        all_runs[variant] = runs
        if args.out is not None:
            save_traces(runs, seeds, variant, args.out)
    if not args.no_loco and all(all_runs[v][0] for v in variants):
        leave_one_category_out(all_runs, load_profiles(args.nab / "config" / "profiles.json")["standard"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
