"""Tests of detector.benchmark: SKAB metrics and NAB v1.1 scoring.

Expected numbers are worked out by hand from the published definitions:

* S(x) = 2 * sigmoid(-5x) - 1 = -tanh(2.5x), and -1 for x > 3.
  S(-1) = tanh(2.5) = 0.98661429815.
* A row i inside a window of rows lo..hi (w = hi - lo + 1) is worth
  tp * S(-(hi - i + 1) / w) / S(-1); the window counts its best (first)
  detection, or -fn if it has none.
* A detected row outside windows is worth fp * S(d / (w - 1)), d its distance
  past the preceding window's last row, or -fp if no window precedes it.
* The first min(floor(0.15 n), 750) rows are not scored.
* Normalised score = 100 (raw - null) / (perfect - null), with
  null = -fn * windows and perfect = tp * windows.

Most cases use 40 rows 5 minutes apart (probation floor(0.15 * 40) = 6 rows)
and one window on rows 20..29 (width 10), under the standard profile
(tp 1, fp 0.11, fn 1).
"""

from __future__ import annotations

import csv
import doctest
import itertools
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from detector import benchmark
from detector.benchmark import (
    CostMatrix,
    NabFile,
    load_profiles,
    load_windows,
    nab_corpus_score,
    optimise_threshold,
    probationary_rows,
    scaled_sigmoid,
    score_file,
    score_from_decisions,
    skab_metrics,
    window_rows,
)

NAB_DIR = Path("/work/shared/data/nab")
STANDARD = CostMatrix(tp=1.0, fp=0.11, fn=1.0, tn=1.0)
N_ROWS = 40
START = datetime(2024, 1, 1)


def stamps(n: int = N_ROWS) -> list[datetime]:
    return [START + timedelta(minutes=5 * i) for i in range(n)]


def spikes(*rows: int, n: int = N_ROWS) -> list[float]:
    return [1.0 if i in rows else 0.0 for i in range(n)]


def one_window_file(scores: list[float]) -> NabFile:
    ts = stamps(len(scores))
    return NabFile(ts, scores, [(ts[20], ts[29])])


def raw(scores: list[float], threshold: float = 0.5, profile: CostMatrix = STANDARD):
    file = one_window_file(scores)
    return score_file(file.timestamps, file.windows, file.scores, threshold, profile)


# ---------------------------------------------------------------- SKAB


def test_skab_metrics_on_a_small_confusion_case():
    # truth 1 1 1 0 0 0 0 0 1 0, prediction 1 0 1 1 0 0 0 0 0 0
    # TP = 2 (rows 0, 2), FN = 2 (rows 1, 8), FP = 1 (row 3), TN = 5
    # F1 = 2 / (2 + 3/2) = 4/7, FAR = 100 * 1/6, MAR = 100 * 2/4 = 50
    m = skab_metrics([1, 1, 1, 0, 0, 0, 0, 0, 1, 0], [1, 0, 1, 1, 0, 0, 0, 0, 0, 0])
    assert (m.tp, m.fp, m.fn, m.tn) == (2, 1, 2, 5)
    assert m.f1 == pytest.approx(4 / 7)
    assert m.far == pytest.approx(16.666666666666668)
    assert m.mar == pytest.approx(50.0)


def test_skab_zero_denominators_give_zero():
    # no positives at all: TP = FP = FN = 0, TN = 3 -> every ratio is 0 by definition
    m = skab_metrics([0, 0, 0], [0, 0, 0])
    assert (m.f1, m.far, m.mar, m.tn) == (0.0, 0.0, 0.0, 3)


def test_skab_rejects_bad_input():
    with pytest.raises(ValueError):
        skab_metrics([0, 1], [0, 1, 1])
    with pytest.raises(ValueError):
        skab_metrics([0, 2], [0, 1])


# ---------------------------------------------------------------- NAB basics


def test_probationary_rows():
    # min(floor(0.15 n), 750)
    assert [probationary_rows(n) for n in (10, 40, 100, 4032, 5000, 22695)] == [1, 6, 15, 604, 750, 750]


def test_scaled_sigmoid_matches_nab_reference_points():
    # 2 sigmoid(5) - 1 = 0.98661, 2 sigmoid(2.5) - 1 = 0.84828, 0 at 0, -1 beyond 3
    # (-tanh(6.25) = -0.9999925 at 2.5 and -tanh(7.5) = -0.99999939 at 3: the cap is only past 3)
    values = scaled_sigmoid([-1.0, -0.5, 0.0, 1.0, 2.5, 3.0, 3.01])
    expected = [
        0.9866142981514303,
        0.8482836399575129,
        0.0,
        -0.9866142981514303,
        -0.9999925467214317,
        -0.9999993881955461,
        -1.0,
    ]
    assert values == pytest.approx(expected, rel=1e-12, abs=1e-15)


# ---------------------------------------------------------------- NAB file scoring


def test_perfect_detector_scores_100_and_null_detector_0():
    # perfect: one detection on the window's first row -> raw tp * S(-1)/S(-1) = 1
    # null: nothing detected -> raw -fn = -1; normalised 100 (1+1)/2 and 0
    perfect = {"f": one_window_file(spikes(20))}
    null = {"f": one_window_file(spikes())}
    assert nab_corpus_score(perfect, STANDARD, 0.5) == pytest.approx(100.0)
    assert nab_corpus_score(null, STANDARD, 0.5) == pytest.approx(0.0)


def test_null_detector_counts():
    # 34 scored rows: 10 in the window (all FN), 24 outside (all TN)
    result = raw(spikes())
    assert result.score == pytest.approx(-1.0)
    assert (result.tp, result.fp, result.fn, result.tn) == (0, 0, 10, 24)
    assert (result.windows_detected, result.windows_missed) == (0, 1)


def test_detection_at_window_start_earns_the_tp_weight():
    # position -(29 - 20 + 1)/10 = -1: tp * S(-1) / S(-1) = tp, for any tp weight
    assert raw(spikes(20)).score == pytest.approx(1.0)
    assert raw(spikes(20), profile=CostMatrix(tp=2.5, fp=0.11, fn=1.0, tn=1.0)).score == pytest.approx(2.5)


def test_later_detection_earns_less():
    # row 25: position -(29-25+1)/10 = -0.5 -> S(-0.5)/S(-1) = 0.84828/0.98661 = 0.859793
    # row 29: position -(29-29+1)/10 = -0.1 -> S(-0.1)/S(-1) = 0.24492/0.98661 = 0.248242
    mid, late = raw(spikes(25)).score, raw(spikes(29)).score
    assert mid == pytest.approx(0.8597925669097837)
    assert late == pytest.approx(0.24824154977542992)
    across_the_window = [raw(spikes(row)).score for row in range(20, 30)]  # first to last row
    assert all(earlier > later > 0.0 for earlier, later in itertools.pairwise(across_the_window))


def test_false_positive_before_any_window_costs_the_full_fp_weight():
    # row 10 (scored, before the window): -fp = -0.11; the window is missed: -1
    result = raw(spikes(10))
    assert result.score == pytest.approx(-1.11)
    assert (result.fp, result.windows_missed) == (1, 1)


def test_false_positive_right_after_a_window_costs_less_than_far_away():
    # window detected at its start (+1) in each case.
    # row 30: d = 1, position 1/(10-1) -> 0.11 * S(1/9) = -0.0297932
    # row 39: d = 10, position 10/9     -> 0.11 * S(10/9) = -0.1091528
    # row 10: before any window          -> -0.11
    near, far, before = raw(spikes(20, 30)).score, raw(spikes(20, 39)).score, raw(spikes(20, 10)).score
    assert near == pytest.approx(1.0 - 0.029793183036839352)
    assert far == pytest.approx(1.0 - 0.10915277288169534)
    assert before == pytest.approx(1.0 - 0.11)
    assert near > far > before


def test_false_positive_more_than_three_window_lengths_away_costs_exactly_fp():
    # window rows 20..22 (width 3): row 30 is d = 8, position 8/2 = 4 > 3 -> S = -1
    ts = stamps()
    result = score_file(ts, [(ts[20], ts[22])], spikes(20, 30), 0.5, STANDARD)
    assert result.score == pytest.approx(1.0 - 0.11)


def test_only_the_first_detection_in_a_window_counts():
    # rows 20, 21, 25, 29 detected: the window is worth its best = row 20 -> 1.0
    result = raw(spikes(20, 21, 25, 29))
    assert result.score == pytest.approx(1.0)
    assert (result.tp, result.fn, result.windows_detected) == (4, 6, 1)
    # the first detection being row 25 gives the row-25 value, 0.859793
    assert raw(spikes(25, 27, 29)).score == pytest.approx(0.8597925669097837)


def test_probationary_rows_are_not_scored():
    # rows 0..5 are probationary: a detection there costs nothing; row 6 costs -fp
    ts = stamps()
    assert score_file(ts, [], spikes(0, 3, 5), 0.5, STANDARD).score == pytest.approx(0.0)
    assert score_file(ts, [], spikes(6), 0.5, STANDARD).score == pytest.approx(-0.11)


def test_window_inside_probation_is_ignored():
    # window rows 1..4 lies inside the 6 probationary rows: no FN, no TP
    ts = stamps()
    missed = score_file(ts, [(ts[1], ts[4])], spikes(), 0.5, STANDARD)
    hit = score_file(ts, [(ts[1], ts[4])], spikes(2), 0.5, STANDARD)
    assert (missed.score, missed.windows_missed, missed.fn) == (0.0, 0, 0)
    assert (hit.score, hit.windows_detected, hit.tp) == (0.0, 0, 0)


def test_window_straddling_probation_keeps_positions_of_the_whole_window():
    # window rows 4..9 (width 6), rows 4 and 5 unscored. A detection on row 6
    # has position -(9-6+1)/6 = -2/3 -> S(-2/3)/S(-1) = 0.931109/0.986614 = 0.943742
    ts = stamps()
    window = [(ts[4], ts[9])]
    assert score_file(ts, window, spikes(6), 0.5, STANDARD).score == pytest.approx(0.9437422611978673)
    # a detection only on probationary row 4 does not count: the window is missed
    assert score_file(ts, window, spikes(4), 0.5, STANDARD).score == pytest.approx(-1.0)


def test_threshold_is_inclusive():
    # a score equal to the threshold is a detection
    assert raw([0.7 if i == 20 else 0.0 for i in range(N_ROWS)], threshold=0.7).score == pytest.approx(1.0)


def test_profile_weights_scale_false_positives_and_misses():
    # reward_low_FN_rate (fn 2): a lone FP before the window costs -0.11 - 2
    low_fn = CostMatrix(tp=1.0, fp=0.11, fn=2.0, tn=1.0)
    assert raw(spikes(10), profile=low_fn).score == pytest.approx(-2.11)
    # normalised: null -2, perfect 1 -> 100 (-2.11 + 2) / 3
    files = {"f": one_window_file(spikes(10))}
    assert nab_corpus_score(files, low_fn, 0.5) == pytest.approx(-3.6666666666666665)


# ---------------------------------------------------------------- timestamps


def back_jumping_stamps() -> list[datetime]:
    # minute offsets (x 5): rows 0..24 -> 0..24, rows 25..39 -> 22..36:
    # the stream jumps back at row 25 and times 22, 23, 24 repeat.
    return [START + timedelta(minutes=5 * (i if i < 25 else i - 3)) for i in range(N_ROWS)]


def test_window_mapping_with_repeated_and_back_jumping_timestamps():
    ts = back_jumping_stamps()
    # end time 23 is on rows 23 and 26: the window runs to the last one
    assert window_rows(ts, [(ts[18], ts[23])]) == [(18, 26)]
    # start time 22 is on rows 22 and 25: the window starts at the first one
    assert window_rows(ts, [(ts[22], ts[30])]) == [(22, 30)]


def test_window_starts_at_its_start_stamp_not_at_an_earlier_stray_row():
    # row 5 carries row 25's time (a stray, out-of-order stamp inside the
    # window's time range); the window still starts at the row stamped with
    # its start, row 20, as in NAB's stream-order sweep
    ts = stamps()
    ts[5] = ts[25]
    assert window_rows(ts, [(ts[20], ts[29])]) == [(20, 29)]


def test_scoring_across_a_back_jump():
    # window times 20..30 = rows 20..33 (width 14).
    # row 33: position -1/14 -> S(-1/14)/S(-1) = 0.176697/0.986614 = 0.179095
    # row 34: d = 1 past the window, position 1/13 -> 0.11 * S(1/13) = -0.0208969
    ts = back_jumping_stamps()
    window = [(ts[20], ts[33])]
    assert score_file(ts, window, spikes(33), 0.5, STANDARD).score == pytest.approx(0.17909455595819398)
    after = score_file(ts, window, spikes(20, 34), 0.5, STANDARD)
    assert after.score == pytest.approx(1.0 - 0.02089687457500975)


def test_window_bounds_missing_from_the_rows_fall_back_to_rows_inside():
    # bounds one minute after rows 20 and 29: rows 21..29 lie inside the window
    ts = stamps()
    minute = timedelta(minutes=1)
    assert window_rows(ts, [(ts[20] + minute, ts[29] + minute)]) == [(21, 29)]
    # a window after the last row covers no row and is dropped
    assert window_rows(ts, [(ts[-1] + minute, ts[-1] + 2 * minute)]) == []


def test_overlapping_or_inverted_windows_are_rejected():
    ts = stamps()
    with pytest.raises(ValueError):
        window_rows(ts, [(ts[20], ts[29]), (ts[25], ts[35])])
    with pytest.raises(ValueError):
        window_rows(ts, [(ts[29], ts[20])])


def test_two_windows_in_a_file_each_count_and_fp_uses_the_preceding_one():
    # windows rows 10..14 (w 5) and 25..34 (w 10); detections at 10 (TP +1),
    # 16 (d = 2 past window 1: 0.11 * S(2/4) = -0.11 * 0.848284 = -0.0933112) and
    # nothing in window 2 (-1): total 1 - 0.0933112 - 1
    ts = stamps()
    result = score_file(ts, [(ts[25], ts[34]), (ts[10], ts[14])], spikes(10, 16), 0.5, STANDARD)
    assert result.score == pytest.approx(-0.09331120039532642)
    assert (result.windows_detected, result.windows_missed) == (1, 1)


# ---------------------------------------------------------------- corpus & threshold


def test_threshold_optimisation_finds_the_separating_threshold():
    # row 10 (before the window) scores 0.8, row 22 (in it) 0.7, row 25 (in it) 0.5,
    # the rest 0. Raw score by threshold:
    #   1.1: nothing detected          -1
    #   0.8: FP at row 10              -1.11
    #   0.7: + first detection row 22, position -(29-22+1)/10 = -0.8:
    #        S(-0.8)/S(-1) = 0.964028/0.986614 = 0.977107 -> -0.11 + 0.977107 = 0.867107
    #   0.5: row 25 is a later detection in the same window: unchanged (a tie)
    #   0.0: 14 FPs before and 10 after the window: far lower
    # best = 0.7 (ties go to the higher threshold, as in NAB);
    # normalised 100 (0.867107 + 1) / 2 = 93.355342
    scores = [0.0] * N_ROWS
    scores[10], scores[22], scores[25] = 0.8, 0.7, 0.5
    threshold, score = optimise_threshold({"f": one_window_file(scores)}, STANDARD)
    assert threshold == 0.7
    assert score == pytest.approx(93.35534204613023)


def test_optimisation_prefers_never_detecting_when_every_detection_costs():
    # row 10 (before the window) scores 0.9, every other row 0. Raw by threshold:
    #   1.1: -1;  0.9: -1 - 0.11 = -1.11;
    #   0.0: window hit at row 20 (+1) but 14 FPs before it (-1.54) and
    #        10 after it (0.11 * sum of S(d/9), d = 1..10 = -0.879104): -1.419104
    # so the best is never detecting (threshold 1.1), normalised 0
    scores = [0.0] * N_ROWS
    scores[10] = 0.9
    assert optimise_threshold({"f": one_window_file(scores)}, STANDARD) == (1.1, pytest.approx(0.0))


def test_corpus_score_sums_files_before_normalising():
    # file a: perfect (+1); file b: window missed (-1) and one FP before it (-0.11);
    # file c: no windows, one FP (-0.11). Raw 1 - 1.11 - 0.11 = -0.22,
    # 2 windows: null -2, perfect 2 -> 100 (-0.22 + 2) / 4 = 44.5
    ts = stamps()
    files = {
        "a": one_window_file(spikes(20)),
        "b": one_window_file(spikes(10)),
        "c": NabFile(ts, spikes(12), []),
    }
    assert nab_corpus_score(files, STANDARD, 0.5) == pytest.approx(44.5)
    assert score_from_decisions(files, STANDARD) == pytest.approx(44.5)


def test_score_from_decisions_requires_zero_one_values():
    with pytest.raises(ValueError):
        score_from_decisions({"f": one_window_file([0.5] * N_ROWS)}, STANDARD)


def test_corpus_without_windows_has_no_normalised_score():
    with pytest.raises(ValueError):
        nab_corpus_score({"f": NabFile(stamps(), spikes(), [])}, STANDARD, 0.5)


def test_scores_must_be_in_unit_interval_and_match_rows():
    with pytest.raises(ValueError):
        nab_corpus_score({"f": one_window_file([1.5] * N_ROWS)}, STANDARD, 0.5)
    with pytest.raises(ValueError):
        score_file(stamps(), [], [0.0] * 3, 0.5, STANDARD)


def random_corpus(seed: int, n_files: int, n_rows: int, decimals: int | None) -> dict[str, NabFile]:
    rng = np.random.default_rng(seed)
    files = {}
    for k in range(n_files):
        ts = stamps(n_rows)
        scores = rng.random(n_rows)
        if decimals is not None:
            scores = np.round(scores, decimals)
        first = int(rng.integers(n_rows // 5, n_rows // 2))
        windows = [(ts[first], ts[first + n_rows // 10]), (ts[first + n_rows // 5], ts[first + n_rows // 4])]
        files[f"f{k}"] = NabFile(ts, scores.tolist(), windows)
    return files


def test_sweep_agrees_with_scoring_every_candidate_threshold():
    # the optimum must be the best of nab_corpus_score over all distinct scores
    # (and 1.1, never detect), ties to the highest threshold
    files = random_corpus(seed=7, n_files=5, n_rows=300, decimals=2)
    candidates = sorted({s for f in files.values() for s in f.scores} | {1.1}, reverse=True)
    scored = [nab_corpus_score(files, STANDARD, t) for t in candidates]
    best = int(np.argmax(scored))
    threshold, score = optimise_threshold(files, STANDARD)
    assert score == pytest.approx(scored[best], abs=1e-9)
    assert threshold == candidates[best]
    assert nab_corpus_score(files, STANDARD, threshold) == pytest.approx(score, abs=1e-9)


def test_full_sweep_is_fast():
    # 35 files x 4000 rows, all scores distinct: about 140 000 candidate thresholds
    files = random_corpus(seed=1, n_files=35, n_rows=4000, decimals=None)
    start = time.perf_counter()
    optimise_threshold(files, STANDARD)
    assert time.perf_counter() - start < 3.0


def test_docstring_examples():
    assert doctest.testmod(benchmark).failed == 0


# ---------------------------------------------------------------- real NAB files


def require_nab() -> None:
    if not NAB_DIR.is_dir():
        pytest.skip(f"NAB data not found at {NAB_DIR}")


def test_real_profiles_and_windows():
    require_nab()
    profiles = load_profiles(NAB_DIR / "config" / "profiles.json")
    assert profiles["standard"] == CostMatrix(tp=1.0, fp=0.11, fn=1.0, tn=1.0)
    assert profiles["reward_low_FP_rate"] == CostMatrix(tp=1.0, fp=0.22, fn=1.0, tn=1.0)
    assert profiles["reward_low_FN_rate"] == CostMatrix(tp=1.0, fp=0.11, fn=2.0, tn=1.0)
    windows = load_windows(NAB_DIR / "labels" / "combined_windows.json")
    assert len(windows) == 35
    assert sum(len(w) for w in windows.values()) == 55
    assert windows["artificialWithAnomaly/art_daily_flatmiddle.csv"] == [
        (datetime(2014, 4, 10, 7, 15), datetime(2014, 4, 11, 16, 45))
    ]


def read_timestamps(path: Path) -> list[datetime]:
    with path.open(newline="") as f:
        return [datetime.fromisoformat(row["timestamp"]) for row in csv.DictReader(f)]


def test_real_corpus_windows_map_and_perfect_detector_scores_100():
    # every window bound is a row timestamp, no window reaches into probation
    # (machine_temperature_system_failure jumps back an hour at row 10149);
    # detecting each window on its first row gives 100, never detecting 0
    require_nab()
    labels = load_windows(NAB_DIR / "labels" / "combined_windows.json")
    perfect, null = {}, {}
    for name, windows in labels.items():
        ts = read_timestamps(NAB_DIR / "data" / name)
        spans = window_rows(ts, windows)
        assert [(ts[a], ts[b]) for a, b in spans] == sorted(windows)
        assert all(a >= probationary_rows(len(ts)) for a, _ in spans)
        starts = {a for a, _ in spans}
        perfect[name] = NabFile(ts, [1.0 if i in starts else 0.0 for i in range(len(ts))], windows)
        null[name] = NabFile(ts, [0.0] * len(ts), windows)
    temperature = window_rows(
        read_timestamps(NAB_DIR / "data" / "realKnownCause/machine_temperature_system_failure.csv"),
        labels["realKnownCause/machine_temperature_system_failure.csv"],
    )
    assert temperature == [(2126, 2692), (3703, 4269), (16057, 16623), (19232, 19798)]
    low_fn = load_profiles(NAB_DIR / "config" / "profiles.json")["reward_low_FN_rate"]
    assert score_from_decisions(perfect, low_fn) == pytest.approx(100.0)
    assert score_from_decisions(null, low_fn) == pytest.approx(0.0)
    assert optimise_threshold(perfect, STANDARD) == (1.0, pytest.approx(100.0))
