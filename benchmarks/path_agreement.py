"""How far the sequence path and the stepping path agree on one NAB file, and why.

Fits the file's probationary head as ``detector evaluate`` does (seed 7), with fit's held-out
scoring on either path, scores the file on either path, and prints the largest probability
difference of each combination from stepping both, the calibration each fit gives, and the
condition number of the decoder's last layer (sum of the magnitudes of its terms over the
magnitude of its output: how much float32 rounding is amplified in the reconstruction).

    .venv/bin/python benchmarks/path_agreement.py [NAB_FILE ...]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detector import scoring
from detector.benchmark import probationary_rows
from detector.config import load_settings
from detector.evaluate import _head
from detector.fit import fit_tables
from detector.schema import read_csv

DATA = Path(os.environ.get("DETECTOR_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
STEPPING = 10**12  # rows per entity a batch would need to take the sequence path: never
SEQUENCE = scoring._SEQUENCE_ROWS_PER_ENTITY


def run(name: str, fit_path: int, score_path: int) -> dict[str, Any]:
    """Fit and score ``name`` with the held-out scoring and the file's scoring on the given paths."""
    settings = load_settings(None)
    settings = settings.model_copy(update={"fit": settings.fit.model_copy(update={"seed": 7})})
    table = read_csv(DATA / "nab" / "data" / name)
    head = _head(table, probationary_rows(len(table.timestamps)))
    scoring._SEQUENCE_ROWS_PER_ENTITY = fit_path
    try:
        model, _ = fit_tables([head], settings.model, settings.fit, settings.scoring, progress=False)
        scoring._SEQUENCE_ROWS_PER_ENTITY = score_path
        seen: list[tuple[torch.Tensor, torch.Tensor]] = []
        last = model.network.decoder[2]
        assert isinstance(last, torch.nn.Linear)  # the decoder's output layer
        hook = last.register_forward_hook(lambda _m, i, o: seen.append((i[0].detach(), o.detach())))
        outcomes = scoring.Detector(model).process_columns(table.columns())
        hook.remove()
    finally:
        scoring._SEQUENCE_ROWS_PER_ENTITY = SEQUENCE
    inputs = torch.cat([i.reshape(-1, i.shape[-1]) for i, _ in seen]).double()
    output = torch.cat([o.reshape(-1, o.shape[-1]) for _, o in seen]).double()
    weight, bias = last.weight.detach().double(), last.bias.detach().double()
    terms = (inputs[:, None, :] * weight[None]).abs().sum(-1) + bias.abs()
    condition = (terms / output.abs().clamp(min=1e-30)).numpy().ravel()
    return {
        "probability": outcomes.probability.copy(),
        "calibration": (model.calibration.log_mean, model.calibration.log_std),
        "residual_scale": float(np.min(model.residual_scale)),
        "condition": (float(np.median(condition)), float(np.quantile(condition, 0.99))),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "files",
        nargs="*",
        default=["artificialNoAnomaly/art_flatline.csv", "realKnownCause/machine_temperature_system_failure.csv"],
        help="NAB files, relative to the data/ directory (default: art_flatline and machine_temperature)",
    )
    names = parser.parse_args(argv).files
    torch.set_num_threads(1)
    for name in names:
        paths = {"step": STEPPING, "sequence": SEQUENCE}
        runs = {(f, s): run(name, paths[f], paths[s]) for f in paths for s in paths}
        reference = runs["step", "step"]["probability"]
        print(f"{name}")
        print("| fit's held-out scoring | scoring the file | max abs prob. difference | log_mean, log_std |")
        print("| --- | --- | --- | --- |")
        for (fit_path, score_path), result in runs.items():
            worst = float(np.abs(result["probability"] - reference).max())
            mean, std = result["calibration"]
            print(f"| {fit_path} | {score_path} | {worst:.3g} | {mean:.8f}, {std:.8f} |")
        result = runs["sequence", "sequence"]
        print(
            f"residual scale (smallest) {result['residual_scale']:.3g}; decoder condition number: "
            f"median {result['condition'][0]:,.0f}, 99th percentile {result['condition'][1]:,.0f}\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
