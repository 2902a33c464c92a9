"""`churn-platform up`: broker + live simulator + Dagster UI, until Ctrl-C.

Every process it starts runs in its own process group and is stopped (SIGTERM,
then SIGKILL) when this command ends, however it ends.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from churn_platform.cli import UserError
from churn_platform.events.contract import EVENTS_TOPIC
from churn_platform.instance import prepare_dagster_home
from churn_platform.kafka.admin import BrokerUnavailable, ensure_topic
from churn_platform.kafka.broker import DEFAULT_PORT, EmbeddedBroker
from churn_platform.kafka.config import KafkaSettings
from churn_platform.lake.store import DEFAULT_LAKE_ROOT

UP_DIR = Path("var/up")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "up",
        help="start the broker, a live simulator and the Dagster UI (Ctrl-C stops all)",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address the UI binds (default 127.0.0.1)"
    )
    parser.add_argument("--ui-port", type=int, default=3000, help="Dagster UI port (default 3000)")
    parser.add_argument(
        "--broker-port", type=int, default=DEFAULT_PORT, help="broker port (default 9092)"
    )
    parser.add_argument(
        "--rate", type=float, default=20.0, help="live events per second (default 20)"
    )
    parser.add_argument(
        "--customers", type=int, default=2000, help="simulated customers (default 2000)"
    )
    parser.add_argument(
        "--history-days", type=int, default=30, help="history produced first (default 30)"
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--state-dir",
        default=str(UP_DIR),
        help="lake and logs of this session (default %(default)s)",
    )
    parser.set_defaults(handler=run)


class ProcessGroup:
    """Child processes, each in its own session, all stopped together."""

    def __init__(self) -> None:
        self.children: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            child = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.children.append((name, child))
        return child

    def exited(self) -> list[tuple[str, int]]:
        return [(name, c.returncode) for name, c in self.children if c.poll() is not None]

    def stop(self, timeout: float = 15.0) -> None:
        for _name, child in reversed(self.children):
            _signal_group(child, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for _name, child in self.children:
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(child, signal.SIGKILL)
                child.wait(5)
        # dagster dev's own children share its group: make sure none outlives it
        for _name, child in self.children:
            _signal_group(child, signal.SIGKILL)


def _signal_group(child: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, sig)


def run(args: argparse.Namespace) -> int:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    project = Path.cwd()
    if not (project / "workspace.yaml").exists():
        raise UserError(
            "run `churn-platform up` from the project directory (workspace.yaml not found)"
        )
    state = Path(args.state_dir).resolve()
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        # your cluster keeps its data, so the lake (CHURN_LAKE or var/lake) is kept too
        broker = None
        settings = KafkaSettings.from_env()
        lake = os.environ.get("CHURN_LAKE") or DEFAULT_LAKE_ROOT
    else:
        # the embedded broker starts empty, so the lake starts empty too
        shutil.rmtree(state / "lake", ignore_errors=True)
        lake = str(state / "lake")
        try:
            broker = EmbeddedBroker(port=args.broker_port, log_path=state / "broker.log").start()
        except BrokerUnavailable as exc:
            raise UserError(str(exc)) from exc
        settings = broker.settings
    group = ProcessGroup()
    try:
        ensure_topic(settings, EVENTS_TOPIC)
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
            "CHURN_LAKE": lake,
            "DAGSTER_HOME": str(prepare_dagster_home()),
        }
        # the same business twice: its history first, then live from where it ends
        simulate = [
            *(sys.executable, "-m", "churn_platform.cli", "simulate"),
            *("--customers", str(args.customers), "--days", str(args.history_days)),
            *("--seed", str(args.seed), "--no-progress"),
        ]
        subprocess.run(simulate, env=env, check=True, stdout=subprocess.DEVNULL)
        group.start(
            "simulator",
            [*simulate, "--live", "--rate", str(args.rate)],
            env,
            state / "simulator.log",
        )
        group.start(
            "dagster",
            [
                sys.executable,
                "-m",
                "dagster",
                "dev",
                "-h",
                args.host,
                "-p",
                str(args.ui_port),
                "-w",
                str(project / "workspace.yaml"),
            ],
            env,
            state / "dagster.log",
        )
        print(
            f"Churn Platform is up:\n"
            f"  Dagster UI   http://{args.host}:{args.ui_port}  (sensor customer_events_sensor is on)\n"
            f"  Kafka        {settings.bootstrap_servers}  topic {EVENTS_TOPIC}, live events at {args.rate}/s\n"
            f"  lake         {lake}\n"
            f"  logs         {state}/*.log\n"
            "Ctrl-C stops everything.",
            flush=True,
        )
        while not stop.wait(0.5):
            dead = group.exited()
            if dead:
                name, code = dead[0]
                raise UserError(f"{name} exited with code {code}; see {state / (name + '.log')}")
    finally:
        group.stop()
        if broker is not None:
            broker.stop()
        print("stopped: dagster, simulator, broker", flush=True)
    return 0
