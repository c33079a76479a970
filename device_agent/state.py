"""What the agent must remember across restarts and power cuts: which model is active.

Written atomically (temp file, fsync, rename) so a power cut leaves either the old or the new file,
never a torn one. A file that cannot be read is treated as "no active model", never a crash.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeops.errors import ProtocolError
from edgeops.protocol import BundleRef
from edgeops.schema import Message
from edgeops.transfer import fsync_write

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AgentState(Message):
    active: BundleRef | None = None
    previous: BundleRef | None = None
    #: The desired message (``digest@issued_at``) whose update failed. The same message delivered
    #: again (reconnect, restart) is not retried, so a bad bundle cannot cause an update loop; a new
    #: desired message for the same digest (a new deployment) is.
    failed_desired: str | None = None


def load_state(path: Path) -> AgentState:
    try:
        return AgentState.decode(path.read_bytes())
    except FileNotFoundError:
        return AgentState()
    except (OSError, ProtocolError) as exc:
        log.error("state file unreadable, starting without an active model path=%s error=%s", path, exc)
        return AgentState()


def save_state(path: Path, state: AgentState) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fsync_write(path, state.encode())


def state_summary(state: AgentState) -> dict[str, Any]:
    return json.loads(state.encode())  # type: ignore[no-any-return]
