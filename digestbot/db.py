"""Engine and sessions, migrations to head, and SQLite pragmas (WAL, busy_timeout, foreign_keys).

Every database failure leaves this module as one DatabaseError line naming the database, the
setting DIGESTBOT_DATABASE_URL and what to do; SQL parameters (paper data) are never shown.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import sys
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlmodel import Session

from digestbot.errors import ConfigError, DatabaseError, NoDatabaseError
from digestbot.resources import migrations_dir
from digestbot.text import snippet

if TYPE_CHECKING:
    from alembic.config import Config

SQLITE_BUSY_TIMEOUT_MS = 30_000
READ_ONLY = "digestbot_read_only"
"""Execution option: this connection's next transactions only read (SQLite: a plain BEGIN, which
takes no write lock; see outbox.transaction)."""
_PG_MIGRATION_LOCK = 0x6469676573  # "diges": advisory lock id held while migrating
_PG_DAEMON_LOCK = 0x6461656D6E  # "daemn": advisory lock id held by the running daemon
_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()  # made by make_engine, for close_all


def make_engine(url: str, *, create: bool = True, **kwargs: Any) -> Engine:
    """Create an engine for `url`; SQLite gets WAL, a busy timeout, foreign keys and BEGIN IMMEDIATE.

    With `create` (the default) the folder of a SQLite file is made when missing. SQL parameters
    are hidden from every error and log line (`hide_parameters`), as they hold paper data.
    """
    kwargs.setdefault("hide_parameters", True)
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
        _configure_sqlite(engine, create=create)
    _ENGINES.add(engine)
    return engine


def close_all() -> None:
    """Close the pooled connections of every engine this process made (the command line does at
    exit). A SQLite file's last connection to close folds the write-ahead log back into the
    file, so that the file alone (a copy of it) holds every commit. Python's teardown closes
    them only in its last garbage collection, which the command line skips (cli.main)."""
    for engine in list(_ENGINES):
        engine.dispose()


def sqlite_path(engine: Engine) -> Path | None:
    """The file of a SQLite database, or None (not SQLite, in memory, or a `file:` URI)."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        return None
    if database.startswith("file:"):
        return None
    return Path(database).expanduser()


def describe(engine: Engine) -> str:
    """How errors name the database: the SQLite file, else the URL without its password."""
    path = sqlite_path(engine)
    return str(path) if path else engine.url.render_as_string(hide_password=True)


def _configure_sqlite(engine: Engine, *, create: bool) -> None:
    path = sqlite_path(engine)
    if path is not None and create:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise DatabaseError(
                f"cannot create the folder {path.parent} for the database {path}: a file is in the "
                "way (a parent of it is a regular file); set DIGESTBOT_DATABASE_URL to a path "
                "inside a folder"
            ) from None
        except OSError as exc:
            raise DatabaseError(
                f"cannot create the folder {path.parent} for the database {path}: "
                f"{_os_reason(exc)}; create the folder, make it writable for this user, or set "
                "DIGESTBOT_DATABASE_URL to a writable place"
            ) from None

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
        # with SQLITE_BUSY without waiting when another process wrote in between. A connection
        # marked READ_ONLY reads a snapshot without the lock (WAL), so writers need not wait.
        if conn.get_execution_options().get(READ_ONLY, False):
            conn.exec_driver_sql("BEGIN")
        else:
            begin_immediate(conn.connection.dbapi_connection)


def begin_immediate(dbapi_conn: Any) -> None:
    """BEGIN IMMEDIATE, waiting for another writer in steps of 0.1 ms growing to 2 ms.

    SQLite's own busy handler sleeps 1 ms, then 2, 5, 10 ms... while the write transactions of
    a delivery run (a claim, one digest's outcome) hold the lock for a fraction of a millisecond:
    with several workers, a tenth of their time went to oversleeping. Only the BEGIN waits here
    (with busy_timeout off for it); every other statement keeps busy_timeout.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    delay = 0.0001
    dbapi_conn.execute("PRAGMA busy_timeout = 0")
    try:
        while True:
            try:
                dbapi_conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if time.monotonic() > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 1.5, 0.002)
    finally:
        dbapi_conn.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")


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
    # Alembic (and Mako) are imported when migrating, not with this module: a worker process,
    # which never migrates, is 8 MB smaller without them.
    from alembic.config import Config

    # Config's default stdout is sys.stdout as it was when Alembic was imported (a stream since
    # replaced and closed, perhaps): the current one is given
    cfg = Config(stdout=sys.stdout)
    cfg.set_main_option("script_location", str(migrations_dir()))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def migrate(engine: Engine) -> None:
    """Bring the database schema to the newest migration (safe to run concurrently).

    Two processes opening a fresh or outdated database at once must not both apply a migration:
    PostgreSQL takes an advisory lock, SQLite an exclusive flock on the database's folder, held
    while Alembic runs.
    """
    try:
        with engine.connect() as conn:  # connecting creates a new SQLite file
            if engine.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
                conn.commit()
            with _sqlite_file_lock(engine):
                try:
                    from alembic import command

                    command.upgrade(alembic_config(conn), "head")
                    conn.commit()
                finally:
                    if engine.dialect.name == "postgresql":
                        conn.execute(
                            sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_MIGRATION_LOCK}
                        )
                        conn.commit()
    except SQLAlchemyError as exc:
        raise database_error(engine, exc, doing="open or migrate") from None


@contextlib.contextmanager
def _sqlite_file_lock(engine: Engine) -> Iterator[None]:
    """An exclusive flock on the SQLite database's folder while the block runs (no-op otherwise).

    Not on the database file itself: closing any descriptor of that file would drop the POSIX
    locks SQLite holds on it in this process. A folder lock creates no file and only makes
    migrations of databases in one folder wait for each other, for the moment they run.
    """
    path = sqlite_path(engine)
    if path is None or not path.exists():
        yield
        return
    fd = os.open(path.resolve().parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def open_database(url: str, *, create: bool = True) -> Engine:
    """Engine for `url`, migrated to head. The front doors call this once at start.

    With `create=False` (read-only commands: status, match, preview) nothing is created: a
    missing SQLite file, or a database without digestbot's tables, is a NoDatabaseError that
    says how to create one, and no folder or file appears.
    """
    engine = make_engine(url, create=create)
    if not create:
        _require_existing(engine)
    migrate(engine)
    return engine


def _require_existing(engine: Engine) -> None:
    advice = (
        "run `digestbot init` or `digestbot fetch` to create it, or check DIGESTBOT_DATABASE_URL"
    )
    path = sqlite_path(engine)
    if path is not None and not path.is_file():
        raise NoDatabaseError(f"no database yet at {path}; {advice}")
    if path is None and engine.dialect.name == "sqlite":
        return  # in memory or a file: URI: nothing on disk to protect
    try:
        with engine.connect() as conn:
            found = sa.inspect(conn).has_table("alembic_version")
    except SQLAlchemyError as exc:
        raise database_error(engine, exc, doing="open") from None
    if not found:
        raise NoDatabaseError(f"no digestbot database yet in {describe(engine)}; {advice}")


def database_error(engine: Engine, exc: BaseException, *, doing: str) -> DatabaseError:
    """One line for a failed database operation: which database, the driver's reason, what to do.

    Only the driver's own message is kept (never the statement or its parameters).
    """
    orig = getattr(exc, "orig", None)
    if isinstance(orig, BaseException):
        raw = str(orig)
    elif isinstance(exc, OSError):
        raw = _os_reason(exc)
    else:
        raw = type(exc).__name__
    reason = snippet(raw.splitlines()[0] if raw.strip() else type(orig or exc).__name__, 200)
    low = reason.lower()
    if "readonly" in low or "read-only" in low or "permission denied" in low:
        advice = (
            "the database (or its folder) is read-only for this user; make the file and its "
            "folder writable, or set DIGESTBOT_DATABASE_URL to a writable place"
        )
    elif "unable to open database file" in low:
        advice = (
            "check that the folder exists and is writable for this user, "
            "or set DIGESTBOT_DATABASE_URL to a writable place"
        )
    elif "not a database" in low or "malformed" in low:
        advice = "this is not a usable SQLite database; check DIGESTBOT_DATABASE_URL"
    elif "disk is full" in low or "disk i/o" in low or "no space" in low:
        advice = "free some disk space on the database's filesystem, then run again"
    elif "locked" in low or "busy" in low:
        advice = "another process held the database too long; run again"
    else:
        advice = "check DIGESTBOT_DATABASE_URL and that the database server is reachable"
    return DatabaseError(f"cannot {doing} the database {describe(engine)}: {reason}; {advice}")


def _os_reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


@contextlib.contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on error.

    A failure of the database itself (read-only file, full disk, server gone) becomes one
    DatabaseError line; the statement and its parameters are never in the message. A broken
    constraint stays an IntegrityError (uniqueness lives in the database; callers may expect it),
    its parameters hidden too.
    """
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except IntegrityError:
            _quiet_rollback(session)
            raise
        except DBAPIError as exc:
            _quiet_rollback(session)
            raise database_error(engine, exc, doing="read or write") from None
        except BaseException:
            _quiet_rollback(session)
            raise


def _quiet_rollback(session: Session) -> None:
    try:
        session.rollback()
    except SQLAlchemyError:
        pass  # the connection is already unusable; the original error is what matters


class PlannerLock:
    """The one-planner-per-database lock of the daemon, taken without waiting and held until
    released: a file lock beside SQLite, an advisory lock on PostgreSQL (which counts for every
    host, and is dropped by the server when the holder's connection ends).

    The daemon that holds it fetches and plans; every other daemon on the database only
    delivers, and tries again to take it each minute, so it takes over when the holder stops.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._conn: sa.Connection | None = None
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._conn is not None or self._fd is not None

    def try_acquire(self) -> bool:
        """Take the lock if it is free; whether this process holds it now."""
        if self.held:
            return True
        if self.engine.dialect.name == "postgresql":
            conn = self.engine.connect()
            got = conn.execute(
                sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": _PG_DAEMON_LOCK}
            ).scalar()
            conn.commit()
            if got:
                self._conn = conn
            else:
                conn.close()
            return bool(got)
        database = self.engine.url.database or "digestbot"
        lock_path = Path(
            f"{database}.daemon.lock" if database != ":memory:" else "digestbot.daemon.lock"
        )
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise DatabaseError(
                f"cannot create the daemon lock file {lock_path} beside the database: "
                f"{_os_reason(exc)}; make its folder writable for this user, or set "
                "DIGESTBOT_DATABASE_URL to a writable place"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def release(self) -> None:
        """Give the lock back (nothing when not held)."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_DAEMON_LOCK})
                conn.commit()
            finally:
                conn.close()
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
