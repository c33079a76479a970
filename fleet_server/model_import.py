"""Import: read what a model file is (format, signature, op set, size) or refuse it with a reason.

Three kinds of refusal, each a :class:`~edgeops.errors.ModelImportError` whose message starts
with what is wrong: *not a model* (the bytes are not an ONNX protobuf / TFLite FlatBuffer),
*corrupt* (it parses but the ONNX checker or the runtime rejects its structure), *unsupported op
set* (an opset newer than this onnx/onnxruntime build knows, older than onnxruntime supports, or
an operator domain nobody here implements). The runtime itself loads the model last, so a model
that imports is one a device can run.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeops.bundle import runtime_for
from edgeops.errors import BundleError, ModelImportError, ModelLoadError
from edgeops.manifest import Runtime, TensorSpec
from edgeops.runtime import load_model

#: Oldest default-domain opset onnxruntime runs.
MIN_ONNX_OPSET = 7
#: Operator domains onnxruntime's CPU provider implements.
KNOWN_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "ai.onnx.preview.training"}
_TFLITE_IDENTIFIER = b"TFL3"


@dataclass(frozen=True)
class ModelInfo:
    """What import found out about a model file."""

    path: Path
    runtime: Runtime
    size_bytes: int
    sha256: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    #: Default-domain opset (ONNX) or the FlatBuffer schema version (TFLite).
    opset: int | None
    #: Every operator domain with its opset (ONNX).
    opsets: dict[str, int] = field(default_factory=dict)
    #: Operator type -> count.
    ops: dict[str, int] = field(default_factory=dict)
    producer: str = ""
    runtime_package: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.path.name,
            "runtime": self.runtime.value,
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
            "inputs": [i._to_fields() for i in self.inputs],
            "outputs": [o._to_fields() for o in self.outputs],
            "opset": self.opset,
            "opsets": dict(self.opsets),
            "ops": dict(self.ops),
            "producer": self.producer,
            "runtime_package": self.runtime_package,
        }


def inspect_model(path: Path) -> ModelInfo:
    """Import ``path`` (.onnx or .tflite) or raise ModelImportError saying why it is refused."""
    try:
        runtime = runtime_for(path)
    except BundleError as exc:
        raise ModelImportError(str(exc)) from None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelImportError(f"cannot read {path}: {exc.strerror}") from None
    if not data:
        raise ModelImportError(f"{path.name} is not a model: the file is empty")
    if runtime is Runtime.ONNXRUNTIME:
        return _inspect_onnx(path, data)
    return _inspect_tflite(path, data)


def _load_with_runtime(path: Path, runtime: Runtime, what: str) -> Any:
    try:
        return load_model(path, runtime)
    except ModelLoadError as exc:
        text = str(exc)
        if "INVALID_PROTOBUF" in text or "Protobuf parsing failed" in text:
            kind = "is not a model or is corrupt (not a readable ONNX protobuf)"
        elif "opset" in text.lower() or "domain_version" in text or "IR version" in text:
            kind = "uses an unsupported op set"
        else:
            kind = f"is corrupt or not a valid {what} model"
        raise ModelImportError(f"{path.name} {kind}: {text}") from exc


def _inspect_onnx(path: Path, data: bytes) -> ModelInfo:
    import onnx
    from google.protobuf.message import DecodeError

    try:
        proto = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError):
        # Keep onnxruntime's own words too: it is what the device would say.
        _load_with_runtime(path, Runtime.ONNXRUNTIME, "ONNX")
        raise ModelImportError(f"{path.name} is not a model or is corrupt (not a readable ONNX protobuf)") from None
    if proto.ir_version <= 0 or not proto.graph.node:
        raise ModelImportError(f"{path.name} is not a model: no graph inside (ir_version {proto.ir_version})")
    opsets = {imp.domain or "": int(imp.version) for imp in proto.opset_import}
    default = opsets.get("", opsets.get("ai.onnx"))
    newest = onnx.defs.onnx_opset_version()
    if default is None:
        raise ModelImportError(f"{path.name} uses an unsupported op set: it imports no default ONNX opset")
    if default > newest:
        raise ModelImportError(
            f"{path.name} uses an unsupported op set: opset {default} is newer than this onnx build knows "
            f"({newest}); upgrade onnx/onnxruntime or export with a lower target opset"
        )
    if default < MIN_ONNX_OPSET:
        raise ModelImportError(
            f"{path.name} uses an unsupported op set: opset {default} is older than onnxruntime supports "
            f"({MIN_ONNX_OPSET}); re-export it or upgrade it with onnx.version_converter"
        )
    unknown = sorted({n.domain for n in proto.graph.node if n.domain not in KNOWN_DOMAINS})
    if unknown:
        raise ModelImportError(
            f"{path.name} uses an unsupported op set: custom operator domain(s) {', '.join(unknown)} have no "
            "implementation on the devices"
        )
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelImportError(f"{path.name} is corrupt (the ONNX checker refused it): {first}") from None
    model = _load_with_runtime(path, Runtime.ONNXRUNTIME, "ONNX")
    return ModelInfo(
        path=path,
        runtime=Runtime.ONNXRUNTIME,
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        inputs=list(model.inputs),
        outputs=list(model.outputs),
        opset=default,
        opsets=opsets,
        ops=dict(sorted(Counter(n.op_type for n in proto.graph.node).items())),
        producer=f"{proto.producer_name} {proto.producer_version}".strip(),
        runtime_package="onnxruntime",
    )


def _inspect_tflite(path: Path, data: bytes) -> ModelInfo:
    if len(data) < 8 or data[4:8] != _TFLITE_IDENTIFIER:
        raise ModelImportError(f"{path.name} is not a model: no TFLite FlatBuffer identifier ({_TFLITE_IDENTIFIER!r})")
    ops: dict[str, int] = {}
    schema_version: int | None = None
    try:
        import tflite
    except ImportError:
        tflite = None  # the schema package is optional: the interpreter still checks the model
    if tflite is not None:
        try:
            fb = tflite.Model.GetRootAsModel(data, 0)
            schema_version = int(fb.Version())
            names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if isinstance(v, int)}
            codes = [fb.OperatorCodes(i) for i in range(fb.OperatorCodesLength())]
            counter: Counter[str] = Counter()
            for s in range(fb.SubgraphsLength()):
                graph = fb.Subgraphs(s)
                for o in range(graph.OperatorsLength()):
                    code = codes[graph.Operators(o).OpcodeIndex()]
                    builtin = max(int(code.BuiltinCode()), int(code.DeprecatedBuiltinCode()))
                    counter[names.get(builtin, f"op{builtin}")] += 1
            ops = dict(sorted(counter.items()))
        except (IndexError, ValueError, TypeError, AttributeError) as exc:  # what a damaged FlatBuffer raises
            raise ModelImportError(f"{path.name} is corrupt (TFLite FlatBuffer does not parse: {exc})") from None
        if schema_version != 3:
            raise ModelImportError(f"{path.name} uses an unsupported op set: TFLite schema version {schema_version}")
    model = _load_with_runtime(path, Runtime.TFLITE, "TFLite")
    return ModelInfo(
        path=path,
        runtime=Runtime.TFLITE,
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        inputs=list(model.inputs),
        outputs=list(model.outputs),
        opset=schema_version,
        ops=ops,
        runtime_package=getattr(model, "package", ""),
    )
