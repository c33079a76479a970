"""``edgeops telemetry watch``: the pure board and rows, then the command against a real agent and Mosquitto."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeops.bundle import build_bundle
from edgeops.cli_telemetry import COLUMNS, Board, Latest, footer, telemetry_rows
from edgeops.examples import TrainedExample
from edgeops.manifest import bundle_ref
from edgeops.protocol import Desired, DeviceChannel, Telemetry, chunk_topic, device_topic, manifest_topic
from tests.integration.harness import BrokerHandle, Listener, Processes, wait_until

FLEET = "watch"
DEVICE = "pi-01"


def window(device: str = DEVICE, ts: int = 1_000, **fields: object) -> Telemetry:
    values: dict[str, object] = {"model": "digits", "model_version": "1", "inferences": 40, "errors": 2,
                                 "latency_ms_p50": 0.1234, "latency_ms_p95": 0.5, "drift_score": 0.25,
                                 "cpu_percent": 12.34, "rss_mb": 61.26, **fields}
    return Telemetry(device_id=device, window_id=f"{device}:b:{ts}", ts=ts, window_s=1.0, **values)  # type: ignore[arg-type]


def topic(device: str = DEVICE) -> str:
    return device_topic(FLEET, device, DeviceChannel.TELEMETRY)


# --- pure: no broker ---------------------------------------------------------------------------


def test_rows_show_the_numbers_and_dashes_for_nulls() -> None:
    latest = {
        "b-dev": Latest(window("b-dev").to_dict(), received_ms=10_000),
        "a-dev": Latest(window("a-dev", model=None, model_version=None, inferences=0, errors=0,
                               latency_ms_p50=None, latency_ms_p95=None, drift_score=None,
                               cpu_percent=None).to_dict(), received_ms=2_000),
    }
    rows = telemetry_rows(latest, now_ms=12_500)
    assert all(len(r) == len(COLUMNS) for r in rows)
    assert rows[0] == ("a-dev", "-", "0", "0", "-", "-", "-", "-", "61.3", "10s")
    assert rows[1] == ("b-dev", "digits:1", "40", "2", "0.123", "0.500", "0.250", "12.3", "61.3", "2s")
    assert telemetry_rows({"c": Latest({}, 0)}, now_ms=3 * 3600_000)[0][-1] == "3h"


def test_board_counts_invalid_payloads_and_keeps_the_newest_window() -> None:
    board = Board(expected=frozenset({DEVICE, "pi-02"}))
    assert board.missing() == [DEVICE, "pi-02"]
    assert board.ingest(topic(), window(ts=2_000).encode(), 1)
    assert board.ingest(topic(), window(ts=1_000, inferences=1).encode(), 2)  # a replayed older window
    assert board.latest[DEVICE].window["inferences"] == 40
    assert not board.ingest(topic(), b"{not json", 3)
    assert not board.ingest(topic(), b'{"schema_version": 1}', 4)
    assert not board.ingest(topic("pi-02"), window().encode(), 5)  # names another device than its topic
    assert not board.ingest(device_topic(FLEET, DEVICE, DeviceChannel.STATUS), window().encode(), 6)
    assert not board.ingest("elsewhere/x", b"{}", 7)
    assert board.invalid == {DEVICE: 3, "pi-02": 1, "elsewhere/x": 1}
    assert board.missing() == ["pi-02"]
    line = footer(board, "127.0.0.1:1883", connected=False)
    assert "1 device(s)" in line and "invalid payloads: 5" in line and "not connected" in line
    assert Board().missing() == ["any device"]


# --- the command against a real agent -----------------------------------------------------------


def edgeops(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeops", *args], capture_output=True, text=True, timeout=60,
                          check=False)


def deploy_unsigned(listener: Listener, digits: TrainedExample, tmp_path: Path) -> None:
    """Play the server: publish a digits bundle and the device's desired version."""
    bundle = build_bundle(digits.model_path, tmp_path / "digits.zip", name="digits", version="1",
                          reference=digits.reference, chunk_size=16384)
    for index, data in bundle.chunks():
        listener.publish(chunk_topic(FLEET, bundle.digest, index), data, retain=True)
    listener.publish(manifest_topic(FLEET, bundle.digest), bundle.manifest_bytes, retain=True)
    desired = Desired(bundle=bundle_ref(bundle.manifest, bundle.digest),
                      manifest_topic=manifest_topic(FLEET, bundle.digest), issued_at=int(time.time() * 1000))
    listener.publish(device_topic(FLEET, DEVICE, DeviceChannel.DESIRED), desired.encode(), retain=True)


def serving_windows(listener: Listener) -> list[Telemetry]:
    return [t for t in (Telemetry.decode(m.payload) for m in listener.on(topic()))
            if t.model_version == "1" and t.inferences > 0]


@pytest.mark.integration
def test_once_prints_the_device_row_and_counts_invalid_payloads(
    mosquitto: BrokerHandle, processes: Processes, digits: TrainedExample, tmp_path: Path
) -> None:
    listener = Listener(mosquitto, topic(), client_id="watch-test")
    try:
        processes.agent(DEVICE, mosquitto, FLEET)
        deploy_unsigned(listener, digits, tmp_path)
        wait_until(lambda: serving_windows(listener), 40, "telemetry of pi-01 serving digits:1")

        watcher = subprocess.Popen(
            [sys.executable, "-m", "edgeops", "telemetry", "watch", "--broker", str(mosquitto.address),
             "--fleet", FLEET, "--device", DEVICE, "--device", "fake-1", "--once", "--timeout", "30"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        # A second "device" that first sends garbage, then a valid window, until the watcher is done.
        while watcher.poll() is None:
            listener.publish(topic("fake-1"), b"\x00 not telemetry")
            listener.publish(topic("fake-1"), window("fake-1", model="other", model_version="7").encode())
            time.sleep(0.2)
        out, err = watcher.communicate(timeout=10)
    finally:
        listener.close()
    assert watcher.returncode == 0, err
    [row] = [line for line in out.splitlines() if f" {DEVICE} " in line]
    cells = [c.strip() for c in row.strip(" │|").split("│")]
    assert cells[0] == DEVICE and cells[1] == "digits:1"
    assert int(cells[2]) > 0 and int(cells[3]) == 0
    assert float(cells[4]) > 0 and float(cells[5]) >= float(cells[4])  # p50 and p95 ms
    assert float(cells[6]) >= 0 and float(cells[8]) > 0  # drift score, rss
    assert any(" fake-1 " in line and "other:7" in line for line in out.splitlines())
    assert "invalid payloads: " in out and "invalid payloads: 0" not in out


@pytest.mark.integration
def test_once_times_out_with_one_line(mosquitto: BrokerHandle) -> None:
    result = edgeops("telemetry", "watch", "--broker", str(mosquitto.address), "--device", "ghost-1",
                     "--once", "--timeout", "1")
    assert result.returncode == 1 and result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "ghost-1" in lines[0], result.stderr
    bad = edgeops("telemetry", "watch", "--broker", str(mosquitto.address), "--device", "a/b", "--once")
    assert bad.returncode == 1 and "invalid device id" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.integration
def test_live_table_in_a_terminal_updates_and_ctrl_c_exits_zero(
    mosquitto: BrokerHandle, processes: Processes
) -> None:
    processes.agent(DEVICE, mosquitto, FLEET)
    master, slave = pty.openpty()
    watcher = subprocess.Popen(
        [sys.executable, "-m", "edgeops", "telemetry", "watch", "--broker", str(mosquitto.address),
         "--fleet", FLEET],
        stdin=slave, stdout=slave, stderr=slave, env={**os.environ, "COLUMNS": "160", "LINES": "30"},
        start_new_session=True,
    )
    os.close(slave)
    screen = bytearray()

    def shows(text: bytes) -> bool:
        while select.select([master], [], [], 0.1)[0]:
            try:
                screen.extend(os.read(master, 65536))
            except OSError:
                break
        return text in screen

    try:
        # The table is drawn before any telemetry, then redrawn with the device once its window arrives.
        wait_until(lambda: shows(b"invalid payloads: 0"), 20, "the live table")
        wait_until(lambda: shows(DEVICE.encode()), 20, "pi-01 in the live table")
        watcher.send_signal(signal.SIGINT)
        assert watcher.wait(10) == 0
        shows(b"")
        assert b"Traceback" not in screen
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
        os.close(master)
