"""Hostile input, fuzzed: the validator and the real extract never crash, quarantine every bad
message with its reason and keep the valid ones exact.

Hypothesis builds messages of each hostile class (invalid UTF-8, deep or huge JSON, NaN and
Infinity, wrong types, timestamps out of range, control characters and very long strings,
empty values, null keys) together with what the contract says must become of each: the exact
`Event`, or the reason codes it may be quarantined with. The expectation comes from how the
message was built, not from the validator. The classes, alone and mixed with valid events,
go through `validate`, `validate_batch` and `extract_topic` against the embedded broker; how
many inputs were tried is printed, and written to benchmarks/results/fuzz.json by `make fuzz`.
The count varies a little between runs (11,458-12,244 seen) although every test is
derandomized.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pyarrow as pa
import pytest
from confluent_kafka import Producer
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

from churn_platform.events.contract import (
    ATTRIBUTE_KEY_MAX_LENGTH,
    ATTRIBUTE_VALUE_MAX_LENGTH,
    DEFAULT_MAX_MESSAGE_BYTES,
    ID_MAX_LENGTH,
    TS_MAX_FUTURE_MS,
    TS_MIN_MS,
    Event,
    Reason,
    Rejection,
)
from churn_platform.events.validation import BatchReject, now_ms, validate, validate_batch
from churn_platform.ingestion.extract import ExtractConfig, extract_topic
from churn_platform.lake.raw import extracted_offsets, read_quarantine, read_raw_events
from churn_platform.lake.store import Lake

MAX_BYTES = DEFAULT_MAX_MESSAGE_BYTES
NOW = 1_790_000_000_000  # 2026-09-21: the validator's clock in the validator-only tests
RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "fuzz.json"
EPOCH = datetime(1970, 1, 1)  # naive: local wall-clock times are rendered from it
EPOCH_UTC = datetime(1970, 1, 1, tzinfo=UTC)
CONTROL = "".join(map(chr, range(32))) + "\x7f"
# ASCII, so it survives json.dumps(ensure_ascii=True); replaced by raw bytes afterwards
MARK = "~~8f3b~~"

# every input handed to the validator or the extract, per path and per class
COUNTS: Counter[str] = Counter()
KINDS: Counter[str] = Counter()


def fuzz(max_examples: int, shrink: bool = True) -> settings:
    """Deterministic runs (a seed derived from the test), nothing stored between runs.

    Without `shrink` a failure is reported as found: shrinking a list of hundreds of
    messages takes minutes of CPU, and `check` already names the message and its class.
    """
    phases = [Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.explain]
    return settings(
        max_examples=max_examples,
        phases=[*phases, Phase.shrink] if shrink else phases,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
            HealthCheck.filter_too_much,
            HealthCheck.function_scoped_fixture,
        ],
    )


def _ms(moment: datetime) -> int:
    return (moment - EPOCH_UTC) // timedelta(milliseconds=1)


@dataclass(frozen=True)
class Clock:
    """Where valid timestamps end and "future" ones begin, for the validator's `now`."""

    valid_max: int  # the latest valid ts drawn
    future_min: int  # the earliest out-of-range future ts drawn


# validate(now=NOW): the rule's edge itself is drawn
FIXED = Clock(NOW + TS_MAX_FUTURE_MS, NOW + TS_MAX_FUTURE_MS + 1)
# the extract validates against the real clock: valid and future times keep far from it
REAL = Clock(_ms(datetime(2025, 1, 1, tzinfo=UTC)), _ms(datetime(2100, 1, 1, tzinfo=UTC)))
FIRST_MS = _ms(datetime(1, 1, 3, tzinfo=UTC))  # room for a -23:59 offset in year 1
LAST_MS = _ms(datetime(9999, 12, 29, tzinfo=UTC))


# cases -------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One message and what must become of it.

    A valid message must become exactly `event`; a bad one must be rejected with one of
    `reasons`. With both, either is right (the one documented tolerance: invalid UTF-8
    inside a field the contract does not define). `anything` is for fuzzed bytes: any
    event, or a rejection with any known reason.
    """

    kind: str
    raw: bytes | None
    event: Event | None = None
    reasons: frozenset[str] = frozenset()
    anything: bool = False


def case(kind: str, raw: bytes | None, event=None, reasons=(), anything=False) -> Case:
    """A Case whose expectation accounts for the checks made before parsing."""
    if not raw:
        return Case(kind, raw, None, frozenset({Reason.EMPTY}))
    if len(raw) > MAX_BYTES:
        return Case(kind, raw, None, frozenset({Reason.TOO_LARGE}))
    return Case(kind, raw, event, frozenset(reasons), anything)


def show(raw: bytes | None) -> str:
    return repr(raw if raw is None or len(raw) < 300 else raw[:300] + b"...")


def check(c: Case, outcome: object) -> None:
    assert isinstance(outcome, Event | Rejection), (c.kind, show(c.raw), outcome)
    if isinstance(outcome, Rejection):
        assert outcome.reason in Reason.ALL and outcome.detail, (c.kind, outcome)
        assert c.anything or outcome.reason in c.reasons, (c.kind, show(c.raw), outcome, c)
    else:
        assert c.anything or outcome == c.event, (c.kind, show(c.raw), outcome, c.event)


def render(body: dict, ascii_only: bool, tokens: dict[str, bytes] | None = None) -> bytes:
    """JSON bytes of `body`; each `tokens` key (a MARK-tagged string) becomes raw bytes."""
    raw = json.dumps(body, ensure_ascii=ascii_only).encode()
    for mark, token in (tokens or {}).items():
        quoted = json.dumps(mark).encode()
        raw = raw.replace(quoted, token) if quoted in raw else raw.replace(mark.encode(), token)
    return raw


# valid events --------------------------------------------------------------------

ALPHABET = st.characters(exclude_categories=("Cs",))  # any code point JSON can carry
ID_CHARS = st.characters(exclude_categories=("Cs",), exclude_characters=CONTROL)


def sized_text(min_len: int, max_len: int, alphabet=ALPHABET) -> st.SearchStrategy[str]:
    """Text of a length in [min_len, max_len], cheaply: a short random run, repeated."""
    return st.tuples(st.text(alphabet, min_size=1, max_size=6), st.integers(min_len, max_len)).map(
        lambda t: (t[0] * (t[1] // len(t[0]) + 1))[: t[1]]
    )


# Strings are mostly "a short random run, repeated": a few draws each instead of one
# per character, which is what keeps ten thousand messages within seconds.
IDS = st.one_of(sized_text(1, ID_MAX_LENGTH, ID_CHARS), st.text(ID_CHARS, min_size=1, max_size=6))
EVENT_TYPES = st.tuples(
    st.sampled_from("abcdefghijklmnopqrstuvwxyz"),
    sized_text(0, 63, st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789_")),
).map("".join)
ATTR_KEYS = sized_text(1, ATTRIBUTE_KEY_MAX_LENGTH)
ATTR_VALUES = st.one_of(
    sized_text(0, ATTRIBUTE_VALUE_MAX_LENGTH),
    st.integers(-(10**30), 10**30),
    st.floats(allow_nan=False, allow_infinity=False),
)
JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(ALPHABET, max_size=12),
)
JSON_ANY = st.recursive(
    JSON_LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
EXTRA_FIELDS = ("source", "schema_version", "_meta", "trace_id")  # not in the contract: ignored
ABSENT = object()  # a field left out, unlike a JSON null
# minutes east of UTC; None renders "Z"
TS_OFFSETS = st.sampled_from((None, 0, 330, -480, 845, -59, 1439, -1439, 60, -720))
TS_FORMS = st.sampled_from(["epoch_ms", "microseconds", "milliseconds", "seconds"])
VALUES = st.one_of(
    st.just(ABSENT),
    st.none(),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False),
)
ATTRIBUTES = st.one_of(
    st.just(ABSENT), st.none(), st.dictionaries(ATTR_KEYS, ATTR_VALUES, max_size=4)
)
EXTRAS = st.dictionaries(
    st.sampled_from(EXTRA_FIELDS), st.one_of(JSON_LEAVES, JSON_ANY), max_size=2
)


@functools.cache
def timestamps(lo_ms: int, hi_ms: int) -> st.SearchStrategy[tuple[object, int]]:
    """One strategy object per range: Hypothesis validates each new one it is given."""
    return _timestamps(lo_ms, hi_ms)


@st.composite
def _timestamps(draw, lo_ms: int, hi_ms: int) -> tuple[object, int]:
    """A `ts` JSON value for an instant in [lo_ms, hi_ms] and the epoch ms it stands for."""
    us = draw(st.integers(lo_ms * 1000, hi_ms * 1000 + 999))
    form = draw(TS_FORMS)
    if form == "epoch_ms":
        return us // 1000, us // 1000
    offset = draw(TS_OFFSETS)
    unit = {"microseconds": 1, "milliseconds": 1000, "seconds": 1_000_000}[form]
    local = EPOCH + timedelta(microseconds=us + (offset or 0) * 60_000_000)
    if offset is None:
        suffix = "Z"
    else:
        sign = "+" if offset >= 0 else "-"
        suffix = f"{sign}{abs(offset) // 60:02d}:{abs(offset) % 60:02d}"
    # the offset is whole minutes, so truncating local time truncates the instant alike
    return local.isoformat(timespec=form) + suffix, (us // unit * unit) // 1000


@functools.cache
def valid_events(clock: Clock) -> st.SearchStrategy[tuple[dict, Event]]:
    return _valid_events(clock)


@st.composite
def _valid_events(draw, clock: Clock) -> tuple[dict, Event]:
    """A message body that follows the contract, and the Event it must become."""
    ts, ts_ms = draw(timestamps(TS_MIN_MS, clock.valid_max))
    body = {
        "event_id": draw(IDS),
        "customer_id": draw(IDS),
        "event_type": draw(EVENT_TYPES),
        "ts": ts,
    }
    value = draw(VALUES)
    attributes = draw(ATTRIBUTES)
    if value is not ABSENT:
        body["value"] = value
    if attributes is not ABSENT:
        body["attributes"] = attributes
    body.update(draw(EXTRAS))
    body = dict(draw(st.permutations(list(body.items()))))
    event = Event(
        event_id=body["event_id"],
        customer_id=body["customer_id"],
        event_type=body["event_type"],
        ts_ms=ts_ms,
        value=None if value is ABSENT or value is None else float(value),
        attributes=None if attributes is ABSENT else attributes,
    )
    return body, event


@st.composite
def valid_cases(draw, clock: Clock) -> Case:
    body, event = draw(valid_events(clock))
    return case("valid", render(body, draw(st.booleans())), event)


# hostile classes -------------------------------------------------------------------

BAD_UTF8 = (
    b"\xff",
    b"\xfe",
    b"\x80",  # a continuation byte alone
    b"\xbf",
    b"\xc0\xaf",  # overlong "/"
    b"\xc1\xbf",
    b"\xe0\x80\xaf",  # overlong, 3 bytes
    b"\xed\xa0\x80",  # a UTF-16 surrogate, encoded
    b"\xed\xbf\xbf",
    b"\xf4\x90\x80\x80",  # beyond U+10FFFF
    b"\xf5\x80\x80\x80",
    b"\xf8\x88\x80\x80\x80",  # 5-byte form
    b"\xc3",  # truncated sequences
    b"\xe2\x82",
    b"\xf0\x9f\x98",
)


@st.composite
def invalid_utf8(draw, clock: Clock) -> Case:
    body, event = draw(valid_events(clock))
    bad = draw(st.sampled_from(BAD_UTF8))
    target = draw(
        st.sampled_from(
            [
                "event_id",
                "customer_id",
                "event_type",
                "attribute_key",
                "attribute_value",
                "ts",
                "extra_value",
                "extra_key",
            ]
        )
    )
    event_if_ignored = None
    if target in ("event_id", "customer_id", "event_type"):
        text = body[target]
        at = draw(st.integers(0, len(text)))
        body[target] = text[:at] + MARK + text[at:]
        reasons = {Reason.INVALID_UTF8}
    elif target == "attribute_key":
        body["attributes"] = {**(body.get("attributes") or {}), "k" + MARK: "v"}
        reasons = {Reason.INVALID_UTF8}
    elif target == "attribute_value":
        body["attributes"] = {**(body.get("attributes") or {}), "k": "v" + MARK + "w"}
        reasons = {Reason.INVALID_UTF8}
    elif target == "ts":
        body["ts"] = "2026-09-01T10:00:00" + MARK + "Z"
        reasons = {Reason.BAD_TS}
    else:
        # Known tolerance: msgspec skips fields the contract does not define without
        # decoding them, so bad bytes there may pass; the row then holds only the
        # contract's fields, which are valid UTF-8. Either outcome is accepted.
        if target == "extra_value":
            body["note"] = "x" + MARK
        else:
            body["n" + MARK] = 1
        reasons = {Reason.INVALID_UTF8}
        event_if_ignored = event
    raw = render(body, draw(st.booleans()), {MARK: bad})
    return case(f"invalid_utf8/{target}", raw, event_if_ignored, reasons)


@st.composite
def deep_nesting(draw, clock: Clock) -> Case:
    body, event = draw(valid_events(clock))
    # Shallow enough to decode, or far beyond the recursion limit. The boundary is not a
    # property of the message: msgspec counts against sys.getrecursionlimit() (1000, and
    # about 2000 inside a Hypothesis test) from the caller's stack depth.
    depth = draw(st.one_of(st.integers(1, 400), st.integers(5000, 40_000)))
    deep = depth >= 5000
    shape = draw(st.sampled_from(["array", "object"]))
    if shape == "array":
        nested = b"[" * depth + b"]" * depth
    else:
        nested = b'{"a":' * depth + b"1" + b"}" * depth
    place = draw(st.sampled_from(["top", "extra", "attributes", "value", "event_id", "unclosed"]))
    ascii_only = draw(st.booleans())
    kind = f"deep_nesting/{place}/{shape}"
    token = {MARK: nested}
    if place == "top":
        if shape == "array":
            return case(kind, nested, reasons={Reason.NOT_AN_OBJECT})
        return case(kind, nested, reasons={Reason.INVALID_JSON if deep else Reason.MISSING_FIELD})
    if place == "unclosed":
        raw = render(body, ascii_only)[:-1] + b',"nested":' + nested[:depth]
        return case(kind, raw, reasons={Reason.INVALID_JSON})
    if place == "extra":
        body["nested"] = MARK
        raw = render(body, ascii_only, token)
        return case(kind, raw, None if deep else event, {Reason.INVALID_JSON} if deep else ())
    body[place] = MARK
    raw = render(body, ascii_only, token)
    if place == "attributes" and shape == "object":
        if depth == 1:
            return case(kind, raw, Event(**{**_fields(event), "attributes": {"a": 1}}))
        return case(kind, raw, reasons={Reason.BAD_ATTRIBUTES})
    return case(kind, raw, reasons={Reason.BAD_TYPE})


def _fields(event: Event) -> dict:
    return {name: getattr(event, name) for name in Event.__slots__}


@st.composite
def huge(draw, clock: Clock) -> Case:
    body, event = draw(valid_events(clock))
    ascii_only = draw(st.booleans())
    variant = draw(st.sampled_from(["padding", "attributes", "array", "value_digits", "ts_digits"]))
    kind = f"huge/{variant}"
    if variant == "padding":
        body["pad"] = ""
        base = len(render(body, ascii_only))
        size = draw(
            st.one_of(st.integers(MAX_BYTES - 64, MAX_BYTES + 64), st.integers(0, 4 * MAX_BYTES))
        )
        body["pad"] = "x" * max(0, size - base)
        return case(kind, render(body, ascii_only), event)  # exactly the limit still passes
    if variant == "attributes":
        attributes = {f"k{i}": i for i in range(draw(st.integers(100, 8000)))}
        body["attributes"] = attributes
        return case(
            kind, render(body, ascii_only), Event(**{**_fields(event), "attributes": attributes})
        )
    if variant == "array":
        body["numbers"] = [0] * draw(st.integers(1000, 40_000))
        return case(kind, render(body, ascii_only), event)
    if variant == "value_digits":
        digits = draw(st.one_of(st.integers(1, 300), st.integers(310, 5000)))
        body["value"] = MARK
        raw = render(body, ascii_only, {MARK: b"9" * digits})
        if digits <= 300:
            return case(kind, raw, Event(**{**_fields(event), "value": float("9" * digits)}))
        return case(kind, raw, reasons={Reason.BAD_VALUE})
    sign = draw(st.sampled_from([b"", b"-"]))
    digits = draw(st.integers(13, 5000))
    body["ts"] = MARK  # 13+ digits of 9 is past the year 2286, either sign before 2000
    raw = render(body, ascii_only, {MARK: sign + b"9" * digits})
    reasons = {Reason.TS_OUT_OF_RANGE}
    if digits > sys.get_int_max_str_digits():
        # Python refuses to parse the integer at all, so msgspec reports "Integer value
        # out of range" rather than a bound, which reads as a malformed ts
        reasons.add(Reason.BAD_TS)
    return case(kind, raw, reasons=reasons)


NON_JSON_NUMBERS = (b"NaN", b"-NaN", b"Infinity", b"-Infinity", b"inf", b"nan", b"+1", b"01", b".5")
OVERFLOWING = (b"1e999", b"-1e999", b"1E400", b"-2.5e309")


@st.composite
def non_finite(draw, clock: Clock) -> Case:
    body, _ = draw(valid_events(clock))
    token = draw(st.sampled_from(NON_JSON_NUMBERS + OVERFLOWING))
    place = draw(st.sampled_from(["value", "attributes", "ts", "event_id"]))
    if place == "attributes":
        body["attributes"] = {"a": MARK}
    else:
        body[place] = MARK
    raw = render(body, draw(st.booleans()), {MARK: token})
    if token in NON_JSON_NUMBERS:
        reasons = {Reason.INVALID_JSON}
    else:
        reasons = {
            "value": {Reason.BAD_VALUE},
            "attributes": {Reason.BAD_ATTRIBUTES},
            "ts": {Reason.BAD_TS},
            "event_id": {Reason.BAD_EVENT_ID},
        }[place]
    return case(f"non_finite/{place}", raw, reasons=reasons)


def _wrong_for(field_name: str, value: object) -> bool:
    if field_name in ("event_id", "customer_id", "event_type"):
        return not isinstance(value, str)
    if field_name == "ts":
        return value is None or isinstance(value, bool | float | list | dict)
    if field_name == "value":
        return isinstance(value, bool | str | list | dict)
    return isinstance(value, bool | int | float | str | list)  # attributes


FIELD_REASON = {
    "event_id": Reason.BAD_EVENT_ID,
    "customer_id": Reason.BAD_CUSTOMER_ID,
    "event_type": Reason.BAD_EVENT_TYPE,
}


@st.composite
def wrong_types(draw, clock: Clock) -> Case:
    body, _ = draw(valid_events(clock))
    name = draw(
        st.sampled_from(["event_id", "customer_id", "event_type", "ts", "value", "attributes"])
    )
    variant = draw(st.sampled_from(["type", "missing", "attribute_value", "ts_text"]))
    if variant == "missing" and name in ("event_id", "customer_id", "event_type", "ts"):
        del body[name]
        return case(
            f"wrong_type/missing/{name}", render(body, True), reasons={Reason.MISSING_FIELD}
        )
    if variant == "attribute_value":
        bad = draw(JSON_ANY.filter(lambda v: v is None or isinstance(v, bool | list | dict)))
        body["attributes"] = {"plan": "pro", "bad": bad}
        return case(
            "wrong_type/attribute_value", render(body, True), reasons={Reason.BAD_ATTRIBUTES}
        )
    if variant == "ts_text":
        # no digits, so never an RFC 3339 date
        body["ts"] = draw(st.text(st.characters(exclude_categories=("Cs", "Nd")), max_size=30))
        return case("wrong_type/ts_text", render(body, True), reasons={Reason.BAD_TS})
    body[name] = draw(JSON_ANY.filter(lambda v: _wrong_for(name, v)))
    reasons = {Reason.BAD_TYPE}
    if name in FIELD_REASON:  # e.g. a number too large for any type names the field
        reasons.add(FIELD_REASON[name])
    if name == "attributes":
        reasons.add(Reason.BAD_ATTRIBUTES)
    return case(f"wrong_type/{name}", render(body, draw(st.booleans())), reasons=reasons)


MALFORMED_TS = (
    "2026-13-01T00:00:00Z",
    "2026-02-30T00:00:00Z",
    "2026-09-31T10:00:00Z",
    "2026-09-01T25:00:00Z",
    "2026-09-01T10:60:00Z",
    "2026-09-01T10:00:60Z",
    "2026-09-01T10:00Z",
    "2026-09-01",
    "2026-9-1T10:00:00Z",
    "+10000-01-01T00:00:00Z",
    "0000-01-01T00:00:00Z",
    "2026-09-01T10:00:00+24:00",
    "2026-09-01T10:00:00.Z",
    "2026-09-01T10:00:00 Z",
    "",
    "now",
)


@st.composite
def timestamps_out_of_range(draw, clock: Clock) -> Case:
    body, event = draw(valid_events(clock))
    variant = draw(st.sampled_from(["int_past", "int_future", "past", "future", "bad", "naive"]))
    kind = f"ts/{variant}"
    if variant == "bad":
        body["ts"] = draw(st.sampled_from(MALFORMED_TS))
        return case(kind, render(body, True), reasons={Reason.BAD_TS})
    if variant == "naive":
        ts, _ = draw(timestamps(TS_MIN_MS, clock.valid_max))
        assume(isinstance(ts, str))
        body["ts"] = ts[:-1] if ts.endswith("Z") else ts[: -len("+00:00")]
        return case(kind, render(body, True), reasons={Reason.BAD_TS})
    if variant == "int_past":
        ts = draw(st.integers(-(10**30), TS_MIN_MS - 1))
        ts_ms = ts
    elif variant == "int_future":
        ts = draw(st.integers(clock.future_min, 10**30))
        ts_ms = ts
    elif variant == "past":
        ts, ts_ms = draw(timestamps(FIRST_MS, TS_MIN_MS - 1))
    else:
        ts, ts_ms = draw(timestamps(clock.future_min, LAST_MS))
    body["ts"] = ts
    raw = render(body, True)
    if TS_MIN_MS <= ts_ms <= clock.valid_max:  # a whole-second form rounded it back in
        return case(kind, raw, Event(**{**_fields(event), "ts_ms": ts_ms}))
    assume(ts_ms < TS_MIN_MS or ts_ms >= clock.future_min)
    return case(kind, raw, reasons={Reason.TS_OUT_OF_RANGE})


@st.composite
def hostile_strings(draw, clock: Clock) -> Case:
    body, event = draw(valid_events(clock))
    variant = draw(
        st.sampled_from(
            [
                "id_control",
                "id_too_long",
                "id_empty",
                "id_longest",
                "event_type",
                "attribute_key_too_long",
                "attribute_value_too_long",
                "attribute_key_empty",
                "attribute_control",
                "attribute_longest",
            ]
        )
    )
    kind = f"strings/{variant}"
    ascii_only = draw(st.booleans())
    name = draw(st.sampled_from(["event_id", "customer_id"]))
    if variant.startswith("id_"):
        if variant == "id_control":
            text = draw(IDS)[: ID_MAX_LENGTH - 1]
            at = draw(st.integers(0, len(text)))
            body[name] = text[:at] + draw(st.sampled_from(CONTROL)) + text[at:]
        elif variant == "id_too_long":
            body[name] = draw(sized_text(ID_MAX_LENGTH + 1, 20_000, ID_CHARS))
        elif variant == "id_empty":
            body[name] = ""
        else:  # 128 code points of anything but control characters is still valid
            body[name] = draw(sized_text(ID_MAX_LENGTH, ID_MAX_LENGTH, ID_CHARS))
            return case(
                kind, render(body, ascii_only), Event(**{**_fields(event), name: body[name]})
            )
        return case(kind, render(body, ascii_only), reasons={FIELD_REASON[name]})
    if variant == "event_type":
        good = body["event_type"]
        body["event_type"] = draw(
            st.sampled_from(
                [
                    good + "\n",  # Python's `$` would accept this one
                    good.upper(),
                    "9" + good,
                    "_" + good,
                    good + "-x",
                    good + " ",
                    " " + good,
                    good + "\u00e9",
                    good + "\x00",
                    (good * 65)[:65],
                    "a" * 5000,
                    "",
                ]
            )
        )
        return case(kind, render(body, ascii_only), reasons={Reason.BAD_EVENT_TYPE})
    attributes = dict(body.get("attributes") or {})
    if variant == "attribute_control":
        key = draw(st.text(st.sampled_from(CONTROL + "ab"), min_size=1, max_size=10))
        attributes[key] = draw(st.text(st.sampled_from(CONTROL + "ab"), max_size=10))
    elif variant == "attribute_longest":
        attributes[draw(sized_text(ATTRIBUTE_KEY_MAX_LENGTH, ATTRIBUTE_KEY_MAX_LENGTH))] = draw(
            sized_text(ATTRIBUTE_VALUE_MAX_LENGTH, ATTRIBUTE_VALUE_MAX_LENGTH)
        )
    else:
        if variant == "attribute_key_too_long":
            attributes[draw(sized_text(ATTRIBUTE_KEY_MAX_LENGTH + 1, 5000))] = "v"
        elif variant == "attribute_value_too_long":
            attributes["k"] = draw(sized_text(ATTRIBUTE_VALUE_MAX_LENGTH + 1, 20_000))
        else:
            attributes[""] = 1
        body["attributes"] = attributes
        return case(kind, render(body, ascii_only), reasons={Reason.BAD_ATTRIBUTES})
    body["attributes"] = attributes
    return case(
        kind, render(body, ascii_only), Event(**{**_fields(event), "attributes": attributes})
    )


EMPTYISH = (
    (None, Reason.EMPTY),
    (b"", Reason.EMPTY),
    (b" ", Reason.INVALID_JSON),
    (b"\n\t \r", Reason.INVALID_JSON),
    (b"\x00", Reason.INVALID_JSON),
    (b"{", Reason.INVALID_JSON),
    (b"\xef\xbb\xbf{}", Reason.INVALID_JSON),  # a byte-order mark is not JSON
    (b"null", Reason.NOT_AN_OBJECT),
    (b"[]", Reason.NOT_AN_OBJECT),
    (b"0", Reason.NOT_AN_OBJECT),
    (b'""', Reason.NOT_AN_OBJECT),
    (b"true", Reason.NOT_AN_OBJECT),
    (b"{}", Reason.MISSING_FIELD),
    (
        b'{"event_id":null,"customer_id":null,"event_type":null,"ts":null}',
        Reason.BAD_TYPE,
    ),
)


@st.composite
def empty_or_null(draw, clock: Clock) -> Case:
    if draw(st.booleans()):
        raw, reason = draw(st.sampled_from(EMPTYISH))
        return case("empty_or_null", raw, reasons={reason})
    body, event = draw(valid_events(clock))  # whitespace around a valid event is JSON
    pad = draw(st.sampled_from([b" ", b"\n", b"\r\n\t", b"   \n"]))
    return case("empty_or_null/whitespace", pad + render(body, True) + pad, event)


@st.composite
def mutations(draw, clock: Clock) -> Case:
    body, _ = draw(valid_events(clock))
    raw = bytearray(render(body, draw(st.booleans())))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(raw)))
        op = draw(st.sampled_from(["truncate", "flip", "insert", "delete"]))
        if op == "truncate":
            del raw[at:]
        elif op == "flip" and at < len(raw):
            raw[at] ^= draw(st.integers(1, 255))
        elif op == "insert":
            raw[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            del raw[at : at + draw(st.integers(1, 8))]
    return case("mutation", bytes(raw), anything=True)


@st.composite
def random_bytes(draw, clock: Clock) -> Case:
    return case("random_bytes", draw(st.binary(max_size=400)), anything=True)


HOSTILE = {
    "invalid_utf8": invalid_utf8,
    "deep_nesting": deep_nesting,
    "huge": huge,
    "non_finite": non_finite,
    "wrong_types": wrong_types,
    "timestamps_out_of_range": timestamps_out_of_range,
    "hostile_strings": hostile_strings,
    "empty_or_null": empty_or_null,
    "mutations": mutations,
    "random_bytes": random_bytes,
}


@functools.cache
def mixed(clock: Clock) -> st.SearchStrategy[Case]:
    """Half valid events, half drawn from every hostile class alike."""
    hostile = st.one_of(*(make(clock) for make in HOSTILE.values()))
    return _mixed(valid_cases(clock), hostile)


@st.composite
def _mixed(draw, valid: st.SearchStrategy[Case], hostile: st.SearchStrategy[Case]) -> Case:
    # a flat one_of would give the valid events only one share in eleven
    return draw(valid if draw(st.booleans()) else hostile)


# running the validator -----------------------------------------------------------


def single(c: Case, now: int) -> Event | Rejection:
    COUNTS["validate"] += 1
    KINDS[c.kind.partition("/")[0]] += 1
    return validate(c.raw, now=now)


def batch_outcomes(values: list[bytes | None], now: int) -> list[Event | Rejection]:
    """`validate_batch`, turned back into one outcome per input position."""
    COUNTS["validate_batch"] += len(values)
    batch = validate_batch(values, now=now)
    events = batch.events
    assert events.num_rows == len(batch.indices)
    outcomes: list[Event | Rejection | None] = [None] * len(values)
    ts = events.column("ts").cast(pa.int64()).to_pylist()
    dates = events.column("event_date").to_pylist()
    columns = [events.column(n).to_pylist() for n in ("event_id", "customer_id", "event_type")]
    values_col = events.column("value").to_pylist()
    attributes = events.column("attributes").to_pylist()
    for row, position in enumerate(batch.indices.to_pylist()):
        assert outcomes[position] is None, f"position {position} twice"
        event_id, customer_id, event_type = (column[row] for column in columns)
        assert dates[row] == (EPOCH_UTC + timedelta(milliseconds=ts[row])).date()
        outcomes[position] = Event(
            event_id=event_id,
            customer_id=customer_id,
            event_type=event_type,
            ts_ms=ts[row],
            value=values_col[row],
            attributes=None if attributes[row] is None else msgspec.json.decode(attributes[row]),
        )
    for reject in batch.rejects:
        assert outcomes[reject.position] is None, f"position {reject.position} twice"
        outcomes[reject.position] = Rejection(reject.reason, reject.detail)
    assert None not in outcomes, "a message was neither an event nor a reject"
    return outcomes


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_each_hostile_class_gets_its_reason_on_both_paths(kind):
    """Never a crash; each message gets what its class says; one message or a batch agree."""

    @fuzz(120)
    @given(cases=st.lists(HOSTILE[kind](FIXED), min_size=1, max_size=4))
    def prop(cases: list[Case]) -> None:
        singles = [single(c, NOW) for c in cases]
        for c, outcome in zip(cases, singles, strict=True):
            check(c, outcome)
        assert batch_outcomes([c.raw for c in cases], NOW) == singles

    prop()


@fuzz(400, shrink=False)
@given(cases=st.lists(mixed(FIXED), min_size=10, max_size=60))
def test_valid_events_in_a_hostile_batch_are_exact_and_unaffected(cases):
    """Whatever surrounds them, valid messages become exactly their events, in order."""
    outcomes = batch_outcomes([c.raw for c in cases], NOW)
    for c, outcome in zip(cases, outcomes, strict=True):
        check(c, outcome)
        assert outcome == single(c, NOW)
    valid = [i for i, c in enumerate(cases) if c.kind == "valid"]
    assert [outcomes[i] for i in valid] == [cases[i].event for i in valid]
    # the garbage changes nothing: the valid ones alone give the same rows
    alone = validate_batch([cases[i].raw for i in valid], now=NOW).events
    COUNTS["validate_batch"] += len(valid)
    mixed_batch = validate_batch([c.raw for c in cases], now=NOW)
    COUNTS["validate_batch"] += len(cases)
    wanted = set(valid)
    keep = [row for row, i in enumerate(mixed_batch.indices.to_pylist()) if i in wanted]
    assert mixed_batch.events.take(pa.array(keep, pa.int64())).equals(alone)


# the two bugs the fuzzer found, pinned -------------------------------------------


def _event(**fields) -> bytes:
    body = {"event_id": "e", "customer_id": "c", "event_type": "login", "ts": NOW, **fields}
    return json.dumps(body).encode()


def test_an_event_type_with_a_trailing_newline_is_rejected_by_both_paths():
    """Python's `$` also matches before a final newline: `validate` accepted "login\\n",
    while the batch path (RE2) flagged it, then raised AttributeError when `_post_checks`
    found nothing wrong: the extract and the scorer failed on every run."""
    raw = _event(event_type="login\n")
    assert validate(raw, now=NOW).reason == Reason.BAD_EVENT_TYPE
    batch = validate_batch([_event(), raw], now=NOW)
    assert [(r.position, r.reason) for r in batch.rejects] == [(1, Reason.BAD_EVENT_TYPE)]
    assert batch.indices.to_pylist() == [0]


def test_replay_renames_an_event_type_with_a_trailing_newline():
    """Replay kept such a type as it was (the same `match`) instead of normalizing it."""
    import polars as pl

    from churn_platform.events.replay import ReplayMapping, rows_to_messages

    frame = pl.DataFrame({"customer_id": ["a"], "event_type": ["login\n"], "ts": [1.75e9]})
    ((_, value),) = rows_to_messages(frame, ReplayMapping())
    assert json.loads(value)["event_type"] == "login"


def test_nesting_beyond_the_recursion_limit_is_quarantined_not_raised():
    """msgspec raised RecursionError out of `validate` and `validate_batch`: one such message
    in a topic failed every extract run (and stopped the scorer) until removed by hand."""
    deep = _event()[:-1] + b', "x": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"
    assert len(deep) <= MAX_BYTES
    rejection = validate(deep, now=NOW)
    assert rejection.reason == Reason.INVALID_JSON and "nested too deeply" in rejection.detail
    batch = validate_batch([_event(), deep, _event(event_id="e2")], now=NOW)
    assert batch.indices.to_pylist() == [0, 2]
    assert batch.rejects == [BatchReject(1, rejection.reason, rejection.detail)]


# through the real extract ----------------------------------------------------------

KEYS = st.one_of(st.none(), st.just(b""), st.binary(max_size=16), IDS.map(str.encode))
POOL_EXAMPLES = 100  # x 20-40 messages each: a few thousand through the extract


@pytest.fixture(scope="module")
def extract_pool() -> list[tuple[bytes | None, Case]]:
    """A few thousand keyed messages of every class, drawn by Hypothesis (deterministically).

    Hypothesis caps what one example may draw (8 KiB of choices, a few dozen of these
    messages), so the batch is gathered over many examples and produced as one.
    """
    pool: list[tuple[bytes | None, Case]] = []

    @fuzz(POOL_EXAMPLES, shrink=False)
    @given(messages=st.lists(st.tuples(KEYS, mixed(REAL)), min_size=20, max_size=40))
    def gather(messages) -> None:
        pool.extend(messages)

    gather()
    return pool


def produce(settings_, topic: str, messages: list[tuple[bytes | None, Case]]) -> list[tuple]:
    """Produce in order, round-robin over 3 partitions; returns each one's (partition, offset)."""
    placed: list[tuple | None] = [None] * len(messages)
    errors = []

    def delivered(i: int):
        def report(err, msg) -> None:
            if err is not None:
                errors.append(err)
            else:
                placed[i] = (msg.partition(), msg.offset())

        return report

    producer = Producer(settings_.client_config(**{"enable.idempotence": True, "linger.ms": 5}))
    for i, (key, c) in enumerate(messages):
        producer.produce(topic, value=c.raw, key=key, partition=i % 3, on_delivery=delivered(i))
        producer.poll(0)
    assert producer.flush(30) == 0
    assert errors == [] and None not in placed
    return placed


def test_extract_lands_the_valid_and_quarantines_the_rest(
    kafka_settings, topic, tmp_path, extract_pool
):
    """Real broker, real extract: rows == the valid messages, quarantine == the rest, by offset.

    Two runs (the second resumes from the lake's offsets) in small chunks and small flushes, so
    rejects fall on chunk and file boundaries.
    """
    lake = Lake(tmp_path / "lake")
    half = len(extract_pool) // 2
    expected: dict[tuple[int, int], tuple] = {}
    for part in (extract_pool[:half], extract_pool[half:]):
        placed = produce(kafka_settings, topic, part)
        now = now_ms()
        for (key, c), where in zip(part, placed, strict=True):
            outcome = validate(c.raw, now=now)
            check(c, outcome)  # the extract validates with the real clock
            expected[where] = (key, c, outcome)
        result = extract_topic(
            kafka_settings, lake, ExtractConfig(topic=topic, chunk_size=97, flush_rows=400)
        )
        assert result.messages == len(part) == result.rows + result.rejected
        COUNTS["extract"] += len(part)
    for _, c in extract_pool:
        KINDS["extract:" + c.kind.partition("/")[0]] += 1

    rows = read_raw_events(lake, [topic])
    quarantine = read_quarantine(lake, [topic])
    assert rows.height + quarantine.height == len(extract_pool)  # nothing lost
    assert sum(extracted_offsets(lake, topic).values()) == len(extract_pool)
    good = {where for where, (_, _, o) in expected.items() if isinstance(o, Event)}
    assert 0 < len(good) < len(expected)
    assert set(zip(rows["_partition"], rows["_offset"], strict=True)) == good
    assert rows.height == len(good)  # and no row twice
    for row in rows.with_columns(rows["ts"].dt.epoch("ms").alias("ts_ms")).iter_rows(named=True):
        event = expected[(row["_partition"], row["_offset"])][2]
        assert row["event_id"] == event.event_id and row["customer_id"] == event.customer_id
        assert row["event_type"] == event.event_type and row["ts_ms"] == event.ts_ms
        assert row["value"] == event.value
        stored = row["attributes"]
        assert (None if stored is None else msgspec.json.decode(stored)) == event.attributes
    bad = set(zip(quarantine["partition"], quarantine["offset"], strict=True))
    assert bad == set(expected) - good and quarantine.height == len(bad)
    for row in quarantine.iter_rows(named=True):
        key, c, outcome = expected[(row["partition"], row["offset"])]
        assert (row["reason"], row["detail"]) == (outcome.reason, outcome.detail)
        assert (row["value"] or b"") == (c.raw or b"")  # the raw bytes are kept for replay
        assert (row["key"] or b"") == (key or b"")
    null_keys = sum(key is None for key, _ in extract_pool)
    empty_values = sum(not c.raw for _, c in extract_pool)
    assert null_keys and empty_values  # the batch did hold what the issue names


# the count -----------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    started = time.perf_counter()
    yield
    summary = {
        # distinct messages; each went through `validate` and `validate_batch`
        "validator_tests_messages": COUNTS["validate"],
        # more distinct messages, through the broker, the extract (validate_batch in
        # chunks) and `validate` for the expectation
        "extract_messages": COUNTS["extract"],
        "total_messages": COUNTS["validate"] + COUNTS["extract"],
        "validate_batch_messages": COUNTS["validate_batch"],
        "by_class": dict(sorted(KINDS.items())),
        "seconds": round(time.perf_counter() - started, 1),
    }
    if os.environ.get("CHURN_WRITE_FUZZ_RESULTS"):  # `make fuzz`; a plain test run leaves it
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nfuzz inputs tried: {json.dumps(summary)}")
