"""Where the fleet server keeps its state, and how to reach the broker."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from edgeops.errors import ConfigError
from edgeops.protocol import check_id
from edgeops.transport import BrokerAddress

DEFAULT_HOME = Path(os.environ.get("EDGEOPS_HOME", Path.home() / ".edgeops"))


@dataclass(frozen=True)
class ServerConfig:
    """The server's settings. ``home`` holds ``registry/`` and, by default, the store ``edgeops.db``."""

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
    #: The store's database as an SQLAlchemy URL: ``sqlite:///PATH`` or
    #: ``postgresql+psycopg://USER@HOST/DB``. Empty means the SQLite file ``home/edgeops.db``.
    database_url: str = ""
    #: Days of telemetry windows, drift details and device events kept; None keeps everything.
    retention_days: float | None = 30.0
    #: How often the server deletes what is older than ``retention_days``.
    retention_interval_s: float = 300.0
    #: Dashboard event streams: messages pending per browser before it is dropped (it reconnects).
    live_queue_size: int = 256
    #: Seconds between heartbeat comments on an idle dashboard event stream.
    live_heartbeat_s: float = 15.0
    #: How often rollout progress is recomputed for open dashboards, seconds.
    live_rollout_interval_s: float = 1.0
    #: Seconds a dashboard sign-in lasts.
    dashboard_session_ttl_s: float = 12 * 3600.0
    #: Devices with their own per-device series in /metrics; the rest fold into device="_other".
    metrics_max_devices: int = 100

    def __post_init__(self) -> None:
        check_id(self.fleet, "fleet")
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{self.store_path}")
        if self.retention_days is not None and not self.retention_days > 0:
            raise ConfigError(f"retention_days must be positive (None keeps everything), got {self.retention_days}")
        if not self.retention_interval_s > 0:
            raise ConfigError(f"retention_interval_s must be positive, got {self.retention_interval_s}")

    @property
    def store_path(self) -> Path:
        """The default SQLite store (used unless ``database_url`` names another database)."""
        return self.home / "edgeops.db"

    @property
    def registry_path(self) -> Path:
        return self.home / "registry"
