"""Reads and writes of papers, subscribers, the suppression list, fetch runs and the database's identity.

Plain keyword-only functions over a Session. Addresses are compared by
`digestbot.addresses.address_key`, stored in `subscribers.address_key`.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from digestbot.addresses import address_key
from digestbot.models import (
    DatabaseIdentity,
    DeliveryHealth,
    Digest,
    DigestItem,
    DigestState,
    FetchRun,
    Paper,
    PaperSource,
    Subscriber,
    Suppression,
    UnsubscribeMethod,
    table_of,
)
from digestbot.sources.base import FetchedPaper, Validators

CHUNK = 500
# Fields a later sighting may change, when the source gives them (None or empty: it does not
# have that field, and another source's value stays). Title, abstract and authors are kept as
# first seen; a newer arXiv version replaces them (_REVISED). Categories are pooled (the first
# source's first) and the first link is kept, so a journal feed cannot replace arXiv's.
_MERGED = (
    "upvotes",
    "num_comments",
    "github_repo",
    "github_stars",
    "project_page",
    "ai_summary",
    "ai_keywords",
)
_REVISED = ("title", "summary", "authors", "version")


def dialect_of(db: Session | sa.Connection) -> str:
    """The name of the database's dialect ("sqlite", "postgresql") behind a session or connection."""
    bind = db.get_bind() if isinstance(db, Session) else db
    return bind.dialect.name


def within(db: Session | sa.Connection, column: Any, values: Sequence[Any]) -> Any:
    """`column IN values`, for a chunk of values (chunks()).

    On PostgreSQL it is `column = ANY(:values)`, one array parameter: the statement's text is
    the same whatever the number of values, so psycopg prepares it after a few runs. A planning
    run of 100,000 subscribers sends over a thousand such look-ups, and each IN of 500
    placeholders was parsed anew (psycopg prepares no statement of more than 50 parameters).
    """
    return within_param(dialect_of(db), column, values=list(values))


def within_param(
    dialect: str, column: Any, key: str | None = None, *, values: Sequence[Any] | None = None
) -> Any:
    """`column IN` a chunk of values for `dialect` (see within): `values`, or a statement built
    once to be run with many chunks, each given as the parameter `key`."""
    if dialect == "postgresql":
        return column == sa.any_(sa.bindparam(key, values, type_=postgresql.ARRAY(column.type)))
    return column.in_(sa.bindparam(key, values, expanding=True))


def dialect_insert(session: Session, table: Any) -> Any:
    """An INSERT that supports ON CONFLICT for the session's dialect (SQLite or PostgreSQL)."""
    name = dialect_of(session)
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"unsupported database dialect {name!r}")


def insert_rows(
    conn: sa.Connection,
    table: sa.Table,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    conflict: Sequence[str],
    returning: Sequence[str] = (),
    stored: Collection[str] = (),
) -> list[tuple[Any, ...]]:
    """INSERT `rows` (values in `columns` order) into `table` straight through the driver, a row
    whose `conflict` key exists already left out; the `returning` columns of the rows inserted.
    The values of the `stored` columns are given as the database stores them (JSON text, say),
    the others as SQLAlchemy takes them.

    A planning run stores a hundred thousand digests and several times as many items: on
    PostgreSQL they go through COPY (_copy_rows), on SQLite as multi-row INSERTs (_sqlite_rows),
    each faster than SQLAlchemy's INSERT of many rows. Names come from the models, never from
    data.
    """
    tail = f" ON CONFLICT ({', '.join(conflict)}) DO NOTHING"
    if returning:
        tail += f" RETURNING {', '.join(returning)}"
    if conn.dialect.name == "postgresql":
        return _copy_rows(conn, table, columns, rows, tail, returns=bool(returning))
    return _sqlite_rows(conn, table, columns, rows, tail, returns=bool(returning), stored=stored)


def _copy_rows(
    conn: sa.Connection,
    table: sa.Table,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    tail: str,
    *,
    returns: bool,
) -> list[tuple[Any, ...]]:
    """PostgreSQL: the rows go through COPY into a temporary table of the same columns (dropped
    at commit), then one INSERT ... SELECT ... `tail`. A multi-row INSERT made the driver parse a
    statement of thousands of placeholders per page.

    Rows that return nothing are first copied straight into the table, in a savepoint: the
    usual case, as the caller left out what the table held, and half the server's work (each
    row written once, not into the temporary table and again). A row that conflicts (another
    run stored it meanwhile) undoes that COPY, and the rows take the way above.
    """
    from psycopg.errors import UniqueViolation

    raw: Any = conn.connection.dbapi_connection  # psycopg's Connection: its cursor has copy()
    temp = f"incoming_{table.name}"
    cols = ", ".join(columns)
    rows = list(rows)
    if not returns:
        try:
            with (
                raw.transaction(),  # a savepoint in the caller's transaction
                raw.cursor() as cur,
                cur.copy(f"COPY {table.name} ({cols}) FROM STDIN") as copy,
            ):
                for row in rows:
                    copy.write_row(row)
            return []
        except UniqueViolation:
            pass
    with raw.cursor() as cur:
        cur.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {temp} ON COMMIT DROP AS "
            f"SELECT {cols} FROM {table.name} WITH NO DATA"
        )
        with cur.copy(f"COPY {temp} ({cols}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        cur.execute(f"INSERT INTO {table.name} ({cols}) SELECT {cols} FROM {temp}{tail}")
        out = [tuple(r) for r in cur.fetchall()] if returns else []
        cur.execute(f"TRUNCATE {temp}")
    return out


def bind_processor(type_: sa.types.TypeEngine[Any], dialect: sa.Dialect) -> Any:
    """What SQLAlchemy does to a value of `type_` before the driver gets it (None: nothing), for
    statements sent to the driver directly. The dialect's own implementation of the type: the
    generic one's (`type_.bind_processor`) skips SQLite's DATETIME, which writes every time as
    'YYYY-MM-DD HH:MM:SS.ffffff', and leaves a datetime to sqlite3's own adapter, whose text
    drops the microseconds when they are 0 (so it sorts before the same time written by
    SQLAlchemy), and which Python 3.12 deprecates."""
    return type_.dialect_impl(dialect).bind_processor(dialect)


SQLITE_PARAMETERS = 999
"""Host parameters in one SQLite statement: the limit of SQLite before 3.32, so any build takes it."""


def _sqlite_rows(
    conn: sa.Connection,
    table: sa.Table,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    tail: str,
    *,
    returns: bool,
    stored: Collection[str],
) -> list[tuple[Any, ...]]:
    """SQLite: INSERT ... VALUES of as many rows as SQLITE_PARAMETERS allows, then `tail`.

    Each value but those of the `stored` columns goes through its column type's bind processor,
    as through SQLAlchemy's own INSERT (an aware datetime becomes SQLite's UTC text), but each
    distinct value only once: a plan's digests share the window of their period and the run's
    time (SQLAlchemy's INSERT of many rows binds every value of every row in Python).
    """
    convert: list[tuple[int, Callable[[Any], Any], dict[Any, Any]]] = [
        (i, fn, {})
        for i, name in enumerate(columns)
        if name not in stored
        and (fn := bind_processor(table.c[name].type, conn.dialect)) is not None
    ]
    one = "(" + ", ".join("?" * len(columns)) + ")"
    head = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES "
    out: list[tuple[Any, ...]] = []
    for group in chunks(list(rows), max(1, SQLITE_PARAMETERS // len(columns))):
        params: list[Any] = []
        for row in group:
            values = list(row)
            for i, process, done in convert:
                value = values[i]
                if value is not None:
                    bound = done.get(value)
                    if bound is None:
                        bound = done[value] = process(value)
                    values[i] = bound
            params.extend(values)
        result = conn.exec_driver_sql(head + ", ".join([one] * len(group)) + tail, tuple(params))
        if returns:
            out.extend(tuple(r) for r in result)
    return out


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# -- papers ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoreResult:
    new: int
    updated: int


def upsert_papers(
    session: Session, *, papers: Sequence[FetchedPaper], now: datetime, source: str = "hf"
) -> StoreResult:
    """Store what `source` brought: new papers are inserted, known ones (from any source) merged.

    A paper is one row whatever brought it: each field a source has (not None, not empty)
    updates the stored one, so HF's upvotes and AI summary and arXiv's categories and version
    sit side by side. A revision (arXiv `replace`) only updates a known paper with a newer
    version (title, abstract, authors, version) and is never stored as a new paper. Each
    sighting is recorded in paper_sources (the first one of each source is kept). Returns how
    many papers were new to the database and how many stored ones changed.
    """
    by_id: dict[str, FetchedPaper] = {}
    for p in papers:
        by_id.setdefault(p.arxiv_id, p)
    existing: dict[str, Paper] = {}
    for ids in chunks(sorted(by_id)):
        for row in session.exec(select(Paper).where(within(session, col(Paper.arxiv_id), ids))):
            existing[row.arxiv_id] = row
    new_rows = [
        _paper_values(p, now, source)
        for key, p in by_id.items()
        if key not in existing and not p.revision
    ]
    new = 0
    for rows in chunks(new_rows):
        stmt = (
            dialect_insert(session, Paper)
            .values(list(rows))
            .on_conflict_do_nothing(index_elements=["arxiv_id"])
            .returning(Paper.arxiv_id)
        )
        new += len(session.execute(stmt).all())
    updated = 0
    for key, row in existing.items():
        if _merge(row, by_id[key], source):
            row.updated_at = now
            session.add(row)
            updated += 1
    session.flush()
    sightings = [
        {"arxiv_id": k, "source": source, "featured_at": p.featured_at, "first_seen_at": now}
        for k, p in by_id.items()
        if not p.revision
    ]
    for rows in chunks(sightings):
        session.execute(
            dialect_insert(session, PaperSource)
            .values(list(rows))
            .on_conflict_do_nothing(index_elements=["arxiv_id", "source"])
        )
    return StoreResult(new=new, updated=updated)


def _merge(row: Paper, fetched: FetchedPaper, source: str) -> bool:
    """Merge one source's view of a paper into its stored row; whether anything changed."""
    changed = False

    def put(name: str, value: Any) -> None:
        nonlocal changed
        if getattr(row, name) != value:
            setattr(row, name, value)
            changed = True

    if fetched.revision:
        if fetched.version is not None and (row.version or 0) < fetched.version:
            for name in _REVISED:
                value = getattr(fetched, name)
                put(name, list(value) if isinstance(value, tuple) else value)
            if fetched.categories:
                put("categories", list(fetched.categories))
        return changed
    for name in _MERGED:
        value = getattr(fetched, name)
        if value is None or value == ():
            continue
        put(name, list(value) if isinstance(value, tuple) else value)
    pooled = list(dict.fromkeys([*row.categories, *fetched.categories]))
    if pooled != row.categories:
        put("categories", pooled)
    if fetched.link and not row.link:
        put("link", fetched.link)
    if fetched.version is not None and (row.version or 0) < fetched.version:
        put("version", fetched.version)
    if fetched.upvotes is not None and not row.has_upvotes:
        put("has_upvotes", True)
    if fetched.featured_at < row.featured_at:
        put("featured_at", fetched.featured_at)
    if source not in row.sources:
        put("sources", [*row.sources, source])
    return changed


def _paper_values(p: FetchedPaper, now: datetime, source: str) -> dict[str, Any]:
    return {
        "arxiv_id": p.arxiv_id,
        "title": p.title,
        "summary": p.summary,
        "authors": list(p.authors),
        "published_at": p.published_at,
        "featured_at": p.featured_at,
        "upvotes": p.upvotes or 0,
        "num_comments": p.num_comments or 0,
        "github_repo": p.github_repo,
        "github_stars": p.github_stars,
        "project_page": p.project_page,
        "ai_summary": p.ai_summary,
        "ai_keywords": list(p.ai_keywords),
        "categories": list(p.categories),
        "link": p.link,
        "version": p.version,
        "has_upvotes": p.upvotes is not None,
        "sources": [source],
        "first_seen_at": now,
        "updated_at": now,
    }


def papers_featured_between(
    session: Session, *, start: datetime | None, end: datetime | None
) -> list[Paper]:
    """Papers that some source featured in [start, end) (None: unbounded), oldest first."""
    seen = sa.select(col(PaperSource.arxiv_id))
    if start is not None:
        seen = seen.where(col(PaperSource.featured_at) >= start)
    if end is not None:
        seen = seen.where(col(PaperSource.featured_at) < end)
    stmt = (
        select(Paper)
        .where(col(Paper.arxiv_id).in_(seen.distinct()))
        .order_by(col(Paper.featured_at), col(Paper.arxiv_id))
    )
    return list(session.exec(stmt))


@dataclass(frozen=True, slots=True)
class Sighting:
    """When one source featured a paper, and when it first brought it."""

    source: str
    featured_at: datetime
    first_seen_at: datetime


def sightings(session: Session, ids: Iterable[str]) -> dict[str, list[Sighting]]:
    """Every source's sighting of these papers, by paper key."""
    out: dict[str, list[Sighting]] = {}
    for chunk in chunks(sorted(set(ids))):
        rows = session.execute(
            sa.select(
                col(PaperSource.arxiv_id),
                col(PaperSource.source),
                col(PaperSource.featured_at),
                col(PaperSource.first_seen_at),
            ).where(within(session, col(PaperSource.arxiv_id), chunk))
        )
        for key, source, featured, first in rows:
            out.setdefault(key, []).append(Sighting(source, featured, first))
    return out


def papers_by_id(session: Session, ids: Iterable[str]) -> dict[str, Paper]:
    out: dict[str, Paper] = {}
    for chunk in chunks(sorted(set(ids))):
        for row in session.exec(select(Paper).where(within(session, col(Paper.arxiv_id), chunk))):
            out[row.arxiv_id] = row
    return out


# -- fetch runs -----------------------------------------------------------------------------


def record_fetch_run(
    session: Session,
    *,
    feed_url: str,
    started_at: datetime,
    finished_at: datetime,
    ok: bool,
    source: str = "hf",
    new: int = 0,
    updated: int = 0,
    error: str | None = None,
    validators: Validators | None = None,
) -> None:
    session.add(
        FetchRun(
            source=source,
            feed_url=feed_url,
            started_at=started_at,
            finished_at=finished_at,
            ok=ok,
            new_count=new,
            updated_count=updated,
            error=error,
            etag=validators.etag if validators else None,
            last_modified=validators.last_modified if validators else None,
        )
    )


# -- subscribers ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SubscriberRecord:
    id: int
    email: str
    name: str | None


def sync_subscribers(
    session: Session, *, people: Sequence[tuple[str, str | None]], now: datetime
) -> dict[str, int]:
    """Make the subscribers table match the file: insert new, update names, deactivate removed.

    People are matched by address_key, so a changed spelling (`Ada@Example.org` → `ada@example.org`)
    is the same subscriber, stored as now written. Returns address_key → id for everyone in `people`.
    """
    wanted = {address_key(email): (email, name) for email, name in people}
    table = table_of(Subscriber)
    c = table.c
    # Core rows, not ORM objects: one pass over the table, a few MB at 100k rows.
    current = {
        row.address_key: row
        for row in session.execute(sa.select(c.id, c.address_key, c.email, c.name, c.active))
    }
    inserts = [
        (e, key, n, True, None, now, now) for key, (e, n) in wanted.items() if key not in current
    ]
    changed: list[dict[str, Any]] = []
    for key, row in current.items():
        if key in wanted:
            email, name = wanted[key]
            if row.name != name or row.email != email or not row.active:
                changed.append({"b_id": row.id, "email": email, "name": name, "active": True})
        elif row.active:
            changed.append({"b_id": row.id, "email": row.email, "name": row.name, "active": False})
    # New people straight through the driver (a first run may bring 100,000: COPY on
    # PostgreSQL, multi-row INSERTs on SQLite); changes as an executemany of one statement.
    if inserts:
        insert_rows(
            session.connection(), table, _SUBSCRIBER_COLUMNS, inserts, conflict=["address_key"]
        )
    if changed:
        update = (
            sa.update(table)
            .where(c.id == sa.bindparam("b_id"))
            .values(
                email=sa.bindparam("email"),
                name=sa.bindparam("name"),
                active=sa.bindparam("active"),
                updated_at=now,
            )
        )
        for rows in chunks(changed, 5000):
            session.execute(update, list(rows))
    if not inserts:
        return {key: current[key].id for key in sorted(wanted)}
    ids = {key: sid for sid, key in session.execute(sa.select(c.id, c.address_key))}
    return {key: ids[key] for key in sorted(wanted) if key in ids}


_SUBSCRIBER_COLUMNS = (
    "email",
    "address_key",
    "name",
    "active",
    "paused_at",
    "created_at",
    "updated_at",
)


def subscriber_ids(session: Session, emails: Iterable[str]) -> dict[str, int]:
    """Ids of the stored subscribers with these addresses (compared by address_key), keyed by
    address_key; addresses never synced are absent. Read-only."""
    return _ids_by_key(session, sorted({address_key(e) for e in emails}))


def _ids_by_key(session: Session, keys: Sequence[str]) -> dict[str, int]:
    ids: dict[str, int] = {}
    for chunk in chunks(keys):
        for sid, key in session.execute(
            sa.select(col(Subscriber.id), col(Subscriber.address_key)).where(
                within(session, col(Subscriber.address_key), chunk)
            )
        ):
            ids[key] = sid
    return ids


def unsynced(session: Session, emails: Sequence[str]) -> list[str]:
    """The addresses (as given, in order) with no active stored subscriber: never synced, or
    back in the file since a sync removed them. Read-only."""
    active: set[str] = set()
    keys = sorted({address_key(e) for e in emails})
    for chunk in chunks(keys):
        active.update(
            session.execute(
                sa.select(col(Subscriber.address_key)).where(
                    within(session, col(Subscriber.address_key), chunk),
                    col(Subscriber.active).is_(True),
                )
            ).scalars()
        )
    return [e for e in emails if address_key(e) not in active]


def subscriber_records(session: Session, ids: Iterable[int]) -> dict[int, SubscriberRecord]:
    out: dict[int, SubscriberRecord] = {}
    for chunk in chunks(sorted(set(ids))):
        for sid, email, name in session.execute(
            sa.select(col(Subscriber.id), col(Subscriber.email), col(Subscriber.name)).where(
                within(session, col(Subscriber.id), chunk)
            )
        ):
            out[sid] = SubscriberRecord(id=sid, email=email, name=name)
    return out


# -- the suppression list -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Suppressed:
    """An address on the suppression list: when and how it unsubscribed."""

    address: str
    method: UnsubscribeMethod
    at: datetime


def suppress(
    session: Session, *, address: str, method: UnsubscribeMethod, now: datetime
) -> Suppressed:
    """Put `address` on the suppression list (compared by address_key); a repeat changes nothing
    and returns the first entry. Digests planned or deferred for it are marked suppressed."""
    key = address_key(address)
    session.execute(
        dialect_insert(session, table_of(Suppression))
        .values(address_key=key, address=address.strip(), method=method, created_at=now)
        .on_conflict_do_nothing(index_elements=["address_key"])
    )
    row = session.exec(select(Suppression).where(col(Suppression.address_key) == key)).one()
    mark_suppressed_digests(session, keys=[key])
    return Suppressed(address=row.address, method=UnsubscribeMethod(row.method), at=row.created_at)


def unsuppress(
    session: Session, *, address: str, methods: Collection[UnsubscribeMethod] | None = None
) -> bool:
    """Take `address` off the suppression list (only if it got there by one of `methods`, when
    given); False when nothing was removed. Digests already marked suppressed stay so (they were
    not sent, and their papers are free for the next one)."""
    table = table_of(Suppression)
    where = table.c.address_key == address_key(address)
    if methods is not None:
        where = where & table.c.method.in_([str(m) for m in methods])
    result = session.connection().execute(table.delete().where(where))
    return bool(result.rowcount)


def suppression(session: Session, *, address: str) -> Suppressed | None:
    """The suppression-list entry of `address`, or None."""
    row = session.exec(
        select(Suppression).where(col(Suppression.address_key) == address_key(address))
    ).first()
    if row is None:
        return None
    return Suppressed(address=row.address, method=UnsubscribeMethod(row.method), at=row.created_at)


def suppressed_keys(session: Session, emails: Iterable[str]) -> set[str]:
    """The address_keys of these addresses that are on the suppression list."""
    keys = sorted({address_key(e) for e in emails})
    out: set[str] = set()
    for chunk in chunks(keys):
        out.update(
            session.execute(
                sa.select(col(Suppression.address_key)).where(
                    within(session, col(Suppression.address_key), chunk)
                )
            ).scalars()
        )
    return out


def address_suppressed() -> sa.ColumnElement[bool]:
    """True for a `subscribers` row whose address is on the suppression list (a correlated
    EXISTS: one unique-index lookup per row)."""
    people, suppressed = table_of(Subscriber), table_of(Suppression)
    return sa.exists().where(suppressed.c.address_key == people.c.address_key)


def suppressed_subscriber_ids() -> sa.Select[Any]:
    """A subquery: ids of subscribers whose address is on the suppression list."""
    return sa.select(col(Subscriber.id)).where(address_suppressed())


def mark_suppressed_digests(session: Session, *, keys: Sequence[str] | None = None) -> int:
    """Digests planned or deferred for suppressed addresses (these `keys`, or all) will not be
    sent: mark them suppressed. A digest being sent right now is left to its sender."""
    table = table_of(Digest)
    who = suppressed_subscriber_ids()
    if keys is not None:
        who = who.where(col(Subscriber.address_key).in_(list(keys)))
    result = session.connection().execute(
        table.update()
        .where(
            table.c.state.in_((DigestState.PLANNED, DigestState.DEFERRED)),
            table.c.subscriber_id.in_(who),
        )
        .values(
            state=DigestState.SUPPRESSED,
            next_attempt_at=None,
            last_error="not sent: the address unsubscribed",
        )
    )
    return result.rowcount or 0


def latest_suppressed(session: Session, *, limit: int) -> list[Suppressed]:
    """The newest entries of the suppression list, newest first."""
    rows = session.exec(
        select(Suppression)
        .order_by(col(Suppression.created_at).desc(), col(Suppression.id).desc())
        .limit(limit)
    )
    return [Suppressed(r.address, UnsubscribeMethod(r.method), r.created_at) for r in rows]


# -- status ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    """A digest waiting for a retry or failed for good, with the server's last reply."""

    email: str
    period: str
    state: DigestState
    attempts: int
    error: str | None
    next_attempt_at: datetime | None


@dataclass(frozen=True, slots=True)
class Noted:
    """A digest planned without a good fetch for its day (the daemon's feed hold expired)."""

    email: str
    period: str
    state: DigestState
    note: str


@dataclass(frozen=True, slots=True)
class SourceFetches:
    """One source's newest fetch and newest good fetch (None: never, or never good)."""

    name: str
    last: FetchRun | None
    last_good: FetchRun | None


@dataclass(frozen=True, slots=True)
class Status:
    last_fetch: FetchRun | None
    last_good_fetch: FetchRun | None
    sources: list[SourceFetches]  # the configured sources (or, unknown, those fetched), in order
    papers: int
    papers_mailed: int
    subscribers: int  # active (synced) subscribers
    not_synced: list[str] | None  # addresses of the file given that are not synced (None: no file)
    digests_by_state: dict[str, int]  # every DigestState, 0 when none
    problems: list[Problem]  # deferred and failed, newest first
    delivery: DeliveryHealth | None  # None: no delivery run has recorded anything yet
    digests_by_frequency: dict[str, int]  # "daily"/"weekly" -> digests planned so far
    noted: list[Noted]  # planned without a good fetch for their day, newest first
    suppressed: int = 0  # addresses on the suppression list
    latest_suppressed: list[Suppressed] = field(default_factory=list)  # newest first


def last_good_fetch(session: Session, *, source: str | None = None) -> FetchRun | None:
    """The newest fetch that worked, of one source or of any (the daemon catches up from there
    after downtime; an arXiv source reads its conditional-GET validators from it)."""
    stmt = select(FetchRun).where(col(FetchRun.ok).is_(True))
    if source is not None:
        stmt = stmt.where(col(FetchRun.source) == source)
    return session.exec(stmt.order_by(col(FetchRun.id).desc()).limit(1)).first()


def source_fetches(session: Session, names: Sequence[str] | None) -> list[SourceFetches]:
    """Each source's newest and newest good fetch, for `names` in order (None: every source
    that has fetch runs, by name)."""
    if names is None:
        names = sorted(session.exec(select(FetchRun.source).distinct()))
    out = []
    for name in names:
        last = session.exec(
            select(FetchRun)
            .where(col(FetchRun.source) == name)
            .order_by(col(FetchRun.id).desc())
            .limit(1)
        ).first()
        good = last if last is None or last.ok else last_good_fetch(session, source=name)
        out.append(SourceFetches(name=name, last=last, last_good=good))
    return out


def status(
    session: Session,
    *,
    file_emails: Sequence[str] | None = None,
    sources: Sequence[str] | None = None,
    problem_limit: int = 50,
    suppressed_limit: int = 5,
) -> Status:
    """What `digestbot status` shows; `file_emails` (the subscribers file) is checked for people
    not synced yet; `sources` are the configured source names (None: those with fetch runs).
    Read-only."""
    last = session.exec(select(FetchRun).order_by(col(FetchRun.id).desc()).limit(1)).first()
    papers = session.execute(sa.select(sa.func.count()).select_from(Paper)).scalar_one()
    subs = session.execute(
        sa.select(sa.func.count()).select_from(Subscriber).where(col(Subscriber.active).is_(True))
    ).scalar_one()
    by_state: dict[str, int] = {state.value: 0 for state in DigestState}
    by_state |= {
        state: n
        for state, n in session.execute(
            sa.select(col(Digest.state), sa.func.count()).group_by(col(Digest.state))
        )
    }
    rows = session.execute(
        sa.select(
            col(Subscriber.email),
            col(Digest.period),
            col(Digest.state),
            col(Digest.attempts),
            col(Digest.last_error),
            col(Digest.next_attempt_at),
        )
        .join(Subscriber, col(Subscriber.id) == col(Digest.subscriber_id))
        .where(col(Digest.state).in_((DigestState.DEFERRED, DigestState.FAILED)))
        .order_by(col(Digest.id).desc())
        .limit(problem_limit)
    )
    return Status(
        last_fetch=last,
        last_good_fetch=last_good_fetch(session),
        sources=source_fetches(session, sources),
        papers=papers,
        papers_mailed=sent_paper_count(session),
        subscribers=subs,
        not_synced=None if file_emails is None else unsynced(session, file_emails),
        digests_by_state=by_state,
        problems=[
            Problem(email, period, DigestState(state), attempts, error, nxt)
            for email, period, state, attempts, error, nxt in rows
        ],
        delivery=session.get(DeliveryHealth, 1),
        digests_by_frequency={
            frequency: n
            for frequency, n in session.execute(
                sa.select(col(Digest.frequency), sa.func.count()).group_by(col(Digest.frequency))
            )
        },
        noted=[
            Noted(email, period, DigestState(state), note)
            for email, period, state, note in session.execute(
                sa.select(
                    col(Subscriber.email), col(Digest.period), col(Digest.state), col(Digest.note)
                )
                .join(Subscriber, col(Subscriber.id) == col(Digest.subscriber_id))
                .where(col(Digest.note).is_not(None))
                .order_by(col(Digest.id).desc())
                .limit(problem_limit)
            )
        ],
        suppressed=session.execute(
            sa.select(sa.func.count()).select_from(Suppression)
        ).scalar_one(),
        latest_suppressed=latest_suppressed(session, limit=suppressed_limit),
    )


def sent_paper_count(session: Session) -> int:
    return session.execute(
        sa.select(sa.func.count())
        .select_from(DigestItem)
        .join(Digest, col(Digest.id) == col(DigestItem.digest_id))
        .where(col(Digest.state) == DigestState.SENT)
    ).scalar_one()


# -- the database itself --------------------------------------------------------------------


def database_id(session: Session) -> str:
    """The random id written when the database was created (migration 0003); part of every
    Message-ID, so two databases never give a digest the same one."""
    row = session.get(DatabaseIdentity, 1)
    if row is None:  # only if someone deleted the row by hand: put a new one back
        row = DatabaseIdentity(id=1, token=secrets.token_hex(8))
        session.add(row)
        session.flush()
    return row.token
