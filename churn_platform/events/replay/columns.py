"""Column conversions for replay: one polars Series in, one out (ids, times, values, attributes)."""

from __future__ import annotations

from collections.abc import Iterator

import polars as pl

from churn_platform.events.replay.options import UTC

RFC3339_MS = "%Y-%m-%dT%H:%M:%S%.3fZ"
# Epoch-ms bounds polars can format (years 1..9999); outside them a value is unreadable.
_MS_MIN = -62_135_596_800_000
_MS_MAX = 253_402_300_799_999
# chrono's `%+` (RFC 3339 / ISO 8601 with an offset) parses faster than the spelled-out
# format (docs/benchmarks.md, Replay) and reads what it reads the same way; the others
# catch the rest.
_AWARE_FORMATS = ("%+", "%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%.f%#z")
_NUMBER = r"^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$"
_NAIVE_FORMATS = ("%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d")
_LEADING_ZERO = r"^[+-]?0[0-9]"
_LONG_DIGITS = r"^[+-]?[0-9]{16,}$"
_NULL_INT = pl.Series([None], dtype=pl.Int64)
_NULL_FLOAT = pl.Series([None], dtype=pl.Float64)
_NULL_TEXT = pl.Series([None], dtype=pl.String)
UTC_DATETIME = pl.Datetime("us", UTC)


def as_id(s: pl.Series) -> pl.Series:
    """Ids as text; integral floats (a pandas export of an int column with gaps) lose `.0`."""
    if s.dtype == pl.String:
        return s
    if s.dtype.is_float():
        finite = s.filter(s.is_finite())
        if finite.len() == s.drop_nulls().len() and (finite == finite.round(0)).all():
            return s.cast(pl.Int64, strict=False).cast(pl.String)
    return as_text(s)


def as_text(s: pl.Series) -> pl.Series:
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


def fallback(converted: pl.Series, raw: pl.Series) -> pl.Series:
    """`converted`, and the raw value as text where it could not be converted."""
    if converted.null_count() == raw.null_count():
        return converted
    return converted.zip_with(converted.is_not_null(), as_text(raw))


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
    return pl.select(pl.from_epoch(ms, "ms").dt.replace_time_zone(UTC)).to_series()


def _localize(naive: pl.Series, tz: str) -> pl.Series:
    """Naive datetimes read in `tz` → UTC. Ambiguous (DST fold) → earlier; nonexistent → null."""
    local = naive.dt.replace_time_zone(tz, ambiguous="earliest", non_existent="null")
    return local.dt.convert_time_zone(UTC)


def _parse_ts_strings(s: pl.Series, unit: str, tz: str) -> pl.Series:
    """Datetimes (UTC) from text: epoch numbers, RFC 3339 / ISO 8601 with or without offset, dates.

    Each parser only sees the rows the earlier ones could not read, so a file
    in one format pays for one parse; what the first value looks like decides
    whether numbers or dates are tried first (no text reads as both).
    """
    text = s.str.strip_chars()

    def numbers() -> Iterator:
        yield lambda t: _from_epoch_ms(_epoch_ms(t.str.to_integer(strict=False), unit))
        yield lambda t: _from_epoch_ms(_epoch_ms(t.cast(pl.Float64, strict=False), unit))

    def dates() -> Iterator:
        for fmt in _AWARE_FORMATS:
            yield lambda t, fmt=fmt: t.str.to_datetime(
                fmt, strict=False, time_unit="us", time_zone=UTC
            )
        for fmt in _NAIVE_FORMATS:
            yield lambda t, fmt=fmt: _localize(
                t.str.to_datetime(fmt, strict=False, time_unit="us"), tz
            )

    first = text.drop_nulls().head(1)
    numeric_first = first.len() == 0 or first.str.contains(_NUMBER).all()
    first_parse, *others = [*numbers(), *dates()] if numeric_first else [*dates(), *numbers()]
    out = first_parse(text).cast(UTC_DATETIME)  # the whole column: no gather, no scatter
    remaining = text.is_not_null() & out.is_null()
    for parse in others:
        if not remaining.any():
            break
        index = remaining.arg_true()
        parsed = parse(text.gather(index)).cast(UTC_DATETIME)
        ok = parsed.is_not_null()
        if ok.any():
            out = out.scatter(index.filter(ok), parsed.filter(ok))
            remaining = remaining.scatter(index.filter(ok), False)
    return out


def _with_format(s: pl.Series, fmt: str, tz: str) -> pl.Series:
    """Datetimes (UTC) read with one strftime-style format: `19970101` with `%Y%m%d`."""
    if s.dtype.is_float():  # 19970101.0 from a pandas export of an int column with gaps
        s = as_id(s)
    parsed = as_text(s).str.strip_chars().str.to_datetime(fmt, strict=False, time_unit="us")
    if isinstance(parsed.dtype, pl.Datetime) and parsed.dtype.time_zone is not None:
        return parsed.dt.convert_time_zone(UTC)  # the format had an offset (%z)
    return _localize(parsed, tz)


def to_utc(s: pl.Series, unit: str, tz: str, fmt: str | None = None) -> pl.Series:
    """Datetimes (us, UTC) from any column a user may have; null where unreadable.

    Typed datetimes and dates are taken as they are (`fmt` is for text and numbers).
    """
    dtype = s.dtype
    if isinstance(dtype, pl.Datetime):
        utc = _localize(s, tz) if dtype.time_zone is None else s.dt.convert_time_zone(UTC)
        return utc.cast(UTC_DATETIME)
    if dtype == pl.Date:
        return _localize(s.cast(pl.Datetime("us")), tz)
    if dtype == pl.Null:
        return pl.repeat(None, s.len(), dtype=UTC_DATETIME, eager=True)
    if fmt is not None:
        return _with_format(s, fmt, tz)
    if dtype.is_numeric():
        return _from_epoch_ms(_epoch_ms(s, unit)).cast(UTC_DATETIME)
    return _parse_ts_strings(as_text(s), unit, tz)


def blank(s: pl.Series) -> pl.Series:
    """True where a value is missing: null, or text that is empty or only spaces."""
    if s.dtype == pl.String:
        return s.is_null() | (s.str.strip_chars() == "")
    return s.is_null()


def value_column(s: pl.Series) -> tuple[pl.Series, pl.Series | None]:
    """(finite floats or null, text for values that are not finite numbers or None)."""
    if s.dtype == pl.Null:
        return pl.repeat(None, s.len(), dtype=pl.Float64, eager=True), None
    if s.dtype.is_numeric() or s.dtype == pl.Boolean:
        number = s.cast(pl.Float64)
    else:
        number = as_text(s).str.strip_chars().cast(pl.Float64, strict=False)
    missing = number.is_nan().fill_null(False) | s.is_null()
    number = number.fill_nan(None)
    finite = number.is_finite().fill_null(False)
    bad = ~finite & ~missing
    if not bad.any():
        return number, None
    return number.zip_with(finite, _NULL_FLOAT), as_text(s).zip_with(bad, _NULL_TEXT)


def attribute(s: pl.Series, from_text: bool) -> pl.Series | None:
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
    return as_text(s)


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
