"""Many agents in one process: one network loop, no thread per agent, real broker and server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeops.examples import TrainedExample
from fleet_server.store import Store
from tests.integration.harness import BrokerHandle, Processes, edgeops, wait_until

pytestmark = pytest.mark.integration
DEVICES = 20


def test_twenty_simulated_devices_in_one_process_converge(
    broker: BrokerHandle, processes: Processes, digits: TrainedExample, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    processes.server(home, broker)
    sim = processes.start("simulator", "simulate", "--devices", str(DEVICES), "--data-root", str(tmp_path / "sim"),
                          "--broker", str(broker.address), "--allow-unsigned", "--telemetry-interval", "1",
                          "--inference-interval", "0.1", "--probation-min-inferences", "3")
    store = Store(home / "edgeops.db")
    wait_until(lambda: len([d for d in store.devices("default") if d.online]) == DEVICES, 60,
               "every simulated device online")
    np.savez(tmp_path / "ref.npz", X=digits.reference)
    edgeops("model", "add", str(digits.model_path), "--name", "digits", "--version", "1",
            "--reference", str(tmp_path / "ref.npz"), "--home", str(home))
    edgeops("deploy", "digits:1", "--home", str(home))
    digest = store.model("digits", "1").digest

    def converged() -> bool:
        devices = store.devices("default")
        return len(devices) == DEVICES and all(
            d.active_digest == digest and d.phase == "committed"
            and (d.last_telemetry or {}).get("model_version") == "1" for d in devices)

    wait_until(converged, 90, "all simulated devices on digits:1")
    threads = len(list(Path(f"/proc/{sim.popen.pid}/task").iterdir()))
    assert threads < 10, f"{threads} threads for {DEVICES} devices"
    assert sim.stop() == 0
    wait_until(lambda: not any(d.online for d in store.devices("default")), 15, "every device offline")
