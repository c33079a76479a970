"""Drives stored rollouts: observations from the store in, actions out, all of it audited.

The decisions are :func:`fleet_server.rollout.decide`'s; this module only reads and writes. Every
write of a rollout is optimistic (a revision number), so the CLI and the server can both act on it.
Actions are applied idempotently and *derived from the stored rollout* on every tick (assigned
devices must desire the target, reverted ones their previous version), so a server killed between
saving a decision and publishing it carries on correctly after a restart.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import replace
from statistics import median

from edgeops.errors import ConfigError, NotFoundError
from fleet_server.rollout import (
    Assign,
    Decision,
    FailurePolicy,
    Figures,
    Gates,
    Observation,
    Revert,
    Rollout,
    RolloutState,
    StateChange,
    decide,
    parse_stages,
    rollout_from_dict,
    rollout_to_dict,
    start,
)
from fleet_server.store import ALL_DEVICES, DeviceRow, Store, check_tag, now_ms, split_selector

log = logging.getLogger(__name__)
#: Telemetry windows per device that the health gates look at, at least; more if they hold fewer
#: inferences than the stage's ``min_inferences`` (a device that infers once a minute).
WINDOWS = 5
#: Windows read per device for the gates (target and previous version together), at most.
WINDOWS_READ = 50
LIVE = (RolloutState.RUNNING.value, RolloutState.PAUSED.value, RolloutState.WAITING_FOR_APPROVAL.value)


_NO_FIGURES = Figures()
#: Cached gate figures (one per device and newest window) before the cache starts over.
FIGURES_CACHE_SIZE = 20_000


class RolloutService:
    def __init__(self, store: Store, fleet: str) -> None:
        self.store = store
        self.fleet = fleet
        self._figures_cache: dict[tuple[object, ...], Figures] = {}

    # --- reading --------------------------------------------------------------------------------

    def get(self, rollout_id: str) -> Rollout:
        record, _ = self.store.rollout_record(rollout_id)
        return rollout_from_dict(json.loads(record))

    def all_rollouts(self) -> list[Rollout]:
        return [self.get(i) for i in self.store.rollout_ids(self.fleet)]

    def selected(self, rollout: Rollout) -> list[str]:
        """The devices a rollout's selector names now: ``all``, device ids, ``tag:NAME`` terms.

        Tags are resolved through the store on every tick, like ``all``: a device tagged after the
        rollout started joins its remaining stages.
        """
        if rollout.selector == ALL_DEVICES:
            return [d.device_id for d in self.store.devices(self.fleet)]
        ids, tags = split_selector(rollout.selector)
        chosen = dict.fromkeys(ids)
        for tag in tags:
            chosen.update(dict.fromkeys(d.device_id for d in self.store.devices(self.fleet, tag=tag)))
        return list(chosen)

    def observations(self, rollout: Rollout, devices: list[str]) -> dict[str, Observation]:
        """Every selected device's reported state; telemetry only where the gates read it.

        The gates judge the current stage's devices that committed the target (see
        :func:`~fleet_server.rollout.evaluate_stage`), so only those devices' windows are read, and
        each device's figures are reused until it sends a new window: at 1,000 devices reading
        every device's windows on every tick was most of the server's work during a rollout.
        """
        rows = {d.device_id: d for d in self.store.devices(self.fleet)}
        min_inferences = rollout.stages[rollout.stage_index].gates.min_inferences
        versions: dict[str | None, tuple[str, str] | None] = {}

        def version(digest: str | None) -> tuple[str, str] | None:
            if digest not in versions:
                versions[digest] = self._version(digest)
            return versions[digest]

        out: dict[str, Observation] = {}
        for device_id in devices:
            row = rows.get(device_id)
            if row is None:
                continue
            judged = (rollout.assigned.get(device_id) == rollout.stage_index and row.phase == "committed"
                      and row.active_digest == rollout.target_digest)
            figures = (self._figures(row, version(rollout.target_digest), version(rollout.previous.get(device_id)),
                                     min_inferences) if judged else _NO_FIGURES)
            out[device_id] = Observation(device_id=device_id, online=row.online, last_seen_ms=row.last_seen_ms,
                                         phase=row.phase, active_digest=row.active_digest, figures=figures,
                                         progress_ms=row.progress_ms, rejected_ms=row.rejected_ms)
        return out

    def _figures(self, row: DeviceRow, target: tuple[str, str] | None, previous: tuple[str, str] | None,
                 min_inferences: int) -> Figures:
        """The device's newest windows on the target and on the version before (cached per window).

        At least WINDOWS windows on each side (the p95 is their windows' median, so one slow
        window does not decide), more while they hold fewer than ``min_inferences``.
        """
        newest = (row.last_telemetry or {}).get("window_id")
        key = (row.device_id, row.last_telemetry_ms, newest, target, previous, min_inferences)
        cached = self._figures_cache.get(key)
        if cached is not None:
            return cached
        windows = self.store.telemetry_windows(self.fleet, row.device_id, limit=WINDOWS_READ)
        on_target = _newest(windows, target, min_inferences)
        before = _newest(windows, previous, min_inferences) if previous else []
        inferences = sum(_count(w, "inferences") for w in on_target)
        errors = sum(_count(w, "errors") for w in on_target)
        figures = Figures(
            error_rate=errors / (inferences + errors) if inferences + errors else None,
            latency_ms_p95=_median(on_target, "latency_ms_p95"),
            drift_score=_median(on_target, "drift_score"),
            samples=inferences + errors,
            latency_samples=inferences,
            baseline_latency_ms_p95=_median(before, "latency_ms_p95"),
            baseline_samples=sum(_count(w, "inferences") for w in before),
        )
        if len(self._figures_cache) >= FIGURES_CACHE_SIZE:
            self._figures_cache.clear()  # stale keys of earlier windows; cheap to rebuild
        self._figures_cache[key] = figures
        return figures

    def _version(self, digest: str | None) -> tuple[str, str] | None:
        if digest is None:
            return None
        try:
            row = self.store.model_by_digest(digest)
        except NotFoundError:
            return None
        return row.name, row.version

    # --- writing --------------------------------------------------------------------------------

    def create(self, rollout: Rollout, actor: str, reason: str = "") -> Rollout:
        self.store.create_rollout(self.fleet, rollout.id, rollout.target_digest, rollout.state.value,
                                  json.dumps(rollout_to_dict(rollout)))
        self.store.audit(actor, "rollout_create", rollout.id, reason, json.dumps(rollout_to_dict(rollout)))
        return rollout

    def start_new(
        self,
        target_digest: str,
        selector: str,
        stages: str,
        gates: Gates,
        *,
        policy: str = "rollback",
        max_concurrent: int = 0,
        approval: bool = False,
        actor: str,
        reason: str = "",
    ) -> Rollout:
        """Create and start a rollout (the CLI's and the HTTP API's one way to do it).

        ``stages`` as for :func:`parse_stages`; ``selector`` as :meth:`selected` reads it;
        ``approval`` makes every stage after the first wait for an operator. Bad input raises ConfigError.
        """
        parsed = parse_stages(stages, gates)
        for tag in split_selector(selector)[1]:
            check_tag(tag)  # a bad tag fails here, not on every tick of the server
        if approval:
            parsed = (parsed[0], *(replace(s, approval=True) for s in parsed[1:]))
        try:
            chosen = FailurePolicy(policy)
        except ValueError:
            raise ConfigError("policy must be rollback or pause") from None
        rollout = Rollout(id=new_rollout_id(), target_digest=target_digest, stages=parsed, policy=chosen,
                          max_concurrent=max_concurrent, selector=selector)
        started = start(rollout).rollout
        if reason:
            started = replace(started, reason=f"started: {reason}")
        return self.create(started, actor, reason)

    def apply_command(self, rollout_id: str, command: Callable[[Rollout], Decision], actor: str,
                      action: str) -> Rollout:
        """Run an operator command (pause, resume, ...) with an optimistic write; retried on conflict."""
        for _ in range(20):
            record, revision = self.store.rollout_record(rollout_id)
            decision = command(rollout_from_dict(json.loads(record)))
            if self._save(decision, revision):
                self.store.audit(actor, action, rollout_id, decision.rollout.reason)
                self._apply(decision.rollout, decision.actions, actor)
                return decision.rollout
        raise ConfigError(f"rollout {rollout_id} is changing too fast; try again")

    def tick(self, now: int | None = None) -> None:
        """One driver step over every live rollout."""
        now = now_ms() if now is None else now
        for rollout_id in self.store.rollout_ids(self.fleet, LIVE):
            record, revision = self.store.rollout_record(rollout_id)
            rollout = rollout_from_dict(json.loads(record))
            devices = self.selected(rollout)
            decision = decide(rollout, devices, self.observations(rollout, devices), now)
            if decision.rollout != rollout and not self._save(decision, revision):
                continue  # an operator changed it meanwhile: decide again next tick
            self._apply(decision.rollout, decision.actions, "server")
        for rollout_id in self.store.rollout_ids(self.fleet, (RolloutState.ROLLED_BACK.value,)):
            self._ensure_desired(self.get(rollout_id))

    def _save(self, decision: Decision, revision: int) -> bool:
        r = decision.rollout
        return self.store.update_rollout(r.id, revision, r.state.value, json.dumps(rollout_to_dict(r)))

    def _apply(self, rollout: Rollout, actions: tuple[object, ...], actor: str) -> None:
        for action in actions:
            if isinstance(action, StateChange):
                log.info("rollout %s %s -> %s: %s", rollout.id, action.old.value, action.new.value, action.reason)
                self.store.audit(actor, "rollout_state", rollout.id, action.reason,
                                 json.dumps({"old": action.old.value, "new": action.new.value}))
            elif isinstance(action, Assign):
                self.store.audit(actor, "rollout_assign", rollout.id, f"stage {action.stage_index + 1}",
                                 json.dumps({"devices": list(action.device_ids)}))
            elif isinstance(action, Revert):
                self.store.audit(actor, "rollout_revert", rollout.id, action.reason,
                                 json.dumps({"devices": dict(action.targets)}))
        self._ensure_desired(rollout)

    def _ensure_desired(self, rollout: Rollout) -> None:
        """Make the store's desired versions match the rollout (idempotent)."""
        desired = self.store.desired_for(self.fleet)
        created = self.store.rollout_created_ms(rollout.id)
        reverting = rollout.state in (RolloutState.ROLLED_BACK, RolloutState.FAILED)
        wanted: dict[tuple[str, bool], list[str]] = {}
        for device_id in rollout.assigned:
            if reverting:
                digest = rollout.previous.get(device_id)
                if digest is None or digest == rollout.target_digest:
                    continue
            else:
                digest = rollout.target_digest
            current = desired.get(device_id)
            if current is not None and current.digest == digest and current.rollout_id == rollout.id:
                continue
            if current is not None and current.rollout_id != rollout.id and current.created_ms >= created:
                continue  # deployed by someone else after this rollout started: theirs wins
            wanted.setdefault((digest, reverting), []).append(device_id)
        for (digest, rollback), devices in wanted.items():
            self.store.add_deployment(self.fleet, digest, ",".join(sorted(devices)), rollout_id=rollout.id,
                                      rollback=rollback)
            log.info("rollout %s desired %s for %d device(s) rollback=%s", rollout.id, digest[:12], len(devices),
                     rollback)


def new_rollout_id() -> str:
    return "r-" + uuid.uuid4().hex[:8]


def _count(window: dict[str, object], key: str) -> int:
    value = window.get(key)
    return int(value) if isinstance(value, (int, float)) else 0


def _newest(windows: list[dict[str, object]], version: tuple[str, str] | None,
            min_inferences: int) -> list[dict[str, object]]:
    """The newest windows (``windows`` is newest first) of ``version``: WINDOWS of them, or more
    until they hold ``min_inferences`` inferences (failed ones included)."""
    out: list[dict[str, object]] = []
    seen = 0
    for w in windows:
        if (w.get("model"), w.get("model_version")) != version:
            continue
        if len(out) >= WINDOWS and seen >= min_inferences:
            break
        out.append(w)
        seen += _count(w, "inferences") + _count(w, "errors")
    return out


def _median(windows: list[dict[str, object]], key: str) -> float | None:
    values = [float(w[key]) for w in windows if isinstance(w.get(key), (int, float))]  # type: ignore[arg-type]
    return float(median(values)) if values else None
