"""Blocking checks on each `customer_features` partition: schema, nulls, ranges, row count.

Each check reads the materialized partition back from the lake, so it judges
what downstream assets will read, whichever engine wrote it; the table and
its spec are read at one version of the features table, so a rewrite while
the check runs cannot pair one run's rows with another's spec. A failed check
(severity ERROR) stops what is downstream in the same run: `churn_labels` in
`features_job`, `churn_scores` and `feature_drift` in the automated run of today.
"""

from collections.abc import Callable
from datetime import date

import dagster as dg
import polars as pl

from churn_platform.defs.automation import with_its_asset
from churn_platform.defs.resources.lake import LakeResource
from churn_platform.features.materialize import (
    NULLS_CHECK,
    RANGES_CHECK,
    ROW_COUNT_CHECK,
    SCHEMA_CHECK,
    CheckOutcome,
    FeaturesMissing,
    active_customers,
    check_nulls,
    check_ranges,
    check_row_count,
    check_schema,
    read_feature_churn,
    read_feature_inputs,
    read_feature_spec,
    read_features,
)
from churn_platform.lake import tables
from churn_platform.lake.store import Lake

FEATURES = dg.AssetKey("customer_features")

Judge = Callable[[Lake, date, pl.DataFrame, int | None], CheckOutcome]


def _judge_schema(lake: Lake, as_of: date, table: pl.DataFrame, version: int | None):
    return check_schema(table, read_feature_spec(lake, as_of, version))


def _judge_nulls(lake: Lake, as_of: date, table: pl.DataFrame, version: int | None):
    return check_nulls(table, read_feature_spec(lake, as_of, version))


def _judge_ranges(lake: Lake, as_of: date, table: pl.DataFrame, version: int | None):
    return check_ranges(table, as_of, read_feature_spec(lake, as_of, version))


def _judge_row_count(lake: Lake, as_of: date, table: pl.DataFrame, version: int | None):
    # judged against the raw files the table was computed from and the churn definition
    # it chose its customers by (both in the footers of the partition's data files)
    inputs = read_feature_inputs(lake, as_of, version)
    churn = read_feature_churn(lake, as_of, version)
    outcome = check_row_count(table, active_customers(lake, as_of, inputs, churn))
    return CheckOutcome(outcome.passed, {**outcome.details, "churn_definition": churn.key()})


def _evaluate(context: dg.AssetCheckExecutionContext, lake: Lake, judge: Judge):
    as_of = date.fromisoformat(context.partition_key)
    try:
        version = tables.version(lake, tables.FEATURES)
        passed, details = judge(lake, as_of, read_features(lake, as_of, version=version), version)
    except FeaturesMissing as exc:
        passed, details = False, {"error": str(exc)}
    if not passed:
        context.log.error(f"customer_features as of {as_of}: {details}")
    return dg.AssetCheckResult(
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            key: value if isinstance(value, int | float | str) else dg.MetadataValue.json(value)
            for key, value in details.items()
        },
    )


def build_feature_checks(
    partitions_def: dg.PartitionsDefinition,
) -> list[dg.AssetChecksDefinition]:
    """The four blocking checks of `customer_features`, partitioned like it."""

    def spec(name: str, description: str) -> dict:
        return {
            "asset": FEATURES,
            "name": name,
            "description": description,
            "blocking": True,
            "partitions_def": partitions_def,
            # Checks without a condition are left out of automated runs, so today's
            # features would reach churn_scores unchecked: these join every run that
            # the automation requests for their asset.
            "automation_condition": with_its_asset(),
        }

    @dg.asset_check(
        **spec(SCHEMA_CHECK, "Columns, order and types are the documented features for the spec.")
    )
    def schema_matches_feature_list(context: dg.AssetCheckExecutionContext, lake: LakeResource):
        return _evaluate(context, lake.lake(), _judge_schema)

    @dg.asset_check(**spec(NULLS_CHECK, "Nulls only in columns documented as nullable."))
    def no_unexpected_nulls(context: dg.AssetCheckExecutionContext, lake: LakeResource):
        return _evaluate(context, lake.lake(), _judge_nulls)

    @dg.asset_check(
        **spec(
            RANGES_CHECK,
            "Counts >= 0 and nested by window, recency <= tenure and within 365 days, mrr >= 0, "
            "active days within their window.",
        )
    )
    def values_in_range(context: dg.AssetCheckExecutionContext, lake: LakeResource):
        return _evaluate(context, lake.lake(), _judge_ranges)

    @dg.asset_check(
        **spec(
            ROW_COUNT_CHECK,
            "One row per customer active at the as-of date under the churn definition, "
            "recomputed from the raw events.",
        )
    )
    def one_row_per_active_customer(context: dg.AssetCheckExecutionContext, lake: LakeResource):
        return _evaluate(context, lake.lake(), _judge_row_count)

    return [
        schema_matches_feature_list,
        no_unexpected_nulls,
        values_in_range,
        one_row_per_active_customer,
    ]
