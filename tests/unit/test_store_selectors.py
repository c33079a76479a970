"""Selectors (``all``, device ids, ``tag:NAME``) as deployments and the rollout driver read them, and
how a store target (a path or a URL) becomes a database."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeops.errors import ConfigError
from edgeops.protocol import Presence, Status, Telemetry
from edgeops.transport import BrokerAddress
from fleet_server.config import ServerConfig
from fleet_server.rollout import Gates, Rollout, Stage
from fleet_server.rollout_driver import RolloutService
from fleet_server.server import FleetServer
from fleet_server.store import Deployment, Store, StoreUnavailableError, database_url, split_selector

DIGEST = "a" * 64


def test_selectors_split_into_ids_and_tags() -> None:
    assert split_selector("all") == ([], [])
    assert split_selector("dev-1, tag:pi4,dev-2,,tag:lab") == (["dev-1", "dev-2"], ["pi4", "lab"])
    dep = Deployment(1, "f", DIGEST, "dev-1,tag:pi4", 0)
    assert dep.explicit_ids == {"dev-1"} and dep.tags == {"pi4"}
    assert dep.targets("dev-1") and dep.targets("dev-2", ("lab", "pi4")) and not dep.targets("dev-2", ("lab",))
    assert Deployment(2, "f", DIGEST, "all", 0).targets("anything")


@pytest.fixture
def service(tmp_path: Path) -> RolloutService:
    store = Store(tmp_path / "edgeops.db")
    for device in ("dev-a", "dev-b", "dev-c", "dev-d"):
        store.record_status("f", Status(device_id=device, state=Presence.ONLINE, ts=1), 1_000)
    store.set_device_tags("f", "dev-a", ["pi4"])
    store.set_device_tags("f", "dev-b", ["pi4", "lab"])
    store.set_device_tags("f", "dev-c", ["lab"])
    return RolloutService(store, "f")


def _rollout(selector: str) -> Rollout:
    return Rollout(id="r-1", target_digest=DIGEST, stages=(Stage("all", percent=100),), selector=selector)


def test_rollout_selector_resolves_tags_through_the_store(service: RolloutService) -> None:
    assert sorted(service.selected(_rollout("tag:pi4"))) == ["dev-a", "dev-b"]
    assert sorted(service.selected(_rollout("tag:lab,dev-d"))) == ["dev-b", "dev-c", "dev-d"]
    assert sorted(service.selected(_rollout("tag:pi4,tag:lab"))) == ["dev-a", "dev-b", "dev-c"]
    assert service.selected(_rollout("tag:nobody")) == []
    assert sorted(service.selected(_rollout("all"))) == ["dev-a", "dev-b", "dev-c", "dev-d"]
    # Resolved on every tick: a device tagged later joins.
    service.store.set_device_tags("f", "dev-d", ["pi4"])
    assert sorted(service.selected(_rollout("tag:pi4"))) == ["dev-a", "dev-b", "dev-d"]


def test_rollout_with_a_tag_selector_assigns_only_tagged_devices(service: RolloutService) -> None:
    started = service.start_new(DIGEST, "tag:lab", "100%", Gates(), actor="test")
    service.tick(now=2_000)
    assert sorted(service.get(started.id).assigned) == ["dev-b", "dev-c"]
    assert {d: dep.digest for d, dep in service.store.desired_for("f").items()} == {"dev-b": DIGEST, "dev-c": DIGEST}
    with pytest.raises(ConfigError, match="invalid tag"):
        service.start_new(DIGEST, "tag:bad tag", "100%", Gates(), actor="test")


def test_store_targets_and_urls(tmp_path: Path) -> None:
    assert database_url(tmp_path / "x.db").database == str(tmp_path / "x.db")
    assert database_url("relative/edgeops.db").get_backend_name() == "sqlite"
    assert database_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert database_url("postgres://u@h/db").drivername == "postgresql+psycopg"
    assert database_url("postgresql+psycopg://u:secret@h:5433/db").port == 5433
    with pytest.raises(ConfigError, match="unsupported database 'mysql'"):
        database_url("mysql://u@h/db")
    with pytest.raises(ConfigError, match="SQLite file"):
        database_url("sqlite://")
    store = Store(f"sqlite:///{tmp_path}/sub/edgeops.db")
    try:
        assert store.path == tmp_path / "sub" / "edgeops.db" and store.path.exists()
        assert store.backend == "sqlite"
    finally:
        store.close()
    assert "secret" not in Store.open("postgresql://u:secret@127.0.0.1:1/db", migrate=False).url


def test_an_unreachable_database_is_a_store_error() -> None:
    with pytest.raises(StoreUnavailableError, match="unavailable"):
        Store("postgresql://postgres@127.0.0.1:1/nothing")


def test_server_config_defaults_to_the_home_file_and_prunes_by_age(tmp_path: Path) -> None:
    config = ServerConfig(home=tmp_path, broker=BrokerAddress("127.0.0.1", 1883), fleet="f", retention_days=1.0)
    assert config.database_url == f"sqlite:///{tmp_path}/edgeops.db"
    with pytest.raises(ConfigError, match="retention_days"):
        ServerConfig(home=tmp_path, broker=BrokerAddress("127.0.0.1", 1883), retention_days=0)
    server = FleetServer(config)
    try:
        assert server.store.path == tmp_path / "edgeops.db"
        now = 10 * 86_400_000
        old = Telemetry(device_id="dev-a", window_id="dev-a:w:1", ts=now - 2 * 86_400_000, window_s=1.0)
        new = Telemetry(device_id="dev-a", window_id="dev-a:w:2", ts=now - 3_600_000, window_s=1.0)
        server.store.record_telemetry_batch("f", [old, new], now)
        assert server.apply_retention(now=now) == {"telemetry": 1, "drift": 0, "events": 0}
        assert server.store.telemetry_window_ids("f", "dev-a") == ["dev-a:w:2"]
    finally:
        server.store.close()
    off = FleetServer(ServerConfig(home=tmp_path, broker=BrokerAddress("127.0.0.1", 1883), fleet="f",
                                   retention_days=None))
    try:
        assert off.apply_retention(now=10**15) is None
        assert off.store.telemetry_count("f") == 1
    finally:
        off.store.close()
