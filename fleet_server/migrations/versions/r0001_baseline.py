"""Baseline: the store's schema as the last release before migrations wrote it.

On an empty database it creates every table. On a store file written before migrations existed
(same tables, made by ``CREATE TABLE IF NOT EXISTS`` and grown by ad-hoc ``ALTER TABLE``) it keeps
every table and row, creates the tables that release did not have yet and adds the columns it
lacked (every such column is nullable or has a default, as those ad-hoc migrations required), so
all older files end up in the same shape.

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: tuple[str, ...] | None = None
depends_on: tuple[str, ...] | None = None

log = logging.getLogger(__name__)

#: Row ids: 64-bit on PostgreSQL; on SQLite only ``INTEGER PRIMARY KEY`` is the (64-bit) rowid.
ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
MS = sa.BigInteger


def _models() -> list[sa.Column[object] | sa.Constraint]:
    return [
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
    ]


def _deployments() -> list[sa.Column[object] | sa.Constraint]:
    return [
        sa.Column("id", ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("fleet", sa.Text, nullable=False),
        sa.Column("digest", sa.Text, nullable=False),
        sa.Column("selector", sa.Text, nullable=False),
        sa.Column("created_ms", MS, nullable=False),
        sa.Column("rollout_id", sa.Text),
        sa.Column("rollback", sa.Boolean, nullable=False, server_default=sa.false()),
    ]


def _rollouts() -> list[sa.Column[object] | sa.Constraint]:
    return [
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("fleet", sa.Text, nullable=False),
        sa.Column("target_digest", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("record", sa.Text, nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("created_ms", MS, nullable=False),
        sa.Column("updated_ms", MS, nullable=False),
    ]


def _audit() -> list[sa.Column[object] | sa.Constraint]:
    return [
        sa.Column("id", ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("ts_ms", MS, nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("target", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("details", sa.Text, nullable=False),
    ]


def _devices() -> list[sa.Column[object] | sa.Constraint]:
    return [
        sa.Column("fleet", sa.Text, nullable=False),
        sa.Column("device_id", sa.Text, nullable=False),
        sa.Column("online", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("agent_version", sa.Text),
        sa.Column("first_seen_ms", MS, nullable=False),
        sa.Column("last_seen_ms", MS, nullable=False),
        sa.Column("active_name", sa.Text),
        sa.Column("active_version", sa.Text),
        sa.Column("active_digest", sa.Text),
        sa.Column("phase", sa.Text),
        sa.Column("last_error", sa.Text),
        sa.Column("last_telemetry_json", sa.Text),
        sa.Column("last_telemetry_ms", MS),
        sa.PrimaryKeyConstraint("fleet", "device_id"),
    ]


def _windows() -> list[sa.Column[object] | sa.Constraint]:
    """``telemetry`` and ``drift``: one row per device window, keyed by its globally unique id."""
    return [
        sa.Column("window_id", sa.Text, primary_key=True),
        sa.Column("fleet", sa.Text, nullable=False),
        sa.Column("device_id", sa.Text, nullable=False),
        sa.Column("ts_ms", MS, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
    ]


def _events() -> list[sa.Column[object] | sa.Constraint]:
    return [
        sa.Column("id", ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("fleet", sa.Text, nullable=False),
        sa.Column("device_id", sa.Text, nullable=False),
        sa.Column("ts_ms", MS, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
    ]


#: Table name -> its columns, and whether SQLite should use AUTOINCREMENT (ids never reused), as before.
TABLES: dict[str, tuple[Callable[[], list[sa.Column[object] | sa.Constraint]], bool]] = {
    "models": (_models, False),
    "deployments": (_deployments, True),
    "rollouts": (_rollouts, False),
    "audit": (_audit, True),
    "devices": (_devices, False),
    "telemetry": (_windows, False),
    "drift": (_windows, False),
    "events": (_events, True),
}
INDEXES = {"telemetry_device_ts": ("telemetry", ["fleet", "device_id", "ts_ms"])}


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    existing = set(inspector.get_table_names())
    adopted = sorted(existing & set(TABLES))
    if adopted:
        log.info("adopting a store written before migrations: tables %s", ", ".join(adopted))
    for name, (columns, autoincrement) in TABLES.items():
        if name not in existing:
            op.create_table(name, *columns(), sqlite_autoincrement=autoincrement)
            continue
        have = {c["name"] for c in inspector.get_columns(name)}
        for column in columns():
            if not isinstance(column, sa.Column) or column.name in have:
                continue
            if not column.nullable and column.server_default is None:
                raise RuntimeError(f"cannot adopt table {name}: column {column.name} is missing and has no default")
            log.info("adding column %s.%s", name, column.name)
            op.add_column(name, column)
    for index, (table, columns_of_index) in INDEXES.items():
        if table in existing and index in {i["name"] for i in inspector.get_indexes(table)}:
            continue
        op.create_index(index, table, columns_of_index)


def downgrade() -> None:
    for index, (table, _) in INDEXES.items():
        op.drop_index(index, table_name=table)
    for name in reversed(TABLES):
        op.drop_table(name)
