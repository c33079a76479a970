"""TFLite: a real .tflite written with the tflite schema builders, run with LiteRT, packaged in a bundle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeops.bundle import build_bundle, open_bundle
from edgeops.errors import InferenceInputError
from edgeops.manifest import Runtime
from edgeops.runtime import TfliteModel, load_model, run_smoke_test, tflite_interpreter_class
from fleet_server.example_models import write_dense_tflite

RNG = np.random.default_rng(7)
WEIGHTS = RNG.standard_normal((3, 5)).astype(np.float32)
BIAS = np.array([0.5, -1.0, 2.0], dtype=np.float32)


def _expected(x: np.ndarray) -> np.ndarray:
    return x @ WEIGHTS.T + BIAS


def test_litert_is_preferred() -> None:
    _, package = tflite_interpreter_class()
    assert package == "ai-edge-litert"


def test_dense_model_known_weights_any_batch(tmp_path: Path) -> None:
    model = load_model(write_dense_tflite(tmp_path / "d.tflite", WEIGHTS, BIAS), Runtime.TFLITE)
    assert isinstance(model, TfliteModel)
    assert model.inputs[0].shape == [None, 5] and model.outputs[0].name == "y"
    for batch in (1, 32, 7, 1):
        x = RNG.standard_normal((batch, 5)).astype(np.float32)
        np.testing.assert_allclose(model.run({"x": x})["y"], _expected(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(InferenceInputError):
        model.run({"x": np.zeros((2, 4), dtype=np.float32)})


def test_int8_per_channel_weights_with_float_activations(tmp_path: Path) -> None:
    """The dynamic-range case tflite-runtime 2.14 gets wrong: LiteRT stays within quantization error."""
    model = load_model(write_dense_tflite(tmp_path / "q.tflite", WEIGHTS, BIAS, int8_per_channel=True),
                       Runtime.TFLITE)
    x = RNG.standard_normal((32, 5)).astype(np.float32)
    error = np.abs(model.run({"x": x})["y"] - _expected(x))
    scale = np.abs(_expected(x)).max()
    assert error.max() < 0.05 * scale


def test_tflite_bundle_and_smoke_vectors(tmp_path: Path) -> None:
    path = write_dense_tflite(tmp_path / "d.tflite", WEIGHTS, BIAS)
    reference = RNG.standard_normal((300, 5))
    built = build_bundle(path, tmp_path / "b.zip", name="dense", version="1", reference=reference,
                         created_at="2026-01-01T00:00:00Z")
    again = build_bundle(path, tmp_path / "c.zip", name="dense", version="1", reference=reference,
                         created_at="2026-01-01T00:00:00Z")
    assert (tmp_path / "b.zip").read_bytes() == (tmp_path / "c.zip").read_bytes()
    bundle = open_bundle(tmp_path / "b.zip", expected_digest=built.digest)
    assert bundle.manifest.runtime is Runtime.TFLITE and bundle.manifest.model_file == "model.tflite"
    assert again.digest == built.digest and bundle.manifest.smoke is not None
    run_smoke_test(load_model(path, Runtime.TFLITE), bundle.manifest.smoke)
