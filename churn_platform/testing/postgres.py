"""A throw-away PostgreSQL cluster for tests and benchmarks: Debian's binaries, a temporary directory, a loopback port.

No system service and no packaged cluster: `initdb` into a new temporary
directory, `pg_ctl start` on a free port of 127.0.0.1, password (SCRAM)
authentication over TCP, and at the end `pg_ctl stop` and the directory
removed. PostgreSQL refuses to run as root; as root (CI) the server runs as
the `postgres` user that Debian's package creates, or, when there is none, as
a system user created for it. A session killed before its teardown leaves its
cluster running; the next session stops and removes it. `make postgresql` installs the package when it
is missing (as `make chromium` does for the UI test); without it the tests
that need it (the `postgres` fixture of churn_platform_tests/conftest.py) are
skipped with that command in the reason.

The cluster's superuser has a password with characters a URL must escape, so
every test that builds a connection URL from it proves the quoting too.
Durability is off (`fsync`, `full_page_writes`): the cluster lives as long as
a test session, and a clean restart still keeps everything.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import psutil

from churn_platform.kafka.broker import free_port

SUPERUSER = "churn"
HOST = "127.0.0.1"
# the user that runs the server when the tests run as root
DEBIAN_SERVER_USER = "postgres"
FALLBACK_SERVER_USER = "churn-postgres"
INSTALL_HINT = "make postgresql (or apt-get install postgresql)"
ROOT_PREFIX = "churn-pg-"
# the test process that owns a cluster: a later session stops clusters whose owner is gone
OWNER_FILE = "owner.pid"
SETTINGS = {
    "listen_addresses": f"'{HOST}'",
    "max_connections": "200",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "log_min_messages": "warning",
    "log_line_prefix": "'%m [%p] %u@%d '",
}


def postgres_bin_dir() -> Path | None:
    """The newest Debian PostgreSQL's bin directory, else the one of `initdb` on PATH."""

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path.parent.name))

    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    for directory in debian:
        if (directory / "initdb").exists() and (directory / "pg_ctl").exists():
            return directory
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found else None


def server_user() -> str | None:
    """Who runs the server: None (this user) unless this is root."""
    if os.geteuid() != 0:
        return None
    for name in (DEBIAN_SERVER_USER, FALLBACK_SERVER_USER):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin"]
        + [FALLBACK_SERVER_USER],
        check=True,
        capture_output=True,
    )
    return FALLBACK_SERVER_USER


@dataclass
class PostgresCluster:
    """One running cluster: where it is, how to reach it, and how to stop and start it."""

    bin_dir: Path
    root: Path
    port: int
    password: str
    os_user: str | None
    host: str = HOST
    user: str = SUPERUSER
    databases: list[str] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "server.log"

    def _tool(self, name: str, *args: str, timeout: float = 120) -> str:
        command = [str(self.bin_dir / name), *args]
        if self.os_user:
            command = ["runuser", "-u", self.os_user, "--", *command]
        done = subprocess.run(
            command, cwd=self.root, capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{name} {' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
                f"\n{self.log_tail()}"
            )
        return done.stdout

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_file.read_text().splitlines()[-lines:])
        return ""

    def init(self) -> None:
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        self._own(pwfile)
        self._tool(
            "initdb",
            *("-D", str(self.data_dir), "-U", self.user, "--pwfile", str(pwfile)),
            *("--auth", "scram-sha-256", "-E", "UTF8", "--locale", "C", "--no-sync"),
        )
        pwfile.unlink()
        settings = {**SETTINGS, "port": str(self.port), "unix_socket_directories": f"'{self.root}'"}
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("".join(f"{name} = {value}\n" for name, value in settings.items()))

    def _own(self, path: Path) -> None:
        if self.os_user:
            entry = pwd.getpwnam(self.os_user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def start(self) -> None:
        self._tool(
            "pg_ctl",
            *("-D", str(self.data_dir), "-l", str(self.log_file)),
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self._tool("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self, mode: str = "fast") -> None:
        # -l here too: without it the new server writes to (and holds open) our pipe
        self._tool(
            "pg_ctl",
            *("-D", str(self.data_dir), "-l", str(self.log_file), "-m", mode),
            *("-w", "-t", "60", "restart"),
        )

    def url(
        self, database: str = "postgres", password: str | None = None, port: int | None = None
    ) -> str:
        secret = self.password if password is None else password
        return (
            f"postgresql://{quote(self.user, safe='')}:{quote(secret, safe='')}"
            f"@{self.host}:{port or self.port}/{quote(database, safe='')}"
        )

    def environment(self, database: str) -> dict[str, str]:
        """The variables deploy/dagster.postgres.yaml reads."""
        return {
            "DAGSTER_PG_HOST": self.host,
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_USER": self.user,
            "DAGSTER_PG_PASSWORD": self.password,
            "DAGSTER_PG_DB": database,
        }

    def connect(self, database: str = "postgres"):
        import psycopg2

        return psycopg2.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=database,
            connect_timeout=10,
        )

    def create_database(self, prefix: str = "dagster") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        connection = self.connect()
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()
        self.databases.append(name)
        return name

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.connect().close()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


def reap_orphans(bin_dir: Path, os_user: str | None) -> list[Path]:
    """Stop and remove the clusters of test sessions that were killed before they could."""
    reaped = []
    for root in Path(tempfile.gettempdir()).glob(f"{ROOT_PREFIX}*"):
        try:
            owner = int((root / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        with contextlib.suppress(psutil.Error):
            if psutil.Process(owner).status() != psutil.STATUS_ZOMBIE:
                continue  # a session still running
        command = [str(bin_dir / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate", "stop"]
        if os_user:
            command = ["runuser", "-u", os_user, "--", *command]
        subprocess.run(command, cwd=root, capture_output=True, timeout=60, check=False)
        shutil.rmtree(root, ignore_errors=True)
        reaped.append(root)
    return reaped


@contextlib.contextmanager
def throwaway_cluster() -> Iterator[PostgresCluster]:
    """initdb + pg_ctl start in a new temporary directory; stopped and removed after."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise FileNotFoundError(f"PostgreSQL is not installed: {INSTALL_HINT}")
    os_user = server_user()
    reap_orphans(bin_dir, os_user)
    # not under pytest's tmp_path: that is private to this user, and the server may be another
    root = Path(tempfile.mkdtemp(prefix=ROOT_PREFIX))
    (root / OWNER_FILE).write_text(str(os.getpid()))
    cluster = PostgresCluster(
        bin_dir=bin_dir,
        root=root,
        port=free_port(HOST),
        # a URL must escape @, / and :, so each use of the URL checks the quoting
        password=f"pw@{secrets.token_hex(8)}/x:y",
        os_user=os_user,
    )
    try:
        cluster._own(root)
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
