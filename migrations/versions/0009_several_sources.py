"""several sources: per-source sightings of papers, fetch runs per source, wider paper keys

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27 18:40:00

Papers may now come from several sources (HF, arXiv, RSS/Atom feeds) and are stored once.
`paper_sources` records when each source featured a paper; the papers already stored came from
the one Hugging Face source, named "hf" (the default source's name), and get that row. A paper's
key may now be a DOI or a link, so the key columns widen (PostgreSQL; SQLite does not enforce
VARCHAR lengths). Fetch runs name their source and keep the conditional-GET validators.
"""

import sqlalchemy as sa
from alembic import op

from digestbot.models import UTCDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

KEY = 2100


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        op.alter_column("papers", "arxiv_id", type_=sa.String(KEY), existing_nullable=False)
        op.alter_column("digest_items", "arxiv_id", type_=sa.String(KEY), existing_nullable=False)
    # Plain ADD COLUMNs: a batch copy of `papers` would DROP it, which SQLite refuses while
    # digest_items refers to it (foreign keys are on).
    op.add_column("papers", sa.Column("link", sa.Text(), nullable=True))
    op.add_column("papers", sa.Column("version", sa.Integer(), nullable=True))
    op.add_column(
        "papers",
        sa.Column("has_upvotes", sa.Boolean(), server_default=sa.true(), nullable=False),
    )
    op.add_column("papers", sa.Column("sources", sa.JSON(), server_default="[]", nullable=False))
    op.execute(sa.text("""UPDATE papers SET sources = '["hf"]'"""))

    op.create_table(
        "paper_sources",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("arxiv_id", sa.String(length=KEY), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("featured_at", UTCDateTime(), nullable=False),
        sa.Column("first_seen_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["arxiv_id"], ["papers.arxiv_id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("arxiv_id", "source", name="uq_paper_sources_paper_source"),
    )
    with op.batch_alter_table("paper_sources") as batch_op:
        batch_op.create_index(
            batch_op.f("ix_paper_sources_featured_at"), ["featured_at"], unique=False
        )
    op.execute(
        sa.text(
            "INSERT INTO paper_sources (arxiv_id, source, featured_at, first_seen_at) "
            "SELECT arxiv_id, 'hf', featured_at, first_seen_at FROM papers"
        )
    )

    with op.batch_alter_table("fetch_runs") as batch_op:
        batch_op.add_column(
            sa.Column("source", sa.String(length=64), server_default="hf", nullable=False)
        )
        batch_op.add_column(sa.Column("etag", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("last_modified", sa.Text(), nullable=True))
        batch_op.create_index("ix_fetch_runs_source_id", ["source", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("fetch_runs") as batch_op:
        batch_op.drop_index("ix_fetch_runs_source_id")
        batch_op.drop_column("last_modified")
        batch_op.drop_column("etag")
        batch_op.drop_column("source")
    with op.batch_alter_table("paper_sources") as batch_op:
        batch_op.drop_index(batch_op.f("ix_paper_sources_featured_at"))
    op.drop_table("paper_sources")
    op.drop_column("papers", "sources")
    op.drop_column("papers", "has_upvotes")
    op.drop_column("papers", "version")
    op.drop_column("papers", "link")
