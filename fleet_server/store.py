"""The fleet server's store: models, deployments, devices as they report themselves, telemetry.

SQLite in WAL mode so the CLI can read and write while the server runs. The server's view of a
device is what the device *reported* (status, reported state, telemetry), never what was desired.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeops.errors import ConfigError, NotFoundError
from edgeops.protocol import DriftDetail, Event, Reported, Status, Telemetry

SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    digest TEXT NOT NULL,
    runtime TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    parent_version TEXT,
    manifest_json TEXT NOT NULL,
    parent_digest TEXT,
    created_by TEXT NOT NULL DEFAULT '',
    source_sha256 TEXT,
    recipe_json TEXT,
    signed_by TEXT,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS deployments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    fleet TEXT NOT NULL,
    digest TEXT NOT NULL,
    selector TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    rollout_id TEXT,
    rollback INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS rollouts (
    id TEXT PRIMARY KEY,
    fleet TEXT NOT NULL,
    target_digest TEXT NOT NULL,
    state TEXT NOT NULL,
    record TEXT NOT NULL,
    revision INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    reason TEXT NOT NULL,
    details TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
    fleet TEXT NOT NULL,
    device_id TEXT NOT NULL,
    online INTEGER NOT NULL DEFAULT 0,
    agent_version TEXT,
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    active_name TEXT,
    active_version TEXT,
    active_digest TEXT,
    phase TEXT,
    last_error TEXT,
    last_telemetry_json TEXT,
    last_telemetry_ms INTEGER,
    PRIMARY KEY (fleet, device_id)
);
CREATE TABLE IF NOT EXISTS telemetry (
    window_id TEXT PRIMARY KEY,
    fleet TEXT NOT NULL,
    device_id TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS telemetry_device_ts ON telemetry (fleet, device_id, ts_ms);
CREATE TABLE IF NOT EXISTS drift (
    window_id TEXT PRIMARY KEY,
    fleet TEXT NOT NULL,
    device_id TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    payload TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    fleet TEXT NOT NULL,
    device_id TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL
);
"""
ALL_DEVICES = "all"
_MODEL_COLUMNS = (
    "name, version, digest, runtime, size_bytes, created_at, parent_version, parent_digest, created_by, "
    "source_sha256, recipe_json, signed_by"
)
#: Columns added to ``models`` after its first release, with their SQL types (migrated on open).
_MODEL_EXTRA_COLUMNS = {
    "parent_digest": "TEXT",
    "created_by": "TEXT NOT NULL DEFAULT ''",
    "source_sha256": "TEXT",
    "recipe_json": "TEXT",
    "signed_by": "TEXT",
}


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class ModelRow:
    name: str
    version: str
    digest: str
    runtime: str
    size_bytes: int
    created_at: str
    parent_version: str | None
    parent_digest: str | None = None
    created_by: str = ""
    #: sha256 of the model file as given (before quantization).
    source_sha256: str | None = None
    #: Canonical JSON of the packaging options (quantization recipe, gate), for idempotent re-adds.
    recipe_json: str | None = None
    #: Key id of the bundle signature, None for an unsigned bundle.
    signed_by: str | None = None

    @property
    def label(self) -> str:
        return f"{self.name}:{self.version}"


@dataclass(frozen=True)
class Deployment:
    id: int
    fleet: str
    digest: str
    selector: str
    created_ms: int
    rollout_id: str | None = None
    #: A deliberate downgrade (the agent refuses older versions without it).
    rollback: bool = False

    def targets(self, device_id: str) -> bool:
        return self.selector == ALL_DEVICES or device_id in self.selector.split(",")

    @property
    def explicit_ids(self) -> list[str]:
        return [] if self.selector == ALL_DEVICES else self.selector.split(",")


@dataclass(frozen=True)
class DeviceRow:
    fleet: str
    device_id: str
    online: bool
    agent_version: str | None
    first_seen_ms: int
    last_seen_ms: int
    active_name: str | None
    active_version: str | None
    active_digest: str | None
    phase: str | None
    last_error: str | None
    last_telemetry: dict[str, Any] | None
    last_telemetry_ms: int | None

    @property
    def active_label(self) -> str | None:
        return f"{self.active_name}:{self.active_version}" if self.active_name else None


class Store:
    """Thread-safe access to the SQLite file at ``path``."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=10, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._migrate_models()
        self._migrate_deployments()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._db.execute(sql, args))

    # --- models -------------------------------------------------------------------------------

    def _migrate_deployments(self) -> None:
        """Add the rollout columns to a ``deployments`` table created by an older version."""
        with self._lock:
            have = {r["name"] for r in self._db.execute("PRAGMA table_info(deployments)")}
            if "rollout_id" not in have:
                self._db.execute("ALTER TABLE deployments ADD COLUMN rollout_id TEXT")
            if "rollback" not in have:
                self._db.execute("ALTER TABLE deployments ADD COLUMN rollback INTEGER NOT NULL DEFAULT 0")

    def _migrate_models(self) -> None:
        """Add the lineage/recipe columns to a ``models`` table created by an older version."""
        with self._lock:
            have = {r["name"] for r in self._db.execute("PRAGMA table_info(models)")}
            for column, sql_type in _MODEL_EXTRA_COLUMNS.items():
                if column not in have:
                    self._db.execute(f"ALTER TABLE models ADD COLUMN {column} {sql_type}")

    def add_model(self, row: ModelRow, manifest_json: str) -> bool:
        """Record a model version; False if the identical version was already there.

        A different bundle under an existing name and version is refused: versions are immutable.
        """
        with self._tx() as db:
            existing = db.execute(
                "SELECT digest FROM models WHERE name=? AND version=?", (row.name, row.version)
            ).fetchone()
            if existing is not None:
                if existing["digest"] == row.digest:
                    return False
                raise ConfigError(f"{row.label} already exists with different content; pick a new version")
            db.execute(
                "INSERT INTO models (name, version, digest, runtime, size_bytes, created_at, parent_version, "
                "manifest_json, parent_digest, created_by, source_sha256, recipe_json, signed_by) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (row.name, row.version, row.digest, row.runtime, row.size_bytes, row.created_at,
                 row.parent_version, manifest_json, row.parent_digest, row.created_by, row.source_sha256,
                 row.recipe_json, row.signed_by),
            )
        return True

    def models(self) -> list[ModelRow]:
        rows = self._query(
            "SELECT " + _MODEL_COLUMNS + " FROM models "
            "ORDER BY name, created_at, version"
        )
        return [ModelRow(**dict(r)) for r in rows]

    def model(self, name: str, version: str) -> ModelRow:
        rows = self._query(
            "SELECT " + _MODEL_COLUMNS + " FROM models "
            "WHERE name=? AND version=?",
            (name, version),
        )
        if not rows:
            known = sorted({m.version for m in self.models() if m.name == name})
            hint = f" (known versions: {', '.join(known)})" if known else " (no such model)"
            raise NotFoundError(f"unknown model version {name}:{version}{hint}")
        return ModelRow(**dict(rows[0]))

    def find_model(self, name: str, version: str) -> ModelRow | None:
        try:
            return self.model(name, version)
        except NotFoundError:
            return None

    def manifest_json(self, name: str, version: str) -> str:
        rows = self._query("SELECT manifest_json FROM models WHERE name=? AND version=?", (name, version))
        if not rows:
            raise NotFoundError(f"unknown model version {name}:{version}")
        return str(rows[0]["manifest_json"])

    def lineage(self, name: str, version: str) -> list[ModelRow]:
        """``name:version`` and its ancestors by parent digest, newest first."""
        chain = [self.model(name, version)]
        seen = {chain[0].digest}
        while chain[-1].parent_digest and chain[-1].parent_digest not in seen:
            try:
                parent = self.model_by_digest(chain[-1].parent_digest)
            except NotFoundError:
                break
            seen.add(parent.digest)
            chain.append(parent)
        return chain

    def model_by_digest(self, digest: str) -> ModelRow:
        rows = self._query(
            "SELECT " + _MODEL_COLUMNS + " FROM models WHERE digest=?",
            (digest,),
        )
        if not rows:
            raise NotFoundError(f"no model version with digest {digest[:12]}")
        return ModelRow(**dict(rows[0]))

    # --- deployments --------------------------------------------------------------------------

    def add_deployment(self, fleet: str, digest: str, selector: str, *, rollout_id: str | None = None,
                       rollback: bool = False) -> Deployment:
        created = now_ms()
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO deployments (fleet, digest, selector, created_ms, rollout_id, rollback) "
                "VALUES (?,?,?,?,?,?)",
                (fleet, digest, selector, created, rollout_id, int(rollback)),
            )
            ident = cur.lastrowid
        assert ident is not None
        return Deployment(ident, fleet, digest, selector, created, rollout_id, rollback)

    def deployments(self, fleet: str) -> list[Deployment]:
        rows = self._query("SELECT * FROM deployments WHERE fleet=? ORDER BY id", (fleet,))
        return [Deployment(**{**dict(r), "rollback": bool(r["rollback"])}) for r in rows]

    # --- rollouts and audit ---------------------------------------------------------------------

    def create_rollout(self, fleet: str, rollout_id: str, target_digest: str, state: str, record: str) -> None:
        now = now_ms()
        with self._tx() as db:
            if db.execute("SELECT 1 FROM rollouts WHERE id=?", (rollout_id,)).fetchone():
                raise ConfigError(f"rollout {rollout_id} exists already")
            db.execute("INSERT INTO rollouts VALUES (?,?,?,?,?,?,?,?)",
                       (rollout_id, fleet, target_digest, state, record, 1, now, now))

    def rollout_record(self, rollout_id: str) -> tuple[str, int]:
        """The stored record and its revision (for an optimistic update)."""
        rows = self._query("SELECT record, revision FROM rollouts WHERE id=?", (rollout_id,))
        if not rows:
            raise NotFoundError(f"unknown rollout {rollout_id!r}")
        return str(rows[0]["record"]), int(rows[0]["revision"])

    def rollout_created_ms(self, rollout_id: str) -> int:
        rows = self._query("SELECT created_ms FROM rollouts WHERE id=?", (rollout_id,))
        if not rows:
            raise NotFoundError(f"unknown rollout {rollout_id!r}")
        return int(rows[0]["created_ms"])

    def update_rollout(self, rollout_id: str, revision: int, state: str, record: str) -> bool:
        """Write if nobody else did since ``revision`` was read; False means read again and retry."""
        with self._tx() as db:
            cur = db.execute("UPDATE rollouts SET record=?, state=?, revision=revision+1, updated_ms=? "
                             "WHERE id=? AND revision=?", (record, state, now_ms(), rollout_id, revision))
            return cur.rowcount == 1

    def rollout_ids(self, fleet: str, states: tuple[str, ...] | None = None) -> list[str]:
        if states:
            marks = ",".join("?" * len(states))
            rows = self._query(f"SELECT id FROM rollouts WHERE fleet=? AND state IN ({marks}) ORDER BY created_ms",
                               (fleet, *states))
        else:
            rows = self._query("SELECT id FROM rollouts WHERE fleet=? ORDER BY created_ms", (fleet,))
        return [str(r["id"]) for r in rows]

    def audit(self, actor: str, action: str, target: str, reason: str = "", details: str = "{}") -> None:
        """Append to the audit log: who did what to what, when and why."""
        with self._tx() as db:
            db.execute("INSERT INTO audit (ts_ms, actor, action, target, reason, details) VALUES (?,?,?,?,?,?)",
                       (now_ms(), actor, action, target, reason, details))

    def audit_log(self, limit: int = 100, target: str | None = None) -> list[dict[str, Any]]:
        if target is None:
            rows = self._query("SELECT * FROM audit ORDER BY id DESC LIMIT ?", (limit,))
        else:
            rows = self._query("SELECT * FROM audit WHERE target=? ORDER BY id DESC LIMIT ?", (target, limit))
        return [dict(r) for r in rows]

    def telemetry_windows(self, fleet: str, device_id: str, since_ms: int = 0, limit: int = 50) -> list[dict[str, Any]]:
        """The newest telemetry windows of a device (newest first)."""
        rows = self._query("SELECT payload FROM telemetry WHERE fleet=? AND device_id=? AND ts_ms>=? "
                           "ORDER BY ts_ms DESC LIMIT ?", (fleet, device_id, since_ms, limit))
        return [json.loads(r["payload"]) for r in rows]

    def desired_for(self, fleet: str) -> dict[str, Deployment]:
        """The deployment each device should follow: the newest one that targets it."""
        deployments = self.deployments(fleet)
        device_ids = {d.device_id for d in self.devices(fleet)}
        for dep in deployments:
            device_ids.update(dep.explicit_ids)
        desired: dict[str, Deployment] = {}
        for dep in deployments:  # oldest first, so newer ones win
            for device_id in device_ids:
                if dep.targets(device_id):
                    desired[device_id] = dep
        return desired

    # --- devices ------------------------------------------------------------------------------

    def _touch(self, db: sqlite3.Connection, fleet: str, device_id: str, seen_ms: int) -> None:
        db.execute(
            "INSERT INTO devices (fleet, device_id, first_seen_ms, last_seen_ms) VALUES (?,?,?,?) "
            "ON CONFLICT (fleet, device_id) DO UPDATE SET last_seen_ms=max(last_seen_ms, excluded.last_seen_ms)",
            (fleet, device_id, seen_ms, seen_ms),
        )

    def record_status(self, fleet: str, status: Status, received_ms: int) -> None:
        with self._tx() as db:
            self._touch(db, fleet, status.device_id, received_ms)
            db.execute(
                "UPDATE devices SET online=?, agent_version=? WHERE fleet=? AND device_id=?",
                (int(status.state.value == "online"), status.agent_version or None, fleet, status.device_id),
            )

    def record_reported(self, fleet: str, reported: Reported, received_ms: int) -> None:
        active = reported.active
        error = f"{reported.last_error.code}: {reported.last_error.message}" if reported.last_error else None
        with self._tx() as db:
            self._touch(db, fleet, reported.device_id, received_ms)
            db.execute(
                "UPDATE devices SET active_name=?, active_version=?, active_digest=?, phase=?, last_error=? "
                "WHERE fleet=? AND device_id=?",
                (active.name if active else None, active.version if active else None,
                 active.digest if active else None, reported.phase.value, error, fleet, reported.device_id),
            )

    def record_telemetry(self, fleet: str, window: Telemetry, received_ms: int) -> bool:
        """Store one window; False if its window_id was stored before (QoS 1 redelivery)."""
        return self.record_telemetry_batch(fleet, [window], received_ms) == 1

    def record_telemetry_batch(self, fleet: str, windows: list[Telemetry], received_ms: int) -> int:
        """Store windows in one transaction; duplicates (same window_id) are dropped. Returns how many were new."""
        stored = 0
        latest: dict[str, tuple[int, str]] = {}
        with self._tx() as db:
            for window in windows:
                payload = json.dumps(window.to_dict(), separators=(",", ":"))
                cur = db.execute(
                    "INSERT OR IGNORE INTO telemetry (window_id, fleet, device_id, ts_ms, payload) VALUES (?,?,?,?,?)",
                    (window.window_id, fleet, window.device_id, window.ts, payload),
                )
                if cur.rowcount == 0:
                    continue
                stored += 1
                if window.device_id not in latest or latest[window.device_id][0] <= window.ts:
                    latest[window.device_id] = (window.ts, payload)
            for device_id, (ts, payload) in latest.items():
                self._touch(db, fleet, device_id, received_ms)
                db.execute(
                    "UPDATE devices SET last_telemetry_json=?, last_telemetry_ms=? WHERE fleet=? AND device_id=? "
                    "AND (last_telemetry_ms IS NULL OR last_telemetry_ms <= ?)",
                    (payload, ts, fleet, device_id, ts),
                )
        return stored

    def record_drift(self, fleet: str, detail: DriftDetail) -> None:
        """Per-feature drift of one window, keyed like its telemetry window (duplicates ignored)."""
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO drift (window_id, fleet, device_id, ts_ms, payload) VALUES (?,?,?,?,?)",
                (detail.window_id, fleet, detail.device_id, detail.ts, json.dumps(detail.to_dict())),
            )

    def latest_drift(self, fleet: str, device_id: str) -> dict[str, Any] | None:
        rows = self._query(
            "SELECT payload FROM drift WHERE fleet=? AND device_id=? ORDER BY ts_ms DESC LIMIT 1", (fleet, device_id)
        )
        return json.loads(rows[0]["payload"]) if rows else None

    def record_event(self, fleet: str, event: Event) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO events (fleet, device_id, ts_ms, kind, payload) VALUES (?,?,?,?,?)",
                (fleet, event.device_id, event.ts, event.kind.value, json.dumps(event.to_dict())),
            )

    def devices(self, fleet: str) -> list[DeviceRow]:
        rows = self._query("SELECT * FROM devices WHERE fleet=? ORDER BY device_id", (fleet,))
        return [self._device(r) for r in rows]

    def device(self, fleet: str, device_id: str) -> DeviceRow:
        rows = self._query("SELECT * FROM devices WHERE fleet=? AND device_id=?", (fleet, device_id))
        if not rows:
            raise NotFoundError(f"unknown device {device_id!r} in fleet {fleet!r}")
        return self._device(rows[0])

    @staticmethod
    def _device(r: sqlite3.Row) -> DeviceRow:
        data = dict(r)
        telemetry = data.pop("last_telemetry_json")
        data["online"] = bool(data["online"])
        return DeviceRow(**data, last_telemetry=json.loads(telemetry) if telemetry else None)

    def telemetry_count(self, fleet: str, device_id: str | None = None) -> int:
        if device_id is None:
            rows = self._query("SELECT count(*) AS n FROM telemetry WHERE fleet=?", (fleet,))
        else:
            rows = self._query(
                "SELECT count(*) AS n FROM telemetry WHERE fleet=? AND device_id=?", (fleet, device_id)
            )
        return int(rows[0]["n"])

    def telemetry_window_ids(self, fleet: str, device_id: str) -> list[str]:
        rows = self._query("SELECT window_id FROM telemetry WHERE fleet=? AND device_id=? ORDER BY ts_ms",
                           (fleet, device_id))
        return [str(r["window_id"]) for r in rows]

    def events(self, fleet: str, device_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        if device_id is None:
            rows = self._query(
                "SELECT payload FROM events WHERE fleet=? ORDER BY id DESC LIMIT ?", (fleet, limit)
            )
        else:
            rows = self._query(
                "SELECT payload FROM events WHERE fleet=? AND device_id=? ORDER BY id DESC LIMIT ?",
                (fleet, device_id, limit),
            )
        return [json.loads(r["payload"]) for r in rows]
