"""The device agent: takes the version the server desires, serves it, and reports what it sees.

Threads: paho's network thread only enqueues; everything else (decoding, downloads, loading
models, inference, telemetry) runs in the one thread that calls :meth:`Agent.run`. ``predict`` may be
called from other threads (the application's); a lock guards the model swap.

The update path here is the straight line of DESIGN.md's state machine (fetching → verifying →
activating → committed, or failed with the previous model still serving). Probation and local
rollback are not part of this version: a model that passes its smoke vectors is committed.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import queue
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from device_agent.config import AgentConfig
from device_agent.inputs import DigitsStream
from device_agent.resources import ResourceSampler
from device_agent.state import AgentState, load_state, save_state
from device_agent.window import WindowStats
from edgeops import __version__
from edgeops.bundle import sha256_hex
from edgeops.drift import DriftMonitor, ReferenceProfile
from edgeops.errors import (
    BundleError,
    ChecksumError,
    EdgeOpsError,
    InferenceInputError,
    ModelLoadError,
    ProtocolError,
    SchemaValidationError,
)
from edgeops.manifest import MANIFEST_FILE, Manifest, parse_manifest
from edgeops.protocol import (
    BundleRef,
    Command,
    CommandName,
    CommandReply,
    Desired,
    DeviceChannel,
    DriftDetail,
    ErrorInfo,
    Event,
    EventKind,
    FeatureDriftDetail,
    Presence,
    Reported,
    Status,
    Telemetry,
    TopicKind,
    UpdatePhase,
    chunk_topic,
    chunks_filter,
    device_topic,
    manifest_topic,
    parse_topic,
)
from edgeops.runtime import Model, load_model, run_smoke_test
from edgeops.transfer import ChunkStore, fsync_write
from edgeops.transport import DropLog, Inbound, LinkChange, MqttTransport, Will

log = logging.getLogger(__name__)


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class LoadedModel:
    """A verified, loaded model version and its drift monitor."""

    ref: BundleRef
    manifest: Manifest
    model: Model
    drift: DriftMonitor | None

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return self.model.run({self.manifest.inputs[0].name: x})


@dataclass
class Update:
    """An update in progress towards ``target``."""

    target: BundleRef
    rollout_id: str | None
    #: Identifies the desired message that started it (see AgentState.failed_desired).
    key: str
    store: ChunkStore | None = None
    topics: set[str] = field(default_factory=set)
    last_progress_report: int = 0


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.data_dir = config.data_dir
        self.models_dir = config.data_dir / "models"
        self.downloads_dir = config.data_dir / "downloads"
        self.state_path = config.data_dir / "state.json"
        for d in (self.models_dir, self.downloads_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.state = load_state(self.state_path)
        self.phase = UpdatePhase.IDLE
        self.active: LoadedModel | None = None
        self.update: Update | None = None
        self.last_error: ErrorInfo | None = None
        self.window = WindowStats()
        self.window_seq = 0
        self.boot_id = uuid.uuid4().hex[:8]
        self.drops = DropLog(log)
        self.resources = ResourceSampler()
        self._model_lock = threading.Lock()
        self._started_event_sent = False
        fleet, device = config.fleet, config.device_id
        self._status_topic = device_topic(fleet, device, DeviceChannel.STATUS)
        self.transport = MqttTransport(
            f"edgeops-agent-{fleet}-{device}",
            config.broker,
            clean_session=False,
            will=Will(self._status_topic, self._status(Presence.OFFLINE).encode()),
        )

    # --- messages out ---------------------------------------------------------------------------

    def _topic(self, channel: DeviceChannel) -> str:
        return device_topic(self.config.fleet, self.config.device_id, channel)

    def _status(self, presence: Presence) -> Status:
        return Status(
            device_id=self.config.device_id,
            state=presence,
            ts=now_ms(),
            agent_version=__version__,
            active=self.active.ref if self.active else None,
            hardware={
                "machine": platform.machine(),
                "system": platform.system(),
                "python": platform.python_version(),
                "cpus": str(os.cpu_count() or 0),
            },
        )

    def reported(self) -> Reported:
        store = self.update.store if self.update else None
        return Reported(
            device_id=self.config.device_id,
            ts=now_ms(),
            phase=self.phase,
            active=self.active.ref if self.active else None,
            previous=self.state.previous,
            target=self.update.target if self.update else None,
            rollout_id=self.update.rollout_id if self.update else None,
            chunks_have=store.have if store else 0,
            chunks_total=store.total if store else 0,
            last_error=self.last_error,
        )

    def _publish_reported(self) -> None:
        self.transport.publish(self._topic(DeviceChannel.REPORTED), self.reported().encode(), retain=True)

    def _event(self, kind: EventKind, message: str = "", bundle: BundleRef | None = None) -> None:
        event = Event(
            device_id=self.config.device_id, ts=now_ms(), kind=kind, message=message[:2000], bundle=bundle,
            error=self.last_error if kind in (EventKind.UPDATE_FAILED, EventKind.CHUNK_REJECTED) else None,
        )
        log.info("event device=%s kind=%s %s", self.config.device_id, kind.value, message)
        self.transport.publish(self._topic(DeviceChannel.EVENTS), event.encode())

    def _set_phase(self, phase: UpdatePhase) -> None:
        if phase is not self.phase:
            log.info("update phase device=%s %s -> %s", self.config.device_id, self.phase.value, phase.value)
        self.phase = phase
        self._publish_reported()

    # --- models ---------------------------------------------------------------------------------

    def _load_installed(self, ref: BundleRef) -> LoadedModel:
        """Load an installed version from disk, re-verifying every hash and the smoke vectors."""
        directory = self.models_dir / ref.digest
        try:
            manifest = parse_manifest((directory / MANIFEST_FILE).read_bytes(), ref.digest)
            for entry in manifest.files:
                data = (directory / entry.path).read_bytes()
                if len(data) != entry.size or sha256_hex(data) != entry.sha256:
                    raise ChecksumError(f"installed file {entry.path} of {ref.label} is corrupt")
        except OSError as exc:
            raise ModelLoadError(f"{ref.label} is not installed completely: {exc}") from exc
        model = load_model(directory / manifest.model_file, manifest.runtime, self.config.intra_op_threads)
        if manifest.smoke is not None:
            run_smoke_test(model, manifest.smoke)
        drift = None
        if manifest.drift_reference_file is not None:
            profile = ReferenceProfile.from_dict(json.loads((directory / manifest.drift_reference_file).read_bytes()))
            drift = DriftMonitor(profile)
        return LoadedModel(ref=ref, manifest=manifest, model=model, drift=drift)

    def _restore(self) -> None:
        """At start-up: serve the active version, else the previous one, else nothing."""
        for ref in (self.state.active, self.state.previous):
            if ref is None:
                continue
            try:
                self.active = self._load_installed(ref)
            except (EdgeOpsError, ValueError) as exc:
                log.error("installed model unusable device=%s model=%s error=%s", self.config.device_id, ref.label, exc)
                continue
            if ref != self.state.active:
                self.state = AgentState(active=ref, previous=None, failed_desired=self.state.failed_desired)
                save_state(self.state_path, self.state)
            self.phase = UpdatePhase.COMMITTED
            log.info("serving installed model device=%s model=%s", self.config.device_id, ref.label)
            return

    def predict(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Run the active model on ``x`` and fold it into telemetry and drift statistics."""
        with self._model_lock:
            active = self.active
            if active is None:
                raise ModelLoadError("no model is active on this device yet")
            start = time.perf_counter()
            try:
                outputs = active.run(x)
            except InferenceInputError:
                self.window.record_error()
                raise
            except RuntimeError as exc:  # onnxruntime's run-time failures
                self.window.record_error()
                raise ModelLoadError(f"inference failed: {exc}") from exc
            self.window.record((time.perf_counter() - start) * 1000.0)
            if active.drift is not None:
                active.drift.update(x)
            return outputs

    # --- the update path ------------------------------------------------------------------------

    def _on_desired(self, desired: Desired) -> None:
        ref = desired.bundle
        expected_topic = manifest_topic(self.config.fleet, ref.digest)
        if desired.manifest_topic != expected_topic:
            why = f"manifest topic {desired.manifest_topic!r} is not {expected_topic!r}"
            self._event(EventKind.DESIRED_REJECTED, why)
            return
        if self.active is not None and self.active.ref.digest == ref.digest:
            if self.update is not None:
                self._cancel_update()
            self._publish_reported()
            return
        if self.update is not None and self.update.target.digest == ref.digest:
            return
        if self.state.failed_desired == _desired_key(desired):
            log.info("desired version failed before; waiting for a new one device=%s model=%s",
                     self.config.device_id, ref.label)
            self._publish_reported()
            return
        if self.update is not None:
            self._cancel_update()
        self.last_error = None
        self.update = Update(target=ref, rollout_id=desired.rollout_id, key=_desired_key(desired))
        self._subscribe_artifacts(expected_topic)
        self._event(EventKind.UPDATE_STARTED, f"fetching {ref.label}", ref)
        self._set_phase(UpdatePhase.FETCHING)

    def _subscribe_artifacts(self, *topics: str) -> None:
        assert self.update is not None
        self.update.topics.update(topics)
        self.transport.subscribe(*topics)

    def _unsubscribe_artifacts(self, *topics: str) -> None:
        assert self.update is not None
        gone = [t for t in topics if t in self.update.topics]
        self.update.topics.difference_update(gone)
        self.transport.unsubscribe(*gone)

    def _cancel_update(self) -> None:
        assert self.update is not None
        log.info("update cancelled device=%s target=%s", self.config.device_id, self.update.target.label)
        self._unsubscribe_artifacts(*list(self.update.topics))
        self.update = None
        self.phase = UpdatePhase.COMMITTED if self.active else UpdatePhase.IDLE

    def _on_manifest(self, digest: str, payload: bytes) -> None:
        update = self.update
        if update is None or update.target.digest != digest or update.store is not None:
            return
        try:
            manifest = parse_manifest(payload, digest)
            if (manifest.name, manifest.version) != (update.target.name, update.target.version):
                raise BundleError(f"manifest is {manifest.name}:{manifest.version}, desired {update.target.label}")
        except BundleError as exc:
            self._fail(exc, EventKind.UPDATE_FAILED)
            return
        update.store = ChunkStore(manifest, self.downloads_dir / digest)
        self._unsubscribe_artifacts(manifest_topic(self.config.fleet, digest))
        missing = update.store.missing()
        if not missing:
            self._finish_update()
        elif len(missing) == update.store.total:
            self._subscribe_artifacts(chunks_filter(self.config.fleet, digest))
        else:
            log.info("resuming download device=%s missing=%d of %d", self.config.device_id, len(missing),
                     update.store.total)
            self._subscribe_artifacts(*(chunk_topic(self.config.fleet, digest, i) for i in missing))
        self._publish_reported()

    def _on_chunk(self, digest: str, index: int, payload: bytes) -> None:
        update = self.update
        if update is None or update.target.digest != digest or update.store is None:
            return
        try:
            update.store.accept(index, payload)
        except (ChecksumError, BundleError) as exc:
            self._fail(exc, EventKind.CHUNK_REJECTED)
            return
        except OSError as exc:  # disk full, read-only file system
            self._fail(ModelLoadError(f"cannot write chunk {index}: {exc.strerror}"), EventKind.UPDATE_FAILED)
            return
        self._unsubscribe_artifacts(chunk_topic(self.config.fleet, digest, index))
        if update.store.complete():
            self._unsubscribe_artifacts(*list(update.topics))
            self._finish_update()
        elif update.store.have - update.last_progress_report >= max(1, update.store.total // 10):
            update.last_progress_report = update.store.have
            self._publish_reported()

    def _finish_update(self) -> None:
        update = self.update
        assert update is not None and update.store is not None
        target = update.target
        directory = self.models_dir / target.digest
        try:
            self._set_phase(UpdatePhase.VERIFYING)
            update.store.assemble(directory)
            fsync_write(directory / MANIFEST_FILE, update.store.manifest.canonical_bytes())
            self._set_phase(UpdatePhase.ACTIVATING)
            loaded = self._load_installed(target)
        except (EdgeOpsError, OSError, ValueError) as exc:
            shutil.rmtree(directory, ignore_errors=True)
            self._fail(exc, EventKind.UPDATE_FAILED)
            return
        with self._model_lock:
            previous = self.active.ref if self.active else self.state.previous
            self.active = loaded
        self.state = AgentState(active=target, previous=previous, failed_desired=None)
        save_state(self.state_path, self.state)
        update.store.discard()
        self.update = None
        self._set_phase(UpdatePhase.COMMITTED)
        self._publish_status()
        self._event(EventKind.UPDATE_COMMITTED, f"serving {target.label}", target)

    def _fail(self, exc: Exception, kind: EventKind) -> None:
        update = self.update
        assert update is not None
        code = getattr(exc, "code", "update_failed")
        self.last_error = ErrorInfo(code=code, message=str(exc)[:2000])
        log.error("update failed device=%s target=%s code=%s error=%s", self.config.device_id,
                  update.target.label, code, exc)
        self._unsubscribe_artifacts(*list(update.topics))
        if update.store is not None:
            update.store.discard()
        self.state = AgentState(active=self.state.active, previous=self.state.previous,
                                failed_desired=update.key)
        save_state(self.state_path, self.state)
        self._event(kind, str(exc), update.target)
        if kind is not EventKind.UPDATE_FAILED:
            self._event(EventKind.UPDATE_FAILED, str(exc), update.target)
        self.update = None
        self._set_phase(UpdatePhase.FAILED)

    # --- commands -------------------------------------------------------------------------------

    def _on_command(self, command: Command) -> None:
        result: dict[str, object] = {}
        if command.command is CommandName.PING:
            result = {"ts": now_ms(), "phase": self.phase.value}
        elif command.command is CommandName.REPORT:
            self._publish_status()
            self._publish_reported()
        elif command.command is CommandName.FLUSH:
            self._close_window()
        reply = CommandReply(correlation_id=command.correlation_id, ok=True, result=result)
        self.transport.publish(self._topic(DeviceChannel.CMD_REPLY), reply.encode())

    # --- telemetry ------------------------------------------------------------------------------

    def _publish_status(self) -> None:
        self.transport.publish(self._status_topic, self._status(Presence.ONLINE).encode(), retain=True)

    def _close_window(self, window_s: float | None = None) -> None:
        self.window_seq += 1
        window_id = f"{self.config.device_id}:{self.boot_id}:{self.window_seq}"
        ts = now_ms()
        summary = self.window.summary()
        active = self.active
        report = active.drift.report() if active and active.drift and summary.inferences else None
        telemetry = Telemetry(
            device_id=self.config.device_id,
            window_id=window_id,
            ts=ts,
            window_s=round(window_s if window_s is not None else self.config.telemetry_interval_s, 3),
            model=active.ref.name if active else None,
            model_version=active.ref.version if active else None,
            inferences=summary.inferences,
            errors=summary.errors,
            latency_ms_p50=summary.latency_ms_p50,
            latency_ms_p95=summary.latency_ms_p95,
            latency_ms_p99=summary.latency_ms_p99,
            drift_score=_finite(report.overall_score) if report else None,
            drift_features_over=len(report.drifted_features) if report else 0,
            cpu_percent=self.resources.cpu_percent(),
            rss_mb=self.resources.rss_mb(),
            temperature_c=self.resources.temperature_c(),
        )
        self.transport.publish(self._topic(DeviceChannel.TELEMETRY), telemetry.encode())
        if report is not None:
            self._publish_drift(window_id, ts, report)
        self.window.reset()
        if active is not None and active.drift is not None:
            active.drift.reset()

    def _publish_drift(self, window_id: str, ts: int, report: object) -> None:
        features = [
            FeatureDriftDetail(
                index=f.index, psi=_finite(f.psi), js_distance=_finite(f.js_distance),
                ks_statistic=_finite(f.ks_statistic), ks_pvalue=_finite(f.ks_pvalue),
                wasserstein=_finite(f.wasserstein), mean_shift_sd=_finite(f.mean_shift_sd),
                nan_rate=_finite(f.nan_rate), out_of_range_rate=_finite(f.out_of_range_rate),
            )
            for f in report.features  # type: ignore[attr-defined]
        ]
        detail = DriftDetail(
            device_id=self.config.device_id, window_id=window_id, ts=ts,
            n_samples=report.n_samples,  # type: ignore[attr-defined]
            overall_score=_finite(report.overall_score) or 0.0,  # type: ignore[attr-defined]
            drifted_features=list(report.drifted_features),  # type: ignore[attr-defined]
            features=features,
        )
        self.transport.publish(self._topic(DeviceChannel.DRIFT), detail.encode())

    # --- inbound dispatch -----------------------------------------------------------------------

    def handle(self, item: Inbound | LinkChange) -> None:
        if isinstance(item, LinkChange):
            if item.connected:
                self._publish_status()
                self._publish_reported()
                if not self._started_event_sent:
                    self._started_event_sent = True
                    self._event(EventKind.AGENT_STARTED, f"agent {__version__} boot {self.boot_id}")
            return
        try:
            parsed = parse_topic(item.topic)
            if parsed.kind is TopicKind.MANIFEST and parsed.digest:
                self._on_manifest(parsed.digest, item.payload)
            elif parsed.kind is TopicKind.CHUNK and parsed.digest and parsed.chunk_index is not None:
                self._on_chunk(parsed.digest, parsed.chunk_index, item.payload)
            elif parsed.device_id != self.config.device_id:
                raise SchemaValidationError(f"message for another device on {item.topic}")
            elif parsed.channel is DeviceChannel.DESIRED:
                if item.payload:
                    self._on_desired(Desired.decode(item.payload))
            elif parsed.channel is DeviceChannel.CMD:
                self._on_command(Command.decode(item.payload))
        except ProtocolError as exc:
            self.drops.drop(item.topic, item.topic, exc)

    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set; then say ``offline`` explicitly and disconnect."""
        self._restore()
        self.transport.subscribe(self._topic(DeviceChannel.DESIRED), self._topic(DeviceChannel.CMD))
        self.transport.start()
        log.info("agent started device=%s fleet=%s broker=%s data_dir=%s active=%s", self.config.device_id,
                 self.config.fleet, self.config.broker, self.data_dir, self.active.ref.label if self.active else None)
        inputs = self._inputs()
        interval = self.config.inference_interval_s
        window_started = time.monotonic()
        next_window = window_started + self.config.telemetry_interval_s
        next_inference = time.monotonic()
        try:
            while not stop.is_set():
                now = time.monotonic()
                wake = next_window if inputs is None else min(next_window, next_inference)
                try:
                    self.handle(self.transport.inbox.get(timeout=max(0.0, min(wake - now, 0.5))))
                    continue  # drain the inbox before doing timed work
                except queue.Empty:
                    pass
                now = time.monotonic()
                if inputs is not None and now >= next_inference:
                    self._simulated_inference(inputs)
                    next_inference = max(next_inference + interval, now - 1.0)
                if now >= next_window:
                    self._close_window(now - window_started)
                    window_started = now
                    next_window = now + self.config.telemetry_interval_s
        finally:
            self.transport.stop(final=[(self._status_topic, self._status(Presence.OFFLINE).encode(), True)])
            log.info("agent stopped device=%s dropped_invalid=%d", self.config.device_id, self.drops.total)

    def _inputs(self) -> Iterator[np.ndarray] | None:
        if self.config.input_source == "none" or self.config.inference_interval_s == 0:
            return None
        return iter(DigitsStream(self.config.seed))

    def _simulated_inference(self, inputs: Iterator[np.ndarray]) -> None:
        if self.active is None:
            return
        try:
            self.predict(next(inputs))
        except (InferenceInputError, ModelLoadError) as exc:
            log.debug("simulated inference failed device=%s error=%s", self.config.device_id, exc)


def _desired_key(desired: Desired) -> str:
    return f"{desired.bundle.digest}@{desired.issued_at}"


def _finite(value: float) -> float | None:
    """JSON has no NaN: an undefined statistic travels as null."""
    return float(value) if np.isfinite(value) else None
