"""Security: Kafka secrets never surface, models load only from trusted types, everything binds
to loopback by default, and a fresh clone installs exactly the dependencies tested here."""

from __future__ import annotations

import ast
import base64
import contextlib
import hashlib
import http.server
import importlib.metadata
import json
import logging
import os
import pickle
import re
import signal
import subprocess
import threading
import tomllib
import uuid
from pathlib import Path

import dagster as dg
import numpy as np
import psutil
import pytest
import skops.io
from confluent_kafka import Producer
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from sklearn.linear_model import LogisticRegression

from churn_platform.defs.resources.kafka import KafkaResource
from churn_platform.kafka.config import KafkaSettings
from churn_platform.lake.store import Lake
from churn_platform.ml import registry
from churn_platform.ml.registry import MODELS_DIR, ModelCorrupt, UntrustedModel

PROJECT = Path(__file__).resolve().parents[2]

# Unique per run: found anywhere only if it leaked.
SASL_SECRET = f"sasl-secret-{uuid.uuid4().hex}"
SSL_SECRET = f"ssl-key-secret-{uuid.uuid4().hex}"
OIDC_SECRET = f"oidc-client-secret-{uuid.uuid4().hex}"
PASS_THROUGH_SECRET = f"keystore-secret-{uuid.uuid4().hex}"  # KAFKA_PROPERTY__… route
SECRETS = (SASL_SECRET, SSL_SECRET, OIDC_SECRET, PASS_THROUGH_SECRET)
# where each secret is set (in the order of SECRETS) and the property it sets
SECRET_ENV = {
    "KAFKA_SASL_PASSWORD": "sasl.password",
    "KAFKA_SSL_KEY_PASSWORD": "ssl.key.password",
    "KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET": "sasl.oauthbearer.client.secret",
    "KAFKA_PROPERTY__SSL_KEYSTORE_PASSWORD": "ssl.keystore.password",
}
SECRET_PROPERTIES = tuple(SECRET_ENV.values())
OIDC_CLIENT = "churn-oidc"
# the client credentials as librdkafka sends them to the token endpoint (HTTP Basic)
OIDC_BASIC = base64.b64encode(f"{OIDC_CLIENT}:{OIDC_SECRET}".encode()).decode()


def leaked(text: str | bytes) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    return [secret for secret in (*SECRETS, OIDC_BASIC) if secret.encode() in data]


@pytest.fixture
def secret_env(monkeypatch, tmp_path):
    """Every kind of Kafka secret in the environment, as an operator would set them: SASL and
    SSL key passwords, an OIDC client secret, and a secret librdkafka property passed through."""
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "churn-svc")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", SASL_SECRET)
    monkeypatch.setenv("KAFKA_SSL_KEY_PASSWORD", SSL_SECRET)
    monkeypatch.setenv("KAFKA_SASL_OAUTHBEARER_METHOD", "oidc")
    monkeypatch.setenv("KAFKA_SASL_OAUTHBEARER_CLIENT_ID", OIDC_CLIENT)
    monkeypatch.setenv("KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET", OIDC_SECRET)
    monkeypatch.setenv("KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL", "http://127.0.0.1:9/token")
    monkeypatch.setenv("KAFKA_PROPERTY__SSL_KEYSTORE_PASSWORD", PASS_THROUGH_SECRET)
    monkeypatch.setenv("CHURN_LAKE", str(tmp_path / "lake"))
    for name in [n for n in os.environ if n.startswith("KAFKA_PROPERTY__")]:
        if name != "KAFKA_PROPERTY__SSL_KEYSTORE_PASSWORD":
            monkeypatch.delenv(name)
    for name in ("KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_MECHANISM", "KAFKA_SSL_KEY_LOCATION"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@contextlib.contextmanager
def token_endpoint():
    """An OIDC token endpoint that records the credentials it is sent and refuses them."""
    received: list[str] = []

    class Refuse(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(self.headers.get("Authorization", ""))
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = b'{"error": "invalid_client"}'
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Refuse)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/token", received
    finally:
        server.shutdown()
        server.server_close()


# secrets ------------------------------------------------------------------------


def test_settings_and_resources_hold_the_secret_only_as_an_env_var_name(secret_env):
    secret_env.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker.example:9093")
    secret_env.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    secret_env.setenv("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    settings = KafkaSettings.from_env()
    config = settings.client_config(**{"group.id": "g"})
    # librdkafka does get them: the test below would see them if anything echoed it
    assert tuple(config[p] for p in SECRET_PROPERTIES) == SECRETS
    shown = [repr(settings), str(settings), f"{settings!r}", json.dumps(settings.describe())]
    assert not leaked("\n".join(shown))
    assert {settings.describe()[p] for p in SECRET_PROPERTIES} == {"***"}

    from churn_platform.definitions import defs

    definitions = defs()
    kafka = definitions.resources["kafka"]
    held = [
        kafka.sasl_password,
        kafka.ssl_key_password,
        kafka.sasl_oauthbearer_client_secret,
        kafka.properties["ssl.keystore.password"],
    ]
    assert all(isinstance(value, dg.EnvVar) for value in held)
    assert [value.env_var_name for value in held] == list(SECRET_ENV)
    for name, resource in definitions.resources.items():
        # the configured values the UI's Resources page shows
        configured = resource.get_resource_definition().config_schema.as_field().default_value
        assert not leaked(repr(resource) + json.dumps(configured, default=str)), name
    configured = kafka.get_resource_definition().config_schema.as_field().default_value
    assert configured["sasl_password"] == {"env": "KAFKA_SASL_PASSWORD"}
    assert configured["ssl_key_password"] == {"env": "KAFKA_SSL_KEY_PASSWORD"}
    assert configured["sasl_oauthbearer_client_secret"] == {
        "env": "KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET"
    }
    assert configured["properties"]["ssl.keystore.password"] == {
        "env": "KAFKA_PROPERTY__SSL_KEYSTORE_PASSWORD"
    }


def test_a_resolved_resource_never_prints_its_password(secret_env):
    """In a run Dagster hands the asset a resource holding the resolved values: its repr used
    to show them (pydantic's default), so one `log.info(f"{kafka}")` would have leaked."""
    seen = {}

    @dg.asset
    def shows_its_resource(kafka: KafkaResource) -> None:
        seen["shown"] = f"{kafka!r} {kafka!s}"
        seen["config"] = kafka.settings().client_config()

    with dg.instance_for_test() as instance:
        resources = {"kafka": KafkaResource.from_env()}
        assert dg.materialize([shows_its_resource], resources=resources, instance=instance).success
    assert tuple(seen["config"][p] for p in SECRET_PROPERTIES) == SECRETS
    assert not leaked(seen["shown"])
    for shown in (
        "sasl_password='***'",
        "ssl_key_password='***'",
        "sasl_oauthbearer_client_secret='***'",
        "'ssl.keystore.password': '***'",
    ):
        assert shown in seen["shown"]
    plain = KafkaResource.from_settings(KafkaSettings.from_env(default_bootstrap="b:9092"), "e")
    assert plain.sasl_password == SASL_SECRET and not leaked(repr(plain) + str(plain))
    assert plain.properties["ssl.keystore.password"] == PASS_THROUGH_SECRET
    # set in code rather than from the environment: the same
    in_code = KafkaResource(
        sasl_oauthbearer_client_secret=OIDC_SECRET,
        properties={
            "ssl.keystore.password": PASS_THROUGH_SECRET,
            "socket.keepalive.enable": "true",
        },
    )
    assert not leaked(repr(in_code) + str(in_code) + repr(in_code.settings()))
    assert "'socket.keepalive.enable': 'true'" in repr(in_code)


def test_the_secret_appears_in_no_log_event_metadata_or_file(
    secret_env, kafka_settings, topic, tmp_path, caplog, capfd
):
    """Sensor tick, a successful and a failing extract run, the CLI, an OIDC login: capture
    everything."""
    from churn_platform.cli import main
    from churn_platform.definitions import defs
    from churn_platform.defs.ingestion.assets import raw_customer_events
    from churn_platform.defs.ingestion.sensors import customer_events_sensor
    from churn_platform.testing.topics import produce_round

    caplog.set_level(logging.DEBUG)
    secret_env.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_settings.bootstrap_servers)
    secret_env.setenv("CHURN_EVENTS_TOPIC", topic)
    produce_round(kafka_settings, topic, seed=901, customers=10, days=5, bad_fraction=0.05)
    seen: list[str] = []

    def resources() -> dict:
        # as `dagster dev` does: definitions (and their EnvVars) are built from the environment
        built = defs().resources
        return {"kafka": built["kafka"], "lake": built["lake"]}

    with dg.instance_for_test() as instance:
        # PLAINTEXT broker, passwords set anyway (a common misconfiguration): all works
        context = dg.build_sensor_context(instance=instance, resources=resources())
        request = customer_events_sensor(context)
        assert isinstance(request, dg.RunRequest)
        seen += [repr(request), context.cursor]
        ok = dg.materialize(
            [raw_customer_events],
            resources=resources(),
            instance=instance,
            # a few rejects on purpose: their raw bytes go to quarantine files, searched below
            run_config={"ops": {"raw_customer_events": {"config": {"max_rejected_rate": 1.0}}}},
        )
        assert ok.success
        for event in ok.all_events:
            seen.append(repr(event))  # materialization metadata and check metadata included
        assert main(["extract", "--topic", topic, "--json"]) == 0

        # SSL with a key file that is not there: librdkafka refuses the configuration
        secret_env.setenv("KAFKA_SECURITY_PROTOCOL", "SSL")
        secret_env.setenv("KAFKA_SSL_KEY_LOCATION", str(tmp_path / "missing-key.pem"))
        secret_env.setenv("KAFKA_SSL_CERTIFICATE_LOCATION", str(tmp_path / "missing-cert.pem"))
        failed = dg.materialize(
            [raw_customer_events], resources=resources(), instance=instance, raise_on_error=False
        )
        assert not failed.success
        seen += [repr(event) for event in failed.all_events]
        # the command prints one line naming the setting, not a KafkaException traceback
        printed_before = capfd.readouterr()
        assert main(["extract", "--topic", topic]) == 2
        refused = capfd.readouterr()
        assert "KAFKA_SSL_" in refused.err and "Traceback" not in refused.err

        # SASL against the plaintext broker: the handshake never completes; the sensor says so
        secret_env.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
        secret_env.setenv("KAFKA_SASL_MECHANISM", "PLAIN")
        secret_env.delenv("KAFKA_SSL_KEY_LOCATION")
        secret_env.delenv("KAFKA_SSL_CERTIFICATE_LOCATION")
        context = dg.build_sensor_context(instance=instance, resources=resources())
        skipped = customer_events_sensor(context)
        assert isinstance(skipped, dg.SkipReason) and "unreachable" in skipped.skip_message
        seen.append(skipped.skip_message)

        # OAUTHBEARER: the client secret goes to the token endpoint, which refuses it
        secret_env.setenv("KAFKA_SASL_MECHANISM", "OAUTHBEARER")
        secret_env.setenv("KAFKA_PROPERTY__DEBUG", "conf,security")  # librdkafka says much more
        with token_endpoint() as (url, received):
            secret_env.setenv("KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL", url)
            context = dg.build_sensor_context(instance=instance, resources=resources())
            skipped = customer_events_sensor(context)
            assert isinstance(skipped, dg.SkipReason)
            seen.append(skipped.skip_message)
            # a client that is polled hands librdkafka's log lines to the logger
            producer = Producer(KafkaSettings.from_env().client_config())
            for _ in range(20):
                producer.poll(0.1)
            del producer
        assert received and set(received) == {f"Basic {OIDC_BASIC}"}  # the secret was used

        # a pass-through property librdkafka does not know: a run fails on one line
        secret_env.setenv("KAFKA_PROPERTY__SSL_KEYSTORE_PASSWORDD", PASS_THROUGH_SECRET)
        refused_run = dg.materialize(
            [raw_customer_events], resources=resources(), instance=instance, raise_on_error=False
        )
        assert not refused_run.success
        seen += [repr(event) for event in refused_run.all_events]
        assert "check KAFKA_PROPERTY__SSL_KEYSTORE_PASSWORDD" in "\n".join(seen)

        # what Dagster stored and the UI reads: runs, their config and every event
        for run in instance.get_runs():
            seen.append(dg.serialize_value(run))
            seen += [dg.serialize_value(entry) for entry in instance.all_logs(run.run_id)]
        stored = {
            path: path.read_bytes()
            for root in (Path(instance.root_directory), tmp_path / "lake")
            for path in root.rglob("*")
            if path.is_file()
        }

    out, err = capfd.readouterr()
    out, err = printed_before.out + refused.out + out, printed_before.err + refused.err + err
    records = [
        f"{r.name} {r.levelname} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records
    ]
    corpus = "\n".join([*seen, *records, out, err])
    # the capture is real: it holds the run's metadata, the failure and librdkafka's words
    assert '"rejected_by_reason"' in out and "rejected_by_reason" in corpus
    assert "ssl.certificate.location" in corpus
    # librdkafka's debug lines: its configuration, and the token endpoint refusing the secret
    assert "sasl.oauthbearer.client.secret = [redacted]" in corpus
    assert "Failed to retrieve OIDC token" in corpus
    assert "churn_platform.librdkafka" in "\n".join(records)
    assert any(path.suffix == ".db" for path in stored)  # Dagster's SQLite storage
    assert not leaked(corpus)
    assert {str(path): leaked(data) for path, data in stored.items() if leaked(data)} == {}


# models -------------------------------------------------------------------------

BUILT: list[str] = []


class Boom:
    """A payload that records being built, the way a malicious one would act on load."""

    def __new__(cls, *args, **kwargs):
        BUILT.append("Boom.__new__")
        return super().__new__(cls)

    def __setstate__(self, state):
        BUILT.append("Boom.__setstate__")
        self.__dict__.update(state)


def _unpickled(tag: str) -> str:
    BUILT.append(tag)
    return tag


class Armed:
    """A pickle that runs code when loaded."""

    def __reduce__(self):
        return (_unpickled, ("unpickled",))


@pytest.fixture
def model_lake(tmp_path) -> Lake:
    return Lake(str(tmp_path / "lake"))


def _save(lake: Lake, version: str) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 2))
    estimator = LogisticRegression().fit(x, (x[:, 0] > 0).astype(int))
    registry.save_model(
        lake,
        version,
        estimator,
        features=["a", "b"],
        metrics={"auc": 0.9},
        gate={"passed": True, "reasons": []},
        training={"seed": 3},
        card="# test model\n",
    )


def _replace_model_file(lake: Lake, version: str, data: bytes) -> None:
    """What an attacker with write access to the lake does: new bytes AND a matching manifest."""
    base = f"{MODELS_DIR}/{version}"
    lake.write_bytes(f"{base}/model.skops", data)
    manifest = json.loads(lake.read_bytes(f"{base}/manifest.json"))
    manifest["files"]["model.skops"] = {
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }
    lake.write_bytes(f"{base}/manifest.json", json.dumps(manifest).encode())


def test_the_scorer_refuses_an_untrusted_champion_and_builds_nothing(model_lake):
    from churn_platform.serving.scorer import ChampionWatcher

    lake = model_lake
    _save(lake, "v1")
    registry.promote(lake, "v1", reason="first")
    watcher = ChampionWatcher(lake, interval_s=0.0)
    assert watcher.poll(force=True) and watcher.model.version == "v1"

    # v2 is saved properly, then its model file is swapped and champion.json pointed at it
    # directly (promote() would refuse it: it loads a version before promoting it)
    _save(lake, "v2")
    _replace_model_file(lake, "v2", skops.io.dumps({"model": "x", "payload": Boom()}))
    lake.write_bytes(registry.CHAMPION_FILE, json.dumps({"version": "v2"}).encode())
    BUILT.clear()

    with pytest.raises(UntrustedModel, match=f"{__name__}.Boom") as caught:
        watcher.poll(force=True)
    message = str(caught.value)
    assert "refusing to load" in message and lake.url(f"{MODELS_DIR}/v2/model.skops") in message
    assert BUILT == []
    assert watcher.model.version == "v1"  # the model in memory was not replaced
    # a scorer starting now refuses it too
    with pytest.raises(UntrustedModel, match="Boom"):
        ChampionWatcher(lake, interval_s=0.0).poll(force=True)
    with pytest.raises(UntrustedModel, match="Boom"):
        registry.load_champion(lake)
    assert BUILT == []


@pytest.mark.parametrize(
    ("payload", "named"),
    [
        (os.system, "posix.system" if os.name == "posix" else "nt.system"),
        (eval, "builtins.eval"),
        (subprocess.Popen, "subprocess.Popen"),
    ],
)
def test_a_model_file_naming_a_dangerous_callable_is_refused(model_lake, payload, named):
    _save(model_lake, "v1")
    _replace_model_file(model_lake, "v1", skops.io.dumps({"model": payload}))
    with pytest.raises(UntrustedModel, match=re.escape(named)):
        registry.load_model(model_lake, "v1")


def test_a_pickle_is_never_unpickled(model_lake):
    _save(model_lake, "v1")
    _replace_model_file(model_lake, "v1", pickle.dumps(Armed()))
    BUILT.clear()
    with pytest.raises(ModelCorrupt, match="not a readable skops file"):
        registry.load_model(model_lake, "v1")
    assert BUILT == []
    pickle.loads(pickle.dumps(Armed()))  # the payload is live: plain pickle would run it
    assert BUILT == ["unpickled"]


def test_the_package_deserializes_models_only_through_skops_with_the_trusted_list():
    """No pickle-family loader anywhere in the package; every skops load names TRUSTED_TYPES."""
    unsafe_modules = {"pickle", "cPickle", "cloudpickle", "dill", "joblib", "shelve", "marshal"}
    skops_loads = []
    for path in sorted((PROJECT / "churn_platform").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = {alias.name.split(".")[0] for alias in node.names}
                assert not names & unsafe_modules, f"{path}: imports {names & unsafe_modules}"
            elif isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] not in unsafe_modules, path
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("load", "loads")
                and ast.unparse(node.func.value) in ("skops.io", "sio", "skops")
            ):
                trusted = {k.arg: ast.unparse(k.value) for k in node.keywords}.get("trusted")
                skops_loads.append((path.name, trusted))
    assert skops_loads == [("registry.py", "list(TRUSTED_TYPES)")]


# bind addresses -----------------------------------------------------------------


def test_commands_bind_to_loopback_by_default():
    from churn_platform.cli import build_parser
    from churn_platform.kafka.broker import DEFAULT_HOST, EmbeddedBroker

    parser = build_parser()
    assert parser.parse_args(["up"]).host == "127.0.0.1"
    assert parser.parse_args(["broker"]).host == "127.0.0.1"
    assert DEFAULT_HOST == EmbeddedBroker().host == "127.0.0.1"
    # exposing is explicit
    assert parser.parse_args(["up", "--host", "0.0.0.0"]).host == "0.0.0.0"
    # the streaming scorer binds only its metrics endpoint, when asked, and on loopback
    serve = parser.parse_args(["serve"])
    assert serve.metrics_port is None and serve.metrics_host == "127.0.0.1"
    assert not {"host", "bind", "listen"} & set(vars(serve))


def test_the_embedded_broker_listens_on_loopback_only(broker):
    process = psutil.Process(broker.pid)
    listening = [
        conn.laddr
        for proc in [process, *process.children(recursive=True)]
        for conn in proc.net_connections(kind="inet")
        if conn.status == psutil.CONN_LISTEN
    ]
    assert listening and all(addr.ip == "127.0.0.1" for addr in listening), listening
    assert (listening[0].ip, listening[0].port) == (broker.host, broker.port)


@pytest.mark.parametrize(("extra", "host"), [([], "127.0.0.1"), (["--host", "0.0.0.0"], "0.0.0.0")])
def test_up_starts_dg_dev_on_loopback_unless_told(monkeypatch, tmp_path, extra, host):
    """Run `up` with its children recorded instead of started: what would `dg dev` bind?"""
    from churn_platform.cli import build_parser, up

    started: dict[str, list[str]] = {}

    def record(self, name, argv, env, log):
        started[name] = argv
        raise KeyboardInterrupt  # `up` stops cleanly on Ctrl-C; nothing else is started

    monkeypatch.chdir(PROJECT)
    for name in ("DAGSTER_HOME", "KAFKA_BOOTSTRAP_SERVERS", "CHURN_LAKE"):
        monkeypatch.setenv(name, os.environ.get(name, ""))  # `up` sets them; restore after
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")  # never contacted
    monkeypatch.setattr(up, "prepare_dagster_home", lambda: tmp_path / "dagster")
    monkeypatch.setattr(up, "ensure_topic", lambda *a, **k: False)
    monkeypatch.setattr(up, "require_topic", lambda *a, **k: None)  # the user's topic exists
    monkeypatch.setattr(
        up.subprocess, "run", lambda argv, **k: subprocess.CompletedProcess(argv, 0, "0 events\n")
    )
    monkeypatch.setattr(up.ProcessGroup, "start", record)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        args = build_parser().parse_args(
            ["up", "--skip-bootstrap", "--state-dir", str(tmp_path / "up"), *extra]
        )
        assert args.handler(args) == 0
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    argv = started["dagster"]
    # `dg dev`, not `dagster dev` (superseded in Dagster 1.13, which warns at run time)
    assert argv == up.dg_dev_command(host, 3000, PROJECT)
    assert argv[argv.index("dev") - 2 :][:3] == ["-m", "dagster_dg_cli.cli", "dev"]
    assert argv[argv.index("-h") + 1] == host
    assert "0.0.0.0" not in argv or host == "0.0.0.0"


# pinning ------------------------------------------------------------------------


def _pins() -> dict[str, str]:
    pins = {}
    for number, line in enumerate((PROJECT / "constraints.txt").read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;=<>!~]+)", line)
        assert match, f"constraints.txt:{number}: {line!r} is not pinned as name==version"
        name = canonicalize_name(match[1])
        assert name not in pins, f"constraints.txt pins {name} twice"
        pins[name] = match[2]
    return pins


def test_make_installs_with_the_constraints_file():
    makefile = (PROJECT / "Makefile").read_text()
    stamp_rule = re.search(r"^\$\(STAMP\):(.*)$((?:\n\t.*)+)", makefile, re.M)
    assert stamp_rule, "the install rule ($(STAMP)) is missing"
    prerequisites, recipe = stamp_rule[1].split(), stamp_rule[2]
    assert "constraints.txt" in prerequisites  # a changed pin reinstalls
    installs = [
        line for line in recipe.splitlines() if "pip install" in line and "upgrade pip" not in line
    ]
    assert installs and all(
        re.search(r"(--constraint|-c)\s+constraints\.txt", line) for line in installs
    ), installs
    for target in ("install", "demo", "test", "up"):
        assert re.search(rf"^{target}:.*\$\(STAMP\)", makefile, re.M), target


def test_every_dependency_is_pinned_and_installed_at_its_pin():
    pins = _pins()
    project = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + [
        r for extra in project.get("optional-dependencies", {}).values() for r in extra
    ]
    for text in declared:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not pinned in constraints.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), (text, pins[name])

    # and what `make` installs is what is installed: every pin, and everything that
    # churn-platform[dev] pulls in, transitively, at its pinned version
    wanted, queue = set(), [("churn-platform", frozenset({"dev"}))]
    while queue:
        name, extras = queue.pop()
        for text in importlib.metadata.requires(name) or []:
            requirement = Requirement(text)
            markers = [{"extra": extra} for extra in extras | {""}]
            if requirement.marker and not any(requirement.marker.evaluate(m) for m in markers):
                continue
            dependency = canonicalize_name(requirement.name)
            if (dependency, frozenset(requirement.extras)) not in wanted:
                wanted.add((dependency, frozenset(requirement.extras)))
                queue.append((dependency, frozenset(requirement.extras)))
    needed = {name for name, _ in wanted}
    assert needed - set(pins) == set(), "installed by `make` but not pinned"
    installed = {
        canonicalize_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()
    }
    wrong = {n: (pin, installed.get(n)) for n, pin in pins.items() if installed.get(n) != pin}
    assert wrong == {}, "installed versions differ from constraints.txt (pin, installed)"
