"""What every feed source produces: plain, validated paper values with no database attached.

Also the one home of the feed limits (how long a field may be, how large a response) and of
the per-day result of fetching a window of days.
"""

from __future__ import annotations

import os
from collections.abc import Sized
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

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


class Reject(Exception):
    """Why one item of a response is unusable; the source turns it into a FetchError that names
    the response and the item, and rejects the whole response."""


def over_limit(name: str, size: int, limit: int, unit: str = "characters") -> str:
    """The one wording of a field over its limit."""
    return f"{name} has {size:,} {unit}, over the limit of {limit:,}"


def check_length(value: Sized, limit: int | None, name: str, unit: str = "characters") -> None:
    """Reject (Reject) a field over its documented limit (the MAX_* above)."""
    if limit is not None and len(value) > limit:
        raise Reject(over_limit(name, len(value), limit, unit))


def read_saved(path: Path) -> bytes:
    """A saved feed file's bytes, refused (FetchError naming the file) over MAX_RESPONSE_BYTES."""
    try:
        with path.open("rb") as handle:
            content = handle.read(MAX_RESPONSE_BYTES + 1)
    except OSError as exc:
        raise FetchError(f"{path}: cannot read the saved feed: {exc.strerror or exc}") from exc
    if len(content) > MAX_RESPONSE_BYTES:
        raise FetchError(
            f"{path}: larger than {MAX_RESPONSE_BYTES:,} bytes; refused as not a saved feed"
        )
    return content


@dataclass(frozen=True, slots=True)
class FetchedPaper:
    """One paper as a source reported it. Datetimes are timezone-aware UTC.

    `arxiv_id` is the paper's key, the same for every source: its arXiv id (no version) when the
    paper has one; else `doi:` and its DOI in lower case; else its link (or guid). A field a
    source does not have is None (or empty), so merging never overwrites another source's value.
    """

    arxiv_id: str
    title: str
    summary: str
    authors: tuple[str, ...]
    published_at: datetime | None
    featured_at: datetime  # when the source featured it (HF: submittedOnDailyAt; arXiv: announced)
    upvotes: int | None = None  # None: the source has no upvotes (arXiv, feeds)
    num_comments: int | None = None
    github_repo: str | None = None
    github_stars: int | None = None
    project_page: str | None = None
    ai_summary: str | None = None
    ai_keywords: tuple[str, ...] = ()
    categories: tuple[str, ...] = field(default=())
    link: str | None = None
    """The paper's page, for a paper without an arXiv id (an arXiv paper links to arxiv.org)."""
    version: int | None = None
    """The arXiv version number, when the source says it."""
    revision: bool = False
    """A new version of a paper announced before (arXiv `replace`): it updates a stored paper's
    metadata and is never stored or mailed as a new paper."""


KINDS = ("hf", "arxiv", "feed")
"""The kinds of source a `[[sources]]` entry may name."""

KIND_FIELDS: dict[str, frozenset[str]] = {
    "hf": frozenset({"title", "abstract", "author", "keyword"}),
    "arxiv": frozenset({"title", "abstract", "author", "category"}),
    "feed": frozenset({"title", "abstract", "author", "category"}),
}
"""The query fields each kind of source can fill (`source:` always works); `check` warns about
a query field that no configured source fills, since it can never match."""


UPVOTED_KINDS = frozenset({"hf"})
"""The kinds of source whose papers have upvotes (what `trending` and `min_upvotes` read)."""


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """One validated `[[sources]]` entry of the configuration file (or the default HF source)."""

    name: str  # unique; shown in digests and status; what `sources = [...]` and `source:` name
    kind: str  # one of KINDS
    url: str | None = None  # None: the kind's default (hf: DIGESTBOT_FEED_URL; arxiv: its RSS)
    categories: tuple[str, ...] = ()  # arxiv only: e.g. ("cs.CL", "cs.LG")
    api_url: str | None = None  # arxiv only; None: https://export.arxiv.org/api/query
    line: int | None = field(default=None, compare=False)  # where it is in the file


@dataclass(frozen=True, slots=True)
class Validators:
    """What a conditional GET sends back (If-None-Match / If-Modified-Since); kept per source."""

    etag: str | None = None
    last_modified: str | None = None


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
    validators: Validators | None = None
    """For the next conditional GET (None: the source does not use them, or got none)."""
    not_modified: bool = False
    """The source answered 304 Not Modified: nothing new since the validators given."""

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


def source_location(
    url: str | os.PathLike[str],
    client: object | None,
    *,
    retries: int,
    backoff: float,
    what: str,
) -> FeedLocation:
    """The checks every source's constructor makes, as ValueError: retries and backoff are not
    negative, the location is one locate_feed understands, and an http(s) one comes with an
    HTTP client. `what` names the source in the message ("feed", "arXiv source")."""
    if retries < 0:
        raise ValueError("retries must be 0 or more")
    if backoff < 0:
        raise ValueError("backoff must be 0 or more")
    where = locate_feed(url)
    if where.kind == "http" and client is None:
        raise ValueError(f"an http(s) {what} needs a client (see make_client)")
    return where


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
