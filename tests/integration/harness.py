"""Real brokers and real processes for the integration tests (fixtures in conftest.py).

Every test that needs a broker runs twice: against Mosquitto (started here on a free port with a
generated configuration) and against the embedded amqtt broker (``edgeops broker``). A missing
Mosquitto binary fails the run: it is never a silent skip.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeops.broker import Mosquitto, free_port, wait_for_port
from edgeops.errors import BrokerUnavailableError
from edgeops.examples import TrainedExample
from edgeops.processes import ManagedProcess
from edgeops.transport import BrokerAddress, Inbound, LinkChange, MqttTransport


def edgeops(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a child process, as a user would; fails the test on a non-zero exit."""
    result = subprocess.run(
        [sys.executable, "-m", "edgeops", *args], capture_output=True, text=True, timeout=120, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"edgeops {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def add_versions(home: Path, versions: Sequence[tuple[str, TrainedExample]], *, sign: bool = True) -> None:
    """``edgeops model add`` each (version, model) as ``digits:VERSION``, with the first model's
    training rows as every version's drift reference."""
    reference = home.parent / "digits-ref.npz"
    np.savez(reference, X=versions[0][1].reference)
    for version, model in versions:
        edgeops("model", "add", str(model.model_path), "--name", "digits", "--version", version,
                "--reference", str(reference), "--home", str(home), *([] if sign else ["--no-sign"]))



class BrokerHandle:
    """A broker on a fixed free port that a test can stop and start again."""

    def __init__(self, kind: str, workdir: Path, *, persistent: bool = False) -> None:
        self.kind = kind
        self.persistent = persistent
        self.workdir = workdir
        self.port = free_port()
        self.address = BrokerAddress("127.0.0.1", self.port)
        self._proc: Mosquitto | ManagedProcess | None = None
        self._log = workdir / f"{kind}.log"
        #: Where a persistent Mosquitto keeps sessions across restarts.
        self.data_dir = workdir / "mosquitto-data" if persistent and kind == "mosquitto" else None

    def start(self) -> None:
        if self.kind == "mosquitto":
            try:
                self._proc = Mosquitto(self.workdir, self.port, self._log, self.data_dir).start()
            except BrokerUnavailableError as exc:
                pytest.fail(f"{exc}; .ci/run installs it", pytrace=False)
        else:
            self._proc = ManagedProcess("broker", ["broker", "--port", str(self.port)], self._log)
            wait_for_port("127.0.0.1", self.port, timeout_s=15)

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop()
        self._proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@dataclass
class Processes:
    """Starts edgeops processes for one test and stops every one of them afterwards."""

    root: Path
    started: list[ManagedProcess] = field(default_factory=list)

    def start(self, name: str, *args: str) -> ManagedProcess:
        proc = ManagedProcess(name, list(args), self.root / "logs" / f"{name}.log")
        self.started.append(proc)
        return proc

    def server(self, home: Path, broker: BrokerHandle, fleet: str = "default") -> ManagedProcess:
        return self.start("server", "server", "--home", str(home), "--broker", str(broker.address),
                          "--fleet", fleet)

    def agent(
        self,
        device_id: str,
        broker: BrokerHandle,
        fleet: str = "default",
        *extra: str,
        env: dict[str, str] | None = None,
        trust_dir: Path | None = None,
        telemetry_interval: float = 1.0,
        max_file_bytes: int | None = None,
    ) -> ManagedProcess:
        """An agent streaming simulated digits input, with a short probation for quick tests."""
        trust = ["--trust-dir", str(trust_dir)] if trust_dir else ["--allow-unsigned"]
        args = ["agent", "--device-id", device_id, "--data-dir", str(self.root / "devices" / device_id),
                "--broker", str(broker.address), "--fleet", fleet, *trust,
                "--telemetry-interval", str(telemetry_interval), "--input", "digits",
                "--inference-interval", "0.02", "--probation-min-inferences", "10", "--probation-max-s", "10",
                *extra]
        proc = ManagedProcess(device_id, args, self.root / "logs" / f"{device_id}.log", env=env,
                              max_file_bytes=max_file_bytes)
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            proc.stop()


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}", pytrace=False)
        time.sleep(interval_s)


class Listener:
    """A test-side MQTT client that records everything it receives, by topic."""

    def __init__(self, broker: BrokerHandle, *filters: str, client_id: str = "test-listener",
                 clean_session: bool = True) -> None:
        self.transport = MqttTransport(client_id, broker.address, clean_session=clean_session, reconnect_min_s=1)
        self.transport.subscribe(*filters)
        self.messages: list[Inbound] = []
        self.transport.start()
        self.transport.wait_connected(10)

    def pump(self) -> list[Inbound]:
        while not self.transport.inbox.empty():
            item = self.transport.inbox.get_nowait()
            if not isinstance(item, LinkChange):
                self.messages.append(item)
        return self.messages

    def on(self, topic: str) -> list[Inbound]:
        return [m for m in self.pump() if m.topic == topic]

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.transport.publish(topic, payload, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.transport.stop()
