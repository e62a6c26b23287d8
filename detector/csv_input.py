"""CSV input for ``fit`` and ``score``: reading and validating a file into a :class:`Table`.

A file has a header, a ``timestamp`` column (ISO 8601 or epoch seconds), an optional ``entity``
column and numeric feature columns, in any order. Every problem is a :class:`DataError` that
names the file, row and column, so the CLI can print it as one line.
"""

from __future__ import annotations

import csv
import itertools
import math
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from detector.observation import Columns, Observation, parse_timestamp

__all__ = ["DataError", "Table", "observations_from_table", "parse_csv", "read_csv", "read_csv_chunks"]

TIMESTAMP = "timestamp"
ENTITY = "entity"
DEFAULT_ENTITY = "default"


class DataError(ValueError):
    """A bad input file; ``str()`` is the one-line message the CLI prints, ``help`` what to do."""

    def __init__(
        self, file: str, message: str, row: int | None = None, column: str | None = None, help: str | None = None
    ):
        where = f"{file}" + (f", row {row}" if row is not None else "") + (f", column {column!r}" if column else "")
        super().__init__(f"{where}: {message}")
        self.file, self.row, self.column, self.help = file, row, column, help


@dataclass(frozen=True)
class Table:
    """A parsed CSV file: row order is stream order."""

    timestamps: list[float]  # epoch seconds
    raw_timestamps: list[str]
    entities: list[str] | None  # None when the file has no entity column
    features: list[str]
    values: np.ndarray  # (rows, features) float64
    name: str = "<table>"  # the file it was read from, for messages

    def entity_of(self, row: int) -> str:
        """Entity of ``row``; ``"default"`` for a file without an entity column."""
        return self.entities[row] if self.entities is not None else DEFAULT_ENTITY

    def with_features(self, features: Sequence[str], name: str) -> Table:
        """The table with the columns ``features`` in that order (a model's order), matched by
        header name; other feature columns are left out, as a message's extra fields are.
        Raises :class:`DataError` naming the missing columns.

        >>> table = Table([0.0], ["0"], None, ["b", "a", "extra"], np.array([[2.0, 1.0, 9.0]]))
        >>> table.with_features(["a", "b"], "x.csv").values.tolist()
        [[1.0, 2.0]]
        """
        missing = [f for f in features if f not in self.features]
        if missing:
            raise DataError(
                name,
                f"feature schema mismatch: missing column{'s' if len(missing) > 1 else ''} "
                f"{', '.join(map(repr, missing))} of the features {list(features)}",
                1,
                help="give the file a column for each of the model's features (any order), or fit a model on this file",
            )
        columns = [self.features.index(f) for f in features]
        return Table(
            self.timestamps, self.raw_timestamps, self.entities, list(features), self.values[:, columns], self.name
        )

    def columns(self) -> Columns:
        """The rows as :class:`Columns`, what :meth:`detector.scoring.Detector.process_columns`
        steps in one call (no object per row; ``sources`` is None).

        >>> Table([5.0], ["5"], None, ["a"], np.array([[1.0]])).columns().entities
        ['default']
        """
        entities = self.entities if self.entities is not None else [DEFAULT_ENTITY] * len(self.timestamps)
        return Columns(entities, np.asarray(self.timestamps, dtype=np.float64), self.values)

    def first_out_of_order(self) -> tuple[int, int] | None:
        """(row, earlier row) of the first row older than its entity's previous row (row numbers
        as an editor shows them, the header being row 1), or None when every entity's rows are in
        time order. Equal timestamps are in order, as in the stream.

        >>> table = Table([1.0, 5.0, 3.0, 2.0], ["1", "5", "3", "2"], ["a", "a", "b", "a"], ["f"], np.zeros((4, 1)))
        >>> table.first_out_of_order()
        (5, 3)
        """
        last: dict[str, tuple[float, int]] = {}
        for row, timestamp in enumerate(self.timestamps):
            entity = self.entity_of(row)
            previous = last.get(entity)
            if previous is not None and timestamp < previous[0]:
                return row + 2, previous[1] + 2
            last[entity] = (timestamp, row)
        return None


def read_csv(path: Path | str, features: Sequence[str] | None = None) -> Table:
    """Read and validate a CSV file; raises :class:`DataError` naming file, row and column.
    ``features``: only these columns, in this order (see :func:`parse_csv`)."""
    (table,) = read_csv_chunks(path, features, sys.maxsize)
    return table


def read_csv_chunks(path: Path | str, features: Sequence[str] | None = None, rows: int = 100_000) -> Iterator[Table]:
    """The CSV file at ``path`` as consecutive tables of at most ``rows`` rows each, read as they
    are consumed (memory bounded by one chunk); validated as :func:`read_csv` does, with row
    numbers counted from the top of the file. Chunks that pyarrow reads as the csv module would
    are read by it (:mod:`detector.csv_arrow`, several times faster); from the first one it
    declines on, the csv module reads the rest.

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "d.csv")
    >>> _ = open(path, "w").write("timestamp,a\\n1,1.0\\n2,2.0\\n3,3.0\\n")
    >>> [table.values[:, 0].tolist() for table in read_csv_chunks(path, rows=2)]
    [[1.0, 2.0], [3.0]]
    """
    name = str(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, [])
            layout = _Layout.of(header, name, features)
            fast = _FastRead()
            yield from fast.tables(name, layout, header, rows)
            if fast.complete:
                return
            for _ in itertools.islice(reader, fast.rows):  # rows the fast reader took
                pass
            first = 2 + fast.rows
            while chunk := list(itertools.islice(reader, rows)):
                table = layout.table(chunk, name, first)
                first += len(chunk)
                del chunk  # not alive while the next chunk is read: one chunk's cells at a time
                yield table
                del table
            if first == 2:
                raise DataError(name, "no data rows")
    except OSError as error:
        raise DataError(name, f"cannot read file: {error.strerror}") from None
    except UnicodeDecodeError:
        raise DataError(name, "file is not UTF-8 text") from None
    except csv.Error as error:  # e.g. a field longer than the csv module takes (131,072 characters)
        raise DataError(
            name, f"cannot read the file as CSV: {error}", help="check the file is comma-separated text"
        ) from None


class _FastRead:
    """The chunks :mod:`detector.csv_arrow` reads from the top of a file: how many rows it
    took, and whether that was the whole file."""

    def __init__(self) -> None:
        self.rows = 0
        self.complete = False

    def tables(self, name: str, layout: _Layout, header: list[str], rows: int) -> Iterator[Table]:
        from detector import csv_arrow  # pyarrow loads when a file is read, not with the service

        if not csv_arrow.takes(header):
            return
        try:
            for cells in csv_arrow.read_chunks(name, layout, rows):
                yield Table(cells.timestamps, cells.raw_timestamps, cells.entities, layout.features, cells.values, name)
                self.rows += len(cells.raw_timestamps)
        except csv_arrow.Declined:
            return
        self.complete = self.rows > 0  # an empty file goes to the csv module, which says so


def parse_csv(handle: IO[str], name: str, features: Sequence[str] | None = None) -> Table:
    """Parse an open CSV stream (see module docstring for the contract). Columns are matched by
    header name, in any order. With ``features`` (a model's), the table holds those columns in
    that order and other columns are not read, as a message's extra fields are ignored."""
    reader = csv.reader(handle)
    layout = _Layout.of(next(reader, []), name, features)
    rows = list(reader)
    if not rows:
        raise DataError(name, "no data rows")
    return layout.table(rows, name, 2)


@dataclass(frozen=True)
class _Layout:
    """Where a CSV file's columns are: what every chunk of it is parsed with."""

    header: list[str]
    features: list[str]
    timestamp: int
    entity: int | None
    feature_columns: list[int]

    @classmethod
    def of(cls, raw_header: list[str], name: str, features: Sequence[str] | None) -> _Layout:
        header = [column.strip() for column in raw_header]
        present = _check_header(header, name)
        if features is not None:
            Table([], [], None, present, np.empty((0, len(present))), name).with_features(
                features, name
            )  # names the missing ones
        chosen = present if features is None else list(features)
        entity = header.index(ENTITY) if ENTITY in header else None
        return cls(header, chosen, header.index(TIMESTAMP), entity, [header.index(f) for f in chosen])

    def table(self, rows: list[list[str]], name: str, first: int) -> Table:
        """The table of ``rows``, the first of which is row ``first`` of the file (as an editor counts)."""
        try:
            return self._columnwise(rows, name, first)
        except DataError:  # report the first bad row in file order, as a row-by-row reading finds it
            return self._rowwise(rows, name, first)

    def _columnwise(self, rows: list[list[str]], name: str, first: int) -> Table:
        """Column by column (one conversion of every feature cell): the fast way for a good file."""
        width = len(self.header)
        for number, row in enumerate(rows, start=first):
            if len(row) != width:
                raise DataError(name, f"expected {width} fields, found {len(row)}", number)
        raw = [row[self.timestamp] for row in rows]
        timestamps = [_cell_timestamp(text, name, number) for number, text in enumerate(raw, start=first)]
        entities = (
            None
            if self.entity is None
            else [_cell_entity(row[self.entity], name, number) for number, row in enumerate(rows, start=first)]
        )
        try:
            values = np.array([[row[c] for c in self.feature_columns] for row in rows], dtype=np.float64)
        except ValueError:
            raise DataError(name, "a non-numeric value") from None
        if not np.isfinite(values).all():
            raise DataError(name, "a value that is not finite")
        return Table(timestamps, raw, entities, self.features, values.reshape(len(rows), len(self.features)), name)

    def _rowwise(self, rows: list[list[str]], name: str, first: int) -> Table:
        """Row by row, cell by cell: raises :class:`DataError` at the first bad cell."""
        values = np.empty((len(rows), len(self.features)), dtype=np.float64)
        timestamps: list[float] = []
        raw: list[str] = []
        entities: list[str] | None = [] if self.entity is not None else None
        for number, row in enumerate(rows, start=first):  # row numbers as an editor shows them
            if len(row) != len(self.header):
                raise DataError(name, f"expected {len(self.header)} fields, found {len(row)}", number)
            timestamps.append(_cell_timestamp(row[self.timestamp], name, number))
            raw.append(row[self.timestamp])
            if entities is not None and self.entity is not None:
                entities.append(_cell_entity(row[self.entity], name, number))
            values[number - first] = [_cell_number(row[c], name, number, self.header[c]) for c in self.feature_columns]
        return Table(timestamps, raw, entities, self.features, values, name)


def _check_header(header: list[str], name: str) -> list[str]:
    if not header or header == [""]:
        raise DataError(name, "empty file (no header)")
    if TIMESTAMP not in header:
        separator = _other_separator(header)
        if separator is not None:
            raise DataError(
                name,
                f"the file looks {separator!r}-separated (header {','.join(header)!r}); the input is comma-separated",
                1,
                help="write the file with ',' between fields, e.g. python -c \"import csv,sys; "
                f"csv.writer(sys.stdout).writerows(csv.reader(sys.stdin, delimiter='{separator}'))\" "
                "< in.csv > out.csv",
            )
        raise DataError(
            name,
            f"missing column (the header has {header})",
            1,
            TIMESTAMP,
            help="name the time column 'timestamp' (ISO 8601 or epoch seconds); columns may come in any order",
        )
    duplicates = {c for c in header if header.count(c) > 1}
    if duplicates:
        raise DataError(name, "duplicate column", 1, sorted(duplicates)[0])
    features = [c for c in header if c not in (TIMESTAMP, ENTITY)]
    if not features:
        raise DataError(name, "no feature column (every column but timestamp and entity is a feature)", 1)
    return features


def _other_separator(header: list[str]) -> str | None:
    """The separator a one-column header seems to use instead of ',' (';', tab or '|'), or None.

    >>> _other_separator(["timestamp;entity;a"]), _other_separator(["time", "a"])
    (';', None)
    """
    if len(header) != 1:
        return None
    counts = {separator: header[0].count(separator) for separator in (";", "\t", "|")}
    separator = max(counts, key=counts.__getitem__)
    return separator if counts[separator] else None


def _cell_timestamp(text: str, name: str, row: int) -> float:
    try:
        return parse_timestamp(text)
    except ValueError:
        raise DataError(name, f"bad timestamp {text!r} (want ISO 8601 or epoch seconds)", row, TIMESTAMP) from None


def _cell_entity(text: str, name: str, row: int) -> str:
    if not text.strip():
        raise DataError(name, "empty entity", row, ENTITY)
    return text.strip()


def _cell_number(text: str, name: str, row: int, column: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise DataError(name, f"non-numeric value {text!r}", row, column) from None
    if not math.isfinite(number):
        raise DataError(name, f"value {text!r} is not finite (NaN/inf)", row, column)
    return number


def observations_from_table(table: Table) -> Iterable[Observation]:
    """The rows of a table as observations, in file order (``source`` is the row index)."""
    for row in range(len(table.timestamps)):
        yield Observation(table.entity_of(row), table.timestamps[row], table.values[row].tolist(), row)
