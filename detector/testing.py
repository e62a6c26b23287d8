"""Small ready-made objects for doctests, tests and benchmarks (not used by the service).

``tiny_model`` is a deterministic model for scoring tests; ``service_env`` is the environment of a
`detector run` process against the bundled broker, with the group timings that broker needs.

>>> tiny_model().features
['a', 'b']
>>> env = service_env("127.0.0.1:9092", ServiceTopics("in", "alerts", "dead", "ckpt"), Path("model"))
>>> env["DETECTOR_KAFKA__INPUT_TOPICS"], env["DETECTOR_KAFKA__SESSION_TIMEOUT_MS"]
('["in"]', '6000')
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from detector.model import FittedModel
    from detector.scoring import Detector

__all__ = ["FAST_GROUP", "ServiceTopics", "decide", "decide_step", "service_env", "tiny_model"]

FAST_GROUP: dict[str, str] = {
    "DETECTOR_KAFKA__SESSION_TIMEOUT_MS": "6000",
    "DETECTOR_KAFKA__HEARTBEAT_INTERVAL_MS": "1000",
    "DETECTOR_KAFKA__MAX_POLL_INTERVAL_MS": "15000",
}
"""Consumer-group timings for the bundled broker: Tansu answers a group join after about
session_timeout_ms / 2, and a rebalance waits up to max_poll_interval_ms for a member that died."""


@dataclass
class ServiceTopics:
    """The topics and consumer group of one `detector run` deployment; no scores topic when None."""

    input: str
    alerts: str
    dead_letters: str
    checkpoints: str
    scores: str | None = None
    group: str = field(default_factory=lambda: f"g-{uuid.uuid4().hex[:8]}")


def service_env(bootstrap: str, topics: ServiceTopics, model_dir: Path, **extra: str) -> dict[str, str]:
    """This process's environment plus the settings of a `detector run` on ``topics``: JSON logs,
    metrics on a free port, the fast group timings; ``extra`` variables come last and win."""
    env = {
        **os.environ,
        **FAST_GROUP,
        "DETECTOR_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "DETECTOR_KAFKA__INPUT_TOPICS": json.dumps([topics.input]),
        "DETECTOR_KAFKA__ALERT_TOPIC": topics.alerts,
        "DETECTOR_KAFKA__DEAD_LETTER_TOPIC": topics.dead_letters,
        "DETECTOR_KAFKA__CHECKPOINT_TOPIC": topics.checkpoints,
        "DETECTOR_KAFKA__GROUP_ID": topics.group,
        "DETECTOR_MODEL__PATH": str(model_dir),
        "DETECTOR_METRICS__PORT": "0",
        "DETECTOR_LOG__FORMAT": "json",
    }
    if topics.scores is not None:
        env["DETECTOR_KAFKA__SCORES_TOPIC"] = topics.scores
    env.update(extra)
    return env


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
    import numpy as np
    import torch

    from detector.config import ScoringSettings
    from detector.model import Calibration, FittedModel, StreamAutoencoder

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


def decide_step(detector: Detector, slots: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, list[str | None]]:
    """:func:`decide` for many entities at once (each slot once, past warm-up, at time 0 a second
    after their last message), in one compiled call: (probabilities, events).

    >>> from detector.scoring import Detector
    >>> detector = Detector(tiny_model(warmup_steps=0))
    >>> slots = detector.store.slots_for(["p1", "p2"], owner=0, now=0.0)
    >>> decide_step(detector, slots, np.array([1.0, 1.0]))[1]
    [None, None]
    """
    from detector import stages
    from detector.kernel import decide_rows

    store = detector.store
    probability, _, events = decide_rows(
        slots,
        scores,
        0.0,
        1.0,
        store.seasonal,
        store.likelihood,
        store.novelty,
        store.baseline,
        store.hysteresis,
        detector.params,
    )
    names = {stages.EVENT_OPEN: "open", stages.EVENT_CLOSE: "close"}
    return probability, [names.get(code) for code in events.tolist()]


def decide(
    detector: Detector, slot: int, score: float, timestamp: float = 0.0, elapsed: float = 1.0, warm: bool = True
) -> tuple[float, bool, str | None]:
    """Run the decision stages (:func:`detector.stages.decide`) on one entity's ``score``, as if
    its message had been reconstructed that well: (probability, is_anomaly, event).

    >>> from detector.scoring import Detector
    >>> detector = Detector(tiny_model(warmup_steps=0))
    >>> slot = int(detector.store.slots_for(["pump"], owner=0, now=0.0)[0])
    >>> decide(detector, slot, 1.0)[1:]
    (False, None)
    """
    from detector import stages

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
