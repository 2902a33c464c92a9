"""Topic administration: create topics and read partition metadata."""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from churn_platform.kafka.config import KafkaSettings

DEFAULT_PARTITIONS = 6


class BrokerUnavailable(RuntimeError):
    """The cluster did not answer; the message names the bootstrap address."""


# Client errors that mean "no broker answers" (stopped, restarting, network cut),
# as opposed to a setting or a request being wrong.
UNREACHABLE_ERRORS = frozenset(
    {
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._RESOLVE,
        KafkaError._TIMED_OUT,
    }
)


def is_unreachable(error: KafkaError) -> bool:
    """True when `error` says the cluster cannot be reached right now (retryable)."""
    return error.code() in UNREACHABLE_ERRORS


def admin_client(settings: KafkaSettings) -> AdminClient:
    return AdminClient(settings.client_config())


def ensure_topic(
    settings: KafkaSettings,
    topic: str,
    partitions: int = DEFAULT_PARTITIONS,
    replication_factor: int = 1,
    timeout: float = 15.0,
) -> bool:
    """Create `topic` unless it exists; returns True when it was created."""
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1 (got {partitions}) for topic {topic!r}")
    admin = admin_client(settings)
    if topic in list_topics(settings, timeout=timeout, admin=admin):
        return False
    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=replication_factor)],
        operation_timeout=timeout,
        request_timeout=timeout,
    )
    try:
        futures[topic].result(timeout)
    except KafkaException as exc:
        if exc.args and exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
            return False
        raise
    return True


def list_topics(
    settings: KafkaSettings, timeout: float = 10.0, admin: AdminClient | None = None
) -> dict:
    """Topic name → metadata; raises `BrokerUnavailable` naming the address."""
    admin = admin or admin_client(settings)
    try:
        return admin.list_topics(timeout=timeout).topics
    except KafkaException as exc:
        raise BrokerUnavailable(
            f"Kafka at {settings.bootstrap_servers} did not answer within {timeout:.0f} s: {exc}"
        ) from exc


def partitions_of(settings: KafkaSettings, topic: str, timeout: float = 10.0) -> list[int]:
    """Sorted partition ids of `topic`; raises `KeyError` when it does not exist."""
    topics = list_topics(settings, timeout=timeout)
    if topic not in topics or topics[topic].error is not None:
        raise KeyError(f"topic {topic!r} does not exist on {settings.bootstrap_servers}")
    return sorted(topics[topic].partitions)


def high_watermarks(settings: KafkaSettings, topic: str, timeout: float = 5.0) -> dict[int, int]:
    """partition → high watermark, read without consuming.

    The embedded broker reports it from the last batch's base offset, so it is
    a change detector here, never a count of what there is to read.
    """
    from confluent_kafka import Consumer, TopicPartition

    partitions = partitions_of(settings, topic, timeout=timeout)
    consumer = Consumer(
        settings.client_config(
            **{"group.id": "churn-platform-watermarks", "enable.auto.commit": False}
        )
    )
    try:
        marks = {}
        for p in partitions:
            try:
                _low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, p), timeout=timeout, cached=False
                )
            except KafkaException as exc:
                raise BrokerUnavailable(
                    f"Kafka at {settings.bootstrap_servers} did not return offsets of "
                    f"{topic!r} partition {p}: {exc}"
                ) from exc
            marks[p] = high
        return marks
    finally:
        consumer.close()
