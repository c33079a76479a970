"""``edgeops token ...``: bearer tokens for the fleet server's HTTP API."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from edgeops.cli_common import DEFAULT_HOME, HomeOpt, JsonOpt, console, err_console, open_home

token_app = typer.Typer(help="Bearer tokens for the HTTP API (stored hashed; shown once).", no_args_is_help=True)
NameArg = Annotated[str, typer.Argument(help="Token name: the actor the audit log records for its calls.")]


def _tokens(home: Path) -> Any:
    from fleet_server.tokens import Tokens

    return Tokens(home / "edgeops.db")


def _audit(home: Path, action: str, name: str) -> None:
    store, _ = open_home(home)
    actor = os.environ.get("EDGEOPS_ACTOR") or os.environ.get("USER") or "cli"
    store.audit(actor, action, f"token:{name}")
    store.close()


@token_app.command("create")
def token_create(name: NameArg, home: HomeOpt = DEFAULT_HOME) -> None:
    """Create a token and print its secret once (only its sha256 is stored)."""
    secret = _tokens(home).create(name)
    _audit(home, "token_create", name)
    sys.stdout.write(secret + "\n")
    err_console.print(f"token {name!r} created; the secret above is not stored and cannot be shown again",
                      highlight=False)


@token_app.command("list")
def token_list(home: HomeOpt = DEFAULT_HOME, as_json: JsonOpt = False) -> None:
    """Every token: name, created, last used, revoked (never the secret)."""
    rows = _tokens(home).all_tokens()
    if as_json:
        sys.stdout.write(json.dumps([r.__dict__ for r in rows], indent=2) + "\n")
        return

    def when(ms: int | None) -> str:
        return "-" if ms is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))

    table = Table("name", "created", "last used", "state")
    for r in rows:
        table.add_row(r.name, when(r.created_ms), when(r.last_used_ms), "[red]revoked[/]" if r.revoked else "active")
    console.print(table)


@token_app.command("revoke")
def token_revoke(name: NameArg, home: HomeOpt = DEFAULT_HOME) -> None:
    """Revoke a token: the API refuses it from the next request on."""
    if _tokens(home).revoke(name):
        _audit(home, "token_revoke", name)
        console.print(f"token {name!r} revoked")
    else:
        console.print(f"token {name!r} was revoked already")
