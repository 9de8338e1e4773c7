"""Alembic environment: target_metadata is SQLModel.metadata; batch mode for SQLite."""

from __future__ import annotations

import os

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
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


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
