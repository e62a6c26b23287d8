"""A forecasting head next to the reconstruction, an offline study: does it earn its place?

Each cached model of ``nab_variants.py --cache`` stays frozen. Its network runs once over the
file's rows (as ``detector evaluate`` scores them, from the fit's start state), keeping what the
decoder sees before each row: the top layer's hidden state, the last value, the tracked level
and the row's time of day. A ridge head (least squares in closed form, its penalty chosen by
generalised cross-validation, so no setting) maps that to the row ``horizon`` steps on, fitted on
the fit's training rows; its residual scale per feature is measured on the training rows as the
reconstruction's is (``scale=train``) or on the held-out rows (``scale=heldout``). A row's forecast
error, divided by that scale, joins the reconstruction error:

* ``recon``: the reconstruction alone (the product; reproduces ``detector evaluate``);
* ``forecast``: the forecast alone;
* ``rms``: root mean square over both error vectors (and over both smoothed vectors);
* ``max``: the larger of the two scores.

Everything downstream runs unchanged (``score_rows``' stages), and each variant's calibration is
re-derived from its own held-out scores as ``fit`` derives it (a draft calibration, the fit's
held-out rows, ``_calibrate``). With ``penalty=heldout`` the ridge penalty is the one that
forecasts the fit's held-out rows best (as the fit stops early on them). With ``target=residual``
(horizon 1) the head forecasts the decoder's error instead of the value: its forecast is the
decoder's plus a correction, which a large penalty shrinks to nothing. A variant is
``LABEL:combine=..,head=h|hx,horizon=N,scale=..,penalty=..,target=..``:

    nice -n 19 .venv/bin/python benchmarks/nab_forecast.py \\
        --nab ../shared/data/nab --skab ../shared/data/skab --cache /tmp/h25q-models --seeds 7,8,9 \\
        --jobs 2 --out /tmp/h25f --variant 'rms hx:combine=rms,head=hx' --variant 'max hx:combine=max,head=hx'

``head=h`` forecasts from the hidden state and the time of day; ``head=hx`` adds the last value
and the tracked level (all the decoder sees). It prints per variant NAB standard (optimised and as
is) and SKAB valve1 F1 / FAR per seed and their mean, windows found and false-positive rows, and
the leave-one-category-out table; ``--out`` keeps the outcomes (``--reuse`` judges them again).
"""

from __future__ import annotations

import pickle
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from functools import cache
from itertools import repeat
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
from nab_breakdown import Trace, leave_one_category_out, nab_files
from nab_variants import Job, benchmark_figures, jobs_of, nab_trace, read_table, study_arguments

import detector.scoring as scoring_module
from detector.benchmark import CostMatrix, load_profiles, load_windows, optimise_threshold, score_file
from detector.config import ScoringSettings
from detector.evaluate import SKAB_TRAIN_ROWS
from detector.fit import _calibrate, _split, model_warmup
from detector.jit import njit
from detector.kernel import score_rows
from detector.model import Calibration, FittedModel, load_model, window_levels
from detector.schema import Columns
from detector.scoring import Detector
from detector.sequence import reconstruct_sequences
from detector.stage_state import ErrorState
from detector.stages import decide, range_excess, range_judged, smooth_error

COMBINE = {"recon": 0, "forecast": 1, "rms": 2, "max": 3}
_RESIDUAL_FLOOR = 1e-2  # the fit's floor of a residual scale, in standardised units


@dataclass(frozen=True)
class Variant:
    """How a forecast is made and combined with the reconstruction."""

    label: str
    combine: str = "recon"
    head: str = "hx"
    horizon: int = 1
    scale: str = "train"
    penalty: str = "gcv"
    target: str = "value"

    @classmethod
    def parse(cls, text: str) -> Variant:
        label, _, spec = text.partition(":")
        fields = dict(item.split("=", 1) for item in filter(None, spec.split(",")))
        settings: dict[str, Any] = {key: int(value) if key == "horizon" else value for key, value in fields.items()}
        return cls(label, **settings)


@dataclass(frozen=True)
class NetworkPass:
    """One file through the frozen network: its inputs, reconstruction, final state, and what the
    decoder saw before each row (top hidden state, last value, tracked level, time context)."""

    standardised: np.ndarray  # (rows, features) float32, as the Detector standardises
    reconstruction: torch.Tensor  # (rows, features)
    final_state: torch.Tensor  # (1, state_size)
    hidden: np.ndarray  # (rows, hidden) before each row
    previous: np.ndarray  # (rows, features)
    level: np.ndarray  # (rows, features)
    context: np.ndarray  # (rows, 2 * periods) of each row's own time

    @classmethod
    def of(cls, model: FittedModel, columns: Columns) -> NetworkPass:
        network = model.network
        times = columns.timestamps
        elapsed = np.maximum(np.diff(times, prepend=times[:1]), 0.0)
        mean, scale = model.feature_mean.astype(np.float32), model.feature_scale.astype(np.float32)
        standardised = (columns.values.astype(np.float32) - mean) / scale
        x, when, gaps = (torch.from_numpy(a)[None] for a in (standardised, times, elapsed))
        state = network.initial_state(1)
        with torch.inference_mode():
            levels = window_levels(network, x, state, gaps)
            reconstruction, final_state = network.forward(x, state, when, gaps, None, levels)
            recurrent, last, _ = network._split(state)
            previous = torch.cat([last.unsqueeze(1), x[:, :-1]], dim=1)
            before = levels[:, :-1] if levels is not None else torch.zeros_like(x)
            context = network.context(when, x.shape[:2])
            outputs, _ = network.encoder(network._inputs(x, previous, before, context), recurrent)
            hidden = torch.cat([network._top_hidden(recurrent).unsqueeze(1), outputs[:, :-1]], dim=1)
        return cls(
            standardised,
            reconstruction[0],
            final_state,
            hidden[0].double().numpy(),
            previous[0].double().numpy(),
            before[0].double().numpy(),
            context[0].double().numpy(),
        )

    def head_inputs(self, head: str, horizon: int) -> np.ndarray:
        """Row t's forecast inputs: what the decoder saw ``horizon - 1`` rows before t, with
        t's own time context (the first rows reuse the start state's)."""
        source = np.maximum(np.arange(len(self.hidden)) - (horizon - 1), 0)
        parts = [self.hidden[source]] + ([self.previous[source], self.level[source]] if head == "hx" else [])
        return np.concatenate([*parts, self.context], axis=1)


@dataclass(frozen=True)
class RidgeHead:
    """A linear forecast fitted in closed form; its penalty chosen by generalised cross-validation."""

    coef: np.ndarray
    intercept: np.ndarray

    @classmethod
    def fit(
        cls, inputs: np.ndarray, targets: np.ndarray, held: tuple[np.ndarray, np.ndarray] | None = None
    ) -> RidgeHead:
        """Fitted on ``inputs`` -> ``targets``; the penalty is the one with the least squared error
        on ``held`` (inputs, targets) where given, else by generalised cross-validation."""
        centre, spread = inputs.mean(axis=0), inputs.std(axis=0)
        spread = np.where(spread > 1e-8, spread, 1.0)
        z, target_mean = (inputs - centre) / spread, targets.mean(axis=0)
        u, s, vt = np.linalg.svd(z, full_matrices=False)
        projected = u.T @ (targets - target_mean)
        rows, best, best_head = len(z), np.inf, None
        for penalty in float(s[0] ** 2) * np.logspace(-8, 2, 41):
            shrink = s**2 / (s**2 + penalty)
            weights = vt.T @ ((s / (s**2 + penalty))[:, None] * projected) / spread[:, None]
            head = cls(weights, target_mean - centre @ weights)
            if held is None:
                residual = (targets - target_mean) - u @ (shrink[:, None] * projected)
                loss = float((residual**2).sum()) / (rows * (1.0 - shrink.sum() / rows) ** 2)
            else:
                loss = float(((held[1] - head.predict(held[0])) ** 2).mean())
            if loss < best:
                best, best_head = loss, head
        assert best_head is not None
        return best_head

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        return inputs @ self.coef + self.intercept


def forecast_errors(net: NetworkPass, variant: Variant, warmup: int, split: int, fit_rows: int) -> np.ndarray:
    """Every row's forecast error in residual units of the head fitted on the training rows."""
    inputs = net.head_inputs(variant.head, variant.horizon)
    targets = net.standardised.astype(np.float64)
    if variant.target == "residual":  # the head corrects the decoder's forecast of the same row
        targets = targets - net.reconstruction.double().numpy()
    train = slice(max(warmup, variant.horizon - 1), split)
    held = (inputs[split:fit_rows], targets[split:fit_rows]) if variant.penalty == "heldout" else None
    head = RidgeHead.fit(inputs[train], targets[train], held)
    residuals = targets - head.predict(inputs)
    measured = residuals[train] if variant.scale == "train" else residuals[split:fit_rows]
    scale = np.maximum(np.sqrt((measured**2).mean(axis=0)), _RESIDUAL_FLOOR)
    return np.ascontiguousarray(residuals / scale)


@njit
def combined_rows(
    slots: np.ndarray,
    errors: np.ndarray,
    forecast: np.ndarray,
    combine: int,
    standardised: np.ndarray,
    timestamps: np.ndarray,
    elapsed: np.ndarray,
    error: Any,
    forecast_error: Any,
    both_error: Any,
    ranges: Any,
    seasonal: Any,
    stats: Any,
    peaks: Any,
    baseline: Any,
    alerts: Any,
    start_low: np.ndarray,
    start_high: np.ndarray,
    p: Any,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``score_rows`` with the score of each row taken from its reconstruction error, its forecast
    error, or both (``COMBINE``); every later stage as in the product."""
    n, features = slots.shape[0], errors.shape[1]
    score, probability = np.empty(n), np.empty(n)
    is_anomaly, event, opened_at = np.zeros(n, dtype=np.bool_), np.zeros(n, dtype=np.int8), np.empty(n)
    range_decided, beyond = np.zeros(n, dtype=np.bool_), np.empty(standardised.shape, dtype=np.float32)
    both = np.empty(2 * features)
    for i in range(n):
        slot = slots[i]
        warm = alerts.steps[slot] >= p.warmup_steps
        width = range_excess(ranges, slot, standardised[i], start_low, start_high, p, beyond[i])
        recon = smooth_error(error, slot, errors[i], warm, p)
        ahead = smooth_error(forecast_error, slot, forecast[i], warm, p)
        both[:features] = errors[i]
        both[features:] = forecast[i]
        pooled = smooth_error(both_error, slot, both, warm, p)
        learned = (recon, ahead, pooled, max(recon, ahead))[combine]
        judged = range_judged(learned, width, p)
        probability[i], is_anomaly[i], event[i], opened_at[i] = decide(
            seasonal, stats, peaks, baseline, alerts, slot, learned, judged, timestamps[i], elapsed[i], warm, p
        )
        alerts.last_ts[slot] = timestamps[i]
        score[i], range_decided[i] = judged, judged > learned
    return score, probability, is_anomaly, event, opened_at, range_decided, beyond


def run_detector(
    model: FittedModel, columns: Columns, net: NetworkPass, forecast: np.ndarray, combine: int, rows: int, null: bool
) -> Any:
    """The Detector's outcomes of the first ``rows`` rows, the network's output and the stages
    replaced by the cached pass and :func:`combined_rows`."""
    head = Columns(columns.entities[:rows], columns.timestamps[:rows], columns.values[:rows])

    def kernel(slots: np.ndarray, errors: np.ndarray, standardised: np.ndarray, *rest: Any) -> Any:
        timestamps, elapsed, error, *stages = rest
        capacity, features = error.smoothed.shape
        forecast_error, both_error = (ErrorState(np.zeros((capacity, width))) for width in (features, 2 * features))
        ahead = forecast[: len(slots)]
        return combined_rows(
            slots, errors, ahead, combine, standardised, timestamps, elapsed, error, forecast_error, both_error, *stages
        )

    output = (net.reconstruction[:rows].clone(), net.final_state.clone())
    scoring_module.reconstruct_sequences = lambda *_args, **_kw: output
    scoring_module.score_rows = kernel  # type: ignore[assignment]  # the study's stand-in for the compiled kernel
    try:
        return Detector(model, simulate_null=null).process_columns(head)
    finally:
        scoring_module.score_rows = score_rows
        scoring_module.reconstruct_sequences = reconstruct_sequences


def study_job(job: Job, cache: Path, variants: list[Variant]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(probability, is_anomaly) of every row of ``job``'s file for each variant."""
    began = time.monotonic()
    model = load_model(job.directory(cache))
    columns = read_table(job)[0].columns()
    net = NetworkPass.of(model, columns)
    warmup, fit_rows = model_warmup(model), job.train_rows
    split = _split(fit_rows, float(model.info["fit_settings"]["holdout_fraction"]))
    settings = ScoringSettings(**model.scoring)
    outcomes = {}
    for variant in variants:
        combine = COMBINE[variant.combine]
        forecast = forecast_errors(net, variant, warmup, split, fit_rows)
        draft = replace(model, calibration=Calibration(0.0, 1.0, 1.0, 0))
        held = run_detector(draft, columns, net, forecast, combine, fit_rows, null=False)
        calibration = _calibrate(held.score[max(split, warmup) :], settings)
        if combine == COMBINE["recon"] and not np.isclose(calibration.log_mean, model.calibration.log_mean):
            print(f"{job.path.name}: recalibration differs from the fit's", file=sys.stderr, flush=True)
        out = run_detector(replace(model, calibration=calibration), columns, net, forecast, combine, len(columns), True)
        outcomes[variant.label] = (out.probability.copy(), out.is_anomaly.copy())
    name = f"{job.path.parent.name}/{job.path.name}"
    print(f"{name} seed {job.seed}: {time.monotonic() - began:.1f} s", file=sys.stderr, flush=True)
    return outcomes


@cache
def _read(job: Job) -> tuple[Any, np.ndarray | None]:
    return read_table(job)


def _one_thread() -> None:
    torch.set_num_threads(1)


Results = dict[Job, dict[str, tuple[np.ndarray, np.ndarray]]]


def judge(results: Results, label: str, seeds: list[int], nab: Path) -> tuple[dict[int, dict[str, float]], list]:
    """Per seed: NAB standard optimised / as is, SKAB F1 / FAR, windows found and FP rows; NAB traces."""
    windows = load_windows(nab / "labels" / "combined_windows.json")
    profile = load_profiles(nab / "config" / "profiles.json")["standard"]
    figures, runs = {}, []
    for seed in seeds:
        traces: dict[str, Trace] = {}
        truth, flags = [], []
        for job, outcome in results.items():
            if job.seed != seed:
                continue
            probability, is_anomaly = outcome[label]
            table, labels = _read(job)
            if job.benchmark == "nab":
                trace = nab_trace(job, table, probability, is_anomaly, windows)
                traces[trace.name] = trace
            else:
                assert labels is not None
                truth.append(labels[SKAB_TRAIN_ROWS:])
                flags.append(is_anomaly[SKAB_TRAIN_ROWS:].astype(int))
        row = benchmark_figures(traces, truth, flags, profile)
        row.update(windows_and_false_positives(traces, profile))
        figures[seed] = row
        runs.append(traces)
    return figures, runs


def windows_and_false_positives(traces: dict[str, Trace], profile: CostMatrix) -> dict[str, float]:
    """Windows found and false-positive rows at the corpus-optimised threshold and as is."""
    threshold = optimise_threshold(nab_files(traces, "probability"), profile)[0]
    row = {"found_opt": 0.0, "fp_opt": 0.0, "found_as_is": 0.0, "fp_as_is": 0.0}
    for trace in traces.values():
        for key, field, at in (("opt", "probability", threshold), ("as_is", "is_anomaly", 0.5)):
            scored = score_file(trace.stamps, trace.windows, trace.fields[field].tolist(), at, profile)
            row[f"found_{key}"] += scored.windows_detected
            row[f"fp_{key}"] += scored.fp
    return row


def print_table(label: str, figures: dict[int, dict[str, float]]) -> None:
    """One markdown row: each figure per seed and (mean)."""
    cells = []
    for key in next(iter(figures.values())):
        values = [row[key] for row in figures.values()]
        digits = 3 if key.startswith("skab") else 0 if key.startswith(("found", "fp")) else 1
        per_seed = " / ".join(f"{v:.{digits}f}" for v in values)
        cells.append(f"{key} {per_seed} ({np.mean(values):.{max(digits, 1)}f})")
    print(f"| {label} | " + " | ".join(cells) + " |", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = study_arguments(__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", default=[], help="LABEL:combine=..,head=..,horizon=..,scale=..")
    parser.add_argument("--out", type=Path, default=None, help="directory for the outcomes (pickle)")
    parser.add_argument("--reuse", type=Path, action="append", default=[], help="outcomes saved by --out (merged)")
    parser.add_argument("--no-loco", action="store_true", help="skip the leave-one-category-out table")
    args = parser.parse_args(argv)
    began = time.monotonic()
    seeds = [int(s) for s in args.seeds.split(",")]
    jobs = jobs_of(seeds, args.nab, args.skab)
    variants = [Variant("base"), *(Variant.parse(v) for v in args.variant)]
    results: Results = {job: {} for job in jobs}
    for path in args.reuse:
        for job, outcome in pickle.loads(path.read_bytes()).items():
            if job in results:
                results[job].update(outcome)
    todo = [v for v in variants if not all(v.label in outcome for outcome in results.values())]
    if todo:
        largest_first = sorted(jobs, key=lambda job: -job.path.stat().st_size)
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn"), initializer=_one_thread) as pool:
            for job, outcome in zip(
                largest_first, pool.map(study_job, largest_first, repeat(args.cache), repeat(todo)), strict=True
            ):
                results[job].update(outcome)
        print(f"studied {len(jobs)} files in {time.monotonic() - began:.0f} s", file=sys.stderr, flush=True)
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"forecast-{'+'.join(v.label for v in todo)}.pkl".replace(" ", "_")).write_bytes(
                pickle.dumps(results)
            )
    labels = list(dict.fromkeys(label for outcome in results.values() for label in outcome))
    all_runs = {}
    for label in labels:
        figures, runs = judge(results, label, seeds, args.nab)
        print_table(label, figures)
        all_runs[label] = runs
    if not args.no_loco:
        leave_one_category_out(all_runs, load_profiles(args.nab / "config" / "profiles.json")["standard"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
