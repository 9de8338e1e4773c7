"""Periods, local due times and digest windows: pure functions of the clock.

A subscriber gets one digest per period. A daily period is their local calendar date (or the
`--date` day a command was given); a weekly period is the week that starts on their `weekday`,
named by that day's date. A period's digest is due from `send_at` on its first day; a manual
send plans the current period at once. `off` has no period: nothing is due or planned. The run
acts "as of" a moment; a digest's window reaches back from there. Local time exists only here;
every datetime in and out is timezone-aware.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

MAX_WINDOW_DAYS = 30  # the oldest papers a digest can hold, in days before the run (or lookback)


DAILY, WEEKLY, OFF = "daily", "weekly", "off"
WEEK_DAYS = 7


class Scheduled(Protocol):
    """What scheduling needs of a subscriber (SubscriberSpec has it)."""

    @property
    def tz(self) -> ZoneInfo: ...

    @property
    def send_at(self) -> dt.time: ...

    @property
    def frequency(self) -> str: ...

    @property
    def weekday_number(self) -> int: ...


def day_start(day: date) -> datetime:
    """Midnight UTC at the start of `day`."""
    return datetime.combine(day, datetime.min.time(), tzinfo=UTC)


def day_window(day: date) -> tuple[datetime, datetime]:
    """[start, end) of `day` in UTC (papers are featured on UTC days)."""
    start = day_start(day)
    return start, start + timedelta(days=1)


def as_of(day: date | None, now: datetime) -> datetime:
    """The moment a run acts at: now, or the end of `day` (a --date) when that day is over."""
    if day is None:
        return now
    return min(day_start(day + timedelta(days=1)), now)


def period_start(spec: Scheduled, day: date) -> date:
    """The first day of the period holding local date `day`: the day itself (daily), or the
    latest `weekday` on or before it (weekly)."""
    if spec.frequency == WEEKLY:
        return day - timedelta(days=(day.weekday() - spec.weekday_number) % WEEK_DAYS)
    return day


def local_period(spec: Scheduled, now: datetime) -> str:
    """The subscriber's period at `now` (YYYY-MM-DD of its first local day): one digest each."""
    return period_start(spec, now.astimezone(spec.tz).date()).isoformat()


def period(spec: Scheduled, *, day: date | None, at: datetime) -> str:
    """The period a run at `at` plans for: the one holding the --date `day` when given, else the
    one holding the subscriber's local date."""
    return period_start(spec, day).isoformat() if day is not None else local_period(spec, at)


def is_due(spec: Scheduled, now: datetime) -> bool:
    """Has the send time of the subscriber's current period passed, in their own time zone?

    Daily: send_at has passed today. Weekly: send_at has passed on the week's weekday (so a
    daemon that was down on that day sends the week's digest when it is back). Off: never.
    """
    if spec.frequency == OFF:
        return False
    local = now.astimezone(spec.tz)
    start = period_start(spec, local.date())
    return local.date() > start or local.time() >= spec.send_at


def next_due(spec: Scheduled, period: str) -> datetime:
    """When the digest of the period after `period` is due: send_at, local time, on its first day."""
    days = WEEK_DAYS if spec.frequency == WEEKLY else 1
    first = date.fromisoformat(period) + timedelta(days=days)
    return datetime.combine(first, spec.send_at).replace(tzinfo=spec.tz)


def group_key(spec: Scheduled) -> tuple[dt.time, str, str, int]:
    """Subscribers with the same key are due at the same moments (the daemon plans them together)."""
    weekday = spec.weekday_number if spec.frequency == WEEKLY else -1
    return (spec.send_at, str(spec.tz), spec.frequency, weekday)


def span_days(frequency: str, lookback: int) -> int:
    """Days before the run's day that a first (or resumed) digest reaches: the lookback days for
    a daily digest, at least the six days before for a weekly one."""
    return max(lookback, WEEK_DAYS - 1) if frequency == WEEKLY else lookback


def catch_up_days(now: datetime, last_good: datetime | None, *, lookback: int, limit: int) -> int:
    """How many days before today a fetch at `now` reaches: `lookback`, or every UTC day since
    the last good fetch when that is more (after downtime), but at most max(limit, lookback)."""
    if last_good is None:
        return lookback
    behind = (now.astimezone(UTC).date() - last_good.astimezone(UTC).date()).days
    return min(behind, max(limit, lookback)) if behind > lookback else lookback


def run_day(at: datetime) -> date:
    """The UTC day `at` falls in (`at` may be the exclusive end of a --date day)."""
    return (at - timedelta(microseconds=1)).astimezone(UTC).date()


@dataclass(frozen=True, slots=True)
class Windows:
    """Which papers are new to whom, for digests planned as of one moment.

    A subscriber without a digest yet gets papers featured since `first_day` (the run's day and
    `lookback` days before it; for weekly, the week so far). One with a previous digest gets papers featured since that
    window's end, or featured within `lookback` days before it and stored by us after it was
    planned (fetched late). Nobody reaches back further than MAX_WINDOW_DAYS.
    """

    end: datetime
    first_day: datetime
    oldest: datetime
    grace: timedelta

    @classmethod
    def as_of(
        cls, at: datetime, *, lookback: int, frequency: str = DAILY, period: str | None = None
    ) -> Windows:
        """Windows of digests planned at `at`. A first daily digest reaches back `lookback` days.
        A first weekly digest of `period` is the week so far (from the period's first day); on
        that first day itself, it is the week just ended (see span_days)."""
        grace = timedelta(days=lookback)
        today = run_day(at)
        first_day = day_start(today) - timedelta(days=span_days(frequency, lookback))
        if frequency == WEEKLY and period is not None and date.fromisoformat(period) < today:
            first_day = day_start(date.fromisoformat(period))
        oldest = min(first_day, at - timedelta(days=MAX_WINDOW_DAYS))
        return cls(end=at, first_day=first_day, oldest=oldest, grace=grace)

    def since(self, previous_end: datetime) -> datetime:
        """Where a subscriber's next window starts, given where their last one ended."""
        return max(previous_end, self.oldest + self.grace)

    def fetch_start(self, starts: list[datetime]) -> datetime:
        """The oldest featured time any of these window starts can reach."""
        return min([self.first_day] + [s - self.grace for s in starts])

    def start_of(self, previous: tuple[datetime, datetime] | None) -> datetime:
        """Where the window of a subscriber with this `previous` (start, planned-at) begins."""
        return previous[0] if previous is not None else self.first_day

    def is_new(
        self,
        *,
        featured_at: datetime,
        first_seen_at: datetime,
        previous: tuple[datetime, datetime] | None,
    ) -> bool:
        """Is a paper new to a subscriber whose previous window started-at/planned-at is `previous`?"""
        if previous is None:
            return featured_at >= self.first_day
        start, planned_at = previous
        return featured_at >= start or (
            featured_at >= start - self.grace and first_seen_at > planned_at
        )
