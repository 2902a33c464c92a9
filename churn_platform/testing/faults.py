"""Shared helpers of the fault-injection tests and the soak benchmark.

- `produce_recorded` produces simulated messages (some malformed) and records where
  each one landed (partition, offset) from the broker's delivery reports, so the
  lake can be checked against what Kafka really holds, not against what the extract
  says it read.
- `start_extract_child` runs the extract in a child process (`python -m
  churn_platform.testing.faults ...`) that says "ready" once its imports
  are done, so a seeded kill delay measures the extract, not Python's start-up.
- `lake_state` looks at the lake as a crash left it: committed offsets and files,
  data files no commit references, temporary files.
- `check_exactly_once` compares the lake with what was produced.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

END = datetime(2026, 11, 1, tzinfo=UTC)
REPO = Path(__file__).resolve().parents[2]  # the checkout: the child starts there
READY = "ready"


@dataclass
class Produced:
    """Every message produced to a topic: where it landed and what it must become."""

    valid: dict[tuple[int, int], str] = field(default_factory=dict)  # (p, o) → event_id
    bad: dict[tuple[int, int], str] = field(default_factory=dict)  # (p, o) → reason
    ends: dict[int, int] = field(default_factory=dict)  # partition → next offset

    @property
    def messages(self) -> int:
        return len(self.valid) + len(self.bad)


def produce_recorded(settings, topic: str, produced: Produced, *, seed: int, **sizes) -> int:
    """Produce one simulated batch and record each message's (partition, offset).

    `sizes` go to SimulatorConfig (customers, days, bad_fraction). Returns how many
    messages this batch added.
    """
    from confluent_kafka import Producer

    from churn_platform.events.simulator import SimulatorConfig, simulate
    from churn_platform.kafka.producer import THROUGHPUT_PRODUCER_CONFIG

    config = SimulatorConfig(seed=seed, end=END, **sizes)
    producer = Producer(settings.client_config(**THROUGHPUT_PRODUCER_CONFIG))
    errors: list[str] = []
    before = produced.messages

    def delivered(err, msg, expected) -> None:
        if err is not None:
            errors.append(str(err))
            return
        where = (msg.partition(), msg.offset())
        assert where not in produced.valid and where not in produced.bad, where
        event_id, reason = expected
        if reason is None:
            produced.valid[where] = event_id
        else:
            produced.bad[where] = reason
        produced.ends[where[0]] = max(produced.ends.get(where[0], 0), where[1] + 1)

    for n, m in enumerate(simulate(config)):
        expected = (m.event_id, m.expected_reason)
        while True:
            try:
                producer.produce(
                    topic,
                    value=m.value,
                    key=m.key,
                    on_delivery=lambda err, msg, e=expected: delivered(err, msg, e),
                )
                break
            except BufferError:
                producer.poll(0.05)
        if n % 5_000 == 0:
            producer.poll(0)
    remaining = producer.flush(60)
    assert remaining == 0 and not errors, (remaining, errors[:3])
    return produced.messages - before


# --- the extract in a child process ----------------------------------------


def extract_child_command(
    bootstrap: str,
    lake: str | os.PathLike[str],
    topic: str,
    *,
    cap: int | None = None,
    chunk_size: int = 20_000,
    flush_rows: int = 1_000_000,
) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "churn_platform.testing.faults",
        "--bootstrap-servers",
        bootstrap,
        "--lake",
        os.fspath(lake),
        "--topic",
        topic,
        "--chunk-size",
        str(chunk_size),
        "--flush-rows",
        str(flush_rows),
    ]
    if cap is not None:
        command += ["--cap", str(cap)]
    return command


def start_extract_child(command: list[str], **popen) -> subprocess.Popen:
    """Start the child in its own session (so a kill reaches nothing else) from the repo root."""
    return subprocess.Popen(
        command,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        **popen,
    )


def wait_ready(child: subprocess.Popen, timeout: float = 60.0) -> None:
    """Block until the child printed its ready line (its imports are done)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([child.stdout], [], [], 0.5)
        if ready:
            line = child.stdout.readline()
            if line.strip() == READY:
                return
            if line == "":
                break
    child.kill()
    _, err = child.communicate(timeout=10)
    raise AssertionError(f"the extract child never became ready (rc {child.returncode}): {err}")


def kill_after(child: subprocess.Popen, delay: float) -> tuple[bool, float, list[str]]:
    """SIGKILL the child `delay` seconds from now unless it exits first.

    Returns (killed, seconds it ran after ready, the lines it printed). A child
    that exited by itself must have exited 0.
    """
    started = time.monotonic()
    try:
        child.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        os.kill(child.pid, signal.SIGKILL)
        out, _ = child.communicate(timeout=30)
        assert child.returncode == -signal.SIGKILL, child.returncode
        return True, time.monotonic() - started, out.splitlines()
    alive = time.monotonic() - started
    out, err = child.communicate(timeout=30)
    assert child.returncode == 0, f"the extract child failed (rc {child.returncode}): {err}"
    return False, alive, out.splitlines()


def run_child_to_completion(command: list[str], timeout: float = 120.0) -> list[dict]:
    """Run the extract child until it is done; returns the summary of each of its steps."""
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"the extract child failed (rc {done.returncode}): {done.stderr}"
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


# --- what a crash left in the lake ------------------------------------------


def temp_files(root: str | os.PathLike[str]) -> list[str]:
    """Every temporary (dot) file under the lake root, found by walking the disk."""
    found = []
    for directory, _, names in os.walk(root):
        found += [os.path.join(directory, n) for n in names if n.startswith(".")]
    return sorted(found)


def lake_state(lake, topic: str) -> dict:
    """Committed offsets and files, data files no commit references, temp files."""
    from churn_platform.lake import tables
    from churn_platform.lake.raw import extracted_offsets

    offsets = extracted_offsets(lake, topic)
    specs = (tables.RAW_EVENTS, tables.QUARANTINE)
    committed = sum(len(tables.data_files(lake, spec)) for spec in specs)
    beyond = [p for spec in specs for p in tables.unreferenced_files(lake, spec)]
    return {
        "offsets": {str(p): o for p, o in sorted(offsets.items())},
        "offsets_total": sum(offsets.values()),
        "committed_files": committed,
        "unreferenced_files": len(beyond),
        "temp_files": len(temp_files(lake.root)),
        # which files (a rewritten file is a new inode): tells this run's files from older ones
        "_beyond": {(p, os.stat(lake.path(p)).st_ino) for p in beyond},
    }


def kill_phase(state: dict, at_start: dict, killed: bool) -> str:
    """Where in the extract a kill landed, judged from what it left against the round's start."""
    if not killed:
        return "finished before the kill"
    if state["temp_files"]:
        return "writing a file"
    if state["_beyond"] - at_start["_beyond"]:
        return "files written, not yet committed"
    if state["offsets_total"] > at_start["offsets_total"]:
        return "after a commit"
    return "before any file"


def check_visible_prefix(lake, topic: str, produced: Produced) -> int:
    """What readers see is exactly the produced data below the committed offsets, once.

    Holds at every instant, whatever a crash left uncommitted. Returns how many
    rows (events + quarantined) readers see.
    """
    from churn_platform.lake.raw import extracted_offsets, read_quarantine, read_raw_events

    offsets = extracted_offsets(lake, topic)
    events = read_raw_events(lake, [topic])
    quarantine = read_quarantine(lake, [topic])
    seen = list(zip(events["_partition"], events["_offset"], events["event_id"], strict=True))
    assert len(seen) == len({(p, o) for p, o, _ in seen}), "a valid event is in the lake twice"
    want = {k: v for k, v in produced.valid.items() if k[1] < offsets.get(k[0], 0)}
    assert {(p, o): e for p, o, e in seen} == want
    bad = list(
        zip(quarantine["partition"], quarantine["offset"], quarantine["reason"], strict=True)
    )
    assert len(bad) == len({(p, o) for p, o, _ in bad}), "a message is quarantined twice"
    # the quarantine commits first, so it may be ahead of the raw table (never behind)
    from churn_platform.lake import tables

    q_offsets = tables.committed_offsets(lake, tables.QUARANTINE, topic)
    assert all(q_offsets.get(p, o) >= o for p, o in offsets.items() if p in q_offsets)
    held = {p: max(o, q_offsets.get(p, 0)) for p, o in offsets.items()}
    want_bad = {k: v for k, v in produced.bad.items() if k[1] < held.get(k[0], 0)}
    assert {(p, o): r for p, o, r in bad} == want_bad
    return len(seen) + len(bad)


def check_exactly_once(lake, topic: str, produced: Produced) -> dict:
    """The lake holds every produced message once: valid ones as events, bad ones quarantined.

    Returns the figures a report wants (checked, lost, duplicates, quarantined).
    """
    from churn_platform.lake.raw import extracted_offsets, read_quarantine, read_raw_events

    events = read_raw_events(lake, [topic])
    quarantine = read_quarantine(lake, [topic])
    rows = Counter(zip(events["_partition"], events["_offset"], strict=True))
    ids = Counter(events["event_id"])
    duplicates = sum(n - 1 for n in rows.values() if n > 1) + sum(
        n - 1 for n in ids.values() if n > 1
    )
    by_offset = dict(zip(rows, events["event_id"], strict=False)) if not duplicates else {}
    lost = len(set(produced.valid) - set(rows))
    unexpected = len(set(rows) - set(produced.valid))
    wrong_id = sum(1 for k, e in by_offset.items() if produced.valid.get(k, e) != e)
    q = Counter(zip(quarantine["partition"], quarantine["offset"], strict=True))
    q_reasons = dict(
        zip(
            zip(quarantine["partition"], quarantine["offset"], strict=True),
            quarantine["reason"],
            strict=True,
        )
    )
    figures = {
        "events_produced": produced.messages,
        "valid_produced": len(produced.valid),
        "events_checked": len(rows),
        "lost": lost,
        "duplicates": duplicates,
        "unexpected": unexpected,
        "wrong_event_id": wrong_id,
        "quarantined_expected": len(produced.bad),
        "quarantined_checked": len(q),
        "quarantine_duplicates": sum(n - 1 for n in q.values() if n > 1),
        "quarantine_wrong": sum(1 for k, r in produced.bad.items() if q_reasons.get(k) != r)
        + len(set(q) - set(produced.bad)),
        "offsets_match_topic_end": extracted_offsets(lake, topic) == produced.ends,
        "temp_files_left": len(temp_files(lake.root)),
    }
    return figures


def assert_exactly_once(figures: dict) -> None:
    zero = (
        "lost",
        "duplicates",
        "unexpected",
        "wrong_event_id",
        "quarantine_duplicates",
        "quarantine_wrong",
        "temp_files_left",
    )
    assert {k: figures[k] for k in zero} == dict.fromkeys(zero, 0), figures
    assert figures["events_checked"] == figures["valid_produced"], figures
    assert figures["quarantined_checked"] == figures["quarantined_expected"], figures
    assert figures["offsets_match_topic_end"], figures


# --- kill rounds -----------------------------------------------------------------


def kill_rounds(settings, topic, lake, produced, *, rounds, seed, sizes, child_options):
    """Per round: produce another batch, start the extract child, SIGKILL it.

    The kill delay is a seeded fraction of the time the backlog should take, at
    the rate the children reported so far; the fractions are stratified, so the
    kills spread over the whole run. After each kill, what readers see is checked
    (`check_visible_prefix`). Returns one record per round.
    """
    rng = random.Random(seed)
    # stratified fractions: every part of a run gets a kill, in a seeded order
    fractions = [(i + rng.random()) / rounds for i in range(rounds)]
    rng.shuffle(fractions)
    rate = 1_000.0  # messages/s, corrected from what the children report
    observed_messages, observed_seconds = 0, 0.0
    records = []
    for round_number in range(rounds):
        produce_recorded(settings, topic, produced, seed=seed + round_number, **sizes)
        before = lake_state(lake, topic)
        backlog = produced.messages - before["offsets_total"]
        delay = fractions[round_number] * 1.1 * backlog / rate
        command = extract_child_command(
            settings.bootstrap_servers, lake.root, topic, **child_options
        )
        child = start_extract_child(command)
        wait_ready(child)
        killed, alive, lines = kill_after(child, delay)
        steps = [json.loads(line) for line in lines if line.startswith("{")]
        observed_messages += sum(s["messages"] for s in steps)
        observed_seconds += sum(s["seconds"] for s in steps)
        if observed_seconds > 0.5 and observed_messages:
            rate = observed_messages / observed_seconds
        state = lake_state(lake, topic)
        visible = check_visible_prefix(lake, topic, produced)
        records.append(
            {
                "round": round_number,
                "backlog": backlog,
                "kill_after_s": round(delay, 3),
                "ran_s": round(alive, 3),
                "killed": killed,
                "phase": kill_phase(state, before, killed),
                "offsets_total_before": before["offsets_total"],
                "visible_rows": visible,
                **{k: v for k, v in state.items() if not k.startswith("_")},
            }
        )
    return records


# --- the child's side ----------------------------------------------------------


def _child(argv: list[str] | None = None) -> int:
    """Extract in steps of `--cap` messages per partition until nothing is new.

    Every step commits, so a run has many commit points; small chunks
    and flushes give many file writes between them.
    """
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--lake", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--cap", type=int, default=None)
    parser.add_argument("--chunk-size", type=int, default=20_000)
    parser.add_argument("--flush-rows", type=int, default=1_000_000)
    args = parser.parse_args(argv)

    from churn_platform.ingestion.extract import ExtractConfig, extract_topic
    from churn_platform.kafka.config import KafkaSettings
    from churn_platform.lake.store import Lake

    settings = KafkaSettings(args.bootstrap_servers)
    lake = Lake(args.lake)
    config = ExtractConfig(
        topic=args.topic,
        max_messages_per_partition=args.cap,
        chunk_size=args.chunk_size,
        flush_rows=args.flush_rows,
        workers=1,
        stall_timeout=20.0,
    )
    print(READY, flush=True)
    steps = 0
    while True:
        result = extract_topic(settings, lake, config)
        steps += 1
        print(json.dumps({"step": steps, **result.as_dict()}), flush=True)
        if result.messages == 0 or args.cap is None:
            return 0


if __name__ == "__main__":
    sys.exit(_child())
