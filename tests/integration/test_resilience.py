"""The agent and the server across broker restarts: downloads resume, telemetry is not lost."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet_server.store import Store
from tests.integration.harness import BrokerHandle, Listener, Processes, edgeops, wait_until

pytestmark = pytest.mark.integration


def test_broker_restart_during_download_resumes_and_completes(
    mosquitto: BrokerHandle, processes: Processes, big_model: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    processes.server(home, mosquitto)
    agent = processes.agent("dev-a", mosquitto)
    store = Store(home / "edgeops.db")
    wait_until(lambda: store.telemetry_count("default", "dev-a") > 0, 30, "the agent online")
    from fleet_server.registry import Registry, add_model

    row, _ = add_model(store, Registry(home / "registry"), big_model, name="big", version="1", chunk_size=16 * 1024)
    edgeops("deploy", "big:1", "--home", str(home))
    log_path = tmp_path / "logs" / "dev-a.log"
    # Restart the broker once the download has started but before it finished.
    wait_until(lambda: "state device=dev-a idle -> fetching" in log_path.read_text(), 30, "the download to start")
    mosquitto.restart()
    wait_until(lambda: store.device("default", "dev-a").active_digest == row.digest
               and store.device("default", "dev-a").phase == "committed", 60, "big:1 committed after the restart")
    assert agent.alive
    log = log_path.read_text()
    assert "mqtt disconnected" in log


@pytest.fixture
def persistent_mosquitto(tmp_path: Path) -> Iterator[BrokerHandle]:
    """Mosquitto with persistence, as deployed (edgeops mosquitto-config --data-dir).

    Without it a restarted broker has forgotten the server's subscriptions, and windows an agent
    re-sends from its spool before the server has subscribed again are dropped by the broker.
    """
    handle = BrokerHandle("mosquitto", tmp_path, persistent=True)
    handle.start()
    yield handle
    handle.stop()


def test_a_persistent_broker_keeps_an_offline_subscribers_session_across_its_restart(
    persistent_mosquitto: BrokerHandle,
) -> None:
    """What the outage test below relies on, checked directly: as the server's, a session that is
    offline while the broker restarts still receives the QoS 1 messages published meanwhile.

    Started as root, Mosquitto would switch to the ``mosquitto`` user and could not write its
    persistence file in the test's private directory; the restart would then forget the session.
    """
    broker = persistent_mosquitto
    topic = "edgeops-test/persist"
    publisher = Listener(broker, client_id="persist-publisher")
    subscriber = Listener(broker, f"{topic}/#", client_id="persist-subscriber", clean_session=False)
    # The subscription is in place once a probe gets through.
    wait_until(lambda: publisher.publish(f"{topic}/probe", b"probe") or subscriber.on(f"{topic}/probe"), 10,
               "the probe message at the subscriber")
    subscriber.close()
    publisher.close()

    broker.restart()
    assert broker.data_dir is not None and any(broker.data_dir.iterdir()), "the broker wrote no persistence file"

    publisher = Listener(broker, client_id="persist-publisher")
    publisher.publish(f"{topic}/queued", b"while-away")
    publisher.close()
    # No filters: the session the broker restored carries the subscription.
    subscriber = Listener(broker, client_id="persist-subscriber", clean_session=False)
    try:
        wait_until(lambda: [m.payload for m in subscriber.on(f"{topic}/queued")] == [b"while-away"], 10,
                   "the message queued for the offline session")
    finally:
        subscriber.close()


def test_telemetry_during_a_broker_outage_arrives_afterwards_without_gaps(
    persistent_mosquitto: BrokerHandle, processes: Processes, tmp_path: Path
) -> None:
    mosquitto = persistent_mosquitto
    home = tmp_path / "home"
    processes.server(home, mosquitto)
    agent = processes.agent("dev-a", mosquitto, telemetry_interval=0.5)
    store = Store(home / "edgeops.db")
    wait_until(lambda: store.telemetry_count("default", "dev-a") >= 2, 30, "telemetry before the outage")
    mosquitto.stop()
    time.sleep(3.0)  # ~6 windows produced while the broker is down
    mosquitto.start()
    # Reconnection back-off is exponential: wait for the windows of the outage, not a fixed time.
    wait_until(lambda: len(_window_ids(store)) >= 10, 60, "the windows spooled during the outage")
    assert agent.stop() == 0
    seqs = sorted(_window_ids(store))
    assert seqs == list(range(1, seqs[-1] + 1)), f"missing windows: {set(range(1, seqs[-1] + 1)) - set(seqs)}"
    log = (tmp_path / "logs" / "dev-a.log").read_text()
    assert "mqtt disconnected" in log


def _window_ids(store: Store) -> list[int]:
    return [int(re.split(":", w)[-1]) for w in store.telemetry_window_ids("default", "dev-a")]
