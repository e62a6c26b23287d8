"""Fit time per epoch, split into training and validation, and the fit's fixed costs.

The headline: one complete fit of 100,000 rows x 8 features (generate_history, 50 entities x
2,000 rows; --quick 50 x 250) with FitSettings(max_epochs=4), timed by wrapping the functions of
detector.fit: per epoch the training pass (_train_epoch) and the validation pass
(_validation_loss), medians over the epochs; once per fit the held-out scoring that calibrates
the thresholds (_heldout_scores) and the start state and residual scale (_average_state,
_residual_scale).

Times are CPU seconds of the process (``time.process_time``; torch runs one thread, so on an
idle machine they equal wall seconds): on a machine shared with other work they depend far
less on its load than wall time does.

Then the scaling of an epoch with rows: 50 entities x 250 / 500 / 1,000 rows, and 25 / 50 / 100
/ 200 entities x 500 rows (--quick: smaller), with the held-out scoring replaced by a stub (it
does not depend on epochs). The table gives seconds per epoch per 10,000 rows.

    .venv/bin/python benchmarks/fit_bench.py [--quick]
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import _common as c
from _common import Row, say


def timed_fit(entities: int, rows: int, epochs: int, stub_heldout: bool) -> dict:
    import numpy as np

    import detector.fit as fit_module
    from detector.config import load_settings

    table = c.history_table(entities=entities, rows=rows)
    settings = load_settings(None, fit={"max_epochs": epochs, "patience": epochs + 1, "report": False})
    spent: dict[str, list[float]] = {"train": [], "validation": [], "heldout": [], "state": [], "residual": []}
    originals = fit_module._train_epoch, fit_module._validation_loss, fit_module._heldout_scores
    fixed = fit_module._average_state, fit_module._residual_scale

    def wrap(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                spent[name].append(time.process_time() - started)

        return timed

    fit_module._train_epoch, fit_module._validation_loss = wrap("train", originals[0]), wrap("validation", originals[1])
    stub = lambda *_: np.exp(np.random.default_rng(0).normal(0.0, 0.2, 2000))  # noqa: E731
    fit_module._heldout_scores = wrap("heldout", stub if stub_heldout else originals[2])
    fit_module._average_state, fit_module._residual_scale = wrap("state", fixed[0]), wrap("residual", fixed[1])
    try:
        started = time.process_time()
        fit_module.fit_tables([table], settings.model, settings.fit, settings.scoring, progress=False)
        total = time.process_time() - started
    finally:
        fit_module._train_epoch, fit_module._validation_loss, fit_module._heldout_scores = originals
        fit_module._average_state, fit_module._residual_scale = fixed
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
        "state_s": sum(spent["state"]),
        "residual_s": sum(spent["residual"]),
        "total_s": total,
    }


def main() -> int:
    p = c.parser(__doc__.split("\n")[0])
    args = p.parse_args()
    quick = args.quick
    epochs = 3 if quick else 4
    by_rows = [(50, r) for r in ((125, 250) if quick else (250, 500, 1000))]
    by_entities = [(e, 500) for e in ((25, 50) if quick else (25, 50, 100, 200))]
    say(f"== fit ({'quick' if quick else 'full'}): {epochs} epochs per size, default model settings, 8 features")
    complete_entities, complete_rows = (50, 250) if quick else (50, 2000)
    full = timed_fit(complete_entities, complete_rows, epochs, stub_heldout=False)
    results: dict[str, list[dict]] = {"complete": [full], "rows per entity": [], "entities": []}
    say(
        f"  complete fit of {full['rows']:,} rows, {full['epochs']} epochs: {full['total_s']:.1f} s; per epoch "
        f"{full['epoch_s']:.2f} s = training {full['train_s']:.2f} + validation {full['validation_s']:.2f}; once: "
        f"held-out scoring {full['heldout_s']:.1f} s, start state {full['state_s']:.1f} s, "
        f"residual scale {full['residual_s']:.1f} s"
    )
    for axis, sizes in (("rows per entity", by_rows), ("entities", by_entities)):
        for entities, rows_per_entity in sizes:
            r = timed_fit(entities, rows_per_entity, epochs, stub_heldout=True)
            results[axis].append(r)
            say(
                f"  {r['rows']:>7,} rows ({entities} entities x {rows_per_entity}): {r['epoch_s']:.2f} s/epoch "
                f"(train {r['train_s']:.2f} + validation {r['validation_s']:.2f}); fixed {r['fixed_s']:.1f} s"
            )
    size = f"{full['rows']:,} rows x 8 features"
    rows: list[Row] = [
        Row(
            "fit",
            f"time per epoch, {size}",
            f"{full['epoch_s']:.2f} s",
            "validation ~ a training epoch's forward",
            "",
            f"training {full['train_s']:.2f} s + validation {full['validation_s']:.2f} s (medians of {full['epochs']})",
        ),
        Row("fit", f"held-out scoring (once per fit), {size}", f"{full['heldout_s']:.1f} s", "", "", "calibration"),
        Row(
            "fit",
            f"start state + residual scale (once per fit), {size}",
            f"{full['state_s'] + full['residual_s']:.1f} s",
            "",
            "",
            f"start state {full['state_s']:.1f} s, residual scale {full['residual_s']:.1f} s",
        ),
        Row("fit", f"complete fit, {size}, {full['epochs']} epochs", f"{full['total_s']:.1f} s", "", "", ""),
    ]
    for axis in ("rows per entity", "entities"):
        rs = results[axis]
        base = rs[0]
        for r in rs:
            per10k = 10_000 * r["epoch_s"] / r["rows"]
            ratio = (r["epoch_s"] / base["epoch_s"]) / (r["rows"] / base["rows"])
            rows.append(
                Row(
                    "fit",
                    f"s/epoch at {r['rows']:,} rows ({r['entities']} x {r['rows_per_entity']})",
                    f"{r['epoch_s']:.2f} s",
                    "",
                    "",
                    f"{per10k:.3f} s/epoch per 10k rows; "
                    f"time ratio / rows ratio vs smallest = {ratio:.2f} (1 = linear); "
                    f"train {r['train_s']:.2f} + validation {r['validation_s']:.2f}",
                )
            )
    c.emit(rows, args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
