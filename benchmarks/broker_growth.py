"""The embedded broker's round trip against the batches already in the partition read.

    python benchmarks/broker_growth.py [--fill 4000] [--steps 4] [--probes 300]

Why: at 1,000 events/s the streaming scorer's latency grows over a run while
the scorer stays mostly idle (docs/benchmarks.md, Streaming). This isolates the
broker: one embedded Tansu broker, one single-partition topic; `--probes` times
per step a message is produced (`linger.ms` 0, flushed) and read back by a
consumer positioned at the end (`fetch.wait.max.ms` 10), and the round trip is
timed; then `--fill` one-message batches (each flushed: a batch apiece, as a
low-linger producer makes under light load) are added to the same partition.
A broker whose fetch is independent of the partition's history keeps the same
round trip at every step. Writes benchmarks/results/broker_growth.json with the
load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import uuid
from pathlib import Path

from common import result_header

RESULTS = Path(__file__).parent / "results"


def round_trips(bootstrap: str, topic: str, probes: int) -> list[float]:
    from confluent_kafka import Consumer, Producer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"probe-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
            "fetch.queue.backoff.ms": 10,
        }
    )
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    _, end = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    consumer.assign([TopicPartition(topic, 0, end)])
    seconds = []
    for _ in range(probes):
        started = time.perf_counter()
        producer.produce(topic, b"x" * 200, partition=0)
        producer.flush()
        while True:
            message = consumer.poll(5.0)
            if message is None:
                raise SystemExit(f"a probe message did not come back within 5 s from {topic}")
            if not message.error():
                break
        seconds.append(time.perf_counter() - started)
    consumer.close()
    return seconds


def bench(args) -> list[dict]:
    from confluent_kafka import Producer

    from churn_platform.kafka.admin import ensure_topic
    from churn_platform.kafka.broker import EmbeddedBroker

    steps = []
    with EmbeddedBroker() as broker:
        bootstrap = broker.settings.bootstrap_servers
        ensure_topic(broker.settings, "probe", partitions=1)
        filler = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
        batches = 0
        for step in range(args.steps):
            ms = sorted(1000 * s for s in round_trips(bootstrap, "probe", args.probes))
            steps.append(
                {
                    "batches_before": batches,
                    "round_trip_p50_ms": round(statistics.median(ms), 2),
                    "round_trip_p95_ms": round(ms[int(len(ms) * 0.95)], 2),
                }
            )
            print(
                f"{batches:>7,} batches in the partition: round trip p50 "
                f"{steps[-1]['round_trip_p50_ms']} ms, p95 {steps[-1]['round_trip_p95_ms']} ms",
                flush=True,
            )
            batches += args.probes
            if step < args.steps - 1:
                started = time.perf_counter()
                for _ in range(args.fill):
                    filler.produce("probe", b"y" * 200, partition=0)
                    filler.flush()
                steps[-1]["fill_per_s"] = round(args.fill / (time.perf_counter() - started))
                batches += args.fill
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fill", type=int, default=4000)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--probes", type=int, default=300)
    parser.add_argument("--output", default=str(RESULTS / "broker_growth.json"))
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    load_before = os.getloadavg()
    steps = bench(args)
    first = steps[0]["round_trip_p50_ms"]
    body = {
        **result_header("broker_growth", args.note, load_before),
        "parameters": vars(args),
        "steps": steps,
        "p50_over_the_empty_partitions": [round(s["round_trip_p50_ms"] / first, 2) for s in steps],
    }
    Path(args.output).write_text(json.dumps(body, indent=1) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
