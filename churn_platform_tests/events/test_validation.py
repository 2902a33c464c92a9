"""The validator: one reason code per way to break the contract, both paths agreeing."""

from __future__ import annotations

import json
from datetime import datetime

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from churn_platform.events.contract import TS_MIN_MS, Event, Reason, Rejection
from churn_platform.events.validation import BatchReject, validate, validate_batch, validate_rows

NOW = 1_790_000_000_000  # 2026-09-21T...Z, a fixed clock for the future-ts rule


def event(**overrides) -> dict:
    body = {
        "event_id": "e-1",
        "customer_id": "c-1",
        "event_type": "login",
        "ts": "2026-09-01T10:00:00.250Z",
        "value": 3.5,
        "attributes": {"plan": "pro", "mrr": 49},
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not ...}


def raw(**overrides) -> bytes:
    return json.dumps(event(**overrides)).encode()


BAD = {
    Reason.EMPTY: b"",
    Reason.TOO_LARGE: raw(
        attributes={"blob": "x" * 1000, **{f"k{i}": "y" * 900 for i in range(80)}}
    ),
    Reason.INVALID_UTF8: b'{"event_id":"e","customer_id":"\xff","event_type":"login","ts":"2026-09-01T10:00:00Z"}',
    Reason.INVALID_JSON: b'{"event_id": "e-1", ',
    Reason.NOT_AN_OBJECT: b"[1, 2, 3]",
    Reason.MISSING_FIELD: raw(customer_id=...),
    Reason.BAD_TYPE: raw(customer_id=12345),
    Reason.BAD_EVENT_ID: raw(event_id="x" * 129),
    Reason.BAD_CUSTOMER_ID: raw(customer_id="abc\u0007def"),
    Reason.BAD_EVENT_TYPE: raw(event_type="Login-Event"),
    Reason.BAD_TS: raw(ts="2026-09-01 10:00:00"),
    Reason.TS_OUT_OF_RANGE: raw(ts="1979-12-31T23:59:59Z"),
    Reason.BAD_VALUE: b'{"event_id":"e","customer_id":"c","event_type":"login","ts":"2026-09-01T10:00:00Z","value":1e999}',
    Reason.BAD_ATTRIBUTES: raw(attributes={"nested": {"no": 1}}),
}


def test_every_reason_code_has_a_case():
    assert set(BAD) == set(Reason.ALL)


@pytest.mark.parametrize("reason", sorted(BAD))
def test_each_way_to_break_the_contract_gets_its_reason(reason):
    result = validate(BAD[reason], now=NOW)
    assert isinstance(result, Rejection), result
    assert result.reason == reason, result.detail
    assert result.detail


def test_a_valid_event_is_typed():
    result = validate(raw(), now=NOW)
    assert result == Event(
        event_id="e-1",
        customer_id="c-1",
        event_type="login",
        ts_ms=1_788_256_800_250,
        value=3.5,
        attributes={"plan": "pro", "mrr": 49},
    )


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        ("2026-09-01T10:00:00Z", 1_788_256_800_000),
        ("2026-09-01T12:00:00+02:00", 1_788_256_800_000),
        ("2026-09-01T10:00:00.123456Z", 1_788_256_800_123),
        (1_788_256_800_000, 1_788_256_800_000),
    ],
)
def test_timestamps_in_rfc3339_or_epoch_ms(ts, expected):
    assert validate(raw(ts=ts), now=NOW).ts_ms == expected
    batch = validate_batch([raw(ts=ts)], now=NOW)
    assert batch.events.column("ts").cast("int64").to_pylist() == [expected]


def test_future_limit_is_one_day_after_now():
    day = 24 * 3600 * 1000
    assert isinstance(validate(raw(ts=NOW + day), now=NOW), Event)
    assert validate(raw(ts=NOW + day + 1), now=NOW).reason == Reason.TS_OUT_OF_RANGE
    assert validate(raw(ts=TS_MIN_MS - 1), now=NOW).reason == Reason.TS_OUT_OF_RANGE


def test_optional_fields_may_be_absent_or_null():
    assert isinstance(validate(raw(value=..., attributes=...), now=NOW), Event)
    assert isinstance(validate(raw(value=None, attributes=None), now=NOW), Event)


def test_batch_keeps_valid_rows_beside_every_kind_of_bad_one():
    good = [raw(event_id=f"g{i}", ts=1_788_256_800_000 + i) for i in range(5)]
    mixed = []
    for i, bad in enumerate(BAD.values()):
        mixed += [good[i % 5], bad]
    batch = validate_batch(mixed, now=NOW)
    assert batch.indices.to_pylist() == list(range(0, len(mixed), 2))
    assert [r.reason for r in batch.rejects] == list(BAD)
    assert [r.position for r in batch.rejects] == list(range(1, len(mixed), 2))
    assert batch.events.column("event_id").to_pylist() == [
        json.loads(mixed[i])["event_id"] for i in range(0, len(mixed), 2)
    ]
    attributes = batch.events.column("attributes").to_pylist()
    assert json.loads(attributes[0]) == {"plan": "pro", "mrr": 49}


def _table_rows(batch) -> list[tuple]:
    """A validated batch's events as `validate_rows` gives them (ts in epoch ms)."""
    return [
        (
            r["event_id"],
            r["customer_id"],
            r["event_type"],
            int(r["ts"].timestamp() * 1000),
            r["value"],
            r["attributes"],
        )
        for r in batch.events.to_pylist()
    ]


def test_rows_path_gives_the_batch_table_rows_and_rejects():
    """The scorer's path for a handful of messages: the same rows, positions and rejects."""
    good = [raw(event_id=f"g{i}", ts=1_788_256_800_000 + i) for i in range(5)]
    good.append(raw(event_id="v", value=12.5, attributes=None))
    mixed = [None]
    for i, bad in enumerate(BAD.values()):
        mixed += [good[i % len(good)], bad]
    batch = validate_batch(mixed, now=NOW)
    rows, positions, rejects = validate_rows(mixed, now=NOW)
    assert rows == _table_rows(batch)
    assert positions == batch.indices.to_pylist()
    assert rejects == batch.rejects


def test_none_value_is_empty_not_a_crash():
    batch = validate_batch([None, raw()], now=NOW)
    assert (batch.rejects[0].position, batch.rejects[0].reason) == (0, Reason.EMPTY)
    assert batch.events.num_rows == 1


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None)
@given(
    field=st.sampled_from(["event_id", "customer_id", "event_type", "ts", "value", "attributes"]),
    replacement=json_values,
)
def test_single_and_batch_paths_agree(field, replacement):
    """Whatever goes in one field, both paths accept or reject it the same way."""
    message = raw(**{field: replacement})
    single = validate(message, now=NOW)
    batch = validate_batch([raw(), message], now=NOW)
    rows, positions, rejects = validate_rows([raw(), message], now=NOW)
    assert (positions, rejects) == (batch.indices.to_pylist(), batch.rejects)
    assert [r[:3] + r[4:] for r in rows] == [r[:3] + r[4:] for r in _table_rows(batch)]
    if isinstance(single, Rejection):
        assert batch.indices.to_pylist() == [0]
        assert batch.rejects == [BatchReject(1, single.reason, single.detail)]
    else:
        assert batch.indices.to_pylist() == [0, 1]
        row = batch.events.slice(1).to_pylist()[0]
        assert row["ts"].timestamp() * 1000 == pytest.approx(single.ts_ms)
        assert row["customer_id"] == single.customer_id


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash(data):
    result = validate(data, now=NOW)
    assert isinstance(result, Event | Rejection)
    batch = validate_batch([data, raw()], now=NOW)
    assert batch.events.num_rows + len(batch.rejects) == 2


def _rfc3339_texts():
    """RFC 3339 texts in the forms the batch parses per column, and near misses of them."""

    def render(instant, digits, separator, zone):
        text = instant.strftime(f"%Y-%m-%d{separator}%H:%M:%S")
        if digits:
            text += "." + f"{instant.microsecond:06d}"[:digits]
        return text + zone

    offsets = st.sampled_from(["Z", "+00:00", "-00:00", "+05:30", "-08:00", "+0200", "+23:59"])
    rendered = st.builds(
        render,
        st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2100, 1, 1)),
        st.integers(0, 6),
        st.sampled_from(["T", " "]),
        offsets,
    )
    # any digits in the shape: impossible months, days, hours, offsets...
    shaped = st.from_regex(
        r"\d{4}-[01]\d-[0-3]\d[T ][0-2]\d:[0-6]\d:[0-6]\d(\.\d{1,7})?(Z|[+-][0-2]\d:?[0-6]\d)",
        fullmatch=True,
    )
    near = st.sampled_from(
        [
            "2026-09-01t10:00:00z",
            "2026-09-01T10:00Z",
            "2026-09-01T10:00:00+02",
            "2026-02-30T00:00:00Z",
            "2026-09-01T10:00:00.1234567Z",
            "2026-09-01T24:00:00Z",
            "2026-09-01T10:00:60Z",
            "2026-09-01T10:00:00",
            "0000-01-01T00:00:00Z",
            "0000-12-31 09:07:24.1-19:55",  # year 0 locally, year 1 in UTC
            "2026-09-01T10:00:00+24:00",
        ]
    )
    return st.one_of(rendered, shaped, near)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(_rfc3339_texts(), st.integers(TS_MIN_MS, NOW)), min_size=1, max_size=20))
def test_texts_the_batch_parses_per_column_are_parsed_as_msgspec_parses_them(values):
    """Arrow settles a text only where msgspec accepts it with the same instant; the rest is
    left to msgspec (and so to `validate`), message by message."""
    from churn_platform.events.validation import _DECODER, _batch_timestamps, _ts_ms

    settled, undecided = _batch_timestamps(values)
    for row, (value, ms) in enumerate(zip(values, settled.to_pylist(), strict=True)):
        if ms is None:
            assert row in undecided and isinstance(value, str)
            continue
        wire = _DECODER.decode(raw(ts=value))  # raises if msgspec rejected what Arrow parsed
        assert ms == _ts_ms(wire.ts), value
    assert undecided == [row for row, ms in enumerate(settled.to_pylist()) if ms is None]


@st.composite
def _one_layout_columns(draw):
    """Columns of texts in one RFC 3339 layout with any digits, now and then one byte changed."""
    fraction = draw(st.integers(0, 7))
    zone = draw(st.sampled_from(["Z", "+hh:mm", "-hh:mm", "+hhmm"]))
    separator = draw(st.sampled_from(["T", " "]))
    layout = "dddd-dd-dd" + separator + "dd:dd:dd"
    layout += ("." + "d" * fraction) if fraction else ""
    layout += zone.replace("h", "d").replace("m", "d")
    digits = st.text("0123456789", min_size=layout.count("d"), max_size=layout.count("d"))

    def fill(ds: str) -> str:
        it = iter(ds)
        return "".join(next(it) if c == "d" else c for c in layout)

    texts = draw(st.lists(digits.map(fill), min_size=1, max_size=12))
    if draw(st.booleans()):
        row = draw(st.integers(0, len(texts) - 1))
        at = draw(st.integers(0, len(layout) - 1))
        texts[row] = (
            texts[row][:at] + draw(st.sampled_from("0:T tZz.-+,\x00é")) + texts[row][at + 1 :]
        )
    return texts


@settings(max_examples=300, deadline=None)
@given(_one_layout_columns())
def test_a_column_in_one_layout_is_settled_as_the_pattern_settles_it(values):
    """Checking a column's bytes stands in for the pattern only where the pattern agrees."""
    from churn_platform.events import validation

    settled, undecided = validation._batch_timestamps(values)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(validation, "_one_common_layout", lambda text: False)
        by_pattern, undecided_by_pattern = validation._batch_timestamps(values)
    assert settled.to_pylist() == by_pattern.to_pylist(), values
    assert undecided == undecided_by_pattern


def test_only_a_column_in_one_common_layout_skips_the_pattern():
    from churn_platform.events.validation import _one_common_layout

    def one(*texts):
        return _one_common_layout(pa.array(list(texts), pa.string()))

    good = ["2026-09-01T10:00:00.250Z", "1999-12-31T23:59:59.999Z", "2026-09-01 10:00:00.000Z"]
    assert one(*good)
    assert one("2026-09-01T10:00:00+02:00", "2026-09-01T10:00:00-05:30")
    assert one("2026-09-01T10:00:00.123456Z") and one("2026-09-01T10:00:00Z")
    assert one(*(good * 3000))  # more than one block of rows
    assert not one(*(good * 3000), "2026-09-01T10:00:0x.250Z")  # in the last block
    for odd in [
        "2026-09-01T10:00:00.25Z",  # another length
        "2026-09-01t10:00:00.250Z",  # lower-case t
        "2026-09-01:10:00:00.250Z",  # within the bytes a T or a space spans
        "2026-09-01T10:00:00.250z",
        "2026-09-01T10-00:00.250Z",
        "2026-09-0aT10:00:00.250Z",
        "0000-09-01T10:00:00.250Z",  # year 0
    ]:
        assert not one(*good, odd), odd
    assert one("0001-09-01T10:00:00+02:00", "1000-09-01T10:00:00-02:00")
    assert not one("2026-09-01T10:00:00+02:00", "2026-09-01T10:00:00,02:00")
    assert not one("2026-09-01T10:00:00+0200")  # an offset without its colon
    assert not one("2026-09-01T10:00:00.1234567Z")  # seven digits: msgspec rounds them
    assert not one("2026-09-01T10:00:00.Z")
    assert not one("2026-09-01T10:00:00.250Z", None)


def test_a_batch_settles_each_form_of_ts_as_validate_does():
    texts = [
        "2026-09-01T10:00:00.25Z",
        "2026-09-01 12:00:00+02:00",
        "2026-09-01T10:00:00+0000",
        "2026-09-01t10:00:00z",
        "2026-09-01T10:00:00.1234567Z",
        "2026-02-30T00:00:00Z",
        "1969-12-31T23:59:59.9995Z",
        "2026-09-01T10:00Z",
    ]
    messages = [raw(event_id=f"e{i}", ts=t) for i, t in enumerate(texts)] + [
        raw(ts=1_788_256_800_000)
    ]
    batch = validate_batch(messages, now=NOW)
    singles = [validate(m, now=NOW) for m in messages]
    assert batch.rejects == [
        BatchReject(i, s.reason, s.detail)
        for i, s in enumerate(singles)
        if isinstance(s, Rejection)
    ]
    assert len(batch.rejects) == 3  # 30 February, before 1980, no seconds
    kept = [s.ts_ms for s in singles if isinstance(s, Event)]
    assert batch.events.column("ts").cast("int64").to_pylist() == kept


def test_repeated_attributes_are_checked_per_message_with_the_single_path_reasons():
    """The batch checks each distinct attributes value once; every message still gets its own
    verdict, and a bad one its `validate` reason and detail, wherever it sits in the batch."""
    bad_attributes = raw(event_id="b", attributes={"nested": {"no": 1}})
    too_long_key = raw(event_id="k", attributes={"k" * 500: 1})
    messages = [
        raw(event_id="g1"),
        bad_attributes,
        raw(event_id="g2", attributes=None),
        b"not json",
        bad_attributes,
        raw(event_id="g3", attributes=...),
        too_long_key,
        # same attributes, other spacing and key order: each is decoded and encoded once
        b'{"event_id":"g4","customer_id":"c","event_type":"login","ts":1788256800000,'
        b'"attributes": {"mrr" : 49, "plan":"pro"}}',
    ]
    batch = validate_batch(messages, now=NOW)
    expected = [
        BatchReject(i, single.reason, single.detail)
        for i, m in enumerate(messages)
        if isinstance(single := validate(m, now=NOW), Rejection)
    ]
    assert [r.position for r in expected] == [1, 3, 4, 6]
    assert batch.rejects == expected
    assert batch.indices.to_pylist() == [0, 2, 5, 7]
    stored = batch.events.column("attributes").to_pylist()
    assert stored[1:3] == [None, None]
    assert [json.loads(stored[0]), json.loads(stored[3])] == [
        {"plan": "pro", "mrr": 49},
        {"mrr": 49, "plan": "pro"},
    ]
    assert stored[3] == '{"mrr":49,"plan":"pro"}'  # encoded back, as `validate` stores it


@pytest.mark.parametrize(
    "message",
    [
        raw(event_id="a\u0001b"),  # an escape: the only way to a control character in JSON
        raw(customer_id="c\u007f"),  # DEL may also appear raw
        b'{"event_id":"e\x7f","customer_id":"c","event_type":"login","ts":1788256800000}',
    ],
)
def test_control_characters_in_ids_are_found_in_a_batch(message):
    batch = validate_batch([raw(), message], now=NOW)
    single = validate(message, now=NOW)
    assert isinstance(single, Rejection)
    assert batch.rejects == [BatchReject(1, single.reason, single.detail)]


def test_the_control_character_scan_reads_only_its_rows_bytes():
    """The batch path scans the id columns' bytes once; a slice must not see its neighbours'."""
    from churn_platform.events.validation import _has_control_chars

    column = pa.array(["a\x01", "bb", "c\x7f", "dd", "é€"], pa.string())
    assert _has_control_chars(column)
    assert not _has_control_chars(column.slice(1, 1), column.slice(3, 2))
    assert _has_control_chars(column.slice(1, 2))
    assert not _has_control_chars(pa.array(["", ""], pa.string()), column.slice(4))
