"""JSON messages for ``run``: validating one message, or a batch, into observations.

A message is a JSON object with an entity, a timestamp and an object of feature values (the
field names are configurable, see :class:`MessageFields`). Anything else raises
:class:`BadMessage` with a reason, which makes the message a dead letter.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
import numpy as np
from msgspec.structs import astuple

from detector.observation import MAX_EPOCH_S, MS_THRESHOLD, Columns, Observation, parse_timestamp

__all__ = ["BadMessage", "MessageDecoder", "MessageFields", "parse_message"]


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
    detector.messages.BadMessage: non_numeric: feature 'a' is str, not a number
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
        timestamps = np.where(timestamps > MS_THRESHOLD, timestamps / 1000.0, timestamps)
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
