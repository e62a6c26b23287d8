"""Where the detector's NAB points go: per file and category, windows found and missed, the
position of the first detection in each window, false-positive rows, and why each missed window
was missed; at the corpus-optimised threshold and for ``is_anomaly`` as is.

Reads the per-row traces of ``benchmarks/nab_trace.py`` (one .npz per fit seed or variant):

    nice -n 15 .venv/bin/python benchmarks/nab_breakdown.py --nab ../shared/data/nab \\
        /tmp/nab/base-seed7.npz [/tmp/nab/base-seed8.npz ...]
    # a leave-one-category-out check of variants (LABEL=TRACE; a trace per variant and seed):
    .venv/bin/python benchmarks/nab_breakdown.py --nab ../shared/data/nab --loco \\
        base=/tmp/nab/base-seed7.npz variant=/tmp/nab/variant-seed7.npz

A missed window's reason, from its rows after the probationary period:
``model`` the likelihood z-score never reached the alert level; ``held`` it did, but below the
novelty bar: ``(usual peak)`` where the bar was the entity's usual one (within 0.25 of the file's
median bar), ``(earlier event)`` where an earlier escape had raised it; ``not rising`` above the
bar but without raising the short-term average; ``graded`` escaped the discount and opened an
alert, but its graded probability stayed under the optimised threshold; ``probation`` the window
lies (mostly) in the fit rows. ``louder rows elsewhere`` counts the file's scored rows outside
windows whose z-score is at least the window's largest: where it is large, no decision rule can
find the window without those false positives; the model's score has to separate it.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from statistics import NormalDist, median

import numpy as np

from detector.benchmark import (
    MAX_TP,
    CostMatrix,
    NabFile,
    load_profiles,
    load_windows,
    nab_corpus_score,
    optimise_threshold,
    probationary_rows,
    scaled_sigmoid,
    score_file,
    window_rows,
)
from detector.schema import read_csv

CATEGORIES_WITH_WINDOWS = ("artificialWithAnomaly", "realAWSCloudwatch", "realKnownCause")


@dataclass
class Trace:
    """One file's per-row trace, its timestamps and label windows."""

    name: str
    stamps: list[datetime]
    windows: list[tuple[datetime, datetime]]
    fields: dict[str, np.ndarray]

    @property
    def category(self) -> str:
        return self.name.split("/")[0]


@dataclass
class WindowReport:
    """One labelled window at one threshold."""

    file: str
    first_row: int
    width: int
    detected_at: int | None  # rows after the window's first row; None: missed
    as_is_at: int | None
    reason: str
    max_probability: float
    max_z: float
    bar: float  # the novelty bar at the window's row of largest z
    peak_source: str  # where the bar came from: the last escape before the window
    louder: int  # scored rows outside windows in the same file whose z is at least the window's largest


def load_traces(path: Path, nab: Path) -> dict[str, Trace]:
    """The traces in ``path`` with their file's timestamps and windows."""
    windows = load_windows(nab / "labels" / "combined_windows.json")
    arrays = np.load(path)
    by_file: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
    for key in arrays.files:
        name, _, field = key.partition("::")
        by_file[name][field] = arrays[key]
    traces = {}
    for name, fields in by_file.items():
        stamps = [datetime.fromisoformat(t) for t in read_csv(nab / "data" / name).raw_timestamps]
        traces[name] = Trace(name, stamps, windows[name], fields)
    return traces


def nab_files(traces: dict[str, Trace], field: str) -> dict[str, NabFile]:
    return {name: NabFile(t.stamps, t.fields[field].tolist(), t.windows) for name, t in traces.items()}


def window_reports(trace: Trace, threshold: float) -> list[WindowReport]:
    """Each scored window of ``trace``: found at ``threshold`` (and as is) or missed, and why."""
    f = trace.fields
    skip = probationary_rows(len(trace.stamps))
    alert_z = float(f["threshold"][1])
    escaped = np.flatnonzero((f["z"] > f["bar"]) & (f["rising"] > 0) & (f["z"] >= alert_z))
    spans = window_rows(trace.stamps, trace.windows)
    outside = np.ones(len(trace.stamps), dtype=bool)
    outside[:skip] = False
    for first, last in spans:
        outside[first : last + 1] = False
    usual_bar = float(np.median(f["bar"][outside])) if outside.any() else float(f["bar"][0])
    reports = []
    for first, last in spans:
        if last < skip:
            continue
        rows = np.arange(max(first, skip), last + 1)
        hits = rows[f["probability"][rows] >= threshold]
        marks = rows[f["is_anomaly"][rows] > 0]
        z, bar = f["z"][rows], f["bar"][rows]
        top = int(np.argmax(z))
        before = escaped[escaped < first]
        source = f"row {before[-1]} ({first - before[-1]} before, z {f['z'][before[-1]]:.2f})" if len(before) else "-"
        reports.append(
            WindowReport(
                trace.name,
                first,
                last - first + 1,
                int(hits[0] - first) if len(hits) else None,
                int(marks[0] - first) if len(marks) else None,
                "" if len(hits) else _reason(trace, rows, first, skip, alert_z, usual_bar),
                float(f["probability"][rows].max()),
                float(z[top]),
                float(bar[top]),
                source,
                int(np.sum(f["z"][outside] >= z[top])),
            )
        )
    return reports


def _reason(trace: Trace, rows: np.ndarray, first: int, skip: int, alert_z: float, usual_bar: float) -> str:
    f = trace.fields
    if first < skip and len(rows) < (rows[-1] - first + 1) / 2:
        return "probation"
    z, bar, rising = f["z"][rows], f["bar"][rows], f["rising"][rows] > 0
    level = z >= alert_z
    if not level.any():
        return "model"
    if (level & (z > bar) & rising).any():
        return "graded"
    if (level & (z > bar)).any():
        return "not rising"
    top = int(np.argmax(np.where(level, z, -np.inf)))
    return "held (usual peak)" if bar[top] <= usual_bar + _USUAL_SLACK else "held (earlier event)"


_USUAL_SLACK = 0.25  # a bar this close to the file's median bar is the entity's usual peak, not an event's


def false_positive_rows(trace: Trace, field: str, threshold: float, profile: CostMatrix) -> int:
    """Detections outside windows after the probationary period."""
    return score_file(trace.stamps, trace.windows, trace.fields[field].tolist(), threshold, profile).fp


def points_lost(
    traces: dict[str, Trace], windows: dict[str, list[WindowReport]], profile: CostMatrix, threshold: float, as_is: bool
) -> tuple[float, float, float]:
    """Normalised NAB points lost against a perfect detector: to missed windows, to detections
    later than a window's first row, and to false-positive rows (they add up to 100 - score)."""
    field = "is_anomaly" if as_is else "probability"
    n_windows = sum(len(reports) for reports in windows.values())
    raw = missed = late = 0.0
    for name, trace in traces.items():
        raw += score_file(trace.stamps, trace.windows, trace.fields[field].tolist(), threshold, profile).score
        for w in windows[name]:
            at = w.as_is_at if as_is else w.detected_at
            if at is None:
                missed += 1
            else:
                late += profile.tp * (1.0 - float(scaled_sigmoid(-(w.width - at) / w.width)) / MAX_TP)
    earned = n_windows - missed - late
    false_positives = earned - profile.fn * missed - raw
    scale = 100.0 / ((profile.tp + profile.fn) * max(n_windows, 1))
    return (profile.tp + profile.fn) * missed * scale, late * scale, false_positives * scale


def report(traces: dict[str, Trace], profile: CostMatrix, label: str) -> None:
    """Print the breakdown of one set of traces as markdown."""
    threshold, optimised = optimise_threshold(nab_files(traces, "probability"), profile)
    as_is = nab_corpus_score(nab_files(traces, "is_anomaly"), profile, 0.5)
    windows = {name: window_reports(t, threshold) for name, t in traces.items()}
    print(f"## {label}: optimised {optimised:.1f} (p >= {threshold:.4f}), as is {as_is:.1f}\n")
    for name, at, decisions in (("optimised", threshold, False), ("as is", 0.5, True)):
        lost = points_lost(traces, windows, profile, at, decisions)
        print(
            f"- {name}: points lost to missed windows {lost[0]:.1f}, to late detections {lost[1]:.1f},"
            f" to FP rows {lost[2]:.1f}"
        )
    print()
    print("| file | windows | found (opt / as is) | first detection, % of width | FP rows (opt / as is) |")
    print("|---|---|---|---|---|")
    per_category: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    positions: list[float] = []
    for name, trace in traces.items():
        found = [w for w in windows[name] if w.detected_at is not None]
        marked = [w for w in windows[name] if w.as_is_at is not None]
        where = [100.0 * w.detected_at / w.width for w in found if w.detected_at is not None]
        positions += where
        fp = (
            false_positive_rows(trace, "probability", threshold, profile),
            false_positive_rows(trace, "is_anomaly", 0.5, profile),
        )
        row = per_category[trace.category]
        for i, value in enumerate((len(windows[name]), len(found), len(marked), *fp)):
            row[i] += value
        if windows[name] or fp[0] or fp[1]:
            print(
                f"| {name.split('/')[1]} | {len(windows[name])} | {len(found)} / {len(marked)} "
                f"| {', '.join(f'{p:.0f}' for p in where) or '-'} | {fp[0]} / {fp[1]} |"
            )
    print("\n| category | windows | found (opt / as is) | FP rows (opt / as is) |\n|---|---|---|---|")
    for category, (n, found_opt, found_as_is, fp_opt, fp_as_is) in sorted(per_category.items()):
        print(f"| {category} | {n} | {found_opt} / {found_as_is} | {fp_opt} / {fp_as_is} |")
    if positions:
        print(f"\nFirst detection: median {median(positions):.0f} % of the window's width, {len(positions)} windows.")
    missed = [w for reports in windows.values() for w in reports if w.detected_at is None]
    alert_z = NormalDist().inv_cdf(threshold)
    print(f"\nMissed at the optimised threshold (z {alert_z:.2f}): {len(missed)}\n")
    print("| file | window rows | reason | max p | max z | bar there | last escape before | louder elsewhere | as is |")
    print("|---|---|---|---|---|---|---|---|---|")
    for w in missed:
        mark = "-" if w.as_is_at is None else f"+{w.as_is_at}"
        print(
            f"| {w.file.split('/')[1]} | {w.first_row}+{w.width} | {w.reason} | {w.max_probability:.3f} "
            f"| {w.max_z:.2f} | {w.bar:.2f} | {w.peak_source} | {w.louder} | {mark} |"
        )
    reasons = Counter(w.reason for w in missed)
    print("\nReasons: " + ", ".join(f"{reason} {count}" for reason, count in sorted(reasons.items())) + "\n")


def leave_one_category_out(variants: dict[str, list[dict[str, Trace]]], profile: CostMatrix) -> None:
    """For each category with windows: the variant whose mean optimised score over the seeds is best
    on the other two, and its score on the held-out one (threshold optimised on the other two);
    then the same for ``is_anomaly`` as is."""
    print("| held out | chosen on the other two | held-out score (chosen) | " + " | ".join(variants) + " |")
    print("|---|---|---|" + "---|" * len(variants))
    for held in CATEGORIES_WITH_WINDOWS:
        train = {
            label: float(
                np.mean(
                    [optimise_threshold(nab_files(_split(s, held, False), "probability"), profile)[1] for s in runs]
                )
            )
            for label, runs in variants.items()
        }
        held_score = {}
        for label, runs in variants.items():
            scores = []
            for traces in runs:
                threshold, _ = optimise_threshold(nab_files(_split(traces, held, False), "probability"), profile)
                scores.append(
                    nab_corpus_score(nab_files(_split(traces, held, True), "probability"), profile, threshold)
                )
            held_score[label] = float(np.mean(scores))
        chosen = max(train, key=lambda label: train[label])
        cells = " | ".join(f"{held_score[label]:.1f}" for label in variants)
        print(f"| {held} | {chosen} | {held_score[chosen]:.1f} | {cells} |")
    _leave_one_category_out_as_is(variants, profile)


def _leave_one_category_out_as_is(variants: dict[str, list[dict[str, Trace]]], profile: CostMatrix) -> None:
    """The same check for ``is_anomaly`` as is (no threshold to carry over): the variant whose
    mean score as is is best on the other two categories, and its score on the held-out one."""

    def as_is(runs: list[dict[str, Trace]], category: str, inside: bool) -> float:
        return float(
            np.mean(
                [nab_corpus_score(nab_files(_split(t, category, inside), "is_anomaly"), profile, 0.5) for t in runs]
            )
        )

    print(
        "\n| held out | chosen on the other two, as is | held-out score as is (chosen) | " + " | ".join(variants) + " |"
    )
    print("|---|---|---|" + "---|" * len(variants))
    for held in CATEGORIES_WITH_WINDOWS:
        held_score = {label: as_is(runs, held, True) for label, runs in variants.items()}
        chosen = max(variants, key=lambda label: as_is(variants[label], held, False))
        cells = " | ".join(f"{held_score[label]:.1f}" for label in variants)
        print(f"| {held} | {chosen} | {held_score[chosen]:.1f} | {cells} |")


def _split(traces: dict[str, Trace], category: str, inside: bool) -> dict[str, Trace]:
    """The traces of ``category`` (``inside``) or of every other category."""
    return {name: trace for name, trace in traces.items() if (trace.category == category) == inside}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nab", type=Path, required=True, help="NAB directory (data/, labels/, config/)")
    parser.add_argument("--profile", default="standard", help="NAB application profile")
    parser.add_argument("--loco", action="store_true", help="leave-one-category-out check of LABEL=TRACE variants")
    parser.add_argument("traces", nargs="+", help="trace files (.npz from nab_trace.py); LABEL=TRACE with --loco")
    args = parser.parse_args(argv)
    profile = load_profiles(args.nab / "config" / "profiles.json")[args.profile]
    if args.loco:
        variants: dict[str, list[dict[str, Trace]]] = defaultdict(list)
        for item in args.traces:
            label, _, path = item.partition("=")
            variants[label].append(load_traces(Path(path), args.nab))
        leave_one_category_out(variants, profile)
        return 0
    for path in args.traces:
        report(load_traces(Path(path), args.nab), profile, Path(path).stem)
    return 0


if __name__ == "__main__":
    sys.exit(main())
