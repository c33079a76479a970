"""Home Assistant discovery from a real fleet server for a real agent, read back as Home Assistant would."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from edgeops.homeassistant import SENSORS
from edgeops.protocol import DeviceChannel, Telemetry, device_topic
from tests.integration.harness import BrokerHandle, Listener, Processes, wait_until

pytestmark = pytest.mark.integration
DEVICE = "pi-01"
TEMPLATE = re.compile(r"\{\{ value_json\.([a-z0-9_]+) \}\}")


def render(template: str, payload: bytes) -> Any:
    """The one template shape the configs use, evaluated the way Home Assistant's ``value_json`` would."""
    match = TEMPLATE.fullmatch(template)
    assert match, template
    data = json.loads(payload)
    assert match.group(1) in data, f"{match.group(1)} not in {sorted(data)}"
    return data[match.group(1)]


def configs(listener: Listener) -> dict[str, Any]:
    return {m.topic: m for m in listener.pump() if m.topic.endswith("/config") and m.payload}


def test_server_publishes_retained_discovery_that_reads_the_agents_topics(
    mosquitto: BrokerHandle, processes: Processes, tmp_path: Path
) -> None:
    live = Listener(mosquitto, "homeassistant/#", client_id="ha-live")
    processes.start("server", "server", "--home", str(tmp_path / "home"), "--broker", str(mosquitto.address),
                    "--homeassistant")
    processes.agent(DEVICE, mosquitto)
    telemetry_topic = device_topic("default", DEVICE, DeviceChannel.TELEMETRY)
    status_topic = device_topic("default", DEVICE, DeviceChannel.STATUS)
    try:
        wait_until(lambda: len(configs(live)) == len(SENSORS), 30, "a discovery config per sensor")
        # Home Assistant subscribing later (a restart) still finds them: they are retained.
        ha = Listener(mosquitto, "homeassistant/#", client_id="ha-late")
        try:
            found = wait_until(lambda: configs(ha) if len(configs(ha)) == len(SENSORS) else None, 10,
                               "retained discovery configs")
            assert all(m.retain for m in found.values())
            parsed = {topic: json.loads(m.payload) for topic, m in found.items()}
            for topic, config in parsed.items():
                assert topic.startswith("homeassistant/sensor/edgeops_default_pi-01/")
                assert config["state_topic"] == telemetry_topic
                assert config["availability"][0]["topic"] == status_topic
                assert config["device"]["identifiers"] == ["edgeops:default:pi-01"]
                assert config["device"]["sw_version"]

            # Subscribe to what the configs point at, as Home Assistant does, and evaluate the templates.
            ha.transport.subscribe(telemetry_topic, status_topic)
            status = wait_until(lambda: ha.on(status_topic), 10, "the retained status")[-1]
            availability = next(iter(parsed.values()))["availability"][0]
            assert render(availability["value_template"], status.payload) == availability["payload_available"]
            window = wait_until(lambda: ha.on(telemetry_topic), 10, "a telemetry window")[-1]
            Telemetry.decode(window.payload)
            values = {c["value_template"]: render(c["value_template"], window.payload) for c in parsed.values()}
            assert values["{{ value_json.rss_mb }}"] > 0
            assert values["{{ value_json.inferences }}"] >= 0
        finally:
            ha.close()
        # Once per device per connection: later statuses and windows did not republish them.
        assert all(len([m for m in live.messages if m.topic == t]) == 1 for t in found)
    finally:
        live.close()
