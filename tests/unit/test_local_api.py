"""The local inference API over TCP and a Unix socket: answers, input policy and every error shape."""

from __future__ import annotations

import http.client
import json
import logging
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from device_agent.local_api import (
    ApiRequestError,
    LocalApiError,
    LocalApiServer,
    api_request,
    inputs_to_array,
    predict_over_http,
    request,
)
from edgeops.errors import InferenceInputError, ModelLoadError
from edgeops.examples import TrainedExample
from edgeops.runtime import OnnxModel


def make_api(*args: Any, **kwargs: Any) -> LocalApiServer:
    """A LocalApiServer whose stop() returns quickly (tests start and stop many)."""
    return LocalApiServer(*args, poll_interval_s=0.02, **kwargs)


class FakeModel:
    """A float32 [N, 3] model: outputs the row sums; switchable to 'no model' and to failures."""

    def __init__(self, dtype: str = "float32") -> None:
        self.active = True
        self.dtype = dtype
        self.fail_with: Exception | None = None
        self.seen: list[np.ndarray] = []

    def describe(self) -> dict[str, Any]:
        if not self.active:
            return {"model": None, "version": None, "inputs": [], "outputs": []}
        return {"model": "fake", "version": "1.0.0", "inputs": [{"name": "x", "dtype": self.dtype, "shape": [None, 3]}],
                "outputs": [{"name": "sum", "dtype": "float64", "shape": [None]}]}

    def predict(self, x: np.ndarray) -> dict[str, np.ndarray]:
        if not self.active:
            raise ModelLoadError("no model is active on this device yet")
        if self.fail_with is not None:
            raise self.fail_with
        self.seen.append(x)
        return {"sum": x.astype(np.float64).sum(axis=1), "first": x[:, 0]}


@pytest.fixture
def fake() -> FakeModel:
    return FakeModel()


@pytest.fixture
def server(fake: FakeModel) -> Iterator[LocalApiServer]:
    api = make_api(fake.predict, fake.describe, max_body_bytes=4096)
    api.start()
    yield api
    api.stop()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """Unix socket paths must stay under 108 bytes; pytest's tmp_path can be longer."""
    path = Path(tempfile.mkdtemp(prefix="eo-api-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def post(address: str, body: bytes, path: str = "/v1/predict") -> tuple[int, dict[str, Any]]:
    return api_request(address, "POST", path, body)


def assert_error(reply: tuple[int, dict[str, Any]], status: int, code: str) -> str:
    got_status, body = reply
    assert got_status == status, body
    assert set(body) >= {"error"} and body["error"]["code"] == code
    message = body["error"]["message"]
    assert isinstance(message, str) and message and "Traceback" not in message
    return message


# --- the happy path ----------------------------------------------------------------------------


def test_predict_returns_outputs_model_and_version(server: LocalApiServer, fake: FakeModel) -> None:
    reply = predict_over_http(server.address, [[1, 2, 3], [4.5, 5, 6]])
    assert reply == {"outputs": {"sum": [6.0, 15.5], "first": [1.0, 4.5]}, "model": "fake", "version": "1.0.0"}
    assert fake.seen[0].dtype == np.float32 and fake.seen[0].shape == (2, 3)


def test_health_and_model(server: LocalApiServer, fake: FakeModel) -> None:
    assert api_request(server.address, "GET", "/v1/health") == (200, {"status": "ok", "model": "fake",
                                                                       "version": "1.0.0"})
    status, body = api_request(server.address, "GET", "/v1/model")
    assert status == 200 and body == fake.describe()
    fake.active = False
    status, body = api_request(server.address, "GET", "/v1/health")
    assert status == 503 and body["status"] == "no_model" and body["error"]["code"] == "no_model"


def test_nan_and_null_are_passed_on_as_nan(server: LocalApiServer, fake: FakeModel) -> None:
    reply = predict_over_http(server.address, [[1, None, 3], [float("nan"), 1, 1]])
    sent = fake.seen[0]
    assert np.isnan(sent[0, 1]) and np.isnan(sent[1, 0])
    assert reply["outputs"]["sum"] == [None, None]  # NaN outputs travel as null (JSON has no NaN)
    assert reply["outputs"]["first"] == [1.0, None]


def test_address_forms(server: LocalApiServer, short_dir: Path, fake: FakeModel) -> None:
    assert server.address.startswith("http://127.0.0.1:") and not server.address.endswith(":0")
    with make_api(fake.predict, fake.describe, unix_socket=short_dir / "api.sock") as unix:
        assert unix.address == f"unix:{short_dir / 'api.sock'}"
    with pytest.raises(RuntimeError):
        _ = make_api(fake.predict, fake.describe).address


def test_request_helper_encodes_values(server: LocalApiServer) -> None:
    status, body = request(server.address, "POST", "/v1/predict", {"inputs": np.ones((1, 3), dtype=np.float32)})
    assert status == 200 and body["outputs"]["sum"] == [3.0]
    assert request(server.address, "POST", "/v1/predict", b"{")[1]["error"]["code"] == "bad_json"


def test_keep_alive_survives_errors(server: LocalApiServer) -> None:
    """Several requests, including failures with bodies, on one HTTP/1.1 connection."""
    port = int(server.address.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for method, path, body, status in [
            ("POST", "/v1/predict", b'{"inputs": [[1, 2, 3]]}', 200),
            ("POST", "/nowhere", b'{"inputs": [[1, 2, 3]]}', 404),
            ("PUT", "/v1/predict", b"ignored body", 405),
            ("POST", "/v1/predict", b'{"inputs": [[1, 2]]}', 422),
            ("GET", "/v1/health", None, 200),
        ]:
            conn.request(method, path, body=body)
            response = conn.getresponse()
            assert response.status == status
            json.loads(response.read())
    finally:
        conn.close()


# --- errors ------------------------------------------------------------------------------------


def test_invalid_json_is_400(server: LocalApiServer) -> None:
    assert_error(post(server.address, b"{not json"), 400, "bad_json")
    assert_error(post(server.address, b"\xff\xfe"), 400, "bad_json")
    assert_error(post(server.address, b"[[1, 2, 3]]"), 400, "bad_request")
    assert_error(post(server.address, b'{"rows": [[1, 2, 3]]}'), 400, "bad_request")
    message = assert_error(post(server.address, b'{"inputs": [[1, 2, 3]], "extra": 1}'), 400, "bad_request")
    assert "extra" in message


@pytest.mark.parametrize(
    ("inputs", "words"),
    [
        ([[1, 2]], "shape"),
        ([1, 2, 3], "shape"),
        ([[[1, 2, 3]]], "shape"),
        ([[1, 2, 3], [4, 5]], "ragged"),
        ([[1, 2, 3], 4], "ragged"),
        ([[1, 2, [3]]], "ragged"),
        ([[1, "2", 3]], "non-numeric"),
        ([[1, True, 3]], "non-numeric"),
        ([[1, {"a": 1}, 3]], "objects"),
        ([], "no values"),
        ([[]], "no values"),
        ("1,2,3", "list of rows"),
        ([[1, 2, 1e39]], "range"),
        ([[1, 2, 10**400]], "range"),
    ],
)
def test_wrong_shape_or_dtype_is_422_with_a_clear_message(server: LocalApiServer, inputs: Any, words: str) -> None:
    message = assert_error(post(server.address, json.dumps({"inputs": inputs}).encode()), 422, "bad_input")
    assert words in message


def test_infinity_is_refused(server: LocalApiServer) -> None:
    message = assert_error(post(server.address, b'{"inputs": [[1, Infinity, 3]]}'), 422, "bad_input")
    assert "infinite" in message


def test_the_predict_functions_own_input_error_is_422(server: LocalApiServer, fake: FakeModel) -> None:
    fake.fail_with = InferenceInputError("input 'x': values must be sorted")
    assert "sorted" in assert_error(post(server.address, b'{"inputs": [[1, 2, 3]]}'), 422, "bad_input")


def test_no_active_model_is_503(server: LocalApiServer, fake: FakeModel) -> None:
    fake.active = False
    with pytest.raises(ApiRequestError) as info:
        predict_over_http(server.address, [[1, 2, 3]])
    assert (info.value.status, info.value.error_code) == (503, "no_model")
    # The model disappearing between describe() and predict() is a 503 too.
    fake.active = True
    fake.fail_with = ModelLoadError("model unloaded")
    assert_error(post(server.address, b'{"inputs": [[1, 2, 3]]}'), 503, "model_load_failed")


def test_a_crashing_predict_is_500_without_traceback(server: LocalApiServer, fake: FakeModel,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    fake.fail_with = ZeroDivisionError("secret internals")
    with caplog.at_level(logging.INFO, logger="device_agent.local_api"):
        status, body = post(server.address, b'{"inputs": [[1, 2, 3]]}')
    assert status == 500 and body["error"]["code"] == "internal_error"
    assert "secret" not in json.dumps(body)
    assert "ZeroDivisionError" in caplog.text  # the traceback is in the agent's log only
    assert api_request(server.address, "GET", "/v1/health")[0] == 200  # and the server still serves


def test_body_too_large_is_413(server: LocalApiServer, fake: FakeModel) -> None:
    rows = [[1.0, 2.0, 3.0]] * 400  # ~ 6 KB > 4096
    message = assert_error(post(server.address, json.dumps({"inputs": rows}).encode()), 413, "too_large")
    assert "4096" in message
    assert fake.seen == []


def test_expect_100_continue_gets_413_before_the_body(server: LocalApiServer) -> None:
    port = int(server.address.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 999999\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        reply = sock.makefile("rb").read()  # the server answers and closes without waiting for the body
    assert reply.startswith(b"HTTP/1.1 413")
    assert b'"too_large"' in reply


def test_missing_content_length_is_411(server: LocalApiServer) -> None:
    port = int(server.address.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n0\r\n\r\n")
        reply = sock.makefile("rb").read()
    assert reply.startswith(b"HTTP/1.1 411") and b'"length_required"' in reply


def test_unknown_route_is_404_and_wrong_method_405(server: LocalApiServer) -> None:
    assert_error(api_request(server.address, "GET", "/v2/predict"), 404, "not_found")
    assert_error(api_request(server.address, "GET", "/v1/predict"), 405, "method_not_allowed")
    assert_error(api_request(server.address, "DELETE", "/v1/model"), 405, "method_not_allowed")
    assert_error(post(server.address, b"{}", path="/v1/health"), 405, "method_not_allowed")


def test_malformed_requests_get_the_json_error_shape(server: LocalApiServer) -> None:
    port = int(server.address.rsplit(":", 1)[1])
    for raw, status in [(b"GARBAGE\r\n\r\n", b"400"), (b"BREW /v1/predict HTTP/1.1\r\nHost: x\r\n\r\n", b"501")]:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(raw)
            reply = sock.makefile("rb").read()
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.split()[1] == status
        assert set(json.loads(body)["error"]) == {"code", "message"}


def test_each_failed_request_is_logged_once(server: LocalApiServer, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="device_agent.local_api"):
        post(server.address, b'{"inputs": [[1, 2]]}')
    lines = [r.getMessage() for r in caplog.records if "request failed" in r.getMessage()]
    assert len(lines) == 1
    assert "status=422" in lines[0] and "code=bad_input" in lines[0] and "path=/v1/predict" in lines[0]


def test_multi_input_models_are_refused_clearly(fake: FakeModel) -> None:
    def describe() -> dict[str, Any]:
        spec = {"name": "a", "dtype": "float32", "shape": [None, 1]}
        return {"model": "two", "version": "1", "inputs": [spec, {**spec, "name": "b"}], "outputs": []}

    with make_api(fake.predict, describe) as api:
        assert "single-input" in assert_error(post(api.address, b'{"inputs": [[1]]}'), 501, "unsupported_model")


# --- dtype policy ------------------------------------------------------------------------------


def test_integer_and_bool_inputs() -> None:
    assert inputs_to_array([[1, 2], [3, 4]], "int64").dtype == np.int64
    assert inputs_to_array([[0, 255]], "uint8").tolist() == [[0, 255]]
    for bad in ([[1.5, 2]], [[None, 2]], [[True, 2]], [[256, 1]], [[-1, 1]]):
        with pytest.raises(InferenceInputError):
            inputs_to_array(bad, "uint8")
    assert inputs_to_array([[True, False]], "bool").dtype == np.bool_
    with pytest.raises(InferenceInputError):
        inputs_to_array([[1, 0]], "bool")
    assert inputs_to_array([[1, 2.5]], "float64").dtype == np.float64


def test_integer_model_over_http() -> None:
    model = FakeModel(dtype="int32")
    with make_api(model.predict, model.describe) as api:
        assert predict_over_http(api.address, [[1, 2, 3]])["outputs"]["sum"] == [6.0]
        assert model.seen[0].dtype == np.int32
        assert "integer" in assert_error(post(api.address, b'{"inputs": [[1, 2, 3.5]]}'), 422, "bad_input")


# --- Unix socket -------------------------------------------------------------------------------


def test_unix_socket_serves_and_cleans_up(fake: FakeModel, short_dir: Path) -> None:
    path = short_dir / "api.sock"
    api = make_api(fake.predict, fake.describe, unix_socket=path)
    api.start()
    try:
        assert path.is_socket() and (path.stat().st_mode & 0o777) == 0o660
        reply = predict_over_http(api.address, [[1, 2, 3]])
        assert reply["outputs"]["sum"] == [6.0]
        assert_error(post(api.address, b"{oops"), 400, "bad_json")
        assert api_request(api.address, "GET", "/v1/health")[0] == 200
        with pytest.raises(LocalApiError, match="in use"):
            make_api(fake.predict, fake.describe, unix_socket=path).start()
    finally:
        api.stop()
    assert not path.exists()
    api.stop()  # idempotent


def test_stale_socket_is_replaced_other_files_are_not(fake: FakeModel, short_dir: Path) -> None:
    stale = short_dir / "stale.sock"
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(stale))
    leftover.close()  # a socket file nobody listens on: what a crashed agent leaves
    with make_api(fake.predict, fake.describe, unix_socket=stale) as api:
        assert predict_over_http(api.address, [[0, 0, 1]])["outputs"]["sum"] == [1.0]
    regular = short_dir / "notes.txt"
    regular.write_text("keep me")
    with pytest.raises(LocalApiError, match="not a socket"):
        make_api(fake.predict, fake.describe, unix_socket=regular).start()
    assert regular.read_text() == "keep me"
    with pytest.raises(LocalApiError, match="longer"):
        make_api(fake.predict, fake.describe, unix_socket=short_dir / ("x" * 120)).start()


def test_port_in_use_is_a_local_api_error(server: LocalApiServer, fake: FakeModel) -> None:
    port = int(server.address.rsplit(":", 1)[1])
    with pytest.raises(LocalApiError) as info:
        make_api(fake.predict, fake.describe, port=port).start()
    assert info.value.code == "local_api_unavailable"


# --- a real model ------------------------------------------------------------------------------


class OnnxService:
    def __init__(self, path: Path) -> None:
        self.model = OnnxModel(path)

    def predict(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return self.model.run({"X": x})

    def describe(self) -> dict[str, Any]:
        return {"model": "digits", "version": "1.0.0", "inputs": [s.as_dict() for s in self.model.inputs],
                "outputs": [s.as_dict() for s in self.model.outputs]}


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_real_onnx_model(digits: TrainedExample, short_dir: Path, transport: str) -> None:
    service = OnnxService(digits.model_path)
    socket_path = short_dir / "digits.sock" if transport == "unix" else None
    rows = digits.x_test[:20]
    with make_api(service.predict, service.describe, unix_socket=socket_path) as api:
        reply = predict_over_http(api.address, rows.tolist())
        expected = service.predict(rows.astype(np.float32))
        label_name = next(k for k, v in expected.items() if v.dtype.kind == "i")
        assert reply["outputs"][label_name] == expected[label_name].tolist()
        prob_name = next(k for k in expected if k != label_name)
        np.testing.assert_allclose(reply["outputs"][prob_name], expected[prob_name], rtol=1e-6)
        assert np.mean(np.array(reply["outputs"][label_name]) == digits.y_test[:20]) > 0.8
        # The real runtime's shape check comes back as a 422 with its message.
        message = assert_error(post(api.address, json.dumps({"inputs": [[0.0] * 63]}).encode()), 422, "bad_input")
        assert "64" in message
        assert_error(post(api.address, json.dumps({"inputs": [["a"] * 64]}).encode()), 422, "bad_input")
        status, model = api_request(api.address, "GET", "/v1/model")
        assert status == 200 and model["inputs"] == [{"name": "X", "dtype": "float32", "shape": [None, 64]}]
