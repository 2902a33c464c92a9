"""What a user tells replay about a file: which columns hold what, and how to read them."""

from __future__ import annotations

import os
import zoneinfo
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

FORMATS = ("csv", "jsonl", "parquet")
TS_UNITS = ("auto", "s", "ms", "us", "ns")
UNMATCHED_CUSTOMERS = ("error", "keep", "drop")
# `--separator whitespace`: columns separated by runs of spaces or tabs, as in
# fixed-width text exports (CDNOW_master.txt); leading and trailing blanks ignored.
WHITESPACE = "whitespace"
_SEPARATOR_NAMES = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}
UTC = "UTC"


class ReplayError(ValueError):
    """The input file or the options are wrong; the message says what to change."""


class MappingError(ReplayError):
    """A mapped column is missing from the file; the message names the option and the columns."""


def _check_ts_options(ts_unit: str, ts_timezone: str, ts_format: str | None) -> None:
    if ts_unit not in TS_UNITS:
        raise ReplayError(f"--ts-unit {ts_unit!r} is not one of {', '.join(TS_UNITS)}")
    try:
        zoneinfo.ZoneInfo(ts_timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ReplayError(
            f"--ts-timezone {ts_timezone!r} is not a known time zone "
            "(use an IANA name such as UTC or Europe/Berlin)"
        ) from exc
    if ts_format is not None:
        check_ts_format(ts_format)


def check_ts_format(ts_format: str) -> None:
    """`ReplayError` unless `ts_format` is a strftime-style format polars can parse with."""
    hint = "use strftime codes, e.g. %Y%m%d, %d/%m/%Y %H:%M or %Y-%m-%dT%H:%M:%S%z"
    if "%" not in ts_format:
        raise ReplayError(f"--ts-format {ts_format!r} has no % code: {hint}")
    try:
        pl.Series(["2000-01-01"]).str.to_datetime(ts_format, strict=False, time_unit="us")
    except pl.exceptions.PolarsError as exc:
        reason = str(exc).splitlines()[0]
        raise ReplayError(f"--ts-format {ts_format!r} is not usable ({reason}): {hint}") from exc


def parse_separator(text: str) -> str:
    """The CSV separator a user wrote: one character, a name (tab, comma, …) or `whitespace`."""
    if text.lower() == WHITESPACE:
        return WHITESPACE
    separator = _SEPARATOR_NAMES.get(text.lower(), text)
    if len(separator.encode()) != 1 or separator in '\r\n"':
        raise ReplayError(
            f"--separator {text!r}: give one character (e.g. ';' or '|'), tab, or whitespace "
            "(columns separated by runs of spaces)"
        )
    return separator


@dataclass(frozen=True)
class ReplayMapping:
    """Which columns of an event file hold the contract's fields.

    `event_type` is a fixed type for files of one kind (then `event_type_column`
    is ignored). `event_id_column` may be absent when it has its default name:
    ids are then derived (see the package docstring); a row whose id is null
    gets a derived id too. `attribute_columns` become the attributes map;
    `all_attributes` takes every column not mapped to a field instead.
    `ts_format` (strftime-like, e.g. `%Y%m%d`) reads the time column with that
    format only; without it, text is read as RFC 3339 / ISO 8601 / epoch numbers
    and numbers by `ts_unit` ("auto" decides per value by magnitude).
    `ts_timezone` applies to times without an offset.
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
    ts_timezone: str = UTC
    ts_format: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "attribute_columns", tuple(self.attribute_columns))
        _check_ts_options(self.ts_unit, self.ts_timezone, self.ts_format)
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
    with their default names are used when the file has them. `ts_format`,
    `ts_unit` and `ts_timezone` read start and end as `ReplayMapping` reads ts.
    """

    customer_id_column: str = "customer_id"
    start_column: str = "started_at"
    end_column: str | None = "ended_at"
    plan_column: str | None = "plan"
    mrr_column: str | None = "mrr"
    channel_column: str | None = "channel"
    country_column: str | None = "country"
    ts_unit: str = "auto"
    ts_timezone: str = UTC
    ts_format: str | None = None

    def __post_init__(self) -> None:
        _check_ts_options(self.ts_unit, self.ts_timezone, self.ts_format)


Mapping = ReplayMapping | SubscriptionMapping


@dataclass(frozen=True)
class ReplayInput:
    """One file (or directory, or glob) to replay and how to read it.

    `fmt` and `separator` default to what the file's extension says (CSV: `,`,
    `.tsv`: tab). `options` renames the command-line options error messages
    name, for a file whose options are spelled differently (the subscriptions
    file of a two-file replay: `customer_id_column` →
    `--subscriptions-customer-id-column`).
    """

    path: str | os.PathLike[str]
    mapping: Mapping
    fmt: str | None = None
    separator: str | None = None
    options: tuple[tuple[str, str], ...] = ()

    def option(self, field_name: str) -> str:
        return dict(self.options).get(field_name, "--" + field_name.replace("_", "-"))
