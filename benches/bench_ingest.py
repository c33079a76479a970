"""Telemetry ingestion: windows stored per second by the fleet server, none lost, duplicates dropped.

    .venv/bin/python benches/bench_ingest.py [--windows 20000] [--devices 200] [--db URL]

Starts Mosquitto on a free port and a real ``edgeops server``, publishes telemetry windows (QoS 1)
from many device ids as fast as a paho client can, with 5 % of them sent twice (QoS 1 redelivery),
and measures from the first publish until the store holds every distinct window. The store is a new
SQLite file unless ``--db`` names a database (e.g. ``postgresql+psycopg://postgres@127.0.0.1/bench``);
there the run uses a fleet of its own and deletes its windows afterwards. Prints a table, writes
benches/results/bench_ingest[_BACKEND].json. Target (issue 6): at least 5,000 windows/s, none lost.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from pathlib import Path

from edgeops.broker import Mosquitto
from edgeops.processes import ManagedProcess
from edgeops.protocol import DeviceChannel, Telemetry, device_topic
from edgeops.transport import BrokerAddress, MqttTransport
from fleet_server.store import Store, now_ms

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=20_000)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--db", default=None, help="Store database URL (default: a new SQLite file).")
    args = parser.parse_args()
    # A fleet and window ids of this run only, so a shared database's earlier rows do not count.
    run = uuid.uuid4().hex[:8]
    fleet = f"bench-{run}"
    db_args = ["--db", args.db] if args.db else []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = Store(args.db or root / "home" / "edgeops.db")  # migrated here, before the server opens it
        broker = Mosquitto(root).start()
        port = broker.port
        server = None
        publisher = MqttTransport("bench-publisher", BrokerAddress("127.0.0.1", port), clean_session=True,
                                  max_inflight=1000)
        try:
            server = ManagedProcess("server", ["--log-level", "warning", "server", "--home", str(root / "home"),
                                               "--broker", f"127.0.0.1:{port}", "--fleet", fleet, *db_args],
                                    root / "server.log")
            publisher.start()
            publisher.wait_connected(10)
            time.sleep(1.0)  # the server subscribes
            payloads = []
            start_ms = now_ms()  # recent: the server's retention must not delete them mid-run
            for i in range(args.windows):
                device = f"dev-{i % args.devices:04d}"
                window = Telemetry(device_id=device, window_id=f"{device}:{run}:{i}", ts=start_ms + i,
                                   window_s=10.0, model="digits", model_version="1", inferences=500, errors=1,
                                   latency_ms_p50=0.1, latency_ms_p95=0.2, latency_ms_p99=0.3, drift_score=0.0,
                                   cpu_percent=3.0, rss_mb=60.0)
                topic = device_topic(fleet, device, DeviceChannel.TELEMETRY)
                payloads.append((topic, window.encode()))
                if i % 20 == 0:
                    payloads.append((topic, window.encode()))  # a duplicate
            t0 = time.monotonic()
            for topic, payload in payloads:
                publisher.publish(topic, payload)
            published = time.monotonic() - t0
            deadline = time.monotonic() + 300
            stored = 0
            while time.monotonic() < deadline:
                stored = store.telemetry_count(fleet)
                if stored >= args.windows:
                    break
                time.sleep(0.05)
            elapsed = time.monotonic() - t0
        finally:
            publisher.stop()
            if server is not None:
                server.stop()
            broker.stop()
            if args.db:
                store.prune(fleet, older_than_ms=now_ms() + 86_400_000)  # this run's rows out of a shared database
            store.close()
    rate = stored / elapsed
    results = {"backend": store.backend, "windows": args.windows, "duplicates_sent": len(payloads) - args.windows,
               "stored": stored, "lost": args.windows - stored, "seconds": elapsed, "publish_seconds": published,
               "windows_per_s": rate}
    print(f"store                         {store.url}")
    print(f"windows published             {len(payloads)} ({len(payloads) - args.windows} duplicates)")
    print(f"distinct windows stored       {stored} / {args.windows}")
    print(f"publish time                  {published:.2f} s")
    print(f"until all stored              {elapsed:.2f} s")
    print(f"ingestion rate                {rate:,.0f} windows/s")
    met = rate >= 5000 and stored == args.windows
    print(f"[{'met' if met else 'MISSED'}] >= 5,000 windows/s with none lost")
    results["met"] = met
    out = RESULTS_DIR / ("bench_ingest.json" if store.backend == "sqlite" else f"bench_ingest_{store.backend}.json")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
