"""``edgeops rollout ...``: staged rollouts with health gates, from the command line."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.live import Live
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

#: Rollout states after which nothing changes (fleet_server.rollout.TERMINAL, by value: the CLI
#: may talk to a remote server without the server package installed).
TERMINAL_STATES = frozenset({"succeeded", "failed", "rolled_back", "aborted"})

rollout_app = typer.Typer(help="Staged rollouts: canary, waves, health gates, rollback.", no_args_is_help=True)


@rollout_app.command("start")
def rollout_start(
    model: Annotated[str, typer.Argument(help="NAME:VERSION to roll out.")],
    devices: Annotated[str, typer.Option(help="'all', or comma-separated device ids and tag:NAME terms.")] = "all",
    stages: Annotated[str, typer.Option(help="Cumulative stages: [NAME:]COUNT or [NAME:]PERCENT%.")] = (
        "canary:1,10%,50%,100%"),
    policy: Annotated[str, typer.Option(help="On a failing gate: rollback or pause.")] = "rollback",
    soak: Annotated[float, typer.Option(help="Seconds a stage runs the target before health is judged.")] = 60.0,
    max_error_rate: Annotated[float, typer.Option(help="Error-rate gate.")] = 0.05,
    max_latency_ratio: Annotated[float, typer.Option(help="p95 latency vs the previous version.")] = 1.5,
    max_drift: Annotated[float | None, typer.Option(help="Drift-score gate (share of drifted features).")] = None,
    max_failed_share: Annotated[float, typer.Option(help="Share of failed devices tolerated.")] = 0.0,
    min_sample: Annotated[int, typer.Option(
        help="Devices resolved (committed or failed) before the failed share is judged.", min=1)] = 1,
    min_inferences: Annotated[int, typer.Option(
        help="Inferences the error rate (pooled over a stage) and a device's p95 latency (on the target and the "
             "previous version) need before they are judged.", min=1)] = 20,
    silence_timeout: Annotated[float, typer.Option(help="Seconds of silence that make a device failed.")] = 120.0,
    max_concurrent: Annotated[int, typer.Option(help="Devices updating at once (0: no limit).")] = 0,
    approval: Annotated[bool, typer.Option(help="Every stage after the first waits for `rollout approve`.")] = False,
    reason: Annotated[str, typer.Option(help="Why (recorded in the audit log).")] = "",
    home: HomeOpt = DEFAULT_HOME,
    fleet: FleetOpt = "default",
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Start a staged rollout of a model version; the running server drives it."""
    if policy not in ("rollback", "pause"):
        raise ConfigError(f"--policy must be rollback or pause, got {policy!r}")
    request = {"model": model, "devices": devices, "stages": stages, "policy": policy, "soak_s": soak,
               "max_error_rate": max_error_rate, "max_latency_ratio": max_latency_ratio, "max_drift": max_drift,
               "max_failed_share": max_failed_share, "min_sample": min_sample, "min_inferences": min_inferences,
               "silence_timeout_s": silence_timeout,
               "max_concurrent": max_concurrent, "approval": approval, "reason": reason}
    summary = fleet_client(home, fleet, server, token).start_rollout(request)
    if as_json:
        print_json(summary)
        return
    console.print(f"rollout {summary['id']}: {summary['target'] or summary['target_digest'][:12]} to "
                  f"{summary['selector']}, stages " + ", ".join(s["name"] for s in summary["stages"])
                  + f", on failure {summary['policy']}")


def _table(summary: dict[str, Any]) -> Table:
    table = Table("stage", "devices", "committed", "status",
                  title=f"rollout {summary['id']}: {summary['state']} ({summary['reason'] or 'no events yet'})")
    for s in summary["stages"]:
        table.add_row(s["name"], str(s["devices"]), str(s["committed"]), s["status"])
    return table


@rollout_app.command("status")
def rollout_status(rollout_id: str, home: HomeOpt = DEFAULT_HOME, fleet: FleetOpt = "default",
                   server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """One rollout: state, stages, devices assigned and committed, the last reason."""
    summary = fleet_client(home, fleet, server, token).rollout(rollout_id)
    if as_json:
        print_json(summary)
    else:
        console.print(_table(summary))


@rollout_app.command("watch")
def rollout_watch(rollout_id: str, home: HomeOpt = DEFAULT_HOME, fleet: FleetOpt = "default",
                  server: ServerOpt = None, token: TokenOpt = None,
                  interval: Annotated[float, typer.Option(help="Refresh seconds.")] = 1.0) -> None:
    """Live progress per stage until the rollout ends (Ctrl-C to stop watching)."""
    client = fleet_client(home, fleet, server, token)
    try:
        with Live(console=console, refresh_per_second=4) as live:
            while True:
                summary = client.rollout(rollout_id)
                live.update(_table(summary))
                if summary["state"] in TERMINAL_STATES:
                    break
                time.sleep(interval)
    except KeyboardInterrupt:
        return


@rollout_app.command("list")
def rollout_list(home: HomeOpt = DEFAULT_HOME, fleet: FleetOpt = "default", server: ServerOpt = None,
                 token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Every rollout of the fleet."""
    summaries = fleet_client(home, fleet, server, token).rollouts()
    if as_json:
        print_json(summaries)
        return
    table = Table("id", "target", "state", "stage", "assigned", "committed", "reason")
    for s in summaries:
        table.add_row(s["id"], s["target"] or s["target_digest"][:12], s["state"], s["stage"],
                      f"{s['assigned']}/{s['selected']}", str(s["committed"]), s["reason"][:80])
    console.print(table)


def _command(verb: str) -> Any:
    def run(rollout_id: str, home: HomeOpt = DEFAULT_HOME, fleet: FleetOpt = "default",
            reason: Annotated[str, typer.Option(help="Why (recorded in the audit log).")] = "",
            server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
        summary = fleet_client(home, fleet, server, token).command(rollout_id, verb, reason)
        if as_json:
            print_json(summary)
        else:
            console.print(f"rollout {summary['id']}: {summary['state']}")

    run.__doc__ = f"{verb.capitalize()} a rollout."
    return run


for _verb in ("pause", "resume", "approve", "abort", "rollback"):
    rollout_app.command(_verb)(_command(_verb))


audit_app = typer.Typer(help="The audit log of mutating actions and rollout decisions.", no_args_is_help=True)


@audit_app.command("list")
def audit_list(home: HomeOpt = DEFAULT_HOME, limit: int = 50, target: str | None = None,
               server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Who did what, when, and why (newest first)."""
    rows = fleet_client(home, "default", server, token).audit(limit, target)
    if as_json:
        print_json(rows)
        return
    table = Table("when", "actor", "action", "target", "reason")
    for r in rows:
        table.add_row(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["ts_ms"] / 1000)), r["actor"],
                      r["action"], r["target"], r["reason"][:100])
    console.print(table)
