"""The three processes of a deployment, started the way docs/deployment.md says, for the tests.

`dagster code-server start` serves the code location over gRPC; `dagster-webserver`
and `dagster-daemon run` reach it through deploy/workspace.yaml; all three have a
DAGSTER_HOME holding deploy/dagster.postgres.yaml and the DAGSTER_PG_* variables of
the test's database. Each process has its own process group (the code server's run
workers are in its group), its output goes to a log file, and `stop()` ends what is
left of them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import dagster as dg

from churn_platform.defs.ingestion.assets import EXTRACT_POOL
from churn_platform.deploy import GRPC_WORKSPACE_YAML, LOCATION_NAME, POSTGRES_DAGSTER_YAML
from churn_platform.kafka.broker import free_port
from churn_platform.lake.raw import read_raw_events
from churn_platform.lake.store import Lake

BIN = Path(sys.executable).parent
# a run id that holds the extract pool's slot, as a long extract would
HOLDER = "a-longer-extract"
HOST = "127.0.0.1"
READY_TIMEOUT_S = 120


class Deployment:
    """DAGSTER_HOME, the environment and the processes of one deployment on this machine."""

    def __init__(self, root: Path, environ: dict[str, str]) -> None:
        self.root = root
        self.home = root / "dagster_home"
        self.home.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(POSTGRES_DAGSTER_YAML, self.home / "dagster.yaml")
        self.grpc_port = free_port(HOST)
        self.ui_port = free_port(HOST)
        self.env = {
            **os.environ,
            **environ,
            "DAGSTER_HOME": str(self.home),
            # whole lines in the logs, also from a process killed with SIGKILL
            "PYTHONUNBUFFERED": "1",
            "CHURN_CODE_SERVER_HOST": HOST,
            "CHURN_CODE_SERVER_PORT": str(self.grpc_port),
        }
        self.processes: dict[str, subprocess.Popen] = {}
        self.started: dict[str, int] = {}

    # --- the commands of docs/deployment.md -------------------------------------------

    def commands(self) -> dict[str, list[str]]:
        workspace = str(GRPC_WORKSPACE_YAML)
        return {
            "code-server": [
                *(str(BIN / "dagster"), "code-server", "start", "-m", "churn_platform.definitions"),
                *("-h", HOST, "-p", str(self.grpc_port), "--location-name", LOCATION_NAME),
            ],
            "webserver": [
                *(str(BIN / "dagster-webserver"), "-w", workspace),
                *("-h", HOST, "-p", str(self.ui_port)),
            ],
            "daemon": [str(BIN / "dagster-daemon"), "run", "-w", workspace],
        }

    def start(self, name: str) -> subprocess.Popen:
        self.started[name] = self.started.get(name, 0) + 1
        log = (self.root / f"{name}-{self.started[name]}.log").open("w")
        process = subprocess.Popen(
            self.commands()[name],
            cwd=self.root,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.processes[name] = process
        return process

    def start_all(self) -> None:
        """The code server first (the others load the location from it), then the rest."""
        self.start("code-server")
        self.wait_for_code_server()
        self.start("webserver")
        self.start("daemon")
        self.wait_for_webserver()

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        process.wait(30)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
            # whatever the group still holds (a run worker of the code server)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)

    def logs(self) -> str:
        parts = []
        for path in sorted(self.root.glob("*.log")):
            parts.append(f"--- {path.name} (last 40 lines)\n")
            parts.append("\n".join(path.read_text(errors="replace").splitlines()[-40:]))
        return "\n".join(parts)

    # --- readiness ------------------------------------------------------------------

    def _wait(self, what: str, ready) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            with contextlib.suppress(Exception):
                if ready():
                    return
            for name, process in self.processes.items():
                if process.poll() is not None and name in what:
                    raise AssertionError(f"{name} exited ({process.returncode}):\n{self.logs()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not ready after {READY_TIMEOUT_S} s:\n{self.logs()}")
            time.sleep(0.3)

    def wait_for_code_server(self) -> None:
        from dagster._grpc.client import DagsterGrpcClient

        client = DagsterGrpcClient(port=self.grpc_port, host=HOST)
        self._wait("code-server", lambda: client.ping("ready") is not None)

    def wait_for_webserver(self) -> None:
        def answers() -> bool:
            with urllib.request.urlopen(f"{self.url}/server_info", timeout=5) as response:
                return response.status == 200

        self._wait("webserver", answers)

    # --- what the UI and the instance say --------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.ui_port}"

    def graphql(self, query: str, **variables) -> dict:
        body = json.dumps({"query": query, "variables": variables}).encode()
        request = urllib.request.Request(
            f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise AssertionError(
                f"the webserver answered {exc.code}: {exc.read()[:2000]!r}"
            ) from exc
        assert "errors" not in answer, answer
        return answer["data"]

    def graphql_client(self):
        from dagster_graphql import DagsterGraphQLClient

        return DagsterGraphQLClient(HOST, port_number=self.ui_port)

    def instance(self) -> dg.DagsterInstance:
        """The deployment's instance, as this test process sees it (needs the PG env set)."""
        return dg.DagsterInstance.from_config(str(self.home))


# --- what the tests look at ------------------------------------------------------------


def offsets_in_lake(lake: Lake, topic: str) -> Counter:
    """(partition, offset) → how many times the lake's raw events hold that message."""
    table = read_raw_events(lake, [topic])
    return Counter(zip(table["_partition"].to_list(), table["_offset"].to_list(), strict=True))


def hold_extract_pool(instance: dg.DagsterInstance) -> None:
    storage = instance.event_log_storage
    storage.initialize_concurrency_limit_to_default(EXTRACT_POOL)
    assert storage.claim_concurrency_slot(EXTRACT_POOL, HOLDER, HOLDER).is_claimed


def release_extract_pool(instance: dg.DagsterInstance) -> None:
    instance.event_log_storage.free_concurrency_slot_for_step(HOLDER, HOLDER)


def waiting_for_extract_pool(instance: dg.DagsterInstance, count: int) -> set[str]:
    """Run ids waiting for the extract pool's slot, once there are `count` of them."""
    waiting = instance.event_log_storage.get_concurrency_info(EXTRACT_POOL).pending_run_ids
    return waiting if len(waiting) == count else set()
