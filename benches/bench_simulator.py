"""Many simulated devices in one process against Mosquitto: past paho's select() limit of 1,024 sockets.

    .venv/bin/python benches/bench_simulator.py [--devices 1100]

Starts Mosquitto on a free port and ``edgeops simulate`` with N devices (no simulated input, so the
figure is the connection and telemetry machinery), waits until every device's retained birth
message says online, then reports the time to get there, the simulator's threads, open file
descriptors and RSS, and writes benches/results/bench_simulator.json. Stops everything itself.
"""

from __future__ import annotations

import argparse
import json
import queue
import tempfile
import time
from pathlib import Path

from edgeops.broker import Mosquitto
from edgeops.processes import ManagedProcess
from edgeops.protocol import DeviceChannel, Status, device_filter
from edgeops.transport import BrokerAddress, Inbound, MqttTransport

RESULTS = Path(__file__).resolve().parent / "results" / "bench_simulator.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1100)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        broker = Mosquitto(root).start()
        port = broker.port
        sim = None
        listener = MqttTransport("bench-listener", BrokerAddress("127.0.0.1", port), clean_session=True)
        try:
            listener.subscribe(device_filter("default", DeviceChannel.STATUS))
            listener.start()
            listener.wait_connected(10)
            t0 = time.monotonic()
            sim = ManagedProcess("simulator", ["--log-level", "warning", "simulate", "--devices", str(args.devices),
                                               "--data-root", str(root / "sim"), "--broker", f"127.0.0.1:{port}",
                                               "--allow-unsigned", "--input", "none", "--telemetry-interval", "30"],
                                 root / "sim.log")
            online: set[str] = set()
            deadline = t0 + args.timeout
            while len(online) < args.devices and time.monotonic() < deadline and sim.alive:
                try:
                    item = listener.inbox.get(timeout=1.0)
                except queue.Empty:
                    continue
                if isinstance(item, Inbound) and item.payload:
                    status = Status.decode(item.payload)
                    if status.state.value == "online":
                        online.add(status.device_id)
            elapsed = time.monotonic() - t0
            pid = sim.popen.pid
            threads = len(list(Path(f"/proc/{pid}/task").iterdir())) if sim.alive else 0
            fds = len(list(Path(f"/proc/{pid}/fd").iterdir())) if sim.alive else 0
            rss_mb = (int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * 4096 / 2**20) if sim.alive else 0.0
        finally:
            if sim is not None:
                sim.stop(timeout_s=60)
            listener.stop()
            broker.stop()
    results = {"devices": args.devices, "online": len(online), "seconds_to_all_online": elapsed,
               "simulator_threads": threads, "simulator_open_fds": fds, "simulator_rss_mb": rss_mb}
    print(f"simulated devices online      {len(online)} / {args.devices}")
    print(f"time until all online         {elapsed:.1f} s")
    print(f"simulator threads             {threads}")
    print(f"simulator open descriptors    {fds} (select() stops working past 1,024)")
    print(f"simulator RSS                 {rss_mb:.0f} MB")
    ok = len(online) == args.devices
    print(f"[{'met' if ok else 'MISSED'}] every device online in one process, one network loop")
    results["met"] = ok
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
