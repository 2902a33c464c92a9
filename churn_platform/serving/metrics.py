"""Prometheus metrics of the streaming scorer, read from what it counts anyway.

A scrape (the HTTP server's thread) reads the scorer's counters, its latency
histogram, its per-partition lag and its champion; the scoring loop pays only
for what it did before plus, once per batch, a numpy pass that sorts the
batch's latencies into histogram buckets (not one `observe()` per event), and,
at most once a second, the consumer's cached high watermarks (no broker
request). Events per second are `rate()` of the counters.

| metric | type | what |
|---|---|---|
| churn_scorer_events_consumed_total | counter | messages read from the events topic |
| churn_scorer_events_scored_total | counter | scores produced (one per event owed a score) |
| churn_scorer_events_inactive_total | counter | of those, events that left the customer inactive |
| churn_scorer_events_replayed_total | counter | events read again into the state, not scored twice |
| churn_scorer_events_rejected_total{reason} | counter | messages quarantined, by reason code |
| churn_scorer_batches_total | counter | micro-batches |
| churn_scorer_busy_seconds_total | counter | time spent on batches (not waiting) |
| churn_scorer_score_latency_seconds | histogram | event's Kafka timestamp → its score produced |
| churn_scorer_consumer_lag_messages{topic,partition} | gauge | high watermark − next offset to read |
| churn_scorer_assigned_partitions | gauge | partitions this member holds |
| churn_scorer_customers | gauge | customers held in state |
| churn_scorer_kafka_reachable | gauge | 0 while the cluster does not answer |
| churn_scorer_champion_info{version,churn} | info | the model that scores |
| churn_scorer_champion_loads_total | counter | models loaded (a new champion without a restart) |

The lag comes from the high watermarks the consumer caches from its fetches:
on the embedded broker they are the last batch's base offset, so the lag
there under-counts by up to that batch and reads 0 once everything is read.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)

if TYPE_CHECKING:
    from churn_platform.serving.scorer import StreamingScorer

DEFAULT_METRICS_HOST = "127.0.0.1"
# the port Prometheus exporters of OpenTelemetry use; `up` takes it when it is free
DEFAULT_METRICS_PORT = 9464
# event → score, seconds: the live path is tens of milliseconds, a backlog minutes
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class LatencyHistogram:
    """Bucket counts and a sum, fed a batch at a time."""

    def __init__(self, bounds: Iterable[float] = LATENCY_BUCKETS_S) -> None:
        self.bounds = np.asarray(tuple(bounds), dtype=np.float64)
        self._counts = np.zeros(len(self.bounds) + 1, dtype=np.int64)  # the last: +Inf
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe_ms(self, latencies_ms: list[float]) -> None:
        if not latencies_ms:
            return
        seconds = np.asarray(latencies_ms, dtype=np.float64) / 1000.0
        # "le" buckets: a value equal to a bound belongs to that bound's bucket
        counts = np.bincount(
            np.searchsorted(self.bounds, seconds, side="left"), minlength=len(self._counts)
        )
        with self._lock:
            self._counts += counts
            self._sum += float(seconds.sum())

    def snapshot(self) -> tuple[list[tuple[str, int]], float]:
        """Cumulative buckets as Prometheus writes them, and the sum."""
        with self._lock:
            cumulative = np.cumsum(self._counts).tolist()
            total = self._sum
        labels = [f"{b:g}" for b in self.bounds] + ["+Inf"]
        return list(zip(labels, cumulative, strict=True)), total


def consumer_lag(highs: Mapping[int, int], positions: Mapping[int, int]) -> dict[int, int]:
    """partition → messages beyond the next offset to read; unknown watermarks are left out.

    A watermark below the position (the embedded broker reports the last batch's
    base offset) counts as caught up, not as a negative lag.
    """
    return {
        p: max(0, high - positions[p]) for p, high in highs.items() if high >= 0 and p in positions
    }


class ScorerCollector:
    """The scorer's state as Prometheus metric families, built at each scrape."""

    def __init__(self, scorer: StreamingScorer) -> None:
        self.scorer = scorer

    def collect(self) -> Iterable[Metric]:
        scorer = self.scorer
        stats = scorer.stats
        counters = [
            ("events_consumed", "Messages read from the events topic.", stats.consumed),
            ("events_scored", "Scores produced, one per event owed a score.", stats.scored),
            (
                "events_inactive",
                "Scored events that left their customer inactive (null probability).",
                stats.inactive,
            ),
            (
                "events_replayed",
                "Events read again into the state after a restart, not scored twice.",
                stats.replayed,
            ),
            ("batches", "Micro-batches processed.", stats.batches),
            ("busy_seconds", "Seconds spent on batches rather than waiting.", stats.busy_s),
            ("champion_loads", "Champion models loaded.", scorer.champion.loads),
        ]
        for name, text, value in counters:
            yield CounterMetricFamily(f"churn_scorer_{name}", text, value=value)
        rejected = CounterMetricFamily(
            "churn_scorer_events_rejected",
            "Messages quarantined (quarantine/scorer/<group>/ in the lake), by reason code.",
            labels=["reason"],
        )
        for reason, count in sorted(dict(scorer.rejected_by_reason).items()):
            rejected.add_metric([reason], count)
        yield rejected
        buckets, total = scorer.latency.snapshot()
        yield HistogramMetricFamily(
            "churn_scorer_score_latency_seconds",
            "From the event's Kafka timestamp to its score being produced.",
            buckets=buckets,
            sum_value=total,
        )
        lag = GaugeMetricFamily(
            "churn_scorer_consumer_lag_messages",
            "High watermark minus the next offset to read, per assigned partition (the "
            "embedded broker's watermark trails by its last batch).",
            labels=["topic", "partition"],
        )
        for partition, value in sorted(scorer.lag.items()):
            lag.add_metric([scorer.config.topic, str(partition)], value)
        yield lag
        gauges = [
            ("assigned_partitions", "Partitions this group member holds.", len(scorer.assigned)),
            ("customers", "Customers held in the scorer's state.", len(scorer.state)),
            ("kafka_reachable", "0 while the Kafka cluster does not answer.", scorer.reachable),
        ]
        for name, text, value in gauges:
            yield GaugeMetricFamily(f"churn_scorer_{name}", text, value=value)
        model = scorer.champion.model
        champion = InfoMetricFamily("churn_scorer_champion", "The champion model that scores.")
        if model is not None:  # no sample until there is one
            champion.add_metric(
                [], {"version": model.version, "churn": scorer.champion.churn.describe()}
            )
        yield champion


@dataclass
class MetricsServer:
    """The HTTP endpoint (`/metrics`) of one scorer; `close` stops it."""

    host: str
    port: int
    _server: object
    _thread: threading.Thread

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def serve_metrics(
    scorer: StreamingScorer, port: int, host: str = DEFAULT_METRICS_HOST
) -> MetricsServer:
    """Expose `scorer`'s metrics (and its process's CPU and memory) on host:port.

    Raises OSError when the port is taken. Port 0 picks a free one (see `.port`).
    """
    registry = CollectorRegistry()
    registry.register(ScorerCollector(scorer))
    ProcessCollector(registry=registry)
    server, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsServer(host, server.server_address[1], server, thread)
