"""Small real models made in code, nothing downloaded: tests, benches and the docs use them.

* :func:`build_digits_convnet`: a conv net over the 8x8 digits images built with ``onnx.helper``:
  fixed random 3x3 filters, ReLU, 2x2 max-pool, then a linear read-out fitted with scikit-learn on
  the pooled features. Its ``Gemm`` bias has the shape ``[1, 10]`` on purpose (the shape that
  breaks per-channel static quantization unless the quantizer reshapes it).
* :func:`write_dense_tflite`: a one-layer ``FULLY_CONNECTED`` ``.tflite`` written with the
  ``tflite`` package's FlatBuffers schema builders, with known weights, optionally as int8
  per-channel weights with float activations (the case tflite-runtime 2.14 gets wrong).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeops.errors import ConfigError
from edgeops.examples import TrainedExample

CONV_FILTERS = 8


def _digits(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:
        raise ConfigError("the example models need scikit-learn: pip install 'edgeops[sim]'") from exc
    data = load_digits()
    x = data.images.astype(np.float32)[:, None, :, :]
    y = data.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    return x_train, x_test, y_train, y_test


def build_digits_convnet(out_path: Path, *, opset: int = 13, seed: int = 0) -> TrainedExample:
    """Export the digits conv net to ``out_path``; input ``image`` [N, 1, 8, 8] of 0..16 pixels."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from sklearn.linear_model import LogisticRegression

    x_train, x_test, y_train, y_test = _digits(seed)
    rng = np.random.default_rng(seed)
    conv_w = (rng.standard_normal((CONV_FILTERS, 1, 3, 3)) * 0.5).astype(np.float32)
    conv_b = (rng.standard_normal(CONV_FILTERS) * 0.1).astype(np.float32)
    features = _pooled_features(x_train, conv_w, conv_b)
    readout = LogisticRegression(max_iter=3000, C=0.5).fit(features, y_train)
    gemm_w = readout.coef_.T.astype(np.float32)  # [features, classes]
    gemm_b = readout.intercept_.astype(np.float32)[None, :]  # [1, classes]: the awkward bias shape

    initializers = [
        numpy_helper.from_array(np.array(1 / 16, dtype=np.float32), "pixel_scale"),
        numpy_helper.from_array(conv_w, "conv_w"),
        numpy_helper.from_array(conv_b, "conv_b"),
        numpy_helper.from_array(gemm_w, "fc_w"),
        numpy_helper.from_array(gemm_b, "fc_b"),
    ]
    nodes = [
        helper.make_node("Mul", ["image", "pixel_scale"], ["scaled"], name="scale"),
        helper.make_node("Conv", ["scaled", "conv_w", "conv_b"], ["conv"], name="conv", pads=[1, 1, 1, 1],
                         kernel_shape=[3, 3]),
        helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
        helper.make_node("MaxPool", ["relu"], ["pool"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["pool"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc"),
        helper.make_node("Softmax", ["logits"], ["probabilities"], name="softmax", axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "digits_convnet",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="edgeops")
    model.ir_version = min(model.ir_version, 8)
    onnx.checker.check_model(model)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(model.SerializeToString())
    accuracy = float(readout.score(_pooled_features(x_test, conv_w, conv_b), y_test))
    return TrainedExample(out_path, accuracy, x_train, x_test, y_test)


def _pooled_features(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """What the graph computes before its read-out: conv 3x3 (pad 1), ReLU, 2x2 max-pool, flatten."""
    scaled = x[:, 0] / 16.0
    padded = np.pad(scaled, ((0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(1, 2))  # [N, 8, 8, 3, 3]
    conv = np.einsum("nhwij,fij->nfhw", windows, w[:, 0]) + b[None, :, None, None]
    relu = np.maximum(conv, 0)
    n, f, h, width = relu.shape
    pooled = relu.reshape(n, f, h // 2, 2, width // 2, 2).max(axis=(3, 5))
    return np.asarray(pooled.reshape(n, -1), dtype=np.float32)


def write_dense_tflite(
    out_path: Path,
    weights: np.ndarray,
    bias: np.ndarray,
    *,
    int8_per_channel: bool = False,
    input_name: str = "x",
    output_name: str = "y",
) -> Path:
    """Write ``y = x @ weights.T + bias`` as a ``.tflite`` (one FULLY_CONNECTED, batch dimension free).

    ``weights`` is [units, features]. With ``int8_per_channel`` the weights are stored as int8 with
    one scale per output unit and the activations stay float (a dynamic-range quantized model).
    """
    import flatbuffers
    import tflite

    weights = np.asarray(weights, dtype=np.float32)
    bias = np.asarray(bias, dtype=np.float32)
    units, features = weights.shape
    b = flatbuffers.Builder(1024)

    def vector_i32(values: list[int]) -> int:
        return int(b.CreateNumpyVector(np.asarray(values, dtype=np.int32)))

    def buffer(data: bytes) -> int:
        vec = b.CreateNumpyVector(np.frombuffer(data, dtype=np.uint8)) if data else None
        tflite.BufferStart(b)
        if vec is not None:
            tflite.BufferAddData(b, vec)
        return int(tflite.BufferEnd(b))

    if int8_per_channel:
        scales = np.maximum(np.abs(weights).max(axis=1), 1e-12) / 127.0
        stored = np.clip(np.round(weights / scales[:, None]), -127, 127).astype(np.int8).tobytes()
        weight_type = tflite.TensorType.INT8
    else:
        stored = weights.tobytes()
        weight_type = tflite.TensorType.FLOAT32
    buffers = [buffer(b""), buffer(b""), buffer(stored), buffer(bias.tobytes()), buffer(b"")]

    def quantization() -> int | None:
        if not int8_per_channel:
            return None
        scale_vec = b.CreateNumpyVector(scales.astype(np.float32))
        zero_vec = b.CreateNumpyVector(np.zeros(units, dtype=np.int64))
        tflite.QuantizationParametersStart(b)
        tflite.QuantizationParametersAddScale(b, scale_vec)
        tflite.QuantizationParametersAddZeroPoint(b, zero_vec)
        tflite.QuantizationParametersAddQuantizedDimension(b, 0)
        return int(tflite.QuantizationParametersEnd(b))

    def tensor(name: str, shape: list[int], signature: list[int] | None, ttype: int, buf: int,
               quant: int | None = None) -> int:
        name_off = b.CreateString(name)
        shape_off = vector_i32(shape)
        sig_off = vector_i32(signature) if signature is not None else None
        tflite.TensorStart(b)
        tflite.TensorAddShape(b, shape_off)
        if sig_off is not None:
            tflite.TensorAddShapeSignature(b, sig_off)
        tflite.TensorAddType(b, ttype)
        tflite.TensorAddBuffer(b, buf)
        tflite.TensorAddName(b, name_off)
        if quant is not None:
            tflite.TensorAddQuantization(b, quant)
        return int(tflite.TensorEnd(b))

    quant = quantization()
    tensors = [
        tensor(input_name, [1, features], [-1, features], tflite.TensorType.FLOAT32, 1),
        tensor("weights", [units, features], None, weight_type, 2, quant),
        tensor("bias", [units], None, tflite.TensorType.FLOAT32, 3),
        tensor(output_name, [1, units], [-1, units], tflite.TensorType.FLOAT32, 4),
    ]

    tflite.FullyConnectedOptionsStart(b)
    tflite.FullyConnectedOptionsAddFusedActivationFunction(b, tflite.ActivationFunctionType.NONE)
    if int8_per_channel:
        tflite.FullyConnectedOptionsAddAsymmetricQuantizeInputs(b, True)
    options = tflite.FullyConnectedOptionsEnd(b)
    op_inputs = vector_i32([0, 1, 2])
    op_outputs = vector_i32([3])
    tflite.OperatorStart(b)
    tflite.OperatorAddOpcodeIndex(b, 0)
    tflite.OperatorAddInputs(b, op_inputs)
    tflite.OperatorAddOutputs(b, op_outputs)
    tflite.OperatorAddBuiltinOptionsType(b, tflite.BuiltinOptions.FullyConnectedOptions)
    tflite.OperatorAddBuiltinOptions(b, options)
    operator = tflite.OperatorEnd(b)

    def table_vector(start: object, items: list[int]) -> int:
        start(b, len(items))  # type: ignore[operator]
        for item in reversed(items):
            b.PrependUOffsetTRelative(item)
        return int(b.EndVector())

    tensors_vec = table_vector(tflite.SubGraphStartTensorsVector, tensors)
    ops_vec = table_vector(tflite.SubGraphStartOperatorsVector, [operator])
    sg_inputs = vector_i32([0])
    sg_outputs = vector_i32([3])
    sg_name = b.CreateString("main")
    tflite.SubGraphStart(b)
    tflite.SubGraphAddTensors(b, tensors_vec)
    tflite.SubGraphAddInputs(b, sg_inputs)
    tflite.SubGraphAddOutputs(b, sg_outputs)
    tflite.SubGraphAddOperators(b, ops_vec)
    tflite.SubGraphAddName(b, sg_name)
    subgraph = tflite.SubGraphEnd(b)

    tflite.OperatorCodeStart(b)
    tflite.OperatorCodeAddDeprecatedBuiltinCode(b, tflite.BuiltinOperator.FULLY_CONNECTED)
    tflite.OperatorCodeAddBuiltinCode(b, tflite.BuiltinOperator.FULLY_CONNECTED)
    tflite.OperatorCodeAddVersion(b, 9 if int8_per_channel else 1)
    opcode = tflite.OperatorCodeEnd(b)

    codes_vec = table_vector(tflite.ModelStartOperatorCodesVector, [opcode])
    subgraphs_vec = table_vector(tflite.ModelStartSubgraphsVector, [subgraph])
    buffers_vec = table_vector(tflite.ModelStartBuffersVector, buffers)
    description = b.CreateString("edgeops dense example")
    tflite.ModelStart(b)
    tflite.ModelAddVersion(b, 3)
    tflite.ModelAddOperatorCodes(b, codes_vec)
    tflite.ModelAddSubgraphs(b, subgraphs_vec)
    tflite.ModelAddDescription(b, description)
    tflite.ModelAddBuffers(b, buffers_vec)
    model = tflite.ModelEnd(b)
    b.Finish(model, file_identifier=b"TFL3")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(bytes(b.Output()))
    return out_path
