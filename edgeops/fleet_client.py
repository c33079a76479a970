"""The CLI's way to a fleet: the store on this machine, or a fleet server's HTTP API.

``edgeops`` commands that read or steer the fleet (devices, telemetry, rollouts, audit) work the
same in both places. On the server's own machine they open the store directly (no server needs
to run); from a laptop, ``--server URL`` (or ``EDGEOPS_SERVER``) with a token (``--token`` or
``EDGEOPS_TOKEN``) sends them to ``/api/v1``. Both clients return the same JSON documents, so
``--json`` output does not depend on where the fleet is.

The HTTP client uses only the standard library: a laptop running the CLI needs no server extras.
Every failure is one specific error with a one-line message: the server unreachable, the token
refused, a name not found, a request the server rejected.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Protocol

from edgeops.errors import (
    AuthenticationError,
    ConfigError,
    EdgeOpsError,
    NotFoundError,
    RemoteRequestError,
    ServerUnreachableError,
)

SERVER_ENV = "EDGEOPS_SERVER"
TOKEN_ENV = "EDGEOPS_TOKEN"
#: Seconds a call may take before the server counts as unreachable.
DEFAULT_TIMEOUT_S = 10.0


class FleetClient(Protocol):
    """What the CLI asks of a fleet; every result is JSON-able (the API's documents)."""

    where: str

    def models(self) -> list[dict[str, Any]]: ...
    def devices(self, tag: str | None = None, stall_after_s: float | None = None) -> list[dict[str, Any]]: ...
    def device(self, device_id: str, stall_after_s: float | None = None) -> dict[str, Any]: ...
    def tag_device(self, device_id: str, add: list[str], remove: list[str]) -> dict[str, Any]: ...
    def telemetry(self, device_id: str, since_ms: int = 0, limit: int = 50) -> list[dict[str, Any]]: ...
    def deploy(self, model: str, devices: str, reason: str = "") -> dict[str, Any]: ...
    def rollouts(self) -> list[dict[str, Any]]: ...
    def rollout(self, rollout_id: str) -> dict[str, Any]: ...
    def start_rollout(self, request: dict[str, Any]) -> dict[str, Any]: ...
    def command(self, rollout_id: str, verb: str, reason: str = "") -> dict[str, Any]: ...
    def audit(self, limit: int = 100, target: str | None = None) -> list[dict[str, Any]]: ...


def actor() -> str:
    """Who the CLI acts as in the audit log when it works on the store directly."""
    return os.environ.get("EDGEOPS_ACTOR") or os.environ.get("USER") or "cli"


class HttpFleet:
    """A fleet behind a server's HTTP API (``/api/v1``), authenticated by a bearer token."""

    def __init__(self, url: str, token: str | None, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigError(f"--server needs an http(s) URL such as http://127.0.0.1:8080, got {url!r}")
        if not token:
            raise ConfigError(f"a token is needed for {url}: pass --token or set {TOKEN_ENV} "
                              "(create one on the server with `edgeops token create NAME`)")
        self.base = url.rstrip("/")
        self.where = self.base
        self._token = token
        self._timeout_s = timeout_s

    def call(self, method: str, path: str, body: dict[str, Any] | None = None,
             query: dict[str, Any] | None = None) -> Any:
        """One API call; the decoded JSON answer, or the specific error for what went wrong."""
        url = f"{self.base}/api/v1{path}"
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method, headers={
            "Authorization": f"Bearer {self._token}", "Accept": "application/json",
            **({"Content-Type": "application/json"} if data is not None else {})})
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise _api_error(exc) from None
        except urllib.error.URLError as exc:
            reason = exc.reason.strerror if isinstance(exc.reason, OSError) and exc.reason.strerror else exc.reason
            raise ServerUnreachableError(f"cannot reach the fleet server at {self.base}: {reason}") from None
        except TimeoutError:
            raise ServerUnreachableError(
                f"the fleet server at {self.base} did not answer within {self._timeout_s:g} s") from None
        except (ConnectionError, OSError) as exc:
            raise ServerUnreachableError(f"cannot reach the fleet server at {self.base}: {exc}") from None
        except ValueError as exc:
            raise RemoteRequestError(f"{self.base} did not answer with JSON (is it an EdgeOps server?): {exc}",
                                     0, "bad_response") from None

    def models(self) -> list[dict[str, Any]]:
        return list(self.call("GET", "/models"))

    def devices(self, tag: str | None = None, stall_after_s: float | None = None) -> list[dict[str, Any]]:
        return list(self.call("GET", "/devices", query={"tag": tag, "stall_after_s": stall_after_s}))

    def device(self, device_id: str, stall_after_s: float | None = None) -> dict[str, Any]:
        return dict(self.call("GET", f"/devices/{_segment(device_id)}", query={"stall_after_s": stall_after_s}))

    def tag_device(self, device_id: str, add: list[str], remove: list[str]) -> dict[str, Any]:
        return dict(self.call("POST", f"/devices/{_segment(device_id)}/tags", {"add": add, "remove": remove}))

    def telemetry(self, device_id: str, since_ms: int = 0, limit: int = 50) -> list[dict[str, Any]]:
        return list(self.call("GET", f"/telemetry/{_segment(device_id)}", query={"since_ms": since_ms, "limit": limit}))

    def deploy(self, model: str, devices: str, reason: str = "") -> dict[str, Any]:
        return dict(self.call("POST", "/deployments", {"model": model, "devices": _devices_field(devices),
                                                        "reason": reason}))

    def rollouts(self) -> list[dict[str, Any]]:
        return list(self.call("GET", "/rollouts"))

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        return dict(self.call("GET", f"/rollouts/{_segment(rollout_id)}"))

    def start_rollout(self, request: dict[str, Any]) -> dict[str, Any]:
        return dict(self.call("POST", "/rollouts", {**request, "devices": _devices_field(request["devices"])}))

    def command(self, rollout_id: str, verb: str, reason: str = "") -> dict[str, Any]:
        return dict(self.call("POST", f"/rollouts/{_segment(rollout_id)}/{verb}", {"reason": reason}))

    def audit(self, limit: int = 100, target: str | None = None) -> list[dict[str, Any]]:
        return list(self.call("GET", "/audit", query={"limit": limit, "target": target}))


def _segment(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _devices_field(devices: str) -> str | list[str]:
    """The API takes ``"all"`` or a list of terms; the CLI takes comma-separated text."""
    return devices if devices == "all" else [t.strip() for t in devices.split(",") if t.strip()]


def _api_error(exc: urllib.error.HTTPError) -> EdgeOpsError:
    """The specific error for an API error answer (``{"error": {"code", "message"}}``)."""
    try:
        error = json.loads(exc.read() or b"{}").get("error", {})
        message, code = str(error.get("message") or exc.reason), str(error.get("code") or "http_error")
        details = error.get("details")
    except (ValueError, AttributeError):
        message, code, details = str(exc.reason), "http_error", None
    if exc.code == 401:
        return AuthenticationError(f"the server refused the token: {message}")
    if exc.code == 404:
        return NotFoundError(message)
    if details:
        message += ": " + "; ".join(
            f"{'.'.join(str(p) for p in d.get('loc', [])[1:])} {d.get('msg', '')}".strip()
            for d in details if isinstance(d, dict))
    return RemoteRequestError(f"the server refused the request ({exc.code} {code}): {message}", exc.code, code)


class LocalFleet:
    """The fleet in a store on this machine (what ``--home``/``--db`` name): no server needed."""

    def __init__(self, home: Path, fleet: str, db: str | None = None) -> None:
        from edgeops.cli_common import open_home
        from fleet_server.operations import FleetOperations

        store, _ = open_home(home, db)
        self.ops = FleetOperations(store, fleet)
        self.where = str(store.url) if hasattr(store, "url") else str(home)

    def models(self) -> list[dict[str, Any]]:
        return self.ops.models()

    def devices(self, tag: str | None = None, stall_after_s: float | None = None) -> list[dict[str, Any]]:
        return self.ops.devices(tag, *_stall(stall_after_s))

    def device(self, device_id: str, stall_after_s: float | None = None) -> dict[str, Any]:
        return self.ops.device(device_id, *_stall(stall_after_s))

    def tag_device(self, device_id: str, add: list[str], remove: list[str]) -> dict[str, Any]:
        return self.ops.tag_device(device_id, add, remove, actor())

    def telemetry(self, device_id: str, since_ms: int = 0, limit: int = 50) -> list[dict[str, Any]]:
        return self.ops.telemetry(device_id, since_ms, limit)

    def deploy(self, model: str, devices: str, reason: str = "") -> dict[str, Any]:
        return self.ops.deploy(model, devices, actor(), reason)

    def rollouts(self) -> list[dict[str, Any]]:
        return self.ops.rollouts()

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        return self.ops.rollout(rollout_id)

    def start_rollout(self, request: dict[str, Any]) -> dict[str, Any]:
        from fleet_server.operations import gates_from_request

        return self.ops.start_rollout(request["model"], request["devices"], request["stages"],
                                      gates_from_request(request),
                                      policy=request["policy"], max_concurrent=request["max_concurrent"],
                                      approval=request["approval"], actor=actor(), reason=request["reason"])

    def command(self, rollout_id: str, verb: str, reason: str = "") -> dict[str, Any]:
        return self.ops.command(rollout_id, verb, actor(), reason)

    def audit(self, limit: int = 100, target: str | None = None) -> list[dict[str, Any]]:
        return self.ops.audit(limit, target)


def connect(home: Path, fleet: str, db: str | None = None, server: str | None = None,
            token: str | None = None) -> FleetClient:
    """The fleet a CLI command works on: the HTTP API when a server is named, else the local store."""
    server = server or os.environ.get(SERVER_ENV)
    if server:
        return HttpFleet(server, token or os.environ.get(TOKEN_ENV))
    return LocalFleet(home, fleet, db)


def _stall(stall_after_s: float | None) -> tuple[float, ...]:
    """The stall time argument, when one was given (else the operations' default applies)."""
    return () if stall_after_s is None else (stall_after_s,)
