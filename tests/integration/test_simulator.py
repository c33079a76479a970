"""Many agents in one process: one network loop, no thread per agent, real broker and server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeops.examples import TrainedExample
from edgeops.processes import ManagedProcess
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


def _shards(pid: int) -> list[int]:
    """The simulator's shard processes (multiprocessing spawn children), by pid."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children
            if "spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes().decode(errors="replace")]


def _gone(pids: list[int]) -> bool:
    return not any(Path(f"/proc/{p}").exists() and "Z" not in Path(f"/proc/{p}/stat").read_text().split()[2]
                   for p in pids)


def _split_fleet(broker: BrokerHandle, processes: Processes, digits: TrainedExample, tmp_path: Path, devices: int,
                 *extra: str) -> tuple[ManagedProcess, Store, list[int]]:
    """Server and a simulator of ``devices`` over 2 processes, all online, then digits:1 deployed."""
    home = tmp_path / "home"
    processes.server(home, broker)
    sim = processes.start("simulator", "simulate", "--devices", str(devices), "--processes", "2",
                          "--data-root", str(tmp_path / "sim"), "--broker", str(broker.address), "--allow-unsigned",
                          "--telemetry-interval", "1", "--inference-interval", "0.1", *extra)
    store = Store(home / "edgeops.db")
    wait_until(lambda: len([d for d in store.devices("default") if d.online]) == devices, 60, "every device online")
    shards = _shards(sim.popen.pid)
    assert len(shards) == 2, shards
    edgeops("model", "add", str(digits.model_path), "--name", "digits", "--version", "1", "--home", str(home))
    edgeops("deploy", "digits:1", "--home", str(home))
    return sim, store, shards


def test_devices_split_over_processes_converge_and_stop_together(
    broker: BrokerHandle, processes: Processes, digits: TrainedExample, tmp_path: Path
) -> None:
    sim, store, shards = _split_fleet(broker, processes, digits, tmp_path, 6, "--probation-min-inferences", "3")
    # The split keeps each device's id (and so its seed and data directory) whatever the processes.
    names = [f"sim-{i:04d}" for i in range(1, 7)]
    assert sorted(d.device_id for d in store.devices("default")) == names
    wait_until(lambda: all(d.active_version == "1" and d.phase == "committed" for d in store.devices("default")),
               90, "every device on digits:1")
    assert sorted(p.name for p in (tmp_path / "sim").iterdir()) == names
    assert sim.stop() == 0
    wait_until(lambda: _gone(shards), 10, "the shard processes gone")
    wait_until(lambda: not any(d.online for d in store.devices("default")), 15, "every device offline")


def test_a_crashing_shard_stops_the_whole_simulation_with_its_exit_status(
    broker: BrokerHandle, processes: Processes, digits: TrainedExample, tmp_path: Path
) -> None:
    """An injected crash kills one shard; the simulator stops the other and exits 70, as one process would."""
    sim, store, shards = _split_fleet(broker, processes, digits, tmp_path, 4, "--simulate-faults", "crash=15",
                                      "--faults-version", "1")
    wait_until(lambda: not sim.alive, 90, "the simulator to exit after the injected crash")
    assert sim.popen.returncode == 70, sim.output()[-2000:]
    assert "simulator shard exited" in sim.output()
    wait_until(lambda: _gone(shards), 10, "the shard processes gone")
    wait_until(lambda: not any(d.online for d in store.devices("default")), 30, "every device offline")
