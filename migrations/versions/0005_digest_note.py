"""digests.note: why a digest was planned without a good fetch for its day

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 10:00:00

When a feed stays broken past the daemon's hold (FEED_WAIT), digests are planned from the papers
already stored and this column says which day's fetch failed and why. NULL for normal digests.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("digests", sa.Column("note", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("digests") as batch:
        batch.drop_column("note")
