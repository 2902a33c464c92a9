"""Feature assets: per-customer features and churn labels, one partition per as-of date.

Built by `build_feature_assets(partitions_def)` because the partitions' start
date is decided when definitions load (see `definitions.py`), never at import.

`customer_features` follows the data by itself (`automation.follow_updates()`,
Dagster's `eager()` that never drops an update): the latest partition (today)
is requested whenever `raw_customer_events` updates, and only that one (older
as-of dates are history; backfill them on purpose).
`churn_labels` is not automated: today is never labelable, and training
labels the dates it needs.
"""

from datetime import date
from typing import Literal

import dagster as dg
from pydantic import Field

from churn_platform.defs import tags
from churn_platform.defs.automation import follow_updates
from churn_platform.defs.resources.beam import BeamRunnerResource
from churn_platform.defs.resources.churn import ChurnDefinitionResource
from churn_platform.defs.resources.lake import LakeResource
from churn_platform.features.materialize import (
    DEFAULT_ENGINE,
    materialize_features,
    null_rates_markdown,
    read_feature_churn,
    read_features,
    refresh_features,
)
from churn_platform.lake import tables
from churn_platform.ml.labels import NotYetLabelable, materialize_labels

RAW_EVENTS = dg.AssetKey("raw_customer_events")


class CustomerFeaturesConfig(dg.Config):
    """How to compute the feature table."""

    engine: Literal["beam", "polars"] = Field(
        default=DEFAULT_ENGINE,
        description="'beam' (the Beam pipeline on the beam resource's runner) or 'polars' "
        "(one process; small lakes).",
    )
    shards: int | None = Field(
        default=None, description="Customer shards of the Beam pipeline (default: its own)."
    )
    customers: Literal["auto", "touched", "all"] = Field(
        default="auto",
        description="Which customers to compute: 'touched' recomputes only those with events "
        "committed since the partition was written, when that gives the table a full run "
        "would (else all); 'all' recomputes everyone (after changing feature code); 'auto' is "
        "'touched' in runs that follow new events (the automation's, an extract chained with "
        "today's assets) and 'all' otherwise.",
    )


def build_feature_assets(
    partitions_def: dg.PartitionsDefinition,
) -> tuple[dg.AssetsDefinition, dg.AssetsDefinition]:
    """`customer_features` and `churn_labels` over `partitions_def` (as-of dates)."""

    @dg.asset(
        group_name="features",
        partitions_def=partitions_def,
        deps=[RAW_EVENTS],
        kinds={"beam", "delta"},
        automation_condition=follow_updates(while_upstream_runs=True),
    )
    def customer_features(
        context: dg.AssetExecutionContext,
        config: CustomerFeaturesConfig,
        lake: LakeResource,
        beam: BeamRunnerResource,
        churn: ChurnDefinitionResource,
    ) -> dg.MaterializeResult:
        """Per-customer churn features of each customer active at the end of the as-of date.

        Today's partition holds every event so far and is refreshed as events arrive.
        """
        as_of = date.fromisoformat(context.partition_key)
        store = lake.lake()
        runner = beam.settings() if config.engine == "beam" else None
        definition = churn.churn()
        follows = context.run.tags.get(tags.FOLLOWS_EVENTS) == "true"
        touched = config.customers == "touched" or (config.customers == "auto" and follows)
        result = refresh_features(store, as_of, definition) if touched else None
        if result is None:
            result = materialize_features(
                store,
                as_of,
                engine=config.engine,
                runner=runner,
                shards=config.shards,
                churn=definition,
            )
        table = read_features(store, as_of, version=result.version)
        return dg.MaterializeResult(
            metadata={
                "rows": dg.MetadataValue.int(result.rows),
                "customers": dg.MetadataValue.int(result.customers),
                "feature_count": len(result.spec.columns()),
                "activity_types": ", ".join(result.spec.activity_types) or "(none)",
                "churn_definition": definition.describe(),
                "null_rates": dg.MetadataValue.md(null_rates_markdown(table, result.spec)),
                "engine": result.engine,
                "customers_recomputed": dg.MetadataValue.int(
                    result.rows if result.refreshed is None else result.refreshed
                ),
                "events_read": result.events_read,
                "seconds": dg.MetadataValue.float(round(result.seconds, 3)),
                "events_per_second": dg.MetadataValue.float(round(result.events_per_second, 1)),
                "files": len(result.output_files),
                "table_version": result.version,
                "lake": dg.MetadataValue.path(tables.table_uri(store, tables.FEATURES)),
            }
        )

    @dg.asset(
        group_name="features",
        partitions_def=partitions_def,
        deps=[customer_features, RAW_EVENTS],
        kinds={"delta"},
        output_required=False,
    )
    def churn_labels(
        context: dg.AssetExecutionContext, lake: LakeResource, churn: ChurnDefinitionResource
    ):
        """Whether each customer active at the as-of date churns within the horizon after it."""
        as_of = date.fromisoformat(context.partition_key)
        store = lake.lake()
        definition = churn.churn()
        version = tables.version(store, tables.FEATURES)  # the rows and their spec: one version
        recorded = read_feature_churn(store, as_of, version)
        if not recorded.same_population(definition):
            raise ValueError(
                f"customer_features as of {as_of} were computed under the churn definition "
                f"{recorded.key()}, not {definition.key()} "
                "(CHURN_DEFINITION / CHURN_HORIZON_DAYS changed since): materialize "
                "customer_features for this date again, then churn_labels"
            )
        customers = read_features(store, as_of, ["customer_id"], version)["customer_id"]
        try:
            result = materialize_labels(store, customers, as_of, definition)
        except NotYetLabelable as exc:
            # Not a failure: the partition stays unmaterialized until the lake has
            # seen the whole horizon, and a backfill or daily run stays green.
            context.log.info(str(exc))
            context.log_event(
                dg.AssetObservation(
                    asset_key=context.asset_key,
                    partition=context.partition_key,
                    metadata={
                        "status": "not yet labelable",
                        "reason": str(exc),
                        "labelable_from": exc.labelable_from.isoformat(),
                        "complete_through": (
                            exc.complete_through.isoformat() if exc.complete_through else "(empty)"
                        ),
                        "horizon_days": exc.horizon_days,
                    },
                )
            )
            return
        yield dg.MaterializeResult(
            metadata={
                "rows": dg.MetadataValue.int(result.rows),
                "churned": result.churned,
                "churn_rate": dg.MetadataValue.float(round(result.churn_rate, 4)),
                "horizon_days": result.horizon_days,
                "churn_definition": definition.describe(),
                "complete_through": result.complete_through.isoformat(),
                "cancellations_read": result.cancellations_read,
                "seconds": dg.MetadataValue.float(round(result.seconds, 3)),
                "table_version": result.version,
                "lake": dg.MetadataValue.path(tables.table_uri(store, tables.LABELS)),
            }
        )

    return customer_features, churn_labels
