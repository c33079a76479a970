"""``edgeops db ...``: which database the store uses and its schema revision.

Every command that opens the store migrates it to the newest revision anyway; these commands let
an operator look first (``current``) and migrate on purpose (``upgrade``), e.g. before starting
several server replicas against one PostgreSQL database.
"""

from __future__ import annotations

import json
import sys

import typer

from edgeops.cli_common import DEFAULT_HOME, DbOpt, HomeOpt, JsonOpt, console, store_target

db_app = typer.Typer(help="The store's database: backend, schema revision, migrations.", no_args_is_help=True)


@db_app.command("current")
def db_current(home: HomeOpt = DEFAULT_HOME, db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """The store's database and its schema revision, without changing anything."""
    from fleet_server.migrations import HEAD
    from fleet_server.store import Store

    store = Store(store_target(home, db), migrate=False)
    try:
        revision = store.schema_revision()
    finally:
        store.close()
    info = {"url": store.url, "backend": store.backend, "revision": revision, "head": HEAD,
            "up_to_date": revision == HEAD}
    if as_json:
        sys.stdout.write(json.dumps(info, indent=2) + "\n")
        return
    state = "up to date" if revision == HEAD else "needs `edgeops db upgrade` (or any command that opens it)"
    console.print(f"{store.url} ({store.backend}): revision {revision or 'none'}, newest {HEAD}: {state}")


@db_app.command("upgrade")
def db_upgrade(home: HomeOpt = DEFAULT_HOME, db: DbOpt = None) -> None:
    """Migrate the store's schema to the newest revision (keeps every row)."""
    from fleet_server.store import Store

    store = Store(store_target(home, db), migrate=False)
    try:
        before = store.schema_revision()
        store.upgrade_schema()
        after = store.schema_revision()
    finally:
        store.close()
    if before == after:
        console.print(f"{store.url}: already at revision {after}")
    else:
        console.print(f"{store.url}: migrated from {before or 'an unversioned store'} to revision {after}")
