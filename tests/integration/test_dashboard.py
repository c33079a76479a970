"""The web dashboard in a real headless Chromium against a real server, broker and agents.

Sign-in with a token, the simulated devices listed, a chart that grows as telemetry arrives, a
rollout whose progress moves on the page, drift alerts: all live through server-sent events, with
no reload (a marker set in the page's JavaScript survives). Unauthenticated access is refused, and
/metrics answers a bearer token. Screenshots go to ``$EDGEOPS_TEST_ARTIFACTS/dashboard`` (default
tests/test-artifacts/dashboard).
"""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgeops.examples import TrainedExample
from tests.integration.harness import BrokerHandle, Processes, add_versions, edgeops, wait_until
from tests.integration.test_http_api import Client, start_server_with_api

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page

pytestmark = pytest.mark.integration
MARKER = "window.__edgeopsNoReload"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def raw_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of a GET, redirects not followed."""
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, headers=headers or {}), timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def metric_values(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def still_same_page(page: Page) -> bool:
    return bool(page.evaluate(f"{MARKER} === 'set'"))


def test_dashboard_live_in_a_browser(
    mosquitto: BrokerHandle, processes: Processes, digits: TrainedExample, digits_v2: TrainedExample,
    tmp_path: Path, browser: BrowserContext, screenshots: Path,
) -> None:
    home = tmp_path / "home"
    add_versions(home, [("1", digits), ("2", digits_v2)], sign=False)
    secret = edgeops("token", "create", "viewer", "--home", str(home)).stdout.strip()
    server, port = start_server_with_api(processes, home, mosquitto)
    base = f"http://127.0.0.1:{port}"
    processes.agent("dev-1", mosquitto)
    # dev-2's input drifts; its windows are long enough (>= 500 inferences) for drift to be flagged.
    processes.agent("dev-2", mosquitto, "default", "--simulate-drift", "shift:3@0", telemetry_interval=15.0)
    api = Client(port, secret)

    # --- unauthenticated access is refused --------------------------------------------------------
    status, headers, _ = raw_get(f"{base}/dashboard")
    assert status == 303 and headers["location"] == "/dashboard/login"
    for path in ("/api/v1/dashboard/overview", "/api/v1/dashboard/devices/dev-1", "/api/v1/stream", "/metrics"):
        status, headers, body = raw_get(base + path)
        assert status == 401 and b"invalid_token" in body, (path, status, body)
        status, _, _ = raw_get(base + path, {"Authorization": "Bearer eo_not-a-real-token"})
        assert status == 401, path
    status, _, body = raw_get(f"{base}/dashboard/login")
    assert status == 200 and b'name="token"' in body
    status, _, body = raw_get(f"{base}/dashboard/static/app.js")
    assert status == 200 and b"EventSource" in body  # the page's code is public; its data is not

    wait_until(lambda: {d["device_id"] for d in api.get("/devices") if d["online"]} == {"dev-1", "dev-2"}, 60,
               "both devices online")
    api.post("/deployments", {"model": "digits:1", "devices": "all", "reason": "baseline"}, 201)
    wait_until(lambda: all(d["running"] == "digits:1" and d["phase"] == "committed" for d in api.get("/devices")),
               90, "both devices on digits:1")

    page = browser.new_page()
    requests: list[str] = []
    errors: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))

    # --- sign-in --------------------------------------------------------------------------------------
    page.goto(f"{base}/dashboard")
    assert page.url == f"{base}/dashboard/login"
    page.fill("#token", "eo_wrong-token")
    page.click("button[type=submit]")
    page.wait_for_selector("#login-error:has-text('sign-in refused')")
    page.screenshot(path=str(screenshots / "01-login-refused.png"))
    page.fill("#token", secret)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/dashboard")
    errors.clear()  # Chromium logs the refused sign-in's 401 as a console error: that one was expected
    cookie = next(c for c in browser.cookies() if c["name"] == "edgeops_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and secret not in cookie["value"]
    assert page.evaluate("document.cookie") == ""  # invisible to scripts

    # --- the fleet overview lists the simulated devices -----------------------------------------------
    page.wait_for_selector('#live-status[data-state="live"]')
    for device in ("dev-1", "dev-2"):
        page.wait_for_selector(f'[data-testid="devices-table"] tr[data-device-id="{device}"]')
    page.evaluate(f"{MARKER} = 'set'")
    assert page.text_content('[data-testid="count-online"] .card-value') == "2"
    for device in ("dev-1", "dev-2"):  # the server's sync state: both run what they should
        page.wait_for_selector(f'[data-testid="devices-table"] tr[data-device-id="{device}"] td[data-sync="in_sync"]')
    assert page.text_content('[data-testid="count-attention"] .card-value') == "0"
    assert page.locator('[data-testid="versions"] tr[data-value="digits:1"] td.num').text_content() == "2"
    assert "viewer" in (page.text_content("#actor") or "")
    page.screenshot(path=str(screenshots / "02-overview.png"), full_page=True)

    # --- a device's charts grow as telemetry arrives ---------------------------------------------------
    page.click('[data-testid="devices-table"] a[href="#/devices/dev-1"]')
    chart = page.locator('[data-testid="latency-chart"]')
    first = wait_until(lambda: chart.get_attribute("data-last-window"), 30, "the latency chart of dev-1")
    points = int(chart.get_attribute("data-points") or 0)
    wait_until(lambda: chart.get_attribute("data-last-window") not in (None, first), 30,
               "a new telemetry window charted without reload")
    assert int(chart.get_attribute("data-points") or 0) >= points
    assert page.locator('[data-testid="errors-chart"]').get_attribute("data-points")
    heat = page.locator('[data-testid="drift-heatmap"]')
    wait_until(lambda: int(heat.get_attribute("data-columns") or 0) >= 1, 30, "drift heatmap columns of dev-1")
    columns = int(heat.get_attribute("data-columns") or 0)
    wait_until(lambda: int(heat.get_attribute("data-columns") or 0) > columns
               or heat.get_attribute("data-columns") == "60", 30, "a new drift column charted live")
    assert heat.get_attribute("data-rows") == "64"  # one row per digits feature
    page.wait_for_selector('[data-testid="update-history"] tr[data-kind="update_committed"]')
    assert still_same_page(page)
    page.screenshot(path=str(screenshots / "03-device.png"), full_page=True)

    # --- drift alerts of the drifting device ---------------------------------------------------------
    page.click('nav a[data-nav="alerts"]')
    page.wait_for_selector('[data-testid="alerts-table"] tr[data-device-id="dev-2"]', timeout=60_000)
    page.screenshot(path=str(screenshots / "04-alerts.png"), full_page=True)

    # --- a rollout's progress moves on the page ------------------------------------------------------
    page.click('nav a[data-nav="rollouts"]')
    # The latency gate is opened wide: sub-millisecond p95s on a shared machine are noise, and the
    # subject here is the page, not the gates (tests/integration/test_rollouts.py judges those).
    rollout = api.post("/rollouts", {"model": "digits:2", "devices": "all", "stages": "canary:1,100%",
                                     "soak_s": 1, "max_latency_ratio": 1000, "reason": "dashboard test"}, 201)
    card = page.locator(f'article[data-rollout-id="{rollout["id"]}"]')
    seen: list[tuple[str | None, str | None]] = []

    def progress() -> bool:
        if card.count() == 0:
            return False
        now = (card.get_attribute("data-state"), card.get_attribute("data-committed"))
        if not seen or seen[-1] != now:
            seen.append(now)
        return now == ("succeeded", "2")

    wait_until(lambda: card.count() == 1, 30, "the new rollout pushed to the page")
    assert card.get_attribute("data-state") == "running"
    assert card.locator('table.gates tr[data-gate="error_rate"]').count() == 1  # gates against thresholds
    page.screenshot(path=str(screenshots / "05-rollout-running.png"), full_page=True)
    wait_until(progress, 120, f"rollout {rollout['id']} succeeding on the page")
    assert seen[0][0] == "running" and len(seen) >= 2, seen  # it moved while we watched
    assert card.locator('[data-testid="rollout-progress"]').get_attribute("value") == "2"
    assert still_same_page(page)
    page.screenshot(path=str(screenshots / "06-rollout-succeeded.png"), full_page=True)

    # Nothing was fetched from anywhere but this server, and the page logged no error.
    assert requests and all(u.startswith(base) or u.startswith("data:") for u in requests), requests
    assert errors == [], errors

    # --- Prometheus metrics with the bearer token -----------------------------------------------------
    status, headers, body = raw_get(f"{base}/metrics", {"Authorization": f"Bearer {secret}"})
    assert status == 200 and headers["content-type"].startswith("text/plain")
    values = metric_values(body.decode())
    fleet = ("fleet", "default")
    assert values[("edgeops_devices", frozenset({fleet, ("state", "online")}))] == 2
    assert values[("edgeops_devices_by_version", frozenset({fleet, ("version", "digits:2")}))] == 2
    assert values[("edgeops_rollouts", frozenset({fleet, ("state", "succeeded")}))] == 1
    assert values[("edgeops_telemetry_windows_stored_total", frozenset({fleet}))] > 0
    assert ("edgeops_device_latency_ms_p95", frozenset({fleet, ("device", "dev-1")})) in values
    assert values[("edgeops_live_subscribers", frozenset({fleet}))] >= 1

    # --- revoking the token signs the browser out ------------------------------------------------------
    edgeops("token", "revoke", "viewer", "--home", str(home))
    page.goto(f"{base}/dashboard")
    assert page.url == f"{base}/dashboard/login"
    page.close()
    assert server.stop() == 0
    assert "Traceback" not in server.output()
