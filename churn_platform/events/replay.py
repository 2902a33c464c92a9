"""Replay a user's own event data (CSV, JSON Lines, Parquet) into the events topic.

A `ReplayMapping` says which columns hold the contract's fields; a
`SubscriptionMapping` instead turns a subscriptions table (one row per
subscription, with start and end) into `subscription_started` /
`subscription_cancelled` lifecycle events. `replay_file` reads the file in
bounded batches, converts each batch with polars (timestamps, ids, event-type
names, attribute types), encodes every event with msgspec, checks it with the
contract's `validate` and produces it keyed by customer id.

Choices a user can rely on:

* Events are produced in file order (Kafka keeps order per key); the file
  need not be sorted.
* Without an event-id column, an event's id is `<h>-<row>` where `<h>` is a
  hash of the file's name (relative to the directory or glob root) and `<row>`
  its 0-based data row; subscription events add `-started` / `-cancelled`.
  Re-replaying the same file yields the same ids, which the feature pipeline
  de-duplicates. Row numbers, not row contents, are hashed on purpose: two
  identical rows (two logins in the same second) are two events.
* Event types are normalised to the contract grammar (`Page View` → `page_view`,
  `2FA` → `e_2fa`); the summary lists every renamed value.
* A value that cannot be converted (an unreadable timestamp, a non-numeric
  value, an infinite number) is passed through as text so the contract check
  rejects it with the original text and the extract's quarantine keeps it;
  NaN is read as missing (pandas writes missing floats as NaN).
* CSV is read as text, so no row fails to parse halfway through a large file;
  attribute columns whose values in a batch are all integers (without leading
  zeros, so zip codes stay text) or all numbers become numbers.
"""

from __future__ import annotations

import glob
import hashlib
import io
import os
import re
import sys
import time
import unicodedata
import zoneinfo
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import msgspec
import polars as pl
from tqdm import tqdm

from churn_platform.events.contract import (
    EVENT_TYPE_RE,
    SUBSCRIPTION_CANCELLED,
    SUBSCRIPTION_STARTED,
    Rejection,
)
from churn_platform.events.validation import now_ms, validate_batch
from churn_platform.kafka.admin import DEFAULT_PARTITIONS, ensure_topic
from churn_platform.kafka.config import KafkaSettings
from churn_platform.kafka.producer import EventProducer

FORMATS = ("csv", "jsonl", "parquet")
TS_UNITS = ("auto", "s", "ms", "us", "ns")
DEFAULT_BATCH_ROWS = 100_000
DEFAULT_REJECTS_DIR = Path("var/replay")

_SUFFIX_FORMATS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_GLOB_CHARS = frozenset("*?[")
_JSONL_BLOCK_BYTES = 16 << 20
# Internal column names: the row number a batch row came from, and the prefix
# that keeps attribute names apart from the contract's own fields.
_ROW = "__replay_row__"
_ATTR = "attr:"
_RFC3339_MS = "%Y-%m-%dT%H:%M:%S%.3fZ"
_UTC = "UTC"
# Epoch-ms bounds polars can format (years 1..9999); outside them a value is unreadable.
_MS_MIN = -62_135_596_800_000
_MS_MAX = 253_402_300_799_999
_AWARE_FORMATS = ("%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%.f%#z")
_NAIVE_FORMATS = ("%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d")
_NOT_IN_GRAMMAR = re.compile(r"[^a-z0-9_]+")
_LEADING_ZERO = r"^[+-]?0[0-9]"
_LONG_DIGITS = r"^[+-]?[0-9]{16,}$"
_NULL_INT = pl.Series([None], dtype=pl.Int64)
_NULL_FLOAT = pl.Series([None], dtype=pl.Float64)
_NULL_TEXT = pl.Series([None], dtype=pl.String)


class ReplayError(ValueError):
    """The input file or the options are wrong; the message says what to change."""


class MappingError(ReplayError):
    """A mapped column is missing from the file; the message names the option and the columns."""


def _check_ts_options(ts_unit: str, ts_timezone: str) -> None:
    if ts_unit not in TS_UNITS:
        raise ReplayError(f"--ts-unit {ts_unit!r} is not one of {', '.join(TS_UNITS)}")
    try:
        zoneinfo.ZoneInfo(ts_timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ReplayError(
            f"--ts-timezone {ts_timezone!r} is not a known time zone "
            "(use an IANA name such as UTC or Europe/Berlin)"
        ) from exc


@dataclass(frozen=True)
class ReplayMapping:
    """Which columns of an event file hold the contract's fields.

    `event_type` is a fixed type for files of one kind (then `event_type_column`
    is ignored). `event_id_column` may be absent when it has its default name:
    ids are then derived (see the module docstring); a row whose id is null
    gets a derived id too. `attribute_columns` become the attributes map;
    `all_attributes` takes every column not mapped to a field instead.
    `ts_unit` applies to numeric timestamps ("auto" decides per value by
    magnitude); `ts_timezone` to timestamps without an offset.
    """

    customer_id_column: str = "customer_id"
    event_type_column: str = "event_type"
    event_type: str | None = None
    ts_column: str = "ts"
    event_id_column: str | None = "event_id"
    value_column: str | None = None
    attribute_columns: Sequence[str] = ()
    all_attributes: bool = False
    ts_unit: str = "auto"
    ts_timezone: str = _UTC

    def __post_init__(self) -> None:
        object.__setattr__(self, "attribute_columns", tuple(self.attribute_columns))
        _check_ts_options(self.ts_unit, self.ts_timezone)
        if self.event_type is not None and not self.event_type.strip():
            raise ReplayError("--event-type is empty: give the event type of every row")
        if self.all_attributes and self.attribute_columns:
            raise ReplayError("give either --attribute-columns or --all-attributes, not both")


@dataclass(frozen=True)
class SubscriptionMapping:
    """Which columns of a subscriptions table hold a subscription's life.

    Each row becomes `subscription_started` at `start_column` (attributes plan,
    mrr, channel, country when present) and, when `end_column` is set,
    `subscription_cancelled` at that time (attribute plan). Optional columns
    with their default names are used when the file has them.
    """

    customer_id_column: str = "customer_id"
    start_column: str = "started_at"
    end_column: str | None = "ended_at"
    plan_column: str | None = "plan"
    mrr_column: str | None = "mrr"
    channel_column: str | None = "channel"
    country_column: str | None = "country"
    ts_unit: str = "auto"
    ts_timezone: str = _UTC

    def __post_init__(self) -> None:
        _check_ts_options(self.ts_unit, self.ts_timezone)


Mapping = ReplayMapping | SubscriptionMapping


@dataclass
class ReplaySummary:
    """What a replay did; `invalid_by_reason` counts rows that broke the contract."""

    source: str
    topic: str
    files: int = 0
    rows_read: int = 0
    events_produced: int = 0
    invalid_by_reason: dict[str, int] = field(default_factory=dict)
    event_types: dict[str, int] = field(default_factory=dict)
    renamed_event_types: dict[str, str] = field(default_factory=dict)
    skipped_invalid: int = 0
    rejects_path: str | None = None
    seconds: float = 0.0

    @property
    def invalid(self) -> int:
        return sum(self.invalid_by_reason.values())

    def as_dict(self) -> dict:
        out = asdict(self)
        out["invalid"] = self.invalid
        out["rows_per_second"] = round(self.rows_read / self.seconds) if self.seconds else None
        return out


# ---------------------------------------------------------------------------
# Event types


def normalize_event_type(raw: str) -> str:
    """The contract name for a user's event type: `Page View` → `page_view`.

    Lowercase ASCII (accents dropped), runs of other characters → `_`, no
    leading/trailing `_`, an `e_` prefix when it does not start with a letter,
    at most 64 characters. A value with nothing left is returned unchanged, so
    the contract check rejects it instead of it being renamed to something made up.
    """
    ascii_text = unicodedata.normalize("NFKD", raw).encode("ascii", "ignore").decode()
    name = _NOT_IN_GRAMMAR.sub("_", ascii_text.lower()).strip("_")
    if not name:
        return raw
    if not "a" <= name[0] <= "z":
        name = "e_" + name
    return name[:64]


# ---------------------------------------------------------------------------
# Column conversions (one polars Series in, one out)


def _as_id(s: pl.Series) -> pl.Series:
    """Ids as text; integral floats (a pandas export of an int column with gaps) lose `.0`."""
    if s.dtype == pl.String:
        return s
    if s.dtype.is_float():
        finite = s.filter(s.is_finite())
        if finite.len() == s.drop_nulls().len() and (finite == finite.round(0)).all():
            return s.cast(pl.Int64, strict=False).cast(pl.String)
    return _as_text(s)


def _as_text(s: pl.Series) -> pl.Series:
    if s.dtype == pl.String:
        return s
    if s.dtype == pl.Binary:
        return s.bin.encode("base64")
    if s.dtype.is_nested():
        return _json_text(s)
    return s.cast(pl.String, strict=False)


def _json_text(s: pl.Series) -> pl.Series:
    """Each value as JSON text (for list/struct columns); nulls stay null."""
    encoded = pl.select(pl.struct(s.alias("v")).struct.json_encode()).to_series()
    text = encoded.str.strip_prefix('{"v":').str.strip_suffix("}")
    return text.zip_with(s.is_not_null(), _NULL_TEXT)


def _fallback(converted: pl.Series, raw: pl.Series) -> pl.Series:
    """`converted`, and the raw value as text where it could not be converted."""
    if converted.null_count() == raw.null_count():
        return converted
    return converted.zip_with(converted.is_not_null(), _as_text(raw))


def _epoch_ms(s: pl.Series, unit: str) -> pl.Series:
    """Epoch milliseconds (Int64) from numbers in `unit` ("auto": by magnitude, per value)."""
    exact = s.dtype.is_integer() and s.dtype != pl.UInt64
    x = pl.col("x")

    def to_ms(unit: str) -> pl.Expr:
        per_ms = {"s": 1 / 1000, "ms": 1, "us": 1000, "ns": 1_000_000}[unit]
        if exact:
            return x * 1000 if unit == "s" else x // per_ms
        return (x / per_ms).floor()

    if unit == "auto":
        magnitude = x.abs()
        expr = (
            pl.when(magnitude < 1e11)
            .then(to_ms("s"))
            .when(magnitude < 1e14)
            .then(to_ms("ms"))
            .when(magnitude < 1e17)
            .then(to_ms("us"))
            .otherwise(to_ms("ns"))
        )
    else:
        expr = to_ms(unit)
    frame = pl.DataFrame({"x": s.cast(pl.Int64 if exact else pl.Float64)})
    ms = frame.select(expr.cast(pl.Int64, strict=False)).to_series()
    return ms.zip_with(ms.is_between(_MS_MIN, _MS_MAX), _NULL_INT)


def _from_epoch_ms(ms: pl.Series) -> pl.Series:
    return pl.select(pl.from_epoch(ms, "ms").dt.replace_time_zone(_UTC)).to_series()


def _localize(naive: pl.Series, tz: str) -> pl.Series:
    """Naive datetimes read in `tz` → UTC. Ambiguous (DST fold) → earlier; nonexistent → null."""
    local = naive.dt.replace_time_zone(tz, ambiguous="earliest", non_existent="null")
    return local.dt.convert_time_zone(_UTC)


def _parse_ts_strings(s: pl.Series, unit: str, tz: str) -> pl.Series:
    """Datetimes (UTC) from text: epoch numbers, RFC 3339 / ISO 8601 with or without offset, dates.

    Each parser only sees the rows the earlier ones could not read, so a file
    in one format pays for one parse.
    """
    text = s.str.strip_chars()
    out = pl.repeat(None, s.len(), dtype=pl.Datetime("us", _UTC), eager=True)
    remaining = text.is_not_null()

    def parsers() -> Iterator:
        yield lambda t: _from_epoch_ms(_epoch_ms(t.str.to_integer(strict=False), unit))
        yield lambda t: _from_epoch_ms(_epoch_ms(t.cast(pl.Float64, strict=False), unit))
        for fmt in _AWARE_FORMATS:
            yield lambda t, fmt=fmt: t.str.to_datetime(
                fmt, strict=False, time_unit="us", time_zone=_UTC
            )
        for fmt in _NAIVE_FORMATS:
            yield lambda t, fmt=fmt: _localize(
                t.str.to_datetime(fmt, strict=False, time_unit="us"), tz
            )

    for parse in parsers():
        if not remaining.any():
            break
        index = remaining.arg_true()
        parsed = parse(text.gather(index)).cast(pl.Datetime("us", _UTC))
        ok = parsed.is_not_null()
        if ok.any():
            out = out.scatter(index.filter(ok), parsed.filter(ok))
            remaining = remaining.scatter(index.filter(ok), False)
    return out


def _to_utc(s: pl.Series, unit: str, tz: str) -> pl.Series:
    dtype = s.dtype
    if isinstance(dtype, pl.Datetime):
        return _localize(s, tz) if dtype.time_zone is None else s.dt.convert_time_zone(_UTC)
    if dtype == pl.Date:
        return _localize(s.cast(pl.Datetime("us")), tz)
    if dtype.is_numeric():
        return _from_epoch_ms(_epoch_ms(s, unit))
    if dtype == pl.Null:
        return pl.repeat(None, s.len(), dtype=pl.Datetime("us", _UTC), eager=True)
    return _parse_ts_strings(_as_text(s), unit, tz)


def _ts_text(s: pl.Series, unit: str, tz: str) -> pl.Series:
    """RFC 3339 UTC text with milliseconds; unreadable values pass through as text."""
    return _fallback(_to_utc(s, unit, tz).dt.strftime(_RFC3339_MS), s)


def _value(s: pl.Series) -> tuple[pl.Series, pl.Series | None]:
    """(finite floats or null, text for values that are not finite numbers or None)."""
    if s.dtype == pl.Null:
        return pl.repeat(None, s.len(), dtype=pl.Float64, eager=True), None
    if s.dtype.is_numeric() or s.dtype == pl.Boolean:
        number = s.cast(pl.Float64)
    else:
        number = _as_text(s).str.strip_chars().cast(pl.Float64, strict=False)
    missing = number.is_nan().fill_null(False) | s.is_null()
    number = number.fill_nan(None)
    finite = number.is_finite().fill_null(False)
    bad = ~finite & ~missing
    if not bad.any():
        return number, None
    return number.zip_with(finite, _NULL_FLOAT), _as_text(s).zip_with(bad, _NULL_TEXT)


def _attribute(s: pl.Series, from_text: bool) -> pl.Series | None:
    """An attribute column as Int64 / Float64 / String (contract: string or number); None if all null."""
    dtype = s.dtype
    if dtype == pl.Null or s.null_count() == s.len():
        return None
    if dtype == pl.String:
        return _text_attribute(s) if from_text else s
    if dtype.is_integer():
        return s if dtype == pl.UInt64 else s.cast(pl.Int64)
    if dtype.is_float() or dtype.is_decimal():
        number = s.cast(pl.Float64).fill_nan(None)
        if number.is_infinite().any():
            return number.cast(pl.String)
        return number
    return _as_text(s)


def _text_attribute(s: pl.Series) -> pl.Series:
    """Numbers from CSV text when every value of the batch is one (leading zeros stay text)."""
    nulls = s.null_count()
    if s.str.contains(_LEADING_ZERO).any():
        return s
    integers = s.str.to_integer(strict=False)
    if integers.null_count() == nulls:
        return integers
    if s.str.contains(_LONG_DIGITS).any():  # an id beyond Int64 would lose digits as a float
        return s
    floats = s.cast(pl.Float64, strict=False)
    if floats.null_count() == nulls and floats.is_finite().all():
        return floats
    return s


# ---------------------------------------------------------------------------
# Mapping → columns of one file


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _require(mapping: Mapping, name: str, columns: Sequence[str], source: str) -> str:
    column = getattr(mapping, name)
    if column not in columns:
        raise MappingError(
            f"{_option(name)} {column!r}: no such column in {source}; "
            f"its columns are: {', '.join(columns) or '(none)'}. "
            f"Pass {_option(name)} with one of them."
        )
    return column


def _optional(mapping: Mapping, name: str, columns: Sequence[str], source: str) -> str | None:
    """A column used when present; an explicitly chosen (non-default) name must exist."""
    column = getattr(mapping, name)
    if column is None:
        return None
    if column in columns:
        return column
    if column == getattr(type(mapping)(), name):
        return None
    return _require(mapping, name, columns, source)


@dataclass(frozen=True)
class _Bound:
    """A mapping resolved against one file's columns: the column for each field or None."""

    customer_id: str
    ts: str | None = None
    event_type: str | None = None
    event_id: str | None = None
    value: str | None = None
    attributes: tuple[str, ...] = ()
    start: str | None = None
    end: str | None = None
    plan: str | None = None
    mrr: str | None = None
    channel: str | None = None
    country: str | None = None

    def columns(self) -> list[str]:
        named = [
            self.customer_id,
            self.ts,
            self.event_type,
            self.event_id,
            self.value,
            self.start,
            self.end,
            self.plan,
            self.mrr,
            self.channel,
            self.country,
        ]
        return list(dict.fromkeys([c for c in named if c] + list(self.attributes)))


def _bind(mapping: Mapping, columns: Sequence[str], source: str) -> _Bound:
    columns = [c for c in columns if c != _ROW]
    customer_id = _require(mapping, "customer_id_column", columns, source)
    if isinstance(mapping, SubscriptionMapping):
        return _Bound(
            customer_id=customer_id,
            start=_require(mapping, "start_column", columns, source),
            end=_optional(mapping, "end_column", columns, source),
            plan=_optional(mapping, "plan_column", columns, source),
            mrr=_optional(mapping, "mrr_column", columns, source),
            channel=_optional(mapping, "channel_column", columns, source),
            country=_optional(mapping, "country_column", columns, source),
        )
    ts = _require(mapping, "ts_column", columns, source)
    event_type = None
    if mapping.event_type is None:
        event_type = _require(mapping, "event_type_column", columns, source)
    event_id = _optional(mapping, "event_id_column", columns, source)
    value = None
    if mapping.value_column is not None:
        value = _require(mapping, "value_column", columns, source)
    mapped = {customer_id, ts, event_type, event_id, value}
    if mapping.all_attributes:
        attributes = tuple(c for c in columns if c not in mapped)
    else:
        missing = [c for c in mapping.attribute_columns if c not in columns]
        if missing:
            raise MappingError(
                f"--attribute-columns {','.join(missing)}: no such column in {source}; "
                f"its columns are: {', '.join(columns) or '(none)'}"
            )
        attributes = tuple(c for c in mapping.attribute_columns if c not in mapped)
    return _Bound(
        customer_id=customer_id,
        ts=ts,
        event_type=event_type,
        event_id=event_id,
        value=value,
        attributes=attributes,
    )


# ---------------------------------------------------------------------------
# A batch → canonical columns → messages


# Messages are assembled as JSON text by polars: creating a Python object per
# field and row (to encode with msgspec) costs about twice as much for a batch.
# Strings are quoted as they are unless a batch has one that needs escaping;
# every message still goes through the contract check before it is produced.
_NEEDS_ESCAPE = r'["\\\x00-\x1f]'
_ENCODE = msgspec.json.encode


def _json_string(canon: pl.DataFrame, name: str) -> pl.Expr:
    column = pl.col(name)
    if canon[name].str.contains(_NEEDS_ESCAPE).any():
        encoded = pl.struct(column.alias("v")).struct.json_encode()
        return pl.when(column.is_not_null()).then(encoded.str.slice(5).str.strip_suffix("}"))
    return pl.concat_str([pl.lit('"'), column, pl.lit('"')])


def _json_value(canon: pl.DataFrame, name: str) -> pl.Expr:
    """JSON text of a String, integer or (finite) float column; null stays null."""
    if canon[name].dtype == pl.String:
        return _json_string(canon, name)
    return pl.col(name).cast(pl.String)


def _message_expr(canon: pl.DataFrame) -> pl.Expr:
    """One JSON object per canonical row; null fields and null attributes are left out."""
    parts: list[pl.Expr] = []

    def add(key: str, value: pl.Expr, nullable: bool) -> None:
        lead = pl.lit(("," if parts else "{") + f'"{key}":')
        if nullable:  # the whole field must vanish with its value
            parts.append(pl.concat_str([lead, value]))
        else:
            parts.extend([lead, value])

    for name in ("event_id", "customer_id", "event_type", "ts"):
        add(name, _json_value(canon, name), canon[name].null_count() > 0)
    if "value" in canon.columns:
        value = pl.coalesce(_json_value(canon, "value"), _json_value(canon, "value_text"))
        add("value", value, nullable=True)
    attributes = [c for c in canon.columns if c.startswith(_ATTR)]
    if attributes:
        pairs = [
            pl.concat_str([pl.lit(_ENCODE(c[len(_ATTR) :]).decode() + ":"), _json_value(canon, c)])
            for c in attributes
        ]
        joined = pl.concat_str(pairs, separator=",", ignore_nulls=True)
        add(
            "attributes",
            pl.when(joined != "").then(pl.concat_str([pl.lit("{"), joined, pl.lit("}")])),
            True,
        )
    parts.append(pl.lit("}"))
    return pl.concat_str(parts, ignore_nulls=True)


def _id_prefix(source: str) -> str:
    return hashlib.blake2b(source.encode(), digest_size=8).hexdigest()


def _row_numbers(frame: pl.DataFrame, first_row: int) -> pl.Series:
    if _ROW in frame.columns:
        return frame[_ROW].cast(pl.Int64)
    return pl.int_range(first_row, first_row + frame.height, dtype=pl.Int64, eager=True)


def _derived_ids(prefix: str, rows: pl.Series, suffix: str = "") -> pl.Series:
    return pl.select(
        pl.concat_str([pl.lit(prefix + "-"), rows.cast(pl.String), pl.lit(suffix)])
    ).to_series()


def _constant(value: str | None, n: int) -> pl.Series:
    return pl.repeat(value, n, dtype=pl.String, eager=True)


def _event_columns(
    frame: pl.DataFrame,
    mapping: ReplayMapping,
    bound: _Bound,
    prefix: str,
    first_row: int,
    from_text: bool,
) -> pl.DataFrame:
    n = frame.height
    rows = _row_numbers(frame, first_row)
    ids = _derived_ids(prefix, rows)
    if bound.event_id is not None:
        ids = _as_id(frame[bound.event_id]).zip_with(frame[bound.event_id].is_not_null(), ids)
    if bound.event_type is None:
        event_type = _constant(mapping.event_type, n)
    else:
        event_type = _as_text(frame[bound.event_type])
    columns = {
        "row": rows,
        "customer_id": _as_id(frame[bound.customer_id]),
        "event_id": ids,
        "event_type": event_type,
        "ts": _ts_text(frame[bound.ts], mapping.ts_unit, mapping.ts_timezone),
    }
    if bound.value is not None:
        number, text = _value(frame[bound.value])
        columns["value"] = number
        columns["value_text"] = _constant(None, n) if text is None else text
    for name in bound.attributes:
        converted = _attribute(frame[name], from_text)
        if converted is not None:
            columns[_ATTR + name] = converted
    return pl.DataFrame(columns)


def _subscription_columns(
    frame: pl.DataFrame,
    mapping: SubscriptionMapping,
    bound: _Bound,
    prefix: str,
    first_row: int,
    from_text: bool,
) -> pl.DataFrame:
    n = frame.height
    rows = _row_numbers(frame, first_row)
    customer_id = _as_id(frame[bound.customer_id])
    attributes = {}
    for key, column in (
        ("plan", bound.plan),
        ("mrr", bound.mrr),
        ("channel", bound.channel),
        ("country", bound.country),
    ):
        converted = None if column is None else _attribute(frame[column], from_text)
        if converted is not None:
            attributes[_ATTR + key] = converted
    started = pl.DataFrame(
        {
            "row": rows,
            "customer_id": customer_id,
            "event_id": _derived_ids(prefix, rows, "-started"),
            "event_type": _constant(SUBSCRIPTION_STARTED, n),
            "ts": _ts_text(frame[bound.start], mapping.ts_unit, mapping.ts_timezone),
            **attributes,
            "_order": pl.int_range(0, 2 * n, 2, dtype=pl.Int64, eager=True),
        }
    )
    if bound.end is None:
        return started.drop("_order")
    end = frame[bound.end]
    ended = end.is_not_null()
    if end.dtype == pl.String:  # "" in JSON means open, like an empty CSV field
        ended = ended & (end.str.strip_chars() != "")
    cancelled = pl.DataFrame(
        {
            "row": rows,
            "customer_id": customer_id,
            "event_id": _derived_ids(prefix, rows, "-cancelled"),
            "event_type": _constant(SUBSCRIPTION_CANCELLED, n),
            "ts": _ts_text(frame[bound.end], mapping.ts_unit, mapping.ts_timezone),
            **{k: v for k, v in attributes.items() if k == _ATTR + "plan"},
            "_order": pl.int_range(1, 2 * n + 1, 2, dtype=pl.Int64, eager=True),
        }
    ).filter(ended)
    return pl.concat([started, cancelled], how="diagonal").sort("_order").drop("_order")


@dataclass
class _Built:
    """The messages of one batch, in order, and the canonical rows they were made from."""

    keys: list[bytes | None]
    values: list[bytes]
    canon: pl.DataFrame


class _MessageBuilder:
    """Turns batches of one or more files into messages; remembers event-type renames."""

    def __init__(self, mapping: Mapping) -> None:
        self.mapping = mapping
        self.renamed: dict[str, str] = {}
        self._names: dict[str, str] = {}

    def bind(self, columns: Sequence[str], source: str) -> _Bound:
        return _bind(self.mapping, columns, source)

    def canonical(
        self,
        frame: pl.DataFrame,
        bound: _Bound,
        source: str,
        first_row: int = 0,
        from_text: bool = False,
    ) -> pl.DataFrame:
        """Columns row, customer_id, event_id, event_type, ts (text), [value, value_text], attr:*."""
        for column in bound.columns():
            if column not in frame.columns:  # a JSON Lines batch in which no row has this key
                frame = frame.with_columns(pl.lit(None).alias(column))
        prefix = _id_prefix(source)
        if isinstance(self.mapping, SubscriptionMapping):
            canon = _subscription_columns(frame, self.mapping, bound, prefix, first_row, from_text)
        else:
            canon = _event_columns(frame, self.mapping, bound, prefix, first_row, from_text)
        return canon.with_columns(self._normalize(canon["event_type"]))

    def _normalize(self, event_type: pl.Series) -> pl.Series:
        renames = {}
        for raw in event_type.unique().drop_nulls().to_list():
            name = self._names.get(raw)
            if name is None:
                name = raw if EVENT_TYPE_RE.fullmatch(raw) else normalize_event_type(raw)
                self._names[raw] = name
                if name != raw:
                    self.renamed[raw] = name
            if name != raw:
                renames[raw] = name
        return event_type.replace(renames) if renames else event_type

    def build(
        self,
        frame: pl.DataFrame,
        bound: _Bound,
        source: str,
        first_row: int = 0,
        from_text: bool = False,
    ) -> _Built:
        canon = self.canonical(frame, bound, source, first_row, from_text)
        encoded = canon.select(
            key=pl.col("customer_id").cast(pl.Binary), value=_message_expr(canon).cast(pl.Binary)
        )
        return _Built(encoded["key"].to_list(), encoded["value"].to_list(), canon)


def rows_to_messages(
    frame: pl.DataFrame, mapping: Mapping, *, source: str = "<frame>", first_row: int = 0
) -> list[tuple[bytes | None, bytes]]:
    """(key, value) messages for the rows of `frame`, in row order, not validated.

    `source` and `first_row` name where the rows came from; derived event ids
    depend on both (see the module docstring). CSV-style text numbers are not
    inferred here: pass typed columns.
    """
    builder = _MessageBuilder(mapping)
    bound = builder.bind(frame.columns, source)
    built = builder.build(frame, bound, source, first_row)
    return list(zip(built.keys, built.values, strict=True))


# ---------------------------------------------------------------------------
# Reading files in bounded batches


@dataclass(frozen=True)
class _Source:
    path: Path
    name: str  # relative to the root the user named; what derived ids hash
    fmt: str
    hive: tuple[tuple[str, str], ...] = ()


def _format_of(path: Path, fmt: str | None) -> str | None:
    return fmt or _SUFFIX_FORMATS.get(path.suffix.lower())


def _glob_root(pattern: str) -> Path:
    parts = Path(pattern).parts
    root = []
    for part in parts:
        if _GLOB_CHARS & set(part):
            break
        root.append(part)
    return Path(*root) if root else Path(".")


def _hive(name: str) -> tuple[tuple[str, str], ...]:
    """`key=value` directory names of a partitioned data set (Hive style) as columns."""
    pairs = []
    for part in Path(name).parts[:-1]:
        key, sep, value = part.partition("=")
        if sep and key:
            pairs.append((key, value))
    return tuple(pairs)


def resolve_sources(path: str | os.PathLike[str], fmt: str | None = None) -> list[_Source]:
    """The files to read for `path` (a file, a directory or a glob), in name order."""
    if fmt is not None and fmt not in FORMATS:
        raise ReplayError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    text = os.fspath(path)
    if _GLOB_CHARS & set(text):
        root = _glob_root(text)
        files = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
        if not files:
            raise ReplayError(f"no file matches {text}: check the pattern (quote it in the shell)")
    elif Path(text).is_dir():
        root = Path(text)
        files = sorted(
            p
            for p in root.rglob("*")
            if p.is_file()
            and not any(part.startswith((".", "_")) for part in p.relative_to(root).parts)
            and _SUFFIX_FORMATS.get(p.suffix.lower()) is not None
            and (fmt is None or _SUFFIX_FORMATS[p.suffix.lower()] == fmt)
        )
        if not files:
            raise ReplayError(
                f"{text} has no {fmt or 'CSV, JSON Lines or Parquet'} files "
                f"({', '.join(sorted(_SUFFIX_FORMATS))})"
            )
    elif Path(text).is_file():
        root = Path(text).parent
        files = [Path(text)]
    else:
        raise ReplayError(
            f"{text} does not exist: give the path of a CSV, JSON Lines or Parquet file"
        )

    sources = []
    for file in files:
        file_fmt = _format_of(file, fmt)
        if file_fmt is None:
            raise ReplayError(
                f"cannot tell the format of {file} from its extension: "
                f"pass --format ({', '.join(FORMATS)})"
            )
        name = file.relative_to(root).as_posix() if file.is_relative_to(root) else file.name
        sources.append(_Source(file, name, file_fmt, _hive(name)))
    formats = {s.fmt for s in sources}
    if len(formats) > 1:
        raise ReplayError(
            f"{text} mixes formats ({', '.join(sorted(formats))}): pass --format to pick one"
        )
    return sources


def _csv_separator(source: _Source) -> str:
    return "\t" if source.path.suffix.lower() == ".tsv" else ","


def _file_columns(source: _Source) -> list[str]:
    """The file's columns (JSON Lines: the keys of its first block, since keys vary by line)."""
    try:
        if source.fmt == "csv":
            scan = pl.scan_csv(source.path, infer_schema=False, separator=_csv_separator(source))
            names = scan.collect_schema().names()
        elif source.fmt == "parquet":
            names = list(pl.read_parquet_schema(source.path))
        else:
            block = next(_jsonl_blocks(source.path), b"")
            names = [c for c in _jsonl_frame(block, 0)[0].columns if c != _ROW]
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise ReplayError(f"cannot read {source.path} as {source.fmt}: {exc}") from exc
    return names + [k for k, _ in source.hive if k not in names]


def _with_hive(frame: pl.DataFrame, source: _Source) -> pl.DataFrame:
    extra = [pl.lit(v, dtype=pl.String).alias(k) for k, v in source.hive if k not in frame.columns]
    return frame.with_columns(extra) if extra else frame


def _scan_batches(
    source: _Source, columns: list[str], batch_rows: int, limit: int | None
) -> Iterator[pl.DataFrame]:
    if source.fmt == "csv":
        scan = pl.scan_csv(source.path, infer_schema=False, separator=_csv_separator(source))
    else:
        scan = pl.scan_parquet(source.path, hive_partitioning=False)
    present = scan.collect_schema().names()
    scan = scan.select([c for c in columns if c in present])  # read only mapped columns
    if limit is not None:
        scan = scan.head(limit)
    yield from scan.collect_batches(chunk_size=batch_rows)


def _jsonl_blocks(path: Path) -> Iterator[bytes]:
    """Whole lines of `path`, about `_JSONL_BLOCK_BYTES` at a time."""
    with open(path, "rb") as f:
        head = f.read(_JSONL_BLOCK_BYTES)
        stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
        if stripped.startswith(b"["):
            raise ReplayError(
                f"{path} is a JSON array, not JSON Lines: convert it with "
                f"`jq -c '.[]' {path} > {path.with_suffix('.jsonl')}` and replay that"
            )
        rest = b""
        block = head.removeprefix(b"\xef\xbb\xbf")
        while block:
            block = rest + block
            cut = block.rfind(b"\n") + 1
            if cut:
                yield block[:cut]
                rest = block[cut:]
            else:
                rest = block
            block = f.read(_JSONL_BLOCK_BYTES)
        if rest.strip():
            yield rest


def _jsonl_frame(block: bytes, first_row: int) -> tuple[pl.DataFrame, list[tuple[int, bytes]]]:
    """Rows of a block of JSON lines, and the (row, line) of lines that are not JSON objects."""
    try:
        frame = pl.read_ndjson(io.BytesIO(block), infer_schema_length=None)
        return frame.with_row_index(_ROW, offset=first_row), []
    except pl.exceptions.PolarsError:
        pass
    # Slow path, only for a block with a broken line: find the lines that do not
    # parse and keep them as messages so the contract check counts them.
    good, rows, broken = [], [], []
    lines = [line for line in block.split(b"\n") if line.strip()]
    for i, line in enumerate(lines, start=first_row):
        try:
            if not isinstance(msgspec.json.decode(line), dict):
                raise msgspec.DecodeError("not an object")
            good.append(line)
            rows.append(i)
        except msgspec.DecodeError:
            broken.append((i, line))
    if not good:
        return pl.DataFrame({_ROW: pl.Series([], dtype=pl.Int64)}), broken
    frame = pl.read_ndjson(io.BytesIO(b"\n".join(good)), infer_schema_length=None)
    return frame.with_columns(pl.Series(_ROW, rows, dtype=pl.Int64)), broken


@dataclass
class _Batch:
    frame: pl.DataFrame
    first_row: int
    broken: list[tuple[int, bytes]] = field(default_factory=list)


def _read_batches(
    source: _Source, columns: list[str], batch_rows: int, limit: int | None
) -> Iterator[_Batch]:
    """Batches of about `batch_rows` rows (JSON Lines: one per 16 MB block), up to `limit` rows."""
    row = 0
    try:
        if source.fmt == "jsonl":
            for block in _jsonl_blocks(source.path):
                frame, broken = _jsonl_frame(block, row)
                n = frame.height + len(broken)
                if limit is not None and row + n > limit:
                    frame = frame.filter(pl.col(_ROW) < limit)
                    broken = [(r, line) for r, line in broken if r < limit]
                    n = limit - row
                yield _Batch(_with_hive(frame, source), row, broken)
                row += n
                if limit is not None and row >= limit:
                    return
        else:
            for frame in _scan_batches(source, columns, batch_rows, limit):
                if frame.height:
                    yield _Batch(_with_hive(frame, source), row)
                    row += frame.height
    except pl.exceptions.PolarsError as exc:
        raise ReplayError(
            f"cannot read {source.path} as {source.fmt} (after row {row}): {exc}"
        ) from exc


# ---------------------------------------------------------------------------
# Replay


class _Rejects:
    """JSON lines of the rows not produced; written to a temporary name, renamed at the end."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self._tmp = path.with_name(path.name + ".tmp")
        self._file = None

    def write(
        self, source: str, row: int | None, key: bytes | None, value: bytes, why: Rejection
    ) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self._tmp, "wb")  # noqa: SIM115 - closed in close()
        record = {
            "source": source,
            "row": row,
            "reason": why.reason,
            "detail": why.detail,
            "key": None if key is None else key.decode("utf-8", "replace"),
            "value": value.decode("utf-8", "replace"),
        }
        self._file.write(msgspec.json.encode(record) + b"\n")
        self.count += 1

    def close(self, keep: bool) -> str | None:
        """Rename the file into place (or delete it when the replay failed); its path or None."""
        if self._file is None:
            return None
        self._file.close()
        if not keep:
            self._tmp.unlink(missing_ok=True)
            return None
        os.replace(self._tmp, self.path)
        return str(self.path)


def default_rejects_path(path: str | os.PathLike[str]) -> Path:
    """Where `--skip-invalid` writes rejected rows unless told: var/replay/<name>.rejects.jsonl."""
    name = Path(os.fspath(path).rstrip("/*")).name
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_.") or "replay"
    return DEFAULT_REJECTS_DIR / f"{stem}.rejects.jsonl"


@dataclass
class _BuiltBatch:
    """One batch's messages (JSON Lines lines that are not objects last, as they are)."""

    source: _Source
    batch: _Batch
    keys: list[bytes | None]
    values: list[bytes]
    canon: pl.DataFrame | None

    def row_of(self, index: int) -> int:
        """The file row message `index` came from."""
        built = 0 if self.canon is None else self.canon.height
        if index < built:
            return self.canon["row"][index]
        return self.batch.broken[index - built][0]

    def event_type_of(self, index: int) -> str | None:
        if self.canon is None or index >= self.canon.height:
            return None
        return self.canon["event_type"][index]


class _Reader:
    """Reads the sources in order and builds each batch's messages."""

    def __init__(self, sources: list[_Source], mapping: Mapping) -> None:
        self.sources = sources
        self.builder = _MessageBuilder(mapping)
        self._bound: dict[_Source, _Bound] = {}

    def bind(self, source: _Source) -> _Bound:
        """The mapping against `source`'s columns; `MappingError` if a mapped one is missing."""
        if source not in self._bound:
            self._bound[source] = self.builder.bind(_file_columns(source), source.name)
        return self._bound[source]

    def batches(self, limit: int | None, batch_rows: int) -> Iterator[_BuiltBatch]:
        rows = 0
        for source in self.sources:
            remaining = None if limit is None else limit - rows
            if remaining is not None and remaining <= 0:
                return
            bound = self.bind(source)
            for batch in _read_batches(source, bound.columns(), batch_rows, remaining):
                keys: list[bytes | None] = []
                values: list[bytes] = []
                canon = None
                if batch.frame.height:
                    from_text = source.fmt == "csv"
                    built = self.builder.build(
                        batch.frame, bound, source.name, batch.first_row, from_text
                    )
                    keys, values, canon = built.keys, built.values, built.canon
                # Lines of a JSON Lines file that are not JSON objects travel as they
                # are: the contract check counts them, the extract quarantines their bytes.
                for _, line in batch.broken:
                    keys.append(None)
                    values.append(line)
                rows += batch.frame.height + len(batch.broken)
                yield _BuiltBatch(source, batch, keys, values, canon)


def iter_messages(
    path: str | os.PathLike[str],
    mapping: Mapping | None = None,
    *,
    fmt: str | None = None,
    limit: int | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> Iterator[list[tuple[bytes | None, bytes]]]:
    """The (key, value) messages `replay_file` would produce for `path`, batch by batch.

    Reads the file the same way but neither validates nor touches Kafka: a dry
    run, and what tests use.
    """
    reader = _Reader(resolve_sources(path, fmt), mapping or ReplayMapping())
    for built in reader.batches(limit, batch_rows):
        yield list(zip(built.keys, built.values, strict=True))


class _Counts:
    """Running totals of a replay."""

    def __init__(self) -> None:
        self.rows = 0
        self.produced = 0
        self.invalid: Counter[str] = Counter()
        self.event_types: Counter[str] = Counter()


def _produce_batch(
    built: _BuiltBatch,
    producer: EventProducer,
    topic: str,
    now: int,
    rejects: _Rejects | None,
    counts: _Counts,
) -> None:
    """Check and produce one batch; with `rejects`, invalid messages go there instead."""
    keys, values = built.keys, built.values
    if built.canon is not None:
        types = built.canon["event_type"].drop_nulls().value_counts()
        counts.event_types.update(dict(zip(*types.get_columns(), strict=True)))
    # the extract's own batch validator: same rules, a fraction of the cost
    bad = [
        (i, Rejection(reason, detail))
        for i, reason, detail in validate_batch(values, now=now).rejects
    ]
    for _, check in bad:
        counts.invalid[check.reason] += 1
    if rejects is not None and bad:
        for i, check in bad:
            event_type = built.event_type_of(i)
            if event_type is not None:
                counts.event_types[event_type] -= 1
            rejects.write(built.source.name, built.row_of(i), keys[i], values[i], check)
        dropped = {i for i, _ in bad}
        keys = [k for i, k in enumerate(keys) if i not in dropped]
        values = [v for i, v in enumerate(values) if i not in dropped]
    counts.produced += producer.send_all(topic, zip(keys, values, strict=True))
    counts.rows += built.batch.frame.height + len(built.batch.broken)


def replay_file(
    settings: KafkaSettings,
    topic: str,
    path: str | os.PathLike[str],
    mapping: Mapping | None = None,
    *,
    fmt: str | None = None,
    partitions: int = DEFAULT_PARTITIONS,
    skip_invalid: bool = False,
    rejects_path: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    progress: bool = False,
) -> ReplaySummary:
    """Produce the events of `path` (a file, directory or glob) to `topic`, keyed by customer id.

    Creates the topic when missing (with `partitions`). Every message is checked
    with the contract's `validate` first: by default invalid ones are produced
    anyway and counted (the extract quarantines them with their bytes); with
    `skip_invalid` they are written to `rejects_path` (JSON lines; default
    `default_rejects_path(path)`) instead. A bad path, format or mapping of the
    first file raises `ReplayError` / `MappingError` before the cluster is contacted.
    """
    if limit is not None and limit < 1:
        raise ReplayError(f"--limit must be at least 1 (got {limit})")
    if batch_rows < 1:
        raise ReplayError(f"batch_rows must be at least 1 (got {batch_rows})")
    started = time.perf_counter()
    reader = _Reader(resolve_sources(path, fmt), mapping or ReplayMapping())
    reader.bind(reader.sources[0])
    rejects = None
    if skip_invalid:
        rejects = _Rejects(Path(rejects_path) if rejects_path else default_rejects_path(path))
    ensure_topic(settings, topic, partitions)

    counts = _Counts()
    now = now_ms()
    done = False
    bar = tqdm(total=limit, unit=" rows", unit_scale=True, disable=not progress, file=sys.stderr)
    try:
        with EventProducer(settings) as producer:
            for built in reader.batches(limit, batch_rows):
                _produce_batch(built, producer, topic, now, rejects, counts)
                bar.update(built.batch.frame.height + len(built.batch.broken))
        done = True
    finally:
        bar.close()
        rejects_written = rejects.close(keep=done) if rejects is not None else None
    return ReplaySummary(
        source=os.fspath(path),
        topic=topic,
        files=len(reader.sources),
        rows_read=counts.rows,
        events_produced=counts.produced,
        invalid_by_reason=dict(sorted(counts.invalid.items())),
        event_types={t: n for t, n in counts.event_types.most_common() if n > 0},
        renamed_event_types=dict(sorted(reader.builder.renamed.items())),
        skipped_invalid=rejects.count if rejects is not None else 0,
        rejects_path=rejects_written,
        seconds=round(time.perf_counter() - started, 3),
    )


__all__ = [
    "FORMATS",
    "TS_UNITS",
    "MappingError",
    "ReplayError",
    "ReplayMapping",
    "ReplaySummary",
    "SubscriptionMapping",
    "default_rejects_path",
    "iter_messages",
    "normalize_event_type",
    "replay_file",
    "resolve_sources",
    "rows_to_messages",
]
