import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.cli import main
from detector.schema import (
    BadMessage,
    DataError,
    MessageDecoder,
    MessageFields,
    parse_message,
    parse_timestamp,
    read_csv,
)

FEATURES = ["temperature", "pressure"]


@pytest.mark.parametrize(
    ("text", "row", "column", "words"),
    [
        ("", None, None, "empty file"),
        ("time,a\n1,2\n", 1, "timestamp", "missing column"),
        ("timestamp,a\n1,2\n2,abc\n", 3, "a", "non-numeric"),
        ("timestamp,a\n1,nan\n", 2, "a", "not finite"),
        ("timestamp,a\n1,inf\n", 2, "a", "not finite"),
        ("timestamp,a\n", None, None, "no data rows"),
        ("timestamp,a\nyesterday,1\n", 2, "timestamp", "bad timestamp"),
        ("timestamp,a\n1,2,3\n", 2, None, "expected 2 fields"),
        ("timestamp,entity\n1,x\n", 1, None, "no feature column"),
    ],
)
def test_bad_files_name_file_row_and_column(tmp_path, text, row, column, words):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataError) as caught:
        read_csv(path)
    error = caught.value
    assert (error.row, error.column) == (row, column)
    assert words in str(error) and "bad.csv" in str(error)


def test_cli_bad_file_is_one_line_and_exit_2(tmp_path, capsys):
    path = tmp_path / "bad.csv"
    path.write_text("timestamp,a\n1,2\n2,oops\n")
    code = main(["fit", "--data", str(path), "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.splitlines() == [err] and "bad.csv, row 3, column 'a'" in err


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="cannot read"):
        read_csv(tmp_path / "absent.csv")


def test_good_file_with_entities_and_iso_and_epoch_times(tmp_path):
    path = tmp_path / "ok.csv"
    path.write_text("timestamp,entity,a,b\n2026-11-25T01:00:00Z,p1,1,2\n1795568460,p2,3,4.5\n")
    table = read_csv(path)
    assert table.features == ["a", "b"]
    assert table.entities == ["p1", "p2"]
    assert table.timestamps == [1795568400.0, 1795568460.0]
    assert table.values.tolist() == [[1.0, 2.0], [3.0, 4.5]]


def test_timestamps_in_seconds_milliseconds_and_iso_agree():
    assert parse_timestamp(1795568400) == parse_timestamp(1795568400000) == parse_timestamp("2026-11-25T01:00:00+00:00")
    assert parse_timestamp("2026-11-25 01:00:00") == 1795568400.0  # naive means UTC


def _message(**overrides):
    document = {
        "entity": "pump-7",
        "timestamp": "2026-11-25T01:00:00Z",
        "values": {"temperature": 71.2, "pressure": 1.1},
    }
    document.update(overrides)
    return json.dumps(document).encode()


DEFAULT_FIELDS = MessageFields()


def _slow(fields=DEFAULT_FIELDS):
    return lambda raw, key: parse_message(raw, key, FEATURES, fields)


def _fast(fields=DEFAULT_FIELDS):
    return MessageDecoder(FEATURES, fields)


PARSERS = pytest.mark.parametrize("make_parser", [_slow, _fast], ids=["parse_message", "MessageDecoder"])


@PARSERS
def test_valid_message_and_key_fallback(make_parser):
    parse = make_parser()
    obs = parse(_message(), None)
    assert (obs.entity, obs.timestamp, obs.values) == ("pump-7", 1795568400.0, [71.2, 1.1])
    keyed = json.dumps({"timestamp": 1795568400000, "values": {"temperature": 1, "pressure": 2}}).encode()
    assert parse(keyed, b"card-9").entity == "card-9"
    assert parse(_message(entity=42), None).entity == "42"


@PARSERS
def test_configurable_field_names(make_parser):
    fields = MessageFields(entity="id", timestamp="ts", values="v")
    raw = json.dumps({"id": "s1", "ts": 5, "v": {"temperature": 1, "pressure": 2}}).encode()
    assert make_parser(fields)(raw, None).entity == "s1"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe not json", "not_json"),
        (b"{truncated", "not_json"),
        (b"[1, 2]", "schema"),
        (None, "schema"),
        (_message(entity=None), "schema"),
        (_message(values=[1, 2]), "schema"),
        (_message(values={"temperature": 1}), "missing_feature"),
        (_message(values={"temperature": "hot", "pressure": 1}), "non_numeric"),
        (_message(values={"temperature": True, "pressure": 1}), "non_numeric"),
        (_message(values={"temperature": None, "pressure": 1}), "non_numeric"),
        (b'{"entity": "a", "timestamp": 1, "values": {"temperature": NaN, "pressure": 1}}', "non_finite"),
        (b'{"entity": "a", "timestamp": 1, "values": {"temperature": 1e999, "pressure": 1}}', "non_finite"),
        (_message(values={"temperature": 10**400, "pressure": 1}), "non_finite"),
        (_message(timestamp="soon"), "timestamp"),
        (_message(timestamp=None), "timestamp"),
        (_message(timestamp=-5), "timestamp"),
        (b"{" + b'"x":' * 0 + b'"pad": "' + b"a" * 70000 + b'"}', "too_large"),
    ],
)
@PARSERS
def test_bad_messages_have_reasons(make_parser, raw, reason):
    with pytest.raises(BadMessage) as caught:
        make_parser()(raw, None)
    assert caught.value.reason == reason


_JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=8))
_FEATURE_VALUE = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False), st.integers(min_value=-(10**30), max_value=10**30), _JSON_LEAF
)


@settings(max_examples=400, deadline=None)
@given(
    entity=st.one_of(st.text(max_size=6), st.integers(), _JSON_LEAF),
    timestamp=st.one_of(
        st.floats(min_value=0, max_value=4e12), st.integers(min_value=-5, max_value=4 * 10**12), _JSON_LEAF
    ),
    values=st.one_of(st.dictionaries(st.sampled_from([*FEATURES, "extra"]), _FEATURE_VALUE, max_size=3), _JSON_LEAF),
    drop=st.sets(st.sampled_from(["entity", "timestamp", "values"])),
    key=st.one_of(st.none(), st.binary(max_size=4)),
)
def test_fast_decoder_agrees_with_parse_message(entity, timestamp, values, drop, key):
    """Whatever the message, MessageDecoder returns what parse_message returns or raises the same reason."""
    document = {
        name: value
        for name, value in (("entity", entity), ("timestamp", timestamp), ("values", values))
        if name not in drop
    }
    raw = json.dumps(document).encode()
    outcomes = []
    for parse in (_slow(), _fast()):
        try:
            obs = parse(raw, key)
            outcomes.append((obs.entity, obs.timestamp, obs.values))
        except BadMessage as error:
            outcomes.append(error.reason)
    assert outcomes[0] == outcomes[1]


def _verdicts_one_by_one(raws, keys):
    verdicts = []
    for raw, key in zip(raws, keys, strict=True):
        try:
            obs = parse_message(raw, key, FEATURES, MessageFields())
            verdicts.append((obs.entity, obs.timestamp, obs.values))
        except BadMessage as error:
            verdicts.append(error.reason)
    return verdicts


def _verdicts_of_batch(raws, keys):
    accepted, columns, dead = _fast().decode_many(raws, keys)
    verdicts = [None] * len(raws)
    for row, position in enumerate(accepted.tolist()):
        obs = columns.observation(row)
        verdicts[position] = (obs.entity, obs.timestamp, obs.values)
    for position, error in dead:
        verdicts[position] = error.reason
    return verdicts


_NUMBER = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False), st.integers(min_value=-(10**30), max_value=10**30)
)
_PLAIN = st.builds(
    lambda entity, timestamp, a, b: json.dumps(
        {"entity": entity, "timestamp": timestamp, "values": {"temperature": a, "pressure": b}}
    ).encode(),
    st.text(min_size=1, max_size=6),
    st.one_of(st.floats(min_value=-1, max_value=4e12), st.integers(min_value=-5, max_value=4 * 10**12)),
    _NUMBER,
    _NUMBER,
)
_ODD = st.one_of(
    st.none(),
    st.binary(max_size=12),
    st.builds(
        lambda v: json.dumps(v).encode(),
        st.dictionaries(st.sampled_from(["entity", "timestamp", "values"]), _JSON_LEAF),
    ),
)


@settings(max_examples=300, deadline=None)
@given(
    raws=st.lists(st.one_of(_PLAIN, _PLAIN, _PLAIN, _ODD), max_size=8), key=st.one_of(st.none(), st.binary(max_size=4))
)
def test_batch_decoding_agrees_with_parse_message(raws, key):
    """decode_many gives every message of a batch the verdict parse_message gives it alone."""
    keys = [key] * len(raws)
    assert _verdicts_of_batch(raws, keys) == _verdicts_one_by_one(raws, keys)


def test_plain_batches_take_the_columnar_path_and_odd_ones_do_not():
    plain = [_message(entity=f"p{i}", timestamp=1795568400000 + i) for i in range(5)]
    decoder = _fast()
    assert decoder._columnar(plain) is not None
    assert _verdicts_of_batch(plain, [None] * 5) == _verdicts_one_by_one(plain, [None] * 5)
    for odd in (
        _message(entity=" padded "),
        _message(entity=7),
        _message(timestamp="2026-11-25T01:00:00Z"),
        _message(values={"temperature": 1}),
        None,
    ):
        batch = [*plain, odd]
        assert decoder._columnar(batch) is None
        assert _verdicts_of_batch(batch, [None] * 6) == _verdicts_one_by_one(batch, [None] * 6)
