"""The local inference API over TCP and a Unix socket, with a real onnxruntime model behind it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from device_agent.local_api import LocalApiServer, predict_over_http, request
from edgeops.errors import ModelLoadError
from edgeops.examples import TrainedExample
from edgeops.runtime import OnnxModel


class Serving:
    """predict/describe as the agent offers them, over a real onnxruntime session."""

    def __init__(self, model: OnnxModel | None) -> None:
        self.model = model
        self.calls = 0

    def predict(self, x: np.ndarray) -> dict[str, np.ndarray]:
        if self.model is None:
            raise ModelLoadError("no model is active on this device yet")
        self.calls += 1
        return self.model.run({"X": x})

    def describe(self) -> dict[str, object]:
        if self.model is None:
            return {"model": None, "version": None, "inputs": [], "outputs": []}
        return {"model": "digits", "version": "1", "inputs": [i.as_dict() for i in self.model.inputs],
                "outputs": [o.as_dict() for o in self.model.outputs]}


@pytest.fixture(params=["tcp", "unix"])
def api(request: pytest.FixtureRequest, digits: TrainedExample, tmp_path: Path) -> Iterator[tuple[str, Serving]]:
    serving = Serving(OnnxModel(digits.model_path))
    server = LocalApiServer(serving.predict, serving.describe,
                            unix_socket=tmp_path / "api.sock" if request.param == "unix" else None)
    server.start()
    yield server.address, serving
    server.stop()


def test_predict_matches_the_model(api: tuple[str, Serving], digits: TrainedExample) -> None:
    address, serving = api
    rows = digits.x_test[:3]
    body = predict_over_http(address, rows.tolist())
    expected = serving.model.run({"X": rows})  # type: ignore[union-attr]
    assert body["model"] == "digits" and body["version"] == "1"
    assert body["outputs"]["label"] == expected["label"].tolist()
    np.testing.assert_allclose(body["outputs"]["probabilities"], expected["probabilities"], rtol=1e-6)


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("POST", "/v1/predict", b"{not json", 400, "bad_json"),
        ("POST", "/v1/predict", {"rows": []}, 400, "bad_request"),
        ("POST", "/v1/predict", {"inputs": [[1.0, 2.0]]}, 422, "bad_input"),
        ("POST", "/v1/predict", {"inputs": [1.0] * 64}, 422, "bad_input"),
        ("POST", "/v1/predict", {"inputs": [[1.0] * 64, [1.0] * 63]}, 422, "bad_input"),
        ("POST", "/v1/predict", {"inputs": [["a"] * 64]}, 422, "bad_input"),
        ("GET", "/v1/predict", None, 405, "method_not_allowed"),
        ("GET", "/nope", None, 404, "not_found"),
    ],
)
def test_bad_requests_get_clear_4xx(api: tuple[str, Serving], method: str, path: str, body: object, status: int,
                                    code: str) -> None:
    address, _ = api
    got_status, got = request(address, method, path, body)
    assert got_status == status, got
    assert got["error"]["code"] == code and got["error"]["message"]
    # The server survives and still answers.
    assert request(address, "GET", "/v1/health")[0] == 200


def test_body_too_large_is_413(digits: TrainedExample) -> None:
    serving = Serving(OnnxModel(digits.model_path))
    server = LocalApiServer(serving.predict, serving.describe, max_body_bytes=1000)
    server.start()
    try:
        status, body = request(server.address, "POST", "/v1/predict", {"inputs": [[0.0] * 64] * 50})
        assert status == 413 and body["error"]["code"] == "too_large"
    finally:
        server.stop()


def test_no_model_is_503() -> None:
    serving = Serving(None)
    server = LocalApiServer(serving.predict, serving.describe)
    server.start()
    try:
        assert request(server.address, "GET", "/v1/health")[0] == 503
        status, body = request(server.address, "POST", "/v1/predict", {"inputs": [[0.0] * 64]})
        assert status == 503 and body["error"]["code"] == "no_model"
    finally:
        server.stop()
