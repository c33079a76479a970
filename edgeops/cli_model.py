"""``edgeops model ...``: package, list and inspect model versions."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from edgeops.cli_common import DEFAULT_HOME, HomeOpt, JsonOpt, console, open_home
from edgeops.errors import ConfigError

model_app = typer.Typer(help="Package and list model versions.", no_args_is_help=True)


def _load_reference(path: Path | None) -> Any:
    if path is None:
        return None
    import numpy as np

    try:
        with np.load(path) as data:
            if "X" not in data:
                raise ConfigError(f"{path}: expected an array named 'X' (rows of model input)")
            return data["X"]
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read reference data {path}: {exc}") from exc


@model_app.command("add")
def model_add(
    model_path: Annotated[Path, typer.Argument(help="An .onnx model file.")],
    name: Annotated[str, typer.Option(help="Model name.")],
    version: Annotated[str, typer.Option(help="Version label (immutable once added).")],
    reference: Annotated[
        Path | None, typer.Option(help=".npz with array X: calibration rows for drift reference and smoke tests.")
    ] = None,
    home: HomeOpt = DEFAULT_HOME,
) -> None:
    """Package a model into a bundle and add it to the registry."""
    from fleet_server.registry import add_model

    if not model_path.is_file():
        raise ConfigError(f"no model file at {model_path}")
    store, registry = open_home(home)
    with console.status(f"packaging {name}:{version}"):
        row, created = add_model(
            store, registry, model_path, name=name, version=version, reference=_load_reference(reference),
            created_by=os.environ.get("USER", ""),
        )
    state = "added" if created else "already present"
    console.print(f"{row.label} {state}: digest {row.digest[:12]}, {row.size_bytes} bytes, {row.runtime}")


@model_app.command("list")
def model_list(home: HomeOpt = DEFAULT_HOME, as_json: JsonOpt = False) -> None:
    """List model versions in the registry."""
    store, _ = open_home(home)
    rows = store.models()
    if as_json:
        sys.stdout.write(json.dumps([r.__dict__ for r in rows], indent=2) + "\n")
        return
    table = Table("model", "version", "digest", "runtime", "size", "created", "parent")
    for r in rows:
        table.add_row(r.name, r.version, r.digest[:12], r.runtime, f"{r.size_bytes:,}", r.created_at,
                      r.parent_version or "")
    console.print(table)
