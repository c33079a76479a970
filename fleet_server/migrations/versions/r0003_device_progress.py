"""What a device reports of its update in progress: its target, its download, when it last moved.

The server tells *stalled* devices (an update that has not moved for a long time) from updating
ones by ``progress_ms``: when the reported phase, versions or chunk count last changed.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels: tuple[str, ...] | None = None
depends_on: tuple[str, ...] | None = None

COLUMNS = (("target_digest", sa.Text), ("chunks_have", sa.Integer), ("chunks_total", sa.Integer),
           ("progress_ms", sa.BigInteger))


def upgrade() -> None:
    for name, type_ in COLUMNS:
        op.add_column("devices", sa.Column(name, type_))


def downgrade() -> None:
    # A plain DROP COLUMN (SQLite 3.35+): a batch rebuild of ``devices`` would drop the table that
    # device_tags cascades from.
    for name, _ in reversed(COLUMNS):
        op.drop_column("devices", name)
