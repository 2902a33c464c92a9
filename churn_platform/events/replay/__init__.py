"""Replay a user's own event data (CSV, JSON Lines, Parquet) into the events topic.

A `ReplayMapping` says which columns of an events file hold the contract's
fields; a `SubscriptionMapping` instead turns a subscriptions table (one row
per subscription, with start and end) into `subscription_started` /
`subscription_cancelled` lifecycle events. `replay_file` replays one of them,
or an events file together with its subscriptions table (`subscriptions=`),
checking the inputs before anything is produced, then reads them in bounded
batches, converts each batch with polars and produces every event keyed by
customer id.

Modules: `options` (what the user says), `sources` (files and reading them),
`columns` (one column's conversions), `messages` (a batch → events and their
column check), `checks` (whole-file checks), `producing` (the fast path to
Kafka), `run` (`replay_file` itself).

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
  NaN is read as missing (pandas writes missing floats as NaN). A
  subscriptions table is stricter: a start or end that cannot be read fails
  the replay before anything is produced, naming the rows.
* CSV is read as text, so no row fails to parse halfway through a large file;
  ids keep their leading zeros; attribute columns whose values in a batch are
  all integers (without leading zeros, so zip codes stay text) or all numbers
  become numbers. `--separator whitespace` reads columns separated by runs of
  blanks (fixed-width exports).
* A time format (`ts_format`, strftime-like: `%Y%m%d`) applies to text and
  numbers in the time columns; `19970101` is otherwise a number of seconds.
"""

from churn_platform.events.replay.messages import normalize_event_type, rows_to_messages
from churn_platform.events.replay.options import (
    FORMATS,
    TS_UNITS,
    UNMATCHED_CUSTOMERS,
    WHITESPACE,
    MappingError,
    ReplayError,
    ReplayInput,
    ReplayMapping,
    SubscriptionMapping,
    parse_separator,
)
from churn_platform.events.replay.run import (
    DEFAULT_BATCH_ROWS,
    ReplayProduceError,
    ReplaySummary,
    default_rejects_path,
    iter_messages,
    replay_file,
)
from churn_platform.events.replay.sources import resolve_sources

__all__ = [
    "DEFAULT_BATCH_ROWS",
    "FORMATS",
    "TS_UNITS",
    "UNMATCHED_CUSTOMERS",
    "WHITESPACE",
    "MappingError",
    "ReplayError",
    "ReplayInput",
    "ReplayMapping",
    "ReplayProduceError",
    "ReplaySummary",
    "SubscriptionMapping",
    "default_rejects_path",
    "iter_messages",
    "normalize_event_type",
    "parse_separator",
    "replay_file",
    "resolve_sources",
    "rows_to_messages",
]
