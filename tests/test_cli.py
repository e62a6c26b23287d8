"""`detector fit` then `detector score` on a SKAB valve1 file: the output contract."""

import csv
import json

import pytest
from support import QUICK_FIT, SKAB_VALVE1, skab_to_contract, synthetic_csv, write_config

from detector.cli import main

pytestmark = pytest.mark.skipif(not SKAB_VALVE1.is_dir(), reason=f"benchmark data not found at {SKAB_VALVE1}")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data = skab_to_contract(SKAB_VALVE1 / "3.csv", root / "valve1_3.csv")
    train = skab_to_contract(SKAB_VALVE1 / "3.csv", root / "train.csv", slice(0, 400))
    config = write_config(root / "c.toml", fit={"report": True})
    assert main(["--config", str(config), "fit", "--data", str(train), "--out", str(root / "model")]) == 0
    return root, data, config


def _read(path):
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_fit_writes_a_complete_model_dir(workspace):
    root, _, _ = workspace
    names = {p.name for p in (root / "model").iterdir()}
    assert {"weights.pt", "model.json", "report.png"} <= names
    assert (root / "model" / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with (root / "train.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    features = [name for name in rows[0] if name not in ("timestamp", "entity")]
    low, high = json.loads((root / "model" / "model.json").read_text())["feature_range"]
    assert low == [min(float(r[f]) for r in rows) for f in features], "the fit data's range, for the range check"
    assert high == [max(float(r[f]) for r in rows) for f in features]


def test_score_output_contract_and_determinism(workspace):
    root, data, config = workspace
    args = ["--config", str(config), "score", "--model", str(root / "model"), "--data", str(data)]
    assert main([*args, "--out", str(root / "a.csv")]) == 0
    assert main([*args, "--out", str(root / "b.csv")]) == 0
    assert (root / "a.csv").read_bytes() == (root / "b.csv").read_bytes()
    rows, source = _read(root / "a.csv"), _read(data)
    assert list(rows[0]) == ["timestamp", "score", "probability", "is_anomaly", "event"]
    assert [r["timestamp"] for r in rows] == [r["timestamp"] for r in source]
    scores = [float(r["score"]) for r in rows]
    probabilities = [float(r["probability"]) for r in rows]
    assert all(s >= 0 for s in scores) and all(0 <= p <= 1 for p in probabilities)
    assert {r["is_anomaly"] for r in rows} <= {"0", "1"}
    assert {r["event"] for r in rows} == {"", "open", "close"}, (
        "the alert that flags the valve closure opens and closes"
    )
    ranked = sorted(zip(scores, probabilities, strict=True))
    assert ranked[-1][1] > ranked[0][1]
    assert any(r["is_anomaly"] == "1" for r in rows[400:]), "the valve closure in file 3 is flagged"


def test_score_with_entities_adds_the_column(tmp_path):
    data = synthetic_csv(tmp_path / "multi.csv", entities=2, rows=60)
    config = write_config(tmp_path / "c.toml", fit=QUICK_FIT)
    assert main(["--config", str(config), "fit", "--data", str(data), "--out", str(tmp_path / "m")]) == 0
    assert (
        main(
            [
                "--config",
                str(config),
                "score",
                "--model",
                str(tmp_path / "m"),
                "--data",
                str(data),
                "--out",
                str(tmp_path / "s.csv"),
            ]
        )
        == 0
    )
    rows = _read(tmp_path / "s.csv")
    assert list(rows[0]) == ["timestamp", "entity", "score", "probability", "is_anomaly", "event"]
    assert [r["entity"] for r in rows] == [r["entity"] for r in _read(data)]


def test_score_refuses_a_model_with_other_features(workspace, tmp_path, capsys):
    root, _, config = workspace
    other = synthetic_csv(tmp_path / "other.csv", entities=1, rows=20)
    code = main(
        [
            "--config",
            str(config),
            "score",
            "--model",
            str(root / "model"),
            "--data",
            str(other),
            "--out",
            str(tmp_path / "s.csv"),
        ]
    )
    assert code == 2 and "feature schema mismatch" in capsys.readouterr().err
