"""CLI errors a user can cause end in one line on stderr and exit status 1, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgeops.examples import TrainedExample

pytestmark = pytest.mark.integration


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeops", *args], capture_output=True, text=True, timeout=120,
                          check=False)


def assert_one_line_error(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:") and expected in lines[0], lines[0]


def test_unknown_model_and_version(tmp_path: Path, digits: TrainedExample) -> None:
    home = str(tmp_path / "home")
    assert_one_line_error(run("deploy", "nosuch:1", "--home", home), "unknown model version nosuch:1")
    assert run("model", "add", str(digits.model_path), "--name", "digits", "--version", "1",
               "--home", home).returncode == 0
    assert_one_line_error(run("deploy", "digits:9", "--home", home), "known versions: 1")
    assert_one_line_error(run("deploy", "digits", "--home", home), "expected NAME:VERSION")


def test_unknown_device(tmp_path: Path, digits: TrainedExample) -> None:
    home = str(tmp_path / "home")
    run("model", "add", str(digits.model_path), "--name", "digits", "--version", "1", "--home", home)
    assert_one_line_error(run("deploy", "digits:1", "--devices", "ghost-1", "--home", home),
                          "unknown device(s) in fleet 'default': ghost-1")
    assert_one_line_error(run("deploy", "digits:1", "--devices", "a/b", "--home", home), "invalid device id")


def test_bad_model_files(tmp_path: Path, digits: TrainedExample) -> None:
    home = str(tmp_path / "home")
    assert_one_line_error(run("model", "add", str(tmp_path / "missing.onnx"), "--name", "m", "--version", "1",
                              "--home", home), "no model file")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00garbage")
    assert_one_line_error(run("model", "add", str(junk), "--name", "m", "--version", "1", "--home", home),
                          "onnxruntime refused junk.onnx")
    run("model", "add", str(digits.model_path), "--name", "digits", "--version", "1", "--home", home)
    other = tmp_path / "other.onnx"
    other.write_bytes(digits.model_path.read_bytes() + b"")
    junk_ref = tmp_path / "ref.npz"
    junk_ref.write_bytes(b"not npz")
    assert_one_line_error(run("model", "add", str(other), "--name", "digits", "--version", "1",
                              "--reference", str(junk_ref), "--home", home), "cannot read reference data")


def test_versions_are_immutable(tmp_path: Path, digits: TrainedExample, digits_v2: TrainedExample) -> None:
    home = str(tmp_path / "home")
    first = run("model", "add", str(digits.model_path), "--name", "digits", "--version", "1", "--home", home)
    assert first.returncode == 0 and "digits:1 added" in first.stdout
    again = run("model", "add", str(digits.model_path), "--name", "digits", "--version", "1", "--home", home)
    assert again.returncode == 0 and "already present" in again.stdout
    assert again.stdout.split("digest ")[1][:12] == first.stdout.split("digest ")[1][:12]
    assert_one_line_error(run("model", "add", str(digits_v2.model_path), "--name", "digits", "--version", "1",
                              "--home", home), "already exists with different content")


def test_bad_broker_address(tmp_path: Path) -> None:
    assert_one_line_error(run("server", "--home", str(tmp_path), "--broker", "localhost:notaport"),
                          "port must be a number")


def test_agent_init_writes_a_config_the_agent_reads_and_a_systemd_unit(tmp_path: Path) -> None:
    out = tmp_path / "etc" / "agent.toml"
    result = run("agent", "init", "--device-id", "pi-01", "--broker", "fleet.local:1884", "--data-dir",
                 str(tmp_path / "data"), "--trust-dir", str(tmp_path / "keys"), "--out", str(out))
    assert result.returncode == 0, result.stderr
    unit = (tmp_path / "etc" / "edgeops-agent.service").read_text()
    assert f"agent --config {out}" in unit and "Restart=always" in unit
    from device_agent.config import load_agent_config

    config = load_agent_config(out, {}, {})
    assert (config.device_id, str(config.broker), config.trust_dir) == ("pi-01", "fleet.local:1884",
                                                                        tmp_path / "keys")
    assert_one_line_error(run("agent", "init", "--device-id", "pi-01", "--broker", "x:1", "--out", str(out)),
                          "exists; use --force")
    # The written file starts an agent that refuses to run without its trust directory.
    assert_one_line_error(run("agent", "--config", str(out)), "trust directory")


def test_mosquitto_config_runs_in_mosquitto_and_persists_to_the_data_dir(tmp_path: Path) -> None:
    """The printed configuration is one the real broker accepts; with --data-dir and --user it
    writes its persistence file there on shutdown (as root without --user it could not, here)."""
    import os
    import pwd
    import shutil

    from edgeops.broker import free_port, wait_for_port

    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        pytest.fail("mosquitto is not installed; .ci/run installs it", pytrace=False)
    port, data = free_port(), tmp_path / "data"
    data.mkdir()
    result = run("mosquitto-config", "--port", str(port), "--data-dir", str(data),
                 "--user", pwd.getpwuid(os.geteuid()).pw_name)
    assert result.returncode == 0, result.stderr
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(result.stdout)
    broker = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port("127.0.0.1", port, timeout_s=15)
    finally:
        broker.terminate()
        _, err = broker.communicate(timeout=10)
    assert broker.returncode == 0, err
    assert (data / "mosquitto.db").exists(), sorted(p.name for p in data.iterdir())
