"""digest_items: no foreign keys to digests and papers

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 04:10:00

Planning writes each digest's items right after the digest, in its transaction, with the id
the digest's INSERT returned, and each item names a paper that planning read from the papers
table; digestbot deletes no digest and no paper. The two foreign keys checked that again for
every item stored, and on PostgreSQL each check also locks the paper's row (FOR KEY SHARE) for
the transaction: the same 76 rows for about 700,000 items at 100,000 subscribers, from two
writer threads at once. Planning 100,000 subscribers on PostgreSQL took 21.8-21.9 s with them,
19.6-19.7 s without the one to papers and 18.1-18.3 s without both (`bench/send_bench.py
--plan-only`, alternating). The digest's own foreign key to its subscriber and the items' unique
key (no paper twice to one person) stay. An item whose paper is gone anyway (deleted by hand)
is left out of its digest with a warning (outbox.load_digests).

SQLite recreates the table (batch mode), once, at the upgrade.
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

# The names SQLite keeps since 0011 recreated the table with this convention.
_NAMING = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}
_KEYS = (("digest_id", "digests", "id"), ("arxiv_id", "papers", "arxiv_id"))


def upgrade() -> None:
    bind = op.get_bind()
    found = {
        fk["constrained_columns"][0]: fk["name"]
        for fk in sa.inspect(bind).get_foreign_keys("digest_items")
    }
    with op.batch_alter_table("digest_items", naming_convention=_NAMING) as batch_op:
        for column, table, _ in _KEYS:
            if column in found:
                batch_op.drop_constraint(
                    found[column] or f"fk_digest_items_{column}_{table}", type_="foreignkey"
                )


def downgrade() -> None:
    with op.batch_alter_table("digest_items", naming_convention=_NAMING) as batch_op:
        for column, table, key in _KEYS:
            batch_op.create_foreign_key(f"fk_digest_items_{column}_{table}", table, [column], [key])
