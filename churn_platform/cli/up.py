"""`churn-platform up`: the platform running live on this machine, until Ctrl-C.

Where the events come from decides what runs:

- no KAFKA_BOOTSTRAP_SERVERS: the embedded broker, which is `up`'s own, so it
  simulates a business there (a history, then live events) into
  `customer-events`, with a lake under the state directory;
- KAFKA_BOOTSTRAP_SERVERS names your cluster: `up` reads your topic
  (CHURN_EVENTS_TOPIC, default `customer-events`) and your lake (CHURN_LAKE,
  default var/lake). It never creates or produces to that topic, and no
  simulator runs: the user's data is sacred;
- your cluster with `--simulate`: the simulator writes only to the topic
  `churn-platform-simulation`, which `up` creates for itself, and the lake is
  `<state-dir>/simulation-lake` whatever CHURN_LAKE says, so that simulated
  events never mix with the data of a lake someone else reads.

Then a bootstrap in this process (extract, features for the training dates,
training, scores) recorded in the same Dagster instance as the UI so its runs
show there, then `dg dev` (sensors and automation on), the live simulator
(when simulating) and the streaming scorer with its Prometheus metrics, all
reading the same topic (CHURN_EVENTS_TOPIC in their environment, `--topic`
for the scorer). It prints
where to look once the UI answers, including, when the bootstrap made no
champion, why and how to make one.

Every process it starts runs in its own process group and is stopped (SIGTERM,
then SIGKILL) when this command ends. The first Ctrl-C (SIGINT) or SIGTERM
stops `up` in whatever phase it is, the bootstrap included: nothing is started
after it. Ctrl-C is how `up` is meant to end, so it exits 0 then; a failure
exits non-zero. When `up` itself is killed (SIGKILL: no clean-up runs), its
children get SIGTERM from the kernel and `up_reaper` stops everything else it
started, grandchildren and the broker included (see cli/up_reaper.py).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from churn_platform.cli import UserError
from churn_platform.cli.up_reaper import GRACE_S, LAST, SESSION_VARIABLE, SETTLE_S
from churn_platform.events.contract import EVENTS_TOPIC, SCORES_TOPIC
from churn_platform.instance import prepare_dagster_home
from churn_platform.kafka.admin import BrokerUnavailable, ensure_topic, list_topics
from churn_platform.kafka.broker import DEFAULT_PORT, EmbeddedBroker, free_port
from churn_platform.kafka.config import KafkaSettings
from churn_platform.lake.store import DEFAULT_LAKE_ROOT
from churn_platform.serving.metrics import DEFAULT_METRICS_HOST, DEFAULT_METRICS_PORT

UP_DIR = Path("var/up")
# enough history for the training set's twelve weekly as-of dates after its
# 28-day warm-up and 30-day label horizon, and enough customers for a model that
# passes the gate (how long the bootstrap takes: docs/benchmarks.md)
UP_CUSTOMERS = 2000
UP_HISTORY_DAYS = 150
UP_RATE = 20.0
UP_SEED = 42
UI_TIMEOUT_S = 180.0
# the only topic `up` simulates into on a cluster it does not own
SIMULATION_TOPIC = "churn-platform-simulation"
# the code location workspace.yaml loads, as the UI names it in its URLs
CODE_LOCATION = "churn_platform.definitions"
# options that size the simulated business: meaningless for a user's own events
SIMULATION_OPTIONS = {
    "customers": "--customers",
    "history_days": "--history-days",
    "rate": "--rate",
    "seed": "--seed",
}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "up",
        help="start the platform live: Dagster UI with sensors and automation, a trained "
        "model, the streaming scorer (Ctrl-C stops all)",
        description="Without KAFKA_BOOTSTRAP_SERVERS: starts the embedded broker, simulates a "
        "business into it (a history, then live events) and runs the platform on it. With "
        "KAFKA_BOOTSTRAP_SERVERS: runs the platform on your topic (CHURN_EVENTS_TOPIC, default "
        f"{EVENTS_TOPIC}) and lake (CHURN_LAKE), never producing to them; --simulate adds a "
        f"simulated business in its own topic {SIMULATION_TOPIC}. Either way it bootstraps the "
        "lake and a champion model with Dagster (runs show in the UI), then runs the Dagster UI "
        "with sensors and automation on and the streaming scorer until Ctrl-C.",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address the UI binds (default 127.0.0.1: this machine only; 0.0.0.0 exposes it)",
    )
    parser.add_argument("--ui-port", type=int, default=3000, help="Dagster UI port (default 3000)")
    parser.add_argument(
        "--broker-port",
        type=int,
        default=DEFAULT_PORT,
        help="embedded broker port (default 9092; unused with KAFKA_BOOTSTRAP_SERVERS)",
    )
    simulation = parser.add_argument_group(
        "simulation (always on the embedded broker; on your cluster only with --simulate)"
    )
    simulation.add_argument(
        "--simulate",
        action="store_true",
        help=f"on the cluster of KAFKA_BOOTSTRAP_SERVERS, simulate a business into the topic "
        f"{SIMULATION_TOPIC} (created by up) and a lake under --state-dir; your topic and "
        "CHURN_LAKE are left alone",
    )
    simulation.add_argument(
        "--rate", type=float, default=None, help=f"live events per second (default {UP_RATE:g})"
    )
    simulation.add_argument(
        "--customers",
        type=int,
        default=None,
        help=f"simulated customers (default {UP_CUSTOMERS})",
    )
    simulation.add_argument(
        "--history-days",
        type=int,
        default=None,
        help=f"days of history produced first (default {UP_HISTORY_DAYS}; a model needs "
        "about 120 or more)",
    )
    simulation.add_argument("--seed", type=int, default=None, help=f"(default {UP_SEED})")
    parser.add_argument(
        "--skip-bootstrap",
        action="store_true",
        help="start at once: no extract/features/training before the UI (the sensor still "
        "extracts; the scorer waits until a champion is materialized)",
    )
    parser.add_argument(
        "--state-dir",
        default=str(UP_DIR),
        help="logs of this session, and its lake when simulating (default %(default)s)",
    )
    parser.set_defaults(handler=run)


@dataclass(frozen=True)
class Simulation:
    """The simulated business `up` produces, when it simulates."""

    customers: int
    history_days: int
    rate: float
    seed: int

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Simulation:
        return cls(
            customers=UP_CUSTOMERS if args.customers is None else args.customers,
            history_days=UP_HISTORY_DAYS if args.history_days is None else args.history_days,
            rate=UP_RATE if args.rate is None else args.rate,
            seed=UP_SEED if args.seed is None else args.seed,
        )


@dataclass(frozen=True)
class Events:
    """The topic every part of the platform reads, and whether `up` simulates into it."""

    settings: KafkaSettings
    topic: str
    lake: str
    simulation: Simulation | None
    # True when `up` created the topic now (a simulation then produces its history)
    created: bool = False

    def describe(self) -> str:
        """One line: which topic is read, and whether its events are simulated."""
        if self.simulation is None:
            return (
                f"reading your topic {self.topic} on {self.settings.bootstrap_servers}; "
                "no simulator runs (up never produces to it)"
            )
        return (
            f"reading {self.topic} on {self.settings.bootstrap_servers}: its events are "
            f"simulated (live {self.simulation.rate:g}/s)"
        )


def refuse_simulation_options(args: argparse.Namespace, cluster: str | None) -> None:
    """Sizes of a simulation make no sense against a user's cluster without --simulate."""
    if not cluster or args.simulate:
        return
    given = [
        option for dest, option in SIMULATION_OPTIONS.items() if getattr(args, dest) is not None
    ]
    if given:
        raise UserError(
            f"{', '.join(given)} size a simulated business, but KAFKA_BOOTSTRAP_SERVERS is set: "
            "up reads your events there and simulates nothing; add --simulate for a simulation "
            f"in its own topic {SIMULATION_TOPIC}"
        )


def require_topic(settings: KafkaSettings, topic: str) -> None:
    """The user's events topic must exist: `up` does not create it (nor write to it)."""
    try:
        topics = list_topics(settings)
    except BrokerUnavailable as exc:
        raise UserError(f"{exc}; check KAFKA_BOOTSTRAP_SERVERS and the KAFKA_* settings") from None
    if topic not in topics or topics[topic].error is not None:
        raise UserError(
            f"topic {topic} does not exist on {settings.bootstrap_servers}: replay your events "
            f"into it with `churn-platform replay PATH --topic {topic}`, or set "
            "CHURN_EVENTS_TOPIC to the topic that holds them (up --simulate simulates into a "
            "topic of its own)"
        )


# prctl(2): the signal the kernel sends this process when the thread that forked it ends
PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A `preexec_fn` that makes the child receive `sig` when this process dies (Linux).

    The kernel sends it however this process dies, SIGKILL included, so each
    child stops as on Ctrl-C (dg dev then stops its own children). It is tied to
    the thread that starts the child: `up` starts them all from its main thread,
    which lives as long as the process. The libc function is looked up here, in
    the parent: between fork and exec the child only calls it. If this process
    died before the call took effect, the child exits at once instead of
    running parentless.
    """
    if not sys.platform.startswith("linux"):
        return None  # elsewhere the reaper alone stops them
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(sig))
        if os.getppid() != parent:
            os._exit(1)

    return preexec


class ProcessGroup:
    """Child processes, each in its own session, all stopped together (and when `up` dies)."""

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
                preexec_fn=die_with_parent(),  # only prctl between fork and exec
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
        # dg dev's own children share its group: make sure none outlives it
        for _name, child in self.children:
            _signal_group(child, signal.SIGKILL)


def _signal_group(child: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, sig)


class Reaper:
    """`up_reaper` in a session of its own: it stops what this session started once `up` is gone.

    `start` marks this process's environment (and so every process started
    from now on, and their children) with a new session id and starts the
    reaper with a pipe to it. The kernel closes the pipe when `up` dies, even
    by SIGKILL; the reaper then stops every process carrying the id.
    """

    def __init__(self, settle_s: float = SETTLE_S, grace_s: float = GRACE_S) -> None:
        self.session = uuid.uuid4().hex
        self.settle_s, self.grace_s = settle_s, grace_s
        self.process: subprocess.Popen | None = None
        self._saved: str | None = None

    def start(self, log: Path) -> None:
        self._saved = os.environ.get(SESSION_VARIABLE)
        os.environ[SESSION_VARIABLE] = self.session
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "churn_platform.cli.up_reaper"),
                    *(self.session, str(os.getpid()), f"{self.settle_s:g}", f"{self.grace_s:g}"),
                ],
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop_last(self, pid: int | None) -> None:
        """Stop `pid` (the broker) after everything else, so the others can say goodbye to it."""
        if self.process is not None and pid is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.write(f"{LAST} {pid}\n".encode())
                self.process.stdin.flush()

    def finish(self, timeout: float = 30.0) -> None:
        """After `up` stopped its children: the reaper checks nothing is left, then exits."""
        if self.process is None:
            return
        if self._saved is None:  # `up` run in-process (tests): leave the environment as it was
            os.environ.pop(SESSION_VARIABLE, None)
        else:
            os.environ[SESSION_VARIABLE] = self._saved
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


class Interrupts:
    """The first SIGINT/SIGTERM stops `up`, even when Dagster's handler took it.

    While a run executes in this process, Dagster replaces the SIGINT and
    SIGTERM handlers, turns the signal into a failed run
    (DagsterExecutionInterruptedError) and puts ours back afterwards: our
    handler never hears of that signal, and `up` used to go on with the UI, the
    simulator and the scorer. Python writes the number of every signal it
    handles to the wakeup fd, whichever Python handler then runs, so a thread
    reading it remembers the signal (`check` then stops `up` between phases).
    Until `up` acts on it, the thread raises SIGINT again every second, so that
    a later run of the same bootstrap is interrupted too rather than run to its end.
    """

    def __init__(self) -> None:
        self.received = threading.Event()
        self._settled = threading.Event()
        self._reader, self._writer = socket.socketpair()

    def install(self) -> None:
        self._writer.setblocking(False)
        signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)
        threading.Thread(target=self._watch, name="up-interrupts", daemon=True).start()

    def check(self) -> None:
        """Stop here (KeyboardInterrupt) if a signal came, whoever handled it."""
        if self.received.is_set():
            self.settle()
            raise KeyboardInterrupt("interrupted")

    def settle(self) -> None:
        # later signals are ignored so that they cannot cut the clean-up short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        self._settled.set()

    def _handle(self, signum, _frame) -> None:
        self.received.set()
        self.settle()
        raise KeyboardInterrupt(f"signal {signum}")

    def _watch(self) -> None:
        stops = {signal.SIGINT, signal.SIGTERM}
        while not self.received.is_set():
            try:
                data = self._reader.recv(64)
            except OSError:
                return
            if not data:
                return
            if any(number in stops for number in data):
                self.received.set()
        while not self._settled.wait(1.0):
            signal.raise_signal(signal.SIGINT)


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
    interrupts = Interrupts()
    interrupts.install()
    project = Path.cwd()
    if not (project / "workspace.yaml").exists():
        raise UserError(
            "run `churn-platform up` from the project directory (workspace.yaml not found)"
        )
    cluster = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    refuse_simulation_options(args, cluster)
    state = Path(args.state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    # runs of the bootstrap (this process) and of the UI go to the same instance
    dagster_home = prepare_dagster_home()
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    broker = None
    group = ProcessGroup()
    reaper = Reaper()
    try:
        for name in ("broker", "simulator", "dagster", "scorer", "reaper"):
            (state / f"{name}.log").unlink(missing_ok=True)
        # before anything starts: what starts from now on is stopped with up, however it ends
        reaper.start(state / "reaper.log")
        if cluster:
            events = on_cluster(args, state, step)
        else:
            broker = EmbeddedBroker(port=args.broker_port, log_path=state / "broker.log")
            try:
                broker.start()
            except BrokerUnavailable as exc:
                raise UserError(str(exc)) from exc
            reaper.stop_last(broker.pid)
            step(f"embedded broker on {broker.settings.bootstrap_servers} (up's own)")
            events = simulated(broker.settings, EVENTS_TOPIC, state / "lake", args)
        step(events.describe())
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": events.settings.bootstrap_servers,
            "CHURN_EVENTS_TOPIC": events.topic,
            "CHURN_LAKE": events.lake,
            "DAGSTER_HOME": str(dagster_home),
        }
        simulate = None
        if events.simulation is not None:
            simulate = produce_history(events, env, step)
        # the bootstrap in this process loads the same definitions as the children
        for name in ("KAFKA_BOOTSTRAP_SERVERS", "CHURN_EVENTS_TOPIC", "CHURN_LAKE"):
            os.environ[name] = env[name]
        interrupts.check()
        model = "none: bootstrap skipped"
        if not args.skip_bootstrap:
            model = bootstrap(events.lake, events.settings, step, events.topic, interrupts)
        interrupts.check()
        group.start(
            "dagster", dg_dev_command(args.host, args.ui_port, project), env, state / "dagster.log"
        )
        if simulate is not None:
            group.start(
                "simulator",
                [*simulate, "--live", "--rate", f"{events.simulation.rate:g}"],
                env,
                state / "simulator.log",
            )
        metrics_port = scorer_metrics_port()
        metrics = f"http://{DEFAULT_METRICS_HOST}:{metrics_port}/metrics"
        group.start(
            "scorer",
            [
                *(sys.executable, "-m", "churn_platform.cli", "serve", "--topic", events.topic),
                *("--metrics-port", str(metrics_port)),
            ],
            env,
            state / "scorer.log",
        )
        started = [name for name, _ in group.children]
        step(f"started {_and(_PROCESS_NAMES[n] for n in started)}")
        url = f"http://{_display_host(args.host)}:{args.ui_port}"
        if not _wait_for_ui(url, group, UI_TIMEOUT_S):
            _raise_if_exited(group, state)
            step(f"the UI does not answer yet after {UI_TIMEOUT_S:.0f} s; see {state}/dagster.log")
        else:
            step("the Dagster UI answers")
        logs = [*started, *(["broker"] if broker is not None else [])]
        print(where_to_look(url, events, state, model, logs, dagster_home, metrics), flush=True)
        while True:
            time.sleep(0.5)
            _raise_if_exited(group, state)
    except KeyboardInterrupt:
        pass
    finally:
        interrupts.settle()
        names = [name for name, _ in reversed(group.children)]
        group.stop()
        if broker is not None:
            broker.stop()
            names.append("broker")
        reaper.finish()
        if names or interrupts.received.is_set():
            print(f"stopped: {', '.join(names) or 'nothing was running'}", flush=True)
    return 0


def dg_dev_command(host: str, port: int, project: Path) -> list[str]:
    """`dg dev` on the project's workspace: webserver, daemon and code server, UI on host:port."""
    # `python -m` of this interpreter: the `dg` script may not be on PATH (an unactivated venv)
    return [
        *(sys.executable, "-m", "dagster_dg_cli.cli", "dev"),
        *("-h", host, "-p", str(port)),
        *("-w", str(project / "workspace.yaml")),
    ]


_PROCESS_NAMES = {
    "dagster": "dg dev",
    "simulator": "the live simulator",
    "scorer": "the streaming scorer",
}


def _and(items) -> str:
    items = list(items)
    return ", ".join(items[:-1]) + " and " + items[-1] if len(items) > 1 else "".join(items)


def on_cluster(args: argparse.Namespace, state: Path, step) -> Events:
    """The user's cluster: their topic and lake, or with --simulate a topic of `up`'s own."""
    settings = KafkaSettings.from_env()
    if not args.simulate:
        topic = os.environ.get("CHURN_EVENTS_TOPIC") or EVENTS_TOPIC
        require_topic(settings, topic)
        # your cluster keeps its data, so the lake (CHURN_LAKE or var/lake) is kept too
        lake = os.environ.get("CHURN_LAKE") or DEFAULT_LAKE_ROOT
        return Events(settings, topic, lake, simulation=None)
    user_topic = os.environ.get("CHURN_EVENTS_TOPIC") or EVENTS_TOPIC
    step(f"using the Kafka cluster at {settings.bootstrap_servers}")
    step(
        f"--simulate: simulated events go only to {SIMULATION_TOPIC}; your topic {user_topic} "
        "is neither read nor written"
    )
    if os.environ.get("CHURN_LAKE"):
        step(
            f"--simulate: the lake is {state / 'simulation-lake'}, not CHURN_LAKE "
            f"({os.environ['CHURN_LAKE']}), so simulated events stay out of your lake"
        )
    return simulated(settings, SIMULATION_TOPIC, state / "simulation-lake", args)


def simulated(settings: KafkaSettings, topic: str, lake: Path, args: argparse.Namespace) -> Events:
    """A topic `up` owns, and a fresh lake that holds only what the extract takes from it."""
    try:
        created = ensure_topic(settings, topic)
    except BrokerUnavailable as exc:
        raise UserError(str(exc)) from None
    shutil.rmtree(lake, ignore_errors=True)
    return Events(settings, topic, str(lake), Simulation.from_args(args), created=created)


def produce_history(events: Events, env: dict[str, str], step) -> list[str]:
    """The simulated history, when `up` just created its topic; the simulator's argv for live."""
    sim = events.simulation
    # the same business twice: its history first, then live from where it ends
    end = datetime.now(UTC).replace(microsecond=0).isoformat()
    simulate = [
        *(sys.executable, "-m", "churn_platform.cli", "simulate", "--topic", events.topic),
        *("--customers", str(sim.customers), "--days", str(sim.history_days)),
        *("--seed", str(sim.seed), "--end", end, "--no-progress"),
    ]
    if not events.created:
        # an earlier `up --simulate` left it: its history is there already, read again
        step(
            f"history: kept what {events.topic} already holds from an earlier up --simulate "
            "(delete the topic for a new business)"
        )
        return simulate
    produced = subprocess.run(
        simulate, env=env, check=True, stdout=subprocess.PIPE, text=True
    ).stdout.splitlines()
    step(
        f"history: {sim.customers:,} customers × {sim.history_days} days, "
        + (produced[0] if produced else "produced")
    )
    return simulate


def bootstrap(
    lake_root: str,
    settings: KafkaSettings,
    step,
    topic: str = EVENTS_TOPIC,
    interrupts: Interrupts | None = None,
) -> str:
    """What `churn-platform train` does (`runner.run_platform`), as runs of the UI's instance.

    Extract what the topic holds, then features → training → scores. Returns
    one line about the champion for the summary. Where the data cannot support
    a model, or a run fails, that is reported and `up` goes on: the runs are in
    the UI, which is where to look at them.
    """
    import dagster as dg

    from churn_platform.runner import StepFailed, run_platform

    environ = {
        "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "CHURN_LAKE": lake_root,
        "CHURN_EVENTS_TOPIC": topic,
    }
    try:
        with dg.DagsterInstance.get() as instance:
            summary = run_platform(instance, environ=environ, log=step)
    except (StepFailed, dg.DagsterError) as exc:
        if interrupts is not None:
            interrupts.check()  # the run failed because of Ctrl-C: stop, not "failed"
        step(f"bootstrap failed: {exc}")
        return f"none: the bootstrap failed ({exc})"
    if interrupts is not None:
        interrupts.check()
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
    return "none: " + summary.get("stopped", "no model was trained").removeprefix("no model: ")


def scorer_metrics_port() -> int:
    """The scorer's metrics port: the usual one when nothing listens there, else a free one."""
    with socket.socket() as probe:
        probe.settimeout(0.5)
        taken = probe.connect_ex((DEFAULT_METRICS_HOST, DEFAULT_METRICS_PORT)) == 0
    return free_port(DEFAULT_METRICS_HOST) if taken else DEFAULT_METRICS_PORT


def where_to_look(
    url: str,
    events: Events,
    state: Path,
    model: str,
    logs: list[str],
    dagster_home: Path,
    metrics: str | None = None,
) -> str:
    settings = events.settings
    watch = (
        f'{_shell_path(sys.executable)} -c "import confluent_kafka as k; '
        f"c = k.Consumer({{'bootstrap.servers': '{settings.bootstrap_servers}', "
        f"'group.id': 'churn-watch', 'auto.offset.reset': 'latest'}}); "
        f"c.subscribe(['{SCORES_TOPIC}']); "
        "[print(m.value().decode(), flush=True) for m in iter(lambda: c.poll(1), 0) "
        'if m and not m.error()]"'
    )
    if events.simulation is None:
        source = "your events, read only; no simulator runs"
    else:
        source = f"simulated events (live {events.simulation.rate:g}/s)"
    lines = [
        "",
        "Churn Platform is up:",
        f"  Dagster UI     {url}  (sensors and automation on)",
        f"    asset graph  {url}/asset-groups",
        f"    runs         {url}/runs",
        f"  Kafka          {settings.bootstrap_servers}",
        f"  events topic   {events.topic}: {source}",
        f"  scores         streaming scorer → {SCORES_TOPIC}",
        *(
            [f"    metrics      {metrics}  (Prometheus: events/s, latency, lag, champion)"]
            if metrics
            else []
        ),
        f"  champion       {model}",
    ]
    if model.startswith("none"):
        # the run executes in dg dev, with the topic, lake and Kafka settings of this session
        launch = (
            f"DAGSTER_HOME={_shell_path(str(dagster_home))} "
            f"KAFKA_BOOTSTRAP_SERVERS={settings.bootstrap_servers} "
            f"CHURN_EVENTS_TOPIC={events.topic} CHURN_LAKE={_shell_path(events.lake)} "
            f"{_shell_path(str(Path(sys.executable).parent / 'churn-platform'))} train "
            "--skip-extract"
        )
        lines += [
            f"    make one     {url}/locations/{CODE_LOCATION}/jobs/training_job (Materialize all),",
            f"                 or {launch}  (the scorer waits for a champion)",
        ]
    lines += [
        f"  lake           {events.lake}",
        f"  watch scores   {watch}",
        f"  logs           {state}/{{{','.join(logs)}}}.log",
        "Ctrl-C stops everything.",
        "",
    ]
    return "\n".join(lines)


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
