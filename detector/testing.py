"""Small ready-made objects for doctests and tests (not used by the service).

>>> tiny_model().features
['a', 'b']
"""

from __future__ import annotations

import numpy as np
import torch

from detector.config import ScoringSettings
from detector.model import Calibration, FittedModel, StreamAutoencoder

__all__ = ["tiny_model"]


def tiny_model(
    features: tuple[str, ...] = ("a", "b"),
    seed: int = 0,
    feature_range: tuple[list[float], list[float]] | None = None,
    **scoring: object,
) -> FittedModel:
    """An untrained but deterministic model with unit scaling and a neutral calibration; with
    ``feature_range`` ((lows), (highs)) its fit data had that range."""
    torch.manual_seed(seed)
    network = StreamAutoencoder(len(features), hidden_size=8, num_layers=1, cell="lstm", bottleneck=4).eval()
    ones = np.ones(len(features))
    return FittedModel(
        network=network,
        features=list(features),
        feature_mean=np.zeros(len(features)),
        feature_scale=ones,
        residual_scale=ones,
        calibration=Calibration(log_mean=0.0, log_std=1.0, threshold_score=22.0, heldout_scores=0),
        scoring=ScoringSettings(**scoring).model_dump(),  # type: ignore[arg-type]
        version="tiny",
        feature_range=None if feature_range is None else np.asarray(feature_range, dtype=np.float64),
    )
