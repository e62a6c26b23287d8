"""Fit-time and run-time settings: run-time values override the model's in `score` (and `run`),
a fit-time value that differs from the model's is refused, nothing is refitted."""

from __future__ import annotations

import csv
import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
from support import QUICK_FIT, synthetic_csv, write_config

from detector.cli import main
from detector.config import ScoringSettings, Settings, SettingsError, load_settings
from detector.environment import setting_names
from detector.runtime import RUN_TIME_SCORING, given_settings, kind_of, resolve_scoring
from detector.testing import tiny_model


def test_every_setting_has_one_kind_and_the_issue_s_run_time_settings_are_run_time():
    kinds = {f"{section}.{key}": kind_of(f"{section}.{key}") for section, key in setting_names().values()}
    assert set(kinds.values()) == {"fit-time", "run-time", "start-up"}
    for name in ("false_alarm_rate", "close_probability", "close_after", "warmup_steps", "top_features"):
        assert kinds[f"scoring.{name}"] == "run-time"
    assert kinds["scoring.smoothing_halflife"] == kinds["scoring.seasonal_bins"] == kinds["model.hidden_size"]
    assert kinds["model.hidden_size"] == kinds["fit.seed"] == "fit-time"
    assert kinds["model.path"] == "run-time" and kinds["kafka.group_id"] == "start-up"
    assert set(RUN_TIME_SCORING) < set(ScoringSettings.model_fields)


def test_removed_settings_are_no_settings_and_a_file_naming_one_is_refused():
    from detector.config import SettingsError, settings_from
    from detector.renamed import REMOVED

    assert REMOVED and not {removed.name for removed in REMOVED} & set(ScoringSettings.model_fields)
    for removed in REMOVED:
        with pytest.raises(
            SettingsError, match=f"{removed.section}.{removed.name} = 7 in the settings file was removed"
        ):
            settings_from({removed.section: {removed.name: 7}}, "detector.toml")


def test_a_removed_setting_at_its_fixed_value_is_ignored_with_a_warning(capsys):
    """An old settings file that only repeats the defaults (a copy of the old example) still starts."""
    from detector.config import settings_from
    from detector.renamed import REMOVED

    old_file = {"scoring": {removed.name: removed.value for removed in REMOVED} | {"warmup_steps": 12}}
    settings = settings_from(old_file, "detector.toml")
    warnings = capsys.readouterr().err.splitlines()
    assert settings.scoring.warmup_steps == 12
    assert sorted(warnings) == sorted(
        f"warning: setting scoring.{removed.name} in the settings file was removed and is ignored: "
        f"{removed.now}; delete it"
        for removed in REMOVED
    )


def test_the_fixed_value_of_each_removed_setting_is_the_one_the_rules_use():
    from detector import params
    from detector.renamed import REMOVED

    fixed = {removed.name: removed.value for removed in REMOVED}
    assert fixed == {
        "novelty_margin": params.NOVELTY_MARGIN,
        "novelty_halflife": params.NOVELTY_HALFLIFE,
        "baseline_clip": params.BASELINE_CLIP,
        "likelihood_long_halflife": params.LONG_STATS_HALFLIFE,
        "likelihood_short_scaled": False,
        "likelihood_short_halflife": params.SHORT_AVERAGE_HALFLIFE,
        "range_absorb": params.RANGE_ABSORB,
    }


def test_given_settings_say_where_each_came_from_and_the_environment_wins():
    given = given_settings(
        {"scoring": {"close_after": 5, "top_features": 2}, "kafka": {"group_id": "g"}},
        {"detector_scoring__close_after": "7", "DETECTOR_MODEL__PATH": "/m", "HOME": "/root"},
    )
    assert given == {
        "scoring.close_after": "environment",
        "scoring.top_features": "file",
        "kafka.group_id": "file",
        "model.path": "environment",
    }


def test_run_time_values_override_the_model_s_and_the_rest_come_from_it():
    model = tiny_model(false_alarm_rate=1e-4, close_after=4, drift_halflife=50.0)
    settings = Settings(scoring={"false_alarm_rate": 1e-5, "close_after": 9})  # type: ignore[arg-type]
    resolved = resolve_scoring(settings, model, {"scoring.false_alarm_rate": "environment"}, "m")
    assert resolved.settings.false_alarm_rate == 1e-5, "given: overrides the model"
    assert resolved.settings.close_after == 4, "not given (a default in Settings): the model's value"
    assert resolved.settings.drift_halflife == 50.0
    assert resolved.sources["false_alarm_rate"] == "environment" and resolved.sources["close_after"] == "model"
    assert resolved.describe()["scoring.false_alarm_rate"] == {"value": 1e-5, "from": "environment"}
    applied = resolved.apply(model)
    assert applied.scoring["false_alarm_rate"] == 1e-5 and applied.network is model.network
    assert model.scoring["false_alarm_rate"] == 1e-4, "the model itself is not changed"


def test_a_fit_time_setting_with_another_value_than_the_model_s_is_refused_and_with_its_own_accepted():
    """And a [fit] value never is: the shipped example settings run with any model."""
    model = tiny_model(smoothing_halflife=4.0)
    same = Settings(scoring={"smoothing_halflife": 4.0})  # type: ignore[arg-type]
    resolve_scoring(same, model, {"scoring.smoothing_halflife": "file"}, "m")
    other = Settings(scoring={"smoothing_halflife": 8.0}, fit={"seed": 3})  # type: ignore[arg-type]
    with pytest.raises(SettingsError) as refused:
        resolve_scoring(other, model, {"scoring.smoothing_halflife": "file", "fit.seed": "environment"}, "models/m")
    message = str(refused.value)
    assert "\n" not in message and "models/m" in message
    assert "scoring.smoothing_halflife=8.0 (from the file; the model has 4.0)" in message
    assert "fit.seed" not in message, "[fit] drives training only: any value is accepted at run time"
    assert refused.value.help and "detector fit" in refused.value.help


# --- the command line, on a model fitted once ------------------------------------------------


def _spiky_csv(path: Path, entities: int = 3, rows: int = 1200, seed: int = 1) -> Path:
    """Sine-plus-noise series with spikes of eight sizes, one every 100 rows: the larger ones alert
    at any rate, the smaller ones only at a high false-alarm rate."""
    rng = np.random.default_rng(seed)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["timestamp", "entity", "f0", "f1"])
        for t in range(rows):
            for e in range(entities):
                spike = 0.15 * (1 + (t // 100) % 8) if t % 100 == 50 else 0.0
                values = [math.sin(t / 7 + e + i) + 0.1 * rng.standard_normal() + spike for i in range(2)]
                writer.writerow([1_700_000_000 + t, f"pump-{e}"] + [f"{v:.6f}" for v in values])
    return path


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("runtime")
    config = write_config(root / "c.toml", fit=QUICK_FIT)
    train = synthetic_csv(root / "train.csv", entities=3, rows=300)
    assert main(["--config", str(config), "fit", "--data", str(train), "--out", str(root / "model")]) == 0
    return root / "model", _spiky_csv(root / "data.csv"), config


def _digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def _alerts_opened(path: Path) -> int:
    with path.open(newline="") as handle:
        return sum(row["event"] == "open" for row in csv.DictReader(handle))


def test_score_with_a_lower_false_alarm_rate_from_the_environment_opens_fewer_alerts_without_a_refit(
    fitted: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    model, data, _ = fitted
    before = _digest(model)
    assert main(["score", "--model", str(model), "--data", str(data), "--out", str(tmp_path / "default.csv")]) == 0
    monkeypatch.setenv("DETECTOR_SCORING__FALSE_ALARM_RATE", "1e-5")
    assert main(["score", "--model", str(model), "--data", str(data), "--out", str(tmp_path / "lower.csv")]) == 0
    default, lower = _alerts_opened(tmp_path / "default.csv"), _alerts_opened(tmp_path / "lower.csv")
    assert 0 < lower < default, (default, lower)
    assert _digest(model) == before, "the model directory is untouched: nothing was refitted"


def test_score_takes_run_time_values_from_the_settings_file_too(fitted: tuple[Path, Path, Path], tmp_path: Path):
    model, data, _ = fitted
    config = write_config(tmp_path / "run.toml", fit=QUICK_FIT, scoring={"false_alarm_rate": 1e-5})
    out = tmp_path / "lower.csv"
    assert main(["--config", str(config), "score", "--model", str(model), "--data", str(data), "--out", str(out)]) == 0
    assert main(["score", "--model", str(model), "--data", str(data), "--out", str(tmp_path / "default.csv")]) == 0
    assert _alerts_opened(out) < _alerts_opened(tmp_path / "default.csv")


@pytest.mark.parametrize("command", ["score", "run"])
def test_a_fit_time_setting_given_at_run_time_is_refused_at_start(
    command: str,
    fitted: tuple[Path, Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
):
    model, data, config = fitted
    monkeypatch.setenv("DETECTOR_MODEL__HIDDEN_SIZE", "64")
    monkeypatch.setenv("DETECTOR_MODEL__PATH", str(model))
    monkeypatch.setenv("DETECTOR_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")  # never reached: refused before
    extra = ["--model", str(model), "--data", str(data), "--out", str(tmp_path / "s.csv")] if command == "score" else []
    assert main(["--config", str(config), command, *extra]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"detector {command}: error: fit-time setting"), lines
    assert "model.hidden_size=64 (from the environment; the model has 32)" in lines[0]
    assert lines[1].startswith("help: ") and not (tmp_path / "s.csv").exists()


def test_the_settings_file_shared_with_fit_is_accepted_by_score(fitted: tuple[Path, Path, Path], tmp_path: Path):
    model, data, config = fitted
    assert load_settings(config).fit.max_epochs == QUICK_FIT["max_epochs"]
    out = tmp_path / "s.csv"
    assert main(["--config", str(config), "score", "--model", str(model), "--data", str(data), "--out", str(out)]) == 0
