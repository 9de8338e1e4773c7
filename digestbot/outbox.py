"""The digest outbox: planning rows idempotently, claiming them for delivery, recording outcomes.

States are models.DigestState: planned → sending → sent; sending → deferred (retry at
next_attempt_at) → sending ...; sending → failed (permanent); skipped (nothing matched, nothing to
send); planned or deferred → suppressed (the address unsubscribed, store.suppress). What one
delivery attempt came to is an Outcome. Uniqueness lives in the database: one
digest per (subscriber, period) and one item per (subscriber, paper).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import random
import socket
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, col, select

from digestbot.db import READ_ONLY, begin_immediate, database_error
from digestbot.matching import Match
from digestbot.models import (
    DeliveryHealth,
    Digest,
    DigestItem,
    DigestState,
    Paper,
    Subscriber,
    UTCDateTime,
    table_of,
)
from digestbot.store import (
    address_suppressed,
    bind_processor,
    chunks,
    dialect_insert,
    dialect_of,
    insert_rows,
    papers_by_id,
    within,
    within_param,
)

log = logging.getLogger("digestbot")

LEASE = timedelta(minutes=30)
MATCHED = "matched"  # DigestItem.section of a paper a query matched
TRENDING = "trending"  # DigestItem.section of a paper among the period's most upvoted


class Outcome(StrEnum):
    """What one delivery attempt came to, as recorded in the outbox."""

    SENT = "sent"
    DEFERRED = "deferred"  # a temporary failure: retried after a backoff
    FAILED = "failed"  # refused for good, or retried until the give-up time
    TAKEN_OVER = "taken over"  # another run took the digest back meanwhile; it owns the outcome


@dataclass(frozen=True, slots=True)
class DigestPlan:
    """A digest decided for one subscriber and period, before it is stored."""

    subscriber_id: int
    email: str
    period: str
    window_start: datetime
    window_end: datetime
    items: tuple[Match, ...]  # the papers, with why they matched, fixed at planning
    more_count: int
    send_empty: bool
    message_id: str
    trending: tuple[Match, ...] = ()  # the "Trending" section: most upvoted, not in `items`
    frequency: str = "daily"  # what `period` counts: "daily" or "weekly"
    note: str | None = None  # the feed failed for the period: said on the row, never mailed empty

    @property
    def state(self) -> DigestState:
        """Skipped when empty, unless the subscriber wants empty digests and the feed was fine."""
        if self.items or self.trending or (self.send_empty and self.note is None):
            return DigestState.PLANNED
        return DigestState.SKIPPED


def store_plans(session: Session, *, plans: Sequence[DigestPlan], now: datetime) -> int:
    """Insert digests and their items; a (subscriber, period) that already has a digest is left alone.

    Rows go straight to the driver (store.insert_rows: COPY on PostgreSQL, multi-row INSERTs on
    SQLite), the items' JSON already serialized (_JsonCache). Returns how many digests were
    inserted by this call.
    """
    conn = session.connection()
    digests = table_of(Digest)
    as_json = _JsonCache()
    inserted = 0
    for batch in chunks(list(plans)):
        values = [
            (
                p.subscriber_id,
                p.period,
                p.frequency,
                p.state,
                p.window_start,
                p.window_end,
                len(p.items) + len(p.trending),
                p.more_count,
                p.message_id,
                p.note,
                0,
                now,
                now,
            )
            for p in batch
        ]
        returned = insert_rows(
            conn,
            digests,
            _DIGEST_COLUMNS,
            values,
            conflict=("subscriber_id", "period"),
            returning=("id", "subscriber_id"),
        )
        ids = {sid: did for did, sid in returned}
        inserted += len(ids)
        items = [
            (
                ids[p.subscriber_id],
                p.subscriber_id,
                it.arxiv_id,
                pos,
                section,
                it.score,
                it.upvotes,
                as_json(it.matched),
                as_json(it.title_spans),
                as_json(it.summary_spans),
            )
            for p in batch
            if p.subscriber_id in ids
            for pos, (section, it) in enumerate(
                [(MATCHED, it) for it in p.items] + [(TRENDING, it) for it in p.trending]
            )
        ]
        if items:
            insert_rows(
                conn,
                table_of(DigestItem),
                _ITEM_COLUMNS,
                items,
                conflict=("subscriber_id", "arxiv_id"),
                stored=_ITEM_JSON,
            )
        resumed = sorted(ids)
        if resumed:
            subscribers = table_of(Subscriber)
            conn.execute(
                subscribers.update()
                .where(
                    within(conn, subscribers.c.id, resumed), subscribers.c.paused_at.is_not(None)
                )
                .values(paused_at=None)
            )
    return inserted


_DIGEST_COLUMNS = (
    "subscriber_id",
    "period",
    "frequency",
    "state",
    "window_start",
    "window_end",
    "paper_count",
    "more_count",
    "message_id",
    "note",
    "attempts",
    "planned_at",
    "next_attempt_at",
)
_ITEM_COLUMNS = (
    "digest_id",
    "subscriber_id",
    "arxiv_id",
    "position",
    "section",
    "score",
    "upvotes",
    "matched",
    "title_spans",
    "summary_spans",
)
_ITEM_JSON = frozenset({"matched", "title_spans", "summary_spans"})  # given as JSON text


class _JsonCache:
    """The JSON text of the matched terms and spans as the JSON column stores it (json.dumps of a
    list), computed once per distinct value: many subscribers share terms and spans."""

    def __init__(self) -> None:
        self._seen: dict[Any, str] = {}

    def __call__(self, value: tuple[Any, ...]) -> str:
        text = self._seen.get(value)
        if text is None:
            text = self._seen[value] = json.dumps(value)
        return text


def mark_paused(session: Session, *, subscriber_ids: Sequence[int], now: datetime) -> None:
    """Note that these subscribers are `off` (kept from the first time it was seen), so their
    next digest, once they are back on, covers the normal window and not the backlog."""
    table = table_of(Subscriber)
    for chunk in chunks(list(subscriber_ids)):
        session.connection().execute(
            table.update()
            .where(within(session, table.c.id, chunk), table.c.paused_at.is_(None))
            .values(paused_at=now)
        )


def paused(session: Session, subscriber_ids: Sequence[int]) -> set[int]:
    """Which of these subscribers were seen `off` since their last digest."""
    out: set[int] = set()
    for chunk in chunks(list(subscriber_ids)):
        out.update(
            session.execute(
                sa.select(col(Subscriber.id)).where(
                    within(session, col(Subscriber.id), chunk),
                    col(Subscriber.paused_at).is_not(None),
                )
            ).scalars()
        )
    return out


def last_windows(
    session: Session, subscriber_ids: Sequence[int]
) -> dict[int, tuple[datetime, datetime]]:
    """For each subscriber with a digest: where its latest window ended and when it was planned."""
    out: dict[int, tuple[datetime, datetime]] = {}
    end = sa.func.max(col(Digest.window_end), type_=UTCDateTime())
    planned = sa.func.max(col(Digest.planned_at), type_=UTCDateTime())
    for chunk in chunks(list(subscriber_ids)):
        stmt = (
            sa.select(col(Digest.subscriber_id), end, planned)
            .where(within(session, col(Digest.subscriber_id), chunk))
            .group_by(col(Digest.subscriber_id))
        )
        out.update((sid, (e, p)) for sid, e, p in session.execute(stmt))
    return out


def existing_periods(session: Session, pairs: Sequence[tuple[int, str]]) -> set[tuple[int, str]]:
    """Which (subscriber, period) pairs already have a digest."""
    found: set[tuple[int, str]] = set()
    for chunk in chunks(list(pairs)):
        sids = sorted({sid for sid, _ in chunk})
        periods = sorted({p for _, p in chunk})
        stmt = sa.select(col(Digest.subscriber_id), col(Digest.period)).where(
            within(session, col(Digest.subscriber_id), sids),
            within(session, col(Digest.period), periods),
        )
        found.update((sid, p) for sid, p in session.execute(stmt))
    return found & set(pairs)


def already_held(
    session: Session, subscriber_ids: Sequence[int], arxiv_ids: Sequence[str]
) -> set[tuple[int, str]]:
    """(subscriber, paper) pairs already fixed into some digest: those papers are never sent again.

    Both lists are bounded per query, so a subscriber's long history is never read whole.
    """
    held: set[tuple[int, str]] = set()
    if not arxiv_ids:
        return held
    papers = sorted(set(arxiv_ids))
    for people in chunks(list(subscriber_ids)):
        for ids in chunks(papers):
            stmt = sa.select(col(DigestItem.subscriber_id), col(DigestItem.arxiv_id)).where(
                within(session, col(DigestItem.subscriber_id), people),
                within(session, col(DigestItem.arxiv_id), ids),
            )
            held.update((sid, aid) for sid, aid in session.execute(stmt))
    return held


# -- reading stored digests ------------------------------------------------------------------


class StoredItem(NamedTuple):
    """One stored paper of a digest, as delivery reads it (what digest_view needs of a DigestItem).

    A named tuple: a delivery run reads some 130,000 of them at 20,000 subscribers, and a frozen
    dataclass's __init__ (one object.__setattr__ a field) took three times as long to make."""

    arxiv_id: str
    section: str
    position: int
    upvotes: int
    matched: tuple[str, ...]
    title_spans: tuple[tuple[int, int], ...]
    summary_spans: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class StoredDigest:
    """A stored digest with its recipient and items (in digest order), ready to render."""

    id: int
    email: str
    name: str | None
    period: str
    message_id: str
    more_count: int
    attempts: int  # delivery attempts before this run's (more than 0: this send is a retry)
    items: tuple[StoredItem, ...]  # the matched section
    trending: tuple[StoredItem, ...] = ()  # the "Trending" section
    frequency: str = "daily"
    window_start: datetime | None = None
    window_end: datetime | None = None


JSON_READ_CACHE = 8192
"""Distinct JSON texts of the item columns kept decoded (matched terms, spans; a few MB)."""


@functools.lru_cache(maxsize=JSON_READ_CACHE)
def _terms(text: str | None) -> tuple[str, ...]:
    """The `matched` column's JSON text, decoded: once per distinct text, as many subscribers'
    items share terms (the reverse of _JsonCache)."""
    return tuple(json.loads(text) or ()) if text else ()


@functools.lru_cache(maxsize=JSON_READ_CACHE)
def _spans(text: str | None) -> tuple[tuple[int, int], ...]:
    """A spans column's JSON text, decoded into (start, end) pairs: once per distinct text."""
    return tuple((int(a), int(b)) for a, b in json.loads(text) or ()) if text else ()


@functools.cache
def _load_statements(dialect: str) -> tuple[sa.Select[Any], sa.Select[Any]]:
    """load_digests' two queries for `dialect`, built once (building and compiling a statement
    cost more than running it on a batch): the digests with their subscriber, and their items
    in digest order, each for the batch's ids given as the parameter "ids"."""
    digests, people, items_t = table_of(Digest), table_of(Subscriber), table_of(DigestItem)
    digest_rows = (
        sa.select(
            digests.c.id,
            people.c.email,
            people.c.name,
            digests.c.period,
            digests.c.message_id,
            digests.c.more_count,
            digests.c.attempts,
            digests.c.frequency,
            digests.c.window_start,
            digests.c.window_end,
        )
        .join(people, people.c.id == digests.c.subscriber_id)
        .where(within_param(dialect, digests.c.id, "ids"))
    )
    item_rows = (
        sa.select(
            items_t.c.digest_id,
            items_t.c.arxiv_id,
            items_t.c.section,
            items_t.c.position,
            items_t.c.upvotes,
            # as text, decoded by _terms and _spans: once per distinct value, not per item
            sa.cast(items_t.c.matched, sa.Text).label("matched"),
            sa.cast(items_t.c.title_spans, sa.Text).label("title_spans"),
            sa.cast(items_t.c.summary_spans, sa.Text).label("summary_spans"),
        )
        .where(within_param(dialect, items_t.c.digest_id, "ids"))
        .order_by(items_t.c.digest_id, items_t.c.position)
    )
    return digest_rows, item_rows


def load_digests(
    db: Session | sa.Connection,
    ids: Sequence[int],
    *,
    known: Mapping[str, Paper] | None = None,
) -> tuple[dict[int, StoredDigest], dict[str, Paper]]:
    """The digests `ids` (by id) and the papers they hold (by arXiv id) that are not in `known`.

    Three Core queries a batch (digests with their subscriber, items, missing papers): a delivery
    run passes the papers it has read already as `known`, so each paper is read once a run.
    """
    wanted = list(ids)
    digest_rows, item_rows = _load_statements(dialect_of(db))
    rows = db.execute(digest_rows, {"ids": wanted}).all()
    items: dict[int, list[StoredItem]] = {i: [] for i in wanted}
    for digest_id, arxiv_id, section, position, upvotes, matched, title, summary in db.execute(
        item_rows, {"ids": wanted}
    ):
        items[digest_id].append(
            StoredItem(
                arxiv_id,
                section,
                position,
                upvotes,
                _terms(matched),
                _spans(title),
                _spans(summary),
            )
        )
    have = known or {}
    missing = {it.arxiv_id for its in items.values() for it in its if it.arxiv_id not in have}
    papers: dict[str, Paper] = {}
    if missing:
        if isinstance(db, Session):
            papers = papers_by_id(db, missing)
        else:
            with Session(bind=db, expire_on_commit=False) as session:
                papers = papers_by_id(session, missing)
                session.expunge_all()
    gone = missing.difference(papers)
    if gone:  # no foreign key holds them (migration 0012): a paper deleted by hand
        for digest_id, its in items.items():
            for it in its:
                if it.arxiv_id in gone:
                    log.warning(
                        "digest %d: paper %s is no longer in the database; sent without it",
                        digest_id,
                        it.arxiv_id,
                        extra={"digest_id": digest_id, "paper": it.arxiv_id},
                    )
            items[digest_id] = [it for it in its if it.arxiv_id not in gone]
    out: dict[int, StoredDigest] = {}
    for r in rows:
        its = items[r.id]
        out[r.id] = StoredDigest(
            id=r.id,
            email=r.email,
            name=r.name,
            period=r.period,
            message_id=r.message_id,
            more_count=r.more_count,
            attempts=r.attempts,
            items=tuple(it for it in its if it.section != TRENDING),
            trending=tuple(it for it in its if it.section == TRENDING),
            frequency=r.frequency,
            window_start=r.window_start,
            window_end=r.window_end,
        )
    return out, papers


@contextlib.contextmanager
def connect(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A connection kept for a delivery run (errors as db.session_scope's).

    On PostgreSQL the run's commits (its claims, each digest's outcome) do not wait for the
    server's disk: synchronous_commit is off on this connection while the run holds it, and
    reset when the run gives it back (the unsubscribe endpoint's and planning's commits keep the
    server's own setting). That is the durability SQLite has in WAL mode with synchronous =
    NORMAL (db.py): a crash of digestbot loses no commit; a crash of the database server or of
    its machine can lose the last fraction of a second of them (at most three times the server's
    wal_writer_delay, 0.6 s by default), whose digests are then sent again, never skipped.
    Waiting for the disk at every outcome made a 20,000-subscriber run a third slower.
    """
    try:
        conn = engine.connect()
    except DBAPIError as exc:
        raise database_error(engine, exc, doing="connect to") from None
    with conn:
        postgres = conn.dialect.name == "postgresql"
        if postgres:
            try:
                conn.exec_driver_sql("SET synchronous_commit = off")
                conn.commit()
            except DBAPIError as exc:
                raise database_error(engine, exc, doing="connect to") from None
        try:
            yield conn
        finally:
            if postgres:
                _reset_commit_mode(conn)


def _reset_commit_mode(conn: sa.Connection) -> None:
    """The server's own synchronous_commit again on a run's connection, before the pool takes it
    back; a connection that cannot say so (the server gone) is dropped from the pool instead."""
    if conn.invalidated:
        return
    try:
        if conn.in_transaction():
            conn.rollback()
        conn.exec_driver_sql("RESET synchronous_commit")
        conn.commit()
    except DBAPIError:
        conn.invalidate()


@contextlib.contextmanager
def session_on(conn: sa.Connection) -> Iterator[Session]:
    """An ORM session inside the transaction open on `conn` (the rare outcomes that use the ORM);
    the session's changes are flushed when the block ends, and committed with that transaction."""
    with Session(bind=conn, expire_on_commit=False) as session:
        yield session
        session.flush()


@contextlib.contextmanager
def transaction(conn: sa.Connection, *, read_only: bool = False) -> Iterator[sa.Connection]:
    """One transaction on a delivery run's kept connection: committed when the block ends, rolled
    back on error; a failure of the database itself becomes one DatabaseError line (as
    db.session_scope). Between blocks the connection holds no transaction and no lock.

    `read_only`: the block only reads; on SQLite it then takes no write lock, so the other
    workers' claims and outcomes go on meanwhile.
    """
    try:
        if read_only:
            conn.execution_options(**{READ_ONLY: True})
        try:
            with conn.begin():
                yield conn
        finally:
            if read_only:
                conn.execution_options(**{READ_ONLY: False})
    except DBAPIError as exc:
        raise database_error(conn.engine, exc, doing="read or write") from None


ANALYZE_AFTER = 1000
"""A planning run that stores at least this many digests refreshes PostgreSQL's statistics of
the outbox (refresh_statistics)."""


def refresh_statistics(session: Session) -> None:
    """PostgreSQL: ANALYZE the outbox after a large planning run. With statistics from before it
    (autovacuum waits for a tenth of the table to change), the planner takes the new rows for a
    handful: it answered each claim by sorting every planned digest (27 ms a claim at 14,000
    due), and read a batch's items with a parallel scan of all of them (60 ms a batch at 700,000
    items). SQLite plans these from the indexes alone."""
    conn = session.connection()
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("ANALYZE digests, digest_items")


def period_state(session: Session, *, subscriber_id: int, period: str) -> str | None:
    """The state of the subscriber's digest for `period`, or None when there is none."""
    state = session.execute(
        sa.select(col(Digest.state)).where(
            col(Digest.subscriber_id) == subscriber_id, col(Digest.period) == period
        )
    ).scalar()
    return None if state is None else str(state)


def next_unsent(session: Session, *, subscriber_id: int) -> int | None:
    """The id of the subscriber's oldest stored digest not sent yet (what a preview shows)."""
    unsent = (DigestState.PLANNED, DigestState.DEFERRED, DigestState.SENDING, DigestState.FAILED)
    return session.execute(
        sa.select(col(Digest.id))
        .where(col(Digest.subscriber_id) == subscriber_id, col(Digest.state).in_(unsent))
        .order_by(col(Digest.id))
        .limit(1)
    ).scalar()


# -- claiming -------------------------------------------------------------------------------


def worker_id() -> str:
    """Who holds a claim: host, pid and the process start time (so a reused pid is not mistaken)."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid())}"


def _start_time(pid: int) -> str:
    return _proc_stat(pid, 19)


def _proc_stat(pid: int, index: int) -> str:
    """A field of /proc/PID/stat counted after the command name (0: state, 19: start time); "?" if unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().rsplit(b")", 1)[1].split()
        return stat[index].decode()
    except (OSError, IndexError):
        return "?"


def _holder_is_dead(claimed_by: str | None) -> bool:
    if not claimed_by:
        return True
    try:
        host, pid_s, started = claimed_by.rsplit(":", 2)
        pid = int(pid_s)
    except ValueError:
        return True
    if host != socket.gethostname():
        return False  # another machine: only its lease can expire
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    if _proc_stat(pid, 0) in ("Z", "X"):
        return True  # killed but not yet reaped by its parent: it will send nothing more
    return started != "?" and _start_time(pid) != started


def _in_state(state: DigestState) -> sa.ColumnElement[bool]:
    """`digests.state = '<state>'` with the state written into the SQL, not bound.

    The digests delivery and `retry` look for are found through partial indexes, one per state
    (models.Digest: ix_digests_planned, _deferred, _sending, _failed). PostgreSQL uses a partial index
    in a prepared statement's generic plan (psycopg prepares a statement after five runs) only
    when the statement itself names the index's state: with `state = $1` it read every digest.
    """
    return table_of(Digest).c.state == sa.literal_column(f"'{state.value}'")


def reclaim_orphans(session: Session, *, now: datetime) -> int:
    """Put back digests whose sender died mid-send (same host, dead pid) or whose lease ran out."""
    rows = session.exec(select(Digest).where(_in_state(DigestState.SENDING))).all()
    n = 0
    for d in rows:
        lease_over = d.lease_until is None or d.lease_until < now
        if lease_over or _holder_is_dead(d.claimed_by):
            _release(d)
            session.add(d)
            n += 1
    return n


def _release(d: Digest) -> None:
    d.state = DigestState.DEFERRED if d.attempts else DigestState.PLANNED
    d.claimed_by = None
    d.lease_until = None


class _DueState(NamedTuple):
    """One kind of due digest: which rows, the order claims take them in (an order an index
    holds, so a claim reads only the rows it takes), and whether that order is by id alone (a
    run's position then applies: claim's `after`)."""

    where: sa.ColumnElement[bool]
    order: tuple[sa.ColumnElement[Any], ...]
    by_id: bool


def _due_states(now: datetime) -> tuple[_DueState, ...]:
    """Digests to deliver now, in claim order: deferred with their retry time come, longest
    waiting first (ix_digests_deferred), then planned by id (ix_digests_planned)."""
    table = table_of(Digest)
    return (
        _DueState(
            sa.and_(_in_state(DigestState.DEFERRED), table.c.next_attempt_at <= now),
            (table.c.next_attempt_at, table.c.id),
            by_id=False,
        ),
        _DueState(_in_state(DigestState.PLANNED), (table.c.id,), by_id=True),
    )


def _deliverable() -> sa.ColumnElement[bool]:
    """The digest's subscriber is active (someone removed from the subscribers file gets nothing
    more, even a digest planned before) and their address is not on the suppression list.

    Tested per digest row (a primary-key and a unique-index lookup), so a claim that reads 20 rows
    does not first list every active or suppressed subscriber.
    """
    return _subscriber_active(~address_suppressed())


def _subscriber_active(*also: sa.ColumnElement[bool]) -> sa.ColumnElement[bool]:
    """The digest's subscriber is active (and meets `also`), looked up per digest row by its
    primary key: the digests are read along their own index, never through every subscriber."""
    digests, people = table_of(Digest), table_of(Subscriber)
    return (
        sa.select(people.c.id)
        .where(people.c.id == digests.c.subscriber_id, people.c.active.is_(True), *also)
        .exists()
    )


def count_due(
    session: Session, *, now: datetime, subscriber_ids: Sequence[int] | None = None
) -> int:
    """How many digests a delivery run started now would send (for the progress bar): due by
    state (_due_states) and deliverable (_deliverable).

    Counted state by state, each along its own partial index: SQLite reads no partial index for
    an OR of the states, and counted them by reading every digest ever stored.
    """
    total = 0
    for due in _due_states(now):
        stmt = sa.select(sa.func.count()).select_from(Digest).where(due.where, _deliverable())
        if subscriber_ids is not None:
            stmt = stmt.where(col(Digest.subscriber_id).in_(list(subscriber_ids)))
        total += int(session.execute(stmt).scalar_one())
    return total


def claim(
    db: Session | sa.Connection,
    *,
    now: datetime,
    me: str,
    limit: int,
    subscriber_ids: Sequence[int] | None = None,
    after: int | None = None,
) -> list[int]:
    """Atomically mark up to `limit` due digests as sending by `me`; returns their ids.

    `after`: planned digests are taken only past this id (a delivery run's position). The rows
    before it are mostly sent already; PostgreSQL keeps their old versions until vacuum and,
    with statistics from planning time, walked past every one of them on each claim.

    Deferred digests whose retry time has come go first (longest waiting first), then planned
    ones in id order. Per state, one UPDATE ... WHERE id IN (SELECT ... LIMIT [FOR UPDATE SKIP LOCKED]) RETURNING id: on
    SQLite it runs inside a BEGIN IMMEDIATE write transaction, on PostgreSQL rows another run holds
    are skipped. The pick walks an index in that order and stops at `limit`: a claim costs the
    same with 100 or 100,000 digests due.
    """
    table = table_of(Digest)
    postgres = dialect_of(db) == "postgresql"
    claimed: list[int] = []
    for due in _due_states(now):
        if len(claimed) >= limit:
            break
        where = due.where
        if after is not None and due.by_id:
            where = sa.and_(where, table.c.id > after)
        pick = (
            sa.select(table.c.id)
            .where(where, _deliverable())
            .order_by(*due.order)
            .limit(limit - len(claimed))
        )
        if subscriber_ids is not None:
            pick = pick.where(table.c.subscriber_id.in_(list(subscriber_ids)))
        if postgres:
            pick = pick.with_for_update(skip_locked=True, of=table)
        stmt = (
            table.update()
            .where(table.c.id.in_(pick.scalar_subquery()))
            .values(state=DigestState.SENDING, claimed_by=me, lease_until=now + LEASE)
            .returning(table.c.id)
        )
        claimed.extend(db.execute(stmt).scalars())
    return sorted(claimed)


def release(db: Session | sa.Connection, *, ids: Sequence[int], me: str) -> None:
    """Give back claimed digests untouched (the run stopped before attempting them): planned
    again, or deferred when an earlier run had attempted them."""
    table = table_of(Digest)
    for chunk in chunks(list(ids)):
        db.execute(
            table.update()
            .where(
                within(db, table.c.id, chunk),
                table.c.state == DigestState.SENDING,
                table.c.claimed_by == me,
            )
            .values(
                state=sa.case(
                    (table.c.attempts > 0, sa.literal(DigestState.DEFERRED.value)),
                    else_=sa.literal(DigestState.PLANNED.value),
                ),
                claimed_by=None,
                lease_until=None,
            )
        )


@functools.cache
def _mark_sent_statement() -> sa.Update:
    """record_sent's UPDATE, built once (it runs once per message) with bound parameters."""
    table = table_of(Digest)
    now = sa.bindparam("now", type_=UTCDateTime())
    return (
        table.update()
        .where(
            table.c.id == sa.bindparam("digest_id"),
            table.c.state == DigestState.SENDING,
            table.c.claimed_by == sa.bindparam("me"),
        )
        .values(
            state=DigestState.SENT,
            sent_at=now,
            attempts=table.c.attempts + 1,
            first_attempt_at=sa.func.coalesce(table.c.first_attempt_at, now),
            last_error=None,
            claimed_by=None,
            lease_until=None,
            next_attempt_at=None,
        )
    )


def record_sent(conn: sa.Connection, *, digest_id: int, me: str, now: datetime) -> Outcome:
    """Record that the backend accepted the digest, committed at once (it runs per message).

    TAKEN_OVER when another run took the digest back meanwhile (our lease ran out): the row is
    left to that run. Errors as transaction()'s.

    The UPDATE goes straight to the driver's connection, as SQLAlchemy compiled it once
    (_SentByDriver), outside any SQLAlchemy transaction:
    - SQLite: BEGIN IMMEDIATE (db.begin_immediate), the UPDATE and COMMIT: 210 us a message,
      where SQLAlchemy's transaction and execution of the same took 320;
    - PostgreSQL: the UPDATE alone in autocommit, one round trip to the server instead of three
      (BEGIN, the UPDATE, COMMIT); a single statement is atomic by itself. Switching the
      SQLAlchemy connection to autocommit and back instead kept two callbacks per switch on the
      connection until it went back to the pool, at the end of the run: about 1 KB a message,
      100 MB over 100,000.
    """
    values = {"digest_id": digest_id, "me": me, "now": now}
    try:
        rowcount = _SentByDriver.of(conn.dialect).run(conn, values)
    except DBAPIError as exc:
        raise database_error(conn.engine, exc, doing="write") from None
    return Outcome.SENT if rowcount else Outcome.TAKEN_OVER


@dataclass(frozen=True, slots=True)
class _SentByDriver:
    """record_sent's UPDATE for the driver (sqlite3 or psycopg): the SQL as SQLAlchemy compiled
    _mark_sent_statement for the dialect, the order of its parameters (None: the driver takes
    them by name), its constants already converted, and the conversion of each value a call
    gives (the column types' own bind processors, store.bind_processor), so the values stored
    are the ones SQLAlchemy would have stored."""

    sqlite: bool
    sql: str
    names: tuple[str, ...] | None  # the parameters in the statement's order (a name can recur)
    fixed: Mapping[str, Any]  # the statement's constants (the states, None...), converted
    convert: Mapping[str, Any]  # per value a call gives: its type's bind processor, or None

    @staticmethod
    @functools.cache
    def of(dialect: sa.Dialect) -> _SentByDriver:
        compiled = _mark_sent_statement().compile(dialect=dialect)
        fixed: dict[str, Any] = {}
        convert: dict[str, Any] = {}
        for name, bind in compiled.binds.items():
            processor = bind_processor(bind.type, dialect)
            if bind.required:  # given by each call
                convert[name] = processor
            else:
                value = bind.effective_value
                fixed[name] = value if processor is None else processor(value)
        return _SentByDriver(
            sqlite=dialect.name == "sqlite",
            sql=str(compiled),
            names=tuple(compiled.positiontup) if compiled.positiontup else None,
            fixed=fixed,
            convert=convert,
        )

    def run(self, conn: sa.Connection, values: Mapping[str, Any]) -> int:
        """Execute and commit on its own; the number of rows changed (0 or 1)."""
        given = dict(self.fixed)
        for name, value in values.items():
            convert = self.convert[name]
            given[name] = value if convert is None else convert(value)
        args: Any = [given[n] for n in self.names] if self.names is not None else given
        raw: Any = conn.connection.dbapi_connection
        try:
            if self.sqlite:
                return _run_sqlite(raw, self.sql, args)
            raw.autocommit = True  # between the run's transactions: none is open here
            try:
                with raw.execute(self.sql, args) as cursor:
                    return int(cursor.rowcount)
            finally:
                raw.autocommit = False
        except conn.dialect.loaded_dbapi.Error as exc:
            raise DBAPIError(None, None, exc) from exc


def _run_sqlite(raw: sqlite3.Connection, sql: str, args: Sequence[Any]) -> int:
    """`sql` in a write transaction of its own (BEGIN IMMEDIATE ... COMMIT); the rows changed."""
    begin_immediate(raw)
    try:
        rowcount = int(raw.execute(sql, args).rowcount)
        raw.execute("COMMIT")
    except BaseException:
        if raw.in_transaction:
            raw.execute("ROLLBACK")
        raise
    return rowcount


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    initial: float = 60.0
    maximum: float = 3600.0
    give_up: float = 86400.0

    def delay(self, attempts: int, rng: random.Random | None = None) -> float:
        """Exponential backoff with jitter: base doubles per attempt up to `maximum`, then 50–100 %."""
        base = min(self.maximum, self.initial * (2 ** max(0, attempts - 1)))
        return base * (0.5 + 0.5 * (rng or random).random())


def _attempted(
    session: Session, *, digest_id: int, me: str, now: datetime, error: str
) -> Digest | None:
    """Count a failed attempt on a digest this run still holds (None if another run took it back)."""
    d = session.get(Digest, digest_id)
    if d is None or d.state != DigestState.SENDING or d.claimed_by != me:
        return None
    d.attempts += 1
    d.first_attempt_at = d.first_attempt_at or now
    d.last_error = error
    d.claimed_by = None
    d.lease_until = None
    d.next_attempt_at = None
    return d


def mark_temporary_failure(
    session: Session, *, digest_id: int, me: str, now: datetime, error: str, policy: RetryPolicy
) -> Outcome:
    """Defer with backoff, or fail once the give-up time since the first attempt has passed.

    TAKEN_OVER (nothing written) when another run took the digest back meanwhile.
    """
    d = _attempted(session, digest_id=digest_id, me=me, now=now, error=error)
    if d is None:
        return Outcome.TAKEN_OVER
    assert d.first_attempt_at is not None
    if (now - d.first_attempt_at).total_seconds() >= policy.give_up:
        d.state = DigestState.FAILED
        d.last_error = f"gave up after {d.attempts} attempts: {error}"
        outcome = Outcome.FAILED
    else:
        d.state = DigestState.DEFERRED
        d.next_attempt_at = now + timedelta(seconds=policy.delay(d.attempts))
        outcome = Outcome.DEFERRED
    session.add(d)
    return outcome


def mark_failed(session: Session, *, digest_id: int, me: str, now: datetime, error: str) -> Outcome:
    """A permanent failure: the server's reply is kept, and only `digestbot retry` requeues it.

    TAKEN_OVER (nothing written) when another run took the digest back meanwhile.
    """
    d = _attempted(session, digest_id=digest_id, me=me, now=now, error=error)
    if d is None:
        return Outcome.TAKEN_OVER
    d.state = DigestState.FAILED
    session.add(d)
    return Outcome.FAILED


def extend_lease(
    db: Session | sa.Connection, *, ids: Sequence[int], me: str, now: datetime
) -> None:
    """Keep holding digests still waiting in this run's batch (slow servers, low rate limits)."""
    table = table_of(Digest)
    conn = db.connection() if isinstance(db, Session) else db
    for chunk in chunks(list(ids)):
        conn.execute(
            table.update()
            .where(
                within(conn, table.c.id, chunk),
                table.c.state == DigestState.SENDING,
                table.c.claimed_by == me,
            )
            .values(lease_until=now + LEASE)
        )


@dataclass(frozen=True, slots=True)
class Requeued:
    """How many digests `digestbot retry` made due again."""

    failed: int
    deferred: int


def requeue(
    session: Session,
    *,
    subscriber_ids: Sequence[int] | None,
    now: datetime,
    failed_only: bool = False,
) -> Requeued:
    """`digestbot retry`: make failed (and, unless `failed_only`, deferred) digests due at `now`.

    A failed digest goes back to planned with a fresh attempt budget. A deferred digest stays
    deferred with its attempts (so its send counts as a retry) but is due at once, and its
    give-up time counts from its next attempt.
    """
    table = table_of(Digest)

    def _update(current: DigestState, /, **values: object) -> int:
        stmt = table.update().where(_in_state(current)).values(**values)
        if subscriber_ids is not None:
            stmt = stmt.where(table.c.subscriber_id.in_(list(subscriber_ids)))
        return session.connection().execute(stmt).rowcount or 0

    failed = _update(
        DigestState.FAILED,
        state=DigestState.PLANNED,
        attempts=0,
        first_attempt_at=None,
        next_attempt_at=now,
    )
    deferred = (
        0
        if failed_only
        else _update(DigestState.DEFERRED, first_attempt_at=None, next_attempt_at=now)
    )
    return Requeued(failed=failed, deferred=deferred)


def requeue_failed(session: Session, *, subscriber_ids: Sequence[int] | None, now: datetime) -> int:
    """Failed digests only go back to planned (`digestbot retry --failed-only`)."""
    return requeue(session, subscriber_ids=subscriber_ids, now=now, failed_only=True).failed


@dataclass(frozen=True, slots=True)
class Waiting:
    """Deferred digests whose retry time has not come yet."""

    count: int
    next_at: datetime | None


def waiting_for_retry(
    session: Session, *, now: datetime, subscriber_ids: Sequence[int] | None = None
) -> Waiting:
    """How many deferred digests wait for a later retry (of active subscribers), and the soonest time.

    The subscriber is checked per digest (_subscriber_active), so the deferred digests are read
    along their partial index; with `IN (active subscribers)` SQLite went the other way, through
    every subscriber."""
    stmt = sa.select(
        sa.func.count(), sa.func.min(col(Digest.next_attempt_at), type_=UTCDateTime())
    ).where(
        _in_state(DigestState.DEFERRED),
        col(Digest.next_attempt_at) > now,
        _subscriber_active(),
    )
    if subscriber_ids is not None:
        stmt = stmt.where(col(Digest.subscriber_id).in_(list(subscriber_ids)))
    count, next_at = session.execute(stmt).one()
    return Waiting(count=int(count), next_at=next_at)


# -- whether the backend works at all --------------------------------------------------------


def _health_row(session: Session) -> DeliveryHealth:
    """The one delivery_health row, created if missing (concurrent runs may both try: no conflict)."""
    session.execute(
        dialect_insert(session, table_of(DeliveryHealth))
        .values(id=1, errors_in_a_row=0)
        .on_conflict_do_nothing(index_elements=["id"])
    )
    row = session.get(DeliveryHealth, 1, populate_existing=True)
    assert row is not None
    return row


def record_delivery_error(session: Session, *, error: str, now: datetime) -> None:
    """A delivery run could not use the backend at all (nothing was attempted): keep why and when."""
    row = _health_row(session)
    if not row.failing:
        row.failing_since = now
        row.errors_in_a_row = 0
    row.errors_in_a_row += 1
    row.last_error = error
    row.last_error_at = now
    session.add(row)


def record_delivery_ok(session: Session, *, now: datetime) -> None:
    """The backend answered a message (accepted or refused it): an earlier error is superseded."""
    row = _health_row(session)
    row.last_ok_at = now
    row.failing_since = None
    row.errors_in_a_row = 0
    session.add(row)
