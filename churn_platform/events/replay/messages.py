"""A batch of a user's rows → contract events: canonical columns, JSON messages, suspects.

`MessageBuilder.build` turns one batch into the (key, value) messages of its
events, in row order, with polars doing the work on whole columns: creating
a Python object per field and row (to encode with msgspec) costs several
times as much. Strings are quoted as they are unless a batch has one that
needs escaping. Beside each message it computes whether the message *may*
break the contract (`Built.suspects`): the columns hold everything the
contract's rules look at, so a row whose columns pass every rule is a valid
event, and only the suspects are decoded and checked with the contract's own
`validate` (which gives the reason). Decoding every message again cost more
than building it (docs/benchmarks.md, Replay), and a replay is bound by
how fast one thread can hand messages to the producer. The test
`test_the_column_check_flags_every_message_the_contract_rejects` holds the
two to the same verdicts on hostile rows.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import msgspec
import polars as pl

from churn_platform.events.contract import (
    ATTRIBUTE_KEY_MAX_LENGTH,
    ATTRIBUTE_VALUE_MAX_LENGTH,
    DEFAULT_MAX_MESSAGE_BYTES,
    EVENT_TYPE_PATTERN,
    EVENT_TYPE_RE,
    ID_MAX_LENGTH,
    SUBSCRIPTION_CANCELLED,
    SUBSCRIPTION_STARTED,
    TS_MAX_FUTURE_MS,
    TS_MIN_MS,
)
from churn_platform.events.replay import columns as cols
from churn_platform.events.replay.options import (
    Mapping,
    MappingError,
    ReplayMapping,
    SubscriptionMapping,
)
from churn_platform.events.replay.sources import ROW

# Prefix that keeps attribute names apart from the contract's own fields.
ATTR = "attr:"
_NOT_IN_GRAMMAR = re.compile(r"[^a-z0-9_]+")
_NEEDS_ESCAPE = r'["\\\x00-\x1f]'
_CONTROL_CHARS = r"[\x00-\x1f\x7f]"
_INT64_MAX = 2**63 - 1

OptionName = Callable[[str], str]


def default_option(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


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
# Mapping → columns of one file


@dataclass(frozen=True)
class Bound:
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


class _Binder:
    def __init__(self, mapping: Mapping, columns: Sequence[str], source: str, option: OptionName):
        self.mapping = mapping
        self.columns = [c for c in columns if c != ROW]
        self.source = source
        self.option = option

    def require(self, name: str) -> str:
        column = getattr(self.mapping, name)
        if column not in self.columns:
            option = self.option(name)
            raise MappingError(
                f"{option} {column!r}: no such column in {self.source}; "
                f"its columns are: {', '.join(self.columns) or '(none)'}. "
                f"Pass {option} with one of them."
            )
        return column

    def optional(self, name: str) -> str | None:
        """A column used when present; an explicitly chosen (non-default) name must exist."""
        column = getattr(self.mapping, name)
        if column is None:
            return None
        if column in self.columns:
            return column
        if column == getattr(type(self.mapping)(), name):
            return None
        return self.require(name)


def bind(
    mapping: Mapping, columns: Sequence[str], source: str, option: OptionName = default_option
) -> Bound:
    """`mapping` against a file's `columns`; `MappingError` names the option and the columns."""
    b = _Binder(mapping, columns, source, option)
    customer_id = b.require("customer_id_column")
    if isinstance(mapping, SubscriptionMapping):
        return Bound(
            customer_id=customer_id,
            start=b.require("start_column"),
            end=b.optional("end_column"),
            plan=b.optional("plan_column"),
            mrr=b.optional("mrr_column"),
            channel=b.optional("channel_column"),
            country=b.optional("country_column"),
        )
    ts = b.require("ts_column")
    event_type = None if mapping.event_type is not None else b.require("event_type_column")
    event_id = b.optional("event_id_column")
    value = b.require("value_column") if mapping.value_column is not None else None
    mapped = {customer_id, ts, event_type, event_id, value}
    if mapping.all_attributes:
        attributes = tuple(c for c in b.columns if c not in mapped)
    else:
        missing = [c for c in mapping.attribute_columns if c not in b.columns]
        if missing:
            option = option("attribute_columns")
            raise MappingError(
                f"{option} {','.join(missing)}: no such column in {source}; "
                f"its columns are: {', '.join(b.columns) or '(none)'}"
            )
        attributes = tuple(c for c in mapping.attribute_columns if c not in mapped)
    return Bound(
        customer_id=customer_id,
        ts=ts,
        event_type=event_type,
        event_id=event_id,
        value=value,
        attributes=attributes,
    )


# ---------------------------------------------------------------------------
# A batch → canonical columns


def id_prefix(source: str) -> str:
    return hashlib.blake2b(source.encode(), digest_size=8).hexdigest()


def _row_numbers(frame: pl.DataFrame, first_row: int) -> pl.Series:
    if ROW in frame.columns:
        return frame[ROW].cast(pl.Int64)
    return pl.int_range(first_row, first_row + frame.height, dtype=pl.Int64, eager=True)


def _derived_ids(prefix: str, rows: pl.Series, suffix: str = "") -> pl.Series:
    return pl.select(
        pl.concat_str([pl.lit(prefix + "-"), rows.cast(pl.String), pl.lit(suffix)])
    ).to_series()


def _constant(value: str | None, n: int) -> pl.Series:
    return pl.repeat(value, n, dtype=pl.String, eager=True)


def _times(raw: pl.Series, mapping: Mapping) -> dict[str, pl.Series]:
    """`ts` (RFC 3339 text; unreadable values as they were) and `ts_ms` (null if unreadable)."""
    utc = cols.to_utc(raw, mapping.ts_unit, mapping.ts_timezone, mapping.ts_format)
    return {
        "ts": cols.fallback(utc.dt.strftime(cols.RFC3339_MS), raw),
        "ts_ms": utc.dt.epoch("ms"),
    }


def _event_columns(
    frame: pl.DataFrame,
    mapping: ReplayMapping,
    bound: Bound,
    prefix: str,
    first_row: int,
    from_text: bool,
) -> pl.DataFrame:
    n = frame.height
    rows = _row_numbers(frame, first_row)
    ids = _derived_ids(prefix, rows)
    if bound.event_id is not None:
        given = cols.as_id(frame[bound.event_id])
        ids = given.zip_with(given.is_not_null(), ids)
    if bound.event_type is None:
        event_type = _constant(mapping.event_type, n)
    else:
        event_type = cols.as_text(frame[bound.event_type])
    columns = {
        "row": rows,
        "customer_id": cols.as_id(frame[bound.customer_id]),
        "event_id": ids,
        "event_type": event_type,
        **_times(frame[bound.ts], mapping),
    }
    if bound.value is not None:
        number, text = cols.value_column(frame[bound.value])
        columns["value"] = number
        columns["value_text"] = _constant(None, n) if text is None else text
    for name in bound.attributes:
        converted = cols.attribute(frame[name], from_text)
        if converted is not None:
            columns[ATTR + name] = converted
    return pl.DataFrame(columns)


def _subscription_columns(
    frame: pl.DataFrame,
    mapping: SubscriptionMapping,
    bound: Bound,
    prefix: str,
    first_row: int,
    from_text: bool,
) -> pl.DataFrame:
    n = frame.height
    rows = _row_numbers(frame, first_row)
    customer_id = cols.as_id(frame[bound.customer_id])
    attributes = {}
    for key, column in (
        ("plan", bound.plan),
        ("mrr", bound.mrr),
        ("channel", bound.channel),
        ("country", bound.country),
    ):
        converted = None if column is None else cols.attribute(frame[column], from_text)
        if converted is not None:
            attributes[ATTR + key] = converted
    started = pl.DataFrame(
        {
            "row": rows,
            "customer_id": customer_id,
            "event_id": _derived_ids(prefix, rows, "-started"),
            "event_type": _constant(SUBSCRIPTION_STARTED, n),
            **_times(frame[bound.start], mapping),
            **attributes,
            "_order": pl.int_range(0, 2 * n, 2, dtype=pl.Int64, eager=True),
        }
    )
    if bound.end is None:
        return started.drop("_order")
    end = frame[bound.end]
    cancelled = pl.DataFrame(
        {
            "row": rows,
            "customer_id": customer_id,
            "event_id": _derived_ids(prefix, rows, "-cancelled"),
            "event_type": _constant(SUBSCRIPTION_CANCELLED, n),
            **_times(end, mapping),
            **{k: v for k, v in attributes.items() if k == ATTR + "plan"},
            "_order": pl.int_range(1, 2 * n + 1, 2, dtype=pl.Int64, eager=True),
        }
    ).filter(~cols.blank(end))  # "" in JSON means open, like an empty CSV field
    return pl.concat([started, cancelled], how="diagonal").sort("_order").drop("_order")


# ---------------------------------------------------------------------------
# Canonical columns → JSON text, and the columns' verdict


class _Json:
    """One JSON object per canonical row, as a list of expressions concatenated at the end.

    Literal text between fields is merged into one literal. A field whose
    column has nulls in this batch is one expression that is null with its
    value, so it vanishes from the object (`concat_str(ignore_nulls=True)`).
    """

    def __init__(self) -> None:
        self.pieces: list[pl.Expr] = []
        self._text: list[str] = ["{"]

    def literal(self, text: str) -> None:
        self._text.append(text)

    def _flush(self) -> None:
        if self._text:
            self.pieces.append(pl.lit("".join(self._text)))
            self._text = []

    def parts(self, parts: list[str | pl.Expr]) -> None:
        for part in parts:
            if isinstance(part, str):
                self.literal(part)
            else:
                self._flush()
                self.pieces.append(part)

    def optional(self, parts: list[str | pl.Expr]) -> None:
        self._flush()
        self.pieces.append(pl.concat_str([pl.lit(p) if isinstance(p, str) else p for p in parts]))

    def expr(self) -> pl.Expr:
        self.literal("}")
        self._flush()
        return pl.concat_str(self.pieces, ignore_nulls=True)


def _needing_escape(canon: pl.DataFrame, safe: frozenset[str]) -> set[str]:
    """The String columns with a value JSON must escape (one query for all of them)."""
    candidates = [c for c, t in canon.schema.items() if t == pl.String and c not in safe]
    if not candidates:
        return set()
    found = canon.select(pl.col(c).str.contains(_NEEDS_ESCAPE).any() for c in candidates)
    return {c for c, hit in found.row(0, named=True).items() if hit}


def _value_parts(canon: pl.DataFrame, name: str, escape: set[str]) -> list[str | pl.Expr]:
    """JSON text of a String, integer or (finite) float column as parts; null stays null."""
    column = pl.col(name)
    if canon[name].dtype != pl.String:
        return [column.cast(pl.String)]
    if name in escape:
        encoded = pl.struct(column.alias("v")).struct.json_encode()
        return [pl.when(column.is_not_null()).then(encoded.str.slice(5).str.strip_suffix("}"))]
    return ['"', column, '"']


def _joined(parts: list[str | pl.Expr]) -> pl.Expr:
    return pl.concat_str([pl.lit(p) if isinstance(p, str) else p for p in parts])


def message_expr(canon: pl.DataFrame, safe: frozenset[str] = frozenset()) -> pl.Expr:
    """One JSON object per canonical row; null fields and null attributes are left out.

    `safe` names String columns known to need no JSON escapes (made by replay itself).
    """
    escape = _needing_escape(canon, safe)
    json = _Json()
    first = True
    for name in ("event_id", "customer_id", "event_type", "ts"):
        lead = ("" if first else ",") + f'"{name}":'
        parts = [lead, *_value_parts(canon, name, escape)]
        if canon[name].null_count():
            if first:  # `{` is a literal before it; the first field must always be there
                raise AssertionError("event ids are never null (nulls get derived ids)")
            json.optional(parts)
        else:
            json.parts(parts)
        first = False
    if "value" in canon.columns:
        value = canon["value"]
        if canon["value_text"].null_count() < canon.height:
            text = _joined(_value_parts(canon, "value_text", escape))
            json.optional([',"value":', pl.coalesce(pl.col("value").cast(pl.String), text)])
        elif value.null_count() == canon.height:
            pass
        elif value.null_count():
            json.optional([',"value":', pl.col("value").cast(pl.String)])
        else:
            json.parts([',"value":', pl.col("value").cast(pl.String)])
    attributes = [c for c in canon.columns if c.startswith(ATTR)]
    if attributes:
        keyed = [
            [msgspec.json.encode(c[len(ATTR) :]).decode() + ":", *_value_parts(canon, c, escape)]
            for c in attributes
        ]
        if not any(canon[c].null_count() for c in attributes):
            json.literal(',"attributes":{')
            for i, parts in enumerate(keyed):
                json.parts(([","] if i else []) + parts)
            json.literal("}")
        else:
            joined = pl.concat_str([_joined(p) for p in keyed], separator=",", ignore_nulls=True)
            json.optional(
                [pl.when(joined != "").then(pl.concat_str([pl.lit(',"attributes":{'), joined]))]
                + ["}"]
            )
    return json.expr()


def _bad_id(name: str) -> pl.Expr:
    column = pl.col(name)
    size = column.str.len_bytes()  # ≥ the length in characters the contract counts
    return (
        column.is_null()
        | (size == 0)
        | (size > ID_MAX_LENGTH)
        | column.str.contains(_CONTROL_CHARS)
    )


def suspect_expr(
    canon: pl.DataFrame, message: pl.Expr, now: int, valid: frozenset[str] = frozenset()
) -> pl.Expr:
    """True where a message may break the contract (rules of `events.validation`, per column).

    Cautious on purpose: a flagged row is only checked again with `validate`,
    an unflagged one is produced as valid. Times within a millisecond of a
    bound are flagged, so rounding cannot decide. `valid` names columns known
    to pass their rule in every row (derived ids, event types in the grammar).
    """
    ts_ms = pl.col("ts_ms")
    suspect = (
        _bad_id("customer_id")
        | ts_ms.is_null()
        | (ts_ms <= TS_MIN_MS)
        | (ts_ms >= now + TS_MAX_FUTURE_MS)
        | (message.str.len_bytes() > DEFAULT_MAX_MESSAGE_BYTES)
    )
    if "event_id" not in valid:
        suspect = suspect | _bad_id("event_id")
    if "event_type" not in valid:
        event_type = pl.col("event_type")
        suspect = suspect | event_type.is_null() | ~event_type.str.contains(EVENT_TYPE_PATTERN)
    if "value_text" in canon.columns:
        suspect = suspect | pl.col("value_text").is_not_null()
    for name in canon.columns:
        if not name.startswith(ATTR):
            continue
        key = name[len(ATTR) :]
        column = pl.col(name)
        if not 1 <= len(key) <= ATTRIBUTE_KEY_MAX_LENGTH:
            suspect = suspect | column.is_not_null()
        dtype = canon[name].dtype
        if dtype == pl.String:
            suspect = suspect | (column.str.len_bytes() > ATTRIBUTE_VALUE_MAX_LENGTH)
        elif dtype == pl.UInt64:
            suspect = suspect | (column > _INT64_MAX)
    return suspect.fill_null(True)


# ---------------------------------------------------------------------------
# The builder


@dataclass
class Built:
    """The messages of one batch, in order, and what the summary needs from its rows.

    `suspects` are the positions of messages that may break the contract;
    `row` and `event_type` say which file row (0-based) and type each came from.
    """

    keys: list[bytes | None]
    values: list[bytes]
    suspects: list[int]
    row: pl.Series
    event_type: pl.Series
    customers: pl.Series
    ts_ms: pl.Series
    dropped: int = 0


class MessageBuilder:
    """Turns batches of one or more files into messages; remembers event-type renames.

    `now` (epoch ms) is the clock of the column check's future-ts rule;
    `keep`, when given, is the customers whose rows are built (the others are
    counted in `Built.dropped`).
    """

    def __init__(self, mapping: Mapping, now: int = 0, keep: pl.Series | None = None) -> None:
        self.mapping = mapping
        self.now = now
        self.keep = keep
        self.renamed: dict[str, str] = {}
        self._names: dict[str, str] = {}
        self._types_in_grammar = True

    def canonical(
        self,
        frame: pl.DataFrame,
        bound: Bound,
        source: str,
        first_row: int = 0,
        from_text: bool = False,
    ) -> pl.DataFrame:
        """Columns row, customer_id, event_id, event_type, ts, ts_ms, [value, value_text], attr:*."""
        for column in bound.columns():
            if column not in frame.columns:  # a JSON Lines batch in which no row has this key
                frame = frame.with_columns(pl.lit(None).alias(column))
        prefix = id_prefix(source)
        if isinstance(self.mapping, SubscriptionMapping):
            canon = _subscription_columns(frame, self.mapping, bound, prefix, first_row, from_text)
        else:
            canon = _event_columns(frame, self.mapping, bound, prefix, first_row, from_text)
        return canon.with_columns(self._normalize(canon["event_type"]))

    def _normalize(self, event_type: pl.Series) -> pl.Series:
        renames = {}
        self._types_in_grammar = True
        for raw in event_type.unique().drop_nulls().to_list():
            name = self._names.get(raw)
            if name is None:
                name = raw if EVENT_TYPE_RE.fullmatch(raw) else normalize_event_type(raw)
                self._names[raw] = name
                if name != raw:
                    self.renamed[raw] = name
            if name != raw:
                renames[raw] = name
            if not EVENT_TYPE_RE.fullmatch(name):
                self._types_in_grammar = False
        return event_type.replace(renames) if renames else event_type

    def build(
        self,
        frame: pl.DataFrame,
        bound: Bound,
        source: str,
        first_row: int = 0,
        from_text: bool = False,
    ) -> Built:
        canon = self.canonical(frame, bound, source, first_row, from_text)
        dropped = 0
        if self.keep is not None:
            customer = pl.col("customer_id")
            kept = canon.filter(customer.is_in(self.keep.implode()) | customer.is_null())
            dropped = canon.height - kept.height
            canon = kept
        # text replay wrote itself has nothing to escape: derived ids, formatted times,
        # event types in the contract's grammar
        safe = {"row"}
        if bound.event_id is None:
            safe.add("event_id")
        if canon["ts"].null_count() == canon["ts_ms"].null_count():
            safe.add("ts")
        if self._types_in_grammar:
            safe.add("event_type")
        # ...and those columns pass their rule in every row: the ids are 16 hex digits,
        # a dash and a number, and the types are names in the grammar (none missing)
        valid = safe & {"event_id"}
        if self._types_in_grammar and not canon["event_type"].null_count():
            valid.add("event_type")
        message = pl.col("__message__")
        expr = message_expr(canon, frozenset(safe))
        encoded = canon.with_columns(expr.alias("__message__")).select(
            key=pl.col("customer_id").cast(pl.Binary),
            value=message.cast(pl.Binary),
            suspect=suspect_expr(canon, message, self.now, frozenset(valid)),
        )
        return Built(
            keys=encoded["key"].to_list(),
            values=encoded["value"].to_list(),
            suspects=encoded["suspect"].arg_true().to_list(),
            row=canon["row"],
            event_type=canon["event_type"],
            customers=canon["customer_id"],
            ts_ms=canon["ts_ms"],
            dropped=dropped,
        )


def rows_to_messages(
    frame: pl.DataFrame, mapping: Mapping, *, source: str = "<frame>", first_row: int = 0
) -> list[tuple[bytes | None, bytes]]:
    """(key, value) messages for the rows of `frame`, in row order, not validated.

    `source` and `first_row` name where the rows came from; derived event ids
    depend on both (see the package docstring). CSV-style text numbers are not
    inferred here: pass typed columns.
    """
    builder = MessageBuilder(mapping)
    built = builder.build(frame, bind(mapping, frame.columns, source), source, first_row)
    return list(zip(built.keys, built.values, strict=True))
