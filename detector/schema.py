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

The three concerns live in their own modules: :mod:`detector.csv_input` (files),
:mod:`detector.messages` (messages) and :mod:`detector.observation` (the shared types); this
module names the whole input contract in one place.
"""

from __future__ import annotations

from detector.csv_input import DataError, Table, observations_from_table, parse_csv, read_csv, read_csv_chunks
from detector.messages import BadMessage, MessageDecoder, MessageFields, parse_message
from detector.observation import Columns, Observation, parse_timestamp

__all__ = [
    "BadMessage",
    "Columns",
    "DataError",
    "MessageDecoder",
    "MessageFields",
    "Observation",
    "Table",
    "observations_from_table",
    "parse_csv",
    "parse_message",
    "parse_timestamp",
    "read_csv",
    "read_csv_chunks",
]
