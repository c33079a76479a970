"""A device's reported state against its desired version: table-driven, no store, no broker."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fleet_server.store import Deployment, DeviceRow
from fleet_server.sync import DEFAULT_STALL_AFTER_S, SyncState, sync_state

OLD, NEW = "o" * 64, "n" * 64
CREATED = 1_000_000  # when the deployment naming the device was made
STALL = int(DEFAULT_STALL_AFTER_S * 1000)
DESIRED = Deployment(id=7, fleet="f", digest=NEW, selector="all", created_ms=CREATED)


def device(phase: str | None, active: str | None, online: bool = True, progress: int | None = CREATED + 5_000,
           rejected: int | None = None) -> DeviceRow:
    return DeviceRow(fleet="f", device_id="d1", online=online, agent_version="0.1.0", first_seen_ms=0,
                     last_seen_ms=CREATED, active_name="digits" if active else None, active_version="1",
                     active_digest=active, phase=phase, last_error=None, last_telemetry=None,
                     last_telemetry_ms=None, progress_ms=progress, rejected_ms=rejected,
                     rejected_reason="signature by an unknown key" if rejected else None)


SOON = CREATED + 10_000
LATE = CREATED + 5_000 + STALL + 1


@pytest.mark.parametrize(("row", "desired", "now", "expected"), [
    # Where it should be, whatever its presence; a failed *newer* update does not matter then.
    (device("committed", NEW), DESIRED, SOON, SyncState.IN_SYNC),
    (device("committed", NEW, online=False), DESIRED, LATE, SyncState.IN_SYNC),
    (device("failed", NEW), DESIRED, SOON, SyncState.IN_SYNC),
    # On probation with the desired version: still updating (it may yet fall back).
    (device("probation", NEW), DESIRED, SOON, SyncState.UPDATING),
    (device("fetching", OLD), DESIRED, SOON, SyncState.UPDATING),
    (device("verifying", OLD, progress=None), DESIRED, LATE, SyncState.UPDATING),  # a row from before 0003
    # Not there and not connected.
    (device("fetching", OLD, online=False), DESIRED, SOON, SyncState.OFFLINE),
    (device("committed", OLD, online=False), DESIRED, SOON, SyncState.OFFLINE),
    # An update that has not moved for the stall time.
    (device("fetching", OLD), DESIRED, LATE, SyncState.STALLED),
    (device("probation", NEW), DESIRED, LATE, SyncState.STALLED),
    # The desired version failed on the device, after it was desired.
    (device("failed", OLD), DESIRED, SOON, SyncState.FELL_BACK),
    (device("failed", OLD), DESIRED, LATE, SyncState.FELL_BACK),
    # ... but a failure from before this deployment is not its verdict: waiting for the device.
    (device("failed", OLD, progress=CREATED - 1), DESIRED, SOON, SyncState.PENDING),
    (device("committed", OLD), DESIRED, SOON, SyncState.PENDING),
    (device(None, None, progress=None), DESIRED, SOON, SyncState.PENDING),  # known only by its status
    # It refused the desired message (after the deployment and after its last reported change).
    (device("committed", OLD, rejected=CREATED + 6_000), DESIRED, SOON, SyncState.REJECTED),
    (device("committed", OLD, rejected=CREATED + 6_000), DESIRED, LATE, SyncState.REJECTED),
    (device("committed", OLD, progress=CREATED - 10, rejected=CREATED), DESIRED, SOON, SyncState.REJECTED),
    (device(None, None, progress=None, rejected=CREATED + 1), DESIRED, SOON, SyncState.REJECTED),
    # ... a refusal of an earlier deployment's message says nothing of this one,
    (device("committed", OLD, progress=CREATED - 10, rejected=CREATED - 1), DESIRED, SOON, SyncState.PENDING),
    # ... nor one the device has moved on from since (it trusted a later message),
    (device("failed", OLD, progress=CREATED + 7_000, rejected=CREATED + 6_000), DESIRED, SOON, SyncState.FELL_BACK),
    (device("fetching", OLD, progress=CREATED + 7_000, rejected=CREATED + 6_000), DESIRED, SOON,
     SyncState.UPDATING),
    (device("committed", NEW, progress=CREATED + 7_000, rejected=CREATED + 6_000), DESIRED, SOON,
     SyncState.IN_SYNC),
    # ... and a device that is away is shown as away first.
    (device("committed", OLD, online=False, rejected=CREATED + 6_000), DESIRED, SOON, SyncState.OFFLINE),
    # Never started on it: stalled too (an agent that ignores the message, or never got it).
    (device("committed", OLD), DESIRED, LATE, SyncState.STALLED),
    (device("committed", OLD, progress=CREATED - 10 * STALL), DESIRED, CREATED + STALL // 2, SyncState.PENDING),
    # Nobody asked anything of it.
    (device("committed", OLD), None, LATE, SyncState.UNMANAGED),
    (device(None, None, online=False), None, SOON, SyncState.UNMANAGED),
])
def test_sync_state(row: DeviceRow, desired: Deployment | None, now: int, expected: SyncState) -> None:
    assert sync_state(row, desired, now) is expected


def test_stall_time_is_a_parameter() -> None:
    row = device("fetching", OLD)
    assert sync_state(row, DESIRED, CREATED + 5_000 + 2_001, stall_after_s=2) is SyncState.STALLED
    assert sync_state(row, DESIRED, CREATED + 5_000 + 1_999, stall_after_s=2) is SyncState.UPDATING
    assert sync_state(replace(row, progress_ms=None), DESIRED, LATE, stall_after_s=2) is SyncState.UPDATING
