"""Kill -9 the agent in every update state, restart it, and check where it ends up.

The test hook EDGEOPS_AGENT_CRASH_AT makes the agent SIGKILL itself right after it persisted the
named state, before the state's work: the worst moment for a power cut.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from device_agent.agent import CRASH_AT_ENV
from edgeops.bundle import Bundle
from edgeops.protocol import DeviceChannel, Reported, UpdatePhase, device_filter
from tests.integration.harness import BrokerHandle, Listener, Processes, wait_until
from tests.integration.test_agent_updates import DEVICE, FLEET, last_reported, publish_bundle, publish_desired

pytestmark = pytest.mark.integration

#: state the agent dies in -> (state it ends in, version serving, error code)
EXPECTED = {
    "fetching": (UpdatePhase.COMMITTED, "2", None),
    "verifying": (UpdatePhase.COMMITTED, "2", None),
    "staged": (UpdatePhase.COMMITTED, "2", None),
    "activating": (UpdatePhase.FAILED, "1", "update_interrupted"),
    "probation": (UpdatePhase.FAILED, "1", "update_interrupted"),
    "committed": (UpdatePhase.COMMITTED, "2", None),
}


def _settled(listener: Listener, phase: UpdatePhase, version: str) -> Reported | None:
    r = last_reported(listener)
    if r is None or r.phase is not phase or r.active is None or r.active.version != version:
        return None
    return r


@pytest.mark.parametrize("crash_state", list(EXPECTED))
def test_kill_in_each_state_ends_defined_with_a_model_serving(
    crash_state: str, mosquitto: BrokerHandle, processes: Processes, bundles: tuple[Bundle, Bundle], tmp_path: Path
) -> None:
    v1, v2 = bundles
    listener = Listener(mosquitto, device_filter(FLEET, DeviceChannel.REPORTED),
                        device_filter(FLEET, DeviceChannel.TELEMETRY))
    try:
        agent = processes.agent(DEVICE, mosquitto, FLEET)
        publish_bundle(listener, v1)
        publish_desired(listener, v1)
        wait_until(lambda: _settled(listener, UpdatePhase.COMMITTED, "1"), 30, "digits:1 committed")
        assert agent.stop() == 0

        crashing = processes.agent(DEVICE, mosquitto, FLEET, env={CRASH_AT_ENV: crash_state})
        publish_bundle(listener, v2)
        publish_desired(listener, v2)
        wait_until(lambda: not crashing.alive, 30, f"the agent to die in {crash_state}")
        assert crashing.popen.returncode == -signal.SIGKILL
        state = json.loads((tmp_path / "devices" / DEVICE / "state.json").read_text())
        assert state["state"] == crash_state

        processes.agent(DEVICE, mosquitto, FLEET)
        phase, version, code = EXPECTED[crash_state]
        report = wait_until(lambda: _settled(listener, phase, version), 40,
                            f"{phase.value} with version {version} after a crash in {crash_state}")
        assert (report.last_error.code if report.last_error else None) == code
        # A model serves: telemetry with inferences from the expected version.
        telemetry = device_filter(FLEET, DeviceChannel.TELEMETRY).replace("+", DEVICE)
        seen = len(listener.on(telemetry))
        wait_until(lambda: any(json.loads(m.payload)["inferences"] > 0 and
                               json.loads(m.payload)["model_version"] == version
                               for m in listener.on(telemetry)[seen:]), 15, "telemetry from the serving model")
    finally:
        listener.close()
