"""`churn-platform deployment check` against the real test PostgreSQL: every bad setting a
team meets first is one line naming the setting and the fix, and no password is printed.

A code server that answers is checked where one runs (test_deployment.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml

from churn_platform.cli import main
from churn_platform.deploy import POSTGRES_DAGSTER_YAML
from churn_platform.kafka.broker import free_port

PREFIX = "churn-platform deployment check: "
WRONG_PASSWORD = "n0t-the/pass@word"


@pytest.fixture
def home(tmp_path) -> Path:
    directory = tmp_path / "dagster_home"
    directory.mkdir()
    shutil.copyfile(POSTGRES_DAGSTER_YAML, directory / "dagster.yaml")
    return directory


@pytest.fixture
def environment(monkeypatch, postgres, postgres_database):
    """The deployment's variables, right: a test changes one; no code server listens."""
    values = {
        **postgres.environment(postgres_database),
        "CHURN_CODE_SERVER_HOST": "127.0.0.1",
        "CHURN_CODE_SERVER_PORT": str(free_port()),
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def check(home: Path, capsys, *extra: str) -> tuple[int, list[str], list[str]]:
    code = main(["deployment", "check", "--dagster-home", str(home), "--timeout", "1", *extra])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.splitlines()


def no_secret_in(lines: list[str], *secrets: str) -> None:
    text = "\n".join(lines)
    for secret in secrets:
        assert secret not in text and quote(secret, safe="") not in text


def problems(err: list[str]) -> list[str]:
    assert all(line.startswith(PREFIX) for line in err), err  # one line each
    return [line.removeprefix(PREFIX) for line in err]


def test_a_good_database_and_an_unreachable_code_server(home, environment, capsys, postgres):
    code, out, err = check(home, capsys)
    assert code == 1
    (storage,) = out
    assert storage.startswith("ok  storage: database 'dagster_") and "PostgreSQL 1" in storage
    assert "empty: Dagster makes its tables" in storage
    (unreachable,) = problems(err)
    port = environment["CHURN_CODE_SERVER_PORT"]
    assert f"nothing answers gRPC at 127.0.0.1:{port}" in unreachable
    assert "CHURN_CODE_SERVER_HOST" in unreachable and "CHURN_CODE_SERVER_PORT" in unreachable
    assert f"dagster code-server start -m churn_platform.definitions -h 127.0.0.1 -p {port}" in (
        unreachable
    )
    no_secret_in(out + err, postgres.password)


def test_a_wrong_password_is_named_by_its_variable_and_never_shown(
    home, environment, capsys, monkeypatch, postgres
):
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", WRONG_PASSWORD)
    code, out, err = check(home, capsys)
    assert code == 1 and out == []
    wrong, _ = problems(err)
    assert wrong.startswith("DAGSTER_PG_PASSWORD (storage.postgres.postgres_db.password in ")
    assert f"127.0.0.1:{postgres.port} rejected the password of user 'churn'" in wrong
    no_secret_in(out + err, WRONG_PASSWORD, postgres.password)


def test_a_database_that_does_not_exist(home, environment, capsys, monkeypatch, postgres):
    monkeypatch.setenv("DAGSTER_PG_DB", "dagster_nowhere")
    code, out, err = check(home, capsys)
    missing, _ = problems(err)
    assert missing.startswith("DAGSTER_PG_DB (storage.postgres.postgres_db.db_name in ")
    assert "has no database 'dagster_nowhere': create it (createdb -h 127.0.0.1" in missing
    no_secret_in(out + err, postgres.password)


def test_nothing_listening_where_the_database_should_be(
    home, environment, capsys, monkeypatch, postgres
):
    port = free_port()
    monkeypatch.setenv("DAGSTER_PG_PORT", str(port))
    code, out, err = check(home, capsys)
    nothing, _ = problems(err)
    assert nothing.startswith("DAGSTER_PG_HOST (storage.postgres.postgres_db.hostname in ")
    assert "DAGSTER_PG_PORT (storage.postgres.postgres_db.port in " in nothing
    assert f"nothing accepts connections at 127.0.0.1:{port}: start PostgreSQL there" in nothing
    no_secret_in(out + err, postgres.password)


def test_a_wrong_url_names_its_variable_and_hides_the_password(
    home, environment, capsys, monkeypatch, postgres, postgres_database
):
    config = yaml.safe_load((home / "dagster.yaml").read_text())
    config["storage"]["postgres"] = {"postgres_url": {"env": "DAGSTER_PG_URL"}}
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    url = postgres.url(postgres_database, password=WRONG_PASSWORD).replace(
        "postgresql://", "postgresql+psycopg2://"
    )
    monkeypatch.setenv("DAGSTER_PG_URL", url)
    code, out, err = check(home, capsys)
    wrong, _ = problems(err)
    assert wrong.startswith("DAGSTER_PG_URL (storage.postgres.postgres_url in ")
    assert "rejected the password of user 'churn'" in wrong
    no_secret_in(out + err, WRONG_PASSWORD, postgres.password, url)

    # a URL whose scheme SQLAlchemy 2.1 maps to psycopg 3, which is not installed
    monkeypatch.setenv("DAGSTER_PG_URL", postgres.url(postgres_database))
    code, out, err = check(home, capsys)
    scheme, _ = problems(err)
    assert scheme.startswith("DAGSTER_PG_URL (storage.postgres.postgres_url in ")
    assert "'postgresql' makes SQLAlchemy load psycopg" in scheme
    assert "use postgresql+psycopg2" in scheme
    no_secret_in(out + err, postgres.password)


def test_a_postgres_db_block_without_the_psycopg2_scheme(home, environment, capsys):
    """README's first production example had no scheme: Dagster then fails to import psycopg."""
    config = yaml.safe_load((home / "dagster.yaml").read_text())
    del config["storage"]["postgres"]["postgres_db"]["scheme"]
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    code, out, err = check(home, capsys)
    scheme, _ = problems(err)
    assert scheme.startswith("storage.postgres.postgres_db.scheme in ")
    assert "is not set, and 'postgresql' makes SQLAlchemy load psycopg" in scheme
    assert "(scheme: postgresql+psycopg2, as dagster.postgres.yaml has it)" in scheme


def test_an_unset_variable_and_a_missing_dagster_yaml(home, environment, capsys, monkeypatch):
    monkeypatch.delenv("DAGSTER_PG_PASSWORD")
    code, out, err = check(home, capsys)
    unset, _ = problems(err)
    assert unset.startswith("DAGSTER_PG_PASSWORD is not set; storage.postgres.postgres_db.")

    (home / "dagster.yaml").unlink()
    code, out, err = check(home, capsys)
    missing, _ = problems(err)
    assert "has no dagster.yaml" in missing and f"copy {POSTGRES_DAGSTER_YAML} to" in missing


def test_a_user_who_may_not_create_dagsters_tables(
    home, environment, capsys, monkeypatch, postgres, postgres_database
):
    """PostgreSQL 15 took CREATE on schema public from every user: a `dagster` user given a
    database it does not own cannot make Dagster's tables there."""
    connection = postgres.connect(postgres_database)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute("CREATE ROLE dagster_reader LOGIN PASSWORD 'reader-pw'")
    connection.close()
    monkeypatch.setenv("DAGSTER_PG_USER", "dagster_reader")
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "reader-pw")
    code, out, err = check(home, capsys)
    denied, _ = problems(err)
    assert denied.startswith("DAGSTER_PG_USER (storage.postgres.postgres_db.username in ")
    assert "may not create tables in schema public" in denied
    assert f"ALTER DATABASE {postgres_database} OWNER TO dagster_reader" in denied
    no_secret_in(out + err, "reader-pw")
