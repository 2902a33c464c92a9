"""The training set: feature tables at many as-of dates joined to their labels.

Point in time by construction: a row (customer, d) is the feature table of d
(events strictly before the end of d, see `features.definitions`) joined to the
label of d (cancellations in the horizon after d). Nothing is recomputed here;
the two tables are read from the lake as their assets wrote them, so the
training set sees exactly what scoring will see.

The as-of dates step back from the latest labelable date (the lake has seen
its whole horizon) by a cadence, default weekly, and never start before
`min_history_days` after the lake's first event: an as-of date with a week of
history has no 28-day windows to speak of. How many: by default enough for
the model's time split (`split_needs`: the holdout, the dates whose horizon
reaches into it and are purged, calibration, and `min_train_dates` to fit
on), so a 90-day horizon gets more dates than a 30-day one; a history too
short for even one training date is refused with the days it would need.

The churn definition is one: every feature table and label table stacked
must have been made under the same `ChurnDefinition`, and the training set
records it (and the activity types it saw) in its manifest.

Reproducible: a build reads the features and labels tables at one version
each (the newest when it starts, or the versions asked for), so it is one
consistent snapshot however the tables change meanwhile. The Delta table
`ml/training_set` is replaced whole by `write_training_set`; its manifest
(dates, columns, churn definition, the two input versions and a sha256 of the
rows, `content_sha256`) travels in the data file's footer and the commit. A
model records them, and `rebuild_training_set` reads those versions again to
prove the set can be made again exactly (`churn-platform training-set rebuild`).
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta

import polars as pl

from churn_platform.features.churn import CANCELLATION, ChurnDefinition
from churn_platform.features.definitions import (
    FeatureSpec,
    WindowsDiffer,
    current_windows,
    merge_specs,
)
from churn_platform.features.inputs import feature_inputs
from churn_platform.features.materialize import (
    CheckOutcome,
    FeaturesMissing,
    check_feature_tables,
    first_event_date,
    materialize_features_range,
    read_feature_churn,
    read_feature_manifest,
    read_feature_spec,
    read_features,
)
from churn_platform.features.options import BeamRunnerSettings
from churn_platform.lake import tables
from churn_platform.lake.store import Lake, LakeError
from churn_platform.ml.frame import KEY_COLUMNS, LABEL_COLUMN, feature_columns, model_input
from churn_platform.ml.labels import (
    LabelsMissing,
    complete_through,
    materialize_labels_range,
    read_labels,
)

# the footer key of the training set's data file: its manifest
TRAINING_SET_KEY = "churn_platform.training_set"
DEFAULT_CADENCE_DAYS = 7
DEFAULT_MIN_HISTORY_DAYS = 28
DEFAULT_HOLDOUT_DATES = 2
DEFAULT_CALIBRATION_DATES = 1
DEFAULT_MIN_TRAIN_DATES = 5


class TrainingSetError(LakeError):
    """The lake cannot give the training set that was asked for."""


@dataclass(frozen=True)
class SplitNeeds:
    """How many as-of dates the model's time split takes (see `ml.train.split_by_time`)."""

    holdout_dates: int = DEFAULT_HOLDOUT_DATES
    calibration_dates: int = DEFAULT_CALIBRATION_DATES
    min_train_dates: int = DEFAULT_MIN_TRAIN_DATES

    def purged(self, horizon_days: int, cadence_days: int) -> int:
        """Dates before the holdout whose label horizon reaches into it (d + h > holdout)."""
        return -(-horizon_days // cadence_days) - 1

    def minimum(self, horizon_days: int, cadence_days: int) -> int:
        """Dates for a split with a single training date."""
        purged = self.purged(horizon_days, cadence_days)
        return self.holdout_dates + purged + self.calibration_dates + 1

    def default_count(self, horizon_days: int, cadence_days: int) -> int:
        """Dates for a split with `min_train_dates` training dates."""
        return self.minimum(horizon_days, cadence_days) - 1 + self.min_train_dates


@dataclass(frozen=True)
class TrainingDates:
    """Which as-of dates a training set uses, and why."""

    dates: list[date]
    latest_labelable: date
    first_allowed: date
    cadence_days: int
    wanted: int = 0  # how many were asked for (fewer when the history is shorter)


@dataclass
class TrainingSet:
    table: pl.DataFrame
    dates: list[date]
    features: list[str]
    computed: list[str] = field(default_factory=list)  # "customer_features 2026-01-07", ...
    seconds: float = 0.0
    churn: ChurnDefinition = CANCELLATION
    spec: FeatureSpec | None = None  # the activity types the feature tables tracked
    # the versions of the tables it was built from, and (once written or read) its own
    features_version: int | None = None
    labels_version: int | None = None
    version: int | None = None
    # (the table it was computed from, sha256): computed once per table, not per call
    _hashed: tuple[pl.DataFrame, str] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def manifest(self) -> dict:
        return {
            "dates": [d.isoformat() for d in self.dates],
            "rows": self.rows,
            "churned": self.positives,
            "features": self.features,
            "churn_definition": self.churn.to_dict(),
            "feature_spec": self.spec.to_dict() if self.spec else None,
            "features_version": self.features_version,
            "labels_version": self.labels_version,
            "sha256": self.sha256(),
        }

    def lineage(self) -> dict:
        """What a model records to rebuild this set: dates, table versions, content hash."""
        return {
            "dates": [d.isoformat() for d in self.dates],
            "features_version": self.features_version,
            "labels_version": self.labels_version,
            "training_set_version": self.version,
            "sha256": self.sha256(),
        }

    def sha256(self) -> str:
        """`content_sha256` of the table (the set's manifest, metadata and lineage ask)."""
        if self._hashed is None or self._hashed[0] is not self.table:
            self._hashed = (self.table, content_sha256(self.table))
        return self._hashed[1]

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


def content_sha256(table: pl.DataFrame) -> str:
    """sha256 of the rows sorted by (as_of, customer_id), as CSV with a header.

    CSV rather than a binary format: the digest follows the values (shortest
    round-trip floats, ISO dates), not a library's encoding, so a set rebuilt
    by a later polars version still compares.
    """
    keys = [c for c in KEY_COLUMNS if c in table.columns]
    ordered = table.sort(keys) if keys and table.height else table
    text = io.BytesIO()  # the CSV's UTF-8 bytes as written, not decoded and encoded again
    ordered.write_csv(text)
    return hashlib.sha256(text.getbuffer()).hexdigest()


def training_dates(
    lake: Lake,
    churn: ChurnDefinition = CANCELLATION,
    *,
    cadence_days: int = DEFAULT_CADENCE_DAYS,
    count: int | None = None,
    min_history_days: int = DEFAULT_MIN_HISTORY_DAYS,
    latest: date | None = None,
    split: SplitNeeds | None = None,
    require: int | None = None,
) -> TrainingDates:
    """As-of dates `cadence_days` apart, ending at the latest labelable one.

    `count` dates (default: what `split` needs with its `min_train_dates`), fewer
    when the history is shorter, but never fewer than `require` (default: a
    split with one training date): then `TrainingSetError` says how many days of
    events that would take and which settings change it.
    """
    if cadence_days < 1:
        raise ValueError(f"cadence_days must be at least 1 (got {cadence_days})")
    split = split or SplitNeeds()
    horizon_days = churn.horizon_days
    wanted = split.default_count(horizon_days, cadence_days) if count is None else count
    if wanted < 1:
        raise ValueError(f"date count must be at least 1 (got {wanted})")
    needed = split.minimum(horizon_days, cadence_days) if require is None else require
    needed = min(needed, wanted)
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
    dates = [last - timedelta(days=cadence_days * i) for i in range(wanted)]
    dates = sorted(d for d in dates if d >= first_allowed)
    if len(dates) < needed:
        span = (through - first).days + 2  # through is the day before the latest event date
        days_needed = min_history_days + (needed - 1) * cadence_days + horizon_days + 2
        if needed > 1:
            purged = split.purged(horizon_days, cadence_days)
            layout = (
                f"{needed} as-of dates {cadence_days} days apart ({split.holdout_dates} holdout, "
                f"{purged} purged because their {horizon_days}-day horizon reaches into the "
                f"holdout, {split.calibration_dates} calibration, 1 to train on)"
            )
        else:
            layout = "one labelable as-of date"
        last_event = through + timedelta(days=1)
        raise TrainingSetError(
            f"not enough history to train: the lake holds events dated {first.isoformat()}.."
            f"{last_event.isoformat()} ({span} days, complete through {through.isoformat()}); "
            f"{min_history_days} days of "
            f"warm-up, {layout} and a {horizon_days}-day label horizon after the last need at "
            f"least {days_needed} days of events. Replay or wait for more history, or lower "
            f"the horizon (CHURN_HORIZON_DAYS), training_set's cadence_days or "
            f"min_history_days, or churn_model's holdout_dates"
        )
    return TrainingDates(dates, labelable, first_allowed, cadence_days, wanted)


@tables.reuses_opened_tables
def ensure_inputs(
    lake: Lake,
    dates: Sequence[date],
    churn: ChurnDefinition = CANCELLATION,
    *,
    engine: str = "polars",
    runner: BeamRunnerSettings | None = None,
    on_computed: Callable[[str, date], None] | None = None,
    on_checked: Callable[[date, dict[str, CheckOutcome]], None] | None = None,
) -> list[str]:
    """Materialize the feature tables and labels of `dates` that the lake lacks.

    Returns what was computed ("customer_features 2026-01-07", ...). Feature
    tables made under another churn definition (they hold other customers),
    over other windows than the code's (`WINDOWS_DAYS`, `VALUE_WINDOW_DAYS`) or
    from other raw files than the lake holds for their date today (late
    events) are computed again, all in one pass over the events
    (`materialize_features_range`), and each computed table must pass the
    feature checks (`check_feature_tables`: schema, nulls, ranges, one row per
    active customer) before it is labelled; `on_checked` hears every outcome.
    Labels of another definition or horizon, or of recomputed features, are
    computed again.
    """
    stale = [as_of for as_of in dates if not _features_current(lake, as_of, churn)]
    computed: list[str] = []
    if stale:
        results = materialize_features_range(lake, stale, engine=engine, runner=runner, churn=churn)
        for result in results:
            computed.append(f"customer_features {result.as_of.isoformat()}")
            if on_computed:
                on_computed("customer_features", result.as_of)
        checked = check_feature_tables(lake, {r.as_of: r.version for r in results})
        for as_of, outcomes in checked.items():
            if on_checked:
                on_checked(as_of, outcomes)
        for as_of, outcomes in checked.items():
            failed = [name for name, outcome in outcomes.items() if not outcome.passed]
            if failed:
                raise TrainingSetError(
                    f"customer_features as of {as_of.isoformat()} failed its checks "
                    f"({', '.join(failed)}): {outcomes[failed[0]].details}"
                )
    unlabelled = [d for d in dates if d in stale or not _labels_current(lake, d, churn)]
    customers = {
        as_of: read_features(lake, as_of, columns=["customer_id"])["customer_id"]
        for as_of in unlabelled
    }
    for result in materialize_labels_range(lake, customers, churn):
        computed.append(f"churn_labels {result.as_of.isoformat()}")
        if on_computed:
            on_computed("churn_labels", result.as_of)
    return computed


def _features_current(lake: Lake, as_of: date, churn: ChurnDefinition) -> bool:
    """The lake holds the feature table of `as_of` as it would be computed now."""
    try:
        manifest = read_feature_manifest(lake, as_of)
    except FeaturesMissing:
        return False
    spec = FeatureSpec.from_dict(manifest)
    recorded = ChurnDefinition.from_dict(manifest.get("churn_definition"))
    if not recorded.same_population(churn) or spec.windows() != current_windows():
        return False
    inputs = manifest.get("inputs")
    return inputs is not None and inputs == feature_inputs(lake, as_of).to_dict()


def _labels_current(lake: Lake, as_of: date, churn: ChurnDefinition) -> bool:
    try:
        labels = read_labels(lake, as_of)
    except LabelsMissing:
        return False
    return labels.height == 0 or labels["churn_definition"][0] == churn.key()


def join_date(
    lake: Lake,
    as_of: date,
    churn: ChurnDefinition | None = None,
    features_version: int | None = None,
    labels_version: int | None = None,
) -> pl.DataFrame:
    """The feature table of `as_of` with its labels; every active customer labelled once."""
    features = read_features(lake, as_of, version=features_version)
    try:
        labels = read_labels(lake, as_of, labels_version)
    except LabelsMissing as exc:
        raise TrainingSetError(str(exc)) from exc
    if churn is not None and labels.height and labels["churn_definition"][0] != churn.key():
        raise TrainingSetError(
            f"labels of {as_of.isoformat()} follow the churn definition "
            f"{labels['churn_definition'][0]}, its feature table {churn.key()}: rematerialize "
            "churn_labels for that date (training_set does it with fill_missing)"
        )
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


@tables.reuses_opened_tables
def build_training_set(
    lake: Lake,
    dates: Sequence[date],
    churn: ChurnDefinition | None = None,
    *,
    features_version: int | None = None,
    labels_version: int | None = None,
) -> TrainingSet:
    """Stack the labelled feature tables of `dates` with one column set.

    Reads the features and labels tables at `features_version` and
    `labels_version` (default: each table's newest version when the build
    starts, so the whole build sees one snapshot), recorded in the result.

    Activity types discovered at one date but absent at another get the neutral
    fill of `frame.model_input` (counts 0, "days since" null), so every row has
    every feature. Every feature table must hold the customers of `churn`
    (default: the definition the tables recorded, which must be one) and every
    label table must follow it exactly.
    """
    started = time.perf_counter()
    dates = sorted(dates)
    if features_version is None:
        features_version = tables.version(lake, tables.FEATURES)
    if labels_version is None:
        labels_version = tables.version(lake, tables.LABELS)
    recorded = _one_definition(lake, dates, features_version)
    churn = churn or recorded
    if not recorded.same_population(churn):
        raise TrainingSetError(
            f"the feature tables of the training dates hold the customers active under "
            f"{recorded.key()}, not {churn.key()}: rematerialize customer_features for those "
            "dates (training_set does it with fill_missing)"
        )
    try:
        spec = merge_specs(read_feature_spec(lake, d, features_version) for d in dates)
    except WindowsDiffer as exc:
        raise TrainingSetError(f"{exc} (training_set does it with fill_missing)") from exc
    frames = [join_date(lake, d, churn, features_version, labels_version) for d in dates]
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
        dates=dates,
        features=features,
        seconds=time.perf_counter() - started,
        churn=churn,
        spec=spec,
        features_version=features_version,
        labels_version=labels_version,
    )


def _one_definition(
    lake: Lake, dates: Sequence[date], features_version: int | None = None
) -> ChurnDefinition:
    found: dict[ChurnDefinition, list[date]] = {}
    for as_of in dates:
        found.setdefault(read_feature_churn(lake, as_of, features_version), []).append(as_of)
    first = next(iter(found), CANCELLATION)
    if not all(first.same_population(other) for other in found):
        described = "; ".join(
            f"{churn.key()} at {', '.join(d.isoformat() for d in chosen[:3])}"
            for churn, chosen in found.items()
        )
        raise TrainingSetError(
            f"the feature tables of the training dates were made under different churn "
            f"definitions ({described}): rematerialize customer_features for those dates "
            "(training_set does it with fill_missing)"
        )
    return next(iter(found)) if found else CANCELLATION


def write_training_set(lake: Lake, training: TrainingSet) -> int:
    """Replace the training set (the whole table) in one commit; returns its version.

    Sets `training.version`. The manifest goes into the data file's footer
    (read back with the rows, at any version) and the commit (the history).
    """
    manifest = training.manifest()
    training.version = tables.write(
        lake,
        tables.TRAINING_SET,
        training.table.to_arrow(),
        replace_all=True,
        metadata=manifest,
        file_metadata={TRAINING_SET_KEY: json.dumps(manifest)},
    )
    return training.version


def read_training_set(lake: Lake, version: int | None = None) -> TrainingSet:
    """The training set at the table's `version` (default: the last one written)."""
    table = tables.open_table(lake, tables.TRAINING_SET, version)
    files = [] if table is None else tables.data_files(lake, tables.TRAINING_SET, table=table)
    if not files:
        raise TrainingSetError(
            f"no training set in {tables.table_uri(lake, tables.TRAINING_SET)}: "
            "materialize training_set first"
        )
    read_version = table.version()
    manifest: dict | None = None
    for data_file in files:
        footer = tables.file_metadata(lake, tables.TRAINING_SET, data_file, version)
        text = footer.get(TRAINING_SET_KEY)
        if text is None:
            raise LakeError(
                f"{lake.url(tables.file_path(tables.TRAINING_SET, data_file))} carries no "
                f"training set manifest ({TRAINING_SET_KEY} in its footer): materialize "
                "training_set again"
            )
        manifest = json.loads(text)
    assert manifest is not None
    columns = [*KEY_COLUMNS, *manifest["features"], LABEL_COLUMN]
    rows = pl.from_arrow(
        tables.read_arrow(lake, tables.TRAINING_SET, columns, version=read_version, files=files)
    )
    spec = manifest.get("feature_spec")
    return TrainingSet(
        table=rows,
        dates=[date.fromisoformat(d) for d in manifest["dates"]],
        features=list(manifest["features"]),
        churn=ChurnDefinition.from_dict(manifest.get("churn_definition")),
        spec=FeatureSpec.from_dict(spec) if spec else None,
        features_version=manifest.get("features_version"),
        labels_version=manifest.get("labels_version"),
        version=read_version,
    )


@dataclass(frozen=True)
class Rebuilt:
    """A training set built again from the table versions a model recorded."""

    training: TrainingSet
    recorded_sha256: str

    @property
    def equal(self) -> bool:
        return self.training.sha256() == self.recorded_sha256


def rebuild_training_set(lake: Lake, lineage: dict, churn: ChurnDefinition) -> Rebuilt:
    """Build the training set of `lineage` (a model's record) again from its table versions.

    Raises `TrainingSetError` when the lineage lacks what a rebuild needs, and
    `LakeError` when a version can no longer be read (its log or files were
    removed by vacuum after the retention).
    """
    missing = [
        key
        for key in ("dates", "features_version", "labels_version", "sha256")
        if lineage.get(key) is None
    ]
    if missing:
        raise TrainingSetError(
            f"the model's training record lacks {', '.join(missing)}: it was trained before "
            "training sets recorded their table versions; only models trained since can be "
            "rebuilt"
        )
    training = build_training_set(
        lake,
        [date.fromisoformat(d) for d in lineage["dates"]],
        churn,
        features_version=int(lineage["features_version"]),
        labels_version=int(lineage["labels_version"]),
    )
    return Rebuilt(training, lineage["sha256"])
