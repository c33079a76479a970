"""Inference runtimes behind one small interface, with input checking at the boundary.

The agent, the bundle builder (for smoke vectors) and the tests all load models through
:func:`load_model`, so a wrong shape or dtype is refused the same way everywhere, with an
``InferenceInputError`` that says what was expected, instead of a runtime-specific exception.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgeops.errors import InferenceInputError, ModelLoadError, SmokeTestError
from edgeops.manifest import Runtime, SmokeTensor, SmokeTest, TensorSpec

log = logging.getLogger(__name__)

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int16)": "int16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


class Model(Protocol):
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def _dim(d: object) -> int | None:
    return d if isinstance(d, int) and d >= 0 else None


def check_input(spec: TensorSpec, array: np.ndarray) -> np.ndarray:
    """Return ``array`` as the spec's dtype and shape, or raise InferenceInputError.

    Integer/float widening is not done silently: a float64 batch for a float32 model is converted
    (lossy but expected from numpy users), anything else of the wrong kind is refused.
    """
    if not isinstance(array, np.ndarray):
        raise InferenceInputError(f"input {spec.name!r}: expected a numpy array, got {type(array).__name__}")
    want = np.dtype(spec.dtype)
    if array.dtype != want:
        if array.dtype.kind == "f" and want.kind == "f":
            array = array.astype(want)
        else:
            raise InferenceInputError(f"input {spec.name!r}: dtype {array.dtype} where {want} is expected")
    if array.ndim != len(spec.shape):
        raise InferenceInputError(
            f"input {spec.name!r}: {array.ndim}-D array of shape {list(array.shape)} where shape "
            f"{_shape_text(spec.shape)} is expected"
        )
    for got, want_dim in zip(array.shape, spec.shape, strict=True):
        if want_dim is not None and got != want_dim:
            raise InferenceInputError(
                f"input {spec.name!r}: shape {list(array.shape)} where {_shape_text(spec.shape)} is expected"
            )
    return array


def _shape_text(shape: list[int | None]) -> str:
    return "[" + ", ".join("N" if d is None else str(d) for d in shape) + "]"


class OnnxModel:
    """An onnxruntime session with a fixed thread count and checked inputs."""

    def __init__(self, path: Path, intra_op_threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... hierarchy
            raise ModelLoadError(f"onnxruntime refused {path.name}: {exc}") from exc
        self.inputs = [self._spec(a) for a in self._session.get_inputs()]
        self.outputs = [self._spec(a) for a in self._session.get_outputs()]
        self._output_names = [o.name for o in self.outputs]
        self._input_names = {s.name for s in self.inputs}
        # The hot path's checks, precomputed: dtype, rank and the fixed dimensions per input.
        self._fast = {s.name: (np.dtype(s.dtype), len(s.shape), tuple((i, d) for i, d in enumerate(s.shape)
                                                                        if d is not None)) for s in self.inputs}
        self._specs = {s.name: s for s in self.inputs}

    @staticmethod
    def _spec(arg: object) -> TensorSpec:
        type_name = getattr(arg, "type", "")
        dtype = _ORT_TYPES.get(type_name)
        if dtype is None:
            raise ModelLoadError(f"tensor {getattr(arg, 'name', '?')!r} has unsupported type {type_name}")
        return TensorSpec(name=arg.name, dtype=dtype, shape=[_dim(d) for d in arg.shape])  # type: ignore[attr-defined]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if feeds.keys() != self._input_names:
            raise InferenceInputError(f"inputs {sorted(feeds)} where {sorted(self._input_names)} are expected")
        checked: dict[str, np.ndarray] = {}
        for name, array in feeds.items():
            dtype, rank, fixed = self._fast[name]
            # Fast path (the agent's per-inference cost): exact dtype, rank and fixed dimensions.
            ok = type(array) is np.ndarray and (array.dtype is dtype or array.dtype == dtype) and array.ndim == rank
            if ok:
                shape = array.shape
                for axis, size in fixed:
                    if shape[axis] != size:
                        ok = False
                        break
            checked[name] = array if ok else check_input(self._specs[name], array)
        results = self._session.run(self._output_names, checked)
        return dict(zip(self._output_names, results, strict=True))

    def run_single(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """``run`` for a single-input model without building a feed mapping first (the agent's hot path)."""
        if len(self.inputs) != 1:
            return self.run({s.name: x for s in self.inputs})
        name = self.inputs[0].name
        dtype, rank, fixed = self._fast[name]
        ok = type(x) is np.ndarray and (x.dtype is dtype or x.dtype == dtype) and x.ndim == rank
        if ok:
            shape = x.shape
            for axis, size in fixed:
                if shape[axis] != size:
                    ok = False
                    break
        results = self._session.run(self._output_names, {name: x if ok else check_input(self.inputs[0], x)})
        return dict(zip(self._output_names, results, strict=True))


def tflite_interpreter_class() -> tuple[Any, str]:
    """The TFLite interpreter class and the package it came from: LiteRT first, tflite-runtime second.

    LiteRT (``ai-edge-litert``) is preferred: tflite-runtime 2.14, its last release, needs
    numpy < 2 and returns wrong results for int8 per-channel weights with float activations
    (dynamic-range quantized models); LiteRT computes them correctly.
    """
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai-edge-litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter as LegacyInterpreter
    except ImportError:
        raise ModelLoadError(
            "no TFLite runtime installed: pip install 'edgeops[tflite]' (ai-edge-litert)"
        ) from None
    log.warning(
        "using tflite-runtime: it needs numpy < 2 and gives wrong results for int8 per-channel weights "
        "with float activations; install ai-edge-litert (LiteRT) instead"
    )
    return LegacyInterpreter, "tflite-runtime"


class TfliteModel:
    """A TFLite interpreter (LiteRT or tflite-runtime) behind the same checked interface."""

    def __init__(self, path: Path, intra_op_threads: int = 1) -> None:
        interpreter_cls, self.package = tflite_interpreter_class()
        try:
            self._interpreter = interpreter_cls(model_path=str(path), num_threads=intra_op_threads)
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:  # what both interpreters raise for a bad model
            raise ModelLoadError(f"{self.package} refused {path.name}: {exc}") from exc
        self._lock = threading.Lock()
        self._input_details = self._interpreter.get_input_details()
        self._output_details = self._interpreter.get_output_details()
        self.inputs = [self._spec(d) for d in self._input_details]
        self.outputs = [self._spec(d) for d in self._output_details]
        self._batch_shapes: dict[int, tuple[int, ...]] = {
            int(d["index"]): tuple(int(x) for x in d["shape"]) for d in self._input_details
        }

    @staticmethod
    def _spec(detail: Mapping[str, Any]) -> TensorSpec:
        dtype = np.dtype(detail["dtype"]).name
        if dtype not in _TFLITE_DTYPES:
            raise ModelLoadError(f"tensor {detail['name']!r} has unsupported type {dtype}")
        signature = detail.get("shape_signature")
        dims = signature if signature is not None and len(signature) else detail["shape"]
        return TensorSpec(name=str(detail["name"]), dtype=dtype, shape=[_dim(int(d)) for d in dims])

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        expected = {s.name for s in self.inputs}
        if set(feeds) != expected:
            raise InferenceInputError(f"inputs {sorted(feeds)} where {sorted(expected)} are expected")
        checked = [(d, check_input(s, feeds[s.name])) for d, s in zip(self._input_details, self.inputs, strict=True)]
        with self._lock:
            resized = False
            for detail, array in checked:
                index = int(detail["index"])
                if self._batch_shapes[index] != array.shape:
                    self._interpreter.resize_tensor_input(index, list(array.shape))
                    self._batch_shapes[index] = array.shape
                    resized = True
            if resized:
                self._interpreter.allocate_tensors()
            for detail, array in checked:
                self._interpreter.set_tensor(int(detail["index"]), np.ascontiguousarray(array))
            self._interpreter.invoke()
            return {
                spec.name: np.array(self._interpreter.get_tensor(int(d["index"])))
                for d, spec in zip(self._output_details, self.outputs, strict=True)
            }


_TFLITE_DTYPES = {"float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64", "bool"}


def load_model(path: Path, runtime: Runtime, intra_op_threads: int = 1) -> Model:
    """Load a model file with the runtime its manifest names."""
    if runtime is Runtime.ONNXRUNTIME:
        return OnnxModel(path, intra_op_threads)
    if runtime is Runtime.TFLITE:
        return TfliteModel(path, intra_op_threads)
    raise ModelLoadError(f"runtime {runtime.value!r} is not supported by this build")


def _to_smoke_tensor(name: str, array: np.ndarray) -> SmokeTensor:
    return SmokeTensor(
        name=name, dtype=str(array.dtype), shape=list(array.shape), data=[float(v) for v in array.ravel()]
    )


def make_smoke_test(model: Model, inputs: Mapping[str, np.ndarray], atol: float = 1e-4) -> SmokeTest:
    """Record the model's own outputs for ``inputs`` as the bundle's smoke vectors."""
    outputs = model.run(inputs)
    return SmokeTest(
        inputs=[_to_smoke_tensor(k, np.asarray(v)) for k, v in inputs.items()],
        outputs=[_to_smoke_tensor(k, np.asarray(v)) for k, v in outputs.items()],
        atol=atol,
    )


def run_smoke_test(model: Model, smoke: SmokeTest) -> None:
    """Raise SmokeTestError unless the model reproduces every expected output within tolerance."""
    feeds = {t.name: np.asarray(t.data, dtype=t.dtype).reshape(t.shape) for t in smoke.inputs}
    try:
        got = model.run(feeds)
    except InferenceInputError as exc:
        raise SmokeTestError(f"smoke inputs do not fit the model: {exc}") from exc
    for expected in smoke.outputs:
        if expected.name not in got:
            raise SmokeTestError(f"model has no output {expected.name!r}")
        want = np.asarray(expected.data, dtype=np.float64).reshape(expected.shape)
        have = np.asarray(got[expected.name], dtype=np.float64)
        if have.shape != want.shape or not np.allclose(have, want, atol=smoke.atol, rtol=smoke.rtol):
            worst = float(np.max(np.abs(have - want))) if have.shape == want.shape else float("nan")
            raise SmokeTestError(
                f"output {expected.name!r} differs from its smoke vector (max abs error {worst:.3g}, "
                f"atol {smoke.atol})"
            )
