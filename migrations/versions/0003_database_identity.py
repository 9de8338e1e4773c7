"""database_identity: a random id per database, part of every Message-ID

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 09:10:00

Written once, when the database is created (or upgraded to this revision). Two databases (a
fresh install, a recreated file) then never give the same digest the same Message-ID.
"""

import secrets

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "database_identity",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.bulk_insert(table, [{"id": 1, "token": secrets.token_hex(8)}])


def downgrade() -> None:
    op.drop_table("database_identity")
