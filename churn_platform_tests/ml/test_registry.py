"""The model registry: versions in the lake, checksums, trusted types, champion."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import uuid
import zipfile
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
import skops.io
from threadpoolctl import threadpool_limits

from churn_platform.lake.store import Lake
from churn_platform.ml import estimators, registry
from churn_platform.ml.flat import WALK_ROWS
from churn_platform.ml.frame import model_input
from churn_platform.ml.gate import GateDecision
from churn_platform.ml.registry import (
    MODELS_DIR,
    TRUSTED_TYPES,
    Champion,
    ModelCorrupt,
    ModelMissing,
    PromotionRefused,
    UntrustedModel,
)

FEATURES = ["events_28d", "days_since_last_event", "plan", "mrr"]
T0 = datetime(2026, 11, 27, 4, 3, 12, tzinfo=UTC)
PASSED = {"passed": True, "reasons": []}
FAILED = {"passed": False, "reasons": ["auc 0.61 below the baseline's 0.66"]}


# fixtures --------------------------------------------------------------------


def _table(rows: int, seed: int) -> tuple[pl.DataFrame, np.ndarray]:
    """A small feature table with nulls and the categorical plan, and labels that depend on it."""
    rng = np.random.default_rng(seed)
    events = rng.poisson(8, rows).astype(float)
    since = rng.integers(0, 60, rows).astype(float)
    table = pl.DataFrame(
        {
            "customer_id": [f"c{i}" for i in range(rows)],
            "events_28d": events,
            "days_since_last_event": pl.Series(since).set(pl.Series(rng.random(rows) < 0.1), None),
            "plan": rng.choice(["basic", "pro", "team"], rows).tolist(),
            "mrr": rng.gamma(2.0, 30.0, rows),
        }
    )
    logit = 0.05 * since - 0.2 * events + 0.5
    labels = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    return table, labels


@functools.cache
def _fitted(kind: estimators.ModelKind):
    """One fit per kind for the whole module (calibration wraps it frozen, never refits it)."""
    table, labels = _table(240, seed=1)
    return estimators.build_estimator(kind, FEATURES, seed=7, max_iter=15).fit(
        table.select(FEATURES), labels
    )


def _fit(kind: estimators.ModelKind, calibration: str | None):
    fitted = _fitted(kind)
    if calibration is None:
        return fitted
    later, later_labels = _table(160, seed=2)
    return estimators.calibrate(fitted, later.select(FEATURES), later_labels, method=calibration)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny fits: OpenMP threads only spin (seconds, on a busy machine) without helping."""
    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def candidate():
    return _fit("gradient_boosting", "isotonic")


@pytest.fixture(scope="module")
def baseline():
    return _fit("logistic_regression", "isotonic")


@pytest.fixture
def lake(tmp_path) -> Lake:
    return Lake(str(tmp_path / "lake"))


@pytest.fixture
def memory_lake():
    lake = Lake(f"memory://reg-test-{uuid.uuid4().hex}")
    yield lake
    if lake.fs.exists(lake.root):
        lake.fs.rm(lake.root, recursive=True)


def _save(lake: Lake, version: str, estimator, *, gate=PASSED, baseline=None, auc=0.8):
    return registry.save_model(
        lake,
        version,
        estimator,
        features=FEATURES,
        metrics={"auc": np.float64(auc), "rows": np.int64(400)},
        gate=gate,
        training={"seed": 7, "as_of": ["2026-10-01", "2026-10-28"]},
        card=f"# churn model {version}\n\nGradient boosting, calibrated — for tests.\n",
        baseline=baseline,
        now=T0,
    )


def _replace_file(lake: Lake, version: str, name: str, data: bytes) -> None:
    """Overwrite a version's file AND its manifest entry, as a valid save would have."""
    base = f"{MODELS_DIR}/{version}"
    lake.write_bytes(f"{base}/{name}", data)
    manifest = json.loads(lake.read_bytes(f"{base}/manifest.json"))
    manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    lake.write_bytes(f"{base}/manifest.json", json.dumps(manifest).encode())


# trusted types ---------------------------------------------------------------


def test_trusted_types_are_exactly_what_our_pipelines_need():
    """Fails when a scikit-learn/skops upgrade changes the types a model file holds.

    New type: review it and add it to TRUSTED_TYPES with a comment; gone: remove it.
    """
    needed: set[str] = set()
    for kind in ("gradient_boosting", "logistic_regression"):
        for calibration in (None, "isotonic", "sigmoid"):
            data = skops.io.dumps(_fit(kind, calibration))
            needed |= set(skops.io.get_untrusted_types(data=data))
    assert needed - set(TRUSTED_TYPES) == set(), "types to review and trust"
    assert set(TRUSTED_TYPES) - needed == set(), "types trusted but no longer needed"
    assert len(set(TRUSTED_TYPES)) == len(TRUSTED_TYPES)


# versions --------------------------------------------------------------------


def test_new_version_sorts_by_time_and_takes_the_token():
    early = registry.new_version(T0)
    late = registry.new_version(T0 + timedelta(seconds=1))
    assert early.startswith("20261127T040312Z-") and len(early) == len("20261127T040312Z-") + 8
    assert early < late
    assert registry.new_version(T0) != registry.new_version(T0)  # random suffix
    run_id = "3fa9c1d2-77aa-4b1e-9c3e-0123456789ab"
    assert registry.new_version(T0, token=run_id) == "20261127T040312Z-3fa9c1d2"
    hashed = registry.new_version(T0, token="nightly run")
    assert hashed == registry.new_version(T0, token="nightly run")
    assert all(c in "0123456789abcdef" for c in hashed.rpartition("-")[2])
    other_zone = T0.astimezone(__import__("zoneinfo").ZoneInfo("Europe/Berlin"))
    assert registry.new_version(other_zone, token=run_id) == "20261127T040312Z-3fa9c1d2"
    with pytest.raises(ValueError, match="naive"):
        registry.new_version(datetime(2026, 1, 1))


def test_bad_version_names_are_refused(lake, candidate):
    for bad in ("../escape", "a/b", "", ".hidden"):
        with pytest.raises(ValueError, match="bad model version"):
            registry.load_model(lake, bad)
        with pytest.raises(ValueError, match="bad model version"):
            _save(lake, bad, candidate)


# save / load -----------------------------------------------------------------


def test_save_and_load_round_trip(lake, candidate, baseline):
    version = registry.new_version(T0)
    saved = _save(lake, version, candidate, baseline=baseline)
    table, _ = _table(50, seed=3)

    loaded = registry.load_model(lake, version)
    assert loaded.version == version
    assert loaded.features == FEATURES
    expected = estimators.positive_probability(candidate, table.select(FEATURES))
    np.testing.assert_array_equal(loaded.predict_proba(table), expected)
    # column order and extra columns do not matter: the registry feeds model_input
    shuffled = table.select(["mrr", "customer_id", "plan", "days_since_last_event", "events_28d"])
    np.testing.assert_array_equal(loaded.predict_proba(shuffled), expected)

    old = registry.load_model(lake, version, which="baseline")
    expected_baseline = estimators.positive_probability(baseline, table.select(FEATURES))
    np.testing.assert_array_equal(old.predict_proba(table), expected_baseline)

    record = registry.read_record(lake, version)
    assert record == saved == loaded.record
    assert record.metrics == {"auc": 0.8, "rows": 400}
    assert record.gate == GateDecision(passed=True, reasons=[])
    assert record.training["seed"] == 7
    assert record.created_at == "2026-11-27T04:03:12+00:00"
    assert record.card.startswith(f"# churn model {version}") and "—" in record.card
    files = {path.rpartition("/")[2] for path in lake.list_files(f"{MODELS_DIR}/{version}")}
    assert files == {
        "model.skops",
        "baseline.skops",
        "metrics.json",
        "features.json",
        "gate.json",
        "training.json",
        "card.md",
        "manifest.json",
    }


@pytest.mark.parametrize("kind", ["gradient_boosting", "logistic_regression"])
def test_uncalibrated_pipelines_load(lake, kind):
    pipeline = _fit(kind, None)
    version = registry.new_version(T0)
    _save(lake, version, pipeline)
    table, _ = _table(30, seed=4)
    expected = estimators.positive_probability(pipeline, table.select(FEATURES))
    np.testing.assert_array_equal(registry.load_model(lake, version).predict_proba(table), expected)


def test_a_version_without_baseline_says_so(lake, candidate):
    version = registry.new_version(T0)
    _save(lake, version, candidate)
    with pytest.raises(ModelMissing, match="has no baseline"):
        registry.load_model(lake, version, which="baseline")


def test_versions_are_immutable(lake, candidate):
    version = registry.new_version(T0)
    _save(lake, version, candidate)
    with pytest.raises(registry.RegistryError, match="already exists"):
        _save(lake, version, candidate)


def test_save_refuses_a_model_the_loader_would_refuse(lake):
    version = registry.new_version(T0)
    with pytest.raises(UntrustedModel, match="fractions.Fraction"):
        _save(lake, version, {"odd": __import__("fractions").Fraction(1, 3)})
    assert registry.list_versions(lake) == []


def test_list_versions_is_oldest_first_and_skips_incomplete_ones(lake, candidate):
    versions = [registry.new_version(T0 + timedelta(hours=h)) for h in (0, 1, 2)]
    for version in (versions[1], versions[2], versions[0]):
        _save(lake, version, candidate)
    # a save that died before its manifest: files, but no manifest.json
    incomplete = registry.new_version(T0 + timedelta(hours=3))
    lake.write_bytes(f"{MODELS_DIR}/{incomplete}/model.skops", skops.io.dumps(candidate))
    # champion.json and promotions.jsonl live beside the versions
    registry.promote(lake, versions[0], reason="first", now=T0)

    assert registry.list_versions(lake) == versions
    with pytest.raises(ModelMissing, match="incomplete") as caught:
        registry.load_model(lake, incomplete)
    assert lake.url(f"{MODELS_DIR}/{incomplete}") in str(caught.value)


def test_an_unknown_version_is_missing(lake, candidate):
    _save(lake, registry.new_version(T0), candidate)
    with pytest.raises(ModelMissing, match="materialize churn_model") as caught:
        registry.load_model(lake, "20300101T000000Z-00000000")
    assert lake.url(f"{MODELS_DIR}/20300101T000000Z-00000000") in str(caught.value)
    with pytest.raises(ModelMissing):
        registry.read_record(lake, "20300101T000000Z-00000000")


# damage ----------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_model_file_is_corrupt(lake, candidate, damage):
    version = registry.new_version(T0)
    _save(lake, version, candidate)
    path = f"{MODELS_DIR}/{version}/model.skops"
    data = bytearray(lake.read_bytes(path))
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        del data[len(data) // 2 :]
    lake.write_bytes(path, bytes(data))
    with pytest.raises(ModelCorrupt, match="does not match its manifest") as caught:
        registry.load_model(lake, version)
    assert lake.url(path) in str(caught.value)


def test_garbage_with_a_valid_manifest_is_corrupt(lake, candidate):
    version = registry.new_version(T0)
    _save(lake, version, candidate)
    _replace_file(lake, version, "model.skops", b"PK\x03\x04 not really a zip file")
    with pytest.raises(ModelCorrupt, match="not a readable skops file") as caught:
        registry.load_model(lake, version)
    assert lake.url(f"{MODELS_DIR}/{version}/model.skops") in str(caught.value)


def _with_member(data: bytes, name: str, content: bytes) -> bytes:
    """A copy of the zip `data` with member `name` replaced by `content`."""
    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            target.writestr(info, content if info.filename == name else source.read(info))
    return out.getvalue()


def test_a_readable_file_that_cannot_be_built_is_corrupt(lake, candidate):
    """Schema and types fine, an array inside damaged: ModelCorrupt, saying it did not load."""
    version = registry.new_version(T0)
    _save(lake, version, candidate)
    data = skops.io.dumps(candidate)
    array = next(n for n in zipfile.ZipFile(io.BytesIO(data)).namelist() if n.endswith(".npy"))
    _replace_file(lake, version, "model.skops", _with_member(data, array, b"not an array"))
    with pytest.raises(ModelCorrupt, match="could not be loaded") as caught:
        registry.load_model(lake, version)
    assert lake.url(f"{MODELS_DIR}/{version}/model.skops") in str(caught.value)


def test_a_trusted_model_is_read_in_one_pass(lake, candidate, monkeypatch):
    """Loading audits the types and builds in one read of the schema: the separate
    `get_untrusted_types` pass only runs to explain a failure."""
    version = registry.new_version(T0)
    _save(lake, version, candidate)

    def second_pass(**_):
        raise AssertionError("get_untrusted_types ran on a model that loads")

    monkeypatch.setattr(skops.io, "get_untrusted_types", second_pass)
    loaded = registry.load_model(lake, version)
    table, _ = _table(30, seed=3)
    np.testing.assert_array_equal(
        loaded.predict_proba(table),
        estimators.positive_probability(candidate, table.select(FEATURES)),
    )


def test_edited_metadata_is_corrupt(lake, candidate):
    version = registry.new_version(T0)
    _save(lake, version, candidate, gate=FAILED)
    # someone flips the gate by hand: the checksum catches it
    lake.write_bytes(f"{MODELS_DIR}/{version}/gate.json", json.dumps(PASSED).encode())
    with pytest.raises(ModelCorrupt, match="gate.json"):
        registry.read_record(lake, version)
    with pytest.raises(ModelCorrupt):
        registry.promote(lake, version, reason="sneaky")
    assert registry.read_champion(lake) is None


def test_deleted_model_file_is_missing(lake, candidate):
    version = registry.new_version(T0)
    _save(lake, version, candidate)
    path = f"{MODELS_DIR}/{version}/model.skops"
    lake.remove(path)
    with pytest.raises(ModelMissing, match="is missing") as caught:
        registry.load_model(lake, version)
    assert lake.url(path) in str(caught.value)


# untrusted types -------------------------------------------------------------

BUILT: list[str] = []


class Boom:
    """Records every construction, the way a malicious payload would act on load."""

    def __new__(cls, *args, **kwargs):
        BUILT.append("new")
        return super().__new__(cls)

    def __init__(self, armed: bool = False):
        self.armed = armed

    def __setstate__(self, state):
        BUILT.append("setstate")
        self.__dict__.update(state)


def test_untrusted_types_are_refused_without_being_built(lake, candidate):
    version = registry.new_version(T0)
    _save(lake, version, candidate)
    payload = skops.io.dumps({"model": candidate, "extra": Boom(armed=True)})
    _replace_file(lake, version, "model.skops", payload)
    BUILT.clear()

    with pytest.raises(UntrustedModel, match=f"{__name__}.Boom") as caught:
        registry.load_model(lake, version)
    assert lake.url(f"{MODELS_DIR}/{version}/model.skops") in str(caught.value)
    assert "TreePredictor" not in str(caught.value)  # trusted types are not listed
    assert BUILT == []

    # the check matters: loading the same bytes while trusting Boom does build it
    skops.io.loads(payload, trusted=[*TRUSTED_TYPES, f"{__name__}.Boom"])
    assert BUILT == ["new", "setstate"]


# champion --------------------------------------------------------------------


def test_no_champion_yet(lake, candidate):
    _save(lake, registry.new_version(T0), candidate)
    assert registry.read_champion(lake) is None
    assert registry.read_promotions(lake) == []
    with pytest.raises(ModelMissing, match="no champion yet") as caught:
        registry.load_champion(lake)
    message = str(caught.value)
    assert "churn_model" in message and "churn_champion" in message
    assert lake.url(registry.CHAMPION_FILE) in message


def test_promoting_a_failed_gate_is_refused(lake, candidate):
    good, bad = registry.new_version(T0), registry.new_version(T0 + timedelta(hours=1))
    _save(lake, good, candidate)
    _save(lake, bad, candidate, gate=FAILED)
    registry.promote(lake, good, reason="first model", now=T0)
    before = lake.read_bytes(registry.CHAMPION_FILE)

    with pytest.raises(PromotionRefused, match="auc 0.61 below the baseline's 0.66"):
        registry.promote(lake, bad, reason="try anyway")
    assert lake.read_bytes(registry.CHAMPION_FILE) == before
    assert len(registry.read_promotions(lake)) == 1
    assert registry.load_champion(lake).version == good


def test_promote_twice_keeps_history(lake, candidate, baseline):
    first, second = registry.new_version(T0), registry.new_version(T0 + timedelta(days=7))
    _save(lake, first, candidate, auc=0.80)
    _save(lake, second, baseline, auc=0.82)

    champion = registry.promote(lake, first, reason="first model", now=T0)
    assert champion == Champion(
        version=first,
        promoted_at="2026-11-27T04:03:12+00:00",
        reason="first model",
        metrics={"auc": 0.8, "rows": 400},
        previous=None,
    )
    later = T0 + timedelta(days=7)
    registry.promote(lake, second, reason="beats champion by 0.02 auc", now=later)

    stored = json.loads(lake.read_bytes(registry.CHAMPION_FILE))
    assert stored == {
        "version": second,
        "promoted_at": "2026-12-04T04:03:12+00:00",
        "reason": "beats champion by 0.02 auc",
        "metrics": {"auc": 0.82, "rows": 400},
        "previous": first,
    }
    assert registry.read_champion(lake) == Champion(**stored)
    lines = lake.read_bytes(registry.PROMOTIONS_FILE).decode().splitlines()
    assert len(lines) == 2
    assert [json.loads(line)["version"] for line in lines] == [first, second]
    assert registry.read_promotions(lake) == [champion, Champion(**stored)]

    loaded = registry.load_champion(lake)
    table, _ = _table(20, seed=5)
    expected = estimators.positive_probability(baseline, table.select(FEATURES))
    assert loaded.version == second
    np.testing.assert_array_equal(loaded.predict_proba(table), expected)


def test_promote_refuses_a_version_that_does_not_load(lake, candidate):
    version = registry.new_version(T0)
    _save(lake, version, candidate)
    _replace_file(lake, version, "model.skops", skops.io.dumps({"extra": Boom(armed=True)}))
    with pytest.raises(UntrustedModel):
        registry.promote(lake, version, reason="should not serve")
    assert registry.read_champion(lake) is None
    assert registry.read_promotions(lake) == []


def test_champion_files_written_before_the_champion_type_still_read(lake, candidate):
    """champion.json and promotions.jsonl exactly as the dict-based registry wrote them."""
    version = registry.new_version(T0)
    _save(lake, version, candidate)
    old = (
        "{\n"
        '  "metrics": {\n    "auc": 0.8,\n    "rows": 400\n  },\n'
        '  "previous": null,\n'
        '  "promoted_at": "2026-11-27T04:03:12+00:00",\n'
        '  "reason": "first model",\n'
        f'  "version": "{version}"\n'
        "}"
    )
    lake.write_bytes(registry.CHAMPION_FILE, old.encode())
    line = json.dumps(json.loads(old), sort_keys=True) + "\n"
    lake.write_bytes(registry.PROMOTIONS_FILE, line.encode())
    expected = Champion(
        version=version,
        promoted_at="2026-11-27T04:03:12+00:00",
        reason="first model",
        metrics={"auc": 0.8, "rows": 400},
        previous=None,
    )
    assert registry.read_champion(lake) == expected
    assert registry.read_promotions(lake) == [expected]
    assert registry.load_champion(lake).version == version
    # the old reader asked only for a version: a champion.json written by hand
    lake.write_bytes(registry.CHAMPION_FILE, json.dumps({"version": version}).encode())
    assert registry.read_champion(lake) == Champion(version=version)
    # and what is written now has the same form, byte for byte
    registry.promote(lake, version, reason="first model", now=T0)
    assert lake.read_bytes(registry.CHAMPION_FILE).decode() == old.replace(
        '"previous": null', f'"previous": "{version}"'
    )


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"[1, 2]", b'{"promoted_at": "x"}', b'{"version": 7}', b"\xff\xfe"],
)
def test_garbled_champion_is_corrupt(lake, candidate, content):
    version = registry.new_version(T0)
    _save(lake, version, candidate)
    registry.promote(lake, version, reason="first", now=T0)
    lake.write_bytes(registry.CHAMPION_FILE, content)
    with pytest.raises(ModelCorrupt) as caught:
        registry.read_champion(lake)
    assert lake.url(registry.CHAMPION_FILE) in str(caught.value)
    with pytest.raises(ModelCorrupt):
        registry.load_champion(lake)


def test_champion_pointing_at_a_lost_version_is_missing(lake, candidate):
    version = registry.new_version(T0)
    _save(lake, version, candidate)
    registry.promote(lake, version, reason="first", now=T0)
    lake.fs.rm(lake.path(f"{MODELS_DIR}/{version}"), recursive=True)
    with pytest.raises(ModelMissing, match=f"champion .* is version {version}"):
        registry.load_champion(lake)


# other filesystems -----------------------------------------------------------


def test_memory_lake(memory_lake, candidate, baseline):
    lake = memory_lake
    first, second = registry.new_version(T0), registry.new_version(T0 + timedelta(hours=1))
    _save(lake, second, candidate, baseline=baseline)
    _save(lake, first, candidate)
    lake.write_bytes(f"{MODELS_DIR}/{registry.new_version(T0)}/model.skops", b"half a save")
    assert registry.list_versions(lake) == [first, second]

    registry.promote(lake, first, reason="first", now=T0)
    registry.promote(lake, second, reason="second", now=T0)
    loaded = registry.load_champion(lake)
    assert loaded.version == second
    assert registry.read_champion(lake).previous == first
    table, _ = _table(20, seed=6)
    expected = estimators.positive_probability(candidate, table.select(FEATURES))
    np.testing.assert_array_equal(loaded.predict_proba(table), expected)
    base = registry.load_model(lake, second, which="baseline")
    assert base.predict_proba(table).shape == (20,)

    path = f"{MODELS_DIR}/{second}/model.skops"
    lake.write_bytes(path, lake.read_bytes(path)[:-10])
    with pytest.raises(ModelCorrupt) as caught:
        registry.load_champion(lake)
    assert caught.value.args[0].count("memory://") >= 1


# typed metrics -----------------------------------------------------------------


def test_evaluation_metrics_are_stored_in_the_form_dicts_were(lake, candidate):
    """metrics.json written from the typed record has the same bytes as the dict it replaced,
    and a version saved with that dict reads back as the record."""
    from churn_platform.ml.metrics import EvaluationMetrics
    from churn_platform_tests.ml.test_metrics import OLD_FORM

    typed, old = registry.new_version(T0), registry.new_version(T0 + timedelta(seconds=1))
    for version, metrics in ((typed, EvaluationMetrics.from_dict(OLD_FORM)), (old, OLD_FORM)):
        registry.save_model(
            lake,
            version,
            candidate,
            features=FEATURES,
            metrics=metrics,
            gate=PASSED,
            training={},
            card="# test\n",
            now=T0,
        )
    stored = [lake.read_bytes(f"{MODELS_DIR}/{v}/metrics.json") for v in (typed, old)]
    assert stored[0] == stored[1]
    assert registry.read_record(lake, old).evaluation == EvaluationMetrics.from_dict(OLD_FORM)
    assert registry.read_record(lake, typed).evaluation.candidate.roc_auc == 0.8773


def test_metrics_that_are_not_an_evaluation_are_corrupt_when_read_as_one(lake, candidate):
    version = registry.new_version(T0)
    _save(lake, version, candidate)
    record = registry.read_record(lake, version)
    assert record.metrics == {"auc": 0.8, "rows": 400}  # still readable as stored
    with pytest.raises(ModelCorrupt, match=f"{version}.*candidate"):
        _ = record.evaluation


def test_gate_files_of_both_forms_read_as_a_decision(lake, candidate):
    """gate.json as first written ({"passed", "reasons"}) and with the rules' details."""
    short, full = registry.new_version(T0), registry.new_version(T0 + timedelta(seconds=1))
    details = {
        "passed": False,
        "reasons": ["floor FAILED: holdout ROC AUC 0.6100 < floor 0.7500"],
        "failed_rules": ["floor"],
        "quality": {"holdout_rows": 900, "candidate_roc_auc": 0.61},
        "regression": {},
    }
    _save(lake, short, candidate, gate=PASSED)
    _save(lake, full, candidate, gate=details)
    assert json.loads(lake.read_bytes(f"{MODELS_DIR}/{short}/gate.json")) == PASSED
    assert json.loads(lake.read_bytes(f"{MODELS_DIR}/{full}/gate.json")) == {
        k: v for k, v in details.items() if v != {}
    }
    assert registry.read_record(lake, short).gate == GateDecision(passed=True, reasons=[])
    gate = registry.read_record(lake, full).gate
    assert (gate.passed, gate.failed_rules) == (False, ["floor"])
    assert gate.quality["candidate_roc_auc"] == 0.61 and gate.regression == {}
    with pytest.raises(PromotionRefused, match="floor 0.7500"):
        registry.promote(lake, full, reason="should not serve")


@pytest.mark.parametrize("gate", [{"reasons": []}, {"passed": "yes", "reasons": []}])
def test_a_gate_that_does_not_say_whether_it_passed_is_refused(lake, candidate, gate):
    with pytest.raises(ValueError, match="passed"):
        _save(lake, registry.new_version(T0), candidate, gate=gate)


# served arrays ---------------------------------------------------------------


@pytest.fixture(scope="module")
def sigmoid_candidate():
    """What training serves: the boosting with a sigmoid calibration (it has served arrays)."""
    return _fit("gradient_boosting", "sigmoid")


def test_a_sigmoid_boosting_is_saved_as_arrays_too_and_they_score_the_same(lake, sigmoid_candidate):
    version = registry.new_version(T0)
    _save(lake, version, sigmoid_candidate)
    files = {path.rpartition("/")[2] for path in lake.list_files(f"{MODELS_DIR}/{version}")}
    assert registry.MODEL_ARRAYS_FILE in files
    loaded = registry.load_model(lake, version, lazy_estimator=True)
    assert loaded.predictor is not None and loaded.predictor.classifier is None
    # a few rows walk all trees at once; more than WALK_ROWS walk them in slices
    for rows in (40, WALK_ROWS * 2 + 17):
        table, _ = _table(rows, seed=rows)
        expected = estimators.positive_probability(sigmoid_candidate, table.select(FEATURES))
        np.testing.assert_array_equal(loaded.predict_proba(table), expected)


def test_an_isotonic_calibration_has_no_arrays_and_scores_through_scikit_learn(lake, candidate):
    version = registry.new_version(T0)
    _save(lake, version, candidate)
    loaded = registry.load_model(lake, version, lazy_estimator=True)
    assert loaded.predictor is None
    assert estimators.served_arrays(candidate, FEATURES) is None


def test_scoring_from_arrays_imports_neither_scikit_learn_nor_skops(lake, sigmoid_candidate):
    import subprocess
    import sys

    version = registry.new_version(T0)
    _save(lake, version, sigmoid_candidate)
    registry.promote(lake, version, reason="test", now=T0)
    table, _ = _table(300, seed=11)
    path = lake.path("table.parquet")
    table.write_parquet(path)
    expected = estimators.positive_probability(sigmoid_candidate, table.select(FEATURES))
    np.save(lake.path("expected.npy"), expected)
    script = f"""
import sys
import numpy as np
import polars as pl
from churn_platform.lake.store import Lake
from churn_platform.ml import registry
from churn_platform.ml.reasons import Reasoner
model = registry.load_champion(Lake({lake.uri!r}), lazy_estimator=True)
table = pl.read_parquet({path!r})
np.testing.assert_array_equal(model.predict_proba(table), np.load({lake.path("expected.npy")!r}))
assert Reasoner.of(model, model.predictor_for(table.height)) is not None
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("sklearn", "skops"))
assert not loaded, loaded[:5]
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_estimator_of_a_lazy_load_is_built_once_when_first_used(
    lake, sigmoid_candidate, monkeypatch
):
    version = registry.new_version(T0)
    _save(lake, version, sigmoid_candidate)
    built = []
    real = registry._load_trusted
    monkeypatch.setattr(
        registry, "_load_trusted", lambda *args: built.append(args[1]) or real(*args)
    )
    loaded = registry.load_model(lake, version, lazy_estimator=True)
    table, _ = _table(30, seed=5)
    loaded.predict_proba(table)
    assert built == [] and not loaded.estimator_built
    assert loaded.estimator is loaded.estimator
    assert built == [f"{MODELS_DIR}/{version}/model.skops"] and loaded.estimator_built
    # without lazy_estimator it is built at once (and a damaged file is found at once)
    assert registry.load_model(lake, version).estimator_built
    assert len(built) == 2


def test_beyond_arrays_up_to_rows_scikit_learns_loop_scores_the_same(
    lake, sigmoid_candidate, monkeypatch
):
    version = registry.new_version(T0)
    _save(lake, version, sigmoid_candidate)
    loaded = registry.load_model(lake, version, lazy_estimator=True)
    monkeypatch.setattr(registry, "ARRAYS_UP_TO_ROWS", 100)
    assert loaded.predictor_for(100) is loaded.predictor
    big = loaded.predictor_for(101)
    assert big is not None and big.classifier is not None
    table, _ = _table(WALK_ROWS + 500, seed=8)
    expected = estimators.positive_probability(sigmoid_candidate, table.select(FEATURES))
    np.testing.assert_array_equal(loaded.predict_proba(table), expected)
    x = model_input(table, FEATURES)
    np.testing.assert_array_equal(big(x), loaded.predictor(x))


def test_once_the_estimator_is_built_a_big_batch_takes_scikit_learns_loop(
    lake, sigmoid_candidate, monkeypatch
):
    """The arrays spare scikit-learn's imports; once the estimator is built (a process that
    trained, or asked for it) a batch beyond WALK_ROWS goes through its compiled loop,
    and a small one still walks the arrays. The probabilities are the same either way."""
    version = registry.new_version(T0)
    _save(lake, version, sigmoid_candidate)
    loaded = registry.load_model(lake, version, lazy_estimator=True)
    assert loaded.predictor_for(WALK_ROWS + 1) is loaded.predictor  # nothing built yet
    assert loaded.estimator is not None
    assert loaded.predictor_for(WALK_ROWS) is loaded.predictor
    big = loaded.predictor_for(WALK_ROWS + 1)
    assert big is not loaded.predictor and big.classifier is not None
    walked = []
    real = type(loaded.predictor).__call__
    monkeypatch.setattr(
        type(loaded.predictor), "__call__", lambda self, x: walked.append(len(x)) or real(self, x)
    )
    table, _ = _table(WALK_ROWS + 500, seed=9)
    expected = estimators.positive_probability(sigmoid_candidate, table.select(FEATURES))
    np.testing.assert_array_equal(loaded.predict_proba(table), expected)
    assert walked == []  # not the arrays
    np.testing.assert_array_equal(loaded.predict_proba(table.head(5)), expected[:5])
    assert walked == [5]


@pytest.mark.parametrize("damage", ["garbage", "flip"])
def test_damaged_arrays_are_corrupt(lake, sigmoid_candidate, damage):
    version = registry.new_version(T0)
    _save(lake, version, sigmoid_candidate)
    path = f"{MODELS_DIR}/{version}/{registry.MODEL_ARRAYS_FILE}"
    if damage == "garbage":  # with its manifest entry rewritten to match
        _replace_file(lake, version, registry.MODEL_ARRAYS_FILE, b"PK\x03\x04 not arrays")
        expected = "cannot be read as served arrays"
    else:
        data = bytearray(lake.read_bytes(path))
        data[len(data) // 2] ^= 0xFF
        lake.write_bytes(path, bytes(data))
        expected = "does not match its manifest"
    with pytest.raises(ModelCorrupt, match=expected) as caught:
        registry.load_model(lake, version, lazy_estimator=True)
    assert lake.url(path) in str(caught.value)
