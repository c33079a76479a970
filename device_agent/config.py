"""The agent's settings, with units in the names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgeops.errors import ConfigError
from edgeops.protocol import check_id
from edgeops.transport import BrokerAddress

INPUT_SOURCES = ("digits", "none")


@dataclass(frozen=True)
class AgentConfig:
    device_id: str
    broker: BrokerAddress
    #: Holds state.json, installed models and partial downloads; survives restarts.
    data_dir: Path
    fleet: str = "default"
    #: Length of one telemetry window.
    telemetry_interval_s: float = 10.0
    #: Simulated input: one inference every this many seconds (0 disables the simulated stream).
    inference_interval_s: float = 0.05
    #: Simulated input source: ``digits`` (scikit-learn's bundled set) or ``none``.
    input_source: str = "digits"
    intra_op_threads: int = 1
    #: Seed of the simulated input stream, so runs are reproducible per device.
    seed: int = 0

    def __post_init__(self) -> None:
        check_id(self.device_id, "device id")
        check_id(self.fleet, "fleet")
        if self.telemetry_interval_s <= 0:
            raise ConfigError("telemetry_interval_s must be positive")
        if self.inference_interval_s < 0:
            raise ConfigError("inference_interval_s must not be negative")
        if self.input_source not in INPUT_SOURCES:
            raise ConfigError(f"input_source must be one of {', '.join(INPUT_SOURCES)}")
        if self.intra_op_threads < 1:
            raise ConfigError("intra_op_threads must be at least 1")
