"""The only module that wires stages together: fetch_and_store, plan_digests, deliver_due.

The CLI and the daemon are thin front doors onto these functions. Every input (engine, source,
backend, clock) is passed in; nothing here reads the environment or the wall clock, runs SQL or
builds a message: storage is in `store`/`outbox`, time in `schedule`, what a digest holds in
`planning`, messages in `mail`.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session

from digestbot import outbox, planning, schedule, store
from digestbot.addresses import address_key, smtp_address
from digestbot.db import session_scope
from digestbot.errors import (
    ConfigError,
    DeliverySetupError,
    DigestbotError,
    FetchError,
    PartialFetchError,
    PermanentDeliveryError,
    TemporaryDeliveryError,
)
from digestbot.mail.backends import Backend, Envelope
from digestbot.mail.context import MailContext, PaperViews, compose, digest_view
from digestbot.mail.ratelimit import RateLimiter
from digestbot.matching import Match, PaperIndex, compile_filter
from digestbot.models import DigestState, Paper, UnsubscribeMethod
from digestbot.planning import PLAN_BATCH, Recipient, compute_plans
from digestbot.render import DigestView, RenderedDigest
from digestbot.sources.base import FetchedPaper, Validators, WindowResult
from digestbot.subscribers import SubscriberSpec

log = logging.getLogger("digestbot")

CLAIM_BATCH = 100
"""Digests a delivery run claims, loads and builds at a time (_messages), at most. Each claim and
load costs a few milliseconds whatever its size, and messages built many in a row cost less
each; the batch's messages are held until sent: at 200, a worker process took 7 MB more than
sending each message as it was built (a few MB of messages, and the gaps between them in the
heap), which broke the 300 MB at 100,000 subscribers on PostgreSQL. A worker that stops
(kill -9, a host down) holds at most this many until they are taken back."""

CLAIM_MIN = 50
"""Digests: each of several workers claims its share of a run's due digests at a time, up to
CLAIM_BATCH, but not fewer than this (workers.claim_share); and a worker count that is set is
kept up to one worker per this many due digests (workers.workers_for)."""
Clock = Callable[[], datetime]


# -- fetch ----------------------------------------------------------------------------------


class Source(Protocol):
    """A source of papers (sources.hf_daily, sources.arxiv, sources.feed): fetches a window of days."""

    def fetch_days(
        self,
        *,
        today: date,
        lookback: int,
        since: datetime | None = None,
        validators: Validators | None = None,
    ) -> WindowResult: ...


@dataclass(frozen=True, slots=True)
class NamedSource:
    """A configured source: its `[[sources]]` name, where it reads (for messages), the fetcher."""

    name: str
    location: str
    source: Source


@dataclass(frozen=True, slots=True)
class FetchSummary:
    fetched: int
    new: int
    updated: int
    name: str = "hf"
    location: str = ""
    not_modified: bool = False  # the source answered 304: nothing changed since the last fetch


def fetch_and_store(
    engine: Engine,
    *,
    source: Source,
    feed_url: str,
    today: date,
    lookback: int,
    clock: Clock,
    name: str = "hf",
) -> FetchSummary:
    """Fetch one source (today and the previous `lookback` days), then store the good days in
    one transaction, under the source's `name`.

    Each day's response is validated whole before anything is written: a broken day stores
    nothing, the other days are stored, and then PartialFetchError names the bad day(s). The
    attempt and its outcome (start and end read from `clock`) are recorded either way. The
    source gets the start of its last good fetch from the same location (`since`, for catch-up)
    and the validators of its conditional GET, which a good fetch stores for next time.
    """
    started = clock()
    with session_scope(engine) as s:
        good = store.last_good_fetch(s, source=name)
    if good is not None and good.feed_url != feed_url:
        good = None  # the source now reads elsewhere (url or categories changed): start afresh
    since = good.started_at if good is not None else None
    before = Validators(good.etag, good.last_modified) if good is not None else None
    try:
        result = source.fetch_days(today=today, lookback=lookback, since=since, validators=before)
    except FetchError as exc:
        with session_scope(engine) as s:
            store.record_fetch_run(
                s,
                source=name,
                feed_url=feed_url,
                started_at=started,
                finished_at=clock(),
                ok=False,
                error=str(exc),
            )
        raise
    papers = list(result.papers)
    failed = result.error()
    with session_scope(engine) as s:
        stored = store.upsert_papers(s, papers=papers, now=started, source=name)
        store.record_fetch_run(
            s,
            source=name,
            feed_url=feed_url,
            started_at=started,
            finished_at=clock(),
            ok=failed is None,
            new=stored.new,
            updated=stored.updated,
            error=str(failed) if failed else None,
            validators=result.validators or (before if result.not_modified else None),
        )
    if failed is not None:
        raise failed
    return FetchSummary(
        fetched=len(papers),
        new=stored.new,
        updated=stored.updated,
        name=name,
        location=feed_url,
        not_modified=result.not_modified,
    )


@dataclass(frozen=True, slots=True)
class SourceFailure:
    """One source that failed, why, and the days it could not give."""

    name: str
    location: str
    error: FetchError
    days: tuple[date, ...]


@dataclass(frozen=True, slots=True)
class FetchReport:
    """What fetching every source did: each good source's summary and each failure."""

    done: tuple[FetchSummary, ...] = ()
    failed: tuple[SourceFailure, ...] = ()

    def failed_days(self) -> dict[str, tuple[date, ...]]:
        """Per failed source name, the days it could not give (the input of `unread_days`)."""
        return {f.name: f.days for f in self.failed}

    def error(self) -> FetchError | None:
        """One error naming every failed source and why, or None when all of them worked."""
        if not self.failed:
            return None
        return FetchError(
            "; ".join(
                f"source {f.name}: {str(f.error).removeprefix(f'source {f.name!r}: ')}"
                for f in self.failed
            )
        )


def fetch_sources(
    engine: Engine,
    sources: Sequence[NamedSource],
    *,
    today: date,
    lookback: int | Callable[[str], int],
    clock: Clock,
) -> FetchReport:
    """Fetch and store every source in order, each on its own: one failing never stops the others.

    `lookback` may depend on the source (the daemon reaches back to each one's last good fetch).
    A source that stored nothing could not give any day of its window; one that failed for some
    days (PartialFetchError) stored the others.
    """
    done: list[FetchSummary] = []
    failed: list[SourceFailure] = []
    for named in sources:
        days = lookback(named.name) if callable(lookback) else lookback
        try:
            done.append(
                fetch_and_store(
                    engine,
                    source=named.source,
                    feed_url=named.location,
                    today=today,
                    lookback=days,
                    clock=clock,
                    name=named.name,
                )
            )
        except PartialFetchError as exc:
            failed.append(SourceFailure(named.name, named.location, exc, exc.days))
        except FetchError as exc:
            window = tuple(today - timedelta(days=n) for n in range(days, -1, -1))
            failed.append(SourceFailure(named.name, named.location, exc, window))
    return FetchReport(done=tuple(done), failed=tuple(failed))


# -- subscribers ----------------------------------------------------------------------------


def select_subscribers(
    specs: Sequence[SubscriberSpec], emails: Sequence[str], *, source: str, option: str
) -> list[SubscriberSpec]:
    """The specs with these addresses (compared by address_key), in file order.

    An address not in the file is a ConfigError naming `source` and the `option` it came from.
    """
    wanted = {address_key(e): e for e in emails}
    chosen = [sp for sp in specs if address_key(sp.email) in wanted]
    unknown = set(wanted) - {address_key(sp.email) for sp in chosen}
    if unknown:
        names = ", ".join(sorted(wanted[k].strip() for k in unknown))
        raise ConfigError(f"not in {source}: {names}", field=option)
    return chosen


def sync_subscribers(
    engine: Engine, specs: Sequence[SubscriberSpec], *, now: datetime
) -> list[Recipient]:
    """Store the subscribers file's people (new ones added, removed ones deactivated); those with
    frequency "off" are noted as paused (the daemon never plans for them)."""
    with session_scope(engine) as s:
        ids = store.sync_subscribers(s, people=[(sp.email, sp.name) for sp in specs], now=now)
        off = [ids[address_key(sp.email)] for sp in specs if sp.frequency == schedule.OFF]
        if off:
            outbox.mark_paused(s, subscriber_ids=off, now=now)
    return [Recipient(spec=sp, id=ids[address_key(sp.email)]) for sp in specs]


def known_recipients(engine: Engine, specs: Sequence[SubscriberSpec]) -> list[Recipient]:
    """The specs with their stored ids, without writing (never-synced ones get negative ids)."""
    with session_scope(engine) as s:
        ids = store.subscriber_ids(s, [sp.email for sp in specs])
    return [
        Recipient(spec=sp, id=ids.get(address_key(sp.email), -1 - i)) for i, sp in enumerate(specs)
    ]


def subscriber_ids(engine: Engine, emails: Sequence[str]) -> list[int]:
    """Stored ids of these addresses (compared by address_key); addresses never synced are left out."""
    with session_scope(engine) as s:
        return sorted(store.subscriber_ids(s, emails).values())


def status(
    engine: Engine, *, file_emails: Sequence[str] | None, sources: Sequence[str] | None = None
) -> store.Status:
    """`digestbot status`: each source's fetches, papers, subscribers (against the file's
    addresses, if read), digests, retries and the last delivery error. Reads only."""
    with session_scope(engine) as s:
        return store.status(s, file_emails=file_emails, sources=sources)


# -- unsubscribing --------------------------------------------------------------------------


def unsubscribe(
    engine: Engine, address: str, *, method: UnsubscribeMethod, now: datetime
) -> store.Suppressed:
    """Put `address` on the suppression list (repeats are harmless: the first entry is kept);
    its digests planned or deferred are marked suppressed and nothing more is planned for it."""
    with session_scope(engine) as s:
        return store.suppress(s, address=address, method=method, now=now)


class Resubscribed(StrEnum):
    """What `resubscribe` did."""

    DONE = "done"  # taken off the suppression list
    NOT_LISTED = "not-listed"  # it was not on the list; nothing changed
    KEPT = "kept"  # a reader may not lift the operator's suppression; nothing changed


WEB_METHODS = frozenset({UnsubscribeMethod.ONE_CLICK, UnsubscribeMethod.PAGE})


def resubscribe(engine: Engine, address: str, *, by_reader: bool = False) -> Resubscribed:
    """Take `address` off the suppression list. With `by_reader` (a token link) only an
    unsubscribe made through the web (one-click or the page) is lifted: the operator's stick."""
    with session_scope(engine) as s:
        if store.unsuppress(s, address=address, methods=WEB_METHODS if by_reader else None):
            return Resubscribed.DONE
        if store.suppression(s, address=address) is not None:
            return Resubscribed.KEPT
        return Resubscribed.NOT_LISTED


def unsubscribed(engine: Engine, emails: Sequence[str]) -> list[str]:
    """The addresses (as given, in order) that are on the suppression list. Reads only."""
    with session_scope(engine) as s:
        keys = store.suppressed_keys(s, emails)
    return [e for e in emails if address_key(e) in keys]


# -- matching -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredMatches:
    matches: list[Match]  # ranked
    papers: dict[str, Paper]  # every paper searched, by arXiv id


def match_stored(engine: Engine, *, query: str, day: date | None) -> StoredMatches:
    """Run one query against the stored papers (featured on `day`, or all of them)."""
    flt = compile_filter(keywords=[query])
    start, end = schedule.day_window(day) if day is not None else (None, None)
    with session_scope(engine) as s:
        papers = store.papers_featured_between(s, start=start, end=end)
    return StoredMatches(
        matches=PaperIndex.build(papers).match(flt), papers={p.arxiv_id: p for p in papers}
    )


# -- planning -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlanSummary:
    planned: int = 0
    skipped: int = 0
    existing: int = 0
    off: int = 0  # subscribers with frequency = "off": nothing planned
    suppressed: int = 0  # subscribers who unsubscribed: nothing planned

    def plus(self, other: PlanSummary) -> PlanSummary:
        """Both runs' counts added up."""
        return PlanSummary(
            *(getattr(self, f.name) + getattr(other, f.name) for f in fields(PlanSummary))
        )


def unread_days(
    engine: Engine,
    recipients: Sequence[Recipient],
    *,
    failed_days: Mapping[str, Iterable[date]],
    as_of: datetime,
    lookback: int,
    day: date | None = None,
) -> dict[str, tuple[date, ...]]:
    """THE feed rule (README "When a source fails"): for each recipient whose digest would be
    planned now, the days a source they follow failed to give (`failed_days`, per source name)
    that lie inside that digest's window; keyed by address_key, only recipients with such days.
    The others are planned from what is stored, as usual.

    `send` plans and sends the others and exits 1 naming these days; the daemon holds these
    recipients' digests up to FEED_WAIT, then plans them with a note naming the days (an empty
    one is skipped, never mailed). A day counts as inside a window when any of its UTC hours is.
    """
    failed = {name: frozenset(days) for name, days in failed_days.items() if days}
    if not failed:
        return {}
    with session_scope(engine) as s:
        todo, freq, windows, prev = planning.to_plan(
            s, recipients, as_of=as_of, lookback=lookback, day=day, skip_existing=True
        )
    out: dict[str, tuple[date, ...]] = {}
    for r, _ in todo:
        follows = r.spec.sources
        days = set().union(*(d for name, d in failed.items() if not follows or name in follows))
        start = windows[freq[r.id]].start_of(prev.get(r.id))
        inside = sorted(
            d
            for d in days
            if schedule.day_start(d) < as_of and start < schedule.day_start(d + timedelta(days=1))
        )
        if inside:
            out[address_key(r.spec.email)] = tuple(inside)
    return out


def days_of(unread: Mapping[str, Sequence[date]]) -> str:
    """The days of `unread_days`, once each, oldest first: "2026-03-02, 2026-03-03"."""
    return ", ".join(d.isoformat() for d in sorted({d for days in unread.values() for d in days}))


def plan_digests(
    engine: Engine,
    recipients: Sequence[Recipient],
    *,
    as_of: datetime,
    lookback: int,
    day: date | None = None,
    from_addr: str,
    now: datetime,
    note: str | None = None,
) -> PlanSummary:
    """Compute and store the digests of `recipients` for their period (idempotent per period).

    `note` (the daemon after its feed hold expired) is stored on every digest and makes an
    empty one skipped, whatever send_empty says: see outbox.DigestPlan.state.

    Subscribers with frequency "off" get nothing; they are noted as paused, so their first
    digest once back on covers the normal window.
    """
    planned = skipped = total = 0
    off = [r.id for r in recipients if r.spec.frequency == schedule.OFF]
    batch: list[outbox.DigestPlan] = []
    stored = itertools.count()  # batches stored (next() is atomic: writer threads share it)

    def store(session: Session, plans: list[outbox.DigestPlan]) -> None:
        # Each batch is stored and committed as soon as it is decided, so a run never holds
        # every plan (memory stays flat) and a crash keeps the batches already stored.
        outbox.store_plans(session, plans=plans, now=now)
        session.commit()
        if next(stored) == 0 and len(recipients) > PLAN_BATCH:
            # PostgreSQL: on an outbox that had no statistics yet (the first large run),
            # each later batch's look-up of the papers its subscribers already got was a
            # scan of every item stored so far (110 ms a batch at 100,000 subscribers)
            outbox.refresh_statistics(session)
            session.commit()

    with session_scope(engine) as s:
        # PostgreSQL stores batches (the server's work, mostly) while the next one is matched
        # here; SQLite stores each in this thread, on the session that reads (one writer).
        postgres = engine.dialect.name == "postgresql"
        writer = _PlanWriter(engine, store, threads=PLAN_WRITERS) if postgres else None
        try:

            def store_batch() -> None:
                nonlocal planned, skipped, batch
                planned += sum(1 for p in batch if p.state == DigestState.PLANNED)
                skipped += sum(1 for p in batch if p.state == DigestState.SKIPPED)
                if writer is None:
                    store(s, batch)
                else:
                    writer.put(batch)
                batch = []

            for plan in compute_plans(
                s, recipients, as_of=as_of, lookback=lookback, day=day, from_addr=from_addr
            ):
                batch.append(replace(plan, note=note) if note is not None else plan)
                total += 1
                if len(batch) >= PLAN_BATCH:
                    store_batch()
            if batch:
                store_batch()
        except BaseException:
            if writer is not None:
                writer.close(failed=True)
            raise
        if writer is not None:
            writer.close()  # every batch stored, or the writer's error raised here
        if planned >= outbox.ANALYZE_AFTER:
            outbox.refresh_statistics(s)
            s.commit()
        if off:
            outbox.mark_paused(s, subscriber_ids=off, now=now)
        suppressed = _suppressed_count(s, recipients)
    existing = len(recipients) - len(off) - suppressed - total
    return PlanSummary(
        planned=planned, skipped=skipped, existing=existing, off=len(off), suppressed=suppressed
    )


PLAN_WRITERS = 2
"""PostgreSQL: threads (each with its own connection) storing plan batches while planning goes on.
Storing is the server's work (COPY, then the INSERT ... SELECT into the outbox, its indexes and
foreign keys), about 80% of planning at 100,000 subscribers; two batches stored at once keep
two server processes busy."""


class _PlanWriter:
    """Stores plan batches in threads of their own, each on a session (a connection) of its own,
    while the caller goes on matching. Batches are independent (their subscribers differ) and
    each is committed on its own, as in the caller's thread; at most `threads` batches wait
    (memory stays flat).

    `put` hands a batch over and raises the error a writer met, if any; `close` waits until
    every batch handed over is stored (or its writer failed) and raises the first error.
    """

    def __init__(
        self, engine: Engine, store: Callable[[Session, list[Any]], None], *, threads: int
    ) -> None:
        self._queue: queue.Queue[list[Any] | None] = queue.Queue(maxsize=threads)
        self._errors: list[BaseException] = []
        self._threads = [
            threading.Thread(
                target=self._run,
                args=(engine, store),
                name=f"digestbot-plan-writer-{i}",
                daemon=True,
            )
            for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def _run(self, engine: Engine, store: Callable[[Session, list[Any]], None]) -> None:
        done = False
        try:
            with session_scope(engine) as session:
                while (batch := self._queue.get()) is not None:
                    store(session, batch)
                done = True
        except Exception as exc:  # noqa: BLE001 - raised in the caller's thread (put, close)
            self._errors.append(exc)
        finally:
            while not done:  # take what is still handed over (up to this thread's end mark)
                done = self._queue.get() is None

    def put(self, batch: list[Any]) -> None:
        self._raise()
        self._queue.put(batch)

    def close(self, *, failed: bool = False) -> None:
        """Wait for the writers; `failed`: the caller stops on an error of its own, which goes
        on rather than theirs."""
        for _ in self._threads:  # one end mark each: a thread ends on the first it takes
            self._queue.put(None)
        for thread in self._threads:
            thread.join()
        if not failed:
            self._raise()

    def _raise(self) -> None:
        if self._errors:
            raise self._errors[0]


def _suppressed_count(session: Session, recipients: Sequence[Recipient]) -> int:
    """How many of these recipients (frequency not "off") are on the suppression list."""
    emails = [r.spec.email for r in recipients if r.spec.frequency != schedule.OFF]
    keys = store.suppressed_keys(session, emails)
    return sum(1 for e in emails if address_key(e) in keys)


@dataclass(frozen=True, slots=True)
class SendSummary:
    plan: PlanSummary
    report: DeliveryReport
    waiting: outbox.Waiting  # deferred digests not due yet when the run ended
    held: FetchError | None = None  # subscribers not planned: a source they follow failed


@dataclass(frozen=True, slots=True)
class Prepared:
    """What `prepare_send` did, and all `finish_send` needs: nothing of the subscribers file, so
    the caller can let go of it (at 100,000 subscribers, a hundred MB) before delivery."""

    plan: PlanSummary
    held: FetchError | None  # subscribers not planned: a source they follow failed
    subscriber_ids: list[int] | None  # with `only`: the chosen subscribers' ids
    started: datetime


def prepare_send(
    engine: Engine,
    everyone: Sequence[SubscriberSpec],
    *,
    only: Sequence[SubscriberSpec] | None,
    from_addr: str,
    as_of: datetime,
    day: date | None,
    lookback: int,
    clock: Clock,
    fetch_error: FetchError | None = None,
    failed_days: Mapping[str, Sequence[date]] | None = None,
) -> Prepared:
    """`digestbot send` after the fetch, up to delivery: sync the file and plan the period's
    digests. `finish_send` then delivers what is due.

    With `only`, just those subscribers are planned (and then delivered; everyone stays
    subscribed). When a source failed (`fetch_error`; `failed_days` per source name) for a day
    inside the windows to plan of subscribers who follow it (the rule: `unread_days`), those
    subscribers are not planned (`Prepared.held` says why) and the others are; when that is
    everyone, FetchError names the days and nothing is planned.
    """
    now = clock()
    chosen = everyone if only is None else only
    bad = (
        unread_days(
            engine,
            known_recipients(engine, chosen),
            failed_days=failed_days,
            as_of=as_of,
            lookback=lookback,
            day=day,
        )
        if failed_days  # no source failed: nobody to look up (100,000 look-ups by address)
        else {}
    )
    held: FetchError | None = None
    if bad:
        days = days_of(bad)
        if len(bad) == len({address_key(sp.email) for sp in chosen}):
            # checked before the sync: a run refused for everyone writes nothing
            raise FetchError(
                f"nothing planned or sent: the digests due now cover {days}, which a source "
                f"could not give ({fetch_error}); run again once it answers, or use --no-fetch "
                "to send from the papers already stored"
            )
        held = FetchError(
            f"{len(bad)} subscriber(s) not planned: their digests cover {days}, which a source "
            f"they follow could not give ({fetch_error}); run again once it answers, or use "
            "--no-fetch to send from the papers already stored"
        )
    recipients = sync_subscribers(engine, everyone, now=now)
    if only is not None:
        picked = {address_key(sp.email) for sp in only}
        recipients = [r for r in recipients if address_key(r.spec.email) in picked]
    ids = [r.id for r in recipients] if only is not None else None
    recipients = [r for r in recipients if address_key(r.spec.email) not in bad]
    plan = plan_digests(
        engine,
        recipients,
        as_of=as_of,
        lookback=lookback,
        day=day,
        from_addr=from_addr,
        now=now,
    )
    return Prepared(plan=plan, held=held, subscriber_ids=ids, started=now)


def finish_send(
    engine: Engine,
    prepared: Prepared,
    *,
    backend: Backend,
    mail: MailContext,
    policy: outbox.RetryPolicy,
    limiter: RateLimiter,
    clock: Clock,
    on_start: Callable[[int], None] | None = None,
    on_result: Callable[[str, outbox.Outcome], None] | None = None,
    deliver: Deliver | None = None,
) -> SendSummary:
    """`digestbot send` after `prepare_send`: deliver what is due, then log the run's line.

    `on_start` gets the number of digests about to be delivered. `deliver` delivers them
    (workers.Pool: several processes); by default deliver_due here with `backend`.
    """
    ids = prepared.subscriber_ids
    due = count_due(engine, now=clock(), subscriber_ids=ids)
    if on_start is not None:
        on_start(due)
    if deliver is not None:
        report = deliver(due=due, subscriber_ids=ids, on_result=on_result, stop=None)
    else:
        report = deliver_due(
            engine,
            backend=backend,
            mail=mail,
            policy=policy,
            clock=clock,
            limiter=limiter,
            subscriber_ids=ids,
            on_result=on_result,
        )
    log_run_summary(prepared.plan, report, seconds=(clock() - prepared.started).total_seconds())
    with session_scope(engine) as s:
        waiting = outbox.waiting_for_retry(s, now=clock(), subscriber_ids=ids)
    return SendSummary(plan=prepared.plan, report=report, waiting=waiting, held=prepared.held)


def log_run_summary(
    plan: PlanSummary | None, report: DeliveryReport | None, *, seconds: float
) -> None:
    """One INFO line per run (a `send`, a daemon tick that did something) with its totals, its
    seconds and its speed: digests attempted (sent, deferred or failed) per second of the run."""
    plan = plan or PlanSummary()
    report = report or DeliveryReport()
    counts = {
        "planned": plan.planned,
        "skipped": plan.skipped,
        "sent": report.sent,
        "deferred": len(report.deferred),
        "failed": len(report.failed),
        "taken_over": len(report.taken_over),
    }
    if not any(counts.values()):
        return  # (unsubscribed people alone make no line: the daemon would log it every tick)
    attempted = counts["sent"] + counts["deferred"] + counts["failed"]
    fields: dict[str, float | int] = {
        **counts,
        "unsubscribed": plan.suppressed,
        "seconds": round(seconds, 3),
        "digests_per_second": round(attempted / seconds, 1) if seconds > 0 else 0.0,
        "workers": report.workers,
    }
    log.info(
        "run: planned %(planned)d, skipped %(skipped)d"
        + (", %(unsubscribed)d unsubscribed (not sent)" if plan.suppressed else "")
        + "; sent %(sent)d, deferred %(deferred)d, failed %(failed)d, "
        "taken over by another run %(taken_over)d; %(seconds).1f s, "
        "%(digests_per_second).1f digests/s, %(workers)d worker(s)",
        fields,
        extra=fields,
    )


# -- previews and dry runs ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DryRunRow:
    """What a send would do for one subscriber: the plan and, unless skipped, its rendering."""

    plan: outbox.DigestPlan
    rendered: RenderedDigest | None


@dataclass(frozen=True, slots=True)
class DryRun:
    rows: tuple[DryRunRow, ...]
    existing: int  # subscribers that already have their digest for the period
    fetched: int | None  # distinct papers the sources gave (None: not fetched)
    off: int = 0  # subscribers with frequency = "off"
    suppressed: int = 0  # subscribers who unsubscribed: nothing would be planned


def dry_run(
    engine: Engine,
    specs: Sequence[SubscriberSpec],
    *,
    mail: MailContext,
    fetched: Sequence[tuple[str, Sequence[FetchedPaper]]] | None,
    as_of: datetime,
    day: date | None,
    lookback: int,
    now: datetime,
) -> DryRun:
    """Plan and render as a real send would, inside one transaction that is rolled back.

    `fetched` holds what each source (by name) gave, stored in that transaction; None: not fetched.
    """
    recipients = known_recipients(engine, specs)
    names = {r.id: r.spec.name for r in recipients}
    rows = []
    with session_scope(engine) as s:
        for name, papers in fetched or ():
            store.upsert_papers(s, papers=papers, now=now, source=name)
        for plan in compute_plans(
            s, recipients, as_of=as_of, lookback=lookback, day=day, from_addr=mail.from_addr
        ):
            rendered = (
                None
                if plan.state == DigestState.SKIPPED
                else _render_plan(s, plan, mail=mail, name=names[plan.subscriber_id])
            )
            rows.append(DryRunRow(plan=plan, rendered=rendered))
        suppressed = _suppressed_count(s, recipients)
        s.rollback()
    off = sum(1 for r in recipients if r.spec.frequency == schedule.OFF)
    return DryRun(
        rows=tuple(rows),
        existing=len(recipients) - off - suppressed - len(rows),
        off=off,
        suppressed=suppressed,
        fetched=None
        if fetched is None
        else len({p.arxiv_id for _, papers in fetched for p in papers}),
    )


@dataclass(frozen=True, slots=True)
class Preview:
    """What a subscriber's next digest would be: the rendering, or why nothing would be sent."""

    frequency: str
    rendered: RenderedDigest | None = None  # None: no digest would be sent
    period: str | None = None  # YYYY-MM-DD: the day, or the first day of the week (None: off)
    window: tuple[datetime, datetime] | None = None  # what the digest covers
    stored_papers: int = 0  # papers stored for that window (0: not fetched yet)
    fetch_day: date | None = None  # the day to `digestbot fetch --date` when it is not stored
    reason: str | None = None  # why no digest would be sent
    pending: bool = False  # a stored digest not sent yet, shown as it will go out


def preview(
    engine: Engine,
    spec: SubscriberSpec,
    *,
    mail: MailContext,
    as_of: datetime,
    day: date | None,
    lookback: int,
) -> Preview:
    """The subscriber's next digest, rendered; nothing is sent or recorded.

    That is the oldest stored digest not sent yet, if any, else the one a send at `as_of` would
    plan. Says so when nothing would be sent (frequency "off"; the period's digest was already
    had, and when the next is due; nothing new with send_empty false) and how many papers are
    stored for the digest's window; `fetch_day` is set when the run's own day has no paper
    stored, so "nothing new" and "not fetched yet" are told apart.
    """
    [recipient] = known_recipients(engine, [spec])
    with session_scope(engine) as s:
        if store.suppressed_keys(s, [spec.email]):
            return Preview(
                frequency=spec.frequency,
                reason="the address unsubscribed: nothing is planned or sent "
                "(`digestbot resubscribe` undoes it)",
            )
        pending = outbox.next_unsent(s, subscriber_id=recipient.id)
        if pending is not None:
            digests, papers = outbox.load_digests(s, [pending])
            d = digests[pending]
            window = (
                (d.window_start, d.window_end)
                if d.window_start is not None and d.window_end is not None
                else None
            )
            return Preview(
                rendered=mail.render(_stored_view(d, papers, mail=mail)),
                frequency=d.frequency,
                period=d.period,
                window=window,
                stored_papers=len(papers),
                fetch_day=None,
                reason=None,
                pending=True,
            )
        if spec.frequency == schedule.OFF:
            return Preview(
                frequency=spec.frequency,
                reason='frequency is "off": nothing is planned or sent',
            )
        period = schedule.period(spec, day=day, at=as_of)
        had = outbox.period_state(s, subscriber_id=recipient.id, period=period)
        if had is not None:
            due = schedule.next_due(spec, period)
            return Preview(
                frequency=spec.frequency,
                period=period,
                reason=f"already had the digest for {period} ({had}); the next one is due "
                f"{due:%Y-%m-%d %H:%M} {spec.tz.key}",
            )
        [plan] = compute_plans(
            s,
            [recipient],
            as_of=as_of,
            lookback=lookback,
            day=day,
            from_addr=mail.from_addr,
            skip_existing=False,
        )
        stored = len(store.papers_featured_between(s, start=plan.window_start, end=plan.window_end))
        today = schedule.run_day(as_of)
        missing = not store.papers_featured_between(s, start=schedule.day_start(today), end=as_of)
        skipped = plan.state == DigestState.SKIPPED
        reason = None
        if skipped:
            reason = (
                f"nothing to send from the papers stored so far; those of {today} are not stored yet"
                if missing
                else "nothing new, and send_empty is false"
            )
        return Preview(
            rendered=None if skipped else _render_plan(s, plan, mail=mail, name=spec.name),
            frequency=plan.frequency,
            period=plan.period,
            window=(plan.window_start, plan.window_end),
            stored_papers=stored,
            fetch_day=today if missing else None,
            reason=reason,
        )


def _render_plan(
    session: Session, plan: outbox.DigestPlan, *, mail: MailContext, name: str | None
) -> RenderedDigest:
    """Render a digest that is planned but not stored (dry runs and previews)."""
    papers = store.papers_by_id(session, [it.arxiv_id for it in plan.items + plan.trending])
    return mail.render(_view(plan, papers, mail=mail, name=name))


def _stored_view(
    d: outbox.StoredDigest,
    papers: dict[str, Paper],
    *,
    mail: MailContext,
    views: PaperViews | None = None,
) -> DigestView:
    return _view(d, papers, mail=mail, name=d.name, views=views)


def _view(
    d: outbox.DigestPlan | outbox.StoredDigest,
    papers: dict[str, Paper],
    *,
    mail: MailContext,
    name: str | None,
    views: PaperViews | None = None,
) -> DigestView:
    """What one digest shows, from a plan or from a stored digest (the same fields)."""
    return digest_view(
        mail=mail,
        email=d.email,
        name=name,
        period=d.period,
        items=d.items,
        papers=papers,
        more_count=d.more_count,
        trending=d.trending,
        frequency=d.frequency,
        window=(d.window_start, d.window_end)
        if d.window_start is not None and d.window_end is not None
        else None,
        views=views,
    )


# -- delivery -------------------------------------------------------------------------------


@dataclass
class DeliveryReport:
    """What a delivery run did: how many digests went out, and who was not sent and why.

    Sent digests are counted, not listed: a report of a run of 100,000 then takes the same
    memory as one of 100 (who got what is in the outbox and the log)."""

    sent: int = 0
    deferred: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    taken_over: list[tuple[str, str]] = field(default_factory=list)
    stopped: bool = False
    retries: int = 0  # of the digests sent, deferred or failed: those attempted in an earlier run
    workers: int = 1  # processes that delivered (workers.Pool)

    @classmethod
    def merged(cls, reports: Iterable[DeliveryReport], *, workers: int) -> DeliveryReport:
        """One report of a run delivered by several workers."""
        out = cls(workers=workers)
        for r in reports:
            out.sent += r.sent
            out.deferred += r.deferred
            out.failed += r.failed
            out.taken_over += r.taken_over
            out.stopped = out.stopped or r.stopped
            out.retries += r.retries
        return out

    @property
    def ok(self) -> bool:
        """Nothing deferred or failed (a digest another run took over is that run's to report)."""
        return not self.deferred and not self.failed

    def add(self, email: str, outcome: outbox.Outcome, reason: str, *, retry: bool = False) -> None:
        if retry and outcome != outbox.Outcome.TAKEN_OVER:
            self.retries += 1
        if outcome == outbox.Outcome.SENT:
            self.sent += 1
        else:
            {
                outbox.Outcome.DEFERRED: self.deferred,
                outbox.Outcome.FAILED: self.failed,
                outbox.Outcome.TAKEN_OVER: self.taken_over,
            }[outcome].append((email, reason))


class Deliver(Protocol):
    """Delivers the `due` digests (of `subscriber_ids`, or all) somewhere else than in this call
    (workers.Pool: several processes); the same contract as deliver_due."""

    def __call__(
        self,
        *,
        due: int,
        subscriber_ids: Sequence[int] | None,
        on_result: Callable[[str, outbox.Outcome], None] | None,
        stop: threading.Event | None,
    ) -> DeliveryReport: ...


def count_due(engine: Engine, *, now: datetime, subscriber_ids: Sequence[int] | None = None) -> int:
    """How many digests a delivery run started now would send (for a progress bar)."""
    with session_scope(engine) as s:
        return outbox.count_due(s, now=now, subscriber_ids=subscriber_ids)


def requeue(
    engine: Engine,
    *,
    subscriber_ids: Sequence[int] | None,
    now: datetime,
    failed_only: bool = False,
) -> outbox.Requeued:
    """`digestbot retry`: failed and (unless `failed_only`) deferred digests become due at `now`."""
    with session_scope(engine) as s:
        return outbox.requeue(s, subscriber_ids=subscriber_ids, now=now, failed_only=failed_only)


def deliver_due(
    engine: Engine,
    *,
    backend: Backend,
    mail: MailContext,
    policy: outbox.RetryPolicy,
    clock: Clock,
    limiter: RateLimiter | None = None,
    subscriber_ids: Sequence[int] | None = None,
    on_result: Callable[[str, outbox.Outcome], None] | None = None,
    stop: threading.Event | None = None,
    claim: int = CLAIM_BATCH,
) -> DeliveryReport:
    """Deliver every due digest (planned, and deferred whose retry time has come).

    Digests are claimed in the database a batch at a time, so concurrent runs never send the
    same one. A batch's messages are built, then sent one by one (_messages), each outcome
    committed before the next message goes out: a crash leaves at most the message in flight
    unrecorded. A problem of one message fails that digest only. A problem that hits every
    message (server unreachable, login refused, TLS; a template that does not render, DKIM
    signing) gives back every claimed digest not attempted yet and is raised
    (DeliverySetupError, ConfigError).

    `claim`: digests claimed at a time (a worker's share of the run, workers.claim_share),
    fewer under a rate limit (_claim_size).
    """
    me = outbox.worker_id()
    report = DeliveryReport()
    limiter = limiter or RateLimiter(None)
    with session_scope(engine) as s:
        reclaimed = outbox.reclaim_orphans(s, now=clock())
        withheld = store.mark_suppressed_digests(s)
    if withheld:
        log.info("%d digest(s) not sent: their address unsubscribed", withheld)
    if reclaimed:
        log.warning(
            "took back %d digest(s) left mid-send by a stopped run; sending them again", reclaimed
        )
    views = PaperViews()  # a paper's view per set of matched queries, once per run
    papers: dict[str, Paper] = {}  # every paper read so far this run
    # One connection for the run, one short transaction per step on it (claim, load, each
    # outcome): no session or connection set up per message, no lock held between steps.
    # The run claims planned digests past the last one it took (outbox.claim's `after`); when
    # none is left there, one claim from the start finds any given back or passed over meanwhile.
    after: int | None = None
    lines = _OutcomeLines()
    announce = limiter.interval < ANNOUNCE_WITHIN
    claim_size = min(claim, _claim_size(limiter))
    with outbox.connect(engine) as conn:

        def record(d: outbox.StoredDigest, error: Refusal | None, pending: list[int]) -> None:
            """Commit what came of `d`, count it, log it and tell on_result."""
            outcome, reason = _record(conn, d, error, me=me, clock=clock, policy=policy)
            pending.remove(d.id)
            report.add(d.email, outcome, reason, retry=d.attempts > 0)
            lines.add(d, outcome, reason)
            if on_result is not None:
                on_result(d.email, outcome)

        while True:
            if stop is not None and stop.is_set():
                report.stopped = True
                break
            with outbox.transaction(conn):
                ids = outbox.claim(
                    conn,
                    now=clock(),
                    me=me,
                    limit=claim_size,
                    subscriber_ids=subscriber_ids,
                    after=after,
                )
            if not ids and after is not None:
                after = None
                continue
            if not ids:
                break
            after = max(ids)
            pending = list(ids)
            try:
                with outbox.transaction(conn, read_only=True):
                    digests, more = outbox.load_digests(conn, ids, known=papers)
                papers.update(more)
                renew_at = clock() + outbox.LEASE / 2
                messages = _messages(
                    [digests[i] for i in ids],
                    papers,
                    mail=mail,
                    views=views,
                    clock=clock,
                    announce=announce,
                )
                for d, made, then in messages:
                    if stop is not None and stop.is_set():
                        report.stopped = True
                        break
                    if clock() >= renew_at:
                        with outbox.transaction(conn):
                            outbox.extend_lease(conn, ids=pending, me=me, now=clock())
                        renew_at = clock() + outbox.LEASE / 2
                    error: Refusal | None = None
                    if isinstance(made, Envelope):
                        limiter.wait()
                        try:
                            backend.send(made, then=then)
                        except (TemporaryDeliveryError, PermanentDeliveryError) as exc:
                            error = exc
                    else:
                        error = made
                    record(d, error, pending)
            except (DeliverySetupError, ConfigError) as exc:
                _record_health(engine, error=str(exc), now=clock())
                raise
            finally:
                lines.flush()
                if pending:
                    with outbox.transaction(conn):
                        outbox.release(conn, ids=pending, me=me)
    if report.sent or report.deferred or report.failed:
        _record_health(engine, error=None, now=clock())
    return report


def _record_health(engine: Engine, *, error: str | None, now: datetime) -> None:
    """Note for `status` that the backend could not be used (`error`) or answered a message.

    A database that cannot take the note is logged, never raised over the delivery's own outcome.
    """
    try:
        with session_scope(engine) as s:
            if error is None:
                outbox.record_delivery_ok(s, now=now)
            else:
                outbox.record_delivery_error(s, error=error, now=now)
    except DigestbotError as exc:
        log.warning("could not record the delivery status for `digestbot status`: %s", exc)


_OUTCOME_LEVEL = {
    outbox.Outcome.SENT: logging.INFO,
    outbox.Outcome.DEFERRED: logging.WARNING,
    outbox.Outcome.FAILED: logging.ERROR,
    outbox.Outcome.TAKEN_OVER: logging.WARNING,
}


LOG_EVERY = 0.25
"""Seconds: the log lines of a run's outcomes wait at most this long (see _OutcomeLines)."""


class _OutcomeLines:
    """The log lines of a run's outcomes (_log_outcome), written several at a time: when a claim
    batch ends, or once the oldest waiting is LOG_EVERY seconds old (a slow rate). Still one
    line per digest; writing each between two messages took 3% more of a run, as logging's
    code and data left the processor's caches for every message."""

    def __init__(self) -> None:
        self._waiting: list[tuple[outbox.StoredDigest, outbox.Outcome, str]] = []
        self._since = 0.0

    def add(self, d: outbox.StoredDigest, outcome: outbox.Outcome, reason: str) -> None:
        now = time.monotonic()
        if not self._waiting:
            self._since = now
        self._waiting.append((d, outcome, reason))
        if now - self._since >= LOG_EVERY:
            self.flush()

    def flush(self) -> None:
        waiting, self._waiting = self._waiting, []
        for line in waiting:
            _log_outcome(*line)


def _log_outcome(d: outbox.StoredDigest, outcome: outbox.Outcome, reason: str) -> None:
    """One line per delivered digest: subscriber, Message-ID, outcome and the server's reason."""
    fields = {
        "subscriber": d.email,
        "message_id": d.message_id,
        "period": d.period,
        "outcome": str(outcome),
    }
    log.log(
        _OUTCOME_LEVEL[outcome],
        "digest for %s %s (Message-ID %s)%s",
        d.email,
        outcome,
        d.message_id,
        f": {reason}" if reason else "",
        extra={**fields, "reason": reason} if reason else fields,
    )


ANNOUNCE_WITHIN = 5.0
"""Seconds: the next message's envelope goes out with a message's content (SMTPBackend) only
when the rate limit lets that next message follow within this time, as a server holds the
announced message's open DATA meanwhile (and the backend probes a connection idle for 10 s)."""


Refusal = TemporaryDeliveryError | PermanentDeliveryError
"""What a backend raises for one message: defer it (temporary) or fail it (permanent)."""

BUILT_AHEAD = 1.0
"""Seconds: under a rate limit, a run claims (and builds) at most what it may send in this time,
so a message's Date is at most about this much older than its sending and the workers sharing
the rate each hold a fair share of what is left."""


def _claim_size(limiter: RateLimiter) -> int:
    """Digests claimed at a time: CLAIM_BATCH, or fewer under a rate limit (BUILT_AHEAD)."""
    if limiter.interval * CLAIM_BATCH <= BUILT_AHEAD:
        return CLAIM_BATCH
    return max(1, int(BUILT_AHEAD / limiter.interval))


def _messages(
    batch: Sequence[outbox.StoredDigest],
    papers: dict[str, Paper],
    *,
    mail: MailContext,
    views: PaperViews,
    clock: Clock,
    announce: bool,
) -> Iterator[tuple[outbox.StoredDigest, Envelope | Refusal, str | None]]:
    """Each digest of `batch` in order with its message, or the refusal that it has none (a
    problem of this digest only), and the recipient of the message sent after it, for the
    backend to announce early (None: the last, or not `announce`).

    Every message of the batch is built before the first is yielded: rendering and building
    many in a row, then sending them, keeps each step's code and data in the processor's caches,
    where alternating them per digest took about a third more CPU. An error that stops the
    run (a template that does not render, DKIM signing: ConfigError) is raised once the messages
    built before it were yielded, as when each digest was built in its turn.
    """
    built: list[tuple[outbox.StoredDigest, Envelope | Refusal]] = []
    failure: Exception | None = None
    for d in batch:
        try:
            built.append((d, _envelope(d, papers, mail=mail, views=views, clock=clock)))
        except (TemporaryDeliveryError, PermanentDeliveryError) as exc:
            built.append((d, exc))
        except Exception as exc:  # noqa: BLE001 - raised below, after the ones built before
            failure = exc
            break
    for n, (d, made) in enumerate(built):
        following = built[n + 1][1] if n + 1 < len(built) else None
        then = following.recipient if announce and isinstance(following, Envelope) else None
        yield d, made, then
    if failure is not None:
        raise failure


def _envelope(
    d: outbox.StoredDigest,
    papers: dict[str, Paper],
    *,
    mail: MailContext,
    views: PaperViews | None,
    clock: Clock,
) -> Envelope:
    """One digest's message, ready to send. Raises TemporaryDeliveryError or
    PermanentDeliveryError for a problem of this digest only; errors that hit every message
    (ConfigError, DeliverySetupError) propagate, and the caller gives the digest back untouched."""
    view = _stored_view(d, papers, mail=mail, views=views)
    raw = compose(mail=mail, view=view, message_id=d.message_id, date_=clock())
    rcpt = smtp_address(d.email)  # the domain in ASCII (IDNA)
    return Envelope(
        sender=mail.envelope_from, recipient=rcpt, raw=raw, name=f"{d.period}_{d.id:08d}"
    )


def _record(
    conn: Connection,
    d: outbox.StoredDigest,
    error: Refusal | None,
    *,
    me: str,
    clock: Clock,
    policy: outbox.RetryPolicy,
) -> tuple[outbox.Outcome, str]:
    """Record what came of one digest (committed at once, on the run's connection): sent, or
    deferred or failed by `error`; the outcome and its reason."""
    reason = str(error) if error is not None else ""
    if isinstance(error, TemporaryDeliveryError):
        with outbox.transaction(conn), outbox.session_on(conn) as s:
            outcome = outbox.mark_temporary_failure(
                s, digest_id=d.id, me=me, now=clock(), error=reason, policy=policy
            )
    elif error is not None:
        with outbox.transaction(conn), outbox.session_on(conn) as s:
            outcome = outbox.mark_failed(s, digest_id=d.id, me=me, now=clock(), error=reason)
    else:
        outcome = outbox.record_sent(conn, digest_id=d.id, me=me, now=clock())
    if outcome == outbox.Outcome.TAKEN_OVER:
        done = "sent" if not reason else f"not sent ({reason})"
        reason = f"{done}, but another run had taken the digest back; it decides what happens next"
    return outcome, reason
