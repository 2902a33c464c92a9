"""The newcomer's path: `churn-platform demo --json` and `churn-platform extract`, end to end."""

from __future__ import annotations

import json

from churn_platform.cli import main


def test_demo_json_reports_what_it_did(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the demo writes under ./var/demo
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    code = main(["demo", "--json", "--customers", "150", "--days", "20", "--bad-fraction", "0.005"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    for key in (
        "events_produced",
        "events_valid_produced",
        "events_extracted",
        "events_quarantined",
        "lake_root",
    ):
        assert key in summary
    assert summary["events_extracted"] == summary["events_valid_produced"] > 1000
    assert (
        summary["events_quarantined"]
        == summary["events_produced"] - summary["events_valid_produced"]
        > 0
    )
    assert sum(summary["offsets"].values()) == summary["events_produced"]
    assert summary["lake_files"] > 0
    assert (
        tmp_path / "var" / "demo" / "lake" / "raw" / "_ledger" / "customer-events.json"
    ).exists()


def test_extract_command_and_reset(kafka_settings, topic, tmp_path, capsys):
    from churn_platform_tests.ingestion.test_extract import produce_round

    valid, _ = produce_round(kafka_settings, topic, seed=500, bad_fraction=0.0)
    argv = [
        "extract",
        "--bootstrap-servers",
        kafka_settings.bootstrap_servers,
        "--topic",
        topic,
        "--lake",
        str(tmp_path / "lake"),
        "--json",
    ]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["rows"] == len(valid)
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["messages"] == 0
    assert main([*argv, "--reset-ledger"]) == 0
    out = capsys.readouterr().out
    assert "reset: removed" in out
    assert json.loads(out.splitlines()[-1])["rows"] == len(valid)


def test_extract_command_names_a_bad_setting(capsys):
    assert main(["extract", "--bootstrap-servers", "no-port-here"]) == 2
    assert "KAFKA_BOOTSTRAP_SERVERS" in capsys.readouterr().err
