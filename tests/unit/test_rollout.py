"""The rollout decision function: table-driven cases and properties, no broker, no store."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeops.errors import ConfigError
from fleet_server.rollout import (
    Assign,
    FailurePolicy,
    Gates,
    Observation,
    Revert,
    Rollout,
    RolloutState,
    Stage,
    approve,
    decide,
    pause,
    resume,
    stage_order,
    start,
)

OLD, NEW = "o" * 64, "n" * 64
NOW = 1_000_000
FAST = Gates(soak_s=10, silence_timeout_s=60)
DEVICES = [f"d{i:02d}" for i in range(20)]


def rollout(**kw: object) -> Rollout:
    stages = (Stage("canary", count=1, gates=FAST), Stage("half", percent=50, gates=FAST),
              Stage("all", percent=100, gates=FAST))
    base = Rollout(id="r1", target_digest=NEW, stages=stages)
    return replace(start(base).rollout, **kw)  # type: ignore[arg-type]


def obs(device: str, digest: str = OLD, phase: str = "committed", now: int = NOW, **kw: object) -> Observation:
    return Observation(device_id=device, online=True, last_seen_ms=now, phase=phase, active_digest=digest,
                       **kw)  # type: ignore[arg-type]


def fleet_on(digest_of: dict[str, str], now: int = NOW, **kw: object) -> dict[str, Observation]:
    return {d: obs(d, digest_of.get(d, OLD), now=now, **kw) for d in DEVICES}


def drive(r: Rollout, healthy: bool = True, steps: int = 60) -> Rollout:
    """Simulate devices that do what they are told, healthy or not, and call decide repeatedly."""
    running: dict[str, str] = {}
    now = NOW
    for _ in range(steps):
        observations = {
            d: obs(d, running.get(d, OLD), now=now, error_rate=0.0 if healthy else 0.5, latency_ms_p95=1.0,
                   baseline_latency_ms_p95=1.0)
            for d in DEVICES
        }
        decision = decide(r, DEVICES, observations, now)
        for action in decision.actions:
            if isinstance(action, Assign):
                running.update(dict.fromkeys(action.device_ids, NEW))
            if isinstance(action, Revert):
                running.update(dict(action.targets))
        r = decision.rollout
        now += 5_000
        if r.state is not RolloutState.RUNNING:
            break
    return r


def test_a_good_version_passes_every_stage() -> None:
    final = drive(rollout())
    assert final.state is RolloutState.SUCCEEDED
    assert set(final.assigned) == set(DEVICES)
    assert [final.assigned[d] for d in stage_order("r1", DEVICES)][:1] == [0]


def test_a_bad_version_fails_the_canary_and_is_rolled_back() -> None:
    bad = drive(rollout(), healthy=False)
    assert bad.state is RolloutState.ROLLED_BACK
    assert list(bad.assigned.values()) == [0]  # only the canary was touched
    assert "error rate" in bad.reason


def test_pause_policy_pauses_instead() -> None:
    bad = drive(rollout(policy=FailurePolicy.PAUSE), healthy=False)
    assert bad.state is RolloutState.PAUSED and "canary failed" in bad.reason


def test_canary_assigns_exactly_one_device_then_waits() -> None:
    decision = decide(rollout(), DEVICES, fleet_on({}), NOW)
    assigns = [a for a in decision.actions if isinstance(a, Assign)]
    assert len(assigns) == 1 and len(assigns[0].device_ids) == 1
    again = decide(decision.rollout, DEVICES, fleet_on({}), NOW)
    assert not [a for a in again.actions if isinstance(a, Assign)]  # idempotent while pending


def test_silent_device_counts_as_failed() -> None:
    first = decide(rollout(), DEVICES, fleet_on({}), NOW)
    canary = first.rollout.assigned
    (device,) = canary
    late = NOW + 61_000
    observations = fleet_on({}, now=late)
    observations[device] = obs(device, OLD, phase="fetching", now=NOW)
    result = decide(first.rollout, DEVICES, observations, late)
    assert result.rollout.state is RolloutState.ROLLED_BACK and "failed" in result.rollout.reason


def test_latency_gate_against_the_previous_version() -> None:
    first = decide(rollout(), DEVICES, fleet_on({}), NOW)
    (device,) = first.rollout.assigned
    observations = fleet_on({})
    # Sub-millisecond jitter (3x, but only +0.2 ms) is not a regression ...
    observations[device] = obs(device, NEW, error_rate=0.0, latency_ms_p95=0.3, baseline_latency_ms_p95=0.1)
    assert decide(first.rollout, DEVICES, observations, NOW + 1).rollout.state is RolloutState.RUNNING
    # ... 3x and +2 ms is.
    observations[device] = obs(device, NEW, error_rate=0.0, latency_ms_p95=3.0, baseline_latency_ms_p95=1.0)
    result = decide(first.rollout, DEVICES, observations, NOW + 1)
    assert result.rollout.state is RolloutState.ROLLED_BACK and "latency" in result.rollout.reason
    reverts = [a for a in result.actions if isinstance(a, Revert)]
    assert reverts and reverts[0].targets == ((device, OLD),)


def test_approval_stage_waits_for_an_operator() -> None:
    stages = (Stage("canary", count=1, gates=FAST), Stage("rest", percent=100, gates=FAST, approval=True))
    r = start(Rollout(id="r2", target_digest=NEW, stages=stages)).rollout
    final = drive(r)
    assert final.state is RolloutState.WAITING_FOR_APPROVAL and final.stage_index == 1
    assert drive(approve(final).rollout).state is RolloutState.SUCCEEDED


def test_operator_commands_check_the_state() -> None:
    r = rollout()
    paused = pause(r).rollout
    assert paused.state is RolloutState.PAUSED
    assert decide(paused, DEVICES, fleet_on({}), NOW).actions == ()
    assert resume(paused).rollout.state is RolloutState.RUNNING
    with pytest.raises(ConfigError):
        approve(r)
    with pytest.raises(ConfigError):
        Stage("bad", percent=0)
    with pytest.raises(ConfigError):
        Rollout(id="x", target_digest=NEW, stages=(Stage("a", percent=50), Stage("b", percent=10)))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text("abcdef0123456789", min_size=1, max_size=6), min_size=1, max_size=40, unique=True),
       st.integers(1, 99), st.integers(1, 100))
def test_raising_a_percentage_only_adds_devices(devices: list[str], low: int, high: int) -> None:
    low, high = sorted((low, high))
    order = stage_order("rollout-x", devices)
    small = set(order[: Stage("s", percent=low).cumulative_target(len(order))])
    large = set(order[: Stage("l", percent=high).cumulative_target(len(order))])
    assert small <= large


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 20), st.booleans())
def test_max_concurrent_is_respected(limit: int, healthy: bool) -> None:
    r = rollout(max_concurrent=limit)
    decision = decide(replace(r, stage_index=2), DEVICES, fleet_on({}), NOW)
    assigned = sum(len(a.device_ids) for a in decision.actions if isinstance(a, Assign))
    assert assigned == (len(DEVICES) if limit == 0 else min(limit, len(DEVICES)))


def test_records_round_trip_and_stages_parse() -> None:
    from fleet_server.rollout import parse_stages, rollout_from_dict, rollout_to_dict

    r = drive(rollout(), steps=3)
    assert rollout_from_dict(rollout_to_dict(r)) == r
    stages = parse_stages("canary:1, 10%, wave:50%,100%", FAST)
    assert [(s.name, s.count, s.percent) for s in stages] == [
        ("canary", 1, None), ("stage 2 (10%)", None, 10.0), ("wave", None, 50.0), ("stage 4 (100%)", None, 100.0)]
    with pytest.raises(ConfigError):
        parse_stages("canary:one", FAST)
