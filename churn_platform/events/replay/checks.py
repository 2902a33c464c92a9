"""Checks of whole files before anything is produced, each failing with one line that says the fix.

* A subscriptions table: every start and every end that is not empty must be
  a time replay can read, and no subscription may end before it starts.
* An events file with its subscriptions table: both must name the same
  customers, unless the user says what to do with the others
  (`--unmatched-customers keep|drop`).

Rows are named as a user counts them: from 1, not counting a header.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from churn_platform.events.replay import columns as cols
from churn_platform.events.replay.inputs import Input
from churn_platform.events.replay.messages import Bound
from churn_platform.events.replay.options import ReplayError
from churn_platform.events.replay.sources import ROW, Batch

EXAMPLES = 3
NOTHING_PRODUCED = "Nothing was produced."


def _column(frame: pl.DataFrame, name: str) -> pl.Series:
    if name in frame.columns:
        return frame[name]
    return pl.repeat(None, frame.height, dtype=pl.String, eager=True)  # JSON Lines: key absent


def _rows(batch: Batch) -> pl.Series:
    if ROW in batch.frame.columns:
        return batch.frame[ROW].cast(pl.Int64)
    first = batch.first_row
    return pl.int_range(first, first + batch.frame.height, dtype=pl.Int64, eager=True)


@dataclass
class _Finding:
    """Rows of one kind of problem: how many, and the first few (row, text)."""

    count: int = 0
    examples: list[tuple[str, int, str]] = field(default_factory=list)

    def add(self, source: str, rows: pl.Series, texts: pl.Series) -> None:
        self.count += rows.len()
        room = EXAMPLES - len(self.examples)
        if room > 0:
            for row, text in zip(rows.head(room), texts.head(room), strict=True):
                self.examples.append((source, row, text))

    def describe(self, single_file: bool) -> str:
        shown = ", ".join(
            f"row {row + 1:,}" + ("" if single_file else f" of {source}") + f" ({text})"
            for source, row, text in self.examples
        )
        more = self.count - len(self.examples)
        return shown + (f" and {more:,} more" if more > 0 else "")


def _quoted(s: pl.Series) -> pl.Series:
    text = cols.as_text(s).fill_null("")
    return pl.select(pl.concat_str([pl.lit("'"), text.str.slice(0, 40), pl.lit("'")])).to_series()


def check_subscription_dates(subscriptions: Input, batch_rows: int, limit: int | None) -> None:
    """`ReplayError` naming the rows whose start or end cannot be read, or that end before they start."""
    mapping = subscriptions.mapping
    no_start, bad_start, bad_end, backwards = _Finding(), _Finding(), _Finding(), _Finding()
    columns: dict[str, str] = {}

    def wanted(bound: Bound) -> list[str]:
        return [c for c in (bound.start, bound.end) if c]

    for source, bound, batch in subscriptions.batches(batch_rows, limit, wanted):
        frame, rows = batch.frame, _rows(batch)
        columns.setdefault("start", bound.start)
        start_raw = _column(frame, bound.start)
        start = cols.to_utc(start_raw, mapping.ts_unit, mapping.ts_timezone, mapping.ts_format)
        empty = cols.blank(start_raw)
        no_start.add(source.name, rows.filter(empty), _quoted(start_raw.filter(empty)))
        unread = start.is_null() & ~empty
        bad_start.add(source.name, rows.filter(unread), _quoted(start_raw.filter(unread)))
        if bound.end is None:
            continue
        columns.setdefault("end", bound.end)
        end_raw = _column(frame, bound.end)
        end = cols.to_utc(end_raw, mapping.ts_unit, mapping.ts_timezone, mapping.ts_format)
        unread = end.is_null() & ~cols.blank(end_raw)
        bad_end.add(source.name, rows.filter(unread), _quoted(end_raw.filter(unread)))
        before = (end < start).fill_null(False)
        if before.any():
            shown = pl.select(
                pl.concat_str(
                    [
                        pl.lit("ends "),
                        end.filter(before).dt.strftime("%Y-%m-%d %H:%M:%S"),
                        pl.lit(", starts "),
                        start.filter(before).dt.strftime("%Y-%m-%d %H:%M:%S"),
                    ]
                )
            ).to_series()
            backwards.add(source.name, rows.filter(before), shown)

    single = len(subscriptions.sources) == 1
    problems = []
    if no_start.count:
        problems.append(
            f"{count(no_start.count, 'row')} {'has' if no_start.count == 1 else 'have'} no start "
            f"in column {columns['start']!r}: {no_start.describe(single)}; fill them in or "
            "remove those rows"
        )
    unreadable = [
        f"the {what} (column {columns[what]!r}) of {count(finding.count, 'row')}: "
        f"{finding.describe(single)}"
        for what, finding in (("start", bad_start), ("end", bad_end))
        if finding.count
    ]
    if unreadable:
        option = subscriptions.spec.option("ts_format")
        format_hint = (
            f"they do not match {option} {mapping.ts_format!r}"
            if mapping.ts_format
            else f"pass {option} (strftime codes, e.g. %d/%m/%Y or %Y%m%d)"
        )
        problems.append(
            f"cannot read as times {' and '.join(unreadable)}. "
            f"{format_hint[0].upper()}{format_hint[1:]}, "
            "or --ts-unit for epoch numbers (s, ms, us, ns); an open subscription's end "
            "must be empty"
        )
    if backwards.count:
        problems.append(
            f"{count(backwards.count, 'subscription')} "
            f"{'ends' if backwards.count == 1 else 'end'} before {'it starts' if backwards.count == 1 else 'they start'} "
            f"(column {columns['end']!r} before {columns['start']!r}): "
            f"{backwards.describe(single)}; fix or remove those rows, or check "
            "--start-column and --end-column"
        )
    if problems:
        raise ReplayError(f"{subscriptions.name}: {'; '.join(problems)}. {NOTHING_PRODUCED}")


def count(n: int, noun: str) -> str:
    """`1 row`, `2 rows`, `1,234 customers`."""
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def customers(source: Input, batch_rows: int, limit: int | None) -> pl.Series:
    """The distinct customer ids of every file of `source` (as replay writes them)."""
    seen: list[pl.Series] = []
    for _, bound, batch in source.batches(batch_rows, limit, lambda b: [b.customer_id]):
        ids = cols.as_id(_column(batch.frame, bound.customer_id))
        seen.append(ids.drop_nulls().unique())
        if len(seen) > 16:
            seen = [pl.concat(seen).unique()]
    if not seen:
        return pl.Series("customer_id", [], dtype=pl.String)
    return pl.concat(seen).unique().sort().alias("customer_id")


@dataclass(frozen=True)
class CustomerMatch:
    """How the customers of an events file and its subscriptions table compare."""

    events: int
    subscriptions: int
    events_only: pl.Series
    subscriptions_only: pl.Series
    both: pl.Series

    @property
    def matched(self) -> bool:
        return self.events_only.len() == 0 and self.subscriptions_only.len() == 0


def match_customers(events: pl.Series, subscriptions: pl.Series) -> CustomerMatch:
    return CustomerMatch(
        events=events.len(),
        subscriptions=subscriptions.len(),
        events_only=events.filter(~events.is_in(subscriptions.implode())),
        subscriptions_only=subscriptions.filter(~subscriptions.is_in(events.implode())),
        both=events.filter(events.is_in(subscriptions.implode())),
    )


def _examples(ids: pl.Series) -> str:
    shown = ", ".join(repr(i) for i in ids.head(EXAMPLES).to_list())
    return f"e.g. {shown}" + (", …" if ids.len() > EXAMPLES else "")


def unmatched_message(match: CustomerMatch, events: Input, subscriptions: Input) -> str:
    """The one line that says which customers are in only one file and what to do."""
    parts = []
    if match.events_only.len():
        n = match.events_only.len()
        parts.append(
            f"{n:,} of the {count(match.events, 'customer')} of {events.name} "
            f"{'has' if n == 1 else 'have'} no subscription in {subscriptions.name} "
            f"({_examples(match.events_only)})"
        )
    if match.subscriptions_only.len():
        n = match.subscriptions_only.len()
        parts.append(
            f"{n:,} of the {count(match.subscriptions, 'customer')} of {subscriptions.name} "
            f"{'has' if n == 1 else 'have'} no events in {events.name} "
            f"({_examples(match.subscriptions_only)})"
        )
    hint = ""
    if match.both.len() == 0:
        hint = " No customer is in both files"
        stripped = match.events_only.str.strip_chars_start("0")
        if stripped.is_in(match.subscriptions_only.str.strip_chars_start("0").implode()).any():
            hint += " (the ids differ in leading zeros: is one file's id column a number?)"
        hint += (
            ": check --customer-id-column and --subscriptions-customer-id-column, "
            "and that both files come from the same system."
        )
    return (
        f"{' and '.join(parts)}.{hint} Pass --unmatched-customers keep to replay them anyway, "
        f"or drop to leave their rows out. {NOTHING_PRODUCED}"
    )
