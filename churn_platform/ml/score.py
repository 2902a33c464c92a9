"""Batch scoring: the champion model's churn probability for every customer of a feature table.

`score_table` turns the feature table of an as-of date into one row per
customer (`SCORES_SCHEMA`): the probability, its risk band, the model version
and when it was scored. The model is anything shaped like the registry's
loaded model (`ScoringModel`), so this module does not depend on how models
are stored. Rows are scored in chunks, so the model's input matrix (and its
intermediate arrays) stays bounded however many customers there are.

With a `Reasoner` (the churn_scores asset always passes the champion's), each
score carries its top reasons (`ml.reasons`): a list of {feature, text, value,
typical, contribution}, null when the model's shape cannot be explained.

The scores go to the lake (`write_scores`: the as-of partition of the Delta
table `scores/churn_scores`, replaced in one commit on rerun) and to Kafka (`produce_scores`, keyed by customer so a
compacted topic keeps each customer's latest score).

Risk bands split [0, 1] at ascending cut-offs, each band closed at its lower
end: with the default cut-offs (0.1, 0.3), p < 0.1 is "low",
0.1 <= p < 0.3 is "medium" and p >= 0.3 is "high".
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Protocol

import msgspec
import numpy as np
import polars as pl

from churn_platform.events.contract import SCORES_TOPIC
from churn_platform.features.definitions import FeatureSpec
from churn_platform.kafka.admin import ensure_topic
from churn_platform.kafka.config import KafkaSettings
from churn_platform.kafka.producer import EventProducer, ProduceError
from churn_platform.lake import tables
from churn_platform.lake.store import Lake, LakeError
from churn_platform.ml.reasons import REASONS_DTYPE

if TYPE_CHECKING:
    from churn_platform.ml.reasons import Reasoner
    from churn_platform.ml.registry import LoadedModel

DEFAULT_CUTOFFS = (0.1, 0.3)
DEFAULT_BAND_NAMES = ("low", "medium", "high")
DEFAULT_SCORE_CHUNK_ROWS = 100_000
DEFAULT_PRODUCE_CHUNK_ROWS = 50_000
DEFAULT_TOP_AT_RISK = 10
# Stated here even though EventProducer's defaults say the same: a score
# delivered twice or lost after a broker failover must not depend on a default.
SCORES_PRODUCER_CONFIG = {"enable.idempotence": True, "acks": "all"}

SCORES_SCHEMA = pl.Schema(
    {
        "customer_id": pl.String(),
        "as_of": pl.Date(),
        "churn_probability": pl.Float64(),
        "risk_band": pl.String(),
        "model_version": pl.String(),
        "scored_at": pl.Datetime("ms", "UTC"),
        "reasons": REASONS_DTYPE,
    }
)
_ISO_DATE = "%Y-%m-%d"
_ISO_UTC_MS = "%Y-%m-%dT%H:%M:%S%.3fZ"


class ScoresMissing(LakeError):
    """No churn scores in the lake for the as-of date."""


class ScoringModel(Protocol):
    """What scoring needs of a model (the registry's `LoadedModel` has it)."""

    @property
    def version(self) -> str: ...

    @property
    def features(self) -> list[str]: ...

    def predict_proba(self, table: pl.DataFrame) -> np.ndarray:
        """P(churned) per row of a feature table (extra columns ignored)."""
        ...


class ScoreReason(msgspec.Struct, frozen=True):
    """One reason of a score (`ml.reasons`): the feature, a sentence, the customer's value,
    a typical value and the feature's contribution to the model's margin (log-odds)."""

    feature: str
    text: str
    value: float | None
    typical: float | None
    contribution: float


class ScoreMessage(msgspec.Struct, frozen=True):
    """The value of a message on the scores topic (compact JSON), for consumers to decode.

    `reasons` is empty in messages of scores made without them (older versions)."""

    customer_id: str
    as_of: date
    churn_probability: float
    risk_band: str
    model_version: str
    scored_at: datetime
    reasons: list[ScoreReason] = []


def decode_score_message(value: bytes) -> ScoreMessage:
    """Parse and type-check one scores-topic message value."""
    return msgspec.json.decode(value, type=ScoreMessage)


# --- risk bands ------------------------------------------------------------------


@dataclass(frozen=True)
class RiskBands:
    """Named probability bands split at `cutoffs`; a band includes its lower cut-off.

    p < cutoffs[0] is names[0]; cutoffs[i-1] <= p < cutoffs[i] is names[i];
    p >= cutoffs[-1] is names[-1].
    """

    cutoffs: tuple[float, ...] = DEFAULT_CUTOFFS
    names: tuple[str, ...] = DEFAULT_BAND_NAMES

    def __post_init__(self) -> None:
        cutoffs = tuple(_cutoff(c, self.cutoffs) for c in self.cutoffs)
        names = tuple(self.names)
        object.__setattr__(self, "cutoffs", cutoffs)
        object.__setattr__(self, "names", names)
        if not cutoffs:
            raise ValueError(
                "risk_band_cutoffs is empty: give at least one probability in (0, 1), "
                f"e.g. {','.join(map(str, DEFAULT_CUTOFFS))}"
            )
        if any(b <= a for a, b in zip(cutoffs, cutoffs[1:], strict=False)):
            raise ValueError(
                f"risk_band_cutoffs {list(cutoffs)} must be strictly ascending: "
                "sort them and drop repeats"
            )
        if len(names) != len(cutoffs) + 1:
            raise ValueError(
                f"risk_band_cutoffs {list(cutoffs)} make {len(cutoffs) + 1} bands but "
                f"{len(names)} band names were given {list(names)}: name every band, lowest first"
            )
        if any(not isinstance(n, str) or not n.strip() for n in names) or len(set(names)) < len(
            names
        ):
            raise ValueError(f"risk band names {list(names)} must be distinct, non-empty strings")

    def band(self, probability: float) -> str:
        """The band of one probability (same rule as `band_of`)."""
        return self.names[bisect.bisect_right(self.cutoffs, probability)]

    def band_of(self, probability: pl.Expr) -> pl.Expr:
        """A String expression: the band of each value of `probability`."""
        pairs = list(zip(self.cutoffs, self.names[1:], strict=True))
        cutoff, name = pairs[-1]
        chain = pl.when(probability >= cutoff).then(pl.lit(name, pl.String))
        for cutoff, name in reversed(pairs[:-1]):
            chain = chain.when(probability >= cutoff).then(pl.lit(name, pl.String))
        return chain.otherwise(pl.lit(self.names[0], pl.String))


def _cutoff(value: object, cutoffs: object) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = math.nan
    if not 0.0 < number < 1.0:  # also rejects NaN
        raise ValueError(
            f"risk_band_cutoffs {cutoffs!r} holds {value!r}: every cut-off must be a "
            f"probability strictly between 0 and 1, e.g. {','.join(map(str, DEFAULT_CUTOFFS))}"
        )
    return number


# --- scoring ---------------------------------------------------------------------


def score_table(
    model: ScoringModel,
    features: pl.DataFrame,
    as_of: date,
    bands: RiskBands | None = None,
    scored_at: datetime | None = None,
    chunk_rows: int = DEFAULT_SCORE_CHUNK_ROWS,
    reasoner: Reasoner | None = None,
) -> pl.DataFrame:
    """Score every customer of the feature table of `as_of` (`SCORES_SCHEMA`).

    Sorted by churn_probability descending, then customer_id, so the head is
    the most at risk and reruns give the same order. `scored_at` (default:
    now) must be timezone-aware; it is stored in UTC to the millisecond.
    `reasoner` (the model's) adds each score's reasons; without one they are null.
    """
    bands = bands or RiskBands()
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    _check_features(features, as_of)
    stamp = _utc_ms(scored_at)
    chunks = list(features.iter_slices(chunk_rows))
    parts = None
    if reasoner is not None and features.height:
        # one walk down the trees gives the probabilities and the reasons
        first = reasoner.score_table(chunks[0])
        if _reasoner_agrees(model, first[0], chunks[0]):
            parts = [first, *(reasoner.score_table(chunk) for chunk in chunks[1:])]
    if parts is not None:
        probabilities = np.concatenate([p for p, _ in parts])
        reasons = pl.concat([pl.Series("reasons", r) for _, r in parts]).cast(REASONS_DTYPE)
    else:
        probabilities = np.concatenate(
            [_predict(model, chunk) for chunk in chunks] or [np.empty(0, dtype=np.float64)]
        )
        reasons = pl.Series("reasons", [None] * features.height, dtype=REASONS_DTYPE)
    scores = pl.DataFrame(
        {
            "customer_id": features["customer_id"].cast(pl.String),
            "churn_probability": pl.Series(probabilities, dtype=pl.Float64),
            "reasons": reasons,
        }
    ).select(
        pl.col("customer_id"),
        pl.lit(as_of, pl.Date).alias("as_of"),
        pl.col("churn_probability"),
        bands.band_of(pl.col("churn_probability")).alias("risk_band"),
        pl.lit(model.version, pl.String).alias("model_version"),
        pl.lit(stamp, pl.Datetime("ms", "UTC")).alias("scored_at"),
        pl.col("reasons"),
    )
    return scores.sort(["churn_probability", "customer_id"], descending=[True, False])


def check_served_windows(model: LoadedModel, table_spec: FeatureSpec, as_of: date) -> None:
    """Refuse a feature table whose windows are not the ones the model was trained on.

    Its columns would be other columns (`login_count_5d` is not `login_count_7d`):
    the model would see only fill values. Models recorded before their spec are
    not judged (their windows are read from their feature names).
    """
    served = model.record.spec
    if served is not None and served.windows() != table_spec.windows():
        raise ValueError(
            f"customer_features as of {as_of} were computed with {table_spec.windows_text()}, "
            f"but the champion {model.version} was trained with {served.windows_text()}: "
            "retrain (training_job) after changing WINDOWS_DAYS / VALUE_WINDOW_DAYS, "
            "or set them back"
        )


def _check_features(features: pl.DataFrame, as_of: date) -> None:
    """One row per customer, all of `as_of`: anything else would score the wrong table."""
    if "customer_id" not in features.columns:
        raise ValueError("the feature table has no customer_id column: is it a feature table?")
    ids = features["customer_id"]
    if ids.null_count():
        raise ValueError(f"the feature table has {ids.null_count()} rows without a customer_id")
    if ids.n_unique() != features.height:
        raise ValueError(
            f"the feature table has {features.height - ids.n_unique()} repeated customer_ids: "
            "scores are one per customer; rematerialize the features"
        )
    if "as_of" in features.columns and features.height:
        dates = features["as_of"].unique().to_list()
        if dates != [as_of]:
            raise ValueError(
                f"the feature table is as of {sorted(map(str, dates))}, not {as_of.isoformat()}: "
                "read the features of the date being scored"
            )


def _reasoner_agrees(model: ScoringModel, probabilities: np.ndarray, chunk: pl.DataFrame) -> bool:
    """Whether the reasoner's `probabilities` of `chunk` are the model's own, bit for bit, on
    its first rows (they are the same arithmetic; a model they are not is scored without
    reasons)."""
    head = chunk.head(1000)
    return bool(np.array_equal(probabilities[: head.height], _predict(model, head)))


def _predict(model: ScoringModel, chunk: pl.DataFrame) -> np.ndarray:
    probabilities = np.asarray(model.predict_proba(chunk), dtype=np.float64)
    if probabilities.shape != (chunk.height,):
        raise ValueError(
            f"model {model.version} returned shape {probabilities.shape} for {chunk.height} rows; "
            "predict_proba must return one positive-class probability per row"
        )
    if chunk.height and not (
        np.isfinite(probabilities).all() and probabilities.min() >= 0 and probabilities.max() <= 1
    ):
        raise ValueError(f"model {model.version} returned probabilities outside [0, 1] or NaN")
    return probabilities


def _utc_ms(moment: datetime | None) -> datetime:
    if moment is None:
        moment = datetime.now(UTC)
    elif moment.tzinfo is None:
        raise ValueError(f"scored_at {moment.isoformat()} has no timezone: pass an aware datetime")
    moment = moment.astimezone(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


# --- the lake --------------------------------------------------------------------


def write_scores(lake: Lake, scores: pl.DataFrame, as_of: date) -> int:
    """Replace the scores of `as_of` in one commit; returns the scores table's version.

    No active customers still leaves an (empty) file: scored, nobody to score.
    """
    _check_scores(scores)
    if scores.height and scores["as_of"].unique().to_list() != [as_of]:
        raise ValueError(f"the scores are not all as of {as_of.isoformat()}")
    return tables.write(
        lake, tables.SCORES, scores.to_arrow(), replace={"as_of": as_of}, keep_empty=True
    )


def read_scores(lake: Lake, as_of: date, version: int | None = None) -> pl.DataFrame:
    """The scores of `as_of` as written (`SCORES_SCHEMA`, most at risk first)."""
    files = tables.partition_files(
        lake,
        tables.SCORES,
        {"as_of": as_of},
        ScoresMissing,
        what="churn scores",
        producer="churn_scores",
        version=version,
    )
    scores = pl.from_arrow(tables.read_arrow(lake, tables.SCORES, version=version, files=files))
    return scores.sort(["churn_probability", "customer_id"], descending=[True, False])


def _check_scores(scores: pl.DataFrame) -> None:
    if scores.schema != SCORES_SCHEMA:
        raise ValueError(
            f"scores have columns {dict(scores.schema)}, expected {dict(SCORES_SCHEMA)}: "
            "build them with score_table"
        )


# --- Kafka -----------------------------------------------------------------------


def scores_producer(settings: KafkaSettings) -> EventProducer:
    """The producer `produce_scores` uses, for a caller to start early.

    An idempotent producer spends its first ~0.5 s opening its session (its
    producer id) before it sends anything; started before the scores are
    computed, that overlaps them. Creating it asks the broker nothing, so an
    unreachable broker still fails only when the scores are produced.
    """
    return EventProducer(settings, **SCORES_PRODUCER_CONFIG)


def produce_scores(
    settings: KafkaSettings,
    scores: pl.DataFrame,
    topic: str = SCORES_TOPIC,
    chunk_rows: int = DEFAULT_PRODUCE_CHUNK_ROWS,
    producer: EventProducer | None = None,
) -> int:
    """Publish one message per customer to `topic` (created if missing); returns the count.

    Key: the customer_id (UTF-8), so each customer's scores stay in order on
    one partition. Value: compact JSON (`ScoreMessage`), dates in ISO-8601 and
    `scored_at` in UTC with a 'Z'. The producer (`scores_producer`, or the one
    given, which this closes) is idempotent with acks=all; raises `ProduceError`
    naming the topic unless every message was delivered.
    """
    _check_scores(scores)
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    ensure_topic(settings, topic)
    producer = producer or scores_producer(settings)
    queued = 0
    try:
        with producer:
            for chunk in scores.iter_slices(chunk_rows):
                queued += producer.send_all(topic, _messages(chunk))
                producer.poll(0)
    except ProduceError as exc:
        raise ProduceError(f"publishing churn scores to {topic!r} failed: {exc}") from exc
    if producer.delivered != queued:
        raise ProduceError(
            f"publishing churn scores to {topic!r}: {producer.delivered} of {queued} "
            "messages were confirmed delivered"
        )
    return producer.delivered


def _messages(chunk: pl.DataFrame) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) pairs of a chunk of scores; dates are formatted by polars, in bulk."""
    rows = chunk.select(
        pl.col("customer_id"),
        pl.col("as_of").dt.strftime(_ISO_DATE),
        pl.col("churn_probability"),
        pl.col("risk_band"),
        pl.col("model_version"),
        pl.col("scored_at").dt.strftime(_ISO_UTC_MS),
        pl.col("reasons").fill_null([]),
    ).iter_rows()
    encode = msgspec.json.encode
    for customer_id, as_of, probability, band, version, scored_at, reasons in rows:
        value = {
            "customer_id": customer_id,
            "as_of": as_of,
            "churn_probability": probability,
            "risk_band": band,
            "model_version": version,
            "scored_at": scored_at,
            "reasons": reasons,
        }
        yield customer_id.encode("utf-8"), encode(value)


# --- summaries -------------------------------------------------------------------


def band_counts(scores: pl.DataFrame, bands: RiskBands | None = None) -> dict[str, int]:
    """Customers per band, every band listed (lowest first), zeros included."""
    bands = bands or RiskBands()
    counts = dict.fromkeys(bands.names, 0)
    for band, n in scores.group_by("risk_band").len().iter_rows():
        if band not in counts:
            raise ValueError(
                f"scores hold risk band {band!r}, which is not one of {list(bands.names)}: "
                "they were scored with other risk_band_cutoffs; score them again"
            )
        counts[band] = int(n)
    return counts


def top_at_risk(scores: pl.DataFrame, n: int = DEFAULT_TOP_AT_RISK) -> pl.DataFrame:
    """The `n` customers most likely to churn: rank, customer_id, churn_probability,
    risk_band, reasons."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return (
        scores.sort(["churn_probability", "customer_id"], descending=[True, False])
        .head(n)
        .select(
            pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias("rank"),
            "customer_id",
            "churn_probability",
            "risk_band",
            pl.col("reasons") if "reasons" in scores.columns else pl.lit(None, REASONS_DTYPE),
        )
    )


def top_at_risk_markdown(scores: pl.DataFrame, n: int = DEFAULT_TOP_AT_RISK) -> str:
    """`top_at_risk` as a markdown table (for Dagster metadata)."""
    top = top_at_risk(scores, n)
    if top.is_empty():
        return "_no customers scored_"
    from churn_platform.ml.reasons import reasons_markdown

    lines = [
        "| rank | customer | churn probability | band | why |",
        "|---:|---|---:|---|---|",
    ]
    for rank, customer_id, probability, band, reasons in top.iter_rows():
        lines.append(
            f"| {rank} | {_cell(customer_id)} | {probability:.3f} | {_cell(band)} | "
            f"{_cell(reasons_markdown(reasons))} |"
        )
    return "\n".join(lines)


def _cell(text: str) -> str:
    # a '|' would split the cell, a newline the row
    return " ".join(text.replace("|", "\\|").split())


def bands_from_setting(
    cutoffs: Sequence[float] | str, names: Sequence[str] | None = None
) -> RiskBands:
    """RiskBands from a `risk_band_cutoffs` setting: a list or text like "0.1,0.3".

    Without `names`, the default low/medium/high is used for two cut-offs and
    band_1 … band_k otherwise.
    """
    if isinstance(cutoffs, str):
        parts = [p.strip() for p in cutoffs.split(",") if p.strip()]
        values: tuple[float, ...] = tuple(_cutoff(p, cutoffs) for p in parts)
    else:
        values = tuple(cutoffs)
    if names is None:
        names = (
            DEFAULT_BAND_NAMES
            if len(values) == len(DEFAULT_CUTOFFS)
            else tuple(f"band_{i + 1}" for i in range(len(values) + 1))
        )
    return RiskBands(values, tuple(names))
