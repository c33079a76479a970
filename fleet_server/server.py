"""The fleet server process: ingests what devices report and publishes what they should run.

Two loops in one thread: every inbound message is validated and stored; every
``reconcile_interval_s`` the desired version of each device (from the store) is compared with what
this process has published since its last (re)connect, and the difference is published, retained:
first the bundle's manifest and chunks, then the device's desired message. After a broker restart
everything is published again, so a broker that lost its retained messages is repopulated.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from edgeops.errors import BundleError, ProtocolError
from edgeops.homeassistant import DiscoveryAnnouncer
from edgeops.manifest import Manifest, bundle_ref
from edgeops.protocol import (
    DEVICE_PUBLISHED,
    Desired,
    DeviceChannel,
    DriftDetail,
    Event,
    Reported,
    Status,
    Telemetry,
    TopicKind,
    chunk_topic,
    decode_device_message,
    device_filter,
    device_id_mismatch,
    device_topic,
    manifest_topic,
    parse_topic,
    signature_topic,
)
from edgeops.schema import Message
from edgeops.signing import KeyRing, sign_desired
from edgeops.transport import DropLog, Inbound, LinkChange, MqttTransport, PublishAck
from fleet_server.config import ServerConfig
from fleet_server.dashboard.views import RolloutRelay
from fleet_server.live import LiveBus
from fleet_server.metrics import IngestCounters
from fleet_server.registry import Registry
from fleet_server.rollout_driver import RolloutService
from fleet_server.store import Deployment, Store, StoreUnavailableError, now_ms

log = logging.getLogger(__name__)
#: Received messages handled per store transaction at most (telemetry windows are written together).
INGEST_BATCH = 500


class FleetServer:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.store = Store(config.database_url)
        self.registry = Registry(config.registry_path)
        self.transport = MqttTransport(f"edgeops-server-{config.fleet}", config.broker, clean_session=False)
        self.drops = DropLog(log)
        self.keys = KeyRing(config.home / "keys")
        self.rollouts = RolloutService(self.store, config.fleet)
        #: What the dashboard's event stream relays and /metrics counts (both served in this process).
        self.live = LiveBus(config.live_queue_size)
        self.counters = IngestCounters()
        self.rollout_relay = RolloutRelay(self.rollouts, self.live, config.live_rollout_interval_s)
        self._published_bundles: set[str] = set()
        self._published_desired: dict[str, int] = {}
        self._broken_bundles: set[str] = set()
        self._manifests: dict[str, Manifest] = {}
        self.homeassistant = DiscoveryAnnouncer(self.transport, config.fleet, config.homeassistant_prefix,
                                                enabled=config.homeassistant_discovery)

    # --- inbound ------------------------------------------------------------------------------

    def handle(self, item: Inbound | LinkChange | PublishAck) -> None:
        """Decode and store one item (see ``handle_batch`` for the ingestion path)."""
        self.handle_batch([item])

    def handle_batch(self, items: list[Inbound | LinkChange | PublishAck]) -> None:
        """Decode a batch of received items and store them; telemetry windows in one transaction."""
        windows: list[Telemetry] = []
        for item in items:
            message = self._decode(item)
            if isinstance(message, Telemetry):
                windows.append(message)
            elif message is not None:
                self._store_message(message)
        if windows:
            received = now_ms()
            stored = self.store.record_telemetry_batch(self.config.fleet, windows, received)
            self.counters.count_windows(stored, len(windows) - stored)
            if stored < len(windows):
                log.debug("duplicate telemetry windows dropped count=%d", len(windows) - stored)
            for window in windows:  # duplicates too: the browser keys windows by window_id
                self.live.publish_message(window, received)

    def _decode(self, item: Inbound | LinkChange | PublishAck) -> Message | None:
        if isinstance(item, PublishAck):
            return None
        if isinstance(item, LinkChange):
            if item.connected:
                # The broker may have restarted without its retained messages: publish it all again.
                self._published_bundles.clear()
                self._published_desired.clear()
                self.homeassistant.reset()
            return None
        if not item.payload:
            return None  # a cleared retained message
        try:
            parsed = parse_topic(item.topic)
            if parsed.kind is not TopicKind.DEVICE or parsed.channel is None or parsed.device_id is None:
                return None  # our own retained artifacts echoed back never arrive (not subscribed)
            message = decode_device_message(parsed.channel, item.payload)
            if device_id_mismatch(parsed, message):
                raise ProtocolError(f"payload names another device than its topic ({parsed.device_id})")
        except ProtocolError as exc:
            self.counters.count_invalid()
            self.drops.drop(item.topic.split("/")[4] if item.topic.count("/") >= 4 else item.topic, item.topic, exc)
            return None
        self.counters.count_received(parsed.channel.value)
        return message

    def _store_message(self, message: Message) -> None:
        fleet = self.config.fleet
        received = now_ms()
        if isinstance(message, Status):
            self.store.record_status(fleet, message, received)
            self.homeassistant.device_seen(message)
        elif isinstance(message, Reported):
            self.store.record_reported(fleet, message, received)
        elif isinstance(message, Event):
            self.store.record_event(fleet, message, received)
            log.info("device event device=%s kind=%s %s", message.device_id, message.kind.value, message.message)
        elif isinstance(message, DriftDetail):
            self.store.record_drift(fleet, message)
        self.live.publish_message(message, received)

    # --- outbound -----------------------------------------------------------------------------

    def reconcile(self) -> None:
        """Publish the desired state and artifacts that this connection has not published yet."""
        if not self.transport.connected:
            return
        for device_id, deployment in sorted(self.store.desired_for(self.config.fleet).items()):
            if self._published_desired.get(device_id) == deployment.id:
                continue
            if not self._ensure_bundle_published(deployment.digest):
                continue
            self._publish_desired(device_id, deployment)

    def _ensure_bundle_published(self, digest: str) -> bool:
        if digest in self._published_bundles:
            return True
        if digest in self._broken_bundles:
            return False
        fleet = self.config.fleet
        try:
            bundle = self.registry.open(digest)
        except BundleError as exc:
            log.error("bundle unusable, not publishing digest=%s error=%s", digest[:12], exc)
            self._broken_bundles.add(digest)
            return False
        # Chunks and signature first, manifest last: a device that sees the manifest finds the rest.
        for index, data in bundle.chunks():
            self.transport.publish(chunk_topic(fleet, digest, index), data, retain=True)
        if bundle.signature is not None:
            self.transport.publish(signature_topic(fleet, digest), bundle.signature.encode(), retain=True)
        else:
            log.warning("bundle is unsigned; agents that require signatures will refuse it digest=%s", digest[:12])
        self.transport.publish(manifest_topic(fleet, digest), bundle.manifest_bytes, retain=True)
        self._published_bundles.add(digest)
        self._manifests[digest] = bundle.manifest  # verified once, not again for every device's desired
        log.info(
            "bundle published model=%s:%s digest=%s chunks=%d bytes=%d",
            bundle.manifest.name, bundle.manifest.version, digest[:12], len(bundle.manifest.chunks),
            bundle.manifest.total_size,
        )
        return True

    def _publish_desired(self, device_id: str, deployment: Deployment) -> None:
        fleet = self.config.fleet
        desired = Desired(
            bundle=bundle_ref(self._manifests[deployment.digest], deployment.digest),
            manifest_topic=manifest_topic(fleet, deployment.digest),
            issued_at=deployment.created_ms,
            rollout_id=deployment.rollout_id or f"deployment-{deployment.id}",
            rollback=deployment.rollback,
        )
        key = self.keys.active()
        if key is not None:
            desired = sign_desired(desired, key)
        self.transport.publish(device_topic(fleet, device_id, DeviceChannel.DESIRED), desired.encode(), retain=True)
        self._published_desired[device_id] = deployment.id
        log.info("desired published device=%s model=%s", device_id, desired.bundle.label)

    # --- retention ----------------------------------------------------------------------------

    def apply_retention(self, now: int | None = None) -> dict[str, int] | None:
        """Delete telemetry, drift and events older than ``retention_days``; the counts, or None if
        retention is off or the store was unavailable (tried again at the next interval)."""
        days = self.config.retention_days
        if days is None:
            return None
        cutoff = (now_ms() if now is None else now) - int(days * 86_400_000)
        try:
            deleted = self.store.prune(self.config.fleet, cutoff)
        except StoreUnavailableError as exc:
            log.warning("retention skipped until the next interval: %s", exc)
            return None
        level = logging.INFO if any(deleted.values()) else logging.DEBUG
        log.log(level, "retention: deleted rows older than %g days %s", days,
                " ".join(f"{table}={count}" for table, count in deleted.items()))
        return deleted

    # --- lifecycle ----------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        fleet = self.config.fleet
        self.transport.subscribe(*(device_filter(fleet, ch) for ch in DEVICE_PUBLISHED))
        self.transport.start()
        active = self.keys.active_name()
        log.info("fleet server started fleet=%s broker=%s home=%s store=%s signing_key=%s", fleet,
                 self.config.broker, self.config.home, self.store.url, active)
        if active is None:
            log.warning("no signing key in %s: desired messages go out unsigned (edgeops keys generate)",
                        self.config.home / "keys")
        next_reconcile = 0.0
        next_retention = 0.0  # once at start-up, then every retention_interval_s
        http = None
        try:
            if self.config.http_port:
                from fleet_server.api import HttpApi
                from fleet_server.dashboard.routes import WebOptions

                http = HttpApi(self.config.home, fleet, self.config.http_host, self.config.http_port,
                               self.config.database_url, live=self.live, counters=self.counters,
                               web=WebOptions.from_config(self.config)).start()
            while not stop.is_set():
                timeout = max(0.0, next_reconcile - time.monotonic())
                try:
                    batch = [self.transport.inbox.get(timeout=min(timeout, 0.25))]
                except queue.Empty:
                    batch = []
                while batch and len(batch) < INGEST_BATCH:
                    try:
                        batch.append(self.transport.inbox.get_nowait())
                    except queue.Empty:
                        break
                if batch:
                    self.handle_batch(batch)
                if time.monotonic() >= next_reconcile:
                    self.rollouts.tick()
                    self.rollout_relay.maybe_publish()
                    self.reconcile()
                    next_reconcile = time.monotonic() + self.config.reconcile_interval_s
                if time.monotonic() >= next_retention:
                    self.apply_retention()
                    next_retention = time.monotonic() + self.config.retention_interval_s
        finally:
            self.live.close()  # ends the dashboards' event streams, so the HTTP server can stop
            if http is not None:
                http.stop()
            self.transport.stop()
            self.store.close()
            log.info("fleet server stopped dropped_invalid=%d", self.drops.total)
