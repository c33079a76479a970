"""``edgeops devices ...``: the fleet's devices as they reported themselves, and their tags.

Works on the local store or, with ``--server``, through a fleet server's HTTP API; ``--json``
prints the API's documents either way.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.table import Table

from edgeops.cli_common import (
    DEFAULT_HOME,
    FleetOpt,
    HomeOpt,
    JsonOpt,
    ServerOpt,
    TokenOpt,
    console,
    fleet_client,
    print_json,
)
from edgeops.errors import ConfigError

devices_app = typer.Typer(help="The devices of a fleet: list, show, tag.", no_args_is_help=True)


def age(ms: int | None, now_s: float | None = None) -> str:
    """How long ago an epoch-ms instant was, for humans ("12s ago", "3m ago", "-")."""
    if ms is None:
        return "-"
    seconds = max(0.0, (time.time() if now_s is None else now_s) - ms / 1000)
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    return f"{seconds / 60:.0f}m ago" if seconds < 7200 else f"{seconds / 3600:.0f}h ago"


def _number(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "-"


#: How each sync state is shown (the values of fleet_server.sync.SyncState: the CLI may talk to a
#: remote server without the server package installed).
SYNC_STYLES = {"in_sync": "green", "pending": "yellow", "updating": "yellow", "stalled": "red", "fell_back": "red",
               "rejected": "red", "offline": "red", "unmanaged": "dim"}
StallOpt = Annotated[float | None, typer.Option(
    "--stall-after", help="Seconds without progress after which an update counts as stalled (default 600).",
    min=0.001)]


def _sync_cell(d: dict[str, Any]) -> str:
    sync = d.get("sync") or "-"
    text = sync.replace("_", " ")
    if sync == "updating" and d.get("chunks_total") and d.get("phase") == "fetching":
        text += f" {d.get('chunks_have') or 0}/{d['chunks_total']}"
    style = SYNC_STYLES.get(sync)
    return f"[{style}]{text}[/]" if style else text


def _problem(d: dict[str, Any]) -> str:
    """What keeps a device from its desired version, in its own words: a refusal, else its last error."""
    if d.get("sync") == "rejected" and d.get("rejected_reason"):
        return f"refused the desired message: {d['rejected_reason']}"
    return str(d.get("last_error") or "")


def devices_table(rows: list[dict[str, Any]]) -> Table:
    """Devices (the API's device documents) as a table: state, version, last telemetry, tags."""
    show_errors = any(_problem(d) for d in rows)
    show_tags = any(d.get("tags") for d in rows)
    show_sync = any("sync" in d for d in rows)
    table = Table("device", "online", "running", "phase", "inferences", "p95 ms", "drift", "telemetry")
    table.columns[0].no_wrap = table.columns[2].no_wrap = True
    if show_sync:
        table.add_column("desired", no_wrap=True)
        table.add_column("sync", no_wrap=True)
    if show_tags:
        table.add_column("tags")
    if show_errors:
        table.add_column("problem", overflow="fold")
    for d in rows:
        t = d.get("last_telemetry") or {}
        cells = [
            d["device_id"],
            "[green]online[/]" if d["online"] else "[red]offline[/]",
            d.get("running") or "-",
            d.get("phase") or "-",
            str(t.get("inferences", "-")),
            _number(t.get("latency_ms_p95")),
            _number(t.get("drift_score")),
            age(d.get("last_telemetry_ms")),
        ]
        if show_sync:
            cells += [d.get("desired_version") or "-", _sync_cell(d)]
        if show_tags:
            cells.append(",".join(d.get("tags") or []))
        if show_errors:
            cells.append(_problem(d)[:120])
        table.add_row(*cells)
    return table


@devices_app.command("list")
def devices_list(
    tag: Annotated[str | None, typer.Option(help="Only devices carrying this tag.")] = None,
    sync: Annotated[list[str] | None, typer.Option(
        help="Only devices in this sync state (repeatable): " + ", ".join(SYNC_STYLES) + ".")] = None,
    stall_after: StallOpt = None,
    home: HomeOpt = DEFAULT_HOME, fleet: FleetOpt = "default", server: ServerOpt = None, token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Every device: what it runs and what it should run (sync state), online state, tags, last telemetry."""
    unknown = sorted(set(sync or ()) - set(SYNC_STYLES))
    if unknown:
        raise ConfigError(f"unknown sync state(s) {', '.join(unknown)}: expected {', '.join(SYNC_STYLES)}")
    rows = fleet_client(home, fleet, server, token).devices(tag, stall_after)
    if sync:
        rows = [d for d in rows if d.get("sync") in sync]
    if as_json:
        print_json(rows)
    else:
        console.print(devices_table(rows))


@devices_app.command("show")
def devices_show(
    device_id: Annotated[str, typer.Argument(help="The device's id.")],
    stall_after: StallOpt = None,
    home: HomeOpt = DEFAULT_HOME, fleet: FleetOpt = "default", server: ServerOpt = None, token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One device: what it reports, the deployment it should follow, its last window, recent events."""
    d = fleet_client(home, fleet, server, token).device(device_id, stall_after)
    if as_json:
        print_json(d)
        return
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    desired = d.get("desired")
    for key, value in (
        ("device", d["device_id"]),
        ("online", "yes" if d["online"] else "no"),
        ("agent", d.get("agent_version") or "-"),
        ("running", d.get("running") or "-"),
        ("phase", d.get("phase") or "-"),
        ("sync", _sync_cell(d) + (f" (last progress {age(d['progress_ms'])})" if d.get("progress_ms") else "")),
        ("desired", f"{d.get('desired_version') or desired['digest'][:12]} (deployment {desired['deployment_id']}"
                    + (f", rollout {desired['rollout_id']}" if desired.get("rollout_id") else "")
                    + (", rollback" if desired.get("rollback") else "") + ")" if desired else "-"),
        ("tags", ", ".join(d.get("tags") or []) or "-"),
        ("first seen", age(d.get("first_seen_ms"))),
        ("last seen", age(d.get("last_seen_ms"))),
        ("last error", d.get("last_error") or "-"),
        ("refused", f"{d['rejected_reason']} ({age(d.get('rejected_ms'))})" if d.get("rejected_reason") else "-"),
    ):
        facts.add_row(key, str(value))
    console.print(facts)
    t = d.get("last_telemetry")
    if t:
        window = Table("field", "value", title=f"last telemetry window ({age(d.get('last_telemetry_ms'))})")
        for key in sorted(t):
            if not isinstance(t[key], dict | list):
                window.add_row(key, _number(t[key]) if isinstance(t[key], float) else str(t[key]))
        console.print(window)
    events = d.get("events") or []
    if events:
        table = Table("when", "kind", "detail", title="recent events (newest first)")
        for e in events:
            error = e.get("error") or {}
            detail = e.get("message") or ""
            if error:
                detail = f"{detail} [{error.get('code', '')}] {error.get('message', '')}".strip()
            table.add_row(age(e.get("ts")), str(e.get("kind", "")), detail[:120])
        console.print(table)


@devices_app.command("tag")
def devices_tag(
    device_id: Annotated[str, typer.Argument(help="The device's id.")],
    tags: Annotated[list[str] | None, typer.Argument(help="Tags to add.")] = None,
    remove: Annotated[list[str] | None, typer.Option("--remove", "-r", help="A tag to remove (repeatable).")] = None,
    home: HomeOpt = DEFAULT_HOME, fleet: FleetOpt = "default", server: ServerOpt = None, token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add or remove tags of a device; `--devices tag:NAME` then selects it in deploys and rollouts."""
    add, drop = list(tags or []), list(remove or [])
    if not add and not drop:
        raise ConfigError("name tags to add, or --remove TAG")
    d = fleet_client(home, fleet, server, token).tag_device(device_id, add, drop)
    if as_json:
        print_json(d)
    else:
        console.print(f"{d['device_id']}: tags {', '.join(d['tags']) or '(none)'}")
