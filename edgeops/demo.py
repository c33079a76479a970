"""``make demo``: the whole loop on one machine with an embedded broker and simulated devices."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.live import Live
from rich.table import Table

from edgeops.broker import free_port, wait_for_port
from edgeops.processes import ManagedProcess, stop_all

log = logging.getLogger(__name__)
MODEL_NAME = "digits"
MODEL_VERSION = "1"


def run_demo(*, devices: int, workdir: Path, timeout_s: float, console: Console) -> bool:
    """Run the loop; True when every device runs the deployed version and sent telemetry."""
    from edgeops.cli import devices_table
    from edgeops.examples import train_digits_mlp
    from fleet_server.registry import Registry, add_model
    from fleet_server.store import ALL_DEVICES, Store

    workdir = workdir.resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    home = workdir / "server"
    logs = workdir / "logs"
    processes: list[ManagedProcess] = []
    try:
        with console.status("training the digits MLP (scikit-learn's bundled data) and exporting it to ONNX"):
            trained = train_digits_mlp(workdir / "digits.onnx")
        console.print(f"trained digits MLP: test accuracy {trained.accuracy:.3f} -> {trained.model_path}")

        from edgeops.signing import KeyRing

        keys = KeyRing(home / "keys")
        key = keys.generate("demo", activate=True)
        trust_dir = workdir / "trust"
        keys.export_public(trust_dir)
        console.print(f"signing key {key.key_id}; devices trust only it ({trust_dir})")

        port = free_port()
        broker = f"127.0.0.1:{port}"
        processes.append(ManagedProcess("broker", ["broker", "--port", str(port)], logs / "broker.log"))
        wait_for_port("127.0.0.1", port)
        console.print(f"embedded MQTT broker on {broker} (port 1883 is left to the system broker)")
        processes.append(
            ManagedProcess("server", ["server", "--home", str(home), "--broker", broker], logs / "server.log")
        )
        for i in range(devices):
            device_id = f"sim-{i + 1:02d}"
            processes.append(
                ManagedProcess(
                    device_id,
                    ["agent", "--device-id", device_id, "--data-dir", str(workdir / "devices" / device_id),
                     "--broker", broker, "--telemetry-interval", "2", "--input", "digits",
                     "--inference-interval", "0.02", "--seed", str(i), "--trust-dir", str(trust_dir),
                     "--probation-min-inferences", "25"],
                    logs / f"{device_id}.log",
                )
            )
        console.print(f"started the fleet server and {devices} simulated devices (logs in {logs})")

        store, registry = Store(home / "edgeops.db"), Registry(home / "registry")
        row, _ = add_model(
            store, registry, trained.model_path, name=MODEL_NAME, version=MODEL_VERSION,
            reference=trained.reference.astype(np.float64), created_by="demo", signing_key=keys.active(),
        )
        console.print(f"packaged and signed {row.label}: bundle {row.digest[:12]}, {row.size_bytes:,} bytes")
        _wait_for_devices(store, devices, console, timeout_s=min(timeout_s, 30))
        store.add_deployment("default", row.digest, ALL_DEVICES)
        console.print(f"deployed {row.label} to all devices; waiting for them to converge")

        deadline = time.monotonic() + timeout_s
        converged = False
        with Live(Table(), console=console, refresh_per_second=4, transient=False) as live:
            while time.monotonic() < deadline:
                rows = store.devices("default")
                live.update(devices_table(rows))
                converged = len(rows) >= devices and all(
                    d.active_digest == row.digest and d.last_telemetry and d.last_telemetry.get("inferences", 0) > 0
                    and d.last_telemetry.get("model_version") == MODEL_VERSION
                    for d in rows
                )
                if converged:
                    break
                dead = [p.name for p in processes if not p.alive]
                if dead:
                    console.print(f"[red]process(es) exited early: {', '.join(dead)}; see {logs}")
                    return False
                time.sleep(0.5)
        console.print()
        rows = store.devices("default")
        if converged:
            total = sum(int((d.last_telemetry or {}).get("inferences", 0)) for d in rows)
            console.print(
                f"[green]all {len(rows)} devices run {row.label}[/]; last windows: {total} inferences, "
                f"telemetry windows stored: {store.telemetry_count('default')}"
            )
        else:
            console.print(f"[red]the fleet did not converge within {timeout_s:.0f} s; see {logs}")
        store.close()
        return converged
    finally:
        with console.status("stopping devices, server and broker"):
            stop_all(processes)
        console.print("stopped everything cleanly")


def _wait_for_devices(store: object, count: int, console: Console, timeout_s: float) -> None:
    from fleet_server.store import Store

    assert isinstance(store, Store)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and len([d for d in store.devices("default") if d.online]) < count:
        time.sleep(0.2)
    console.print(f"{len([d for d in store.devices('default') if d.online])} devices online")
