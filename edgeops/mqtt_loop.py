"""One thread driving many MQTT connections: the simulator's (and any multi-client process's) loop.

paho's own network loop uses select(), which breaks silently once a socket number passes 1024, and
``loop_start`` costs a thread per client. Here the sockets sit in one selector (epoll on Linux),
paho's socket callbacks keep the registrations right, and reconnection with back-off is done by
this loop, so thousands of clients live in one thread.
"""

from __future__ import annotations

import logging
import selectors
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

log = logging.getLogger(__name__)

#: How often paho's housekeeping (keep-alive pings, retries) runs for every client.
MISC_INTERVAL_S = 1.0


@dataclass
class _Entry:
    client: mqtt.Client
    connected_once: bool = False
    next_attempt: float = 0.0
    backoff_s: float = 0.5
    sock: Any = None


class SharedLoop:
    def __init__(self, max_backoff_s: float = 30.0) -> None:
        self._selector = selectors.DefaultSelector()
        self._entries: dict[int, _Entry] = {}
        self._max_backoff_s = max_backoff_s
        self._next_misc = 0.0

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, client: mqtt.Client) -> None:
        """Take over ``client`` (after ``connect_async``); it connects on the next ``run_once``."""
        entry = _Entry(client)
        self._entries[id(client)] = entry
        client.on_socket_open = self._socket_open
        client.on_socket_close = self._socket_close
        client.on_socket_register_write = self._register_write
        client.on_socket_unregister_write = self._unregister_write

    def remove(self, client: mqtt.Client) -> None:
        entry = self._entries.pop(id(client), None)
        if entry is not None and entry.sock is not None:
            self._unregister(entry.sock)

    # --- paho socket callbacks ---------------------------------------------------------------

    def _socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        entry = self._entries[id(client)]
        entry.sock = sock
        sock.setsockopt(6, 1, 1)  # IPPROTO_TCP, TCP_NODELAY
        self._selector.register(sock, selectors.EVENT_READ, entry)

    def _socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        entry = self._entries.get(id(client))
        self._unregister(sock)
        if entry is not None:
            entry.sock = None

    def _register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        entry = self._entries.get(id(client))
        if entry is not None:
            self._selector.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, entry)

    def _unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        entry = self._entries.get(id(client))
        if entry is not None:
            self._selector.modify(sock, selectors.EVENT_READ, entry)

    def _unregister(self, sock: Any) -> None:
        try:
            self._selector.unregister(sock)
        except (KeyError, ValueError):
            return

    # --- the loop ----------------------------------------------------------------------------

    def _connect_due(self, now: float) -> None:
        for entry in self._entries.values():
            if entry.sock is not None or now < entry.next_attempt:
                continue
            try:
                entry.client.reconnect()
                entry.backoff_s = 0.5
            except OSError as exc:
                entry.next_attempt = now + entry.backoff_s
                entry.backoff_s = min(entry.backoff_s * 2, self._max_backoff_s)
                log.debug("mqtt connect failed client=%s retry_in=%.1fs error=%s",
                          entry.client._client_id, entry.backoff_s, exc)

    def run_once(self, timeout_s: float) -> None:
        """Connect what is due, move bytes for every ready socket, run housekeeping."""
        now = time.monotonic()
        self._connect_due(now)
        for key, mask in self._selector.select(timeout=max(0.0, timeout_s)):
            entry: _Entry = key.data
            client = entry.client
            rc = mqtt.MQTT_ERR_SUCCESS
            if mask & selectors.EVENT_READ:
                rc = client.loop_read()
            if rc == mqtt.MQTT_ERR_SUCCESS and mask & selectors.EVENT_WRITE and entry.sock is not None:
                rc = client.loop_write()
            if rc != mqtt.MQTT_ERR_SUCCESS:
                self._lost(entry, now)
        if now >= self._next_misc:
            self._next_misc = now + MISC_INTERVAL_S
            for entry in list(self._entries.values()):
                if entry.sock is not None and entry.client.loop_misc() != mqtt.MQTT_ERR_SUCCESS:
                    self._lost(entry, now)

    def _lost(self, entry: _Entry, now: float) -> None:
        if entry.sock is not None:
            self._unregister(entry.sock)
            entry.sock = None
        entry.next_attempt = now + entry.backoff_s
        entry.backoff_s = min(entry.backoff_s * 2, self._max_backoff_s)

    def flush(self, client: mqtt.Client, timeout_s: float) -> None:
        """Write what ``client`` has queued (a final offline status, a DISCONNECT) before it goes."""
        deadline = time.monotonic() + timeout_s
        entry = self._entries.get(id(client))
        while entry is not None and entry.sock is not None and client.want_write() and time.monotonic() < deadline:
            if client.loop_write() != mqtt.MQTT_ERR_SUCCESS:
                break

    def close(self) -> None:
        for entry in list(self._entries.values()):
            if entry.sock is not None:
                self._unregister(entry.sock)
        self._selector.close()
