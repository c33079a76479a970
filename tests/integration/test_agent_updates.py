"""The agent against a real broker, with the test in the server's place so it can misbehave."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from device_agent.local_api import predict_over_http, request
from edgeops.bundle import Bundle, build_bundle
from edgeops.examples import TrainedExample
from edgeops.manifest import bundle_ref
from edgeops.protocol import (
    Desired,
    DeviceChannel,
    Event,
    EventKind,
    Reported,
    Telemetry,
    UpdatePhase,
    chunk_topic,
    device_filter,
    device_topic,
    manifest_topic,
    signature_topic,
)
from edgeops.signing import SigningKey, sign_desired, sign_manifest
from fleet_server.example_models import write_dense_tflite
from tests.integration.harness import BrokerHandle, Listener, Processes, wait_until

pytestmark = pytest.mark.integration
FLEET = "test"
DEVICE = "dev-a"


def publish_bundle(listener: Listener, bundle: Bundle, corrupt: int | None = None) -> None:
    for index, data in bundle.chunks():
        payload = data[:-1] + bytes([data[-1] ^ 0xFF]) if index == corrupt else data
        listener.publish(chunk_topic(FLEET, bundle.digest, index), payload, retain=True)
    listener.publish(manifest_topic(FLEET, bundle.digest), bundle.manifest_bytes, retain=True)


def publish_desired(listener: Listener, bundle: Bundle) -> None:
    desired = Desired(bundle=bundle_ref(bundle.manifest, bundle.digest),
                      manifest_topic=manifest_topic(FLEET, bundle.digest), issued_at=int(time.time() * 1000))
    listener.publish(device_topic(FLEET, DEVICE, DeviceChannel.DESIRED), desired.encode(), retain=True)


def last_reported(listener: Listener) -> Reported | None:
    msgs = listener.on(device_topic(FLEET, DEVICE, DeviceChannel.REPORTED))
    return Reported.decode(msgs[-1].payload) if msgs else None


def failed(listener: Listener) -> Reported | None:
    """The last reported state if the device reports ``failed``."""
    r = last_reported(listener)
    return r if r is not None and r.phase is UpdatePhase.FAILED else None


def events(listener: Listener) -> list[Event]:
    return [Event.decode(m.payload) for m in listener.on(device_topic(FLEET, DEVICE, DeviceChannel.EVENTS))]


def telemetry_since(listener: Listener, count: int) -> list[Telemetry]:
    msgs = listener.on(device_topic(FLEET, DEVICE, DeviceChannel.TELEMETRY))
    return [Telemetry.decode(m.payload) for m in msgs[count:]]


def _committed(listener: Listener, bundle: Bundle) -> bool:
    r = last_reported(listener)
    return r is not None and r.phase is UpdatePhase.COMMITTED and r.active is not None \
        and r.active.digest == bundle.digest


def test_corrupted_chunk_is_rejected_and_previous_model_keeps_serving(
    broker: BrokerHandle, processes: Processes, bundles: tuple[Bundle, Bundle]
) -> None:
    v1, v2 = bundles
    listener = Listener(broker, *(device_filter(FLEET, ch) for ch in
                                  (DeviceChannel.REPORTED, DeviceChannel.EVENTS, DeviceChannel.TELEMETRY)))
    try:
        agent = processes.agent(DEVICE, broker, fleet=FLEET)
        publish_bundle(listener, v1)
        publish_desired(listener, v1)
        wait_until(lambda: _committed(listener, v1), 30, "digits:1 committed")

        publish_bundle(listener, v2, corrupt=2)
        publish_desired(listener, v2)


        report = wait_until(lambda: failed(listener), 30, "the update to digits:2 to fail")
        assert report.last_error is not None and report.last_error.code == "checksum_mismatch"
        assert report.active is not None and report.active.digest == v1.digest
        kinds = [e.kind for e in events(listener)]
        assert EventKind.CHUNK_REJECTED in kinds and EventKind.UPDATE_FAILED in kinds

        # The previous model keeps serving: telemetry windows from version 1 with inferences.
        seen = len(listener.on(device_topic(FLEET, DEVICE, DeviceChannel.TELEMETRY)))
        windows = wait_until(lambda: [t for t in telemetry_since(listener, seen) if t.inferences > 0], 15,
                             "telemetry after the failed update")
        assert all(w.model_version == "1" for w in windows)
        assert agent.alive

        # Re-delivering the same desired message does not retry (no update loop on a bad bundle) ...
        agent.stop()
        agent = processes.agent(DEVICE, broker, fleet=FLEET)
        wait_until(lambda: last_reported(listener) is not None and len(telemetry_since(listener, seen)) > 2, 15,
                   "the restarted agent to report")
        assert last_reported(listener).active.digest == v1.digest  # type: ignore[union-attr]
        # ... while a new desired message for the repaired bundle does (the bad chunk was not kept).
        publish_bundle(listener, v2)
        time.sleep(0.01)
        publish_desired(listener, v2)
        wait_until(lambda: _committed(listener, v2), 30, "digits:2 committed after the repair")
    finally:
        listener.close()


def test_agent_restart_keeps_serving_the_installed_model_without_the_broker_retaining_it(
    broker: BrokerHandle, processes: Processes, bundles: tuple[Bundle, Bundle]
) -> None:
    v1, _ = bundles
    listener = Listener(broker, device_filter(FLEET, DeviceChannel.REPORTED),
                        device_filter(FLEET, DeviceChannel.TELEMETRY))
    try:
        agent = processes.agent(DEVICE, broker, fleet=FLEET)
        publish_bundle(listener, v1)
        publish_desired(listener, v1)
        wait_until(lambda: _committed(listener, v1), 30, "digits:1 committed")
        agent.kill()  # power cut
        # The artifacts disappear from the broker: the agent must not need them to serve again.
        for index, _ in v1.chunks():
            listener.publish(chunk_topic(FLEET, v1.digest, index), b"", retain=True)
        listener.publish(manifest_topic(FLEET, v1.digest), b"", retain=True)
        seen = len(listener.on(device_topic(FLEET, DEVICE, DeviceChannel.TELEMETRY)))
        processes.agent(DEVICE, broker, fleet=FLEET)
        windows = wait_until(lambda: [t for t in telemetry_since(listener, seen) if t.inferences > 0], 20,
                             "telemetry after the restart")
        assert windows[0].model_version == "1"
    finally:
        listener.close()


def test_broker_restart_reconnects_and_a_new_version_still_arrives(
    broker: BrokerHandle, processes: Processes, bundles: tuple[Bundle, Bundle]
) -> None:
    v1, v2 = bundles
    agent = processes.agent(DEVICE, broker, fleet=FLEET)
    listener = Listener(broker, device_filter(FLEET, DeviceChannel.REPORTED), client_id="listener-1")
    try:
        publish_bundle(listener, v1)
        publish_desired(listener, v1)
        wait_until(lambda: _committed(listener, v1), 30, "digits:1 committed")
    finally:
        listener.close()
    broker.restart()  # neither broker keeps retained messages across this restart
    listener = Listener(broker, device_filter(FLEET, DeviceChannel.REPORTED), client_id="listener-2")
    try:
        publish_bundle(listener, v2)
        publish_desired(listener, v2)
        wait_until(lambda: _committed(listener, v2), 45, "digits:2 committed after the broker restart")
        assert agent.alive
    finally:
        listener.close()


def test_probation_failure_rolls_back_locally_and_is_reported(
    mosquitto: BrokerHandle, processes: Processes, bundles: tuple[Bundle, Bundle]
) -> None:
    v1, v2 = bundles
    listener = Listener(mosquitto, device_filter(FLEET, DeviceChannel.REPORTED),
                        device_filter(FLEET, DeviceChannel.EVENTS), device_filter(FLEET, DeviceChannel.TELEMETRY))
    try:
        # Version 2 fails half of its inferences on this device (an injected fault).
        agent = processes.agent(DEVICE, mosquitto, FLEET, "--simulate-faults", "errors=0.5",
                                "--faults-version", "2")
        publish_bundle(listener, v1)
        publish_desired(listener, v1)
        wait_until(lambda: _committed(listener, v1), 30, "digits:1 committed")
        publish_bundle(listener, v2)
        publish_desired(listener, v2)


        report = wait_until(lambda: failed(listener), 30, "probation of digits:2 to fail")
        assert report.last_error is not None and report.last_error.code == "probation_failed"
        assert report.active is not None and report.active.digest == v1.digest
        kinds = [e.kind for e in events(listener)]
        assert EventKind.MODEL_LOADED in kinds and EventKind.ROLLBACK in kinds
        # Back on version 1, inferences succeed again.
        seen = len(listener.on(device_topic(FLEET, DEVICE, DeviceChannel.TELEMETRY)))
        windows = wait_until(lambda: [t for t in telemetry_since(listener, seen)[1:] if t.inferences > 0], 15,
                             "telemetry after the rollback")
        assert windows[0].model_version == "1" and windows[0].errors == 0
        assert agent.alive
    finally:
        listener.close()


def test_a_full_disk_fails_the_update_and_the_old_model_keeps_serving(
    mosquitto: BrokerHandle, processes: Processes, bundles: tuple[Bundle, Bundle], big_model: Path, tmp_path: Path
) -> None:
    v1, _ = bundles
    v2 = build_bundle(big_model, tmp_path / "big.zip", name="digits", version="2", chunk_size=16 * 1024)
    listener = Listener(mosquitto, device_filter(FLEET, DeviceChannel.REPORTED))
    try:
        processes.agent(DEVICE, mosquitto, FLEET)
        publish_bundle(listener, v1)
        publish_desired(listener, v1)
        wait_until(lambda: _committed(listener, v1), 30, "digits:1 committed")
        processes.stop_all()
        # No file may grow past 512 KiB: chunks (16 KiB), state and spool fit; the 2 MB model does not.
        assert len(v2.files["model.onnx"]) > 4 * 512 * 1024
        agent = processes.agent(DEVICE, mosquitto, FLEET, max_file_bytes=512 * 1024)
        publish_bundle(listener, v2)
        publish_desired(listener, v2)


        report = wait_until(lambda: failed(listener), 30, "the update to fail on the full disk")
        assert report.active is not None and report.active.digest == v1.digest
        assert report.last_error is not None and "File too large" in report.last_error.message
        assert agent.alive
    finally:
        listener.close()


def test_local_api_inferences_are_served_and_reported(
    mosquitto: BrokerHandle, processes: Processes, bundles: tuple[Bundle, Bundle], digits: TrainedExample,
    tmp_path: Path,
) -> None:
    v1, _ = bundles
    sock = tmp_path / "agent.sock"
    listener = Listener(mosquitto, device_filter(FLEET, DeviceChannel.REPORTED),
                        device_filter(FLEET, DeviceChannel.TELEMETRY))
    try:
        processes.agent(DEVICE, mosquitto, FLEET, "--input", "none", "--api-socket", str(sock))
        wait_until(sock.exists, 15, "the local API socket")
        status, body = request(f"unix:{sock}", "POST", "/v1/predict", {"inputs": [[0.0] * 64]})
        assert status == 503 and body["error"]["code"] == "no_model"
        publish_bundle(listener, v1)
        publish_desired(listener, v1)
        # Probation needs live traffic: the application's requests are that traffic.
        sent = 0
        while sent < 40:
            if _committed_or_probation(listener):
                predict_over_http(f"unix:{sock}", digits.x_test[sent:sent + 1].tolist())
                sent += 1
            else:
                time.sleep(0.1)
        wait_until(lambda: _committed(listener, v1), 30, "digits:1 committed on API traffic")
        status, body = request(f"unix:{sock}", "POST", "/v1/predict", {"inputs": [[0.0] * 10]})
        assert status == 422 and "shape" in body["error"]["message"]
        seen = len(listener.on(device_topic(FLEET, DEVICE, DeviceChannel.TELEMETRY)))
        for i in range(5):
            predict_over_http(f"unix:{sock}", digits.x_test[i:i + 1].tolist())
        wait_until(lambda: sum(t.inferences for t in telemetry_since(listener, seen)) >= 5, 15,
                   "windows counting the API inferences")
        assert all(t.model_version == "1" for t in telemetry_since(listener, seen) if t.inferences)
    finally:
        listener.close()


def _committed_or_probation(listener: Listener) -> bool:
    r = last_reported(listener)
    return r is not None and r.phase in (UpdatePhase.PROBATION, UpdatePhase.COMMITTED)


def _signed(listener: Listener, bundle: Bundle, key: SigningKey, *, rollback: bool = False,
            corrupt_signature: bool = False) -> None:
    """Publish a bundle with its detached signature and a signed desired message, as the server does."""
    publish_bundle(listener, bundle)
    signature = sign_manifest(bundle.manifest_bytes, key)
    if corrupt_signature:
        signature = sign_manifest(bundle.manifest_bytes + b" ", key)
    listener.publish(signature_topic(FLEET, bundle.digest), signature.encode(), retain=True)
    desired = Desired(bundle=bundle_ref(bundle.manifest, bundle.digest), rollback=rollback,
                      manifest_topic=manifest_topic(FLEET, bundle.digest), issued_at=int(time.time() * 1000))
    listener.publish(device_topic(FLEET, DEVICE, DeviceChannel.DESIRED), sign_desired(desired, key).encode(),
                     retain=True)


def test_trust_signatures_and_downgrades(
    mosquitto: BrokerHandle, processes: Processes, bundles: tuple[Bundle, Bundle], digits: TrainedExample,
    tmp_path: Path,
) -> None:
    v1, v2 = bundles
    trusted, stranger = SigningKey.generate(), SigningKey.generate()
    trust_dir = tmp_path / "trust"
    trust_dir.mkdir()
    trusted.save_public(trust_dir / "fleet.pub")
    listener = Listener(mosquitto, device_filter(FLEET, DeviceChannel.REPORTED),
                        device_filter(FLEET, DeviceChannel.EVENTS))
    try:
        agent = processes.agent(DEVICE, mosquitto, FLEET, trust_dir=trust_dir)
        # Unsigned desired message: dropped, reported as an event, nothing installed.
        publish_bundle(listener, v1)
        publish_desired(listener, v1)
        wait_until(lambda: EventKind.DESIRED_REJECTED in [e.kind for e in events(listener)], 15,
                   "the unsigned desired message to be rejected")
        # Signed by a key the device does not trust: the same.
        before = len(events(listener))
        _signed(listener, v1, stranger)
        wait_until(lambda: EventKind.DESIRED_REJECTED in [e.kind for e in events(listener)[before:]], 15,
                   "the stranger's desired message to be rejected")
        assert last_reported(listener) is None or last_reported(listener).active is None  # type: ignore[union-attr]
        # Trusted desired message, but the bundle's signature does not verify: the update fails.
        _signed(listener, v1, trusted, corrupt_signature=True)


        report = wait_until(lambda: failed(listener), 20, "the mis-signed bundle to be refused")
        assert report.last_error is not None and report.last_error.code == "signature_invalid"
        # Properly signed: installed.
        _signed(listener, v1, trusted)
        wait_until(lambda: _committed(listener, v1), 30, "signed digits:1 committed")
        _signed(listener, v2, trusted)
        wait_until(lambda: _committed(listener, v2), 30, "signed digits:2 committed")
        # An older version (by creation time) is refused unless the desired message is a rollback.
        old = build_bundle(digits.model_path, tmp_path / "v0.zip", name="digits", version="0",
                           created_at="2020-01-01T00:00:00Z", chunk_size=4096)
        _signed(listener, old, trusted)
        report = wait_until(lambda: failed(listener), 30, "the downgrade to be refused")
        assert report.last_error is not None and report.last_error.code == "downgrade_refused"
        assert report.active is not None and report.active.digest == v2.digest
        _signed(listener, old, trusted, rollback=True)
        wait_until(lambda: _committed(listener, old), 30, "the signed rollback to digits:0")
        assert agent.alive
    finally:
        listener.close()


def test_a_tflite_bundle_runs_on_litert(
    mosquitto: BrokerHandle, processes: Processes, digits: TrainedExample, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    model = write_dense_tflite(tmp_path / "dense.tflite", rng.standard_normal((10, 64)) * 0.1, np.zeros(10))
    bundle = build_bundle(model, tmp_path / "tflite.zip", name="digits", version="1", reference=digits.reference,
                          chunk_size=4096)
    assert bundle.manifest.runtime.value == "tflite"
    listener = Listener(mosquitto, device_filter(FLEET, DeviceChannel.REPORTED),
                        device_filter(FLEET, DeviceChannel.TELEMETRY))
    try:
        processes.agent(DEVICE, mosquitto, FLEET)
        publish_bundle(listener, bundle)
        publish_desired(listener, bundle)
        wait_until(lambda: _committed(listener, bundle), 30, "the TFLite version committed")
        seen = len(listener.on(device_topic(FLEET, DEVICE, DeviceChannel.TELEMETRY)))
        windows = wait_until(lambda: [t for t in telemetry_since(listener, seen) if t.inferences > 0], 15,
                             "telemetry from the TFLite model")
        assert windows[0].errors == 0 and windows[0].drift_score is not None
    finally:
        listener.close()
