"""The cost of a model rollout on the streaming path: a batch's step with and without one.

    python benchmarks/rollout_cost.py [--model MODEL_DIR] [--entities 10000] [--batch 1000]

Prints the time of one batch (``--batch`` distinct entities of ``--entities`` warm ones)
through the service's scoring (the Detector's batched step, then the rollout's decision), first
steady; then right after a model of another version was swapped in, with every entity starting
fresh on it (what a new model did before rollouts: its first messages create the new states); and
with the rollout, every entity still decided by the old model (both states stepped). Without
``--model`` it uses an untrained network of the default architecture on one feature (speed does
not depend on the weights). Each figure is the fastest of 20 batches (robust to other load).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
from kafka import TopicPartition

from detector.model import FittedModel, StreamAutoencoder, load_model
from detector.partition_states import PartitionStates
from detector.schema import Columns
from detector.scoring import Detector
from detector.testing import tiny_model

_ROUNDS = 20


def _default_model() -> FittedModel:
    network = StreamAutoencoder(1, 32, 1, "lstm", 8, periods=(86400.0,), level_halflife_s=86400.0).eval()
    return dataclasses.replace(tiny_model(features=("value",)), network=network)


def _batch(model: FittedModel, names: list[str], size: int, minute: int, rng: np.random.Generator) -> Columns:
    chosen = rng.choice(len(names), size, replace=False)
    values = model.feature_mean + model.feature_scale * rng.standard_normal((size, len(model.features)))
    return Columns([names[i] for i in chosen], np.full(size, 1.7e9 + minute * 60.0), values)


def _best_ms(states: PartitionStates, model: FittedModel, names: list[str], size: int, start: int) -> float:
    rng, owners, spent = np.random.default_rng(start), np.ones(size, dtype=np.int32), []
    for minute in range(start, start + _ROUNDS):
        batch = _batch(model, names, size, minute, rng)
        began = time.perf_counter()
        outcomes = states.detector.process_columns(batch, owner=owners, now=0.0)
        states.decide(outcomes, owners, drop_stale=False)
        spent.append(time.perf_counter() - began)
    return min(spent) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a model directory (default: an untrained default network)")
    parser.add_argument("--entities", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=1_000)
    args = parser.parse_args()
    model = load_model(args.model) if args.model else _default_model()
    names = [f"e{i}" for i in range(args.entities)]
    figures = {}
    for case in ("fresh", "rollout"):
        states = _warmed(model, names)
        figures["steady"] = _best_ms(states, model, names, args.batch, 100)
        states.replace(Detector(dataclasses.replace(model, version=model.version + "-next")))
        if case == "fresh":
            states.rollout.previous.clear()  # no previous states: the new model alone, from fresh states
        figures[case] = _best_ms(states, model, names, args.batch, 200)
    print(f"batch of {args.batch} of {args.entities} entities, fastest of {_ROUNDS}:")
    print(f"  steady                             {figures['steady']:7.1f} ms")
    print(f"  new model, every entity fresh      {figures['fresh']:7.1f} ms")
    print(f"  new model, rolled out (both step)  {figures['rollout']:7.1f} ms")


def _warmed(model: FittedModel, names: list[str]) -> PartitionStates:
    """Partition states in which every entity is past its warm-up."""
    states = PartitionStates(Detector(model))
    states.owner(TopicPartition("sensors", 0))
    rng = np.random.default_rng(0)
    for minute in range(30):
        values = model.feature_mean + model.feature_scale * rng.standard_normal((len(names), len(model.features)))
        states.detector.process_columns(Columns(names, np.full(len(names), 1.7e9 + minute * 60.0), values), owner=1)
    return states


if __name__ == "__main__":
    main()
