"""The local inference API for the application on the device: HTTP on 127.0.0.1 or a Unix socket.

Standard library only (the agent carries no web framework). Every request goes through the agent's
``predict``, so it is folded into telemetry, drift statistics and probation like any other
inference. Bad input gets a 4xx with a clear JSON error, never a traceback; NaN is accepted (the
drift statistics count it) but only as the JSON extension ``NaN`` that Python's json reads.

    POST /v1/predict   {"inputs": [[...64 numbers...], ...]}  -> {"outputs": {...}, "model", "version"}
    GET  /v1/health    200 {"status": "ok", ...} or 503 when no model serves
    GET  /v1/model     the serving model's name, version and input/output signature
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import socketserver
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from edgeops.errors import EdgeOpsError, InferenceInputError, ModelLoadError

log = logging.getLogger(__name__)
PredictFn = Callable[[np.ndarray], dict[str, np.ndarray]]
DescribeFn = Callable[[], dict[str, Any]]


class _ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class _Handler(BaseHTTPRequestHandler):
    server: Any
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("local api %s", format % args)

    def address_string(self) -> str:
        return self.client_address[0] if isinstance(self.client_address, tuple) else "unix"

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body, allow_nan=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, err: _ApiError) -> None:
        log.warning("local api request refused path=%s status=%d code=%s error=%s", self.path, err.status,
                    err.code, err.message)
        self._reply(err.status, {"error": {"code": err.code, "message": err.message}})

    def do_GET(self) -> None:
        api: LocalApiServer = self.server.api
        if self.path == "/v1/health":
            described = api.describe()
            status = 200 if described.get("model") else 503
            self._reply(status, {"status": "ok" if status == 200 else "no_model", "model": described.get("model"),
                                 "version": described.get("version")})
        elif self.path == "/v1/model":
            self._reply(200, api.describe())
        elif self.path == "/v1/predict":
            self._error(_ApiError(405, "method_not_allowed", "use POST for /v1/predict"))
        else:
            self._error(_ApiError(404, "not_found", f"no route {self.path}"))

    def do_POST(self) -> None:
        api: LocalApiServer = self.server.api
        try:
            if self.path != "/v1/predict":
                raise _ApiError(404 if self.path not in ("/v1/health", "/v1/model") else 405, "not_found",
                                f"no POST route {self.path}")
            self._reply(200, api.handle_predict(self._body(api.max_body_bytes)))
        except _ApiError as err:
            self._error(err)

    def _body(self, limit: int) -> bytes:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise _ApiError(411, "length_required", "send a Content-Length header") from None
        if length > limit:
            self.close_connection = True
            raise _ApiError(413, "too_large", f"body of {length} bytes exceeds {limit}")
        return self.rfile.read(length)


class _TcpServer(ThreadingHTTPServer):
    daemon_threads = True


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self) -> tuple[Any, Any]:
        request, _ = super().get_request()
        return request, ("unix", 0)


class LocalApiServer:
    def __init__(self, predict: PredictFn, describe: DescribeFn, *, host: str = "127.0.0.1", port: int = 0,
                 unix_socket: Path | None = None, max_body_bytes: int = 4 * 1024 * 1024) -> None:
        self.predict = predict
        self.describe = describe
        self.max_body_bytes = max_body_bytes
        self._unix_socket = unix_socket
        if unix_socket is not None:
            unix_socket.unlink(missing_ok=True)
            self._server: Any = _UnixServer(str(unix_socket), _Handler)
        else:
            self._server = _TcpServer((host, port), _Handler)
        self._server.api = self
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        if self._unix_socket is not None:
            return f"unix:{self._unix_socket}"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="edgeops-local-api", daemon=True)
        self._thread.start()
        log.info("local inference api listening on %s", self.address)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._unix_socket is not None:
            self._unix_socket.unlink(missing_ok=True)

    def handle_predict(self, body: bytes) -> dict[str, Any]:
        """Decode, check, run; every failure is an _ApiError with a 4xx/5xx status."""
        try:
            request = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _ApiError(400, "bad_json", f"body is not JSON: {exc}") from None
        if not isinstance(request, dict) or "inputs" not in request:
            raise _ApiError(400, "bad_request", 'expected {"inputs": [[...], ...]}')
        described = self.describe()
        if not described.get("model"):
            raise _ApiError(503, "no_model", "no model is active on this device yet")
        spec = described["inputs"][0]
        try:
            array = np.asarray(request["inputs"], dtype=np.dtype(spec["dtype"]))
        except (ValueError, TypeError) as exc:
            raise _ApiError(422, "bad_input", f"inputs must be a rectangular array of numbers ({exc})") from None
        try:
            outputs = self.predict(array)
        except InferenceInputError as exc:
            raise _ApiError(422, exc.code, str(exc)) from None
        except ModelLoadError as exc:
            raise _ApiError(503, exc.code, str(exc)) from None
        except EdgeOpsError as exc:
            raise _ApiError(500, exc.code, str(exc)) from None
        return {"model": described["model"], "version": described["version"],
                "outputs": {k: _jsonable(v) for k, v in outputs.items()}}


def _jsonable(array: np.ndarray) -> Any:
    values = np.asarray(array)
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        return np.where(np.isfinite(values), values, np.array(None, dtype=object)).tolist()  # JSON has no NaN
    return values.tolist()


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def request(address: str, method: str, path: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
    """A minimal client for ``http://host:port`` or ``unix:/path`` addresses (used by tests and tools)."""
    if address.startswith("unix:"):
        conn: http.client.HTTPConnection = _UnixConnection(address[5:], timeout)
    else:
        host, _, port = address.removeprefix("http://").partition(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    data = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else None)
    try:
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        payload = response.read()
        return response.status, json.loads(payload) if payload else None
    finally:
        conn.close()


def predict_over_http(address: str, rows: list[list[float]]) -> dict[str, Any]:
    status, body = request(address, "POST", "/v1/predict", {"inputs": rows})
    if status != 200:
        raise InferenceInputError(f"local api answered {status}: {body}")
    return body  # type: ignore[no-any-return]
