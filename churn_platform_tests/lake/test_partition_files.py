"""lake.tables.partition_files: one partition's files, or the reader's own error naming the fix."""

from __future__ import annotations

from datetime import date

import pyarrow as pa
import pytest

from churn_platform.features.materialize import FeaturesMissing, feature_files
from churn_platform.lake import tables
from churn_platform.lake.store import Lake
from churn_platform.ml.labels import LabelsMissing, read_labels
from churn_platform.ml.score import ScoresMissing, read_scores

AS_OF = date(2024, 3, 1)


class NothingThere(LookupError):
    pass


def test_each_reader_raises_its_own_error_naming_the_asset_to_materialize(tmp_path):
    lake = Lake(tmp_path / "lake")
    for read, missing, asset in (
        (feature_files, FeaturesMissing, "customer_features"),
        (read_labels, LabelsMissing, "churn_labels"),
        (read_scores, ScoresMissing, "churn_scores"),
    ):
        with pytest.raises(missing, match=f"materialize {asset} for 2024-03-01 first"):
            read(lake, AS_OF)


def test_the_files_of_one_partition_and_the_version_in_the_message(tmp_path):
    lake = Lake(tmp_path / "lake")
    labels = pa.table(
        {
            "customer_id": ["c1", "c2"],
            "as_of": [AS_OF, AS_OF],
            "churned": [True, False],
            "horizon_days": [30, 30],
            "churn_definition": ["cancellation", "cancellation"],
        },
        schema=tables.LABELS_SCHEMA,
    )
    version = tables.write(lake, tables.LABELS, labels, replace={"as_of": AS_OF})
    found = tables.partition_files(
        lake, tables.LABELS, {"as_of": AS_OF}, NothingThere, what="labels", producer="x"
    )
    assert [f.partition for f in found] == [{"as_of": "2024-03-01"}]
    assert sum(f.rows or 0 for f in found) == 2
    with pytest.raises(NothingThere) as missing:
        tables.partition_files(
            lake,
            tables.LABELS,
            {"as_of": date(2024, 3, 8)},
            NothingThere,
            what="labels",
            producer="churn_labels",
            version=version,
        )
    assert str(missing.value) == (
        f"no labels for 2024-03-08 in {tables.table_uri(lake, tables.LABELS)} at version "
        f"{version}: materialize churn_labels for 2024-03-08 first"
    )
