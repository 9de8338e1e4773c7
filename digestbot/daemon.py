"""APScheduler wiring of the pipeline: periodic fetch, per-subscriber local send times, retries.

One job fetches every source every DIGESTBOT_FETCH_INTERVAL minutes. A tick every minute plans the digests of
subscribers whose local send time has passed today and who have none for today yet (so after
downtime the missed days become one digest), then delivers whatever is due, retries included.
After downtime each source's fetch reaches back to its last good fetch (up to MAX_CATCH_UP days),
so the papers of the missed days are stored too. Jobs run one at a time; SIGTERM/SIGINT stop after the
message in hand; SIGHUP reloads subscribers. Nothing touches the database before the lock is held.
Delivery goes through workers.Pool: a large batch of due digests is shared by worker processes.

The feed rule is pipeline.unread_days (README "When a source fails"; `digestbot send` applies it
by exiting 1): while a source the due subscribers follow failed for a day inside the windows of
their digests (any
FetchError: unreachable, or a rejected response such as truncated JSON; today, or an earlier day
after downtime or in a weekly window), they are held and the fetch is retried every
FRESH_FETCH. After FEED_WAIT they are planned from the papers already stored, each with a note
saying which fetch failed; one that would be empty is skipped with that note, never mailed as
"nothing new".
"""

from __future__ import annotations

import logging
import signal
import threading
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from types import FrameType

from apscheduler.events import EVENT_SCHEDULER_STARTED, SchedulerEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers import SchedulerNotRunningError
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy.engine import Engine

from digestbot import app, pipeline, schedule, store, workers
from digestbot.addresses import address_key
from digestbot.db import PlannerLock, session_scope
from digestbot.errors import ConfigError, DeliverySetupError, DigestbotError
from digestbot.settings import Settings
from digestbot.subscribers import SubscriberSpec

log = logging.getLogger("digestbot.daemon")

GroupKey = tuple[time, str, str, int]  # schedule.group_key: send_at, zone, frequency, weekday

FRESH_FETCH = timedelta(minutes=15)  # fetch right before planning when the last fetch is older
SETUP_PAUSE = timedelta(minutes=5)  # after the mail server could not be used at all
FEED_WAIT = timedelta(
    hours=3
)  # how long due digests wait for a failing feed before going out anyway
MAX_CATCH_UP = 30  # days: how far back a fetch after downtime reaches (at least lookback_days)


@dataclass(frozen=True, slots=True)
class FetchOutcome:
    """How the daemon's last fetch attempt ended: when, for which UTC day, and the bad days."""

    at: datetime
    today: date
    failed_days: Mapping[str, frozenset[date]] = field(default_factory=dict)  # per source name
    error: str | None = None
    failing: str = ""  # the failed sources, as log lines name them


class Daemon:
    """The long-running scheduler. `tick` and `fetch` are plain methods, callable with a fake clock."""

    def __init__(
        self,
        *,
        settings: Settings,
        engine: Engine,
        specs: Sequence[SubscriberSpec],
        delivery: app.Delivery,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        sources: Sequence[pipeline.NamedSource] | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.delivery = delivery
        self.clock = clock
        if sources is None:
            sources = app.make_sources(settings, app.load_config(settings).sources)
        self.sources = list(sources)
        self.stop_event = threading.Event()
        self._lock = threading.Lock()
        self._last_fetch: FetchOutcome | None = None
        # per source name, read from the database on its first fetch
        self._last_good_fetch: dict[str, datetime | None] = {}
        self._paused_until: datetime | None = None
        # (group, period) pairs fully planned; a group is schedule.group_key: send time, zone,
        # frequency and weekday, so everyone in it is due at the same moments
        self._done: set[tuple[GroupKey, str]] = set()
        self._due_since: dict[tuple[GroupKey, str], datetime] = {}  # held back by a feed outage
        self._scheduler: BlockingScheduler | None = None
        self._specs: Sequence[SubscriberSpec] | None = specs  # synced to the database on first use
        # run_forever's lock: only its holder fetches and plans (None: this daemon always does)
        self._planner: PlannerLock | None = None
        self._groups: dict[GroupKey, list[pipeline.Recipient]] = {}

    # -- subscribers ------------------------------------------------------------------------
    def _people(self) -> list[tuple[GroupKey, list[pipeline.Recipient]]]:
        with self._lock:
            specs, self._specs = self._specs, None
        if specs is not None:
            self._set_people(specs)
        with self._lock:
            return list(self._groups.items())

    def _set_people(self, specs: Sequence[SubscriberSpec]) -> None:
        recipients = pipeline.sync_subscribers(self.engine, specs, now=self.clock())
        groups: dict[GroupKey, list[pipeline.Recipient]] = defaultdict(list)
        for r in recipients:
            groups[schedule.group_key(r.spec)].append(r)
        with self._lock:
            self._groups = dict(groups)
            self._done.clear()
        log.info(
            "%d subscribers in %d send-time groups",
            len(recipients),
            len(groups),
            extra={"subscribers": len(recipients), "groups": len(groups)},
        )

    def _current_specs(self) -> dict[str, SubscriberSpec]:
        with self._lock:
            groups = list(self._groups.values())
        return {address_key(r.spec.email): r.spec for rs in groups for r in rs}

    def reload(self) -> None:
        """Re-read the subscribers file; a broken file is reported and the old list kept.

        The log names who was added, removed or changed (any field but the line), by address.
        """
        try:
            config = app.load_config(self.settings)
            sources = app.make_sources(self.settings, config.sources)
        except ConfigError as exc:
            log.error("subscribers file not reloaded, keeping the previous list: %s", exc)
            return
        specs = config.subscribers
        with self._lock:
            self.sources = sources
            if self._planner is not None and not self._planner.held:
                # not the planning daemon: it syncs the file; this one keeps it for a takeover
                self._specs = specs
                log.info("subscribers file reloaded (synced by the daemon that plans)")
                return
        with self._lock:
            pending, self._specs = self._specs, None
        if pending is not None:  # never synced yet: compare with the list given at start
            before = {address_key(sp.email): sp for sp in pending}
        else:
            before = self._current_specs()
        self._set_people(specs)
        after = {address_key(sp.email): sp for sp in specs}
        diff = {
            "added": sorted(after[k].email for k in after.keys() - before.keys()),
            "removed": sorted(before[k].email for k in before.keys() - after.keys()),
            "changed": sorted(
                after[k].email for k in after.keys() & before.keys() if after[k] != before[k]
            ),
        }
        said = "; ".join(f"{what} {_names(who)}" for what, who in diff.items() if who)
        log.info(
            "subscribers file %s reloaded: %s",
            self.settings.subscribers_path,
            said or "no changes",
            extra={"subscribers_file": str(self.settings.subscribers_path), **diff},
        )

    # -- jobs -------------------------------------------------------------------------------
    def _leading(self) -> bool:
        """Whether this daemon fetches and plans: it holds the planner lock, or takes it now
        (the daemon that held it stopped). The others only deliver."""
        planner = self._planner
        if planner is None or planner.held:
            return True
        if not planner.try_acquire():
            return False
        log.info("this daemon now fetches and plans for the database (the one before it stopped)")
        return True

    def fetch(self) -> bool:
        """Fetch and store every source; after downtime, every day since its last good fetch.

        Returns whether every source gave every day; a failure is logged with the source's name
        and location and remembered (which days failed, per source) for the hold in `tick`,
        never raised. One source failing does not stop the others. A daemon that does not hold
        the planner lock does not fetch (the one that does fetches for the database).
        """
        if not self._leading():
            return True
        now = self.clock()
        today = now.date()
        try:
            report = pipeline.fetch_sources(
                self.engine,
                self.sources,
                today=today,
                lookback=lambda name: self._fetch_lookback(now, name),
                clock=self.clock,
            )
        except DigestbotError as exc:  # the database itself: nothing was fetched or stored
            days = frozenset(
                today - timedelta(days=n) for n in range(self.settings.lookback_days + 1)
            )
            failed = {named.name: days for named in self.sources}
            self._last_fetch = FetchOutcome(now, today, failed, str(exc), "every source")
            log.error("fetch failed: %s", exc)
            return False
        for done in report.done:
            self._last_good_fetch[done.name] = now
            log.info(
                "source %s: fetched %d papers: %d new, %d updated",
                done.name,
                done.fetched,
                done.new,
                done.updated,
                extra={
                    "source": done.name,
                    "feed": done.location,
                    "fetched": done.fetched,
                    "new": done.new,
                    "updated": done.updated,
                    "not_modified": done.not_modified,
                },
            )
        for bad in report.failed:
            log.error(
                "source %s: fetch from %s failed: %s",
                bad.name,
                bad.location,
                bad.error,
                extra={"source": bad.name, "feed": bad.location},
            )
        error = report.error()
        self._last_fetch = FetchOutcome(
            now,
            today,
            {f.name: frozenset(f.days) for f in report.failed},
            str(error) if error else None,
            ", ".join(f"{f.name} ({f.location})" for f in report.failed),
        )
        return error is None

    def _fetch_lookback(self, now: datetime, name: str) -> int:
        """lookback_days, or more when the source's last good fetch is older (the daemon was down)."""
        if name not in self._last_good_fetch:
            with session_scope(self.engine) as s:
                last = store.last_good_fetch(s, source=name)
            self._last_good_fetch[name] = last.started_at if last is not None else None
        lookback = schedule.catch_up_days(
            now,
            self._last_good_fetch[name],
            lookback=self.settings.lookback_days,
            limit=MAX_CATCH_UP,
        )
        if lookback > self.settings.lookback_days:
            log.info(
                "source %s: last good fetch was over %d days ago; fetching them", name, lookback
            )
        return lookback

    def tick(self) -> None:
        """Plan the digests that are due by local time (the planning daemon only), then deliver
        everything due (every daemon: they share the outbox claims)."""
        now = self.clock()
        due: list[pipeline.Recipient] = []
        keys = []
        groups = self._people() if self._leading() else []
        for group, recipients in groups:
            spec = recipients[0].spec
            key = (group, schedule.local_period(spec, now))
            if key in self._done or not schedule.is_due(spec, now):
                continue
            due.extend(recipients)
            keys.append(key)
        plan: pipeline.PlanSummary | None = None
        if due:
            plan = self._plan(due, keys, now)
        report = self.deliver()
        pipeline.log_run_summary(plan, report, seconds=(self.clock() - now).total_seconds())

    def _fetch_needed(self, now: datetime) -> bool:
        """No fetch yet, none for today's UTC date, or the last one is older than FRESH_FETCH."""
        last = self._last_fetch
        return last is None or last.today != now.date() or now - last.at > FRESH_FETCH

    def _plan(
        self,
        due: list[pipeline.Recipient],
        keys: list[tuple[GroupKey, str]],
        now: datetime,
    ) -> pipeline.PlanSummary | None:
        """Plan the due groups, or hold them while a day in their windows fails (module docstring)."""
        newly_due = [k for k in keys if k not in self._due_since]
        for key in newly_due:
            self._due_since[key] = now
        retried = self._fetch_needed(now)
        if retried:
            self.fetch()
        last = self._last_fetch
        note = None
        bad: dict[str, tuple[date, ...]] = {}
        if last is not None and last.failed_days:
            try:
                bad = pipeline.unread_days(
                    self.engine,
                    due,
                    failed_days=last.failed_days,
                    as_of=now,
                    lookback=self.settings.lookback_days,
                )
            except DigestbotError as exc:
                log.error("planning digests failed: %s", exc)
                return None
        held: list[pipeline.Recipient] = []
        if last is not None and bad:
            feed = last.failing
            days = pipeline.days_of(bad)
            waited = now - min(self._due_since[k] for k in keys)
            if waited < FEED_WAIT:
                # Planning them now would use up the period's digest without those days'
                # papers, or claim that nothing matched; the source gets FEED_WAIT to recover
                # (the fetch is retried every FRESH_FETCH) before we plan from what is stored.
                # The subscribers who do not follow it are planned now. Said once per fetch.
                held = [r for r in due if address_key(r.spec.email) in bad]
                if retried or newly_due:
                    log.warning(
                        "holding %d digests until the source(s) %s answer for %s "
                        "(at most %s after their send time)",
                        len(held),
                        feed,
                        days,
                        FEED_WAIT,
                        extra={"feed": feed, "held": len(held), "days": days, "error": last.error},
                    )
                due = [r for r in due if address_key(r.spec.email) not in bad]
            else:
                note = (
                    f"planned from stored papers: the fetch for {days} from {feed} still "
                    f"failed {FEED_WAIT} after send time: {last.error}"
                )
                log.warning(
                    "hold expired for %d digests: the source(s) %s still fail for %s (%s); "
                    "planning them from the papers already stored, empty ones are skipped, "
                    "not mailed",
                    len(bad),
                    feed,
                    days,
                    last.error,
                    extra={"feed": feed, "error": last.error, "days": days, "digests": len(bad)},
                )
        noted = [r for r in due if note is not None and address_key(r.spec.email) in bad]
        plain = [r for r in due if not (note is not None and address_key(r.spec.email) in bad)]
        summary = None
        for group, group_note in ((plain, None), (noted, note)):
            if not group:
                continue
            try:
                got = pipeline.plan_digests(
                    self.engine,
                    group,
                    as_of=now,
                    lookback=self.settings.lookback_days,
                    from_addr=self.settings.mail_from,
                    now=now,
                    note=group_note,
                )
            except DigestbotError as exc:
                log.error("planning digests failed: %s", exc)
                return None
            summary = got if summary is None else summary.plus(got)
        if held:
            return summary  # the groups stay due: their held digests are planned later
        self._done.update(keys)
        for key in keys:
            self._due_since.pop(key, None)
        return summary

    def deliver(self) -> pipeline.DeliveryReport | None:
        now = self.clock()
        if self._paused_until is not None and now < self._paused_until:
            return None
        d = self.delivery
        deliver = workers.Pool(
            self.settings,
            engine=self.engine,
            delivery=d,
            workers=self.settings.workers,
            clock=self.clock,
        )
        try:
            report = deliver(
                due=pipeline.count_due(self.engine, now=now),
                subscriber_ids=None,
                on_result=None,
                stop=self.stop_event,
            )
        except DeliverySetupError as exc:
            self._paused_until = now + SETUP_PAUSE
            log.error("delivery paused for %s: %s", SETUP_PAUSE, exc)
            return None
        except DigestbotError as exc:
            log.error("delivery failed: %s", exc)
            return None
        finally:
            d.backend.close()
        return report  # each digest was logged by deliver_due, the totals by tick

    # -- running ----------------------------------------------------------------------------
    def stop(self, *_args: object) -> None:
        """Stop after the message in hand; safe to call from a signal handler or another thread."""
        if self.stop_event.is_set():
            return
        self.stop_event.set()
        # The scheduler's shutdown takes locks the interrupted main thread may hold; a signal
        # handler must not wait on them, so a helper thread does it.
        threading.Thread(target=self._stop_scheduler, name="stop", daemon=True).start()

    def _stop_scheduler(self) -> None:
        log.info("stopping")
        self._shutdown_scheduler()

    def _shutdown_scheduler(self) -> None:
        scheduler = self._scheduler
        if scheduler is None:
            return
        try:
            scheduler.shutdown(wait=False)
        except SchedulerNotRunningError:
            pass  # not started yet (or already stopped): the start listener sees stop_event

    def _on_started(self, _event: SchedulerEvent) -> None:
        """A stop that came while the scheduler was starting takes effect now."""
        if self.stop_event.is_set():
            self._shutdown_scheduler()

    def run_forever(self) -> None:
        """Run the scheduler until SIGTERM or SIGINT; fetch and plan while holding the planner
        lock (one daemon per database does), deliver in any case."""
        self._planner = PlannerLock(self.engine)
        try:
            self._run()
        finally:
            self._planner.release()

    def _run(self) -> None:
        if self._leading():
            self._people()  # sync the subscribers only in the daemon that plans
        else:
            log.info(
                "another digestbot daemon fetches and plans for this database; this one "
                "delivers with it and takes over if it stops"
            )
        executor = ThreadPoolExecutor(max_workers=1)
        scheduler = BlockingScheduler(
            timezone=UTC,
            executors={"default": executor},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        scheduler.add_listener(self._on_started, EVENT_SCHEDULER_STARTED)
        self._scheduler = scheduler
        now = self.clock()
        scheduler.add_job(
            self.fetch,
            IntervalTrigger(minutes=self.settings.fetch_interval_minutes),
            id="fetch",
            next_run_time=now,
        )
        scheduler.add_job(self.tick, IntervalTrigger(seconds=60), id="tick", next_run_time=now)
        previous = {
            sig: signal.signal(sig, self._on_signal)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        }
        log.info(
            "digestbot daemon started (fetch every %d min)",
            self.settings.fetch_interval_minutes,
        )
        try:
            if not self.stop_event.is_set():
                scheduler.start()
        finally:
            executor.shutdown(wait=True)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        log.info("digestbot daemon stopped")

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            threading.Thread(target=self.reload, name="reload", daemon=True).start()
            return
        self.stop()


def _names(emails: list[str], shown: int = 20) -> str:
    """Addresses for a log line; past `shown`, the rest are counted (the JSON fields list all)."""
    more = f" and {len(emails) - shown} more" if len(emails) > shown else ""
    return ", ".join(emails[:shown]) + more
