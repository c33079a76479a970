"""When a device last refused a desired state, and why (an untrusted or invalid signature).

Without it a device that refuses every desired message looks merely *pending* until it is judged
stalled, minutes later; with it the server shows *rejected* and the device's reason at once.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels: tuple[str, ...] | None = None
depends_on: tuple[str, ...] | None = None

COLUMNS = (("rejected_ms", sa.BigInteger), ("rejected_reason", sa.Text))


def upgrade() -> None:
    for name, type_ in COLUMNS:
        op.add_column("devices", sa.Column(name, type_))


def downgrade() -> None:
    # A plain DROP COLUMN (SQLite 3.35+), as in 0003: a batch rebuild would drop ``devices``.
    for name, _ in reversed(COLUMNS):
        op.drop_column("devices", name)
