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
