"""The streaming scorer: throughput of one process and event-to-score latency at fixed rates.

    python benchmarks/streaming.py [--customers 5000] [--days 120] [--backlog 200000]
        [--rates 100,1000,10000] [--seconds 25] [--warmup 5] [--rounds 2]
        [--reference-seconds 10] [--scorer-arg=--max-wait-ms=5 ...]
        [--scorer-env KEY=VALUE ...] [--py-spy PATH [--py-spy-idle]] [--keep] [--note TEXT]
        [--bootstrap HOST:PORT]

Everything runs against the embedded broker (or, with `--bootstrap`, a
plaintext broker of your own with nothing you need on it: topics named
`bench-<tag>-…` are created there and deleted at the end, and the broker's CPU
is not measured; the result goes to `streaming-external.json`), on this
machine, in one run, in this order:

* a world: `--customers` × `--days` of simulated history produced to Kafka and
  extracted into a temporary lake (ledger and topic agree), and a champion
  trained from that lake (features and labels at the default training dates,
  `train_models`, registered and promoted), as the `churn_model` asset does;
* the latency reference, per rate: the same producer as below, to a topic of
  its own, read by a bare consumer in this process: what the broker and the
  clients alone take (`--reference-seconds`; 0 skips it);
* latency, rate by rate, `--rounds` times each: a `churn-platform serve`
  process, warm (bootstrapped), and a producer process that sends `rate`
  events/s for `--warmup` + `--seconds` seconds (paced every millisecond or
  so; existing active customers, keyed by customer; ts = now; librdkafka's
  default `linger.ms` 5), while this process reads `churn-scores`. Only
  events of the measured seconds count. Two latencies:
  - scorer: the score's own `latency_ms` (its `scored_at` − the event's Kafka
    CreateTime, which the producer client stamps when `produce()` is called);
  - end-to-end: the time this process read the score − the time the producer
    called `produce()` for the event (both `time.time_ns()`, one machine).
  "Kept up": every event scored, the second half's median end-to-end latency
  at most 1.5 × the first half's + 100 ms (a backlog that builds up shows as
  growth), and the rest scored within twice that median + 1 s after the
  producer stopped (the drain). The lag at the stop and the events scored
  within the window are kept too;
* throughput, `--rounds` times (after the live events went to the lake): a
  backlog of `--backlog` live events is produced as fast as possible; the
  reference reads it with a raw consume loop (`assign()`, large `consume()`
  batches, value, partition and offset of each message, nothing more); then a
  fresh `churn-platform serve` process (a new group: it bootstraps from the
  lake and owes a score to every backlog event) scores it. Events/s =
  backlog / (time the last score is read − time the scorer reported its
  partitions assigned, i.e. after the bootstrap). The backlog is then
  extracted into the lake, so the next round starts after it.

Latency goes first and rate by rate because the embedded broker costs more CPU
as it holds more messages (at 100 events/s it went from 0.2 to 0.9 of a core
over one run), and it shares the 2 cores with the scorer: each fetch that finds
data lists every batch the partition ever received (docs/benchmarks.md,
Streaming). So by default (`--topics per-round`) every latency round runs on a
topic of its own, holding the same history (produced and extracted like the
first), with a scorer of its own: a fresh topic beside filled ones answers as
fast as on an empty broker, so the rounds see the broker in the same state.
`--topics shared` runs them all on one topic with one scorer, and its later
rounds measure the broker's growth too.

CPU seconds of the scorer, the broker, the producer and this process (which
reads the scores) are sampled with psutil over each measured window; the
machine has 2 cores that they (and anything else running) share, so the load
average is recorded around every step. `--py-spy` records the scorer's stacks
(collapsed, text) during every measured window into `--profile-dir`. Writes
benchmarks/results/streaming.json (medians over rounds, every round) and
prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import types
import uuid
from datetime import UTC, datetime
from pathlib import Path

import msgspec
from common import raw_consume, result_header

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parent.parent
SEED = 7
PARTITIONS = 6  # the platform's default topic size
# Every topic and consumer group this run creates starts with this; against a
# broker of the user's own (`--bootstrap`) it carries a tag no topic there had,
# and those topics are deleted at the end.
TOPIC_PREFIX = "bench-"
ACTIVITY = ("login", "session", "feature_use")
TARGETS = {"p99_ms_at_1000_per_s": 100.0, "events_per_s_one_process": 10_000}


# --- events --------------------------------------------------------------------------


def event_bytes(event_id: str, customer: str, i: int, ts_ms: int) -> bytes:
    """A small live activity event (~130 bytes) of an existing customer at `ts_ms`."""
    kind = ACTIVITY[i % 3]
    tail = f',"value":{30 + i % 600}' if kind == "session" else ""
    return (
        f'{{"event_id":"{event_id}","customer_id":"{customer}","event_type":"{kind}",'
        f'"ts":{ts_ms}{tail}}}'
    ).encode()


def read_customers(path: Path) -> list[str]:
    return path.read_text().split()


def customer_picker(customers: list[str], seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(customers), size=1 << 20)
    n = len(picks)

    def pick(i: int) -> str:
        return customers[picks[i % n]]

    return pick


# --- children: the paced producer ----------------------------------------------------


def child_produce(
    bootstrap: str,
    topic: str,
    rate: float,
    warmup: float,
    seconds: float,
    tag: str,
    customers_file: str,
    out: str,
) -> None:
    """Send `rate` events/s for warmup + seconds; write (event_id, produce ns) to `out`."""
    import resource

    import polars as pl

    from churn_platform.kafka.config import KafkaSettings
    from churn_platform.kafka.producer import EventProducer

    customers = read_customers(Path(customers_file))
    pick = customer_picker(customers, seed=hash(tag) & 0xFFFF)
    # librdkafka's default linger (5 ms): what a service producing events would use
    producer = EventProducer(KafkaSettings(bootstrap), **{"linger.ms": 5, "batch.size": 1_000_000})
    send, poll = producer.send, producer.poll
    warm_n = int(rate * warmup)
    total = warm_n + int(rate * seconds)
    ids: list[str] = []
    sent_ns: list[int] = []
    clock, now_ns, sleep = time.perf_counter, time.time_ns, time.sleep
    started = clock()
    sent = 0
    while sent < total:
        due = min(total, int((clock() - started) * rate) + 1)
        while sent < due:
            event_id = f"{tag}-{'w' if sent < warm_n else 'm'}{sent}"
            customer = pick(sent)
            t = now_ns()
            send(topic, event_bytes(event_id, customer, sent, t // 1_000_000), customer)
            ids.append(event_id)
            sent_ns.append(t)
            sent += 1
        poll(0)
        delay = started + sent / rate - clock()
        if delay > 0:
            sleep(max(delay, 0.0005))
    producer.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    pl.DataFrame({"event_id": ids, "produce_ns": sent_ns}).write_parquet(out)
    print(
        json.dumps(
            {
                "events": total,
                "warmup_events": warm_n,
                "cpu_s": usage.ru_utime + usage.ru_stime,
                "wall_s": clock() - started,
            }
        )
    )


# --- parent: world ---------------------------------------------------------------------


def extract(settings, lake, topic: str):
    """Extract `topic` into `lake`, mirroring its offsets into a consumer group of this run's."""
    from churn_platform.ingestion.extract import ExtractConfig, extract_topic

    return extract_topic(
        settings, lake, ExtractConfig(topic=topic, group_id=f"{TOPIC_PREFIX}extract")
    )


def build_world(settings, topic: str, lake, customers: int, days: int) -> dict:
    """History in Kafka and in the lake, a champion; returns what was built."""
    import polars as pl

    from churn_platform.events.contract import LIFECYCLE_EVENT_TYPES, SUBSCRIPTION_CANCELLED
    from churn_platform.events.simulator import SimulatorConfig
    from churn_platform.lake.raw import read_raw_events
    from churn_platform.ml.train import TrainConfig, train_models
    from churn_platform.ml.training_set import build_training_set, ensure_inputs, training_dates
    from churn_platform.testing.serving import register_champion

    config = SimulatorConfig(customers=customers, days=days, seed=SEED, end=datetime.now(UTC))
    out: dict = {"config": config, **load_history(settings, lake, topic, config)}
    started = time.perf_counter()
    dates = training_dates(lake).dates
    ensure_inputs(lake, dates, engine="polars")
    training = build_training_set(lake, dates)
    trained = train_models(
        training.table, training.features, TrainConfig(importance_repeats=1, importance_rows=500)
    )
    version = register_champion(lake, trained, reason="benchmark", card="streaming benchmark model")
    out["train_s"] = round(time.perf_counter() - started, 1)
    out["model_version"] = version
    out["model_features"] = len(trained.features)
    out["training_rows"] = training.rows
    # the customers whose subscription is live at the end: the ones that send events
    raw = read_raw_events(lake).select("customer_id", "event_type", "ts")
    last = (
        raw.filter(pl.col("event_type").is_in(sorted(LIFECYCLE_EVENT_TYPES)))
        .sort("ts")
        .group_by("customer_id")
        .agg(pl.col("event_type").last())
    )
    active = last.filter(pl.col("event_type") != SUBSCRIPTION_CANCELLED)["customer_id"]
    out["customers_with_history"] = raw["customer_id"].n_unique()
    out["active_customers"] = active.len()
    out["active"] = sorted(active.to_list())
    return out


def load_history(settings, lake, topic: str, config) -> dict:
    """The simulated history `config` produced to `topic` and extracted into `lake`; its timings."""
    from churn_platform.events.simulator import produce_simulation

    started = time.perf_counter()
    produced = produce_simulation(settings, topic, config, partitions=PARTITIONS)
    produce_s = time.perf_counter() - started
    started = time.perf_counter()
    extracted = extract(settings, lake, topic)
    assert extracted.messages == produced.messages_produced, extracted
    return {
        "history_events": produced.messages_produced,
        "produce_history_s": round(produce_s, 1),
        "extract_history_s": round(time.perf_counter() - started, 1),
    }


def history_topic(settings, lake, config, name: str) -> str:
    """A new topic holding the world's history, extracted into `lake` (for one latency round)."""
    topic = f"{TOPIC_PREFIX}events-{name}-{uuid.uuid4().hex[:6]}"
    load_history(settings, lake, topic, config)
    return topic


def produce_backlog(settings, topic: str, customers: list[str], n: int, tag: str) -> float:
    """Send `n` live events as fast as the client goes; returns the seconds it took."""
    from churn_platform.kafka.producer import EventProducer

    pick = customer_picker(customers, seed=SEED)
    started = time.perf_counter()
    with EventProducer(settings) as producer:
        send = producer.send
        for i in range(n):
            customer = pick(i)
            send(
                topic, event_bytes(f"{tag}-{i}", customer, i, time.time_ns() // 1_000_000), customer
            )
            if i % 10_000 == 0:
                producer.poll(0)
    return time.perf_counter() - started


# --- parent: the scorer process and the score reader ------------------------------------


class Scorer:
    """`churn-platform serve` in its own process, logging to a file."""

    def __init__(
        self, settings, lake, topic: str, work: Path, name: str, extra: list[str], env_items=()
    ):
        from churn_platform.kafka.admin import ensure_topic

        self.scores_topic = f"{TOPIC_PREFIX}scores-{name}-{uuid.uuid4().hex[:6]}"
        ensure_topic(settings, self.scores_topic, partitions=PARTITIONS)
        self.log = work / f"serve-{name}.log"
        from churn_platform.testing.serving import serve_command

        command = serve_command(
            topic,
            self.scores_topic,
            f"{TOPIC_PREFIX}{name}-{uuid.uuid4().hex[:6]}",
            lake=lake,
            log_interval=5,
            extra=extra,
        )
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers}
        env.update(item.split("=", 1) for item in env_items)
        self._out = self.log.open("wb")
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            command, env=env, stdout=self._out, stderr=subprocess.STDOUT
        )
        self.pid = self.process.pid

    def wait_ready(self, timeout: float = 300.0) -> float:
        """Block until every partition is assigned (after the bootstrap); returns that time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the scorer exited:\n{self.log.read_text()[-3000:]}")
            if self.log.read_text().count("scoring from") >= PARTITIONS:
                return time.perf_counter()
            time.sleep(0.01)
        raise RuntimeError(f"the scorer was not ready in {timeout} s: see {self.log}")

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._out.close()
        return self.log.read_text()


class CpuSampler:
    """CPU seconds (user + system) of named processes, sampled with a timestamp."""

    def __init__(self, pids: dict[str, int]) -> None:
        import psutil

        # no pid (a broker not on this machine): not sampled, reported as None
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items() if pid is not None}
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._last = 0.0

    def sample(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._last < 0.5:
            return
        self._last = now
        cpu = {}
        for name, proc in self.procs.items():
            try:
                t = proc.cpu_times()
                cpu[name] = t.user + t.system
            except Exception:  # noqa: BLE001 - a process that exited has no more CPU to count
                cpu[name] = float("nan")
        own = os.times()
        cpu["reader"] = own.user + own.system
        self.samples.append((now, cpu))

    def share(self, start: float, end: float) -> dict[str, float]:
        """CPU use of each process between the samples nearest `start` and `end` (1.0 = a core)."""
        if len(self.samples) < 2:
            return {}
        a = min(self.samples, key=lambda s: abs(s[0] - start))
        b = min(self.samples, key=lambda s: abs(s[0] - end))
        if b[0] <= a[0]:
            return {}
        return {k: round((b[1][k] - a[1][k]) / (b[0] - a[0]), 3) for k in a[1]}


class ScoreReader:
    """Reads a scores topic from the start; keeps (event_id, latency_ms, read ns, partition, offset).

    `poll` waits for the first message and then takes what is already queued,
    so a score's read time is when it arrived, not the end of a wait.
    """

    raw_events = False  # True: the topic holds events, not scores (the transport reference)

    def __init__(self, settings, scores_topic: str) -> None:
        from confluent_kafka import Consumer, TopicPartition

        self.consumer = Consumer(
            settings.client_config(
                **{
                    "group.id": f"{TOPIC_PREFIX}reader-{uuid.uuid4().hex[:6]}",
                    "enable.auto.commit": False,
                    "fetch.wait.max.ms": 10,
                    "fetch.queue.backoff.ms": 10,
                }
            )
        )
        self.consumer.assign([TopicPartition(scores_topic, p, 0) for p in range(PARTITIONS)])
        self.event_ids: list[str] = []
        self.latency_ms: list[float] = []
        self.read_ns: list[int] = []
        self.keys: list[tuple[int, int]] = []
        self.tag = "\0"  # scores of events whose id starts with it are counted in `tagged`
        self.tagged = 0

    def poll(self, timeout: float = 0.05) -> int:
        from churn_platform.serving.scorer import decode_stream_score

        first = self.consumer.poll(timeout)
        if first is None:
            return 0
        now = time.time_ns()
        messages = [first, *self.consumer.consume(100_000, 0)]
        n = 0
        for m in messages:
            if m.error() is not None:
                continue
            if self.raw_events:  # event id from the event; latency as the scorer counts it
                event_id = _EVENT_ID.decode(m.value()).event_id
                latency, key = (
                    float(now // 1_000_000 - m.timestamp()[1]),
                    (m.partition(), m.offset()),
                )
            else:
                s = decode_stream_score(m.value())
                event_id, latency, key = s.event_id, s.latency_ms, (s.partition, s.offset)
            self.event_ids.append(event_id)
            self.latency_ms.append(latency)
            self.read_ns.append(now)
            self.keys.append(key)
            if event_id.startswith(self.tag):
                self.tagged += 1
            n += 1
        return n

    def __len__(self) -> int:
        return len(self.event_ids)

    def close(self) -> None:
        self.consumer.close()


def start_profile(args, pid: int, name: str, seconds: float) -> subprocess.Popen | None:
    """With --py-spy: sample the scorer's stacks for `seconds` (collapsed stacks, text)."""
    if not args.py_spy:
        return None
    Path(args.profile_dir).mkdir(parents=True, exist_ok=True)
    out = Path(args.profile_dir) / f"{name}.txt"
    command = [args.py_spy, "record", "--pid", str(pid), "--rate", "200", "--format", "raw"]
    command += ["--duration", str(max(1, int(seconds))), "--output", str(out)]
    if args.py_spy_native:
        command.append("--native")
    if args.py_spy_idle:
        command.append("--idle")
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class _EventId(msgspec.Struct):
    event_id: str


_EVENT_ID = msgspec.json.Decoder(_EventId)


class EventReader(ScoreReader):
    """Reads the events themselves: what the broker and clients alone take (the reference)."""

    raw_events = True


def load() -> float:
    return round(os.getloadavg()[0], 2)


def percentiles(values, qs=(50, 95, 99)) -> dict[str, float]:
    import numpy as np

    if len(values) == 0:
        return {f"p{q}_ms": None for q in qs} | {"max_ms": None}
    a = np.asarray(values, dtype=float)
    out = {f"p{q}_ms": round(float(np.percentile(a, q)), 2) for q in qs}
    out["max_ms"] = round(float(a.max()), 2)
    return out


# --- parent: throughput ------------------------------------------------------------------


def throughput_round(args, settings, lake, topic, customers, work, number: int, broker_pid) -> dict:
    from churn_platform.lake.raw import extracted_offsets

    tag = f"backlog{number}-{uuid.uuid4().hex[:6]}"
    start = extracted_offsets(lake, topic, range(PARTITIONS))
    load_before = load()
    produce_s = produce_backlog(settings, topic, customers, args.backlog, tag)
    n, raw_s = raw_consume(settings, topic, start, args.backlog)
    assert n == args.backlog, (n, args.backlog)
    scorer = Scorer(
        settings, lake, topic, work, f"throughput{number}", args.scorer_arg, args.scorer_env
    )
    reader = ScoreReader(settings, scorer.scores_topic)
    try:
        ready = scorer.wait_ready()
        bootstrap_s = ready - scorer.started
        cpu = CpuSampler({"scorer": scorer.pid, "broker": broker_pid})
        cpu.sample(force=True)
        profile = start_profile(args, scorer.pid, f"throughput{number}", args.backlog / 15_000)
        deadline = time.perf_counter() + args.backlog / 500 + 60
        while len(reader) < args.backlog and time.perf_counter() < deadline:
            reader.poll(0.05)
            cpu.sample()
        done = time.perf_counter()
        cpu.sample(force=True)
        rss = __import__("psutil").Process(scorer.pid).memory_info().rss
        if profile is not None:
            profile.wait()
    finally:
        reader.close()
        log_text = scorer.stop()
    scored = len(set(reader.keys))
    if scored < args.backlog:
        raise RuntimeError(f"only {scored} of {args.backlog} events scored; see {scorer.log}")
    seconds = done - ready
    started = time.perf_counter()
    extract(settings, lake, topic)  # the next round starts after it
    result = {
        "events": args.backlog,
        "produce_backlog_per_s": round(args.backlog / produce_s),
        "raw_consume_per_s": round(n / raw_s),
        "scorer_bootstrap_s": round(bootstrap_s, 2),
        "scorer_seconds": round(seconds, 3),
        "scorer_per_s": round(args.backlog / seconds),
        "ratio_scorer_to_raw": round((args.backlog / seconds) / (n / raw_s), 4),
        "duplicates": len(reader) - scored,
        "scorer_latency_ms": percentiles(reader.latency_ms),
        "cpu_cores": cpu.share(ready, done),
        "scorer_rss_mib": round(rss / 2**20),
        "extract_after_s": round(time.perf_counter() - started, 2),
        "load_1m_before": load_before,
        "load_1m_after": load(),
        "scorer_final_log": [line for line in log_text.splitlines() if "final:" in line][-1:],
    }
    print(
        f"throughput round {number}: scorer {result['scorer_per_s']:,}/s, raw consume "
        f"{result['raw_consume_per_s']:,}/s (ratio {result['ratio_scorer_to_raw']}), "
        f"bootstrap {bootstrap_s:.1f} s, cpu {result['cpu_cores']}",
        flush=True,
    )
    return result


# --- parent: latency at fixed rates ------------------------------------------------------


def kept_up(produced: int, scored: int, halves: list, drain_s: float) -> bool:
    """Every event scored, latency not growing over the window, and the rest scored promptly.

    A scorer that falls behind shows it as a latency that grows from the first
    half of the window to the second, and as a long drain after the producer
    stopped. The lag at the stop says little by itself: a scorer that batches
    two seconds of events at a time always has about two seconds of them in hand.
    """
    first, second = halves
    if first is None or second is None or scored != produced:
        return False
    return second <= 1.5 * first + 100 and drain_s <= 2 * second / 1000 + 1


def latency_phase(args, settings, topic, scorer, reader, cpu, customers_file, rate, work, number):
    import polars as pl

    tag = f"r{rate}-{number}-{uuid.uuid4().hex[:6]}"
    out = work / f"produced-{tag}.parquet"
    first_index = len(reader)
    reader.tag, reader.tagged = tag, 0
    load_before = load()
    command = [
        sys.executable,
        __file__,
        "--child",
        "produce",
        settings.bootstrap_servers,
        topic,
        str(rate),
        str(args.warmup),
        str(args.seconds),
        tag,
        str(customers_file),
        str(out),
    ]
    producer = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPO)
    cpu.add("producer", producer.pid)
    expected = int(rate * args.warmup) + int(rate * args.seconds)
    began, profile = time.perf_counter(), None
    while producer.poll() is None:
        reader.poll(0.02)
        cpu.sample()
        if profile is None and scorer and time.perf_counter() - began > args.warmup + 1:
            profile = start_profile(args, scorer.pid, f"rate{rate}-{number}", args.seconds - 2)
            profile = profile or False
    stopped_ns = time.time_ns()
    stopped = time.perf_counter()
    cpu.sample(force=True)
    report = json.loads(producer.stdout.read().strip().splitlines()[-1])
    if producer.returncode != 0:
        raise RuntimeError(f"the producer failed: {report}")
    cpu.drop("producer")
    deadline = time.perf_counter() + args.drain_timeout
    while reader.tagged < expected and time.perf_counter() < deadline:
        reader.poll(0.05)
    drained = time.perf_counter()
    if profile:
        profile.wait()
    sent = pl.read_parquet(out)
    scores = pl.DataFrame(
        {
            "event_id": reader.event_ids[first_index:],
            "latency_ms": reader.latency_ms[first_index:],
            "read_ns": reader.read_ns[first_index:],
        }
    ).filter(pl.col("event_id").str.starts_with(tag))
    first = scores.group_by("event_id").agg(pl.all().sort_by("read_ns").first())
    joined = sent.join(first, on="event_id", how="left").with_columns(
        ((pl.col("read_ns") - pl.col("produce_ns")) / 1e6).alias("e2e_ms"),
        pl.col("event_id").str.contains(r"-m\d+$").alias("measured"),
    )
    measured = joined.filter("measured")
    scored = measured.filter(pl.col("read_ns").is_not_null())
    lag_at_end = joined.filter(
        pl.col("read_ns").is_null() | (pl.col("read_ns") > stopped_ns)
    ).height
    window_start_ns = int(measured["produce_ns"].min())
    window_end_ns = int(measured["produce_ns"].max())
    seconds = (window_end_ns - window_start_ns) / 1e9
    window_start = stopped - (stopped_ns - window_start_ns) / 1e9
    # what was scored in the measured window: events whose score was read in it
    scored_in_window = first.filter(pl.col("read_ns").is_between(window_start_ns, window_end_ns))
    middle = (window_start_ns + window_end_ns) // 2
    halves = [
        round(float(h["e2e_ms"].median()), 2) if h.height else None
        for h in (
            scored.filter(pl.col("produce_ns") < middle),
            scored.filter(pl.col("produce_ns") >= middle),
        )
    ]
    result = {
        "rate_target_per_s": rate,
        "measured_events": measured.height,
        "measured_seconds": round(seconds, 2),
        "produced_per_s": round(measured.height / seconds, 1) if seconds else None,
        "scored_per_s_in_window": round(scored_in_window.height / seconds, 1) if seconds else None,
        "scored": scored.height,
        "missing": measured.height - scored.height,
        "duplicates": scores.height - first.height,
        "scorer_latency_ms": percentiles(scored["latency_ms"].to_list()),
        "end_to_end_ms": percentiles(scored["e2e_ms"].to_list()),
        "lag_at_end": lag_at_end,
        "drain_s": round(drained - stopped, 2),
        "kept_up": kept_up(measured.height, scored.height, halves, drained - stopped),
        # the second half against the first: a growing latency is a backlog building up
        "e2e_p50_ms_first_half_second_half": halves,
        "cpu_cores": cpu.share(window_start, stopped),
        "producer_cpu_cores": round(report["cpu_s"] / report["wall_s"], 3),
        "load_1m_before": load_before,
        "load_1m_after": load(),
    }
    s, e = result["scorer_latency_ms"], result["end_to_end_ms"]
    print(
        f"{'bare consumer' if scorer is None else 'scorer'}: rate {rate:>6}/s round {number}: produced {result['produced_per_s']}/s, scorer p50 "
        f"{s['p50_ms']} p99 {s['p99_ms']} ms, end-to-end p50 {e['p50_ms']} p99 {e['p99_ms']} ms, "
        f"lag at end {lag_at_end}, kept up {result['kept_up']}, cpu {result['cpu_cores']}",
        flush=True,
    )
    return result


def latency_runs(args, settings, lake, topic, customers_file, work, broker_pid, config) -> dict:
    """Every rate's rounds: each on a topic and a scorer of its own, or all on `topic`.

    The embedded broker answers a fetch more slowly the more batches the
    partition read has received since it started (a fresh topic beside a
    filled one answers as fast as on an empty broker: docs/benchmarks.md,
    Streaming), so rounds on one topic measure the broker's history as much
    as the scorer. By default (`--topics per-round`) each round gets a new
    topic holding the same history (produced and extracted into the lake as
    for the first), a new scores topic and a freshly bootstrapped scorer:
    the rounds see the broker's partitions in the same state, as a broker
    that finds offsets in an index would be. `--topics shared` runs every
    round on `topic` with one scorer, warm from the rate before.
    """
    runs: dict[int, list[dict]] = {rate: [] for rate in args.rates}
    with contextlib.ExitStack() as run:
        shared = None
        if args.topics == "shared":
            shared = (
                topic,
                *run.enter_context(
                    scoring(args, settings, lake, topic, work, "latency", broker_pid)
                ),
            )
        for rate in args.rates:
            for number in range(1, args.rounds + 1):
                with contextlib.ExitStack() as one_round:
                    if shared is not None:
                        round_topic, scorer, reader, cpu = shared
                    else:
                        name = f"r{rate}-{number}"
                        round_topic = history_topic(settings, lake, config, name)
                        scorer, reader, cpu = one_round.enter_context(
                            scoring(args, settings, lake, round_topic, work, name, broker_pid)
                        )
                    runs[rate].append(
                        latency_phase(
                            args,
                            settings,
                            round_topic,
                            scorer,
                            reader,
                            cpu,
                            customers_file,
                            rate,
                            work,
                            number,
                        )
                    )
                time.sleep(1)
    return runs


@contextlib.contextmanager
def scoring(args, settings, lake, topic, work, name, broker_pid):
    """A warm `churn-platform serve` on `topic`, a reader of its scores and a CPU sampler."""
    scorer = Scorer(settings, lake, topic, work, name, args.scorer_arg, args.scorer_env)
    reader = ScoreReader(settings, scorer.scores_topic)
    try:
        scorer.wait_ready()
        yield scorer, reader, MutableSampler({"scorer": scorer.pid, "broker": broker_pid})
    finally:
        reader.close()
        log_text = scorer.stop()
        (work / f"serve-{name}.tail.log").write_text(log_text[-20_000:])


def transport_runs(args, settings, customers_file, work, broker_pid) -> dict:
    """The reference: the same producer and rates, a bare consumer instead of the scorer."""
    from churn_platform.kafka.admin import ensure_topic

    topic = f"{TOPIC_PREFIX}transport-{uuid.uuid4().hex[:6]}"
    ensure_topic(settings, topic, partitions=PARTITIONS)
    reader = EventReader(settings, topic)
    short = argparse.Namespace(**{**vars(args), "seconds": args.reference_seconds, "warmup": 2.0})
    runs: dict[int, list[dict]] = {}
    try:
        cpu = MutableSampler({"broker": broker_pid})
        for rate in args.rates:
            runs[rate] = [
                latency_phase(
                    short, settings, topic, None, reader, cpu, customers_file, rate, work, 0
                )
            ]
    finally:
        reader.close()
    return runs


class MutableSampler(CpuSampler):
    """A CpuSampler whose set of processes can change (the producer of each phase)."""

    def add(self, name: str, pid: int | None) -> None:
        import psutil

        if pid is None:
            return
        try:
            self.procs[name] = psutil.Process(pid)
        except psutil.NoSuchProcess:
            return
        self.samples = [(t, {**c, name: 0.0}) for t, c in self.samples]
        self.sample(force=True)

    def drop(self, name: str) -> None:
        self.procs.pop(name, None)
        self.samples = [(t, {k: v for k, v in c.items() if k != name}) for t, c in self.samples]


# --- summary ---------------------------------------------------------------------------------


def median_of(runs: list[dict], *path: str):
    values = []
    for run in runs:
        value = run
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None:
            values.append(value)
    return round(statistics.median(values), 2) if values else None


def summarize(throughput: list[dict], latency: dict[int, list[dict]], transport: dict) -> dict:
    rates = {}
    for rate, runs in latency.items():
        bare = transport.get(rate, [{}])[0].get("end_to_end_ms", {})
        rates[str(rate)] = {
            "produced_per_s": median_of(runs, "produced_per_s"),
            "scorer_latency_p50_ms": median_of(runs, "scorer_latency_ms", "p50_ms"),
            "scorer_latency_p95_ms": median_of(runs, "scorer_latency_ms", "p95_ms"),
            "scorer_latency_p99_ms": median_of(runs, "scorer_latency_ms", "p99_ms"),
            "end_to_end_p50_ms": median_of(runs, "end_to_end_ms", "p50_ms"),
            "end_to_end_p95_ms": median_of(runs, "end_to_end_ms", "p95_ms"),
            "end_to_end_p99_ms": median_of(runs, "end_to_end_ms", "p99_ms"),
            "lag_at_end": median_of(runs, "lag_at_end"),
            "kept_up_every_round": all(r["kept_up"] for r in runs),
            "scorer_cpu_cores": median_of(runs, "cpu_cores", "scorer"),
            "broker_cpu_cores": median_of(runs, "cpu_cores", "broker"),
            "bare_consumer_end_to_end_p50_ms": bare.get("p50_ms"),
            "bare_consumer_end_to_end_p99_ms": bare.get("p99_ms"),
        }
    scorer = [r["scorer_per_s"] for r in throughput] or [0]
    raw = [r["raw_consume_per_s"] for r in throughput] or [1]
    out = {
        "throughput": {
            "scorer_per_s": round(statistics.median(scorer)),
            "raw_consume_per_s": round(statistics.median(raw)),
            "ratio_scorer_to_raw": round(statistics.median(scorer) / statistics.median(raw), 4),
            "scorer_per_s_rounds": scorer,
            "raw_consume_per_s_rounds": raw,
            "scorer_cpu_cores": median_of(throughput, "cpu_cores", "scorer"),
            "broker_cpu_cores": median_of(throughput, "cpu_cores", "broker"),
        },
        "latency_by_rate": rates,
    }
    p99 = rates.get("1000", {}).get("scorer_latency_p99_ms")
    e2e = rates.get("1000", {}).get("end_to_end_p99_ms")
    kept = rates.get("10000", {}).get("kept_up_every_round")
    out["targets"] = {
        "p99_under_100_ms_at_1000_per_s": {
            "scorer_latency_p99_ms": p99,
            "end_to_end_p99_ms": e2e,
            "met_scorer_latency": p99 is not None and p99 < 100,
            "met_end_to_end": e2e is not None and e2e < 100,
        },
        "at_least_10000_per_s_one_process": {
            "backlog_per_s": out["throughput"]["scorer_per_s"],
            "kept_up_at_10000_per_s": kept,
            "met_backlog": out["throughput"]["scorer_per_s"] >= 10_000,
            "met_sustained": bool(kept),
        },
    }
    return out


def print_table(body: dict) -> None:
    t = body["summary"]["throughput"]
    lines = [
        f"throughput (backlog {body['parameters']['backlog']:,} events, median of "
        f"{len(t['scorer_per_s_rounds'])}): scorer {t['scorer_per_s']:,} events/s, raw consume "
        f"{t['raw_consume_per_s']:,}/s, ratio {t['ratio_scorer_to_raw']}",
        "rate/s   produced/s  scorer p50/p95/p99 ms      end-to-end p50/p95/p99 ms   lag  kept up"
        "  cpu scorer/broker  bare consumer p50/p99 ms",
    ]
    for rate, r in body["summary"]["latency_by_rate"].items():
        lines.append(
            f"{int(rate):>6} {r['produced_per_s']:>11} "
            f"{r['scorer_latency_p50_ms']:>7}/{r['scorer_latency_p95_ms']}/"
            f"{r['scorer_latency_p99_ms']:<12} "
            f"{r['end_to_end_p50_ms']:>7}/{r['end_to_end_p95_ms']}/{r['end_to_end_p99_ms']:<12}"
            f" {r['lag_at_end']:>5} {r['kept_up_every_round']!s:>7}  "
            f"{r['scorer_cpu_cores']}/{r['broker_cpu_cores']}   "
            f"{r['bare_consumer_end_to_end_p50_ms']}/{r['bare_consumer_end_to_end_p99_ms']}"
        )
    lines.append(json.dumps(body["summary"]["targets"]))
    print("\n".join(lines))


@contextlib.contextmanager
def _broker(external, work: Path):
    """The embedded broker, or the user's (`external` settings: not started, not stopped here)."""
    from churn_platform.kafka.broker import EmbeddedBroker

    if external is None:
        with EmbeddedBroker(log_path=work / "broker.log") as broker:
            yield broker
        return
    yield types.SimpleNamespace(settings=external, pid=None)


def _unused_prefix(settings) -> str:
    """`bench-<tag>-` that no topic of the cluster starts with yet."""
    from churn_platform.kafka.admin import list_topics

    existing = list(list_topics(settings))
    while True:
        prefix = f"bench-{uuid.uuid4().hex[:6]}-"
        if not any(t.startswith(prefix) for t in existing):
            return prefix


def _delete_own_topics(settings) -> None:
    """Delete the topics this run created, and nothing else.

    Their names start with `TOPIC_PREFIX`, which no topic had when the run began.
    """
    from churn_platform.kafka.admin import admin_client, list_topics

    ours = sorted(t for t in list_topics(settings) if t.startswith(TOPIC_PREFIX))
    if ours:
        admin = admin_client(settings)  # held until every deletion is answered
        for topic, future in admin.delete_topics(ours, operation_timeout=30).items():
            future.result(30)
            print(f"deleted topic {topic}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _, _, kind, *rest = sys.argv
        assert kind == "produce", kind
        b, t, rate, warmup, seconds, tag, customers_file, out = rest
        child_produce(b, t, float(rate), float(warmup), float(seconds), tag, customers_file, out)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=5000)
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument("--backlog", type=int, default=200_000)
    parser.add_argument("--rates", default="100,1000,10000")
    parser.add_argument("--seconds", type=float, default=25.0, help="measured seconds per rate")
    parser.add_argument("--warmup", type=float, default=5.0, help="unmeasured seconds per rate")
    parser.add_argument("--drain-timeout", type=float, default=60.0)
    parser.add_argument(
        "--reference-seconds",
        type=float,
        default=10.0,
        help="seconds per rate of the bare-consumer reference (0: none)",
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--topics",
        choices=("per-round", "shared"),
        default="per-round",
        help="latency rounds each on a new topic holding the same history with a new scorer "
        "(default), or all on one topic with one scorer",
    )
    parser.add_argument("--skip", choices=("throughput", "latency"), default=None)
    parser.add_argument(
        "--scorer-arg", action="append", default=[], help="passed to `churn-platform serve`"
    )
    parser.add_argument(
        "--scorer-env", action="append", default=[], help="KEY=VALUE in the scorer's environment"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--py-spy", default=None, help="py-spy executable: profile the scorer")
    parser.add_argument("--py-spy-native", action="store_true", help="with native frames")
    parser.add_argument("--py-spy-idle", action="store_true", help="sample idle threads too")
    parser.add_argument("--profile-dir", default="benchmarks/results/profiles-streaming")
    parser.add_argument("--output", default=str(RESULTS / "streaming.json"))
    parser.add_argument("--note", default="", help="recorded as is, e.g. what else ran")
    parser.add_argument(
        "--bootstrap",
        default=None,
        metavar="HOST:PORT",
        help="a plaintext Kafka broker of your own, with nothing you need on it, instead of the "
        "embedded one: the run creates topics named bench-<tag>-... there (simulated events) and "
        "deletes them at the end; its CPU is not measured",
    )
    args = parser.parse_args()
    args.rates = [int(r) for r in args.rates.split(",")]
    if args.bootstrap and args.output == str(RESULTS / "streaming.json"):
        args.output = str(RESULTS / "streaming-external.json")

    from churn_platform.lake.store import Lake

    global TOPIC_PREFIX
    load_before = os.getloadavg()
    external = None
    if args.bootstrap:
        from churn_platform.kafka.admin import BrokerUnavailable
        from churn_platform.kafka.config import KafkaSettings

        external = KafkaSettings(args.bootstrap)
        try:
            TOPIC_PREFIX = _unused_prefix(external)
        except BrokerUnavailable as exc:
            sys.exit(f"--bootstrap: {exc}; start that broker or give another HOST:PORT")
        print(f"against {args.bootstrap}: topics {TOPIC_PREFIX}*, deleted at the end")
    work = Path(tempfile.mkdtemp(prefix="bench-streaming-"))
    topic = f"{TOPIC_PREFIX}events"
    throughput: list[dict] = []
    latency: dict[int, list[dict]] = {}
    transport: dict[int, list[dict]] = {}
    try:
        with _broker(external, work) as broker:
            settings = broker.settings
            lake = Lake(str(work / "lake"))
            print(f"building the world: {args.customers:,} customers x {args.days} days ...")
            world = build_world(settings, topic, lake, args.customers, args.days)
            active = world.pop("active")
            config = world.pop("config")
            customers_file = work / "customers.txt"
            customers_file.write_text("\n".join(active))
            print(json.dumps(world), flush=True)
            # latency first, on the smallest broker; then the live events go to the lake,
            # so that each throughput round owes exactly its backlog
            if args.skip != "latency":
                if args.reference_seconds > 0:
                    transport = transport_runs(args, settings, customers_file, work, broker.pid)
                latency = latency_runs(
                    args, settings, lake, topic, customers_file, work, broker.pid, config
                )
                extract(settings, lake, topic)
            if args.skip != "throughput":
                for number in range(1, args.rounds + 1):
                    throughput.append(
                        throughput_round(
                            args, settings, lake, topic, active, work, number, broker.pid
                        )
                    )
    finally:
        if external is not None:
            _delete_own_topics(external)
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    import confluent_kafka
    import polars as pl
    import sklearn

    body = {
        **result_header("streaming", args.note, load_before),
        "versions": {
            "python": platform.python_version(),
            "confluent-kafka": confluent_kafka.version()[0],
            "librdkafka": confluent_kafka.libversion()[0],
            "polars": pl.__version__,
            "scikit-learn": sklearn.__version__,
        },
        "parameters": {
            "customers": args.customers,
            "days": args.days,
            "partitions": PARTITIONS,
            "backlog": args.backlog,
            "rates": args.rates,
            "measured_seconds": args.seconds,
            "warmup_seconds": args.warmup,
            "rounds": args.rounds,
            "topics": args.topics,
            "scorer_args": args.scorer_arg,
            "scorer_env": args.scorer_env,
            "broker": f"external {args.bootstrap}" if args.bootstrap else "embedded Tansu",
            "producer": "EventProducer, linger.ms 5, one process, paced ~every ms",
            "score_reader": "this process, fetch.wait.max.ms 10",
        },
        "definitions": {
            "scorer_latency": "score's latency_ms: scored_at - event CreateTime (set at produce())",
            "end_to_end": "score read by this process - producer's produce() call (time_ns)",
            "throughput": "backlog events / (last score read - scorer's partitions assigned)",
            "raw_consume": "assign + consume(100k) to EOF reading value/partition/offset",
            "kept_up": "every event scored; end-to-end p50 of the window's second half <= "
            "1.5 x the first half's + 100 ms; the rest scored within 2 x that p50 + 1 s of the stop",
            "bare_consumer": "same producer and rate to another topic, read by this process: "
            "what the broker and the clients alone take (end-to-end)",
            "cpu_cores": "CPU seconds / wall seconds over the measured window (psutil)",
        },
        "world": world,
        "summary": summarize(throughput, latency, transport),
        "throughput_rounds": throughput,
        "latency_rounds": {str(k): v for k, v in latency.items()},
        "transport_reference": {str(k): v[0] for k, v in transport.items()},
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(body, indent=2) + "\n")
    print_table(body)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
