"""`detector score` checks order and writes its rows a chunk at once, with the results of doing it
row by row: the same first row out of order, the same bytes as ``csv.writer``."""

from __future__ import annotations

import csv
import io

import hypothesis.strategies as st
import numpy as np
from hypothesis import given, settings

from detector.csv_input import Table
from detector.observation import Columns
from detector.offline import Disorder, OrderCheck, _write_rows
from detector.scoring import Outcomes


def _row_by_row(check: dict[str, tuple[float, int, str]], table: Table, first_row: int) -> Disorder | None:
    """The order check one row at a time: each row against its entity's previous one."""
    found = None
    for offset, timestamp in enumerate(table.timestamps):
        entity, raw, row = table.entity_of(offset), table.raw_timestamps[offset], first_row + offset
        previous = check.get(entity)
        if found is None and previous is not None and timestamp < previous[0]:
            message = f"entity {entity!r} goes back in time: {raw!r} is older than {previous[2]!r} on row {previous[1]}"
            found = Disorder(message, row, entity)
        check[entity] = (timestamp, row, raw)
    return found


def _table(rows: list[tuple[str, int]], with_entities: bool = True) -> Table:
    timestamps = [float(t) for _, t in rows]
    entities = [e for e, _ in rows] if with_entities else None
    return Table(timestamps, [str(t) for _, t in rows], entities, ["f"], np.zeros((len(rows), 1)))


chunks = st.lists(
    st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.integers(0, 8)), min_size=1, max_size=12),
    min_size=1,
    max_size=5,
)


@settings(deadline=None)  # a loaded machine: no time limit per example
@given(chunks, st.booleans())
def test_the_order_check_finds_what_a_row_by_row_check_finds(rows: list[list[tuple[str, int]]], entities: bool) -> None:
    check, reference, first_row = OrderCheck(), {}, 2
    for chunk in rows:
        table = _table(chunk, entities)
        assert check.first_disorder(table, first_row) == _row_by_row(reference, table, first_row)
        assert check.latest == reference
        first_row += len(chunk)


texts = st.text(st.sampled_from('ab1-,"\r\n \t\x00é'), min_size=1, max_size=4)
numbers = st.floats(width=64) | st.sampled_from([0.0, -0.0, 1e16, 1e-5, 0.999999999, 123456789.5])


@given(
    st.lists(
        st.tuples(texts, texts, numbers, numbers, st.booleans(), st.sampled_from([None, "open", "close"])), min_size=1
    ),
    st.booleans(),
)
def test_rows_are_the_bytes_csv_writer_writes(rows: list[tuple], with_entities: bool) -> None:
    raw, entities, scores, probabilities, flags, events = (list(column) for column in zip(*rows, strict=True))
    n = len(rows)
    table = Table([0.0] * n, raw, entities if with_entities else None, ["f"], np.zeros((n, 1)))
    outcomes = Outcomes(
        Columns(entities, np.zeros(n), np.zeros((n, 1))),
        np.asarray(scores),
        np.asarray(probabilities),
        np.asarray(flags),
        events,
        {},
        np.zeros(n, dtype=bool),
        {},
    )
    written = io.StringIO()
    _write_rows(written, table, outcomes)
    expected = io.StringIO()
    csv.writer(expected).writerows(
        [r, *([e] if with_entities else []), f"{s:.9g}", f"{p:.9g}", "1" if f else "0", v or ""]
        for r, e, s, p, f, v in rows
    )
    assert written.getvalue() == expected.getvalue()
