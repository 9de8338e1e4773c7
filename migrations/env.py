"""Alembic environment: target_metadata is SQLModel.metadata; batch mode for SQLite."""

from __future__ import annotations

import os

import sqlalchemy as sa
from alembic import context
from sqlmodel import SQLModel

import digestbot.models  # noqa: F401  (registers the tables on SQLModel.metadata)

target_metadata = SQLModel.metadata
config = context.config


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=_compare_type,
    )
    with context.begin_transaction():
        context.run_migrations()


def _compare_type(context, inspected_column, metadata_column, inspected_type, metadata_type):  # type: ignore[no-untyped-def]
    """Alembic's own type comparison, except VARCHAR lengths on SQLite, which SQLite does not
    enforce (a length is widened on PostgreSQL only; SQLite cannot rebuild a referenced table)."""
    declared = getattr(metadata_type, "impl", metadata_type)  # sqlmodel's AutoString wraps String
    if (
        context.dialect.name == "sqlite"
        and type(inspected_type) is sa.VARCHAR
        and type(declared) in (sa.String, sa.VARCHAR)
    ):
        return False
    return None  # the default comparison


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    from digestbot.db import make_engine

    url = config.get_main_option("sqlalchemy.url") or os.environ.get(
        "DIGESTBOT_DATABASE_URL", "sqlite:///digestbot.db"
    )
    engine = make_engine(url)
    with engine.connect() as conn:
        _run(conn)
        conn.commit()


if context.is_offline_mode():
    raise SystemExit("digestbot migrations run online only")
run_migrations_online()
