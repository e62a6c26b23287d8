"""`detector score` reads in chunks and writes as it goes: the same scores as the whole file at once."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from support import QUICK_FIT, synthetic_csv

from detector.cli import main
from detector.config import FitSettings, ModelSettings, ScoringSettings
from detector.fit import fit_tables
from detector.model import FittedModel, save_model
from detector.offline import score_file
from detector.schema import DataError, observations_from_table, read_csv
from detector.scoring import Detector


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[FittedModel, Path]:
    """A model fitted with the default architecture on three interleaved entities, and a later file."""
    root = tmp_path_factory.mktemp("offline")
    history = synthetic_csv(root / "history.csv", entities=3, rows=120, seed=1)
    model, _ = fit_tables(
        [read_csv(history)], ModelSettings(), FitSettings(**QUICK_FIT), ScoringSettings(), progress=False
    )
    later = synthetic_csv(root / "later.csv", entities=3, rows=90, seed=2, shift_at=60, shift=3.0)
    return model, later


def _whole_file_in_one_call(model: FittedModel, data: Path) -> list[list[str]]:
    """The rows `detector score` wrote before it read in chunks: every observation in one call."""
    table = read_csv(data, model.features)
    decisions = Detector(model).process(list(observations_from_table(table)))
    return [
        [raw, entity, f"{d.score:.9g}", f"{d.probability:.9g}", str(int(d.is_anomaly)), d.event or ""]
        for raw, entity, d in zip(table.raw_timestamps, table.entities or [], decisions, strict=True)
    ]


def _same_outcomes(written: list[list[str]], expected: list[list[str]]) -> None:
    """Same rows, entities and decisions; scores and probabilities equal to 1e-6 (relative or
    absolute: a chunk of few rows per entity takes the stepwise path, a long one the sequence
    path, which round the recurrent network's last bits differently)."""
    assert [row[:2] + row[4:] for row in written] == [row[:2] + row[4:] for row in expected]
    for column in (2, 3):
        assert [float(row[column]) for row in written] == pytest.approx(
            [float(row[column]) for row in expected], rel=1e-6, abs=1e-6
        )


def test_chunks_score_as_the_whole_file_in_one_call(fitted: tuple[FittedModel, Path], tmp_path: Path) -> None:
    model, data = fitted
    expected = _whole_file_in_one_call(model, data)
    assert any(row[5] == "open" for row in expected), "the level shift opens an alert: the check covers decisions"
    for chunk_rows in (7, 64, 1_000_000):  # chunks that cut entities' series anywhere, and one chunk
        out = tmp_path / f"scores-{chunk_rows}.csv"
        summary = score_file(model, data, out, chunk_rows=chunk_rows)
        assert summary.rows == len(expected) == 270
        assert summary.opened == sum(row[5] == "open" for row in expected)
        assert summary.anomalous == sum(row[4] == "1" for row in expected)
        with out.open(newline="") as handle:
            written = list(csv.reader(handle))
        assert written[0] == ["timestamp", "entity", "score", "probability", "is_anomaly", "event"]
        _same_outcomes(written[1:], expected)
        if chunk_rows > len(expected):
            assert written[1:] == expected, "one chunk: the very same output as before"


def test_a_row_out_of_order_in_a_later_chunk_is_named_and_nothing_is_written(
    fitted: tuple[FittedModel, Path], tmp_path: Path
) -> None:
    model, data = fitted
    lines = data.read_text().splitlines()
    lines[200], lines[203] = lines[203], lines[200]  # the same entity, one time step apart
    shuffled = tmp_path / "shuffled.csv"
    shuffled.write_text("\n".join(lines) + "\n")
    out = tmp_path / "s.csv"
    with pytest.raises(DataError, match=r"row 204: entity 'pump-1' goes back in time: .* on row 201"):
        score_file(model, shuffled, out, chunk_rows=50)
    assert list(tmp_path.iterdir()) == [shuffled], "neither the scores nor a partial file are left behind"
    summary = score_file(model, shuffled, out, reject_out_of_order=False, chunk_rows=50)
    assert summary.rows == 270


def test_progress_bar_only_when_asked(fitted: tuple[FittedModel, Path], tmp_path: Path, capsys) -> None:
    model, data = fitted
    score_file(model, data, tmp_path / "quiet.csv", chunk_rows=100)
    assert capsys.readouterr().err == ""
    score_file(model, data, tmp_path / "shown.csv", chunk_rows=100, progress=True)
    assert "rows/s" in capsys.readouterr().err


def test_cli_score_writes_no_progress_bar_when_stderr_is_not_a_terminal(
    fitted: tuple[FittedModel, Path], tmp_path: Path, capsys
) -> None:
    model, data = fitted
    save_model(model, tmp_path / "model")
    code = main(["score", "--model", str(tmp_path / "model"), "--data", str(data), "--out", str(tmp_path / "s.csv")])
    shown = capsys.readouterr()
    assert code == 0 and "scored 270 rows" in shown.out
    assert "rows/s" not in shown.err and "it/s" not in shown.err
