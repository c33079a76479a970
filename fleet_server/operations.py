"""What an operator can ask of a fleet, in one place for the HTTP API and the local CLI.

Both front ends call :class:`FleetOperations`; the results are plain JSON-able dicts in the shape
the API documents (``fleet_server/api.py`` wraps them in its response models for OpenAPI), so
``edgeops ... --json`` prints the same documents locally and through ``--server``. Mutations are
audited here, with the caller's name as the actor, so no front end can forget it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from edgeops.errors import ConfigError, EdgeOpsError, NotFoundError
from edgeops.manifest import parse_model_ref
from edgeops.protocol import check_id
from fleet_server import rollout as logic
from fleet_server.rollout_driver import RolloutService
from fleet_server.store import (
    ALL_DEVICES,
    Deployment,
    DeviceRow,
    ModelRow,
    Store,
    check_tag,
    now_ms,
    split_selector,
)
from fleet_server.sync import DEFAULT_STALL_AFTER_S, sync_state

log = logging.getLogger(__name__)

#: Events returned with one device.
DEVICE_EVENTS = 20
#: Rollout commands an operator may send, by the verb of the CLI and the API.
COMMANDS = ("pause", "resume", "approve", "abort", "rollback")


class InvalidRequestError(EdgeOpsError, ValueError):
    """A request that is well-formed but breaks a rule behind it (a bad stage spec, an empty selector)."""

    code = "invalid_request"


def gates_from_request(request: Mapping[str, Any]) -> logic.Gates:
    """A rollout request's gate fields (the API's ``RolloutIn``, the CLI's options) as Gates."""
    return logic.Gates(max_error_rate=request["max_error_rate"], max_latency_ratio=request["max_latency_ratio"],
                       max_drift_score=request["max_drift"], max_failed_share=request["max_failed_share"],
                       min_sample=request["min_sample"], min_inferences=request["min_inferences"],
                       soak_s=request["soak_s"], silence_timeout_s=request["silence_timeout_s"])


def device_view(row: DeviceRow) -> dict[str, Any]:
    """A device as it reported itself (the API's ``DeviceOut``)."""
    return {"device_id": row.device_id, "online": row.online, "agent_version": row.agent_version,
            "first_seen_ms": row.first_seen_ms, "last_seen_ms": row.last_seen_ms, "running": row.active_label,
            "active_digest": row.active_digest, "phase": row.phase, "last_error": row.last_error,
            "tags": list(row.tags), "last_telemetry_ms": row.last_telemetry_ms,
            "last_telemetry": row.last_telemetry}


def sync_view(row: DeviceRow, desired: Deployment | None, labels: Mapping[str, str], now: int,
              stall_after_s: float = DEFAULT_STALL_AFTER_S) -> dict[str, Any]:
    """Where a device stands against what it should run (the API's ``DeviceOut`` sync fields)."""
    target = row.target_digest
    return {"sync": sync_state(row, desired, now, stall_after_s).value,
            "desired_version": labels.get(desired.digest, desired.digest[:12]) if desired else None,
            "updating_to": labels.get(target, target[:12]) if target else None,
            "chunks_have": row.chunks_have, "chunks_total": row.chunks_total, "progress_ms": row.progress_ms,
            "rejected_ms": row.rejected_ms, "rejected_reason": row.rejected_reason}


def model_view(row: ModelRow) -> dict[str, Any]:
    """A registered model version (the API's ``ModelOut``)."""
    return {"name": row.name, "version": row.version, "label": row.label, "digest": row.digest,
            "runtime": row.runtime, "size_bytes": row.size_bytes, "created_at": row.created_at,
            "parent_version": row.parent_version, "parent_digest": row.parent_digest,
            "created_by": row.created_by, "signed_by": row.signed_by}


def rollout_view(service: RolloutService, rollout: logic.Rollout) -> dict[str, Any]:
    """A rollout with per-stage progress: what ``rollout status`` shows and the API returns."""
    obs = service.observations(rollout, list(rollout.assigned))
    committed = {d for d, o in obs.items() if o.active_digest == rollout.target_digest and o.phase == "committed"}
    stages = []
    for i, stage in enumerate(rollout.stages):
        members = [d for d, s in rollout.assigned.items() if s == i]
        status = ("done" if i < rollout.stage_index or rollout.state is logic.RolloutState.SUCCEEDED
                  else "current" if i == rollout.stage_index else "pending")
        stages.append({"name": stage.name, "percent": stage.percent, "count": stage.count,
                       "approval": stage.approval, "devices": len(members),
                       "committed": len(committed.intersection(members)), "status": status})
    try:
        target: str | None = service.store.model_by_digest(rollout.target_digest).label
    except NotFoundError:
        target = None
    return {"id": rollout.id, "state": rollout.state.value, "target_digest": rollout.target_digest,
            "target": target, "selector": rollout.selector, "policy": rollout.policy.value,
            "stage": rollout.stages[rollout.stage_index].name, "stage_index": rollout.stage_index,
            "selected": len(service.selected(rollout)), "assigned": len(rollout.assigned),
            "committed": len(committed), "reason": rollout.reason, "stages": stages}


def audit_view(row: dict[str, Any]) -> dict[str, Any]:
    """An audit entry with its details decoded (they are stored as JSON text)."""
    try:
        details = json.loads(row["details"])
    except ValueError:
        details = row["details"]
    return {**row, "details": details}


class FleetOperations:
    """The operator's verbs over one fleet's store. Every method returns JSON-able data."""

    def __init__(self, store: Store, fleet: str) -> None:
        self.store = store
        self.fleet = fleet
        self.rollouts_service = RolloutService(store, fleet)

    # --- selectors ---

    def selector(self, devices: str | list[str]) -> str:
        """Check a device selector and return its canonical text.

        ``all``, or device ids and ``tag:NAME`` terms (a list, or comma-separated text). Every id
        must be a device the fleet has seen and every tag must be carried by at least one device:
        a typo would otherwise select nothing, silently, and a rollout would "succeed" on no one.
        """
        if devices == ALL_DEVICES:
            return ALL_DEVICES
        terms = devices.split(",") if isinstance(devices, str) else list(devices)
        terms = sorted({t.strip() for t in terms if t.strip()})
        if not terms:
            raise ConfigError("a device selector needs 'all', device ids or tag:NAME terms")
        ids, tags = split_selector(",".join(terms))
        for device_id in ids:
            try:
                check_id(device_id, "device id")
            except ValueError as exc:
                raise ConfigError(str(exc)) from exc
        rows = self.store.devices(self.fleet)
        known = {d.device_id for d in rows}
        unknown = [d for d in ids if d not in known]
        if unknown:
            raise NotFoundError(f"unknown device(s) in fleet {self.fleet!r}: {', '.join(unknown)}")
        carried = {tag for d in rows for tag in d.tags}
        for tag in tags:
            check_tag(tag)
        unused = [t for t in tags if t not in carried]
        if unused:
            raise NotFoundError(f"no device in fleet {self.fleet!r} has tag(s) {', '.join(unused)}"
                                " (tag devices with `edgeops devices tag`)")
        return ",".join(terms)

    # --- models and devices ---

    def models(self) -> list[dict[str, Any]]:
        return [model_view(r) for r in self.store.models()]

    def model(self, ref: str) -> ModelRow:
        return self.store.model(*parse_model_ref(ref))

    def devices(self, tag: str | None = None, stall_after_s: float = DEFAULT_STALL_AFTER_S) -> list[dict[str, Any]]:
        """Every device as it reported itself, and where it stands against what it should run."""
        return self.device_views(self.store.devices(self.fleet, tag), stall_after_s)

    def device_views(self, rows: list[DeviceRow], stall_after_s: float = DEFAULT_STALL_AFTER_S) -> list[dict[str, Any]]:
        """Devices as they reported themselves, each with where it stands against what it should run."""
        desired = self.store.desired_for(self.fleet)
        labels = {m.digest: m.label for m in self.store.models()}
        now = now_ms()
        return [{**device_view(r), **sync_view(r, desired.get(r.device_id), labels, now, stall_after_s)}
                for r in rows]

    def device(self, device_id: str, stall_after_s: float = DEFAULT_STALL_AFTER_S) -> dict[str, Any]:
        """One device: reported state, tags, last telemetry, the deployment it should follow, events."""
        row = self.store.device(self.fleet, device_id)
        dep = self.store.desired_for(self.fleet).get(device_id)
        desired = ({"deployment_id": dep.id, "digest": dep.digest, "rollout_id": dep.rollout_id,
                    "rollback": dep.rollback} if dep else None)
        return {**self.device_views([row], stall_after_s)[0], "desired": desired,
                "events": self.store.events(self.fleet, device_id, limit=DEVICE_EVENTS)}

    def tag_device(self, device_id: str, add: list[str], remove: list[str], actor: str) -> dict[str, Any]:
        """Add and remove tags of a device (audited); returns the device."""
        row = self.store.device(self.fleet, device_id)
        for tag in (*add, *remove):
            check_tag(tag)
        tags = (set(row.tags) | set(add)) - set(remove)
        self.store.set_device_tags(self.fleet, device_id, sorted(tags))
        self.store.audit(actor, "device_tag", device_id, "",
                         json.dumps({"add": sorted(add), "remove": sorted(remove), "tags": sorted(tags)}))
        return self.device_views([self.store.device(self.fleet, device_id)])[0]

    def telemetry(self, device_id: str, since_ms: int = 0, limit: int = 50) -> list[dict[str, Any]]:
        """The newest telemetry windows of one device, newest first (NotFoundError for an unknown device)."""
        self.store.device(self.fleet, device_id)
        return self.store.telemetry_windows(self.fleet, device_id, since_ms=since_ms, limit=limit)

    def deploy(self, ref: str, devices: str | list[str], actor: str, reason: str = "",
               via: str = "cli") -> dict[str, Any]:
        """Set the desired version of some devices directly (no stages, no gates)."""
        row = self.model(ref)
        selector = self.selector(devices)
        dep = self.store.add_deployment(self.fleet, row.digest, selector)
        self.store.audit(actor, "deploy", f"deployment-{dep.id}", reason,
                         json.dumps({"model": row.label, "digest": row.digest, "devices": selector, "via": via}))
        log.info("deployment %d by %s: %s -> %s", dep.id, actor, row.label, selector)
        return {"id": dep.id, "model": row.label, "digest": row.digest, "devices": selector,
                "created_ms": dep.created_ms}

    # --- rollouts ---

    def rollouts(self) -> list[dict[str, Any]]:
        service = self.rollouts_service
        return [rollout_view(service, r) for r in service.all_rollouts()]

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        return rollout_view(self.rollouts_service, self.rollouts_service.get(rollout_id))

    def start_rollout(self, ref: str, devices: str | list[str], stages: str, gates: logic.Gates, *,
                      policy: str, max_concurrent: int, approval: bool, actor: str,
                      reason: str = "") -> dict[str, Any]:
        """Start a staged rollout (the running server drives it); InvalidRequestError for a bad stage spec."""
        row = self.model(ref)
        selector = self.selector(devices)
        try:
            started = self.rollouts_service.start_new(row.digest, selector, stages, gates, policy=policy,
                                                      max_concurrent=max_concurrent, approval=approval,
                                                      actor=actor, reason=reason)
        except ConfigError as exc:
            raise InvalidRequestError(str(exc)) from exc
        log.info("rollout %s by %s: %s -> %s", started.id, actor, row.label, selector)
        return rollout_view(self.rollouts_service, started)

    def command(self, rollout_id: str, verb: str, actor: str, reason: str = "") -> dict[str, Any]:
        """Pause, resume, approve, abort or roll back (the rollout's state may refuse: a logic error)."""
        if verb not in COMMANDS:
            raise ConfigError(f"unknown rollout command {verb!r}: expected one of {', '.join(COMMANDS)}")

        def run(r: logic.Rollout) -> logic.Decision:
            if verb == "pause":
                return logic.pause(r, reason or "paused by operator")
            if verb == "rollback":
                return logic.operator_rollback(r, reason or "rolled back by operator")
            verbs: dict[str, Callable[[logic.Rollout], logic.Decision]] = {
                "resume": logic.resume, "approve": logic.approve, "abort": logic.abort}
            decision = verbs[verb](r)
            if not reason:
                return decision
            return replace(decision, rollout=replace(decision.rollout, reason=f"{decision.rollout.reason}: {reason}"))

        rollout = self.rollouts_service.apply_command(rollout_id, run, actor, f"rollout_{verb}")
        return rollout_view(self.rollouts_service, rollout)

    # --- audit ---

    def audit(self, limit: int = 100, target: str | None = None) -> list[dict[str, Any]]:
        return [audit_view(r) for r in self.store.audit_log(limit, target)]

