"""Pure parts of the fleet CLI: the HTTP client's configuration checks and error mapping, tail rows."""

from __future__ import annotations

import io
import json
import urllib.error
from email.message import Message
from pathlib import Path

import pytest

from edgeops.cli_rollout import TERMINAL_STATES
from edgeops.cli_telemetry import new_windows, tail_row
from edgeops.errors import AuthenticationError, ConfigError, NotFoundError, RemoteRequestError
from edgeops.fleet_client import HttpFleet, _api_error, connect
from fleet_server.rollout import TERMINAL


def _http_error(status: int, body: object) -> urllib.error.HTTPError:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return urllib.error.HTTPError("http://x/api/v1/y", status, "reason", Message(), io.BytesIO(raw))


def test_http_fleet_needs_an_http_url_and_a_token() -> None:
    with pytest.raises(ConfigError, match="http"):
        HttpFleet("127.0.0.1:8080", "eo_x")
    with pytest.raises(ConfigError, match="token"):
        HttpFleet("http://127.0.0.1:8080", None)
    assert HttpFleet("http://127.0.0.1:8080/", "eo_x").base == "http://127.0.0.1:8080"


def test_connect_picks_the_server_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEOPS_SERVER", "http://10.0.0.1:9000")
    monkeypatch.setenv("EDGEOPS_TOKEN", "eo_secret")
    client = connect(Path("/nonexistent"), "default")
    assert isinstance(client, HttpFleet) and client.where == "http://10.0.0.1:9000"


def test_api_errors_map_to_specific_exceptions() -> None:
    auth = _api_error(_http_error(401, {"error": {"code": "token_revoked", "message": "token 'x' was revoked"}}))
    assert isinstance(auth, AuthenticationError) and "revoked" in str(auth)
    missing = _api_error(_http_error(404, {"error": {"code": "not_found", "message": "unknown device 'ghost'"}}))
    assert isinstance(missing, NotFoundError) and str(missing) == "unknown device 'ghost'"
    conflict = _api_error(_http_error(409, {"error": {"code": "config_error", "message": "cannot pause"}}))
    assert isinstance(conflict, RemoteRequestError) and conflict.status == 409 and conflict.code == "config_error"
    invalid = _api_error(_http_error(422, {"error": {"code": "invalid_request", "message": "body.stages: bad",
                                                     "details": [{"loc": ["body", "stages"], "msg": "bad"}]}}))
    assert "stages bad" in str(invalid) and "\n" not in str(invalid)
    garbage = _api_error(_http_error(502, b"<html>bad gateway</html>"))
    assert isinstance(garbage, RemoteRequestError) and "502" in str(garbage)


def test_tail_rows_and_follow_dedup() -> None:
    windows = [{"window_id": f"w{i}", "ts": 1_000 * i, "inferences": i} for i in (3, 2, 1)]  # newest first
    seen: set[str] = set()
    assert [w["window_id"] for w in new_windows(windows, seen)] == ["w1", "w2", "w3"]
    assert new_windows(windows, seen) == []
    assert [w["window_id"] for w in new_windows([{"window_id": "w4", "ts": 4_000}, *windows], seen)] == ["w4"]
    row = tail_row({"window_id": "w9", "ts": 5_000, "model": "digits", "model_version": "2", "inferences": 7,
                    "errors": 0, "latency_ms_p95": 1.23456, "drift_score": None})
    assert row[1:5] == ("w9", "digits:2", "7", "0") and row[6] == "1.235" and row[8] == "-"


def test_the_cli_knows_the_terminal_rollout_states() -> None:
    assert {s.value for s in TERMINAL} == TERMINAL_STATES
