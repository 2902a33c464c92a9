"""Kafka connection settings: where the cluster is and how to authenticate.

One table, `SETTINGS`, says which environment variable sets which librdkafka
property, whether its value is a secret, and what it means. The command line
(`KafkaSettings.from_env`) and the Dagster resource (`KafkaResource`, whose
fields are derived from the table) read it alike.

Any other librdkafka property passes through as `KAFKA_PROPERTY__<NAME>`:
<NAME> is the property upper-cased with `.` written `_` (and, as in
Confluent's Kafka images, `_` written `__` and `-` written `___`), so
`KAFKA_PROPERTY__SOCKET_KEEPALIVE_ENABLE=true` sets `socket.keepalive.enable`.
A distinct prefix, not bare `KAFKA_*`, because Kafka installations set
`KAFKA_HOME`, `KAFKA_OPTS` and friends that are not client properties.

A value is secret when its row says so or, for a pass-through property, when
its name holds one of `SECRET_WORDS`; a secret is shown as '***' in `repr`,
`describe()`, error lines and the librdkafka log. librdkafka checks names and
values when a client is created: the first client built from given settings
has them checked first (`KafkaSettings.check`), so a refusal is one
`KafkaConfigError` naming the variable wherever it happens.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class KafkaSetting:
    """One row of the settings table: variable, librdkafka property, secret or not, meaning."""

    env: str
    property: str
    secret: bool
    description: str

    @property
    def field(self) -> str:
        """The Dagster resource's field: the variable without `KAFKA_`, lower case."""
        return self.env.removeprefix("KAFKA_").lower()


SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI")
OAUTHBEARER_METHODS = ("default", "oidc")

SETTINGS: tuple[KafkaSetting, ...] = (
    KafkaSetting(
        "KAFKA_SECURITY_PROTOCOL",
        "security.protocol",
        False,
        f"{', '.join(SECURITY_PROTOCOLS)} (unset: PLAINTEXT)",
    ),
    KafkaSetting("KAFKA_SASL_MECHANISM", "sasl.mechanism", False, ", ".join(SASL_MECHANISMS)),
    KafkaSetting("KAFKA_SASL_USERNAME", "sasl.username", False, "PLAIN / SCRAM user"),
    KafkaSetting("KAFKA_SASL_PASSWORD", "sasl.password", True, "PLAIN / SCRAM password"),
    KafkaSetting(
        "KAFKA_SASL_OAUTHBEARER_METHOD",
        "sasl.oauthbearer.method",
        False,
        "OAUTHBEARER: oidc (client credentials from a token endpoint) or default",
    ),
    KafkaSetting(
        "KAFKA_SASL_OAUTHBEARER_CLIENT_ID", "sasl.oauthbearer.client.id", False, "OIDC client id"
    ),
    KafkaSetting(
        "KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET",
        "sasl.oauthbearer.client.secret",
        True,
        "OIDC client secret",
    ),
    KafkaSetting(
        "KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL",
        "sasl.oauthbearer.token.endpoint.url",
        False,
        "OIDC token endpoint (https://…/token)",
    ),
    KafkaSetting(
        "KAFKA_SASL_OAUTHBEARER_SCOPE",
        "sasl.oauthbearer.scope",
        False,
        "OIDC scope(s) to request, space-separated",
    ),
    KafkaSetting(
        "KAFKA_SASL_OAUTHBEARER_EXTENSIONS",
        "sasl.oauthbearer.extensions",
        False,
        "SASL extensions sent with the token, key=value,key=value (e.g. logicalCluster=…)",
    ),
    KafkaSetting(
        "KAFKA_SASL_KERBEROS_SERVICE_NAME",
        "sasl.kerberos.service.name",
        False,
        "GSSAPI: the brokers' Kerberos service name (librdkafka's default: kafka)",
    ),
    KafkaSetting(
        "KAFKA_SASL_KERBEROS_PRINCIPAL",
        "sasl.kerberos.principal",
        False,
        "GSSAPI: this client's principal",
    ),
    KafkaSetting(
        "KAFKA_SASL_KERBEROS_KEYTAB", "sasl.kerberos.keytab", False, "GSSAPI: keytab file"
    ),
    KafkaSetting(
        "KAFKA_SASL_KERBEROS_KINIT_CMD",
        "sasl.kerberos.kinit.cmd",
        False,
        "GSSAPI: the command librdkafka runs to get and refresh the ticket",
    ),
    KafkaSetting("KAFKA_SSL_CA_LOCATION", "ssl.ca.location", False, "CA certificate(s) file"),
    KafkaSetting(
        "KAFKA_SSL_CERTIFICATE_LOCATION",
        "ssl.certificate.location",
        False,
        "client certificate file (mutual TLS)",
    ),
    KafkaSetting("KAFKA_SSL_KEY_LOCATION", "ssl.key.location", False, "client private key file"),
    KafkaSetting(
        "KAFKA_SSL_KEY_PASSWORD", "ssl.key.password", True, "password of the client private key"
    ),
    KafkaSetting(
        "KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM",
        "ssl.endpoint.identification.algorithm",
        False,
        "https (librdkafka's default: the broker's certificate must name its host) or none",
    ),
)
BY_PROPERTY: Mapping[str, KafkaSetting] = {s.property: s for s in SETTINGS}

PASS_THROUGH_PREFIX = "KAFKA_PROPERTY__"
# A pass-through property whose name holds one of these is a secret (librdkafka
# itself redacts sasl.oauthbearer.config, *.password, *.pem keys, …).
SECRET_WORDS = (
    "password",
    "passphrase",
    "secret",
    "key",
    "token",
    "credential",
    "jaas",
    "oauthbearer.config",
)
# Properties with their own setting, which a pass-through must not set behind its back.
_RESERVED = {
    "bootstrap.servers": "KAFKA_BOOTSTRAP_SERVERS",
    "metadata.broker.list": "KAFKA_BOOTSTRAP_SERVERS",
    "sasl.mechanisms": "KAFKA_SASL_MECHANISM",
    **{s.property: s.env for s in SETTINGS},
}
# Newer librdkafka names of the OIDC client credentials (either satisfies the check)
_OIDC_ALIASES = {
    "sasl.oauthbearer.client.id": "sasl.oauthbearer.client.credentials.client.id",
    "sasl.oauthbearer.client.secret": "sasl.oauthbearer.client.credentials.client.secret",
}


class KafkaConfigError(ValueError):
    """A Kafka setting is wrong; the message names the setting and the fix."""


def env_to_property(name: str) -> str:
    """`KAFKA_PROPERTY__SOCKET_KEEPALIVE_ENABLE` → `socket.keepalive.enable`."""
    rest = name.removeprefix(PASS_THROUGH_PREFIX)
    swap = {"___": "-", "__": "_", "_": "."}
    return re.sub("___|__|_", lambda m: swap[m.group()], rest).lower()


def pass_through_env(prop: str) -> str:
    """`socket.keepalive.enable` → `KAFKA_PROPERTY__SOCKET_KEEPALIVE_ENABLE`."""
    swap = {"-": "___", "_": "__", ".": "_"}
    return PASS_THROUGH_PREFIX + re.sub("[-_.]", lambda m: swap[m.group()], prop).upper()


def property_to_env(prop: str) -> str:
    """The variable that sets `prop`: its row's, else its `KAFKA_PROPERTY__` name."""
    return BY_PROPERTY[prop].env if prop in BY_PROPERTY else pass_through_env(prop)


def is_secret(prop: str) -> bool:
    """True when `prop`'s value must never be shown."""
    if prop in BY_PROPERTY:
        return BY_PROPERTY[prop].secret
    return any(word in prop.lower() for word in SECRET_WORDS)


def pass_through(env: Mapping[str, str]) -> dict[str, str]:
    """librdkafka property → the `KAFKA_PROPERTY__*` variable that sets it (empty ones skipped)."""
    found = {}
    for name in sorted(env):
        if name.startswith(PASS_THROUGH_PREFIX) and env[name]:
            prop = env_to_property(name)
            if prop in found:
                raise KafkaConfigError(
                    f"{name} and {found[prop]} both set the librdkafka property {prop!r}: keep one"
                )
            found[prop] = name
    return found


class _MaskSecrets(logging.Filter):
    """Replaces every secret value in a librdkafka log record by '***'."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask(message, self.secrets)
        if masked != message:
            record.msg, record.args = masked, None
        return True


_LOG_MASK = _MaskSecrets()


def librdkafka_logger() -> logging.Logger:
    logger = logging.getLogger("churn_platform.librdkafka")
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
    if _LOG_MASK not in logger.filters:
        logger.addFilter(_LOG_MASK)
    return logger


def mask(text: str, secrets: set[str] | frozenset[str]) -> str:
    """`text` with each of `secrets` replaced by '***' (longest first)."""
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, "***")
    return text


# settings librdkafka accepted, so that each distinct setup is checked once per process
_CHECKED: set[tuple[tuple[str, str], ...]] = set()
_warned_overrides: set[str] = set()


@dataclass(frozen=True)
class KafkaSettings:
    """How to reach a Kafka cluster.

    `security` holds the properties of the `SETTINGS` table (all about
    authentication and encryption); `properties` any other librdkafka property
    (the `KAFKA_PROPERTY__*` pass-through).
    """

    bootstrap_servers: str
    security: Mapping[str, str] = field(default_factory=dict, repr=False)
    properties: Mapping[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.bootstrap_servers or not self.bootstrap_servers.strip():
            raise KafkaConfigError(
                "KAFKA_BOOTSTRAP_SERVERS is empty: set it to host:port[,host:port] "
                "or leave it unset to use the embedded broker"
            )
        for server in self.bootstrap_servers.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise KafkaConfigError(
                    f"KAFKA_BOOTSTRAP_SERVERS entry {server.strip()!r} is not host:port "
                    "(example: broker1:9092,broker2:9092)"
                )
        for prop in self.security:
            if prop not in BY_PROPERTY:
                raise KafkaConfigError(
                    f"{prop!r} is not a Kafka security setting (those are "
                    f"{', '.join(BY_PROPERTY)}); pass other librdkafka properties in `properties` "
                    f"({property_to_env(prop)})"
                )
        for prop in self.properties:
            if not prop or not prop.strip("._-"):
                raise KafkaConfigError(
                    f"{PASS_THROUGH_PREFIX} needs a property name after it "
                    f"(example: {pass_through_env('socket.keepalive.enable')}=true)"
                )
            if prop in _RESERVED or prop == "logger":
                own = _RESERVED.get(prop)
                raise KafkaConfigError(
                    f"{pass_through_env(prop)} sets {prop!r}, which "
                    + (f"has its own setting: use {own}" if own else "the platform sets")
                )
        self._check_values()

    def _check_values(self) -> None:
        protocol = self.security.get("security.protocol")
        if protocol is not None and protocol.upper() not in SECURITY_PROTOCOLS:
            raise KafkaConfigError(
                f"KAFKA_SECURITY_PROTOCOL={protocol!r} is not one of {', '.join(SECURITY_PROTOCOLS)}"
            )
        mechanism = self.security.get("sasl.mechanism")
        if mechanism is not None and mechanism.upper() not in SASL_MECHANISMS:
            raise KafkaConfigError(
                f"KAFKA_SASL_MECHANISM={mechanism!r} is not one of {', '.join(SASL_MECHANISMS)}"
            )
        mechanism = (mechanism or "PLAIN").upper()  # librdkafka's default
        sasl = bool(protocol) and protocol.upper().startswith("SASL")
        if sasl and mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
            self._require(["sasl.username", "sasl.password"], f"KAFKA_SECURITY_PROTOCOL={protocol}")
        method = self.security.get("sasl.oauthbearer.method")
        if method is not None and method.lower() not in OAUTHBEARER_METHODS:
            raise KafkaConfigError(
                f"KAFKA_SASL_OAUTHBEARER_METHOD={method!r} is not one of "
                f"{', '.join(OAUTHBEARER_METHODS)}"
            )
        oidc = (method or "").lower() == "oidc"
        unsecured = self.properties.get("enable.sasl.oauthbearer.unsecure.jwt", "").lower()
        if sasl and mechanism == "OAUTHBEARER" and not oidc and unsecured != "true":
            # librdkafka would wait for a token that only a Python callback could give
            raise KafkaConfigError(
                "KAFKA_SASL_MECHANISM=OAUTHBEARER needs KAFKA_SASL_OAUTHBEARER_METHOD=oidc with "
                "KAFKA_SASL_OAUTHBEARER_CLIENT_ID, KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET and "
                "KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL (or, for a test broker's unsecured "
                "tokens, KAFKA_PROPERTY__ENABLE_SASL_OAUTHBEARER_UNSECURE_JWT=true)"
            )
        grant = self.properties.get("sasl.oauthbearer.grant.type", "client_credentials")
        metadata = self.properties.get("sasl.oauthbearer.metadata.authentication.type", "none")
        if oidc and grant == "client_credentials" and metadata == "none":
            # other grants (jwt-bearer, Azure IMDS) are librdkafka's to check at client creation
            self._require(
                [
                    "sasl.oauthbearer.client.id",
                    "sasl.oauthbearer.client.secret",
                    "sasl.oauthbearer.token.endpoint.url",
                ],
                "KAFKA_SASL_OAUTHBEARER_METHOD=oidc",
            )

    def _require(self, props: list[str], needed_by: str) -> None:
        missing = [
            BY_PROPERTY[p].env
            for p in props
            if not self.security.get(p) and not self.properties.get(_OIDC_ALIASES.get(p, ""))
        ]
        if missing:
            raise KafkaConfigError(f"{needed_by} needs {' and '.join(missing)} to be set")

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, default_bootstrap: str | None = None
    ) -> KafkaSettings:
        """Read `KAFKA_BOOTSTRAP_SERVERS`, the `SETTINGS` variables and `KAFKA_PROPERTY__*`."""
        env = os.environ if env is None else env
        bootstrap = env.get("KAFKA_BOOTSTRAP_SERVERS") or default_bootstrap
        if bootstrap is None:
            raise KafkaConfigError(
                "KAFKA_BOOTSTRAP_SERVERS is not set: set it to your cluster's host:port, "
                "or start the embedded broker with `churn-platform broker`"
            )
        security = {s.property: env[s.env] for s in SETTINGS if env.get(s.env)}
        properties = {prop: env[name] for prop, name in pass_through(env).items()}
        return cls(bootstrap_servers=bootstrap, security=security, properties=properties)

    def items(self) -> Iterator[tuple[str, str]]:
        """Every configured librdkafka property and its value, pass-through first."""
        yield from self.properties.items()
        yield from self.security.items()

    def secrets(self) -> frozenset[str]:
        return frozenset(value for prop, value in self.items() if value and is_secret(prop))

    def client_config(self, **overrides: object) -> dict[str, object]:
        """A librdkafka configuration dict for this cluster plus `overrides`.

        The first call for these settings has librdkafka check them (`check`).
        librdkafka's own log lines (a "Connection refused" every few ms while a
        broker is down) go to the `churn_platform.librdkafka` logger instead of
        stderr, secrets masked; failures still surface as exceptions that name
        the address. What this client needs (`overrides`: its group, offsets
        handling) wins over a pass-through property, with a warning.
        """
        self.check()
        _LOG_MASK.secrets.update(self.secrets())
        config: dict[str, object] = {
            "bootstrap.servers": self.bootstrap_servers,
            "logger": librdkafka_logger(),
        }
        config.update(self.items())
        for prop in overrides.keys() & self.properties.keys():
            if prop not in _warned_overrides:
                _warned_overrides.add(prop)
                logging.getLogger(__name__).warning(
                    "%s (%s) is overridden: the platform sets it for its clients",
                    property_to_env(prop),
                    prop,
                )
        config.update(overrides)
        return config

    def check(self) -> None:
        """Have librdkafka check these settings; a refusal is one `KafkaConfigError` line.

        A client without `bootstrap.servers` never connects, so this contacts no
        broker. It is built with two changes so that it contacts nothing else
        either: OIDC settings are checked under SASL PLAIN (an OAUTHBEARER
        client fetches a token at once, and waits up to 20 s for an endpoint
        that does not answer before it can be destroyed; the client
        credentials are checked in `__post_init__`), and Kerberos without
        running `kinit`.
        """
        key = tuple(sorted(self.items()))
        if not key or key in _CHECKED:
            return
        from confluent_kafka import KafkaException, Producer

        probe: dict[str, object] = dict(self.items())
        probe["logger"] = _probe_logger()
        if (probe.get("sasl.mechanism") or "").upper() == "OAUTHBEARER" and (
            probe.get("sasl.oauthbearer.method") or ""
        ).lower() == "oidc":
            probe.update({"sasl.mechanism": "PLAIN", "sasl.username": "-", "sasl.password": "-"})
        if (probe.get("sasl.mechanism") or "").upper() == "GSSAPI":
            probe["sasl.kerberos.min.time.before.relogin"] = "0"
        try:
            Producer(probe)
        except KafkaException as exc:
            raise KafkaConfigError(self.explain(exc)) from None
        _CHECKED.add(key)

    def explain(self, exc: Exception) -> str:
        """One line for a librdkafka refusal: its words, secrets masked, the variables named."""
        error = exc.args[0] if exc.args else None
        detail = error.str() if hasattr(error, "str") else str(exc)
        detail = mask(detail, self.secrets())
        match = re.search(r"No provider for SASL mechanism (\S+?):", detail)
        if match:
            return f"Kafka settings for {self.bootstrap_servers}: " + unsupported_mechanism(
                match.group(1), detail
            )
        detail = re.sub(r"^Failed to create \w+: ", "", detail)  # the check's client, not yours
        named = self.named_in(detail)
        where = f"; check {', '.join(named)}" if named else ""
        return f"Kafka settings for {self.bootstrap_servers} refused by librdkafka: {detail}{where}"

    def named_in(self, text: str) -> list[str]:
        """'VARIABLE (property)' for each property of these settings or the table in `text`."""
        props = dict.fromkeys([*self.properties, *self.security, *BY_PROPERTY])
        return [
            f"{property_to_env(p)} ({p})"
            for p in props
            if re.search(rf"(?<![\w.]){re.escape(p)}(?![\w.])", text)
        ]

    def describe(self) -> dict[str, str]:
        """Settings safe to log or show: secrets are replaced by '***'."""
        shown = {"bootstrap.servers": self.bootstrap_servers}
        for prop, value in self.items():
            shown[prop] = "***" if is_secret(prop) else value
        return shown

    def __repr__(self) -> str:  # never print secrets, even by accident
        return f"KafkaSettings({self.describe()})"


def unsupported_mechanism(mechanism: str, detail: str) -> str:
    """The line for a SASL mechanism this librdkafka was built without (GSSAPI, from PyPI)."""
    import confluent_kafka

    built = re.search(r"Current build options: (.*)$", detail)
    line = (
        f"KAFKA_SASL_MECHANISM={mechanism} is not supported by this librdkafka "
        f"{confluent_kafka.libversion()[0]} (confluent-kafka {confluent_kafka.__version__})"
        + (f", built with {built.group(1).strip()} only" if built else "")
    )
    if mechanism.upper() == "GSSAPI":
        line += (
            ": Kerberos needs confluent-kafka built against a librdkafka with Cyrus SASL "
            "(libsasl2), e.g. installed from source over your system's librdkafka"
        )
    return line


def _probe_logger() -> logging.Logger:
    # the check's own client says "No bootstrap.servers configured": nobody needs to read it
    logger = logging.getLogger("churn_platform.librdkafka.check")
    logger.propagate = False
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
    return logger
