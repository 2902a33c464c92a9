"""The Kafka resource: cluster address and security settings, clients built on demand."""

from __future__ import annotations

import os
from collections.abc import Mapping

import dagster as dg

from churn_platform.kafka.config import ENV_TO_CLIENT, SECRET_PROPERTIES, KafkaSettings

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"

# resource field ↔ environment variable; the field names are what users set in code
_FIELD_ENV = {
    "security_protocol": "KAFKA_SECURITY_PROTOCOL",
    "sasl_mechanism": "KAFKA_SASL_MECHANISM",
    "sasl_username": "KAFKA_SASL_USERNAME",
    "sasl_password": "KAFKA_SASL_PASSWORD",
    "ssl_ca_location": "KAFKA_SSL_CA_LOCATION",
    "ssl_certificate_location": "KAFKA_SSL_CERTIFICATE_LOCATION",
    "ssl_key_location": "KAFKA_SSL_KEY_LOCATION",
    "ssl_key_password": "KAFKA_SSL_KEY_PASSWORD",
}
_SECRET_FIELDS = frozenset(
    name for name, env in _FIELD_ENV.items() if ENV_TO_CLIENT[env] in SECRET_PROPERTIES
)


class KafkaResource(dg.ConfigurableResource):
    """Where Kafka is and how to authenticate; secrets come from `dg.EnvVar`."""

    bootstrap_servers: str = DEFAULT_BOOTSTRAP
    events_topic: str = "customer-events"
    security_protocol: str | None = None
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    ssl_key_password: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> KafkaResource:
        """A resource whose every setting present in the environment is a `dg.EnvVar`.

        Called when definitions load (not at import); values are resolved by
        Dagster at run time and never shown in the UI.
        """
        environ = os.environ if environ is None else environ
        fields: dict[str, object] = {}
        if environ.get("KAFKA_BOOTSTRAP_SERVERS"):
            fields["bootstrap_servers"] = dg.EnvVar("KAFKA_BOOTSTRAP_SERVERS")
        if environ.get("CHURN_EVENTS_TOPIC"):
            fields["events_topic"] = dg.EnvVar("CHURN_EVENTS_TOPIC")
        for name, env in _FIELD_ENV.items():
            if environ.get(env):
                fields[name] = dg.EnvVar(env)
        return cls(**fields)

    @classmethod
    def from_settings(cls, settings: KafkaSettings, events_topic: str) -> KafkaResource:
        """A resource with these settings as plain values (for runs started from code)."""
        by_property = {ENV_TO_CLIENT[env]: name for name, env in _FIELD_ENV.items()}
        fields = {by_property[p]: v for p, v in settings.security.items() if p in by_property}
        return cls(
            bootstrap_servers=settings.bootstrap_servers, events_topic=events_topic, **fields
        )

    def settings(self) -> KafkaSettings:
        security = {}
        for name, env in _FIELD_ENV.items():
            value = getattr(self, name)
            if value:
                security[ENV_TO_CLIENT[env]] = value
        return KafkaSettings(bootstrap_servers=self.bootstrap_servers, security=security)

    def __repr_args__(self):
        # In a run the fields hold the resolved values: like KafkaSettings, never print
        # a password, even by accident. Outside a run they are EnvVar names, not secret.
        for name, value in super().__repr_args__():
            hidden = name in _SECRET_FIELDS and not isinstance(value, dg.EnvVar) and value
            yield name, "***" if hidden else value
