"""The one wrapper around paho-mqtt that the server and the agents use.

paho's network thread calls our callbacks; they only enqueue (a received message or a link change)
so no inference, download or database work ever runs inside paho. Subscriptions are remembered
and re-made in ``on_connect``, so a broker restart or a dropped link resubscribes by itself.
TCP_NODELAY is set on every socket: without it each QoS 1 hop waits ~40 ms on Nagle's algorithm.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgeops.errors import BrokerUnavailableError, ConfigError
from edgeops.mqtt_loop import SharedLoop
from edgeops.protocol import QOS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> BrokerAddress:
        """``host:port``, ``host`` (port 1883) or ``:port`` (localhost)."""
        host, sep, port = text.rpartition(":")
        if not sep:
            host, port = text, "1883"
        try:
            number = int(port)
        except ValueError:
            raise ConfigError(f"invalid broker address {text!r}: port must be a number") from None
        if not 0 < number < 65536:
            raise ConfigError(f"invalid broker address {text!r}: port out of range")
        return cls(host or "127.0.0.1", number)

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Inbound:
    """A message as received, before any decoding."""

    topic: str
    payload: bytes
    retain: bool


@dataclass(frozen=True)
class LinkChange:
    """The connection came up (``connected``) or went down."""

    connected: bool
    reason: str = ""


@dataclass(frozen=True)
class PublishAck:
    """The broker acknowledged the QoS 1 message with this message id (PUBACK)."""

    mid: int


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    retain: bool = True


class MqttTransport:
    """One MQTT connection: publish from any thread, read what arrives from ``inbox``."""

    def __init__(
        self,
        client_id: str,
        broker: BrokerAddress,
        *,
        clean_session: bool = False,
        will: Will | None = None,
        keepalive_s: int = 30,
        reconnect_min_s: int = 1,
        reconnect_max_s: int = 30,
        max_inflight: int = 100,
        track_acks: bool = False,
        loop: SharedLoop | None = None,
    ) -> None:
        self.client_id = client_id
        self.broker = broker
        #: Put a PublishAck in the inbox for every acknowledged publish (for durable spools).
        self.track_acks = track_acks
        #: None: paho's own thread (loop_start). A SharedLoop: driven with many others from one thread.
        self._loop = loop
        self.inbox: queue.Queue[Inbound | LinkChange | PublishAck] = queue.Queue()
        self._subscriptions: set[str] = set()
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._keepalive_s = keepalive_s
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=mqtt.MQTTv311,
        )
        client.reconnect_delay_set(min_delay=reconnect_min_s, max_delay=reconnect_max_s)
        client.max_inflight_messages_set(max_inflight)
        if will is not None:
            client.will_set(will.topic, will.payload, qos=QOS, retain=will.retain)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        if loop is None:
            client.on_socket_open = self._on_socket_open
        self._client = client

    # --- paho callbacks: enqueue only ------------------------------------------------------------

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.warning("mqtt connect refused client=%s broker=%s reason=%s", self.client_id, self.broker, reason)
            return
        with self._lock:
            filters = sorted(self._subscriptions)
        if filters:
            client.subscribe([(f, QOS) for f in filters])
        log.info("mqtt connected client=%s broker=%s subscriptions=%d", self.client_id, self.broker, len(filters))
        self._connected.set()
        self.inbox.put(LinkChange(True))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        if was:
            log.info("mqtt disconnected client=%s reason=%s", self.client_id, reason)
            self.inbox.put(LinkChange(False, str(reason)))

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.inbox.put(Inbound(msg.topic, bytes(msg.payload), bool(msg.retain)))

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        if self.track_acks:
            self.inbox.put(PublishAck(mid))

    # --- API --------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        """Connect in the background; paho retries with back-off until ``stop``."""
        self._client.connect_async(self.broker.host, self.broker.port, keepalive=self._keepalive_s)
        if self._loop is not None:
            self._loop.add(self._client)
        else:
            self._client.loop_start()

    def wait_connected(self, timeout_s: float) -> None:
        if not self._connected.wait(timeout_s):
            raise BrokerUnavailableError(f"no MQTT connection to {self.broker} within {timeout_s:.0f} s")

    def subscribe(self, *filters: str) -> None:
        """Subscribe now (if connected) and after every reconnect."""
        with self._lock:
            new = [f for f in filters if f not in self._subscriptions]
            self._subscriptions.update(new)
        if new and self.connected:
            self._client.subscribe([(f, QOS) for f in new])

    def unsubscribe(self, *filters: str) -> None:
        with self._lock:
            gone = [f for f in filters if f in self._subscriptions]
            self._subscriptions.difference_update(gone)
        if gone and self.connected:
            self._client.unsubscribe(gone)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False, qos: int = QOS) -> mqtt.MQTTMessageInfo:
        """Queue a message; paho sends it now or after reconnecting (QoS 1 is kept in memory)."""
        return self._client.publish(topic, payload, qos=qos, retain=retain)

    def stop(self, final: list[tuple[str, bytes, bool]] | None = None, timeout_s: float = 5.0) -> None:
        """Publish ``final`` messages (e.g. an explicit offline status), then disconnect cleanly.

        A clean disconnect suppresses the last will, so presence must be published by hand here.
        """
        if final and self.connected:
            infos = [self._client.publish(t, p, qos=QOS, retain=r) for t, p, r in final]
            if self._loop is None:
                for info in infos:
                    try:
                        info.wait_for_publish(timeout_s)
                    except (RuntimeError, ValueError) as exc:
                        log.warning("final publish not confirmed client=%s: %s", self.client_id, exc)
            else:
                self._loop.flush(self._client, timeout_s)
        self._client.disconnect()
        if self._loop is None:
            self._client.loop_stop()
        else:
            self._loop.flush(self._client, timeout_s)
            self._loop.remove(self._client)
        self._connected.clear()


class DropLog:
    """Counts invalid inbound messages and logs only the first one per source.

    A misbehaving device can send thousands of bad payloads; one log line per source keeps the
    log readable while the counters still show the volume.
    """

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self.counts: Counter[str] = Counter()

    def drop(self, source: str, topic: str, error: Exception) -> None:
        self.counts[source] += 1
        if self.counts[source] == 1:
            code = getattr(error, "code", type(error).__name__)
            self._logger.warning(
                "dropped invalid message source=%s topic=%s code=%s error=%s "
                "(further ones from this source are counted, not logged)",
                source,
                topic,
                code,
                error,
            )

    @property
    def total(self) -> int:
        return sum(self.counts.values())
