"""Device tags, and the indexes retention and the drift view need.

``device_tags`` holds one row per (device, tag) so that selecting a fleet's devices by tag is an
index lookup (rollout selectors ``tag:NAME``). Retention deletes by fleet and age, so telemetry,
drift and events get a ``(fleet, ts_ms)`` index; the newest drift detail of a device was a scan,
and the dashboard's drift alerts and update history read events by kind.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: tuple[str, ...] | None = None
depends_on: tuple[str, ...] | None = None

INDEXES = {
    "telemetry_fleet_ts": ("telemetry", ["fleet", "ts_ms"]),
    "drift_device_ts": ("drift", ["fleet", "device_id", "ts_ms"]),
    "drift_fleet_ts": ("drift", ["fleet", "ts_ms"]),
    "events_fleet_ts": ("events", ["fleet", "ts_ms"]),
    "events_fleet_kind": ("events", ["fleet", "kind", "id"]),
}


def upgrade() -> None:
    op.create_table(
        "device_tags",
        sa.Column("fleet", sa.Text, nullable=False),
        sa.Column("device_id", sa.Text, nullable=False),
        sa.Column("tag", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("fleet", "device_id", "tag"),
        sa.ForeignKeyConstraint(["fleet", "device_id"], ["devices.fleet", "devices.device_id"],
                                name="device_tags_device", ondelete="CASCADE"),
    )
    op.create_index("device_tags_tag", "device_tags", ["fleet", "tag"])
    for index, (table, columns) in INDEXES.items():
        op.create_index(index, table, columns)


def downgrade() -> None:
    for index, (table, _) in INDEXES.items():
        op.drop_index(index, table_name=table)
    op.drop_index("device_tags_tag", table_name="device_tags")
    op.drop_table("device_tags")
