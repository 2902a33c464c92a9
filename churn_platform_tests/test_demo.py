"""The newcomer's path: `churn-platform demo --json` and `churn-platform extract`, end to end."""

from __future__ import annotations

import json

from churn_platform.cli import main


def test_demo_json_reports_what_it_did(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the demo writes under ./var/demo
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    code = main(
        ["demo", "--json", "--customers", "150", "--days", "100", "--bad-fraction", "0.005"]
    )
    assert code == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert "Traceback" not in captured.err
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
    lake = tmp_path / "var" / "demo" / "lake"
    assert (lake / "raw" / "customer_events" / "_delta_log").is_dir()
    assert not (lake / "raw" / "_ledger").exists()
    # 100 days is too short for the time split: features yes, no model, and it says why
    assert summary["customers_with_features"] > 0
    assert "champion_version" not in summary and "customers_scored" not in summary
    stopped = summary["stopped"]
    assert stopped.startswith("no model: not enough history to train"), stopped
    assert "(101 days, complete through" in stopped and "at least 109 days" in stopped
    assert "CHURN_HORIZON_DAYS" in stopped
    assert f"stopped              {stopped}" not in captured.err  # JSON: the log went to stderr
    assert "no model: not enough history" in captured.err


def test_more_malformed_input_than_the_limit_stops_with_one_line(tmp_path, monkeypatch, capsys):
    """2% malformed messages against the 1% limit: one line naming the rate, where the rejects
    are and the setting; no stack trace, nothing trained; a higher limit lets it through."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    argv = ["demo", "--customers", "100", "--days", "15", "--bad-fraction", "0.02"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    assert "Test raised an exception" not in captured.err + captured.out
    (line,) = [x for x in captured.err.splitlines() if x.startswith("churn-platform demo:")]
    assert "the extract quarantined 1.9" in line or "the extract quarantined 2.0" in line
    assert "max_rejected_rate of 1.00%" in line and "--max-rejected-rate" in line
    assert "var/demo/lake/quarantine/customer_events" in line
    assert "Churn Platform demo" not in captured.out
    assert main([*argv, "--max-rejected-rate", "0.05", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["events_quarantined"] > 0


def test_default_demo_runs_the_whole_pipeline(tmp_path, monkeypatch, capsys):
    """`make demo`'s defaults: extract → features → training set → model → champion → scores.

    Also the quality promise of docs/architecture.md (model lifecycle): on the simulator's default demo
    data the champion's holdout ROC AUC exceeds 0.80 and the logistic baseline.
    """
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    assert main(["demo", "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["champion_version"] == summary["candidate_version"]
    assert summary["gate_passed"] is True
    assert summary["champion_holdout_roc_auc"] > 0.80
    assert summary["champion_holdout_roc_auc"] > summary["baseline_holdout_roc_auc"]
    assert summary["champion_top_decile_lift"] > 3.0
    assert summary["customers_scored"] == summary["customers_with_features"] > 1000
    assert summary["scores_produced_to_kafka"] == summary["customers_scored"]
    assert sum(summary["risk_bands"].values()) == summary["customers_scored"]
    top = summary["top_at_risk"]
    assert len(top) == 10
    assert [r["churn_probability"] for r in top] == sorted(
        (r["churn_probability"] for r in top), reverse=True
    )
    assert summary["checks_failed"] == 0 and summary["checks_passed"] > 0
    assert len(summary["training_as_of_dates"]) == 12
    champion = tmp_path / "var" / "demo" / "lake" / "models" / "churn" / "champion.json"
    assert json.loads(champion.read_text())["version"] == summary["champion_version"]


def test_extract_command_and_reset(kafka_settings, topic, tmp_path, capsys):
    from churn_platform.testing.topics import produce_round

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
    assert main([*argv, "--reset-offsets"]) == 0
    out = capsys.readouterr().out
    assert f"reset: removed {len(valid)} rows" in out
    assert json.loads(out.splitlines()[-1])["rows"] == len(valid)


def test_extract_command_names_a_bad_setting(capsys):
    assert main(["extract", "--bootstrap-servers", "no-port-here"]) == 2
    assert "KAFKA_BOOTSTRAP_SERVERS" in capsys.readouterr().err
