"""Alembic's entry point for the store's migrations.

The store runs them on its own connection, inside its own transaction (see
``fleet_server.migrations.upgrade``). For a developer writing a new revision with the ``alembic``
tool, a ``sqlalchemy.url`` main option works too; ``target_metadata`` is the store's, so
``--autogenerate`` compares against what ``fleet_server/store.py`` declares.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from edgeops.errors import ConfigError
from fleet_server.store import metadata


def _run(connection: sa.engine.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        compare_type=True,
        # SQLite alters tables by copying them: Alembic's batch mode does that when a revision asks.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise ConfigError("no connection and no sqlalchemy.url: run migrations with `edgeops db upgrade`")
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise ConfigError("offline (--sql) migrations are not supported; run `edgeops db upgrade` against the store")
run_migrations()
