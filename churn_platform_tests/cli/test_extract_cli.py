"""`churn-platform extract`: the summary says the lag; progress lines go to stderr, not stdout."""

from __future__ import annotations

import json

from churn_platform.cli import main
from churn_platform.testing.topics import produce_round


def test_extract_prints_the_lag_after_the_run_and_keeps_json_on_stdout(
    kafka_settings, topic, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_settings.bootstrap_servers)
    for seed in (401, 402, 403):
        produce_round(kafka_settings, topic, seed=seed, bad_fraction=0.0)
    lake = str(tmp_path / "lake")
    capped = ["--max-messages-per-partition", "50"]
    assert main(["extract", "--topic", topic, "--lake", lake, *capped]) == 0
    line = capsys.readouterr().out.strip()
    assert "lag after the run p0=" in line and "p2=" in line, line

    # with --json, stdout is one JSON object whatever progress says (stderr)
    assert main(["extract", "--topic", topic, "--lake", lake, "--json"]) == 0
    printed = capsys.readouterr()
    result = json.loads(printed.out)
    assert result["lag"] == {"0": 0, "1": 0, "2": 0}


def test_the_flush_bounds_are_flags_and_a_bad_one_is_named(
    kafka_settings, topic, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_settings.bootstrap_servers)
    # ~24k messages: more than one 20k-message chunk, so a small bound flushes twice
    produce_round(kafka_settings, topic, seed=404, customers=1000, bad_fraction=0.0)
    files = {}
    for name, flags in (("default", []), ("rows", ["--flush-rows", "40"])):
        lake = str(tmp_path / name)
        assert main(["extract", "--topic", topic, "--lake", lake, "--json", *flags]) == 0
        files[name] = json.loads(capsys.readouterr().out)["files"]
    assert files["rows"] > files["default"] > 0
    for flag in ("--flush-rows", "--flush-bytes"):
        assert main(["extract", "--topic", topic, "--lake", str(tmp_path / "bad"), flag, "0"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and flag[2:].replace("-", "_") in err, err
