"""The Kafka resource: cluster address and security settings, clients built on demand.

Its settings fields are not written here: there is one per row of
`churn_platform.kafka.config.SETTINGS` (the variable without `KAFKA_`, lower
case: `KAFKA_SASL_PASSWORD` → `sasl_password`), plus `properties` for the
`KAFKA_PROPERTY__*` pass-through, so the resource and the command line accept
the same settings by construction.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import dagster as dg
import pydantic

from churn_platform.kafka.config import SETTINGS, KafkaSettings, is_secret, pass_through

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"

_SECRET_FIELDS = frozenset(s.field for s in SETTINGS if s.secret)

# pydantic's own way to declare fields from data; Dagster shows each description in the UI
_SettingsFields = pydantic.create_model(
    "_SettingsFields",
    __base__=dg.ConfigurableResource,
    **{
        s.field: (str | None, pydantic.Field(default=None, description=f"{s.env}: {s.description}"))
        for s in SETTINGS
    },
)


class KafkaResource(_SettingsFields):
    """Where Kafka is and how to authenticate; secrets come from `dg.EnvVar`."""

    bootstrap_servers: str = DEFAULT_BOOTSTRAP
    events_topic: str = "customer-events"
    properties: dict[str, str] = pydantic.Field(
        default={},
        description="any other librdkafka property → value (KAFKA_PROPERTY__<NAME>: "
        "socket.keepalive.enable is KAFKA_PROPERTY__SOCKET_KEEPALIVE_ENABLE)",
    )

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
        for setting in SETTINGS:
            if environ.get(setting.env):
                fields[setting.field] = dg.EnvVar(setting.env)
        properties = {prop: dg.EnvVar(name) for prop, name in pass_through(environ).items()}
        if properties:
            fields["properties"] = properties
        return cls(**fields)

    @classmethod
    def from_settings(cls, settings: KafkaSettings, events_topic: str) -> KafkaResource:
        """A resource with these settings as plain values (for runs started from code)."""
        fields = {
            s.field: settings.security[s.property]
            for s in SETTINGS
            if s.property in settings.security
        }
        return cls(
            bootstrap_servers=settings.bootstrap_servers,
            events_topic=events_topic,
            properties=dict(settings.properties),
            **fields,
        )

    def settings(self) -> KafkaSettings:
        security = {s.property: getattr(self, s.field) for s in SETTINGS if getattr(self, s.field)}
        properties = {prop: value for prop, value in self.properties.items() if value}
        return KafkaSettings(
            bootstrap_servers=self.bootstrap_servers, security=security, properties=properties
        )

    def __repr_args__(self):
        # In a run the fields hold the resolved values: like KafkaSettings, never print
        # a secret, even by accident. Outside a run they are EnvVar names, not secret.
        for name, value in super().__repr_args__():
            if name in _SECRET_FIELDS and value and not isinstance(value, dg.EnvVar):
                value = "***"
            elif name == "properties" and value:
                value = {
                    prop: "***" if is_secret(prop) and not isinstance(v, dg.EnvVar) else v
                    for prop, v in value.items()
                }
            yield name, value
