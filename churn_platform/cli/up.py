"""`churn-platform up`: the platform running live on this machine, until Ctrl-C.

In order: the embedded broker (unless KAFKA_BOOTSTRAP_SERVERS names a cluster),
a history of simulated events, a bootstrap in this process (extract, features
for the training dates, training, scores) recorded in the same Dagster
instance as the UI so its runs show there, then `dagster dev` (sensors and
automation on), the live simulator continuing that history, and the streaming
scorer. It prints where to look once the UI answers.

Every process it starts runs in its own process group and is stopped (SIGTERM,
then SIGKILL) when this command ends, however it ends.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from churn_platform.cli import UserError
from churn_platform.events.contract import EVENTS_TOPIC, SCORES_TOPIC
from churn_platform.instance import prepare_dagster_home
from churn_platform.kafka.admin import BrokerUnavailable, ensure_topic
from churn_platform.kafka.broker import DEFAULT_PORT, EmbeddedBroker
from churn_platform.kafka.config import KafkaSettings
from churn_platform.lake.store import DEFAULT_LAKE_ROOT

UP_DIR = Path("var/up")
# enough history for the training set's twelve weekly as-of dates after its
# 28-day warm-up and 30-day label horizon, and enough customers for a model that
# passes the gate; about 55 s of bootstrap on two cores
UP_CUSTOMERS = 2000
UP_HISTORY_DAYS = 150
UI_TIMEOUT_S = 180.0


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "up",
        help="start the broker, live events, a trained model, the streaming scorer and the "
        "Dagster UI (Ctrl-C stops all)",
        description="Starts the embedded broker (unless KAFKA_BOOTSTRAP_SERVERS is set), produces "
        "a simulated history, bootstraps the lake and a champion model with Dagster (runs show in "
        "the UI), then runs the Dagster UI with sensors and automation on, the live simulator and "
        "the streaming scorer until Ctrl-C.",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address the UI binds (default 127.0.0.1: this machine only; 0.0.0.0 exposes it)",
    )
    parser.add_argument("--ui-port", type=int, default=3000, help="Dagster UI port (default 3000)")
    parser.add_argument(
        "--broker-port", type=int, default=DEFAULT_PORT, help="broker port (default 9092)"
    )
    parser.add_argument(
        "--rate", type=float, default=20.0, help="live events per second (default 20)"
    )
    parser.add_argument(
        "--customers",
        type=int,
        default=UP_CUSTOMERS,
        help=f"simulated customers (default {UP_CUSTOMERS})",
    )
    parser.add_argument(
        "--history-days",
        type=int,
        default=UP_HISTORY_DAYS,
        help=f"days of history produced first (default {UP_HISTORY_DAYS}; a model needs "
        "about 120 or more)",
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--skip-bootstrap",
        action="store_true",
        help="start at once: no extract/features/training before the UI (the sensor still "
        "extracts; the scorer waits until a champion is materialized)",
    )
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


def _interrupt(signum, _frame) -> None:
    # the first SIGINT/SIGTERM unwinds whatever runs (the bootstrap included);
    # later ones are ignored so that they cannot cut the clean-up short
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


class Timeline:
    """Prints each step with the seconds since `up` started."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def __call__(self, message: str) -> None:
        print(f"[{self.elapsed:5.1f} s] {message}", flush=True)


def run(args: argparse.Namespace) -> int:
    step = Timeline()
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    project = Path.cwd()
    if not (project / "workspace.yaml").exists():
        raise UserError(
            "run `churn-platform up` from the project directory (workspace.yaml not found)"
        )
    state = Path(args.state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    # runs of the bootstrap (this process) and of the UI go to the same instance
    dagster_home = prepare_dagster_home()
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    broker = None
    group = ProcessGroup()
    try:
        if external:
            # your cluster keeps its data, so the lake (CHURN_LAKE or var/lake) is kept too
            settings = KafkaSettings.from_env()
            lake = os.environ.get("CHURN_LAKE") or DEFAULT_LAKE_ROOT
            step(f"using the Kafka cluster at {settings.bootstrap_servers}")
        else:
            # the embedded broker starts empty, so the lake starts empty too
            shutil.rmtree(state / "lake", ignore_errors=True)
            lake = str(state / "lake")
            for name in ("broker", "simulator", "dagster", "scorer"):
                (state / f"{name}.log").unlink(missing_ok=True)
            try:
                broker = EmbeddedBroker(
                    port=args.broker_port, log_path=state / "broker.log"
                ).start()
            except BrokerUnavailable as exc:
                raise UserError(str(exc)) from exc
            settings = broker.settings
            step(f"embedded broker on {settings.bootstrap_servers}")
        ensure_topic(settings, EVENTS_TOPIC)
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
            "CHURN_LAKE": lake,
            "DAGSTER_HOME": str(dagster_home),
        }
        # the same business twice: its history first, then live from where it ends
        end = datetime.now(UTC).replace(microsecond=0).isoformat()
        simulate = [
            *(sys.executable, "-m", "churn_platform.cli", "simulate"),
            *("--customers", str(args.customers), "--days", str(args.history_days)),
            *("--seed", str(args.seed), "--end", end, "--no-progress"),
        ]
        produced = subprocess.run(
            simulate, env=env, check=True, stdout=subprocess.PIPE, text=True
        ).stdout.splitlines()
        step(
            f"history: {args.customers:,} customers × {args.history_days} days, "
            + (produced[0] if produced else "produced")
        )
        os.environ["KAFKA_BOOTSTRAP_SERVERS"] = settings.bootstrap_servers
        os.environ["CHURN_LAKE"] = lake
        model = "bootstrap skipped: materialize training_job in the UI for a champion"
        if not args.skip_bootstrap:
            model = bootstrap(lake, settings, step)
        group.start(
            "dagster",
            [
                *(sys.executable, "-m", "dagster", "dev"),
                *("-h", args.host, "-p", str(args.ui_port)),
                *("-w", str(project / "workspace.yaml")),
            ],
            env,
            state / "dagster.log",
        )
        group.start(
            "simulator",
            [*simulate, "--live", "--rate", str(args.rate)],
            env,
            state / "simulator.log",
        )
        group.start(
            "scorer",
            [sys.executable, "-m", "churn_platform.cli", "serve"],
            env,
            state / "scorer.log",
        )
        step("started dagster dev, the live simulator and the streaming scorer")
        url = f"http://{_display_host(args.host)}:{args.ui_port}"
        if not _wait_for_ui(url, group, UI_TIMEOUT_S):
            _raise_if_exited(group, state)
            step(f"the UI does not answer yet after {UI_TIMEOUT_S:.0f} s; see {state}/dagster.log")
        else:
            step("the Dagster UI answers")
        print(where_to_look(url, settings, args.rate, lake, state, model), flush=True)
        while True:
            time.sleep(0.5)
            _raise_if_exited(group, state)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        names = [name for name, _ in reversed(group.children)]
        group.stop()
        if broker is not None:
            broker.stop()
            names.append("broker")
        print(f"stopped: {', '.join(names) or 'nothing was running'}", flush=True)
    return 0


def bootstrap(lake_root: str, settings: KafkaSettings, step) -> str:
    """Extract the history, then features → training → scores, as runs of the UI's instance.

    Returns one line about the champion for the summary. A failure is reported
    and `up` goes on: the failed run is in the UI, which is where to look at it.
    """
    # Beam warns on the root logger that optional GCP clients are missing: noise here
    logging.getLogger().addHandler(logging.NullHandler())
    import dagster as dg

    from churn_platform.demo import _model_pipeline, extract_events
    from churn_platform.lake.store import Lake

    lake = Lake(lake_root)
    try:
        with dg.DagsterInstance.get() as instance:
            result = extract_events(lake, settings, EVENTS_TOPIC, instance)
            rows = result.asset_materializations_for_node("raw_customer_events")[0].metadata
            step(f"extracted {rows['rows'].value:,} events into the lake (Dagster run)")
            summary = _model_pipeline(lake, settings, EVENTS_TOPIC, instance, step)
    except (RuntimeError, dg.DagsterError) as exc:
        step(f"bootstrap failed: {exc}")
        return f"none: the bootstrap failed ({exc})"
    if summary.get("champion_version"):
        step(
            f"champion {summary['champion_version']} (holdout ROC AUC "
            f"{summary['champion_holdout_roc_auc']:.3f}); "
            f"{summary.get('customers_scored', 0):,} customers scored"
        )
        return (
            f"{summary['champion_version']}, holdout ROC AUC "
            f"{summary['champion_holdout_roc_auc']:.3f}"
        )
    if summary.get("gate_reasons"):
        return "none: the candidate failed its gate (" + "; ".join(summary["gate_reasons"]) + ")"
    return f"none: not enough history to train (try --history-days {UP_HISTORY_DAYS})"


def where_to_look(
    url: str, settings: KafkaSettings, rate: float, lake: str, state: Path, model: str
) -> str:
    watch = (
        f'{_shell_path(sys.executable)} -c "import confluent_kafka as k; '
        f"c = k.Consumer({{'bootstrap.servers': '{settings.bootstrap_servers}', "
        f"'group.id': 'churn-watch', 'auto.offset.reset': 'latest'}}); "
        f"c.subscribe(['{SCORES_TOPIC}']); "
        "[print(m.value().decode(), flush=True) for m in iter(lambda: c.poll(1), 0) "
        'if m and not m.error()]"'
    )
    return "\n".join(
        [
            "",
            "Churn Platform is up:",
            f"  Dagster UI     {url}  (sensors and automation on)",
            f"    asset graph  {url}/asset-groups",
            f"    runs         {url}/runs",
            f"  Kafka          {settings.bootstrap_servers}  {EVENTS_TOPIC} (live, {rate:g}/s)"
            f" → streaming scorer → {SCORES_TOPIC}",
            f"  champion       {model}",
            f"  lake           {lake}",
            f"  watch scores   {watch}",
            f"  logs           {state}/{{dagster,simulator,scorer,broker}}.log",
            "Ctrl-C stops everything.",
            "",
        ]
    )


def _shell_path(path: str) -> str:
    try:
        relative = Path(path).relative_to(Path.cwd())
    except ValueError:
        return shlex.quote(path)
    return shlex.quote(str(relative))


def _display_host(host: str) -> str:
    # a wildcard bind is reachable on loopback; show the address a browser can open
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def _wait_for_ui(url: str, group: ProcessGroup, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(name == "dagster" for name, _ in group.exited()):
            return False
        try:
            with urllib.request.urlopen(f"{url}/server_info", timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


def _raise_if_exited(group: ProcessGroup, state: Path) -> None:
    dead = group.exited()
    if dead:
        name, code = dead[0]
        raise UserError(f"{name} exited with code {code}; see {state / (name + '.log')}")
