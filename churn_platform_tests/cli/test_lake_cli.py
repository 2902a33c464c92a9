"""`churn-platform lake maintain`: one JSON object with --json, one-line errors, exit codes."""

from __future__ import annotations

import json

import pytest

from churn_platform.cli import main
from churn_platform.lake import tables
from churn_platform.lake.store import Lake
from churn_platform.testing.lakes import ExtractLike, event_ids, orphan
from churn_platform_tests.defs.runs import record_run


@pytest.fixture(autouse=True)
def no_dagster_instance(monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.delenv("CHURN_LAKE_RETENTION_HOURS", raising=False)


def test_maintain_compacts_and_vacuums_and_prints_one_json_object(tmp_path, capsys):
    lake = Lake(tmp_path / "lake")
    extract = ExtractLike(lake)
    for _ in range(10):
        extract.round()
    left = orphan(lake, age_hours=5)
    root = str(tmp_path / "lake")

    assert main(["lake", "maintain", "--lake", root, "--retention-hours", "4", "--dry-run"]) == 0
    dry = capsys.readouterr().out
    assert (
        "would remove 1 file(s)" in dry and "not compacted: event_date=2026-01-01 (dry run)" in dry
    )
    assert len(tables.data_files(lake, tables.RAW_EVENTS)) == 40 and lake.exists(left)

    command = ["lake", "maintain", "--lake", root, "--table", "raw/customer_events", "--json"]
    assert main([*command, "--retention-hours", "4"]) == 0
    result = json.loads(capsys.readouterr().out)
    [raw] = result["tables"]
    assert result["retention_hours"] == 4 and result["dry_run"] is False
    assert (raw["compaction"]["files_before"], raw["compaction"]["files_after"]) == (40, 2)
    assert [p["files_before"] for p in raw["compaction"]["partitions"]] == [20, 20]
    assert raw["vacuum"]["removed_files"] == 1 and not lake.exists(left)
    assert event_ids(lake) == extract.expected_ids()


@pytest.mark.parametrize(
    ("arguments", "environ", "named"),
    [
        (["--retention-hours", "0"], {}, "--retention-hours='0'"),
        ([], {"CHURN_LAKE_RETENTION_HOURS": "soon"}, "CHURN_LAKE_RETENTION_HOURS='soon'"),
        (["--table", "raw/events"], {}, "no lake table named 'raw/events': use one of"),
    ],
)
def test_bad_input_is_one_line_naming_the_setting(
    tmp_path, capsys, monkeypatch, arguments, environ, named
):
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert main(["lake", "maintain", "--lake", str(tmp_path), *arguments]) == 2
    printed = capsys.readouterr()
    assert printed.out == ""
    assert printed.err.startswith("churn-platform lake: ") and named in printed.err
    assert printed.err.count("\n") == 1 and "Traceback" not in printed.err


def test_a_retention_below_the_longest_dagster_run_is_refused(tmp_path, capsys, monkeypatch):
    import dagster as dg

    home = tmp_path / "dagster"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        run_id = record_run(instance, hours=4)
    lake = str(tmp_path / "lake")

    assert main(["lake", "maintain", "--lake", lake, "--retention-hours", "3"]) == 2
    refused = capsys.readouterr().err
    assert "shorter than the longest run (4.0 h)" in refused and run_id in refused
    assert "set it to at least 4" in refused and refused.count("\n") == 1
    assert main(["lake", "maintain", "--lake", lake, "--retention-hours", "5"]) == 0
