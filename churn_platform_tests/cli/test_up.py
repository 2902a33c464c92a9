"""`churn-platform up` as a new user runs it, checked in a real browser.

One run of `up` (broker, a history big enough to train on, a bootstrap that
trains a champion, `dg dev`, the live simulator, the streaming scorer). Then, with
Debian's Chromium driven by Playwright: the asset graph shows every asset of
the code location, and a run that `customer_events_sensor` launched succeeded;
the one-liner `up` prints to watch scores shows the scorer's output; Ctrl-C
leaves no process behind. The asset graph's screenshot is saved under the
test's tmp_path and its path printed. Playwright never downloads a browser
here: `make test` installs Debian's `chromium`.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import psutil
import pytest

from churn_platform.kafka.broker import free_port

PROJECT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium")
SENSOR = "customer_events_sensor"
UP_READY = "Ctrl-C stops everything."


def asset_names() -> list[str]:
    """Every asset of the code location, as the UI names them."""
    from churn_platform.definitions import defs

    return sorted("/".join(key.path) for key in defs().resolve_all_asset_keys())


def shown_as(name: str, label: str) -> bool:
    """The UI shortens long names in the middle (`raw_custom…_events`)."""
    if "…" not in label:
        return label == name
    head, tail = label.split("…", 1)
    return name.startswith(head) and name.endswith(tail) and len(name) > len(label) - 1


class Output:
    """`up`'s merged stdout/stderr, read by a thread so the pipe never fills."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(process,), daemon=True).start()

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                raise AssertionError("`up` exited early:\n" + self.text)
            self.lines.append(line)
            if text in line:
                return
        raise AssertionError(f"no {text!r} from `up` after {timeout:.0f} s:\n" + self.text)

    def drain(self) -> None:
        while True:
            try:
                line = self._queue.get(timeout=5)
            except queue.Empty:
                return
            if line is None:
                return
            self.lines.append(line)

    def field(self, name: str) -> str:
        for line in self.lines:
            if line.strip().startswith(name + " "):
                return line.strip()[len(name) :].strip()
        raise AssertionError(f"`up` printed no {name!r} line:\n" + self.text)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def ours(dagster_home: Path) -> list[psutil.Process]:
    """Live processes started for this test's `up` (they all carry its DAGSTER_HOME)."""
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            home = process.environ().get("DAGSTER_HOME")
            if home == str(dagster_home) and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
    return found


def reap(process: subprocess.Popen, output: Output, dagster_home: Path) -> list[psutil.Process]:
    """Kill `up` if it still runs, and whatever of its processes is left; returns those left.

    For a `finally:` after a test stopped `up`, so that a failing run leaks nothing into the
    next tests; the caller fails on what is returned.
    """
    if process.poll() is None:
        process.kill()
        process.wait(10)
    output.drain()
    time.sleep(1)
    left = ours(dagster_home)
    for leftover in left:
        with contextlib.suppress(psutil.Error):
            leftover.kill()
    return left


# the user's own cluster, lake, topic and start date: `up` must use its embedded ones here
USER_SETTINGS = (
    "KAFKA_BOOTSTRAP_SERVERS",
    "CHURN_LAKE",
    "CHURN_EVENTS_TOPIC",
    "CHURN_FEATURES_START_DATE",
)


def local_environment(dagster_home: Path) -> dict[str, str]:
    """This process's environment for an `up` of its own: DAGSTER_HOME, no user settings."""
    env = {k: v for k, v in os.environ.items() if k not in USER_SETTINGS}
    env["DAGSTER_HOME"] = str(dagster_home)
    return env


def start_up(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, Output]:
    """`churn-platform up ARGS` in a process of its own, its output read as it comes."""
    process = subprocess.Popen(
        [sys.executable, "-m", "churn_platform.cli", "up", *args],
        cwd=PROJECT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return process, Output(process)


def read_lines(process: subprocess.Popen, count: int, timeout: float) -> list[str]:
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(
        target=lambda: [lines.put(line) for line in process.stdout], daemon=True
    ).start()
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        try:
            got.append(lines.get(timeout=max(0.1, deadline - time.monotonic())))
        except queue.Empty:
            raise AssertionError(f"{len(got)} of {count} lines after {timeout:.0f} s") from None
    return got


def sensor_run_succeeded(page, base: str, timeout: float) -> str:
    """Through the runs page: the id of a succeeded run launched by the sensor."""
    query = urllib.parse.urlencode(
        [("q[]", f"tag:dagster/sensor_name={SENSOR}"), ("q[]", "status:SUCCESS")]
    )
    links = page.locator("a[href^='/runs/']")
    deadline = time.monotonic() + timeout
    while True:
        page.goto(f"{base}/runs?{query}")
        with contextlib.suppress(Exception):
            links.first.wait_for(timeout=5_000)
            return links.first.get_attribute("href").removeprefix("/runs/")
        if time.monotonic() > deadline:
            raise AssertionError(f"no succeeded run launched by {SENSOR} after {timeout:.0f} s")
        time.sleep(3)


def show_asset_graph(page, base: str, names: list[str]) -> None:
    """The global asset lineage with every group expanded, as large as the window allows."""
    page.goto(f"{base}/asset-groups")
    page.get_by_role("button", name="Hide navigation").click()
    page.get_by_role("button", name="panel_show_right").click()  # the asset tree beside it
    page.locator("#zoom-slider-container").get_by_role("button", name="settings").click()
    expand = page.get_by_role("menuitem", name="Expand all groups")
    expand.wait_for(timeout=10_000)
    expand.click()
    page.keyboard.press("Escape")
    labels = page.locator("svg foreignObject [class*=assetName]")
    deadline = time.monotonic() + 30
    missing = names
    while missing and time.monotonic() < deadline:
        shown = labels.all_text_contents()
        missing = [n for n in names if not any(shown_as(n, label) for label in shown)]
        time.sleep(0.5)
    assert not missing, f"the asset graph does not show {missing}; it shows {shown}"
    # let the nodes fetch their statuses, so the screenshot shows what was materialized
    loading = page.locator("svg foreignObject").get_by_text("Loading")
    deadline = time.monotonic() + 20
    while loading.count() and time.monotonic() < deadline:
        time.sleep(0.5)


def show_reasons(page, base: str) -> None:
    """churn_scores' latest materialization: the ten most at risk with their reasons, and
    the reasons common in the high band, as a user opens them."""
    page.goto(f"{base}/assets/churn_scores?view=events")
    page.get_by_text("common_reasons").first.wait_for(timeout=30_000)
    row = page.locator("tr", has_text="top_at_risk").first
    row.get_by_text("Show Markdown").first.click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("why").first.wait_for(timeout=10_000)
    assert " (typical " in dialog.inner_text() or "plan: " in dialog.inner_text()
    page.keyboard.press("Escape")


# about 2 minutes on an idle 2-core machine; the limits leave room for a busy one
@pytest.mark.timeout(480)
def test_up_runs_everything_shows_it_in_the_ui_and_stops_everything(tmp_path, capsys):
    if CHROMIUM is None:
        message = "Debian's chromium is not installed (`make test` installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    names = asset_names()
    assert {"raw_customer_events", "churn_model", "churn_scores"} <= set(names)
    ui_port, broker_port = free_port(), free_port()
    state, dagster_home = tmp_path / "up", tmp_path / "dagster"
    started = time.monotonic()
    process, output = start_up(
        [
            *("--ui-port", str(ui_port), "--broker-port", str(broker_port)),
            *("--state-dir", str(state)),
            # smaller than the defaults (2000 × 150) but still trains a champion: 10 as-of dates
            *("--customers", "1000", "--history-days", "120"),
        ],
        local_environment(dagster_home),
    )
    watcher = None
    screenshot = tmp_path / "asset-graph.png"
    seconds: dict[str, float] = {}

    def mark(what: str) -> None:
        seconds[what] = round(time.monotonic() - started)

    try:
        output.wait_for(UP_READY, 300)
        mark("up ready")
        base = output.field("Dagster UI").split()[0]
        assert base == f"http://127.0.0.1:{ui_port}", output.text
        champion = output.field("champion")
        assert not champion.startswith("none"), output.text
        # bound to loopback unless --host says otherwise
        listening = {
            c.laddr.ip
            for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == ui_port
        }
        assert listening == {"127.0.0.1"}, listening

        # the printed one-liner shows the streaming scorer's output
        watcher = subprocess.Popen(
            ["bash", "-c", output.field("watch scores")],
            cwd=PROJECT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
            page = browser.new_page(viewport={"width": 1920, "height": 1080})
            # a new instance greets its first visitor with a newsletter dialog
            page.add_locator_handler(
                page.get_by_text("Join the Dagster community"),
                lambda: page.get_by_role("button", name="Skip").click(),
            )
            try:
                run_id = sensor_run_succeeded(page, base, timeout=120)
                page.goto(f"{base}/runs/{run_id}")
                page.get_by_text("Success", exact=True).first.wait_for(timeout=15_000)
                page.get_by_text(SENSOR).first.wait_for(timeout=15_000)
                mark("sensor run seen in the UI")
                show_asset_graph(page, base, names)
                mark("asset graph checked")
                show_reasons(page, base)
                mark("reasons seen in the UI")
            finally:
                page.screenshot(path=str(screenshot))
                browser.close()
                with capsys.disabled():
                    print(f"\n  screenshot of the UI: {screenshot}")

        scores = [json.loads(line) for line in read_lines(watcher, 3, timeout=30)]
        for score in scores:
            assert score["model_version"] and score["customer_id"], score
            assert isinstance(score["reasons"], list), score
            assert score["risk_band"] in ("low", "medium", "high", "inactive"), score
        mark("scores read")
        # the scorer's Prometheus endpoint, where `up` says it is: it scored, with the champion
        metrics_url = output.field("metrics").split()[0]
        assert metrics_url.startswith("http://127.0.0.1:"), output.text
        with urllib.request.urlopen(metrics_url, timeout=5) as response:
            metrics = response.read().decode()
        version = champion.split(",")[0]
        info = re.search(
            r'^churn_scorer_champion_info\{.*version="([^"]+)".*\} 1\.0$', metrics, re.M
        )
        assert info and info[1] == version, (version, metrics)
        scored = re.search(r"^churn_scorer_events_scored_total (\S+)$", metrics, re.M)
        assert scored and float(scored[1]) >= len(scores), metrics
    finally:
        if watcher is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(watcher.pid, signal.SIGKILL)
            watcher.wait(10)
        process.send_signal(signal.SIGINT)  # what Ctrl-C does
        try:
            process.wait(60)
        finally:
            output.drain()
            time.sleep(1)
            left = ours(dagster_home)
            for leftover in left:  # a failing run must not leak processes into the next tests
                with contextlib.suppress(psutil.Error):
                    leftover.kill()
    mark("stopped")
    with capsys.disabled():
        print("  seconds since start: " + ", ".join(f"{k} {v}" for k, v in seconds.items()))
    assert process.returncode == 0, output.text
    assert "stopped: scorer, simulator, dagster, broker" in output.text
    assert left == [], [p.cmdline() for p in left]
    assert re.search(r"champion \S+ \(holdout ROC AUC", output.text), output.text
