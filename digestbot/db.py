"""Engine and sessions, migrations to head, and SQLite pragmas (WAL, busy_timeout, foreign_keys)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from digestbot.errors import ConfigError, DigestbotError, LockError
from digestbot.resources import migrations_dir

SQLITE_BUSY_TIMEOUT_MS = 30_000
_PG_MIGRATION_LOCK = 0x6469676573  # "diges": advisory lock id held while migrating
_PG_DAEMON_LOCK = 0x6461656D6E  # "daemn": advisory lock id held by the running daemon


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine for `url`; SQLite gets WAL, a busy timeout, foreign keys and BEGIN IMMEDIATE."""
    try:
        sa_url = sa.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ConfigError(f"not a database URL: {url!r}", field="DIGESTBOT_DATABASE_URL") from exc
    if sa_url.get_backend_name() == "postgresql" and sa_url.drivername == "postgresql":
        sa_url = sa_url.set(drivername="postgresql+psycopg")
    try:
        engine = sa.create_engine(sa_url, **kwargs)
    except (ImportError, sa.exc.NoSuchModuleError) as exc:
        hint = (
            " (install the extra: pip install 'digestbot[postgres]')" if "postgres" in url else ""
        )
        raise ConfigError(
            f"cannot use database {sa_url.render_as_string(hide_password=True)}: {exc}{hint}",
            field="DIGESTBOT_DATABASE_URL",
        ) from exc
    if engine.dialect.name == "sqlite":
        _configure_sqlite(engine)
    return engine


def _configure_sqlite(engine: Engine) -> None:
    database = engine.url.database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide where transactions begin (see "begin" below).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        _enable_wal(cur)
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Take the write lock up front: a deferred transaction that reads then writes can fail
        # with SQLITE_BUSY without waiting when another process wrote in between.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _enable_wal(cur: Any) -> None:
    """Switch to WAL. On a brand-new file another process may be doing the same: SQLite then
    answers "database is locked" at once instead of honouring busy_timeout, so wait here."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    delay = 0.005
    while True:
        try:
            cur.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


def alembic_config(connection: sa.Connection | None = None) -> Config:
    """An Alembic Config pointing at the shipped migrations, optionally bound to `connection`."""
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def migrate(engine: Engine) -> None:
    """Bring the database schema to the newest migration (safe to run concurrently)."""
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
                conn.commit()
            try:
                command.upgrade(alembic_config(conn), "head")
                conn.commit()
            finally:
                if engine.dialect.name == "postgresql":
                    conn.execute(
                        sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_MIGRATION_LOCK}
                    )
                    conn.commit()
    except SQLAlchemyError as exc:
        raise DigestbotError(
            f"cannot open or migrate the database {engine.url.render_as_string(hide_password=True)}: "
            f"{exc.__class__.__name__}: {str(exc).splitlines()[0]} (check DIGESTBOT_DATABASE_URL)"
        ) from exc


def open_database(url: str) -> Engine:
    """Engine for `url`, migrated to head. The front doors call this once at start."""
    engine = make_engine(url)
    migrate(engine)
    return engine


@contextlib.contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


@contextlib.contextmanager
def daemon_lock(engine: Engine) -> Iterator[None]:
    """Hold the one-daemon-per-database lock: a file lock beside SQLite, an advisory lock on PostgreSQL."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            got = conn.execute(
                sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": _PG_DAEMON_LOCK}
            ).scalar()
            conn.commit()
            if not got:
                raise LockError("another digestbot daemon is already running against this database")
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_DAEMON_LOCK})
                conn.commit()
        return
    database = engine.url.database or "digestbot"
    lock_path = (
        Path(f"{database}.daemon.lock") if database != ":memory:" else Path("digestbot.daemon.lock")
    )
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise LockError(
                f"another digestbot daemon is already running (lock held on {lock_path})"
            ) from exc
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)
