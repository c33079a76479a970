"""The agent's layered configuration: defaults < file < environment < flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from device_agent.config import AgentConfig, config_template, load_agent_config, systemd_unit
from edgeops.errors import ConfigError
from edgeops.transport import BrokerAddress


def test_layers_override_in_order(tmp_path: Path) -> None:
    file = tmp_path / "agent.toml"
    file.write_text('[agent]\ndevice_id = "from-file"\ndata_dir = "/d"\ntelemetry_interval_s = 5\n'
                    'allow_unsigned = true\nbroker = "broker.local:1884"\n')
    env = {"EDGEOPS_AGENT_TELEMETRY_INTERVAL_S": "7.5", "EDGEOPS_AGENT_API_PORT": "8123", "OTHER": "x"}
    config = load_agent_config(file, env, {"device_id": "from-flag", "api_port": None})
    assert config.device_id == "from-flag"
    assert config.telemetry_interval_s == 7.5
    assert config.api_port == 8123
    assert config.broker == BrokerAddress("broker.local", 1884)
    assert config.data_dir == Path("/d")
    assert config.allow_unsigned is True


def test_template_round_trips(tmp_path: Path) -> None:
    config = load_agent_config(None, {}, {"device_id": "pi-01", "data_dir": "/var/lib/edgeops",
                                          "trust_dir": "/etc/edgeops/keys", "api_socket": "/run/edgeops.sock"})
    file = tmp_path / "agent.toml"
    file.write_text(config_template(config))
    assert load_agent_config(file, {}, {}) == config
    unit = systemd_unit(file, "/usr/bin/edgeops")
    assert f"ExecStart=/usr/bin/edgeops agent --config {file}" in unit and "Restart=always" in unit


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"data_dir": "/d", "allow_unsigned": True}, "missing required config: device_id"),
        ({"device_id": "a/b", "data_dir": "/d", "allow_unsigned": True}, "invalid device id"),
        ({"device_id": "a", "data_dir": "/d"}, "trust_dir"),
        ({"device_id": "a", "data_dir": "/d", "allow_unsigned": "maybe"}, "not a boolean"),
        ({"device_id": "a", "data_dir": "/d", "allow_unsigned": True, "telemetry_interval_s": "0"}, "positive"),
        ({"device_id": "a", "data_dir": "/d", "allow_unsigned": True, "input_source": "camera"}, "input_source"),
        ({"device_id": "a", "data_dir": "/d", "allow_unsigned": True, "broker": "h:xx"}, "port must be a number"),
    ],
)
def test_bad_values_are_config_errors(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_agent_config(None, {}, overrides)


def test_named_config_file_must_exist_and_be_known(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_agent_config(tmp_path / "nope.toml", {}, {})
    bad = tmp_path / "bad.toml"
    bad.write_text('[agent]\ndevice_id = "a"\ncolour = "red"\n')
    with pytest.raises(ConfigError, match="unknown field"):
        load_agent_config(bad, {}, {})


def test_defaults_are_safe() -> None:
    config = AgentConfig(device_id="a", data_dir=Path("/d"), trust_dir=Path("/k"))
    assert config.allow_unsigned is False and config.api_port == 0 and config.input_source == "none"
