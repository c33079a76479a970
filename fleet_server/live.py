"""In-process pub/sub that relays what the server ingests to the dashboard's server-sent events.

The fleet server's ingestion thread publishes (telemetry windows, status and reported changes,
events, drift details, rollout progress); every open ``/api/v1/stream`` connection is a
:class:`Subscription` read by the HTTP API's event loop in another thread. Publishing never blocks
and never waits for a reader: ingestion must not slow down because a browser tab is slow.

Memory stays bounded per subscriber:

* a message with a ``key`` (one device's newest telemetry, one rollout's progress) *coalesces*
  with a pending message of the same key: the reader gets the newest state once, not every step;
* at most ``max_pending`` messages wait per subscriber; a subscriber that would need more is
  *dropped* (``overflowed``): its stream sends a ``reset`` event and ends, and the browser's
  ``EventSource`` reconnects and reloads a fresh snapshot. Better one reload than unbounded queues.

Messages marked with a ``device`` (per-feature drift details, which can be large) reach only
subscribers that asked for that device.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from edgeops.protocol import DriftDetail, Event, Reported, Status, Telemetry
from edgeops.schema import Message

log = logging.getLogger(__name__)

#: Messages waiting per subscriber before it is dropped (ServerConfig.live_queue_size).
DEFAULT_MAX_PENDING = 256
#: Seconds between SSE heartbeat comments on an idle stream (ServerConfig.live_heartbeat_s).
DEFAULT_HEARTBEAT_S = 15.0
#: What the browser waits before reconnecting a dropped stream (the SSE ``retry`` field), ms.
RECONNECT_MS = 2000
#: Per-feature statistics of one drift window relayed to the device view (the heatmap's column).
DRIFT_FEATURES_MAX = 256


class LiveKind:
    """The ``event:`` names of the stream (documented in docs/dashboard.md)."""

    HELLO = "hello"
    DEVICE = "device"
    TELEMETRY = "telemetry"
    EVENT = "event"
    DRIFT = "drift"
    ROLLOUT = "rollout"
    RESET = "reset"


@dataclass(frozen=True)
class LiveMessage:
    """One thing that happened; ``data`` is JSON-able."""

    seq: int
    kind: str
    data: dict[str, Any]
    #: Messages with the same key coalesce in a subscriber's queue (newer fields win).
    key: str | None = None
    #: Delivered only to subscribers watching this device (None: to everyone).
    device: str | None = None


class Subscription:
    """One reader's bounded queue. ``wake`` is called (from the publishing thread) when it has news."""

    def __init__(self, max_pending: int, device: str | None = None,
                 wake: Callable[[], None] | None = None) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, got {max_pending}")
        self.max_pending = max_pending
        self.device = device
        self._wake = wake
        self._lock = threading.Lock()
        self._pending: OrderedDict[str, LiveMessage] = OrderedDict()
        #: Set when the reader fell too far behind; it got nothing more after that.
        self.overflowed = False
        #: Set when the bus closed (server shutting down) or the reader left.
        self.closed = False
        #: Messages merged into a pending one of the same key (for tests and logs).
        self.coalesced = 0

    def wants(self, message: LiveMessage) -> bool:
        return message.device is None or message.device == self.device

    def offer(self, message: LiveMessage) -> bool:
        """Queue a message (coalescing by key); False once this subscriber is dropped or closed."""
        with self._lock:
            if self.overflowed or self.closed:
                return False
            slot = f"k:{message.key}" if message.key is not None else f"s:{message.seq}"
            old = self._pending.get(slot)
            if old is not None:
                # Keep the old position (a busy key cannot starve the others), with the newest fields.
                self._pending[slot] = LiveMessage(message.seq, message.kind, {**old.data, **message.data},
                                                  message.key, message.device)
                self.coalesced += 1
            elif len(self._pending) >= self.max_pending:
                self.overflowed = True
                self._pending.clear()
            else:
                self._pending[slot] = message
        self._notify()
        with self._lock:
            return not (self.overflowed or self.closed)

    def take(self) -> list[LiveMessage]:
        """Everything pending, oldest first; the queue is empty afterwards."""
        with self._lock:
            out = list(self._pending.values())
            self._pending.clear()
            return out

    def close(self) -> None:
        """Accept nothing more; what is pending can still be taken (the stream drains, then ends)."""
        with self._lock:
            self.closed = True
        self._notify()

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def _notify(self) -> None:
        if self._wake is None:
            return
        try:
            self._wake()
        except RuntimeError as exc:
            # The reader's event loop is gone (the API thread stopped): nobody will read this again.
            log.debug("live subscriber's loop is closed, dropping it: %s", exc)
            with self._lock:
                self.closed = True
                self._pending.clear()


class LiveBus:
    """Fan-out of :class:`LiveMessage` to subscribers; thread-safe, never blocks the publisher."""

    def __init__(self, max_pending: int = DEFAULT_MAX_PENDING) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, got {max_pending}")
        self.max_pending = max_pending
        self._lock = threading.Lock()
        self._subscribers: list[Subscription] = []
        self._seq = itertools.count(1)
        self.closed = False
        #: Subscribers dropped for falling behind, since start (a Prometheus counter).
        self.dropped_total = 0
        #: Messages published, since start.
        self.published_total = 0

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subscribers)

    def subscribe(self, device: str | None = None, wake: Callable[[], None] | None = None) -> Subscription:
        """A new reader; closed at once if the bus is closed (the stream then ends)."""
        sub = Subscription(self.max_pending, device, wake)
        with self._lock:
            if self.closed:
                sub.closed = True
            else:
                self._subscribers.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subscribers:
                self._subscribers.remove(sub)
        sub.close()

    def publish(self, kind: str, data: dict[str, Any], *, key: str | None = None,
                device: str | None = None) -> int:
        """Offer a message to every subscriber that wants it; returns how many took it."""
        with self._lock:
            if self.closed or not self._subscribers:
                return 0
            message = LiveMessage(next(self._seq), kind, data, key, device)
            self.published_total += 1
            targets = [s for s in self._subscribers if s.wants(message)]
        delivered = 0
        dropped: list[Subscription] = []
        for sub in targets:
            if sub.offer(message):
                delivered += 1
            else:
                dropped.append(sub)
        if dropped:
            with self._lock:
                for sub in dropped:
                    if sub in self._subscribers:
                        self._subscribers.remove(sub)
                        if sub.overflowed:
                            self.dropped_total += 1
                            log.info("live subscriber dropped: more than %d messages pending", sub.max_pending)
        return delivered

    def publish_message(self, message: Message, received_ms: int) -> None:
        """Relay one ingested device message (the server calls this after storing it)."""
        if not self.subscribers:
            return  # nothing to build for nobody
        relayed = relay(message, received_ms)
        if relayed is not None:
            kind, data, key, device = relayed
            self.publish(kind, data, key=key, device=device)

    def close(self) -> None:
        """End every stream (server shutdown): readers see ``closed`` and finish."""
        with self._lock:
            self.closed = True
            subs, self._subscribers = self._subscribers, []
        for sub in subs:
            sub.close()


def relay(message: Message, received_ms: int) -> tuple[str, dict[str, Any], str | None, str | None] | None:
    """What the stream carries for one protocol message: (kind, data, key, device filter).

    Device changes are *patches* in the shape of the API's ``DeviceOut`` (the browser merges them
    into its row), keyed per device so a burst coalesces into the newest state.
    """
    if isinstance(message, Telemetry):
        return LiveKind.TELEMETRY, message.to_dict(), f"telemetry:{message.device_id}", None
    if isinstance(message, Status):
        patch = {"device_id": message.device_id, "online": message.state.value == "online",
                 "agent_version": message.agent_version or None, "last_seen_ms": received_ms}
        return LiveKind.DEVICE, patch, f"device:{message.device_id}", None
    if isinstance(message, Reported):
        active = message.active
        error = f"{message.last_error.code}: {message.last_error.message}" if message.last_error else None
        patch = {"device_id": message.device_id, "phase": message.phase.value,
                 "running": f"{active.name}:{active.version}" if active else None,
                 "active_digest": active.digest if active else None, "last_error": error,
                 "last_seen_ms": received_ms}
        return LiveKind.DEVICE, patch, f"device:{message.device_id}", None
    if isinstance(message, Event):
        return LiveKind.EVENT, message.to_dict(), None, None
    if isinstance(message, DriftDetail):
        return LiveKind.DRIFT, drift_column(message.to_dict()), f"drift:{message.device_id}", message.device_id
    return None


def drift_column(detail: dict[str, Any]) -> dict[str, Any]:
    """One drift window reduced to what the heatmap draws: per-feature PSI (capped in count)."""
    features = detail.get("features") or []
    return {"device_id": detail.get("device_id"), "window_id": detail.get("window_id"), "ts": detail.get("ts"),
            "overall_score": detail.get("overall_score"), "drifted_features": detail.get("drifted_features", []),
            "psi": [f.get("psi") for f in features[:DRIFT_FEATURES_MAX]]}


# --- server-sent events ---------------------------------------------------------------------------


def sse_frame(kind: str, data: dict[str, Any], seq: int | None = None) -> str:
    """One SSE event; JSON has no raw newlines, so ``data`` is a single line."""
    head = f"id: {seq}\n" if seq is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data, separators=(',', ':'), allow_nan=False)}\n\n"


async def sse_stream(bus: LiveBus, *, device: str | None = None, heartbeat_s: float = DEFAULT_HEARTBEAT_S,
                     hello: dict[str, Any] | None = None,
                     authorized: Callable[[], bool] | None = None) -> AsyncIterator[str]:
    """The text of one ``text/event-stream`` response, until the bus closes or the reader is dropped.

    Starts with ``retry`` and a ``hello`` event (the browser reloads its snapshot on every hello, so
    a reconnect after a drop resynchronises it), then relays messages; a comment line every
    ``heartbeat_s`` on an idle stream keeps proxies from closing it and reveals dead clients.
    ``authorized`` (run in a worker thread at each heartbeat) ends the stream once the reader's
    credential is revoked or expired. The caller's cancellation (client gone) unsubscribes.
    """
    loop = asyncio.get_running_loop()
    news = asyncio.Event()

    def wake() -> None:
        loop.call_soon_threadsafe(news.set)

    sub = bus.subscribe(device=device, wake=wake)
    try:
        yield f"retry: {RECONNECT_MS}\n" + sse_frame(LiveKind.HELLO, {**(hello or {}), "device": device})
        while True:
            closed = sub.closed  # read first: a closed subscription accepts nothing, so take() drains it
            for message in sub.take():
                yield sse_frame(message.kind, message.data, message.seq)
            if sub.overflowed:
                yield sse_frame(LiveKind.RESET, {"reason": f"more than {sub.max_pending} messages pending"})
                return
            if closed:
                return
            try:
                await asyncio.wait_for(news.wait(), heartbeat_s)
            except asyncio.TimeoutError:
                if authorized is not None and not await asyncio.to_thread(authorized):
                    return  # the browser reconnects, gets a 401 and goes to the sign-in page
                yield ": heartbeat\n\n"
            news.clear()
    finally:
        bus.unsubscribe(sub)
