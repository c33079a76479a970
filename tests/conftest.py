"""Fixtures shared by unit and integration tests: a real digits model made in code, store databases."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import make_url

from edgeops.examples import TrainedExample, train_digits_mlp


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> TrainedExample:
    """The digits MLP exported to ONNX, trained once per test session."""
    return train_digits_mlp(tmp_path_factory.mktemp("models") / "digits.onnx")


@pytest.fixture(scope="session")
def digits_v2(tmp_path_factory: pytest.TempPathFactory) -> TrainedExample:
    """A second, different digits model (other hidden size): a new version of the same model."""
    return train_digits_mlp(tmp_path_factory.mktemp("models2") / "digits.onnx", hidden=24, seed=1)


@pytest.fixture
def artifacts_dir() -> Path:
    path = Path(__file__).resolve().parent.parent / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path


# --- databases for the store: SQLite file and PostgreSQL ---------------------------------------

#: The PostgreSQL server the tests use (trust auth); .ci/run starts it when it is not running.
POSTGRES_ADMIN_URL = os.environ.get("EDGEOPS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


@dataclass(frozen=True)
class StoreBackend:
    """Which database a test's store lives in: ``sqlite`` (the file in the server home) or ``postgresql``."""

    name: str
    #: The PostgreSQL URL; None for SQLite, whose file is ``HOME/edgeops.db`` as by default.
    url: str | None

    def target(self, home: Path) -> Path | str:
        """What to open with ``Store(...)`` for a server whose home is ``home``."""
        return self.url if self.url is not None else home / "edgeops.db"


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A database of its own for this test session (dropped at the end); its SQLAlchemy URL.

    An unreachable server fails the tests that need it, with how to start it: never a skip.
    """
    import psycopg

    try:
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL} ({exc}). Start it with "
                    "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` (.ci/run does), "
                    "or point EDGEOPS_TEST_POSTGRES at a server with trust auth.", pytrace=False)
    name = f"edgeops_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield str(make_url(POSTGRES_ADMIN_URL).set(drivername="postgresql+psycopg", database=name)
                      .render_as_string(hide_password=False))
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _reset_postgres(url: str) -> None:
    """Empty the session's database: every test starts from no schema, as with a new SQLite file."""
    import psycopg

    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        # Connections a previous test left open (its server process, its Store) would block the drop.
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> StoreBackend:
    """Runs a test once per store backend. For PostgreSQL it sets ``EDGEOPS_DB_URL``, so the CLI and
    the server processes the test starts use the same (emptied) database."""
    if request.param == "sqlite":
        monkeypatch.delenv("EDGEOPS_DB_URL", raising=False)
        return StoreBackend("sqlite", None)
    url: str = request.getfixturevalue("postgres_database")
    _reset_postgres(url)
    monkeypatch.setenv("EDGEOPS_DB_URL", url)
    return StoreBackend("postgresql", url)
