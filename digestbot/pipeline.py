"""The only module that wires stages together: fetch_and_store, plan_digests, deliver_due.

The CLI and the daemon are thin front doors onto these functions. Every input (engine, source,
backend, clock) is passed in; nothing here reads the environment.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Protocol

import jinja2
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from digestbot import outbox, store
from digestbot.db import session_scope
from digestbot.errors import (
    ConfigError,
    FetchError,
    PermanentDeliveryError,
    TemporaryDeliveryError,
)
from digestbot.mail.backends import Backend, Envelope
from digestbot.mail.message import build_message, dkim_sign, make_message_id, message_bytes
from digestbot.matching import Match, PaperIndex, bulk_matching, compile_filter
from digestbot.models import Digest, DigestItem, Paper
from digestbot.render import DigestView, PaperView, Renderer
from digestbot.sources.base import WindowResult
from digestbot.subscribers import SubscriberSpec

log = logging.getLogger("digestbot")

PLAN_BATCH = 1000
MAX_WINDOW_DAYS = (
    30  # the oldest papers a digest can hold, in days before the run (or lookback, if longer)
)
CLAIM_BATCH = 20


# -- fetch ----------------------------------------------------------------------------------


class Source(Protocol):
    def fetch_days(self, *, today: date, lookback: int) -> WindowResult: ...


@dataclass(frozen=True, slots=True)
class FetchSummary:
    fetched: int
    new: int
    updated: int


def fetch_and_store(
    engine: Engine, *, source: Source, feed_url: str, today: date, lookback: int, now: datetime
) -> FetchSummary:
    """Fetch today and the previous `lookback` days, then store the good days in one transaction.

    Each day's response is validated whole before anything is written: a broken day stores
    nothing, the other days are stored, and then PartialFetchError names the bad day(s). The
    attempt and its outcome are recorded for `digestbot status` either way.
    """
    try:
        result = source.fetch_days(today=today, lookback=lookback)
    except FetchError as exc:
        with session_scope(engine) as s:
            store.record_fetch_run(
                s,
                feed_url=feed_url,
                started_at=now,
                finished_at=_utcnow(),
                ok=False,
                error=str(exc),
            )
        raise
    papers = list(result.papers)
    failed = result.error()
    with session_scope(engine) as s:
        stored = store.upsert_papers(s, papers=papers, now=now)
        store.record_fetch_run(
            s,
            feed_url=feed_url,
            started_at=now,
            finished_at=_utcnow(),
            ok=failed is None,
            new=stored.new,
            updated=stored.updated,
            error=str(failed) if failed else None,
        )
    if failed is not None:
        raise failed
    return FetchSummary(fetched=len(papers), new=stored.new, updated=stored.updated)


# -- subscribers ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Recipient:
    """A validated subscriber spec with its database id."""

    spec: SubscriberSpec
    id: int


def sync_subscribers(
    engine: Engine, specs: Sequence[SubscriberSpec], *, now: datetime
) -> list[Recipient]:
    """Store the subscribers file's people (new ones added, removed ones deactivated)."""
    with session_scope(engine) as s:
        ids = store.sync_subscribers(s, people=[(sp.email, sp.name) for sp in specs], now=now)
    return [Recipient(spec=sp, id=ids[sp.email]) for sp in specs]


def local_period(spec: SubscriberSpec, now: datetime) -> str:
    """The subscriber's local calendar date at `now`: one digest per subscriber per such date."""
    return now.astimezone(spec.tz).date().isoformat()


def is_due(spec: SubscriberSpec, now: datetime) -> bool:
    """Has the subscriber's send time passed today, in their own time zone?"""
    return now.astimezone(spec.tz).time() >= spec.send_at


# -- planning -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlanSummary:
    planned: int = 0
    skipped: int = 0
    existing: int = 0
    plans: tuple[outbox.DigestPlan, ...] = ()  # kept only when asked (dry runs, previews)


def compute_plans(
    session: Session,
    recipients: Sequence[Recipient],
    *,
    as_of: datetime,
    lookback: int,
    period: Callable[[SubscriberSpec], str],
    from_addr: str,
) -> Iterator[outbox.DigestPlan]:
    """Decide each recipient's digest for its period, without writing anything.

    A digest holds the papers that match the subscriber's filter, were never put in one of their
    digests before, and are new to them: featured since their previous digest's window ended, or
    stored by us since that digest was planned (a paper the feed featured earlier but we fetched
    late), within `lookback` days. A new subscriber starts `lookback` days back. Papers beyond
    max_papers are counted in the digest and not carried over. Recipients that already have a
    digest for the period are left out.
    """
    pairs = [(r.id, period(r.spec)) for r in recipients]
    have = outbox.existing_periods(session, pairs)
    todo = [(r, p) for r, (_, p) in zip(recipients, pairs, strict=True) if (r.id, p) not in have]
    if not todo:
        return
    grace = timedelta(days=lookback)
    # the day as_of falls in (as_of may be the exclusive end of a --date day), and lookback days before
    today = (as_of - timedelta(microseconds=1)).astimezone(UTC).date()
    first_day = datetime.combine(today, datetime.min.time(), tzinfo=UTC) - grace
    # A subscriber back after a long gap gets the last MAX_WINDOW_DAYS, not months of old papers.
    oldest = min(first_day, as_of - timedelta(days=MAX_WINDOW_DAYS))
    prev = {
        sid: (max(end, oldest + grace), planned_at)
        for sid, (end, planned_at) in outbox.last_windows(session, [r.id for r, _ in todo]).items()
    }
    papers = store.papers_featured_between(
        session, start=min([first_day] + [end - grace for end, _ in prev.values()]), end=as_of
    )
    by_id = {p.arxiv_id: p for p in papers}
    index = PaperIndex.build(papers)

    def is_new(sid: int, paper: Paper) -> bool:
        if sid not in prev:
            return paper.featured_at >= first_day
        end, planned_at = prev[sid]
        return paper.featured_at >= end or (
            paper.featured_at >= end - grace and paper.first_seen_at > planned_at
        )

    for offset in range(0, len(todo), PLAN_BATCH):
        batch = todo[offset : offset + PLAN_BATCH]
        found = {}
        with bulk_matching():
            for r, _ in batch:
                flt = compile_filter(
                    keywords=r.spec.keywords,
                    exclude=r.spec.exclude,
                    authors=r.spec.authors,
                    min_upvotes=r.spec.min_upvotes,
                )
                found[r.id] = [m for m in index.match(flt) if is_new(r.id, by_id[m.arxiv_id])]
        with_matches = [sid for sid, ms in found.items() if ms]
        held = outbox.already_held(
            session, with_matches, sorted({m.arxiv_id for sid in with_matches for m in found[sid]})
        )
        for r, p in batch:
            fresh = [m for m in found[r.id] if (r.id, m.arxiv_id) not in held]
            top = fresh[: r.spec.max_papers]
            yield outbox.DigestPlan(
                subscriber_id=r.id,
                email=r.spec.email,
                period=p,
                window_start=prev[r.id][0] if r.id in prev else first_day,
                window_end=as_of,
                items=tuple(top),
                more_count=len(fresh) - len(top),
                send_empty=r.spec.send_empty,
                message_id=make_message_id(
                    digest_key=f"{r.spec.email}/{p}/{r.id}", from_addr=from_addr
                ),
            )


def plan_digests(
    engine: Engine,
    recipients: Sequence[Recipient],
    *,
    as_of: datetime,
    lookback: int,
    period: Callable[[SubscriberSpec], str],
    from_addr: str,
    now: datetime,
) -> PlanSummary:
    """Compute and store the digests of `recipients` for their period (idempotent per period)."""
    planned = skipped = 0
    with session_scope(engine) as s:
        plans = list(
            compute_plans(
                s, recipients, as_of=as_of, lookback=lookback, period=period, from_addr=from_addr
            )
        )
    existing = len(recipients) - len(plans)
    for offset in range(0, len(plans), PLAN_BATCH):
        batch = plans[offset : offset + PLAN_BATCH]
        with session_scope(engine) as s:
            outbox.store_plans(s, plans=batch, now=now)
        planned += sum(1 for p in batch if p.state == outbox.PLANNED)
        skipped += sum(1 for p in batch if p.state == outbox.SKIPPED)
    return PlanSummary(planned=planned, skipped=skipped, existing=existing)


# -- rendering and delivery -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MailContext:
    """What every message of a run shares: renderer, sender, list headers, signing."""

    renderer: Renderer
    from_addr: str
    envelope_from: str
    list_name: str
    list_id: str
    unsubscribe_email: str
    unsubscribe_url: str | None = None  # template with {token} and/or {email}
    unsubscribe_secret: str | None = None
    dkim_selector: str | None = None
    dkim_domain: str | None = None
    dkim_key: bytes | None = field(default=None, repr=False)

    def unsubscribe_for(self, email: str) -> tuple[str, str | None]:
        mailto = f"mailto:{self.unsubscribe_email}?subject=unsubscribe"
        if not self.unsubscribe_url:
            return mailto, None
        token = hmac.new(
            (self.unsubscribe_secret or "").encode(), email.encode(), hashlib.sha256
        ).hexdigest()[:32]
        url = self.unsubscribe_url.replace("{token}", token).replace(
            "{email}", urllib.parse.quote(email, safe="")
        )
        return mailto, url


def digest_view(
    *,
    mail: MailContext,
    email: str,
    name: str | None,
    period: str,
    items: Sequence[DigestItem | Match],
    papers: dict[str, Paper],
    more_count: int,
) -> DigestView:
    """What one digest shows; `items` in digest order (stored items or a plan's matches)."""
    mailto, url = mail.unsubscribe_for(email)
    return DigestView(
        subscriber_email=email,
        subscriber_name=name,
        digest_date=date.fromisoformat(period),
        papers=tuple(paper_view(papers[it.arxiv_id], it) for it in items),
        more_count=more_count,
        list_name=mail.list_name,
        unsubscribe_mailto=mailto,
        unsubscribe_url=url,
    )


def paper_view(paper: Paper, item: DigestItem | Match) -> PaperView:
    return PaperView(
        arxiv_id=paper.arxiv_id,
        title=paper.title,
        summary=paper.summary,
        authors=tuple(paper.authors),
        upvotes=item.upvotes,
        github_repo=paper.github_repo,
        github_stars=paper.github_stars,
        project_page=paper.project_page,
        matched=tuple(item.matched),
        title_spans=tuple((int(a), int(b)) for a, b in item.title_spans),
        summary_spans=tuple((int(a), int(b)) for a, b in item.summary_spans),
    )


def render_plan(session: Session, plan: outbox.DigestPlan, *, mail: MailContext, name: str | None):  # type: ignore[no-untyped-def]
    """Render a digest that is planned but not stored (dry runs and previews)."""
    papers = store.papers_by_id(session, [it.arxiv_id for it in plan.items])
    view = digest_view(
        mail=mail,
        email=plan.email,
        name=name,
        period=plan.period,
        items=plan.items,
        papers=papers,
        more_count=plan.more_count,
    )
    return mail.renderer.render(view)


def compose(*, mail: MailContext, view: DigestView, message_id: str, date_: datetime) -> bytes:
    """Render and serialise one digest; DKIM-signed when configured."""
    rendered = mail.renderer.render(view)
    msg = build_message(
        rendered=rendered,
        from_addr=mail.from_addr,
        to_addr=view.subscriber_email,
        to_name=view.subscriber_name,
        message_id=message_id,
        date=date_,
        list_id=mail.list_id,
        unsubscribe_mailto=view.unsubscribe_mailto,
        unsubscribe_url=view.unsubscribe_url,
    )
    raw = message_bytes(msg)
    if mail.dkim_key and mail.dkim_selector and mail.dkim_domain:
        raw = dkim_sign(
            raw, selector=mail.dkim_selector, domain=mail.dkim_domain, private_key=mail.dkim_key
        )
    return raw


@dataclass
class DeliveryReport:
    """What a delivery run did, subscriber by subscriber."""

    sent: list[str] = field(default_factory=list)
    deferred: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    stopped: bool = False

    @property
    def ok(self) -> bool:
        return not self.deferred and not self.failed


class RateLimiter:
    """At most `rate` messages per second across a run (None: unlimited)."""

    def __init__(
        self,
        rate: float | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self.clock = clock
        self.sleep = sleep
        self._next = 0.0

    def wait(self) -> None:
        if not self.interval:
            return
        now = self.clock()
        if now < self._next:
            self.sleep(self._next - now)
            now = self._next
        self._next = now + self.interval


def deliver_due(
    engine: Engine,
    *,
    backend: Backend,
    mail: MailContext,
    policy: outbox.RetryPolicy,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    limiter: RateLimiter | None = None,
    subscriber_ids: Sequence[int] | None = None,
    on_result: Callable[[str, str], None] | None = None,
    stop: threading.Event | None = None,
) -> DeliveryReport:
    """Deliver every due digest (planned, and deferred whose retry time has come).

    Digests are claimed in the database a few at a time, so concurrent runs never send the same
    one. Each outcome is committed right after the backend answers. A setup failure (server
    unreachable, login refused, TLS) gives back every claimed digest unattempted and is raised.
    """
    me = outbox.worker_id()
    report = DeliveryReport()
    limiter = limiter or RateLimiter(None)
    with session_scope(engine) as s:
        reclaimed = outbox.reclaim_orphans(s, now=clock())
    if reclaimed:
        log.warning(
            "took back %d digest(s) left mid-send by a stopped run; sending them again", reclaimed
        )
    while True:
        if stop is not None and stop.is_set():
            report.stopped = True
            break
        with session_scope(engine) as s:
            ids = outbox.claim(
                s, now=clock(), me=me, limit=CLAIM_BATCH, subscriber_ids=subscriber_ids
            )
        if not ids:
            break
        with session_scope(engine) as s:
            batch = _load_batch(s, ids, mail=mail)
        pending = list(ids)
        renew_at = clock() + outbox.LEASE / 2
        try:
            for digest_id in ids:
                if stop is not None and stop.is_set():
                    report.stopped = True
                    break
                if clock() >= renew_at:
                    with session_scope(engine) as s:
                        outbox.extend_lease(s, ids=pending, me=me, now=clock())
                    renew_at = clock() + outbox.LEASE / 2
                email, message_id, view = batch[digest_id]
                outcome, error = _compose_and_send(
                    backend, mail, email, message_id, view, digest_id, clock(), limiter
                )
                with session_scope(engine) as s:
                    if outcome == "sent":
                        outbox.mark_sent(s, digest_id=digest_id, me=me, now=clock())
                        report.sent.append(email)
                    elif outcome == "temporary":
                        outcome = outbox.mark_temporary_failure(
                            s, digest_id=digest_id, me=me, now=clock(), error=error, policy=policy
                        )
                        (report.failed if outcome == outbox.FAILED else report.deferred).append(
                            (email, error)
                        )
                    else:
                        outbox.mark_failed(s, digest_id=digest_id, me=me, now=clock(), error=error)
                        report.failed.append((email, error))
                        outcome = outbox.FAILED
                pending.remove(digest_id)
                if outcome != "sent":
                    log.warning("digest for %s %s: %s", email, outcome, error)
                if on_result is not None:
                    on_result(email, outcome)
        finally:
            if pending:
                with session_scope(engine) as s:
                    outbox.release(s, ids=pending, me=me)
    return report


def _compose_and_send(
    backend: Backend,
    mail: MailContext,
    email: str,
    message_id: str,
    view: DigestView,
    digest_id: int,
    now: datetime,
    limiter: RateLimiter,
) -> tuple[str, str]:
    """Build and hand over one message; returns ("sent" | "temporary" | "permanent", reason).

    A problem of this one message (say, an address the mail library refuses) fails only this
    digest. Problems that would hit every message (a broken template override, the server
    unusable) are raised, and the caller gives the run's remaining digests back untouched.
    """
    try:
        raw = compose(mail=mail, view=view, message_id=message_id, date_=now)
    except jinja2.TemplateError as exc:
        raise ConfigError(
            f"cannot render the digest templates: {exc}", field="DIGESTBOT_TEMPLATES_DIR"
        ) from exc
    except (ValueError, ConfigError) as exc:
        return "permanent", f"could not build the message: {exc}"
    limiter.wait()
    name = f"{view.digest_date.isoformat()}_{digest_id:08d}"
    try:
        backend.send(Envelope(sender=mail.envelope_from, recipient=email, raw=raw, name=name))
    except TemporaryDeliveryError as exc:
        return "temporary", str(exc)
    except PermanentDeliveryError as exc:
        return "permanent", str(exc)
    return "sent", ""


def _load_batch(
    session: Session, ids: Sequence[int], *, mail: MailContext
) -> dict[int, tuple[str, str, DigestView]]:
    digests = {d.id: d for d in session.exec(select(Digest).where(col(Digest.id).in_(list(ids))))}
    people = store.subscriber_records(session, [d.subscriber_id for d in digests.values()])
    items: dict[int, list[DigestItem]] = {i: [] for i in ids}
    stmt = (
        select(DigestItem)
        .where(col(DigestItem.digest_id).in_(list(ids)))
        .order_by(col(DigestItem.digest_id), col(DigestItem.position))
    )
    for it in session.exec(stmt):
        items[it.digest_id].append(it)
    papers = store.papers_by_id(session, [it.arxiv_id for its in items.values() for it in its])
    out = {}
    for digest_id, d in digests.items():
        person = people[d.subscriber_id]
        view = digest_view(
            mail=mail,
            email=person.email,
            name=person.name,
            period=d.period,
            items=items[digest_id],
            papers=papers,
            more_count=d.more_count,
        )
        out[digest_id] = (person.email, d.message_id, view)
    return out


def pending_digest_view(
    engine: Engine, *, subscriber_id: int, mail: MailContext
) -> DigestView | None:
    """The subscriber's oldest stored digest that is not sent yet, as a view (for previews)."""
    with session_scope(engine) as s:
        digest_id = s.execute(
            sa.select(Digest.id)
            .where(
                Digest.subscriber_id == subscriber_id,
                col(Digest.state).in_(
                    (outbox.PLANNED, outbox.DEFERRED, outbox.SENDING, outbox.FAILED)
                ),
            )
            .order_by(col(Digest.id))
            .limit(1)
        ).scalar()
        if digest_id is None:
            return None
        return _load_batch(s, [digest_id], mail=mail)[digest_id][2]


def _utcnow() -> datetime:
    return datetime.now(UTC)
