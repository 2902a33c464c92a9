"""kill -9 of the extract at seeded random points, then a clean rerun: exactly once.

Each round produces more simulated messages (5% malformed) to the embedded broker,
starts the extract in a child process that commits in small steps (many Delta
commits, many small files between them) and SIGKILLs it after a seeded delay
spread over the whole run: before any file, while files are written, between the
files and their commit, after a commit. After every kill, what readers see must be
exactly the produced data below the committed offsets; after the last clean rerun
the lake must hold every valid message once (by partition/offset and event_id), the
quarantine every malformed one with its reason, the offsets the end of the topic,
and no temporary file may be left anywhere. benchmarks/soak.py runs the same with
more rounds and a larger topic.
"""

from __future__ import annotations

from collections import Counter

import pytest

from churn_platform.events.contract import Reason
from churn_platform.lake.store import Lake
from churn_platform.testing.faults import (
    Produced,
    assert_exactly_once,
    check_exactly_once,
    extract_child_command,
    kill_rounds,
    run_child_to_completion,
)

ROUNDS = 8
SEED = 20261127


@pytest.mark.timeout(120)
def test_kill_9_at_random_points_then_rerun_is_exactly_once(kafka_settings, topic, tmp_path):
    lake = Lake(tmp_path / "lake")
    produced = Produced()
    child_options = {"cap": 250, "chunk_size": 50, "flush_rows": 100}
    records = kill_rounds(
        kafka_settings,
        topic,
        lake,
        produced,
        rounds=ROUNDS,
        seed=SEED,
        sizes={"customers": 30, "days": 20, "bad_fraction": 0.05},
        child_options=child_options,
    )
    phases = Counter(r["phase"] for r in records)
    assert sum(r["killed"] for r in records) >= ROUNDS // 2, records
    # kills landed while a run had written files it had not committed yet
    assert phases["files written, not yet committed"] + phases["writing a file"] >= 1, records
    assert produced.bad and produced.messages > 3_000

    steps = run_child_to_completion(
        extract_child_command(kafka_settings.bootstrap_servers, lake.root, topic, **child_options)
    )
    assert steps[-1]["messages"] == 0  # the last step found nothing new
    figures = check_exactly_once(lake, topic, produced)
    assert_exactly_once(figures)
    assert set(produced.bad.values()) == set(Reason.ALL)  # every kind of malformed message
