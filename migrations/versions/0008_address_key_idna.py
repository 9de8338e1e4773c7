"""address keys compare internationalized domains in ASCII (IDNA)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27 17:05:00

digestbot.addresses.address_key now puts the domain in ASCII (IDNA): `ada@Bücher.example` and
`ada@xn--bcher-kva.example` are one address. The stored keys of subscribers and suppressions
are recomputed with that function; only keys with non-ASCII characters can change. A row whose
new key another row already holds keeps its old key (the two stay apart, as before).
"""

import sqlalchemy as sa
from alembic import op

from digestbot.addresses import address_key

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def _recompute(table_name: str, address_column: str) -> None:
    conn = op.get_bind()
    table = sa.table(
        table_name, sa.column("id"), sa.column(address_column), sa.column("address_key")
    )
    rows = conn.execute(sa.select(table.c.id, table.c[address_column], table.c.address_key)).all()
    taken = {key for _, _, key in rows}
    for row_id, address, old in rows:
        new = address_key(address)
        if new == old or new in taken:
            continue
        conn.execute(table.update().where(table.c.id == row_id).values(address_key=new))
        taken.discard(old)
        taken.add(new)


def upgrade() -> None:
    _recompute("subscribers", "email")
    _recompute("suppressions", "address")


def downgrade() -> None:
    # The old keys were the address in lower case; recompute them so.
    conn = op.get_bind()
    for table_name, address_column in (("subscribers", "email"), ("suppressions", "address")):
        table = sa.table(
            table_name, sa.column("id"), sa.column(address_column), sa.column("address_key")
        )
        rows = conn.execute(sa.select(table.c.id, table.c[address_column])).all()
        taken = {key for (key,) in conn.execute(sa.select(table.c.address_key)).all()}
        for row_id, address in rows:
            old = address.strip().lower()
            if old not in taken:
                conn.execute(table.update().where(table.c.id == row_id).values(address_key=old))
                taken.add(old)
