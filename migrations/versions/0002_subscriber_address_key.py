"""subscribers.address_key: the one form addresses are compared in

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 09:00:00

Lookups by address (retry EMAIL, preview EMAIL, send --subscriber, the subscribers sync) compare
digestbot.addresses.address_key(email), stored here, so `Ada@Example.org` and `ada@example.org` are
one subscriber. Existing rows are filled in with the same function.
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

from digestbot.addresses import address_key

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN (no table rebuild on SQLite); the empty default only fills existing rows
    # until they get their key just below.
    op.add_column(
        "subscribers",
        sa.Column(
            "address_key",
            sqlmodel.sql.sqltypes.AutoString(length=320),
            nullable=False,
            server_default="",
        ),
    )
    conn = op.get_bind()
    subscribers = sa.table(
        "subscribers", sa.column("id"), sa.column("email"), sa.column("address_key")
    )
    rows = conn.execute(sa.select(subscribers.c.id, subscribers.c.email)).all()
    for sid, email in rows:
        conn.execute(
            subscribers.update()
            .where(subscribers.c.id == sid)
            .values(address_key=address_key(email))
        )
    if conn.dialect.name != "sqlite":  # SQLite cannot drop a column default without a rebuild
        op.alter_column("subscribers", "address_key", server_default=None)
    op.create_index("ix_subscribers_address_key", "subscribers", ["address_key"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_subscribers_address_key", table_name="subscribers")
    with op.batch_alter_table("subscribers") as batch_op:
        batch_op.drop_column("address_key")
