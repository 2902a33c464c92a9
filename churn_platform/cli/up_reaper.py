"""`up`'s reaper: whatever `up` started stops when `up` ends, even by SIGKILL.

A process killed with SIGKILL (the OOM killer, a terminal's hard stop) runs no
clean-up, and its children live on under init: `dg dev` with its webserver,
daemon and code server, the simulator, the scorer and the broker were found
alive an hour after such a kill. Two things now end them:

1. `up`'s own children (`dg dev`, the simulator, the scorer) ask the kernel for
   SIGTERM when `up` dies (Linux `PR_SET_PDEATHSIG`, see `up.die_with_parent`)
   and stop as they do on Ctrl-C: `dg dev` stops its webserver, daemon and
   code server itself. That covers direct children only: not the broker
   (started by `EmbeddedBroker`), nor a run or code server that outlives its parent.
2. This reaper. `up` sets `CHURN_PLATFORM_UP_SESSION` to a new id in its
   environment before it starts anything, so every process it starts, and
   every process those start, carries the id. The reaper runs in a session of
   its own and holds the reading end of a pipe whose only writer is `up`: the
   kernel closes it when `up` dies, however it dies (its parent pid changing is
   checked too). Then it gives the processes that carry the id a few seconds to
   stop by themselves, sends SIGTERM to the rest, SIGKILL to what is left after
   a grace period, and repeats until none is left; the broker comes last, so
   that the scorer can commit its offsets on its way out.

After a clean stop (Ctrl-C) `up` has stopped everything itself and the reaper
finds nothing. It only ever signals processes that carry this session's id:
never a broker, cluster or process that `up` did not start.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime

import psutil

SESSION_VARIABLE = "CHURN_PLATFORM_UP_SESSION"
# what `up` writes on the pipe: "last <pid>" names a process to stop after the others
LAST = "last"
# the children `up` started get SIGTERM from the kernel when it dies: time to stop on their own
SETTLE_S = 5.0
# then SIGTERM to whatever is left; SIGKILL after this long
GRACE_S = 10.0
GIVE_UP_S = 120.0


def marked(session: str, exclude: set[int]) -> list[psutil.Process]:
    """Live processes whose environment carries `session` (other users' are not readable)."""
    found = []
    for process in psutil.process_iter():
        if process.pid in exclude:
            continue
        try:
            if (
                process.environ().get(SESSION_VARIABLE) == session
                and process.status() != psutil.STATUS_ZOMBIE
            ):
                found.append(process)
        except psutil.Error:
            continue
    return found


def describe(processes: list[psutil.Process]) -> str:
    names = []
    for process in processes:
        try:
            argv = process.cmdline()
        except psutil.Error:
            argv = []
        # the program's name, not its path: a long install path must not hide what it is
        words = [os.path.basename(argv[0]), *argv[1:4]] if argv else []
        names.append(f"{process.pid} ({' '.join(words)[:80]})")
    return ", ".join(names)


def stop_session(
    session: str,
    last: set[int],
    log: Callable[[str], None],
    settle_s: float = SETTLE_S,
    grace_s: float = GRACE_S,
) -> int:
    """Stop every process of `session`, those in `last` after the others; returns how many."""
    me = {os.getpid()}
    deadline = time.monotonic() + GIVE_UP_S
    stopped = 0
    settle_until = time.monotonic() + settle_s
    for wave_is_last in (False, True):
        while time.monotonic() < deadline:
            found = [p for p in marked(session, me) if (p.pid in last) == wave_is_last]
            if not found:
                break
            if not wave_is_last and time.monotonic() < settle_until:
                time.sleep(0.2)  # the kernel's SIGTERM is being acted on
                continue
            log(f"SIGTERM to {len(found)}: {describe(found)}")
            _signal(found, signal.SIGTERM)
            _gone, alive = psutil.wait_procs(found, timeout=grace_s)
            if alive:
                log(f"SIGKILL to {len(alive)} still running after {grace_s:g} s: {describe(alive)}")
                _signal(alive, signal.SIGKILL)
                psutil.wait_procs(alive, timeout=5)
            stopped += len(found)
    return stopped


def _signal(processes: list[psutil.Process], sig: int) -> None:
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.send_signal(sig)


def wait_for_parent(parent: int, fd: int = 0) -> set[int]:
    """Block until `up` is gone (EOF on the pipe, or a new parent); returns the `last` pids."""
    last: set[int] = set()
    pending = b""
    while True:
        readable, _, _ = select.select([fd], [], [], 1.0)
        if readable:
            data = os.read(fd, 4096)
            if not data:
                return last
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                command, _, value = line.decode(errors="replace").partition(" ")
                if command == LAST and value.strip().isdigit():
                    last.add(int(value))
        if os.getppid() != parent:
            return last


def main(argv: list[str] | None = None) -> int:
    """`up_reaper SESSION PARENT_PID [SETTLE_S GRACE_S]`, its stdin a pipe from `up`."""
    args = argv if argv is not None else sys.argv[1:]
    session, parent = args[0], int(args[1])
    settle_s, grace_s = (float(a) for a in args[2:4]) if len(args) >= 4 else (SETTLE_S, GRACE_S)
    # its own session already keeps the terminal's signals away; be sure of it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    last = wait_for_parent(parent)

    def log(message: str) -> None:
        print(f"{datetime.now(UTC).isoformat(timespec='seconds')} {message}", flush=True)

    found = marked(session, {os.getpid()})
    if found:
        log(f"up (pid {parent}) has ended; stopping the {len(found)} processes it started")
        stopped = stop_session(session, last, log, settle_s, grace_s)
        log(f"done: {stopped} stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
