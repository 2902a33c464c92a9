"""Monitoring assets: how far live features have drifted from what the champion learned.

`feature_drift` shares the features' as-of partitions and is automated like
the scores (`automation.eager_after_checks()`): today's partition is measured
again whenever today's features (once their blocking checks passed) or the
champion change. Its check `drift_below_threshold` only warns; acting on drift
is the job of `drift_retraining_sensor`, which reads the materializations this
asset writes.
"""

from datetime import date

import dagster as dg

from churn_platform.defs.automation import eager_after_checks
from churn_platform.defs.preview import partitioned_checks
from churn_platform.defs.resources.drift import DriftResource
from churn_platform.defs.resources.lake import LakeResource
from churn_platform.ml import plots
from churn_platform.ml.drift import measure_drift, psi_markdown

FEATURE_DRIFT = dg.AssetKey("feature_drift")
CUSTOMER_FEATURES = dg.AssetKey("customer_features")
CHURN_CHAMPION = dg.AssetKey("churn_champion")
DRIFT_CHECK = "drift_below_threshold"
PLOT_TOP = 15

# metadata keys the drift sensor reads back
MAX_PSI = "max_psi"
CHAMPION_VERSION = "champion_version"
WORST_FEATURE = "worst_feature"


def _drift_check_spec(partitions_def: dg.PartitionsDefinition) -> dg.AssetCheckSpec:
    with partitioned_checks():
        return dg.AssetCheckSpec(
            DRIFT_CHECK,
            asset=FEATURE_DRIFT,
            blocking=False,
            partitions_def=partitions_def,
            description="No feature's PSI against the champion's training rows is above the "
            "drift resource's psi_threshold (CHURN_DRIFT_PSI_THRESHOLD).",
        )


def build_drift_asset(partitions_def: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    """`feature_drift` over `partitions_def` (the features' as-of dates)."""

    @dg.asset(
        group_name="monitoring",
        partitions_def=partitions_def,
        deps=[CUSTOMER_FEATURES, CHURN_CHAMPION],
        kinds={"polars"},
        automation_condition=eager_after_checks(),
        check_specs=[_drift_check_spec(partitions_def)],
    )
    def feature_drift(
        context: dg.AssetExecutionContext, lake: LakeResource, drift: DriftResource
    ) -> dg.MaterializeResult:
        """PSI of each feature as of the date against the champion's training rows."""
        as_of = date.fromisoformat(context.partition_key)
        report = measure_drift(lake.lake(), as_of, bins=drift.bins)
        threshold = drift.psi_threshold
        above = report.above(threshold)
        counts = report.band_counts()
        psi = report.psi
        picture = plots.bar_markdown(
            psi["feature"].to_list(),
            psi["psi"].to_numpy(),
            title=f"PSI by feature as of {as_of.isoformat()} (worst {min(PLOT_TOP, psi.height)})",
            threshold=threshold,
            top=PLOT_TOP,
            xlabel="PSI",
        )
        if above:
            context.log.warning(
                f"feature drift as of {as_of}: max PSI {report.max_psi:.3f} > {threshold} "
                f"in {', '.join(above[:5])}"
            )
        return dg.MaterializeResult(
            metadata={
                MAX_PSI: dg.MetadataValue.float(round(report.max_psi, 4)),
                WORST_FEATURE: report.worst_feature or "(none)",
                "threshold": dg.MetadataValue.float(threshold),
                "features_above_threshold": len(above),
                **{f"features_{name}": n for name, n in counts.items()},
                "psi_by_feature": dg.MetadataValue.md(picture),
                "psi_table": dg.MetadataValue.md(psi_markdown(psi)),
                CHAMPION_VERSION: report.champion_version,
                "reference": report.reference_source,
                "reference_rows": dg.MetadataValue.int(report.reference_rows),
                "live_rows": dg.MetadataValue.int(report.live_rows),
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name=DRIFT_CHECK,
                    passed=not above,
                    severity=dg.AssetCheckSeverity.WARN,
                    metadata={
                        MAX_PSI: dg.MetadataValue.float(round(report.max_psi, 4)),
                        "threshold": dg.MetadataValue.float(threshold),
                        "features_above_threshold": dg.MetadataValue.json(above),
                        CHAMPION_VERSION: report.champion_version,
                    },
                )
            ],
        )

    return feature_drift
