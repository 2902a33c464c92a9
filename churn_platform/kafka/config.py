"""Kafka connection settings: where the cluster is and how to authenticate.

Settings come from the environment (`KafkaSettings.from_env`) or from the
Dagster resource; secrets are never part of `repr`, logs or metadata.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

# Environment variable → librdkafka property. These are passed through as is.
ENV_TO_CLIENT = {
    "KAFKA_SECURITY_PROTOCOL": "security.protocol",
    "KAFKA_SASL_MECHANISM": "sasl.mechanism",
    "KAFKA_SASL_USERNAME": "sasl.username",
    "KAFKA_SASL_PASSWORD": "sasl.password",
    "KAFKA_SSL_CA_LOCATION": "ssl.ca.location",
    "KAFKA_SSL_CERTIFICATE_LOCATION": "ssl.certificate.location",
    "KAFKA_SSL_KEY_LOCATION": "ssl.key.location",
    "KAFKA_SSL_KEY_PASSWORD": "ssl.key.password",
    "KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM": "ssl.endpoint.identification.algorithm",
}
SECRET_PROPERTIES = frozenset({"sasl.password", "ssl.key.password"})
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI")


def librdkafka_logger() -> logging.Logger:
    logger = logging.getLogger("churn_platform.librdkafka")
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
    return logger


class KafkaConfigError(ValueError):
    """A Kafka setting is wrong; the message names the setting and the fix."""


@dataclass(frozen=True)
class KafkaSettings:
    """How to reach a Kafka cluster. `security` holds librdkafka security properties."""

    bootstrap_servers: str
    security: Mapping[str, str] = field(default_factory=dict, repr=False)

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
        if (
            protocol
            and protocol.upper().startswith("SASL")
            and mechanism
            in (
                None,
                "PLAIN",
                "SCRAM-SHA-256",
                "SCRAM-SHA-512",
            )
        ):
            missing = [
                env
                for env, prop in ENV_TO_CLIENT.items()
                if prop in ("sasl.username", "sasl.password") and not self.security.get(prop)
            ]
            if missing:
                raise KafkaConfigError(
                    f"KAFKA_SECURITY_PROTOCOL={protocol} needs {' and '.join(missing)} to be set"
                )

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, default_bootstrap: str | None = None
    ) -> KafkaSettings:
        """Read `KAFKA_BOOTSTRAP_SERVERS` and the `KAFKA_*` security variables."""
        env = os.environ if env is None else env
        bootstrap = env.get("KAFKA_BOOTSTRAP_SERVERS") or default_bootstrap
        if bootstrap is None:
            raise KafkaConfigError(
                "KAFKA_BOOTSTRAP_SERVERS is not set: set it to your cluster's host:port, "
                "or start the embedded broker with `churn-platform broker`"
            )
        security = {prop: env[var] for var, prop in ENV_TO_CLIENT.items() if env.get(var)}
        return cls(bootstrap_servers=bootstrap, security=security)

    def client_config(self, **overrides: object) -> dict[str, object]:
        """A librdkafka configuration dict for this cluster plus `overrides`.

        librdkafka's own log lines (a "Connection refused" every few ms while a
        broker is down) go to the `churn_platform.librdkafka` logger instead of
        stderr; failures still surface as exceptions that name the address.
        """
        config: dict[str, object] = {
            "bootstrap.servers": self.bootstrap_servers,
            "logger": librdkafka_logger(),
        }
        config.update(self.security)
        config.update(overrides)
        return config

    def describe(self) -> dict[str, str]:
        """Settings safe to log or show: secrets are replaced by '***'."""
        shown = {"bootstrap.servers": self.bootstrap_servers}
        for prop, value in self.security.items():
            shown[prop] = "***" if prop in SECRET_PROPERTIES else value
        return shown

    def __repr__(self) -> str:  # never print secrets, even by accident
        return f"KafkaSettings({self.describe()})"
