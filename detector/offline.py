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
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, NamedTuple

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
        self.opened += sum(event == "open" for event in outcomes.events)


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
        back in time, or None; either way the entities' latest rows are updated."""
        found = None
        for offset, (entity, timestamp) in enumerate(zip(table.columns().entities, table.timestamps, strict=True)):
            previous = self.latest.get(entity)
            row, raw = first_row + offset, table.raw_timestamps[offset]
            if found is None and previous is not None and timestamp < previous[0]:
                message = (
                    f"entity {entity!r} goes back in time: {raw!r} is older than {previous[2]!r} on row {previous[1]}"
                )
                found = Disorder(message, row, entity)
            self.latest[entity] = (timestamp, row, raw)
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
            writer.writerows(_rows(table, outcomes))
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


def _rows(table: Table, outcomes: Outcomes) -> Iterable[list[str]]:
    """The output rows of a chunk: its raw timestamps (and entities), then its outcomes."""
    scores = [f"{value:.9g}" for value in outcomes.score.tolist()]
    probabilities = [f"{value:.9g}" for value in outcomes.probability.tolist()]
    flags = ["1" if flag else "0" for flag in outcomes.is_anomaly.tolist()]
    events = [event or "" for event in outcomes.events]
    if table.entities is None:
        return map(list, zip(table.raw_timestamps, scores, probabilities, flags, events, strict=True))
    return map(list, zip(table.raw_timestamps, table.entities, scores, probabilities, flags, events, strict=True))
