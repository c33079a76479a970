"""``make demo``: the whole loop on one machine with an embedded broker and simulated devices.

Trains and packages a model, starts a broker, the fleet server with its HTTP API and dashboard,
and simulated devices, deploys the model and waits for the fleet to converge. Then it keeps
everything running (devices keep sending telemetry, the dashboard stays live) until Ctrl-C or
SIGTERM, or for ``serve_s`` seconds, or not at all with ``serve_s=0`` (for scripts and CI).
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console
from rich.live import Live
from rich.table import Table

from edgeops.broker import free_port, wait_for_port
from edgeops.processes import ManagedProcess, stop_all

if TYPE_CHECKING:  # edgeops/ never imports fleet_server at import time (the agent installs without it)
    from fleet_server.store import Store

log = logging.getLogger(__name__)
MODEL_NAME = "digits"
MODEL_VERSION = "1"
#: Name of the API token the demo creates for its dashboard.
TOKEN_NAME = "demo"


def run_demo(*, devices: int, workdir: Path, timeout_s: float, console: Console,
             serve_s: float | None = None, stop: threading.Event | None = None, http_port: int = 0) -> bool:
    """Run the loop; True when every device runs the deployed version and sent telemetry.

    After convergence everything keeps running until ``stop`` is set (Ctrl-C / SIGTERM in the CLI)
    or ``serve_s`` seconds passed; ``serve_s=None`` serves until ``stop``, ``0`` stops at once.
    ``http_port`` 0 picks a free port for the HTTP API and dashboard.
    """
    from edgeops.cli_devices import devices_table
    from edgeops.examples import train_digits_mlp
    from fleet_server.operations import FleetOperations
    from fleet_server.registry import Registry, add_model
    from fleet_server.store import ALL_DEVICES, Store
    from fleet_server.tokens import Tokens

    stop = stop or threading.Event()
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
        tokens = Tokens(home / "edgeops.db")
        secret = tokens.create(TOKEN_NAME)
        tokens.close()

        port = free_port()
        broker = f"127.0.0.1:{port}"
        processes.append(ManagedProcess("broker", ["broker", "--port", str(port)], logs / "broker.log"))
        wait_for_port("127.0.0.1", port)
        console.print(f"embedded MQTT broker on {broker} (port 1883 is left to the system broker)")
        http_port = http_port or free_port()
        processes.append(
            ManagedProcess("server", ["server", "--home", str(home), "--broker", broker,
                                      "--http-port", str(http_port)], logs / "server.log")
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
        wait_for_port("127.0.0.1", http_port, timeout_s=30)
        _print_dashboard(console, http_port, secret)

        store, registry = Store(home / "edgeops.db"), Registry(home / "registry")
        row, _ = add_model(
            store, registry, trained.model_path, name=MODEL_NAME, version=MODEL_VERSION,
            reference=trained.reference.astype(np.float64), created_by="demo", signing_key=keys.active(),
        )
        console.print(f"packaged and signed {row.label}: bundle {row.digest[:12]}, {row.size_bytes:,} bytes")
        _wait_for_devices(store, devices, console, timeout_s=min(timeout_s, 30), stop=stop)
        store.add_deployment("default", row.digest, ALL_DEVICES)
        console.print(f"deployed {row.label} to all devices; waiting for them to converge")

        deadline = time.monotonic() + timeout_s
        converged = False
        with Live(Table(), console=console, refresh_per_second=4, transient=False) as live:
            while time.monotonic() < deadline and not stop.is_set():
                rows = store.devices("default")
                live.update(devices_table(FleetOperations(store, "default").devices()))
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
                stop.wait(0.5)
        console.print()
        rows = store.devices("default")
        if converged:
            total = sum(int((d.last_telemetry or {}).get("inferences", 0)) for d in rows)
            console.print(
                f"[green]all {len(rows)} devices run {row.label}[/]; last windows: {total} inferences, "
                f"telemetry windows stored: {store.telemetry_count('default')}"
            )
        elif stop.is_set():
            console.print("interrupted before the fleet converged")
        else:
            console.print(f"[red]the fleet did not converge within {timeout_s:.0f} s; see {logs}")
        healthy = True
        if converged and serve_s != 0:
            healthy = _serve(store, processes, console, http_port, serve_s, stop, logs)
        store.close()
        return converged and healthy
    finally:
        with console.status("stopping devices, server and broker"):
            stop_all(processes)
        console.print("stopped everything cleanly")


def _print_dashboard(console: Console, http_port: int, secret: str) -> None:
    base = f"http://127.0.0.1:{http_port}"
    console.print(f"dashboard:  {base}/dashboard", highlight=False, soft_wrap=True)
    console.print(f"sign in:    {base}/dashboard/login#token={secret}", highlight=False, soft_wrap=True)
    console.print(f"API token:  {secret}  (HTTP API {base}/api/v1, Prometheus {base}/metrics)", highlight=False,
                  soft_wrap=True)


def _serve(store: Store, processes: list[ManagedProcess], console: Console, http_port: int, serve_s: float | None,
           stop: threading.Event, logs: Path) -> bool:
    """Keep the fleet running, its table refreshed, until ``stop`` or ``serve_s`` seconds; False if
    a process died meanwhile."""
    from edgeops.cli_devices import devices_table
    from fleet_server.operations import FleetOperations

    until = "Ctrl-C stops everything" if serve_s is None else f"stopping in {serve_s:.0f} s (or Ctrl-C)"
    console.print(f"serving: the devices keep sending telemetry; open http://127.0.0.1:{http_port}/dashboard. "
                  f"{until[0].upper()}{until[1:]}.", highlight=False)
    deadline = None if serve_s is None else time.monotonic() + serve_s
    with Live(Table(), console=console, refresh_per_second=1, transient=True) as live:
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            live.update(devices_table(FleetOperations(store, "default").devices()))
            dead = [p.name for p in processes if not p.alive]
            if dead:
                console.print(f"[red]process(es) exited: {', '.join(dead)}; see {logs}")
                return False
            stop.wait(1.0)
    return True


def _wait_for_devices(store: object, count: int, console: Console, timeout_s: float,
                      stop: threading.Event | None = None) -> None:
    from fleet_server.store import Store

    assert isinstance(store, Store)
    deadline = time.monotonic() + timeout_s
    while (time.monotonic() < deadline and not (stop and stop.is_set())
           and len([d for d in store.devices("default") if d.online]) < count):
        time.sleep(0.2)
    console.print(f"{len([d for d in store.devices('default') if d.online])} devices online")
