"""Ctrl-C while `churn-platform up` bootstraps stops it: nothing starts afterwards.

Dagster's in-process execution takes SIGINT itself while a run executes and
turns it into a failed run; `up` once took that for a failed bootstrap and
went on to start the UI, the simulator and the scorer. The first test is the
real `up`; the second shows the mechanism alone, with a handler that only takes
note of SIGINT as Dagster's does.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from churn_platform.kafka.broker import free_port
from churn_platform_tests.cli.test_up import (
    PROJECT,
    UP_READY,
    local_environment,
    reap,
    start_up,
)

# printed by the bootstrap before its features runs (one per as-of date, ~1 s each)
FEATURES_STARTED = "and churn_labels for"


@pytest.mark.timeout(300)
def test_ctrl_c_during_the_bootstrap_stops_up_before_anything_else_starts(tmp_path):
    state, dagster_home = tmp_path / "up", tmp_path / "dagster"
    process, output = start_up(
        [
            *("--ui-port", str(free_port()), "--broker-port", str(free_port())),
            *("--state-dir", str(state)),
            # enough days for several as-of dates of features: the bootstrap takes > 10 s
            *("--customers", "300", "--history-days", "130"),
        ],
        local_environment(dagster_home),
    )
    try:
        output.wait_for(FEATURES_STARTED, 180)
        time.sleep(2)  # inside a features_job run, where Dagster holds SIGINT
        process.send_signal(signal.SIGINT)  # what Ctrl-C does, once
        interrupted = time.monotonic()
        process.wait(60)
        took = time.monotonic() - interrupted
    finally:
        left = reap(process, output, dagster_home)
    assert process.returncode == 0, output.text
    assert took < 60, output.text
    assert "stopped: broker" in output.text, output.text
    assert "started dg dev" not in output.text, output.text
    assert UP_READY not in output.text, output.text
    assert not (state / "dagster.log").exists(), output.text
    assert left == [], [p.cmdline() for p in left]


# Dagster's handler during a run, as `capture_interrupts` installs it: it only takes note
SWALLOWED_SIGINT = """
import os, signal, time
from churn_platform.cli.up import Interrupts

interrupts = Interrupts()
interrupts.install()
noted = []
signal.signal(signal.SIGINT, lambda signum, frame: noted.append(signum))
os.kill(os.getpid(), signal.SIGINT)
print("received", interrupts.received.wait(2), flush=True)
time.sleep(2.5)  # a later run: SIGINT is raised again until up acts on it
print("noted", len(noted), flush=True)
try:
    interrupts.check()
except KeyboardInterrupt:
    print("stopped", flush=True)
"""


def test_a_signal_that_another_handler_took_is_remembered_and_raised_again():
    done = subprocess.run(
        [sys.executable, "-c", SWALLOWED_SIGINT],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "received True", done.stdout
    assert int(lines[1].split()[1]) >= 2, done.stdout  # the signal, then at least one more
    assert lines[2] == "stopped", done.stdout
