"""Input contracts: CSV files for ``fit``/``score`` and JSON messages for ``run``.

A CSV file has a header, a ``timestamp`` column (ISO 8601 or epoch seconds), an optional
``entity`` column and numeric feature columns:

>>> import io
>>> table = parse_csv(io.StringIO("timestamp,entity,a\\n2026-01-01T00:00:00Z,p1,1.5\\n"), "demo.csv")
>>> table.features, table.entities, table.values.tolist()
(['a'], ['p1'], [[1.5]])

A message is a JSON object:

>>> fields = MessageFields()
>>> obs = parse_message(b'{"entity": "p1", "timestamp": 1795568400, "values": {"a": 2}}', None, ["a"], fields)
>>> obs.entity, obs.values
('p1', [2.0])

The service decodes with :class:`MessageDecoder`: the same contract, with a compiled fast path
(msgspec) for well-formed messages; anything it does not accept goes through
:func:`parse_message`, which names the reason.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import operator
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Annotated, Any

import msgspec
import numpy as np
from msgspec.structs import astuple

__all__ = [
    "BadMessage",
    "Columns",
    "DataError",
    "MessageDecoder",
    "MessageFields",
    "Observation",
    "Table",
    "parse_csv",
    "parse_message",
    "parse_timestamp",
    "read_csv",
    "read_csv_chunks",
]

TIMESTAMP = "timestamp"
ENTITY = "entity"
DEFAULT_ENTITY = "default"
_MS_THRESHOLD = 1e11  # epoch values above this are milliseconds (year 5138 in seconds)
MAX_EPOCH_S = 253402300799.0  # 9999-12-31T23:59:59Z: the last second an ISO 8601 timestamp can show


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


def parse_timestamp(value: Any) -> float:
    """Epoch seconds from ISO 8601 text or epoch seconds/milliseconds (number or numeric text).

    >>> parse_timestamp("2026-11-25T01:00:00Z"), parse_timestamp(1795568400000)
    (1795568400.0, 1795568400.0)
    """
    if isinstance(value, bool):
        raise ValueError("timestamp must be a number or ISO 8601 text")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            parsed = datetime.fromisoformat(value.strip())
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            number = parsed.timestamp()
            if not 0 <= number <= MAX_EPOCH_S:
                raise ValueError("timestamp must lie between 1970 and 9999") from None
            return number
    else:
        raise ValueError("timestamp must be a number or ISO 8601 text")
    if not math.isfinite(number) or number < 0:
        raise ValueError("timestamp must be a finite, non-negative epoch")
    seconds = number / 1000.0 if number > _MS_THRESHOLD else number
    if seconds > MAX_EPOCH_S:
        raise ValueError("timestamp lies beyond the year 9999 (in seconds or milliseconds)")
    return seconds


def read_csv(path: Path | str, features: Sequence[str] | None = None) -> Table:
    """Read and validate a CSV file; raises :class:`DataError` naming file, row and column.
    ``features``: only these columns, in this order (see :func:`parse_csv`)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            return parse_csv(handle, str(path), features)
    except OSError as error:
        raise DataError(str(path), f"cannot read file: {error.strerror}") from None
    except UnicodeDecodeError:
        raise DataError(str(path), "file is not UTF-8 text") from None


def read_csv_chunks(path: Path | str, features: Sequence[str] | None = None, rows: int = 100_000) -> Iterator[Table]:
    """The CSV file at ``path`` as consecutive tables of at most ``rows`` rows each, read as they
    are consumed (memory bounded by one chunk); validated as :func:`read_csv` does, with row
    numbers counted from the top of the file.

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
            layout = _Layout.of(next(reader, []), name, features)
            first = 2
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


# --- JSON messages -------------------------------------------------------------------------


class BadMessage(ValueError):
    """A message that cannot be scored; ``reason`` is a small fixed vocabulary for metrics,
    ``error_type`` names the exception behind it (``BadMessage`` when a check refused it)."""

    def __init__(self, reason: str, detail: str, error_type: str = "BadMessage"):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.error_type = reason, detail, error_type

    @classmethod
    def unexpected(cls, error: BaseException) -> BadMessage:
        """An exception nobody foresaw, as the dead letter of the message that raised it."""
        return cls("internal_error", f"{type(error).__name__}: {_shown(error)}", type(error).__name__)


def _shown(error: BaseException) -> str:
    """An exception's message, bounded (some repeat their whole input)."""
    try:
        return str(error)[:300]
    except Exception:  # noqa: BLE001 - a message that cannot even be rendered
        return "(unprintable)"


@dataclass(frozen=True)
class MessageFields:
    """Names of the JSON fields of a message (configurable under ``[stream]``)."""

    entity: str = "entity"
    timestamp: str = "timestamp"
    values: str = "values"
    max_bytes: int = 65536
    max_entity_chars: int = 256  # longer entity names (after trimming) are refused, never cut


@dataclass(slots=True)  # not frozen: a frozen dataclass costs ~1 us more per instance on the hot path
class Observation:
    """One validated observation of one entity."""

    entity: str
    timestamp: float  # epoch seconds
    values: list[float]
    source: Any = field(default=None, compare=False)  # where it came from (a Kafka record, a row)


@dataclass(slots=True)
class Columns:
    """Observations as columns: what :meth:`detector.scoring.Detector.process_columns` steps.

    >>> batch = Columns.of([Observation("p1", 10.0, [1.0, 2.0]), Observation("p2", 11.0, [3.0, 4.0])])
    >>> len(batch), batch.entities, batch.values.shape, batch.observation(1)
    (2, ['p1', 'p2'], (2, 2), Observation(entity='p2', timestamp=11.0, values=[3.0, 4.0], source=None))
    """

    entities: list[str]
    timestamps: np.ndarray  # (n,) float64 epoch seconds
    values: np.ndarray  # (n, features) float64
    sources: Sequence[Any] | None = None  # where each came from (a Kafka record, a row), or None

    def __len__(self) -> int:
        return len(self.entities)

    @classmethod
    def of(cls, observations: Sequence[Observation], n_features: int | None = None) -> Columns:
        """Columns of ``observations`` (``n_features`` shapes an empty batch)."""
        width = n_features if n_features is not None else (len(observations[0].values) if observations else 0)
        values = np.asarray([o.values for o in observations], dtype=np.float64).reshape(len(observations), width)
        return cls(
            [o.entity for o in observations],
            np.asarray([o.timestamp for o in observations], dtype=np.float64),
            values,
            [o.source for o in observations],
        )

    def observation(self, i: int) -> Observation:
        """Position ``i`` as an :class:`Observation`."""
        return Observation(
            self.entities[i],
            float(self.timestamps[i]),
            self.values[i].tolist(),
            self.sources[i] if self.sources is not None else None,
        )


def parse_message(raw: bytes | None, key: bytes | None, features: Sequence[str], fields: MessageFields) -> Observation:
    """Validate a raw message; raises :class:`BadMessage` with a reason for the dead-letter topic."""
    if raw is None:
        raise BadMessage("schema", "empty message (tombstone)")
    if len(raw) > fields.max_bytes:
        raise BadMessage("too_large", f"{len(raw)} bytes > {fields.max_bytes}")
    document = _decode_json(raw)
    if not isinstance(document, dict):
        raise BadMessage("schema", f"expected a JSON object, got {type(document).__name__}")
    entity = _message_entity(document.get(fields.entity), key, fields)
    try:
        timestamp = parse_timestamp(document.get(fields.timestamp))
    except (ValueError, TypeError, OverflowError) as error:
        raise BadMessage("timestamp", f"field {fields.timestamp!r}: {error}") from None
    values = _message_values(document.get(fields.values), features, fields.values)
    return Observation(entity, timestamp, values)


class MessageDecoder:
    """Validates messages for one feature list: ``decode(raw, key) -> Observation``.

    Equivalent to :func:`parse_message` (same observations, same :class:`BadMessage` reasons),
    about five times faster on well-formed messages: a compiled msgspec decoder takes the
    messages it can vouch for, every other one is handed to :func:`parse_message`.

    >>> decode = MessageDecoder(["a"], MessageFields())
    >>> decode(b'{"entity": "p1", "timestamp": 1795568400, "values": {"a": 2}}', None).values
    [2.0]
    >>> decode(b'{"entity": "p1", "timestamp": 1795568400, "values": {"a": "x"}}', None)
    Traceback (most recent call last):
    ...
    detector.schema.BadMessage: non_numeric: feature 'a' is str, not a number
    """

    def __init__(self, features: Sequence[str], fields: MessageFields):
        self.features, self.fields = list(features), fields
        shape = msgspec.defstruct(
            "Message",
            [
                ("entity", str | int | None, None),
                ("timestamp", float | str | None, None),
                ("values", dict[str, float] | None, None),
            ],
            rename={"entity": fields.entity, "timestamp": fields.timestamp, "values": fields.values},
        )
        self._decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(shape)
        self._pick = operator.itemgetter(*self.features)  # KeyError when a feature is missing
        self._strict: Callable[[bytes], Any] = msgspec.json.Decoder(_strict_shape(self.features, fields)).decode

    def __call__(self, raw: bytes | None, key: bytes | None) -> Observation:
        """The observation; raises :class:`BadMessage`, and nothing else, for any input."""
        try:
            observation = self._fast(raw, key)
        except Exception:  # noqa: BLE001 - anything the fast path cannot vouch for goes the careful way
            observation = None
        if observation is not None:
            return observation
        try:
            return parse_message(raw, key, self.features, self.fields)
        except BadMessage:
            raise
        except Exception as error:  # noqa: BLE001 - a gap in the checks: still this message's dead letter
            raise BadMessage.unexpected(error) from None

    def decode_many(
        self, raws: Sequence[bytes | None], keys: Sequence[bytes | None]
    ) -> tuple[np.ndarray, Columns, list[tuple[int, BadMessage]]]:
        """Validate a batch: (positions accepted, their columns, (position, reason) of the rest).

        The same verdicts as calling the decoder on each message. A batch of plain messages
        (string entity, numeric timestamp, every feature a number) takes a columnar path:
        one compiled decode per message and no Python object per message beyond it.

        >>> decode = MessageDecoder(["a"], MessageFields())
        >>> raws = [b'{"entity": "p1", "timestamp": 5, "values": {"a": 2}}', b"{"]
        >>> ok, batch, bad = decode.decode_many(raws, [None, None])
        >>> ok.tolist(), batch.values.tolist(), [(i, e.reason) for i, e in bad]
        ([0], [[2.0]], [(1, 'not_json')])
        """
        try:
            columns = self._columnar(raws)
        except Exception:  # noqa: BLE001 - e.g. RecursionError on deep nesting: the per-message path names it
            columns = None
        if columns is not None:
            return np.arange(len(raws)), columns, []
        accepted, observations, dead = [], [], []
        for i, (raw, key) in enumerate(zip(raws, keys, strict=True)):
            try:
                observations.append(self(raw, key))
                accepted.append(i)
            except BadMessage as error:
                dead.append((i, error))
        return np.asarray(accepted, dtype=np.int64), Columns.of(observations, len(self.features)), dead

    def _columnar(self, raws: Sequence[bytes | None]) -> Columns | None:
        """Columns when every message is plain (see :meth:`decode_many`), else None."""
        present = [raw for raw in raws if raw is not None]
        if len(present) != len(raws):  # a tombstone
            return None
        try:
            messages = list(map(self._strict, present))  # raises at the first message that is not plain
        except msgspec.MsgspecError:
            return None
        if not messages or max(map(len, present)) > self.fields.max_bytes:
            return None
        timestamps = np.fromiter((m.timestamp for m in messages), dtype=np.float64, count=len(messages))
        if not (np.isfinite(timestamps).all() and (timestamps >= 0).all()):
            return None
        timestamps = np.where(timestamps > _MS_THRESHOLD, timestamps / 1000.0, timestamps)
        if (timestamps > MAX_EPOCH_S).any():
            return None
        entities = [m.entity for m in messages]
        if any(e != e.strip() for e in entities):  # the careful path trims (a msgspec pattern cost ~1 us/msg)
            return None
        values = np.array([astuple(m.values) for m in messages], dtype=np.float64).reshape(
            len(messages), len(self.features)
        )
        return Columns(entities, timestamps, values)

    def _fast(self, raw: bytes | None, key: bytes | None) -> Observation | None:
        """The observation, or None (or an exception) when the message needs the careful path."""
        if raw is None or len(raw) > self.fields.max_bytes:
            return None
        message = self._decoder.decode(raw)
        entity = message.entity if message.entity is not None else (key.decode("utf-8") if key else None)
        if entity is None or message.values is None:
            return None
        entity = str(entity).strip()
        if not entity or len(entity) > self.fields.max_entity_chars:
            return None
        # msgspec floats are finite: NaN/Infinity are not JSON and out-of-range numbers fail to decode
        values = self._pick(message.values)
        return Observation(
            entity, parse_timestamp(message.timestamp), list(values) if len(self.features) > 1 else [values]
        )


def _strict_shape(features: Sequence[str], fields: MessageFields) -> type:
    """The msgspec shape of a plain message: a non-empty entity string (at most ``max_entity_chars``;
    msgspec refuses lone surrogates), a numeric timestamp and every feature a (finite: JSON has no
    NaN) number; other fields are ignored."""
    slots = [f"f{i}" for i in range(len(features))]
    values = msgspec.defstruct(
        "Values", [(slot, float) for slot in slots], rename=dict(zip(slots, features, strict=True))
    )
    entity = Annotated[
        str, msgspec.Meta(min_length=1, max_length=fields.max_entity_chars)
    ]  # untrimmed ones: see MessageDecoder._columnar
    return msgspec.defstruct(
        "PlainMessage",
        [("entity", entity), ("timestamp", float), ("values", values)],
        rename={"entity": fields.entity, "timestamp": fields.timestamp, "values": fields.values},
    )


def _decode_json(raw: bytes) -> Any:
    """The JSON document; any failure (bad UTF-8, syntax, nesting too deep, an integer beyond
    Python's digit limit) is the message's ``not_json``."""
    try:
        # str, not bytes: skips json's encoding detection (which lets lone surrogates through)
        return json.loads(raw.decode("utf-8"))
    except Exception as error:  # noqa: BLE001 - every way of not being JSON is the message's not_json
        raise BadMessage("not_json", _shown(error)[:200], type(error).__name__) from None


def _message_entity(value: Any, key: bytes | None, fields: MessageFields) -> str:
    if value is None and key:
        try:
            value = key.decode("utf-8")
        except UnicodeDecodeError:
            raise BadMessage("schema", "message key is not UTF-8", "UnicodeDecodeError") from None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # JSON integers have at most Python's digit limit (json refuses longer ones)
    entity = value.strip() if isinstance(value, str) else ""
    if not entity:
        raise BadMessage("schema", f"field {fields.entity!r} missing or not a non-empty string (and no message key)")
    if len(entity) > fields.max_entity_chars:
        raise BadMessage(
            "schema",
            f"entity of {len(entity)} characters, more than stream.max_entity_chars ({fields.max_entity_chars})",
        )
    try:
        entity.encode("utf-8")  # a lone surrogate ("\ud800") cannot become a Kafka key
    except UnicodeEncodeError:
        raise BadMessage("schema", "entity is not valid Unicode (a lone surrogate)", "UnicodeEncodeError") from None
    return entity


def _message_values(document: Any, features: Sequence[str], name: str) -> list[float]:
    if not isinstance(document, dict):
        raise BadMessage("schema", f"field {name!r} must be a JSON object of feature values")
    missing = [f for f in features if f not in document]
    if missing:
        raise BadMessage("missing_feature", f"missing {', '.join(missing[:5])}")
    values = []
    for feature in features:
        value = document[feature]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BadMessage("non_numeric", f"feature {feature!r} is {type(value).__name__}, not a number")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise BadMessage("non_finite", f"feature {feature!r} is not finite")
        values.append(number)
    return values


def observations_from_table(table: Table) -> Iterable[Observation]:
    """The rows of a table as observations, in file order (``source`` is the row index)."""
    for row in range(len(table.timestamps)):
        yield Observation(table.entity_of(row), table.timestamps[row], table.values[row].tolist(), row)
