"""int8 quantization: both recipes on real models, each known pitfall handled or refused, the gate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from edgeops.bundle import build_bundle, open_bundle
from edgeops.errors import QuantizationError, ValidationDataError, ValidationGateError
from edgeops.examples import TrainedExample
from fleet_server.example_models import build_digits_convnet
from fleet_server.quantize import CalibrateMethod, QuantFormatName, QuantizeOptions, QuantMode, quantize_onnx
from fleet_server.validate import (
    ValidationReport,
    ValidationSet,
    cpu_flags,
    int8_saturation_risk,
    release_gate,
    validate,
)

STATIC = QuantMode.STATIC


@pytest.fixture(scope="module")
def conv11(tmp_path_factory: pytest.TempPathFactory) -> TrainedExample:
    """The conv net at opset 11 with its [1, N] Gemm bias: both per-channel pitfalls at once."""
    return build_digits_convnet(tmp_path_factory.mktemp("conv") / "conv.onnx", opset=11)


def _val(ex: TrainedExample) -> ValidationSet:
    return ValidationSet(ex.x_test, ex.y_test)


def test_dynamic_digits_mlp_inside_the_gate(digits: TrainedExample, tmp_path: Path) -> None:
    result = quantize_onnx(digits.model_path, tmp_path / "q.onnx", QuantizeOptions())
    assert result.recipe["mode"] == "dynamic" and result.recipe["op_types"] == ["MatMul", "Gemm"]
    ops = {n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops
    report = validate(digits.model_path, tmp_path / "q.onnx", _val(digits), latency_repeats=0)
    assert report.metric_name == "accuracy" and report.float_metric > 95
    assert report.drop_points <= 1.0 and release_gate(report) is None
    assert report.size_ratio < 0.6


@pytest.mark.parametrize("method", list(CalibrateMethod))
def test_static_per_channel_conv_net_upgrades_opset_and_reshapes_bias(
    conv11: TrainedExample, tmp_path: Path, method: CalibrateMethod
) -> None:
    # 7-bit weights: with full-range per-channel weights this net's first conv saturates about 2 % of
    # its product pairs on an x86-64 CPU without VNNI (CI's machines), costing ~1.3 points there and
    # nothing here. The accuracy assertion must hold on both kinds of machine.
    options = QuantizeOptions(mode=STATIC, per_channel=True, calibrate_method=method, reduce_range=True)
    result = quantize_onnx(conv11.model_path, tmp_path / "q.onnx", options, conv11.reference)
    assert result.recipe["opset_upgraded_to"] == 13 and result.recipe["gemm_bias_reshaped"] == ["fc_b"]
    assert result.recipe["reduce_range"] is True
    assert any("opset upgraded 11 -> 13" in n for n in result.notes)
    model = onnx.load(str(tmp_path / "q.onnx"))
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in model.graph.node}
    onnx.checker.check_model(model)  # a valid model, unlike per-channel QDQ left at opset 11
    report = validate(conv11.model_path, tmp_path / "q.onnx", _val(conv11), latency_repeats=0)
    assert report.float_metric > 90 and report.drop_points <= 1.0


def test_static_digits_mlp_per_tensor(digits: TrainedExample, tmp_path: Path) -> None:
    result = quantize_onnx(digits.model_path, tmp_path / "q.onnx", QuantizeOptions(mode=STATIC), digits.reference)
    assert result.recipe["calibration_rows"] > 0
    report = validate(digits.model_path, tmp_path / "q.onnx", _val(digits), latency_repeats=0)
    assert report.drop_points <= 1.0


def test_pitfalls_are_refused_with_a_reason(conv11: TrainedExample, tmp_path: Path) -> None:
    with pytest.raises(QuantizationError, match="QOperator with int8 activations"):
        quantize_onnx(conv11.model_path, tmp_path / "q.onnx",
                      QuantizeOptions(mode=STATIC, quant_format=QuantFormatName.QOPERATOR), conv11.reference)
    with pytest.raises(QuantizationError, match="upgrade the opset first"):
        quantize_onnx(conv11.model_path, tmp_path / "q.onnx",
                      QuantizeOptions(mode=STATIC, per_channel=True, upgrade_opset=False), conv11.reference)
    with pytest.raises(QuantizationError, match="needs calibration data"):
        quantize_onnx(conv11.model_path, tmp_path / "q.onnx", QuantizeOptions(mode=STATIC))
    with pytest.raises(ValidationDataError, match="does not fit"):
        quantize_onnx(conv11.model_path, tmp_path / "q.onnx", QuantizeOptions(mode=STATIC), np.zeros((40, 64)))


def test_dynamic_never_makes_conv_integer(conv11: TrainedExample, tmp_path: Path) -> None:
    result = quantize_onnx(conv11.model_path, tmp_path / "q.onnx", QuantizeOptions())  # Gemm only
    ops = {n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node}
    assert "ConvInteger" not in ops and "Conv" in ops
    assert any("Conv left in float" in n for n in result.notes)
    conv_only = tmp_path / "conv_only.onnx"
    model = onnx.load(str(conv11.model_path))
    keep = [n for n in model.graph.node if n.op_type in ("Mul", "Conv")]
    graph = onnx.helper.make_graph(keep, "c", list(model.graph.input),
                                   [onnx.helper.make_tensor_value_info("conv", onnx.TensorProto.FLOAT, None)],
                                   [i for i in model.graph.initializer if not i.name.startswith("fc")])
    onnx.save(onnx.helper.make_model(graph, opset_imports=model.opset_import, ir_version=8), str(conv_only))
    with pytest.raises(QuantizationError, match="ConvInteger"):
        quantize_onnx(conv_only, tmp_path / "q2.onnx", QuantizeOptions())


def test_quantization_and_bundle_are_deterministic(conv11: TrainedExample, tmp_path: Path) -> None:
    options = QuantizeOptions(mode=STATIC, per_channel=True)
    outs = []
    for i in range(2):
        q = quantize_onnx(conv11.model_path, tmp_path / f"q{i}.onnx", options, conv11.reference)
        build_bundle(q.path, tmp_path / f"b{i}.zip", name="conv", version="1", reference=conv11.reference,
                     created_at="2026-01-01T00:00:00Z", quantization=q.recipe, smoke_atol=1e-3)
        outs.append((tmp_path / f"b{i}.zip").read_bytes())
    assert outs[0] == outs[1]
    bundle = open_bundle(tmp_path / "b0.zip")
    assert bundle.manifest.quantization is not None and bundle.manifest.smoke is not None
    assert bundle.manifest.smoke.inputs[0].shape == [4, 1, 8, 8]


def _report(float_metric: float, quant_metric: float) -> ValidationReport:
    return ValidationReport("accuracy", 100, float_metric, quant_metric, 1000, 300)


def test_release_gate() -> None:
    assert release_gate(_report(97.0, 96.0)) is None
    with pytest.raises(ValidationGateError, match=r"drop of 1\.50 points exceeds the gate of 1 point"):
        release_gate(_report(97.0, 95.5))
    warning = release_gate(_report(97.0, 95.5), force=True)
    assert warning is not None and "overridden" in warning
    assert release_gate(_report(97.0, 95.5), max_drop=2.0) is None
    figures = _report(97.0, 96.0).to_manifest()
    assert figures["drop_points"] == 1.0 and figures["size_ratio"] == 0.3 and "float_latency_ms_b1" not in figures


def test_latency_is_measured_at_both_batch_sizes(digits: TrainedExample) -> None:
    report = validate(digits.model_path, digits.model_path, _val(digits), latency_repeats=5)
    for b in (1, 32):
        assert report.latency_ratio(b) is not None
        assert getattr(report, f"float_latency_ms_b{b}") > 0


def test_reduced_range_weights_are_seven_bit(conv11: TrainedExample, tmp_path: Path) -> None:
    from onnx import numpy_helper

    options = QuantizeOptions(mode=STATIC, per_channel=True, reduce_range=True)
    quantize_onnx(conv11.model_path, tmp_path / "q.onnx", options, conv11.reference)
    weights = [numpy_helper.to_array(i) for i in onnx.load(str(tmp_path / "q.onnx")).graph.initializer]
    conv_w = next(w for w in weights if w.dtype == np.int8 and w.ndim == 4)
    assert np.abs(conv_w.astype(np.int32)).max() <= 64  # |w| x 255 x 2 fits in int16: no saturation


def test_int8_saturation_risk_is_x86_without_vnni(tmp_path: Path) -> None:
    assert int8_saturation_risk("x86_64", ["sse2", "avx2", "fma"])
    assert not int8_saturation_risk("x86_64", ["avx2", "avx512f", "avx512_vnni"])
    assert not int8_saturation_risk("x86_64", ["avx2", "avx_vnni"])
    assert not int8_saturation_risk("aarch64", ["fp", "asimd"])
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2\n\nprocessor\t: 1\nflags\t\t: fpu sse2 avx2\n")
    assert cpu_flags(cpuinfo) == frozenset({"fpu", "sse2", "avx2"})
    assert cpu_flags(tmp_path / "missing") is None
