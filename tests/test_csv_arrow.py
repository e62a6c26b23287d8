"""The fast CSV reader changes speed, never results: on any file, hostile or not, reading with
pyarrow (and the csv module from where it declines) gives what the csv module alone gives, to
the bit, or the same error."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path

import hypothesis.strategies as st
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings

from detector import csv_arrow
from detector.csv_input import DataError, Table, parse_csv, read_csv, read_csv_chunks
from detector.observation import parse_timestamp

HOSTILE_CHARACTERS = '0123456789.eE+-_ ,"\r\n\t\x00\x0b\x1cxnaifINTY\u0661\ufeff'


def _number_text(value: float, style: int) -> str:
    return [repr(value), f"{value:.3f}", f"{value:.17g}", f"{value:e}", f" {value}", f"{value}\t"][style]


@st.composite
def cells(draw: st.DrawFn, kind: str, faults: set[str]) -> str:
    """A good cell of its kind; now and then any text at all, or a quoted cell, if ``faults`` say so."""
    if "garbage" in faults and draw(st.integers(0, 8)) == 0:
        return draw(st.text(HOSTILE_CHARACTERS, max_size=6))
    if kind == "timestamp":
        epoch = draw(st.integers(0, 2_000_000_000))
        text = draw(
            st.sampled_from([str(epoch), f"{epoch}.5", str(epoch * 1000), f"2026-01-01T00:00:{epoch % 60:02d}Z"])
        )
    elif kind == "entity":
        text = draw(st.sampled_from(["p1", " p2", "p3 ", "pump-4"]))
    else:
        value = draw(st.floats(allow_nan=False, allow_infinity=False, width=64))
        text = _number_text(value, draw(st.integers(0, 5)))
    if "quotes" in faults and kind == "entity" and draw(st.booleans()):  # a quoted number pyarrow refuses anyway
        return '"' + text + draw(st.sampled_from(["", ",1", "\n1,2", '""'])) + '"'
    return text


HEADERS = (["timestamp", "entity", "a", "b"], ["b", "timestamp", "a"], ["note", "b", "timestamp", "entity", "a"])


@st.composite
def files(draw: st.DrawFn) -> tuple[bytes, list[str] | None]:
    """A CSV file of random rows and line endings (and the features to read), with any of these
    faults: bad cells, quoted cells, short rows, a blank line, a bad byte; and maybe a byte-order mark."""
    header = draw(st.sampled_from(HEADERS))
    faults = draw(st.sets(st.sampled_from(["garbage", "quotes", "short", "blank", "byte"]), max_size=2))
    kinds = ["value" if name in ("a", "b") else "entity" if name == "note" else name for name in header]
    lines = [",".join(header)]
    for _ in range(draw(st.integers(0, 12))):
        row = [draw(cells(kind, faults)) for kind in kinds]
        if "short" in faults and draw(st.integers(0, 5)) == 0:
            row = row[: draw(st.integers(0, len(row) - 1))]
        lines.append(",".join(row))
    if "blank" in faults:
        lines.insert(draw(st.integers(1, len(lines))), "")
    ending = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    data = (ending.join(lines) + draw(st.sampled_from([ending, ""]))).encode()
    if draw(st.booleans()):
        data = b"\xef\xbb\xbf" + data
    if "byte" in faults:
        cut = draw(st.integers(0, len(data)))
        data = data[:cut] + b"\xff" + data[cut:]
    return data, (["a", "b"] if "note" in header else None)


def _outcome(read: Callable[[], Iterable[Table]]) -> tuple[object, ...]:
    """What a read gave, comparable to the bit: the tables' cells end to end, or the error."""
    try:
        tables = list(read())
    except DataError as error:
        return ("error", str(error))
    entities = None if tables[0].entities is None else [e for t in tables for e in t.entities or []]
    return (
        "ok",
        tables[0].features,
        [raw for t in tables for raw in t.raw_timestamps],
        np.asarray([seconds for t in tables for seconds in t.timestamps]).tobytes(),
        entities,
        np.concatenate([t.values for t in tables]).tobytes(),
    )


def _csv_module(path: Path, features: list[str] | None) -> list[Table]:
    """The file as the csv module alone reads it."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            return [parse_csv(handle, str(path), features)]
    except UnicodeDecodeError:
        raise DataError(str(path), "file is not UTF-8 text") from None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(file=files(), rows=st.sampled_from([1, 3, 1000]), block=st.sampled_from([64, csv_arrow.BLOCK_BYTES]))
def test_any_file_reads_as_the_csv_module_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, file: tuple[bytes, list[str] | None], rows: int, block: int
) -> None:
    monkeypatch.setattr(csv_arrow, "BLOCK_BYTES", block)  # small blocks: declining half-way through a file
    data, features = file
    path = tmp_path / "f.csv"
    path.write_bytes(data)
    expected = _outcome(lambda: _csv_module(path, features))
    assert _outcome(lambda: [read_csv(path, features)]) == expected
    assert _outcome(lambda: read_csv_chunks(path, features, rows=rows)) == expected


def _layout(path: Path) -> object:
    from detector.csv_input import _Layout

    header = path.read_text().splitlines()[0].split(",")
    return _Layout.of(header, str(path), None)


def _plain(path: Path, rows: int) -> Path:
    lines = ["timestamp,entity,a,b"] + [f"{1_795_568_400 + 60 * i},p{i % 3},{math.sin(i):.6g},{i}" for i in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_plain_file_is_read_by_pyarrow_in_chunks_of_the_asked_size(tmp_path: Path) -> None:
    path = _plain(tmp_path / "plain.csv", 10)
    chunks = list(csv_arrow.read_chunks(str(path), _layout(path), 4))  # type: ignore[arg-type]
    assert [len(c.raw_timestamps) for c in chunks] == [4, 4, 2]
    assert chunks[0].entities == ["p0", "p1", "p2", "p0"]
    assert chunks[2].timestamps == [1_795_568_400.0 + 60 * 8, 1_795_568_400.0 + 60 * 9]


@pytest.mark.parametrize(
    "line, why",
    [
        ('1795568400,"p1",0.5,1', "a quote, which the csv module would take away"),
        ("1795568400,p1,1_0,1", "a number pyarrow does not read (Python does)"),
        ("1795568400,p1,0.5", "a short row"),
        ("1795568400, ,0.5,1", "an empty entity"),
        ("nan,p1,0.5,1", "a timestamp that is not one"),
    ],
)
def test_pyarrow_declines_what_it_would_read_otherwise(tmp_path: Path, line: str, why: str) -> None:
    path = _plain(tmp_path / "plain.csv", 6)
    path.write_text(path.read_text() + line + "\n")
    taken: list[list[str]] = []
    with pytest.raises(csv_arrow.Declined):
        for chunk in csv_arrow.read_chunks(str(path), _layout(path), 3, block_bytes=64):  # type: ignore[arg-type]
            taken.append(chunk.raw_timestamps)
    good = [str(1_795_568_400 + 60 * i) for i in range(6)]
    assert taken in ([], [good[:3]], [good[:3], good[3:]]), why  # whole chunks before the bad one, if any


def test_declined_chunks_are_read_by_the_csv_module_with_its_row_numbers(tmp_path: Path) -> None:
    path = _plain(tmp_path / "plain.csv", 6)
    path.write_text(path.read_text() + '1795568400,"p,1",0.5,1\n1795568460,p1,x,1\n')
    chunks = read_csv_chunks(path, rows=3)
    assert [len(next(chunks).timestamps) for _ in range(2)] == [3, 3]
    with pytest.raises(DataError, match=r"row 9, column 'a': non-numeric value 'x'"):
        next(chunks)


@settings(deadline=None)
@given(
    st.lists(
        st.integers(0, 10**14).map(str) | st.floats(0, 1e15).map(repr) | st.text(HOSTILE_CHARACTERS, max_size=6),
        min_size=1,
        max_size=20,
    )
)
def test_timestamps_read_at_once_are_parse_timestamp(raw: list[str]) -> None:
    try:
        expected = [parse_timestamp(text) for text in raw]
    except ValueError:
        with pytest.raises(csv_arrow.Declined):
            csv_arrow._epochs(pa.chunked_array([pa.array(raw)]), raw)
        return
    assert (
        np.asarray(csv_arrow._epochs(pa.chunked_array([pa.array(raw)]), raw)).tobytes()
        == np.asarray(expected).tobytes()
    )


@settings(deadline=None)
@given(st.lists(st.text(HOSTILE_CHARACTERS + "pP-", max_size=5), min_size=1, max_size=10))
def test_entities_are_stripped_as_str_strip_strips(cells: list[str]) -> None:
    stripped = [cell.strip() for cell in cells]
    if not all(stripped):
        with pytest.raises(csv_arrow.Declined):
            csv_arrow._entities(pa.chunked_array([pa.array(cells)]))
        return
    assert csv_arrow._entities(pa.chunked_array([pa.array(cells)])) == stripped


def test_the_csv_module_alone_reads_quoted_files(tmp_path: Path) -> None:
    path = tmp_path / "quoted.csv"
    path.write_text('"timestamp","entity","a"\n"1795568400","p,1","0.5"\n')
    table = read_csv(path)
    assert (table.raw_timestamps, table.entities, table.values.tolist()) == (["1795568400"], ["p,1"], [[0.5]])


def test_a_field_the_csv_module_refuses_is_a_data_error_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "long.csv"
    path.write_text('timestamp,entity,a\n1,p,1\n2,"' + "x" * 200_000 + '",1\n')  # quoted: the csv module reads it
    with pytest.raises(DataError, match="cannot read the file as CSV: field larger than field limit"):
        read_csv(path)
