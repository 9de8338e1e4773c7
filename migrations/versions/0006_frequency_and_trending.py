"""frequency and trending: digests.frequency, digest_items.section, subscribers.paused_at

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28 10:00:00

A digest records whether its period is a day or a week; each item whether a query matched it
or it is among the period's most upvoted papers (the "Trending" section); a subscriber seen with
`frequency = "off"` is marked paused, so turning them back on sends the normal window, not the
backlog. Plain ADD COLUMNs with defaults: existing rows are daily digests of matched papers.
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

from digestbot.models import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "digests",
        sa.Column(
            "frequency",
            sqlmodel.sql.sqltypes.AutoString(length=8),
            nullable=False,
            server_default="daily",
        ),
    )
    op.add_column(
        "digest_items",
        sa.Column(
            "section",
            sqlmodel.sql.sqltypes.AutoString(length=16),
            nullable=False,
            server_default="matched",
        ),
    )
    op.add_column("subscribers", sa.Column("paused_at", UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("subscribers") as batch:
        batch.drop_column("paused_at")
    with op.batch_alter_table("digest_items") as batch:
        batch.drop_column("section")
    with op.batch_alter_table("digests") as batch:
        batch.drop_column("frequency")
