"""Staged rollouts end to end: 20 simulated devices, a real broker, the server driving the stages."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from edgeops.examples import TrainedExample
from fleet_server.store import Store
from tests.conftest import StoreBackend
from tests.integration.harness import BrokerHandle, Processes, add_versions, edgeops, wait_until

pytestmark = pytest.mark.integration
DEVICES = 20


def _status(home: Path, rollout_id: str) -> dict[str, object]:
    return json.loads(edgeops("rollout", "status", rollout_id, "--json", "--home", str(home)).stdout)


def _versions(store: Store) -> dict[str, str | None]:
    return {d.device_id: d.active_version for d in store.devices("default")}


def _start(home: Path, model: str, *extra: str) -> str:
    out = edgeops("rollout", "start", model, "--stages", "canary:1,50%,100%", "--soak", "2",
                  "--silence-timeout", "60", "--home", str(home), *extra).stdout
    return out.split()[1].rstrip(":")


def test_staged_rollouts_pass_fail_pause_and_survive_a_server_restart(
    mosquitto: BrokerHandle, processes: Processes, digits: TrainedExample, digits_v2: TrainedExample,
    tmp_path: Path, store_backend: StoreBackend,
) -> None:
    home = tmp_path / "home"
    edgeops("keys", "generate", "--name", "fleet", "--home", str(home))
    edgeops("keys", "export-public", str(tmp_path / "trust"), "--home", str(home))
    add_versions(home, [("1", digits), ("2", digits_v2), ("3", digits)])
    server = processes.server(home, mosquitto)
    # Version 3 is slow on every device: 15 ms of added latency per inference.
    processes.start("simulator", "simulate", "--devices", str(DEVICES), "--data-root", str(tmp_path / "sim"),
                    "--broker", str(mosquitto.address), "--trust-dir", str(tmp_path / "trust"),
                    "--telemetry-interval", "1", "--inference-interval", "0.1", "--probation-min-inferences", "3",
                    "--simulate-faults", "latency=15", "--faults-version", "3")
    store = Store(store_backend.target(home))  # the CLI and server find it too (EDGEOPS_DB_URL)
    wait_until(lambda: len([d for d in store.devices("default") if d.online]) == DEVICES, 60, "devices online")
    edgeops("deploy", "digits:1", "--home", str(home))
    wait_until(lambda: set(_versions(store).values()) == {"1"}, 60, "every device on digits:1")
    # The latency gate compares with each device's windows on the previous version: start once
    # every device has committed digits:1 and reported a window on it, not while on probation.
    wait_until(lambda: all(d.phase == "committed" and (d.last_telemetry or {}).get("model_version") == "1"
                           for d in store.devices("default")), 60, "every device reporting on digits:1")

    # A good version passes every stage; paused it stops assigning, resumed it carries on; a server
    # killed mid-rollout continues from the store.
    good = _start(home, "digits:2")
    wait_until(lambda: _status(home, good)["committed"] >= 1, 60, "the canary committed")
    edgeops("rollout", "pause", good, "--reason", "checking the canary", "--home", str(home))
    assigned = _status(home, good)["assigned"]
    assert _status(home, good)["state"] == "paused"
    server.kill()
    server = processes.server(home, mosquitto)
    time.sleep(2.0)  # two soak periods: a running rollout would have assigned the next stage by now
    assert _status(home, good)["assigned"] == assigned
    edgeops("rollout", "resume", good, "--home", str(home))
    wait_until(lambda: _status(home, good)["state"] == "succeeded", 120, "the good rollout to succeed")
    wait_until(lambda: set(_versions(store).values()) == {"2"}, 30, "every device on digits:2")

    # A slow version fails the canary's latency gate; the canary is reverted, nobody else touched.
    bad = _start(home, "digits:3")
    wait_until(lambda: _status(home, bad)["state"] == "rolled_back", 90, "the bad rollout to roll back")
    assert "latency" in str(_status(home, bad)["reason"])
    wait_until(lambda: set(_versions(store).values()) == {"2"}, 60, "the canary back on digits:2")
    assert _status(home, bad)["assigned"] == 1

    # Policy pause: the failing canary pauses the rollout; an operator rolls it back.
    paused = _start(home, "digits:3", "--policy", "pause")
    wait_until(lambda: _status(home, paused)["state"] == "paused", 90, "the gate to pause the rollout")
    edgeops("rollout", "rollback", paused, "--reason", "too slow", "--home", str(home))
    wait_until(lambda: set(_versions(store).values()) == {"2"}, 60, "the canary back on digits:2 again")

    audit = json.loads(edgeops("audit", "list", "--json", "--limit", "500", "--home", str(home)).stdout)
    actions = {(a["action"], a["target"]) for a in audit}
    for expected in (("rollout_create", good), ("rollout_pause", good), ("rollout_resume", good),
                     ("rollout_revert", bad), ("rollout_rollback", paused)):
        assert expected in actions, expected
    listed = json.loads(edgeops("rollout", "list", "--json", "--home", str(home)).stdout)
    assert [r["state"] for r in listed] == ["succeeded", "rolled_back", "rolled_back"]


def test_a_rollout_after_a_failed_update_goes_ahead_and_a_device_refusing_it_fails_it(
    mosquitto: BrokerHandle, processes: Processes, digits: TrainedExample, digits_v2: TrainedExample,
    tmp_path: Path,
) -> None:
    """The usual sequel of a failed update is a fixed version. Devices still showing the failure of
    the version before are not failed by the new rollout; one that refuses its desired message (it
    does not trust the server's key) is, at once, not after the silence timeout."""
    home = tmp_path / "home"
    edgeops("keys", "generate", "--name", "fleet", "--home", str(home))
    edgeops("keys", "export-public", str(tmp_path / "trust"), "--home", str(home))
    edgeops("keys", "generate", "--name", "stranger", "--home", str(tmp_path / "other"))
    edgeops("keys", "export-public", str(tmp_path / "other-trust"), "--home", str(tmp_path / "other"))
    add_versions(home, [("1", digits), ("2", digits_v2), ("3", digits_v2)])
    processes.server(home, mosquitto)
    agents = [processes.agent(device, mosquitto, "default", "--simulate-faults", "errors=1", "--faults-version", "2",
                              trust_dir=tmp_path / "trust")
              for device in ("a", "b")]  # version 2 fails its probation on these devices
    processes.agent("c", mosquitto, trust_dir=tmp_path / "other-trust")
    store = Store(home / "edgeops.db")
    wait_until(lambda: len([d for d in store.devices("default") if d.online]) == 3, 60, "devices online")
    edgeops("deploy", "digits:1", "--devices", "a,b", "--home", str(home))
    wait_until(lambda: all(store.device("default", d).active_version == "1"
                           and store.device("default", d).phase == "committed" for d in ("a", "b")), 60,
               "a and b on digits:1")
    edgeops("deploy", "digits:2", "--devices", "a,b", "--home", str(home))
    wait_until(lambda: all(store.device("default", d).phase == "failed" for d in ("a", "b")), 60,
               "digits:2 failed on a and b")

    # Frozen for a few of the driver's ticks, the devices show their old failure to the new rollout.
    for agent in agents:
        agent.popen.send_signal(signal.SIGSTOP)
    fixed = _start(home, "digits:3", "--devices", "a,b", "--min-inferences", "5")
    time.sleep(3)
    assert _status(home, fixed)["state"] == "running"
    for agent in agents:
        agent.popen.send_signal(signal.SIGCONT)
    wait_until(lambda: _status(home, fixed)["state"] != "running", 120,
               f"the rollout of the fixed version to end ({tmp_path})")
    status = _status(home, fixed)
    assert status["state"] == "succeeded", status["reason"]
    assert {store.device("default", d).active_version for d in ("a", "b")} == {"3"}

    refused = _start(home, "digits:3", "--devices", "c")
    # Well inside the 60 s silence timeout: c keeps reporting, it just will not take the target.
    wait_until(lambda: _status(home, refused)["state"] != "running", 30, "the refused rollout to end")
    status = _status(home, refused)
    assert status["state"] == "failed" and "1 of 1 devices failed" in str(status["reason"]), status
