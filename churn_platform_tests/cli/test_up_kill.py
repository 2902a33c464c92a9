"""`churn-platform up` killed with SIGKILL leaves no process behind.

An OOM kill or a terminal's hard stop runs none of `up`'s clean-up; its
children used to live on under init (dagster dev with its webserver, daemon
and code server, the simulator, the scorer, the broker), found an hour later.
The real `up` (no bootstrap, a small history) runs until the UI answers and
the simulator and the scorer run; then SIGKILL, and every process it started,
Dagster's grandchildren and the embedded broker included, must be gone within
a bounded time. The mechanism alone is tested in test_up_reaper.py.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import time

import psutil
import pytest

from churn_platform.kafka.broker import free_port
from churn_platform_tests.cli.test_up import UP_READY, local_environment, ours, start_up

# the kernel's SIGTERM to up's children, 5 s for them to stop, SIGTERM/SIGKILL (10 s) to
# the rest, then the broker: about 4 s here; the bound leaves room for a busy machine
GONE_WITHIN_S = 45

ROLES = {
    "dg dev": ("dagster_dg_cli.cli", "dev"),
    "webserver": ("dagster_webserver",),
    "daemon": ("dagster._daemon",),
    "code server": ("dagster", "code-server"),
    "simulator": ("simulate", "--live"),
    "scorer": ("churn_platform.cli", "serve"),
    "broker": ("broker", "--listener-url"),
    "reaper": ("churn_platform.cli.up_reaper",),
}


def roles(processes: list[psutil.Process]) -> dict[str, int]:
    found = {}
    for process in processes:
        with contextlib.suppress(psutil.Error):
            argv = process.cmdline()
            for role, words in ROLES.items():
                if all(word in argv for word in words):
                    found[role] = process.pid
    return found


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.timeout(300)
def test_sigkill_of_up_leaves_no_process_behind(tmp_path, capsys):
    state, dagster_home = tmp_path / "up", tmp_path / "dagster"
    ui_port, broker_port = free_port(), free_port()
    process, output = start_up(
        [
            *("--skip-bootstrap", "--ui-port", str(ui_port), "--broker-port", str(broker_port)),
            *("--state-dir", str(state), "--customers", "200", "--history-days", "20"),
        ],
        local_environment(dagster_home),
    )
    left: list[psutil.Process] = []
    try:
        output.wait_for(UP_READY, 240)  # printed once the UI answers
        # the simulator produces and the scorer runs (waiting for a champion: no bootstrap)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            running = roles(ours(dagster_home))
            scorer_log = (
                (state / "scorer.log").read_text() if (state / "scorer.log").exists() else ""
            )
            if set(ROLES) <= set(running) and "no champion model" in scorer_log:
                break
            time.sleep(0.5)
        assert set(running) == set(ROLES), (running, output.text)
        metrics_port = int(output.field("metrics").split()[0].split(":")[2].split("/")[0])
        assert listening(ui_port) and listening(broker_port) and listening(metrics_port)

        process.send_signal(signal.SIGKILL)
        process.wait(10)
        killed = time.monotonic()
        while time.monotonic() - killed < GONE_WITHIN_S:
            left = ours(dagster_home)
            if not left:
                break
            time.sleep(0.25)
        took = time.monotonic() - killed
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        for leftover in ours(dagster_home):  # a failing run must not leak into the next tests
            with contextlib.suppress(psutil.Error):
                leftover.kill()
    reaper_log = (state / "reaper.log").read_text()
    assert left == [], ([p.cmdline() for p in left], reaper_log)
    assert not any(listening(port) for port in (ui_port, broker_port, metrics_port))
    # the reaper found what was left and stopped the broker after the others
    assert f"up (pid {process.pid}) has ended" in reaper_log, reaper_log
    signalled = [line for line in reaper_log.splitlines() if " SIGTERM to " in line]
    assert " SIGTERM to 1: " in signalled[-1] and "broker" in signalled[-1], reaper_log
    with capsys.disabled():
        print(f"\n  everything `up` started was gone {took:.1f} s after its SIGKILL")
