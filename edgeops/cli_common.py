"""What every ``edgeops`` subcommand shares: consoles, common options, opening the server home."""

from __future__ import annotations

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


def open_home(home: Path) -> tuple[Any, Any]:
    """The store and registry under a server home directory (created on first use)."""
    from fleet_server.registry import Registry
    from fleet_server.store import Store

    return Store(home / "edgeops.db"), Registry(home / "registry")
