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
    # 20 days is too short to train on: features yes, no model, and no pretending
    assert summary["customers_with_features"] > 0
    assert "champion_version" not in summary and "customers_scored" not in summary


def test_default_demo_runs_the_whole_pipeline(tmp_path, monkeypatch, capsys):
    """`make demo`'s defaults: extract → features → training set → model → champion → scores.

    Also the quality promise of the README: on the simulator's default demo
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
