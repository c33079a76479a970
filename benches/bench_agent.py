"""Device agent benchmark: cost of the agent's inference path, memory, telemetry spool rates.

    .venv/bin/python benches/bench_agent.py [--quick]

Prints a table and writes benches/results/bench_agent.json. Targets (issue 5): the agent's
inference path with drift on costs at most 3 us more than a bare onnxruntime ``run`` at batch 1;
RSS after 1,000 inferences at most 75 MB with onnxruntime (55 MB with LiteRT). Times are medians
of repeated rounds; the overhead is a difference measured in the same process.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "bench_agent.json"


def median_us(fn: Callable[[], object], rounds: int, number: int) -> float:
    for _ in range(number):
        fn()
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        samples.append((time.perf_counter() - t0) / number * 1e6)
    return float(np.median(samples))


def build_digits_bundle(workdir: Path) -> tuple[Path, np.ndarray]:
    """The digits MLP packaged as a bundle file, and test rows (training happens here, not in the agent)."""
    from edgeops.bundle import build_bundle
    from edgeops.examples import train_digits_mlp

    trained = train_digits_mlp(workdir / "digits.onnx")
    build_bundle(trained.model_path, workdir / "b.zip", name="digits", version="1", reference=trained.reference)
    np.save(workdir / "x_test.npy", trained.x_test)
    return workdir / "b.zip", trained.x_test


def installed_agent(bundle_path: Path, workdir: Path) -> tuple[Any, Any]:
    """An Agent (not connected) serving a bundle from its slot, exactly as after an update."""
    from device_agent.agent import Agent
    from device_agent.config import AgentConfig
    from edgeops.bundle import open_bundle
    from edgeops.manifest import MANIFEST_FILE, bundle_ref

    bundle = open_bundle(bundle_path)
    agent = Agent(AgentConfig(device_id="bench", data_dir=workdir / "agent", allow_unsigned=True))
    slot = workdir / "agent" / "slots" / "a"
    for name, data in bundle.files.items():
        (slot / name).write_bytes(data)
    (slot / MANIFEST_FILE).write_bytes(bundle.manifest_bytes)
    loaded = agent._load_slot("a", bundle_ref(bundle.manifest, bundle.digest))
    agent._serve(loaded)
    return agent, loaded


def bench_overhead(rounds: int, number: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        bundle_path, x_test = build_digits_bundle(Path(tmp))
        agent, loaded = installed_agent(bundle_path, Path(tmp))
        session = loaded.model._session
        x = np.ascontiguousarray(x_test[:1])
        names = [o.name for o in loaded.manifest.outputs]
        raw = median_us(lambda: session.run(names, {"X": x}), rounds, number)
        checked = median_us(lambda: loaded.model.run({"X": x}), rounds, number)
        full = median_us(lambda: agent.predict(x), rounds, number)
        drift_fold = median_us(lambda: loaded.drift.update(x), rounds, number)
        agent.stop()
    return {"raw_ort_run_us": raw, "checked_run_us": checked, "agent_predict_us": full,
            "drift_fold_us": drift_fold, "overhead_us": full - raw}


RSS_SCRIPT = """
import sys, tempfile
from pathlib import Path
sys.path.insert(0, {bench!r})
import numpy as np
from bench_agent import installed_agent
x_test = np.load({x!r})
with tempfile.TemporaryDirectory() as tmp:
    agent, loaded = installed_agent(Path({bundle!r}), Path(tmp))
    for i in range(1000):
        j = i % len(x_test)
        agent.predict(np.ascontiguousarray(x_test[j:j + 1]))
    import os
    print(int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20)
"""


def build_tflite_bundle(workdir: Path) -> tuple[Path, np.ndarray]:
    """A dense 64 -> 10 TFLite model (LiteRT runs it) with the digits reference, as a bundle file."""
    from edgeops.bundle import build_bundle
    from edgeops.examples import train_digits_mlp
    from fleet_server.example_models import write_dense_tflite

    trained = train_digits_mlp(workdir / "digits.onnx")
    rng = np.random.default_rng(0)
    model = write_dense_tflite(workdir / "dense.tflite", rng.standard_normal((10, 64)) * 0.1, np.zeros(10))
    build_bundle(model, workdir / "b.zip", name="dense", version="1", reference=trained.reference)
    np.save(workdir / "x_test.npy", trained.x_test)
    return workdir / "b.zip", trained.x_test


def bench_rss(build: Callable[[Path], tuple[Path, np.ndarray]] = build_digits_bundle) -> float:
    """RSS of a fresh interpreter that imports only the agent stack and serves 1,000 inferences."""
    with tempfile.TemporaryDirectory() as tmp:
        bundle_path, _ = build(Path(tmp))
        script = RSS_SCRIPT.format(bench=str(Path(__file__).resolve().parent), bundle=str(bundle_path),
                                   x=str(Path(tmp) / "x_test.npy"))
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def bench_spool(n: int) -> dict[str, float]:
    from device_agent.spool import TelemetrySpool

    payload = b"x" * 400
    with tempfile.TemporaryDirectory() as tmp:
        spool = TelemetrySpool(Path(tmp) / "spool.sqlite", max_bytes=64 * 1024 * 1024)
        t0 = time.perf_counter()
        for _ in range(n):
            spool.put("edgeops/v1/default/devices/bench/telemetry", payload)
        write = n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        drained = 0
        while True:
            batch = spool.pending(limit=200)
            if not batch:
                break
            for msg in batch:
                spool.ack(msg.id)
            drained += len(batch)
        drain = drained / (time.perf_counter() - t0)
        spool.close()
    return {"spool_write_per_s": write, "spool_drain_per_s": drain}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    args = parser.parse_args()
    rounds, number, spool_n = (5, 200, 500) if args.quick else (15, 2000, 5000)
    results: dict[str, Any] = {"machine": platform.machine(), "python": platform.python_version()}
    results.update(bench_overhead(rounds, number))
    results["rss_mb_after_1000_onnxruntime"] = bench_rss()
    results["rss_mb_after_1000_litert"] = bench_rss(build_tflite_bundle)
    results.update(bench_spool(spool_n))
    targets = {
        "agent path overhead <= 3 us over a bare onnxruntime run": (results["overhead_us"], 3.0),
        "RSS after 1,000 inferences (onnxruntime) <= 75 MB": (results["rss_mb_after_1000_onnxruntime"], 75.0),
        "RSS after 1,000 inferences (LiteRT) <= 55 MB": (results["rss_mb_after_1000_litert"], 55.0),
    }
    print("agent inference path, digits MLP, batch 1, 1 intra-op thread")
    for key in ("raw_ort_run_us", "checked_run_us", "drift_fold_us", "agent_predict_us", "overhead_us"):
        print(f"  {key:<28} {results[key]:10.2f} us")
    print(f"  {'RSS after 1,000 (ORT)':<28} {results['rss_mb_after_1000_onnxruntime']:10.1f} MB")
    print(f"  {'RSS after 1,000 (LiteRT)':<28} {results['rss_mb_after_1000_litert']:10.1f} MB")
    print(f"  {'spool writes':<28} {results['spool_write_per_s']:10.0f} /s")
    print(f"  {'spool drain (read+ack)':<28} {results['spool_drain_per_s']:10.0f} /s")
    print("targets")
    results["targets"] = {}
    for name, (value, limit) in targets.items():
        met = value <= limit
        results["targets"][name] = {"value": value, "limit": limit, "met": met}
        print(f"  [{'met' if met else 'MISSED'}] {name}: {value:.2f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
