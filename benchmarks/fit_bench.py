"""Fit time per epoch and its scaling with the number of rows (8 features, default model).

generate_history data with a fixed number of entities (50) and 250 / 500 / 1,000 / 2,000 rows
each = 12,500 / 25,000 / 50,000 / 100,000 rows; a second series keeps 500 rows per entity and
varies the entities (25 / 50 / 100 / 200). Each size is fitted with FitSettings(max_epochs=4)
(--quick: 3 epochs, sizes up to 25,000 rows).

An epoch is timed as the training pass (detector.fit._train_epoch) plus the validation pass
(detector.fit._validation_loss), measured by wrapping both functions (median over the epochs).
Per-epoch time should grow linearly with rows: the table gives seconds per epoch per 10,000 rows.
For these sizes the calibration's held-out scoring (detector.fit._heldout_scores) is replaced by
a stub, because it does not depend on epochs and costs far more than they do; one complete,
unpatched fit (25,000 rows; --quick 6,250) measures it and the other fixed costs.

    .venv/bin/python benchmarks/fit_bench.py [--quick]
"""

from __future__ import annotations

import statistics
import sys
import time

import _common as c
from _common import Row, say


def timed_fit(entities: int, rows: int, epochs: int, stub_heldout: bool) -> dict:
    import numpy as np

    import detector.fit as fit_module
    from detector.config import load_settings

    table = c.history_table(entities=entities, rows=rows)
    settings = load_settings(None, fit={"max_epochs": epochs, "patience": epochs + 1, "report": False})
    spent: dict[str, list[float]] = {"train": [], "validation": [], "heldout": []}
    originals = fit_module._train_epoch, fit_module._validation_loss, fit_module._heldout_scores

    def wrap(name: str, function):  # type: ignore[no-untyped-def]
        def timed(*args, **kwargs):  # type: ignore[no-untyped-def]
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent[name].append(time.perf_counter() - started)

        return timed

    fit_module._train_epoch, fit_module._validation_loss = wrap("train", originals[0]), wrap("validation", originals[1])
    stub = lambda *_: np.exp(np.random.default_rng(0).normal(0.0, 0.2, 2000))  # noqa: E731
    fit_module._heldout_scores = wrap("heldout", stub if stub_heldout else originals[2])
    try:
        started = time.perf_counter()
        fit_module.fit_tables([table], settings.model, settings.fit, settings.scoring, progress=False)
        total = time.perf_counter() - started
    finally:
        fit_module._train_epoch, fit_module._validation_loss, fit_module._heldout_scores = originals
    epochs_run = len(spent["train"])
    # the first epoch carries one-off warm-up; use the median of the epochs
    per_epoch = [t + v for t, v in zip(spent["train"], spent["validation"], strict=True)]
    return {
        "entities": entities,
        "rows_per_entity": rows,
        "rows": entities * rows,
        "epochs": epochs_run,
        "epoch_s": statistics.median(per_epoch),
        "train_s": statistics.median(spent["train"]),
        "validation_s": statistics.median(spent["validation"]),
        "fixed_s": total - sum(per_epoch),
        "heldout_s": None if stub_heldout else sum(spent["heldout"]),
        "total_s": total,
    }


def main() -> int:
    p = c.parser(__doc__.split("\n")[0])
    args = p.parse_args()
    quick = args.quick
    epochs = 3 if quick else 4
    by_rows = [(50, r) for r in ((125, 250, 500) if quick else (250, 500, 1000, 2000))]
    by_entities = [(e, 500) for e in ((25, 50) if quick else (25, 50, 100, 200))]
    say(f"== fit ({'quick' if quick else 'full'}): {epochs} epochs per size, default model settings, 8 features")
    results: dict[str, list[dict]] = {"rows per entity": [], "entities": []}
    for axis, sizes in (("rows per entity", by_rows), ("entities", by_entities)):
        for entities, rows in sizes:
            r = timed_fit(entities, rows, epochs, stub_heldout=True)
            results[axis].append(r)
            say(
                f"  {r['rows']:>7,} rows ({entities} entities x {rows}): {r['epoch_s']:.2f} s/epoch "
                f"(train {r['train_s']:.2f} + validation {r['validation_s']:.2f}) = "
                f"{10_000 * r['epoch_s'] / r['rows']:.3f} s/epoch per 10k rows; "
                f"fixed {r['fixed_s']:.1f} s, total {r['total_s']:.1f} s"
            )
    complete_entities, complete_rows = (50, 125) if quick else (50, 500)
    full = timed_fit(complete_entities, complete_rows, epochs, stub_heldout=False)
    results["complete"] = [full]
    say(
        f"  complete fit of {full['rows']:,} rows, {full['epochs']} epochs: {full['total_s']:.1f} s, "
        f"of which epochs {full['epochs'] * full['epoch_s']:.1f} s, "
        f"held-out scoring {full['heldout_s']:.1f} s ({1000 * full['heldout_s'] / full['rows']:.2f} ms per row), "
        f"other fixed {full['fixed_s'] - full['heldout_s']:.1f} s"
    )
    rows: list[Row] = []
    for axis in ("rows per entity", "entities"):
        rs = results[axis]
        base = rs[0]
        for r in rs:
            per10k = 10_000 * r["epoch_s"] / r["rows"]
            ratio = (r["epoch_s"] / base["epoch_s"]) / (r["rows"] / base["rows"])
            rows.append(
                Row(
                    "fit",
                    f"s/epoch at {r['rows']:,} rows (varying {axis}: {r['entities']} x {r['rows_per_entity']})",
                    f"{r['epoch_s']:.2f} s",
                    "",
                    "",
                    f"{per10k:.3f} s/epoch per 10k rows; "
                    f"time ratio / rows ratio vs smallest = {ratio:.2f} (1 = linear); "
                    f"train {r['train_s']:.2f} + validation {r['validation_s']:.2f}",
                )
            )
    headline = next((r for r in results["rows per entity"] if r["rows"] == 100_000), None)
    per_row = full["heldout_s"] / full["rows"]
    if headline:
        rows.insert(
            0,
            Row(
                "fit",
                "time per epoch, 100,000 rows x 8 features",
                f"{headline['epoch_s']:.2f} s",
                "",
                "",
                f"60 epochs (the default cap) = {60 * headline['epoch_s']:.0f} s; "
                f"held-out scoring adds ~{100_000 * per_row:.0f} s at 100k rows",
            ),
        )
    rows.append(
        Row(
            "fit",
            f"complete fit, {full['rows']:,} rows, {full['epochs']} epochs",
            f"{full['total_s']:.1f} s",
            "",
            "",
            f"held-out scoring {full['heldout_s']:.1f} s = {1000 * per_row:.2f} ms/row (one Detector step per row); "
            f"epochs {full['epochs'] * full['epoch_s']:.1f} s",
        )
    )
    c.emit(rows, args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
