from pathlib import Path

import pytest
from support import ROOT, write_config

from detector.cli import main
from detector.config import Settings, SettingsError, example_toml, load_settings


def test_example_config_is_the_defaults_and_is_generated():
    assert (ROOT / "config.example.toml").read_text() == example_toml()
    assert load_settings(ROOT / "config.example.toml") == Settings()


def test_environment_overrides_file(tmp_path, monkeypatch):
    config = write_config(
        tmp_path / "c.toml", model={"path": "/from/file", "hidden_size": 16}, kafka={"group_id": "g1"}
    )
    monkeypatch.setenv("DETECTOR_MODEL__PATH", "/from/env")
    monkeypatch.setenv("DETECTOR_KAFKA__INPUT_TOPICS", '["a", "b"]')
    settings = load_settings(config)
    assert settings.model.path == Path("/from/env")
    assert settings.model.hidden_size == 16  # file value kept where env is silent
    assert settings.kafka.input_topics == ["a", "b"]
    assert settings.kafka.group_id == "g1"


def test_invalid_setting_names_the_field(tmp_path, monkeypatch):
    with pytest.raises(SettingsError, match=r"model\.num_layers"):
        load_settings(write_config(tmp_path / "c.toml", model={"num_layers": 3}))
    monkeypatch.setenv("DETECTOR_SCORING__FALSE_ALARM_RATE", "2")
    with pytest.raises(SettingsError, match=r"scoring\.false_alarm_rate"):
        load_settings(None)
    monkeypatch.delenv("DETECTOR_SCORING__FALSE_ALARM_RATE")
    monkeypatch.setenv("DETECTOR_SCORING__SEASONAL_BINS", "86400")  # 345 KB of state per entity: refused
    with pytest.raises(SettingsError, match=r"scoring\.seasonal_bins"):
        load_settings(None)


def test_unknown_key_and_bad_toml_are_refused(tmp_path):
    with pytest.raises(SettingsError, match=r"model\.hidden"):
        load_settings(write_config(tmp_path / "c.toml", model={"hidden": 3}))
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\n")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(bad)


def test_secrets_are_not_shown(monkeypatch):
    monkeypatch.setenv("DETECTOR_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("DETECTOR_KAFKA__SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("DETECTOR_KAFKA__SASL_USERNAME", "svc")
    monkeypatch.setenv("DETECTOR_KAFKA__SASL_PASSWORD", "hunter2")
    settings = load_settings(None)
    assert "hunter2" not in repr(settings)
    assert settings.kafka.sasl_password.get_secret_value() == "hunter2"


def test_sasl_without_credentials_fails(monkeypatch):
    monkeypatch.setenv("DETECTOR_KAFKA__SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    with pytest.raises(SettingsError, match="kafka"):
        load_settings(None)


def test_cli_exits_2_on_bad_settings(tmp_path, capsys):
    config = write_config(tmp_path / "c.toml", model={"cell": "transformer"})
    code = main(["--config", str(config), "run"])
    err = capsys.readouterr().err
    assert code == 2
    assert "model.cell" in err and len(err.strip().splitlines()) == 1
