"""`up` killed with SIGKILL leaves nothing behind: the mechanism, with stand-ins for its processes.

A stand-in for `up` starts the reaper and, as `up` does, a child through
`ProcessGroup` (which asks the kernel for SIGTERM when `up` dies) and a
"broker" outside it (as `EmbeddedBroker` does: no such request). The child
starts a grandchild in a session of its own that ignores SIGTERM, as nothing
of ours should but a stuck process might. The stand-in is killed with SIGKILL:
everything it started must go, the grandchild by SIGKILL, the broker last; a
process it did not start must not be touched. The real `up` is killed in
test_up_kill.py.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil

from churn_platform_tests.cli.test_up import PROJECT

GRANDCHILD = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
time.sleep(600)
"""

CHILD = f"""
import subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c", {GRANDCHILD!r}], start_new_session=True)
print(grandchild.pid, flush=True)
time.sleep(600)
"""

# on SIGTERM it writes whether the grandchild was still alive: the broker must be last
BROKER = """
import os, signal, sys, time
report, grandchild = sys.argv[1], int(sys.argv[2])

def stop(signum, frame):
    try:
        os.kill(grandchild, 0)
        alive = "alive"
    except ProcessLookupError:
        alive = "gone"
    with open(report, "w") as out:
        out.write(alive)
    sys.exit(0)

signal.signal(signal.SIGTERM, stop)
time.sleep(600)
"""

FAKE_UP = f"""
import os, subprocess, sys, time
from pathlib import Path
from churn_platform.cli.up import ProcessGroup, Reaper

state = Path(sys.argv[1])
reaper = Reaper(settle_s=1, grace_s=2)
reaper.start(state / "reaper.log")
group = ProcessGroup()
child = group.start("child", [sys.executable, "-c", {CHILD!r}], dict(os.environ), state / "c.log")
deadline = time.monotonic() + 30
while not (state / "c.log").read_text().strip() and time.monotonic() < deadline:
    time.sleep(0.05)
grandchild = int((state / "c.log").read_text())
broker = subprocess.Popen(
    [sys.executable, "-c", {BROKER!r}, str(state / "broker-saw"), str(grandchild)],
    start_new_session=True,
)
reaper.stop_last(broker.pid)
print(child.pid, grandchild, broker.pid, reaper.process.pid, flush=True)
time.sleep(600)
"""


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_everything_up_started_stops_after_a_sigkill_and_nothing_else(tmp_path: Path):
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    up = subprocess.Popen(
        [sys.executable, "-c", FAKE_UP, str(tmp_path)],
        cwd=PROJECT,
        stdout=subprocess.PIPE,
        text=True,
    )
    started: list[int] = []
    try:
        child, grandchild, broker, reaper = (int(x) for x in up.stdout.readline().split())
        started += [child, grandchild, broker, reaper]
        assert all(alive(pid) for pid in started)

        up.kill()  # SIGKILL: `up` runs no clean-up
        up.wait(10)
        killed = time.monotonic()
        while any(alive(pid) for pid in started) and time.monotonic() - killed < 30:
            time.sleep(0.1)
        took = time.monotonic() - killed
        left = [pid for pid in started if alive(pid)]
        assert left == [], (left, (tmp_path / "reaper.log").read_text())
        # settle 1 s, SIGTERM, SIGKILL after 2 s to the grandchild, then the broker
        assert took < 15, took
        assert alive(bystander.pid)  # never a process that up did not start
    finally:
        if up.poll() is None:
            up.kill()
        for pid in started:
            if alive(pid):
                psutil.Process(pid).kill()
        bystander.kill()
        bystander.wait(10)

    log = (tmp_path / "reaper.log").read_text()
    assert f"up (pid {up.pid}) has ended; stopping the" in log, log
    assert f"SIGKILL to 1 still running after 2 s: {grandchild}" in log, log
    assert (tmp_path / "broker-saw").read_text() == "gone"  # the broker went last


def test_the_reaper_names_a_process_by_its_program_not_its_path(tmp_path):
    """A deep install path (CI's is longer than ours) must not cut off what a process is."""
    from churn_platform.cli.up_reaper import describe

    deep = tmp_path.joinpath(*(["very-long-directory-name"] * 6))
    deep.mkdir(parents=True)
    program = deep / "tansu"
    program.symlink_to(sys.executable)
    process = subprocess.Popen([str(program), "-c", "import time; time.sleep(30)", "broker"])
    try:
        time.sleep(0.5)
        line = describe([psutil.Process(process.pid)])
        assert line.startswith(f"{process.pid} (tansu -c "), line
        assert line.endswith("broker)"), line
    finally:
        process.kill()
        process.wait(10)
