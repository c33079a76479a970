"""The on-disk telemetry spool: what was measured survives broker outages and restarts.

Windows and events are written here first and deleted only when the broker acknowledged them
(PUBACK), so delivery is at-least-once (the server drops duplicates by window id). The spool is
bounded: beyond ``max_bytes`` the oldest rows are evicted and counted, and the counters survive
restarts. SQLite in WAL mode with ``synchronous=NORMAL``: a committed row survives a process crash;
a power cut may lose the last few hundred milliseconds of rows but never corrupts the file.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edgeops.errors import EdgeOpsError

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,
                                  payload BLOB NOT NULL, created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class SpoolWriteError(EdgeOpsError):
    """The spool could not store a message (disk full, I/O error)."""

    code = "spool_write_failed"


@dataclass(frozen=True)
class SpooledMessage:
    id: int
    topic: str
    payload: bytes
    created_ms: int


@dataclass(frozen=True)
class SpoolStats:
    rows: int
    bytes: int
    written_total: int
    acked_total: int
    evicted_total: int


class TelemetrySpool:
    def __init__(self, path: Path, *, max_bytes: int = 8 * 1024 * 1024) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        #: False when the file could not be used and the spool lives in memory (logged at start).
        self.durable = True
        try:
            self._db = self._open(str(path))
        except sqlite3.OperationalError as exc:  # disk full, I/O error: the file may be fine
            self._db = self._in_memory(exc)
        except sqlite3.DatabaseError as exc:  # not a database: keep it for inspection, start empty
            aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            log.error("telemetry spool unreadable, moved aside path=%s to=%s error=%s", path, aside, exc)
            path.replace(aside)
            for suffix in ("-wal", "-shm"):
                Path(str(path) + suffix).unlink(missing_ok=True)
            try:
                self._db = self._open(str(path))
            except sqlite3.Error as again:
                self._db = self._in_memory(again)
        row = self._db.execute("SELECT coalesce(sum(length(payload) + length(topic)), 0), count(*) FROM spool")
        self._bytes, self._rows = row.fetchone()

    def _in_memory(self, exc: Exception) -> sqlite3.Connection:
        log.error("telemetry spool file unusable, spooling in memory (lost on restart) path=%s error=%s",
                  self.path, exc)
        self.durable = False
        return self._open(":memory:")

    @staticmethod
    def _open(path: str) -> sqlite3.Connection:
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        db.execute("SELECT count(*) FROM spool").fetchone()
        return db

    def _bump(self, key: str, n: int) -> None:
        self._db.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                         "ON CONFLICT (key) DO UPDATE SET value = value + excluded.value", (key, n))

    def put(self, topic: str, payload: bytes) -> int:
        size = len(payload) + len(topic.encode())
        with self._lock:
            try:
                return self._put(topic, payload, size)
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise SpoolWriteError(f"telemetry spool write failed: {exc}") from exc

    def _put(self, topic: str, payload: bytes, size: int) -> int:
        """Insert and evict in one transaction; the in-memory counters change only after COMMIT."""
        self._db.execute("BEGIN IMMEDIATE")
        cur = self._db.execute("INSERT INTO spool (topic, payload, created_ms) VALUES (?, ?, ?)",
                               (topic, payload, int(time.time() * 1000)))
        ident = cur.lastrowid
        self._bump("written", 1)
        total, rows = self._bytes + size, self._rows + 1
        evicted = 0
        while total > self.max_bytes and rows > 1:
            oldest = self._db.execute(
                "SELECT id, length(payload) + length(topic) FROM spool ORDER BY id LIMIT 1").fetchone()
            self._db.execute("DELETE FROM spool WHERE id = ?", (oldest[0],))
            total, rows, evicted = total - oldest[1], rows - 1, evicted + 1
        if evicted:
            self._bump("evicted", evicted)
        self._db.execute("COMMIT")
        self._bytes, self._rows = total, rows
        if evicted:
            log.warning("telemetry spool full, evicted oldest rows=%d max_bytes=%d", evicted, self.max_bytes)
        assert ident is not None
        return ident

    def pending(self, limit: int = 100, after_id: int = 0) -> list[SpooledMessage]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topic, payload, created_ms FROM spool WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit)).fetchall()
        return [SpooledMessage(r[0], r[1], bytes(r[2]), r[3]) for r in rows]

    def ack(self, ident: int) -> bool:
        with self._lock:
            row = self._db.execute("SELECT length(payload) + length(topic) FROM spool WHERE id = ?",
                                   (ident,)).fetchone()
            if row is None:
                return False
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM spool WHERE id = ?", (ident,))
            self._bump("acked", 1)
            self._db.execute("COMMIT")
            self._bytes -= row[0]
            self._rows -= 1
            return True

    def stats(self) -> SpoolStats:
        with self._lock:
            meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        return SpoolStats(self._rows, self._bytes, meta.get("written", 0), meta.get("acked", 0),
                          meta.get("evicted", 0))

    def __len__(self) -> int:
        return int(self._rows)

    def close(self) -> None:
        with self._lock:
            self._db.close()
