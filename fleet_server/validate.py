"""Validation of a float model against its quantized version, and the release gate.

On a user-supplied validation set (``.npz`` with arrays ``X`` and ``y``) both models are scored
(accuracy in percent for integer labels, R² in percent for float targets, so a drop is always in
*points*), sized, and timed at batch 1 and batch 32 with one intra-op thread. The release gate
refuses a quantized model whose metric dropped by more than ``max_drop`` points unless forced.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgeops.bundle import runtime_for
from edgeops.errors import InferenceInputError, ValidationDataError, ValidationGateError
from edgeops.runtime import Model, check_input, load_model

DEFAULT_MAX_DROP = 1.0
LATENCY_BATCHES = (1, 32)
#: CPU flags (as in /proc/cpuinfo) of the int8 dot-product instructions that do not saturate.
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni"})


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str] | None:
    """This CPU's feature flags, or None where /proc/cpuinfo does not list them (not Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return None


def int8_saturation_risk(machine: str | None = None, flags: Iterable[str] | None = None) -> bool:
    """Whether onnxruntime's int8 GEMMs can saturate on this CPU, changing the quantized results.

    On x86-64 without VNNI, onnxruntime multiplies uint8 activations by int8 weights with
    VPMADDUBSW, which adds pairs of products into int16 with saturation: two large activations
    against two large weights (per-channel scales make each channel's largest weight 127) clip.
    With VNNI, and on Arm, the sums are exact. A quantized model validated on such a CPU can score
    lower than on the device it is meant for; 7-bit weights (``--reduce-range``) cannot saturate.
    """
    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64"):
        return False
    present = cpu_flags() if flags is None else frozenset(flags)
    return present is not None and not (present & VNNI_FLAGS)


@dataclass(frozen=True)
class ValidationSet:
    x: np.ndarray
    y: np.ndarray

    @property
    def task(self) -> str:
        return "classification" if self.y.dtype.kind in "iub" else "regression"


def load_validation_set(path: Path) -> ValidationSet:
    """Arrays ``X`` (model input rows) and ``y`` (labels or targets) from an ``.npz`` file."""
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("X", "y") if k not in data]
            if missing:
                raise ValidationDataError(f"{path}: validation set needs arrays X and y, missing {missing}")
            x, y = data["X"], data["y"]
    except (OSError, ValueError) as exc:
        raise ValidationDataError(f"cannot read validation set {path}: {exc}") from exc
    if len(x) != len(y) or len(x) == 0:
        raise ValidationDataError(f"{path}: X has {len(x)} rows and y {len(y)}; they must match and not be empty")
    return ValidationSet(np.asarray(x), np.asarray(y))


@dataclass(frozen=True)
class ModelScore:
    metric: float
    size_bytes: int
    latency_ms_b1: float | None
    latency_ms_b32: float | None


@dataclass(frozen=True)
class ValidationReport:
    """Float vs quantized; ``metric`` is accuracy or R², in percent."""

    metric_name: str
    rows: int
    float_metric: float
    quant_metric: float
    float_size_bytes: int
    quant_size_bytes: int
    float_latency_ms_b1: float | None = None
    float_latency_ms_b32: float | None = None
    quant_latency_ms_b1: float | None = None
    quant_latency_ms_b32: float | None = None

    @property
    def drop_points(self) -> float:
        return self.float_metric - self.quant_metric

    @property
    def size_ratio(self) -> float:
        return self.quant_size_bytes / self.float_size_bytes

    def latency_ratio(self, batch: int) -> float | None:
        f = getattr(self, f"float_latency_ms_b{batch}")
        q = getattr(self, f"quant_latency_ms_b{batch}")
        return None if f is None or q is None or f == 0 else float(q / f)

    def to_manifest(self) -> dict[str, float]:
        """The manifest's ``validation`` figures (numbers only; absent latencies left out)."""
        figures = {k: float(v) for k, v in asdict(self).items() if isinstance(v, (int, float)) and v is not None}
        figures["drop_points"] = self.drop_points
        figures["size_ratio"] = self.size_ratio
        return figures


def _predictions(model: Model, x: np.ndarray, task: str) -> np.ndarray:
    spec = model.inputs[0]
    if x.dtype.kind in "iu" and np.dtype(spec.dtype).kind == "f":
        x = x.astype(spec.dtype)
    try:
        feeds = {spec.name: check_input(spec, x)}
    except InferenceInputError as exc:
        raise ValidationDataError(f"validation X does not fit the model: {exc}") from exc
    outputs = model.run(feeds)
    if task == "classification":
        for out in model.outputs:  # an explicit label output wins (e.g. skl2onnx "label")
            value = outputs[out.name]
            if np.asarray(value).dtype.kind in "iu" and np.asarray(value).ndim == 1:
                return np.asarray(value)
        for out in model.outputs:
            value = np.asarray(outputs[out.name])
            if value.dtype.kind == "f" and value.ndim == 2:
                return np.asarray(value.argmax(axis=1))
        raise ValidationDataError("no classifier output found (an int label vector or a [N, classes] score)")
    value = np.asarray(outputs[model.outputs[0].name], dtype=np.float64)
    return value.reshape(len(x), -1)[:, 0]


def score(model: Model, data: ValidationSet) -> float:
    """Accuracy (classification) or R² (regression), in percent."""
    pred = _predictions(model, data.x, data.task)
    if data.task == "classification":
        return float(np.mean(pred == data.y) * 100.0)
    y = data.y.astype(np.float64)
    ss_res = float(np.sum((y - pred) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2)) or 1.0
    return (1.0 - ss_res / ss_tot) * 100.0


def measure_latency_ms(model: Model, x: np.ndarray, batch: int, repeats: int) -> float:
    """Median milliseconds of one ``run`` on ``batch`` rows (after a warm-up)."""
    spec = model.inputs[0]
    rows = np.resize(x, (batch, *x.shape[1:])) if len(x) < batch else x[:batch]
    feeds = {spec.name: np.ascontiguousarray(rows.astype(spec.dtype))}
    for _ in range(min(10, repeats)):
        model.run(feeds)
    samples = np.empty(repeats)
    for i in range(repeats):
        start = time.perf_counter()
        model.run(feeds)
        samples[i] = time.perf_counter() - start
    return float(np.median(samples) * 1000.0)


def evaluate(path: Path, data: ValidationSet, *, latency_repeats: int = 200) -> ModelScore:
    """Metric, size and (when ``latency_repeats`` > 0) single-thread latency of one model file."""
    model = load_model(path, runtime_for(path), intra_op_threads=1)
    lat = {
        b: measure_latency_ms(model, data.x, b, latency_repeats) if latency_repeats > 0 else None
        for b in LATENCY_BATCHES
    }
    return ModelScore(score(model, data), path.stat().st_size, lat[1], lat[32])


def validate(
    float_path: Path, quant_path: Path, data: ValidationSet, *, latency_repeats: int = 200
) -> ValidationReport:
    f = evaluate(float_path, data, latency_repeats=latency_repeats)
    q = evaluate(quant_path, data, latency_repeats=latency_repeats)
    return ValidationReport(
        metric_name="accuracy" if data.task == "classification" else "r2",
        rows=len(data.x),
        float_metric=f.metric,
        quant_metric=q.metric,
        float_size_bytes=f.size_bytes,
        quant_size_bytes=q.size_bytes,
        float_latency_ms_b1=f.latency_ms_b1,
        float_latency_ms_b32=f.latency_ms_b32,
        quant_latency_ms_b1=q.latency_ms_b1,
        quant_latency_ms_b32=q.latency_ms_b32,
    )


def release_gate(report: ValidationReport, max_drop: float = DEFAULT_MAX_DROP, *, force: bool = False) -> str | None:
    """Raise ValidationGateError when the metric dropped more than ``max_drop`` points.

    With ``force`` the drop is let through and the returned warning says so (it is also recorded
    in the manifest by the caller); otherwise returns None.
    """
    if report.drop_points <= max_drop:
        return None
    why = (
        f"quantized {report.metric_name} {report.quant_metric:.2f}% vs float {report.float_metric:.2f}% on "
        f"{report.rows} validation rows: a drop of {report.drop_points:.2f} points exceeds the gate of "
        f"{max_drop:g} point(s)"
    )
    if force:
        return f"release gate overridden (--force): {why}"
    saturation = (
        " (this x86-64 CPU has no VNNI, so its int8 kernels can saturate: try --reduce-range first)"
        if int8_saturation_risk() else ""
    )
    raise ValidationGateError(
        f"{why}{saturation}; try static quantization with more calibration rows, another --calibrate-method, "
        "--per-channel, or package the float model (--quantize none); --force packages it anyway"
    )
