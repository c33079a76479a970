"""Staged rollouts at fleet scale: N simulated devices, a 1 MB bundle, Mosquitto, the real server.

    .venv/bin/python benches/bench_rollout.py [--devices 1000] [--sim-processes 0]

1. Every device is brought to version 1 (a plain deployment).
2. A good version 2 is rolled out (canary 1, 10 %, 50 %, 100 %; soak 2 s; gates judge one window's
   inferences, ``--min-inferences 4``): time from start to ``succeeded``. Target (issue 6): at
   most 60 s for 1,000 devices on this 2-core machine.
3. A bad version 3 (every device adds 20 ms per inference while it serves 3) is rolled out: time
   from the canary's first telemetry window on version 3 until every touched device reports
   version 2 again, in telemetry windows. Target: at most 2 windows.
The simulator splits the devices over processes (``simulate --processes``, auto by default); the
server's own CPU time during the good rollout is reported apart, as what the fleet costs the server.
Prints a table and writes benches/results/bench_rollout.json. Stops everything it started.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeops.broker import Mosquitto
from edgeops.processes import ManagedProcess
from fleet_server.rollout_driver import RolloutService
from fleet_server.store import Store

RESULTS = Path(__file__).resolve().parent / "results" / "bench_rollout.json"
WINDOW_S = 2.0
INFERENCE_S = 0.5
#: The gates judge on one window's inferences per device (the product's default, 20, is five of
#: these windows: at 2 inferences a second the bad canary would be judged after ~5 windows).
MIN_INFERENCES = int(WINDOW_S / INFERENCE_S)


def one_mb_model(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.standard_normal((64, 4096)).astype(np.float32) * 0.01, "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((4096, 10)).astype(np.float32) * 0.01, "w2")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["scores"])],
        "bench", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 64])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [None, 10])], initializer=[w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def edgeops(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "edgeops", *args], capture_output=True, text=True, check=True)
    return out.stdout


def wait(predicate, timeout: float, what: str) -> float:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)
    return time.monotonic() - t0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (and its waited-for children) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--sim-processes", type=int, default=0, help="simulate --processes (0 = auto)")
    args = parser.parse_args()
    n = args.devices
    procs: list[ManagedProcess] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        home = root / "home"
        broker = Mosquitto(root).start()
        port = broker.port
        try:
            edgeops("keys", "generate", "--name", "bench", "--home", str(home))
            edgeops("keys", "export-public", str(root / "trust"), "--home", str(home))
            for version, seed in (("1", 1), ("2", 2), ("3", 3)):
                model = one_mb_model(root / f"m{version}.onnx", seed)
                edgeops("model", "add", str(model), "--name", "bench", "--version", version, "--home", str(home))
            store = Store(home / "edgeops.db")
            procs.append(ManagedProcess("server", ["--log-level", "warning", "server", "--home", str(home),
                                                   "--broker", f"127.0.0.1:{port}"], root / "server.log"))
            procs.append(ManagedProcess("sim", ["--log-level", "warning", "simulate", "--devices", str(n),
                                                "--data-root", str(root / "sim"), "--broker", f"127.0.0.1:{port}",
                                                "--trust-dir", str(root / "trust"), "--input", "digits",
                                                "--inference-interval", str(INFERENCE_S), "--telemetry-interval",
                                                str(WINDOW_S), "--probation-min-inferences", "2",
                                                "--probation-max-s", "5", "--simulate-faults", "latency=20",
                                                "--faults-version", "3", "--processes", str(args.sim_processes)],
                                        root / "sim.log"))

            def on(version: str) -> int:
                return sum(1 for d in store.devices("default") if d.active_version == version
                           and d.phase == "committed")

            online = wait(lambda: len([d for d in store.devices("default") if d.online]) == n, 300, "devices online")
            edgeops("deploy", "bench:1", "--home", str(home))
            initial = wait(lambda: on("1") == n, 600, "every device on version 1")

            t0, server_cpu0 = time.monotonic(), cpu_seconds(procs[0].popen.pid)
            good = edgeops("rollout", "start", "bench:2", "--stages", "canary:1,10%,50%,100%", "--soak", "2",
                           "--min-inferences", str(MIN_INFERENCES), "--home", str(home)).split()[1].rstrip(":")
            # Polled from the store in this process: a CLI process per poll would burn a core of
            # this 2-core machine on Python start-ups, and slow down what it measures.
            rollouts = RolloutService(store, "default")
            stage_ends: dict[int, float] = {}

            def good_done() -> bool:
                r = rollouts.get(good)
                for index in range(r.stage_index + (1 if r.state.value == "succeeded" else 0)):
                    stage_ends.setdefault(index, time.monotonic() - t0)
                return r.state.value in ("succeeded", "rolled_back", "paused")

            wait(good_done, 900, "the good rollout")
            good_s = time.monotonic() - t0
            server_cpu = cpu_seconds(procs[0].popen.pid) - server_cpu0
            good_state = rollouts.get(good).state.value

            bad = edgeops("rollout", "start", "bench:3", "--stages", "canary:1,10%,50%,100%", "--soak", "2",
                          "--min-inferences", str(MIN_INFERENCES), "--home", str(home)).split()[1].rstrip(":")

            def canary_window() -> bool:
                assigned = len(rollouts.get(bad).assigned)
                rows = [d for d in store.devices("default") if (d.last_telemetry or {}).get("model_version") == "3"]
                return assigned >= 1 and bool(rows)

            wait(canary_window, 300, "the canary's first window on version 3")
            t_first = time.monotonic()
            wait(lambda: rollouts.get(bad).state.value == "rolled_back" and on("2") == n, 300, "the revert")
            revert_s = time.monotonic() - t_first
        finally:
            for proc in reversed(procs):
                proc.stop(timeout_s=60)
            broker.stop()
    results = {"devices": n, "bundle_bytes": 64 * 4096 * 4 + 4096 * 10 * 4, "seconds_to_online": online,
               "seconds_initial_deploy": initial, "good_rollout_seconds": good_s, "good_rollout_state": good_state,
               "server_cpu_seconds_good_rollout": server_cpu, "stage_end_seconds": stage_ends,
               "sim_processes": args.sim_processes,
               "revert_seconds": revert_s, "revert_windows": revert_s / WINDOW_S, "window_s": WINDOW_S}
    print(f"devices                               {n}")
    print(f"plain deployment of 1 MB to all       {initial:.1f} s")
    print(f"good staged rollout (4 stages)        {good_s:.1f} s ({good_state})")
    ends = [stage_ends[i] for i in sorted(stage_ends)]
    took = ", ".join(f"{b - a:.1f}" for a, b in zip([0.0, *ends[:-1]], ends, strict=True))
    print(f"  stages took                         {took} s")
    print(f"  server CPU time during it           {server_cpu:.1f} s ({server_cpu / good_s:.0%} of one core)")
    print(f"bad canary: first window -> reverted  {revert_s:.1f} s = {revert_s / WINDOW_S:.1f} windows")
    targets = {"good rollout <= 60 s": good_s <= 60 and good_state == "succeeded",
               "revert <= 2 telemetry windows": revert_s / WINDOW_S <= 2}
    for name, met in targets.items():
        print(f"[{'met' if met else 'MISSED'}] {name}")
    results["targets"] = targets
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
