"""The dashboard's routes on the fleet server's FastAPI app, its sign-in, its event stream and /metrics.

Sign-in exchanges an API token (``edgeops token create``) for a session: a random id in an
``HttpOnly; SameSite=Strict`` cookie, mapped in server memory to the token. Every request made with
the cookie checks the token again, so revoking it logs its sessions out; sessions end with the
server process, after ``session_ttl_s``, or on sign-out. The secret itself never reaches the
browser's cookie jar, and scripts cannot read the cookie.

The dashboard's data routes (``/api/v1/dashboard/...``) and the stream (``/api/v1/stream``) accept
the cookie or ``Authorization: Bearer``; the JSON API keeps taking only the bearer header (so the
cookie cannot be used to change anything). ``/metrics`` takes the bearer header, as Prometheus
sends it (``authorization: {credentials_file: ...}`` in a scrape config).
"""

from __future__ import annotations

import html
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.staticfiles import StaticFiles

from edgeops.errors import ConfigError
from edgeops.protocol import ID_PATTERN
from fleet_server import metrics
from fleet_server.config import ServerConfig
from fleet_server.dashboard import views
from fleet_server.live import DEFAULT_HEARTBEAT_S, LiveBus, sse_stream
from fleet_server.operations import FleetOperations
from fleet_server.store import Store, StoreUnavailableError, now_ms
from fleet_server.tokens import TokenError, Tokens

log = logging.getLogger(__name__)

COOKIE = "edgeops_session"
DASHBOARD = "/dashboard"
LOGIN = f"{DASHBOARD}/login"
STATIC = f"{DASHBOARD}/static"
#: Sessions kept at most; the oldest is forgotten first (its browser signs in again).
MAX_SESSIONS = 1024
#: A sign-in form is a token and nothing else: larger bodies are refused unread.
MAX_LOGIN_BODY_BYTES = 4096
#: The page loads only its own files: no CDN, no inline script, nothing from elsewhere.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
PAGE_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store",
                "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}


def static_dir() -> Path:
    """The dashboard's files, installed as package data beside this package."""
    return Path(str(files("fleet_server").joinpath("static")))


@dataclass(frozen=True)
class WebOptions:
    """Settings of the dashboard and /metrics (from :class:`fleet_server.config.ServerConfig`)."""

    #: Seconds a dashboard session lasts after sign-in.
    session_ttl_s: float = 12 * 3600.0
    #: Seconds between heartbeat comments on an idle event stream.
    heartbeat_s: float = DEFAULT_HEARTBEAT_S
    #: Devices with their own per-device series in /metrics.
    metrics_max_devices: int = metrics.DEFAULT_MAX_DEVICES

    def __post_init__(self) -> None:
        if not self.session_ttl_s > 0:
            raise ConfigError(f"dashboard_session_ttl_s must be positive, got {self.session_ttl_s}")
        if not self.heartbeat_s > 0:
            raise ConfigError(f"live_heartbeat_s must be positive, got {self.heartbeat_s}")
        if self.metrics_max_devices < 0:
            raise ConfigError(f"metrics_max_devices must be >= 0, got {self.metrics_max_devices}")

    @classmethod
    def from_config(cls, config: ServerConfig) -> WebOptions:
        return cls(session_ttl_s=config.dashboard_session_ttl_s, heartbeat_s=config.live_heartbeat_s,
                   metrics_max_devices=config.metrics_max_devices)


class Sessions:
    """Session id -> API token secret, in memory, with an expiry; bounded in count."""

    def __init__(self, ttl_s: float, max_sessions: int = MAX_SESSIONS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self._clock = clock
        self._lock = threading.Lock()
        self._sessions: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def create(self, secret: str) -> str:
        sid = secrets.token_urlsafe(32)
        with self._lock:
            self._sessions[sid] = (secret, self._clock() + self.ttl_s)
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        return sid

    def secret(self, sid: str) -> str | None:
        """The token behind a live session; None for an unknown or expired one (then forgotten)."""
        with self._lock:
            entry = self._sessions.get(sid)
            if entry is None:
                return None
            if entry[1] <= self._clock():
                del self._sessions[sid]
                return None
            return entry[0]

    def drop(self, sid: str) -> None:
        with self._lock:
            self._sessions.pop(sid, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)


def _bearer(request: Request) -> str | None:
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    return credentials.strip() or None if scheme.lower() == "bearer" else None


def session_actor(request: Request) -> str:
    """The token name behind the session cookie or bearer header; TokenError (401) otherwise."""
    sessions: Sessions = request.app.state.dashboard_sessions
    tokens: Tokens = request.app.state.tokens
    sid = request.cookies.get(COOKIE)
    if sid:
        secret = sessions.secret(sid)
        if secret is not None:
            try:
                return tokens.verify(secret)
            except TokenError:
                sessions.drop(sid)  # revoked since sign-in
                raise
    bearer = _bearer(request)
    if bearer is None:
        raise TokenError(f"not signed in: sign in at {LOGIN} or send 'Authorization: Bearer <token>'")
    return tokens.verify(bearer)


def bearer_actor(request: Request) -> str:
    """The token name of a bearer header (``/metrics``: scrapers send one; cookies do not count)."""
    bearer = _bearer(request)
    if bearer is None:
        raise TokenError("missing bearer token: send 'Authorization: Bearer <token>'")
    tokens: Tokens = request.app.state.tokens
    return tokens.verify(bearer)


def still_authorized(request: Request) -> Callable[[], bool]:
    """A check that the credential of this request (session or bearer token) is still good: an
    open event stream ends when its token is revoked or its session ends."""
    sessions: Sessions = request.app.state.dashboard_sessions
    tokens: Tokens = request.app.state.tokens
    sid = request.cookies.get(COOKIE)
    bearer = _bearer(request)

    def check() -> bool:
        secret = sessions.secret(sid) if sid else None
        if secret is None and sid and bearer is None:
            return False  # signed out or expired
        try:
            tokens.verify(secret or bearer or "")
        except TokenError:
            return False
        return True

    return check


#: A dashboard viewer: signed in (cookie) or holding a bearer token.
Viewer = Annotated[str, Depends(session_actor)]
#: A scraper of /metrics, with a bearer token.
Scraper = Annotated[str, Depends(bearer_actor)]


def install(app: FastAPI, *, store: Store, ops: FleetOperations, tokens: Tokens, bus: LiveBus,
            counters: metrics.IngestCounters, options: WebOptions, prefix: str) -> Sessions:
    """Add the dashboard, its data routes, the event stream and /metrics to the API's app."""
    sessions = Sessions(options.session_ttl_s)
    files_dir = static_dir()
    index_html = (files_dir / "index.html").read_text(encoding="utf-8")
    login_html = (files_dir / "login.html").read_text(encoding="utf-8")
    router = APIRouter()
    app.state.tokens = tokens
    app.state.dashboard_sessions = sessions

    def login_page(message: str = "", status: int = 200) -> HTMLResponse:
        body = login_html.replace("<!--error-->", html.escape(message))
        return HTMLResponse(body, status_code=status, headers=PAGE_HEADERS)

    # --- pages ---

    @router.get(DASHBOARD, include_in_schema=False)
    def dashboard_page(request: Request) -> Response:
        """The dashboard, or a redirect to the sign-in page without a valid session."""
        try:
            session_actor(request)
        except TokenError:
            return RedirectResponse(LOGIN, status_code=303)
        return HTMLResponse(index_html, headers=PAGE_HEADERS)

    @router.get("/", include_in_schema=False)
    def site_root() -> RedirectResponse:
        return RedirectResponse(DASHBOARD, status_code=307)

    @router.get(f"{DASHBOARD}/", include_in_schema=False)
    def dashboard_slash() -> RedirectResponse:
        return RedirectResponse(DASHBOARD, status_code=308)

    @router.get(LOGIN, include_in_schema=False)
    def login_form() -> HTMLResponse:
        return login_page()

    @router.post(LOGIN, include_in_schema=False)
    async def login(request: Request) -> Response:
        """Exchange a token for a session cookie (a plain form post: works without JavaScript)."""
        length = request.headers.get("content-length")
        if length is None or not length.isdigit():
            return login_page("send the sign-in form as a url-encoded body with a Content-Length", 411)
        if int(length) > MAX_LOGIN_BODY_BYTES:
            return login_page(f"the sign-in form is larger than {MAX_LOGIN_BODY_BYTES} bytes", 413)
        body = (await request.body())[:MAX_LOGIN_BODY_BYTES].decode("utf-8", errors="replace")
        secret = (parse_qs(body).get("token") or [""])[0].strip()
        if not secret:
            return login_page("enter an API token (edgeops token create NAME)", 401)
        try:
            actor = await run_in_threadpool(tokens.verify, secret)
        except TokenError as exc:
            log.info("dashboard sign-in refused: %s", exc)
            return login_page(f"sign-in refused: {exc}", 401)
        await run_in_threadpool(store.audit, actor, "dashboard_login", "dashboard", "")
        response = RedirectResponse(DASHBOARD, status_code=303)
        response.set_cookie(COOKIE, sessions.create(secret), max_age=int(options.session_ttl_s), path="/",
                            httponly=True, samesite="strict", secure=request.url.scheme == "https")
        return response

    @router.post(f"{DASHBOARD}/logout", include_in_schema=False)
    def logout(request: Request) -> RedirectResponse:
        sid = request.cookies.get(COOKIE)
        if sid:
            sessions.drop(sid)
        response = RedirectResponse(LOGIN, status_code=303)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    # --- data for the page ---

    @router.get(f"{prefix}/dashboard/overview", tags=["dashboard"])
    def dashboard_overview(actor: Viewer) -> dict[str, Any]:
        """Snapshot for the dashboard: devices, rollouts with their gates, recent drift alerts."""
        return views.overview(ops, actor)

    @router.get(f"{prefix}/dashboard/devices/{{device_id}}", tags=["dashboard"])
    def dashboard_device(device_id: str, actor: Viewer) -> dict[str, Any]:
        """One device for the dashboard: telemetry windows, drift heatmap columns, update history."""
        return views.device_detail(ops, device_id)

    @router.get(f"{prefix}/stream", tags=["dashboard"], response_class=StreamingResponse)
    async def stream(request: Request, actor: Viewer,
                     device: Annotated[str | None, Query(pattern=f"^{ID_PATTERN}$", description=(
                         "Also relay this device's per-feature drift details."))] = None,
                     ) -> StreamingResponse:
        """Server-sent events: device, telemetry, event, drift and rollout changes as the server ingests them."""
        events = sse_stream(bus, device=device, heartbeat_s=options.heartbeat_s,
                            hello={"fleet": ops.fleet, "actor": actor, "server_ms": now_ms()},
                            authorized=still_authorized(request))
        return StreamingResponse(events, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    # --- Prometheus ---

    @router.get("/metrics", tags=["metrics"], response_class=Response)
    def metrics_route(actor: Scraper) -> Response:
        """Prometheus text exposition (docs/dashboard.md lists the names, labels and bounds)."""
        try:
            sample = metrics.gather(store, ops.fleet, counters, bus.subscribers, bus.dropped_total)
        except StoreUnavailableError as exc:
            log.warning("metrics scrape failed: %s", exc)
            return Response(f"# store unavailable: {exc}\n", status_code=503, media_type="text/plain")
        body = metrics.render(metrics.fleet_metrics(sample, options.metrics_max_devices))
        return Response(body, media_type=metrics.CONTENT_TYPE)

    app.include_router(router)
    app.mount(STATIC, StaticFiles(directory=files_dir), name="dashboard-static")
    return sessions

