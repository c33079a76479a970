"""How the simulator splits devices over processes (pure: no process is started)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from device_agent.config import AgentConfig
from device_agent.simulator import auto_processes, device_configs, shard
from edgeops.errors import ConfigError
from edgeops.transport import BrokerAddress

TEMPLATE = AgentConfig(device_id="template", data_dir=Path("/tmp/sim"), broker=BrokerAddress("127.0.0.1", 1883),
                       allow_unsigned=True)


@pytest.mark.parametrize(("devices", "cpus", "expected"), [
    (1, 8, 1), (20, 2, 1), (250, 2, 1), (251, 2, 2), (1000, 2, 4), (1000, 1, 2), (5000, 2, 4), (0, 4, 1),
])
def test_auto_processes(devices: int, cpus: int, expected: int) -> None:
    assert auto_processes(devices, cpus) == expected


@given(st.integers(1, 300), st.integers(1, 12))
def test_shards_cover_every_device_once_in_order_and_nearly_evenly(devices: int, processes: int) -> None:
    configs = device_configs(TEMPLATE, devices, "sim", Path("/tmp/sim"))
    shards = shard(configs, processes)
    assert [c for s in shards for c in s] == configs  # same ids, seeds and data directories
    assert len(shards) == min(processes, devices) and all(shards)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_no_processes_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        shard(device_configs(TEMPLATE, 3, "sim", Path("/tmp/sim")), 0)
