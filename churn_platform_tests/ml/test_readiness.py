"""The data profile `training_set` checks first: counted over every committed raw event."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from churn_platform.lake import tables
from churn_platform.lake.raw import raw_files, raw_path, read_raw_events
from churn_platform.lake.store import Lake, LakeError
from churn_platform.ml.readiness import profile
from churn_platform.testing.lakes import simulated_lake


def test_the_profile_counts_every_raw_event_in_one_scan_or_file_by_file(tmp_path, monkeypatch):
    lake = Lake(tmp_path / "lake")
    simulated_lake(lake, customers=40, days=45, end=datetime(2026, 11, 21, tzinfo=UTC))
    events = read_raw_events(lake)
    by_type = dict(events.group_by("event_type").len().iter_rows())
    scanned = profile(lake)
    assert scanned.events == events.height > 1_000
    assert scanned.customers == events["customer_id"].n_unique()
    assert scanned.by_type == by_type
    monkeypatch.setattr(tables, "read_frames", lambda *args, **kwargs: None)
    assert profile(lake) == scanned
    monkeypatch.undo()
    # a damaged file: the scan gives up, the file-by-file read names it
    damaged = raw_path(raw_files(lake)[len(raw_files(lake)) // 2])
    Path(lake.path(damaged)).write_bytes(b"PAR1 not a parquet file PAR1")
    with pytest.raises(LakeError, match="could not read") as caught:
        profile(lake)
    assert lake.url(damaged) in str(caught.value)
