"""Reads and writes of papers, subscribers and fetch runs. Plain keyword-only functions over a Session."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from digestbot.models import Digest, DigestItem, FetchRun, Paper, Subscriber
from digestbot.sources.base import FetchedPaper

CHUNK = 500
# Fields a later fetch may change; title, abstract, authors and featured_at are kept as first seen.
_MUTABLE = (
    "upvotes",
    "num_comments",
    "github_repo",
    "github_stars",
    "project_page",
    "ai_summary",
    "ai_keywords",
)


def dialect_insert(session: Session, table: Any) -> Any:
    """An INSERT that supports ON CONFLICT for the session's dialect (SQLite or PostgreSQL)."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"unsupported database dialect {name!r}")


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# -- papers ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoreResult:
    new: int
    updated: int


def upsert_papers(
    session: Session, *, papers: Sequence[FetchedPaper], now: datetime
) -> StoreResult:
    """Insert new papers and update what changes on known ones; counts what was new and what changed."""
    by_id = {p.arxiv_id: p for p in papers}
    existing: dict[str, Paper] = {}
    for ids in chunks(sorted(by_id)):
        for row in session.exec(select(Paper).where(col(Paper.arxiv_id).in_(ids))):
            existing[row.arxiv_id] = row
    new_rows = [_paper_values(p, now) for arxiv_id, p in by_id.items() if arxiv_id not in existing]
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
    for arxiv_id, row in existing.items():
        fresh = _paper_values(by_id[arxiv_id], now)
        changes = {k: fresh[k] for k in _MUTABLE if getattr(row, k) != fresh[k]}
        if changes:
            for key, value in changes.items():
                setattr(row, key, value)
            row.updated_at = now
            session.add(row)
            updated += 1
    session.flush()
    return StoreResult(new=new, updated=updated)


def _paper_values(p: FetchedPaper, now: datetime) -> dict[str, Any]:
    return {
        "arxiv_id": p.arxiv_id,
        "title": p.title,
        "summary": p.summary,
        "authors": list(p.authors),
        "published_at": p.published_at,
        "featured_at": p.featured_at,
        "upvotes": p.upvotes,
        "num_comments": p.num_comments,
        "github_repo": p.github_repo,
        "github_stars": p.github_stars,
        "project_page": p.project_page,
        "ai_summary": p.ai_summary,
        "ai_keywords": list(p.ai_keywords),
        "categories": list(p.categories),
        "first_seen_at": now,
        "updated_at": now,
    }


def papers_featured_between(session: Session, *, start: datetime, end: datetime) -> list[Paper]:
    """Papers featured in [start, end), oldest first."""
    stmt = (
        select(Paper)
        .where(Paper.featured_at >= start, Paper.featured_at < end)
        .order_by(col(Paper.featured_at), col(Paper.arxiv_id))
    )
    return list(session.exec(stmt))


def papers_by_id(session: Session, ids: Iterable[str]) -> dict[str, Paper]:
    out: dict[str, Paper] = {}
    for chunk in chunks(sorted(set(ids))):
        for row in session.exec(select(Paper).where(col(Paper.arxiv_id).in_(chunk))):
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
    new: int = 0,
    updated: int = 0,
    error: str | None = None,
) -> None:
    session.add(
        FetchRun(
            feed_url=feed_url,
            started_at=started_at,
            finished_at=finished_at,
            ok=ok,
            new_count=new,
            updated_count=updated,
            error=error,
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

    Returns email → id for everyone in `people`.
    """
    wanted = {email: name for email, name in people}
    current = {
        row.email: row
        for row in session.exec(select(Subscriber))  # one pass; at 100k rows this is a few MB
    }
    inserts = [
        {"email": e, "name": n, "active": True, "created_at": now, "updated_at": now}
        for e, n in wanted.items()
        if e not in current
    ]
    for rows in chunks(inserts):
        stmt = dialect_insert(session, Subscriber).values(list(rows))
        session.execute(stmt.on_conflict_do_nothing(index_elements=["email"]))
    for email, row in current.items():
        if email in wanted:
            if row.name != wanted[email] or not row.active:
                row.name, row.active, row.updated_at = wanted[email], True, now
                session.add(row)
        elif row.active:
            row.active, row.updated_at = False, now
            session.add(row)
    session.flush()
    ids: dict[str, int] = {}
    for emails in chunks(sorted(wanted)):
        for sid, email in session.execute(
            sa.select(Subscriber.id, Subscriber.email).where(col(Subscriber.email).in_(emails))
        ):
            ids[email] = sid
    return ids


def subscriber_records(session: Session, ids: Iterable[int]) -> dict[int, SubscriberRecord]:
    out: dict[int, SubscriberRecord] = {}
    for chunk in chunks(sorted(set(ids))):
        for sid, email, name in session.execute(
            sa.select(Subscriber.id, Subscriber.email, Subscriber.name).where(
                col(Subscriber.id).in_(chunk)
            )
        ):
            out[sid] = SubscriberRecord(id=sid, email=email, name=name)
    return out


# -- status ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Status:
    last_fetch: FetchRun | None
    last_good_fetch: FetchRun | None
    papers: int
    subscribers: int
    digests_by_state: dict[str, int]
    problems: list[
        tuple[str, str, str, int, str | None, datetime | None]
    ]  # email, period, state, attempts, error, next


def last_good_fetch(session: Session) -> FetchRun | None:
    """The newest fetch that worked (the daemon catches up from there after downtime)."""
    return session.exec(
        select(FetchRun)
        .where(col(FetchRun.ok).is_(True))
        .order_by(col(FetchRun.id).desc())
        .limit(1)
    ).first()


def status(session: Session, *, problem_limit: int = 50) -> Status:
    last = session.exec(select(FetchRun).order_by(col(FetchRun.id).desc()).limit(1)).first()
    last_ok = last_good_fetch(session)
    papers = session.execute(sa.select(sa.func.count()).select_from(Paper)).scalar_one()
    subs = session.execute(
        sa.select(sa.func.count()).select_from(Subscriber).where(col(Subscriber.active).is_(True))
    ).scalar_one()
    by_state = dict(
        tuple(r)
        for r in session.execute(sa.select(Digest.state, sa.func.count()).group_by(Digest.state))
    )
    problems = [
        tuple(r)
        for r in session.execute(
            sa.select(
                Subscriber.email,
                Digest.period,
                Digest.state,
                Digest.attempts,
                Digest.last_error,
                Digest.next_attempt_at,
            )
            .join(Subscriber, Subscriber.id == Digest.subscriber_id)
            .where(col(Digest.state).in_(("deferred", "failed")))
            .order_by(col(Digest.id).desc())
            .limit(problem_limit)
        )
    ]
    return Status(
        last_fetch=last,
        last_good_fetch=last_ok,
        papers=papers,
        subscribers=subs,
        digests_by_state=by_state,
        problems=problems,  # type: ignore[arg-type]
    )


def sent_paper_count(session: Session) -> int:
    return session.execute(
        sa.select(sa.func.count())
        .select_from(DigestItem)
        .join(Digest, Digest.id == DigestItem.digest_id)
        .where(Digest.state == "sent")
    ).scalar_one()
