"""The HTTP API of a real ``edgeops server --http-port``: tokens from the CLI, a real agent, real HTTP."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from edgeops.broker import free_port, wait_for_port
from edgeops.examples import TrainedExample
from edgeops.processes import ManagedProcess
from tests.integration.harness import BrokerHandle, Processes, add_versions, edgeops, wait_until

pytestmark = pytest.mark.integration
API = "/api/v1"


class Client:
    """Just enough HTTP for the tests: JSON in, (status, JSON) out, an optional bearer token."""

    def __init__(self, port: int, token: str | None) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.token = token

    def call(self, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        bearer = token if token is not None else self.token
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def get(self, path: str) -> Any:
        status, body = self.call("GET", API + path)
        assert status == 200, (path, status, body)
        return body

    def post(self, path: str, body: Any, expect: int = 200) -> Any:
        status, answer = self.call("POST", API + path, body)
        assert status == expect, (path, status, answer)
        return answer


def start_server_with_api(processes: Processes, home: Path, broker: BrokerHandle) -> tuple[ManagedProcess, int]:
    port = free_port()
    server = processes.start("server", "server", "--home", str(home), "--broker", str(broker.address),
                             "--http-port", str(port))
    wait_for_port("127.0.0.1", port, timeout_s=20)
    return server, port


def test_http_api_with_tokens_deployments_rollouts_and_audit(
    mosquitto: BrokerHandle, processes: Processes, digits: TrainedExample, digits_v2: TrainedExample,
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    add_versions(home, [("1", digits), ("2", digits_v2)], sign=False)
    secret = edgeops("token", "create", "ci-bot", "--home", str(home)).stdout.strip()
    doomed = edgeops("token", "create", "old-bot", "--home", str(home)).stdout.strip()
    assert secret.startswith("eo_") and doomed != secret
    server, port = start_server_with_api(processes, home, mosquitto)
    processes.agent("dev-1", mosquitto)
    api = Client(port, secret)

    # Authentication: nothing without a valid, unrevoked token; the OpenAPI document is public.
    for token in ("", "eo_not-a-real-token", "garbage"):
        status, body = api.call("GET", f"{API}/models", token=token)
        assert status == 401 and body["error"]["code"] == "invalid_token", (token, body)
    status, body = api.call("POST", f"{API}/deployments", {"model": "nonsense"}, token="")
    assert status == 401, body  # authentication comes before validation
    assert api.call("GET", f"{API}/models", token=doomed)[0] == 200
    edgeops("token", "revoke", "old-bot", "--home", str(home))
    status, body = api.call("GET", f"{API}/models", token=doomed)
    assert status == 401 and body["error"]["code"] == "token_revoked"
    listed = json.loads(edgeops("token", "list", "--json", "--home", str(home)).stdout)
    assert {t["name"]: t["revoked"] for t in listed} == {"ci-bot": False, "old-bot": True}
    assert {t["name"] for t in listed if t["last_used_ms"]} == {"old-bot"}  # ci-bot is not used yet
    status, doc = api.call("GET", f"{API}/openapi.json", token="")
    assert status == 200
    assert {f"{API}/models", f"{API}/models/{{name}}/{{version}}", f"{API}/devices", f"{API}/devices/{{device_id}}",
            f"{API}/deployments", f"{API}/rollouts", f"{API}/rollouts/{{rollout_id}}",
            f"{API}/rollouts/{{rollout_id}}/{{command}}", f"{API}/telemetry/{{device_id}}",
            f"{API}/audit"} <= set(doc["paths"])
    assert "HTTPBearer" in doc["components"]["securitySchemes"]

    # Models.
    models = api.get("/models")
    assert [m["label"] for m in models] == ["digits:1", "digits:2"]
    one = api.get("/models/digits/1")
    assert one["digest"] == models[0]["digest"] and one["manifest"]["name"] == "digits"

    # Devices, and a deployment that the device converges to.
    wait_until(lambda: [d["device_id"] for d in api.get("/devices") if d["online"]] == ["dev-1"], 30,
               "dev-1 online through the API")
    dep = api.post("/deployments", {"model": "digits:1", "devices": ["dev-1"], "reason": "first install"}, 201)
    assert dep["devices"] == "dev-1" and dep["digest"] == models[0]["digest"]

    def converged() -> dict[str, Any] | None:
        d = api.get("/devices/dev-1")
        ok = d["running"] == "digits:1" and d["phase"] == "committed" and d["last_telemetry"] is not None \
            and d["last_telemetry"].get("model_version") == "1"
        return d if ok else None

    device = wait_until(converged, 60, "dev-1 running digits:1 through the API")
    assert device["desired"]["deployment_id"] == dep["id"] and device["events"]
    windows = api.get("/telemetry/dev-1?limit=2")
    assert 1 <= len(windows) <= 2 and all(w["device_id"] == "dev-1" for w in windows)

    # A rollout: created, paused, resumed; commands its state does not allow are refused.
    rollout = api.post("/rollouts", {"model": "digits:2", "devices": "all", "stages": "canary:1", "soak_s": 600,
                                     "min_inferences": 7, "min_sample": 2, "reason": "new weights"}, 201)
    assert rollout["state"] == "running" and rollout["target"] == "digits:2" and rollout["stages"][0]["count"] == 1
    rid = rollout["id"]
    assert api.post(f"/rollouts/{rid}/pause", {"reason": "looking at the canary"})["state"] == "paused"
    assert api.get(f"/rollouts/{rid}")["reason"] == "looking at the canary"
    status, body = api.call("POST", f"{API}/rollouts/{rid}/pause", {})
    assert status == 409 and body["error"]["code"] == "config_error"
    assert api.post(f"/rollouts/{rid}/resume", {"reason": "canary fine"})["state"] == "running"
    assert [r["id"] for r in api.get("/rollouts")] == [rid]

    # Unknown things are 404 with a message naming them; malformed requests are 422.
    for path, word in (("/models/digits/9", "digits:9"), ("/devices/nope", "nope"), ("/telemetry/nope", "nope"),
                       ("/rollouts/r-nope", "r-nope")):
        status, body = api.call("GET", API + path)
        assert status == 404 and body["error"]["code"] == "not_found" and word in body["error"]["message"], path
    status, body = api.call("POST", f"{API}/deployments", {"model": "digits:1", "devices": ["ghost"]})
    assert status == 404 and "ghost" in body["error"]["message"]
    status, body = api.call("POST", f"{API}/rollouts/r-nope/abort", {})
    assert status == 404
    for bad in ({"model": "digits"}, {"model": "digits:1", "devices": "some"}, {"model": "digits:1", "devices": []},
                {"model": "digits:1", "devices": ["bad id"]}):
        status, body = api.call("POST", f"{API}/deployments", bad)
        assert status == 422 and body["error"]["code"] == "invalid_request", (bad, body)
    for bad in ({"model": "digits:2", "stages": "150%"}, {"model": "digits:2", "policy": "panic"},
                {"model": "digits:2", "max_error_rate": 2}, {"model": "digits:2", "min_inferences": 0}):
        status, body = api.call("POST", f"{API}/rollouts", bad)
        assert status == 422, (bad, body)
    status, body = api.call("POST", f"{API}/rollouts/{rid}/jump", {})
    assert status == 422

    # Every mutating call is in the audit log with the token's name as the actor and the reason.
    audit = api.get("/audit?limit=200")
    mine = {(a["action"], a["target"]): a for a in audit if a["actor"] == "ci-bot"}
    assert mine[("deploy", f"deployment-{dep['id']}")]["reason"] == "first install"
    assert mine[("deploy", f"deployment-{dep['id']}")]["details"]["model"] == "digits:1"
    created_gates = mine[("rollout_create", rid)]["details"]["stages"][0]["gates"]
    assert (created_gates["min_inferences"], created_gates["min_sample"], created_gates["soak_s"]) == (7, 2, 600)
    assert mine[("rollout_pause", rid)]["reason"] == "looking at the canary"
    assert "canary fine" in mine[("rollout_resume", rid)]["reason"]
    assert {a["action"] for a in audit if a["target"].startswith("token:")} == {"token_create", "token_revoke"}
    assert len(api.get("/audit?limit=2")) == 2
    assert server.alive
    assert server.stop() == 0
    assert "Traceback" not in server.output()
