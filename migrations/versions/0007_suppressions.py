"""suppressions: addresses that unsubscribed

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27 16:45:00

The suppression list: one row per address (by address_key) that unsubscribed through the web
endpoint (one-click or the page's button) or `digestbot unsubscribe`. Digests gain no column: a
digest not sent because its address unsubscribed is in the new state "suppressed" (a string).
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

from digestbot.models import UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "suppressions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("address_key", sqlmodel.sql.sqltypes.AutoString(length=320), nullable=False),
        sa.Column("address", sqlmodel.sql.sqltypes.AutoString(length=320), nullable=False),
        sa.Column("method", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("address_key"),
    )
    op.create_index(
        op.f("ix_suppressions_created_at"), "suppressions", ["created_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_suppressions_created_at"), table_name="suppressions")
    op.drop_table("suppressions")
