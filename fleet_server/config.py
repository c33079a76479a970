"""Where the fleet server keeps its state, and how to reach the broker."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from edgeops.protocol import check_id
from edgeops.transport import BrokerAddress

DEFAULT_HOME = Path(os.environ.get("EDGEOPS_HOME", Path.home() / ".edgeops"))


@dataclass(frozen=True)
class ServerConfig:
    """The server's settings. ``home`` holds ``edgeops.db`` and ``registry/``."""

    home: Path
    broker: BrokerAddress
    fleet: str = "default"
    #: How often desired state is compared with what was published.
    reconcile_interval_s: float = 0.5
    #: Port of the HTTP API (fleet_server/api.py); 0 = no HTTP API.
    http_port: int = 0
    #: Address the HTTP API listens on.
    http_host: str = "127.0.0.1"
    #: Publish Home Assistant MQTT discovery configs (retained) for every device seen.
    homeassistant_discovery: bool = False
    #: Home Assistant's discovery prefix (its MQTT integration's default is "homeassistant").
    homeassistant_prefix: str = "homeassistant"

    def __post_init__(self) -> None:
        check_id(self.fleet, "fleet")

    @property
    def store_path(self) -> Path:
        return self.home / "edgeops.db"

    @property
    def registry_path(self) -> Path:
        return self.home / "registry"
