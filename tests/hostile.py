"""Hypothesis strategies for hostile Kafka records: (key, value) byte pairs of every class that
must be scored or dead-lettered and never stop the stream (issue 20's list).

Every strategy draws entities prefixed ``h-`` (and keys likewise), so a hostile message that is
accepted never touches the state of the valid entities it is mixed with.
"""

from __future__ import annotations

import json
import time

from hypothesis import strategies as st

from detector.demo import FEATURES

NOW = 1_795_568_400  # 2026-11-25: the demo stream's epoch
FUTURE = int(time.time()) + 2 * 86400  # beyond the default stream.max_future_skew_s (a day)
Record = tuple[bytes | None, bytes | None]

_entities = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12).map(lambda s: "h-" + s)
_feature_values = st.floats(min_value=-5, max_value=5, allow_nan=False)


def _body(entity: str | None = None, timestamp: object = NOW, values: dict | None = None, **extra: object) -> dict:
    body: dict = {
        "timestamp": timestamp,
        "values": values if values is not None else dict.fromkeys(FEATURES, 0.5),
        **extra,
    }
    if entity is not None:
        body["entity"] = entity
    return body


def _encoded(body: dict) -> bytes:
    return json.dumps(body, allow_nan=True).encode()


@st.composite
def deep_nesting(draw: st.DrawFn) -> Record:
    """Arrays or objects nested thousands deep, at the top, as ``values`` or as one feature."""
    depth = draw(st.integers(min_value=1000, max_value=20000))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
    nested = opener * depth + b"1" + closer * depth
    entity = draw(_entities)
    where = draw(st.sampled_from(["top", "values", "feature"]))
    if where == "top":
        return entity.encode(), nested
    if where == "values":
        return entity.encode(), b'{"entity": "%s", "timestamp": %d, "values": %s}' % (entity.encode(), NOW, nested)
    others = b", ".join(b'"%s": 1' % f.encode() for f in FEATURES[1:])
    return entity.encode(), b'{"entity": "%s", "timestamp": %d, "values": {"%s": %s, %s}}' % (
        entity.encode(),
        NOW,
        FEATURES[0].encode(),
        nested,
        others,
    )


@st.composite
def huge_integers(draw: st.DrawFn) -> Record:
    """Integers beyond float range (over 309 digits) and beyond Python's int-to-string limit (4300)."""
    digits = draw(st.integers(min_value=310, max_value=6000))
    number = b"9" * digits
    entity = draw(_entities)
    where = draw(st.sampled_from(["feature", "timestamp", "entity"]))
    template = _encoded(_body(entity, timestamp=123456789, values={**dict.fromkeys(FEATURES, 1), FEATURES[0]: 424242}))
    if where == "feature":
        return entity.encode(), template.replace(b"424242", number)
    if where == "timestamp":
        return entity.encode(), template.replace(b"123456789", number)
    return None, template.replace(b'"%s"' % entity.encode(), b"-" + number)


@st.composite
def invalid_utf8(draw: st.DrawFn) -> Record:
    """A valid message with bytes that are not UTF-8 put anywhere in it (value or key)."""
    entity = draw(_entities)
    raw = _encoded(_body(entity))
    bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80", b"\xe2\x82"]))
    at = draw(st.integers(min_value=0, max_value=len(raw)))
    if draw(st.booleans()):
        return entity.encode(), raw[:at] + bad + raw[at:]
    return entity.encode() + bad, _encoded(_body(None))  # no entity field: taken from the (broken) key


@st.composite
def lone_surrogates(draw: st.DrawFn) -> Record:
    """A lone surrogate escape in the entity, in a feature name, or in the key (as UTF-8-like bytes)."""
    point = draw(st.integers(min_value=0xD800, max_value=0xDFFF))
    escape = f"\\u{point:04x}"
    entity = draw(_entities)
    where = draw(st.sampled_from(["entity", "feature", "key"]))
    if where == "entity":
        return entity.encode(), _encoded(_body("ENTITY")).replace(b"ENTITY", (entity + escape).encode())
    if where == "feature":
        raw = _encoded(_body(entity, values={**dict.fromkeys(FEATURES, 1), "EXTRA": 2}))
        return entity.encode(), raw.replace(b"EXTRA", escape.encode())
    return chr(point).encode("utf-8", "surrogatepass") + entity.encode(), _encoded(_body(None))


@st.composite
def bad_timestamps(draw: st.DrawFn) -> Record:
    """Negative, zero, NaN, beyond the year 9999, epoch units that overflow when formatted, far future."""
    timestamp = draw(
        st.one_of(
            st.integers(min_value=-(10**12), max_value=-1),
            st.just(0),
            st.sampled_from([float("nan"), float("inf"), float("-inf"), "NaN", "nan", "inf", "-1"]),
            st.integers(min_value=253402300800 * 1000 + 1, max_value=10**30),  # milliseconds beyond 9999
            st.floats(min_value=1e15, max_value=1e300),
            st.sampled_from(
                ["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00", "1969-12-31T23:59:59Z", "+10000-01-01"]
            ),
            st.integers(min_value=FUTURE, max_value=253402300799),  # far ahead of the wall clock
        )
    )
    return None, _encoded(_body(draw(_entities), timestamp=timestamp))


@st.composite
def empty_values(draw: st.DrawFn) -> Record:
    """Tombstones (a null value, with or without a key) and empty bytes."""
    key = draw(st.one_of(st.none(), _entities.map(str.encode)))
    value = draw(st.sampled_from([None, b""]))
    return (key if key is not None or value is not None else b"h-tombstone"), value


@st.composite
def huge_entities(draw: st.DrawFn) -> Record:
    """Entity names longer than the bound (256 characters), in the message or in the key."""
    name = "h-" + "x" * draw(st.integers(min_value=255, max_value=50000))
    if draw(st.booleans()):
        return None, _encoded(_body(name))
    return name.encode(), _encoded(_body(None))


@st.composite
def duplicate_keys(draw: st.DrawFn) -> Record:
    """The same field twice (entity, timestamp, values or a feature): the last one counts."""
    entity, other = draw(_entities), draw(_entities)
    features = ", ".join(f'"{f}": 1' for f in FEATURES)
    raw = draw(
        st.sampled_from(
            [
                f'{{"entity": "{entity}", "entity": "{other}", "timestamp": {NOW}, "values": {{{features}}}}}',
                f'{{"entity": "{entity}", "timestamp": "soon", "timestamp": {NOW}, "values": {{{features}}}}}',
                f'{{"entity": "{entity}", "timestamp": {NOW}, "values": 7, "values": {{{features}}}}}',
                f'{{"entity": "{entity}", "timestamp": {NOW}, "values": {{{features}, "{FEATURES[0]}": "hot"}}}}',
            ]
        )
    )
    return None, raw.encode()


@st.composite
def many_fields(draw: st.DrawFn) -> Record:
    """Thousands of extra fields at the top level or among the features."""
    count = draw(st.integers(min_value=1000, max_value=4000))
    extra = {f"x{i}": i for i in range(count)}
    if draw(st.booleans()):
        return None, _encoded(_body(draw(_entities), **extra))
    return None, _encoded(_body(draw(_entities), values={**dict.fromkeys(FEATURES, 1), **extra}))


HOSTILE = {
    "deep_nesting": deep_nesting(),
    "huge_integers": huge_integers(),
    "invalid_utf8": invalid_utf8(),
    "lone_surrogates": lone_surrogates(),
    "bad_timestamps": bad_timestamps(),
    "empty_values": empty_values(),
    "huge_entities": huge_entities(),
    "duplicate_keys": duplicate_keys(),
    "many_fields": many_fields(),
}
hostile_records = st.one_of(*HOSTILE.values())
