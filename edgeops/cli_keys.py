"""``edgeops keys ...``: the server's Ed25519 signing keys (``{home}/keys``) and agent provisioning.

Rotation: ``keys generate --activate`` makes a new key sign from now on; export the public keys
(old and new) to the agents' trust directories *before* activating, so devices accept bundles
signed by either key during the switch. Agents accept any key in their trust directory.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from edgeops.cli_common import DEFAULT_HOME, HomeOpt, JsonOpt, console

if TYPE_CHECKING:
    from edgeops.signing import KeyRing

keys_app = typer.Typer(help="Signing keys: generate, list, activate, export public keys.", no_args_is_help=True)


def _ring(home: Path) -> KeyRing:
    from edgeops.signing import KeyRing

    return KeyRing(home / "keys")


@keys_app.command("generate")
def keys_generate(
    name: Annotated[str | None, typer.Option(help="Key name (default key-<id prefix>).")] = None,
    activate: Annotated[
        bool | None, typer.Option("--activate/--no-activate", help="Sign with it from now on (default: if none).")
    ] = None,
    home: HomeOpt = DEFAULT_HOME,
) -> None:
    """Generate an Ed25519 key pair (private part mode 0600)."""
    from edgeops.bundle import utc_timestamp

    info = _ring(home).generate(name, activate=activate, created_at=utc_timestamp())
    state = "active" if info.active else "not active"
    console.print(f"generated key {info.name}: key id {info.key_id} ({state})")


@keys_app.command("list")
def keys_list(home: HomeOpt = DEFAULT_HOME, as_json: JsonOpt = False) -> None:
    """Every key of the home's key ring."""
    keys = _ring(home).list_keys()
    if as_json:
        sys.stdout.write(json.dumps([k.__dict__ for k in keys], indent=2) + "\n")
        return
    table = Table("key id", "name", "created", "private part", "active")
    for k in keys:
        table.add_row(k.key_id, k.name, k.created_at or "-", "yes" if k.has_private else "no",
                      "[green]active[/]" if k.active else "")
    console.print(table)


@keys_app.command("activate")
def keys_activate(name: Annotated[str, typer.Argument(help="Key name.")], home: HomeOpt = DEFAULT_HOME) -> None:
    """Make NAME the key that signs new bundles and desired messages."""
    info = _ring(home).activate(name)
    console.print(f"key {info.name} ({info.key_id}) is now active")


@keys_app.command("export-public")
def keys_export_public(
    directory: Annotated[Path, typer.Argument(help="Trust directory to provision an agent with.")],
    home: HomeOpt = DEFAULT_HOME,
) -> None:
    """Write every public key (*.pub) into DIRECTORY: an agent's trust directory."""
    written = _ring(home).export_public(directory)
    console.print(f"wrote {len(written)} public key(s) to {directory}")
