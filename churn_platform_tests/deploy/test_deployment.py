"""A deployment shaped like a team's, for real: Dagster on a throw-away PostgreSQL, and the
webserver, the daemon and the code location as three processes (docs/deployment.md).

What decides the outcomes below: the daemon only submits runs; each run's process is a
child of the code server, which starts it when the daemon dequeues the run. So a run in
flight does not need the daemon, and the code server watches the run's process.

Each test has a broker of its own: automated runs produce scores to `churn-scores`, which
other tests read on the session's broker.
"""

from __future__ import annotations

import re
import signal
import time
import uuid
from datetime import UTC, datetime

import dagster as dg
import polars as pl
import psutil
import pytest
import sqlalchemy.exc
from dagster._core.scheduler.instigation import InstigatorType, TickStatus
from dagster_postgres.utils import DagsterPostgresException
from threadpoolctl import threadpool_limits

from churn_platform.cli import main
from churn_platform.defs.ingestion.assets import EXTRACT_JOB
from churn_platform.defs.ml.schedules import TRAINING_CRON_ENV
from churn_platform.defs.resources.drift import THRESHOLD_ENV
from churn_platform.events.simulator import SimulatorConfig, produce_simulation
from churn_platform.features.materialize import read_features
from churn_platform.kafka.admin import ensure_topic
from churn_platform.kafka.broker import EmbeddedBroker
from churn_platform.kafka.producer import EventProducer
from churn_platform.lake.store import Lake
from churn_platform.ml import registry
from churn_platform.ml.score import read_scores
from churn_platform.runner import PathOptions, run_platform
from churn_platform.testing.deployment import HOST, Deployment, offsets_in_lake
from churn_platform.testing.lakes import event, message
from churn_platform.testing.topics import topic_contents

SENSOR = "customer_events_sensor"
BY_SENSOR = {"dagster/sensor_name": SENSOR}
BY_AUTOMATION = {"dagster/from_automation_condition": "true"}
FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE}
# Dagster's PostgreSQL storage retries a connection 5 times, after 0.2, 0.6, 1.4, 3 and 6.2 s
# (± 0.2 s each): an outage longer than ~11 s outlasts the retries of a write
LONG_OUTAGE_S = 20
BACKLOG = 300_000  # an extract of a few seconds, in one process (workers start at 400k)

RUNS_QUERY = "query { runsOrError { ... on Runs { results { runId status } } } }"
FAILURE_QUERY = """
query ($runId: ID!) {
  logsForRun(runId: $runId) {
    ... on EventConnection {
      events {
        __typename
        ... on MessageEvent { message }
        ... on ErrorEvent { error { message causes { message } } }
      }
    }
  }
}
"""


def platform_environment(broker: EmbeddedBroker, topic: str, lake: Lake, postgres, database):
    return {
        **postgres.environment(database),
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        "CHURN_EVENTS_TOPIC": topic,
        "CHURN_LAKE": lake.uri,
        # no drift-triggered training and no nightly training while the test watches
        THRESHOLD_ENV: "1000",
        TRAINING_CRON_ENV: "0 0 1 1 *",
    }


def wait_for(what: str, condition, deployment: Deployment, timeout: float = 120):
    """Poll `condition` until it returns something; a database error (the test's own
    queries, while PostgreSQL restarts) only means: ask again."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = condition()
        except (sqlalchemy.exc.DBAPIError, DagsterPostgresException):
            found = None
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {timeout:.0f} s\n{deployment.logs()}")
        time.sleep(0.2)


def runs(instance: dg.DagsterInstance, **tags: str) -> list[dg.DagsterRun]:
    """Oldest first."""
    return list(reversed(instance.get_runs(dg.RunsFilter(tags=tags) if tags else None)))


def finished(instance: dg.DagsterInstance, run_id: str) -> dg.DagsterRun | None:
    run = instance.get_run_by_id(run_id)
    return run if run.status in FINISHED else None


def ui_statuses(deployment: Deployment) -> dict[str, str]:
    results = deployment.graphql(RUNS_QUERY)["runsOrError"]["results"]
    return {r["runId"]: r["status"] for r in results}


def ui_failure_text(deployment: Deployment, run_id: str) -> str:
    """Every message and error (with its causes) the UI shows for a run."""
    events = deployment.graphql(FAILURE_QUERY, runId=run_id)["logsForRun"]["events"]
    parts = []
    for shown in events:
        parts.append(shown.get("message") or "")
        error = shown.get("error")
        if error:
            parts += [error["message"], *(c["message"] for c in error["causes"])]
    return "\n".join(parts)


def offsets_in_topic(broker: EmbeddedBroker, topic: str) -> set[tuple[int, int]]:
    contents = topic_contents(broker.settings, topic)
    return {(p, offset) for p, messages in contents.items() for offset, _, _ in messages}


def run_worker_pid(instance: dg.DagsterInstance, run_id: str) -> int:
    """The pid of a run's process, from the code server's "Started process for run" event."""
    for record in instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.ENGINE_EVENT
    ).records:
        found = re.search(r"Started process for run \(pid: (\d+)\)", record.event_log_entry.message)
        if found:
            return int(found.group(1))
    raise AssertionError(f"run {run_id} has no 'Started process for run' event")


def sensor_state(instance: dg.DagsterInstance):
    states = instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
    return next(s for s in states if s.instigator_name == SENSOR)


def produce_backlog(broker: EmbeddedBroker, topic: str, count: int, first: int) -> None:
    """`count` small valid login events, fast (the simulator makes ~40k a second)."""
    now = int(time.time() * 1000)
    with EventProducer(broker.settings) as producer:
        for n in range(first, first + count):
            customer = b"c%d" % (n % 5000)
            value = b'{"event_id":"e%d","customer_id":"%s","event_type":"login","ts":%d}' % (
                n,
                customer,
                now - n,
            )
            producer.send(topic, value, customer.decode())


def extracting(instance: dg.DagsterInstance, seen: set[str]) -> str | None:
    """A sensor's extract run, not one of `seen`, inside its extract step."""
    for run in runs(instance, **BY_SENSOR):
        if run.run_id not in seen and run.status == dg.DagsterRunStatus.STARTED:
            started = instance.get_records_for_run(
                run.run_id, of_type=dg.DagsterEventType.STEP_START
            ).records
            if started:
                return run.run_id
    return None


def ui_after_outage(deployment: Deployment, run_id: str) -> int:
    """How many requests fail before the UI answers again after PostgreSQL came back.

    The webserver keeps one pooled connection per storage (Dagster's optimize_for_webserver,
    no pre-ping): the first query on one from before the outage fails (HTTP 500), and
    SQLAlchemy then replaces the pool. So each storage fails once: the runs list (run
    storage) and the run's log (event log storage) are asked until both answer."""
    failed = 0
    for _ in range(10):
        try:
            deployment.graphql(RUNS_QUERY)
            deployment.graphql(FAILURE_QUERY, runId=run_id)
            return failed
        except AssertionError as exc:
            assert "the webserver answered 500" in str(exc), exc
            failed += 1
    raise AssertionError("the UI kept failing after PostgreSQL came back")


def outcome(deployment: Deployment, instance, run_id: str) -> tuple[str, str, int]:
    """How the run ended and what its log says, as the UI shows them; and how many requests
    the UI failed first."""
    run = wait_for("end of the run", lambda: finished(instance, run_id), deployment, 180)
    stale = ui_after_outage(deployment, run_id)
    assert ui_statuses(deployment)[run_id] == run.status.value
    return run.status.value, ui_failure_text(deployment, run_id), stale


# about 70 s: ~10 s to start the three, two extracts of 300k messages (one across a
# restart, one across a 20 s outage), and the extract that catches up
@pytest.mark.timeout(400)
def test_postgresql_restarts_and_outages_under_extract_runs_lose_no_event(
    tmp_path, postgres, postgres_database, monkeypatch, capsys
):
    """PostgreSQL goes away while the sensor's extract is inside its step: a restart (what
    maintenance does, down for a fraction of a second), then an outage longer than Dagster's
    retries. Each run ends in a state the UI explains, never stuck in STARTED; the
    webserver, the daemon and the code server ride it out; the lake ends with every message
    once, however far each run got."""
    topic = "customer-events"
    lake = Lake(str(tmp_path / "lake"))
    outcomes: dict[str, str] = {}
    database = f'connection to server at "{postgres.host}", port {postgres.port}'
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker:
        ensure_topic(broker.settings, topic, partitions=3)
        produce_backlog(broker, topic, BACKLOG, first=0)
        env = platform_environment(broker, topic, lake, postgres, postgres_database)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        deployment = Deployment(tmp_path / "deployment", env)
        try:
            deployment.start_all()
            with deployment.instance() as instance:
                first = wait_for("extract step", lambda: extracting(instance, set()), deployment)
                postgres.restart()
                status, log, stale = outcome(deployment, instance, first)
                # every write waited for its connection: nothing to explain
                assert status == "SUCCESS" and stale <= 3, log
                outcomes["pg_ctl restart"] = f"{status}; the UI failed {stale} request(s) first"

                produce_backlog(broker, topic, BACKLOG, first=BACKLOG)
                second = wait_for(
                    "next extract step", lambda: extracting(instance, {first}), deployment
                )
                postgres.stop()
                time.sleep(LONG_OUTAGE_S)
                postgres.start()
                status, log, stale = outcome(deployment, instance, second)
                # a write gave up, and the run's log says so, naming the database: a lost
                # progress line (the run goes on) or a lost step event (the run fails)
                assert database in log and "too many retries for DB connection" in log, log
                assert status in {"SUCCESS", "FAILURE"} and stale <= 3
                outcomes[f"{LONG_OUTAGE_S} s outage"] = (
                    f"{status}, its log naming the database; the UI failed {stale} request(s) first"
                )
                assert {n: p.poll() for n, p in deployment.processes.items()} == dict.fromkeys(
                    deployment.processes
                ), deployment.logs()

                # live traffic goes on; the extracts it brings read whatever is left
                produce_backlog(broker, topic, 1000, first=2 * BACKLOG)
                expected = offsets_in_topic(broker, topic)
                wait_for(
                    "lake holding every message",
                    lambda: set(offsets_in_lake(lake, topic)) == expected,
                    deployment,
                )
                in_lake = offsets_in_lake(lake, topic)
                assert max(in_lake.values()) == 1 and len(in_lake) == len(expected)

                # and `churn-platform deployment check` finds the deployment in order
                for name in ("CHURN_CODE_SERVER_HOST", "CHURN_CODE_SERVER_PORT", "DAGSTER_HOME"):
                    monkeypatch.setenv(name, deployment.env[name])
                capsys.readouterr()
                assert main(["deployment", "check"]) == 0
                storage, location = capsys.readouterr().out.splitlines()
                assert storage.startswith(f"ok  storage: database '{postgres_database}' on ")
                assert location == (
                    f"ok  code location churn_platform: code server at {HOST}:"
                    f"{deployment.grpc_port}, 1 repository"
                )
        finally:
            deployment.stop()
    print(f"extract runs in flight: {outcomes}; {len(expected):,} messages in the lake once each")


HISTORY_CUSTOMERS = 400
HISTORY_DAYS = 120
LIVE_CUSTOMERS = 5
QUEUE_WAIT_S = 3


def produce_live_logins(broker: EmbeddedBroker, topic: str, customers: list[str]) -> datetime:
    """A login now for each customer; returns when they were sent."""
    sent = datetime.now(UTC)
    with EventProducer(broker.settings) as producer:
        for customer in customers:
            value = message(event(f"{customer}-live-{uuid.uuid4().hex}", customer, "login", sent))
            producer.send(topic, value, customer)
    return sent


# about 100 s: a champion trained on PostgreSQL (~25 s), the three processes (~10 s), and
# five runs of the deployment (each starts a Python process, ~4 s before it runs)
@pytest.mark.timeout(600)
def test_a_killed_daemon_loses_no_run_no_cursor_and_no_event(
    tmp_path, postgres, postgres_database, monkeypatch
):
    topic = "customer-events"
    lake = Lake(str(tmp_path / "lake"))
    today = datetime.now(UTC).date()
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker:
        history = SimulatorConfig(
            customers=HISTORY_CUSTOMERS, days=HISTORY_DAYS, seed=23, end=datetime.now(UTC)
        )
        produce_simulation(broker.settings, topic, history, partitions=3)
        env = platform_environment(broker, topic, lake, postgres, postgres_database)
        # this test is about a killed daemon, not the model: on this small world (a holdout
        # of ~550 rows, ~45 churners) the gate's "not worse than the baseline" rule at 95%
        # refused the candidate in 1 of 4 runs (upper bound -0.0025); at 99% it judges
        # the same difference as noise
        env["CHURN_GATE_CONFIDENCE"] = "0.99"
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        deployment = Deployment(tmp_path / "deployment", env)

        # a champion, trained by the project's own path as runs of this instance
        with threadpool_limits(1), deployment.instance() as instance:
            trained = run_platform(
                instance, options=PathOptions(engine="polars", score=False), log=lambda _: None
            )
        assert trained.get("champion_version"), trained.get("stopped")
        champion = registry.read_champion(lake).version

        try:
            deployment.start_all()
            with deployment.instance() as instance:
                # the sensor's extract (nothing new: the training path read the topic) ...
                (extract,) = wait_for("sensor run", lambda: runs(instance, **BY_SENSOR), deployment)
                wait_for("extract end", lambda: finished(instance, extract.run_id), deployment)
                # ... then automation's run of today's features and scores, killed daemon or not
                automated = wait_for(
                    "automated run computing today's features",
                    lambda: next(
                        (
                            r
                            for r in runs(instance, **BY_AUTOMATION)
                            if instance.get_records_for_run(
                                r.run_id, of_type=dg.DagsterEventType.STEP_START
                            ).records
                        ),
                        None,
                    ),
                    deployment,
                )
                deployment.kill("daemon", signal.SIGKILL)
                killed_into = (
                    time.time() - instance.get_run_record_by_id(automated.run_id).start_time
                )
                done = wait_for(
                    "automated run end", lambda: finished(instance, automated.run_id), deployment
                )
                assert done.status == dg.DagsterRunStatus.SUCCESS, deployment.logs()
                assert done.tags["dagster/partition"] == today.isoformat()
                scores = instance.get_latest_materialization_event(dg.AssetKey("churn_scores"))
                assert scores.run_id == done.run_id
                cursor = sensor_state(instance).instigator_data.cursor

                # with no daemon, a run launched from the UI waits in the queue
                queued_id = deployment.graphql_client().submit_job_execution(EXTRACT_JOB)
                time.sleep(QUEUE_WAIT_S)
                assert instance.get_run_by_id(queued_id).status == dg.DagsterRunStatus.QUEUED

                deployment.start("daemon")
                restarted_at = time.time()
                queued = wait_for(
                    "queued run end", lambda: finished(instance, queued_id), deployment
                )
                assert queued.status == dg.DagsterRunStatus.SUCCESS
                # the sensor's cursor came back from PostgreSQL: nothing moved, nothing requested
                state = sensor_state(instance)
                first_tick = wait_for(
                    "sensor tick after the restart",
                    lambda: next(
                        iter(
                            instance.get_ticks(
                                state.instigator_origin_id, state.selector_id, after=restarted_at
                            )[-1:]
                        ),
                        None,
                    ),
                    deployment,
                )
                assert first_tick.status == TickStatus.SKIPPED
                assert "no new data" in first_tick.skip_reason
                assert state.instigator_data.cursor == cursor
                assert len(runs(instance, **BY_SENSOR)) == 1

                # new events: the restarted daemon takes them to today's features and scores
                before = read_features(lake, today).sort("customer_id").head(LIVE_CUSTOMERS)
                logins = dict(zip(before["customer_id"], before["login_count_7d"], strict=True))
                sent = produce_live_logins(broker, topic, list(logins))

                def caught_up() -> bool:
                    if any(r.status not in FINISHED for r in runs(instance)):
                        return False
                    now = read_features(lake, today).filter(pl.col("customer_id").is_in(logins))
                    return all(
                        row["login_count_7d"] == logins[row["customer_id"]] + 1
                        for row in now.iter_rows(named=True)
                    )

                wait_for("today's features with the live logins", caught_up, deployment, 180)
                statuses = {r.run_id: r.status.value for r in runs(instance)}
                shown = ui_statuses(deployment)

                # a run worker killed mid-extract (as an OOM kill would): the code server, its
                # parent, marks the run failed and says why, the pool slot it held is freed,
                # and the next extract reads what the killed one left
                seen = {r.run_id for r in runs(instance, **BY_SENSOR)}
                produce_backlog(broker, topic, BACKLOG, first=10_000_000)
                victim = wait_for("extract step", lambda: extracting(instance, seen), deployment)
                psutil.Process(run_worker_pid(instance, victim)).kill()
                killed_at = time.monotonic()
                killed_run = wait_for(
                    "killed run's end", lambda: finished(instance, victim), deployment, 60
                )
                explained = ui_failure_text(deployment, victim)
                expected = offsets_in_topic(broker, topic)
                wait_for(
                    "lake holding every message after the killed extract",
                    lambda: set(offsets_in_lake(lake, topic)) == expected,
                    deployment,
                    180,
                )
                recovery_s = time.monotonic() - killed_at

                def after_the_kill() -> list[dg.DagsterRun] | None:
                    # an extract chained with today's scoring ends after its commit
                    later = [r for r in runs(instance, **BY_SENSOR) if r.run_id not in seen]
                    return later if all(r.status in FINISHED for r in later) else None

                recovered = wait_for("the extracts after the kill", after_the_kill, deployment, 120)
        finally:
            deployment.stop()

        # every message of the topic is in the lake, once
        expected = offsets_in_topic(broker, topic)
        in_lake = offsets_in_lake(lake, topic)
        assert set(in_lake) == expected and max(in_lake.values()) == 1
        after = read_scores(lake, today)
        rows = after.filter(pl.col("customer_id").is_in(logins))
        assert rows.height == LIVE_CUSTOMERS
        assert (rows["scored_at"] > sent).all() and set(rows["model_version"]) == {champion}

    # the UI shows every run as the instance has it, and none failed
    assert shown == statuses
    assert set(statuses.values()) == {"SUCCESS"}, statuses
    # the killed worker's run: failed, with the reason in the log the UI shows
    assert killed_run.status == dg.DagsterRunStatus.FAILURE
    assert f"Run execution process for {victim}" in explained, explained
    assert "was terminated by signal 9 (SIGKILL)" in explained, explained
    assert recovered[-1].status == dg.DagsterRunStatus.SUCCESS, [r.status for r in recovered]
    print(
        f"daemon SIGKILLed {killed_into:.1f} s into the automated run {automated.run_id[:8]}: "
        "it succeeded anyway; "
        f"{len(statuses)} runs, all SUCCESS; a run worker SIGKILLed mid-extract: FAILURE, "
        f"explained, {len(recovered) - 1} extract(s) after it, the lake complete "
        f"{recovery_s:.0f} s after the kill; "
        f"{len(expected):,} messages in the lake once each"
    )
