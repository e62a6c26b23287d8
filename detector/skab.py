"""SKAB (Skoltech Anomaly Benchmark) scoring, written from the benchmark's published definition.

The test rows of all files are pooled and scored as one binary classification: F1,
false-alarm rate and missing-alarm rate, see :func:`skab_metrics`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["SkabMetrics", "skab_metrics"]


@dataclass(frozen=True)
class SkabMetrics:
    """Pooled SKAB outlier-detection metrics; ``far`` and ``mar`` in percent."""

    f1: float
    far: float
    mar: float
    tp: int
    fp: int
    fn: int
    tn: int


def skab_metrics(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray) -> SkabMetrics:
    """Score pooled 0/1 predictions against SKAB's ``anomaly`` column.

    F1 = TP / (TP + (FP + FN) / 2), FAR = 100 FP / (FP + TN),
    MAR = 100 FN / (FN + TP); a ratio with a zero denominator is 0.

    >>> m = skab_metrics([1, 1, 0, 0, 0], [1, 0, 1, 0, 0])
    >>> (m.tp, m.fp, m.fn, m.tn)
    (1, 1, 1, 2)
    >>> round(m.f1, 4), round(m.far, 2), round(m.mar, 2)
    (0.5, 33.33, 50.0)
    """
    truth, pred = as_binary(y_true, "y_true"), as_binary(y_pred, "y_pred")
    if truth.shape != pred.shape:
        raise ValueError(f"y_true has {truth.size} rows, y_pred {pred.size}")
    tp, fp = int(np.sum(truth & pred)), int(np.sum(~truth & pred))
    fn, tn = int(np.sum(truth & ~pred)), int(np.sum(~truth & ~pred))
    return SkabMetrics(
        f1=_ratio(tp, tp + (fp + fn) / 2),
        far=100.0 * _ratio(fp, fp + tn),
        mar=100.0 * _ratio(fn, fn + tp),
        tp=tp,
        fp=fp,
        fn=fn,
        tn=tn,
    )


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def as_binary(values: npt.ArrayLike, name: str) -> np.ndarray:
    """``values`` as a boolean array; ``ValueError`` naming ``name`` unless it is 1-D and all 0/1."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional")
    if not np.isin(array, (0, 1)).all():
        raise ValueError(f"{name} must hold only 0 and 1")
    return array.astype(bool)
