"""``edgeops telemetry watch`` and ``telemetry tail``: device telemetry in the terminal.

``watch`` shows the latest window of every device, live, straight from MQTT; ``tail`` prints one
device's stored windows (from the store or a server's HTTP API) and, with ``--follow``, new ones
as the server ingests them.

For ``watch`` no fleet server is involved: the watcher subscribes to the devices' telemetry topics itself, so it
works against any broker the agents publish to. What it received is kept in a :class:`Board`
(pure: topic and payload in, state out) and drawn by :func:`telemetry_rows` and
:func:`render_board`, so the logic is testable without a broker or a terminal.
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import signal
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer
from rich.console import Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from edgeops.cli_common import (
    DEFAULT_HOME,
    BrokerOpt,
    FleetOpt,
    HomeOpt,
    ServerOpt,
    TokenOpt,
    console,
    fleet_client,
)
from edgeops.errors import BrokerUnavailableError, EdgeOpsError, ProtocolError
from edgeops.protocol import (
    DeviceChannel,
    Telemetry,
    check_id,
    device_filter,
    device_id_mismatch,
    device_topic,
    parse_topic,
)
from edgeops.transport import BrokerAddress, Inbound, MqttTransport

telemetry_app = typer.Typer(help="Device telemetry: live from MQTT (watch) or stored (tail).", no_args_is_help=True)

COLUMNS = ("device", "model", "inferences", "errors", "p50 ms", "p95 ms", "drift", "cpu %", "rss MiB", "age")
#: How often the live table is redrawn (the age column moves even when nothing arrives).
REFRESH_S = 0.25
#: Received messages folded in between two redraws at most.
DRAIN_MAX = 5000


class TelemetryTimeoutError(EdgeOpsError, TimeoutError):
    """``--once`` gave up: not every device it waited for sent a window in time."""

    code = "telemetry_timeout"


@dataclass(frozen=True)
class Latest:
    """A device's newest window as JSON values, and when this watcher received it (epoch ms)."""

    window: dict[str, Any]
    received_ms: int


@dataclass
class Board:
    """What the watcher has seen: the newest window per device and the payloads it refused."""

    #: Devices waited for by ``--once``; empty means "any device".
    expected: frozenset[str] = frozenset()
    latest: dict[str, Latest] = field(default_factory=dict)
    #: Refused payloads per source (the device id in the topic, or the topic itself).
    invalid: Counter[str] = field(default_factory=Counter)
    last_invalid: str = ""

    def ingest(self, topic: str, payload: bytes, received_ms: int) -> bool:
        """Validate one message and keep it if it is the device's newest window; False if refused.

        An older window than the one shown (a device's spool replaying after a reconnect) is valid
        but does not replace the newer one.
        """
        try:
            parsed = parse_topic(topic)
            if parsed.channel is not DeviceChannel.TELEMETRY or parsed.device_id is None:
                raise ProtocolError("not a telemetry topic")
            window = Telemetry.decode(payload)
            if device_id_mismatch(parsed, window):
                raise ProtocolError(f"payload names device {window.device_id!r}")
        except ProtocolError as exc:
            parts = topic.split("/")
            source = parts[4] if len(parts) > 4 else topic
            self.invalid[source] += 1
            self.last_invalid = f"{source}: {exc}"
            return False
        current = self.latest.get(window.device_id)
        if current is None or window.ts >= current.window.get("ts", 0):
            self.latest[window.device_id] = Latest(window.to_dict(), received_ms)
        return True

    @property
    def invalid_total(self) -> int:
        return sum(self.invalid.values())

    def missing(self) -> list[str]:
        """Devices still waited for (``["any device"]`` while nothing arrived and none is named)."""
        if self.expected:
            return sorted(self.expected - set(self.latest))
        return [] if self.latest else ["any device"]


def _number(value: Any, digits: int) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    return str(value) if isinstance(value, int) and digits == 0 else f"{value:.{digits}f}"


def _age(received_ms: int, now_ms: int) -> str:
    seconds = max(0, now_ms - received_ms) / 1000
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.0f}h"


def telemetry_rows(latest: Mapping[str, Latest], now_ms: int) -> list[tuple[str, ...]]:
    """One row of display strings per device, sorted by device id, in the order of ``COLUMNS``.

    Missing or null values (no inference in the window, no psutil, no drift reference) show as
    ``-``; the age is the time since this watcher received the window.
    """
    rows: list[tuple[str, ...]] = []
    for device_id in sorted(latest):
        seen = latest[device_id]
        w = seen.window
        model, version = w.get("model"), w.get("model_version")
        label = f"{model}:{version}" if model and version else (model or "-")
        rows.append((
            device_id,
            str(label),
            _number(w.get("inferences"), 0),
            _number(w.get("errors"), 0),
            _number(w.get("latency_ms_p50"), 3),
            _number(w.get("latency_ms_p95"), 3),
            _number(w.get("drift_score"), 3),
            _number(w.get("cpu_percent"), 1),
            _number(w.get("rss_mb"), 1),
            _age(seen.received_ms, now_ms),
        ))
    return rows


def footer(board: Board, broker: str, connected: bool) -> str:
    """The line under the table: device count, refused payloads, broker state."""
    parts = [f"{len(board.latest)} device(s)", f"invalid payloads: {board.invalid_total}"]
    if board.last_invalid:
        parts[-1] += f" (last: {board.last_invalid[:100]})"
    parts.append(f"broker {broker} {'connected' if connected else 'not connected'}")
    return " · ".join(parts)


def render_board(board: Board, now_ms: int, broker: str, connected: bool) -> RenderableType:
    table = Table(*COLUMNS)
    table.columns[0].no_wrap = table.columns[1].no_wrap = True
    for column in table.columns[2:]:
        column.justify = "right"
    for row in telemetry_rows(board.latest, now_ms):
        cells = [Text(cell) for cell in row]
        if row[3] not in ("0", "-"):
            cells[3].stylize("bold red")
        table.add_row(*cells)
    note = Text(footer(board, broker, connected), style="yellow" if board.invalid_total else "dim")
    return Group(table, note)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _drain(transport: MqttTransport, board: Board, wait_s: float) -> None:
    """Move what was received into the board, waiting up to ``wait_s`` for the first item.

    At most ``DRAIN_MAX`` items per call, so a busy fleet cannot starve the redraw.
    """
    try:
        items = [transport.inbox.get(timeout=wait_s)]
    except queue.Empty:
        return
    while len(items) < DRAIN_MAX:
        try:
            items.append(transport.inbox.get_nowait())
        except queue.Empty:
            break
    for item in items:
        if isinstance(item, Inbound):
            board.ingest(item.topic, item.payload, _now_ms())


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


@telemetry_app.command("watch")
def watch(
    broker: BrokerOpt = "127.0.0.1:1883",
    fleet: FleetOpt = "default",
    devices: Annotated[
        list[str] | None, typer.Option("--device", help="Only this device (repeat for several); default: all.")
    ] = None,
    once: Annotated[
        bool, typer.Option("--once", help="Wait for a window from every --device (or any device), print, exit.")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds --once waits before failing.")] = 30.0,
) -> None:
    """A live table of the latest telemetry window per device (Ctrl-C to quit)."""
    ids = sorted({check_id(d, "device id") for d in devices or []})
    address = BrokerAddress.parse(broker)
    board = Board(expected=frozenset(ids))
    transport = MqttTransport(f"edgeops-watch-{os.getpid()}-{secrets.token_hex(3)}", address, clean_session=True)
    transport.subscribe(*([device_topic(fleet, d, DeviceChannel.TELEMETRY) for d in ids]
                          or [device_filter(fleet, DeviceChannel.TELEMETRY)]))
    # Connection notices on stderr would tear the live table; the footer shows the link instead.
    logging.getLogger("edgeops.transport").setLevel(logging.WARNING)
    stop = _stop_on_signals()
    transport.start()
    try:
        if once:
            _watch_once(transport, board, address, timeout, stop)
        else:
            _watch_live(transport, board, address, stop)
    finally:
        transport.stop()


def _watch_once(transport: MqttTransport, board: Board, address: BrokerAddress, timeout_s: float,
                stop: threading.Event) -> None:
    deadline = time.monotonic() + timeout_s
    while board.missing():
        remaining = deadline - time.monotonic()
        if stop.is_set():
            raise typer.Exit(130)
        if remaining <= 0:
            waited = ", ".join(board.missing())
            if not transport.connected:
                raise BrokerUnavailableError(f"no connection to the broker {address} within {timeout_s:g} s")
            raise TelemetryTimeoutError(f"no telemetry window from {waited} within {timeout_s:g} s "
                                        f"(broker {address}, invalid payloads: {board.invalid_total})")
        _drain(transport, board, min(remaining, REFRESH_S))
    console.print(render_board(board, _now_ms(), str(address), transport.connected))


def _watch_live(transport: MqttTransport, board: Board, address: BrokerAddress, stop: threading.Event) -> None:
    def frame() -> RenderableType:
        return render_board(board, _now_ms(), str(address), transport.connected)

    with Live(frame(), console=console, auto_refresh=False) as live:
        while not stop.is_set():
            _drain(transport, board, REFRESH_S)
            live.update(frame(), refresh=True)


TAIL_COLUMNS = ("time", "window", "model", "inferences", "errors", "p50 ms", "p95 ms", "p99 ms", "drift", "cpu %",
                "rss MiB")


def tail_row(window: Mapping[str, Any]) -> tuple[str, ...]:
    """One stored window as a ``telemetry tail`` row (pure: JSON in, strings out)."""
    ts = window.get("ts")
    when = time.strftime("%H:%M:%S", time.localtime(ts / 1000)) if isinstance(ts, int) else "-"
    model = window.get("model")
    return (when, str(window.get("window_id", "-")),
            f"{model}:{window.get('model_version')}" if model else "-",
            str(window.get("inferences", "-")), str(window.get("errors", "-")),
            _number(window.get("latency_ms_p50"), 3), _number(window.get("latency_ms_p95"), 3),
            _number(window.get("latency_ms_p99"), 3), _number(window.get("drift_score"), 3),
            _number(window.get("cpu_percent"), 1), _number(window.get("rss_mb"), 1))


def new_windows(windows: list[dict[str, Any]], seen: set[str]) -> list[dict[str, Any]]:
    """Windows (newest first, as stored) not printed yet, oldest first; marks them seen."""
    fresh = [w for w in reversed(windows) if w.get("window_id") not in seen]
    seen.update(str(w.get("window_id")) for w in fresh)
    return fresh


@telemetry_app.command("tail")
def tail(
    device_id: Annotated[str, typer.Argument(help="The device's id.")],
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=1000, help="Windows to show first.")] = 20,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new windows (Ctrl-C to stop).")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between polls with --follow.")] = 1.0,
    home: HomeOpt = DEFAULT_HOME, fleet: FleetOpt = "default", server: ServerOpt = None, token: TokenOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON window per line (JSON Lines).")] = False,
) -> None:
    """A device's stored telemetry windows, oldest first; --follow prints new ones as they arrive."""
    import json
    import sys

    client = fleet_client(home, fleet, server, token)
    seen: set[str] = set()

    def emit(windows: list[dict[str, Any]]) -> None:
        if as_json:
            for w in windows:
                sys.stdout.write(json.dumps(w, separators=(",", ":")) + "\n")
            sys.stdout.flush()
            return
        table = Table(*TAIL_COLUMNS, show_header=not seen_header, box=None, pad_edge=False)
        for w in windows:
            table.add_row(*tail_row(w))
        if windows or not seen_header:
            console.print(table)

    seen_header = False
    windows = new_windows(client.telemetry(device_id, limit=limit), seen)
    emit(windows)
    seen_header = True
    if not follow:
        return
    since = max((int(w["ts"]) for w in windows), default=0)
    stop = _stop_on_signals()
    while not stop.wait(interval):
        fetched = client.telemetry(device_id, since_ms=since, limit=1000)
        fresh = new_windows(fetched, seen)
        if fresh:
            emit(fresh)
            since = max(since, *(int(w["ts"]) for w in fresh))
            # Only windows at the newest instant can come back in the next poll: forget the rest.
            seen = {str(w.get("window_id")) for w in fetched if int(w["ts"]) >= since}
