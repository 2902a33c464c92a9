"""The training set: feature tables at many as-of dates joined to their labels.

Point in time by construction: a row (customer, d) is the feature table of d
(events strictly before the end of d, see `features.definitions`) joined to the
label of d (cancellations in the horizon after d). Nothing is recomputed here;
the two tables are read from the lake as their assets wrote them, so the
training set sees exactly what scoring will see.

The as-of dates step back from the latest labelable date (the lake has seen
its whole horizon) by a cadence, default weekly, and never start before
`min_history_days` after the lake's first event: an as-of date with a week of
history has no 28-day windows to speak of.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta

import polars as pl

from churn_platform.features.materialize import (
    FeaturesMissing,
    first_event_date,
    materialize_features,
    read_features,
)
from churn_platform.features.options import BeamRunnerSettings
from churn_platform.lake.store import Lake, LakeError
from churn_platform.ml.frame import KEY_COLUMNS, LABEL_COLUMN, feature_columns, model_input
from churn_platform.ml.labels import (
    DEFAULT_HORIZON_DAYS,
    complete_through,
    materialize_labels,
    read_labels,
)

TRAINING_SET_PATH = "ml/training_set/training_set.parquet"
DEFAULT_CADENCE_DAYS = 7
DEFAULT_DATE_COUNT = 12
DEFAULT_MIN_HISTORY_DAYS = 28


class TrainingSetError(LakeError):
    """The lake cannot give the training set that was asked for."""


@dataclass(frozen=True)
class TrainingDates:
    """Which as-of dates a training set uses, and why."""

    dates: list[date]
    latest_labelable: date
    first_allowed: date
    cadence_days: int


@dataclass
class TrainingSet:
    table: pl.DataFrame
    dates: list[date]
    features: list[str]
    computed: list[str] = field(default_factory=list)  # "customer_features 2026-01-07", ...
    seconds: float = 0.0

    @property
    def rows(self) -> int:
        return self.table.height

    @property
    def positives(self) -> int:
        return int(self.table[LABEL_COLUMN].sum())

    def per_date(self) -> pl.DataFrame:
        """Rows, churned and churn rate per as-of date."""
        return (
            self.table.group_by("as_of")
            .agg(
                pl.len().alias("rows"),
                pl.col(LABEL_COLUMN).sum().alias("churned"),
                pl.col(LABEL_COLUMN).mean().round(4).alias("churn_rate"),
            )
            .sort("as_of")
        )


def training_dates(
    lake: Lake,
    *,
    cadence_days: int = DEFAULT_CADENCE_DAYS,
    count: int = DEFAULT_DATE_COUNT,
    horizon_days: int = DEFAULT_HORIZON_DAYS,
    min_history_days: int = DEFAULT_MIN_HISTORY_DAYS,
    latest: date | None = None,
) -> TrainingDates:
    """Up to `count` as-of dates, `cadence_days` apart, ending at the latest labelable one."""
    if cadence_days < 1:
        raise ValueError(f"cadence_days must be at least 1 (got {cadence_days})")
    if count < 1:
        raise ValueError(f"date count must be at least 1 (got {count})")
    first = first_event_date(lake)
    through = complete_through(lake)
    if first is None or through is None:
        raise TrainingSetError(
            f"the lake at {lake.url('')} holds no committed events: "
            "materialize raw_customer_events first"
        )
    labelable = through - timedelta(days=horizon_days)
    last = min(latest, labelable) if latest else labelable
    first_allowed = first + timedelta(days=min_history_days)
    dates = [last - timedelta(days=cadence_days * i) for i in range(count)]
    dates = sorted(d for d in dates if d >= first_allowed)
    if not dates:
        raise TrainingSetError(
            f"no as-of date is both labelable and has {min_history_days} days of history: the "
            f"lake covers {first.isoformat()}..{through.isoformat()} and a {horizon_days}-day "
            f"horizon needs events through d + {horizon_days}; the lake needs at least "
            f"{min_history_days + horizon_days + 2} days of events (or lower min_history_days)"
        )
    return TrainingDates(dates, labelable, first_allowed, cadence_days)


def ensure_inputs(
    lake: Lake,
    dates: Sequence[date],
    *,
    engine: str = "polars",
    runner: BeamRunnerSettings | None = None,
    horizon_days: int = DEFAULT_HORIZON_DAYS,
    on_computed: Callable[[str, date], None] | None = None,
) -> list[str]:
    """Materialize the feature tables and labels of `dates` that the lake lacks.

    Returns what was computed ("customer_features 2026-01-07", ...). Labels of
    another horizon are recomputed.
    """
    computed: list[str] = []
    for as_of in dates:
        try:
            customers = read_features(lake, as_of, columns=["customer_id"])["customer_id"]
        except FeaturesMissing:
            materialize_features(lake, as_of, engine=engine, runner=runner)
            customers = read_features(lake, as_of, columns=["customer_id"])["customer_id"]
            computed.append(f"customer_features {as_of.isoformat()}")
            if on_computed:
                on_computed("customer_features", as_of)
        if not _labels_current(lake, as_of, horizon_days):
            materialize_labels(lake, customers, as_of, horizon_days)
            computed.append(f"churn_labels {as_of.isoformat()}")
            if on_computed:
                on_computed("churn_labels", as_of)
    return computed


def _labels_current(lake: Lake, as_of: date, horizon_days: int) -> bool:
    try:
        labels = read_labels(lake, as_of)
    except FileNotFoundError:
        return False
    return labels.height == 0 or int(labels["horizon_days"][0]) == horizon_days


def join_date(lake: Lake, as_of: date) -> pl.DataFrame:
    """The feature table of `as_of` with its labels; every active customer labelled once."""
    features = read_features(lake, as_of)
    try:
        labels = read_labels(lake, as_of)
    except FileNotFoundError as exc:
        raise TrainingSetError(str(exc)) from exc
    labels = labels.select("customer_id", LABEL_COLUMN)
    joined = features.join(labels, on="customer_id", how="left")
    unlabelled = joined.filter(pl.col(LABEL_COLUMN).is_null()).height
    if unlabelled or labels.height != features.height:
        raise TrainingSetError(
            f"labels of {as_of.isoformat()} do not match its feature table ({features.height} "
            f"customers with features, {labels.height} labels, {unlabelled} customers without "
            "a label): rematerialize churn_labels for that date"
        )
    return joined


def build_training_set(lake: Lake, dates: Sequence[date]) -> TrainingSet:
    """Stack the labelled feature tables of `dates` with one column set.

    Activity types discovered at one date but absent at another get the neutral
    fill of `frame.model_input` (counts 0, "days since" null), so every row has
    every feature.
    """
    started = time.perf_counter()
    frames = [join_date(lake, d) for d in sorted(dates)]
    features: list[str] = []
    for frame in frames:
        features += [c for c in feature_columns(frame) if c not in features]
    aligned = [
        pl.concat(
            [
                frame.select(*KEY_COLUMNS),
                model_input(frame, features),
                frame.select(pl.col(LABEL_COLUMN).cast(pl.Boolean)),
            ],
            how="horizontal",
        )
        for frame in frames
    ]
    table = pl.concat(aligned, how="vertical") if aligned else pl.DataFrame()
    return TrainingSet(
        table=table,
        dates=sorted(dates),
        features=features,
        seconds=time.perf_counter() - started,
    )


def write_training_set(lake: Lake, training: TrainingSet) -> str:
    lake.write_parquet(TRAINING_SET_PATH, training.table.to_arrow())
    return TRAINING_SET_PATH


def read_training_set(lake: Lake) -> TrainingSet:
    """The training set last written by the `training_set` asset."""
    if not lake.exists(TRAINING_SET_PATH):
        raise TrainingSetError(
            f"no training set at {lake.url(TRAINING_SET_PATH)}: materialize training_set first"
        )
    try:
        with lake.fs.open(lake.path(TRAINING_SET_PATH), "rb") as handle:
            table = pl.read_parquet(handle)
    except Exception as exc:  # a damaged file is named, never read as empty
        raise LakeError(f"could not read {lake.url(TRAINING_SET_PATH)}: {exc}") from exc
    dates = sorted(table["as_of"].unique().to_list())
    return TrainingSet(table=table, dates=dates, features=feature_columns(table))
