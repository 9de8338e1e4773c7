"""digestbot.schedule: periods of daily and weekly subscribers, when they are due, weekly windows."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from hypothesis import given
from hypothesis import strategies as st

from digestbot import schedule
from digestbot.subscribers import WEEKDAYS, SubscriberSpec


def spec(**changes: object) -> SubscriberSpec:
    base: dict[str, object] = {
        "email": "a@example.org",
        "name": None,
        "keywords": ("x",),
        "exclude": (),
        "authors": (),
        "min_upvotes": 0,
        "send_at": time(7, 0),
        "timezone": "Europe/Paris",
        "max_papers": 25,
        "send_empty": False,
    }
    base.update(changes)
    return SubscriberSpec(**base)  # type: ignore[arg-type]


moments = st.datetimes(
    min_value=datetime(2020, 1, 1), max_value=datetime(2035, 1, 1), timezones=st.just(UTC)
)


@given(now=moments, weekday=st.sampled_from(WEEKDAYS))
def test_a_weekly_period_starts_on_the_weekday_within_the_last_week(
    now: datetime, weekday: str
) -> None:
    """A weekly subscriber's period is named by the latest chosen weekday on or before their local date."""
    sp = spec(frequency="weekly", weekday=weekday)
    start = date.fromisoformat(schedule.local_period(sp, now))
    local = now.astimezone(sp.tz).date()
    assert start.weekday() == WEEKDAYS.index(weekday)
    assert timedelta(0) <= local - start < timedelta(days=7)


@given(now=moments)
def test_a_daily_period_is_the_local_date_and_off_is_never_due(now: datetime) -> None:
    """A daily period is the local date, due once send_at has passed; an `off` subscriber is never due."""
    daily = spec()
    local = now.astimezone(daily.tz)
    assert schedule.local_period(daily, now) == local.date().isoformat()
    assert schedule.is_due(daily, now) == (local.time() >= time(7, 0))
    assert not schedule.is_due(spec(frequency="off"), now)


def test_weekly_is_due_from_the_weekday_send_time_until_the_week_ends() -> None:
    """A Monday 07:00 weekly digest is not due Monday 06:59 (still last week's period), due from 07:00 and any later day of the week."""
    sp = spec(frequency="weekly", weekday="monday", timezone="UTC")
    monday = datetime(2026, 3, 9, tzinfo=UTC)
    assert schedule.local_period(sp, monday + timedelta(hours=6, minutes=59)) == "2026-03-09"
    assert not schedule.is_due(sp, monday + timedelta(hours=6, minutes=59))
    assert schedule.is_due(sp, monday + timedelta(hours=7))
    assert schedule.is_due(sp, monday + timedelta(days=3, hours=1))
    assert schedule.local_period(sp, monday + timedelta(days=6, hours=23)) == "2026-03-09"
    assert schedule.local_period(sp, monday - timedelta(minutes=1)) == "2026-03-02"


def test_a_manual_send_with_a_date_plans_the_week_holding_that_date() -> None:
    """`--date` on a Wednesday names the week that began on the subscriber's weekday before it."""
    sp = spec(frequency="weekly", weekday="tuesday")
    at = datetime(2026, 3, 5, tzinfo=UTC)
    assert schedule.period(sp, day=date(2026, 3, 4), at=at) == "2026-03-03"
    assert schedule.period(spec(), day=date(2026, 3, 4), at=at) == "2026-03-04"


def test_group_keys_split_daily_weekly_and_weekdays() -> None:
    """Subscribers due at different moments (daily, weekly on Monday, weekly on Friday) never share a group key."""
    keys = {
        schedule.group_key(spec()),
        schedule.group_key(spec(frequency="weekly", weekday="monday")),
        schedule.group_key(spec(frequency="weekly", weekday="friday")),
        schedule.group_key(spec(frequency="off")),
    }
    assert len(keys) == 4


def test_a_first_weekly_window_reaches_back_a_week() -> None:
    """A new weekly subscriber's window starts six days before the run's day (the lookback when longer); a daily one's the lookback days before."""
    at = datetime(2026, 3, 9, 7, tzinfo=UTC)
    weekly = schedule.Windows.as_of(at, lookback=2, frequency="weekly")
    daily = schedule.Windows.as_of(at, lookback=2)
    assert weekly.first_day == datetime(2026, 3, 3, tzinfo=UTC)
    assert daily.first_day == datetime(2026, 3, 7, tzinfo=UTC)
    assert schedule.Windows.as_of(at, lookback=10, frequency="weekly").first_day == datetime(
        2026, 2, 27, tzinfo=UTC
    )


def test_a_first_weekly_window_mid_week_is_the_week_so_far() -> None:
    """A weekly subscriber's first digest sent mid-week covers the week so far: from the period's weekday date."""
    at = datetime(2026, 3, 4, 12, tzinfo=UTC)  # a Wednesday; the week started Monday 2026-03-02
    weekly = schedule.Windows.as_of(at, lookback=2, frequency="weekly", period="2026-03-02")
    assert weekly.first_day == datetime(2026, 3, 2, tzinfo=UTC)
    on_the_day = schedule.Windows.as_of(
        datetime(2026, 3, 9, 7, tzinfo=UTC), lookback=2, frequency="weekly", period="2026-03-09"
    )
    assert on_the_day.first_day == datetime(2026, 3, 3, tzinfo=UTC)  # the week just ended
