"""``detector score``: a CSV file of any length scored in chunks, written as it goes.

Each chunk (``chunk_rows`` rows) is read, checked for time order per entity, stepped through
:meth:`detector.scoring.Detector.process_columns` in one call and written out; the entities'
states carry over from one chunk to the next, so the scores are those of the whole file in one
call. Memory is bounded by one chunk plus the entities' states, whatever the file's length. The
scores go to a temporary file next to ``out`` that replaces it once every row is scored, so a file
that turns out to be bad half-way leaves no partial output behind.

>>> from detector.testing import tiny_model    # doctest: +SKIP
>>> score_file(tiny_model(("a",)), Path("today.csv"), Path("scores.csv"))  # doctest: +SKIP
ScoreSummary(rows=1440, anomalous=2, opened=1)
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, NamedTuple

import numpy as np
from tqdm import tqdm

from detector.logs import get_logger
from detector.model import FittedModel
from detector.schema import DataError, Table, read_csv_chunks
from detector.scoring import Detector, Outcomes

__all__ = ["CHUNK_ROWS", "Disorder", "OrderCheck", "ScoreSummary", "score_file"]

CHUNK_ROWS = 100_000
log = get_logger(__name__)


@dataclass
class ScoreSummary:
    """What a scored file held: rows, anomalous rows, alerts opened."""

    rows: int = 0
    anomalous: int = 0
    opened: int = 0

    def add(self, outcomes: Outcomes) -> None:
        self.rows += len(outcomes)
        self.anomalous += int(outcomes.is_anomaly.sum())
        self.opened += outcomes.events.count("open")


class Disorder(NamedTuple):
    """A row older than its entity's previous row: what is wrong, where and whose."""

    message: str
    row: int
    entity: str


@dataclass
class OrderCheck:
    """Each entity's latest (timestamp, row, raw timestamp) so far, carried across chunks, to find
    the first row older than its entity's previous one (equal timestamps are in order, as in the
    stream). Rows are numbered as an editor shows them (the header is row 1).

    >>> import numpy as np
    >>> check = OrderCheck()
    >>> check.first_disorder(Table([1.0, 5.0], ["1", "5"], ["a", "a"], ["f"], np.zeros((2, 1))), 2) is None
    True
    >>> check.first_disorder(Table([3.0], ["3"], ["a"], ["f"], np.zeros((1, 1))), 4)
    Disorder(message="entity 'a' goes back in time: '3' is older than '5' on row 3", row=4, entity='a')
    """

    latest: dict[str, tuple[float, int, str]] = field(default_factory=dict)

    def first_disorder(self, table: Table, first_row: int) -> Disorder | None:
        """The first row of ``table`` (whose first row is row ``first_row`` of the file) that goes
        back in time, or None; either way the entities' latest rows are updated. Each row is
        compared with its entity's previous row, found for the whole chunk at once."""
        entities, raw = table.columns().entities, table.raw_timestamps
        distinct = list(dict.fromkeys(entities))
        number = {entity: i for i, entity in enumerate(distinct)}
        groups = np.fromiter(map(number.__getitem__, entities), dtype=np.int64, count=len(entities))
        timestamps = np.asarray(table.timestamps, dtype=np.float64)
        order = np.argsort(groups, kind="stable")  # each entity's rows together, in file order
        follows = groups[order[1:]] == groups[order[:-1]]
        previous = np.full(len(entities), -1)  # the row before each row of the same entity in this chunk
        previous[order[1:][follows]] = order[:-1][follows]
        carried = np.array([self.latest.get(entity, (-math.inf,))[0] for entity in distinct])
        earlier = np.where(previous >= 0, timestamps[previous], carried[groups])
        back = np.flatnonzero(timestamps < earlier)
        found = None
        if len(back):
            row = int(back[0])
            entity, before = entities[row], int(previous[row])
            _, earlier_row, earlier_raw = (
                self.latest[entities[row]] if before < 0 else (0.0, first_row + before, raw[before])
            )
            message = (
                f"entity {entity!r} goes back in time: {raw[row]!r} is older than {earlier_raw!r} on row {earlier_row}"
            )
            found = Disorder(message, first_row + row, entity)
        last = order[np.append(~follows, True)]  # each entity's last row in the chunk, in entity number order
        for entity, row in zip(distinct, last.tolist(), strict=True):
            self.latest[entity] = (table.timestamps[row], first_row + row, raw[row])
        return found


def score_file(
    model: FittedModel,
    data: Path,
    out: Path,
    reject_out_of_order: bool = True,
    progress: bool = False,
    chunk_rows: int = CHUNK_ROWS,
) -> ScoreSummary:
    """Score every row of the CSV file ``data`` in file order and write the scores CSV ``out``.

    A row older than its entity's previous row is refused (:class:`DataError` naming both) with
    ``reject_out_of_order``, else taken in file order with one warning. ``progress``: a bar on
    stderr (meant for a terminal).
    """
    partial = out.with_name(f".{out.name}.partial")
    try:
        with partial.open("w", newline="") as handle:
            summary = _score_chunks(
                Detector(model),
                read_csv_chunks(data, model.features, chunk_rows),
                handle,
                data,
                reject_out_of_order,
                progress,
            )
        partial.replace(out)
    except OSError as error:
        raise DataError(str(out), f"cannot write the scores: {error.strerror}") from None
    finally:
        partial.unlink(missing_ok=True)
    return summary


def _score_chunks(
    detector: Detector, chunks: Iterable[Table], handle: IO[str], data: Path, reject_out_of_order: bool, progress: bool
) -> ScoreSummary:
    writer, order, summary, warned = csv.writer(handle), OrderCheck(), ScoreSummary(), False
    with tqdm(desc=f"score {data.name}", unit="rows", unit_scale=True, disable=not progress, leave=False) as bar:
        for table in chunks:
            if summary.rows == 0:
                writer.writerow(_header(table))
            disorder = order.first_disorder(table, summary.rows + 2)
            if disorder is not None and reject_out_of_order:
                raise DataError(
                    str(data),
                    disorder.message,
                    disorder.row,
                    help="sort the rows by time (each entity's rows in time order), "
                    "or set stream.reject_out_of_order = false to take them in file order",
                )
            if disorder is not None and not warned:
                log.warning(
                    "input.out_of_order",
                    file=str(data),
                    row=disorder.row,
                    entity=disorder.entity,
                    detail=disorder.message,
                )
                warned = True
            outcomes = detector.process_columns(table.columns())
            _write_rows(handle, table, outcomes)
            summary.add(outcomes)
            bar.update(len(outcomes))
            del table, outcomes  # freed before the next chunk is read: memory holds one chunk
    return summary


def _header(table: Table) -> list[str]:
    return (
        ["timestamp"]
        + (["entity"] if table.entities is not None else [])
        + ["score", "probability", "is_anomaly", "event"]
    )


def _write_rows(handle: IO[str], table: Table, outcomes: Outcomes) -> None:
    """Write the output rows of a chunk: its raw timestamps (and entities), then its outcomes;
    the bytes ``csv.writer`` writes, formatted a whole chunk at once when no text needs quotes."""
    scores, probabilities = outcomes.score.tolist(), outcomes.probability.tolist()
    flags = np.where(outcomes.is_anomaly, "1", "0").tolist()
    events = [event or "" for event in outcomes.events]
    texts = [table.raw_timestamps] + ([] if table.entities is None else [table.entities])
    if any(_needs_quotes(column) for column in texts):
        csv.writer(handle).writerows(
            zip(*texts, [f"{v:.9g}" for v in scores], [f"{v:.9g}" for v in probabilities], flags, events, strict=True)
        )
        return
    line = "%s," * len(texts) + "%.9g,%.9g,%s,%s\r\n"  # csv.writer's line ending
    handle.write("".join(map(line.__mod__, zip(*texts, scores, probabilities, flags, events, strict=True))))


def _needs_quotes(texts: list[str]) -> bool:
    """Whether ``csv.writer`` would quote any of ``texts`` (a delimiter, quote or line break in it).

    >>> _needs_quotes(["pump-1", "2026-01-01T00:00:00Z"]), _needs_quotes(["a,b"])
    (False, True)
    """
    joined = "".join(texts)
    return any(character in joined for character in ',"\r\n')
