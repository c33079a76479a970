"""int8 quantization of ONNX models with onnxruntime.quantization, with its known pitfalls handled.

Two recipes:

* ``dynamic``: weights of MatMul/Gemm become int8, activations are quantized on the fly. No
  calibration data. Right for MLPs and transformers.
* ``static``: weights *and* activations int8 in the QDQ format, activation ranges from a
  calibration set (MinMax, Entropy or Percentile). Right for conv nets.

Every recipe first runs onnxruntime's pre-processing (``quant_pre_process``: ONNX shape inference,
symbolic shape inference when sympy is installed, graph optimisation), then applies these rules:

* per-channel quantization on an opset below 13 writes an invalid model (``DequantizeLinear``
  has no ``axis`` before 13): the model is upgraded to opset 13 first (or refused with
  ``upgrade_opset=False``);
* QOperator with int8 activations runs several times slower than float on x86 (no fast int8
  x int8 kernels): refused, use QDQ (the default) or uint8 activations;
* dynamic quantization of Conv produces a ConvInteger graph slower than float: dynamic only ever
  quantizes MatMul/Gemm; a model with Conv and no MatMul/Gemm is refused with a pointer to static;
* per-channel static quantization of a Gemm whose bias is shaped ``[1, N]`` fails inside the
  quantizer: such biases are reshaped to ``[N]`` first (same result by Gemm broadcasting). The
  documented alternative is ``QuantizeBias=False`` (the bias stays float);
* on x86-64 CPUs without VNNI onnxruntime's uint8 x int8 kernels can saturate (pairs of products
  clip at int16), which per-channel weights make likely: ``reduce_range`` (7-bit weights) cannot
  saturate. It stays an explicit option, so the same inputs give the same bundle on every
  machine; the release gate names it when it refuses a model on such a CPU
  (``fleet_server.validate.int8_saturation_risk``).

The recipe and what the rules did go into the bundle manifest (``quantization``).
"""

from __future__ import annotations

import enum
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeops.errors import QuantizationError, ValidationDataError

log = logging.getLogger(__name__)

#: Opset at which DequantizeLinear gained ``axis`` (per-channel).
PER_CHANNEL_MIN_OPSET = 13
DYNAMIC_OP_TYPES = ["MatMul", "Gemm"]
#: Rows fed to the calibrator at most (more adds time, not accuracy, for MinMax on small models).
MAX_CALIBRATION_ROWS = 1000
CALIBRATION_BATCH = 32


class QuantMode(str, enum.Enum):
    NONE = "none"
    DYNAMIC = "dynamic"
    STATIC = "static"


class CalibrateMethod(str, enum.Enum):
    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"


class QuantFormatName(str, enum.Enum):
    QDQ = "qdq"
    QOPERATOR = "qoperator"


@dataclass(frozen=True)
class QuantizeOptions:
    """A quantization recipe. ``mode=none`` packages the float model."""

    mode: QuantMode = QuantMode.DYNAMIC
    per_channel: bool = False
    calibrate_method: CalibrateMethod = CalibrateMethod.MINMAX
    quant_format: QuantFormatName = QuantFormatName.QDQ
    #: "int8" or "uint8" activations (static); weights are always int8.
    activation_type: str = "int8"
    reduce_range: bool = False
    #: Upgrade opset < 13 to 13 for per-channel instead of refusing.
    upgrade_opset: bool = True
    max_calibration_rows: int = MAX_CALIBRATION_ROWS

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode.value,
            "per_channel": self.per_channel,
            "calibrate_method": self.calibrate_method.value if self.mode is QuantMode.STATIC else None,
            "format": self.quant_format.value if self.mode is QuantMode.STATIC else "qoperator-dynamic",
            "activation_type": self.activation_type if self.mode is QuantMode.STATIC else "uint8-dynamic",
            "weight_type": "int8",
            "reduce_range": self.reduce_range,
        }


@dataclass
class QuantizationResult:
    path: Path
    #: What goes into the manifest: the options plus what the pitfall rules did.
    recipe: dict[str, Any]
    notes: list[str] = field(default_factory=list)


class _ArrayReader:
    """A CalibrationDataReader over rows of a numpy array, in fixed batches (deterministic)."""

    def __init__(self, input_name: str, rows: np.ndarray, batch: int = CALIBRATION_BATCH) -> None:
        self._batches = [rows[i : i + batch] for i in range(0, len(rows), batch)]
        self._name = input_name
        self._iter: Iterator[np.ndarray] = iter(self._batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._iter, None)
        return None if batch is None else {self._name: batch}

    def rewind(self) -> None:
        self._iter = iter(self._batches)


def _default_opset(model: Any) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise QuantizationError("the model imports no default ONNX opset")


def _reshape_gemm_biases(model: Any) -> list[str]:
    """Give every Gemm bias initializer of shape [1, N] the shape [N]; returns the changed names."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    users: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    changed = []
    for node in model.graph.node:
        if node.op_type != "Gemm" or len(node.input) < 3 or node.input[2] not in inits:
            continue
        init = inits[node.input[2]]
        dims = list(init.dims)
        if len(dims) != 2 or dims[0] != 1:
            continue
        flat = numpy_helper.to_array(init).reshape(-1)
        if users.get(init.name, 0) == 1:
            init.CopyFrom(numpy_helper.from_array(flat, init.name))
            changed.append(init.name)
        else:  # shared with another node: give this Gemm its own [N] copy
            new_name = f"{init.name}_flat_{node.name or len(changed)}"
            model.graph.initializer.append(numpy_helper.from_array(flat, new_name))
            node.input[2] = new_name
            changed.append(new_name)
    return changed


def _op_types(model: Any) -> set[str]:
    return {n.op_type for n in model.graph.node}


def quantize_onnx(
    source: Path,
    destination: Path,
    options: QuantizeOptions,
    calibration: np.ndarray | None = None,
) -> QuantizationResult:
    """Quantize ``source`` into ``destination`` following ``options``; raise QuantizationError
    with the reason and the way out when the recipe cannot work on this model."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_dynamic,
        quantize_static,
    )

    if options.mode is QuantMode.NONE:
        raise QuantizationError("quantization mode 'none' has nothing to quantize")
    if source.suffix.lower() != ".onnx":
        raise QuantizationError(
            f"{source.name}: only ONNX models are quantized here; quantize TFLite models with the TFLite "
            "converter and package the resulting .tflite as is"
        )
    if options.quant_format is QuantFormatName.QOPERATOR and options.activation_type == "int8":
        raise QuantizationError(
            "QOperator with int8 activations runs several times slower than float on x86 (no int8 x int8 "
            "kernels); use the QDQ format (default) or --activation-type uint8"
        )
    if options.activation_type not in ("int8", "uint8"):
        raise QuantizationError(f"activation type must be int8 or uint8, got {options.activation_type!r}")
    notes: list[str] = []
    recipe = options.to_dict()
    try:
        model = onnx.load(str(source))
    except (OSError, ValueError) as exc:
        raise QuantizationError(f"cannot read {source}: {exc}") from exc
    ops = _op_types(model)
    opset = _default_opset(model)
    recipe["source_opset"] = opset

    if options.mode is QuantMode.DYNAMIC:
        if not ops & set(DYNAMIC_OP_TYPES):
            hint = " (it has Conv: use --quantize static with --calibration)" if "Conv" in ops else ""
            raise QuantizationError(
                f"{source.name}: dynamic quantization only quantizes MatMul/Gemm and the model has none{hint}; "
                "dynamic quantization of Conv would produce a ConvInteger graph slower than float"
            )
        if "Conv" in ops:
            notes.append("Conv left in float: dynamic quantization of Conv gives a slow ConvInteger graph")
    elif calibration is None or len(calibration) == 0:
        raise QuantizationError("static quantization needs calibration data (--calibration X.npz)")

    if options.per_channel and opset < PER_CHANNEL_MIN_OPSET:
        if not options.upgrade_opset:
            raise QuantizationError(
                f"{source.name}: per-channel quantization on opset {opset} writes an invalid model "
                f"(DequantizeLinear has no axis before opset {PER_CHANNEL_MIN_OPSET}); upgrade the opset first"
            )
        from onnx import version_converter

        try:
            model = version_converter.convert_version(model, PER_CHANNEL_MIN_OPSET)
        except (RuntimeError, ValueError) as exc:
            raise QuantizationError(
                f"{source.name}: per-channel needs opset {PER_CHANNEL_MIN_OPSET} and the upgrade from {opset} "
                f"failed ({exc}); re-export at opset >= {PER_CHANNEL_MIN_OPSET} or drop --per-channel"
            ) from exc
        notes.append(f"opset upgraded {opset} -> {PER_CHANNEL_MIN_OPSET} for per-channel quantization")
        recipe["opset_upgraded_to"] = PER_CHANNEL_MIN_OPSET

    if options.per_channel and options.mode is QuantMode.STATIC:
        reshaped = _reshape_gemm_biases(model)
        if reshaped:
            notes.append(f"Gemm bias reshaped [1, N] -> [N] for per-channel: {', '.join(reshaped)}")
            recipe["gemm_bias_reshaped"] = reshaped

    with tempfile.TemporaryDirectory(prefix="edgeops-quant-") as tmp:
        staged = Path(tmp) / "staged.onnx"
        prepped = Path(tmp) / "prepped.onnx"
        onnx.save(model, str(staged))
        try:
            import sympy  # noqa: F401  (symbolic shape inference needs it)

            symbolic = True
        except ImportError:
            symbolic = False
        try:
            # Graph optimisation is left to onnxruntime at load time: the optimised graph drops type
            # information of ai.onnx.ml outputs and renames tensors the QDQ quantizer then cannot find.
            quant_pre_process(str(staged), str(prepped), skip_symbolic_shape=not symbolic, skip_optimization=True)
        except Exception as exc:  # onnxruntime/onnx raise assorted errors here; translated at the boundary
            raise QuantizationError(f"{source.name}: pre-processing (shape inference) failed: {exc}") from exc
        recipe["preprocess"] = "onnx+symbolic shape inference" if symbolic else "onnx shape inference"
        extra = {"DefaultTensorType": onnx.TensorProto.FLOAT}
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            if options.mode is QuantMode.DYNAMIC:
                quantize_dynamic(
                    str(prepped), str(destination), op_types_to_quantize=DYNAMIC_OP_TYPES,
                    per_channel=options.per_channel, reduce_range=options.reduce_range,
                    weight_type=QuantType.QInt8, extra_options=extra,
                )
                recipe["op_types"] = DYNAMIC_OP_TYPES
            else:
                assert calibration is not None
                input_name, rows = _calibration_rows(prepped, calibration, options.max_calibration_rows)
                recipe["calibration_rows"] = len(rows)
                method = {
                    CalibrateMethod.MINMAX: CalibrationMethod.MinMax,
                    CalibrateMethod.ENTROPY: CalibrationMethod.Entropy,
                    CalibrateMethod.PERCENTILE: CalibrationMethod.Percentile,
                }[options.calibrate_method]
                quantize_static(
                    str(prepped), str(destination), _ArrayReader(input_name, rows),
                    quant_format=QuantFormat.QDQ if options.quant_format is QuantFormatName.QDQ
                    else QuantFormat.QOperator,
                    per_channel=options.per_channel, reduce_range=options.reduce_range,
                    activation_type=QuantType.QInt8 if options.activation_type == "int8" else QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=method, extra_options=extra,
                )
        except (QuantizationError, ValidationDataError):
            raise
        except Exception as exc:  # onnxruntime.quantization raises plain Exceptions; translated here
            raise QuantizationError(f"{source.name}: onnxruntime quantization failed: {exc}") from exc
    _check_loadable(destination)
    recipe["notes"] = notes
    for note in notes:
        log.info("quantize %s: %s", source.name, note)
    return QuantizationResult(path=destination, recipe=recipe, notes=notes)


def _calibration_rows(model_path: Path, calibration: np.ndarray, limit: int) -> tuple[str, np.ndarray]:
    """The calibration rows as the model's single input expects them (dtype, shape), capped at ``limit``."""
    from edgeops.errors import InferenceInputError
    from edgeops.manifest import Runtime
    from edgeops.runtime import check_input, load_model

    model = load_model(model_path, Runtime.ONNXRUNTIME)
    if len(model.inputs) != 1:
        raise QuantizationError(f"static quantization supports single-input models, this one has {len(model.inputs)}")
    spec = model.inputs[0]
    rows = np.asarray(calibration)[:limit]
    if len(rows) > CALIBRATION_BATCH:  # equal batches: the histogram calibrators stack them
        rows = rows[: len(rows) - len(rows) % CALIBRATION_BATCH]
    if rows.dtype.kind in "iu" and np.dtype(spec.dtype).kind == "f":
        rows = rows.astype(spec.dtype)
    try:
        return spec.name, np.ascontiguousarray(check_input(spec, rows))
    except InferenceInputError as exc:
        raise ValidationDataError(f"calibration data does not fit the model: {exc}") from exc


def _check_loadable(path: Path) -> None:
    from edgeops.errors import ModelLoadError
    from edgeops.manifest import Runtime
    from edgeops.runtime import load_model

    try:
        load_model(path, Runtime.ONNXRUNTIME)
    except ModelLoadError as exc:
        raise QuantizationError(f"the quantized model does not load: {exc}") from exc
