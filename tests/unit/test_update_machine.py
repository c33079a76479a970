"""The update state machine and probation: pure logic, tested exhaustively."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device_agent.probation import ProbationPolicy, ProbationTracker, Verdict
from device_agent.update_machine import (
    MAX_RESUMES,
    REST_STATES,
    RESUME_RULES,
    TRANSITIONS,
    Event,
    InvalidTransition,
    Resume,
    State,
    resume_decision,
    transition,
)


def test_every_pair_either_transitions_or_fails_loudly() -> None:
    for state, event in itertools.product(State, Event):
        if (state, event) in TRANSITIONS:
            assert transition(state, event) is TRANSITIONS[(state, event)]
        else:
            with pytest.raises(InvalidTransition):
                transition(state, event)


def test_happy_path_is_the_design_order() -> None:
    path = [State.IDLE]
    for event in (Event.DESIRED_NEW, Event.DOWNLOAD_COMPLETE, Event.VERIFIED, Event.ACTIVATE, Event.ACTIVATED,
                  Event.PROBATION_PASSED):
        path.append(transition(path[-1], event))
    assert path == [State.IDLE, State.FETCHING, State.VERIFYING, State.STAGED, State.ACTIVATING,
                    State.PROBATION, State.COMMITTED]


def test_every_working_state_can_fail_and_every_rest_state_can_start() -> None:
    for state in (State.FETCHING, State.VERIFYING, State.STAGED, State.ACTIVATING):
        assert transition(state, Event.FAIL) is State.FAILED
    assert transition(State.PROBATION, Event.PROBATION_FAILED) is State.FAILED
    for state in REST_STATES:
        assert transition(state, Event.DESIRED_NEW) is State.FETCHING


def test_every_state_reachable_and_has_a_resume_rule() -> None:
    reachable = {State.IDLE}
    frontier = [State.IDLE]
    while frontier:
        state = frontier.pop()
        for (src, _), dst in TRANSITIONS.items():
            if src is state and dst not in reachable:
                reachable.add(dst)
                frontier.append(dst)
    assert reachable == set(State)
    assert set(RESUME_RULES) == set(State)


def test_uncommitted_activation_reverts_at_start_up() -> None:
    for state in (State.ACTIVATING, State.PROBATION):
        assert resume_decision(state, 0).action is Resume.REVERT


def test_restart_loop_is_broken() -> None:
    resumes = 0
    for _ in range(MAX_RESUMES):
        decision = resume_decision(State.FETCHING, resumes)
        assert decision.action is Resume.CONTINUE_FETCH
        resumes = decision.resumes
    assert resume_decision(State.FETCHING, resumes).action is Resume.LOOP_BROKEN


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(list(Event)), max_size=30))
def test_random_event_sequences_never_leave_the_state_set(events: list[Event]) -> None:
    state = State.IDLE
    for event in events:
        try:
            state = transition(state, event)
        except InvalidTransition:
            continue
        assert state in State


def test_probation_passes_after_enough_clean_inferences() -> None:
    tracker = ProbationTracker(ProbationPolicy(min_inferences=10, max_seconds=60), started_s=0.0)
    for _ in range(9):
        tracker.record(1.0)
    assert tracker.verdict(1.0).verdict is Verdict.PENDING
    tracker.record(1.0)
    assert tracker.verdict(1.0).verdict is Verdict.PASSED


def test_probation_fails_early_when_the_error_budget_is_blown() -> None:
    tracker = ProbationTracker(ProbationPolicy(min_inferences=100, max_error_rate=0.05), started_s=0.0)
    for _ in range(5):
        tracker.record_error()
    assert tracker.verdict(0.1).verdict is Verdict.PENDING  # 5 of a 100-inference budget of 5
    tracker.record_error()
    result = tracker.verdict(0.1)
    assert result.verdict is Verdict.FAILED and "budget" in result.reason


def test_probation_latency_budget() -> None:
    tracker = ProbationTracker(ProbationPolicy(min_inferences=20, max_latency_ms_p95=2.0), started_s=0.0)
    for _ in range(20):
        tracker.record(3.0)
    result = tracker.verdict(0.0)
    assert result.verdict is Verdict.FAILED and "p95" in result.reason


def test_idle_device_commits_after_the_time_limit() -> None:
    tracker = ProbationTracker(ProbationPolicy(min_inferences=50, max_seconds=5), started_s=100.0)
    assert tracker.verdict(104.9).verdict is Verdict.PENDING
    assert tracker.verdict(105.0).verdict is Verdict.PASSED
