"""``edgeops rollout ...``: staged rollouts with health gates, from the command line."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.table import Table

from edgeops.cli_common import DEFAULT_HOME, FleetOpt, HomeOpt, JsonOpt, console, open_home
from edgeops.errors import ConfigError

rollout_app = typer.Typer(help="Staged rollouts: canary, waves, health gates, rollback.", no_args_is_help=True)


def _actor() -> str:
    return os.environ.get("EDGEOPS_ACTOR") or os.environ.get("USER") or "cli"


def _service(home: Any, fleet: str) -> Any:
    from fleet_server.rollout_driver import RolloutService

    store, _ = open_home(home)
    return RolloutService(store, fleet)


@rollout_app.command("start")
def rollout_start(
    model: Annotated[str, typer.Argument(help="NAME:VERSION to roll out.")],
    devices: Annotated[str, typer.Option(help="'all' or comma-separated device ids.")] = "all",
    stages: Annotated[str, typer.Option(help="Cumulative stages: [NAME:]COUNT or [NAME:]PERCENT%.")] = (
        "canary:1,10%,50%,100%"),
    policy: Annotated[str, typer.Option(help="On a failing gate: rollback or pause.")] = "rollback",
    soak: Annotated[float, typer.Option(help="Seconds a stage runs the target before health is judged.")] = 60.0,
    max_error_rate: Annotated[float, typer.Option(help="Error-rate gate.")] = 0.05,
    max_latency_ratio: Annotated[float, typer.Option(help="p95 latency vs the previous version.")] = 1.5,
    max_drift: Annotated[float | None, typer.Option(help="Drift-score gate (share of drifted features).")] = None,
    max_failed_share: Annotated[float, typer.Option(help="Share of failed devices tolerated.")] = 0.0,
    silence_timeout: Annotated[float, typer.Option(help="Seconds of silence that make a device failed.")] = 120.0,
    max_concurrent: Annotated[int, typer.Option(help="Devices updating at once (0: no limit).")] = 0,
    approval: Annotated[bool, typer.Option(help="Every stage after the first waits for `rollout approve`.")] = False,
    reason: Annotated[str, typer.Option(help="Why (recorded in the audit log).")] = "",
    home: HomeOpt = DEFAULT_HOME,
    fleet: FleetOpt = "default",
) -> None:
    """Start a staged rollout of a model version; the running server drives it."""
    from fleet_server.rollout import Gates

    name, sep, version = model.partition(":")
    if not sep:
        raise ConfigError(f"expected NAME:VERSION, got {model!r}")
    service = _service(home, fleet)
    row = service.store.model(name, version)
    if devices != "all":
        known = {d.device_id for d in service.store.devices(fleet)}
        unknown = sorted(set(devices.split(",")) - known)
        if unknown:
            from edgeops.errors import NotFoundError

            raise NotFoundError(f"unknown device(s) in fleet {fleet!r}: {', '.join(unknown)}")
    gates = Gates(max_error_rate=max_error_rate, max_latency_ratio=max_latency_ratio, max_drift_score=max_drift,
                  max_failed_share=max_failed_share, soak_s=soak, silence_timeout_s=silence_timeout)
    rollout = service.start_new(row.digest, devices, stages, gates, policy=policy, max_concurrent=max_concurrent,
                                approval=approval, actor=_actor(), reason=reason)
    console.print(f"rollout {rollout.id}: {row.label} to {devices}, stages "
                  + ", ".join(s.name for s in rollout.stages) + f", on failure {rollout.policy.value}")


def _summary(service: Any, rollout: Any) -> dict[str, Any]:
    devices = service.selected(rollout)
    obs = service.observations(rollout, list(rollout.assigned))
    committed = [d for d, o in obs.items() if o.active_digest == rollout.target_digest and o.phase == "committed"]
    stages = []
    for i, stage in enumerate(rollout.stages):
        members = [d for d, s in rollout.assigned.items() if s == i]
        stages.append({"name": stage.name, "devices": len(members),
                       "committed": len([d for d in members if d in committed]),
                       "status": "done" if i < rollout.stage_index or rollout.state.value == "succeeded"
                       else ("current" if i == rollout.stage_index else "pending")})
    return {"id": rollout.id, "state": rollout.state.value, "target": rollout.target_digest,
            "stage": rollout.stages[rollout.stage_index].name, "selected": len(devices),
            "assigned": len(rollout.assigned), "committed": len(committed), "reason": rollout.reason,
            "stages": stages}


def _table(summary: dict[str, Any]) -> Table:
    table = Table("stage", "devices", "committed", "status",
                  title=f"rollout {summary['id']}: {summary['state']} ({summary['reason'] or 'no events yet'})")
    for s in summary["stages"]:
        table.add_row(s["name"], str(s["devices"]), str(s["committed"]), s["status"])
    return table


@rollout_app.command("status")
def rollout_status(rollout_id: str, home: HomeOpt = DEFAULT_HOME, fleet: FleetOpt = "default",
                   as_json: JsonOpt = False) -> None:
    """One rollout: state, stages, devices assigned and committed, the last reason."""
    service = _service(home, fleet)
    summary = _summary(service, service.get(rollout_id))
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    else:
        console.print(_table(summary))


@rollout_app.command("watch")
def rollout_watch(rollout_id: str, home: HomeOpt = DEFAULT_HOME, fleet: FleetOpt = "default",
                  interval: Annotated[float, typer.Option(help="Refresh seconds.")] = 1.0) -> None:
    """Live progress per stage until the rollout ends (Ctrl-C to stop watching)."""
    from fleet_server.rollout import TERMINAL

    service = _service(home, fleet)
    try:
        with Live(console=console, refresh_per_second=4) as live:
            while True:
                rollout = service.get(rollout_id)
                live.update(_table(_summary(service, rollout)))
                if rollout.state in TERMINAL:
                    break
                time.sleep(interval)
    except KeyboardInterrupt:
        return


@rollout_app.command("list")
def rollout_list(home: HomeOpt = DEFAULT_HOME, fleet: FleetOpt = "default", as_json: JsonOpt = False) -> None:
    """Every rollout of the fleet."""
    service = _service(home, fleet)
    summaries = [_summary(service, r) for r in service.all_rollouts()]
    if as_json:
        sys.stdout.write(json.dumps(summaries, indent=2) + "\n")
        return
    table = Table("id", "state", "stage", "assigned", "committed", "reason")
    for s in summaries:
        table.add_row(s["id"], s["state"], s["stage"], f"{s['assigned']}/{s['selected']}", str(s["committed"]),
                      s["reason"][:80])
    console.print(table)


def _command(verb: str) -> Any:
    def run(rollout_id: str, home: HomeOpt = DEFAULT_HOME, fleet: FleetOpt = "default",
            reason: Annotated[str, typer.Option(help="Why (recorded in the audit log).")] = "") -> None:
        from fleet_server import rollout as logic

        commands = {"pause": lambda r: logic.pause(r, reason or "paused by operator"), "resume": logic.resume,
                    "approve": logic.approve, "abort": logic.abort,
                    "rollback": lambda r: logic.operator_rollback(r, reason or "rolled back by operator")}
        service = _service(home, fleet)
        rollout = service.apply_command(rollout_id, commands[verb], _actor(), f"rollout_{verb}")
        console.print(f"rollout {rollout.id}: {rollout.state.value}")

    run.__doc__ = f"{verb.capitalize()} a rollout."
    return run


for _verb in ("pause", "resume", "approve", "abort", "rollback"):
    rollout_app.command(_verb)(_command(_verb))


audit_app = typer.Typer(help="The audit log of mutating actions and rollout decisions.", no_args_is_help=True)


@audit_app.command("list")
def audit_list(home: HomeOpt = DEFAULT_HOME, limit: int = 50, target: str | None = None,
               as_json: JsonOpt = False) -> None:
    """Who did what, when, and why (newest first)."""
    store, _ = open_home(home)
    rows = store.audit_log(limit, target)
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    table = Table("when", "actor", "action", "target", "reason")
    for r in rows:
        table.add_row(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["ts_ms"] / 1000)), r["actor"],
                      r["action"], r["target"], r["reason"][:100])
    console.print(table)
