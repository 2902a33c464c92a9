"""Materializing the feature table of an as-of date, reading it back, and checking it.

`materialize_features` runs one engine and leaves the same table either way:
the `as_of` partition of the Delta table `features/customer_features`
(`lake.tables.FEATURES`), replaced in one commit. The feature spec (which
activity types the table tracks; they are discovered per date), the churn
definition and the raw files read travel in the footer of every data file of
the partition (`FEATURE_TABLE_KEY`), so a reader at any table version gets the
spec of exactly the rows it reads; the run's counts go into the commit's
metadata, for the table's history. "beam" is the Beam pipeline
(`churn_platform.features.pipeline`), the one that scales out; "polars" is the
single-process reference, for small lakes and tests.

The `check_*` functions judge a materialized table and return
`CheckOutcome(passed, details)`; the row-count check recomputes the active
customers from the raw lifecycle events on its own, so a bug in the feature
code cannot vouch for itself.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

import polars as pl
import pyarrow as pa

from churn_platform.events.contract import LIFECYCLE_EVENT_TYPES, SUBSCRIPTION_CANCELLED
from churn_platform.features.churn import CANCELLATION, RECENT_ACTIVITY_DAYS, ChurnDefinition
from churn_platform.features.definitions import (
    LOOKBACK_DAYS,
    NON_NEGATIVE_KINDS,
    FeatureColumn,
    FeatureSpec,
    Kind,
    as_of_end,
    categorical_keys,
    compute_features,
    discover_spec,
    merge_specs,
)
from churn_platform.features.inputs import (
    FILE_COLUMN,
    FeatureInputs,
    events_as_of,
    feature_inputs,
    range_inputs,
    range_inputs_of,
    read_files,
    read_inputs,
    read_range,
    read_tagged,
)
from churn_platform.features.many_dates import features_of_dates
from churn_platform.lake import tables
from churn_platform.lake.raw import event_date_of, event_days, raw_files, raw_path
from churn_platform.lake.store import Lake, LakeError

if TYPE_CHECKING:
    from churn_platform.features.options import BeamRunnerSettings

# the footer key of every feature data file: the table's spec, churn definition, inputs
FEATURE_TABLE_KEY = "churn_platform.feature_table"
ENGINES = ("beam", "polars")
DEFAULT_ENGINE = "beam"
NULL_RATE_TOP = 10
_STATE_COLUMNS = ["event_id", "customer_id", "event_type", "ts"]


class FeaturesMissing(LakeError):
    """No materialized feature table for the as-of date."""


class CheckOutcome(NamedTuple):
    passed: bool
    details: dict[str, Any]


@dataclass(frozen=True)
class MaterializedFeatures:
    """What one engine wrote for one as-of date."""

    as_of: date
    engine: str
    rows: int  # one per customer active at the as-of date
    customers: int  # distinct customers in the events read
    events_read: int
    spec: FeatureSpec
    output_files: list[str] = field(default_factory=list)
    seconds: float = 0.0
    version: int | None = None  # the features table's version that holds this as-of date
    refreshed: int | None = None  # a refresh: the customers recomputed (None: all of them)

    @property
    def events_per_second(self) -> float:
        return self.events_read / self.seconds if self.seconds > 0 else 0.0


def first_event_date(lake: Lake) -> date | None:
    """The earliest committed event date in the lake (the first sensible as-of date)."""
    days = event_days(lake)
    return min(days) if days else None


# --- engines -------------------------------------------------------------------


def materialize_features(
    lake: Lake,
    as_of: date,
    engine: str = DEFAULT_ENGINE,
    runner: BeamRunnerSettings | None = None,
    shards: int | None = None,
    churn: ChurnDefinition = CANCELLATION,
) -> MaterializedFeatures:
    """Compute the feature table as of `as_of` with `engine` and write it (replacing any)."""
    if engine == "polars":
        return _materialize_polars(lake, as_of, churn)
    if engine != "beam":
        raise ValueError(f"unknown feature engine {engine!r}: choose one of {', '.join(ENGINES)}")
    try:
        from churn_platform.features.pipeline import run_feature_pipeline
    except ImportError as exc:
        raise ImportError(
            "the 'beam' feature engine needs churn_platform.features.pipeline "
            f"(run_feature_pipeline), which could not be imported ({exc}); "
            "install apache-beam or run with engine 'polars'"
        ) from exc
    kwargs: dict[str, Any] = {"runner": runner, "churn": churn}
    if shards is not None:
        kwargs["shards"] = shards
    result = run_feature_pipeline(lake.uri, as_of, **kwargs)
    return _from_pipeline(result)


def materialize_features_range(
    lake: Lake,
    dates: Sequence[date],
    engine: str = DEFAULT_ENGINE,
    runner: BeamRunnerSettings | None = None,
    shards: int | None = None,
    churn: ChurnDefinition = CANCELLATION,
) -> list[MaterializedFeatures]:
    """The feature tables of several as-of dates from one read of their events.

    Each date's partition is exactly what `materialize_features` writes for it
    alone (rows, footers, counts) and is replaced in its own commit; the events
    are read (and, with Beam, shuffled) once for all dates. Sorted by date.
    """
    dates = sorted(set(dates))
    if engine == "polars":
        return _materialize_polars_range(lake, dates, churn)
    if engine != "beam":
        raise ValueError(f"unknown feature engine {engine!r}: choose one of {', '.join(ENGINES)}")
    from churn_platform.features.pipeline import run_feature_pipeline_range

    kwargs: dict[str, Any] = {"runner": runner, "churn": churn}
    if shards is not None:
        kwargs["shards"] = shards
    return [
        _from_pipeline(result) for result in run_feature_pipeline_range(lake.uri, dates, **kwargs)
    ]


def _from_pipeline(result) -> MaterializedFeatures:
    """What the Beam pipeline reports for one date, as `materialize_features` returns it."""
    return MaterializedFeatures(
        as_of=result.as_of,
        engine="beam",
        rows=result.rows,
        customers=result.customers,
        events_read=result.events_read,
        spec=result.spec,
        output_files=[str(f) for f in result.output_files],
        seconds=result.seconds,
        version=result.version,
    )


def _materialize_polars_range(
    lake: Lake, dates: Sequence[date], churn: ChurnDefinition
) -> list[MaterializedFeatures]:
    started = time.perf_counter()
    inputs = range_inputs(lake, dates)
    frame, _ = read_range(lake, inputs)
    frame = categorical_keys(frame)  # cast once for every date
    # equal ids hash equally: distinct hashes over every file prove no date has repeats
    distinct = frame["event_id"].hash().n_unique() == frame.height
    specs, counts = {}, {}
    for as_of in inputs.dates:
        events = events_as_of(frame, inputs, as_of).drop(FILE_COLUMN)
        specs[as_of] = discover_spec(events, as_of)
        counts[as_of] = {
            "customers": events["customer_id"].n_unique(),
            "events_read": events.height,
        }
    tables = features_of_dates(frame, inputs, specs, churn, distinct=distinct)
    return [
        _written(
            lake,
            as_of,
            tables.pop(as_of),
            specs[as_of],
            counts[as_of],
            inputs.inputs(as_of),
            churn,
            started,
        )
        for as_of in inputs.dates
    ]


def _materialize_polars(lake: Lake, as_of: date, churn: ChurnDefinition) -> MaterializedFeatures:
    started = time.perf_counter()
    inputs = feature_inputs(lake, as_of)
    events = read_inputs(lake, inputs)
    spec = discover_spec(events, as_of)
    table = compute_features(events, as_of, spec, churn)
    counts = {"customers": events["customer_id"].n_unique(), "events_read": events.height}
    return _written(lake, as_of, table, spec, counts, inputs, churn, started)


def _written(
    lake: Lake,
    as_of: date,
    table: pl.DataFrame,
    spec: FeatureSpec,
    counts: dict[str, int],
    inputs: FeatureInputs,
    churn: ChurnDefinition,
    started: float,
    refreshed: int | None = None,
) -> MaterializedFeatures:
    """Write `table` as the `as_of` partition (`write_features`) and say what was written."""
    version = write_features(lake, as_of, table, spec, counts, inputs, churn)
    return MaterializedFeatures(
        as_of=as_of,
        engine="polars" if refreshed is None else "refresh",
        rows=table.height,
        customers=counts["customers"],
        events_read=counts["events_read"],
        spec=spec,
        output_files=feature_files(lake, as_of, version),
        seconds=time.perf_counter() - started,
        version=version,
        refreshed=refreshed,
    )


def refresh_features(
    lake: Lake, as_of: date, churn: ChurnDefinition = CANCELLATION
) -> MaterializedFeatures | None:
    """Bring the `as_of` partition up to date by recomputing only the customers that raw
    files committed since it was written touch; None where that cannot give the table
    `materialize_features` would (compute every customer then).

    A customer's row depends on that customer's events alone (the Beam pipeline shards by
    customer for the same reason), so the rows of customers with no new events stand.
    None when: there is no partition yet, or it records no inputs; it was computed under
    another churn definition or other windows; a file it read is gone (the raw table was
    rewritten); or the new events bring an activity type it has no columns for.
    """
    started = time.perf_counter()
    version = tables.version(lake, tables.FEATURES)
    try:
        files = _partition(lake, as_of, version)
    except FeaturesMissing:
        return None
    manifest = _manifest(lake, as_of, files, version)
    spec = FeatureSpec.from_dict(manifest)
    if (
        "inputs" not in manifest
        or ChurnDefinition.from_dict(manifest.get("churn_definition")) != churn
        or spec != FeatureSpec.current(spec.activity_types, spec.valued_types)
    ):
        return None
    before = FeatureInputs.from_dict(as_of, manifest["inputs"])
    inputs = feature_inputs(lake, as_of)
    window, history = set(before.window_files), set(before.history_files)
    if not (window <= set(inputs.window_files) and history <= set(inputs.history_files)):
        return None
    added = FeatureInputs(
        as_of,
        tuple(p for p in inputs.window_files if p not in window),
        tuple(p for p in inputs.history_files if p not in history),
    )
    table = _read_partition(lake, as_of, files, spec, None, version)
    if not (added.window_files or added.history_files):  # nothing new: the partition stands
        return MaterializedFeatures(
            as_of=as_of,
            engine="refresh",
            rows=table.height,
            customers=0,
            events_read=0,
            spec=spec,
            output_files=[tables.file_path(tables.FEATURES, f) for f in files],
            seconds=time.perf_counter() - started,
            version=version,
            refreshed=0,
        )
    new_events = read_inputs(lake, added)
    if merge_specs([spec, discover_spec(new_events, as_of)]) != spec:
        return None
    touched = new_events["customer_id"].unique()
    events = read_inputs(lake, inputs, customers=touched)
    fresh = compute_features(events, as_of, spec, churn)
    table = pl.concat([table.filter(~pl.col("customer_id").is_in(touched.implode())), fresh]).sort(
        "customer_id"
    )
    counts = {"customers": touched.len(), "events_read": events.height, "refreshed": touched.len()}
    return _written(lake, as_of, table, spec, counts, inputs, churn, started, touched.len())


def feature_file_metadata(
    as_of: date,
    spec: FeatureSpec,
    churn: ChurnDefinition = CANCELLATION,
    inputs: FeatureInputs | None = None,
) -> dict[str, str]:
    """What every data file of the as-of partition carries in its footer (`FEATURE_TABLE_KEY`)."""
    body = {
        **spec.to_dict(),
        "as_of": as_of.isoformat(),
        "churn_definition": churn.to_dict(),
        **({"inputs": inputs.to_dict()} if inputs else {}),
    }
    return {FEATURE_TABLE_KEY: json.dumps(body)}


def feature_schema(spec: FeatureSpec) -> pa.Schema:
    """The Arrow schema of a feature table with `spec` (key columns first)."""
    return pl.DataFrame(schema=spec.schema()).to_arrow().schema


def create_feature_table(lake: Lake) -> None:
    """Create the features table (key columns only) before workers write its files.

    Feature columns are added by the commits that bring them: activity types
    are discovered per date.
    """
    keys = pa.schema([pa.field("customer_id", pa.string()), pa.field("as_of", pa.date32())])
    tables.create(lake, tables.FEATURES, keys)


def commit_features(
    lake: Lake,
    as_of: date,
    files: Sequence[tables.DataFile],
    spec: FeatureSpec,
    counts: dict[str, Any],
) -> int:
    """Make `files` the whole `as_of` partition in one commit; returns the table's version."""
    return tables.commit(
        lake,
        tables.FEATURES,
        files,
        schema=feature_schema(spec),
        replace={"as_of": as_of},
        metadata={"as_of": as_of.isoformat(), **counts},
    )


def write_features(
    lake: Lake,
    as_of: date,
    table: pl.DataFrame,
    spec: FeatureSpec,
    counts: dict[str, int] | None = None,
    inputs: FeatureInputs | None = None,
    churn: ChurnDefinition = CANCELLATION,
) -> int:
    """Replace the `as_of` partition with `table` (one data file, even when empty).

    Returns the features table's new version.
    """
    create_feature_table(lake)
    written = tables.write_file(
        lake,
        tables.FEATURES,
        table.to_arrow(),
        {"as_of": as_of},
        name_hint="part-00000-of-00001",
        metadata=feature_file_metadata(as_of, spec, churn, inputs),
    )
    return commit_features(
        lake, as_of, [written], spec, {"rows": table.height, "shards": 1, **(counts or {})}
    )


# --- reading back ----------------------------------------------------------------


def _partition(lake: Lake, as_of: date, version: int | None) -> list[tables.DataFile]:
    return tables.partition_files(
        lake,
        tables.FEATURES,
        {"as_of": as_of},
        FeaturesMissing,
        what="feature table",
        producer="customer_features",
        version=version,
    )


def feature_files(lake: Lake, as_of: date, version: int | None = None) -> list[str]:
    """Lake-relative paths of the data files of `as_of` (at `version`, else the newest)."""
    return [tables.file_path(tables.FEATURES, f) for f in _partition(lake, as_of, version)]


def read_feature_manifest(lake: Lake, as_of: date, version: int | None = None) -> dict:
    """What the data files of `as_of` carry in their footers (spec, churn definition, inputs)."""
    return _manifest(lake, as_of, _partition(lake, as_of, version), version)


def _manifest(
    lake: Lake, as_of: date, files: list[tables.DataFile], version: int | None = None
) -> dict:
    """The footers' manifest. Every file of a partition was written for one commit, so
    they agree; a file that does not (or carries nothing) is named."""
    found: dict | None = None
    for data_file in files:
        footer = tables.file_metadata(lake, tables.FEATURES, data_file, version)
        text = footer.get(FEATURE_TABLE_KEY)
        path = lake.url(tables.file_path(tables.FEATURES, data_file))
        if text is None:
            raise LakeError(
                f"{path} carries no feature spec ({FEATURE_TABLE_KEY} in its footer): "
                f"materialize customer_features for {as_of.isoformat()} again"
            )
        body = json.loads(text)
        if found is not None and body != found:
            raise LakeError(
                f"{path} carries another feature spec than the other files of "
                f"{as_of.isoformat()}: materialize customer_features for that date again"
            )
        found = body
    assert found is not None
    return found


def read_features(
    lake: Lake, as_of: date, columns: list[str] | None = None, version: int | None = None
) -> pl.DataFrame:
    """The feature table of `as_of` (at table `version`, else the newest), by customer_id.

    Exactly the columns of its spec, in their order and types (the Delta table
    holds the union of every date's columns).
    """
    files = _partition(lake, as_of, version)
    spec = FeatureSpec.from_dict(_manifest(lake, as_of, files, version))
    return _read_partition(lake, as_of, files, spec, columns, version)


def _read_partition(
    lake: Lake,
    as_of: date,
    files: list[tables.DataFile],
    spec: FeatureSpec,
    columns: list[str] | None,
    version: int | None,
) -> pl.DataFrame:
    """`read_features` of partition `files` (of `version`), whose footers gave `spec`."""
    schema = spec.schema()
    wanted = list(schema) if columns is None else columns
    unknown = [c for c in wanted if c not in schema]
    if unknown:
        raise KeyError(f"the feature table of {as_of.isoformat()} has no columns {unknown}")
    table = tables.read_arrow(lake, tables.FEATURES, wanted, version=version, files=files)
    frame = pl.from_arrow(table).cast({c: schema[c] for c in wanted})
    return frame.sort("customer_id") if "customer_id" in frame.columns else frame


def read_feature_recorded(
    lake: Lake, as_of: date, version: int | None = None
) -> tuple[FeatureSpec, ChurnDefinition]:
    """The spec the feature table of `as_of` was computed with, and the churn definition it
    chose its customers by, from one read of its footers."""
    manifest = read_feature_manifest(lake, as_of, version)
    return FeatureSpec.from_dict(manifest), ChurnDefinition.from_dict(
        manifest.get("churn_definition")
    )


def read_feature_spec(lake: Lake, as_of: date, version: int | None = None) -> FeatureSpec:
    """The spec the feature table of `as_of` was computed with."""
    return read_feature_recorded(lake, as_of, version)[0]


def read_feature_churn(lake: Lake, as_of: date, version: int | None = None) -> ChurnDefinition:
    """The churn definition the feature table of `as_of` chose its customers by."""
    return read_feature_recorded(lake, as_of, version)[1]


# --- checks ----------------------------------------------------------------------


def check_schema(table: pl.DataFrame, spec: FeatureSpec) -> CheckOutcome:
    """Columns, their order and types are exactly the documented list for `spec`."""
    expected = {name: str(dtype) for name, dtype in spec.schema().items()}
    actual = {name: str(dtype) for name, dtype in table.schema.items()}
    missing = [c for c in expected if c not in actual]
    unexpected = [c for c in actual if c not in expected]
    wrong_type = {
        c: {"expected": expected[c], "actual": actual[c]}
        for c in expected
        if c in actual and actual[c] != expected[c]
    }
    order_ok = [c for c in actual if c in expected] == [c for c in expected if c in actual]
    spec_problems = _spec_problems(spec)
    passed = not (missing or unexpected or wrong_type or spec_problems) and order_ok
    return CheckOutcome(
        passed,
        {
            "expected_columns": len(expected),
            "actual_columns": len(actual),
            "missing": missing,
            "unexpected": unexpected,
            "wrong_type": wrong_type,
            "column_order_ok": order_ok,
            "spec_problems": spec_problems,
            "activity_types": list(spec.activity_types),
        },
    )


def _spec_problems(spec: FeatureSpec) -> list[str]:
    problems = []
    lifecycle = sorted(set(spec.activity_types) & LIFECYCLE_EVENT_TYPES)
    if lifecycle:
        problems.append(f"lifecycle types tracked as activity: {lifecycle}")
    untracked = sorted(set(spec.valued_types) - set(spec.activity_types))
    if untracked:
        problems.append(f"valued types that are not activity types: {untracked}")
    if len(set(spec.activity_types)) != len(spec.activity_types):
        problems.append("activity types repeat")
    return problems


def check_nulls(table: pl.DataFrame, spec: FeatureSpec) -> CheckOutcome:
    """No nulls outside `spec.nullable()` (key columns are never null)."""
    allowed = spec.nullable()
    counts = table.null_count().row(0, named=True) if table.width else {}
    offending = {c: n for c, n in counts.items() if n and c not in allowed}
    return CheckOutcome(
        not offending,
        {
            "columns_with_forbidden_nulls": offending,
            "nullable_columns": len(allowed & set(table.columns)),
            "rows": table.height,
        },
    )


def _range_rules(table: pl.DataFrame, as_of: date, spec: FeatureSpec) -> dict[str, pl.Expr]:
    """Rule name → expression that is True on a violating row (nulls never violate).

    Every rule follows from what the spec says a column is (`FeatureColumn`).
    """
    present = [c for c in spec.describe() if c.name in table.columns]
    names = {c.name for c in present}
    rules: dict[str, pl.Expr] = {}
    if "as_of" in table.columns:
        rules["as_of is the partition date"] = pl.col("as_of") != pl.lit(as_of, dtype=pl.Date)
    for c in present:
        if c.kind in NON_NEGATIVE_KINDS:
            rules[f"{c.name} >= 0"] = pl.col(c.name) < 0
    for c in present:
        if c.kind is Kind.RECENCY and c.window_days is not None:
            if "tenure_days" in names:
                rules[f"{c.name} <= tenure_days"] = pl.col(c.name) > pl.col("tenure_days")
            rules[f"{c.name} < {c.window_days}"] = pl.col(c.name) >= c.window_days
        elif c.kind is Kind.ACTIVE_DAYS and c.window_days is not None:
            rules[f"{c.name} <= {c.window_days}"] = pl.col(c.name) > c.window_days
    if "trend_28d" in names:
        rules["trend_28d > 0"] = pl.col("trend_28d") <= 0  # (events + 1) / (events + 1)
    # shorter windows never count more than the longer ones that contain them
    nested: dict[tuple[Kind, str | None], list[FeatureColumn]] = {}
    for c in present:
        if c.kind in (Kind.COUNT, Kind.ACTIVE_DAYS) and c.window_days is not None:
            nested.setdefault((c.kind, c.activity_type), []).append(c)
    for group in nested.values():
        ordered = sorted(group, key=lambda c: c.window_days)
        for short, long in zip(ordered, ordered[1:], strict=False):
            rules[f"{short.name} <= {long.name}"] = pl.col(short.name) > pl.col(long.name)
    return rules


def check_ranges(
    table: pl.DataFrame, as_of: date, spec: FeatureSpec, examples: int = 5
) -> CheckOutcome:
    """Counts >= 0, recency within tenure and the lookback, mrr >= 0, active days <= 28, …"""
    rules = _range_rules(table, as_of, spec)
    if not rules or table.is_empty():
        return CheckOutcome(True, {"rules": len(rules), "violations": {}})
    flags = table.select(
        pl.col("customer_id"), *[expr.fill_null(False).alias(name) for name, expr in rules.items()]
    )
    totals = flags.select(pl.exclude("customer_id").sum()).row(0, named=True)
    violations = {
        name: {
            "rows": int(n),
            "examples": flags.filter(pl.col(name))["customer_id"].head(examples).to_list(),
        }
        for name, n in totals.items()
        if n
    }
    return CheckOutcome(not violations, {"rules": len(rules), "violations": violations})


def read_feature_inputs(
    lake: Lake, as_of: date, version: int | None = None
) -> FeatureInputs | None:
    """The raw files the feature table of `as_of` was computed from (None: not recorded)."""
    try:
        body = read_feature_manifest(lake, as_of, version)
    except FeaturesMissing:
        return None
    return FeatureInputs.from_dict(as_of, body["inputs"]) if "inputs" in body else None


def active_customers(
    lake: Lake,
    as_of: date,
    inputs: FeatureInputs | None = None,
    churn: ChurnDefinition = CANCELLATION,
) -> pl.Series:
    """Customers active at the end of `as_of` under `churn`, straight from the raw events.

    Written apart from `compute_features` on purpose (the row-count check
    compares the two). Cancellation: a customer is active when its latest
    lifecycle event by (ts, event_id) is not a cancellation, or, with no
    lifecycle events at all, when it had any activity in the last
    `RECENT_ACTIVITY_DAYS`. Inactivity: when it had a qualifying event in the
    definition's N days up to `as_of`. With `inputs`, exactly those raw files
    are read: for today's partition the lake grows while the features run,
    and the check must judge the table by the lake it saw.
    """
    first_window_day = as_of - timedelta(days=LOOKBACK_DAYS - 1)
    if inputs is None:
        paths = [raw_path(f) for f in raw_files(lake, end=as_of)]
    else:
        paths = [*inputs.history_files, *inputs.window_files]
    if not paths:
        return pl.Series("customer_id", [], dtype=pl.String)
    older = [(day := event_date_of(path)) is None or day < first_window_day for path in paths]
    state = read_files(lake, paths, older, _STATE_COLUMNS)
    return _active_in(state, as_of, churn)


def active_customers_range(
    lake: Lake, inputs: Sequence[FeatureInputs], churn: ChurnDefinition = CANCELLATION
) -> dict[date, pl.Series]:
    """`active_customers` of each date's `inputs`, reading every raw file once."""
    together = range_inputs_of(inputs)
    if not together.files:
        return {d: pl.Series("customer_id", [], dtype=pl.String) for d in together.dates}
    state, _ = read_tagged(lake, together.tagged(), _STATE_COLUMNS)
    return {
        d: _active_in(events_as_of(state, together, d, lazy=True).drop(FILE_COLUMN), d, churn)
        for d in together.dates
    }


def _active_in(
    events: pl.DataFrame | pl.LazyFrame, as_of: date, churn: ChurnDefinition
) -> pl.Series:
    """Who is active at the end of `as_of` among `events` (state columns, in lake order).

    One lazy query: a filter copies only the columns its branch reads (half the
    time of filtering the frame first, at 10M events).
    """
    end = as_of_end(as_of)
    frame = events.lazy().filter(pl.col("ts") < end)
    is_lifecycle = pl.col("event_type").is_in(sorted(LIFECYCLE_EVENT_TYPES))
    if churn.is_inactivity:
        qualifying = ~is_lifecycle
        if churn.qualifying_types:
            qualifying = pl.col("event_type").is_in(list(churn.qualifying_types))
        since = end - timedelta(days=churn.horizon_days)
        active = frame.filter(qualifying & (pl.col("ts") >= since)).select("customer_id")
    else:
        # Duplicates (a replay produced twice) are dropped by event_id where they could
        # change the answer: among lifecycle events, whose order decides the state. A
        # duplicated activity event cannot change the set of recently active customers,
        # and de-duplicating millions of activity ids cost a large share of the check's
        # time (benchmarks/scale.py, docs/benchmarks.md).
        latest = (
            frame.filter(is_lifecycle)
            .unique(subset="event_id", keep="first", maintain_order=True)
            .sort(["customer_id", "ts", "event_id"])
            .group_by("customer_id")
            .agg(pl.col("event_type").last().alias("last_type"))
        )
        subscribed = latest.filter(pl.col("last_type") != SUBSCRIPTION_CANCELLED)
        recent = end - timedelta(days=RECENT_ACTIVITY_DAYS)
        recently_active = (
            frame.filter(~is_lifecycle & (pl.col("ts") >= recent))
            .select("customer_id")
            .unique()
            .join(latest.select("customer_id"), on="customer_id", how="anti")
        )
        active = pl.concat([subscribed.select("customer_id"), recently_active])
    return active.unique().sort("customer_id").collect()["customer_id"]


def check_row_count(table: pl.DataFrame, active: pl.Series, examples: int = 5) -> CheckOutcome:
    """One row per customer active at d, and no one else."""
    ids = table["customer_id"] if "customer_id" in table.columns else pl.Series([], dtype=pl.String)
    present = set(ids.to_list())
    expected = set(active.to_list())
    missing = sorted(expected - present)
    unexpected = sorted(present - expected)
    duplicates = ids.len() - ids.n_unique()
    passed = table.height == len(expected) and not (missing or unexpected or duplicates)
    return CheckOutcome(
        passed,
        {
            "rows": table.height,
            "active_customers": len(expected),
            "missing": len(missing),
            "missing_examples": missing[:examples],
            "unexpected": len(unexpected),
            "unexpected_examples": unexpected[:examples],
            "duplicate_customer_ids": duplicates,
        },
    )


# the blocking checks of every feature table, by the names Dagster shows them under
SCHEMA_CHECK = "schema_matches_feature_list"
NULLS_CHECK = "no_unexpected_nulls"
RANGES_CHECK = "values_in_range"
ROW_COUNT_CHECK = "one_row_per_active_customer"


def check_feature_tables(
    lake: Lake, versions: Mapping[date, int | None]
) -> dict[date, dict[str, CheckOutcome]]:
    """Every check of the feature table of each date at its version (None: the newest).

    The same judgements as `customer_features`' asset checks, date by date: the
    spec and churn definition from the table's footers, the row count against
    the customers active in exactly the raw files the table was computed from
    (`active_customers`; the raw files of all dates are read once).
    """
    recorded = {}
    for as_of, version in versions.items():
        files = _partition(lake, as_of, version)
        manifest = _manifest(lake, as_of, files, version)
        inputs = (
            FeatureInputs.from_dict(as_of, manifest["inputs"])
            if "inputs" in manifest
            else feature_inputs(lake, as_of)
        )
        recorded[as_of] = (
            FeatureSpec.from_dict(manifest),
            ChurnDefinition.from_dict(manifest.get("churn_definition")),
            inputs,
        )
    active: dict[date, pl.Series] = {}
    for churn in {churn for _, churn, _ in recorded.values()}:
        same = [inputs for _, c, inputs in recorded.values() if c == churn]
        active.update(active_customers_range(lake, same, churn))
    outcomes = {}
    for as_of, (spec, churn, _) in recorded.items():
        table = read_features(lake, as_of, version=versions[as_of])
        counted = check_row_count(table, active[as_of])
        outcomes[as_of] = {
            SCHEMA_CHECK: check_schema(table, spec),
            NULLS_CHECK: check_nulls(table, spec),
            RANGES_CHECK: check_ranges(table, as_of, spec),
            ROW_COUNT_CHECK: CheckOutcome(
                counted.passed, {**counted.details, "churn_definition": churn.key()}
            ),
        }
    return outcomes


# --- metadata --------------------------------------------------------------------


def null_rates(table: pl.DataFrame, spec: FeatureSpec, top: int = NULL_RATE_TOP) -> pl.DataFrame:
    """The `top` features by null rate (highest first; ties by name)."""
    features = [c for c in spec.columns() if c in table.columns]
    if not features:
        return pl.DataFrame(
            schema={"feature": pl.String, "nulls": pl.Int64, "null_rate": pl.Float64}
        )
    counts = table.select(features).null_count().row(0, named=True)
    rows = table.height
    frame = pl.DataFrame(
        {
            "feature": list(counts),
            "nulls": [int(n) for n in counts.values()],
            "null_rate": [n / rows if rows else 0.0 for n in counts.values()],
        }
    )
    return frame.sort(["null_rate", "feature"], descending=[True, False]).head(top)


def null_rates_markdown(table: pl.DataFrame, spec: FeatureSpec, top: int = NULL_RATE_TOP) -> str:
    lines = ["| feature | null rate | nulls |", "|---|---:|---:|"]
    for name, nulls, rate in null_rates(table, spec, top).iter_rows():
        lines.append(f"| `{name}` | {rate:.1%} | {nulls} |")
    return "\n".join(lines)
