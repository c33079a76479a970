"""Schema migrations of the fleet server's store, run by :class:`fleet_server.store.Store` on open.

They ship inside the package (Alembic scripts in ``versions/``, its ``env.py`` beside this file)
so that an installed server brings its database up to date by itself: no ``alembic.ini``, no
separate step an operator could forget. :func:`upgrade` runs on a connection the store hands over,
inside the store's own transaction, so a migration either happens whole or not at all (both
SQLite and PostgreSQL run DDL transactionally).

The baseline revision also adopts a store file written before migrations existed: it creates
what is missing and adds the columns older releases lacked, keeping every row.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)

#: The newest revision in ``versions/``; ``tests`` check it against the scripts. Kept here so that
#: opening an up-to-date store costs one query and no Alembic import.
HEAD = "0004"
#: Alembic's bookkeeping table (its default name, so the ``alembic`` tool finds it too).
VERSION_TABLE = "alembic_version"
SCRIPT_DIR = Path(__file__).resolve().parent


def current_revision(connection: Connection) -> str | None:
    """The revision the database is at; None for a database migrations never touched."""
    if not sa.inspect(connection).has_table(VERSION_TABLE):
        return None
    rows = connection.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    return str(rows[0]) if rows else None


def head_revision() -> str:
    """The newest revision as Alembic reads it from the scripts (what :data:`HEAD` must equal)."""
    _quiet_alembic()
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_config(None)).get_current_head()
    if head is None:
        raise RuntimeError(f"no migration scripts found in {SCRIPT_DIR / 'versions'}")
    return head


def upgrade(connection: Connection, revision: str = "head") -> None:
    """Migrate the database behind ``connection`` to ``revision`` inside its open transaction."""
    _quiet_alembic()
    from alembic import command

    before = current_revision(connection)
    command.upgrade(_config(connection), revision)
    after = current_revision(connection)
    if before is None:
        # A new database is not news; a store file from before migrations says so itself (0001).
        log.debug("store schema created at revision %s", after)
    elif before != after:
        log.info("store schema migrated from %s to %s", before, after)


def downgrade(connection: Connection, revision: str) -> None:
    """Migrate back to ``revision`` (``base`` drops every store table): for tests and recovery."""
    _quiet_alembic()
    from alembic import command

    command.downgrade(_config(connection), revision)
    log.warning("store schema downgraded to %s", revision)


def _config(connection: Connection | None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(SCRIPT_DIR))
    config.attributes["connection"] = connection
    return config


def _quiet_alembic() -> None:
    """Alembic narrates its plugin set-up and guesses "non-transactional DDL" for SQLite (we run the
    migration in our own transaction): at INFO that misleads, so it logs warnings only, unless a
    level was set for it on purpose. :func:`upgrade` logs what changed."""
    logger = logging.getLogger("alembic")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.WARNING)
