"""The fleet CLI against a real server's HTTP API (``--server``/``--token``) and on the local store.

Both paths must print the same JSON documents, every mutation must land in the audit log, device
tags must select devices in deployments and rollouts, and every failure a user can cause (server
unreachable, bad or missing token, unknown device, model or tag) must end in one line on stderr.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edgeops.broker import free_port
from edgeops.examples import TrainedExample
from tests.integration.harness import BrokerHandle, Processes, add_versions, edgeops, wait_until
from tests.integration.test_http_api import start_server_with_api

pytestmark = pytest.mark.integration


def _json(*args: str) -> Any:
    return json.loads(edgeops(*args).stdout)


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a failed command (asserting it failed cleanly)."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_fleet_cli_remote_and_local_with_tags_tail_and_errors(
    mosquitto: BrokerHandle, processes: Processes, digits: TrainedExample, digits_v2: TrainedExample,
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    local = ("--home", str(home))
    add_versions(home, [("1", digits), ("2", digits_v2)], sign=False)
    token = edgeops("token", "create", "ops-laptop", *local).stdout.strip()
    server, port = start_server_with_api(processes, home, mosquitto)
    remote = ("--server", f"http://127.0.0.1:{port}", "--token", token)
    processes.agent("dev-1", mosquitto)
    processes.agent("dev-2", mosquitto)
    wait_until(lambda: {d["device_id"] for d in _json("devices", "list", "--json", *remote) if d["online"]}
               == {"dev-1", "dev-2"}, 30, "both devices online through the API")

    # The same documents locally and through the API.
    over_api = _json("devices", "list", "--json", *remote)
    on_store = _json("devices", "list", "--json", *local)
    assert [d["device_id"] for d in over_api] == [d["device_id"] for d in on_store] == ["dev-1", "dev-2"]
    assert all(set(a) == set(b) for a, b in zip(over_api, on_store, strict=True))

    # Tags: added and removed remotely, seen locally, audited with the token's name.
    tagged = _json("devices", "tag", "dev-2", "canary", "pilot", "--json", *remote)
    assert tagged["tags"] == ["canary", "pilot"]
    assert _json("devices", "tag", "dev-2", "--remove", "pilot", "--json", *local)["tags"] == ["canary"]
    assert [d["device_id"] for d in _json("devices", "list", "--tag", "canary", "--json", *remote)] == ["dev-2"]
    assert "canary" in edgeops("devices", "list", *local).stdout
    audit = _json("audit", "list", "--json", "--target", "dev-2", *local)
    assert [(a["actor"], a["details"]["add"]) for a in audit if a["action"] == "device_tag"][-1] == (
        "ops-laptop", ["canary", "pilot"])

    # A deployment by tag reaches only the tagged device.
    dep = _json("deploy", "digits:1", "--devices", "tag:canary", "--reason", "try on the canary", "--json", *remote)
    assert dep["devices"] == "tag:canary"

    def dev2_on_v1() -> bool:
        d = _json("devices", "show", "dev-2", "--json", *remote)
        return bool(d["running"] == "digits:1" and d["phase"] == "committed")

    wait_until(dev2_on_v1, 60, "dev-2 running digits:1 after a deployment to tag:canary")
    shown = _json("devices", "show", "dev-1", "--json", *remote)
    assert shown["desired"] is None and shown["running"] is None
    assert "digits:1" in edgeops("devices", "show", "dev-2", *local).stdout

    # telemetry tail: stored windows oldest first, then --follow prints new ones as JSON lines.
    wait_until(lambda: len(edgeops("telemetry", "tail", "dev-2", "--json", *remote).stdout.splitlines()) >= 2, 30,
               "two stored windows of dev-2")
    lines = [json.loads(line) for line in edgeops("telemetry", "tail", "dev-2", "-n", "5", "--json",
                                                  *remote).stdout.splitlines()]
    assert 2 <= len(lines) <= 5 and {w["device_id"] for w in lines} == {"dev-2"}
    assert [w["ts"] for w in lines] == sorted(w["ts"] for w in lines)
    assert "inferences" in edgeops("telemetry", "tail", "dev-2", *local).stdout
    follow = subprocess.Popen([sys.executable, "-m", "edgeops", "telemetry", "tail", "dev-2", "-n", "1", "--follow",
                               "--interval", "0.2", "--json", *remote], stdout=subprocess.PIPE, text=True,
                              env=os.environ.copy())
    try:
        assert follow.stdout is not None
        seen = [json.loads(follow.stdout.readline()) for _ in range(3)]  # the newest, then two new windows
        assert len({w["window_id"] for w in seen}) == 3 and seen[0]["ts"] <= seen[1]["ts"] <= seen[2]["ts"]
    finally:
        follow.send_signal(signal.SIGINT)
        assert follow.wait(timeout=10) == 0

    # Rollouts through the API, read back locally: the same summary.
    started = _json("rollout", "start", "digits:2", "--devices", "tag:canary", "--stages", "canary:1", "--soak", "600",
                    "--reason", "new weights", "--json", *remote)
    assert started["state"] == "running" and started["target"] == "digits:2" and started["selector"] == "tag:canary"
    rid = started["id"]
    assert _json("rollout", "pause", rid, "--reason", "hold", "--json", *remote)["state"] == "paused"
    here, there = _json("rollout", "status", rid, "--json", *local), _json("rollout", "status", rid, "--json", *remote)
    assert here == there and here["reason"] == "hold"
    assert [r["id"] for r in _json("rollout", "list", "--json", *remote)] == [rid]
    assert rid in edgeops("rollout", "list", *remote).stdout

    # One-line errors for what a user gets wrong.
    nobody = ("--server", f"http://127.0.0.1:{free_port()}", "--token", token)
    assert "cannot reach the fleet server" in _one_line_error(edgeops("devices", "list", *nobody, check=False))
    wrong_token = ("--server", remote[1], "--token", "eo_not-a-token")
    assert "refused the token" in _one_line_error(edgeops("rollout", "list", *wrong_token, check=False))
    no_token = edgeops("devices", "list", "--server", remote[1], check=False)
    assert "token is needed" in _one_line_error(no_token)
    assert "ghost" in _one_line_error(edgeops("devices", "show", "ghost", *remote, check=False))
    assert "ghost" in _one_line_error(edgeops("devices", "tag", "ghost", "x", *local, check=False))
    assert "nope" in _one_line_error(edgeops("deploy", "digits:1", "--devices", "tag:nope", *remote, check=False))
    assert "digits:9" in _one_line_error(edgeops("rollout", "start", "digits:9", *remote, check=False))
    refused = _one_line_error(edgeops("rollout", "resume", "r-nope", *remote, check=False))
    assert "r-nope" in refused
    assert "409" in _one_line_error(edgeops("rollout", "approve", rid, *remote, check=False))
    assert server.alive and server.stop() == 0
    assert "Traceback" not in server.output()
