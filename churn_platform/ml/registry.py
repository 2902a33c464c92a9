"""The model registry: trained churn models as immutable versions in the lake.

Layout::

    models/churn/<version>/model.skops      the model that serves (skops, not pickle): the
                                            candidate refitted on every labelled date
    models/churn/<version>/model.npz        the same model as plain arrays (`ml.flat`), when
                                            it has that form: scoring without scikit-learn
    models/churn/<version>/evaluated.skops  the candidate as evaluated (train dates only; optional)
    models/churn/<version>/baseline.skops   the logistic baseline it was compared with (optional)
    models/churn/<version>/metrics.json     evaluation metrics
    models/churn/<version>/features.json    the feature columns, in the model's order
    models/churn/<version>/gate.json        {"passed": bool, "reasons": [...], ...}: may it serve?
    models/churn/<version>/training.json    how it was trained (data range, rows, seed, churn
                                            definition, feature spec, ...)
    models/churn/<version>/card.md          the model card, for people
    models/churn/<version>/manifest.json    sha256 and size of every file above; written LAST
    models/churn/champion.json              which version serves, since when, and why
    models/churn/promotions.jsonl           every promotion, one JSON object a line

Every file is written atomically (`Lake.write_bytes`), and the manifest last,
so a version is complete exactly when its manifest exists: a crash mid-save
leaves a directory that `list_versions` ignores and `load_model` reports as
incomplete. Loading checks each file against the manifest, so a truncated or
altered file is reported as corrupt instead of half-loading.

Models are stored with skops rather than pickle because unpickling runs
arbitrary code. skops only builds the types it is told to trust; besides its
own defaults (scikit-learn estimators, numpy arrays, builtins) that is
`TRUSTED_TYPES`, the short explicit list our two pipelines need. A file naming
any other type is refused (`UntrustedModel`) before anything in it is built.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any, Literal

import msgspec
import numpy as np
import polars as pl

from churn_platform.features.churn import ChurnDefinition
from churn_platform.features.definitions import FeatureSpec
from churn_platform.lake.store import Lake, LakeError
from churn_platform.ml.flat import WALK_ROWS
from churn_platform.ml.frame import model_input
from churn_platform.ml.gate import GateDecision
from churn_platform.ml.metrics import EvaluationMetrics

if TYPE_CHECKING:
    from churn_platform.ml.flat import SmallBatchPredictor

MODELS_DIR = "models/churn"
CHAMPION_FILE = f"{MODELS_DIR}/champion.json"
PROMOTIONS_FILE = f"{MODELS_DIR}/promotions.jsonl"
MANIFEST_FILE = "manifest.json"
MODEL_FILES = {
    "model": "model.skops",
    "evaluated": "evaluated.skops",
    "baseline": "baseline.skops",
}
ModelFile = Literal["model", "evaluated", "baseline"]
MANIFEST_FORMAT = 1
# the served model as arrays (`flat.predictor_arrays`), written when it has that form
MODEL_ARRAYS_FILE = "model.npz"
# Up to this many rows the arrays score (numpy walks the trees, ~35 µs a row); beyond,
# scikit-learn's compiled loop (~9 µs a row) repays the 2-4 s of importing it and skops
# (docs/benchmarks.md, Freshness).
ARRAYS_UP_TO_ROWS = 100_000

# Types a stored model may contain beyond skops' defaults. Found by fitting both
# pipelines of `estimators.build_estimator`, with and without `estimators.calibrate`
# (isotonic and sigmoid), and asking `skops.io.get_untrusted_types`; a test
# recomputes this set from fresh fits, so a scikit-learn upgrade that needs a new
# type fails there, loudly, instead of in production. None of them runs code on
# load: skops never calls __init__ or __reduce__ for them, and none reads files.
TRUSTED_TYPES: tuple[str, ...] = (
    # SimpleImputer's `_fit_dtype`/`_fill_dtype` (logistic pipeline). skops rebuilds
    # it as the dtype of an empty array read with np.load(allow_pickle=False).
    "numpy.dtype",
    # CalibratedClassifierCV's holder of (frozen estimator, calibrators, classes): a
    # plain private class, rebuilt by __new__ and a __dict__ update.
    "sklearn.calibration._CalibratedClassifier",
    # The sigmoid calibrator (method="sigmoid"): two floats, a and b; a BaseEstimator,
    # rebuilt by __new__ and BaseEstimator.__setstate__ (version check, dict update).
    "sklearn.calibration._SigmoidCalibration",
    # One fitted tree of HistGradientBoostingClassifier: numpy arrays of nodes and bin
    # thresholds; its __setstate__ only updates __dict__ and casts the node dtype.
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
)

_VERSION = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]*$")
_HEX = frozenset("0123456789abcdef")
_REMEDY = "materialize churn_model (and churn_champion) to train and register one"


class RegistryError(LakeError):
    """A registry read or write failed; the message names the lake URL."""


class ModelMissing(RegistryError):
    """A version, one of its files, or the champion does not exist (or is incomplete)."""


class ModelCorrupt(RegistryError):
    """A registry file cannot be read as what it should be, or fails its checksum."""


class UntrustedModel(RegistryError):
    """A model file names types outside TRUSTED_TYPES; nothing in it was built."""


class PromotionRefused(RegistryError):
    """promote() was asked to serve a version whose gate did not pass."""


# versions --------------------------------------------------------------------


def new_version(now: datetime | None = None, token: str | None = None) -> str:
    """A new version name such as "20261127T040312Z-3fa9c1d2".

    The UTC time first makes names sort oldest to newest as plain strings; the
    8 hex digits keep two versions made in the same second apart. They are the
    start of `token` when it is already hex (a Dagster run id, so the version
    points at its run), a hash of `token` otherwise, and random without one.
    """
    moment = _utc(now)
    if token is None:
        suffix = uuid.uuid4().hex[:8]
    else:
        compact = token.lower().replace("-", "")
        if len(compact) >= 8 and set(compact) <= _HEX:
            suffix = compact[:8]
        else:
            suffix = hashlib.sha256(token.encode()).hexdigest()[:8]
    return f"{moment:%Y%m%dT%H%M%SZ}-{suffix}"


def version_dir(version: str) -> str:
    """The lake directory of `version`; refuses names that could escape MODELS_DIR."""
    if not _VERSION.match(version):
        raise ValueError(
            f"bad model version {version!r}: use letters, digits, '.', '_' and '-' "
            "(see new_version)"
        )
    return f"{MODELS_DIR}/{version}"


def list_versions(lake: Lake) -> list[str]:
    """Complete versions (those with a manifest), oldest to newest."""
    prefix = f"{MODELS_DIR}/"
    found = []
    for path in lake.list_files(MODELS_DIR, suffix=MANIFEST_FILE):
        parts = path[len(prefix) :].split("/") if path.startswith(prefix) else []
        if len(parts) == 2 and parts[1] == MANIFEST_FILE and _VERSION.match(parts[0]):
            found.append(parts[0])
    return sorted(found)


# records -----------------------------------------------------------------------


@dataclass(frozen=True)
class ModelRecord:
    """What the registry knows about one version, without the (large) estimator."""

    version: str
    features: list[str]
    metrics: dict  # metrics.json as stored; `evaluation` reads it as the record churn_model writes
    gate: GateDecision
    training: dict  # free-form: data range, rows, seed, ...
    created_at: str
    card: str  # markdown

    @property
    def evaluation(self) -> EvaluationMetrics:
        """metrics.json as `EvaluationMetrics` (every version churn_model saved has that form)."""
        try:
            return EvaluationMetrics.from_dict(self.metrics)
        except msgspec.ValidationError as exc:
            raise ModelCorrupt(
                f"metrics.json of model version {self.version} is not a model evaluation: {exc}"
            ) from exc

    @property
    def churn(self) -> ChurnDefinition:
        """The churn definition it was trained for (the cancellation one before they were
        recorded)."""
        return ChurnDefinition.from_dict(self.training.get("churn_definition"))

    @property
    def spec(self) -> FeatureSpec | None:
        """The activity types its training tables tracked (None before they were recorded)."""
        body = self.training.get("feature_spec")
        return FeatureSpec.from_dict(body) if body else None


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A version's model with the feature list it must be fed, in order.

    `predictor` is the version's served arrays (None without `model.npz`): scoring
    up to `ARRAYS_UP_TO_ROWS` rows with it imports neither scikit-learn nor skops.
    `estimator`, the scikit-learn object, is built by `build_estimator` when first
    asked for (at once unless the model was loaded with `lazy_estimator`).
    """

    version: str
    features: list[str]
    record: ModelRecord
    build_estimator: Callable[[], object] = field(repr=False)
    predictor: SmallBatchPredictor | None = None

    @functools.cached_property
    def estimator(self) -> object:
        return self.build_estimator()

    @property
    def estimator_built(self) -> bool:
        """Whether `estimator` exists yet (asked for, or loaded without `lazy_estimator`)."""
        return "estimator" in self.__dict__  # where functools.cached_property keeps it

    def predictor_for(self, rows: int) -> SmallBatchPredictor | None:
        """What scores `rows` rows: the arrays, else `estimators.small_batch_predictor` of the
        estimator (None for a shape it does not know: use `predict_proba`)."""
        return self.predictor if self._arrays_score(rows) else self._estimator_predictor

    def _arrays_score(self, rows: int) -> bool:
        if self.predictor is None or rows > ARRAYS_UP_TO_ROWS:
            return False
        # the arrays spare the imports; once the estimator is built they are paid, and
        # beyond a small batch scikit-learn's compiled loop walks the trees faster
        return rows <= WALK_ROWS or not self.estimator_built

    @functools.cached_property
    def _estimator_predictor(self) -> SmallBatchPredictor | None:
        from churn_platform.ml.estimators import small_batch_predictor

        return small_batch_predictor(self.estimator, self.features)

    def predict_proba(self, table: pl.DataFrame) -> np.ndarray:
        """P(churned) for each row of `table` (a feature table; extra columns are ignored)."""
        if self._arrays_score(table.height):
            return self.predictor(model_input(table, self.features, self.record.spec))
        return self.estimator_proba(table)

    def estimator_proba(self, table: pl.DataFrame) -> np.ndarray:
        """`predict_proba` from scikit-learn's estimator, whatever the batch (what the served
        arrays are checked against)."""
        from churn_platform.ml.estimators import positive_probability

        return positive_probability(
            self.estimator, model_input(table, self.features, self.record.spec)
        )


def save_model(
    lake: Lake,
    version: str,
    estimator: object,
    *,
    features: list[str],
    metrics: EvaluationMetrics | dict,
    gate: GateDecision | dict,
    training: dict,
    card: str,
    baseline: object | None = None,
    evaluated: object | None = None,
    now: datetime | None = None,
) -> ModelRecord:
    """Store a new version; returns its record.

    Versions are immutable (the champion may point at one), so saving over a
    complete version is refused. The estimators are checked against
    TRUSTED_TYPES here as well, so a model the loader would refuse fails at
    training time rather than when it is first served.
    """
    base = version_dir(version)
    if lake.exists(f"{base}/{MANIFEST_FILE}"):
        raise RegistryError(
            f"model version {version} already exists at {lake.url(base)}: versions are "
            "immutable, save under new_version()"
        )
    features = _checked_features(features)
    gate = _checked_gate(gate)
    created_at = _utc(now).isoformat(timespec="seconds")
    files = {MODEL_FILES["model"]: _dump(lake, f"{base}/{MODEL_FILES['model']}", estimator)}
    from churn_platform.ml.estimators import served_arrays

    arrays = served_arrays(estimator, features)
    if arrays is not None:
        files[MODEL_ARRAYS_FILE] = arrays
    for which, extra in (("evaluated", evaluated), ("baseline", baseline)):
        if extra is not None:
            path = f"{base}/{MODEL_FILES[which]}"
            files[MODEL_FILES[which]] = _dump(lake, path, extra)
    files["metrics.json"] = _json_bytes(metrics)
    files["features.json"] = _json_bytes(features)
    files["gate.json"] = _json_bytes(gate)
    files["training.json"] = _json_bytes(training)
    files["card.md"] = card.encode()
    entries = {}
    for name, data in files.items():
        lake.write_bytes(f"{base}/{name}", data)
        entries[name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": version,
        "created_at": created_at,
        "files": entries,
    }
    lake.write_bytes(f"{base}/{MANIFEST_FILE}", _json_bytes(manifest))
    return _record(lake, version, manifest)


def read_record(lake: Lake, version: str) -> ModelRecord:
    """The metadata of a complete `version` (each file checked against the manifest)."""
    return _record(lake, version, _manifest(lake, version))


def load_model(
    lake: Lake, version: str, *, which: ModelFile = "model", lazy_estimator: bool = False
) -> LoadedModel:
    """`version`'s served model (or its evaluated candidate or baseline), checked and built
    only from trusted types.

    Order matters: the checksum first (a damaged file is ModelCorrupt, not a
    confusing skops error), then the type check of the file's whole schema,
    before anything in it is constructed, so an untrusted object never is.
    The served model's arrays (`model.npz`), when it has them, are checked against
    the manifest too. `lazy_estimator`: where the arrays are, build the skops
    object only when it is first used (scoring up to `ARRAYS_UP_TO_ROWS` rows never
    does, and never imports scikit-learn); its bytes are checked now all the same.
    """
    if which not in MODEL_FILES:
        raise ValueError(f"which must be one of {', '.join(MODEL_FILES)}, not {which!r}")
    manifest = _manifest(lake, version)
    name = MODEL_FILES[which]
    path = f"{version_dir(version)}/{name}"
    if name not in manifest["files"]:
        raise ModelMissing(
            f"model version {version} has no {which} ({lake.url(path)} is not in its manifest)"
        )
    data = _verified_bytes(lake, path, manifest["files"][name])
    predictor = None
    if which == "model" and MODEL_ARRAYS_FILE in manifest["files"]:
        predictor = _load_arrays(lake, version, manifest["files"][MODEL_ARRAYS_FILE])
    build = functools.partial(_load_trusted, lake, path, data)
    estimator = None
    if predictor is None or not lazy_estimator:
        estimator = build()
        build = functools.partial(_same, estimator)
    record = _record(lake, version, manifest)
    loaded = LoadedModel(
        version=version,
        features=record.features,
        record=record,
        build_estimator=build,
        predictor=predictor,
    )
    if estimator is not None:
        # built now: cache it (`_same` hands it back) so `estimator_built` says so at once
        loaded.estimator  # noqa: B018
    return loaded


def _same(value: object) -> object:
    return value


def _load_arrays(lake: Lake, version: str, entry: dict) -> SmallBatchPredictor:
    from churn_platform.ml.flat import ArraysError, predictor_from_bytes

    path = f"{version_dir(version)}/{MODEL_ARRAYS_FILE}"
    try:
        return predictor_from_bytes(_verified_bytes(lake, path, entry))
    except ArraysError as exc:
        raise ModelCorrupt(f"{lake.url(path)} cannot be read as served arrays: {exc}") from exc


def load_evaluated(lake: Lake, version: str) -> LoadedModel:
    """`version`'s model as it was evaluated: fitted on its train dates, never on a holdout.

    Comparing a new candidate with the champion on the candidate's holdout must
    use this one: the served model was fitted on every labelled date, which may
    include the rows of that holdout. Versions saved before served models were
    refitted stored only `model.skops`, which is their evaluated model.
    """
    manifest = _manifest(lake, version)
    which: ModelFile = "evaluated" if MODEL_FILES["evaluated"] in manifest["files"] else "model"
    return load_model(lake, version, which=which)


# champion --------------------------------------------------------------------


class Champion(msgspec.Struct, frozen=True, kw_only=True):
    """champion.json, and each line of promotions.jsonl: which version serves, since when, why.

    Stored as JSON objects by field name; files written before this type read the same.
    Only `version` is required, as it was: a champion.json written by hand names just that.
    """

    version: str
    promoted_at: str = ""  # ISO 8601, UTC, seconds
    reason: str = ""
    metrics: dict[str, Any] = msgspec.field(default_factory=dict)  # the version's metrics.json
    previous: str | None = None  # the version that served before it


def read_champion(lake: Lake) -> Champion | None:
    """champion.json, or None before the first promotion."""
    try:
        raw = lake.read_bytes(CHAMPION_FILE)
    except FileNotFoundError:
        return None
    return _champion(lake, CHAMPION_FILE, _parse_json(lake, CHAMPION_FILE, raw))


def load_champion(lake: Lake, *, lazy_estimator: bool = False) -> LoadedModel:
    """The model that serves now (`lazy_estimator`: as `load_model`'s)."""
    champion = read_champion(lake)
    if champion is None:
        raise ModelMissing(
            f"no champion yet: {lake.url(CHAMPION_FILE)} does not exist; "
            "materialize churn_model and churn_champion to train and promote one"
        )
    try:
        return load_model(lake, champion.version, lazy_estimator=lazy_estimator)
    except ModelMissing as exc:
        raise ModelMissing(
            f"the champion in {lake.url(CHAMPION_FILE)} is version {champion.version}, "
            f"which cannot be found: {exc}"
        ) from exc


def promote(lake: Lake, version: str, *, reason: str, now: datetime | None = None) -> Champion:
    """Make `version` the champion; returns what champion.json now says.

    Only a version whose gate passed may serve, and only one that loads: it is
    loaded (checksums, trusted types) before anything is written, so the
    champion never points at a file the scorers cannot read. The history line
    is written before champion.json, so every champion that ever served is in
    promotions.jsonl even if the process dies between the two writes.
    Promotions are expected to run one at a time (a single Dagster asset).
    """
    record = read_record(lake, version)
    if not record.gate.passed:
        reasons = "; ".join(record.gate.reasons) or "no reasons recorded"
        raise PromotionRefused(
            f"model version {version} did not pass its gate and cannot be promoted: {reasons}"
        )
    load_model(lake, version)
    current = read_champion(lake)
    champion = Champion(
        version=version,
        promoted_at=_utc(now).isoformat(timespec="seconds"),
        reason=reason,
        metrics=record.metrics,
        previous=current.version if current else None,
    )
    _append_history(lake, champion)
    lake.write_bytes(CHAMPION_FILE, _json_bytes(champion))
    return champion


def read_promotions(lake: Lake) -> list[Champion]:
    """The promotion history, oldest first (empty before the first promotion)."""
    try:
        raw = lake.read_bytes(PROMOTIONS_FILE)
    except FileNotFoundError:
        return []
    return [
        _champion(lake, PROMOTIONS_FILE, _parse_json(lake, PROMOTIONS_FILE, line))
        for line in raw.splitlines()
        if line.strip()
    ]


# internals -------------------------------------------------------------------


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"naive datetime {now!r}: use datetime(..., tzinfo=UTC)")
    return now.astimezone(UTC)


def _checked_features(features: list[str]) -> list[str]:
    features = list(features)
    if not features or not all(isinstance(name, str) for name in features):
        raise ValueError("features must be a non-empty list of column names")
    if len(set(features)) != len(features):
        raise ValueError(f"features repeat a column: {features}")
    return features


def _checked_gate(gate: GateDecision | dict) -> GateDecision:
    """The gate decides promotion, so it must say plainly whether it passed."""
    if isinstance(gate, GateDecision):
        return gate
    try:
        return msgspec.convert(gate, GateDecision)
    except msgspec.ValidationError as exc:
        raise ValueError(
            f'gate must be {{"passed": bool, "reasons": [str, ...]}}, not {gate!r} ({exc})'
        ) from exc


def _json_default(value: Any) -> Any:
    """numpy scalars/arrays, dates and typed records, which metrics and training info hold."""
    if isinstance(value, msgspec.Struct):
        return msgspec.to_builtins(value, enc_hook=_json_default)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"cannot store {type(value).__name__} in registry JSON: {value!r}")


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, indent=2, sort_keys=True, default=_json_default).encode()


def _parse_json(lake: Lake, relative: str, raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelCorrupt(f"{lake.url(relative)} is not valid JSON: {exc}") from exc


def _dump(lake: Lake, relative: str, estimator: object) -> bytes:
    import skops.io  # scikit-learn and skops load with a model, not with this module

    data = skops.io.dumps(estimator)
    extra = sorted(set(skops.io.get_untrusted_types(data=data)) - set(TRUSTED_TYPES))
    if extra:
        raise UntrustedModel(
            f"not saving {lake.url(relative)}: it contains types outside TRUSTED_TYPES "
            f"({', '.join(extra)}), so it could not be loaded; review them and add the "
            "safe ones to churn_platform.ml.registry.TRUSTED_TYPES"
        )
    return data


def _manifest(lake: Lake, version: str) -> dict:
    """The manifest of a complete `version`, or ModelMissing saying why there is none."""
    base = version_dir(version)
    relative = f"{base}/{MANIFEST_FILE}"
    try:
        raw = lake.read_bytes(relative)
    except FileNotFoundError:
        if lake.list_files(base):
            raise ModelMissing(
                f"model version {version} at {lake.url(base)} is incomplete (no {MANIFEST_FILE}: "
                f"its save did not finish); {_REMEDY}"
            ) from None
        known = list_versions(lake)
        listing = ", ".join(known[-5:]) if known else "none"
        raise ModelMissing(
            f"no model version {version} at {lake.url(base)} (latest versions: {listing}); "
            f"{_REMEDY}"
        ) from None
    manifest = _parse_json(lake, relative, raw)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ModelCorrupt(f"{lake.url(relative)} is not a registry manifest")
    return manifest


def _verified_bytes(lake: Lake, relative: str, entry: dict) -> bytes:
    """The file's bytes, if they are exactly what the manifest recorded."""
    try:
        data = lake.read_bytes(relative)
    except FileNotFoundError:
        raise ModelMissing(
            f"{lake.url(relative)} is missing although its version's manifest lists it; {_REMEDY}"
        ) from None
    if len(data) != entry.get("size") or hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise ModelCorrupt(
            f"{lake.url(relative)} does not match its manifest (expected {entry.get('size')} bytes "
            f"with sha256 {entry.get('sha256')}, found {len(data)} bytes): it was damaged or "
            "replaced after saving"
        )
    return data


def _load_trusted(lake: Lake, relative: str, data: bytes) -> object:
    """The object in skops `data`, built only if every type in it is trusted.

    One pass over the file: `skops.io.loads` reads the schema, audits the whole
    tree against the trusted types (its defaults and TRUSTED_TYPES) and builds
    nothing unless that audit is clean; `get_untrusted_types` (a second parse)
    runs only when loading failed, to name what was refused or why.
    """
    import skops.io  # scikit-learn and skops load with a model, not with this module
    from skops.io.exceptions import UntrustedTypesFoundException

    try:
        return skops.io.loads(data, trusted=list(TRUSTED_TYPES))
    except UntrustedTypesFoundException as exc:
        found = skops.io.get_untrusted_types(data=data)
        extra = sorted(set(found) - set(TRUSTED_TYPES))
        raise UntrustedModel(
            f"refusing to load {lake.url(relative)}: it contains types outside TRUSTED_TYPES: "
            f"{', '.join(extra) or exc}"
        ) from None
    except Exception as exc:  # zip, JSON, schema and construction errors: no common base
        failed = exc
    # unreadable (zip, JSON, schema) or readable but not buildable: say which
    try:
        skops.io.get_untrusted_types(data=data)
    except Exception as exc:
        raise ModelCorrupt(f"{lake.url(relative)} is not a readable skops file: {exc}") from exc
    raise ModelCorrupt(f"{lake.url(relative)} could not be loaded: {failed}") from failed


def _record(lake: Lake, version: str, manifest: dict) -> ModelRecord:
    base = version_dir(version)

    def read(name: str) -> bytes:
        entry = manifest["files"].get(name)
        if entry is None:
            raise ModelCorrupt(f"{lake.url(base + '/' + MANIFEST_FILE)} does not list {name}")
        return _verified_bytes(lake, f"{base}/{name}", entry)

    def read_json(name: str) -> Any:
        return _parse_json(lake, f"{base}/{name}", read(name))

    try:
        card = read("card.md").decode()
    except UnicodeDecodeError as exc:
        raise ModelCorrupt(f"{lake.url(base + '/card.md')} is not UTF-8 text") from exc
    return ModelRecord(
        version=version,
        features=read_json("features.json"),
        metrics=read_json("metrics.json"),
        gate=_gate(lake, f"{base}/gate.json", read_json("gate.json")),
        training=read_json("training.json"),
        created_at=str(manifest.get("created_at", "")),
        card=card,
    )


def _gate(lake: Lake, relative: str, parsed: Any) -> GateDecision:
    try:
        return msgspec.convert(parsed, GateDecision)
    except msgspec.ValidationError as exc:
        raise ModelCorrupt(f"{lake.url(relative)} is not a gate decision: {exc}") from exc


def _champion(lake: Lake, relative: str, parsed: Any) -> Champion:
    """A parsed champion.json (or promotions line) as a Champion, or ModelCorrupt."""
    try:
        return msgspec.convert(parsed, Champion)
    except msgspec.ValidationError as exc:
        raise ModelCorrupt(
            f"{lake.url(relative)} is not a champion record ({exc}): promote one again "
            "(materialize churn_champion)"
        ) from exc


def _append_history(lake: Lake, champion: Champion) -> None:
    """Add one line to promotions.jsonl (read, append, atomic rewrite)."""
    try:
        history = lake.read_bytes(PROMOTIONS_FILE)
    except FileNotFoundError:
        history = b""
    if history and not history.endswith(b"\n"):
        history += b"\n"
    line = json.dumps(champion, sort_keys=True, default=_json_default).encode() + b"\n"
    lake.write_bytes(PROMOTIONS_FILE, history + line)
