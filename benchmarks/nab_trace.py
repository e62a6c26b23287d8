"""Per-row traces of the detector on NAB: what ``detector evaluate`` computes, plus the
likelihood z-score, the novelty bar it had to beat and the distance beyond the entity's range.

``detector evaluate`` keeps only corpus figures; finding where NAB points go needs every row.
Each file is fitted on its probationary rows (the evaluate protocol, same seed) and streamed
through a :class:`~detector.scoring.Detector` while a :class:`Recorder` records the inputs of
its novelty decision. Fitted models are cached per seed and file, so a scoring
variant (``--scoring KEY=VALUE``) re-scores without refitting. ``--refit`` is a prototype of
learning while streaming (see :func:`trace_with_refits`), for measuring it before building it.

    nice -n 15 .venv/bin/python benchmarks/nab_trace.py --nab ../shared/data/nab --seed 7 \\
        --cache .cache/nab --out .cache/nab/traces-seed7.npz
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("NUMBA_DISABLE_JIT", "1")  # the stages as plain Python, so Recorder can wrap them

import numpy as np

from detector import kernel, stages
from detector.benchmark import probationary_rows
from detector.config import Settings, load_settings
from detector.fit import fit_tables
from detector.model import FittedModel, load_model, save_model
from detector.schema import Table, observations_from_table, read_csv
from detector.scoring import Detector

_REPLAY_ROWS = 200  # rows a refitted model's statistics are warmed up on before it scores
TRACE_FIELDS = ("score", "probability", "is_anomaly", "z", "learned_z", "bar", "rising", "beyond")


class Recorder:
    """Records, per message, the z-score the novelty stage judged, the bar it had to beat, whether
    it raised the short-term average, and how far beyond its range it lay (in widths of the range,
    root mean square over features).

    While active it wraps :func:`detector.stages.novelty` and the kernel's ``range_excess``; that
    needs the stages as plain Python (``NUMBA_DISABLE_JIT=1``, set by this script before it imports
    the detector), since compiled stages call each other directly.
    """

    def __init__(self) -> None:
        self.recorded: dict[str, list[float]] = {name: [] for name in ("z", "learned_z", "bar", "rising", "beyond")}

    def __enter__(self) -> Recorder:
        self._novelty, self._range_excess = stages.novelty, kernel.range_excess
        stages.novelty, kernel.range_excess = self._record_novelty, self._record_range  # type: ignore[assignment]  # a recording wrapper, same signature
        return self

    def __exit__(self, *_: object) -> None:
        stages.novelty, kernel.range_excess = self._novelty, self._range_excess

    def _record_novelty(self, peaks: Any, slot: int, z: float, learned: float, *rest: Any) -> float:
        _warm, rising, alert_open, params = rest
        bar = peaks.peak[slot] + (params.novelty_margin if alert_open else 0.0)
        for key, value in (("z", z), ("learned_z", learned), ("bar", bar), ("rising", float(rising))):
            self.recorded[key].append(float(value))
        return float(self._novelty(peaks, slot, z, learned, *rest))

    def _record_range(self, *args: Any) -> float:
        width = float(self._range_excess(*args))
        self.recorded["beyond"].append(width)
        return width


def fitted(table: Table, name: str, settings: Settings, cache: Path | None) -> FittedModel:
    """The model of ``name`` fitted on its probationary rows (from ``cache`` if there)."""
    directory = None if cache is None else cache / f"seed{settings.fit.seed}" / name.replace("/", "__")
    if directory is not None and directory.is_dir():
        return load_model(directory)
    head = _rows(table, 0, probationary_rows(len(table.timestamps)))
    model, _ = fit_tables([head], settings.model, settings.fit, settings.scoring, progress=False)
    if directory is not None:
        save_model(model, directory)
    return model


def trace_file(table: Table, model: FittedModel) -> dict[str, np.ndarray]:
    """Every row of ``table`` streamed through a :class:`Detector` built on ``model``, recorded."""
    detector = Detector(model)
    with Recorder() as recorder:
        decisions = detector.process(list(observations_from_table(table)))
    n = len(decisions)
    trace = {
        "score": np.array([d.score for d in decisions]),
        "probability": np.array([d.probability for d in decisions]),
        "is_anomaly": np.array([d.is_anomaly for d in decisions], dtype=float),
    }
    for key, values in recorder.recorded.items():
        trace[key] = np.asarray(values, dtype=float) if len(values) == n else np.full(n, np.nan)
    trace["threshold"] = np.array([detector.threshold, detector.params.threshold_z])
    return trace


def trace_with_refits(
    table: Table, model: FittedModel, settings: Settings, replay: int = _REPLAY_ROWS
) -> dict[str, np.ndarray]:
    """A prototype of learning while streaming: every probationary period's worth of rows after
    the first fit, refit on the last two such periods and go on with the new model, its statistics
    warmed up on the last ``replay`` rows (their outputs dropped). Only past rows are used."""
    n, period = len(table.timestamps), probationary_rows(len(table.timestamps))
    bounds = [0, *range(2 * period, n, period), n]
    parts: list[dict[str, np.ndarray]] = []
    for start, end in itertools.pairwise(bounds):
        if start:
            recent = _rows(table, max(0, start - 2 * period), start)
            model, _ = fit_tables([recent], settings.model, settings.fit, settings.scoring, progress=False)
        warm = max(0, start - replay)
        part = trace_file(_rows(table, warm, end), model)
        parts.append({key: values[start - warm :] if key != "threshold" else values for key, values in part.items()})
    return {
        key: np.concatenate([part[key] for part in parts]) if key != "threshold" else parts[-1][key] for key in parts[0]
    }


def _rows(table: Table, start: int, end: int) -> Table:
    entities = table.entities[start:end] if table.entities is not None else None
    return Table(
        table.timestamps[start:end], table.raw_timestamps[start:end], entities, table.features, table.values[start:end]
    )


def with_scoring(settings: Settings, overrides: list[str]) -> Settings:
    """``settings`` with ``scoring.KEY=VALUE`` overrides (VALUE as JSON)."""
    if not overrides:
        return settings
    update: dict[str, Any] = {}
    for item in overrides:
        key, _, value = item.partition("=")
        update[key] = json.loads(value)
    scoring = settings.scoring.model_validate({**settings.scoring.model_dump(), **update})
    return settings.model_copy(update={"scoring": scoring})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nab", type=Path, required=True, help="NAB directory (data/, labels/)")
    parser.add_argument("--seed", type=int, default=7, help="fit seed")
    parser.add_argument("--cache", type=Path, default=None, help="directory of fitted models, reused if present")
    parser.add_argument("--scoring", action="append", default=[], help="scoring.KEY=VALUE (JSON value)")
    parser.add_argument("--only", action="append", default=[], help="trace only files whose path contains this")
    parser.add_argument(
        "--refit", action="store_true", help="prototype: refit every probationary period (see trace_with_refits)"
    )
    parser.add_argument("--out", type=Path, required=True, help="traces as .npz (FILE::FIELD arrays)")
    args = parser.parse_args(argv)
    base = load_settings(None)
    settings = base.model_copy(update={"fit": base.fit.model_copy(update={"seed": args.seed})})
    settings = with_scoring(settings, args.scoring)
    names = sorted(json.loads((args.nab / "labels" / "combined_windows.json").read_text()))
    arrays: dict[str, np.ndarray] = {}
    for name in names:
        if args.only and not any(part in name for part in args.only):
            continue
        table = read_csv(args.nab / "data" / name)
        model = fitted(table, name, settings, args.cache)
        if args.scoring:  # the cached model carries the fit-time scoring settings
            model.scoring.update(settings.scoring.model_dump())
        trace = trace_with_refits(table, model, settings) if args.refit else trace_file(table, model)
        for key, values in trace.items():
            arrays[f"{name}::{key}"] = values
        print(f"traced {name}", file=sys.stderr, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, allow_pickle=False, **arrays)
    return 0


if __name__ == "__main__":
    sys.exit(main())
