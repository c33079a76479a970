"""Import: what a model file is, and a clear refusal for what is not a usable model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgeops.errors import ModelImportError, ModelLoadError
from edgeops.examples import TrainedExample
from edgeops.manifest import Runtime
from fleet_server.example_models import write_dense_tflite
from fleet_server.model_import import inspect_model


def test_onnx_signature_opset_size(digits: TrainedExample) -> None:
    info = inspect_model(digits.model_path)
    assert info.runtime is Runtime.ONNXRUNTIME and info.opset == 17 and info.opsets["ai.onnx.ml"] == 1
    assert info.inputs[0].name == "X" and info.inputs[0].shape == [None, 64]
    assert [o.name for o in info.outputs] == ["label", "probabilities"]
    assert info.size_bytes == digits.model_path.stat().st_size and info.ops["MatMul"] == 2
    assert info.to_dict()["inputs"][0]["dtype"] == "float32"


def test_tflite_signature(tmp_path: Path) -> None:
    path = write_dense_tflite(tmp_path / "d.tflite", np.ones((3, 4)), np.zeros(3))
    info = inspect_model(path)
    assert info.runtime is Runtime.TFLITE and info.opset == 3 and info.ops == {"FULLY_CONNECTED": 1}
    assert info.inputs[0].shape == [None, 4] and info.outputs[0].shape == [None, 3]


def _tiny(tmp_path: Path, opset: int, domain: str = "", op: str = "Relu") -> Path:
    node = helper.make_node(op, ["x"], ["y"], domain=domain)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])])
    imports = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(graph, opset_imports=imports, ir_version=8)
    path = tmp_path / f"m{opset}{domain}.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize(
    ("content", "suffix", "expected"),
    [
        (b"", ".onnx", "is not a model: the file is empty"),
        (b"\x00garbage", ".onnx", "is not a model"),
        (b"\x00garbage", ".tflite", "no TFLite FlatBuffer identifier"),
        (b"x", ".pt", "unknown model type"),
    ],
)
def test_not_a_model(tmp_path: Path, content: bytes, suffix: str, expected: str) -> None:
    path = tmp_path / f"junk{suffix}"
    path.write_bytes(content)
    with pytest.raises(ModelImportError, match=expected):
        inspect_model(path)


def test_corrupt_files(digits: TrainedExample, tmp_path: Path) -> None:
    data = digits.model_path.read_bytes()
    (tmp_path / "t.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelImportError):
        inspect_model(tmp_path / "t.onnx")
    tfl = write_dense_tflite(tmp_path / "d.tflite", np.ones((3, 4)), np.zeros(3)).read_bytes()
    (tmp_path / "t.tflite").write_bytes(tfl[: len(tfl) // 2])
    with pytest.raises(ModelImportError, match="corrupt"):
        inspect_model(tmp_path / "t.tflite")
    broken = onnx.load(str(digits.model_path))
    broken.graph.node[2].input[0] = "no_such_tensor"
    onnx.save(broken, str(tmp_path / "broken.onnx"))
    with pytest.raises(ModelImportError, match="corrupt"):
        inspect_model(tmp_path / "broken.onnx")
    assert issubclass(ModelImportError, ModelLoadError)


def test_unsupported_op_sets(tmp_path: Path) -> None:
    assert inspect_model(_tiny(tmp_path, 13)).opset == 13
    with pytest.raises(ModelImportError, match="unsupported op set: opset 999 is newer"):
        inspect_model(_tiny(tmp_path, 999))
    with pytest.raises(ModelImportError, match="unsupported op set: opset 1 is older"):
        inspect_model(_tiny(tmp_path, 1))
    with pytest.raises(ModelImportError, match=r"unsupported op set: custom operator domain\(s\) com.example"):
        inspect_model(_tiny(tmp_path, 13, domain="com.example", op="Magic"))
