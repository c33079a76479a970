"""The on-disk telemetry spool: what was measured survives broker outages, crashes and power cuts.

Windows and events are written here first and deleted only when the broker acknowledged them
(PUBACK), so delivery is at-least-once (the server drops duplicates by window id). The spool is
bounded: beyond ``max_bytes`` the oldest rows are evicted and counted; the written / acked /
evicted totals live in a ``meta`` table, so they survive restarts.

Durability: SQLite in WAL mode. A :meth:`TelemetrySpool.put` commits with ``synchronous=FULL``
(the WAL is fsynced before ``put`` returns), so a row survives a power cut, not only a process
crash; that is the promise the agent relies on before it publishes. Puts are rare (one window per
telemetry interval plus events), so one fsync each is cheap even on an SD card. An :meth:`ack`
commits with ``synchronous=NORMAL`` (no fsync): losing an ack to a power cut only sends that
message again, which the server drops as a duplicate; that halves the fsyncs per message.
``durability="normal"`` makes puts NORMAL too (many simulated devices on one disk).

A spool file that SQLite cannot read (not a database, malformed pages) never stops the agent: it is
moved aside as ``<name>.corrupt-<unix ts>`` for inspection, logged, and an empty spool takes its
place. If the file cannot be opened at all (read-only or full disk), the spool lives in memory
(``durable`` is False) and says so in the log.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from edgeops.errors import EdgeOpsError

log = logging.getLogger(__name__)

#: Layout version of the spool file (``PRAGMA user_version``); another value is moved aside.
SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: ids are never reused after eviction
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    size INTEGER NOT NULL,                 -- bytes of topic (UTF-8) + payload: what max_bytes bounds
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
_COUNTERS = ("written", "acked", "evicted")
_T = TypeVar("_T")


class SpoolWriteError(EdgeOpsError):
    """The spool could not store a message (disk full, I/O error)."""

    code = "spool_write_failed"


class _Corrupt(Exception):
    """Internal: the file failed its integrity check at open."""


@dataclass(frozen=True)
class SpooledMessage:
    id: int
    topic: str
    payload: bytes
    created_ms: int


@dataclass(frozen=True)
class SpoolStats:
    #: Rows and bytes (topic + payload) waiting for an acknowledgement now.
    rows: int
    bytes: int
    #: Totals since the spool file was created (they survive restarts).
    written_total: int
    acked_total: int
    evicted_total: int


class TelemetrySpool:
    """A bounded FIFO of (topic, payload) rows on disk. Thread-safe: one lock around the connection."""

    def __init__(self, path: Path, *, max_bytes: int = 8 * 1024 * 1024,
                 durability: Literal["full", "normal"] = "full") -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.path = path
        self.max_bytes = max_bytes
        self._put_sync = "FULL" if durability == "full" else "NORMAL"
        self._sync: str | None = None
        self._lock = threading.Lock()
        #: False when the file could not be used and the spool lives in memory (logged at start).
        self.durable = True
        self._rows = 0
        self._bytes = 0
        self._totals = dict.fromkeys(_COUNTERS, 0)
        self._db = self._open_or_recover()

    # --- opening --------------------------------------------------------------------------------

    def _open_or_recover(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return self._open(str(self.path))
        except (sqlite3.OperationalError, OSError) as exc:  # I/O, permissions, disk full: not the file's fault
            return self._in_memory(exc)
        except (_Corrupt, sqlite3.DatabaseError) as exc:
            self._move_aside(exc)
        try:
            return self._open(str(self.path))
        except (_Corrupt, sqlite3.Error) as again:
            return self._in_memory(again)

    def _move_aside(self, exc: BaseException) -> None:
        aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        log.error("telemetry spool unreadable, moved aside, starting empty path=%s to=%s error=%s",
                  self.path, aside, exc)
        try:
            self.path.replace(aside)
        except FileNotFoundError:
            pass
        for suffix in ("-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)

    def _in_memory(self, exc: BaseException) -> sqlite3.Connection:
        log.error("telemetry spool file unusable, spooling in memory (lost on restart) path=%s error=%s",
                  self.path, exc)
        self.durable = False
        return self._open(":memory:")

    def _open(self, path: str) -> sqlite3.Connection:
        """Open, check and load the counters; raise _Corrupt or sqlite3 errors for a bad file."""
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise _Corrupt(f"spool layout version {version}, this build reads {SCHEMA_VERSION}")
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise _Corrupt(f"integrity check: {check}")
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            rows, size = db.execute("SELECT count(*), coalesce(sum(size), 0) FROM spool").fetchone()
            stored = dict(db.execute("SELECT key, value FROM meta").fetchall())
        except BaseException:
            db.close()
            raise
        self._rows, self._bytes = int(rows), int(size)
        # A file recovered from corruption keeps counting from what this process knew.
        self._totals = {k: max(int(stored.get(k, 0)), self._totals[k]) for k in _COUNTERS}
        self._sync = None
        return db

    def _recover(self, exc: sqlite3.DatabaseError) -> None:
        """The file went bad while open: move it aside and continue with an empty one."""
        self._db.close()
        if self.durable:
            self._move_aside(exc)
        self._db = self._open_or_recover()
        if self.durable:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", self._totals.items())
            self._db.execute("COMMIT")

    def _guarded(self, op: Callable[[], _T]) -> _T:
        """Run ``op`` (holding the lock); a corrupt file is replaced and ``op`` tried once more."""
        try:
            return op()
        except sqlite3.OperationalError:
            raise
        except sqlite3.DatabaseError as exc:
            self._rollback()
            self._recover(exc)
            return op()

    def _rollback(self) -> None:
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error as exc:
                log.warning("telemetry spool rollback failed path=%s error=%s", self.path, exc)

    def _synchronous(self, level: str) -> None:
        if self._sync != level:  # may not change inside a transaction; callers set it before BEGIN
            self._db.execute(f"PRAGMA synchronous={level}")
            self._sync = level

    def _bump(self, counts: dict[str, int]) -> None:
        self._db.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = value + excluded.value",
            [(k, n) for k, n in counts.items() if n],
        )

    # --- the API --------------------------------------------------------------------------------

    def put(self, topic: str, payload: bytes) -> int:
        """Store one message; when this returns it is on disk. Returns its id (increasing, never reused).

        If the spool then holds more than ``max_bytes``, the oldest rows are evicted in the same
        transaction (never the row just written, even if it alone is larger than the bound).
        """
        size = len(topic.encode()) + len(payload)
        with self._lock:
            try:
                return self._guarded(lambda: self._put(topic, bytes(payload), size))
            except sqlite3.Error as exc:
                self._rollback()
                raise SpoolWriteError(f"telemetry spool write failed: {exc}") from exc

    def _put(self, topic: str, payload: bytes, size: int) -> int:
        """Insert and evict in one transaction; the in-memory counters change only after COMMIT."""
        self._synchronous(self._put_sync)
        self._db.execute("BEGIN IMMEDIATE")
        cur = self._db.execute("INSERT INTO spool (topic, payload, size, created_ms) VALUES (?, ?, ?, ?)",
                               (topic, payload, size, int(time.time() * 1000)))
        ident = cur.lastrowid
        if ident is None:  # only for statements that are not INSERT; keeps mypy and a broken driver honest
            raise sqlite3.OperationalError("no row id after INSERT")
        total, rows, evicted, evicted_to = self._bytes + size, self._rows + 1, 0, 0
        if total > self.max_bytes and rows > 1:
            for old_id, old_size in self._db.execute("SELECT id, size FROM spool WHERE id < ? ORDER BY id", (ident,)):
                if total <= self.max_bytes:
                    break
                evicted_to, total, rows, evicted = old_id, total - old_size, rows - 1, evicted + 1
            if evicted:
                self._db.execute("DELETE FROM spool WHERE id <= ?", (evicted_to,))
        self._bump({"written": 1, "evicted": evicted})
        self._db.execute("COMMIT")
        self._bytes, self._rows = total, rows
        self._totals["written"] += 1
        self._totals["evicted"] += evicted
        if evicted:
            log.warning("telemetry spool full, evicted oldest rows=%d evicted_total=%d max_bytes=%d path=%s",
                        evicted, self._totals["evicted"], self.max_bytes, self.path)
        return ident

    def pending(self, limit: int = 100, after_id: int = 0) -> list[SpooledMessage]:
        """Up to ``limit`` rows with ``id > after_id``, oldest first. Empty (and logged) on a read error."""
        def read() -> list[tuple[int, str, bytes, int]]:
            return self._db.execute(
                "SELECT id, topic, payload, created_ms FROM spool WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit)).fetchall()

        with self._lock:
            try:
                rows = self._guarded(read)
            except sqlite3.Error as exc:
                log.error("telemetry spool read failed path=%s error=%s", self.path, exc)
                return []
        return [SpooledMessage(r[0], r[1], bytes(r[2]), r[3]) for r in rows]

    def ack(self, ident: int) -> bool:
        """Delete an acknowledged row. False if it is not there (evicted, acked twice, unknown)."""
        def delete() -> int | None:
            self._synchronous("NORMAL")
            self._db.execute("BEGIN IMMEDIATE")
            # No DELETE ... RETURNING: Raspberry Pi OS 11 ships SQLite 3.34, older than RETURNING (3.35).
            row = self._db.execute("SELECT size FROM spool WHERE id = ?", (ident,)).fetchone()
            if row is not None:
                self._db.execute("DELETE FROM spool WHERE id = ?", (ident,))
                self._bump({"acked": 1})
            self._db.execute("COMMIT")
            return None if row is None else int(row[0])

        with self._lock:
            try:
                size = self._guarded(delete)
            except sqlite3.Error as exc:
                self._rollback()
                log.error("telemetry spool ack failed (the message will be sent again) id=%d path=%s error=%s",
                          ident, self.path, exc)
                return False
            if size is None:
                return False
            self._bytes -= size
            self._rows -= 1
            self._totals["acked"] += 1
            return True

    def stats(self) -> SpoolStats:
        with self._lock:
            return SpoolStats(self._rows, self._bytes, self._totals["written"], self._totals["acked"],
                              self._totals["evicted"])

    def __len__(self) -> int:
        return self._rows

    def close(self) -> None:
        """Close the file (idempotent). The spool cannot be used afterwards."""
        with self._lock:
            self._db.close()
