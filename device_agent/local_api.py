"""The local inference API: the application on the device asks the agent's serving model.

Standard library only (the agent runs without a web framework): ``http.server`` over TCP on
localhost, or the same handler over a Unix socket (``socketserver.ThreadingUnixStreamServer``).

Routes::

    POST /v1/predict   {"inputs": [[...], ...]}  -> 200 {"outputs": {name: nested lists}, "model", "version"}
    GET  /v1/health                               -> 200 {"status": "ok", ...} or 503 when no model serves
    GET  /v1/model                                -> 200 describe(): model, version, inputs, outputs

``inputs`` is the whole tensor of the model's single input, batch dimension first (rows).

Input policy, decided here once so every client gets the same answer:

* Values are converted to the dtype the model declares (``describe()["inputs"][0]["dtype"]``), never
  guessed from the JSON. Float inputs take JSON numbers; ``null`` and the ``NaN`` token (what
  Python's and JavaScript's encoders write) are passed on as NaN: a missing sensor reading is data
  the drift monitor counts (its NaN rate), and refusing it would hide exactly that signal.
  ``Infinity`` and numbers beyond the dtype's range are refused: they are overflow bugs, not readings.
* Integer inputs take JSON integers within the dtype's range; bool inputs take ``true``/``false``.
  Strings, objects, booleans in numeric inputs, ragged rows and empty batches are refused.

Errors never carry a traceback: every one is ``{"error": {"code": ..., "message": ...}}`` with
400 (not JSON, not the expected object), 404, 405, 411 (no Content-Length), 413 (body too large),
422 (wrong shape, dtype or values; the InferenceInputError message), 501 (a model with several
inputs), 503 (no model serving, or ModelLoadError from ``predict``) or 500 (a bug; the traceback
goes to the agent's log only). Each failed request is logged as one line, INFO for 4xx, WARNING for
5xx. The ``model``/``version`` of a predict reply are read just before the inference; a model swap
in between can mislabel that one reply.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import math
import os
import socket
import socketserver
import stat
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import numpy as np

from edgeops.errors import EdgeOpsError, InferenceInputError, ModelLoadError
from edgeops.manifest import TensorSpec
from edgeops.runtime import check_input

log = logging.getLogger(__name__)

#: Run the serving model; raises InferenceInputError for bad input, ModelLoadError when none is active.
PredictFn = Callable[[np.ndarray], dict[str, np.ndarray]]
DescribeFn = Callable[[], dict[str, Any]]

PREDICT_PATH = "/v1/predict"
HEALTH_PATH = "/v1/health"
MODEL_PATH = "/v1/model"
_ROUTES = {PREDICT_PATH: "POST", HEALTH_PATH: "GET", MODEL_PATH: "GET"}
#: A too-large body up to this size is read and discarded before the 413, so the client sees the
#: answer instead of a connection reset; beyond it the connection is simply closed.
_DRAIN_LIMIT_BYTES = 16 * 1024 * 1024
#: Longest Unix socket path (sun_path is 108 bytes on Linux, including the terminating NUL).
_MAX_UNIX_PATH = 107
#: Sentinel of ``next(..., default)`` in the input checks.
_MISSING = object()


class LocalApiError(EdgeOpsError, OSError):
    """The local API could not start (port in use, socket path taken or too long)."""

    code = "local_api_unavailable"


class ApiRequestError(EdgeOpsError):
    """A local API request answered with an error (client side, :func:`predict_over_http`)."""

    code = "local_api_request_failed"

    def __init__(self, status: int, error_code: str, message: str) -> None:
        super().__init__(f"HTTP {status} {error_code}: {message}")
        self.status = status
        self.error_code = error_code
        self.message = message


class _RequestFailed(Exception):
    """Internal: answer the request with this status and error body."""

    def __init__(self, status: int, code: str, message: str, *, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.close = close


# --- JSON <-> numpy ----------------------------------------------------------------------------


def _shape_and_leaves(value: Any) -> tuple[list[int], list[Any]]:
    """The shape of a nested list and its leaves in C order; InferenceInputError if it is ragged."""
    shape: list[int] = []
    level: list[Any] = [value]
    while level and isinstance(level[0], list):
        size = len(level[0])
        if not all(isinstance(item, list) and len(item) == size for item in level):
            raise InferenceInputError(f"inputs are ragged at depth {len(shape) + 1}: every row must have the "
                                      "same length and nesting")
        shape.append(size)
        level = [leaf for item in level for leaf in item]
    if any(isinstance(leaf, (list, dict)) for leaf in level):
        raise InferenceInputError("inputs are ragged or contain objects: expected nested lists of numbers")
    return shape, level


def inputs_to_array(value: Any, dtype: str) -> np.ndarray:
    """Nested JSON lists as an array of ``dtype``, following the module's input policy."""
    if not isinstance(value, list):
        raise InferenceInputError("'inputs' must be a list of rows (the batch dimension first)")
    shape, leaves = _shape_and_leaves(value)
    if not leaves:
        raise InferenceInputError(f"inputs of shape {shape} hold no values: send at least one row")
    want = np.dtype(dtype)
    if want.kind == "f":
        bad = next((v for v in leaves if v is not None and (type(v) not in (int, float))), _MISSING)
        if bad is not _MISSING:
            raise InferenceInputError(f"non-numeric value {bad!r} in inputs where {want} is expected")
        try:
            with np.errstate(over="ignore"):
                array = np.array([math.nan if v is None else v for v in leaves], dtype=np.float64).astype(want)
        except OverflowError:  # a JSON integer beyond float64
            raise InferenceInputError(f"inputs hold values beyond the {want} range") from None
        if np.isinf(array).any():
            raise InferenceInputError(f"inputs hold infinite values or values beyond the {want} range")
    elif want.kind in "iu":
        bad = next((v for v in leaves if type(v) is not int), _MISSING)
        if bad is not _MISSING:
            raise InferenceInputError(f"value {bad!r} in inputs where an integer ({want}) is expected")
        info = np.iinfo(want)
        if min(leaves) < info.min or max(leaves) > info.max:
            raise InferenceInputError(f"inputs hold integers beyond the {want} range [{info.min}, {info.max}]")
        array = np.array(leaves, dtype=want)
    elif want.kind == "b":
        bad = next((v for v in leaves if type(v) is not bool), _MISSING)
        if bad is not _MISSING:
            raise InferenceInputError(f"value {bad!r} in inputs where a boolean (true/false) is expected")
        array = np.array(leaves, dtype=want)
    else:
        raise InferenceInputError(f"the model's input dtype {want} is not supported by the local API")
    return array.reshape(shape)



def _jsonable(value: Any) -> Any:
    """Model outputs as JSON values; non-finite floats become null (JSON has no NaN)."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            obj = value.astype(object)
            obj[~np.isfinite(value)] = None
            return _jsonable(obj.tolist())
        if value.dtype.kind == "O":
            return _jsonable(value.tolist())
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _input_spec(description: dict[str, Any]) -> TensorSpec:
    inputs = description.get("inputs") or []
    if len(inputs) != 1:
        raise _RequestFailed(HTTPStatus.NOT_IMPLEMENTED, "unsupported_model",
                             f"the local API serves single-input models; this one has {len(inputs)} inputs")
    spec = inputs[0]
    try:
        return TensorSpec(name=str(spec["name"]), dtype=str(spec["dtype"]), shape=list(spec["shape"]))
    except (KeyError, TypeError) as exc:
        raise _RequestFailed(HTTPStatus.INTERNAL_SERVER_ERROR, "internal_error",
                             "the serving model's input description is incomplete") from exc


# --- the handler -------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: an application polling the model reuses its connection
    #: Answer even an unparseable request line with a status line and headers (never HTTP/0.9 style).
    default_request_version = "HTTP/1.0"
    server_version = "edgeops-agent"
    sys_version = ""
    #: Idle keep-alive connections (and stalled uploads) are closed after this many seconds.
    timeout = 30

    @property
    def api(self) -> LocalApiServer:
        return cast(_HasApi, self.server).api

    # http.server logs every request to stderr; route it to logging (failures are logged by us).
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("local api %s client=%s", format % args, self.address_string())

    def address_string(self) -> str:
        # Over AF_UNIX client_address is '' or bytes, not (host, port): the base class would index it.
        if isinstance(self.client_address, tuple) and self.client_address:
            return str(self.client_address[0])
        return "unix"

    # --- responses ------------------------------------------------------------------------------

    def _send_json(self, status: int, body: dict[str, Any], *, close: bool = False,
                   headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body, allow_nan=False, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if getattr(self, "command", None) != "HEAD":
            self.wfile.write(data)

    def _fail(self, status: int, code: str, message: str, *, close: bool = False,
              headers: dict[str, str] | None = None, extra: dict[str, Any] | None = None) -> None:
        level = logging.WARNING if status >= 500 else logging.INFO
        log.log(level, "local api request failed method=%s path=%s status=%d code=%s client=%s message=%s",
                getattr(self, "command", None) or "-", getattr(self, "path", None) or "-", status, code,
                self.address_string(), message)
        self._send_json(status, {**(extra or {}), "error": {"code": code, "message": message}}, close=close,
                        headers=headers)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (bad request line, unsupported method, ...) in our JSON shape."""
        try:
            phrase, description = HTTPStatus(code).phrase, HTTPStatus(code).description
        except ValueError:
            phrase, description = "error", ""
        self._fail(code, phrase.lower().replace(" ", "_").replace("-", "_"), message or description, close=True)

    def handle_expect_100(self) -> bool:
        """Refuse a too-large body before the client sends it (curl asks for large uploads)."""
        try:
            length = self._content_length()
        except _RequestFailed as failed:
            self._fail(failed.status, failed.code, failed.message, close=True)
            return False
        if length > self.api.max_body_bytes:
            self._fail(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "too_large",
                       f"body of {length} bytes exceeds the limit of {self.api.max_body_bytes}", close=True)
            return False
        return super().handle_expect_100()

    # --- dispatch -------------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        path = urlsplit(self.path).path
        try:
            allowed = _ROUTES.get(path)
            if allowed != "POST" or self.command != "POST":
                self._discard_body()  # a body we do not read would be parsed as the next request
            if allowed is None:
                raise _RequestFailed(HTTPStatus.NOT_FOUND, "not_found",
                                     f"no route {path}; try POST {PREDICT_PATH}, GET {HEALTH_PATH} or GET {MODEL_PATH}")
            if self.command != allowed:
                self._fail(HTTPStatus.METHOD_NOT_ALLOWED, "method_not_allowed",
                           f"{self.command} is not allowed on {path}; use {allowed}", headers={"Allow": allowed})
                return
            if path == PREDICT_PATH:
                self._predict()
            elif path == HEALTH_PATH:
                self._health()
            else:
                self._send_json(HTTPStatus.OK, self.api.describe())
        except _RequestFailed as failed:
            self._fail(failed.status, failed.code, failed.message, close=failed.close)
        except (ConnectionError, TimeoutError):
            raise  # the client went away: socketserver's handle_error logs it
        except Exception:  # a bug in the agent or a runtime: log it fully, tell the client nothing inside
            log.exception("local api request crashed method=%s path=%s", self.command, path)
            self.close_connection = True
            with contextlib.suppress(OSError):
                self._fail(HTTPStatus.INTERNAL_SERVER_ERROR, "internal_error",
                           "the agent failed to answer; see its log", close=True)

    def _content_length(self) -> int:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise _RequestFailed(HTTPStatus.LENGTH_REQUIRED, "length_required",
                                 "chunked bodies are not supported: send Content-Length", close=True)
        raw = self.headers.get("Content-Length")
        if raw is None:
            return 0
        try:
            length = int(raw)
        except ValueError:
            length = -1
        if length < 0:
            raise _RequestFailed(HTTPStatus.BAD_REQUEST, "bad_request", f"invalid Content-Length {raw!r}",
                                 close=True)
        return length

    def _discard_body(self) -> None:
        """Read and drop a body we will not use, so the connection stays usable (or close it)."""
        try:
            length = self._content_length()
        except _RequestFailed:
            self.close_connection = True
            return
        if length > _DRAIN_LIMIT_BYTES:
            self.close_connection = True
            return
        while length > 0:
            got = self.rfile.read(min(length, 64 * 1024))
            if not got:
                self.close_connection = True
                return
            length -= len(got)

    def _read_body(self) -> bytes:
        if self.headers.get("Content-Length") is None and "chunked" not in self.headers.get(
                "Transfer-Encoding", "").lower():
            raise _RequestFailed(HTTPStatus.LENGTH_REQUIRED, "length_required", "send the body with Content-Length",
                                 close=True)
        length = self._content_length()
        limit = self.api.max_body_bytes
        if length > limit:
            self._discard_body()
            raise _RequestFailed(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "too_large",
                                 f"body of {length} bytes exceeds the limit of {limit}", close=self.close_connection)
        body = self.rfile.read(length)
        if len(body) != length:
            raise _RequestFailed(HTTPStatus.BAD_REQUEST, "bad_request",
                                 f"body ended after {len(body)} of {length} bytes", close=True)
        return body

    # --- routes ---------------------------------------------------------------------------------

    def _predict(self) -> None:
        body = self._read_body()
        try:
            request = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _RequestFailed(HTTPStatus.BAD_REQUEST, "bad_json", f"body is not JSON: {exc}") from None
        except RecursionError:
            raise _RequestFailed(HTTPStatus.BAD_REQUEST, "bad_json", "body is nested too deeply") from None
        if not isinstance(request, dict) or "inputs" not in request:
            raise _RequestFailed(HTTPStatus.BAD_REQUEST, "bad_request",
                                 'expected a JSON object {"inputs": [[...], ...]}')
        unknown = sorted(set(request) - {"inputs"})
        if unknown:
            raise _RequestFailed(HTTPStatus.BAD_REQUEST, "bad_request", f"unknown field(s): {', '.join(unknown)}")
        description = self.api.describe()
        if description.get("model") is None:
            raise _RequestFailed(HTTPStatus.SERVICE_UNAVAILABLE, "no_model", "no model is active on this device yet")
        spec = _input_spec(description)
        try:
            array = check_input(spec, inputs_to_array(request["inputs"], spec.dtype))
            outputs = self.api.predict(array)
        except InferenceInputError as exc:
            raise _RequestFailed(HTTPStatus.UNPROCESSABLE_ENTITY, exc.code, str(exc)) from None
        except ModelLoadError as exc:
            raise _RequestFailed(HTTPStatus.SERVICE_UNAVAILABLE, exc.code, str(exc)) from None
        except EdgeOpsError as exc:
            raise _RequestFailed(HTTPStatus.INTERNAL_SERVER_ERROR, exc.code, str(exc)) from None
        self._send_json(HTTPStatus.OK, {
            "outputs": _jsonable(outputs),
            "model": description.get("model"),
            "version": description.get("version"),
        })

    def _health(self) -> None:
        description = self.api.describe()
        model, version = description.get("model"), description.get("version")
        if model is None:
            self._fail(HTTPStatus.SERVICE_UNAVAILABLE, "no_model", "no model is active on this device yet",
                       extra={"status": "no_model", "model": None, "version": None})
            return
        self._send_json(HTTPStatus.OK, {"status": "ok", "model": model, "version": version})


class _TcpHandler(_Handler):
    disable_nagle_algorithm = True  # the header and body writes must not wait for a delayed ACK


class _UnixHandler(_Handler):
    disable_nagle_algorithm = False  # TCP_NODELAY does not exist on AF_UNIX


class _HasApi:
    api: LocalApiServer


class _LoggingErrors:
    """socketserver prints tracebacks to stderr for anything a handler raised: log one line instead."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            log.info("local api client connection dropped error=%s", exc)
        else:
            log.error("local api connection failed", exc_info=True)


class _TcpServer(_LoggingErrors, ThreadingHTTPServer):
    daemon_threads = True
    api: LocalApiServer

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN (slow without DNS, and unused here).
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


class _TcpServer6(_TcpServer):
    address_family = socket.AF_INET6


class _UnixServer(_LoggingErrors, socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    api: LocalApiServer


# --- the server --------------------------------------------------------------------------------


class LocalApiServer:
    """Serves ``predict`` and ``describe`` over HTTP on localhost or a Unix socket, in daemon threads."""

    def __init__(self, predict: PredictFn, describe: DescribeFn, *, host: str = "127.0.0.1", port: int = 0,
                 unix_socket: Path | None = None, max_body_bytes: int = 4 * 1024 * 1024,
                 poll_interval_s: float = 0.5) -> None:
        """``poll_interval_s`` bounds how long :meth:`stop` waits for the serving loop to notice."""
        if max_body_bytes <= 0:
            raise ValueError("max_body_bytes must be positive")
        self.predict = predict
        self.describe = describe
        self.host = host
        self.port = port
        self.unix_socket = unix_socket
        self.max_body_bytes = max_body_bytes
        self.poll_interval_s = poll_interval_s
        self._server: socketserver.BaseServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        """``http://127.0.0.1:PORT`` (the bound port) or ``unix:/path``; only once started."""
        if self._server is None:
            raise RuntimeError("the local API is not started")
        if self.unix_socket is not None:
            return f"unix:{self.unix_socket}"
        bound = cast(socketserver.TCPServer, self._server).server_address
        host, port = str(bound[0]), int(bound[1])
        host_text = f"[{host}]" if ":" in host else host
        return f"http://{host_text}:{port}"

    def start(self) -> None:
        """Bind (LocalApiError if that fails) and serve in a daemon thread."""
        if self._server is not None:
            raise RuntimeError("the local API is already started")
        server = self._bind_unix(self.unix_socket) if self.unix_socket is not None else self._bind_tcp()
        server.api = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": self.poll_interval_s},
                                        name="edgeops-local-api", daemon=True)
        self._thread.start()
        log.info("local api listening address=%s max_body_bytes=%d", self.address, self.max_body_bytes)

    def _bind_tcp(self) -> _TcpServer:
        cls = _TcpServer6 if ":" in self.host else _TcpServer
        try:
            return cls((self.host, self.port), _TcpHandler)
        except OSError as exc:
            raise LocalApiError(f"local API cannot listen on {self.host}:{self.port}: {exc.strerror or exc}") from exc

    def _bind_unix(self, path: Path) -> _UnixServer:
        if len(os.fsencode(path)) > _MAX_UNIX_PATH:
            raise LocalApiError(f"unix socket path {path} is longer than {_MAX_UNIX_PATH} bytes")
        _remove_stale_socket(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            server = _UnixServer(str(path), _UnixHandler)
        except OSError as exc:
            raise LocalApiError(f"local API cannot listen on unix:{path}: {exc.strerror or exc}") from exc
        # Only the agent's user and group may ask the model (the socket's permission is the access control).
        os.chmod(path, 0o660)
        return server

    def stop(self) -> None:
        """Stop serving, close the socket and remove the Unix socket file. Idempotent."""
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        if self.unix_socket is not None:
            self.unix_socket.unlink(missing_ok=True)
        self._server = self._thread = None
        log.info("local api stopped")

    def __enter__(self) -> LocalApiServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _remove_stale_socket(path: Path) -> None:
    """A socket file left by a crashed agent is removed; a live one or any other file is not touched."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise LocalApiError(f"{path} exists and is not a socket: refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        log.info("removing stale local api socket path=%s", path)
        path.unlink(missing_ok=True)
        return
    except OSError as exc:
        raise LocalApiError(f"cannot probe the existing socket {path}: {exc}") from exc
    finally:
        probe.close()
    raise LocalApiError(f"{path} is in use by another process (is another agent running?)")


# --- the client --------------------------------------------------------------------------------


class _UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a Unix socket (the Host header says ``localhost``)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _connection(address: str, timeout: float) -> http.client.HTTPConnection:
    if address.startswith("unix:"):
        return _UnixHTTPConnection(address[len("unix:"):], timeout)
    parts = urlsplit(address)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"local API address {address!r}: expected http://HOST:PORT or unix:/path")
    return http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)


def api_request(address: str, method: str, path: str, body: bytes | None = None, *,
                headers: dict[str, str] | None = None, timeout: float = 10.0) -> tuple[int, dict[str, Any]]:
    """One request to a local API at ``address``: (status, decoded JSON body)."""
    conn = _connection(address, timeout)
    try:
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        conn.request(method, path, body=body, headers=all_headers)
        response = conn.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else {}
    finally:
        conn.close()


def request(address: str, method: str, path: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
    """Like :func:`api_request`, but ``body`` may also be a JSON-able value (encoded here) or None."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(_jsonable(body)).encode()
    status, reply = api_request(address, method, path, data, timeout=timeout)
    return status, reply or None


def predict_over_http(address: str, rows: Any, *, timeout: float = 10.0) -> dict[str, Any]:
    """``POST /v1/predict`` with ``rows`` (nested lists or an array); the response, or ApiRequestError."""
    if isinstance(rows, np.ndarray):
        rows = _jsonable(rows)
    body = json.dumps({"inputs": rows}).encode()
    status, reply = api_request(address, "POST", PREDICT_PATH, body, timeout=timeout)
    if status != HTTPStatus.OK:
        error = reply.get("error") or {}
        raise ApiRequestError(status, str(error.get("code", "unknown")), str(error.get("message", "")))
    return reply
