"""The PNG fit report: loss curves and the held-out score histogram with the threshold.

>>> write_report(model, history, Path("models/current/report.png"))   # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

if TYPE_CHECKING:
    from detector.fit import FitHistory
    from detector.model import FittedModel

__all__ = ["write_report"]


def write_report(model: FittedModel, history: FitHistory, path: Path) -> Path:
    """Draw the report to ``path`` (PNG)."""
    figure, (losses, scores) = plt.subplots(1, 2, figsize=(11, 4))
    epochs = np.arange(1, len(history.train_loss) + 1)
    losses.plot(epochs, history.train_loss, label="train")
    losses.plot(epochs, history.val_loss, label="held-out")
    losses.axvline(history.best_epoch + 1, color="grey", linestyle=":", label="best")
    losses.set(title="Loss (MSE, standardised)", xlabel="epoch", yscale="log")
    losses.legend()
    if len(history.heldout_scores):
        scores.hist(history.heldout_scores, bins=40, color="tab:blue", alpha=0.8)
    scores.axvline(
        model.calibration.threshold_score, color="tab:red", label=f"threshold {model.calibration.threshold_score:.2f}"
    )
    scores.set(title=f"Held-out scores (n={len(history.heldout_scores)})", xlabel="score", ylabel="count")
    scores.legend()
    figure.suptitle(f"detector model {model.version}")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path
