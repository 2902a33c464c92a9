"""Ctrl-C while `churn-platform up` bootstraps stops it: nothing starts afterwards.

Dagster's in-process execution takes SIGINT itself while a run executes and
turns it into a failed run; `up` once took that for a failed bootstrap and
went on to start the UI, the simulator and the scorer.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from churn_platform.kafka.broker import free_port
from churn_platform_tests.cli.test_up import PROJECT, UP_READY, Output, ours

FEATURES_STARTED = "materializing customer_features"


@pytest.mark.timeout(300)
def test_ctrl_c_during_the_bootstrap_stops_up_before_anything_else_starts(tmp_path):
    state, dagster_home = tmp_path / "up", tmp_path / "dagster"
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home)}
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "CHURN_LAKE", "CHURN_EVENTS_TOPIC"):
        env.pop(name, None)
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "churn_platform.cli", "up"),
            *("--ui-port", str(free_port()), "--broker-port", str(free_port())),
            *("--state-dir", str(state)),
            # enough days for several as-of dates of features, so a run is in progress
            *("--customers", "300", "--history-days", "100"),
        ],
        cwd=PROJECT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = Output(process)
    try:
        output.wait_for(FEATURES_STARTED, 180)
        time.sleep(1.5)  # inside a features_job run, where Dagster holds SIGINT
        process.send_signal(signal.SIGINT)  # what Ctrl-C does, once
        interrupted = time.monotonic()
        process.wait(60)
        took = time.monotonic() - interrupted
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        output.drain()
        time.sleep(1)
        left = ours(dagster_home)
        for leftover in left:
            with contextlib.suppress(psutil.Error):
                leftover.kill()
    assert process.returncode == 0, output.text
    assert took < 60, output.text
    assert "stopped: broker" in output.text, output.text
    assert "started dagster dev" not in output.text, output.text
    assert UP_READY not in output.text, output.text
    assert not (state / "dagster.log").exists(), output.text
    assert left == [], [p.cmdline() for p in left]
