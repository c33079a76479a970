"""The thin loop in real processes: broker, fleet server, agents, CLI."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pytest

from edgeops.examples import TrainedExample
from edgeops.protocol import DeviceChannel, device_topic
from fleet_server.store import Store
from tests.conftest import StoreBackend
from tests.integration.harness import BrokerHandle, Listener, Processes, edgeops, wait_until

pytestmark = pytest.mark.integration
DEVICES = ["dev-a", "dev-b", "dev-c"]


def _converged(store: Store, digest: str, version: str) -> bool:
    devices = {d.device_id: d for d in store.devices("default")}
    return all(
        d in devices
        and devices[d].active_digest == digest
        and devices[d].phase == "committed"
        and (devices[d].last_telemetry or {}).get("model_version") == version
        and (devices[d].last_telemetry or {}).get("inferences", 0) > 0
        for d in DEVICES
    )


def test_deploy_converges_and_telemetry_arrives(
    broker: BrokerHandle, processes: Processes, digits: TrainedExample, tmp_path: Path, store_backend: StoreBackend
) -> None:
    home = tmp_path / "home"
    np.savez(tmp_path / "ref.npz", X=digits.reference)
    # Devices trust the fleet's key; the server signs bundles and desired messages with it.
    edgeops("keys", "generate", "--name", "fleet", "--home", str(home))
    edgeops("keys", "export-public", str(tmp_path / "trust"), "--home", str(home))
    server = processes.server(home, broker)
    agents = [processes.agent(d, broker, trust_dir=tmp_path / "trust") for d in DEVICES]
    store = Store(store_backend.target(home))  # the CLI and server find it too (EDGEOPS_DB_URL)
    wait_until(lambda: len([d for d in store.devices("default") if d.online]) == len(DEVICES), 30,
               "every agent's birth message")

    added = edgeops("model", "add", str(digits.model_path), "--name", "digits", "--version", "1",
                    "--reference", str(tmp_path / "ref.npz"), "--home", str(home))
    assert "digits:1 added" in added.stdout
    edgeops("deploy", "digits:1", "--devices", "all", "--home", str(home))
    digest = store.model("digits", "1").digest
    wait_until(lambda: _converged(store, digest, "1"), 60, "every device running digits:1 with telemetry")

    listed = json.loads(edgeops("devices", "list", "--json", "--home", str(home)).stdout)
    assert {d["device_id"] for d in listed} == set(DEVICES)
    for row in listed:
        assert row["online"] and row["running"] == "digits:1" and row["active_digest"] == digest
        t = row["last_telemetry"]
        assert t["latency_ms_p95"] > 0 and t["drift_score"] is not None and t["rss_mb"] > 0
    table = edgeops("devices", "list", "--home", str(home)).stdout
    assert "dev-a" in table and "digits:1" in table

    # Drift detail arrives next to the telemetry window it belongs to.
    drift = wait_until(lambda: store.latest_drift("default", "dev-a"), 10, "a drift detail of dev-a")
    assert len(drift["features"]) == 64

    # A clean shutdown says "offline" explicitly (a clean disconnect suppresses the last will).
    for agent in agents:
        assert agent.stop() == 0
    wait_until(lambda: not any(d.online for d in store.devices("default")), 15, "every device offline")
    assert server.alive


def test_invalid_payloads_are_dropped_and_logged_once_per_source(
    broker: BrokerHandle, processes: Processes, digits: TrainedExample, tmp_path: Path, store_backend: StoreBackend
) -> None:
    home = tmp_path / "home"
    server = processes.server(home, broker)
    agent = processes.agent("dev-a", broker)
    store = Store(store_backend.target(home))  # the CLI and server find it too (EDGEOPS_DB_URL)
    wait_until(lambda: store.telemetry_count("default", "dev-a") > 0, 30, "telemetry from dev-a")
    listener = Listener(broker, "#")
    try:
        garbage = [b"", b"\x00\xff", b"{", b"[]", b'{"schema_version": 99}', b'{"schema_version": 1}']
        for payload in garbage:
            # Agent side: its desired and command topics.
            listener.publish(device_topic("default", "dev-a", DeviceChannel.DESIRED), payload)
            listener.publish(device_topic("default", "dev-a", DeviceChannel.CMD), payload)
            # Server side: a rogue source and a real device's telemetry topic.
            listener.publish(device_topic("default", "rogue", DeviceChannel.TELEMETRY), payload)
            listener.publish(device_topic("default", "rogue", DeviceChannel.STATUS), payload)
        # A well-formed payload that names another device than its topic is dropped too.
        spoof = json.dumps({"schema_version": 1, "device_id": "dev-a", "state": "offline", "ts": 1}).encode()
        listener.publish(device_topic("default", "rogue", DeviceChannel.STATUS), spoof)
        before = store.telemetry_count("default", "dev-a")
        wait_until(lambda: store.telemetry_count("default", "dev-a") >= before + 2, 15,
                   "telemetry to keep flowing after the garbage")
    finally:
        listener.close()
    assert server.alive and agent.alive
    assert store.device("default", "dev-a").online
    assert "rogue" not in {d.device_id for d in store.devices("default")}
    server_log = (tmp_path / "logs" / "server.log").read_text()
    drops = [line for line in server_log.splitlines() if "dropped invalid message" in line]
    assert len(drops) == 1 and "source=rogue" in drops[0], drops
    agent_log = (tmp_path / "logs" / "dev-a.log").read_text()
    agent_drops = [line for line in agent_log.splitlines() if "dropped invalid message" in line]
    # One line per source topic (desired and cmd), however many bad payloads arrived on each.
    assert len(agent_drops) == 2, agent_drops
    assert "Traceback" not in server_log + agent_log


def test_devices_list_shows_who_is_in_sync_fell_back_refused_went_offline_or_stalled(
    broker: BrokerHandle, processes: Processes, digits: TrainedExample, digits_v2: TrainedExample, tmp_path: Path
) -> None:
    """The server's view is what devices report: a version that fails on a device, a device that refuses
    what it is asked (its keys do not trust the server), one that hangs, one that went away show as such."""
    home = tmp_path / "home"
    edgeops("keys", "generate", "--name", "fleet", "--home", str(home))
    edgeops("keys", "export-public", str(tmp_path / "trust"), "--home", str(home))
    edgeops("keys", "generate", "--name", "stranger", "--home", str(tmp_path / "other"))
    edgeops("keys", "export-public", str(tmp_path / "other-trust"), "--home", str(tmp_path / "other"))
    processes.server(home, broker)
    trust = tmp_path / "trust"
    processes.agent("good", broker, trust_dir=trust)
    processes.agent("fails-v2", broker, "default", "--simulate-faults", "errors=1", "--faults-version", "2",
                    trust_dir=trust)
    hangs = processes.agent("hangs", broker, trust_dir=trust)
    processes.agent("distrusts", broker, trust_dir=tmp_path / "other-trust")
    store = Store(home / "edgeops.db")
    wait_until(lambda: len([d for d in store.devices("default") if d.online]) == 4, 30, "every agent online")
    edgeops("model", "add", str(digits.model_path), "--name", "digits", "--version", "1", "--home", str(home))
    edgeops("model", "add", str(digits_v2.model_path), "--name", "digits", "--version", "2", "--home", str(home))

    def sync(*extra: str) -> dict[str, tuple[str, str | None]]:
        listed = json.loads(edgeops("devices", "list", "--json", "--home", str(home), *extra).stdout)
        return {d["device_id"]: (d["sync"], d["desired_version"]) for d in listed}

    assert set(sync().values()) == {("unmanaged", None)}
    edgeops("deploy", "digits:1", "--home", str(home))
    wait_until(lambda: [d for d, (s, _) in sync().items() if s == "in_sync"] == ["fails-v2", "good", "hangs"], 60,
               "the trusting devices in sync on digits:1")
    # It refused the signed desired message: shown at once, not as pending until it counts as stalled.
    wait_until(lambda: sync()["distrusts"] == ("rejected", "digits:1"), 30, "the refusal of digits:1")

    # A hung agent: still connected (until its keepalive runs out), doing nothing.
    hangs.popen.send_signal(signal.SIGSTOP)
    edgeops("deploy", "digits:2", "--home", str(home))
    wait_until(lambda: sync()["distrusts"] == ("rejected", "digits:2"), 30, "the refusal of digits:2")
    assert sync()["hangs"] == ("pending", "digits:2")
    # A device that has not moved towards what it should run for longer than the stall time is stalled.
    stalled = sync("--stall-after", "0.001")
    assert (stalled["hangs"], stalled["distrusts"]) == (("stalled", "digits:2"), ("rejected", "digits:2"))
    wait_until(lambda: sync()["fails-v2"][0] == "fell_back" and sync()["good"][0] == "in_sync", 60,
               "digits:2 committed on one device and failed on another")
    attention = json.loads(edgeops("devices", "list", "--json", "--sync", "stalled", "--sync", "fell_back",
                                   "--sync", "rejected", "--stall-after", "0.001", "--home", str(home)).stdout)
    assert sorted(d["device_id"] for d in attention) == ["distrusts", "fails-v2", "hangs"]
    hangs.kill()  # the connection drops: the broker publishes its last will
    wait_until(lambda: sync()["hangs"] == ("offline", "digits:2"), 30, "the hung device offline")
    assert sync() == {"good": ("in_sync", "digits:2"), "fails-v2": ("fell_back", "digits:2"),
                      "hangs": ("offline", "digits:2"), "distrusts": ("rejected", "digits:2")}
    table = edgeops("devices", "list", "--home", str(home)).stdout
    for shown_state in ("fell back", "offline", "in sync", "rejected", "refused"):
        assert shown_state in table, table
    shown = edgeops("devices", "show", "fails-v2", "--home", str(home)).stdout
    assert "fell back" in shown and "probation_failed" in shown
    shown = edgeops("devices", "show", "distrusts", "--home", str(home)).stdout
    assert "rejected" in shown and "not in the trust list" in shown
    bad = edgeops("devices", "list", "--sync", "lost", "--home", str(home), check=False)
    assert bad.returncode == 1 and "unknown sync state(s) lost" in bad.stderr
