"""The digest outbox: planning rows idempotently, claiming them for delivery, recording outcomes.

States: planned → sending → sent; sending → deferred (retry at next_attempt_at) → sending ...;
sending → failed (permanent); skipped (nothing matched, nothing to send). Uniqueness lives in the
database: one digest per (subscriber, period) and one item per (subscriber, paper).
"""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlmodel import Session, col, select

from digestbot.matching import Match
from digestbot.models import Digest, DigestItem, Subscriber, UTCDateTime
from digestbot.store import chunks, dialect_insert

PLANNED, SENDING, SENT, DEFERRED, FAILED, SKIPPED = (
    "planned",
    "sending",
    "sent",
    "deferred",
    "failed",
    "skipped",
)
LEASE = timedelta(minutes=30)


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

    @property
    def state(self) -> str:
        return PLANNED if self.items or self.send_empty else SKIPPED


def store_plans(session: Session, *, plans: Sequence[DigestPlan], now: datetime) -> int:
    """Insert digests and their items; a (subscriber, period) that already has a digest is left alone.

    Rows go in as executemany batches (one statement compiled, many parameter sets). Returns how
    many digests were inserted by this call.
    """
    conn = session.connection()
    digests = Digest.__table__
    insert_digest = (
        dialect_insert(session, digests)
        .on_conflict_do_nothing(index_elements=["subscriber_id", "period"])
        .returning(digests.c.id, digests.c.subscriber_id)
    )
    insert_item = dialect_insert(session, DigestItem.__table__).on_conflict_do_nothing(
        index_elements=["subscriber_id", "arxiv_id"]
    )
    inserted = 0
    for batch in chunks(list(plans)):
        rows = [
            {
                "subscriber_id": p.subscriber_id,
                "period": p.period,
                "state": p.state,
                "window_start": p.window_start,
                "window_end": p.window_end,
                "paper_count": len(p.items),
                "more_count": p.more_count,
                "message_id": p.message_id,
                "attempts": 0,
                "planned_at": now,
                "next_attempt_at": now,
            }
            for p in batch
        ]
        ids = {sid: did for did, sid in conn.execute(insert_digest, rows)}
        inserted += len(ids)
        items = [
            {
                "digest_id": ids[p.subscriber_id],
                "subscriber_id": p.subscriber_id,
                "arxiv_id": it.arxiv_id,
                "position": pos,
                "score": it.score,
                "upvotes": it.upvotes,
                "matched": list(it.matched),
                "title_spans": [list(s) for s in it.title_spans],
                "summary_spans": [list(s) for s in it.summary_spans],
            }
            for p in batch
            if p.subscriber_id in ids
            for pos, it in enumerate(p.items)
        ]
        if items:
            conn.execute(insert_item, items)
    return inserted


def last_windows(
    session: Session, subscriber_ids: Sequence[int]
) -> dict[int, tuple[datetime, datetime]]:
    """For each subscriber with a digest: where its latest window ended and when it was planned."""
    out: dict[int, tuple[datetime, datetime]] = {}
    end = sa.func.max(Digest.window_end, type_=UTCDateTime())
    planned = sa.func.max(Digest.planned_at, type_=UTCDateTime())
    for chunk in chunks(list(subscriber_ids)):
        stmt = (
            sa.select(Digest.subscriber_id, end, planned)
            .where(col(Digest.subscriber_id).in_(chunk))
            .group_by(Digest.subscriber_id)
        )
        out.update((sid, (e, p)) for sid, e, p in session.execute(stmt))
    return out


def existing_periods(session: Session, pairs: Sequence[tuple[int, str]]) -> set[tuple[int, str]]:
    """Which (subscriber, period) pairs already have a digest."""
    found: set[tuple[int, str]] = set()
    for chunk in chunks(list(pairs)):
        sids = sorted({sid for sid, _ in chunk})
        periods = sorted({p for _, p in chunk})
        stmt = sa.select(Digest.subscriber_id, Digest.period).where(
            col(Digest.subscriber_id).in_(sids), col(Digest.period).in_(periods)
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
            stmt = sa.select(DigestItem.subscriber_id, DigestItem.arxiv_id).where(
                col(DigestItem.subscriber_id).in_(people), col(DigestItem.arxiv_id).in_(ids)
            )
            held.update((sid, aid) for sid, aid in session.execute(stmt))
    return held


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


def reclaim_orphans(session: Session, *, now: datetime) -> int:
    """Put back digests whose sender died mid-send (same host, dead pid) or whose lease ran out."""
    rows = session.exec(select(Digest).where(Digest.state == SENDING)).all()
    n = 0
    for d in rows:
        lease_over = d.lease_until is None or d.lease_until < now
        if lease_over or _holder_is_dead(d.claimed_by):
            _release(d)
            session.add(d)
            n += 1
    return n


def _release(d: Digest) -> None:
    d.state = DEFERRED if d.attempts else PLANNED
    d.claimed_by = None
    d.lease_until = None


def _due(now: datetime) -> sa.ColumnElement[bool]:
    """Digests to deliver now: planned, or deferred with their retry time come; of active subscribers
    only (someone removed from the subscribers file gets nothing more, even a digest planned before)."""
    active = sa.select(Subscriber.id).where(col(Subscriber.active).is_(True))
    return sa.and_(
        sa.or_(
            Digest.state == PLANNED,
            sa.and_(Digest.state == DEFERRED, col(Digest.next_attempt_at) <= now),
        ),
        col(Digest.subscriber_id).in_(active),
    )


def count_due(
    session: Session, *, now: datetime, subscriber_ids: Sequence[int] | None = None
) -> int:
    """How many digests a delivery run started now would send (for the progress bar)."""
    stmt = sa.select(sa.func.count()).select_from(Digest).where(_due(now))
    if subscriber_ids is not None:
        stmt = stmt.where(col(Digest.subscriber_id).in_(list(subscriber_ids)))
    return int(session.execute(stmt).scalar_one())


def claim(
    session: Session,
    *,
    now: datetime,
    me: str,
    limit: int,
    subscriber_ids: Sequence[int] | None = None,
) -> list[int]:
    """Atomically mark up to `limit` due digests as sending by `me`; returns their ids.

    One UPDATE ... WHERE id IN (SELECT ... [FOR UPDATE SKIP LOCKED]) RETURNING id: on SQLite the
    statement runs inside a BEGIN IMMEDIATE write transaction, on PostgreSQL locked rows are skipped.
    """
    pick = sa.select(Digest.id).where(_due(now)).order_by(col(Digest.id)).limit(limit)
    if subscriber_ids is not None:
        pick = pick.where(col(Digest.subscriber_id).in_(list(subscriber_ids)))
    if session.get_bind().dialect.name == "postgresql":
        pick = pick.with_for_update(skip_locked=True)
    stmt = (
        sa.update(Digest)
        .where(col(Digest.id).in_(pick.scalar_subquery()))
        .values(state=SENDING, claimed_by=me, lease_until=now + LEASE)
        .returning(Digest.id)
        .execution_options(synchronize_session=False)
    )
    return sorted(session.execute(stmt).scalars())


def release(session: Session, *, ids: Sequence[int], me: str) -> None:
    """Give back claimed digests untouched (the run stopped before attempting them)."""
    for chunk in chunks(list(ids)):
        for d in session.exec(
            select(Digest).where(
                col(Digest.id).in_(chunk), Digest.state == SENDING, Digest.claimed_by == me
            )
        ):
            _release(d)
            session.add(d)


def mark_sent(session: Session, *, digest_id: int, me: str, now: datetime) -> None:
    """Record that the backend accepted the digest (a Core UPDATE: this runs once per message)."""
    table = Digest.__table__
    session.connection().execute(
        table.update()
        .where(table.c.id == digest_id, table.c.claimed_by == me)
        .values(
            state=SENT,
            sent_at=now,
            attempts=table.c.attempts + 1,
            first_attempt_at=sa.func.coalesce(table.c.first_attempt_at, now),
            last_error=None,
            claimed_by=None,
            lease_until=None,
            next_attempt_at=None,
        )
    )


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
    if d is None or d.state != SENDING or d.claimed_by != me:
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
) -> str:
    """Defer with backoff, or fail once the give-up time since the first attempt has passed."""
    d = _attempted(session, digest_id=digest_id, me=me, now=now, error=error)
    if d is None:
        return SENDING
    assert d.first_attempt_at is not None
    if (now - d.first_attempt_at).total_seconds() >= policy.give_up:
        d.state = FAILED
        d.last_error = f"gave up after {d.attempts} attempts: {error}"
    else:
        d.state = DEFERRED
        d.next_attempt_at = now + timedelta(seconds=policy.delay(d.attempts))
    session.add(d)
    return d.state


def mark_failed(session: Session, *, digest_id: int, me: str, now: datetime, error: str) -> None:
    """A permanent failure: the server's reply is kept, and only `digestbot retry` requeues it."""
    d = _attempted(session, digest_id=digest_id, me=me, now=now, error=error)
    if d is not None:
        d.state = FAILED
        session.add(d)


def extend_lease(session: Session, *, ids: Sequence[int], me: str, now: datetime) -> None:
    """Keep holding digests still waiting in this run's batch (slow servers, low rate limits)."""
    table = Digest.__table__
    for chunk in chunks(list(ids)):
        session.connection().execute(
            table.update()
            .where(table.c.id.in_(chunk), table.c.state == SENDING, table.c.claimed_by == me)
            .values(lease_until=now + LEASE)
        )


def requeue_failed(session: Session, *, subscriber_ids: Sequence[int] | None, now: datetime) -> int:
    """`digestbot retry`: failed digests go back to planned, with a fresh attempt budget."""
    stmt = (
        sa.update(Digest)
        .where(Digest.state == FAILED)
        .values(state=PLANNED, attempts=0, first_attempt_at=None, next_attempt_at=now)
        .execution_options(synchronize_session=False)
    )
    if subscriber_ids is not None:
        stmt = stmt.where(col(Digest.subscriber_id).in_(list(subscriber_ids)))
    return session.execute(stmt).rowcount or 0
