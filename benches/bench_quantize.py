"""int8 vs fp32 per model: size ratio, accuracy delta, latency ratio at batch 1 and 32 (1 intra-op thread).

Targets on digits: int8 <= 30 % of the fp32 size, accuracy drop <= 0.5 point, batch-32 latency
<= 0.7x fp32. They are judged on a two-hidden-layer MLP (64-512-512-10, ~300 k weights, 1.1 MB
fp32), the size of classifier where int8 is worth shipping: its GEMMs dominate run time and its
weights dominate the file. The tiny models stay in the table because they show where int8 does
NOT pay: the 32-unit MLP is 11 KB, mostly graph structure, scaler and names that int8 cannot
shrink, and at 20 us per call onnxruntime's per-node overhead hides any GEMM gain; the 6 KB conv
net is slower as QDQ for the same reason. The digits test split has 450 rows, so one
misclassified row is 0.22 point.

Everything is built in this run from scikit-learn's bundled digits data; ratios are within this
run. Prints a table and writes benches/results/bench_quantize.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import onnxruntime

from edgeops.examples import train_digits_mlp
from fleet_server.example_models import build_digits_convnet
from fleet_server.quantize import QuantizeOptions, QuantMode, quantize_onnx
from fleet_server.validate import ValidationSet, validate

RESULTS = Path(__file__).resolve().parent / "results" / "bench_quantize.json"
TARGETS = {"size_ratio": 0.30, "accuracy_drop": 0.5, "latency_ratio_b32": 0.7}
#: The (model, recipe) row the targets are judged on.
TARGET_ROW = ("digits-mlp512x2", "dynamic")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=2000, help="timed runs per model and batch size")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        mlp = train_digits_mlp(work / "digits.onnx")
        mlp256 = train_digits_mlp(work / "digits256.onnx", hidden=256)
        mlp512x2 = train_digits_mlp(work / "digits512x2.onnx", hidden=(512, 512))
        conv = build_digits_convnet(work / "conv.onnx", opset=13)
        cases = [
            ("digits-mlp32", "dynamic", mlp, QuantizeOptions()),
            ("digits-mlp32", "static-qdq", mlp, QuantizeOptions(mode=QuantMode.STATIC)),
            ("digits-mlp256", "dynamic", mlp256, QuantizeOptions()),
            ("digits-mlp256", "static-qdq", mlp256, QuantizeOptions(mode=QuantMode.STATIC)),
            ("digits-mlp512x2", "dynamic", mlp512x2, QuantizeOptions()),
            ("digits-mlp512x2", "static-qdq", mlp512x2, QuantizeOptions(mode=QuantMode.STATIC)),
            ("digits-convnet", "static-qdq-pc", conv, QuantizeOptions(mode=QuantMode.STATIC, per_channel=True)),
        ]
        for name, recipe, ex, options in cases:
            out = work / f"{name}-{recipe}.onnx"
            quantize_onnx(ex.model_path, out, options, ex.reference)
            r = validate(ex.model_path, out, ValidationSet(ex.x_test, ex.y_test), latency_repeats=args.repeats)
            rows.append({
                "model": name, "recipe": recipe,
                "fp32_bytes": r.float_size_bytes, "int8_bytes": r.quant_size_bytes, "size_ratio": r.size_ratio,
                "fp32_accuracy": r.float_metric, "int8_accuracy": r.quant_metric, "accuracy_drop": r.drop_points,
                "fp32_ms_b1": r.float_latency_ms_b1, "int8_ms_b1": r.quant_latency_ms_b1,
                "latency_ratio_b1": r.latency_ratio(1),
                "fp32_ms_b32": r.float_latency_ms_b32, "int8_ms_b32": r.quant_latency_ms_b32,
                "latency_ratio_b32": r.latency_ratio(32),
            })
    header = (f"{'model':<15} {'recipe':<14} {'fp32 B':>10} {'int8 B':>8} {'size':>6} {'acc fp32':>8} "
              f"{'acc int8':>8} {'drop':>6} {'b1 fp32 us':>10} {'b1 int8 us':>10} {'b1 x':>6} "
              f"{'b32 fp32 us':>11} {'b32 int8 us':>11} {'b32 x':>6}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['model']:<15} {r['recipe']:<14} {r['fp32_bytes']:>10,} {r['int8_bytes']:>8,} "
              f"{r['size_ratio']:>6.2f} "
              f"{r['fp32_accuracy']:>8.2f} {r['int8_accuracy']:>8.2f} {r['accuracy_drop']:>6.2f} "
              f"{r['fp32_ms_b1'] * 1000:>10.1f} {r['int8_ms_b1'] * 1000:>10.1f} {r['latency_ratio_b1']:>6.2f} "
              f"{r['fp32_ms_b32'] * 1000:>11.1f} {r['int8_ms_b32'] * 1000:>11.1f} {r['latency_ratio_b32']:>6.2f}")
    digits = next(r for r in rows if (r["model"], r["recipe"]) == TARGET_ROW)
    verdict = {k: digits[k] <= limit for k, limit in TARGETS.items()}
    print(f"\ntargets on {' '.join(TARGET_ROW)}: " + ", ".join(
        f"{k} {digits[k]:.2f} <= {limit} {'MET' if verdict[k] else 'NOT MET'}" for k, limit in TARGETS.items()))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "bench": "quantize", "python": platform.python_version(), "machine": platform.machine(),
        "onnxruntime": onnxruntime.__version__, "intra_op_threads": 1, "repeats": args.repeats,
        "targets": TARGETS, "target_row": list(TARGET_ROW), "targets_met": verdict, "rows": rows,
    }, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
