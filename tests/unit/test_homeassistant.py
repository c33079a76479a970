"""Home Assistant discovery configs: topics, payloads, availability, and when the server sends them."""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from typing import Any

import pytest

from edgeops import homeassistant as ha
from edgeops.errors import ConfigError
from edgeops.protocol import DeviceChannel, Presence, Status, Telemetry, device_topic

FLEET = "default"
DEVICE = "pi-01"
TOPIC_ID = re.compile(r"[A-Za-z0-9_-]+")
TEMPLATE = re.compile(r"\{\{ value_json\.([a-z0-9_]+) \}\}")
#: Telemetry fields that describe the window rather than measure something.
NOT_SENSORS = {"ts", "window_s"}

WINDOW = Telemetry(device_id=DEVICE, window_id=f"{DEVICE}:b:1", ts=1, window_s=1.0, model="digits",
                   model_version="1", inferences=50, errors=1, latency_ms_p50=0.1, latency_ms_p95=0.2,
                   latency_ms_p99=0.3, drift_score=0.05, drift_features_over=2, cpu_percent=3.0, rss_mb=61.5,
                   temperature_c=48.2, spool_rows=0, spool_evicted_total=0)


def configs(**kwargs: Any) -> dict[str, dict[str, Any]]:
    """Discovery payloads by object id (the last-but-one topic level)."""
    return {topic.split("/")[-2]: json.loads(payload)
            for topic, payload in ha.discovery_messages(FLEET, DEVICE, **kwargs)}


def _is_numeric(tp: Any) -> bool:
    args = typing.get_args(tp)
    if typing.get_origin(tp) is typing.Annotated:
        return _is_numeric(args[0])
    if args:
        return any(_is_numeric(a) for a in args if a is not type(None))
    return tp in (int, float)


def test_topics_follow_the_discovery_format() -> None:
    messages = ha.discovery_messages(FLEET, DEVICE)
    assert len({t for t, _ in messages}) == len(messages) == len(ha.SENSORS)
    for topic, _ in messages:
        prefix, component, node, obj, last = topic.split("/")
        assert (prefix, component, last) == ("homeassistant", "sensor", "config")
        assert TOPIC_ID.fullmatch(node) and TOPIC_ID.fullmatch(obj), topic
    assert ha.config_topic("ha/discovery", FLEET, DEVICE, "errors") == \
        "ha/discovery/sensor/edgeops_default_pi-01/errors/config"


def test_every_numeric_telemetry_field_has_a_sensor() -> None:
    hints = typing.get_type_hints(Telemetry, include_extras=True)
    numeric = {f.name for f in dataclasses.fields(Telemetry) if _is_numeric(hints[f.name])}
    assert {"inferences", "latency_ms_p95", "rss_mb", "temperature_c"} <= numeric
    assert numeric - NOT_SENSORS <= set(configs())
    assert "model_version" in configs()


def test_payloads_read_the_device_telemetry_and_render_on_a_real_window() -> None:
    window = json.loads(WINDOW.encode())
    telemetry_topic = device_topic(FLEET, DEVICE, DeviceChannel.TELEMETRY)
    for obj, config in configs().items():
        assert config["state_topic"] == telemetry_topic
        match = TEMPLATE.fullmatch(config["value_template"])
        assert match and match.group(1) == obj, config["value_template"]
        assert obj in window
        assert config["unique_id"].endswith(f":{obj}")


def test_units_device_classes_and_text_sensor() -> None:
    by_field = configs()
    for field in ("latency_ms_p50", "latency_ms_p95", "latency_ms_p99"):
        assert by_field[field]["unit_of_measurement"] == "ms"
        assert by_field[field]["state_class"] == "measurement"
    assert by_field["cpu_percent"]["unit_of_measurement"] == "%"
    assert by_field["rss_mb"]["unit_of_measurement"] == "MiB"
    assert by_field["temperature_c"]["unit_of_measurement"] == "°C"
    assert by_field["temperature_c"]["device_class"] == "temperature"
    assert "unit_of_measurement" not in by_field["inferences"]
    text = by_field["model_version"]
    assert not {"unit_of_measurement", "state_class", "device_class"} & set(text)
    assert by_field["spool_evicted_total"]["state_class"] == "total_increasing"


def test_availability_comes_from_the_status_topic() -> None:
    status_topic = device_topic(FLEET, DEVICE, DeviceChannel.STATUS)
    online = json.loads(Status(device_id=DEVICE, state=Presence.ONLINE, ts=1).encode())
    offline = json.loads(Status(device_id=DEVICE, state=Presence.OFFLINE, ts=2).encode())
    for config in configs().values():
        [availability] = config["availability"]
        assert availability["topic"] == status_topic
        field = TEMPLATE.fullmatch(availability["value_template"])
        assert field is not None and field.group(1) == "state"
        assert availability["payload_available"] == online["state"] == "online"
        assert availability["payload_not_available"] == offline["state"] == "offline"


def test_one_device_block_and_unique_ids() -> None:
    with_version = configs(sw_version="0.1.0")
    blocks = [c["device"] for c in with_version.values()]
    assert all(b == blocks[0] for b in blocks)
    assert blocks[0] == {"identifiers": ["edgeops:default:pi-01"], "name": DEVICE, "manufacturer": "EdgeOps",
                         "model": "EdgeOps agent", "sw_version": "0.1.0"}
    assert "sw_version" not in next(iter(configs().values()))["device"]
    other = {c["unique_id"] for c in json_payloads(ha.discovery_messages(FLEET, "pi-02"))}
    mine = {c["unique_id"] for c in with_version.values()}
    assert len(mine) == len(ha.SENSORS) and not mine & other


def json_payloads(messages: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
    return [json.loads(payload) for _, payload in messages]


def test_ids_outside_the_topic_alphabet_get_distinct_valid_node_ids() -> None:
    pairs = [("default", "pi.01"), ("default", "pi_01"), ("a_b", "c"), ("a", "b_c"), ("a.b", "c"), ("a", "b.c")]
    nodes = [ha.node_id(fleet, device) for fleet, device in pairs]
    assert len(set(nodes)) == len(nodes)
    assert all(TOPIC_ID.fullmatch(n) for n in nodes), nodes
    assert ha.node_id("default", "pi-01") == "edgeops_default_pi-01"


def test_clearing_empties_the_same_topics() -> None:
    cleared = ha.clear_messages(FLEET, DEVICE)
    assert [t for t, _ in cleared] == [t for t, _ in ha.discovery_messages(FLEET, DEVICE)]
    assert all(payload == b"" for _, payload in cleared)


@pytest.mark.parametrize("prefix", ["", "home/#", "a/+/b", "/homeassistant", "homeassistant/"])
def test_bad_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(ConfigError):
        ha.check_prefix(prefix)


class FakePublisher:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bool]] = []

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> object:
        self.sent.append((topic, payload, retain))
        return None


def test_announcer_publishes_retained_once_per_device_per_connection() -> None:
    publisher = FakePublisher()
    announcer = ha.DiscoveryAnnouncer(publisher, FLEET)
    online = Status(device_id=DEVICE, state=Presence.ONLINE, ts=1, agent_version="0.1.0")
    assert announcer.device_seen(online)
    assert len(publisher.sent) == len(ha.SENSORS) and all(retain for _, _, retain in publisher.sent)
    assert not announcer.device_seen(online)
    # The last will has the same version: nothing new to say.
    assert not announcer.device_seen(dataclasses.replace(online, state=Presence.OFFLINE, ts=2))
    assert announcer.device_seen(Status(device_id="pi-02", state=Presence.ONLINE, ts=3))
    announcer.reset()  # a new broker connection
    assert announcer.device_seen(online)
    assert announcer.device_seen(dataclasses.replace(online, agent_version="0.2.0"))
    assert json.loads(publisher.sent[-1][1])["device"]["sw_version"] == "0.2.0"
    announcer.clear(DEVICE)
    assert all(p == b"" and r for _, p, r in publisher.sent[-len(ha.SENSORS):])


def test_announcer_does_nothing_when_disabled() -> None:
    publisher = FakePublisher()
    announcer = ha.DiscoveryAnnouncer(publisher, FLEET, enabled=False)
    assert not announcer.device_seen(Status(device_id=DEVICE, state=Presence.ONLINE, ts=1))
    assert publisher.sent == []
    with pytest.raises(ConfigError):
        ha.DiscoveryAnnouncer(publisher, FLEET, prefix="ha/#")
