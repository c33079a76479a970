"""What the agent must remember across restarts and power cuts.

The update state machine's state, what each A/B slot holds, which slot is committed, and the
update in progress. Written atomically (temp file, fsync, rename) *before* each step acts, so a
power cut at any instant leaves either the old or the new file, and start-up follows the resume
rule of the state it finds (device_agent/update_machine.py). A file that cannot be read is treated
as "nothing installed" and logged, never a crash.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated

from edgeops.errors import ProtocolError
from edgeops.protocol import BundleRef, ErrorInfo, UpdatePhase
from edgeops.schema import Message, Pattern, Range, Record
from edgeops.transfer import fsync_write

log = logging.getLogger(__name__)

SLOTS = ("a", "b")
SlotName = Annotated[str, Pattern("a|b")]


def other_slot(slot: str | None) -> str:
    return "b" if slot == "a" else "a"


@dataclass(frozen=True)
class UpdateRecord(Record):
    """The update in progress."""

    target: BundleRef
    #: ``digest@issued_at`` of the desired message that started it.
    key: str
    #: The slot it is staged into (never the committed one).
    slot: SlotName
    rollout_id: str | None = None
    rollback: bool = False
    #: How many start-ups resumed it (the restart-loop breaker).
    resumes: Annotated[int, Range(ge=0)] = 0


@dataclass(frozen=True)
class AgentState(Message):
    state: UpdatePhase = UpdatePhase.IDLE
    committed_slot: SlotName | None = None
    #: Verified content of each slot.
    slots: dict[str, BundleRef] = field(default_factory=dict)
    #: The version before the committed one, when its slot still holds it (the local rollback target).
    previous: BundleRef | None = None
    update: UpdateRecord | None = None
    #: The desired message whose update failed; delivered again it is not retried (no update loop).
    failed_desired: str | None = None
    last_error: ErrorInfo | None = None
    updated_ms: Annotated[int, Range(ge=0)] = 0

    @property
    def committed(self) -> BundleRef | None:
        return self.slots.get(self.committed_slot) if self.committed_slot else None

    @property
    def serving_slot(self) -> str | None:
        """During probation the staged slot serves; otherwise the committed one."""
        if self.state is UpdatePhase.PROBATION and self.update is not None:
            return self.update.slot
        return self.committed_slot

    def evolve(self, **changes: object) -> AgentState:
        return replace(self, updated_ms=int(time.time() * 1000), **changes)  # type: ignore[arg-type]


def load_state(path: Path) -> AgentState:
    try:
        return AgentState.decode(path.read_bytes())
    except FileNotFoundError:
        return AgentState()
    except (OSError, ProtocolError) as exc:
        log.error("state file unreadable, starting with nothing installed path=%s error=%s", path, exc)
        return AgentState()


def save_state(path: Path, state: AgentState) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fsync_write(path, state.encode())
