"""SIGKILL of a process in the middle of compaction or vacuum: no row lost or doubled.

Real processes, killed at seeded random points of their work: each kill leaves
the table readable with every row once and the extract's offsets intact (a
compaction commits in one step or not at all; its unreferenced files are a
killed writer's, which a later vacuum removes), and the next run completes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from churn_platform.events.contract import EVENTS_TOPIC
from churn_platform.lake import tables
from churn_platform.lake.store import Lake
from churn_platform.testing.lakes import ExtractLike, event_ids, orphan

# imports first, then "ready", then the work: the kill lands in the work, not in imports
CHILD = """
import sys
import deltalake  # noqa: F401
from churn_platform.lake import maintenance, tables
from churn_platform.lake.store import Lake
lake = Lake(sys.argv[1])
print("ready", flush=True)
if sys.argv[2] == "compact":
    maintenance.compact(lake, tables.RAW_EVENTS)
else:
    maintenance.vacuum(lake, tables.RAW_EVENTS, retention_hours=1)
print("done", flush=True)
"""
ROUNDS = 6
# compaction takes ~0.6 s here: the kill lands at a random point of it (seen: before
# the first partition's commit, and between partitions). Vacuum's deletions take a
# few ms, so its kill lands at a random point after its first commit (VACUUM START):
# among the deletions, or in the checkpoint and log cleanup after them
KILL_WITHIN_SECONDS = {"compact": 0.6, "vacuum": 0.03}


def wait_for_vacuum_start(log_dir: Path, after_version: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in sorted(log_dir.glob("*.json")):
            if int(entry.stem) > after_version and "VACUUM START" in entry.read_text():
                return
        time.sleep(0.001)
    raise AssertionError(f"no VACUUM START commit in {log_dir} within {timeout} s")


SEED = 20260101


def child_environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def test_killing_maintenance_at_random_points_loses_and_doubles_nothing(tmp_path):
    lake = Lake(tmp_path / "lake")
    extract = ExtractLike(lake, partitions=3)
    chance = random.Random(SEED)
    outcomes = []
    orphans: list[str] = []
    for round_ in range(ROUNDS):
        operation = ("compact", "vacuum")[round_ % 2]
        if operation == "compact":
            for _ in range(10):
                extract.round(days=8, per_file=20)  # 30 new small files per event date
        else:  # a killed extract's files, for the vacuum
            orphans += [orphan(lake, age_hours=3) for _ in range(30)]
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, lake.root, operation],
            stdout=subprocess.PIPE,
            env=child_environment(),
            text=True,
        )
        version = tables.version(lake, tables.RAW_EVENTS)
        assert child.stdout.readline().strip() == "ready"
        if operation == "vacuum":
            wait_for_vacuum_start(Path(lake.path(tables.RAW_EVENTS.log_dir)), version)
        time.sleep(chance.uniform(0.0, KILL_WITHIN_SECONDS[operation]))
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        outcomes.append(f"{operation} {child.stdout.read().strip() or 'killed'}")

        # every committed file readable (page checksums verified), every row once
        assert event_ids(lake) == extract.expected_ids()
        assert tables.committed_offsets(lake, tables.RAW_EVENTS, EVENTS_TOPIC) == extract.next
    # most kills land inside the work (the seed's points; a slower machine only adds kills)
    assert sum(o.endswith("killed") for o in outcomes) >= 3, outcomes

    # the next run completes: the CLI, as an operator would run it
    finished = subprocess.run(
        [sys.executable, "-m", "churn_platform.cli", "lake", "maintain"]
        + ["--lake", lake.root, "--retention-hours", "1", "--json"],
        capture_output=True,
        text=True,
        env=child_environment(),
        timeout=120,
    )
    assert finished.returncode == 0, finished.stderr
    [raw] = [
        t for t in json.loads(finished.stdout)["tables"] if t["table"] == tables.RAW_EVENTS.name
    ]
    assert raw["compaction"]["files_after"] == 8  # one file per event date
    assert not any(lake.exists(p) for p in orphans)  # the aged orphans: gone, whichever run did it
    assert event_ids(lake) == extract.expected_ids()
    assert tables.committed_offsets(lake, tables.RAW_EVENTS, EVENTS_TOPIC) == extract.next
