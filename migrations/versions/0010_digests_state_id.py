"""ix_digests_state_id: delivery claims walk the due digests in id order

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 07:00:00

A claim picks the first few planned (or deferred and due) digests by id. With an index on
(state, id) it reads just those rows; before, it gathered and sorted every due digest on each
claim, which made a 100,000-digest run quadratic.
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_digests_state_id", "digests", ["state", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_digests_state_id", table_name="digests")
