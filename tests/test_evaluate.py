"""`detector evaluate` end to end on the first files of the shared benchmarks (quick fits)."""

import json
from contextlib import redirect_stdout
from io import StringIO

import numpy as np
import pytest
from support import QUICK_FIT, SHARED_DATA, write_config

from detector.cli import main

NAB, SKAB = SHARED_DATA / "nab", SHARED_DATA / "skab"
pytestmark = pytest.mark.skipif(
    not (NAB.is_dir() and SKAB.is_dir()), reason=f"benchmark data not found under {SHARED_DATA}"
)


def _evaluate(directory, name, *extra, seed=7):
    config = write_config(directory / f"{name}.toml", fit={**QUICK_FIT, "seed": seed})
    out = directory / f"{name}.json"
    code = main(
        [
            "--config",
            str(config),
            "evaluate",
            "--nab",
            str(NAB),
            "--skab",
            str(SKAB),
            "--limit",
            "1",
            "--out",
            str(out),
            *extra,
        ]
    )
    assert code == 0
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def seed_8(tmp_path_factory):
    """A plain run (no --seeds) with fit seed 8 in the config, and what it printed."""
    shown = StringIO()
    with redirect_stdout(shown):
        results = _evaluate(tmp_path_factory.mktemp("evaluate"), "seed8", seed=8)
    return results, shown.getvalue()


@pytest.mark.slow
def test_evaluate_reports_both_benchmarks_on_their_first_files(seed_8):
    results, shown = seed_8
    assert results["nab"]["files"] == 1, "--limit 1 takes the first NAB file with a window (the first files have none)"
    assert results["skab"]["files"] == 1
    assert set(results["nab"]["profiles"]) == {"standard", "reward_low_FP_rate", "reward_low_FN_rate"}
    for row in results["nab"]["profiles"].values():
        assert -100.0 <= row["as_is"] <= row["optimised"] <= 100.0, (
            "the optimised threshold is at least as good as any other"
        )
    pooled = results["skab"]["pooled"]
    assert 0.0 <= pooled["f1"] <= 1.0 and pooled["tp"] + pooled["fn"] > 0
    assert "SKAB (1 files): F1" in shown and "NAB (1 files)" in shown


@pytest.mark.slow
def test_evaluate_over_seeds_gives_each_seeds_run_and_their_mean(seed_8, tmp_path, capsys):
    results = _evaluate(tmp_path, "seeds", "--seeds", "7,8")
    assert list(results["seeds"]) == ["7", "8"]
    assert results["seeds"]["8"] == seed_8[0], "each seed's run is the plain run with that fit seed"
    runs = list(results["seeds"].values())
    for name, row in results["mean"]["nab"]["profiles"].items():
        for key in ("optimised", "as_is"):
            assert row[key] == pytest.approx(sum(r["nab"]["profiles"][name][key] for r in runs) / 2)
    for key in ("f1", "far", "mar"):
        assert results["mean"]["skab"]["pooled"][key] == pytest.approx(sum(r["skab"]["pooled"][key] for r in runs) / 2)
    shown = capsys.readouterr().out
    assert "fit seed 7" in shown and "fit seed 8" in shown and "mean over seeds 7, 8" in shown


@pytest.mark.parametrize("seeds", ["7,x", "7,7"])
def test_evaluate_refuses_a_malformed_seed_list(seeds, capsys):
    assert main(["evaluate", "--nab", str(NAB), "--seeds", seeds]) == 2  # one line, no usage text
    assert "--seeds" in capsys.readouterr().err


def test_files_scored_in_parallel_match_the_serial_run_exactly():
    from detector.config import load_settings
    from detector.evaluate import FileJob, run_jobs

    settings = load_settings(None, fit=QUICK_FIT)
    jobs = [
        FileJob("skab", SKAB / "valve1" / "1.csv", 7),
        FileJob("skab", SKAB / "valve1" / "2.csv", 8),
        FileJob("nab", NAB / "data" / "artificialWithAnomaly" / "art_daily_jumpsup.csv", 7),
    ]
    serial, parallel = run_jobs(jobs, settings, workers=1), run_jobs(jobs, settings, workers=2)
    assert list(serial) == jobs and set(parallel) == set(jobs)
    for job in jobs:
        assert np.array_equal(serial[job].is_anomaly, parallel[job].is_anomaly), job
        assert np.array_equal(serial[job].probability, parallel[job].probability), job
    assert any(serial[job].is_anomaly.any() for job in jobs), "some file raises an alert: decisions are compared"


def test_evaluate_refuses_a_jobs_count_below_one(capsys):
    assert main(["evaluate", "--nab", str(NAB), "--jobs", "0"]) == 2
    assert "--jobs must be at least 1, got 0" in capsys.readouterr().err
