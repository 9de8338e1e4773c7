"""Periods, local due times and digest windows: pure functions of the clock.

A subscriber gets one digest per period: their local calendar date (or the `--date` day a
command was given). The run acts "as of" a moment; a digest's window reaches back from there.
Local time exists only here; every datetime in and out is timezone-aware.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

MAX_WINDOW_DAYS = 30  # the oldest papers a digest can hold, in days before the run (or lookback)


class Scheduled(Protocol):
    """What scheduling needs of a subscriber (SubscriberSpec has it)."""

    @property
    def tz(self) -> ZoneInfo: ...

    @property
    def send_at(self) -> dt.time: ...


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


def local_period(spec: Scheduled, now: datetime) -> str:
    """The subscriber's local calendar date at `now`: one digest per subscriber per such date."""
    return now.astimezone(spec.tz).date().isoformat()


def period(spec: Scheduled, *, day: date | None, at: datetime) -> str:
    """The period a run at `at` plans for: the --date `day` when given, else the local date."""
    return day.isoformat() if day is not None else local_period(spec, at)


def is_due(spec: Scheduled, now: datetime) -> bool:
    """Has the subscriber's send time passed today, in their own time zone?"""
    return now.astimezone(spec.tz).time() >= spec.send_at


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
    `lookback` days before it). One with a previous digest gets papers featured since that
    window's end, or featured within `lookback` days before it and stored by us after it was
    planned (fetched late). Nobody reaches back further than MAX_WINDOW_DAYS.
    """

    end: datetime
    first_day: datetime
    oldest: datetime
    grace: timedelta

    @classmethod
    def as_of(cls, at: datetime, *, lookback: int) -> Windows:
        grace = timedelta(days=lookback)
        first_day = day_start(run_day(at)) - grace
        oldest = min(first_day, at - timedelta(days=MAX_WINDOW_DAYS))
        return cls(end=at, first_day=first_day, oldest=oldest, grace=grace)

    def since(self, previous_end: datetime) -> datetime:
        """Where a subscriber's next window starts, given where their last one ended."""
        return max(previous_end, self.oldest + self.grace)

    def fetch_start(self, starts: list[datetime]) -> datetime:
        """The oldest featured time any of these window starts can reach."""
        return min([self.first_day] + [s - self.grace for s in starts])

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
