"""`churn-platform up` as a user runs it: UI answers, the sensor extracts, Ctrl-C leaves nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

from churn_platform.kafka.broker import free_port

PROJECT = Path(__file__).resolve().parents[2]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def ui_answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def test_up_serves_the_ui_extracts_via_the_sensor_and_stops_everything(tmp_path):
    ui_port, broker_port = free_port(), free_port()
    state = tmp_path / "up"
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dagster")}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "churn_platform.cli",
            "up",
            "--ui-port",
            str(ui_port),
            "--broker-port",
            str(broker_port),
            "--state-dir",
            str(state),
            "--customers",
            "100",
            "--history-days",
            "5",
            "--rate",
            "50",
        ],
        cwd=PROJECT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def ui_up() -> bool:
            assert process.poll() is None, f"`up` exited early: {process.stdout.read()}"
            return ui_answers(ui_port)

        wait_for(ui_up, 120, "the Dagster UI")
        ledger = state / "lake" / "raw" / "_ledger" / "customer-events.json"
        # no human: the sensor sees the topic move and an extract run commits the ledger
        wait_for(ledger.exists, 120, "a sensor-triggered extract")
        assert sum(json.loads(ledger.read_text())["offsets"].values()) > 0
        descendants = psutil.Process(process.pid).children(recursive=True)
        assert len(descendants) >= 3  # broker, simulator, dagster dev (+ its daemon and webserver)
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert "stopped: dagster, simulator, broker" in output
    time.sleep(1)
    alive = [p for p in descendants if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert alive == [], [p.cmdline() for p in alive]
