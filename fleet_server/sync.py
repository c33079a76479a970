"""Is a device where it should be? Its reported state against its desired version (pure).

The server's view of a device is what the device reported, never what was asked of it. This module
names the gap between the two, so the CLI, the API and the metrics show the same thing: a device
that fell back to its previous version, that went offline before it got there, that refused the
desired message, or whose update has not moved for a long time is shown as such, not as "deployed".
"""

from __future__ import annotations

import enum

from edgeops.protocol import UpdatePhase
from fleet_server.store import Deployment, DeviceRow

#: An update that has not moved (phase, versions, chunks) for this long is stalled.
DEFAULT_STALL_AFTER_S = 600.0
#: Phases in which a device is not working on an update; every other one is on the way to a version.
SETTLED_PHASES = frozenset({UpdatePhase.IDLE.value, UpdatePhase.COMMITTED.value, UpdatePhase.FAILED.value})
UPDATING_PHASES = frozenset(p.value for p in UpdatePhase) - SETTLED_PHASES


class SyncState(str, enum.Enum):
    #: Runs the version it should (and is not on probation with it).
    IN_SYNC = "in_sync"
    #: Should run another version and has not started on it yet.
    PENDING = "pending"
    #: Working on the desired version (downloading, verifying, on probation).
    UPDATING = "updating"
    #: An update (or the start of one) that has not moved for ``stall_after_s``.
    STALLED = "stalled"
    #: Its update failed (refused bundle, failed probation): it still runs its previous version.
    FELL_BACK = "fell_back"
    #: It refused the desired message itself (a signature it does not trust): it will not start
    #: until its trust or the message changes.
    REJECTED = "rejected"
    #: Not connected, and not on the version it should run.
    OFFLINE = "offline"
    #: No deployment names it.
    UNMANAGED = "unmanaged"


def sync_state(device: DeviceRow, desired: Deployment | None, now_ms: int,
               stall_after_s: float = DEFAULT_STALL_AFTER_S) -> SyncState:
    """Where ``device`` stands against ``desired`` (the deployment it should follow) at ``now_ms``."""
    if desired is None:
        return SyncState.UNMANAGED
    phase = device.phase or "idle"
    if device.active_digest == desired.digest and phase in SETTLED_PHASES:
        return SyncState.IN_SYNC
    if not device.online:
        return SyncState.OFFLINE
    stall_ms = stall_after_s * 1000
    if phase in UPDATING_PHASES:
        if device.progress_ms is not None and now_ms - device.progress_ms > stall_ms:
            return SyncState.STALLED
        return SyncState.UPDATING
    # Settled on another version: it failed the desired one, refused it, or has not started on it.
    since = max(device.progress_ms or 0, desired.created_ms)
    if device.rejected_ms is not None and device.rejected_ms >= since:
        return SyncState.REJECTED
    if phase == "failed" and (device.progress_ms or 0) >= desired.created_ms:
        return SyncState.FELL_BACK
    return SyncState.STALLED if now_ms - since > stall_ms else SyncState.PENDING
