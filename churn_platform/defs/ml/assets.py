"""ML assets: training set → candidate model (gated) → champion → scores.

Thin wiring over `churn_platform.ml`: each asset reads its settings, calls the
plain functions and turns what they return into metadata (numbers, tables and
pictures for the UI). `churn_scores` is partitioned like the features (one
as-of date per partition); the others describe the model as a whole.

`churn_scores` is automated (`automation.eager_after_checks()`): today's
partition is requested when today's `customer_features` or `churn_champion`
updates and the features' blocking checks passed, in the same run as the
features when both are requested on one tick. Training is not automated here:
`training_schedule` and `drift_retraining_sensor` start it.
"""

from datetime import UTC, date, datetime
from typing import Literal

import dagster as dg
from pydantic import Field

from churn_platform.defs.automation import eager_after_checks
from churn_platform.defs.resources.beam import BeamRunnerResource
from churn_platform.defs.resources.kafka import KafkaResource
from churn_platform.defs.resources.lake import LakeResource
from churn_platform.ml import plots, registry
from churn_platform.ml.labels import DEFAULT_HORIZON_DAYS
from churn_platform.ml.score import (
    SCORES_TOPIC,
    RiskBands,
    band_counts,
    produce_scores,
    score_table,
    top_at_risk_markdown,
    write_scores,
)
from churn_platform.ml.train import (
    DEFAULT_MAX_REGRESSION,
    DEFAULT_MIN_ROC_AUC,
    DEFAULT_SEED,
    GateConfig,
    TrainConfig,
    model_card,
    no_regression,
    quality_floor,
    train_models,
)
from churn_platform.ml.training_set import (
    DEFAULT_CADENCE_DAYS,
    DEFAULT_DATE_COUNT,
    DEFAULT_MIN_HISTORY_DAYS,
    build_training_set,
    ensure_inputs,
    read_training_set,
    training_dates,
    write_training_set,
)

CUSTOMER_FEATURES = dg.AssetKey("customer_features")
CHURN_LABELS = dg.AssetKey("churn_labels")
QUALITY_FLOOR_CHECK = "quality_floor"
NO_REGRESSION_CHECK = "no_regression"


class TrainingSetConfig(dg.Config):
    """Which as-of dates the training set stacks."""

    cadence_days: int = Field(
        default=DEFAULT_CADENCE_DAYS, ge=1, description="Days between as-of dates."
    )
    dates: int = Field(default=DEFAULT_DATE_COUNT, ge=3, description="How many as-of dates.")
    min_history_days: int = Field(
        default=DEFAULT_MIN_HISTORY_DAYS,
        ge=0,
        description="No as-of date earlier than this many days after the lake's first event.",
    )
    horizon_days: int = Field(default=DEFAULT_HORIZON_DAYS, ge=1, le=365)
    fill_missing: bool = Field(
        default=True,
        description="Compute feature tables and labels the lake lacks for those dates "
        "(recorded as materializations of customer_features / churn_labels).",
    )
    engine: str = Field(
        default="beam", description="Feature engine for missing dates: beam|polars."
    )


class ChurnModelConfig(dg.Config):
    """Training, evaluation and the promotion gate."""

    seed: int = DEFAULT_SEED
    holdout_dates: int = Field(default=2, ge=1, description="Latest as-of dates held out.")
    calibration_dates: int = Field(default=1, ge=1, description="As-of dates that calibrate.")
    calibration: Literal["sigmoid", "isotonic"] = Field(
        default="sigmoid",
        description="sigmoid (Platt; smooth, keeps the ranking) or isotonic (steps; needs many "
        "calibration rows)",
    )
    max_train_rows: int | None = Field(
        default=None, description="Sample whole customers when training rows exceed this."
    )
    min_roc_auc: float = Field(default=DEFAULT_MIN_ROC_AUC, ge=0.5, le=1.0)
    max_regression: float = Field(
        default=DEFAULT_MAX_REGRESSION, ge=0.0, description="Allowed ROC AUC drop vs champion."
    )
    must_beat_baseline: bool = Field(
        default=True,
        description="quality_floor also requires a holdout ROC AUC above the logistic baseline's.",
    )


class ChurnScoresConfig(dg.Config):
    """Risk bands and where scores go."""

    risk_band_cutoffs: list[float] = Field(
        default=list(RiskBands().cutoffs),
        description="Ascending probabilities between the bands (low < c0 ≤ medium < c1 ≤ high).",
    )
    produce_to_kafka: bool = Field(default=True, description=f"Also produce to '{SCORES_TOPIC}'.")
    topic: str = SCORES_TOPIC


@dg.asset(group_name="ml", deps=[CUSTOMER_FEATURES, CHURN_LABELS], kinds={"polars", "parquet"})
def training_set(
    context: dg.AssetExecutionContext,
    config: TrainingSetConfig,
    lake: LakeResource,
    beam: BeamRunnerResource,
) -> dg.MaterializeResult:
    """Feature tables at weekly as-of dates joined to their churn labels (point in time)."""
    store = lake.lake()
    chosen = training_dates(
        store,
        cadence_days=config.cadence_days,
        count=config.dates,
        horizon_days=config.horizon_days,
        min_history_days=config.min_history_days,
    )
    computed: list[str] = []
    if config.fill_missing:

        def record(asset: str, as_of: date) -> None:
            context.log_event(
                dg.AssetMaterialization(
                    asset_key=asset,
                    partition=as_of.isoformat(),
                    metadata={"materialized_by": "training_set (fill_missing)"},
                )
            )

        computed = ensure_inputs(
            store,
            chosen.dates,
            engine=config.engine,
            runner=beam.settings() if config.engine == "beam" else None,
            horizon_days=config.horizon_days,
            on_computed=record,
        )
    result = build_training_set(store, chosen.dates)
    path = write_training_set(store, result)
    per_date = result.per_date()
    return dg.MaterializeResult(
        metadata={
            "rows": dg.MetadataValue.int(result.rows),
            "churned": result.positives,
            "churn_rate": dg.MetadataValue.float(round(result.positives / max(result.rows, 1), 4)),
            "as_of_dates": len(result.dates),
            "first_as_of": result.dates[0].isoformat(),
            "last_as_of": result.dates[-1].isoformat(),
            "feature_count": len(result.features),
            "per_date": dg.MetadataValue.md(_markdown_table(per_date)),
            "computed_inputs": ", ".join(computed) or "(none: all read from the lake)",
            "lake": dg.MetadataValue.path(store.url(path)),
        }
    )


@dg.asset(
    group_name="ml",
    deps=[training_set],
    kinds={"scikitlearn"},
    check_specs=[
        dg.AssetCheckSpec(
            QUALITY_FLOOR_CHECK,
            asset="churn_model",
            blocking=True,
            description="Holdout ROC AUC at least the floor and above the logistic baseline.",
        ),
        dg.AssetCheckSpec(
            NO_REGRESSION_CHECK,
            asset="churn_model",
            blocking=True,
            description="No worse than the current champion on the candidate's holdout.",
        ),
    ],
)
def churn_model(
    context: dg.AssetExecutionContext, config: ChurnModelConfig, lake: LakeResource
) -> dg.MaterializeResult:
    """A calibrated gradient-boosting candidate (and its logistic baseline), registered and gated."""
    store = lake.lake()
    training = read_training_set(store)
    train_config = TrainConfig(
        seed=config.seed,
        holdout_dates=config.holdout_dates,
        calibration_dates=config.calibration_dates,
        calibration=config.calibration,
        max_train_rows=config.max_train_rows,
    )
    gate_config = GateConfig(
        min_roc_auc=config.min_roc_auc,
        max_regression=config.max_regression,
        must_beat_baseline=config.must_beat_baseline,
    )
    trained = train_models(training.table, training.features, train_config)
    cand = trained.metrics["candidate"]

    floor_ok, floor_reasons = quality_floor(trained.metrics, gate_config)
    champion_auc, champion_version = _champion_on_holdout(store, trained, context)
    regression_ok, regression_reasons = no_regression(
        cand["roc_auc"], champion_auc, champion_version, gate_config
    )
    passed = floor_ok and regression_ok
    reasons = floor_reasons + regression_reasons
    version = registry.new_version(token=context.run_id)
    data_range = f"{training.dates[0].isoformat()}..{training.dates[-1].isoformat()}"
    card = model_card(version, trained, training.rows, data_range, reasons, passed)
    registry.save_model(
        store,
        version,
        trained.candidate,
        baseline=trained.baseline,
        features=trained.features,
        metrics={**trained.metrics, "champion_on_holdout": champion_auc},
        gate={"passed": passed, "reasons": reasons},
        training={
            "data_range": data_range,
            "training_set_rows": training.rows,
            "seed": config.seed,
            **trained.split.describe(),
            "seconds": {k: round(v, 3) for k, v in trained.seconds.items()},
        },
        card=card,
    )
    y = trained.holdout_labels
    scores = {
        "gradient boosting": trained.holdout_scores["candidate"],
        "logistic baseline": trained.holdout_scores["baseline"],
    }
    top = trained.importance.head(15)
    base = trained.metrics["baseline"]
    return dg.MaterializeResult(
        metadata={
            "version": version,
            "holdout_roc_auc": dg.MetadataValue.float(cand["roc_auc"]),
            "holdout_pr_auc": dg.MetadataValue.float(cand["pr_auc"]),
            "holdout_brier": dg.MetadataValue.float(cand["brier"]),
            "top_decile_lift": dg.MetadataValue.float(cand["top_decile_lift"]),
            "top_decile_capture": dg.MetadataValue.float(cand["top_decile_capture"]),
            "baseline_roc_auc": dg.MetadataValue.float(base["roc_auc"]),
            "gate": "passed" if passed else "failed",
            "metrics": dg.MetadataValue.md(_metrics_markdown(trained.metrics)),
            "roc_curve": dg.MetadataValue.md(plots.roc_curves_markdown(y, scores)),
            "precision_recall_curve": dg.MetadataValue.md(plots.pr_curves_markdown(y, scores)),
            "calibration_curve": dg.MetadataValue.md(plots.calibration_markdown(y, scores)),
            "feature_importance": dg.MetadataValue.md(
                plots.importance_markdown(
                    top["feature"].to_list(), top["importance"].to_numpy(), top["std"].to_numpy()
                )
            ),
            "model_card": dg.MetadataValue.md(card),
            "split": dg.MetadataValue.json(trained.split.describe()),
            "lake": dg.MetadataValue.path(store.url(f"{registry.MODELS_DIR}/{version}")),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=QUALITY_FLOOR_CHECK,
                passed=floor_ok,
                metadata={
                    "reasons": dg.MetadataValue.md(_bullets(floor_reasons)),
                    "holdout_roc_auc": cand["roc_auc"],
                    "baseline_roc_auc": base["roc_auc"],
                    "floor": config.min_roc_auc,
                },
            ),
            dg.AssetCheckResult(
                check_name=NO_REGRESSION_CHECK,
                passed=regression_ok,
                metadata={
                    "reasons": dg.MetadataValue.md(_bullets(regression_reasons)),
                    "champion": champion_version or "(none)",
                    "champion_roc_auc_on_holdout": champion_auc
                    if champion_auc is not None
                    else -1.0,
                },
            ),
        ],
    )


def _champion_on_holdout(store, trained, context) -> tuple[float | None, str | None]:
    """The current champion's ROC AUC on the candidate's holdout rows (None if no champion)."""
    if registry.read_champion(store) is None:
        return None, None
    champion = registry.load_champion(store)  # corrupt or missing files fail loudly here
    from churn_platform.ml.train import evaluate

    scores = champion.predict_proba(trained.split.holdout)
    auc = evaluate(trained.holdout_labels, scores)["roc_auc"]
    context.log.info(f"champion {champion.version} scores ROC AUC {auc} on the new holdout")
    return auc, champion.version


@dg.asset(group_name="ml", deps=[churn_model], kinds={"scikitlearn"})
def churn_champion(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
    """The model that serves: the newest candidate, once its gate has passed."""
    store = lake.lake()
    versions = registry.list_versions(store)
    if not versions:
        raise registry.ModelMissing(
            f"no model under {store.url(registry.MODELS_DIR)}: materialize churn_model first"
        )
    latest = versions[-1]
    current = registry.read_champion(store)
    if current and current.get("version") == latest:
        champion = current
        context.log.info(f"{latest} is already the champion")
    else:
        champion = registry.promote(store, latest, reason="passed quality_floor and no_regression")
    record = registry.read_record(store, latest)
    metrics = record.metrics["candidate"]
    return dg.MaterializeResult(
        metadata={
            "version": champion["version"],
            "previous": str(champion.get("previous") or "(none)"),
            "promoted_at": champion["promoted_at"],
            "holdout_roc_auc": dg.MetadataValue.float(metrics["roc_auc"]),
            "gate": dg.MetadataValue.md(_bullets(record.gate["reasons"])),
            "lake": dg.MetadataValue.path(store.url(f"{registry.MODELS_DIR}/champion.json")),
        }
    )


def build_scores_asset(partitions_def: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(
        group_name="serving",
        partitions_def=partitions_def,
        deps=[CUSTOMER_FEATURES, churn_champion],
        kinds={"parquet", "kafka"},
        automation_condition=eager_after_checks(),
    )
    def churn_scores(
        context: dg.AssetExecutionContext,
        config: ChurnScoresConfig,
        lake: LakeResource,
        kafka: KafkaResource,
    ) -> dg.MaterializeResult:
        """Every customer active at the as-of date, scored by the champion, to the lake and Kafka."""
        from churn_platform.features.materialize import read_features

        as_of = date.fromisoformat(context.partition_key)
        store = lake.lake()
        bands = RiskBands(cutoffs=tuple(config.risk_band_cutoffs))
        model = registry.load_champion(store)
        features = read_features(store, as_of)
        scores = score_table(model, features, as_of, bands, scored_at=datetime.now(UTC))
        path = write_scores(store, scores, as_of)
        produced = (
            produce_scores(kafka.settings(), scores, topic=config.topic)
            if config.produce_to_kafka
            else 0
        )
        counts = band_counts(scores, bands)
        return dg.MaterializeResult(
            metadata={
                "customers_scored": dg.MetadataValue.int(scores.height),
                "model_version": model.version,
                **{f"band_{name}": n for name, n in counts.items()},
                "mean_probability": dg.MetadataValue.float(
                    round(float(scores["churn_probability"].mean() or 0.0), 4)
                ),
                "histogram": dg.MetadataValue.md(
                    plots.histogram_markdown(scores["churn_probability"].to_numpy(), bands.cutoffs)
                ),
                "top_at_risk": dg.MetadataValue.md(top_at_risk_markdown(scores, 10)),
                "produced_to_kafka": produced,
                "topic": config.topic if config.produce_to_kafka else "(not produced)",
                "lake": dg.MetadataValue.path(store.url(path)),
            }
        )

    return churn_scores


def _bullets(lines: list[str]) -> str:
    return "\n".join(f"- {line}" for line in lines)


def _metrics_markdown(metrics: dict[str, dict[str, float]]) -> str:
    rows = ["| metric | gradient boosting | logistic baseline |", "|---|---:|---:|"]
    for key in ("roc_auc", "pr_auc", "brier", "top_decile_lift", "top_decile_capture", "base_rate"):
        rows.append(f"| {key} | {metrics['candidate'][key]} | {metrics['baseline'][key]} |")
    return "\n".join(rows)


def _markdown_table(frame) -> str:
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.iter_rows()]
    return "\n".join([header, rule, *body])
