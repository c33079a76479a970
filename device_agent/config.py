"""The agent's one typed configuration, loaded in layers: defaults, file, environment, flags.

Units are in the names. The file is TOML (``edgeops agent init`` writes a commented one); every
field can also come from ``EDGEOPS_AGENT_<FIELD>`` in the environment or a command-line flag, and
later layers win. A config file that was named explicitly must exist.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeops.errors import ConfigError
from edgeops.protocol import check_id
from edgeops.transport import BrokerAddress

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

INPUT_SOURCES = ("digits", "gaussian", "none")
ENV_PREFIX = "EDGEOPS_AGENT_"


@dataclass(frozen=True)
class AgentConfig:
    #: This device's id: letters, digits, ``_.-``; unique in the fleet.
    device_id: str
    #: Holds state.json, the A/B slots, partial downloads and the telemetry spool.
    data_dir: Path
    #: MQTT broker ``host:port``.
    broker: BrokerAddress = field(default_factory=lambda: BrokerAddress("127.0.0.1", 1883))
    fleet: str = "default"
    #: Length of one telemetry window.
    telemetry_interval_s: float = 10.0
    #: Directory of trusted public keys (``*.pub``); bundles and desired messages must be signed by one.
    trust_dir: Path | None = None
    #: Accept unsigned bundles and desired messages (development only; logged loudly at start).
    allow_unsigned: bool = False
    #: Runtime threads per inference.
    intra_op_threads: int = 1
    #: Probation of a new version: inferences to watch, or seconds, whichever comes first.
    probation_min_inferences: int = 50
    probation_max_s: float = 30.0
    #: Share of failed inferences allowed in probation (a bundle's own budget takes precedence).
    probation_max_error_rate: float = 0.05
    #: p95 latency budget in ms during probation; 0 means none (a bundle's own budget takes precedence).
    probation_max_latency_ms_p95: float = 0.0
    #: Local inference API: TCP port on 127.0.0.1 (0 = off) and/or a Unix socket path.
    api_port: int = 0
    api_socket: Path | None = None
    #: Upper bound of the on-disk telemetry spool; the oldest windows are evicted (and counted) beyond it.
    spool_max_bytes: int = 8 * 1024 * 1024
    #: ``full``: every spooled window is fsynced (survives a power cut); ``normal``: survives a
    #: process crash only (the simulator's many devices on one disk).
    spool_durability: str = "full"
    #: Simulated input: ``digits`` (bundled data set), ``gaussian`` or ``none`` (a real application
    #: calls the local API instead).
    input_source: str = "none"
    #: Seconds between simulated inferences (0 = none).
    inference_interval_s: float = 0.05
    #: Drift injected into the simulated input, e.g. ``shift:1.5@200`` (see device_agent/simulation.py).
    simulate_drift: str = "none"
    #: Faults injected into inference, e.g. ``latency=5,errors=0.1`` ...
    simulate_faults: str = ""
    #: ... only while this model version serves (empty: always).
    simulate_faults_version: str = ""
    seed: int = 0

    def __post_init__(self) -> None:
        try:
            check_id(self.device_id, "device id")
            check_id(self.fleet, "fleet")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if self.telemetry_interval_s <= 0:
            raise ConfigError("telemetry_interval_s must be positive")
        if self.inference_interval_s < 0:
            raise ConfigError("inference_interval_s must not be negative")
        if self.input_source not in INPUT_SOURCES:
            raise ConfigError(f"input_source must be one of {', '.join(INPUT_SOURCES)}")
        if self.intra_op_threads < 1:
            raise ConfigError("intra_op_threads must be at least 1")
        if self.spool_durability not in ("full", "normal"):
            raise ConfigError("spool_durability must be full or normal")
        if not 0 <= self.api_port < 65536:
            raise ConfigError("api_port must be within 0..65535")
        if self.trust_dir is None and not self.allow_unsigned:
            raise ConfigError("set trust_dir (a directory of trusted *.pub keys) or allow_unsigned = true")


def _convert(name: str, raw: Any, kind: Any) -> Any:
    text = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
    try:
        if "BrokerAddress" in text:
            return raw if isinstance(raw, BrokerAddress) else BrokerAddress.parse(str(raw))
        if "Path" in text:
            return None if raw in (None, "") else Path(str(raw)).expanduser()
        if text == "bool":
            if isinstance(raw, bool):
                return raw
            if str(raw).lower() in ("1", "true", "yes", "on"):
                return True
            if str(raw).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"not a boolean: {raw!r}")
        if text == "int":
            return int(raw)
        if text == "float":
            return float(raw)
        return str(raw)
    except ValueError as exc:
        raise ConfigError(f"config field {name}: {exc}") from None


def load_agent_config(
    file: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> AgentConfig:
    """Build the config from defaults, then ``file``, then ``env``, then ``overrides`` (flags)."""
    fields = {f.name: f for f in dataclasses.fields(AgentConfig)}
    values: dict[str, Any] = {}
    if file is not None:
        try:
            data = tomllib.loads(file.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {file} does not exist") from None
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {file}: {exc}") from None
        section = data.get("agent", data)
        unknown = sorted(set(section) - set(fields))
        if unknown:
            raise ConfigError(f"config file {file}: unknown field(s) {', '.join(unknown)}")
        values.update(section)
    for key, raw in (env or {}).items():
        if key.startswith(ENV_PREFIX) and key[len(ENV_PREFIX):].lower() in fields:
            values[key[len(ENV_PREFIX):].lower()] = raw
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    missing = [n for n in ("device_id", "data_dir") if n not in values]
    if missing:
        raise ConfigError(f"missing required config: {', '.join(missing)}")
    converted = {name: _convert(name, raw, fields[name].type) for name, raw in values.items()}
    return AgentConfig(**converted)


def config_template(config: AgentConfig) -> str:
    """A commented TOML file holding ``config``: what ``edgeops agent init`` writes."""
    lines = ["# EdgeOps agent configuration (edgeops agent init). Every field can be overridden by",
             f"# the environment ({ENV_PREFIX}<FIELD>) or a flag of `edgeops agent`.", "[agent]"]
    for f in dataclasses.fields(AgentConfig):
        value = getattr(config, f.name)
        if value is None:
            lines.append(f"# {f.name} =")
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float)):
            text = repr(value)
        else:
            text = '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
        lines.append(f"{f.name} = {text}")
    return "\n".join(lines) + "\n"


def systemd_unit(config_path: Path, executable: str, user: str = "edgeops") -> str:
    """A systemd unit that runs the agent with ``config_path`` and restarts it if it dies."""
    return f"""[Unit]
Description=EdgeOps device agent
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
User={user}
ExecStart={executable} agent --config {config_path}
Restart=always
RestartSec=5
# SIGTERM makes the agent publish "offline" and disconnect cleanly.
KillSignal=SIGTERM
TimeoutStopSec=15

[Install]
WantedBy=multi-user.target
"""
