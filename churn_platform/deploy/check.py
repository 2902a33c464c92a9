"""Try a deployment's instance and workspace before anything starts (`churn-platform deployment check`).

Reads $DAGSTER_HOME/dagster.yaml and the workspace file as Dagster will, then
tries what they point at: PostgreSQL (the server answers, the user logs in, the
database exists, Dagster may make its tables there) and every gRPC code server
(it answers and its code location loads). Dagster itself reports the same
problems later as a stack trace from whichever process met them first; here
each is one line that names the setting holding the wrong value (the
environment variable, else the key in the file) and what to do. No password
is ever printed: every line is scrubbed of the passwords the files hold.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from churn_platform.deploy import GRPC_WORKSPACE_YAML, LOCATION_NAME, POSTGRES_DAGSTER_YAML
from churn_platform.environ import temporary_environ

DEFAULT_TIMEOUT_S = 5.0
PG_DEFAULT_PORT = 5432
PG_DRIVER = "postgresql+psycopg2"
HIDDEN = "***"
STORAGE_KEYS = ("run_storage", "event_log_storage", "schedule_storage")


@dataclass(frozen=True)
class Finding:
    """One line of the check: what is fine, or what is wrong and what to do."""

    ok: bool
    text: str


class Unset(Exception):
    """A setting reads an environment variable that is not set."""


@dataclass(frozen=True)
class Setting:
    """Where a value comes from: an environment variable named in a file, or the file."""

    key: str  # dotted path in the file
    file: Path
    env: str | None = None

    def __str__(self) -> str:
        if self.env:
            return f"{self.env} ({self.key} in {self.file})"
        return f"{self.key} in {self.file}"


def env_references(node: Any, key: str = "") -> Iterator[tuple[str, str]]:
    """Every `{env: NAME}` in a parsed YAML document: (dotted key, NAME)."""
    if isinstance(node, dict):
        if set(node) == {"env"} and isinstance(node["env"], str):
            yield key, node["env"]
            return
        for name, value in node.items():
            yield from env_references(value, f"{key}.{name}" if key else str(name))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from env_references(value, f"{key}[{i}]")


def unset_variables(
    document: Any, file: Path, environ: Mapping[str, str], readers: str
) -> list[Finding]:
    return [
        Finding(
            False,
            f"{name} is not set; {key} in {file} reads it: set it in the environment of {readers}",
        )
        for key, name in env_references(document)
        if not environ.get(name)
    ]


def resolve(node: Any, setting: Setting, environ: Mapping[str, str]) -> tuple[Any, Setting]:
    """A value as Dagster reads it (`{env: NAME}` from the environment) and where it came from."""
    if isinstance(node, dict) and set(node) == {"env"}:
        name = node["env"]
        if not environ.get(name):
            raise Unset(name)
        return environ[name], Setting(setting.key, setting.file, name)
    return node, setting


# --- PostgreSQL ---------------------------------------------------------------------------


@dataclass
class Postgres:
    """Where a storage setting points, and which setting gave each part."""

    host: str
    port: int
    user: str
    password: str
    database: str
    scheme: str
    params: dict[str, Any]
    settings: dict[str, Setting]
    scheme_default: bool = False

    def where(self) -> str:
        return f"PostgreSQL at {self.host}:{self.port}"

    def secrets(self) -> list[str]:
        return [s for s in {self.password, quote(self.password, safe="")} if s]


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)

    def add(self, ok: bool, text: str) -> None:
        self.findings.append(Finding(ok, text))

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.findings)

    def lines(self) -> list[Finding]:
        """The findings with every known password replaced by ***."""
        secrets = sorted({s for s in self.secrets if s}, key=len, reverse=True)
        cleaned = []
        for finding in self.findings:
            text = finding.text
            for secret in secrets:
                text = text.replace(secret, HIDDEN)
            cleaned.append(Finding(finding.ok, text))
        return cleaned


def secrets_in(node: Any, environ: Mapping[str, str], key: str = "") -> list[str]:
    """Every password a document holds or reads, and those inside database URLs."""
    if isinstance(node, dict) and set(node) == {"env"}:
        node = environ.get(node["env"], "")
    if isinstance(node, dict):
        return [s for name, value in node.items() for s in secrets_in(value, environ, str(name))]
    if isinstance(node, list):
        return [s for value in node for s in secrets_in(value, environ, key)]
    if not node or not isinstance(node, str | int):
        return []
    text = str(node)
    if key.endswith("password"):
        return [text, quote(text, safe="")]
    if key.endswith("_url"):
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            password = make_url(text).password
        except ArgumentError:
            return [text]  # not a URL: keep all of it out of the output
        return [password, quote(password, safe="")] if password else []
    return []


def postgres_configs(config: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """(key of the block, its postgres config) for every storage block on PostgreSQL."""
    found = []
    storage = config.get("storage") or {}
    if isinstance(storage, dict) and isinstance(storage.get("postgres"), dict):
        found.append(("storage.postgres", storage["postgres"]))
    for key in STORAGE_KEYS:
        block = config.get(key) or {}
        if isinstance(block, dict) and "postgres" in str(block.get("module", "")):
            found.append((f"{key}.config", block.get("config") or {}))
    return found


def postgres_from_config(
    key: str, block: Mapping[str, Any], file: Path, environ: Mapping[str, str]
) -> Postgres:
    """Raises ValueError (a line naming the setting) when the block cannot be a server."""
    if block.get("postgres_url") is not None:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        raw, setting = resolve(block["postgres_url"], Setting(f"{key}.postgres_url", file), environ)
        try:
            url = make_url(str(raw))
        except ArgumentError:
            raise ValueError(
                f"{setting} is not a database URL: write it as "
                f"{PG_DRIVER}://USER:PASSWORD@HOST:{PG_DEFAULT_PORT}/DATABASE "
                "(with the password URL-escaped)"
            ) from None
        return Postgres(
            host=url.host or "localhost",
            port=url.port or PG_DEFAULT_PORT,
            user=url.username or "",
            password=url.password or "",
            database=url.database or "",
            scheme=url.drivername,
            params=dict(url.query),
            settings=dict.fromkeys(
                ("host", "port", "user", "password", "database", "scheme"), setting
            ),
        )
    db = block.get("postgres_db")
    if not isinstance(db, dict):
        raise ValueError(f"{key} in {file} has neither postgres_url nor postgres_db: add one")
    values: dict[str, Any] = {}
    settings: dict[str, Setting] = {}
    for part, name, default in (
        ("host", "hostname", None),
        ("port", "port", PG_DEFAULT_PORT),
        ("user", "username", None),
        ("password", "password", ""),
        ("database", "db_name", None),
        ("scheme", "scheme", "postgresql"),
    ):
        setting = Setting(f"{key}.postgres_db.{name}", file)
        if name not in db:
            if default is None:
                raise ValueError(f"{setting} is missing: add it")
            values[part], settings[part] = default, setting
            continue
        values[part], settings[part] = resolve(db[name], setting, environ)
    try:
        values["port"] = int(values["port"])
    except (TypeError, ValueError):
        raise ValueError(f"{settings['port']} is not a port number: set a number") from None
    return Postgres(
        **{k: v if k == "port" else str(v) for k, v in values.items()},
        params=dict(db.get("params") or {}),
        settings=settings,
        scheme_default="scheme" not in db,
    )


def driver_problem(target: Postgres) -> str | None:
    """The line to print when SQLAlchemy cannot load the scheme's driver."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    setting = target.settings["scheme"]
    try:
        dialect = make_url(f"{target.scheme}://").get_dialect()
        if dialect.name != "postgresql":
            return f"{setting}: {target.scheme!r} is not PostgreSQL; use {PG_DRIVER}"
        dialect.import_dbapi()
    except (ArgumentError, NoSuchModuleError):
        return f"{setting}: SQLAlchemy knows no scheme {target.scheme!r}; use {PG_DRIVER}"
    except ImportError as exc:
        unset = " is not set, and" if target.scheme_default else ""
        return (
            f"{setting}{unset} {target.scheme!r} makes SQLAlchemy load {exc.name or 'a driver'}, "
            f"which is not installed (dagster-postgres brings psycopg2): use {PG_DRIVER}"
            + (
                f" (scheme: {PG_DRIVER}, as {POSTGRES_DAGSTER_YAML.name} has it)"
                if target.scheme_default
                else ""
            )
        )
    return None


def connection_problem(target: Postgres, message: str, timeout: float) -> str:
    """One line for psycopg2's OperationalError text: the setting, the fact, the fix."""
    s = target.settings
    where, user, db = target.where(), target.user, target.database
    lowered = message.lower()
    if "password authentication failed" in lowered:
        return (
            f"{s['password']}: {where} rejected the password of user {user!r}: set that user's "
            f"password (on the server: ALTER ROLE {user} PASSWORD '...')"
        )
    if "no password supplied" in lowered or "password is required" in lowered:
        return (
            f"{s['password']}: {where} wants a password for user {user!r} and none is set: set it"
        )
    if "does not exist" in lowered and "database" in lowered:
        return (
            f"{s['database']}: {where} has no database {db!r}: create it "
            f"(createdb -h {target.host} -p {target.port} -U {user} {db}) or name one that exists"
        )
    if "role" in lowered and "does not exist" in lowered:
        return (
            f"{s['user']}: {where} has no user {user!r}: create it (CREATE ROLE {user} LOGIN "
            "PASSWORD '...') or name one that exists"
        )
    if "connection refused" in lowered:
        return (
            f"{s['host']} and {s['port']}: nothing accepts connections at {target.host}:"
            f"{target.port}: start PostgreSQL there, or set the host and port of the server"
        )
    if "could not translate host name" in lowered or "name or service not known" in lowered:
        return f"{s['host']}: the host name {target.host!r} does not resolve: set the server's host name"
    if "timeout expired" in lowered:
        return (
            f"{s['host']} and {s['port']}: no answer from {target.host}:{target.port} within "
            f"{timeout:g} s (a firewall, or the wrong address): set the server's host and port"
        )
    if "pg_hba.conf" in lowered:
        return (
            f"{where} does not let user {user!r} connect from this machine to {db!r} "
            "(pg_hba.conf on the server): add a host line for it there"
        )
    first = message.strip().splitlines()[0] if message.strip() else "no reason given"
    return f"{s['host']}: {where} refused the connection: {first}"


def check_postgres(target: Postgres, timeout: float) -> Finding:
    import psycopg2

    problem = driver_problem(target)
    if problem:
        return Finding(False, problem)
    try:
        connection = psycopg2.connect(
            host=target.host,
            port=target.port,
            user=target.user,
            password=target.password,
            dbname=target.database,
            connect_timeout=max(1, math.ceil(timeout)),
            **{k: str(v) for k, v in target.params.items()},
        )
    except psycopg2.Error as exc:
        return Finding(False, connection_problem(target, str(exc), timeout))
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT current_setting('server_version'), to_regclass('runs') IS NOT NULL, "
                "has_schema_privilege(current_user, 'public', 'CREATE')"
            )
            version, has_tables, may_create = cursor.fetchone()
            runs = None
            if has_tables:
                cursor.execute("SELECT count(*) FROM runs")
                runs = cursor.fetchone()[0]
    finally:
        connection.close()
    where = f"database {target.database!r} on PostgreSQL {version} at {target.host}:{target.port}"
    if has_tables:
        return Finding(True, f"storage: {where} as {target.user!r}, Dagster's tables, {runs} runs")
    if not may_create:
        return Finding(
            False,
            f"{target.settings['user']}: user {target.user!r} may not create tables in schema "
            f"public of {target.database!r} (PostgreSQL 15 and later no longer let every user), "
            f"so Dagster cannot make its tables: ALTER DATABASE {target.database} OWNER TO "
            f"{target.user}, or GRANT CREATE ON SCHEMA public TO {target.user}",
        )
    return Finding(
        True,
        f"storage: {where} as {target.user!r}, empty: Dagster makes its tables when the first "
        "process starts",
    )


def load_yaml(file: Path, report: Report) -> Any:
    """The parsed file, or None with the line that says why it is not YAML."""
    try:
        return yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as exc:
        report.add(False, f"{file} is not YAML: {str(exc).splitlines()[0]}: fix the file")
        return None


def config_error(file: Path, exc: Exception) -> str:
    """The first problem Dagster found in a file, one line, without its 'Expected:' part."""
    from dagster._core.errors import DagsterInvalidConfigError

    errors = exc.errors if isinstance(exc, DagsterInvalidConfigError) else None
    first = errors[0].message if errors else str(exc)
    return f"{file}: {first.split(' Expected:')[0].splitlines()[0]} Fix the file."


def check_instance(home: Path, environ: Mapping[str, str], timeout: float, report: Report) -> None:
    from dagster._core.errors import DagsterInvalidConfigError
    from dagster._core.instance.config import dagster_instance_config

    file = home / "dagster.yaml"
    if not file.exists():
        report.add(
            False,
            f"DAGSTER_HOME ({home}) has no dagster.yaml, so Dagster would keep everything in "
            f"SQLite files there: copy {POSTGRES_DAGSTER_YAML} to {file}",
        )
        return
    document = load_yaml(file, report)
    if document is None:
        return
    report.secrets += secrets_in(document, environ)
    try:
        dagster_instance_config(str(home))
    except DagsterInvalidConfigError as exc:
        report.add(False, config_error(file, exc))
        return
    unset = unset_variables(
        document, file, environ, "the webserver, the daemon and the code server"
    )
    if unset:
        report.findings += unset
        return
    blocks = postgres_configs(document)
    if not blocks:
        report.add(
            True,
            f"storage: SQLite under {home} (no storage: postgres in {file}): one machine only, "
            f"every process needs this directory; for a team use {POSTGRES_DAGSTER_YAML.name}",
        )
        return
    seen = set()
    for key, block in blocks:
        try:
            target = postgres_from_config(key, block, file, environ)
        except ValueError as exc:
            report.add(False, str(exc))
            continue
        report.secrets += target.secrets()
        identity = (target.host, target.port, target.user, target.database)
        if identity not in seen:
            seen.add(identity)
            report.findings.append(check_postgres(target, timeout))


# --- the workspace ------------------------------------------------------------------------


def check_code_server(name: str, host: str, port: int | None, socket: str | None, timeout: float):
    import grpc
    from dagster._api.list_repositories import sync_list_repositories_grpc
    from dagster._core.errors import DagsterUserCodeProcessError
    from dagster._grpc.client import DagsterGrpcClient

    address = f"{host}:{port}" if port else f"unix:{socket}"
    channel = grpc.insecure_channel(address)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        return None
    finally:
        channel.close()
    try:
        response = sync_list_repositories_grpc(
            DagsterGrpcClient(port=port, socket=socket, host=host)
        )
    except DagsterUserCodeProcessError as exc:
        infos = exc.user_code_process_error_infos or []
        error = infos[0] if infos else None
        while error is not None and error.cause is not None:
            error = error.cause
        reason = error.message.strip().splitlines()[0] if error else str(exc).splitlines()[0]
        return Finding(
            False,
            f"code location {name}: the code server at {address} answers but cannot load the "
            f"code: {reason}: fix that in the code server's environment and restart it",
        )
    repositories = len(response.repository_symbols)
    return Finding(
        True, f"code location {name}: code server at {address}, {repositories} repository"
    )


def check_workspace(file: Path, environ: Mapping[str, str], timeout: float, report: Report) -> None:
    from dagster._core.remote_origin import GrpcServerCodeLocationOrigin
    from dagster._core.workspace.load import location_origins_from_yaml_paths

    if not file.exists():
        report.add(False, f"workspace file {file} does not exist: pass -w {GRPC_WORKSPACE_YAML}")
        return
    document = load_yaml(file, report)
    if document is None:
        return
    unset = unset_variables(document, file, environ, "the webserver and the daemon")
    if unset:
        report.findings += unset
        return
    # Dagster resolves the file's {env: ...} from os.environ
    differing = {k: v for k, v in environ.items() if os.environ.get(k) != v}
    try:
        with temporary_environ(differing):
            origins = location_origins_from_yaml_paths([str(file)])
    except Exception as exc:  # noqa: BLE001 - Dagster raises several kinds for a bad file
        report.add(False, config_error(file, exc))
        return
    for origin in origins:
        if not isinstance(origin, GrpcServerCodeLocationOrigin):
            report.add(
                True,
                f"code location {origin.location_name}: each webserver and daemon starts its own "
                f"code server from {file}; one machine only, for a team see {GRPC_WORKSPACE_YAML}",
            )
            continue
        found = check_code_server(
            origin.location_name, origin.host, origin.port, origin.socket, timeout
        )
        if found is None:
            settings = grpc_settings(document, file, origin.location_name)
            found = Finding(
                False,
                f"code location {origin.location_name}: nothing answers gRPC at "
                f"{origin.host}:{origin.port} within {timeout:g} s ({settings}): start "
                f"the code server first (dagster code-server start -m churn_platform.definitions "
                f"-h {origin.host} -p {origin.port} --location-name {LOCATION_NAME}), or set the "
                "host and port it serves on",
            )
        report.findings.append(found)


def grpc_settings(document: Mapping[str, Any], file: Path, location: str) -> str:
    """The settings that hold a grpc_server's host and port, for the message."""
    for i, entry in enumerate(document.get("load_from") or []):
        server = entry.get("grpc_server") if isinstance(entry, dict) else None
        if isinstance(server, dict) and server.get("location_name", location) == location:
            key = f"load_from[{i}].grpc_server"
            envs = [
                value["env"]
                for value in (server.get("host"), server.get("port"))
                if isinstance(value, dict) and "env" in value
            ]
            if envs:
                return f"{' and '.join(envs)}, which {key} in {file} reads"
            return f"{key}.host and .port in {file}"
    return f"the grpc_server in {file}"


# --- all of it ----------------------------------------------------------------------------


def check_deployment(
    dagster_home: str | os.PathLike[str] | None,
    workspace: str | os.PathLike[str] | None,
    environ: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> Report:
    """Every finding about the instance in `dagster_home` and the code locations of `workspace`."""
    environ = os.environ if environ is None else environ
    report = Report()
    if not dagster_home:
        report.add(
            False,
            "DAGSTER_HOME is not set: set it to the directory that holds dagster.yaml "
            f"(a copy of {POSTGRES_DAGSTER_YAML}), the same for the webserver, daemon and "
            "code server",
        )
    else:
        check_instance(Path(dagster_home).resolve(), environ, timeout, report)
    if workspace is not None:
        check_workspace(Path(workspace).resolve(), environ, timeout, report)
    return report
