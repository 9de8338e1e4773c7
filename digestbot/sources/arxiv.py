"""arXiv: the daily RSS listing of some categories, plus the API for catch-up after downtime.

RSS (`https://rss.arxiv.org/rss/cs.CL+cs.LG`) holds only the latest announcement: `new` and
`cross` items are new papers, `replace` and `replace-cross` new versions (FetchedPaper.revision).
An empty channel (Saturday, Sunday) is a normal day. When this source's last good fetch is older
than the announcement before the current one, the earlier days of the window come from the API
(`export.arxiv.org/api/query`, Atom, paged). Every request to arXiv waits its turn on a shared
Pacer (arXiv asks for 3 s between requests). Both formats are parsed strictly through
`feedxml.parse_feed`: one bad item rejects the whole response, naming the item and the field.
Offline, the URL may name a saved listing (today's) or a folder of `YYYY-MM-DD.xml` listings.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from datetime import time as day_time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx

from digestbot import text
from digestbot.errors import FetchError
from digestbot.sources.base import (
    MAX_ABSTRACT_CHARS,
    MAX_AUTHOR_CHARS,
    MAX_AUTHORS,
    MAX_KEYWORD_CHARS,
    MAX_KEYWORDS,
    MAX_TITLE_CHARS,
    DayFailure,
    FetchedPaper,
    Reject,
    Validators,
    WindowResult,
    over_limit,
    read_saved,
    source_location,
)
from digestbot.sources.feedxml import BadDate, entry_text, feed_datetime, parse_feed, source_error
from digestbot.sources.http import Pacer, get_bytes, get_conditional

__all__ = [
    "DEFAULT_API_URL",
    "DEFAULT_RSS_URL",
    "ApiPage",
    "ArxivListing",
    "ArxivSource",
    "parse_api",
    "parse_rss",
    "previous_announcement",
]

log = logging.getLogger(__name__)

DEFAULT_RSS_URL = "https://rss.arxiv.org/rss/"
DEFAULT_API_URL = "https://export.arxiv.org/api/query"
API_PAGE_SIZE = 200
LISTING_LAG = timedelta(days=5)  # a submission is listed at most this long after (weekends)
MAX_API_PAGES = 25  # 5,000 papers of catch-up; more means the window is far too long

_DESCRIPTION = re.compile(
    r"\s*arXiv:(?P<id>\S+?)v(?P<version>\d{1,4})\s+Announce Type:\s*(?P<type>[A-Za-z-]+)\s*"
    r"(?:Abstract:\s*)?",
)
_ANNOUNCE_TYPES = {"new": False, "cross": False, "replace": True, "replace-cross": True}
_ABS_ID = re.compile(r"^https?://(?:export\.)?arxiv\.org/abs/(?P<id>.+?)(?:v(?P<version>\d+))?$")
_AUTHOR_SPLIT = re.compile(r",|\s+and\s+|^and\s+")
_REJECTED = "the response was rejected and nothing from it was used"


@dataclass(frozen=True, slots=True)
class ArxivListing:
    """One RSS answer: when it was announced (None if the channel does not say) and its papers."""

    announced_at: datetime | None
    papers: tuple[FetchedPaper, ...]


@dataclass(frozen=True, slots=True)
class ApiPage:
    """One API answer: its papers and the opensearch counts used to page on."""

    papers: tuple[FetchedPaper, ...]
    total_results: int
    start_index: int
    items_per_page: int


# ----------------------------------------------------------------------------------------------
# Parsing
# ----------------------------------------------------------------------------------------------


def parse_rss(content: bytes, *, url: str) -> ArxivListing:
    """An arXiv RSS listing, or FetchError naming the URL, the item and the field."""
    shown = text.snippet(url, 300)
    feed = parse_feed(content, url=url)
    channel = feed.get("feed", {})
    announced: datetime | None = None
    for key in ("published", "updated"):
        raw = channel.get(key)
        if isinstance(raw, str) and raw.strip():
            try:
                announced = feed_datetime(raw)
            except BadDate as exc:
                raise FetchError(f"{shown}: the channel's date {exc}; {_REJECTED}") from None
            break
    papers: list[FetchedPaper] = []
    for index, entry in enumerate(feed.get("entries", [])):
        try:
            papers.append(_rss_item(entry))
        except Reject as exc:
            raise FetchError(
                f"{shown}: {_label('item', index, entry)}: {exc}; {_REJECTED}"
            ) from None
    if announced is None and papers:
        announced = min(p.featured_at for p in papers)
    return ArxivListing(announced_at=announced, papers=tuple(_dedupe(papers)))


def _rss_item(entry: Any) -> FetchedPaper:
    description = entry_text(entry, "summary", "description", MAX_ABSTRACT_CHARS + 200)
    match = _DESCRIPTION.match(description)
    if match is None:
        raise Reject(
            "'description' does not start with 'arXiv:ID vN Announce Type: TYPE' "
            f"(it starts {text.snippet(description[:60], 60)!r})"
        )
    arxiv_id = text.arxiv_id(match["id"])
    if arxiv_id is None:
        raise Reject(f"'description' names no arXiv id: {text.snippet(match['id'][:60], 40)!r}")
    kind = match["type"].lower()
    declared = entry_text(entry, "arxiv_announce_type", "arxiv:announce_type", 40).strip().lower()
    kind = declared or kind
    if kind not in _ANNOUNCE_TYPES:
        raise Reject(
            f"'arxiv:announce_type' is {text.snippet(kind, 30)!r}, not one of new, "
            "cross, replace, replace-cross"
        )
    abstract = description[match.end() :]
    if len(abstract) > MAX_ABSTRACT_CHARS:
        raise Reject(over_limit("'description'", len(abstract), MAX_ABSTRACT_CHARS, "characters"))
    title = text.plain_text(entry_text(entry, "title", "title", MAX_TITLE_CHARS))
    if not title:
        raise Reject("'title' is empty")
    raw_date = entry_text(entry, "published", "pubDate", 100)
    if not raw_date.strip():
        raise Reject("missing 'pubDate'")
    try:
        featured_at = feed_datetime(raw_date)
    except BadDate as exc:
        raise Reject(f"'pubDate' {exc}") from None
    creators = entry_text(entry, "author", "dc:creator", MAX_AUTHORS * (MAX_AUTHOR_CHARS + 2))
    return FetchedPaper(
        arxiv_id=arxiv_id,
        title=title,
        summary=text.plain_text(abstract),
        authors=_split_authors(creators),
        published_at=None,
        featured_at=featured_at,
        categories=_categories(entry),
        version=int(match["version"]),
        revision=_ANNOUNCE_TYPES[kind],
    )


def parse_api(content: bytes, *, url: str) -> ApiPage:
    """One arXiv API (Atom) answer, or FetchError naming the URL, the entry and the field."""
    shown = text.snippet(url, 300)
    feed = parse_feed(content, url=url)
    channel = feed.get("feed", {})
    counts = []
    for key in ("opensearch_totalresults", "opensearch_startindex", "opensearch_itemsperpage"):
        raw = channel.get(key)
        try:
            value = int(str(raw).strip()) if raw is not None else -1
        except ValueError:
            value = -2
        if value < -1 or value >= 2**31:
            raise FetchError(
                f"{shown}: 'opensearch:{key.removeprefix('opensearch_')}' is not a whole number: "
                f"{text.snippet(str(raw), 40)!r}; {_REJECTED}"
            )
        counts.append(value)
    entries = feed.get("entries", [])
    if counts[0] == -1 and entries:
        raise FetchError(
            f"{shown}: no 'opensearch:totalResults'; not an arXiv API answer; {_REJECTED}"
        )
    papers: list[FetchedPaper] = []
    for index, entry in enumerate(entries):
        try:
            papers.append(_api_entry(entry))
        except Reject as exc:
            raise FetchError(
                f"{shown}: {_label('entry', index, entry)}: {exc}; {_REJECTED}"
            ) from None
    total, start, per_page = (max(c, 0) for c in counts)
    return ApiPage(
        papers=tuple(_dedupe(papers)),
        total_results=total,
        start_index=start,
        items_per_page=per_page or len(papers),
    )


def _api_entry(entry: Any) -> FetchedPaper:
    raw_id = entry_text(entry, "id", "id", 300).strip()
    match = _ABS_ID.match(raw_id)
    arxiv_id = text.arxiv_id(match["id"]) if match else None
    if match is None or arxiv_id is None:
        raise Reject(f"'id' is not an arXiv abstract URL: {text.snippet(raw_id[:200], 60)!r}")
    title = text.plain_text(entry_text(entry, "title", "title", MAX_TITLE_CHARS))
    if not title:
        raise Reject("'title' is empty")
    raw_published = entry_text(entry, "published", "published", 100)
    if not raw_published.strip():
        raise Reject("missing 'published'")
    try:
        published_at = feed_datetime(raw_published)
    except BadDate as exc:
        raise Reject(f"'published' {exc}") from None
    authors = entry.get("authors") or []
    if len(authors) > MAX_AUTHORS:
        raise Reject(over_limit("'author'", len(authors), MAX_AUTHORS, "entries"))
    names: list[str] = []
    for position, author in enumerate(authors):
        name = author.get("name") if isinstance(author, dict) else None
        if not isinstance(name, str):
            continue
        if len(name) > MAX_AUTHOR_CHARS:
            raise Reject(over_limit(f"'author[{position}].name'", len(name), MAX_AUTHOR_CHARS))
        cleaned = text.clean_line(name)
        if cleaned:
            names.append(cleaned)
    categories = list(_categories(entry))
    primary = entry.get("arxiv_primary_category")
    term = primary.get("term") if isinstance(primary, dict) else None
    if isinstance(term, str) and text.clean_line(term):
        first = text.clean_line(term)[:MAX_KEYWORD_CHARS]
        categories = [first, *(c for c in categories if c != first)]
    return FetchedPaper(
        arxiv_id=arxiv_id,
        title=title,
        summary=text.plain_text(entry_text(entry, "summary", "summary", MAX_ABSTRACT_CHARS)),
        authors=tuple(names),
        published_at=published_at,
        featured_at=listing_after(published_at),
        categories=tuple(categories),
        version=int(match["version"]) if match["version"] else None,
    )


def _label(what: str, index: int, entry: Any) -> str:
    """'item N' plus the arXiv id or link it names, short and safe, for an error message."""
    hint = ""
    for key in ("link", "id"):
        value = entry.get(key) if hasattr(entry, "get") else None
        if isinstance(value, str) and value:
            hint = f" ({text.snippet(value[:200], 60)!r})"
            break
    return f"{what} {index}{hint}"


def _split_authors(creators: str) -> tuple[str, ...]:
    """arXiv's dc:creator, one comma-separated string ("A, B and C"), as author names."""
    names: list[str] = []
    for piece in _AUTHOR_SPLIT.split(text.clean_line(creators)):
        name = piece.strip()
        if not name:
            continue
        if len(name) > MAX_AUTHOR_CHARS:
            raise Reject(over_limit("an author in 'dc:creator'", len(name), MAX_AUTHOR_CHARS))
        names.append(name)
    if len(names) > MAX_AUTHORS:
        raise Reject(over_limit("'dc:creator'", len(names), MAX_AUTHORS, "authors"))
    return tuple(names)


def _categories(entry: Any) -> tuple[str, ...]:
    tags = entry.get("tags") or []
    if len(tags) > MAX_KEYWORDS:
        raise Reject(over_limit("'category'", len(tags), MAX_KEYWORDS, "entries"))
    seen: dict[str, None] = {}
    for position, tag in enumerate(tags):
        term = tag.get("term") if isinstance(tag, dict) else None
        if not isinstance(term, str):
            continue
        if len(term) > MAX_KEYWORD_CHARS:
            raise Reject(over_limit(f"'category[{position}]'", len(term), MAX_KEYWORD_CHARS))
        cleaned = text.clean_line(term)
        if cleaned:
            seen.setdefault(cleaned, None)
    return tuple(seen)


def _dedupe(papers: Iterable[FetchedPaper]) -> list[FetchedPaper]:
    """One paper per arXiv id, in first-seen order. When the same paper is both announced (new,
    cross, or caught up through the API) and revised (replace) in one window, it is a new paper
    (so it is stored) carrying the newest version's title, abstract, authors and version; its
    featured time is the announcement's."""
    seen: dict[str, FetchedPaper] = {}
    for paper in papers:
        have = seen.get(paper.arxiv_id)
        seen[paper.arxiv_id] = paper if have is None else _combine(have, paper)
    return list(seen.values())


def _combine(a: FetchedPaper, b: FetchedPaper) -> FetchedPaper:
    announced = [p for p in (a, b) if not p.revision]
    base = min(announced, key=lambda p: p.featured_at) if announced else a
    newest = max((a, b), key=lambda p: p.version or 0)
    return replace(
        base,
        title=newest.title,
        summary=newest.summary,
        authors=newest.authors,
        version=newest.version,
        categories=newest.categories or base.categories,
    )


# ----------------------------------------------------------------------------------------------
# Fetching
# ----------------------------------------------------------------------------------------------


ARXIV_ZONE = ZoneInfo("America/New_York")
SUBMISSION_CUTOFF = day_time(14, 0)  # arXiv's daily deadline, US Eastern time


def listing_after(submitted_at: datetime) -> datetime:
    """The listing a submission appeared in, as the RSS dates it (00:00 US Eastern, UTC here).

    The API gives only the submission time. arXiv announces, on the evening of each weekday, what
    was submitted before that day's 14:00 ET deadline; the listing carries the next weekday's
    date. So a paper submitted on Monday at 10:00 ET is in Tuesday's listing, one submitted on
    Friday after 14:00 or over the weekend in Tuesday's. Catch-up papers are dated this way, so
    they fall in the same windows as if the RSS had been read that day.
    """
    local = submitted_at.astimezone(ARXIV_ZONE)
    cutoff_day = local.date()
    if local.weekday() >= 5 or local.time() >= SUBMISSION_CUTOFF:
        cutoff_day = _next_weekday(cutoff_day)
    listed = _next_weekday(cutoff_day)
    return datetime.combine(listed, day_time(0, 0), tzinfo=ARXIV_ZONE).astimezone(UTC)


def _next_weekday(day: date) -> date:
    day += timedelta(days=1)
    while day.weekday() >= 5:
        day += timedelta(days=1)
    return day


def previous_announcement(announced_at: datetime) -> datetime:
    """The arXiv announcement before `announced_at`: the weekday before, at the same time."""
    before = announced_at - timedelta(days=1)
    while before.weekday() >= 5:  # no announcements on Saturday and Sunday
        before -= timedelta(days=1)
    return before


class ArxivSource:
    """The arXiv listing of some categories: RSS for the latest day, the API to catch up."""

    def __init__(
        self,
        *,
        name: str,
        categories: Sequence[str],
        url: str | None,
        api_url: str | None,
        client: httpx.Client | None,
        pacer: Pacer,
        retries: int = 3,
        backoff: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
        now: Callable[[], datetime] | None = None,
        api_page_size: int = API_PAGE_SIZE,
    ) -> None:
        if not 1 <= api_page_size <= 2000:
            raise ValueError("api_page_size must be between 1 and 2000")
        self.name = name
        self.categories = tuple(categories)
        if url is None and not self.categories:
            raise ValueError("an arXiv source needs categories or a url")
        self.url = (
            os.fspath(url) if url is not None else DEFAULT_RSS_URL + "+".join(self.categories)
        )
        self.api_url = api_url or DEFAULT_API_URL
        self._where = source_location(
            self.url, client, retries=retries, backoff=backoff, what="arXiv source"
        )
        self._client = client
        self._pacer = pacer
        self._retries = retries
        self._backoff = backoff
        self._sleep = sleep
        self._now = now or (lambda: datetime.now(UTC))
        self._page_size = api_page_size

    def fetch_days(
        self,
        *,
        today: date,
        lookback: int,
        since: datetime | None = None,
        validators: Validators | None = None,
    ) -> WindowResult:
        """The window `today - lookback` … `today`: the RSS listing, then the API for missed days.

        The API is asked only when `since` (the aware start of this source's last good fetch) is None
        or older than the announcement before the RSS one. A failed RSS fails `today`; a failed
        API call fails each catch-up day; the good parts are kept. 304 → not_modified, no papers.
        """
        if lookback < 0:
            raise ValueError("lookback must be 0 or more")
        days = tuple(today - timedelta(days=offset) for offset in range(lookback, -1, -1))
        if self._where.kind != "http":
            return self._fetch_offline(days)
        papers: list[FetchedPaper] = []
        failures: list[DayFailure] = []
        announced: datetime | None = None
        fresh: Validators | None = validators
        not_modified = False
        try:
            body, answered = get_conditional(
                self._http(),
                self.url,
                validators=validators,
                pacer=self._pacer,
                **self._get_options(),
            )
            if body is None:
                not_modified = True
            else:
                listing = parse_rss(body, url=self.url)
                announced = listing.announced_at
                papers.extend(listing.papers)
            fresh = answered  # a rejected answer's validators are not kept: it is fetched again
        except FetchError as exc:
            failures.append(DayFailure(today, source_error(exc, self.name)))
        reference = announced or datetime.combine(today, datetime.min.time(), tzinfo=UTC)
        start = datetime.combine(days[0], datetime.min.time(), tzinfo=UTC)
        if since is not None:
            start = max(start, since.astimezone(UTC) - timedelta(days=1))
        catch_up = tuple(d for d in days if start.date() <= d < reference.date())
        if catch_up and (since is None or since < previous_announcement(reference)):
            try:
                papers.extend(self._catch_up(start))
            except FetchError as exc:
                error = source_error(exc, self.name)
                failures.extend(DayFailure(day, error) for day in catch_up)
        return WindowResult(
            papers=tuple(_dedupe(papers)),
            failures=tuple(sorted(failures, key=lambda f: f.day)),
            days=days,
            validators=fresh,
            not_modified=not_modified and not papers and not failures,
        )

    def api_query(self, *, start: int) -> httpx.URL:
        """The API URL of one page of the categories' papers, newest submissions first."""
        query = " OR ".join(f"cat:{category}" for category in self.categories)
        return httpx.URL(self.api_url).copy_merge_params(
            {
                "search_query": query,
                "sortBy": "submittedDate",
                "sortOrder": "descending",
                "start": str(start),
                "max_results": str(self._page_size),
            }
        )

    def _catch_up(self, start: datetime) -> list[FetchedPaper]:
        """Page through the API until entries are older than `start` (or the results end)."""
        if not self.categories:
            return []
        found: list[FetchedPaper] = []
        offset = 0
        for _ in range(MAX_API_PAGES):
            url = self.api_query(start=offset)
            content = get_bytes(self._http(), url, pacer=self._pacer, **self._get_options())
            page = parse_api(content, url=str(url))
            found.extend(p for p in page.papers if p.featured_at >= start)
            offset += len(page.papers)
            # sorted by submission: one submitted LISTING_LAG before `start` is listed before it
            older = any(
                p.published_at is not None and p.published_at < start - LISTING_LAG
                for p in page.papers
            )
            if older or len(page.papers) < self._page_size or offset >= page.total_results:
                return found
        log.warning(
            "arXiv source %s: catch-up stopped after %d API pages", self.name, MAX_API_PAGES
        )
        return found

    def _fetch_offline(self, days: tuple[date, ...]) -> WindowResult:
        path = self._offline_path()
        if path.is_file():
            try:
                listing = parse_rss(read_saved(path), url=str(path))
            except FetchError as exc:
                return WindowResult((), (DayFailure(days[-1], exc),), days)
            return WindowResult(listing.papers, (), days)
        papers: list[FetchedPaper] = []
        failures: list[DayFailure] = []
        for day in days:
            saved = path / f"{day.isoformat()}.xml"
            if not saved.exists():
                continue
            try:
                papers.extend(parse_rss(read_saved(saved), url=str(saved)).papers)
            except FetchError as exc:
                failures.append(DayFailure(day, exc))
        return WindowResult(tuple(_dedupe(papers)), tuple(failures), days)

    def _offline_path(self) -> Path:
        if self._where.kind == "path":
            path = Path(self._where.value)
            if path.is_file() or path.is_dir():
                return path
        raise FetchError(
            f"source {self.name!r}: url {text.snippet(self.url, 200)!r} is neither an http(s) URL "
            "nor an existing file or folder; check the source's url"
        )

    def _http(self) -> httpx.Client:
        assert self._client is not None
        return self._client

    def _get_options(self) -> dict[str, Any]:
        return {
            "retries": self._retries,
            "backoff": self._backoff,
            "sleep": self._sleep,
            "now": self._now,
            "setting": f"the url of source {self.name!r}",
        }
