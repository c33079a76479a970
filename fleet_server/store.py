"""The fleet server's store: models, deployments, devices as they report themselves, telemetry.

SQLAlchemy Core over SQLite by default (one file beside the registry, in WAL mode so that the CLI
reads and writes while the server runs) or PostgreSQL past one machine. The schema is versioned by
the Alembic scripts in ``fleet_server/migrations``, applied when a store is opened.

The server's view of a device is what the device *reported* (status, reported state, telemetry),
never what was desired.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import URL, Connection, Engine

from edgeops.errors import ConfigError, EdgeOpsError, NotFoundError
from edgeops.protocol import ID_PATTERN, DriftDetail, Event, EventKind, Reported, Status, Telemetry

log = logging.getLogger(__name__)

ALL_DEVICES = "all"
#: A selector term naming a tag (``tag:gpu``) rather than a device id (ids cannot contain ``:``).
TAG_PREFIX = "tag:"
#: Tags follow the device-id rules, so a selector stays a plain comma-separated list.
TAG_PATTERN = ID_PATTERN
_TAG_RE = re.compile(TAG_PATTERN)
#: Seconds a SQLite writer waits for another process's write lock before giving up.
SQLITE_BUSY_TIMEOUT_S = 10.0
#: Rows deleted per transaction by :meth:`Store.prune`, so the server's ingestion interleaves.
PRUNE_BATCH = 5000
#: Key of the PostgreSQL advisory lock that serialises migrations of one database.
_MIGRATION_LOCK_KEY = 0x6564_6765_6F70  # "edgeop"
_SUPPORTED = ("sqlite", "postgresql")


class StoreUnavailableError(EdgeOpsError, ConnectionError):
    """The database cannot be reached, or stayed locked by another writer past the busy timeout."""

    code = "store_unavailable"


def now_ms() -> int:
    return int(time.time() * 1000)


# --- schema (head revision; fleet_server/migrations creates and evolves it) -----------------------

#: Row ids: 64-bit on PostgreSQL; on SQLite only ``INTEGER PRIMARY KEY`` is the (64-bit) rowid.
_ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
metadata = sa.MetaData()

models_t = sa.Table(
    "models", metadata,
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("version", sa.Text, nullable=False),
    sa.Column("digest", sa.Text, nullable=False),
    sa.Column("runtime", sa.Text, nullable=False),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.Text, nullable=False),
    sa.Column("parent_version", sa.Text),
    sa.Column("manifest_json", sa.Text, nullable=False),
    sa.Column("parent_digest", sa.Text),
    sa.Column("created_by", sa.Text, nullable=False, server_default=""),
    sa.Column("source_sha256", sa.Text),
    sa.Column("recipe_json", sa.Text),
    sa.Column("signed_by", sa.Text),
    sa.PrimaryKeyConstraint("name", "version"),
)
deployments_t = sa.Table(
    "deployments", metadata,
    sa.Column("id", _ROW_ID, primary_key=True, autoincrement=True),
    sa.Column("fleet", sa.Text, nullable=False),
    sa.Column("digest", sa.Text, nullable=False),
    sa.Column("selector", sa.Text, nullable=False),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("rollout_id", sa.Text),
    sa.Column("rollback", sa.Boolean, nullable=False, server_default=sa.false()),
    sqlite_autoincrement=True,
)
rollouts_t = sa.Table(
    "rollouts", metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("fleet", sa.Text, nullable=False),
    sa.Column("target_digest", sa.Text, nullable=False),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("record", sa.Text, nullable=False),
    sa.Column("revision", sa.Integer, nullable=False),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("updated_ms", sa.BigInteger, nullable=False),
)
audit_t = sa.Table(
    "audit", metadata,
    sa.Column("id", _ROW_ID, primary_key=True, autoincrement=True),
    sa.Column("ts_ms", sa.BigInteger, nullable=False),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("action", sa.Text, nullable=False),
    sa.Column("target", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("details", sa.Text, nullable=False),
    sqlite_autoincrement=True,
)
devices_t = sa.Table(
    "devices", metadata,
    sa.Column("fleet", sa.Text, nullable=False),
    sa.Column("device_id", sa.Text, nullable=False),
    sa.Column("online", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("agent_version", sa.Text),
    sa.Column("first_seen_ms", sa.BigInteger, nullable=False),
    sa.Column("last_seen_ms", sa.BigInteger, nullable=False),
    sa.Column("active_name", sa.Text),
    sa.Column("active_version", sa.Text),
    sa.Column("active_digest", sa.Text),
    sa.Column("phase", sa.Text),
    sa.Column("last_error", sa.Text),
    sa.Column("last_telemetry_json", sa.Text),
    sa.Column("last_telemetry_ms", sa.BigInteger),
    # The update the device reports working on, how far its download got, and when its reported
    # update state last changed (not when it was last received: a retained message delivered again
    # after a server restart is no progress). Migration 0003.
    sa.Column("target_digest", sa.Text),
    sa.Column("chunks_have", sa.Integer),
    sa.Column("chunks_total", sa.Integer),
    sa.Column("progress_ms", sa.BigInteger),
    # When (received, server clock) the device last refused a desired message, and its reason.
    # Migration 0004.
    sa.Column("rejected_ms", sa.BigInteger),
    sa.Column("rejected_reason", sa.Text),
    sa.PrimaryKeyConstraint("fleet", "device_id"),
)
device_tags_t = sa.Table(
    "device_tags", metadata,
    sa.Column("fleet", sa.Text, nullable=False),
    sa.Column("device_id", sa.Text, nullable=False),
    sa.Column("tag", sa.Text, nullable=False),
    sa.PrimaryKeyConstraint("fleet", "device_id", "tag"),
    sa.ForeignKeyConstraint(["fleet", "device_id"], ["devices.fleet", "devices.device_id"],
                            name="device_tags_device", ondelete="CASCADE"),
    sa.Index("device_tags_tag", "fleet", "tag"),
)
telemetry_t = sa.Table(
    "telemetry", metadata,
    sa.Column("window_id", sa.Text, primary_key=True),
    sa.Column("fleet", sa.Text, nullable=False),
    sa.Column("device_id", sa.Text, nullable=False),
    sa.Column("ts_ms", sa.BigInteger, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Index("telemetry_device_ts", "fleet", "device_id", "ts_ms"),
    sa.Index("telemetry_fleet_ts", "fleet", "ts_ms"),
)
drift_t = sa.Table(
    "drift", metadata,
    sa.Column("window_id", sa.Text, primary_key=True),
    sa.Column("fleet", sa.Text, nullable=False),
    sa.Column("device_id", sa.Text, nullable=False),
    sa.Column("ts_ms", sa.BigInteger, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Index("drift_device_ts", "fleet", "device_id", "ts_ms"),
    sa.Index("drift_fleet_ts", "fleet", "ts_ms"),
)
events_t = sa.Table(
    "events", metadata,
    sa.Column("id", _ROW_ID, primary_key=True, autoincrement=True),
    sa.Column("fleet", sa.Text, nullable=False),
    sa.Column("device_id", sa.Text, nullable=False),
    sa.Column("ts_ms", sa.BigInteger, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Index("events_fleet_ts", "fleet", "ts_ms"),
    sa.Index("events_fleet_kind", "fleet", "kind", "id"),
    sqlite_autoincrement=True,
)
_MODEL_COLUMNS = [c for c in models_t.c if c.name != "manifest_json"]
_WINDOW_FIELDS = ("window_id", "fleet", "device_id", "ts_ms", "payload")
_DEVICE_TELEMETRY_FIELDS = ("fleet", "device_id", "first_seen_ms", "last_seen_ms", "last_telemetry_json",
                            "last_telemetry_ms")
_DEVICE_COLUMNS = list(devices_t.c)


# --- rows --------------------------------------------------------------------------------------


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


def split_selector(selector: str) -> tuple[list[str], list[str]]:
    """The device ids and the tags a selector names: ``dev-1,tag:gpu`` -> (["dev-1"], ["gpu"]).

    ``all`` names neither (callers test for :data:`ALL_DEVICES` first).
    """
    if selector == ALL_DEVICES:
        return [], []
    ids: list[str] = []
    tags: list[str] = []
    for term in (t.strip() for t in selector.split(",")):
        if term.startswith(TAG_PREFIX):
            tags.append(term[len(TAG_PREFIX):])
        elif term:
            ids.append(term)
    return ids, tags


@dataclass(frozen=True)
class Deployment:
    id: int
    fleet: str
    digest: str
    #: ``all``, or comma-separated device ids and ``tag:NAME`` terms (a device matches any term).
    selector: str
    created_ms: int
    rollout_id: str | None = None
    #: A deliberate downgrade (the agent refuses older versions without it).
    rollback: bool = False

    def targets(self, device_id: str, tags: Iterable[str] = ()) -> bool:
        """Whether the deployment names this device, by id or by one of its ``tags``."""
        if self.selector == ALL_DEVICES:
            return True
        return device_id in self.explicit_ids or not self.tags.isdisjoint(tags)

    @cached_property
    def _terms(self) -> tuple[frozenset[str], frozenset[str]]:
        """The selector parsed once: a rollout stage's deployment can name hundreds of devices."""
        ids, tags = split_selector(self.selector)
        return frozenset(ids), frozenset(tags)

    @property
    def explicit_ids(self) -> frozenset[str]:
        return self._terms[0]

    @property
    def tags(self) -> frozenset[str]:
        return self._terms[1]


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
    #: Operator-given labels (sorted), for selecting devices: ``tag:NAME`` in a rollout selector.
    tags: tuple[str, ...] = ()
    #: The update the device reports working on, and its download's progress in chunks.
    target_digest: str | None = None
    chunks_have: int | None = None
    chunks_total: int | None = None
    #: When the device's reported update state (phase, versions, chunks) last changed, epoch ms.
    progress_ms: int | None = None
    #: When the server last received the device's refusal of a desired message, and its reason.
    rejected_ms: int | None = None
    rejected_reason: str | None = None

    @property
    def active_label(self) -> str | None:
        return f"{self.active_name}:{self.active_version}" if self.active_name else None


def check_tag(tag: str) -> str:
    """Return ``tag`` if it is a valid device tag, else raise ConfigError."""
    if not isinstance(tag, str) or not _TAG_RE.fullmatch(tag):
        raise ConfigError(f"invalid tag {tag!r}: expected {TAG_PATTERN}")
    return tag


def database_url(target: Path | str) -> URL:
    """The SQLAlchemy URL of a store: a path is an SQLite file, a string with ``://`` a URL.

    ``postgresql://`` and ``postgres://`` mean psycopg 3 (the driver the server extra installs).
    """
    if isinstance(target, Path) or "://" not in target:
        return URL.create("sqlite", database=str(target))
    try:
        url = sa.make_url(target)
    except sa.exc.ArgumentError as exc:
        raise ConfigError(f"invalid database URL {target!r}: {exc}") from None
    backend = url.get_backend_name()
    if backend in ("postgres", "postgresql") and "+" not in url.drivername:
        url, backend = url.set(drivername="postgresql+psycopg"), "postgresql"
    if backend not in _SUPPORTED:
        raise ConfigError(f"unsupported database {backend!r} in {url.render_as_string()}: "
                          "use sqlite:///PATH or postgresql+psycopg://USER@HOST/DB")
    if backend == "sqlite" and url.database in (None, "", ":memory:"):
        raise ConfigError("the store needs an SQLite file (sqlite:///PATH): an in-memory database is per connection")
    return url


class Store:
    """Thread-safe access to the fleet's database: an SQLite file (a ``Path``) or a database URL.

    Each call runs in its own transaction on a pooled connection, so the server's threads, the HTTP
    API and the CLI (other processes) use one database at once. On SQLite every write transaction
    starts with ``BEGIN IMMEDIATE``: it takes the write lock up front and waits for it (busy timeout)
    rather than failing halfway. Opening migrates the schema to the newest revision unless
    ``migrate`` is False (``edgeops db current`` looks without changing anything).
    """

    def __init__(self, target: Path | str, *, migrate: bool = True) -> None:
        url = database_url(target)
        self.backend: str = url.get_backend_name()
        #: The SQLite file, None on PostgreSQL.
        self.path: Path | None = Path(url.database) if self.backend == "sqlite" and url.database else None
        #: The URL with any password hidden (for logs and messages).
        self.url: str = url.render_as_string(hide_password=True)
        self._pg = self.backend == "postgresql"
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._engine: Engine = sa.create_engine(
                url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False})
            event.listen(self._engine, "connect", _sqlite_connect)
            event.listen(self._engine, "begin", _sqlite_begin)
        else:
            # A long-running server outlives database restarts: test a pooled connection before use.
            self._engine = sa.create_engine(url, pool_pre_ping=True)
            event.listen(self._engine, "connect", _postgres_connect)
        self._writer = self._engine.execution_options(edgeops_write=True)
        self._insert = postgresql.insert if self._pg else sqlite_dialect.insert
        self._build_statements()
        if migrate:
            try:
                self.upgrade_schema()
            except BaseException:
                self._engine.dispose()  # no pooled connection outlives a store that failed to open
                raise

    @classmethod
    def open(cls, url: str, *, migrate: bool = True) -> Store:
        """The store at a database URL (``sqlite:///PATH``, ``postgresql+psycopg://USER@HOST/DB``)."""
        return cls(url, migrate=migrate)

    def close(self) -> None:
        self._engine.dispose()

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        """A write transaction (committed on success, rolled back on any exception)."""
        try:
            with self._writer.begin() as conn:
                yield conn
        except (sa.exc.OperationalError, sqlite3.OperationalError) as exc:
            if not self._is_unavailability(exc):
                raise
            raise self._unavailable(exc) from exc

    @contextmanager
    def _sqlite_tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction straight on a pooled SQLite driver connection (the ingestion path).

        A server under moderate load writes batches of one or two windows; for those, opening a
        SQLAlchemy transaction and running two statements through it cost twice the SQL itself.
        """
        try:
            pooled = self._engine.raw_connection()
        except (sa.exc.OperationalError, sqlite3.OperationalError) as exc:
            if not self._is_unavailability(exc):
                raise
            raise self._unavailable(exc) from exc
        driver = pooled.driver_connection
        assert isinstance(driver, sqlite3.Connection)
        try:
            driver.execute("BEGIN IMMEDIATE")
            try:
                yield driver
            except BaseException:
                driver.rollback()
                raise
            driver.commit()
        except sqlite3.OperationalError as exc:
            if not self._is_unavailability(exc):
                raise
            raise self._unavailable(exc) from exc
        finally:
            pooled.close()

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A connection for reads (its transaction rolls back; on SQLite it is one snapshot)."""
        try:
            with self._engine.connect() as conn:
                yield conn
        except (sa.exc.OperationalError, sqlite3.OperationalError) as exc:
            if not self._is_unavailability(exc):
                raise
            raise self._unavailable(exc) from exc

    def _unavailable(self, exc: Exception) -> StoreUnavailableError:
        """The driver's error (SQLAlchemy's wraps it) as the store's, naming the database."""
        return StoreUnavailableError(f"store {self.url} unavailable: {getattr(exc, 'orig', None) or exc}")

    def _is_unavailability(self, exc: Exception) -> bool:
        """Whether an OperationalError means the database cannot be used now (rather than a bug).

        psycopg raises it for connection trouble only; SQLite also for bad SQL, so only its
        lock, busy and I/O errors count.
        """
        if self._pg:
            return True
        text = str(getattr(exc, "orig", None) or exc).lower()
        return any(word in text for word in ("locked", "busy", "unable to open", "disk i/o", "readonly"))

    def _text_order(self, column: sa.ColumnElement[str]) -> sa.ColumnElement[str]:
        """Byte order for text on every backend (SQLite compares bytes; PostgreSQL uses a locale)."""
        return column.collate("C") if self._pg else column

    def _build_statements(self) -> None:
        """Statements of the hot paths, built once (SQLAlchemy caches their compiled form).

        A telemetry batch is one statement that skips known window ids and counts the rows it
        stored (a multi-row insert with RETURNING, which would name them, cost SQLite four times an
        executemany on small batches). On PostgreSQL the rows go as one array per column (``INSERT
        ... SELECT FROM unnest(...)``): a VALUES list of a 500-window batch costs psycopg more to
        build than the server to run. On SQLite the ingestion statements run on the driver (see
        :meth:`_sqlite_tx`).
        """
        windows = self._insert(telemetry_t).on_conflict_do_nothing(index_elements=[telemetry_t.c.window_id])
        if self._pg:
            windows = self._insert(telemetry_t).from_select(
                _WINDOW_FIELDS, self._unnest(telemetry_t, _WINDOW_FIELDS)).on_conflict_do_nothing(
                index_elements=[telemetry_t.c.window_id])
        self._insert_windows = windows.execution_options(preserve_rowcount=True)
        self._insert_drift = self._insert(drift_t).on_conflict_do_nothing(index_elements=[drift_t.c.window_id])
        self._upsert_status = self._device_upsert(("online", "agent_version"))
        self._upsert_reported = self._device_upsert(
            ("active_name", "active_version", "active_digest", "phase", "last_error", "target_digest", "chunks_have",
             "chunks_total"), progress=("phase", "active_digest", "target_digest", "chunks_have"))
        self._upsert_telemetry = self._device_upsert((), telemetry=True, arrays=self._pg)
        self._upsert_rejected = self._device_upsert(("rejected_ms", "rejected_reason"))
        # On SQLite the ingestion path runs these as SQL on the driver (see _sqlite_tx).
        self._sqlite_ingest = None if self._pg else (
            _positional(self._insert_windows, _WINDOW_FIELDS, self._engine),
            _positional(self._upsert_telemetry, _DEVICE_TELEMETRY_FIELDS, self._engine))

    @staticmethod
    def _unnest(table: sa.Table, names: Sequence[str]) -> sa.Select[Any]:
        """Rows from one array parameter per column (PostgreSQL): ``SELECT * FROM unnest(:a, :b)``."""
        arrays = [sa.cast(sa.bindparam(name), postgresql.ARRAY(table.c[name].type)) for name in names]
        rows = sa.func.unnest(*arrays).table_valued(*names).render_derived()
        return sa.select(*(rows.c[name] for name in names))

    def _device_upsert(self, columns: Sequence[str], *, telemetry: bool = False, arrays: bool = False,
                       progress: Sequence[str] = ()) -> Any:
        """Insert a device or update it: ``last_seen_ms`` only grows, ``columns`` are overwritten,
        the last telemetry is replaced only by a window at least as new, ``progress_ms`` is set only
        when one of the ``progress`` columns changes. ``arrays``: the rows come as one array per
        column (PostgreSQL, see :meth:`_unnest`)."""
        stmt = self._insert(devices_t)
        if arrays:
            stmt = stmt.from_select(_DEVICE_TELEMETRY_FIELDS, self._unnest(devices_t, _DEVICE_TELEMETRY_FIELDS))
        new = stmt.excluded
        d = devices_t.c
        values: dict[str, Any] = {
            "last_seen_ms": sa.case((d.last_seen_ms >= new.last_seen_ms, d.last_seen_ms), else_=new.last_seen_ms)}
        values.update({c: new[c] for c in columns})
        if progress:
            changed = sa.or_(d.progress_ms.is_(None), *(d[c].is_distinct_from(new[c]) for c in progress))
            values["progress_ms"] = sa.case((changed, new.progress_ms), else_=d.progress_ms)
        if telemetry:
            newer = sa.or_(d.last_telemetry_ms.is_(None), d.last_telemetry_ms <= new.last_telemetry_ms)
            values["last_telemetry_json"] = sa.case((newer, new.last_telemetry_json), else_=d.last_telemetry_json)
            values["last_telemetry_ms"] = sa.case((newer, new.last_telemetry_ms), else_=d.last_telemetry_ms)
        return stmt.on_conflict_do_update(index_elements=[d.fleet, d.device_id], set_=values)

    # --- schema -------------------------------------------------------------------------------

    def schema_revision(self) -> str | None:
        """The migration revision the database is at (None: never migrated, e.g. a new file)."""
        from fleet_server import migrations

        with self._read() as conn:
            return migrations.current_revision(conn)

    def upgrade_schema(self) -> None:
        """Bring the schema to the newest revision (a no-op when it is there already).

        Safe when several processes open the store at once: SQLite's write lock or a PostgreSQL
        advisory lock lets one migrate; the others then find the schema current.
        """
        from fleet_server import migrations

        if self.schema_revision() == migrations.HEAD:
            return
        with self._tx() as conn:
            if self._pg:
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATION_LOCK_KEY)))
            if migrations.current_revision(conn) != migrations.HEAD:
                migrations.upgrade(conn)

    # --- models -------------------------------------------------------------------------------

    def add_model(self, row: ModelRow, manifest_json: str) -> bool:
        """Record a model version; False if the identical version was already there.

        A different bundle under an existing name and version is refused: versions are immutable.
        """
        m = models_t.c
        values = {c.name: getattr(row, c.name) for c in _MODEL_COLUMNS}
        try:
            with self._tx() as conn:
                digest = conn.execute(
                    sa.select(m.digest).where(m.name == row.name, m.version == row.version)).scalar_one_or_none()
                if digest is None:
                    conn.execute(sa.insert(models_t).values(**values, manifest_json=manifest_json))
                    return True
        except sa.exc.IntegrityError:
            # The same version was added between our read and insert (possible on PostgreSQL).
            digest = self.model(row.name, row.version).digest
        if digest == row.digest:
            return False
        raise ConfigError(f"{row.label} already exists with different content; pick a new version")

    def models(self) -> list[ModelRow]:
        m = models_t.c
        query = sa.select(*_MODEL_COLUMNS).order_by(
            self._text_order(m.name), self._text_order(m.created_at), self._text_order(m.version))
        with self._read() as conn:
            return [ModelRow(**r._mapping) for r in conn.execute(query)]

    def model(self, name: str, version: str) -> ModelRow:
        m = models_t.c
        with self._read() as conn:
            row = conn.execute(sa.select(*_MODEL_COLUMNS).where(m.name == name, m.version == version)).first()
        if row is None:
            known = sorted({m.version for m in self.models() if m.name == name})
            hint = f" (known versions: {', '.join(known)})" if known else " (no such model)"
            raise NotFoundError(f"unknown model version {name}:{version}{hint}")
        return ModelRow(**row._mapping)

    def find_model(self, name: str, version: str) -> ModelRow | None:
        try:
            return self.model(name, version)
        except NotFoundError:
            return None

    def manifest_json(self, name: str, version: str) -> str:
        m = models_t.c
        with self._read() as conn:
            text = conn.execute(sa.select(m.manifest_json).where(m.name == name, m.version == version)).scalar()
        if text is None:
            raise NotFoundError(f"unknown model version {name}:{version}")
        return str(text)

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
        with self._read() as conn:
            row = conn.execute(sa.select(*_MODEL_COLUMNS).where(models_t.c.digest == digest)).first()
        if row is None:
            raise NotFoundError(f"no model version with digest {digest[:12]}")
        return ModelRow(**row._mapping)

    # --- deployments --------------------------------------------------------------------------

    def add_deployment(self, fleet: str, digest: str, selector: str, *, rollout_id: str | None = None,
                       rollback: bool = False) -> Deployment:
        created = now_ms()
        with self._tx() as conn:
            result = conn.execute(sa.insert(deployments_t).values(
                fleet=fleet, digest=digest, selector=selector, created_ms=created, rollout_id=rollout_id,
                rollback=rollback))
            ident = result.inserted_primary_key[0] if result.inserted_primary_key else None
        if ident is None:
            raise RuntimeError("the database returned no id for the new deployment")
        return Deployment(int(ident), fleet, digest, selector, created, rollout_id, rollback)

    def deployments(self, fleet: str) -> list[Deployment]:
        d = deployments_t.c
        with self._read() as conn:
            rows = conn.execute(sa.select(deployments_t).where(d.fleet == fleet).order_by(d.id)).all()
        return [Deployment(**{**r._mapping, "rollback": bool(r.rollback)}) for r in rows]

    # --- rollouts and audit ---------------------------------------------------------------------

    def create_rollout(self, fleet: str, rollout_id: str, target_digest: str, state: str, record: str) -> None:
        now = now_ms()
        r = rollouts_t.c
        try:
            with self._tx() as conn:
                if conn.execute(sa.select(r.id).where(r.id == rollout_id)).first() is not None:
                    raise ConfigError(f"rollout {rollout_id} exists already")
                conn.execute(sa.insert(rollouts_t).values(
                    id=rollout_id, fleet=fleet, target_digest=target_digest, state=state, record=record, revision=1,
                    created_ms=now, updated_ms=now))
        except sa.exc.IntegrityError:
            raise ConfigError(f"rollout {rollout_id} exists already") from None

    def rollout_record(self, rollout_id: str) -> tuple[str, int]:
        """The stored record and its revision (for an optimistic update)."""
        r = rollouts_t.c
        with self._read() as conn:
            row = conn.execute(sa.select(r.record, r.revision).where(r.id == rollout_id)).first()
        if row is None:
            raise NotFoundError(f"unknown rollout {rollout_id!r}")
        return str(row.record), int(row.revision)

    def rollout_created_ms(self, rollout_id: str) -> int:
        r = rollouts_t.c
        with self._read() as conn:
            created = conn.execute(sa.select(r.created_ms).where(r.id == rollout_id)).scalar()
        if created is None:
            raise NotFoundError(f"unknown rollout {rollout_id!r}")
        return int(created)

    def update_rollout(self, rollout_id: str, revision: int, state: str, record: str) -> bool:
        """Write if nobody else did since ``revision`` was read; False means read again and retry."""
        r = rollouts_t.c
        with self._tx() as conn:
            result = conn.execute(
                sa.update(rollouts_t).where(r.id == rollout_id, r.revision == revision)
                .values(record=record, state=state, revision=r.revision + 1, updated_ms=now_ms()))
            return result.rowcount == 1

    def rollout_ids(self, fleet: str, states: tuple[str, ...] | None = None) -> list[str]:
        r = rollouts_t.c
        query = sa.select(r.id).where(r.fleet == fleet).order_by(r.created_ms)
        if states:
            query = query.where(r.state.in_(states))
        with self._read() as conn:
            return [str(i) for i in conn.execute(query).scalars()]

    def audit(self, actor: str, action: str, target: str, reason: str = "", details: str = "{}") -> None:
        """Append to the audit log: who did what to what, when and why."""
        with self._tx() as conn:
            conn.execute(sa.insert(audit_t).values(ts_ms=now_ms(), actor=actor, action=action, target=target,
                                                   reason=reason, details=details))

    def audit_log(self, limit: int = 100, target: str | None = None) -> list[dict[str, Any]]:
        a = audit_t.c
        query = sa.select(audit_t).order_by(a.id.desc()).limit(limit)
        if target is not None:
            query = query.where(a.target == target)
        with self._read() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def telemetry_windows(self, fleet: str, device_id: str, since_ms: int = 0, limit: int = 50) -> list[dict[str, Any]]:
        """The newest telemetry windows of a device (newest first)."""
        t = telemetry_t.c
        query = (sa.select(t.payload).where(t.fleet == fleet, t.device_id == device_id, t.ts_ms >= since_ms)
                 .order_by(t.ts_ms.desc()).limit(limit))
        with self._read() as conn:
            return [json.loads(p) for p in conn.execute(query).scalars()]

    def desired_for(self, fleet: str) -> dict[str, Deployment]:
        """The deployment each device should follow: the newest one that targets it (by id or tag)."""
        deployments = self.deployments(fleet)
        by_tag: dict[str, list[str]] = {}
        device_ids: set[str] = set()
        for device in self.devices(fleet):
            device_ids.add(device.device_id)
            for tag in device.tags:
                by_tag.setdefault(tag, []).append(device.device_id)
        for dep in deployments:
            device_ids.update(dep.explicit_ids)  # devices named before they ever connected
        desired: dict[str, Deployment] = {}
        for dep in deployments:  # oldest first, so newer ones win
            if dep.selector == ALL_DEVICES:
                desired.update(dict.fromkeys(device_ids, dep))
                continue
            desired.update(dict.fromkeys(dep.explicit_ids, dep))
            for tag in dep.tags:
                desired.update(dict.fromkeys(by_tag.get(tag, ()), dep))
        return desired

    # --- devices ------------------------------------------------------------------------------

    def record_status(self, fleet: str, status: Status, received_ms: int) -> None:
        with self._tx() as conn:
            conn.execute(self._upsert_status, {
                "fleet": fleet, "device_id": status.device_id, "first_seen_ms": received_ms,
                "last_seen_ms": received_ms, "online": status.state.value == "online",
                "agent_version": status.agent_version or None})

    def record_reported(self, fleet: str, reported: Reported, received_ms: int) -> None:
        active = reported.active
        error = f"{reported.last_error.code}: {reported.last_error.message}" if reported.last_error else None
        with self._tx() as conn:
            conn.execute(self._upsert_reported, {
                "fleet": fleet, "device_id": reported.device_id, "first_seen_ms": received_ms,
                "last_seen_ms": received_ms, "active_name": active.name if active else None,
                "active_version": active.version if active else None,
                "active_digest": active.digest if active else None, "phase": reported.phase.value,
                "last_error": error, "target_digest": reported.target.digest if reported.target else None,
                "chunks_have": reported.chunks_have, "chunks_total": reported.chunks_total,
                "progress_ms": received_ms})

    def record_telemetry(self, fleet: str, window: Telemetry, received_ms: int) -> bool:
        """Store one window; False if its window_id was stored before (QoS 1 redelivery)."""
        return self.record_telemetry_batch(fleet, [window], received_ms) == 1

    def record_telemetry_batch(self, fleet: str, windows: list[Telemetry], received_ms: int) -> int:
        """Store windows in one transaction; duplicates (same window_id) are dropped. Returns how many were new.

        One insert that skips known window ids (QoS 1 redelivers, so duplicates are normal), then
        one upsert of every device in the batch: seen at ``received_ms``, and its newest window of
        the batch becomes its last telemetry unless a newer one is stored. A redelivered window is
        never newer than what its first delivery left there, so this equals considering only the
        new windows (up to which of two windows with the same timestamp is shown).
        """
        rows: dict[str, dict[str, Any]] = {}
        for window in windows:
            if window.window_id not in rows:
                rows[window.window_id] = {
                    "window_id": window.window_id, "fleet": fleet, "device_id": window.device_id,
                    "ts_ms": window.ts, "payload": json.dumps(window.to_dict(), separators=(",", ":"))}
        if not rows:
            return 0
        latest: dict[str, dict[str, Any]] = {}
        for row in rows.values():
            newest = latest.get(row["device_id"])
            if newest is None or newest["last_telemetry_ms"] <= row["ts_ms"]:
                latest[row["device_id"]] = {
                    "fleet": fleet, "device_id": row["device_id"], "first_seen_ms": received_ms,
                    "last_seen_ms": received_ms, "last_telemetry_json": row["payload"],
                    "last_telemetry_ms": row["ts_ms"]}
        if self._sqlite_ingest is not None:
            (insert_sql, insert_keys), (upsert_sql, upsert_keys) = self._sqlite_ingest
            with self._sqlite_tx() as driver:
                stored = driver.executemany(insert_sql, [tuple(r[k] for k in insert_keys) for r in rows.values()]
                                            ).rowcount
                driver.executemany(upsert_sql, [tuple(d[k] for k in upsert_keys) for d in latest.values()])
            return int(stored)
        with self._tx() as conn:
            stored = conn.execute(self._insert_windows, _by_column(rows.values(), _WINDOW_FIELDS)).rowcount
            conn.execute(self._upsert_telemetry, _by_column(latest.values(), _DEVICE_TELEMETRY_FIELDS))
        return int(stored)

    def record_drift(self, fleet: str, detail: DriftDetail) -> None:
        """Per-feature drift of one window, keyed like its telemetry window (duplicates ignored)."""
        with self._tx() as conn:
            conn.execute(self._insert_drift, {"window_id": detail.window_id, "fleet": fleet,
                                              "device_id": detail.device_id, "ts_ms": detail.ts,
                                              "payload": json.dumps(detail.to_dict())})

    def latest_drift(self, fleet: str, device_id: str) -> dict[str, Any] | None:
        history = self.drift_history(fleet, device_id, limit=1)
        return history[0] if history else None

    def drift_history(self, fleet: str, device_id: str, limit: int = 50) -> list[dict[str, Any]]:
        """The device's newest drift details (newest first): the dashboard's heatmap columns."""
        d = drift_t.c
        query = (sa.select(d.payload).where(d.fleet == fleet, d.device_id == device_id)
                 .order_by(d.ts_ms.desc()).limit(limit))
        with self._read() as conn:
            return [json.loads(p) for p in conn.execute(query).scalars()]

    def record_event(self, fleet: str, event: Event, received_ms: int | None = None) -> None:
        """Store a device event; a refused desired message also marks the device (see ``sync``).

        The refusal is stamped with the server's ``received_ms`` (default: now), not the device's
        clock, because it is compared with when the deployment was created on the server.
        """
        with self._tx() as conn:
            conn.execute(sa.insert(events_t).values(fleet=fleet, device_id=event.device_id, ts_ms=event.ts,
                                                    kind=event.kind.value, payload=json.dumps(event.to_dict())))
            if event.kind is EventKind.DESIRED_REJECTED:
                received = received_ms if received_ms is not None else now_ms()
                conn.execute(self._upsert_rejected, {
                    "fleet": fleet, "device_id": event.device_id, "first_seen_ms": received,
                    "last_seen_ms": received, "rejected_ms": received,
                    "rejected_reason": event.message[:500] or "desired message refused"})

    def devices(self, fleet: str, tag: str | None = None) -> list[DeviceRow]:
        """The fleet's devices by id; only those carrying ``tag`` when it is given."""
        d = devices_t.c
        query = sa.select(*_DEVICE_COLUMNS).where(d.fleet == fleet).order_by(self._text_order(d.device_id))
        if tag is not None:
            t = device_tags_t.c
            query = query.where(sa.exists().where(t.fleet == d.fleet, t.device_id == d.device_id,
                                                  t.tag == check_tag(tag)))
        tags_query = (sa.select(device_tags_t.c.device_id, device_tags_t.c.tag)
                      .where(device_tags_t.c.fleet == fleet).order_by(self._text_order(device_tags_t.c.tag)))
        with self._read() as conn:
            rows = conn.execute(query).all()
            tags: dict[str, list[str]] = {}
            for device_id, name in conn.execute(tags_query):
                tags.setdefault(device_id, []).append(name)
        return [_device_row(r._mapping, tags.get(r.device_id, ())) for r in rows]

    def device(self, fleet: str, device_id: str) -> DeviceRow:
        d = devices_t.c
        t = device_tags_t.c
        with self._read() as conn:
            row = conn.execute(sa.select(*_DEVICE_COLUMNS).where(d.fleet == fleet, d.device_id == device_id)).first()
            tags = conn.execute(sa.select(t.tag).where(t.fleet == fleet, t.device_id == device_id)
                                .order_by(self._text_order(t.tag))).scalars().all()
        if row is None:
            raise NotFoundError(f"unknown device {device_id!r} in fleet {fleet!r}")
        return _device_row(row._mapping, tags)

    def set_device_tags(self, fleet: str, device_id: str, tags: list[str]) -> None:
        """Replace a device's tags (an empty list removes them all); duplicates collapse.

        Only devices the server has seen can be tagged (NotFoundError otherwise): a typo in an id
        would otherwise make a tag that selects nothing.
        """
        wanted = sorted({check_tag(tag) for tag in tags})
        d = devices_t.c
        t = device_tags_t.c
        with self._tx() as conn:
            if conn.execute(sa.select(d.device_id).where(d.fleet == fleet, d.device_id == device_id)).first() is None:
                raise NotFoundError(f"unknown device {device_id!r} in fleet {fleet!r}")
            conn.execute(sa.delete(device_tags_t).where(t.fleet == fleet, t.device_id == device_id))
            if wanted:
                conn.execute(sa.insert(device_tags_t),
                             [{"fleet": fleet, "device_id": device_id, "tag": tag} for tag in wanted])

    def telemetry_count(self, fleet: str, device_id: str | None = None) -> int:
        t = telemetry_t.c
        query = sa.select(sa.func.count()).select_from(telemetry_t).where(t.fleet == fleet)
        if device_id is not None:
            query = query.where(t.device_id == device_id)
        with self._read() as conn:
            return int(conn.execute(query).scalar_one())

    def telemetry_window_ids(self, fleet: str, device_id: str) -> list[str]:
        t = telemetry_t.c
        query = sa.select(t.window_id).where(t.fleet == fleet, t.device_id == device_id).order_by(t.ts_ms)
        with self._read() as conn:
            return [str(w) for w in conn.execute(query).scalars()]

    def events(self, fleet: str, device_id: str | None = None, limit: int = 100,
               kinds: Iterable[EventKind] | None = None) -> list[dict[str, Any]]:
        """The newest device events (newest first), of one device and of the given kinds when asked."""
        e = events_t.c
        query = sa.select(e.payload).where(e.fleet == fleet).order_by(e.id.desc()).limit(limit)
        if device_id is not None:
            query = query.where(e.device_id == device_id)
        if kinds is not None:
            query = query.where(e.kind.in_([k.value for k in kinds]))
        with self._read() as conn:
            return [json.loads(p) for p in conn.execute(query).scalars()]

    # --- retention ----------------------------------------------------------------------------

    def prune(self, fleet: str, older_than_ms: int) -> dict[str, int]:
        """Delete a fleet's telemetry windows, drift details and device events older than the cutoff.

        Returns the rows deleted per table. Works in batches of :data:`PRUNE_BATCH` rows, each its
        own transaction, so a large backlog never holds SQLite's write lock for long. Devices, the
        last telemetry each one reported, models, deployments, rollouts and the audit log are kept.
        """
        deleted: dict[str, int] = {}
        for table, key in ((telemetry_t, telemetry_t.c.window_id), (drift_t, drift_t.c.window_id),
                           (events_t, events_t.c.id)):
            old = (sa.select(key).where(table.c.fleet == fleet, table.c.ts_ms < older_than_ms)
                   .limit(PRUNE_BATCH))
            total = 0
            while True:
                with self._tx() as conn:
                    count = conn.execute(sa.delete(table).where(key.in_(old))).rowcount
                total += count
                if count < PRUNE_BATCH:
                    break
            deleted[table.name] = total
        return deleted


def _positional(statement: Any, keys: Sequence[str], engine: Engine) -> tuple[str, tuple[str, ...]]:
    """``statement`` as the dialect's SQL with ``?`` placeholders, and the key of each placeholder."""
    compiled = statement.compile(dialect=engine.dialect, column_keys=list(keys))
    order = tuple(compiled.positiontup or ())
    if sorted(order) != sorted(keys):
        raise RuntimeError(f"compiled statement binds {order}, expected {tuple(keys)}")
    return str(compiled), order


def _by_column(rows: Iterable[dict[str, Any]], names: Sequence[str]) -> dict[str, list[Any]]:
    """Rows as one list per column (the parameters of an ``unnest`` insert)."""
    listed = list(rows)
    return {name: [row[name] for row in listed] for name in names}


def _device_row(data: Any, tags: Iterable[str]) -> DeviceRow:
    values = dict(data)
    telemetry = values.pop("last_telemetry_json")
    values["online"] = bool(values["online"])
    return DeviceRow(**values, last_telemetry=json.loads(telemetry) if telemetry else None, tags=tuple(tags))


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    """Per new SQLite connection: WAL (readers never block the writer), and the store's own transactions."""
    # The driver's implicit BEGIN would make every write transaction DEFERRED, which can fail with
    # "database is locked" midway instead of waiting; _sqlite_begin issues the BEGIN itself.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        # Switching a new file to WAL needs it to itself and does not wait on the busy handler:
        # when another process is switching it at the same moment, wait here instead.
        deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
        while True:
            try:
                cursor.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def _postgres_connect(dbapi_connection: Any, _record: Any) -> None:
    """Per new psycopg connection: send list parameters (the ``unnest`` batches) in binary.

    In text form every JSON payload in an array is quoted and escaped character by character in
    Python, which took most of a telemetry batch's time; binary arrays carry the strings as they are.
    """
    from psycopg.types.array import ListBinaryDumper

    dbapi_connection.adapters.register_dumper(list, ListBinaryDumper)


def _sqlite_begin(conn: Connection) -> None:
    """Open the transaction SQLAlchemy begins: IMMEDIATE (write lock up front) for writes.

    Straight on the driver's connection: this runs for every transaction of the ingestion path.
    """
    sql = "BEGIN IMMEDIATE" if conn.get_execution_options().get("edgeops_write") else "BEGIN"
    conn.connection.driver_connection.execute(sql)  # type: ignore[union-attr]
