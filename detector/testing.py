"""Small ready-made objects for doctests and tests (not used by the service).

>>> tiny_model().features
['a', 'b']
"""

from __future__ import annotations

import numpy as np
import torch

from detector import stages
from detector.config import ScoringSettings
from detector.model import Calibration, FittedModel, StreamAutoencoder
from detector.scoring import Detector

__all__ = ["decide", "tiny_model"]


def tiny_model(
    features: tuple[str, ...] = ("a", "b"),
    seed: int = 0,
    feature_range: tuple[list[float], list[float]] | None = None,
    periods: tuple[float, ...] = (),
    level_halflife_s: float = 0.0,
    **scoring: object,
) -> FittedModel:
    """An untrained but deterministic model with unit scaling and a neutral calibration; with
    ``feature_range`` ((lows), (highs)) its fit data had that range; ``periods`` and
    ``level_halflife_s`` as in :class:`StreamAutoencoder`."""
    torch.manual_seed(seed)
    network = StreamAutoencoder(
        len(features), 8, 1, "lstm", 4, periods=periods, level_halflife_s=level_halflife_s
    ).eval()
    ones = np.ones(len(features))
    return FittedModel(
        network=network,
        features=list(features),
        feature_mean=np.zeros(len(features)),
        feature_scale=ones,
        residual_scale=ones,
        calibration=Calibration(log_mean=0.0, log_std=1.0, threshold_score=22.0, heldout_scores=0),
        scoring=ScoringSettings.model_validate(scoring).model_dump(),
        version="tiny",
        feature_range=None if feature_range is None else np.asarray(feature_range, dtype=np.float64),
    )


def decide(
    detector: Detector, slot: int, score: float, timestamp: float = 0.0, elapsed: float = 1.0, warm: bool = True
) -> tuple[float, bool, str | None]:
    """Run the decision stages (:func:`detector.stages.decide`) on one entity's ``score``, as if
    its message had been reconstructed that well: (probability, is_anomaly, event).

    >>> detector = Detector(tiny_model(warmup_steps=0))
    >>> slot = int(detector.store.slots_for(["pump"], owner=0, now=0.0)[0])
    >>> decide(detector, slot, 1.0)[1:]
    (False, None)
    """
    store = detector.store
    probability, is_anomaly, event, _ = stages.decide(
        store.seasonal,
        store.likelihood,
        store.novelty,
        store.baseline,
        store.hysteresis,
        slot,
        score,
        score,
        timestamp,
        elapsed,
        warm,
        detector.params,
    )
    return probability, is_anomaly, {stages.EVENT_OPEN: "open", stages.EVENT_CLOSE: "close"}.get(event)
