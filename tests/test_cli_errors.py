"""Every user mistake gets one line saying what is wrong (and a help line), exit 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import write_config

from detector.cli import main
from detector.demo import generate_history, write_csv

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """A working directory with a good history, a short one, a ';'-separated and an unsorted file."""
    write_csv(generate_history(entities=2, rows=60), tmp_path / "good.csv")
    write_csv(generate_history(entities=2, rows=10), tmp_path / "short.csv")
    lines = (tmp_path / "good.csv").read_text().splitlines()
    (tmp_path / "semicolon.csv").write_text("\n".join(line.replace(",", ";") for line in lines) + "\n")
    body = lines[1:]
    body[5], body[9] = body[9], body[5]  # pump-1 at minute 4 on file row 7: its minute-3 row 9 goes back in time
    (tmp_path / "unsorted.csv").write_text("\n".join([lines[0], *body]) + "\n")
    (tmp_path / "blocker").write_text("a file where a directory should be")
    (tmp_path / "empty-model").mkdir()
    (tmp_path / "bad.toml").write_text("[model\n")
    (tmp_path / "old.toml").write_text("[scoring]\nseasonal_halflife_days = 2.0\n")
    (tmp_path / "removed.toml").write_text("[scoring]\nlikelihood_short_scaled = true\n")
    return tmp_path


MISTAKES = {
    # name: (argv with {d} for the directory, environment,
    #        words the error line must hold, words the help line must hold)
    "list setting not JSON": (
        ["run"],
        {"DETECTOR_KAFKA__INPUT_TOPICS": "sensors"},
        "DETECTOR_KAFKA__INPUT_TOPICS='sensors': not a JSON list",
        """DETECTOR_KAFKA__INPUT_TOPICS='["sensors"]'""",
    ),
    "renamed setting in environment": (
        ["run"],
        {"DETECTOR_SCORING__SEASONAL_HALFLIFE_DAYS": "3"},
        "DETECTOR_SCORING__SEASONAL_HALFLIFE_DAYS='3' is now scoring.seasonal_halflife_s",
        "DETECTOR_SCORING__SEASONAL_HALFLIFE_S=259200.0",
    ),
    "renamed setting in file": (
        ["run", "--config", "{d}/old.toml"],
        {},
        "scoring.seasonal_halflife_days = 2.0 in the settings file is now scoring.seasonal_halflife_s",
        "seasonal_halflife_s = 172800.0 in [scoring]",
    ),
    "removed setting in file": (
        ["run", "--config", "{d}/removed.toml"],
        {},
        "scoring.likelihood_short_scaled = True in the settings file was removed",
        "delete likelihood_short_scaled from [scoring]",
    ),
    "bad number in environment": (["run"], {"DETECTOR_MODEL__NUM_LAYERS": "abc"}, "model.num_layers", None),
    "config file missing": (["--config", "{d}/nope.toml", "run"], {}, "config file not found", "--config"),
    "config file not TOML": (["run", "--config", "{d}/bad.toml"], {}, "is not valid TOML", None),
    "unknown command": (["frobnicate"], {}, "invalid choice: 'frobnicate'", "detector --help"),
    "missing argument": (["fit", "--data", "{d}/good.csv"], {}, "--out", "detector fit --help"),
    "data file missing": (["fit", "--data", "{d}/missing.csv", "--out", "{d}/m"], {}, "no such file", None),
    "model dir missing": (
        ["score", "--model", "{d}/no-model", "--data", "{d}/good.csv", "--out", "{d}/s.csv"],
        {},
        "no such directory",
        None,
    ),
    "model dir empty": (
        ["score", "--model", "{d}/empty-model", "--data", "{d}/good.csv", "--out", "{d}/s.csv"],
        {},
        "no model in",
        "detector fit",
    ),
    "too little history": (
        ["fit", "--data", "{d}/short.csv", "--out", "{d}/m"],
        {},
        "has 10 rows; fit needs at least 46 per entity",
        "more history",
    ),
    "out cannot be created": (
        ["fit", "--data", "{d}/good.csv", "--out", "{d}/blocker/m"],
        {},
        "--out cannot be created",
        "--out",
    ),
    "semicolon file": (
        ["fit", "--data", "{d}/semicolon.csv", "--out", "{d}/m"],
        {},
        "the file looks ';'-separated",
        "','",
    ),
    "rows out of order": (
        ["fit", "--data", "{d}/unsorted.csv", "--out", "{d}/m"],
        {},
        "row 9: entity 'pump-1' goes back in time",
        "sort the rows",
    ),
    "benchmark dir missing": (["evaluate", "--nab", "{d}/nab"], {}, "no such directory", None),
}


def _argv(argv: list[str], directory: Path) -> list[str]:
    return [part.replace("{d}", str(directory)) for part in argv]


def _check(code: int, stderr: str, error: str, help: str | None) -> None:
    lines = [line for line in stderr.splitlines() if not line.startswith("{")]  # structured log lines are not messages
    assert code == 2, stderr
    assert "Traceback" not in stderr
    assert len(lines) == (2 if help else 1) or (len(lines) == 2 and lines[1].startswith("help: ")), lines
    assert lines[0].startswith("detector") and "error: " in lines[0] and error in lines[0], lines[0]
    if help:
        assert lines[1].startswith("help: ") and help in lines[1], lines[1]


@pytest.mark.parametrize("name", list(MISTAKES))
def test_each_mistake_gets_one_line_and_exit_2(
    name: str, files: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv, environment, error, help = MISTAKES[name]
    for variable in [v for v in os.environ if v.startswith("DETECTOR_")]:
        monkeypatch.delenv(variable)
    for variable, value in environment.items():
        monkeypatch.setenv(variable, value)
    code = main(_argv(argv, files))
    _check(code, capsys.readouterr().err, error, help)


@pytest.mark.parametrize("name", ["list setting not JSON", "too little history", "model dir empty"])
def test_mistakes_in_a_real_process_print_no_traceback(name: str, files: Path) -> None:
    argv, environment, error, help = MISTAKES[name]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DETECTOR_")}
    done = subprocess.run(
        [sys.executable, "-m", "detector.cli", *_argv(argv, files)],
        env={**clean, **environment},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    _check(done.returncode, done.stderr, error, help)
    assert done.stdout == ""


def test_an_unknown_variable_is_named_with_the_closest_setting(
    files: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DETECTOR_KAFKA__INPUT_TOPIC", '["x"]')
    monkeypatch.setenv("DETECTOR_NOTHING_LIKE_IT", "1")
    assert main(["evaluate", "--nab", str(files / "nab")]) == 2  # the command goes on: the variable is ignored
    err = capsys.readouterr().err.splitlines()
    assert err[:3] == [
        "warning: environment variable DETECTOR_KAFKA__INPUT_TOPIC matches no setting (ignored)",
        "help: did you mean DETECTOR_KAFKA__INPUT_TOPICS?",
        "warning: environment variable DETECTOR_NOTHING_LIKE_IT matches no setting (ignored)",
    ]
    assert "no such directory" in err[3]


def test_importing_the_command_line_does_not_import_torch() -> None:
    heavy = ("torch", "matplotlib", "kafka", "numpy", "pydantic")
    probe = f"import sys, detector.cli; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True, cwd=ROOT
    )
    assert done.stdout.strip() == "[]"


def test_out_of_order_rows_are_taken_in_file_order_when_the_stream_takes_them(
    files: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(
        files / "c.toml", stream={"reject_out_of_order": False}, fit={"max_epochs": 2, "report": False}
    )
    assert main(["--config", str(config), "fit", "--data", str(files / "unsorted.csv"), "--out", str(files / "m")]) == 0
    assert "input.out_of_order" in capsys.readouterr().err
