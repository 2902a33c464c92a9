"""The Kafka settings table: one set of names for the CLI and the Dagster resource, every SASL
mechanism's settings checked by librdkafka, the KAFKA_PROPERTY__ pass-through, secrets hidden."""

from __future__ import annotations

import logging

import dagster as dg
import pytest
from confluent_kafka import KafkaError, KafkaException, Producer

from churn_platform.cli import UserError
from churn_platform.cli.common import kafka_client_failure
from churn_platform.defs.resources.kafka import KafkaResource
from churn_platform.kafka.broker import free_port
from churn_platform.kafka.config import (
    SETTINGS,
    KafkaConfigError,
    KafkaSettings,
    env_to_property,
    is_secret,
    librdkafka_logger,
    pass_through_env,
)

SECRET = "never-shown-7f3a"


def closed_address() -> str:
    return f"127.0.0.1:{free_port()}"


def gssapi_built() -> bool:
    """Asked of librdkafka directly, not through the code under test."""
    try:
        Producer(
            {
                "security.protocol": "SASL_PLAINTEXT",
                "sasl.mechanism": "GSSAPI",
                "sasl.kerberos.min.time.before.relogin": "0",
                "logger": logging.getLogger("test.gssapi.probe"),
            }
        )
    except KafkaException as exc:
        assert "No provider for SASL mechanism GSSAPI" in exc.args[0].str()
        return False
    return True


# Every setting of the table at once: SASL_PLAINTEXT, so that librdkafka checks the names
# and values but loads no TLS file, and one pass-through property with a secret in its name.
EVERY_SETTING = {
    "KAFKA_BOOTSTRAP_SERVERS": "b1.example:9092,b2.example:9092",
    "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
    "KAFKA_SASL_MECHANISM": "OAUTHBEARER",
    "KAFKA_SASL_USERNAME": "churn",
    "KAFKA_SASL_PASSWORD": "pw-" + SECRET,
    "KAFKA_SASL_OAUTHBEARER_METHOD": "oidc",
    "KAFKA_SASL_OAUTHBEARER_CLIENT_ID": "churn-platform",
    "KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET": "cs-" + SECRET,
    "KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL": "https://idp.example/oauth2/token",
    "KAFKA_SASL_OAUTHBEARER_SCOPE": "kafka",
    "KAFKA_SASL_OAUTHBEARER_EXTENSIONS": "logicalCluster=lkc-1,identityPoolId=pool-1",
    "KAFKA_SASL_KERBEROS_SERVICE_NAME": "kafka",
    "KAFKA_SASL_KERBEROS_PRINCIPAL": "churn@EXAMPLE.COM",
    "KAFKA_SASL_KERBEROS_KEYTAB": "/etc/security/churn.keytab",
    "KAFKA_SASL_KERBEROS_KINIT_CMD": "kinit -kt /etc/security/churn.keytab churn@EXAMPLE.COM",
    "KAFKA_SSL_CA_LOCATION": "/etc/ssl/ca.pem",
    "KAFKA_SSL_CERTIFICATE_LOCATION": "/etc/ssl/client.pem",
    "KAFKA_SSL_KEY_LOCATION": "/etc/ssl/client.key",
    "KAFKA_SSL_KEY_PASSWORD": "kp-" + SECRET,
    "KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM": "none",
    "KAFKA_PROPERTY__SOCKET_KEEPALIVE_ENABLE": "true",
    "KAFKA_PROPERTY__SSL_KEYSTORE_PASSWORD": "ks-" + SECRET,
    # not client settings: ignored by both
    "KAFKA_HOME": "/opt/kafka",
    "KAFKA_OPTS": "-Xmx1g",
    "CHURN_EVENTS_TOPIC": "events",
}


# the table --------------------------------------------------------------------------


def test_the_table_names_each_property_the_way_the_pass_through_would():
    """A variable is its property upper-cased, dots as underscores: users can guess it."""
    assert len({s.env for s in SETTINGS}) == len({s.property for s in SETTINGS}) == len(SETTINGS)
    for setting in SETTINGS:
        assert setting.env == "KAFKA_" + setting.property.upper().replace(".", "_")
        assert setting.field == setting.env.removeprefix("KAFKA_").lower()
        assert setting.description
    assert {s.property for s in SETTINGS if s.secret} == {
        "sasl.password",
        "sasl.oauthbearer.client.secret",
        "ssl.key.password",
    }
    assert {s.env for s in SETTINGS} >= {
        "KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM",
        "KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET",
        "KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL",
        "KAFKA_SASL_KERBEROS_KEYTAB",
    }


def test_every_table_variable_appears_in_the_readme():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert [s.env for s in SETTINGS if f"`{s.env}`" not in readme] == []
    assert "KAFKA_PROPERTY__" in readme


def test_the_resource_fields_are_the_table():
    fields = set(KafkaResource.model_fields)
    assert fields - {"bootstrap_servers", "events_topic", "properties"} == {
        s.field for s in SETTINGS
    }
    schema = KafkaResource(bootstrap_servers="b:9092").get_resource_definition().config_schema
    described = schema.as_field().config_type.fields
    assert (
        "KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET"
        in described["sasl_oauthbearer_client_secret"].description
    )


@pytest.mark.parametrize(
    ("prop", "env"),
    [
        ("socket.keepalive.enable", "KAFKA_PROPERTY__SOCKET_KEEPALIVE_ENABLE"),
        ("ssl.certificate.verify_cb", "KAFKA_PROPERTY__SSL_CERTIFICATE_VERIFY__CB"),
        ("a-b.c", "KAFKA_PROPERTY__A___B_C"),
    ],
)
def test_pass_through_names_map_both_ways(prop, env):
    assert pass_through_env(prop) == env
    assert env_to_property(env) == prop


@pytest.mark.parametrize(
    ("prop", "secret"),
    [
        ("ssl.keystore.password", True),
        ("sasl.oauthbearer.assertion.private.key.passphrase", True),
        ("sasl.oauthbearer.assertion.private.key.pem", True),
        ("sasl.oauthbearer.client.credentials.client.secret", True),
        ("sasl.oauthbearer.config", True),
        ("ssl.key.pem", True),
        ("sasl.jaas.config", True),
        ("socket.keepalive.enable", False),
        ("client.id", False),
        ("sasl.oauthbearer.token.endpoint.url", False),  # the table's row says so
        ("ssl.key.location", False),
    ],
)
def test_secret_by_row_or_by_name(prop, secret):
    assert is_secret(prop) is secret


# the CLI and the resource accept the same names and give the same client ----------------


def resolved_config(resource: KafkaResource, monkeypatch, env: dict[str, str]) -> dict:
    """The client config a run builds: Dagster resolves the resource's EnvVars from `env`."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    seen = {}

    @dg.asset
    def builds_a_client(kafka: KafkaResource) -> None:
        seen["config"] = kafka.settings().client_config(**{"group.id": "g"})
        seen["repr"] = repr(kafka)

    with dg.instance_for_test() as instance:
        assert dg.materialize([builds_a_client], resources={"kafka": resource}, instance=instance)
    return seen


def test_cli_and_resource_read_the_same_names_and_build_the_same_client(monkeypatch):
    for name in [n for n in __import__("os").environ if n.startswith("KAFKA_")]:
        monkeypatch.delenv(name)
    cli = KafkaSettings.from_env(EVERY_SETTING)
    resource = KafkaResource.from_env(EVERY_SETTING)

    # the names each one took from the environment
    cli_names = {"KAFKA_BOOTSTRAP_SERVERS"} | {
        s.env for s in SETTINGS if s.property in cli.security
    }
    cli_names |= {pass_through_env(p) for p in cli.properties}
    env_vars = {name: v for name, v in resource if isinstance(v, dg.EnvVar)}
    resource_names = {v.env_var_name for v in env_vars.values()} | {
        v.env_var_name for v in resource.properties.values()
    }
    assert resource_names - {"CHURN_EVENTS_TOPIC"} == cli_names
    assert cli_names == {n for n in EVERY_SETTING if n not in ("KAFKA_HOME", "KAFKA_OPTS")} - {
        "CHURN_EVENTS_TOPIC"
    }

    # and the same client configuration from them, which librdkafka accepts
    seen = resolved_config(resource, monkeypatch, EVERY_SETTING)
    assert seen["config"] == cli.client_config(**{"group.id": "g"})
    assert seen["config"]["ssl.endpoint.identification.algorithm"] == "none"
    assert seen["config"]["socket.keepalive.enable"] == "true"
    assert SECRET not in seen["repr"] and SECRET not in repr(cli) and SECRET not in repr(resource)
    # from code: the same again
    again = KafkaResource.from_settings(cli, "events")
    assert again.settings() == cli and SECRET not in repr(again) + str(again)


def test_the_endpoint_identification_setting_reaches_a_dagster_run(monkeypatch):
    """The bug reported: the CLI honoured it, the resource dropped it."""
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": "b:9092",
        "KAFKA_SECURITY_PROTOCOL": "SSL",
        "KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM": "none",
    }
    resource = KafkaResource.from_env(env)
    assert resource.ssl_endpoint_identification_algorithm.env_var_name == (
        "KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM"
    )
    config = resolved_config(resource, monkeypatch, env)["config"]
    assert config["ssl.endpoint.identification.algorithm"] == "none"


# validation ---------------------------------------------------------------------------


def settings_of(**env: str) -> KafkaSettings:
    return KafkaSettings.from_env({"KAFKA_BOOTSTRAP_SERVERS": closed_address(), **env})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "OAUTHBEARER"},
            "KAFKA_SASL_MECHANISM=OAUTHBEARER needs KAFKA_SASL_OAUTHBEARER_METHOD=oidc",
        ),
        (
            {"KAFKA_SASL_OAUTHBEARER_METHOD": "oidc"},
            "KAFKA_SASL_OAUTHBEARER_METHOD=oidc needs KAFKA_SASL_OAUTHBEARER_CLIENT_ID and "
            "KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET and KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL",
        ),
        (
            {
                "KAFKA_SASL_OAUTHBEARER_METHOD": "OIDC",
                "KAFKA_SASL_OAUTHBEARER_CLIENT_ID": "c",
                "KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL": "https://idp/token",
            },
            "needs KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET to be set",
        ),
        ({"KAFKA_SASL_OAUTHBEARER_METHOD": "jwt"}, "KAFKA_SASL_OAUTHBEARER_METHOD='jwt'"),
        ({"KAFKA_PROPERTY__SASL_PASSWORD": "x"}, "use KAFKA_SASL_PASSWORD"),
        ({"KAFKA_PROPERTY__BOOTSTRAP_SERVERS": "x:1"}, "use KAFKA_BOOTSTRAP_SERVERS"),
        ({"KAFKA_PROPERTY__LOGGER": "x"}, "the platform sets"),
        ({"KAFKA_PROPERTY__": "x"}, "needs a property name"),
        (
            {"KAFKA_PROPERTY__CLIENT_ID": "a", "KAFKA_PROPERTY__client_id": "b"},
            "both set the librdkafka property 'client.id'",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-256"},
            "needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD",
        ),
    ],
)
def test_incomplete_or_wrong_settings_are_one_line_naming_them(env, message):
    with pytest.raises(KafkaConfigError, match="^[^\n]*$") as caught:
        settings_of(**env)
    assert message in str(caught.value)


def test_the_resource_refuses_what_the_cli_refuses():
    resource = KafkaResource(
        bootstrap_servers="b:9092", properties={"sasl.password": "x"}, sasl_mechanism="PLAIN"
    )
    with pytest.raises(KafkaConfigError, match="use KAFKA_SASL_PASSWORD"):
        resource.settings()
    with pytest.raises(KafkaConfigError, match="use KAFKA_SASL_PASSWORD"):
        KafkaResource.from_env({"KAFKA_PROPERTY__SASL_PASSWORD": "x"}).settings()


def test_a_property_librdkafka_does_not_know_is_one_line_naming_the_variable():
    settings = settings_of(KAFKA_PROPERTY__SOCKET_KEEPALIVE_ENABLEE="true")
    with pytest.raises(KafkaConfigError) as caught:
        settings.client_config()
    assert str(caught.value) == (
        f"Kafka settings for {settings.bootstrap_servers} refused by librdkafka: "
        "No such configuration property: "
        '"socket.keepalive.enablee"; check KAFKA_PROPERTY__SOCKET_KEEPALIVE_ENABLEE '
        "(socket.keepalive.enablee)"
    )
    with pytest.raises(
        KafkaConfigError, match=r'Expected bool value for "socket.keepalive.enable"'
    ):
        settings_of(KAFKA_PROPERTY__SOCKET_KEEPALIVE_ENABLE="maybe").client_config()


def test_the_cli_prints_the_refusal_as_one_line(monkeypatch, capsys, tmp_path):
    from churn_platform.cli import main

    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", closed_address())
    monkeypatch.setenv("KAFKA_PROPERTY__SOCKET_KEEPALIVE_ENABLEE", "true")
    monkeypatch.setenv("CHURN_LAKE", str(tmp_path / "lake"))
    assert main(["extract", "--topic", "t"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "KAFKA_PROPERTY__SOCKET_KEEPALIVE_ENABLEE (socket.keepalive.enablee)" in err


def test_a_dagster_run_fails_with_the_same_line(monkeypatch):
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": closed_address(),
        "KAFKA_PROPERTY__SOCKET_KEEPALIVE_ENABLEE": "1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    @dg.asset
    def builds_a_client(kafka: KafkaResource) -> None:
        kafka.settings().client_config()

    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [builds_a_client],
            resources={"kafka": KafkaResource.from_env()},
            instance=instance,
            raise_on_error=False,
        )
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error.cause
    assert failure.cls_name == "KafkaConfigError"
    assert "check KAFKA_PROPERTY__SOCKET_KEEPALIVE_ENABLEE" in failure.message


def test_a_refusal_quoting_a_secret_is_masked():
    settings = settings_of(
        KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        KAFKA_SASL_USERNAME="u",
        KAFKA_SASL_PASSWORD="pw-" + SECRET,
        KAFKA_PROPERTY__SSL_KEYSTORE_PASSWORD="ks-" + SECRET,
    )
    error = KafkaException(
        KafkaError(KafkaError._INVALID_ARG, f'bad "ks-{SECRET}" for "ssl.keystore.password"')
    )
    line = settings.explain(error)
    assert SECRET not in line and "KAFKA_PROPERTY__SSL_KEYSTORE_PASSWORD" in line
    failure = kafka_client_failure(error, settings)
    assert isinstance(failure, UserError) and SECRET not in str(failure)


def test_a_pass_through_the_platform_overrides_is_named_in_a_warning(caplog):
    settings = settings_of(KAFKA_PROPERTY__ENABLE_AUTO_COMMIT="true")
    with caplog.at_level(logging.WARNING, "churn_platform.kafka.config"):
        config = settings.client_config(**{"enable.auto.commit": False})
    assert config["enable.auto.commit"] is False
    assert "KAFKA_PROPERTY__ENABLE_AUTO_COMMIT (enable.auto.commit) is overridden" in caplog.text


def test_librdkafka_log_lines_are_masked(caplog):
    settings = settings_of(KAFKA_PROPERTY__SSL_KEYSTORE_PASSWORD="ks-" + SECRET)
    settings.client_config()
    with caplog.at_level(logging.DEBUG, "churn_platform.librdkafka"):
        librdkafka_logger().warning("CONF %s", f"ssl.keystore.password = ks-{SECRET}")
    assert "ssl.keystore.password = ***" in caplog.text and SECRET not in caplog.text


# each SASL mechanism against librdkafka: its settings accepted, a client created -------


def create_client(settings: KafkaSettings) -> None:
    """A real producer (no broker answers on the address): librdkafka accepts the settings."""
    producer = Producer(settings.client_config())
    producer.poll(0)
    del producer


@pytest.mark.parametrize(
    "env",
    [
        {"KAFKA_SASL_MECHANISM": "PLAIN", "KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": "p"},
        {
            "KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
            "KAFKA_SASL_USERNAME": "u",
            "KAFKA_SASL_PASSWORD": "p",
        },
        {
            "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "KAFKA_SASL_USERNAME": "u",
            "KAFKA_SASL_PASSWORD": "p",
        },
        {
            "KAFKA_SASL_MECHANISM": "OAUTHBEARER",
            "KAFKA_SASL_OAUTHBEARER_METHOD": "oidc",
            "KAFKA_SASL_OAUTHBEARER_CLIENT_ID": "churn",
            "KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET": SECRET,
            "KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL": "http://{closed}/token",
            "KAFKA_SASL_OAUTHBEARER_SCOPE": "kafka",
            "KAFKA_SASL_OAUTHBEARER_EXTENSIONS": "logicalCluster=lkc-1",
        },
        {
            # the newer names of the client credentials satisfy the check as well
            "KAFKA_SASL_MECHANISM": "OAUTHBEARER",
            "KAFKA_SASL_OAUTHBEARER_METHOD": "oidc",
            "KAFKA_PROPERTY__SASL_OAUTHBEARER_CLIENT_CREDENTIALS_CLIENT_ID": "churn",
            "KAFKA_PROPERTY__SASL_OAUTHBEARER_CLIENT_CREDENTIALS_CLIENT_SECRET": SECRET,
            "KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL": "http://{closed}/token",
        },
        {
            "KAFKA_SASL_MECHANISM": "OAUTHBEARER",
            "KAFKA_PROPERTY__ENABLE_SASL_OAUTHBEARER_UNSECURE_JWT": "true",
            "KAFKA_PROPERTY__SASL_OAUTHBEARER_CONFIG": "principal=churn",
        },
    ],
    ids=["plain", "scram-256", "scram-512", "oidc", "oidc-new-names", "unsecured-jwt"],
)
def test_each_mechanism_settings_create_a_client(env):
    env = {k: v.replace("{closed}", closed_address()) for k, v in env.items()}
    settings = settings_of(KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT", **env)
    create_client(settings)
    assert SECRET not in repr(settings)


def test_kerberos_settings_are_known_to_librdkafka():
    """Their names and values pass librdkafka's check under any mechanism."""
    settings_of(
        KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
        KAFKA_SASL_MECHANISM="PLAIN",
        KAFKA_SASL_USERNAME="u",
        KAFKA_SASL_PASSWORD="p",
        KAFKA_SASL_KERBEROS_SERVICE_NAME="kafka",
        KAFKA_SASL_KERBEROS_PRINCIPAL="churn@EXAMPLE.COM",
        KAFKA_SASL_KERBEROS_KEYTAB="/etc/security/churn.keytab",
        KAFKA_SASL_KERBEROS_KINIT_CMD="kinit -kt /etc/security/churn.keytab churn@EXAMPLE.COM",
    ).check()


def test_gssapi_works_where_librdkafka_has_it_and_is_one_clear_line_where_not(tmp_path):
    import confluent_kafka

    kinit_ran = tmp_path / "kinit-ran"
    settings = settings_of(
        KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
        KAFKA_SASL_MECHANISM="GSSAPI",
        KAFKA_SASL_KERBEROS_SERVICE_NAME="kafka",
        KAFKA_SASL_KERBEROS_KINIT_CMD=f"touch {kinit_ran}",
    )
    if gssapi_built():
        settings.check()
        assert not kinit_ran.exists()  # the check runs no user command
        return
    with pytest.raises(KafkaConfigError) as caught:
        settings.check()
    line = str(caught.value)
    assert "\n" not in line
    assert line.startswith(
        f"Kafka settings for {settings.bootstrap_servers}: "
        "KAFKA_SASL_MECHANISM=GSSAPI is not supported by this librdkafka"
    )
    assert confluent_kafka.libversion()[0] in line and "libsasl2" in line
