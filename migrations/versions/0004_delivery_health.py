"""delivery_health: the last delivery error that stopped a whole run, and when the backend last worked

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 10:00:00

One row (id 1), written by delivery runs of `send` and the daemon and read by `digestbot status`:
"connection refused" or "login failed" used to leave only a log line and digests planned with 0
attempts. The row is created by the first delivery run that has something to record.
"""

import sqlalchemy as sa
from alembic import op

from digestbot.models import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "delivery_health",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_error_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("failing_since", UTCDateTime(timezone=True), nullable=True),
        sa.Column("errors_in_a_row", sa.Integer(), nullable=False),
        sa.Column("last_ok_at", UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("delivery_health")
