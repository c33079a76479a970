"""Drift core benchmark: the compiled monitor against numpy / scipy on the same data, one run.

Prints a table and writes benches/results/bench_drift.json. Timing: timeit in this process, every
case warmed up, then rounds that interleave the cases compared (A B C A B C ...) so that load from
other work on the machine hits them alike; each round times enough calls to last >= 20 ms. The
figures are per call, the minimum over rounds (medians are kept beside them), and the targets are
ratios of minimums measured in the same run (see ../shared/ANCHORS.md).

The baselines are what a numpy / scipy user writes: PSI is ``np.histogram`` of the window against
the reference PSI edges (plus -inf / +inf outer edges), then the PSI formula, per feature; KS is
``scipy.stats.ks_2samp`` of the reference column and the window column. Both get each feature as a
contiguous float32 array prepared before timing (no copy is charged to them), while EdgeOps folds
the batch as given (row-major (n, d) float32, its transposition included).

    .venv/bin/python benches/bench_drift.py [--quick]

river's PageHinkley is timed when river is importable, or when EDGEOPS_BENCH_RIVER_PYTHON names
an interpreter that has it (river is not a dependency of EdgeOps).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from edgeops._native import _drift
from edgeops.drift import PSI_EPSILON, DriftMonitor, PageHinkley, ReferenceProfile

RESULTS = Path(__file__).resolve().parent / "results" / "bench_drift.json"


def interleaved(cases: dict[str, Callable[[], object]], repeat: int,
                round_s: float = 0.02) -> dict[str, dict[str, float]]:
    """Seconds per call of each case, ``{"min": ..., "median": ...}`` over ``repeat`` rounds.

    Each case is warmed up and gets a call count that makes a round last >= ``round_s``; the rounds
    then interleave the cases, so a burst of load from elsewhere hits all of them alike.
    """
    timers = {name: timeit.Timer(fn) for name, fn in cases.items()}
    number = {}
    for name, timer in timers.items():
        once = timer.timeit(1)  # warm-up (and first estimate)
        once = min(once, timer.timeit(1))
        number[name] = max(1, math.ceil(round_s / max(once, 1e-9)))
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeat):
        for name, timer in timers.items():
            samples[name].append(timer.timeit(number[name]) / number[name])
    return {name: {"min": min(v), "median": float(np.median(v))} for name, v in samples.items()}


def numpy_psi_histogram(cur: np.ndarray, edges: np.ndarray, expected: np.ndarray) -> float:
    counts, _ = np.histogram(cur, np.concatenate([[-np.inf], edges, [np.inf]]))
    return _psi(counts, expected)


def numpy_psi_searchsorted(cur: np.ndarray, edges: np.ndarray, expected: np.ndarray) -> float:
    counts = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=edges.size + 1)
    return _psi(counts, expected)


def _psi(counts: np.ndarray, expected: np.ndarray) -> float:
    a = counts / counts.sum()
    k = a.size
    a = (a + PSI_EPSILON) / (1 + k * PSI_EPSILON)
    e = (expected + PSI_EPSILON) / (1 + k * PSI_EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


def bench_columns(ref: np.ndarray, cur: np.ndarray, repeat: int) -> dict[str, Any]:
    """Fold + statistics against numpy / scipy per column, on (rows, d) data."""
    d = cur.shape[1]
    profile = ReferenceProfile.fit(ref)
    mon = DriftMonitor(profile)

    def fold() -> None:
        mon.reset()
        mon.update(cur)

    def fold_report() -> None:
        mon.reset()
        mon.update(cur)
        mon.report()

    edges = [f.edges for f in profile.features]
    expected = [f.expected_fractions for f in profile.features]
    cols = [np.ascontiguousarray(cur[:, j]) for j in range(d)]
    refs = [np.ascontiguousarray(ref[:, j]) for j in range(d)]
    fast = interleaved({
        "edgeops fold": fold,
        "edgeops fold + all statistics": fold_report,
        "numpy PSI (np.histogram)":
            lambda: [numpy_psi_histogram(c, e, x) for c, e, x in zip(cols, edges, expected, strict=True)],
        "numpy PSI (searchsorted + bincount)":
            lambda: [numpy_psi_searchsorted(c, e, x) for c, e, x in zip(cols, edges, expected, strict=True)],
        "np.sum (memory floor)": lambda: np.sum(cur),
    }, repeat)
    # scipy takes 0.1-3 s a call: fewer rounds, EdgeOps timed again in the same rounds.
    slow = interleaved({
        "edgeops fold + all statistics": fold_report,
        "scipy ks_2samp": lambda: [stats.ks_2samp(r, c) for r, c in zip(refs, cols, strict=True)],
        "scipy wasserstein_distance":
            lambda: [stats.wasserstein_distance(r, c) for r, c in zip(refs, cols, strict=True)],
    }, max(3, repeat // 3))
    timing = {**fast, "scipy ks_2samp": slow["scipy ks_2samp"],
              "scipy wasserstein_distance": slow["scipy wasserstein_distance"]}
    t = {name: v["min"] for name, v in timing.items()}
    mon.reset()
    mon.update(cur)
    rep = mon.report()
    dd = []
    for j in range(d):
        ks = stats.ks_2samp(refs[j], cols[j])
        dd.append(abs(rep.features[j].ks_statistic - float(ks.statistic)))
    ours = t["edgeops fold + all statistics"]
    ours_slow = slow["edgeops fold + all statistics"]["min"]
    return {
        "shape": list(cur.shape),
        "dtype": str(cur.dtype),
        "reference_rows": ref.shape[0],
        "seconds": t,
        "median_seconds": {name: v["median"] for name, v in timing.items()},
        "ratio_to_np_sum": {k: v / t["np.sum (memory floor)"] for k, v in t.items()},
        "fold_psi_over_histogram_psi": ours / t["numpy PSI (np.histogram)"],
        "fold_psi_over_histogram_psi_median": (timing["edgeops fold + all statistics"]["median"]
                                               / timing["numpy PSI (np.histogram)"]["median"]),
        "ks_speedup_vs_ks_2samp": t["scipy ks_2samp"] / ours_slow,
        "max_abs_delta_D": max(dd),
        "max_ks_error_bound": max(f.ks_error_bound for f in rep.features),
    }


def bench_small_batch(n_calls: int) -> dict[str, Any]:
    """Cost per update call at batch 1 x 64 against the vectorised numpy path."""
    rng = np.random.default_rng(3)
    d = 64
    profile = ReferenceProfile.fit(rng.normal(size=(20_000, d)))
    mon = DriftMonitor(profile)
    x = rng.normal(size=(1, d))
    bmax = max(f.edges.size for f in profile.features)
    edges = np.full((d, bmax), np.inf)
    for j, f in enumerate(profile.features):
        edges[j, : f.edges.size] = f.edges
    counts = np.zeros((d, bmax + 1), dtype=np.int64)
    rows = np.arange(d)
    moments = np.zeros((2, d))

    def numpy_path() -> None:
        v = x[0]
        b = (v[:, None] >= edges).sum(axis=1)
        counts[rows, b] += 1
        moments[0] += v
        moments[1] += v * v

    t = interleaved({"edgeops": lambda: mon.update(x), "numpy": numpy_path}, 9,
                    round_s=n_calls * 1e-6)
    edgeops_s, numpy_s = t["edgeops"]["min"], t["numpy"]["min"]
    return {"features": d, "edgeops_us_per_call": edgeops_s * 1e6, "numpy_us_per_call": numpy_s * 1e6,
            "edgeops_us_per_call_median": t["edgeops"]["median"] * 1e6, "speedup": numpy_s / edgeops_s}


def _python_page_hinkley(xs: list[float], delta: float, threshold: float) -> int:
    n, mean, su, mu, sd, md, alarms = 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0
    for x in xs:
        n += 1
        mean += (x - mean) / n
        su += x - mean - delta
        sd += x - mean + delta
        mu = min(mu, su)
        md = max(md, sd)
        if n >= 30 and (su - mu > threshold or md - sd > threshold):
            alarms += 1
            n, mean, su, mu, sd, md = 0, 0.0, 0.0, 0.0, 0.0, 0.0
    return alarms


_RIVER_SNIPPET = """
import time, numpy as np
from river.drift import PageHinkley
xs = np.random.default_rng(4).normal(0.9, 0.05, 200_000).tolist()
ts = []
for _ in range(3):
    ph = PageHinkley()
    t0 = time.perf_counter()
    for x in xs:
        ph.update(x)
    ts.append((time.perf_counter() - t0) / len(xs))
print(sorted(ts)[1] * 1e9)
"""


def _river_ns() -> tuple[float | None, str]:
    try:
        import river  # noqa: F401
    except ImportError:
        python = os.environ.get("EDGEOPS_BENCH_RIVER_PYTHON")
        if not python:
            return None, "river not installed"
        out = subprocess.run([python, "-c", _RIVER_SNIPPET], check=False, capture_output=True, text=True,
                             timeout=300)
        if out.returncode != 0:
            return None, f"river run failed: {out.stderr.strip()[-200:]}"
        return float(out.stdout.strip()), f"river via {python}"
    ns = {}
    exec(_RIVER_SNIPPET.replace("print(", "result = ("), ns)  # same code, same process
    return float(ns["result"]), "river in this interpreter"


def bench_page_hinkley(n: int) -> dict[str, Any]:
    xs = np.random.default_rng(4).normal(0.9, 0.05, n)
    ph = PageHinkley()
    ph2 = PageHinkley()
    small = xs[:100_000].tolist()

    def per_call() -> None:
        for x in small:
            ph2.update(x)

    t = interleaved({"many": lambda: ph.update_many(xs), "call": per_call,
                     "python": lambda: _python_page_hinkley(small, 0.005, 50.0)}, 5)
    many_s = t["many"]["min"]
    call_s = t["call"]["min"] / len(small)
    py_s = t["python"]["min"] / len(small)
    river_ns, river_note = _river_ns()
    return {
        "update_many_ns_per_sample": many_s / n * 1e9,
        "update_ns_per_call": call_s * 1e9,
        "pure_python_ns_per_sample": py_s * 1e9,
        "river_ns_per_sample": river_ns,
        "river_note": river_note,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller data, fewer repeats (smoke run)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    scale = 10 if args.quick else 1
    repeat = 5 if args.quick else 15

    one = bench_columns(rng.normal(size=(100_000 // scale, 1)),
                        rng.normal(0.1, 1.0, size=(1_000_000 // scale, 1)).astype(np.float32), repeat)
    many = bench_columns(rng.normal(size=(100_000 // scale, 32)),
                         rng.normal(0.1, 1.0, size=(100_000 // scale, 32)).astype(np.float32), repeat)
    small = bench_small_batch(2_000 if args.quick else 20_000)
    ph = bench_page_hinkley(100_000 if args.quick else 1_000_000)

    targets = {
        "fold + PSI <= 0.5x np.histogram PSI (10^6 x 1)": (
            one["fold_psi_over_histogram_psi"], one["fold_psi_over_histogram_psi"] <= 0.5),
        "fold + PSI <= 0.5x np.histogram PSI (10^5 x 32)": (
            many["fold_psi_over_histogram_psi"], many["fold_psi_over_histogram_psi"] <= 0.5),
        "binned KS + p >= 50x faster than ks_2samp (10^6 x 1)": (
            one["ks_speedup_vs_ks_2samp"], one["ks_speedup_vs_ks_2samp"] >= 50),
        "binned KS + p >= 50x faster than ks_2samp (10^5 x 32)": (
            many["ks_speedup_vs_ks_2samp"], many["ks_speedup_vs_ks_2samp"] >= 50),
        "|delta D| <= 1e-3 vs ks_2samp": (
            max(one["max_abs_delta_D"], many["max_abs_delta_D"]),
            max(one["max_abs_delta_D"], many["max_abs_delta_D"]) <= 1e-3),
        "<= 1 us per update at batch 1 x 64": (small["edgeops_us_per_call"], small["edgeops_us_per_call"] <= 1.0),
        "Page-Hinkley <= 10 ns per sample (update_many)": (
            ph["update_many_ns_per_sample"], ph["update_many_ns_per_sample"] <= 10.0),
    }

    print(f"edgeops drift bench  python {platform.python_version()}  numpy {np.__version__}  "
          f"{platform.machine()}  cpus {os.cpu_count()}  fold kernels {_drift.kernel_isa()}"
          f"{'  (quick)' if args.quick else ''}")
    print("per call: minimum over interleaved rounds (median beside it)")
    for title, res in (("10^6 x 1 float32 (reference 10^5)", one), ("10^5 x 32 float32 (reference 10^5)", many)):
        print(f"\n{title}")
        print(f"  {'what':<38}{'ms':>10}{'median':>10}{'x np.sum':>10}{'x edgeops':>11}")
        ours = res["seconds"]["edgeops fold + all statistics"]
        for name, sec in res["seconds"].items():
            print(f"  {name:<38}{sec * 1e3:>10.3f}{res['median_seconds'][name] * 1e3:>10.3f}"
                  f"{res['ratio_to_np_sum'][name]:>10.1f}{sec / ours:>11.2f}")
        print(f"  |D - ks_2samp D| = {res['max_abs_delta_D']:.2e}  (stated bound {res['max_ks_error_bound']:.2e})")
    print("\nbatch 1 x 64, cost per call")
    print(f"  edgeops DriftMonitor.update   {small['edgeops_us_per_call']:8.3f} us   "
          f"(median {small['edgeops_us_per_call_median']:.3f})")
    print(f"  numpy path                    {small['numpy_us_per_call']:8.3f} us   ({small['speedup']:.1f}x slower)")
    print("\nPage-Hinkley per sample")
    print(f"  edgeops update_many           {ph['update_many_ns_per_sample']:8.2f} ns")
    print(f"  edgeops update (Python call)  {ph['update_ns_per_call']:8.2f} ns")
    print(f"  pure-Python loop              {ph['pure_python_ns_per_sample']:8.2f} ns")
    river = ph["river_ns_per_sample"]
    print(f"  river PageHinkley             {'-' if river is None else f'{river:8.2f} ns'}   ({ph['river_note']})")
    print("\ntargets")
    for name, (value, ok) in targets.items():
        print(f"  [{'met' if ok else 'MISSED'}] {name}: {value:.4g}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "bench": "drift",
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "fold_kernels": _drift.kernel_isa(),
        "quick": args.quick,
        "single_feature": one,
        "thirty_two_features": many,
        "batch_1x64": small,
        "page_hinkley": ph,
        "targets": {k: {"value": v, "met": ok} for k, (v, ok) in targets.items()},
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
