"""CSV input means what it says: columns by header name, extra columns ignored, rows in time order."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest

from detector.cli import main
from detector.model import save_model
from detector.schema import DataError, read_csv
from detector.testing import tiny_model


@pytest.fixture
def model(tmp_path: Path) -> Path:
    save_model(tiny_model(("a", "b"), feature_range=([-1.0, -1.0], [1.0, 1.0])), tmp_path / "model")
    return tmp_path / "model"


def _write(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _rows(n: int = 40) -> list[dict[str, object]]:
    rng = np.random.default_rng(0)
    return [
        {
            "timestamp": 1_700_000_000 + t,
            "entity": f"p{t % 2}",
            "a": round(float(np.sin(t / 5)), 4),
            "b": round(float(rng.normal()), 4),
            "note": "x",
        }
        for t in range(n)
    ]


def _scores(model: Path, data: Path, out: Path) -> list[dict[str, str]]:
    assert main(["score", "--model", str(model), "--data", str(data), "--out", str(out)]) == 0
    with out.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_columns_in_any_order_and_extra_columns_score_the_same(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = _rows()
    plain = _write(
        tmp_path / "plain.csv",
        ["timestamp", "entity", "a", "b"],
        [[r[c] for c in ("timestamp", "entity", "a", "b")] for r in rows],
    )
    shuffled = _write(
        tmp_path / "shuffled.csv",
        ["b", "note", "entity", "a", "timestamp"],
        [[r[c] for c in ("b", "note", "entity", "a", "timestamp")] for r in rows],
    )
    assert _scores(model, plain, tmp_path / "1.csv") == _scores(model, shuffled, tmp_path / "2.csv")
    assert "ignored: note" in capsys.readouterr().out


def test_a_missing_feature_column_is_named(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _write(tmp_path / "d.csv", ["timestamp", "a", "c"], [[1, 0.5, 0.5]])
    assert main(["score", "--model", str(model), "--data", str(data), "--out", str(tmp_path / "s.csv")]) == 2
    assert "feature schema mismatch: missing column 'b'" in capsys.readouterr().err


@pytest.mark.parametrize("separator", [";", "\t", "|"])
def test_another_separator_is_told_apart_from_a_missing_column(tmp_path: Path, separator: str) -> None:
    (tmp_path / "d.csv").write_text(separator.join(["timestamp", "a"]) + "\n" + separator.join(["1", "2"]) + "\n")
    with pytest.raises(DataError, match=re.escape(f"looks {separator!r}-separated")):
        read_csv(tmp_path / "d.csv")


def test_a_missing_timestamp_column_is_still_called_missing(tmp_path: Path) -> None:
    _write(tmp_path / "d.csv", ["time", "a"], [[1, 2]])
    with pytest.raises(DataError, match="column 'timestamp': missing column") as error:
        read_csv(tmp_path / "d.csv")
    assert error.value.help is not None and "'timestamp'" in error.value.help


def test_unsorted_rows_are_refused_naming_the_first(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = _rows()
    rows[10], rows[20] = rows[20], rows[10]  # p0 at t=20 on file row 12; its t=12 on row 14 goes back
    data = _write(
        tmp_path / "d.csv",
        ["timestamp", "entity", "a", "b"],
        [[r[c] for c in ("timestamp", "entity", "a", "b")] for r in rows],
    )
    assert main(["score", "--model", str(model), "--data", str(data), "--out", str(tmp_path / "s.csv")]) == 2
    err = capsys.readouterr().err
    assert "row 14: entity 'p0' goes back in time: '1700000012' is older than '1700000020' on row 12" in err
    assert not (tmp_path / "s.csv").exists()


def test_equal_timestamps_and_interleaved_entities_are_in_order(tmp_path: Path) -> None:
    data = _write(
        tmp_path / "d.csv", ["timestamp", "entity", "a"], [[5, "x", 1], [3, "y", 1], [5, "x", 2], [4, "y", 1]]
    )
    assert read_csv(data).first_out_of_order() is None
