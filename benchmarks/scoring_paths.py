"""Throughput of the detector's two paths: files (sequence) and streams (batched step).

    python benchmarks/scoring_paths.py [--model MODEL_DIR]

Prints rows/s of ``Detector.process_columns`` on one entity x 100,000 rows and on 1,000 entities
x 1,000 rows, the ``nn.LSTM`` forward over the same input as the physical reference, and the
time of one streaming step of 1,000 distinct entities. Without ``--model`` it uses an untrained
network of the default architecture on one feature (speed does not depend on the weights).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import torch

from detector.model import FittedModel, StreamAutoencoder, load_model
from detector.schema import Columns
from detector.scoring import Detector, Outcomes
from detector.testing import tiny_model


def _default_model() -> FittedModel:
    network = StreamAutoencoder(1, 32, 1, "lstm", 8, periods=(86400.0,), level_halflife_s=86400.0).eval()
    return dataclasses.replace(tiny_model(features=("value",)), network=network)


def _columns(model: FittedModel, entities: int, rows: int, rng: np.random.Generator) -> Columns:
    names = [f"e{i}" for i in range(entities)]
    timestamps = 1.7e9 + np.repeat(np.arange(rows, dtype=float) * 60.0, entities)
    values = model.feature_mean + model.feature_scale * rng.standard_normal((entities * rows, len(model.features)))
    return Columns(names * rows, timestamps, values)


def _score_file(model: FittedModel, batch: Columns) -> Outcomes:
    """Score ``batch`` as one file with a fresh Detector."""
    return Detector(model).process_columns(batch, now=0.0)


def _best(run: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a fitted model directory (default: an untrained default network)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    model = load_model(args.model) if args.model else _default_model()
    rng = np.random.default_rng(0)
    Detector(model).process_columns(_columns(model, 2, 3, rng), now=0.0)  # compile (or load) the kernels
    waves = [_columns(model, 1000, 1, rng) for _ in range(30)]
    streaming = Detector(model)
    streaming.process_columns(waves[0], now=0.0)

    def stream() -> None:
        for wave in waves:
            streaming.process_columns(wave, now=0.0)

    print(f"stream step, 1,000 entities: {_best(stream, args.repeat) / len(waves) * 1e3:.2f} ms")
    arch = model.network.architecture
    inputs = 2 * arch.n_features + 2 * len(arch.periods)
    lstm = torch.nn.LSTM(inputs, arch.hidden_size, arch.num_layers, batch_first=True)
    for entities, rows in ((1, 100_000), (1000, 1000)):
        batch = _columns(model, entities, rows, rng)
        elapsed = _best(partial(_score_file, model, batch), args.repeat)
        x = torch.randn(entities, rows, inputs)
        with torch.inference_mode():
            reference = _best(partial(lstm, x), args.repeat)
        print(
            f"file, {entities:,} x {rows:,} rows: {entities * rows / elapsed:,.0f} rows/s ({elapsed:.2f} s); "
            f"nn.LSTM forward of the same input {reference:.3f} s"
        )


if __name__ == "__main__":
    main()
