"""Dead letters in Kafka Connect's convention: the original record, and the context in headers.

A dead letter's key and value are the input record's bytes, unchanged, so any Kafka user can
replay it to the input topic as it was; a tombstone (``None`` value) stays a tombstone. The
input record's own headers come first, then the context, named like Kafka Connect's
``__connect.errors.*`` headers under the prefix ``detector.errors.``:

>>> context = Context("sensors", 3, 1200, 1795568400000, "decode", "v1")
>>> error = BadMessage("not_json", "Expecting value", "JSONDecodeError")
>>> letter = dead_letter(b"p1", b"{bad", [("trace", b"7")], error, context)
>>> letter.key, letter.value, letter.header("detector.errors.reason"), letter.header("detector.errors.offset")
(b'p1', b'{bad', b'not_json', b'1200')
>>> letter.headers[0]
('trace', b'7')

A record too large for the dead-letter topic keeps its key and headers; its value is cut to fit
and ``detector.errors.value.truncated.from`` gives the original length in bytes:

>>> big = dead_letter(b"p1", b"x" * 5000, None, BadMessage("too_large", "5000 bytes > 4096"), context)
>>> cut = big.cut_to(2000)
>>> cut.size() <= 2000 < len(cut.value) + 1000, cut.header("detector.errors.value.truncated.from")
(True, b'5000')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from detector import __version__
from detector.schema import BadMessage

__all__ = ["HEADERS", "Context", "DeadLetter", "dead_letter"]

PREFIX = "detector.errors."
HEADERS = {
    "reason": PREFIX + "reason",  # the small fixed vocabulary of detector_dead_letters_total
    "stage": PREFIX + "stage",  # decode, validate, score or output: where the message failed
    "exception": PREFIX + "exception.class.name",  # BadMessage when a check refused it
    "message": PREFIX + "exception.message",  # the detail, one line
    "topic": PREFIX + "topic",
    "partition": PREFIX + "partition",
    "offset": PREFIX + "offset",
    "timestamp": PREFIX + "timestamp",  # the input record's Kafka timestamp, epoch milliseconds
    "version": PREFIX + "detector.version",
    "model": PREFIX + "model.version",
    "truncated": PREFIX + "value.truncated.from",  # present only on a cut value: its original length
    "null_value": PREFIX + "value.null",  # present only on a keyless tombstone (sent with an empty value)
}
_RECORD_OVERHEAD = 512  # bytes of batch and record framing counted on top of key, value and headers
_DETAIL_CHARS = 500


@dataclass(frozen=True)
class Context:
    """Where a dead letter's message came from and where it failed."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None  # the input record's Kafka timestamp
    stage: str
    model_version: str


@dataclass(frozen=True)
class DeadLetter:
    """A record for the dead-letter topic: key, value and headers as the producer sends them."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]

    def header(self, name: str) -> bytes | None:
        """The last value of header ``name`` (None when absent)."""
        found = [value for key, value in self.headers if key == name]
        return found[-1] if found else None

    def size(self) -> int:
        """Bytes the record takes in a request, framing included (an upper bound)."""
        headers = sum(len(k.encode("utf-8", "replace")) + len(v) for k, v in self.headers)
        return len(self.key or b"") + len(self.value or b"") + headers + _RECORD_OVERHEAD

    def cut_to(self, max_bytes: int) -> DeadLetter:
        """This record with its value cut so that :meth:`size` is at most ``max_bytes`` (as far as
        the key and headers leave room), marked with the value's original length."""
        if self.size() <= max_bytes or not self.value:
            return self
        original = self.header(HEADERS["truncated"]) or str(len(self.value)).encode()
        marked = replace(
            self,
            headers=[(k, v) for k, v in self.headers if k != HEADERS["truncated"]] + [(HEADERS["truncated"], original)],
        )
        keep = max(len(self.value) - (marked.size() - max_bytes), 0)
        return replace(marked, value=self.value[:keep])


def dead_letter(
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes | None]] | None,
    error: BadMessage,
    context: Context,
) -> DeadLetter:
    """The dead letter of one input record (see the module docstring)."""
    kept = [(str(k), v if v is not None else b"") for k, v in (headers or [])]
    text = {
        "reason": error.reason,
        "stage": context.stage,
        "exception": error.error_type,
        "message": " ".join(error.detail.split())[:_DETAIL_CHARS],
        "topic": context.topic,
        "partition": str(context.partition),
        "offset": str(context.offset),
        "version": __version__,
        "model": context.model_version,
    }
    if context.timestamp_ms is not None:
        text["timestamp"] = str(context.timestamp_ms)
    if value is None and key is None:  # Kafka clients refuse a record without key and value
        text["null_value"] = "true"
        value = b""
    kept += [(HEADERS[name], shown.encode("utf-8", "replace")) for name, shown in text.items()]
    return DeadLetter(key, value, kept)
