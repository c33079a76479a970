"""The ``edgeops`` command line: brokers, server, agent, models, deployments, devices, demo.

Every error a user can cause (an unknown model or device, a bad address, an unreadable file)
ends in one line on stderr and exit status 1, never a traceback.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from edgeops import __version__
from edgeops.cli_common import (
    DB_URL_ENV,
    DEFAULT_HOME,
    BrokerOpt,
    DbOpt,
    FleetOpt,
    HomeOpt,
    JsonOpt,
    ServerOpt,
    TokenOpt,
    console,
    err_console,
    fleet_client,
    print_json,
)
from edgeops.cli_db import db_app
from edgeops.cli_devices import devices_app
from edgeops.cli_keys import keys_app
from edgeops.cli_model import model_app
from edgeops.cli_rollout import audit_app, rollout_app
from edgeops.cli_telemetry import telemetry_app
from edgeops.cli_token import token_app
from edgeops.errors import ConfigError, EdgeOpsError
from edgeops.log_config import configure_logging

app = typer.Typer(
    help="EdgeOps: package, push and watch ML models on fleets of small devices over MQTT.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(devices_app, name="devices")
app.add_typer(model_app, name="model")
app.add_typer(rollout_app, name="rollout")
app.add_typer(audit_app, name="audit")
app.add_typer(keys_app, name="keys")
app.add_typer(token_app, name="token")
app.add_typer(telemetry_app, name="telemetry")
app.add_typer(db_app, name="db")

@app.callback()
def _main(
    log_level: Annotated[str, typer.Option("--log-level", envvar="EDGEOPS_LOG_LEVEL")] = "info",
    db: DbOpt = None,
) -> None:
    configure_logging(log_level)
    if db:
        os.environ[DB_URL_ENV] = db  # every subcommand, and the processes they start, use this store


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


@app.command()
def version() -> None:
    """Print the EdgeOps version."""
    console.print(__version__)


@app.command()
def broker(
    port: Annotated[int, typer.Option(help="TCP port (1883 is often taken by a system broker).")] = 1883,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
) -> None:
    """Run the embedded MQTT broker (amqtt, MQTT 3.1.1): the one-machine default."""
    from edgeops.broker import run_embedded_broker

    run_embedded_broker(host, port)


@app.command("mosquitto-config")
def mosquitto_config_cmd(
    port: Annotated[int, typer.Option(help="Listener port.")] = 1883,
    host: Annotated[str, typer.Option(help="Listener address.")] = "127.0.0.1",
    data_dir: Annotated[Path | None, typer.Option(help="Enable persistence in this directory.")] = None,
    user: Annotated[str | None, typer.Option(
        help="User the broker runs as when started as root (Mosquitto's default: mosquitto); "
             "it must be able to write --data-dir.")] = None,
) -> None:
    """Print a Mosquitto configuration tuned for EdgeOps (queue limits, TCP_NODELAY)."""
    from edgeops.broker import mosquitto_config

    sys.stdout.write(mosquitto_config(port, host=host, data_dir=data_dir, user=user))


@app.command()
def server(
    home: HomeOpt = DEFAULT_HOME,
    broker: BrokerOpt = "127.0.0.1:1883",
    fleet: FleetOpt = "default",
    homeassistant: Annotated[bool, typer.Option(
        "--homeassistant/--no-homeassistant", help="Publish Home Assistant MQTT discovery for device telemetry.")
    ] = False,
    http_port: Annotated[int, typer.Option(
        "--http-port", help="Serve the HTTP API, dashboard and /metrics on this port (0 = off).")] = 0,
    http_host: Annotated[str, typer.Option(
        "--http-host", help="Address the HTTP API listens on (0.0.0.0 to reach it from other machines).")
    ] = "127.0.0.1",
    metrics_max_devices: Annotated[int, typer.Option(
        "--metrics-max-devices", min=0,
        help="Devices with their own series in /metrics; the rest are summed into device=\"_other\".")] = 100,
    db: DbOpt = None,
    retention_days: Annotated[float, typer.Option(
        "--retention-days", envvar="EDGEOPS_RETENTION_DAYS",
        help="Delete telemetry, drift and events older than this many days (0 = keep everything).")] = 30.0,
) -> None:
    """Run the fleet server: ingest device reports, publish desired versions and bundles."""
    from edgeops.transport import BrokerAddress
    from fleet_server.config import ServerConfig
    from fleet_server.server import FleetServer

    config = ServerConfig(home=home, broker=BrokerAddress.parse(broker), fleet=fleet,
                          homeassistant_discovery=homeassistant, http_port=http_port, http_host=http_host,
                          metrics_max_devices=metrics_max_devices, database_url=db or "",
                          retention_days=retention_days or None)
    FleetServer(config).run(_stop_on_signals())


agent_app = typer.Typer(
    help="Run a device agent (no subcommand), or write its config and systemd unit (init).",
    invoke_without_command=True,
)
app.add_typer(agent_app, name="agent")

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="Agent config file (TOML).")]


def _agent_overrides(**flags: Any) -> dict[str, Any]:
    return {k: v for k, v in flags.items() if v is not None}


@agent_app.callback()
def agent(
    ctx: typer.Context,
    config: ConfigOpt = None,
    device_id: Annotated[str | None, typer.Option("--device-id", help="This device's id.")] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Agent state, slots, spool.")] = None,
    broker: Annotated[str | None, typer.Option("--broker", help="MQTT broker host:port.")] = None,
    fleet: Annotated[str | None, typer.Option("--fleet", help="Fleet name.")] = None,
    trust_dir: Annotated[Path | None, typer.Option("--trust-dir", help="Trusted public keys (*.pub).")] = None,
    allow_unsigned: Annotated[
        bool | None, typer.Option("--allow-unsigned/--require-signed", help="Accept unsigned bundles (dev only).")
    ] = None,
    telemetry_interval: Annotated[float | None, typer.Option(help="Seconds per telemetry window.")] = None,
    api_port: Annotated[int | None, typer.Option(help="Local inference API port on 127.0.0.1 (0 = off).")] = None,
    api_socket: Annotated[Path | None, typer.Option(help="Local inference API on a Unix socket.")] = None,
    threads: Annotated[int | None, typer.Option(help="Runtime intra-op threads.")] = None,
    input_source: Annotated[str | None, typer.Option("--input", help="Simulated input: digits|gaussian|none.")] = None,
    inference_interval: Annotated[float | None, typer.Option(help="Seconds between simulated inferences.")] = None,
    simulate_drift: Annotated[str | None, typer.Option(help="Drift in the simulated input: shift:1.5@200.")] = None,
    simulate_faults: Annotated[str | None, typer.Option(help="Injected faults, e.g. latency=5,errors=0.1.")] = None,
    faults_version: Annotated[str | None, typer.Option(help="Inject faults only while this version serves.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the simulated input.")] = None,
    probation_min_inferences: Annotated[int | None, typer.Option(help="Inferences watched before commit.")] = None,
    probation_max_s: Annotated[float | None, typer.Option(help="Seconds of probation at most.")] = None,
) -> None:
    """Run a device agent (on a Raspberry Pi, or simulated on a laptop)."""
    if ctx.invoked_subcommand is not None:
        return
    from device_agent.agent import Agent
    from device_agent.config import load_agent_config

    settings = load_agent_config(config, os.environ, _agent_overrides(
        device_id=device_id, data_dir=data_dir, broker=broker, fleet=fleet, trust_dir=trust_dir,
        allow_unsigned=allow_unsigned, telemetry_interval_s=telemetry_interval, api_port=api_port,
        api_socket=api_socket, intra_op_threads=threads, input_source=input_source,
        inference_interval_s=inference_interval, simulate_drift=simulate_drift, simulate_faults=simulate_faults,
        simulate_faults_version=faults_version, seed=seed, probation_min_inferences=probation_min_inferences,
        probation_max_s=probation_max_s,
    ))
    Agent(settings).run(_stop_on_signals())


@agent_app.command("init")
def agent_init(
    device_id: Annotated[str, typer.Option("--device-id", help="This device's id.")],
    broker: Annotated[str, typer.Option("--broker", help="MQTT broker host:port.")],
    data_dir: Annotated[Path, typer.Option("--data-dir", help="Agent state directory.")] = Path("/var/lib/edgeops"),
    trust_dir: Annotated[Path, typer.Option("--trust-dir", help="Trusted public keys.")] = Path("/etc/edgeops/keys"),
    out: Annotated[Path, typer.Option("--out", help="Config file to write.")] = Path("/etc/edgeops/agent.toml"),
    unit_out: Annotated[
        Path | None, typer.Option("--unit-out", help="systemd unit to write (default: beside the config).")
    ] = None,
    fleet: Annotated[str, typer.Option("--fleet", help="Fleet name.")] = "default",
    user: Annotated[str, typer.Option(help="System user the unit runs as.")] = "edgeops",
    force: Annotated[bool, typer.Option(help="Overwrite existing files.")] = False,
) -> None:
    """Write an agent config file and a systemd unit that runs it."""
    import shutil

    from device_agent.config import config_template, load_agent_config, systemd_unit

    settings = load_agent_config(None, {}, {"device_id": device_id, "broker": broker, "data_dir": data_dir,
                                            "trust_dir": trust_dir, "fleet": fleet})
    unit_path = unit_out or out.with_name("edgeops-agent.service")
    for path in (out, unit_path):
        if path.exists() and not force:
            raise ConfigError(f"{path} exists; use --force to overwrite")
        path.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(config_template(settings))
    executable = shutil.which("edgeops") or f"{sys.executable} -m edgeops"
    unit_path.write_text(systemd_unit(out.resolve(), executable, user))
    console.print(f"wrote {out} and {unit_path}")
    console.print(f"install: sudo cp {unit_path} /etc/systemd/system/ && sudo systemctl enable --now edgeops-agent")


@app.command()
def simulate(
    devices: Annotated[int, typer.Option(help="How many simulated devices.")] = 10,
    data_root: Annotated[Path, typer.Option(help="One data directory per device below this.")] = Path(".sim"),
    prefix: Annotated[str, typer.Option(help="Device ids are PREFIX-0001, ...")] = "sim",
    broker: BrokerOpt = "127.0.0.1:1883",
    fleet: FleetOpt = "default",
    trust_dir: Annotated[Path | None, typer.Option("--trust-dir", help="Trusted public keys.")] = None,
    allow_unsigned: Annotated[bool, typer.Option("--allow-unsigned", help="Accept unsigned bundles.")] = False,
    telemetry_interval: Annotated[float, typer.Option(help="Seconds per telemetry window.")] = 10.0,
    input_source: Annotated[str, typer.Option("--input", help="digits, gaussian or none.")] = "digits",
    inference_interval: Annotated[float, typer.Option(help="Seconds between inferences per device.")] = 1.0,
    probation_min_inferences: Annotated[int, typer.Option(help="Inferences watched before commit.")] = 20,
    probation_max_s: Annotated[float, typer.Option(help="Seconds of probation at most.")] = 30.0,
    simulate_drift: Annotated[str, typer.Option(help="Drift in the input, e.g. shift:1.5@200.")] = "none",
    simulate_faults: Annotated[str, typer.Option(help="Injected faults, e.g. latency=5,errors=0.1.")] = "",
    faults_version: Annotated[str, typer.Option(help="Only while this version serves.")] = "",
    processes: Annotated[int, typer.Option(
        help="Processes to split the devices over (0 = one per 250 devices, at most two per CPU).", min=0)] = 0,
) -> None:
    """Run many simulated devices: one network loop per process, no thread per device."""
    from device_agent.config import AgentConfig
    from device_agent.simulator import device_configs, run_simulation
    from edgeops.transport import BrokerAddress

    template = AgentConfig(
        device_id="template", data_dir=data_root, broker=BrokerAddress.parse(broker), fleet=fleet,
        trust_dir=trust_dir, allow_unsigned=allow_unsigned, telemetry_interval_s=telemetry_interval,
        input_source=input_source, inference_interval_s=inference_interval,
        probation_min_inferences=probation_min_inferences, probation_max_s=probation_max_s,
        simulate_drift=simulate_drift, simulate_faults=simulate_faults, simulate_faults_version=faults_version,
        spool_durability="normal",
    )
    status = run_simulation(device_configs(template, devices, prefix, data_root), processes, _stop_on_signals())
    if status:
        raise typer.Exit(status)


@app.command()
def deploy(
    model: Annotated[str, typer.Argument(help="NAME:VERSION of a model in the registry.")],
    devices: Annotated[str, typer.Option(help="'all', or comma-separated device ids and tag:NAME terms.")] = "all",
    reason: Annotated[str, typer.Option(help="Why (recorded in the audit log).")] = "",
    home: HomeOpt = DEFAULT_HOME,
    fleet: FleetOpt = "default",
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Set the desired version of devices at once (no stages, no gates); the running server publishes it."""
    dep = fleet_client(home, fleet, server, token).deploy(model, devices, reason)
    if as_json:
        print_json(dep)
    else:
        console.print(f"deployment {dep['id']}: {dep['model']} -> {dep['devices']} (fleet {fleet})")


@app.command()
def demo(
    devices: Annotated[int, typer.Option(help="Number of simulated devices.")] = 5,
    workdir: Annotated[Path, typer.Option(help="Scratch directory (wiped first).")] = Path(".demo"),
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the fleet to converge.")] = 120.0,
    exit_after_converge: Annotated[bool, typer.Option(
        "--exit-after-converge", help="Stop once the fleet converged instead of serving the dashboard.")] = False,
    duration: Annotated[float | None, typer.Option(
        help="After converging, serve this many seconds, then stop (default: until Ctrl-C).", min=0)] = None,
    http_port: Annotated[int, typer.Option(
        "--http-port", help="Port of the HTTP API and dashboard (0 = a free port).", min=0)] = 0,
) -> None:
    """Broker, server, dashboard and simulated devices on this machine: train, package, deploy, watch.

    Prints the dashboard's URL and a sign-in link, then keeps serving until Ctrl-C (or SIGTERM).
    """
    from edgeops.demo import run_demo

    stop = _stop_on_signals()
    serve_s = 0.0 if exit_after_converge else duration
    converged = run_demo(devices=devices, workdir=workdir, timeout_s=timeout, console=console, serve_s=serve_s,
                         stop=stop, http_port=http_port)
    if not converged:
        raise typer.Exit(130 if stop.is_set() else 1)


def main() -> None:
    try:
        app()
    except EdgeOpsError as exc:
        err_console.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
