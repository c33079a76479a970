"""Home Assistant MQTT discovery for device telemetry (optional, off by default).

Home Assistant creates an entity for every retained JSON config it finds on
``<prefix>/<component>/<node_id>/<object_id>/config``. For each device this module describes one
``sensor`` per flat telemetry field: its ``state_topic`` is the device's telemetry topic and a
``value_template`` picks the field out of the window, so Home Assistant reads the agent's own
messages with no bridge in between. Availability comes from the device's retained ``status``
topic (``{"state": "online"|"offline", ...}``), last will included.

A ``null`` field (no inference in the window, no thermal zone) renders as ``None``, which Home
Assistant's MQTT sensor takes as "unknown" rather than as a bad value.

The functions here are pure (topics and payloads); :class:`DiscoveryAnnouncer` is the small
stateful part the fleet server calls when a device's status arrives.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Protocol

from edgeops.errors import ConfigError
from edgeops.protocol import DeviceChannel, Presence, Status, check_id, device_topic

DEFAULT_PREFIX = "homeassistant"
COMPONENT = "sensor"
DEVICE_MODEL = "EdgeOps agent"
MANUFACTURER = "EdgeOps"
#: Home Assistant accepts only these characters in ``node_id`` and ``object_id``.
_TOPIC_ID_RE = re.compile(r"[A-Za-z0-9_-]+")
_SIMPLE_FLEET_RE = re.compile(r"[A-Za-z0-9-]+")


@dataclass(frozen=True)
class SensorSpec:
    """How one telemetry field appears in Home Assistant."""

    field: str
    name: str
    unit: str | None = None
    device_class: str | None = None
    #: ``measurement`` for numbers (charts and statistics); None for text.
    state_class: str | None = "measurement"
    entity_category: str | None = None


#: One sensor per flat telemetry field. ``ts`` and ``window_s`` describe the window itself, and
#: ``device_id``, ``window_id`` and ``model`` identify it: they are not sensors.
SENSORS: tuple[SensorSpec, ...] = (
    SensorSpec("inferences", "Inferences"),
    SensorSpec("errors", "Errors"),
    SensorSpec("latency_ms_p50", "Latency p50", unit="ms"),
    SensorSpec("latency_ms_p95", "Latency p95", unit="ms"),
    SensorSpec("latency_ms_p99", "Latency p99", unit="ms"),
    SensorSpec("drift_score", "Drift score"),
    SensorSpec("drift_features_over", "Drifted features"),
    SensorSpec("cpu_percent", "CPU", unit="%"),
    # The agent reports resident memory in MiB (2**20 bytes), see docs/telemetry.md.
    SensorSpec("rss_mb", "Memory (RSS)", unit="MiB"),
    SensorSpec("temperature_c", "Temperature", unit="°C", device_class="temperature"),
    SensorSpec("spool_rows", "Spooled messages", entity_category="diagnostic"),
    SensorSpec("spool_evicted_total", "Spool evictions", state_class="total_increasing",
               entity_category="diagnostic"),
    SensorSpec("model_version", "Model version", state_class=None),
)


def check_prefix(prefix: str) -> str:
    """The discovery prefix must be a plain topic prefix: no wildcards, no empty levels."""
    levels = prefix.split("/")
    if not prefix or any(not level or "+" in level or "#" in level for level in levels):
        raise ConfigError(f"invalid Home Assistant discovery prefix {prefix!r}: expected e.g. 'homeassistant'")
    return prefix


def node_id(fleet: str, device_id: str) -> str:
    """The discovery ``node_id`` of a device: ``edgeops_<fleet>_<device>``.

    Home Assistant allows only ``[A-Za-z0-9_-]`` here while fleet and device ids may also hold
    ``.`` (and a fleet may hold ``_``, which would make the join ambiguous). Such ids are spelled
    with ``_`` and get a short digest of the real pair, so two devices never share a topic.
    """
    check_id(fleet, "fleet")
    check_id(device_id, "device id")
    plain = f"edgeops_{fleet}_{device_id}"
    if _SIMPLE_FLEET_RE.fullmatch(fleet) and _TOPIC_ID_RE.fullmatch(device_id):
        return plain
    digest = hashlib.sha256(f"{fleet}/{device_id}".encode()).hexdigest()[:8]
    return f"{plain.replace('.', '_')}_{digest}"


def config_topic(prefix: str, fleet: str, device_id: str, field: str) -> str:
    """``<prefix>/sensor/<node_id>/<object_id>/config``; the object id is the telemetry field."""
    return f"{check_prefix(prefix)}/{COMPONENT}/{node_id(fleet, device_id)}/{field}/config"


def device_block(fleet: str, device_id: str, sw_version: str | None = None) -> dict[str, Any]:
    """What groups a device's sensors into one Home Assistant device."""
    block: dict[str, Any] = {
        "identifiers": [f"edgeops:{fleet}:{device_id}"],
        "name": device_id,
        "manufacturer": MANUFACTURER,
        "model": DEVICE_MODEL,
    }
    if sw_version:
        block["sw_version"] = sw_version
    return block


def sensor_config(fleet: str, device_id: str, spec: SensorSpec, sw_version: str | None = None) -> dict[str, Any]:
    """The discovery config of one sensor (a JSON object)."""
    config: dict[str, Any] = {
        "name": spec.name,
        "unique_id": f"edgeops:{fleet}:{device_id}:{spec.field}",
        "state_topic": device_topic(fleet, device_id, DeviceChannel.TELEMETRY),
        "value_template": f"{{{{ value_json.{spec.field} }}}}",
        "availability": [{
            "topic": device_topic(fleet, device_id, DeviceChannel.STATUS),
            "value_template": "{{ value_json.state }}",
            "payload_available": Presence.ONLINE.value,
            "payload_not_available": Presence.OFFLINE.value,
        }],
        "device": device_block(fleet, device_id, sw_version),
        "qos": 1,
    }
    optional = {
        "unit_of_measurement": spec.unit,
        "device_class": spec.device_class,
        "state_class": spec.state_class,
        "entity_category": spec.entity_category,
    }
    config.update({key: value for key, value in optional.items() if value is not None})
    return config


def discovery_messages(
    fleet: str, device_id: str, prefix: str = DEFAULT_PREFIX, sw_version: str | None = None
) -> list[tuple[str, bytes]]:
    """(topic, payload) of every sensor of a device; publish them retained."""
    return [
        (config_topic(prefix, fleet, device_id, spec.field),
         json.dumps(sensor_config(fleet, device_id, spec, sw_version), separators=(",", ":"),
                    ensure_ascii=False).encode())
        for spec in SENSORS
    ]


def clear_messages(fleet: str, device_id: str, prefix: str = DEFAULT_PREFIX) -> list[tuple[str, bytes]]:
    """Empty retained payloads on the same topics: the broker forgets them, Home Assistant removes
    the entities."""
    return [(config_topic(prefix, fleet, device_id, spec.field), b"") for spec in SENSORS]


class Publisher(Protocol):
    def publish(self, topic: str, payload: bytes, *, retain: bool = ...) -> object: ...


class DiscoveryAnnouncer:
    """Publishes a device's discovery configs once per connection, when its status is first seen.

    The fleet server calls :meth:`device_seen` for every Status and :meth:`reset` when its broker
    connection comes back (the broker may have lost its retained messages). A new agent version
    (``sw_version``) republishes the configs.
    """

    def __init__(self, publisher: Publisher, fleet: str, prefix: str = DEFAULT_PREFIX, enabled: bool = True) -> None:
        self.publisher = publisher
        self.fleet = fleet
        self.prefix = check_prefix(prefix) if enabled else prefix
        self.enabled = enabled
        self._announced: dict[str, str] = {}

    def reset(self) -> None:
        self._announced.clear()

    def device_seen(self, status: Status) -> bool:
        """Publish the configs of ``status.device_id`` unless this connection already did; True if sent."""
        if not self.enabled:
            return False
        version = status.agent_version or self._announced.get(status.device_id, "")
        if self._announced.get(status.device_id) == version:
            return False
        for topic, payload in discovery_messages(self.fleet, status.device_id, self.prefix, version or None):
            self.publisher.publish(topic, payload, retain=True)
        self._announced[status.device_id] = version
        return True

    def clear(self, device_id: str) -> None:
        """Remove a device's entities (its retained configs) and forget it was announced."""
        for topic, payload in clear_messages(self.fleet, device_id, self.prefix):
            self.publisher.publish(topic, payload, retain=True)
        self._announced.pop(device_id, None)
