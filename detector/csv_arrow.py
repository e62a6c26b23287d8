"""The fast reader of CSV files: pyarrow splits and converts whole blocks of a file in C++.

It reads a file only as far as every cell reads as :mod:`detector.csv_input`'s csv-module reader
reads it: no quote character anywhere (the two readers split quoted fields differently), every
row as wide as the header, timestamps that :func:`detector.observation.parse_timestamp` takes,
non-empty entities, and finite numbers that pyarrow's parser takes (it refuses a few that
Python's ``float`` takes, such as ``1_0``; it takes none that ``float`` refuses). At the first
chunk it cannot read it raises :class:`Declined`, and the csv-module reader goes on from that
chunk's first row; it names the bad cell. So the fast reader changes speed, never results.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv

from detector.observation import MAX_EPOCH_S, MS_THRESHOLD, parse_timestamp

__all__ = ["BLOCK_BYTES", "Cells", "Declined", "Layout", "read_chunks", "takes"]

BLOCK_BYTES = 1 << 20  # bytes pyarrow parses at a time (its default): its memory grows with it


class Declined(Exception):
    """The fast reader stops here: the rest of the file is the csv-module reader's."""


class Layout(Protocol):
    """Where a file's columns are (:class:`detector.csv_input._Layout` is one)."""

    @property
    def header(self) -> list[str]: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def entity(self) -> int | None: ...
    @property
    def feature_columns(self) -> list[int]: ...


@dataclass(frozen=True)
class Cells:
    """One chunk's cells, converted as the csv-module reader converts them."""

    timestamps: list[float]  # epoch seconds
    raw_timestamps: list[str]
    entities: list[str] | None  # stripped; None when the file has no entity column
    values: np.ndarray  # (rows, features) float64, the layout's feature columns in order


def takes(header: Sequence[str]) -> bool:
    """Whether the fast reader can skip this header as one line of the file: no field of it
    holds a line break (a quoted header cell may)."""
    return not any("\n" in cell or "\r" in cell for cell in header)


def read_chunks(path: str, layout: Layout, rows: int, block_bytes: int | None = None) -> Iterator[Cells]:
    """The data rows of the CSV file at ``path`` (its header skipped) as consecutive chunks of
    ``rows`` rows, the last one shorter. Raises :class:`Declined` instead of yielding a chunk it
    cannot read as the csv-module reader would; the chunks before it are final. pyarrow reads
    ``block_bytes`` (default :data:`BLOCK_BYTES`) at a time, a block ahead: it may decline before
    the chunk that holds the bad row."""
    names = [f"c{i}" for i in range(len(layout.header))]
    types = {name: pa.string() for name in names}  # string columns are checked to be UTF-8
    types.update({names[c]: pa.float64() for c in layout.feature_columns})
    try:
        reader = pv.open_csv(
            path,
            read_options=pv.ReadOptions(
                column_names=names, skip_rows=1, block_size=block_bytes or BLOCK_BYTES, use_threads=False
            ),
            parse_options=pv.ParseOptions(quote_char=False, ignore_empty_lines=False),
            convert_options=pv.ConvertOptions(
                column_types=types, null_values=[], strings_can_be_null=False, quoted_strings_can_be_null=False
            ),
        )
    except (pa.ArrowException, OSError):
        raise Declined from None
    pending: list[pa.RecordBatch] = []
    held = 0
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            break
        except pa.ArrowException:
            raise Declined from None
        pending.append(batch)
        held += batch.num_rows
        while held >= rows:
            table = pa.Table.from_batches(pending, reader.schema)
            yield _cells(table.slice(0, rows), layout)
            rest = table.slice(rows)
            pending, held = rest.to_batches(), rest.num_rows
    if held:
        yield _cells(pa.Table.from_batches(pending, reader.schema), layout)


def _cells(table: pa.Table, layout: Layout) -> Cells:
    """The chunk's cells; :class:`Declined` if any of them is not plainly what it should be."""
    features = set(layout.feature_columns)
    for column in (table.column(i) for i in range(table.num_columns) if i not in features):
        if pc.any(pc.match_substring(column, '"')).as_py():  # the csv module would unquote it
            raise Declined
    stamps = table.column(layout.timestamp)
    raw: list[str] = stamps.to_pylist()
    entities = None if layout.entity is None else _entities(table.column(layout.entity))
    values = np.column_stack([table.column(c).to_numpy() for c in layout.feature_columns])  # float64
    if not np.isfinite(values).all():
        raise Declined
    return Cells(_epochs(stamps, raw), raw, entities, values)


def _entities(column: pa.ChunkedArray) -> list[str]:
    """The entity cells stripped as ``str.strip`` strips them; :class:`Declined` if one is empty.
    Only a chunk where some cell starts or ends with other than a letter or digit is stripped
    cell by cell: names like ``pump-7`` are already what stripping would leave."""
    cells: list[str] = column.to_pylist()
    if not pc.any(pc.match_substring_regex(column, r"^$|^[^0-9A-Za-z]|[^0-9A-Za-z]$")).as_py():
        return cells
    stripped = [cell.strip() for cell in cells]
    if not all(stripped):
        raise Declined
    return stripped


def _epochs(stamps: pa.ChunkedArray, raw: list[str]) -> list[float]:
    """Epoch seconds of each timestamp: :func:`parse_timestamp` over all of them at once when every
    one is a number (the usual file), cell by cell otherwise (ISO 8601). pyarrow's cast reads
    numbers first; it refuses some that ``float`` reads (``" 1"``, ``1_0``), never the reverse,
    and reads the others to the same double, as both round correctly."""
    try:
        numbers = pc.cast(stamps, pa.float64()).to_numpy()
    except pa.ArrowInvalid:
        try:
            numbers = np.array(list(map(float, raw)), dtype=np.float64)
        except ValueError:
            try:
                return list(map(parse_timestamp, raw))
            except ValueError:
                raise Declined from None
    if not (np.isfinite(numbers) & (numbers >= 0)).all():
        raise Declined
    seconds = np.where(numbers > MS_THRESHOLD, numbers / 1000.0, numbers)  # milliseconds, as parse_timestamp
    if (seconds > MAX_EPOCH_S).any():
        raise Declined
    return seconds.tolist()
