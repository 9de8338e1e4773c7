"""What every feed source produces: plain, validated paper values with no database attached.

Also the one home of the feed limits (how long a field may be, how large a response) and of
the per-day result of fetching a window of days.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import date, datetime

from digestbot.errors import FetchError, PartialFetchError
from digestbot.text import URL_MAX

MAX_RESPONSE_BYTES = 16 * 1024 * 1024
"""A feed response (one HTTP answer or one saved file) larger than this is refused unread."""

MAX_TITLE_CHARS = 1_000
MAX_ABSTRACT_CHARS = 20_000
MAX_AI_SUMMARY_CHARS = 5_000
MAX_AUTHORS = 1_000
MAX_AUTHOR_CHARS = 300
MAX_KEYWORDS = 100
MAX_KEYWORD_CHARS = 200
MAX_URL_CHARS = URL_MAX
"""Field limits, counted in characters as the feed sends them (before cleaning). An item over
any limit is rejected naming the paper and the field, and with it that day's whole response."""


@dataclass(frozen=True, slots=True)
class FetchedPaper:
    """One paper as a feed reported it. Datetimes are timezone-aware UTC."""

    arxiv_id: str
    title: str
    summary: str
    authors: tuple[str, ...]
    published_at: datetime | None
    featured_at: datetime  # when the feed featured it (HF: submittedOnDailyAt)
    upvotes: int = 0
    num_comments: int = 0
    github_repo: str | None = None
    github_stars: int | None = None
    project_page: str | None = None
    ai_summary: str | None = None
    ai_keywords: tuple[str, ...] = ()
    categories: tuple[str, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class DayFailure:
    """One day of a window whose response was rejected or could not be fetched."""

    day: date
    error: FetchError


@dataclass(frozen=True, slots=True)
class WindowResult:
    """A window of days, fetched day by day: the good days' papers and each bad day's error.

    A bad day is rejected alone: its papers are not in `papers`, the other days' are.
    """

    papers: tuple[FetchedPaper, ...]
    failures: tuple[DayFailure, ...] = ()
    days: tuple[date, ...] = ()
    """Every day the window covered, oldest first."""

    @property
    def ok(self) -> bool:
        return not self.failures

    def error(self) -> PartialFetchError | None:
        """One error naming every bad day and why (days with the same problem share one
        reason), or None when every day was good. The good days are meant to be stored."""
        if not self.failures:
            return None
        bad = [f.day for f in self.failures]
        good = [d.isoformat() for d in self.days if d not in bad]
        reasons: dict[str, list[str]] = {}
        for failure in self.failures:
            reasons.setdefault(str(failure.error), []).append(failure.day.isoformat())
        if len(reasons) == 1:
            detail = next(iter(reasons))
        else:
            detail = "; ".join(f"{', '.join(days)}: {why}" for why, days in reasons.items())
        shown = ", ".join(d.isoformat() for d in bad)
        if good:
            what = f"the feed failed for {shown} (the other days, {', '.join(good)}, were kept)"
        else:
            what = f"the feed failed for {shown}"
        return PartialFetchError(f"{what}: {detail}", days=tuple(bad))


@dataclass(frozen=True, slots=True)
class FeedLocation:
    """Where DIGESTBOT_FEED_URL points: an http(s) URL, a local path (file or folder), or
    nothing usable (`reason` says why)."""

    kind: str  # "http" | "path" | "bad"
    value: str  # the URL, or the path (file:// decoded, ~ expanded)
    reason: str = ""


def locate_feed(feed_url: str | os.PathLike[str]) -> FeedLocation:
    """The one decision of what a feed location is; settings and the feed source both call it.

    An http(s) URL needs a host; a file:// URL must be local (no host or `localhost`); any other
    `scheme://` is refused; everything else is a path, with a leading ~ expanded.
    """
    from urllib.parse import urlsplit
    from urllib.request import url2pathname

    text = os.fspath(feed_url).strip()
    try:
        parts = urlsplit(text)
    except ValueError as exc:
        return FeedLocation("bad", text, f"is not a URL ({exc})")
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        if not parts.netloc:
            return FeedLocation("bad", text, "has no host name")
        return FeedLocation("http", text)
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            return FeedLocation("bad", text, "names another host; use file:///PATH")
        return FeedLocation("path", url2pathname(parts.path))
    if "://" in text:
        return FeedLocation(
            "bad",
            text,
            f"has unsupported scheme {scheme!r}; expected an http(s) URL, a file:// URL or a path",
        )
    return FeedLocation("path", os.path.expanduser(text))
