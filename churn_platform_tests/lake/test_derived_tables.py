"""The derived tables (features, labels, training set, scores) as other readers see them.

Each table read by a reader that knows nothing of this project (polars'
`read_delta`, delta-rs' pyarrow dataset) holds the same rows as the project's
reader; a writer killed after writing its files but before its commit changes
no reader's view; a damaged data file is a `LakeError` naming it.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime

import polars as pl
import pytest
from deltalake import DeltaTable
from polars.testing import assert_frame_equal

from churn_platform.features.materialize import (
    materialize_features,
    read_feature_spec,
    read_features,
)
from churn_platform.features.pipeline import FrameBatch, WriteShardFn
from churn_platform.features.reference import reference_features
from churn_platform.lake import tables
from churn_platform.lake.store import Lake, LakeError
from churn_platform.ml.labels import read_labels
from churn_platform.ml.score import SCORES_SCHEMA, read_scores, write_scores
from churn_platform.ml.training_set import (
    build_training_set,
    read_training_set,
    write_training_set,
)
from churn_platform_tests.ml.ml_lake import copy_lake

SCORED_AT = datetime(2026, 7, 1, 6, tzinfo=UTC)


def other_readers(lake: Lake, spec: tables.TableSpec) -> list[pl.DataFrame]:
    uri = tables.table_uri(lake, spec)
    return [
        pl.read_delta(uri),
        pl.from_arrow(DeltaTable(uri).to_pyarrow_dataset().to_table()),
    ]


def same_rows(theirs: pl.DataFrame, ours: pl.DataFrame, keys: list[str]) -> None:
    theirs = theirs.select(ours.columns).cast(dict(ours.schema)).sort(keys)
    assert_frame_equal(theirs, ours.sort(keys))


def reasons_of(i: int) -> list[dict]:
    """Every third row has none, as a baseline model's rows; the others one or two."""
    return [
        {
            "feature": f"feature_{k}",
            "text": f"feature {k}: {i % 7} (typical 3)",
            "value": float(i % 7),
            "typical": 3.0,
            "contribution": 0.5 / (k + 1),
        }
        for k in range(i % 3)
    ]


def scores_of(features: pl.DataFrame, as_of: date) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "customer_id": features["customer_id"],
            "as_of": [as_of] * features.height,
            "churn_probability": [(i % 97) / 97 for i in range(features.height)],
            "risk_band": ["low"] * features.height,
            "model_version": ["v1"] * features.height,
            "scored_at": [SCORED_AT] * features.height,
            "reasons": [reasons_of(i) for i in range(features.height)],
        },
        schema=SCORES_SCHEMA,
    )


@pytest.fixture(scope="module")
def lake(ml_lake, tmp_path_factory) -> Lake:
    """The ML lake's features and labels, plus a training set and scores of two dates."""
    copy = copy_lake(ml_lake.lake, tmp_path_factory.mktemp("derived") / "lake")
    write_training_set(copy, build_training_set(copy, ml_lake.dates.dates))
    for as_of in ml_lake.dates.dates[-2:]:
        write_scores(copy, scores_of(read_features(copy, as_of), as_of), as_of)
    return copy


def test_features_read_the_same_by_every_reader(lake, ml_lake):
    dates = ml_lake.dates.dates
    ours = pl.concat([read_features(lake, d) for d in dates], how="diagonal_relaxed")
    for theirs in other_readers(lake, tables.FEATURES):
        assert theirs.height == ours.height
        # the table holds the union of every date's columns; a date's own are its spec's
        same_rows(theirs, ours, ["as_of", "customer_id"])
    d = dates[-1]
    one = pl.read_delta(tables.table_uri(lake, tables.FEATURES)).filter(pl.col("as_of") == d)
    spec = read_feature_spec(lake, d)
    assert_frame_equal(one.select(list(spec.schema())).sort("customer_id"), read_features(lake, d))
    assert_frame_equal(read_features(lake, d), reference_features(lake, d))


def test_labels_read_the_same_by_every_reader(lake, ml_lake):
    ours = pl.concat([read_labels(lake, d) for d in ml_lake.dates.dates])
    for theirs in other_readers(lake, tables.LABELS):
        same_rows(theirs, ours, ["as_of", "customer_id"])


def test_the_training_set_reads_the_same_by_every_reader(lake):
    ours = read_training_set(lake).table
    for theirs in other_readers(lake, tables.TRAINING_SET):
        same_rows(theirs, ours, ["as_of", "customer_id"])


def test_scores_read_the_same_by_every_reader(lake, ml_lake):
    ours = pl.concat([read_scores(lake, d) for d in ml_lake.dates.dates[-2:]])
    assert ours.schema == SCORES_SCHEMA  # milliseconds back, though Delta keeps microseconds
    for theirs in other_readers(lake, tables.SCORES):
        same_rows(theirs, ours, ["as_of", "customer_id"])


def test_a_writer_killed_before_its_commit_changes_no_readers_view(lake, ml_lake, tmp_path):
    """Files written (a Beam worker's, a scorer's), then the process dies: no commit, no rows."""
    lake = copy_lake(lake, tmp_path / "lake")
    d = ml_lake.dates.dates[-1]
    before = {
        spec.name: [r.sort(r.columns[:2]) for r in other_readers(lake, spec)]
        for spec in (tables.FEATURES, tables.SCORES)
    }
    features = read_features(lake, d)
    versions = {s.name: tables.version(lake, s) for s in (tables.FEATURES, tables.SCORES)}

    # a feature shard written by the pipeline's own DoFn, and a scores file, never committed
    shard = WriteShardFn(lake.uri, d, 1)
    shard.setup()
    shard.start_bundle()  # as Beam calls it: the write runs beside the bundle
    list(shard.process((0, FrameBatch(0, features.head(5))), read_feature_spec(lake, d)))
    (finished,) = shard.finish_bundle()
    written = finished.value
    assert lake.exists(tables.file_path(tables.FEATURES, written))
    tables.write_file(
        lake,
        tables.SCORES,
        scores_of(features.head(5), d).to_arrow(),
        {"as_of": d},
    )

    assert_frame_equal(read_features(lake, d), features)
    assert read_scores(lake, d).height == features.height
    for spec in (tables.FEATURES, tables.SCORES):
        assert tables.version(lake, spec) == versions[spec.name]
        for theirs, then in zip(other_readers(lake, spec), before[spec.name], strict=True):
            assert_frame_equal(theirs.sort(theirs.columns[:2]), then)

    # the next run commits its own files and replaces the partition: the orphans stay unseen
    materialize_features(lake, d, engine="polars")
    assert_frame_equal(read_features(lake, d), features)


@pytest.mark.parametrize(
    "spec",
    [tables.FEATURES, tables.LABELS, tables.TRAINING_SET, tables.SCORES],
    ids=lambda spec: spec.name,
)
def test_a_damaged_data_file_is_an_error_naming_it(lake, ml_lake, tmp_path, spec):
    lake = copy_lake(lake, tmp_path / "lake")
    d = ml_lake.dates.dates[-1]
    where = {"as_of": d} if spec.partition_by else None
    (victim, *_) = tables.data_files(lake, spec, where)
    path = tables.file_path(spec, victim)
    data = lake.read_bytes(path)
    lake.write_bytes(path, data[: len(data) // 2])
    read = {
        tables.FEATURES.name: lambda: read_features(lake, d),
        tables.LABELS.name: lambda: read_labels(lake, d),
        tables.TRAINING_SET.name: lambda: read_training_set(lake),
        tables.SCORES.name: lambda: read_scores(lake, d),
    }[spec.name]
    with pytest.raises(LakeError, match=re.escape(lake.url(path))):
        read()
