"""Scoring rules of two public anomaly benchmarks: SKAB and NAB v1.1.

Both are written from the benchmarks' published definitions.  SKAB's pooled
metrics live in :mod:`detector.skab`, NAB's inputs (profiles, windows, files) in
:mod:`detector.nab_inputs`; this module holds NAB's scoring rules and re-exports the rest.

* NAB v1.1 (Numenta Anomaly Benchmark): windowed scoring with a scaled
  sigmoid, application profiles (cost matrices), a probationary period,
  normalisation against the null and perfect detectors and a threshold
  swept over the corpus, following ``nab/sweeper.py``, ``nab/optimizer.py``
  and ``Runner.normalize`` of the reference implementation.  See
  :func:`score_file`, :func:`nab_corpus_score` and
  :func:`optimise_threshold`.

NAB in one paragraph: every row ``i`` has a *sweep weight*.  Inside a window
spanning rows ``lo..hi`` (width ``w = hi - lo + 1``) it is
``tp * S(-(hi - i + 1) / w) / S(-1)``, so a detection at the first row earns
exactly ``tp``.  Outside windows it is ``fp * S(d / (w_prev - 1))``, where
``d`` is the distance in rows to the end of the preceding window, or
``-fp`` when no window precedes.  ``S(x) = 2 / (1 + exp(5x)) - 1`` (and
``-1`` for ``x > 3``).  At a threshold, every detected row outside windows
adds its weight, every window adds the weight of its first (highest-weight)
detected row or ``-fn`` if none was detected, and rows of the probationary
period are ignored.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import numpy.typing as npt

from detector.nab_inputs import CostMatrix, NabFile, NabFileLike, Window, load_profiles, load_windows
from detector.skab import SkabMetrics, as_binary, skab_metrics

__all__ = [
    "CostMatrix",
    "FileScore",
    "NabFile",
    "NabFileLike",
    "SkabMetrics",
    "load_profiles",
    "load_windows",
    "nab_corpus_score",
    "optimise_threshold",
    "probationary_rows",
    "scaled_sigmoid",
    "score_file",
    "score_from_decisions",
    "skab_metrics",
    "window_rows",
]


PROBATION_PERCENT = 0.15
"""Share of each NAB file that is not scored (NAB ``probationPercent``)."""

PROBATION_CAP = 750
"""Upper bound on probationary rows (NAB: ``probationPercent * 5000``)."""

NO_DETECTION_THRESHOLD = 1.1
"""Threshold above every score in [0, 1]: the sweep's 'never detect' point."""


# --------------------------------------------------------------------------
# NAB: the scoring rules
# --------------------------------------------------------------------------


def probationary_rows(n_rows: int) -> int:
    """Rows at the start of a file that NAB does not score.

    >>> probationary_rows(4032), probationary_rows(22695)
    (604, 750)
    """
    return min(math.floor(PROBATION_PERCENT * n_rows), PROBATION_CAP)


def scaled_sigmoid(position: npt.ArrayLike) -> np.ndarray:
    """NAB's ``2 * sigmoid(-5 x) - 1``, which is ``-tanh(2.5 x)``; -1 for x > 3.

    -1 is a window's first row, 0 just past its last; positive positions are
    rows after a window, in units of that window's length.

    >>> [round(float(scaled_sigmoid(x)), 5) for x in (-1.0, -0.5, 1.0, 3.5)]
    [0.98661, 0.84828, -0.98661, -1.0]
    """
    x = np.asarray(position, dtype=float)
    return np.where(x > 3.0, -1.0, -np.tanh(2.5 * x))


MAX_TP = float(scaled_sigmoid(-1.0))
"""S(-1): NAB divides true-positive weights by it, so the best TP earns ``tp``."""


def window_rows(timestamps: Sequence[datetime], windows: Iterable[Window]) -> list[tuple[int, int]]:
    """Map label windows to inclusive ``(first_row, last_row)`` spans.

    Row order is the stream order, so timestamps may repeat or jump back.  A
    window runs from the first row stamped with its start to the last row at
    or after that one stamped with its end.  A bound that no row carries
    falls back to the first / last such row whose timestamp lies inside the
    window; a window no row falls into is dropped.  Spans come back sorted;
    overlapping spans raise ``ValueError``.

    >>> from datetime import datetime, timedelta
    >>> t = [datetime(2024, 1, 1) + timedelta(hours=h) for h in (0, 1, 2, 1, 2, 3)]
    >>> window_rows(t, [(t[1], t[2])])  # hours 1 and 2 repeat: rows 1..4
    [(1, 4)]
    """
    stamps = _datetime64(timestamps)
    spans = sorted(s for s in (_span(stamps, w) for w in windows) if s is not None)
    for (_, previous_end), (start, _) in itertools.pairwise(spans):
        if start <= previous_end:
            raise ValueError(f"label windows overlap at row {start}")
    return spans


def _datetime64(timestamps: Sequence[datetime]) -> np.ndarray:
    return np.asarray(timestamps, dtype="datetime64[us]")


def _span(stamps: np.ndarray, window: Window) -> tuple[int, int] | None:
    start, end = (np.datetime64(bound, "us") for bound in window)
    if start > end:
        raise ValueError(f"label window ends before it starts: {window}")
    inside = (stamps >= start) & (stamps <= end)
    first = _rows(stamps == start, inside)
    if first.size == 0:
        return None
    after = np.arange(stamps.size) >= first[0]
    last = _rows((stamps == end) & after, inside & after)  # holds first[0]
    return int(first[0]), int(last[-1])


def _rows(exact: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Rows matching a bound exactly, else rows merely inside the window."""
    return np.flatnonzero(exact if exact.any() else fallback)


def _relative_sigmoid(n_rows: int, spans: Sequence[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Unweighted NAB value and window index (-1 outside) of every row."""
    sigmoid = np.full(n_rows, -1.0)  # before any window: the full FP cost
    window = np.full(n_rows, -1, dtype=np.intp)
    for index, (first, last) in enumerate(spans):
        rows = np.arange(first, last + 1)
        sigmoid[rows] = scaled_sigmoid(-(last - rows + 1) / (last - first + 1))
        window[rows] = index
    _fill_after_windows(sigmoid, window, spans)
    return sigmoid, window


def _fill_after_windows(sigmoid: np.ndarray, window: np.ndarray, spans: Sequence[tuple[int, int]]) -> None:
    """Rows after a window: distance past its end over (its width - 1)."""
    if not spans:
        return
    ends = np.array([last for _, last in spans])
    widths = np.array([last - first + 1 for first, last in spans])
    rows = np.flatnonzero(window < 0)
    preceding = np.searchsorted(ends, rows) - 1
    rows, preceding = rows[preceding >= 0], preceding[preceding >= 0]
    # NAB divides by zero after a one-row window; count plain rows instead.
    scale = np.maximum(widths[preceding] - 1, 1)
    sigmoid[rows] = scaled_sigmoid((rows - ends[preceding]) / scale)


@dataclass(frozen=True)
class _Scorable:
    """The scored (post-probation) rows of one file, threshold-independent."""

    scores: np.ndarray
    sigmoid: np.ndarray
    window: np.ndarray  # 0 .. n_windows - 1, or -1 outside windows
    n_windows: int

    def weights(self, profile: CostMatrix) -> np.ndarray:
        true_positive = profile.tp * self.sigmoid / MAX_TP
        return np.where(self.window >= 0, true_positive, profile.fp * self.sigmoid)


def _prepare(file: NabFileLike) -> _Scorable:
    scores = _scores(file.scores, len(file.timestamps))
    spans = window_rows(file.timestamps, file.windows)
    sigmoid, window = _relative_sigmoid(scores.size, spans)
    skip = probationary_rows(scores.size)
    kept = window[skip:]
    present = np.unique(kept[kept >= 0])
    compact = np.full(len(spans) + 1, -1, dtype=np.intp)  # [-1] maps -1 to -1
    compact[present] = np.arange(present.size)
    return _Scorable(scores[skip:], sigmoid[skip:], compact[kept], int(present.size))


def _scores(values: npt.ArrayLike, n_rows: int) -> np.ndarray:
    scores = np.asarray(values, dtype=float)
    if scores.shape != (n_rows,):
        raise ValueError(f"{scores.size} scores for {n_rows} timestamps")
    if not ((scores >= 0.0) & (scores <= 1.0)).all():
        raise ValueError("anomaly scores must lie in [0, 1]")
    return scores


def _prepare_all(files: Mapping[str, NabFileLike]) -> list[_Scorable]:
    prepared = []
    for name, file in files.items():
        try:
            prepared.append(_prepare(file))
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from error
    return prepared


# --------------------------------------------------------------------------
# NAB: scoring a file, a corpus, a sweep
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class FileScore:
    """Raw NAB score of one file at one threshold.

    ``tp``, ``fp``, ``fn`` and ``tn`` count scored rows, as NAB's
    ``ThresholdScore`` does; ``windows_detected`` / ``windows_missed`` count
    scored windows.
    """

    score: float
    tp: int
    fp: int
    fn: int
    tn: int
    windows_detected: int
    windows_missed: int


def score_file(
    timestamps: Sequence[datetime],
    windows: Sequence[Window],
    scores: Sequence[float],
    threshold: float,
    profile: CostMatrix,
) -> FileScore:
    """Raw NAB score of one file; rows scoring at or above ``threshold`` are detections.

    >>> from datetime import datetime, timedelta
    >>> ts = [datetime(2024, 1, 1) + timedelta(minutes=5 * i) for i in range(40)]
    >>> scores = [0.0] * 40
    >>> scores[20] = scores[25] = 1.0  # the window's first row, and later
    >>> standard = CostMatrix(tp=1.0, fp=0.11, fn=1.0, tn=1.0)
    >>> result = score_file(ts, [(ts[20], ts[29])], scores, 0.5, standard)
    >>> round(result.score, 6), result.tp, result.windows_detected
    (1.0, 2, 1)
    """
    return _score(_prepare(NabFile(timestamps, scores, windows)), threshold, profile)


def _score(file: _Scorable, threshold: float, profile: CostMatrix) -> FileScore:
    weights = file.weights(profile)
    detected, inside = file.scores >= threshold, file.window >= 0
    first = np.full(file.n_windows, -np.inf)  # best = earliest detection
    np.maximum.at(first, file.window[detected & inside], weights[detected & inside])
    hit = np.isfinite(first)
    total = weights[detected & ~inside].sum() + first[hit].sum() - profile.fn * np.sum(~hit)
    return FileScore(
        score=float(total),
        tp=int(np.sum(detected & inside)),
        fp=int(np.sum(detected & ~inside)),
        fn=int(np.sum(~detected & inside)),
        tn=int(np.sum(~detected & ~inside)),
        windows_detected=int(np.sum(hit)),
        windows_missed=int(np.sum(~hit)),
    )


def _normalise(raw: float, n_windows: int, profile: CostMatrix) -> float:
    """100 (raw - null) / (perfect - null); null misses, perfect hits every window early."""
    null, perfect = -profile.fn * n_windows, profile.tp * n_windows
    if perfect == null:
        raise ValueError("no scored anomaly window: the NAB score is undefined")
    return 100.0 * (raw - null) / (perfect - null)


def nab_corpus_score(files: Mapping[str, NabFileLike], profile: CostMatrix, threshold: float) -> float:
    """Normalised NAB score of a corpus at one threshold (0 null .. 100 perfect).

    >>> from datetime import datetime, timedelta
    >>> ts = [datetime(2024, 1, 1) + timedelta(minutes=5 * i) for i in range(40)]
    >>> perfect = [1.0 if i == 20 else 0.0 for i in range(40)]
    >>> files = {"f.csv": NabFile(ts, perfect, [(ts[20], ts[29])])}
    >>> standard = CostMatrix(tp=1.0, fp=0.11, fn=1.0, tn=1.0)
    >>> nab_corpus_score(files, standard, 0.5), nab_corpus_score(files, standard, 1.1)
    (100.0, 0.0)
    """
    prepared = _prepare_all(files)
    raw = sum(_score(file, threshold, profile).score for file in prepared)
    return _normalise(raw, sum(file.n_windows for file in prepared), profile)


def score_from_decisions(files: Mapping[str, NabFileLike], profile: CostMatrix) -> float:
    """Normalised NAB score of 0/1 decisions taken as they are (threshold 0.5).

    >>> from datetime import datetime, timedelta
    >>> ts = [datetime(2024, 1, 1) + timedelta(minutes=5 * i) for i in range(40)]
    >>> late = [1 if i == 29 else 0 for i in range(40)]
    >>> standard = CostMatrix(tp=1.0, fp=0.11, fn=1.0, tn=1.0)
    >>> round(score_from_decisions({"f": NabFile(ts, late, [(ts[20], ts[29])])}, standard), 2)
    62.41
    """
    for name, file in files.items():
        as_binary(file.scores, f"{name} decisions")
    return nab_corpus_score(files, profile, 0.5)


def optimise_threshold(files: Mapping[str, NabFileLike], profile: CostMatrix) -> tuple[float, float]:
    """Best corpus threshold and its normalised score, swept as NAB does.

    Every distinct score is a candidate, plus 1.1 (never detect); ties go to
    the highest threshold, like NAB's stable sort of its sweep.

    >>> from datetime import datetime, timedelta
    >>> ts = [datetime(2024, 1, 1) + timedelta(minutes=5 * i) for i in range(40)]
    >>> scores = [0.2] * 40
    >>> scores[20] = 0.7  # the window's first row
    >>> standard = CostMatrix(tp=1.0, fp=0.11, fn=1.0, tn=1.0)
    >>> optimise_threshold({"f": NabFile(ts, scores, [(ts[20], ts[29])])}, standard)
    (0.7, 100.0)
    """
    prepared = _prepare_all(files)
    thresholds, raw = _sweep(prepared, profile)
    best = int(np.argmax(raw))  # first maximum: the highest threshold
    n_windows = sum(file.n_windows for file in prepared)
    return float(thresholds[best]), _normalise(float(raw[best]), n_windows, profile)


def _sweep(files: Sequence[_Scorable], profile: CostMatrix) -> tuple[np.ndarray, np.ndarray]:
    """Raw corpus score at every candidate threshold, thresholds descending.

    Each row gets the change it makes to the corpus score when it becomes a
    detection (rows taken by descending score); the score at a threshold is
    then a cumulative sum read at the last row of each distinct score.
    """
    scores = np.concatenate([file.scores for file in files] + [np.empty(0)])
    deltas = np.concatenate([_deltas(file, profile) for file in files] + [np.empty(0)])
    order = np.argsort(-scores, kind="stable")
    ranked, running = scores[order], np.cumsum(deltas[order])
    ends = _last_of_each_value(ranked)
    null = -profile.fn * sum(file.n_windows for file in files)
    thresholds = np.concatenate(([NO_DETECTION_THRESHOLD], ranked[ends]))
    return thresholds, null + np.concatenate(([0.0], running[ends]))


def _last_of_each_value(ranked: np.ndarray) -> np.ndarray:
    """Positions where a sorted array's value is about to change (and its end)."""
    if ranked.size == 0:
        return np.empty(0, dtype=np.intp)
    return np.flatnonzero(np.append(ranked[1:] != ranked[:-1], True))


def _deltas(file: _Scorable, profile: CostMatrix) -> np.ndarray:
    """Per-row score change; a window row adds only what raises the window's best."""
    weights = file.weights(profile)
    deltas = np.where(file.window < 0, weights, 0.0)
    for index in range(file.n_windows):
        rows = np.flatnonzero(file.window == index)
        rows = rows[np.argsort(-file.scores[rows], kind="stable")]
        best = np.maximum.accumulate(np.concatenate(([-profile.fn], weights[rows])))
        deltas[rows] = np.diff(best)
    return deltas
