"""APScheduler wiring of the pipeline: periodic fetch, per-subscriber local send times, retries.

One job fetches every DIGESTBOT_FETCH_INTERVAL minutes. A tick every minute plans the digests of
subscribers whose local send time has passed today and who have none for today yet (so after
downtime the missed days become one digest), then delivers whatever is due, retries included.
Jobs run one at a time; SIGTERM/SIGINT stop after the message in hand; SIGHUP reloads subscribers.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, time, timedelta
from types import FrameType

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy.engine import Engine

from digestbot import app, pipeline
from digestbot.db import daemon_lock
from digestbot.errors import ConfigError, DeliverySetupError, DigestbotError
from digestbot.settings import Settings
from digestbot.subscribers import SubscriberSpec

log = logging.getLogger("digestbot.daemon")

FRESH_FETCH = timedelta(minutes=15)  # fetch right before planning when the last fetch is older
SETUP_PAUSE = timedelta(minutes=5)  # after the mail server could not be used at all


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
        source: pipeline.Source | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.delivery = delivery
        self.clock = clock
        self.source = source or app.make_source(settings)
        self.stop_event = threading.Event()
        self._lock = threading.Lock()
        self._last_fetch: datetime | None = None
        self._paused_until: datetime | None = None
        self._done: set[tuple[time, str, str]] = set()  # (send_at, zone, period) groups fully planned
        self._scheduler: BlockingScheduler | None = None
        self._set_people(specs)

    # -- subscribers ------------------------------------------------------------------------
    def _set_people(self, specs: Sequence[SubscriberSpec]) -> None:
        recipients = pipeline.sync_subscribers(self.engine, specs, now=self.clock())
        groups: dict[tuple[time, str], list[pipeline.Recipient]] = defaultdict(list)
        for r in recipients:
            groups[(r.spec.send_at, r.spec.timezone)].append(r)
        with self._lock:
            self._groups = dict(groups)
            self._done.clear()
        log.info("%d subscribers in %d send-time groups", len(recipients), len(groups))

    def reload(self) -> None:
        """Re-read the subscribers file; a broken file is reported and the old list kept."""
        try:
            specs = app.load_people(self.settings)
        except ConfigError as exc:
            log.error("subscribers file not reloaded, keeping the previous list: %s", exc)
            return
        self._set_people(specs)

    # -- jobs -------------------------------------------------------------------------------
    def fetch(self) -> None:
        now = self.clock()
        try:
            summary = pipeline.fetch_and_store(
                self.engine, source=self.source, feed_url=self.settings.feed_url, today=now.date(),
                lookback=self.settings.lookback_days, now=now,
            )
        except DigestbotError as exc:
            log.error("fetch failed: %s", exc)
            return
        finally:
            self._last_fetch = now
        log.info("fetched %d papers: %d new, %d updated", summary.fetched, summary.new, summary.updated)

    def tick(self) -> None:
        """Plan the digests that are due by local time, then deliver everything due."""
        now = self.clock()
        due: list[pipeline.Recipient] = []
        keys = []
        with self._lock:
            groups = list(self._groups.items())
        for (send_at, zone), recipients in groups:
            spec = recipients[0].spec
            key = (send_at, zone, pipeline.local_period(spec, now))
            if key in self._done or not pipeline.is_due(spec, now):
                continue
            due.extend(recipients)
            keys.append(key)
        if due:
            if self._last_fetch is None or now - self._last_fetch > FRESH_FETCH:
                self.fetch()
            try:
                summary = pipeline.plan_digests(
                    self.engine, due, as_of=now, lookback=self.settings.lookback_days,
                    period=lambda sp: pipeline.local_period(sp, now), from_addr=self.settings.mail_from,
                    now=now,
                )
            except DigestbotError as exc:
                log.error("planning digests failed: %s", exc)
            else:
                self._done.update(keys)
                if summary.planned or summary.skipped:
                    log.info("planned %d digests (%d with nothing new)", summary.planned, summary.skipped)
        self.deliver()

    def deliver(self) -> pipeline.DeliveryReport | None:
        now = self.clock()
        if self._paused_until is not None and now < self._paused_until:
            return None
        d = self.delivery
        try:
            report = pipeline.deliver_due(
                self.engine, backend=d.backend, mail=d.mail, policy=d.policy, limiter=d.limiter,
                clock=self.clock, stop=self.stop_event,
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
        if report.sent or report.deferred or report.failed:
            log.info("sent %d, deferred %d, failed %d", len(report.sent), len(report.deferred), len(report.failed))
        for email, reason in report.failed:
            log.error("digest for %s failed: %s", email, reason)
        return report

    # -- running ----------------------------------------------------------------------------
    def stop(self, *_args: object) -> None:
        """Stop after the message in hand; safe to call from a signal handler."""
        if self.stop_event.is_set():
            return
        log.info("stopping")
        self.stop_event.set()
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    def run_forever(self) -> None:
        """Hold the one-daemon lock and run the scheduler until SIGTERM or SIGINT."""
        with daemon_lock(self.engine):
            executor = ThreadPoolExecutor(max_workers=1)
            scheduler = BlockingScheduler(
                timezone=UTC,
                executors={"default": executor},
                job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            )
            self._scheduler = scheduler
            now = self.clock()
            scheduler.add_job(
                self.fetch, IntervalTrigger(minutes=self.settings.fetch_interval_minutes),
                id="fetch", next_run_time=now,
            )
            scheduler.add_job(self.tick, IntervalTrigger(seconds=60), id="tick", next_run_time=now)
            previous = {
                sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
            }
            log.info("digestbot daemon started (fetch every %d min)", self.settings.fetch_interval_minutes)
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
