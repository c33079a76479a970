"""The fleet server's HTTP API (FastAPI) under ``/api/v1``, with its OpenAPI document.

Every route needs ``Authorization: Bearer <token>`` (``edgeops token create``); only the OpenAPI
document (``/api/v1/openapi.json``) and its docs page are public. Reads come straight from the
store; writes go through the same paths as the CLI (deployments in the store, rollouts through
:class:`~fleet_server.rollout_driver.RolloutService`), and every write is in the audit log with the
token's name as the actor and the caller's ``reason``.

Errors are JSON ``{"error": {"code": ..., "message": ...}}``: 401 for a missing, unknown or revoked
token, 404 for an unknown model, version, device or rollout, 422 for a malformed request, 409 for a
command the rollout's state does not allow, with the ``code`` of the EdgeOps error behind it.

The server process runs the API in a background thread (:class:`HttpApi`) when ``http_port`` is set.
The same app serves the web dashboard (``/dashboard``, signed in with a token), its event stream
(``/api/v1/stream``) and Prometheus ``/metrics``: see :mod:`fleet_server.dashboard.routes`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal

import uvicorn
from fastapi import Depends, FastAPI, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from edgeops import __version__
from edgeops.errors import ConfigError, EdgeOpsError, NotFoundError
from edgeops.protocol import check_id
from fleet_server.dashboard.routes import WebOptions
from fleet_server.dashboard.routes import install as install_dashboard
from fleet_server.live import LiveBus
from fleet_server.metrics import IngestCounters
from fleet_server.operations import FleetOperations, InvalidRequestError, gates_from_request, model_view
from fleet_server.store import TAG_PREFIX, Store, check_tag
from fleet_server.sync import DEFAULT_STALL_AFTER_S, SyncState
from fleet_server.tokens import TokenError, Tokens

log = logging.getLogger(__name__)
PREFIX = "/api/v1"
MODEL_REF = r"^[^:\s]+:[^\s]+$"


# --- bodies -------------------------------------------------------------------------------------


class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine-readable code (e.g. not_found, invalid_token).")
    message: str
    details: list[Any] | None = Field(None, description="Per-field problems of a 422.")


class ErrorOut(BaseModel):
    error: ErrorBody


class ModelOut(BaseModel):
    name: str
    version: str
    label: str = Field(description="NAME:VERSION, as deployments and rollouts take it.")
    digest: str = Field(description="sha256 of the bundle manifest: the version's identity.")
    runtime: str
    size_bytes: int
    created_at: str
    parent_version: str | None
    parent_digest: str | None
    created_by: str
    signed_by: str | None = Field(description="Key id of the bundle signature; null when unsigned.")



class ModelDetailOut(ModelOut):
    manifest: dict[str, Any]


class DeviceOut(BaseModel):
    device_id: str
    online: bool
    agent_version: str | None
    first_seen_ms: int
    last_seen_ms: int
    running: str | None = Field(description="NAME:VERSION the device reports running.")
    active_digest: str | None
    phase: str | None = Field(description="Update phase the device reports (idle, fetching, ..., committed).")
    last_error: str | None
    tags: list[str] = Field(description="Operator-given labels; `tag:NAME` in a selector picks devices by tag.")
    last_telemetry_ms: int | None
    last_telemetry: dict[str, Any] | None
    sync: SyncState = Field(
        description="The reported state against the desired version: in_sync, pending (not started on it), "
                    "updating, stalled (no progress for stall_after_s), fell_back (the desired version failed "
                    "on the device; it runs its previous one), rejected (the device refused the desired "
                    "message: rejected_reason), offline (and not in sync), unmanaged (nothing desired).")
    desired_version: str | None = Field(description="NAME:VERSION the device should run.")
    updating_to: str | None = Field(description="NAME:VERSION of the update the device reports working on.")
    chunks_have: int | None
    chunks_total: int | None
    progress_ms: int | None = Field(description="When the reported update state last changed (epoch ms).")
    rejected_ms: int | None = Field(default=None, description="When the server last received the device's "
                                    "refusal of a desired message (epoch ms, server clock).")
    rejected_reason: str | None = Field(default=None, description="Why the device refused it, in its words "
                                        "(e.g. signed by a key it does not trust).")


StallQuery = Annotated[float, Query(gt=0, description="Seconds without progress after which an update is stalled.")]


class DesiredOut(BaseModel):
    deployment_id: int
    digest: str
    rollout_id: str | None
    rollback: bool


class DeviceDetailOut(DeviceOut):
    desired: DesiredOut | None = Field(description="The deployment the device should follow, if any.")
    events: list[dict[str, Any]] = Field(description="Its most recent events, newest first.")


class _Targets(BaseModel):
    """Which devices a deployment or rollout is for."""

    devices: Literal["all"] | list[str] = Field(
        "all", description="'all' or a list of device ids and `tag:NAME` terms (a device matches any term).")

    @field_validator("devices")
    @classmethod
    def _check_devices(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, str):
            return value
        if not value:
            raise ValueError("devices needs 'all' or at least one device id or tag:NAME")
        for term in value:
            if term.startswith(TAG_PREFIX):
                check_tag(term[len(TAG_PREFIX):])
            else:
                check_id(term, "device id")
        return sorted(set(value))


class TagsIn(BaseModel):
    add: list[str] = Field(default_factory=list, description="Tags to add.", examples=[["pilot", "line-2"]])
    remove: list[str] = Field(default_factory=list, description="Tags to remove.")

    @field_validator("add", "remove")
    @classmethod
    def _check_tags(cls, value: list[str]) -> list[str]:
        for tag in value:
            check_tag(tag)
        return value


class DeploymentIn(_Targets):
    model: str = Field(pattern=MODEL_REF, description="NAME:VERSION of a model in the registry.",
                       examples=["digits:2"])
    reason: str = Field("", max_length=1000, description="Why (recorded in the audit log).")


class DeploymentOut(BaseModel):
    id: int
    model: str
    digest: str
    devices: str = Field(description="'all' or comma-separated device ids.")
    created_ms: int


class RolloutIn(_Targets):
    model: str = Field(pattern=MODEL_REF, description="NAME:VERSION to roll out.", examples=["digits:2"])
    stages: str = Field("canary:1,10%,50%,100%", description="Cumulative stages: [NAME:]COUNT or [NAME:]PERCENT%.")
    policy: Literal["rollback", "pause"] = Field("rollback", description="What a failing gate does.")
    soak_s: float = Field(60.0, ge=0, description="Seconds a stage runs the target before health is judged.")
    max_error_rate: float = Field(0.05, ge=0, le=1, description="Error-rate gate.")
    max_latency_ratio: float = Field(1.5, gt=0, description="p95 latency against the previous version.")
    max_drift: float | None = Field(None, ge=0, le=1, description="Drift-score gate; null: not gated.")
    max_failed_share: float = Field(0.0, ge=0, le=1, description="Share of failed devices tolerated.")
    min_sample: int = Field(1, ge=1, description="Devices resolved (committed or failed) before the failed share "
                            "is judged.")
    min_inferences: int = Field(20, ge=1, description=(
        "Inferences the error rate (pooled over a stage) and each device's p95 latency (on the target and on "
        "the previous version) need before they are judged."))
    silence_timeout_s: float = Field(120.0, gt=0, description="Seconds of silence that make a device failed.")
    max_concurrent: int = Field(0, ge=0, description="Devices updating at once (0: no limit).")
    approval: bool = Field(False, description="Every stage after the first waits for an approve command.")
    reason: str = Field("", max_length=1000, description="Why (recorded in the audit log).")


class StageOut(BaseModel):
    name: str
    percent: float | None
    count: int | None
    approval: bool
    devices: int = Field(description="Devices this stage assigned.")
    committed: int = Field(description="Of those, how many committed the target.")
    status: Literal["done", "current", "pending"]


class RolloutOut(BaseModel):
    id: str
    state: str
    target_digest: str
    target: str | None = Field(description="NAME:VERSION of the target, when the registry knows it.")
    selector: str
    policy: str
    stage: str = Field(description="Name of the current stage.")
    stage_index: int
    selected: int = Field(description="Devices the selector matches now.")
    assigned: int
    committed: int
    reason: str = Field(description="Why the rollout is in its state.")
    stages: list[StageOut]


class Command(str, Enum):
    PAUSE = "pause"
    RESUME = "resume"
    APPROVE = "approve"
    ABORT = "abort"
    ROLLBACK = "rollback"


class CommandIn(BaseModel):
    reason: str = Field("", max_length=1000, description="Why (recorded in the audit log).")


class AuditOut(BaseModel):
    id: int
    ts_ms: int
    actor: str = Field(description="Token name for API calls, the user for the CLI, 'server' for the driver.")
    action: str
    target: str
    reason: str
    details: Any


# --- helpers shared by the routes ---------------------------------------------------------------


def _error(status: int, code: str, message: str, details: list[Any] | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorOut(error=ErrorBody(code=code, message=message, details=details))
    return JSONResponse(jsonable_encoder(body, exclude_none=True), status_code=status, headers=headers)


# --- the application ----------------------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False, description="A token from `edgeops token create NAME`.")


def authenticate(request: Request,
                 credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> str:
    """The name of the caller's token (the actor of the audit log); TokenError (401) otherwise."""
    if credentials is None:
        raise TokenError("missing bearer token: send 'Authorization: Bearer <token>'")
    tokens: Tokens = request.app.state.tokens
    return tokens.verify(credentials.credentials)


#: The caller, authenticated: every route takes it.
Actor = Annotated[str, Depends(authenticate)]


def create_app(home: Path, fleet: str, database: Path | str | None = None, *, live: LiveBus | None = None,
               counters: IngestCounters | None = None, web: WebOptions | None = None) -> FastAPI:
    """The API over one fleet of the store at ``database`` (default: the SQLite file in ``home``).

    Tokens stay in ``home``'s SQLite file whatever the store: they are the server's own secrets,
    not fleet data to share across servers. The dashboard (``/dashboard``), its event stream and
    ``/metrics`` come along (fleet_server/dashboard); ``live`` and ``counters`` are the server
    process's own, so the stream relays and the metrics count what this process ingests.
    """
    store = Store(database or home / "edgeops.db")
    tokens = Tokens(home / "edgeops.db")
    ops = FleetOperations(store, fleet)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        tokens.close()
        store.close()

    app = FastAPI(title="EdgeOps fleet API", version=__version__, lifespan=lifespan,
                  openapi_url=f"{PREFIX}/openapi.json", docs_url=f"{PREFIX}/docs", redoc_url=None,
                  description="Models, devices, deployments, rollouts, telemetry and the audit log of one fleet. "
                              "Every route needs `Authorization: Bearer <token>` (`edgeops token create NAME`).")
    app.state.tokens = tokens
    errors: dict[int | str, dict[str, Any]] = {401: {"model": ErrorOut}, 404: {"model": ErrorOut},
                                               422: {"model": ErrorOut}}
    write_errors: dict[int | str, dict[str, Any]] = {**errors, 409: {"model": ErrorOut}}

    @app.exception_handler(EdgeOpsError)
    async def edgeops_error(request: Request, exc: EdgeOpsError) -> JSONResponse:
        if isinstance(exc, TokenError):
            return _error(401, exc.code, str(exc), headers={"WWW-Authenticate": "Bearer"})
        if isinstance(exc, NotFoundError):
            return _error(404, exc.code, str(exc))
        if isinstance(exc, InvalidRequestError):
            return _error(422, exc.code, str(exc))
        if isinstance(exc, ConfigError):
            return _error(409, exc.code, str(exc))
        return _error(400, exc.code, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = jsonable_encoder(exc.errors(), custom_encoder={Exception: str})
        first = problems[0] if problems else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(422, "invalid_request", f"{where}: {first.get('msg', 'invalid')}", details=problems)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(exc.status_code, code, str(exc.detail), headers=dict(exc.headers or {}))

    # --- models ---

    @app.get(f"{PREFIX}/models", tags=["models"], responses=errors)
    def list_models(actor: Actor) -> list[ModelOut]:
        """Every model version in the registry."""
        return [ModelOut(**m) for m in ops.models()]

    @app.get(f"{PREFIX}/models/{{name}}/{{version}}", tags=["models"], responses=errors)
    def get_model(name: str, version: str, actor: Actor) -> ModelDetailOut:
        """One model version with its bundle manifest."""
        row = store.model(name, version)
        return ModelDetailOut(**model_view(row), manifest=json.loads(store.manifest_json(name, version)))

    # --- devices ---

    @app.get(f"{PREFIX}/devices", tags=["devices"], responses=errors)
    def list_devices(actor: Actor, tag: Annotated[str | None, Query(description="Only devices with this tag.")] = None,
                     stall_after_s: StallQuery = DEFAULT_STALL_AFTER_S) -> list[DeviceOut]:
        """Every device of the fleet as it reported itself, its tags, last telemetry window and sync state."""
        return [DeviceOut(**d) for d in ops.devices(tag, stall_after_s)]

    @app.get(f"{PREFIX}/devices/{{device_id}}", tags=["devices"], responses=errors)
    def get_device(device_id: str, actor: Actor, stall_after_s: StallQuery = DEFAULT_STALL_AFTER_S) -> DeviceDetailOut:
        """One device: reported state, sync state, tags, last telemetry, desired deployment and recent events."""
        return DeviceDetailOut(**ops.device(device_id, stall_after_s))

    @app.post(f"{PREFIX}/devices/{{device_id}}/tags", tags=["devices"], responses=write_errors)
    def tag_device(device_id: str, body: TagsIn, actor: Actor) -> DeviceOut:
        """Add and remove tags of a device (audited); rollouts select tagged devices with `tag:NAME`."""
        return DeviceOut(**ops.tag_device(device_id, body.add, body.remove, actor))

    @app.get(f"{PREFIX}/telemetry/{{device_id}}", tags=["devices"], responses=errors)
    def get_telemetry(device_id: str, actor: Actor,
                      limit: Annotated[int, Query(ge=1, le=1000, description="Windows, newest first.")] = 50,
                      since_ms: Annotated[int, Query(ge=0, description="Only windows at or after.")] = 0,
                      ) -> list[dict[str, Any]]:
        """The newest telemetry windows of one device (newest first)."""
        return ops.telemetry(device_id, since_ms=since_ms, limit=limit)

    # --- deployments ---

    @app.post(f"{PREFIX}/deployments", tags=["deployments"], status_code=201, responses=write_errors)
    def create_deployment(body: DeploymentIn, actor: Actor) -> DeploymentOut:
        """Set the desired version of some or all devices; the server publishes it."""
        return DeploymentOut(**ops.deploy(body.model, body.devices, actor, body.reason, via="api"))

    # --- rollouts ---

    @app.get(f"{PREFIX}/rollouts", tags=["rollouts"], responses=errors)
    def list_rollouts(actor: Actor) -> list[RolloutOut]:
        """Every rollout of the fleet, oldest first."""
        return [RolloutOut(**r) for r in ops.rollouts()]

    @app.get(f"{PREFIX}/rollouts/{{rollout_id}}", tags=["rollouts"], responses=errors)
    def get_rollout(rollout_id: str, actor: Actor) -> RolloutOut:
        """One rollout with per-stage progress."""
        return RolloutOut(**ops.rollout(rollout_id))

    @app.post(f"{PREFIX}/rollouts", tags=["rollouts"], status_code=201, responses=write_errors)
    def create_rollout(body: RolloutIn, actor: Actor) -> RolloutOut:
        """Start a staged rollout; the running server drives it through its stages and gates."""
        gates = gates_from_request(body.model_dump())
        return RolloutOut(**ops.start_rollout(body.model, body.devices, body.stages, gates, policy=body.policy,
                                              max_concurrent=body.max_concurrent, approval=body.approval,
                                              actor=actor, reason=body.reason))

    @app.post(f"{PREFIX}/rollouts/{{rollout_id}}/{{command}}", tags=["rollouts"], responses=write_errors)
    def command_rollout(rollout_id: str, command: Command, actor: Actor, body: CommandIn | None = None) -> RolloutOut:
        """Pause, resume, approve, abort or roll back a rollout (409 when its state does not allow it)."""
        return RolloutOut(**ops.command(rollout_id, command.value, actor, body.reason if body else ""))

    # --- audit ---

    @app.get(f"{PREFIX}/audit", tags=["audit"], responses=errors)
    def get_audit(actor: Actor, limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
                  target: Annotated[str | None, Query(description="Only entries about this target.")] = None,
                  ) -> list[AuditOut]:
        """Who did what, when and why: API calls, CLI commands and the rollout driver (newest first)."""
        return [AuditOut(**r) for r in ops.audit(limit, target)]

    # --- dashboard, event stream, /metrics ---
    install_dashboard(app, store=store, ops=ops, tokens=tokens, bus=live or LiveBus(),
                      counters=counters or IngestCounters(), options=web or WebOptions(), prefix=PREFIX)
    return app


class HttpApi:
    """The API served by uvicorn in a background thread of the fleet server process."""

    def __init__(self, home: Path, fleet: str, host: str, port: int, database: Path | str | None = None, *,
                 live: LiveBus | None = None, counters: IngestCounters | None = None,
                 web: WebOptions | None = None) -> None:
        app = create_app(home, fleet, database, live=live, counters=counters, web=web)
        # Open event streams end when the server closes its live bus; the grace period is a backstop.
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                timeout_graceful_shutdown=5)
        self.address = f"http://{host}:{port}"
        self.server = uvicorn.Server(config)
        # Signal handlers are installed only from the main thread; this runs elsewhere, so the
        # fleet server keeps its own SIGTERM/SIGINT handling and stops us through should_exit.
        self._thread = threading.Thread(target=self.server.run, name="http-api", daemon=True)

    def start(self, timeout_s: float = 15.0) -> HttpApi:
        """Serve, and return once listening; ConfigError if the port cannot be bound."""
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self._thread.is_alive():
                raise ConfigError(f"the HTTP API could not listen on {self.address} (port in use?)")
            if time.monotonic() > deadline:
                self.stop()
                raise ConfigError(f"the HTTP API did not start on {self.address} in {timeout_s:.0f} s")
            time.sleep(0.02)
        log.info("http api listening on %s%s", self.address, PREFIX)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self.server.should_exit = True
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("http api did not stop in %.0f s", timeout_s)
