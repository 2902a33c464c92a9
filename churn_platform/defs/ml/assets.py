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

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from typing import Literal

import dagster as dg
from pydantic import Field

from churn_platform.defs.automation import eager_after_checks
from churn_platform.defs.progress import report
from churn_platform.defs.resources.beam import BeamRunnerResource
from churn_platform.defs.resources.churn import ChurnDefinitionResource
from churn_platform.defs.resources.gate import GateResource
from churn_platform.defs.resources.kafka import KafkaResource
from churn_platform.defs.resources.lake import LakeResource
from churn_platform.lake import tables
from churn_platform.ml import plots, registry
from churn_platform.ml.gate import (
    DEFAULT_MAX_REGRESSION,
    GateConfig,
    GateDecision,
    Verdict,
    judge_candidate,
    judge_regression,
)
from churn_platform.ml.metrics import EvaluationMetrics
from churn_platform.ml.readiness import problems, profile
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
    DEFAULT_MAX_TRAIN_ROWS,
    DEFAULT_MIN_TRAIN_POSITIVES,
    DEFAULT_SEED,
    FitPool,
    ServedModel,
    TrainConfig,
    model_card,
    train_models,
)
from churn_platform.ml.training_set import (
    DEFAULT_CADENCE_DAYS,
    DEFAULT_MIN_HISTORY_DAYS,
    DEFAULT_MIN_TRAIN_DATES,
    SplitNeeds,
    TrainingSetError,
    build_training_set,
    ensure_inputs,
    read_training_set,
    training_dates,
    write_training_set,
)

CUSTOMER_FEATURES = dg.AssetKey("customer_features")
CHURN_LABELS = dg.AssetKey("churn_labels")
QUALITY_CHECK = "candidate_quality"
NO_REGRESSION_CHECK = "no_regression"


class TrainingSetConfig(dg.Config):
    """Which as-of dates the training set stacks."""

    cadence_days: int = Field(
        default=DEFAULT_CADENCE_DAYS, ge=1, description="Days between as-of dates."
    )
    dates: int | None = Field(
        default=None,
        ge=3,
        description="How many as-of dates (default: enough for churn_model's time split with "
        "min_train_dates dates to train on; fewer when the history is shorter).",
    )
    min_train_dates: int = Field(
        default=DEFAULT_MIN_TRAIN_DATES,
        ge=1,
        description="Training dates the default date count leaves after the holdout, the "
        "purged dates and calibration.",
    )
    min_history_days: int = Field(
        default=DEFAULT_MIN_HISTORY_DAYS,
        ge=0,
        description="No as-of date earlier than this many days after the lake's first event.",
    )
    fill_missing: bool = Field(
        default=True,
        description="Compute feature tables and labels the lake lacks (or holds from other "
        "raw files) for those dates, in one pass over the events, with the feature checks "
        "(recorded as materializations and check results of customer_features / churn_labels).",
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
        default=DEFAULT_MAX_TRAIN_ROWS,
        ge=1,
        description="Fit on whole customers sampled down to about this many rows (raised to "
        "keep min_train_positives churned rows); null: every row.",
    )
    min_train_positives: int = Field(
        default=DEFAULT_MIN_TRAIN_POSITIVES,
        ge=0,
        description="Churned rows a sample keeps at least (at the data's own churn rate).",
    )
    min_roc_auc: float | None = Field(
        default=None,
        ge=0.5,
        le=1.0,
        description="An absolute holdout ROC AUC floor for this run (default: the gate "
        "resource's, CHURN_MIN_ROC_AUC; none unless set).",
    )
    max_regression: float = Field(
        default=DEFAULT_MAX_REGRESSION,
        ge=0.0,
        description="Allowed ROC AUC drop against the champion, beyond the holdout's noise.",
    )
    must_beat_baseline: bool = Field(
        default=False,
        description="Require the candidate to beat the logistic baseline beyond the noise "
        "(default: only not to be worse than it).",
    )
    refit_on_all_dates: bool = Field(
        default=True,
        description="Once the gate passed, fit the served model on every labelled date (else "
        "the evaluation model, fitted on the train dates only, serves).",
    )


class ChurnScoresConfig(dg.Config):
    """Risk bands and where scores go."""

    risk_band_cutoffs: list[float] = Field(
        default=list(RiskBands().cutoffs),
        description="Ascending probabilities between the bands (low < c0 ≤ medium < c1 ≤ high).",
    )
    produce_to_kafka: bool = Field(default=True, description=f"Also produce to '{SCORES_TOPIC}'.")
    topic: str = SCORES_TOPIC


@dg.asset(group_name="ml", deps=[CUSTOMER_FEATURES, CHURN_LABELS], kinds={"polars", "delta"})
def training_set(
    context: dg.AssetExecutionContext,
    config: TrainingSetConfig,
    lake: LakeResource,
    beam: BeamRunnerResource,
    churn: ChurnDefinitionResource,
) -> dg.MaterializeResult:
    """Feature tables at weekly as-of dates joined to their churn labels (point in time)."""
    store = lake.lake()
    definition = churn.churn()
    found = problems(profile(store), definition)
    if found:
        raise TrainingSetError("; ".join(found))
    chosen = training_dates(
        store,
        definition,
        cadence_days=config.cadence_days,
        count=config.dates,
        min_history_days=config.min_history_days,
        split=SplitNeeds(min_train_dates=config.min_train_dates),
    )
    if len(chosen.dates) < chosen.wanted:
        context.log.warning(
            f"the history holds {len(chosen.dates)} of the {chosen.wanted} as-of dates wanted "
            f"({config.cadence_days} days apart): the model trains on fewer dates"
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

        def checked(as_of: date, outcomes: dict) -> None:
            # the feature checks of each date it computed, recorded as that partition's
            for name, outcome in outcomes.items():
                context.log_event(
                    dg.AssetCheckEvaluation(
                        asset_key=CUSTOMER_FEATURES,
                        check_name=name,
                        passed=outcome.passed,
                        severity=dg.AssetCheckSeverity.ERROR,
                        metadata={
                            key: value
                            if isinstance(value, int | float | str)
                            else dg.MetadataValue.json(value)
                            for key, value in outcome.details.items()
                        },
                        partition=as_of.isoformat(),
                    )
                )

        computed = ensure_inputs(
            store,
            chosen.dates,
            definition,
            engine=config.engine,
            runner=beam.settings() if config.engine == "beam" else None,
            on_computed=record,
            on_checked=checked,
        )
    result = build_training_set(store, chosen.dates, definition)
    if result.positives == 0:
        raise TrainingSetError(
            f"no churn at all: none of the {result.rows:,} customer-dates over "
            f"{len(result.dates)} as-of dates churned under the definition "
            f"'{definition.describe()}'. "
            + (
                "The events hold no subscription_cancelled: for a business without "
                "subscriptions set CHURN_DEFINITION=inactivity (and CHURN_HORIZON_DAYS), or "
                "replay the subscriptions table with end dates (replay --subscriptions-file)"
                if not definition.is_inactivity
                else "Every active customer was active again within the horizon: lengthen "
                "CHURN_HORIZON_DAYS or narrow CHURN_QUALIFYING_EVENTS"
            )
        )
    version = write_training_set(store, result)
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
            "churn_definition": definition.describe(),
            "per_date": dg.MetadataValue.md(_markdown_table(per_date)),
            "computed_inputs": ", ".join(computed) or "(none: all read from the lake)",
            "table_version": version,
            "features_version": result.features_version,
            "labels_version": result.labels_version,
            "sha256": result.sha256(),
            "lake": dg.MetadataValue.path(tables.table_uri(store, tables.TRAINING_SET)),
        }
    )


@dg.asset(
    group_name="ml",
    deps=[training_set],
    kinds={"scikitlearn"},
    check_specs=[
        dg.AssetCheckSpec(
            QUALITY_CHECK,
            asset="churn_model",
            blocking=True,
            description="Better than a no-skill ranking and not worse than the logistic baseline "
            "on the holdout, beyond the noise its churners allow (and above min_roc_auc, if set).",
        ),
        dg.AssetCheckSpec(
            NO_REGRESSION_CHECK,
            asset="churn_model",
            blocking=True,
            description="Not worse than the current champion on the candidate's holdout, beyond "
            "the noise and max_regression.",
        ),
    ],
)
def churn_model(
    context: dg.AssetExecutionContext,
    config: ChurnModelConfig,
    lake: LakeResource,
    gate: GateResource,
) -> dg.MaterializeResult:
    """A calibrated gradient-boosting candidate (and its logistic baseline), registered and gated."""
    from churn_platform.ml.reasons import TYPICAL_KEY, typical_values

    store = lake.lake()
    with _step(context, "read the training set") as done:
        training = read_training_set(store)
        done(f"{training.rows:,} rows, {len(training.dates)} as-of dates")
    train_config = TrainConfig(
        seed=config.seed,
        horizon_days=training.churn.horizon_days,
        holdout_dates=config.holdout_dates,
        calibration_dates=config.calibration_dates,
        calibration=config.calibration,
        max_train_rows=config.max_train_rows,
        min_train_positives=config.min_train_positives,
    )
    gate_config = GateConfig(
        min_roc_auc=config.min_roc_auc if config.min_roc_auc is not None else gate.min_roc_auc,
        max_regression=config.max_regression,
        must_beat_baseline=config.must_beat_baseline,
        confidence=gate.confidence,
        seed=config.seed,
    )
    # one pool for every fit: the served model's fits start on the core the evaluation
    # leaves idle; a failed gate cancels those not started (leaving the block)
    with FitPool(train_config) as fits:
        with _step(context, "evaluation fit (train dates → holdout)") as done:
            trained = train_models(
                training.table,
                training.features,
                train_config,
                fits=fits,
                serve=config.refit_on_all_dates,
            )
            done(
                ", ".join(f"{name} {seconds:.1f} s" for name, seconds in trained.seconds.items())
                + f"; holdout ROC AUC {trained.metrics.candidate.roc_auc:.3f}"
            )
        cand = trained.metrics.candidate
        y, customers = trained.holdout_labels, trained.holdout_customers
        with _step(context, "gate: bootstrap of the holdout against baseline and no-skill") as done:
            quality = judge_candidate(
                y,
                trained.holdout_scores["candidate"],
                trained.holdout_scores["baseline"],
                customers,
                gate_config,
            )
            done("passed" if quality.passed else "failed")
        with _step(context, "gate: against the champion") as done:
            regression = _against_champion(store, trained, training.churn, gate_config, context)
            done("passed" if regression.passed else "failed")
        decision = GateDecision.of(quality, regression)
        passed, reasons = decision.passed, decision.reasons
        served: ServedModel | None = None
        if passed and trained.served is not None:
            with _step(context, "served refit on every labelled date") as done:
                served = trained.served.result()
                # with one core (one thread) the fits run only now, one after the other
                when = "begun beside the evaluation" if fits.workers > 1 else "after the gate"
                done(
                    f"{served.rows:,} rows over {len(served.dates)} dates, its fits "
                    f"{served.seconds:.1f} s ({when})"
                )
        elif not passed:
            for rule in quality.failed() + regression.failed():
                context.log.error(f"gate: {rule.line()}")
    version = registry.new_version(token=context.run_id)
    data_range = f"{training.dates[0].isoformat()}..{training.dates[-1].isoformat()}"
    lineage = training.lineage()
    card = model_card(
        version,
        trained,
        training.rows,
        data_range,
        reasons,
        passed,
        training.churn,
        served,
        lineage,
    )
    saving = time.perf_counter()
    registry.save_model(
        store,
        version,
        served.estimator if served is not None else trained.candidate,
        baseline=trained.baseline,
        evaluated=trained.candidate,
        features=trained.features,
        metrics=trained.metrics.with_champion(regression.details.get("champion_roc_auc")),
        gate=decision,
        training={
            "data_range": data_range,
            "training_set_rows": training.rows,
            "seed": config.seed,
            "churn_definition": training.churn.to_dict(),
            "feature_spec": training.spec.to_dict() if training.spec else None,
            "training_set": lineage,
            "dropped_features": trained.dropped,
            TYPICAL_KEY: typical_values(training.table, trained.features, training.spec),
            **trained.split.describe(),
            **(served.describe() if served is not None else {"served_fit": "evaluation split"}),
            "seconds": {k: round(v, 3) for k, v in trained.seconds.items()},
        },
        card=card,
    )
    report(context, f"churn_model: registered {version} ({time.perf_counter() - saving:.1f} s)")
    scores = {
        "gradient boosting": trained.holdout_scores["candidate"],
        "logistic baseline": trained.holdout_scores["baseline"],
    }
    top = trained.importance.head(15)
    base = trained.metrics.baseline
    return dg.MaterializeResult(
        metadata={
            "version": version,
            "churn_definition": training.churn.describe(),
            "holdout_roc_auc": dg.MetadataValue.float(cand.roc_auc),
            "holdout_pr_auc": dg.MetadataValue.float(cand.pr_auc),
            "holdout_brier": dg.MetadataValue.float(cand.brier),
            "top_decile_lift": dg.MetadataValue.float(cand.top_decile_lift),
            "top_decile_capture": dg.MetadataValue.float(cand.top_decile_capture),
            "baseline_roc_auc": dg.MetadataValue.float(base.roc_auc),
            "gate": "passed" if passed else "failed",
            "gate_rules": dg.MetadataValue.md(_bullets(reasons)),
            "served_model": (
                f"fitted on every labelled date ({served.rows:,} rows, {len(served.dates)} dates)"
                if served is not None
                else "the evaluation model (train dates only)"
                if passed
                else "none: the gate failed"
            ),
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
            _check_result(QUALITY_CHECK, quality),
            _check_result(NO_REGRESSION_CHECK, regression),
        ],
    )


@contextmanager
def _step(context: dg.AssetExecutionContext, what: str) -> Iterator[Callable[[str], None]]:
    """A line when `what` starts, and one with what it found and how long it took."""
    report(context, f"churn_model: {what} ...")
    started = time.perf_counter()
    found: list[str] = []
    yield found.append
    took = f"{time.perf_counter() - started:.1f} s"
    report(context, f"churn_model: {what}: {'; '.join([*found, took])}")


def _check_result(name: str, verdict: Verdict) -> dg.AssetCheckResult:
    metadata: dict = {"rules": dg.MetadataValue.md(_bullets(verdict.reasons()))}
    failed = verdict.failed()
    if failed:
        metadata["failed"] = ", ".join(rule.name for rule in failed)
        metadata["change_with"] = "; ".join(rule.setting for rule in failed if rule.setting)
    for key, value in verdict.details.items():
        if isinstance(value, bool | int | float | str):
            metadata[key] = value
    return dg.AssetCheckResult(check_name=name, passed=verdict.passed, metadata=metadata)


def _against_champion(store, trained, churn, gate_config, context) -> Verdict:
    """The no_regression verdict: the champion's evaluated model on the candidate's holdout.

    The evaluated model (fitted on its own train dates) rather than the served one,
    which was fitted on every labelled date and may have seen these holdout rows.
    """
    current = registry.read_champion(store)
    if current is None:
        return judge_regression(
            trained.holdout_labels,
            trained.holdout_scores["candidate"],
            None,
            None,
            trained.holdout_customers,
            gate_config,
        )
    version = current.version
    record = registry.read_record(store, version)  # corrupt or missing files fail loudly here
    if record.churn != churn:
        from churn_platform.ml.gate import Rule

        return Verdict(
            (
                Rule(
                    "no_regression",
                    True,
                    f"the champion {version} predicts churn as '{record.churn.describe()}', the "
                    f"candidate as '{churn.describe()}': not comparable, the new definition "
                    "replaces it",
                ),
            ),
            {"champion": version},
        )
    champion = registry.load_evaluated(store, version)
    scores = champion.predict_proba(trained.split.holdout)
    verdict = judge_regression(
        trained.holdout_labels,
        trained.holdout_scores["candidate"],
        scores,
        version,
        trained.holdout_customers,
        gate_config,
    )
    context.log.info(f"champion {version} on the new holdout: {verdict.reasons()[0]}")
    return verdict


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
    if current and current.version == latest:
        champion = current
        context.log.info(f"{latest} is already the champion")
    else:
        champion = registry.promote(
            store, latest, reason=f"passed {QUALITY_CHECK} and {NO_REGRESSION_CHECK}"
        )
    record = registry.read_record(store, latest)
    metrics = record.evaluation.candidate
    return dg.MaterializeResult(
        metadata={
            "version": champion.version,
            "previous": champion.previous or "(none)",
            "promoted_at": champion.promoted_at,
            "holdout_roc_auc": dg.MetadataValue.float(metrics.roc_auc),
            "gate": dg.MetadataValue.md(_bullets(record.gate.reasons)),
            "lake": dg.MetadataValue.path(store.url(registry.CHAMPION_FILE)),
        }
    )


SCORES_POOL = "churn_scores"


def build_scores_asset(partitions_def: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(
        group_name="serving",
        partitions_def=partitions_def,
        deps=[CUSTOMER_FEATURES, churn_champion],
        kinds={"delta", "kafka"},
        automation_condition=eager_after_checks(),
        # one scoring step at a time (dagster.yaml: 1 slot a pool): two requesters (the
        # automation, the extract chained with today's scoring) can race, and the step
        # that runs second then reads features at least as new as the first one's
        pool=SCORES_POOL,
    )
    def churn_scores(
        context: dg.AssetExecutionContext,
        config: ChurnScoresConfig,
        lake: LakeResource,
        kafka: KafkaResource,
    ) -> dg.MaterializeResult:
        """Every customer active at the as-of date, scored by the champion, to the lake and Kafka."""
        from churn_platform.features.materialize import read_feature_recorded, read_features
        from churn_platform.ml.reasons import Reasoner, common_reasons_markdown
        from churn_platform.ml.score import check_served_windows, scores_producer

        # first: its idempotent session opens (~0.5 s) while the scores are computed
        producer = scores_producer(kafka.settings()) if config.produce_to_kafka else None
        as_of = date.fromisoformat(context.partition_key)
        store = lake.lake()
        bands = RiskBands(cutoffs=tuple(config.risk_band_cutoffs))
        # its arrays score without importing scikit-learn and skops (seconds of every run)
        model = registry.load_champion(store, lazy_estimator=True)
        version = tables.version(store, tables.FEATURES)  # the rows and their spec: one version
        spec, churn = read_feature_recorded(store, as_of, version)
        if not churn.same_population(model.record.churn):
            raise ValueError(
                f"customer_features as of {as_of} hold the customers active under the churn "
                f"definition {churn.key()}, but the champion {model.version} was trained for "
                f"{model.record.churn.key()}: retrain (training_job) after changing "
                "CHURN_DEFINITION / CHURN_HORIZON_DAYS, or set them back"
            )
        check_served_windows(model, spec, as_of)
        features = read_features(store, as_of, version=version)
        reasoner = Reasoner.of(model, model.predictor_for(features.height))
        scores = score_table(
            model, features, as_of, bands, scored_at=datetime.now(UTC), reasoner=reasoner
        )
        scores_version = write_scores(store, scores, as_of)
        produced = (
            produce_scores(kafka.settings(), scores, topic=config.topic, producer=producer)
            if producer is not None
            else 0
        )
        counts = band_counts(scores, bands)
        return dg.MaterializeResult(
            metadata={
                "customers_scored": dg.MetadataValue.int(scores.height),
                "model_version": model.version,
                "churn_definition": model.record.churn.describe(),
                **{f"band_{name}": n for name, n in counts.items()},
                "mean_probability": dg.MetadataValue.float(
                    round(float(scores["churn_probability"].mean() or 0.0), 4)
                ),
                "histogram": dg.MetadataValue.md(
                    plots.histogram_markdown(scores["churn_probability"].to_numpy(), bands.cutoffs)
                ),
                "top_at_risk": dg.MetadataValue.md(top_at_risk_markdown(scores, 10)),
                "common_reasons": dg.MetadataValue.md(
                    common_reasons_markdown(scores, bands.names[-1], model.record.spec)
                    if reasoner is not None
                    else "_this model's shape has no reasons (not a gradient-boosting "
                    "pipeline the reasons walk knows)_"
                ),
                "produced_to_kafka": produced,
                "topic": config.topic if config.produce_to_kafka else "(not produced)",
                "features_version": version,
                "table_version": scores_version,
                "lake": dg.MetadataValue.path(tables.table_uri(store, tables.SCORES)),
            }
        )

    return churn_scores


def _bullets(lines: list[str]) -> str:
    return "\n".join(f"- {line}" for line in lines)


def _metrics_markdown(metrics: EvaluationMetrics) -> str:
    rows = ["| metric | gradient boosting | logistic baseline |", "|---|---:|---:|"]
    c, b = metrics.candidate, metrics.baseline
    for key in ("roc_auc", "pr_auc", "brier", "top_decile_lift", "top_decile_capture", "base_rate"):
        rows.append(f"| {key} | {getattr(c, key)} | {getattr(b, key)} |")
    return "\n".join(rows)


def _markdown_table(frame) -> str:
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.iter_rows()]
    return "\n".join([header, rule, *body])
