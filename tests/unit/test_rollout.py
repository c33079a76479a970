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
    Figures,
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
#: Inferences enough for every gate to judge (FAST.min_inferences is the default 20).
PLENTY = {"samples": 50, "latency_samples": 50, "baseline_samples": 50}


def rollout(**kw: object) -> Rollout:
    stages = (Stage("canary", count=1, gates=FAST), Stage("half", percent=50, gates=FAST),
              Stage("all", percent=100, gates=FAST))
    base = Rollout(id="r1", target_digest=NEW, stages=stages)
    return replace(start(base).rollout, **kw)  # type: ignore[arg-type]


def obs(device: str, digest: str = OLD, phase: str = "committed", now: int = NOW, **figures: object) -> Observation:
    return Observation(device_id=device, online=True, last_seen_ms=now, phase=phase, active_digest=digest,
                       figures=Figures(**figures))  # type: ignore[arg-type]


def fleet_on(digest_of: dict[str, str], now: int = NOW, **kw: object) -> dict[str, Observation]:
    return {d: obs(d, digest_of.get(d, OLD), now=now, **kw) for d in DEVICES}


def drive(r: Rollout, healthy: bool = True, steps: int = 60, devices: list[str] = DEVICES) -> Rollout:
    """Simulate devices that do what they are told, healthy or not, and call decide repeatedly."""
    running: dict[str, str] = {}
    now = NOW
    for _ in range(steps):
        observations = {
            d: obs(d, running.get(d, OLD), now=now, error_rate=0.0 if healthy else 0.5, latency_ms_p95=1.0,
                   baseline_latency_ms_p95=1.0, **PLENTY)
            for d in devices
        }
        decision = decide(r, devices, observations, now)
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


@pytest.mark.parametrize(("phase", "progress_ms", "rejected_ms", "state"), [
    # Its previous update failed before the rollout assigned it the target: not this rollout's verdict.
    ("failed", NOW - 1, None, RolloutState.RUNNING),
    # It failed after being assigned: the canary fails and is rolled back.
    ("failed", NOW + 1_000, None, RolloutState.ROLLED_BACK),
    # A row without a progress time (a store from before it was kept): a failed phase counts.
    ("failed", None, None, RolloutState.ROLLED_BACK),
    # It refused the rollout's desired message (a key it does not trust): it will never start on it.
    ("committed", NOW - 5_000, NOW + 1_000, RolloutState.ROLLED_BACK),
    # ... but a refusal of an earlier message is not one of this rollout's.
    ("committed", NOW - 5_000, NOW - 1, RolloutState.RUNNING),
    ("fetching", NOW + 1_000, None, RolloutState.RUNNING),
])
def test_a_canary_fails_only_on_what_it_reported_since_it_was_assigned(
        phase: str, progress_ms: int | None, rejected_ms: int | None, state: RolloutState) -> None:
    first = decide(rollout(), DEVICES, fleet_on({}), NOW)
    (device,) = first.rollout.assigned
    assert first.rollout.assigned_ms == {device: NOW}
    later = NOW + 2_000
    observations = fleet_on({}, now=later)
    observations[device] = replace(obs(device, OLD, phase=phase, now=later), progress_ms=progress_ms,
                                   rejected_ms=rejected_ms)
    result = decide(first.rollout, DEVICES, observations, later)
    assert result.rollout.state is state, result.rollout.reason
    assert not [a for a in result.actions if isinstance(a, Assign)]  # still the canary's turn


def test_without_assignment_times_a_failed_phase_counts_as_before() -> None:
    """Records written before ``assigned_ms`` was kept: every failed phase fails, as it did then."""
    first = decide(rollout(), DEVICES, fleet_on({}), NOW)
    (device,) = first.rollout.assigned
    observations = fleet_on({})
    observations[device] = replace(obs(device, OLD, phase="failed"), progress_ms=NOW - 1)
    result = decide(replace(first.rollout, assigned_ms={}), DEVICES, observations, NOW)
    assert result.rollout.state is RolloutState.ROLLED_BACK


def test_latency_gate_against_the_previous_version() -> None:
    first = decide(rollout(), DEVICES, fleet_on({}), NOW)
    (device,) = first.rollout.assigned
    observations = fleet_on({})
    # Sub-millisecond jitter (3x, but only +0.2 ms) is not a regression ...
    observations[device] = obs(device, NEW, error_rate=0.0, latency_ms_p95=0.3, baseline_latency_ms_p95=0.1,
                               **PLENTY)
    assert decide(first.rollout, DEVICES, observations, NOW + 1).rollout.state is RolloutState.RUNNING
    # ... 3x and +2 ms is.
    observations[device] = obs(device, NEW, error_rate=0.0, latency_ms_p95=3.0, baseline_latency_ms_p95=1.0,
                               **PLENTY)
    result = decide(first.rollout, DEVICES, observations, NOW + 1)
    assert result.rollout.state is RolloutState.ROLLED_BACK and "latency" in result.rollout.reason
    reverts = [a for a in result.actions if isinstance(a, Revert)]
    assert reverts and reverts[0].targets == ((device, OLD),)


def _canary_on_target(**figures: object) -> tuple[Rollout, dict[str, Observation], str]:
    """The canary assigned, committed on the target and soaked, with these gate figures."""
    first = decide(rollout(), DEVICES, fleet_on({}), NOW)
    (device,) = first.rollout.assigned
    observations = fleet_on({})
    observations[device] = obs(device, NEW, **figures)
    settled = decide(first.rollout, DEVICES, observations, NOW).rollout
    return settled, observations, device


@pytest.mark.parametrize(
    ("latency_samples", "baseline_samples", "judged"),
    [
        (50, 50, True),
        (20, 20, True),  # exactly min_inferences on both sides
        (19, 50, False),  # the target's p95 rests on too few inferences ...
        (50, 19, False),  # ... or the previous version's does
        (3, 1, False),  # right after an update: a p95 of 3 is the slowest of 3
    ],
)
def test_latency_is_judged_only_on_enough_inferences_on_both_versions(
    latency_samples: int, baseline_samples: int, judged: bool
) -> None:
    settled, observations, _ = _canary_on_target(
        error_rate=0.0, samples=latency_samples, latency_samples=latency_samples, latency_ms_p95=14.0,
        baseline_latency_ms_p95=1.0, baseline_samples=baseline_samples)
    result = decide(settled, DEVICES, observations, NOW + 1)
    if judged:
        assert result.rollout.state is RolloutState.ROLLED_BACK and "latency" in result.rollout.reason
    else:
        assert result.rollout.state is RolloutState.RUNNING


def test_error_rate_is_pooled_over_the_stage_and_judged_on_enough_inferences() -> None:
    stages = (Stage("half", percent=50, gates=FAST), Stage("all", percent=100, gates=FAST))
    r = decide(start(Rollout(id="r3", target_digest=NEW, stages=stages)).rollout, DEVICES, fleet_on({}), NOW).rollout
    members = list(r.assigned)
    assert len(members) == 10

    def with_errors(per_device: int) -> RolloutState:
        observations = fleet_on({d: NEW for d in members})
        for d in members:
            observations[d] = obs(d, NEW, error_rate=0.5, samples=per_device, latency_samples=per_device // 2)
        return decide(r, DEVICES, observations, NOW + 1).rollout.state

    assert with_errors(1) is RolloutState.RUNNING  # 10 inferences over the stage: not yet judged
    assert with_errors(2) is RolloutState.ROLLED_BACK  # 20 pooled: judged, though no device alone has 20


def test_a_stage_passes_only_once_its_figures_rest_on_enough_inferences() -> None:
    # Soaked and healthy, but only 5 inferences on the target so far: wait.
    settled, observations, device = _canary_on_target(error_rate=0.0, samples=5, latency_samples=5,
                                                     latency_ms_p95=1.0, baseline_latency_ms_p95=1.0,
                                                     baseline_samples=50)
    later = NOW + 11_000
    waiting = decide(settled, DEVICES, observations, later)
    assert waiting.rollout.stage_index == 0 and not waiting.actions
    # 20 inferences pooled, but the device has a baseline and its latency is not judged yet: wait.
    def with_figures(**changes: object) -> Observation:
        o = observations[device]
        return replace(o, figures=replace(o.figures, **changes))  # type: ignore[arg-type]

    observations[device] = with_figures(samples=20, latency_samples=19)
    assert decide(settled, DEVICES, observations, later).rollout.stage_index == 0
    # Judged on both: the canary passes.
    observations[device] = with_figures(latency_samples=20)
    assert decide(settled, DEVICES, observations, later).rollout.stage_index == 1
    # A device with no baseline worth judging (a first install) does not hold the stage.
    observations[device] = with_figures(latency_samples=5, baseline_samples=0)
    assert decide(settled, DEVICES, observations, later).rollout.stage_index == 1


@pytest.mark.parametrize(("failed", "committed", "min_sample", "max_failed_share", "fails"), [
    (1, 0, 1, 0.0, True),  # the default: one failed device fails a stage that tolerates none
    (1, 0, 3, 0.0, False),  # one resolved of the three the share needs: not judged yet
    (1, 2, 3, 0.0, True),  # three resolved, one failed: 10 % of ten members > 0 %
    (1, 4, 5, 0.1, False),  # 10 % failed, 10 % tolerated
    (2, 3, 5, 0.1, True),  # 20 % failed
])
def test_failed_share_is_judged_after_a_minimum_sample(failed: int, committed: int, min_sample: int,
                                                       max_failed_share: float, fails: bool) -> None:
    gates = replace(FAST, min_sample=min_sample, max_failed_share=max_failed_share)
    stages = (Stage("half", percent=50, gates=gates), Stage("all", percent=100, gates=gates))
    r = decide(start(Rollout(id="r5", target_digest=NEW, stages=stages)).rollout, DEVICES, fleet_on({}), NOW).rollout
    members = sorted(r.assigned)
    observations = fleet_on({})
    for d in members[:failed]:
        observations[d] = obs(d, OLD, phase="failed")
    for d in members[failed:failed + committed]:
        observations[d] = obs(d, NEW, error_rate=0.0, **PLENTY)
    for d in members[failed + committed:]:
        observations[d] = obs(d, OLD, phase="fetching")
    result = decide(r, DEVICES, observations, NOW + 1)
    assert (result.rollout.state is RolloutState.ROLLED_BACK) is fails
    if fails:
        assert f"{failed} of {len(members)} devices failed" in result.rollout.reason


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 19), st.floats(0, 1), st.floats(0, 1000)), min_size=1, max_size=20))
def test_too_few_inferences_never_fail_a_stage(figures: list[tuple[int, float, float]]) -> None:
    """Whatever the figures, a stage whose pooled inferences are under min_inferences is not judged."""
    stages = (Stage("all", percent=100, gates=replace(FAST, min_inferences=1000)),)
    r = decide(start(Rollout(id="r4", target_digest=NEW, stages=stages)).rollout, DEVICES, fleet_on({}), NOW).rollout
    observations = fleet_on({d: NEW for d in DEVICES})
    for d, (n, rate, p95) in zip(DEVICES, figures, strict=False):
        observations[d] = obs(d, NEW, error_rate=rate, samples=n, latency_samples=n, latency_ms_p95=p95,
                              baseline_latency_ms_p95=0.01, baseline_samples=n)
    result = decide(r, DEVICES, observations, NOW + 60_000)
    assert result.rollout.state is RolloutState.RUNNING and not result.actions


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


def test_records_stored_before_min_inferences_and_assigned_ms_load_with_defaults() -> None:
    from fleet_server.rollout import rollout_from_dict, rollout_to_dict

    record = rollout_to_dict(rollout())
    for stage in record["stages"]:  # type: ignore[attr-defined]
        del stage["gates"]["min_inferences"]
    del record["assigned_ms"]
    loaded = rollout_from_dict(record)
    assert all(s.gates.min_inferences == 20 for s in loaded.stages)
    assert loaded.assigned_ms == {}
    with pytest.raises(ConfigError, match="min_inferences"):
        Gates(min_inferences=0)
    with pytest.raises(ConfigError, match="min_sample"):
        Gates(min_sample=0)


@pytest.mark.parametrize("fleet", [1, 2, 3])
def test_stages_that_add_no_devices_in_a_small_fleet_are_passed_over(fleet: int) -> None:
    """canary:1, 50%, 100% of one or two devices: the 50% stage (and for one device the 100% one)
    covers no device the stage before did not, and must not wait for ever."""
    final = drive(rollout(), devices=DEVICES[:fleet])
    assert final.state is RolloutState.SUCCEEDED, final.reason
    assert len(final.assigned) == fleet


def test_a_rollout_selecting_no_devices_waits_for_some() -> None:
    decision = decide(rollout(), [], {}, NOW)
    assert decision.rollout.state is RolloutState.RUNNING and decision.actions == ()
