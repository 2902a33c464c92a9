"""Validate raw Kafka message values against the event contract.

`validate` checks one message and returns an `Event` or a `Rejection`;
`validate_batch` checks a chunk of messages and returns the valid ones as an
Arrow table plus the rejects. Both decode with the same msgspec type (type,
length, pattern and RFC 3339 checks run in C) and apply the same range rules;
the batch path applies the rules to whole columns, which is what keeps
validation off the extract's critical path.
"""

from __future__ import annotations

import functools
import math
import operator
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import Annotated

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from churn_platform.events.contract import (
    ATTRIBUTE_KEY_MAX_LENGTH,
    ATTRIBUTE_VALUE_MAX_LENGTH,
    DEFAULT_MAX_MESSAGE_BYTES,
    EVENT_TYPE_PATTERN,
    EVENT_TYPE_RE,
    ID_MAX_LENGTH,
    TS_MAX_FUTURE_MS,
    TS_MIN_DATE,
    TS_MIN_MS,
    Event,
    Reason,
    Rejection,
)

# Lengths and types are checked by msgspec in C while decoding. The two patterns
# (no control characters in ids; the event-type grammar) are checked afterwards:
# per column with RE2 in the batch path, with `re` for a single message. Python's
# `re` inside msgspec would cost more than the whole decode.
_ID = Annotated[str, msgspec.Meta(min_length=1, max_length=ID_MAX_LENGTH)]
# epoch-ms integers must fit an int64 column; anything beyond is out of range anyway
_TS_INT = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
_TS = Annotated[datetime, msgspec.Meta(tz=True)] | _TS_INT
_ATTR_KEY = Annotated[str, msgspec.Meta(min_length=1, max_length=ATTRIBUTE_KEY_MAX_LENGTH)]
_ATTR_VALUE = Annotated[str, msgspec.Meta(max_length=ATTRIBUTE_VALUE_MAX_LENGTH)] | int | float
_CONTROL_CHARS = r"[\x00-\x1f\x7f]"
_CONTROL_RE = re.compile(_CONTROL_CHARS)


class _WireEvent(msgspec.Struct, gc=False):
    event_id: _ID
    customer_id: _ID
    event_type: str
    ts: _TS
    value: float | None = None
    attributes: dict[_ATTR_KEY, _ATTR_VALUE] | None = None


_DECODER = msgspec.json.Decoder(_WireEvent)


class _BatchWireEvent(msgspec.Struct, gc=False):
    """`_WireEvent` with the checks a batch does per column, not per message.

    The attributes stay raw JSON, checked once per distinct value: building a
    dict per message and encoding it back was a fifth of a batch's validation,
    and a catalogue's attributes repeat (plan, country, channel). A text `ts`
    stays text: the common RFC 3339 forms are parsed per column by Arrow
    (`_batch_timestamps`), the rest message by message with `_WireEvent`'s own
    type. Both give the same rows and the same rejects as `validate`.
    """

    event_id: _ID
    customer_id: _ID
    event_type: str
    ts: str | _TS_INT
    value: float | None = None
    attributes: msgspec.Raw = msgspec.Raw(b"null")


_BATCH_DECODER = msgspec.json.Decoder(_BatchWireEvent)
_ATTRIBUTES_DECODER = msgspec.json.Decoder(dict[_ATTR_KEY, _ATTR_VALUE] | None)
_DECODE_ERRORS = (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError, RecursionError)
_ENCODE = msgspec.json.encode
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)

_FIELD_REASONS = {
    "$.event_id": Reason.BAD_EVENT_ID,
    "$.customer_id": Reason.BAD_CUSTOMER_ID,
    "$.event_type": Reason.BAD_EVENT_TYPE,
    "$.ts": Reason.BAD_TS,
    "$.value": Reason.BAD_VALUE,
    "$.attributes": Reason.BAD_ATTRIBUTES,
}


def _classify(message: str) -> str:
    """Map a msgspec validation message to a reason code."""
    if "missing required field" in message:
        return Reason.MISSING_FIELD
    _, sep, where = message.rpartition(" - at ")
    path = where.strip("`") if sep else "$"
    if " in `$.attributes" in message or path.startswith(("$.attributes.", "$.attributes[")):
        return Reason.BAD_ATTRIBUTES
    if path == "$":
        return Reason.NOT_AN_OBJECT
    if path == "$.ts" and message.startswith(("Expected `int` >=", "Expected `int` <=")):
        return Reason.TS_OUT_OF_RANGE
    if ", got `" in message:
        return Reason.BAD_TYPE
    return _FIELD_REASONS.get(path, Reason.BAD_TYPE)


def _precheck(raw: bytes | None, max_bytes: int) -> Rejection | None:
    if not raw:
        return Rejection(Reason.EMPTY, "empty message value")
    if len(raw) > max_bytes:
        return Rejection(Reason.TOO_LARGE, f"{len(raw)} bytes > limit {max_bytes}")
    return None


def _decode(raw: bytes) -> _WireEvent | Rejection:
    try:
        return _DECODER.decode(raw)
    except msgspec.ValidationError as exc:
        message = str(exc)
        return Rejection(_classify(message), message)
    except msgspec.DecodeError as exc:
        return Rejection(Reason.INVALID_JSON, str(exc))
    except UnicodeDecodeError as exc:
        return Rejection(Reason.INVALID_UTF8, str(exc))
    except RecursionError:
        # msgspec recurses once per nesting level, even through fields it skips;
        # a value nested deeper than the interpreter's limit is a poison message
        return Rejection(
            Reason.INVALID_JSON, "JSON nested too deeply to decode (over the recursion limit)"
        )


def _ts_rejection(ts_ms: int, now_ms: int) -> Rejection | None:
    if ts_ms < TS_MIN_MS:
        return Rejection(Reason.TS_OUT_OF_RANGE, f"ts {ts_ms} ms is before {TS_MIN_DATE}")
    if ts_ms > now_ms + TS_MAX_FUTURE_MS:
        return Rejection(Reason.TS_OUT_OF_RANGE, f"ts {ts_ms} ms is more than 1 day in the future")
    return None


def _ts_ms(ts: datetime | int) -> int:
    return ts if type(ts) is int else (ts - _EPOCH) // _MS


def _post_checks(wire: _WireEvent, ts_ms: int, now: int) -> Rejection | None:
    """The rules msgspec does not check while decoding, for one decoded message."""
    if _CONTROL_RE.search(wire.event_id):
        return Rejection(Reason.BAD_EVENT_ID, "event_id contains control characters")
    if _CONTROL_RE.search(wire.customer_id):
        return Rejection(Reason.BAD_CUSTOMER_ID, "customer_id contains control characters")
    # fullmatch, not match: Python's `$` also matches before a trailing newline,
    # RE2's (the batch path) does not
    if not EVENT_TYPE_RE.fullmatch(wire.event_type):
        return Rejection(
            Reason.BAD_EVENT_TYPE,
            f"event_type {wire.event_type[:80]!r} does not match {EVENT_TYPE_PATTERN}",
        )
    rejection = _ts_rejection(ts_ms, now)
    if rejection is not None:
        return rejection
    if wire.value is not None and not math.isfinite(wire.value):
        return Rejection(Reason.BAD_VALUE, f"value {wire.value!r} is not finite")
    return None


def now_ms() -> int:
    """The current time in epoch milliseconds (the clock the future-ts rule uses)."""
    return time.time_ns() // 1_000_000


def validate(
    raw: bytes | None, *, now: int | None = None, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> Event | Rejection:
    """Validate one message value; `now` is epoch ms for the future-ts rule."""
    rejection = _precheck(raw, max_bytes)
    if rejection is not None:
        return rejection
    wire = _decode(raw)
    if isinstance(wire, Rejection):
        return wire
    ts_ms = _ts_ms(wire.ts)
    rejection = _post_checks(wire, ts_ms, now_ms() if now is None else now)
    if rejection is not None:
        return rejection
    return Event(
        event_id=wire.event_id,
        customer_id=wire.customer_id,
        event_type=wire.event_type,
        ts_ms=ts_ms,
        value=wire.value,
        attributes=wire.attributes,
    )


@dataclass(frozen=True, slots=True, order=True)
class BatchReject:
    """A message of a batch that broke the contract: its input position, and why."""

    position: int
    reason: str
    detail: str


def _decode_all(
    values: list[bytes | None], max_bytes: int
) -> tuple[list[_BatchWireEvent], list[int] | None, list[BatchReject]]:
    """Decode every value; returns (decoded, their input positions, rejects).

    `list.extend(map(decode, ...))` runs the loop in C and keeps what it decoded
    before an exception, so a bad message costs one Python-level step and the
    loop resumes right after it; its reason comes from the single-message
    decoder. Positions are None when nothing was rejected.
    """
    rejects: list[BatchReject] = []
    skip: set[int] = set()
    try:  # one pass in C finds the values the prechecks would reject (None has no len)
        lengths = np.fromiter(map(len, values), np.int64, len(values))
        suspect = not values or not 0 < lengths.min() <= lengths.max() <= max_bytes
    except TypeError:
        suspect = True
    if suspect:
        for i, raw in enumerate(values):
            rejection = _precheck(raw, max_bytes)
            if rejection is not None:
                rejects.append(BatchReject(i, rejection.reason, rejection.detail))
                skip.add(i)
    candidates = [i for i in range(len(values)) if i not in skip] if skip else None
    todo = values if candidates is None else [values[i] for i in candidates]

    decode = _BATCH_DECODER.decode
    wires: list[_BatchWireEvent] = []
    failed: list[int] = []  # positions in `todo`
    start = 0
    while start < len(todo):
        before = len(wires)
        try:
            wires.extend(map(decode, islice(todo, start, None)))
            break
        except _DECODE_ERRORS:
            bad = start + len(wires) - before
            failed.append(bad)
            start = bad + 1
    for bad in failed:
        i = bad if candidates is None else candidates[bad]
        rejection = _decode(todo[bad])
        rejects.append(BatchReject(i, rejection.reason, rejection.detail))

    if not rejects:
        return wires, None, rejects
    rejected = {r.position for r in rejects}
    return wires, [i for i in range(len(values)) if i not in rejected], rejects


_ATTRIBUTES_OF = operator.attrgetter("attributes")


def _batch_attributes(wires: list[_BatchWireEvent]) -> tuple[pa.Array, list[int]]:
    """Each message's attributes as `validate` stores them; the rows whose attributes are bad.

    The raw JSON texts go into one Arrow column without a Python object per
    message; each distinct text is decoded and encoded back once (null when
    absent or null; also null, and listed, when it breaks the contract).
    """
    raws = list(map(_ATTRIBUTES_OF, wires))
    offsets = np.zeros(len(raws) + 1, np.int64)
    np.cumsum(np.fromiter(map(len, raws), np.int64, len(raws)), out=offsets[1:])
    texts = pa.Array.from_buffers(
        pa.large_binary(), len(raws), [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(raws))]
    )
    distinct = pc.dictionary_encode(texts)
    canonical: list[str | None] = []
    invalid: list[int] = []
    decode, encode = _ATTRIBUTES_DECODER.decode, _ENCODE
    for i, raw in enumerate(distinct.dictionary.to_pylist()):
        try:
            decoded = decode(raw)
        except _DECODE_ERRORS:
            invalid.append(i)
            canonical.append(None)
            continue
        canonical.append(None if decoded is None else encode(decoded).decode())
    column = pc.take(pa.array(canonical, pa.string()), distinct.indices)
    if not invalid:
        return column, []
    bad = pc.is_in(distinct.indices, pa.array(invalid, distinct.indices.type))
    return column, pc.indices_nonzero(bad).to_pylist()


def validate_rows(
    values: list[bytes | None],
    *,
    now: int | None = None,
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> tuple[list[tuple], list[int], list[BatchReject]]:
    """`validate_batch` for a handful of messages, as plain rows: no Arrow arrays to build.

    Returns (rows, their input positions, rejects). A row is (event_id,
    customer_id, event_type, ts_ms, value, attributes as compact JSON text),
    the values `validate_batch` puts in its table; the rules are `validate`'s.
    """
    now = now_ms() if now is None else now
    encode = _ENCODE
    rows: list[tuple] = []
    positions: list[int] = []
    rejects: list[BatchReject] = []
    for position, raw in enumerate(values):
        checked = validate(raw, now=now, max_bytes=max_bytes)
        if isinstance(checked, Rejection):
            rejects.append(BatchReject(position, checked.reason, checked.detail))
            continue
        attributes = checked.attributes
        rows.append(
            (
                checked.event_id,
                checked.customer_id,
                checked.event_type,
                checked.ts_ms,
                checked.value,
                None if attributes is None else encode(attributes).decode(),
            )
        )
        positions.append(position)
    return rows, positions, rejects


@dataclass(frozen=True)
class ValidatedBatch:
    """The outcome of validating a chunk of messages.

    `events` has one row per valid message (columns event_id, customer_id,
    event_type, ts, value, attributes, event_date) and `indices` says which
    input position each row came from; `rejects` says which positions broke the
    contract and why, in position order.
    """

    events: pa.Table
    indices: pa.Array
    rejects: list[BatchReject]


# The RFC 3339 forms Arrow parses per column: seconds, at most six fraction
# digits, Z or an offset (with or without its colon), years from 1 (Arrow also
# takes year 0). On these, Arrow's cast and msgspec's parser accept the same
# texts and give the same microsecond (a test compares them on random texts of
# this shape, impossible dates included); other text is left to msgspec.
_COMMON_RFC3339 = (
    r"^([1-9]\d{3}|0[1-9]\d\d|00[1-9]\d|000[1-9])-\d\d-\d\d[T ]\d\d:\d\d:\d\d"
    r"(\.\d{1,6})?(Z|[+-]\d\d:?\d\d)$"
)
_UTC_MICROS = pa.timestamp("us", tz="UTC")


def _batch_timestamps(values: list) -> tuple[pa.Array, list[int]]:
    """Epoch ms of each `ts` (an epoch-ms int or RFC 3339 text), and the rows left undecided.

    Text outside `_COMMON_RFC3339`, or a date Arrow cannot place (30 February),
    gives null here and its row in the list: `_WireEvent`'s own type decides it.
    """
    ints = None
    try:  # texts only, the usual case, needs no pass over the types
        text = pa.array(values, pa.string())
    except pa.ArrowTypeError:  # an epoch-ms int among them (msgspec gives str or int)
        if all(type(v) is int for v in values):
            return pa.array(values, pa.int64()), []
        ints = pa.array([v if type(v) is int else None for v in values], pa.int64())
        text = pa.array([v if type(v) is str else None for v in values], pa.string())
    if not _one_common_layout(text):  # else every text is in one of the pattern's forms
        common = pc.fill_null(pc.match_substring_regex(text, _COMMON_RFC3339), False)
        if not pc.all(common).as_py():
            text = pc.if_else(common, text, pa.scalar(None, pa.string()))
    micros = _cast_or_null(text).cast(pa.int64())
    # floor, as `_ts_ms` does (before 1970 too: the detail of a reject names the value)
    ms = pa.array(np.floor_divide(micros.fill_null(0).to_numpy(), 1000))
    if micros.null_count:
        ms = pc.if_else(micros.is_null(), pa.scalar(None, pa.int64()), ms)
    if ints is not None:
        ms = pc.coalesce(ints, ms)
    undecided = pc.indices_nonzero(ms.is_null()).to_pylist() if ms.null_count else []
    return ms, undecided


# rows checked at a time: temporaries that stay in cache (a whole chunk's were 10x slower)
_LAYOUT_BLOCK_ROWS = 4096


@functools.lru_cache(maxsize=8)
def _layout_bytes(width: int, zone: int, fraction: int) -> tuple[np.ndarray, np.ndarray]:
    """Each byte's lowest value and range, tiled over `_LAYOUT_BLOCK_ROWS` texts of one form.

    The forms are `_COMMON_RFC3339`'s; `zone` is 1 (`Z`) or 6 (`+hh:mm`), `fraction`
    0 or the length of `.` and its digits. A digit's range is 0–9; a separator's
    is the one byte.
    """
    lowest = np.full(width, ord("0"), np.uint8)
    highest = np.full(width, ord("9"), np.uint8)
    fixed = {4: "-", 7: "-", 13: ":", 16: ":"}
    if fraction:
        fixed[19] = "."
    fixed[width - 1 if zone == 1 else width - 3] = "Z" if zone == 1 else ":"
    for position, char in fixed.items():
        lowest[position] = highest[position] = ord(char)
    lowest[10], highest[10] = ord(" "), ord("T")  # narrowed to the two by the caller
    if zone == 6:
        lowest[width - 6], highest[width - 6] = ord("+"), ord("-")  # so is this (',')
    return np.tile(lowest, _LAYOUT_BLOCK_ROWS), np.tile(highest - lowest, _LAYOUT_BLOCK_ROWS)


def _one_common_layout(text: pa.StringArray) -> bool:
    """Whether every text has the first one's layout, one of `_COMMON_RFC3339`'s forms.

    A producer writes its timestamps one way, so a column usually has one
    layout, and checking its bytes with numpy costs a tenth of the regex
    (which then decides a column with any other text): the same length, digits
    where the form has digits, its separators, `Z` or an offset with a colon,
    not year 0.
    """
    n = len(text)
    if n == 0 or text.null_count:  # a null among them: an epoch-ms int's row
        return False
    offsets, data = _string_bytes(text)
    width = int(offsets[1] - offsets[0])
    if width < 20 or (np.diff(offsets) != width).any():
        return False
    rows = data.reshape(n, width)
    head = rows[0].tobytes()
    if head.endswith(b"Z"):
        zone = 1
    elif width >= 25 and head[-6] in b"+-" and head[-3] == ord(":"):
        zone = 6
    else:
        return False
    fraction = width - zone - 19
    if fraction == 1 or fraction > 7 or (fraction and head[19] != ord(".")):
        return False
    lowest, span = _layout_bytes(width, zone, fraction)
    for start in range(0, len(data), len(lowest)):
        block = data[start : start + len(lowest)]
        # a byte below its lowest wraps around past its range
        if (np.subtract(block, lowest[: len(block)]) > span[: len(block)]).any():
            return False
    if ((rows[:, 10] != ord("T")) & (rows[:, 10] != ord(" "))).any():
        return False
    if zone == 6 and (rows[:, width - 6] == ord(",")).any():
        return False
    # year 0 (msgspec refuses it): four digits OR to "0" only when all are "0"
    return not ((rows[:, 0] | rows[:, 1] | rows[:, 2] | rows[:, 3]) == ord("0")).any()


def _string_bytes(column: pa.StringArray) -> tuple[np.ndarray, np.ndarray]:
    """A string column's offsets and the bytes of its rows (its own rows only, when sliced)."""
    offsets = np.frombuffer(column.buffers()[1], np.int32, len(column) + 1, column.offset * 4)
    start, end = int(offsets[0]), int(offsets[-1])
    if end == start:
        return offsets, np.empty(0, np.uint8)
    return offsets, np.frombuffer(column.buffers()[2], np.uint8, end - start, start)


def _cast_or_null(text: pa.Array) -> pa.Array:
    """`text` cast to UTC microseconds; a text Arrow rejects becomes null (found by halving)."""
    try:
        return pc.cast(text, _UTC_MICROS)
    except pa.ArrowInvalid:
        if len(text) == 1:
            return pa.nulls(1, _UTC_MICROS)
        half = len(text) // 2
        return pa.concat_arrays([_cast_or_null(text[:half]), _cast_or_null(text[half:])])


def _has_control_chars(*columns: pa.StringArray) -> bool:
    """Whether any string of these columns holds a control character (U+0000–U+001F, U+007F).

    In UTF-8 these are exactly the bytes below 0x20 and 0x7f (no multi-byte
    sequence holds a byte below 0x80), so one scan of each column's bytes
    answers for every row; only then does a regex say which rows.
    """
    for column in columns:
        _, data = _string_bytes(column)
        if (data < 0x20).any() or (data == 0x7F).any():
            return True
    return False


def _bad_event_types(event_type: pa.StringArray) -> list[str]:
    """The distinct event types that break the grammar (a catalogue has few distinct types)."""
    # fullmatch, as in `_post_checks`: the same answer as RE2's anchored pattern
    return [t for t in pc.unique(event_type).to_pylist() if not EVENT_TYPE_RE.fullmatch(t)]


_EMPTY_EVENTS = pa.schema(
    [
        ("event_id", pa.string()),
        ("customer_id", pa.string()),
        ("event_type", pa.string()),
        ("ts", pa.timestamp("ms", tz="UTC")),
        ("value", pa.float64()),
        ("attributes", pa.string()),
        ("event_date", pa.date32()),
    ]
)


def validate_batch(
    values: list[bytes | None],
    *,
    now: int | None = None,
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> ValidatedBatch:
    """Validate a chunk of message values at once; same rules as `validate`."""
    wires, positions, rejects = _decode_all(values, max_bytes)
    if not wires:
        return ValidatedBatch(_EMPTY_EVENTS.empty_table(), pa.array([], pa.int64()), rejects)

    now = now_ms() if now is None else now
    event_id = pa.array([w.event_id for w in wires], type=pa.string())
    customer_id = pa.array([w.customer_id for w in wires], type=pa.string())
    event_type = pa.array([w.event_type for w in wires], type=pa.string())
    value = pa.array([w.value for w in wires], type=pa.float64())
    ts_ms, undecided = _batch_timestamps([w.ts for w in wires])
    attributes, bad_attributes = _batch_attributes(wires)

    # Rows the columns could not settle (a ts text outside the common forms,
    # attributes that break the contract) get `validate`'s own decode.
    dropped: set[int] = set()
    if undecided or bad_attributes:
        settled = ts_ms.to_pylist()
        stored = attributes.to_pylist() if bad_attributes else []
        bad_rows = set(bad_attributes)
        for row in sorted(bad_rows.union(undecided)):
            position = row if positions is None else positions[row]
            exact = _decode(values[position])
            if isinstance(exact, Rejection):
                rejects.append(BatchReject(position, exact.reason, exact.detail))
                dropped.add(row)
                continue
            settled[row] = _ts_ms(exact.ts)  # a ts text only msgspec parses
            if row in bad_rows:  # not expected: the same type decodes the same bytes
                stored[row] = (
                    None if exact.attributes is None else _ENCODE(exact.attributes).decode()
                )
        ts_ms = pa.array(settled, pa.int64())
        if bad_attributes:
            attributes = pa.array(stored, pa.string())

    # One vectorised pass over every rule `_post_checks` applies; rows it flags
    # get their reason from `_post_checks` itself, so both paths agree.
    bad = pc.or_(pc.less(ts_ms, TS_MIN_MS), pc.greater(ts_ms, now + TS_MAX_FUTURE_MS))
    bad = pc.or_(bad, pc.fill_null(pc.invert(pc.is_finite(value)), False))
    if _has_control_chars(event_id, customer_id):
        bad = pc.or_(
            bad,
            pc.or_(
                pc.match_substring_regex(event_id, _CONTROL_CHARS),
                pc.match_substring_regex(customer_id, _CONTROL_CHARS),
            ),
        )
    bad_types = _bad_event_types(event_type)
    if bad_types:
        bad = pc.or_(bad, pc.is_in(event_type, pa.array(bad_types, pa.string())))
    bad = pc.fill_null(bad, True)  # a dropped row's ts may be null

    index = (
        pa.array(positions, type=pa.int64())
        if positions is not None
        else pa.array(np.arange(len(wires), dtype=np.int64))
    )
    keep = None
    if pc.any(bad).as_py() or dropped:
        flagged = pc.indices_nonzero(bad).to_pylist()
        settled_ts = ts_ms.to_pylist() if flagged else []
        for row in flagged:
            if row in dropped:
                continue
            r = _post_checks(wires[row], settled_ts[row], now)
            position = row if positions is None else positions[row]
            rejects.append(BatchReject(position, r.reason, r.detail))
        if dropped:
            dropped_rows = np.zeros(len(wires), dtype=bool)
            dropped_rows[list(dropped)] = True
            bad = pc.or_(bad, pa.array(dropped_rows))
        keep = pc.invert(bad)
    rejects.sort()

    table = pa.table(
        {
            "event_id": event_id,
            "customer_id": customer_id,
            "event_type": event_type,
            "ts": pc.cast(ts_ms, pa.timestamp("ms", tz="UTC")),
            "value": value,
            "attributes": attributes,
            "event_date": pc.cast(pc.cast(ts_ms, pa.timestamp("ms")), pa.date32()),
        }
    )
    if keep is not None:
        table = table.filter(keep)
        index = index.filter(keep)
    return ValidatedBatch(table, index, rejects)
