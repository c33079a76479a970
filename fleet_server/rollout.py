"""Staged rollouts: the model and the pure decision function ``decide(rollout, observations, now)``.

No I/O here. The driver (server) gathers observations from the store, calls :func:`decide`, applies
the returned actions idempotently (publish desired states, record the new rollout state and the
reason in the audit log) and stores the returned rollout. A server restarted mid-rollout calls
``decide`` again with what is in the store and carries on.

A device counts as a success only when it *committed* the target (its probation passed on the
device) and its live telemetry on the target passes the stage's health gates after the soak time;
installed is not enough.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field, replace

from edgeops.errors import ConfigError

#: Hash buckets per rollout: a device's bucket decides in which stage it is updated.
BUCKETS = 10_000


class RolloutState(str, enum.Enum):
    """Where a rollout is. Terminal: succeeded, rolled_back, aborted (and failed, see below)."""

    #: Defined, not started.
    CREATED = "created"
    #: A stage passed its gates; the next one starts when an operator approves.
    WAITING_FOR_APPROVAL = "waiting_for_approval"
    #: Assigning devices of the current stage and evaluating its gates.
    RUNNING = "running"
    #: Stopped by an operator, or by a failing gate under the ``pause`` policy; resumable.
    PAUSED = "paused"
    #: Every stage passed.
    SUCCEEDED = "succeeded"
    #: A gate failed and the touched devices could not be rolled back (no previous version known).
    FAILED = "failed"
    #: A gate failed (or an operator asked): every touched device was sent back to its previous version.
    ROLLED_BACK = "rolled_back"
    #: Stopped by an operator; devices stay on whatever they run.
    ABORTED = "aborted"


TERMINAL = frozenset({RolloutState.SUCCEEDED, RolloutState.FAILED, RolloutState.ROLLED_BACK, RolloutState.ABORTED})


class FailurePolicy(str, enum.Enum):
    PAUSE = "pause"
    ROLLBACK = "rollback"


@dataclass(frozen=True)
class Gates:
    """When a stage passes. Shares are of the devices the stage updated."""

    #: Share of the stage's devices that must have committed the target.
    min_committed_share: float = 1.0
    #: Share of failed devices tolerated (judged only once ``min_sample`` devices are resolved).
    max_failed_share: float = 0.0
    min_sample: int = 1
    #: Error rate (errors / (inferences + errors)) on the target, pooled over the stage's devices.
    max_error_rate: float = 0.05
    #: Mean p95 latency on the target divided by the same devices' p95 on their previous version ...
    max_latency_ratio: float = 1.5
    #: ... judged only when the p95 also grew by more than this many milliseconds: at sub-millisecond
    #: latencies the ratio is scheduling noise, not a regression.
    latency_floor_ms: float = 1.0
    #: Inferences a figure needs before it is judged: the error rate, pooled over the stage's devices;
    #: a device's p95 latency, on the target *and* on its previous version. A p95 of a handful of
    #: inferences is the slowest one (a first call, a scheduling hiccup), not the version's latency.
    min_inferences: int = 20
    #: Mean drift score on the target (0..1 share of drifted features); None: not gated.
    max_drift_score: float | None = None
    #: Seconds every stage device must have run the target before health is judged.
    soak_s: float = 30.0
    #: A device silent for longer than this counts as failed.
    silence_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if self.min_inferences < 1 or self.min_sample < 1:
            raise ConfigError("min_inferences and min_sample must be at least 1")


@dataclass(frozen=True)
class Stage:
    name: str
    #: Cumulative share of the selected devices updated by the end of this stage (0 < p <= 100) ...
    percent: float | None = None
    #: ... or a cumulative device count (e.g. a canary of 1).
    count: int | None = None
    gates: Gates = field(default_factory=Gates)
    #: An operator must approve before this stage starts.
    approval: bool = False

    def __post_init__(self) -> None:
        if (self.percent is None) == (self.count is None):
            raise ConfigError(f"stage {self.name!r}: give exactly one of percent or count")
        if self.percent is not None and not 0 < self.percent <= 100:
            raise ConfigError(f"stage {self.name!r}: percent must be in (0, 100]")
        if self.count is not None and self.count < 1:
            raise ConfigError(f"stage {self.name!r}: count must be at least 1")

    def cumulative_target(self, population: int) -> int:
        if self.count is not None:
            return min(self.count, population)
        assert self.percent is not None
        return min(population, max(1, -(-int(self.percent * population) // 100)))


@dataclass(frozen=True)
class Rollout:
    id: str
    target_digest: str
    stages: tuple[Stage, ...]
    policy: FailurePolicy = FailurePolicy.ROLLBACK
    #: Devices updating at the same time (assigned, not yet resolved); 0 = no limit.
    max_concurrent: int = 0
    state: RolloutState = RolloutState.CREATED
    stage_index: int = 0
    #: device -> stage index at which it was assigned the target.
    assigned: dict[str, int] = field(default_factory=dict)
    #: device -> when it was assigned (server clock): a failure or refusal it reported before then
    #: is not a verdict on this rollout. Absent in records from before it was kept.
    assigned_ms: dict[str, int] = field(default_factory=dict)
    #: device -> digest it ran before the rollout touched it (the rollback target).
    previous: dict[str, str | None] = field(default_factory=dict)
    #: When every device of the current stage first was committed (start of the soak).
    stage_settled_ms: int | None = None
    reason: str = ""
    #: Which devices: ``all``, or comma-separated device ids and ``tag:NAME`` terms (the driver resolves it).
    selector: str = "all"

    def __post_init__(self) -> None:
        if not self.stages:
            raise ConfigError("a rollout needs at least one stage")
        targets = [s.cumulative_target(10**6) if s.percent is not None else None for s in self.stages]
        last = 0.0
        for stage, target in zip(self.stages, targets, strict=True):
            if target is not None and target < last:
                raise ConfigError(f"stage {stage.name!r} covers fewer devices than the one before it")
            last = target or last


class DeviceHealth(str, enum.Enum):
    PENDING = "pending"
    COMMITTED = "committed"
    FAILED = "failed"


@dataclass(frozen=True)
class Figures:
    """A device's telemetry on the rollout's target version (None: no window yet), and before it."""

    error_rate: float | None = None
    latency_ms_p95: float | None = None
    drift_score: float | None = None
    #: Inferences on the target behind those figures, failed ones included ...
    samples: int = 0
    #: ... of which this many succeeded (they have a latency).
    latency_samples: int = 0
    #: p95 latency on the version before the rollout, same device, and from how many inferences.
    baseline_latency_ms_p95: float | None = None
    baseline_samples: int = 0


@dataclass(frozen=True)
class Observation:
    """What the server knows of one selected device, from its reported state and telemetry."""

    device_id: str
    online: bool
    last_seen_ms: int
    #: Reported update phase and running digest.
    phase: str | None
    active_digest: str | None
    figures: Figures = field(default_factory=Figures)
    #: When its reported update state last changed, and when it last refused a desired message
    #: (server clock; see fleet_server.sync).
    progress_ms: int | None = None
    rejected_ms: int | None = None


def bucket(rollout_id: str, device_id: str) -> int:
    """Deterministic per-(device, rollout) bucket: raising a percentage only adds devices."""
    digest = hashlib.sha256(f"{rollout_id}\x00{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def stage_order(rollout_id: str, device_ids: list[str]) -> list[str]:
    return sorted(device_ids, key=lambda d: (bucket(rollout_id, d), d))


def device_health(obs: Observation | None, target: str, gates: Gates, now_ms: int,
                  assigned_ms: int | None = None) -> DeviceHealth:
    """A device's verdict on ``target`` since it was assigned it at ``assigned_ms``.

    A failed phase reported before the assignment (the version before failed on it) is not this
    rollout's failure: that device is pending until it reports again. A refusal of a desired
    message after the assignment is one: it will never start on the target by itself. Without
    ``assigned_ms`` or a progress time (older records) a failed phase counts, as it always did.
    """
    if obs is None:
        return DeviceHealth.PENDING
    if now_ms - obs.last_seen_ms > gates.silence_timeout_s * 1000:
        return DeviceHealth.FAILED
    if obs.active_digest == target and obs.phase == "committed":
        return DeviceHealth.COMMITTED
    if assigned_ms is not None and obs.rejected_ms is not None and obs.rejected_ms >= assigned_ms:
        return DeviceHealth.FAILED
    if obs.phase == "failed" and obs.active_digest != target:
        stale = assigned_ms is not None and obs.progress_ms is not None and obs.progress_ms < assigned_ms
        return DeviceHealth.PENDING if stale else DeviceHealth.FAILED
    return DeviceHealth.PENDING


def _health(rollout: Rollout, observations: dict[str, Observation], device_id: str, now_ms: int) -> DeviceHealth:
    """:func:`device_health` of one assigned device against the current stage's gates."""
    gates = rollout.stages[rollout.stage_index].gates
    return device_health(observations.get(device_id), rollout.target_digest, gates, now_ms,
                         rollout.assigned_ms.get(device_id))


# --- actions -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Assign:
    """Publish the target as the desired version of these devices."""

    device_ids: tuple[str, ...]
    stage_index: int


@dataclass(frozen=True)
class Revert:
    """Publish a signed rollback desired state: each device back to the digest it ran before."""

    targets: tuple[tuple[str, str], ...]
    reason: str


@dataclass(frozen=True)
class StateChange:
    """The rollout changed state; the driver records it with ``reason`` in the audit log."""

    old: RolloutState
    new: RolloutState
    reason: str


Action = Assign | Revert | StateChange


@dataclass(frozen=True)
class Decision:
    rollout: Rollout
    actions: tuple[Action, ...]


@dataclass(frozen=True)
class StageVerdict:
    passed: bool
    failed: bool
    reason: str


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


@dataclass(frozen=True)
class StageFigures:
    """What the current stage's gates compare, computed once for the driver and the dashboard."""

    members: tuple[str, ...]
    failed: tuple[str, ...]
    committed: tuple[str, ...]
    #: errors / inferences on the target, pooled over the committed devices ...
    error_rate: float | None
    #: ... and how many inferences (failed ones included) that rests on.
    samples: int
    #: Devices whose error rate is in the pool.
    rated: int
    #: Mean p95 ratio and growth (ms) over the devices with enough inferences on both versions.
    latency_ratio: float | None
    latency_growth_ms: float | None
    latency_judged: int
    #: Devices with a baseline whose latency waits for enough inferences on the target.
    latency_waiting: tuple[str, ...]
    drift_score: float | None

    @property
    def resolved(self) -> int:
        return len(self.failed) + len(self.committed)

    def error_rate_judged(self, g: Gates) -> bool:
        return self.error_rate is not None and self.samples >= g.min_inferences

    def failed_share_exceeded(self, g: Gates) -> bool:
        return self.resolved >= g.min_sample and len(self.failed) / len(self.members) > g.max_failed_share

    def latency_exceeded(self, g: Gates) -> bool:
        return (self.latency_ratio is not None and self.latency_growth_ms is not None
                and self.latency_ratio > g.max_latency_ratio and self.latency_growth_ms > g.latency_floor_ms)


def stage_figures(rollout: Rollout, observations: dict[str, Observation], now_ms: int) -> StageFigures:
    """The current stage's figures from the observations of the devices it updated."""
    g = rollout.stages[rollout.stage_index].gates
    members = tuple(d for d, s in rollout.assigned.items() if s == rollout.stage_index)
    health = {d: _health(rollout, observations, d, now_ms) for d in members}
    committed = tuple(d for d, h in health.items() if h is DeviceHealth.COMMITTED)
    on_target = [observations[d].figures for d in committed]
    rated = [o for o in on_target if o.error_rate is not None and o.samples > 0]
    samples = sum(o.samples for o in rated)
    pairs = [pair for pair in (_latency_pair(o, g) for o in on_target) if pair is not None]
    return StageFigures(
        members=members,
        failed=tuple(d for d, h in health.items() if h is DeviceHealth.FAILED),
        committed=committed,
        error_rate=sum((o.error_rate or 0.0) * o.samples for o in rated) / samples if samples else None,
        samples=samples,
        rated=len(rated),
        latency_ratio=_mean([p95 / base for p95, base in pairs]),
        latency_growth_ms=_mean([p95 - base for p95, base in pairs]),
        latency_judged=len(pairs),
        latency_waiting=tuple(d for d, o in zip(committed, on_target, strict=True)
                              if o.baseline_samples >= g.min_inferences and o.latency_samples < g.min_inferences),
        drift_score=_mean([o.drift_score for o in on_target if o.drift_score is not None]),
    )


def evaluate_stage(rollout: Rollout, observations: dict[str, Observation], now_ms: int) -> StageVerdict:
    """Judge the devices the current stage updated against its gates."""
    g = rollout.stages[rollout.stage_index].gates
    f = stage_figures(rollout, observations, now_ms)
    members, failed, committed = f.members, f.failed, f.committed
    if not members:
        return StageVerdict(False, False, "no devices assigned yet")
    if f.failed_share_exceeded(g):
        return StageVerdict(False, True, f"{len(failed)} of {len(members)} devices failed "
                            f"(allowed {g.max_failed_share:.0%}): {', '.join(sorted(failed)[:5])}")
    if f.error_rate_judged(g) and f.error_rate is not None and f.error_rate > g.max_error_rate:
        return StageVerdict(False, True, f"error rate {f.error_rate:.1%} exceeds {g.max_error_rate:.1%} "
                            f"({f.samples} inferences on {f.rated} device(s))")
    if f.latency_exceeded(g):
        return StageVerdict(False, True, f"p95 latency {f.latency_ratio:.2f}x the previous version "
                            f"(limit {g.max_latency_ratio}x)")
    if g.max_drift_score is not None and f.drift_score is not None and f.drift_score > g.max_drift_score:
        return StageVerdict(False, True, f"drift score {f.drift_score:.2f} exceeds {g.max_drift_score:.2f}")
    if f.resolved < len(members) or len(committed) / len(members) < g.min_committed_share:
        return StageVerdict(False, False, f"{len(committed)} of {len(members)} committed")
    if rollout.stage_settled_ms is None or now_ms - rollout.stage_settled_ms < g.soak_s * 1000:
        return StageVerdict(False, False, "soaking")
    if f.samples < g.min_inferences:
        return StageVerdict(False, False, f"waiting for telemetry: {f.samples} of {g.min_inferences} "
                            "inferences on the target")
    if f.latency_waiting:
        return StageVerdict(False, False, f"waiting for {g.min_inferences} inferences on the target to judge "
                            f"the latency of {len(f.latency_waiting)} device(s): "
                            f"{', '.join(sorted(f.latency_waiting)[:5])}")
    return StageVerdict(True, False, f"{len(committed)} of {len(members)} committed and healthy "
                        f"(latency judged on {f.latency_judged})")


def _latency_pair(o: Figures, g: Gates) -> tuple[float, float] | None:
    """(p95 on the target, p95 before), when both rest on enough inferences to mean something."""
    if (o.latency_ms_p95 is None or not o.baseline_latency_ms_p95
            or o.latency_samples < g.min_inferences or o.baseline_samples < g.min_inferences):
        return None
    return o.latency_ms_p95, o.baseline_latency_ms_p95


def _with_state(rollout: Rollout, new: RolloutState, reason: str, actions: list[Action]) -> Rollout:
    if new is not rollout.state:
        actions.append(StateChange(rollout.state, new, reason))
    return replace(rollout, state=new, reason=reason)


def decide(rollout: Rollout, selected: list[str], observations: dict[str, Observation], now_ms: int) -> Decision:
    """The next rollout and the actions to get there. Pure and idempotent: the same inputs give
    the same outputs, and applying them twice changes nothing more."""
    actions: list[Action] = []
    if rollout.state is not RolloutState.RUNNING:
        return Decision(rollout, ())
    verdict = evaluate_stage(rollout, observations, now_ms)
    if verdict.failed:
        return Decision(_fail(rollout, verdict.reason, actions), tuple(actions))
    stage = rollout.stages[rollout.stage_index]
    members = [d for d, s in rollout.assigned.items() if s == rollout.stage_index]
    all_committed = members and all(
        _health(rollout, observations, d, now_ms) is DeviceHealth.COMMITTED for d in members)
    ordered = stage_order(rollout.id, selected)
    wanted = ordered[: stage.cumulative_target(len(ordered))]
    unassigned = [d for d in wanted if d not in rollout.assigned]
    if not members and not unassigned and ordered:
        # A small fleet: canary:1 then 50% of two devices adds nobody. Nothing to judge, go on.
        return Decision(_advance(rollout, f"no devices to add (stage covers {len(wanted)} of {len(ordered)})",
                                 actions), tuple(actions))
    if all_committed and not unassigned and rollout.stage_settled_ms is None:
        rollout = replace(rollout, stage_settled_ms=now_ms)
        verdict = evaluate_stage(rollout, observations, now_ms)
    if verdict.passed and not unassigned:
        return Decision(_advance(rollout, verdict.reason, actions), tuple(actions))
    if unassigned:
        in_flight = sum(1 for d in rollout.assigned
                        if _health(rollout, observations, d, now_ms) is DeviceHealth.PENDING)
        room = len(unassigned) if rollout.max_concurrent <= 0 else max(0, rollout.max_concurrent - in_flight)
        batch = unassigned[:room]
        if batch:
            previous = dict(rollout.previous)
            for d in batch:
                obs = observations.get(d)
                previous[d] = obs.active_digest if obs else None
            assigned = {**rollout.assigned, **dict.fromkeys(batch, rollout.stage_index)}
            assigned_ms = {**rollout.assigned_ms, **dict.fromkeys(batch, now_ms)}
            rollout = replace(rollout, assigned=assigned, assigned_ms=assigned_ms, previous=previous,
                              stage_settled_ms=None)
            actions.append(Assign(tuple(batch), rollout.stage_index))
    return Decision(rollout, tuple(actions))


def _advance(rollout: Rollout, reason: str, actions: list[Action]) -> Rollout:
    stage = rollout.stages[rollout.stage_index]
    if rollout.stage_index + 1 >= len(rollout.stages):
        return _with_state(rollout, RolloutState.SUCCEEDED, f"stage {stage.name} passed: {reason}", actions)
    nxt = rollout.stage_index + 1
    rollout = replace(rollout, stage_index=nxt, stage_settled_ms=None)
    if rollout.stages[nxt].approval:
        return _with_state(rollout, RolloutState.WAITING_FOR_APPROVAL,
                           f"stage {stage.name} passed; {rollout.stages[nxt].name} needs approval", actions)
    actions.append(StateChange(RolloutState.RUNNING, RolloutState.RUNNING,
                               f"stage {stage.name} passed: {reason}; starting {rollout.stages[nxt].name}"))
    return rollout


def _fail(rollout: Rollout, reason: str, actions: list[Action]) -> Rollout:
    stage = rollout.stages[rollout.stage_index].name
    if rollout.policy is FailurePolicy.PAUSE:
        return _with_state(rollout, RolloutState.PAUSED, f"stage {stage} failed: {reason}", actions)
    return rollback(rollout, f"stage {stage} failed: {reason}", actions)


def rollback(rollout: Rollout, reason: str, actions: list[Action] | None = None) -> Rollout:
    """Send every touched device back to the digest it ran before (operator or gate)."""
    out = actions if actions is not None else []
    targets = tuple(sorted((d, prev) for d, prev in rollout.previous.items()
                           if d in rollout.assigned and prev is not None and prev != rollout.target_digest))
    unknown = sorted(d for d in rollout.assigned if rollout.previous.get(d) is None)
    if targets:
        out.append(Revert(targets, reason))
    state = RolloutState.FAILED if unknown and not targets else RolloutState.ROLLED_BACK
    if unknown:
        reason += f"; no previous version known for {', '.join(unknown[:5])}"
    return _with_state(rollout, state, reason, out)


# --- operator commands (pure) --------------------------------------------------------------------


def start(rollout: Rollout) -> Decision:
    return _command(rollout, {RolloutState.CREATED}, RolloutState.RUNNING, "started")


def pause(rollout: Rollout, reason: str = "paused by operator") -> Decision:
    return _command(rollout, {RolloutState.RUNNING, RolloutState.WAITING_FOR_APPROVAL}, RolloutState.PAUSED, reason)


def resume(rollout: Rollout) -> Decision:
    return _command(rollout, {RolloutState.PAUSED}, RolloutState.RUNNING, "resumed by operator")


def approve(rollout: Rollout) -> Decision:
    return _command(rollout, {RolloutState.WAITING_FOR_APPROVAL}, RolloutState.RUNNING, "approved by operator")


def abort(rollout: Rollout) -> Decision:
    live = set(RolloutState) - TERMINAL
    return _command(rollout, live, RolloutState.ABORTED, "aborted by operator")


def operator_rollback(rollout: Rollout, reason: str = "rolled back by operator") -> Decision:
    if rollout.state in TERMINAL - {RolloutState.SUCCEEDED}:
        raise ConfigError(f"rollout {rollout.id} is {rollout.state.value}; nothing to roll back")
    actions: list[Action] = []
    return Decision(rollback(rollout, reason, actions), tuple(actions))


def _command(rollout: Rollout, allowed: set[RolloutState], new: RolloutState, reason: str) -> Decision:
    if rollout.state not in allowed:
        raise ConfigError(f"rollout {rollout.id} is {rollout.state.value}; cannot go to {new.value}")
    actions: list[Action] = []
    return Decision(_with_state(rollout, new, reason, actions), tuple(actions))


# --- persistence (pure): a rollout as a JSON-safe dict and back -----------------------------------


def rollout_to_dict(rollout: Rollout) -> dict[str, object]:
    return {
        "version": 1,
        "id": rollout.id,
        "target_digest": rollout.target_digest,
        "stages": [
            {"name": s.name, "percent": s.percent, "count": s.count, "approval": s.approval,
             "gates": dict(s.gates.__dict__)}
            for s in rollout.stages
        ],
        "policy": rollout.policy.value,
        "max_concurrent": rollout.max_concurrent,
        "state": rollout.state.value,
        "stage_index": rollout.stage_index,
        "assigned": dict(rollout.assigned),
        "assigned_ms": dict(rollout.assigned_ms),
        "previous": dict(rollout.previous),
        "stage_settled_ms": rollout.stage_settled_ms,
        "reason": rollout.reason,
        "selector": rollout.selector,
    }


def rollout_from_dict(data: dict[str, object]) -> Rollout:
    if data.get("version") != 1:
        raise ConfigError(f"unknown rollout record version {data.get('version')!r}")
    stages = tuple(
        Stage(name=s["name"], percent=s["percent"], count=s["count"], approval=s["approval"],
              gates=Gates(**s["gates"]))
        for s in data["stages"]  # type: ignore[attr-defined]
    )
    return Rollout(
        id=str(data["id"]),
        target_digest=str(data["target_digest"]),
        stages=stages,
        policy=FailurePolicy(data["policy"]),
        max_concurrent=int(data["max_concurrent"]),  # type: ignore[call-overload]
        state=RolloutState(data["state"]),
        stage_index=int(data["stage_index"]),  # type: ignore[call-overload]
        assigned={str(k): int(v) for k, v in data["assigned"].items()},  # type: ignore[attr-defined]
        assigned_ms={str(k): int(v) for k, v in data.get("assigned_ms", {}).items()},  # type: ignore[attr-defined]
        previous={str(k): v for k, v in data["previous"].items()},  # type: ignore[attr-defined]
        stage_settled_ms=data["stage_settled_ms"],  # type: ignore[arg-type]
        reason=str(data["reason"]),
        selector=str(data.get("selector", "all")),
    )


def parse_stages(text: str, gates: Gates) -> tuple[Stage, ...]:
    """``canary:1,10%,50%,100%`` -> stages; a bare number is a device count, ``N%`` a share."""
    stages = []
    for i, part in enumerate(p.strip() for p in text.split(",") if p.strip()):
        name, sep, size = part.partition(":")
        if not sep:
            name, size = "", part
        size = size.strip()
        try:
            if size.endswith("%"):
                stage = Stage(name or f"{size}", percent=float(size[:-1]), gates=gates)
            else:
                stage = Stage(name or f"{size} devices", count=int(size), gates=gates)
        except ValueError:
            raise ConfigError(f"invalid stage {part!r}: expected [NAME:]COUNT or [NAME:]PERCENT%") from None
        stages.append(replace(stage, name=stage.name if name else (f"stage {i + 1} ({size})")))
    if not stages:
        raise ConfigError("no stages given")
    return tuple(stages)
