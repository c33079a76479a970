"""What every ``edgeops`` subcommand shares: consoles, common options, opening the server home."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

# Piped output (scripts, tests, CI logs) is not cut at 80 columns.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

DEFAULT_HOME = Path(os.environ.get("EDGEOPS_HOME", str(Path.home() / ".edgeops")))
HomeOpt = Annotated[Path, typer.Option("--home", envvar="EDGEOPS_HOME", help="Server state: store and registry.")]
FleetOpt = Annotated[str, typer.Option("--fleet", envvar="EDGEOPS_FLEET", help="Fleet name (topic namespace).")]
BrokerOpt = Annotated[str, typer.Option("--broker", envvar="EDGEOPS_BROKER", help="MQTT broker host:port.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
#: The environment variable every command reads for the store's database (``--db`` sets it too).
DB_URL_ENV = "EDGEOPS_DB_URL"
DbOpt = Annotated[str | None, typer.Option(
    "--db", envvar=DB_URL_ENV,
    help="Store database URL: sqlite:///PATH or postgresql+psycopg://USER@HOST/DB (default: HOME/edgeops.db).")]


def store_target(home: Path, db: str | None = None) -> Path | str:
    """Where the store is: ``db`` if given, else ``$EDGEOPS_DB_URL``, else the SQLite file in ``home``."""
    return db or os.environ.get(DB_URL_ENV) or home / "edgeops.db"


def open_home(home: Path, db: str | None = None) -> tuple[Any, Any]:
    """The store and registry of a server home (created on first use); the store per :func:`store_target`."""
    from fleet_server.registry import Registry
    from fleet_server.store import Store

    return Store(store_target(home, db)), Registry(home / "registry")

ServerOpt = Annotated[str | None, typer.Option(
    "--server", envvar="EDGEOPS_SERVER",
    help="A fleet server's HTTP API (http://HOST:PORT); default: the store on this machine.")]
TokenOpt = Annotated[str | None, typer.Option(
    "--token", envvar="EDGEOPS_TOKEN", help="API token for --server (`edgeops token create` on the server).")]


def fleet_client(home: Path, fleet: str, server: str | None = None, token: str | None = None) -> Any:
    """The fleet a command works on: ``server``'s HTTP API when given, else the local store (see fleet_client)."""
    from edgeops.fleet_client import connect

    return connect(home, fleet, None, server, token)


def print_json(value: Any) -> None:
    """``--json`` output: indented, UTF-8, on stdout (never through rich, which would wrap it)."""
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
