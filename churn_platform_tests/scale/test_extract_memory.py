"""The extract's peak memory is set by its bounds, not by how many messages it reads.

Two topics on one (dedicated) embedded broker, 200k and 2M simulated messages
(10x apart), each extracted into its own lake by a fresh child process, so
each peak is that run's alone. Peaks are the kernel's resident high-water
marks (VmHWM) of the child and of every process it starts, summed.

What bounds the extract's memory, per process: the rows buffered before a
flush (`flush_rows`, `flush_bytes`; at most one flush in flight besides) and the consumer's
prefetch queue (`queued.max.messages.kbytes` in the reader's config). The
test pins:

* `flush_rows` = 50,000, so the 200k run already flushes several times. The
  default (1,000,000 rows, or 128 MiB of them, whichever comes first) is a
  bound too, but one the 2M run reaches: it peaked at ~505 MiB against
  ~235 MiB at 200k (measured in one process), growing with the backlog up to
  the flush size.
* `workers` = 1 for both runs. The default gives a 2M backlog one worker per
  core (two here): that multiplies a per-process bound by at most
  min(cores, partitions), never by the backlog; it is not what this measures.

The 200k run (~29 MB of messages) cannot fill the 64 MiB prefetch queue and
the 2M run does, so the allowed growth is that queue plus 25% (measured: the
2M runs peaked 12-33% above the 200k runs, 285-311 MiB vs 228-258 MiB, of
which ~80 MiB is the interpreter and imports). The allowance is ~70 bytes per
extra message; holding the messages would cost ~147 bytes each as JSON (their
mean size) and at least ~140 as buffered rows (the 1M-row default flush adds
~270 MiB), so buffering even half of them would fail.

Run as a module (`python -m churn_platform_tests.scale.test_extract_memory
BOOTSTRAP TOPIC LAKE WORKERS FLUSH_ROWS`) it is the child: one extract, then
one JSON line with its peaks.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

SMALL = 200_000
LARGE = 2_000_000
WORKERS = 1
FLUSH_ROWS = 50_000
RATIO = 1.25
CHILD_TIMEOUT_S = 180
REPO = Path(__file__).resolve().parents[2]
END = datetime(2026, 11, 1, tzinfo=UTC)
EVENTS_PER_CUSTOMER = 89  # the simulator's density over 90 days


def prefetch_bound_kib() -> int:
    """The consumer's prefetch queue cap (KiB): a fixed bound the small run does not reach."""
    from churn_platform.kafka.reader import FAST_CONSUMER_CONFIG

    return int(FAST_CONSUMER_CONFIG["queued.max.messages.kbytes"])


def _mib(kib: int) -> float:
    return kib / 1024


def peak_kib(pid: int | str = "self") -> int:
    """The process's resident high-water mark (VmHWM), in KiB.

    Not `ru_maxrss`: on Linux a process inherits its parent's peak across
    fork/exec in `ru_maxrss` (a child of a 500 MiB pytest process reports
    500 MiB), while VmHWM belongs to the process's own address space.
    """
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


class DescendantPeaks:
    """Samples the VmHWM of every descendant process (extract workers) until stopped.

    VmHWM only grows, and a pool worker lives until the pool shuts down, after
    its last task: the last sample of each worker is its peak.
    """

    def __init__(self, interval: float = 0.01) -> None:
        import psutil

        self._me = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.peaks: dict[int, int] = {}
        self._thread = threading.Thread(target=self._run, name="peak-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self._interval)

    def sample(self) -> None:
        for child in self._me.children(recursive=True):
            try:
                self.peaks[child.pid] = max(self.peaks.get(child.pid, 0), peak_kib(child.pid))
            except (OSError, RuntimeError):  # exited between listing and reading
                continue

    def __enter__(self) -> DescendantPeaks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _child(argv: list[str]) -> None:
    from churn_platform.ingestion.extract import ExtractConfig, extract_topic
    from churn_platform.kafka.config import KafkaSettings
    from churn_platform.lake.store import Lake

    bootstrap, topic, lake_dir, workers, flush_rows = argv
    imported = peak_kib()
    with DescendantPeaks() as descendants:
        result = extract_topic(
            KafkaSettings(bootstrap_servers=bootstrap),
            Lake(lake_dir),
            ExtractConfig(topic=topic, workers=int(workers), flush_rows=int(flush_rows)),
        )
    print(
        json.dumps(
            {
                "imports_peak_kib": imported,
                "self_peak_kib": peak_kib(),
                # the largest spawned worker (the pool's resource tracker, if any, is tiny)
                "worker_peak_kib": max(descendants.peaks.values(), default=0),
                # every process at its own peak at once: an upper bound of the run's RSS
                "sum_of_peaks_kib": peak_kib() + sum(descendants.peaks.values()),
                "processes": 1 + len(descendants.peaks),
                "workers": result.workers,
                "messages": result.messages,
                "rows": result.rows,
                "rejected": result.rejected,
                "seconds": result.seconds,
            }
        )
    )


def extract_in_child(bootstrap: str, topic: str, lake_dir: Path, log_dir: Path) -> dict:
    """Run one extract in a fresh process and return its report (peaks in KiB)."""
    out, err = log_dir / f"{topic}.out", log_dir / f"{topic}.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        child = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "churn_platform_tests.scale.test_extract_memory",
                bootstrap,
                topic,
                str(lake_dir),
                str(WORKERS),
                str(FLUSH_ROWS),
            ],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
        )
        try:
            returncode = child.wait(timeout=CHILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            raise
    assert returncode == 0, f"extract child failed ({returncode}): {err.read_text()}"
    return json.loads(out.read_text().strip().splitlines()[-1])


def lake_contents(lake_dir: Path, topic: str) -> tuple[pa.Table, int]:
    """The committed raw rows (ids, types, offsets) and the quarantined count of `topic`."""
    from churn_platform.lake import tables as lake_tables
    from churn_platform.lake.store import Lake

    lake = Lake(lake_dir)
    columns = ["event_id", "event_type", "_topic", "_partition", "_offset"]
    rows = lake_tables.read_arrow(lake, lake_tables.RAW_EVENTS, columns)
    rows = rows.filter(pc.equal(rows["_topic"], topic)).drop_columns(["_topic"])
    quarantined = sum(f.rows or 0 for f in lake_tables.data_files(lake, lake_tables.QUARANTINE))
    return rows, quarantined


def assert_every_valid_event_once(table: pa.Table, quarantined: int, produced, tag: str) -> None:
    import polars as pl

    frame = pl.from_arrow(table)
    assert frame.height == produced.events_valid_produced
    assert frame["event_id"].n_unique() == frame.height
    assert frame.select("_partition", "_offset").is_duplicated().sum() == 0
    assert quarantined == produced.messages_produced - produced.events_valid_produced > 0
    # ids are `<tag>-<day>-<n>` with n = 0, 1, ... per day: no gap in any day
    parts = frame["event_id"].str.split_exact("-", 2).struct.unnest()
    assert (parts["field_0"] == tag).all()
    per_day = (
        parts.with_columns(pl.col("field_2").cast(pl.Int64))
        .group_by("field_1")
        .agg(pl.len().alias("n"), pl.col("field_2").min().alias("lo"), pl.col("field_2").max())
    )
    assert (per_day["lo"] == 0).all() and (per_day["field_2"] + 1 == per_day["n"]).all()
    # and as many of each event type as the simulator produced valid
    by_type = dict(frame.group_by("event_type").len().iter_rows())
    assert by_type == {t: n for t, n in produced.events_by_type.items() if n}


def test_extract_peak_memory_does_not_grow_with_the_backlog(tmp_path):
    from churn_platform.events.simulator import SimulatorConfig, produce_simulation
    from churn_platform.kafka.broker import EmbeddedBroker

    runs = {}
    # its own broker: the broker keeps topics in memory, and 2M messages would
    # stay resident for the rest of the session's tests
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker:
        for name, size, seed in (("small", SMALL, 61), ("large", LARGE, 62)):
            config = SimulatorConfig(
                customers=round(size / EVENTS_PER_CUSTOMER),
                days=90,
                seed=seed,
                end=END,
                bad_fraction=0.001,
            )
            topic = f"scale-{name}"
            produced = produce_simulation(broker.settings, topic, config)
            lake_dir = tmp_path / f"lake-{name}"
            report = extract_in_child(broker.bootstrap_servers, topic, lake_dir, tmp_path)
            runs[name] = report
            assert report["messages"] == produced.messages_produced
            assert report["workers"] == WORKERS
            table, quarantined = lake_contents(lake_dir, topic)
            assert_every_valid_event_once(table, quarantined, produced, config.tag)
            del table
    small, large = runs["small"], runs["large"]
    print(json.dumps(runs, indent=2))
    assert large["messages"] >= 9.5 * small["messages"]

    slack = prefetch_bound_kib()
    for key in ("self_peak_kib", "sum_of_peaks_kib"):
        limit = RATIO * small[key] + slack
        assert large[key] <= limit, (
            f"{key}: {_mib(large[key]):.0f} MiB at {large['messages']:,} messages vs "
            f"{_mib(small[key]):.0f} MiB at {small['messages']:,}: the extract's memory grows "
            "with the backlog"
        )
    # The margin could not hide buffering: what it allows per extra message is far
    # less than one message's bytes (~147 bytes of JSON on average, ≥140 as a buffered row).
    extra = large["messages"] - small["messages"]
    allowed = ((RATIO - 1) * small["sum_of_peaks_kib"] + slack) * 1024
    assert allowed / extra < 100


if __name__ == "__main__":
    _child(sys.argv[1:])
