"""``edgeops model ...`` and ``edgeops keys ...`` end to end through the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeops.examples import TrainedExample

pytestmark = pytest.mark.integration


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeops", *args], capture_output=True, text=True, timeout=180,
                          check=False)


def ok(*args: str) -> str:
    result = run(*args)
    assert result.returncode == 0, result.stderr + result.stdout
    return result.stdout


def test_quantize_validate_sign_list_show_diff(tmp_path: Path, digits: TrainedExample) -> None:
    home = str(tmp_path / "home")
    np.savez(tmp_path / "calib.npz", X=digits.reference)
    np.savez(tmp_path / "val.npz", X=digits.x_test, y=digits.y_test)
    first = ok("model", "add", str(digits.model_path), "--name", "digits", "--version", "1", "--home", home)
    assert "no signing key" in first and "generated key-" in first  # the first add makes a key, and says so
    assert "digits:1 added" in first and "signed by " in first
    second = ok("model", "add", str(digits.model_path), "--name", "digits", "--version", "2-int8", "--quantize",
                "dynamic", "--calibration", str(tmp_path / "calib.npz"), "--validation", str(tmp_path / "val.npz"),
                "--home", home)
    assert "digits:2-int8 added" in second and "validation on 450 rows" in second and "no signing key" not in second
    again = ok("model", "add", str(digits.model_path), "--name", "digits", "--version", "2-int8", "--quantize",
               "dynamic", "--calibration", str(tmp_path / "calib.npz"), "--validation", str(tmp_path / "val.npz"),
               "--home", home)
    assert "already present" in again

    rows = json.loads(ok("model", "list", "--json", "--home", home))
    assert [r["version"] for r in rows] == ["1", "2-int8"]
    assert rows[1]["parent_version"] == "1" and rows[1]["parent_digest"] == rows[0]["digest"]
    assert rows[0]["signed_by"] == rows[1]["signed_by"] and len(rows[0]["signed_by"]) == 16
    assert "dynamic" in ok("model", "list", "--home", home)
    show = ok("model", "show", "digits:2-int8", "--home", home)
    assert "mode=dynamic" in show and "digits:2-int8 <- digits:1" in show and "passed" in show
    diff = ok("model", "diff", "digits:1", "digits:2-int8", "--home", home)
    assert "changed" in diff and "quantization" in diff
    fields = {r["field"]: r for r in json.loads(ok("model", "diff", "digits:1", "digits:2-int8", "--json",
                                                    "--home", home))}
    assert fields["quantization"]["changed"] and fields["quantization"]["b"].startswith("mode=dynamic")
    assert not fields["runtime"]["changed"]
    assert rows[1]["recipe"]["quantize"]["mode"] == "dynamic"

    keys = json.loads(ok("keys", "list", "--json", "--home", home))
    assert len(keys) == 1 and keys[0]["active"] and keys[0]["key_id"] == rows[0]["signed_by"]
    ok("model", "export", "digits:2-int8", str(tmp_path / "b.zip"), "--home", home)
    ok("keys", "export-public", str(tmp_path / "trust"), "--home", home)
    assert "signed by " + keys[0]["key_id"] in ok("model", "verify", str(tmp_path / "b.zip"), "--trust-dir",
                                                  str(tmp_path / "trust"))


def test_gate_refuses_and_force_overrides(tmp_path: Path, digits: TrainedExample) -> None:
    home = str(tmp_path / "home")
    np.savez(tmp_path / "val.npz", X=digits.x_test, y=digits.y_test)
    args = ["model", "add", str(digits.model_path), "--name", "digits", "--version", "1", "--quantize", "dynamic",
            "--validation", str(tmp_path / "val.npz"), "--max-accuracy-drop", "-1", "--home", home]
    refused = run(*args)
    assert refused.returncode == 1 and "exceeds the gate" in refused.stderr and "--force" in refused.stderr
    assert "Traceback" not in refused.stderr
    forced = ok(*args, "--force")
    assert "overridden (--force)" in forced and "digits:1 added" in forced
    unvalidated = run("model", "add", str(digits.model_path), "--name", "digits", "--version", "2", "--quantize",
                      "dynamic", "--home", home)
    assert unvalidated.returncode == 1 and "needs a validation set" in unvalidated.stderr


def test_keys_rotation(tmp_path: Path, digits: TrainedExample) -> None:
    home = str(tmp_path / "home")
    assert "(active)" in ok("keys", "generate", "--name", "old", "--home", home)
    assert "(not active)" in ok("keys", "generate", "--name", "new", "--home", home)
    ok("keys", "export-public", str(tmp_path / "trust"), "--home", home)
    ok("model", "add", str(digits.model_path), "--name", "digits", "--version", "1", "--home", home)
    ok("keys", "activate", "new", "--home", home)
    ok("model", "add", str(digits.model_path), "--name", "digits", "--version", "2", "--home", home)
    rows = json.loads(ok("model", "list", "--json", "--home", home))
    assert rows[0]["signed_by"] != rows[1]["signed_by"]
    for version in ("1", "2"):  # the agent's trust dir holds both keys: both versions verify
        ok("model", "export", f"digits:{version}", str(tmp_path / f"{version}.zip"), "--home", home)
        ok("model", "verify", str(tmp_path / f"{version}.zip"), "--trust-dir", str(tmp_path / "trust"))
    table = ok("keys", "list", "--home", home)
    assert "old" in table and "new" in table and "active" in table


def test_inspect_and_quantize_commands(tmp_path: Path, digits: TrainedExample) -> None:
    assert "X float32[N, 64]" in ok("model", "inspect", str(digits.model_path))
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"nope")
    bad = run("model", "inspect", str(junk))
    assert bad.returncode == 1 and "is not a model" in bad.stderr
    np.savez(tmp_path / "val.npz", X=digits.x_test, y=digits.y_test)
    out = ok("model", "quantize", str(digits.model_path), str(tmp_path / "q.onnx"), "--validation",
             str(tmp_path / "val.npz"))
    assert (tmp_path / "q.onnx").is_file() and "latency ms, batch 32" in out
