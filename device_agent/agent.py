"""The device agent: takes the version the server desires, serves it, and reports what it sees.

It never leaves the device without a working model: a new version goes into the inactive A/B slot,
is verified, activated (smoke vectors), watched in probation and only then committed; any failure
on the way, or a probation that goes badly, leaves (or puts back) the committed version serving.
Every step is a transition of device_agent/update_machine.py, persisted before it acts.

Threads: the transport's network side only enqueues. Everything else (decoding, downloads,
loading models, simulated inference, telemetry) runs in whichever thread calls :meth:`Agent.step`
(one agent process, or the simulator's single loop for many agents). :meth:`Agent.predict` may
also be called from the local API's threads; a lock guards the model swap.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import queue
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING, Any

import numpy as np

from device_agent.config import AgentConfig
from device_agent.probation import ProbationPolicy, ProbationTracker, Verdict
from device_agent.resources import ResourceSampler
from device_agent.spool import SpoolWriteError, TelemetrySpool
from device_agent.state import SLOTS, UpdateRecord, load_state, other_slot, save_state
from device_agent.trust import Trust
from device_agent.update_machine import Event, Resume, resume_decision, transition
from device_agent.window import WindowStats
from edgeops import __version__
from edgeops.bundle import sha256_hex
from edgeops.drift import DriftMonitor, ReferenceProfile
from edgeops.errors import (
    BundleError,
    ChecksumError,
    DriftError,
    EdgeOpsError,
    InferenceInputError,
    InjectedFault,
    ManifestError,
    ModelLoadError,
    ProtocolError,
    SchemaValidationError,
    SignatureError,
)
from edgeops.manifest import MANIFEST_FILE, Manifest, parse_manifest
from edgeops.mqtt_loop import SharedLoop
from edgeops.protocol import (
    BundleRef,
    BundleSignature,
    Command,
    CommandName,
    CommandReply,
    Desired,
    DeviceChannel,
    DriftDetail,
    ErrorInfo,
    EventKind,
    FeatureDriftDetail,
    Presence,
    Reported,
    Status,
    Telemetry,
    TopicKind,
    chunk_topic,
    chunks_filter,
    device_topic,
    manifest_topic,
    parse_topic,
    signature_topic,
)
from edgeops.protocol import (
    Event as EventMessage,
)
from edgeops.protocol import (
    UpdatePhase as State,
)
from edgeops.runtime import Model, load_model, run_smoke_test
from edgeops.schema import Message
from edgeops.transfer import ChunkStore, fsync_write
from edgeops.transport import DropLog, Inbound, LinkChange, MqttTransport, PublishAck, Will

if TYPE_CHECKING:
    from device_agent.simulation import FaultInjector, InputStream

log = logging.getLogger(__name__)

#: Test hook: the agent SIGKILLs itself right after persisting this state (crash tests).
CRASH_AT_ENV = "EDGEOPS_AGENT_CRASH_AT"


def now_ms() -> int:
    return int(time.time() * 1000)


class DowngradeRefused(BundleError):
    """An older version than the committed one, without a rollback desired message."""

    code = "downgrade_refused"


class UpdateInterrupted(EdgeOpsError):
    """The agent stopped (power cut, crash) while a version was being activated or on probation."""

    code = "update_interrupted"


class ProbationFailed(EdgeOpsError):
    """The new version broke its error or latency budget on live traffic; rolled back locally."""

    code = "probation_failed"


class RestartLoop(EdgeOpsError):
    """The same update was resumed at start-up too many times."""

    code = "restart_loop"


@dataclass
class LoadedModel:
    """A verified, loaded model version and its drift monitor."""

    ref: BundleRef
    manifest: Manifest
    model: Model
    drift: DriftMonitor | None
    input_name: str = ""

    def __post_init__(self) -> None:
        self.input_name = self.manifest.inputs[0].name
        single = getattr(self.model, "run_single", None)
        self.run: Callable[[np.ndarray], dict[str, np.ndarray]] = single or (
            lambda x: self.model.run({self.input_name: x}))


@dataclass
class Fetch:
    """Run-time progress of a download (the persisted part is AgentState.update)."""

    manifest_bytes: bytes | None = None
    signature: BundleSignature | None = None
    store: ChunkStore | None = None
    topics: set[str] = field(default_factory=set)
    reported_have: int = 0


class Agent:
    def __init__(self, config: AgentConfig, loop: SharedLoop | None = None) -> None:
        self.config = config
        data = config.data_dir
        self.slots_dir = data / "slots"
        self.downloads_dir = data / "downloads"
        self.state_path = data / "state.json"
        for directory in (self.downloads_dir, *(self.slots_dir / s for s in SLOTS)):
            directory.mkdir(parents=True, exist_ok=True)
        self.state = load_state(self.state_path)
        self.trust = Trust.from_config(config.trust_dir, config.allow_unsigned)
        self.spool = TelemetrySpool(data / "spool.sqlite", max_bytes=config.spool_max_bytes,
                                    durability="normal" if config.spool_durability == "normal" else "full")
        self.serving: LoadedModel | None = None
        self.committed_model: LoadedModel | None = None
        self.fetch: Fetch | None = None
        self.probation: ProbationTracker | None = None
        self.pending_desired: Desired | None = None
        self.in_flight: dict[int, int] = {}
        self.window = WindowStats()
        self.window_seq = 0
        self.boot_id = uuid.uuid4().hex[:8]
        self.drops = DropLog(log)
        self.resources = ResourceSampler()
        self._model_lock = threading.Lock()
        self._crash_at = os.environ.get(CRASH_AT_ENV, "")
        self._started_event_sent = False
        self._next_window = 0.0
        self._window_started = 0.0
        self._next_inference = 0.0
        self._inputs: InputStream | None = None
        self.api: Any = None  # LocalApiServer, imported only when configured (http.server costs RSS)
        self._faults: FaultInjector | None = None
        if config.simulate_faults:  # simulated devices only: a real one does not carry that code
            from device_agent.simulation import FaultInjector, FaultSpec

            self._faults = FaultInjector(FaultSpec.parse(config.simulate_faults), seed=config.seed)
        fleet, device = config.fleet, config.device_id
        self._status_topic = device_topic(fleet, device, DeviceChannel.STATUS)
        self.transport = MqttTransport(
            f"edgeops-agent-{fleet}-{device}",
            config.broker,
            clean_session=False,
            will=Will(self._status_topic, self._status(Presence.OFFLINE).encode()),
            track_acks=True,
            loop=loop,
        )

    # --- state machine plumbing -----------------------------------------------------------------

    def _advance(self, event: Event, **changes: Any) -> None:
        """Take one transition: persist the new state first, then report it."""
        before = self.state.state
        after = transition(before, event)
        self.state = self.state.evolve(state=after, **changes)
        save_state(self.state_path, self.state)
        log.info("update state device=%s %s -> %s event=%s", self.config.device_id, before.value, after.value,
                 event.value)
        self._publish_reported()
        update = self.state.update
        self._event(EventKind.UPDATE_STATE, f"{before.value} -> {after.value} ({event.value})",
                    update.target if update else None)
        if self._crash_at == after.value:
            log.warning("crash hook: SIGKILL in state %s", after.value)
            os.kill(os.getpid(), signal.SIGKILL)

    def _persist(self, **changes: Any) -> None:
        self.state = self.state.evolve(**changes)
        save_state(self.state_path, self.state)

    def _slot_dir(self, slot: str) -> Path:
        return self.slots_dir / slot

    # --- messages out ---------------------------------------------------------------------------

    def _topic(self, channel: DeviceChannel) -> str:
        return device_topic(self.config.fleet, self.config.device_id, channel)

    def _status(self, presence: Presence) -> Status:
        return Status(
            device_id=self.config.device_id,
            state=presence,
            ts=now_ms(),
            agent_version=__version__,
            active=self.serving.ref if self.serving else None,
            hardware={
                "machine": platform.machine(),
                "system": platform.system(),
                "python": platform.python_version(),
                "cpus": str(os.cpu_count() or 0),
            },
        )

    def reported(self) -> Reported:
        update = self.state.update
        store = self.fetch.store if self.fetch else None
        return Reported(
            device_id=self.config.device_id,
            ts=now_ms(),
            phase=self.state.state,
            active=self.serving.ref if self.serving else None,
            previous=self.state.previous,
            target=update.target if update else None,
            rollout_id=update.rollout_id if update else None,
            chunks_have=store.have if store else 0,
            chunks_total=store.total if store else 0,
            last_error=self.state.last_error,
        )

    def _publish_reported(self) -> None:
        if self.transport.connected:
            self.transport.publish(self._topic(DeviceChannel.REPORTED), self.reported().encode(), retain=True)

    def _publish_status(self) -> None:
        if self.transport.connected:
            self.transport.publish(self._status_topic, self._status(Presence.ONLINE).encode(), retain=True)

    def _send_durable(self, channel: DeviceChannel, message: Message) -> None:
        """Telemetry and events: into the spool first, out when connected, deleted when acknowledged."""
        topic = self._topic(channel)
        payload = message.encode()
        try:
            ident = self.spool.put(topic, payload)
        except SpoolWriteError as exc:
            # Disk full: still send it now, just not durably.
            self.drops.drop("spool", topic, exc)
            if self.transport.connected:
                self.transport.publish(topic, payload)
            return
        if self.transport.connected:
            self._publish_spooled(ident, topic, payload)

    def _publish_spooled(self, ident: int, topic: str, payload: bytes) -> None:
        info = self.transport.publish(topic, payload)
        if info.rc == 0:
            self.in_flight[info.mid] = ident

    def _drain_spool(self, limit: int = 200) -> None:
        if not self.transport.connected or len(self.in_flight) >= limit:
            return
        sent = set(self.in_flight.values())
        after = max(sent, default=0)
        for msg in self.spool.pending(limit=limit - len(self.in_flight), after_id=after if sent else 0):
            if msg.id not in sent:
                self._publish_spooled(msg.id, msg.topic, msg.payload)

    def _event(self, kind: EventKind, message: str = "", bundle: BundleRef | None = None,
               error: ErrorInfo | None = None) -> None:
        event = EventMessage(device_id=self.config.device_id, ts=now_ms(), kind=kind, message=message[:2000],
                             bundle=bundle, error=error)
        log.info("event device=%s kind=%s %s", self.config.device_id, kind.value, message)
        self._send_durable(DeviceChannel.EVENTS, event)

    # --- models ---------------------------------------------------------------------------------

    def _check_slot(self, slot: str, ref: BundleRef) -> Manifest:
        """Re-verify what a slot holds against the digest: manifest hash and every file hash."""
        directory = self._slot_dir(slot)
        try:
            manifest = parse_manifest((directory / MANIFEST_FILE).read_bytes(), ref.digest)
            for entry in manifest.files:
                data = (directory / entry.path).read_bytes()
                if len(data) != entry.size or sha256_hex(data) != entry.sha256:
                    raise ChecksumError(f"{entry.path} in slot {slot} does not match its sha256")
        except OSError as exc:
            raise BundleError(f"slot {slot} does not hold {ref.label} completely: {exc.strerror}") from exc
        return manifest

    def _load_slot(self, slot: str, ref: BundleRef) -> LoadedModel:
        manifest = self._check_slot(slot, ref)
        directory = self._slot_dir(slot)
        model = load_model(directory / manifest.model_file, manifest.runtime, self.config.intra_op_threads)
        if manifest.smoke is not None:
            run_smoke_test(model, manifest.smoke)
        drift = None
        if manifest.drift_reference_file is not None:
            reference = json.loads((directory / manifest.drift_reference_file).read_bytes())
            drift = DriftMonitor(ReferenceProfile.from_dict(reference))
        return LoadedModel(ref=ref, manifest=manifest, model=model, drift=drift)

    def _serve(self, loaded: LoadedModel | None) -> None:
        with self._model_lock:
            self.serving = loaded
        self.window.reset()

    def predict(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Run the serving model on ``x``; every call is folded into telemetry, drift and probation."""
        with self._model_lock:
            serving = self.serving
            if serving is None:
                raise ModelLoadError("no model is active on this device yet")
            start = perf_counter()
            try:
                if self._faults is not None and self.config.simulate_faults_version in ("", serving.ref.version):
                    self._faults.before_inference()
                outputs = serving.run(x)
            except (InferenceInputError, InjectedFault) as exc:
                self._record_error()
                if isinstance(exc, InjectedFault):
                    raise ModelLoadError(str(exc)) from exc
                raise
            except RuntimeError as exc:  # onnxruntime's run-time failures
                self._record_error()
                raise ModelLoadError(f"inference failed: {exc}") from exc
            latency_ms = (perf_counter() - start) * 1000.0
            self.window.record(latency_ms)
            if self.probation is not None:
                self.probation.record(latency_ms)
            if serving.drift is not None:
                # The reference profile has one feature per input element (images are flattened).
                try:
                    serving.drift.update(x if x.ndim == 2 else x.reshape(len(x), -1))
                except DriftError as exc:
                    self.drops.drop("drift", "drift", exc)
            return outputs

    def _record_error(self) -> None:
        self.window.record_error()
        if self.probation is not None:
            self.probation.record_error()

    def describe(self) -> dict[str, Any]:
        serving = self.serving
        if serving is None:
            return {"model": None, "version": None, "inputs": [], "outputs": []}
        return {
            "model": serving.ref.name,
            "version": serving.ref.version,
            "digest": serving.ref.digest,
            "inputs": [i.as_dict() for i in serving.manifest.inputs],
            "outputs": [o.as_dict() for o in serving.manifest.outputs],
        }

    # --- start-up -------------------------------------------------------------------------------

    def _restore(self) -> None:
        """Serve the committed slot, then follow the resume rule of the persisted state."""
        committed = self.state.committed
        if committed is not None and self.state.committed_slot is not None:
            try:
                self.committed_model = self._load_slot(self.state.committed_slot, committed)
            except (EdgeOpsError, ValueError) as exc:
                log.error("committed model unusable device=%s model=%s error=%s", self.config.device_id,
                          committed.label, exc)
                self._fall_back_to_previous()
        self._serve(self.committed_model)
        update = self.state.update
        if update is None:
            return
        decision = resume_decision(self.state.state, update.resumes)
        log.info("resuming device=%s state=%s action=%s resumes=%d", self.config.device_id,
                 self.state.state.value, decision.action.value, decision.resumes)
        if decision.action is Resume.REVERT:
            error = UpdateInterrupted(f"stopped while {self.state.state.value} {update.target.label}; "
                                      "reverted to the committed version")
            event = Event.FAIL if self.state.state is State.ACTIVATING else Event.PROBATION_FAILED
            self._finish_failed(event, error, EventKind.ROLLBACK)
            return
        if decision.action is Resume.LOOP_BROKEN:
            self._finish_failed(Event.FAIL, RestartLoop(f"{update.target.label} resumed {decision.resumes - 1} "
                                                        "times at start-up"), EventKind.UPDATE_FAILED)
            return
        self._persist(update=dataclasses.replace(update, resumes=decision.resumes))
        if decision.action is Resume.CONTINUE_FETCH:
            self._begin_fetch()
        elif decision.action is Resume.REVERIFY:
            self.fetch = Fetch()
            self._verify()
        elif decision.action is Resume.RESTAGE:
            self._activate()

    def _fall_back_to_previous(self) -> None:
        previous = self.state.previous
        slot = other_slot(self.state.committed_slot)
        if previous is None or self.state.slots.get(slot) != previous:
            self.committed_model = None
            return
        try:
            self.committed_model = self._load_slot(slot, previous)
        except (EdgeOpsError, ValueError) as exc:
            log.error("previous model unusable too device=%s error=%s", self.config.device_id, exc)
            self.committed_model = None
            return
        self._persist(committed_slot=slot, previous=None)
        log.warning("serving the previous version device=%s model=%s", self.config.device_id, previous.label)

    # --- the update path ------------------------------------------------------------------------

    def _on_desired(self, desired: Desired) -> None:
        self.trust.check_desired(desired)
        ref = desired.bundle
        expected_topic = manifest_topic(self.config.fleet, ref.digest)
        if desired.manifest_topic != expected_topic:
            raise SchemaValidationError(f"manifest topic {desired.manifest_topic!r} is not {expected_topic!r}")
        state = self.state.state
        if state is State.PROBATION:
            self.pending_desired = desired  # decided after the verdict
            return
        key = f"{ref.digest}@{desired.issued_at}"
        committed = self.state.committed
        if committed is not None and committed.digest == ref.digest:
            if state is State.FETCHING:
                self._stop_fetch()
                self._advance(Event.CANCEL, update=None)
            else:
                self._publish_reported()
            return
        update = self.state.update
        if state is State.FETCHING and update is not None and update.target.digest == ref.digest:
            return
        if self.state.failed_desired == key:
            log.info("desired message failed before; waiting for a new one device=%s model=%s",
                     self.config.device_id, ref.label)
            self._publish_reported()
            return
        self._stop_fetch()
        record = UpdateRecord(target=ref, key=key, slot=other_slot(self.state.committed_slot),
                              rollout_id=desired.rollout_id, rollback=desired.rollback)
        self._advance(Event.DESIRED_NEW, update=record, last_error=None)
        self._event(EventKind.UPDATE_STARTED, f"fetching {ref.label}" + (" (rollback)" if desired.rollback else ""),
                    ref)
        self._begin_fetch()

    def _begin_fetch(self) -> None:
        update = self.state.update
        assert update is not None
        self.fetch = Fetch()
        if self.state.slots.get(update.slot) == update.target:
            # The target is already in the inactive slot (a rollback to the previous version).
            self._download_complete(in_place=True)
            return
        fleet, digest = self.config.fleet, update.target.digest
        self._subscribe(manifest_topic(fleet, digest), signature_topic(fleet, digest))

    def _subscribe(self, *topics: str) -> None:
        assert self.fetch is not None
        self.fetch.topics.update(topics)
        self.transport.subscribe(*topics)

    def _unsubscribe(self, *topics: str) -> None:
        if self.fetch is None:
            return
        gone = [t for t in topics if t in self.fetch.topics]
        self.fetch.topics.difference_update(gone)
        if gone:
            self.transport.unsubscribe(*gone)

    def _stop_fetch(self) -> None:
        if self.fetch is not None:
            self._unsubscribe(*list(self.fetch.topics))
        self.fetch = None

    def _target_digest(self) -> str | None:
        update = self.state.update
        return update.target.digest if update and self.state.state is State.FETCHING and self.fetch else None

    def _on_manifest(self, digest: str, payload: bytes) -> None:
        if digest != self._target_digest():
            return
        assert self.fetch is not None
        self.fetch.manifest_bytes = payload
        self._unsubscribe(manifest_topic(self.config.fleet, digest))
        self._manifest_ready()

    def _on_signature(self, digest: str, payload: bytes) -> None:
        if digest != self._target_digest():
            return
        assert self.fetch is not None
        self.fetch.signature = BundleSignature.decode(payload)
        self._unsubscribe(signature_topic(self.config.fleet, digest))
        self._manifest_ready()

    def _manifest_ready(self) -> None:
        """Once the manifest (and, when trust is required, its signature) are in: plan the chunks."""
        fetch, update = self.fetch, self.state.update
        assert fetch is not None and update is not None
        if fetch.manifest_bytes is None or fetch.store is not None:
            return
        if fetch.signature is None and self.trust.required:
            return
        try:
            manifest = parse_manifest(fetch.manifest_bytes, update.target.digest)
            self.trust.check_manifest(fetch.manifest_bytes, fetch.signature)
            if (manifest.name, manifest.version) != (update.target.name, update.target.version):
                raise ManifestError(f"manifest is {manifest.name}:{manifest.version}, desired {update.target.label}")
            committed = self.committed_model
            if committed is not None and manifest.created_at < committed.manifest.created_at and not update.rollback:
                raise DowngradeRefused(f"{update.target.label} is older than the running "
                                       f"{committed.ref.label} and the desired message is not a rollback")
            directory = self.downloads_dir / update.target.digest
            directory.mkdir(parents=True, exist_ok=True)
            fsync_write(directory / MANIFEST_FILE, fetch.manifest_bytes)
            fetch.store = ChunkStore(manifest, directory)
        except (EdgeOpsError, ValueError) as exc:
            self._fail(exc)
            return
        except OSError as exc:
            self._fail(BundleError(f"cannot store the download: {exc.strerror}"))
            return
        missing = fetch.store.missing()
        fleet, digest = self.config.fleet, update.target.digest
        if not missing:
            self._download_complete()
        elif len(missing) == fetch.store.total:
            self._subscribe(chunks_filter(fleet, digest))
        else:
            log.info("resuming download device=%s missing=%d of %d", self.config.device_id, len(missing),
                     fetch.store.total)
            self._subscribe(*(chunk_topic(fleet, digest, i) for i in missing))
        self._publish_reported()

    def _on_chunk(self, digest: str, index: int, payload: bytes) -> None:
        if digest != self._target_digest():
            return
        fetch = self.fetch
        assert fetch is not None
        if fetch.store is None:
            return  # retained chunks can arrive before the manifest is checked; they come again
        try:
            fetch.store.accept(index, payload)
        except (ChecksumError, ManifestError) as exc:
            self._event(EventKind.CHUNK_REJECTED, str(exc), self.state.update.target if self.state.update else None,
                        ErrorInfo(code=exc.code, message=str(exc)[:2000]))
            self._fail(exc)
            return
        except OSError as exc:  # disk full, read-only file system
            self._fail(BundleError(f"cannot write chunk {index}: {exc.strerror}"))
            return
        self._unsubscribe(chunk_topic(self.config.fleet, digest, index))
        if fetch.store.complete():
            self._download_complete()
        elif fetch.store.have - fetch.reported_have >= max(1, fetch.store.total // 10):
            fetch.reported_have = fetch.store.have
            self._publish_reported()

    def _download_complete(self, *, in_place: bool = False) -> None:
        update = self.state.update
        assert update is not None
        if self.fetch is not None:
            self._unsubscribe(*list(self.fetch.topics))
        if in_place:
            self._advance(Event.DOWNLOAD_COMPLETE)
        else:
            # The staging slot is about to be overwritten: it no longer holds what it held.
            slots = {k: v for k, v in self.state.slots.items() if k != update.slot}
            previous = self.state.previous if self.state.previous in slots.values() else None
            self._advance(Event.DOWNLOAD_COMPLETE, slots=slots, previous=previous)
        self._verify()

    def _verify(self) -> None:
        update = self.state.update
        assert update is not None
        slot_dir = self._slot_dir(update.slot)
        try:
            if self.state.slots.get(update.slot) != update.target:
                download = self.downloads_dir / update.target.digest
                manifest = parse_manifest((download / MANIFEST_FILE).read_bytes(), update.target.digest)
                store = ChunkStore(manifest, download)
                shutil.rmtree(slot_dir, ignore_errors=True)
                store.assemble(slot_dir)
                fsync_write(slot_dir / MANIFEST_FILE, manifest.canonical_bytes())
            self._check_slot(update.slot, update.target)
        except (EdgeOpsError, ValueError) as exc:
            self._fail(exc)
            return
        except OSError as exc:
            self._fail(BundleError(f"cannot stage {update.target.label}: {exc.strerror}"))
            return
        self._advance(Event.VERIFIED, slots={**self.state.slots, update.slot: update.target})
        shutil.rmtree(self.downloads_dir / update.target.digest, ignore_errors=True)
        self.fetch = None
        self._activate()

    def _activate(self) -> None:
        update = self.state.update
        assert update is not None
        self._advance(Event.ACTIVATE)
        try:
            loaded = self._load_slot(update.slot, update.target)
        except (EdgeOpsError, ValueError) as exc:
            self._fail(exc)
            return
        self._advance(Event.ACTIVATED)
        self._serve(loaded)
        self.probation = ProbationTracker(self._probation_policy(loaded.manifest), time.monotonic())
        self._event(EventKind.MODEL_LOADED, f"{update.target.label} on probation", update.target)

    def _probation_policy(self, manifest: Manifest) -> ProbationPolicy:
        c = self.config
        return ProbationPolicy(
            min_inferences=c.probation_min_inferences,
            max_seconds=c.probation_max_s,
            max_error_rate=c.probation_max_error_rate,
            max_latency_ms_p95=c.probation_max_latency_ms_p95 or None,
        )

    def _check_probation(self) -> None:
        tracker, update = self.probation, self.state.update
        if tracker is None or update is None:
            return
        result = tracker.verdict(time.monotonic())
        if result.verdict is Verdict.PENDING:
            return
        self.probation = None
        serving = self.serving
        if result.verdict is Verdict.PASSED:
            old = self.state.committed
            self._advance(Event.PROBATION_PASSED, committed_slot=update.slot, previous=old, update=None,
                          failed_desired=None)
            self.committed_model = serving
            self._event(EventKind.UPDATE_COMMITTED, f"serving {update.target.label}: {result.reason}", update.target)
            self._publish_status()
        else:
            self._serve(self.committed_model)
            self._finish_failed(Event.PROBATION_FAILED, ProbationFailed(f"probation failed: {result.reason}"),
                                EventKind.ROLLBACK)
        desired, self.pending_desired = self.pending_desired, None
        if desired is not None:
            self._on_desired(desired)

    def _fail(self, exc: Exception) -> None:
        self._finish_failed(Event.FAIL, exc, EventKind.UPDATE_FAILED)

    def _finish_failed(self, event: Event, exc: Exception, kind: EventKind) -> None:
        update = self.state.update
        assert update is not None
        code = getattr(exc, "code", "update_failed")
        error = ErrorInfo(code=code, message=str(exc)[:2000])
        log.error("update failed device=%s target=%s code=%s error=%s", self.config.device_id,
                  update.target.label, code, exc)
        self._stop_fetch()
        shutil.rmtree(self.downloads_dir / update.target.digest, ignore_errors=True)
        self.probation = None
        self._advance(event, update=None, failed_desired=update.key, last_error=error)
        if kind is EventKind.ROLLBACK:
            restored = self.state.committed
            self._event(EventKind.ROLLBACK, f"{update.target.label} rolled back locally to "
                        f"{restored.label if restored else 'no model'}: {exc}", update.target, error)
        self._event(EventKind.UPDATE_FAILED, str(exc), update.target, error)
        self._publish_status()

    # --- commands -------------------------------------------------------------------------------

    def _on_command(self, command: Command) -> None:
        result: dict[str, object] = {}
        if command.command is CommandName.PING:
            result = {"ts": now_ms(), "phase": self.state.state.value}
        elif command.command is CommandName.REPORT:
            self._publish_status()
            self._publish_reported()
            result = {"spool_rows": len(self.spool)}
        elif command.command is CommandName.FLUSH:
            self._close_window(time.monotonic())
        reply = CommandReply(correlation_id=command.correlation_id, ok=True, result=result)
        self.transport.publish(self._topic(DeviceChannel.CMD_REPLY), reply.encode())

    # --- telemetry ------------------------------------------------------------------------------

    def _close_window(self, now: float) -> None:
        self.window_seq += 1
        window_id = f"{self.config.device_id}:{self.boot_id}:{self.window_seq}"
        ts = now_ms()
        summary = self.window.summary()
        serving = self.serving
        report = serving.drift.report() if serving and serving.drift and summary.inferences else None
        telemetry = Telemetry(
            device_id=self.config.device_id,
            window_id=window_id,
            ts=ts,
            window_s=round(max(0.0, now - self._window_started), 3),
            model=serving.ref.name if serving else None,
            model_version=serving.ref.version if serving else None,
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
            spool_rows=len(self.spool),
            spool_evicted_total=self.spool.stats().evicted_total,
        )
        self._send_durable(DeviceChannel.TELEMETRY, telemetry)
        if report is not None and report.dataset_drift:
            self._event(EventKind.DRIFT_ALERT, f"{len(report.drifted_features)} of {len(report.features)} features "
                        f"drifted (score {report.overall_score:.2f}) on {serving.ref.label if serving else '-'}")
        if report is not None:
            features = [
                FeatureDriftDetail(
                    index=f.index, psi=_finite(f.psi), js_distance=_finite(f.js_distance),
                    ks_statistic=_finite(f.ks_statistic), ks_pvalue=_finite(f.ks_pvalue),
                    wasserstein=_finite(f.wasserstein), mean_shift_sd=_finite(f.mean_shift_sd),
                    nan_rate=_finite(f.nan_rate), out_of_range_rate=_finite(f.out_of_range_rate),
                )
                for f in report.features
            ]
            detail = DriftDetail(device_id=self.config.device_id, window_id=window_id, ts=ts,
                                 n_samples=report.n_samples, overall_score=_finite(report.overall_score) or 0.0,
                                 drifted_features=list(report.drifted_features), features=features)
            self._send_durable(DeviceChannel.DRIFT, detail)
        self.window.reset()
        if serving is not None and serving.drift is not None:
            serving.drift.reset()
        self._window_started = now

    # --- inbound dispatch -----------------------------------------------------------------------

    def handle(self, item: Inbound | LinkChange | PublishAck) -> None:
        if isinstance(item, PublishAck):
            ident = self.in_flight.pop(item.mid, None)
            if ident is not None:
                self.spool.ack(ident)
            return
        if isinstance(item, LinkChange):
            self._on_link(item)
            return
        try:
            parsed = parse_topic(item.topic)
            if parsed.kind is TopicKind.MANIFEST and parsed.digest:
                self._on_manifest(parsed.digest, item.payload)
            elif parsed.kind is TopicKind.SIGNATURE and parsed.digest:
                if item.payload:
                    self._on_signature(parsed.digest, item.payload)
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
        except SignatureError as exc:
            self.drops.drop(item.topic, item.topic, exc)
            self._event(EventKind.DESIRED_REJECTED, str(exc))

    def _on_link(self, change: LinkChange) -> None:
        if not change.connected:
            self.in_flight.clear()  # unacknowledged messages stay in the spool and go again
            return
        self._publish_status()
        self._publish_reported()
        if not self._started_event_sent:
            self._started_event_sent = True
            self._event(EventKind.AGENT_STARTED, f"agent {__version__} boot {self.boot_id}")
        self._drain_spool()

    # --- driving --------------------------------------------------------------------------------

    def start(self) -> None:
        self._restore()
        self.transport.subscribe(self._topic(DeviceChannel.DESIRED), self._topic(DeviceChannel.CMD))
        self.transport.start()
        if self.config.input_source != "none" and self.config.inference_interval_s > 0:
            from device_agent.simulation import DriftSpec, make_input_stream

            self._inputs = make_input_stream(self.config.input_source, self.config.seed,
                                             DriftSpec.parse(self.config.simulate_drift))
        if self.config.api_port or self.config.api_socket:
            from device_agent.local_api import LocalApiServer

            self.api = LocalApiServer(self.predict, self.describe, port=self.config.api_port,
                                      unix_socket=self.config.api_socket)
            self.api.start()
        now = time.monotonic()
        self._window_started = now
        self._next_window = now + self.config.telemetry_interval_s
        self._next_inference = now
        log.info("agent started device=%s fleet=%s broker=%s state=%s serving=%s trust=%s",
                 self.config.device_id, self.config.fleet, self.config.broker, self.state.state.value,
                 self.serving.ref.label if self.serving else None, self.trust.describe())

    def poll(self, now: float) -> float:
        """Do the timed work due at ``now``; return the seconds until the next deadline."""
        if self._inputs is not None and now >= self._next_inference:
            self._simulated_inference()
            self._next_inference = max(self._next_inference + self.config.inference_interval_s, now - 1.0)
        if self.probation is not None:
            self._check_probation()
        if now >= self._next_window:
            self._close_window(now)
            self._next_window = now + self.config.telemetry_interval_s
        if self.in_flight or self.transport.connected:
            self._drain_spool()
        deadline = self._next_window
        if self._inputs is not None:
            deadline = min(deadline, self._next_inference)
        if self.probation is not None:
            deadline = min(deadline, now + 0.1)
        return max(0.0, deadline - time.monotonic())

    def drain_inbox(self) -> None:
        """Handle everything that has arrived, without waiting."""
        while True:
            try:
                item = self.transport.inbox.get_nowait()
            except queue.Empty:
                return
            self.handle(item)

    def step(self, max_wait_s: float = 0.5) -> None:
        """Handle what arrived (waiting at most until the next deadline), then the timed work."""
        wait = self.poll(time.monotonic())
        try:
            item = self.transport.inbox.get(timeout=min(wait, max_wait_s))
        except queue.Empty:
            return
        self.handle(item)
        self.drain_inbox()

    def stop(self) -> None:
        """Say ``offline`` explicitly (a clean disconnect suppresses the last will) and disconnect."""
        if self.api is not None:
            self.api.stop()
        self.transport.stop(final=[(self._status_topic, self._status(Presence.OFFLINE).encode(), True)])
        self.spool.close()
        log.info("agent stopped device=%s dropped_invalid=%d", self.config.device_id, self.drops.total)

    def run(self, stop: threading.Event) -> None:
        self.start()
        try:
            while not stop.is_set():
                self.step()
        finally:
            self.stop()

    def _simulated_inference(self) -> None:
        if self.serving is None or self._inputs is None:
            return
        try:
            self.predict(self._inputs.next_batch())
        except (InferenceInputError, ModelLoadError) as exc:
            log.debug("simulated inference failed device=%s error=%s", self.config.device_id, exc)


def _finite(value: float) -> float | None:
    """JSON has no NaN: an undefined statistic travels as null."""
    return float(value) if np.isfinite(value) else None
