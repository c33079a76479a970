"""The agent's update state machine: one transition table, closed enums, written resume rules.

Pure logic, no I/O: the agent (device_agent/agent.py) persists the state *before* the work of each
state and calls :func:`transition` for every step, so a (state, event) pair that has no transition
is a bug that fails loudly instead of leaving the device somewhere undefined.

States are the ``UpdatePhase`` values that devices report (edgeops.protocol), so what the server
shows is exactly this machine's state::

    idle ─┐
    committed ─┼─ desired_new ─► fetching ─ download_complete ─► verifying ─ verified ─► staged
    failed ─┘        ▲  │ desired_new (superseded)                                      │ activate
                     └──┘                                                               ▼
    committed ◄─ probation_passed ─ probation ◄─ activated ─ activating
    failed ◄─ fail (from fetching, verifying, staged, activating) / probation_failed (local rollback)
    idle ◄─ cancel (fetching: the desired version is the one already running)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from edgeops.errors import EdgeOpsError
from edgeops.protocol import UpdatePhase as State

#: States in which no update is in progress.
REST_STATES = frozenset({State.IDLE, State.COMMITTED, State.FAILED})
#: How many times a start-up may resume the same update before it is declared a restart loop.
MAX_RESUMES = 3


class Event(str, enum.Enum):
    DESIRED_NEW = "desired_new"
    DOWNLOAD_COMPLETE = "download_complete"
    VERIFIED = "verified"
    ACTIVATE = "activate"
    ACTIVATED = "activated"
    PROBATION_PASSED = "probation_passed"
    PROBATION_FAILED = "probation_failed"
    FAIL = "fail"
    CANCEL = "cancel"


class InvalidTransition(EdgeOpsError, RuntimeError):
    """A (state, event) pair with no transition: a bug in the agent, never a peer's fault."""

    code = "invalid_transition"


TRANSITIONS: dict[tuple[State, Event], State] = {
    (State.IDLE, Event.DESIRED_NEW): State.FETCHING,
    (State.COMMITTED, Event.DESIRED_NEW): State.FETCHING,
    (State.FAILED, Event.DESIRED_NEW): State.FETCHING,
    (State.FETCHING, Event.DESIRED_NEW): State.FETCHING,
    (State.FETCHING, Event.DOWNLOAD_COMPLETE): State.VERIFYING,
    (State.FETCHING, Event.CANCEL): State.IDLE,
    (State.VERIFYING, Event.VERIFIED): State.STAGED,
    (State.STAGED, Event.ACTIVATE): State.ACTIVATING,
    (State.ACTIVATING, Event.ACTIVATED): State.PROBATION,
    (State.PROBATION, Event.PROBATION_PASSED): State.COMMITTED,
    (State.PROBATION, Event.PROBATION_FAILED): State.FAILED,
    (State.FETCHING, Event.FAIL): State.FAILED,
    (State.VERIFYING, Event.FAIL): State.FAILED,
    (State.STAGED, Event.FAIL): State.FAILED,
    (State.ACTIVATING, Event.FAIL): State.FAILED,
}


def transition(state: State, event: Event) -> State:
    """The next state, or InvalidTransition."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise InvalidTransition(f"no transition from {state.value} on {event.value}") from None


class Resume(str, enum.Enum):
    """What start-up does with an update found in a given persisted state."""

    NOTHING = "nothing"  # serve the committed slot
    CONTINUE_FETCH = "continue_fetch"  # re-subscribe, ask only for missing chunks
    REVERIFY = "reverify"  # chunks are all on disk: assemble and verify again
    RESTAGE = "restage"  # the staged slot is re-verified, then activated
    REVERT = "revert"  # an uncommitted activation: back to the committed slot, update failed
    LOOP_BROKEN = "loop_broken"  # resumed too often: the update fails


#: The written resume rule of every state. Anything that touched the runtime without committing
#: reverts: the previous model is the one known to work on this device.
RESUME_RULES: dict[State, Resume] = {
    State.IDLE: Resume.NOTHING,
    State.COMMITTED: Resume.NOTHING,
    State.FAILED: Resume.NOTHING,
    State.FETCHING: Resume.CONTINUE_FETCH,
    State.VERIFYING: Resume.REVERIFY,
    State.STAGED: Resume.RESTAGE,
    State.ACTIVATING: Resume.REVERT,
    State.PROBATION: Resume.REVERT,
}


@dataclass(frozen=True)
class ResumeDecision:
    action: Resume
    resumes: int


def resume_decision(state: State, resumes_so_far: int) -> ResumeDecision:
    """The start-up rule for ``state``, with the restart-loop breaker applied."""
    action = RESUME_RULES[state]
    if action in (Resume.NOTHING, Resume.REVERT):
        return ResumeDecision(action, resumes_so_far)
    if resumes_so_far + 1 > MAX_RESUMES:
        return ResumeDecision(Resume.LOOP_BROKEN, resumes_so_far + 1)
    return ResumeDecision(action, resumes_so_far + 1)
