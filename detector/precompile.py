"""Compile every numba kernel the detector runs into numba's cache, once.

A container image runs this while it is built, with ``NUMBA_CACHE_DIR`` pointing into the image
and ``NUMBA_CPU_NAME=generic`` (code for any x86-64 CPU, so the cache is valid on the machine the
container runs on); at run time :mod:`detector.jit` copies that cache into a writable place. The
kernels are compiled for the argument types the detector passes them, so this scores a few rows
the ways the detector does: building a detector (its null calibration), a stream's batched step
and a file's sequence path, for models with and without a recorded feature range.

    NUMBA_CACHE_DIR=/opt/venv/share/detector/numba-cache python -P -m detector.precompile

numba keys its cache by the source files' directory, so run it where the package is imported
from its installed place (``-P``: not from a source tree in the working directory).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import detector
from detector.observation import Columns
from detector.scoring import Detector
from detector.testing import tiny_model

__all__ = ["precompile"]


def precompile() -> int:
    """Score rows through every compiled path; the number of rows scored."""
    scored = 0
    for feature_range in (None, ([0.0, 0.0], [1.0, 1.0])):
        model = tiny_model(feature_range=feature_range, periods=(86_400.0,), level_halflife_s=3_600.0)
        scorer = Detector(model, max_entities=100)
        rows = np.random.default_rng(0).normal(size=(64, len(model.features)))
        stream = Columns([f"e{i % 8}" for i in range(8)], np.arange(8.0), rows[:8])
        scored += len(scorer.process_columns(stream, now=8.0).score)
        file = Columns(["f"] * 64, 100.0 + np.arange(64.0), rows)
        scored += len(scorer.process_columns(file, now=200.0, drop_stale=True).score)
    return scored


def main() -> int:
    rows = precompile()
    package = Path(detector.__file__).parent
    print(f"precompile: compiled the kernels of {package} ({rows} rows scored)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
