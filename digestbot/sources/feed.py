"""Any RSS or Atom feed (bioRxiv, medRxiv, journal tables of contents), strictly parsed.

A feed has no dates to ask for: it is fetched once (conditional GET) and the entries dated inside
the window are kept. Each entry's key is its arXiv id when it carries one (link, id/guid, or DOI
10.48550/arXiv.ID), else `doi:` and its DOI in lower case, else its link or guid. An entry without
any key, or a field over its limit, rejects the whole response. Titles and summaries are HTML
turned into plain text (`feedxml.html_text`). Offline, the URL may name a saved feed file.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

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
    MAX_URL_CHARS,
    DayFailure,
    FetchedPaper,
    Reject,
    Validators,
    WindowResult,
    read_saved,
    source_location,
)
from digestbot.sources.feedxml import (
    BadDate,
    entry_text,
    feed_datetime,
    html_text,
    parse_feed,
    source_error,
)
from digestbot.sources.http import Pacer, get_conditional

__all__ = ["FeedSource", "paper_key", "parse_feed_entries"]

_ARXIV_IN = re.compile(
    r"(?:arxiv\.org/(?:abs|pdf)/|oai:arxiv\.org:|^arxiv:|10\.48550/arxiv\.)"
    r"(?P<id>[a-z-]+(?:\.[a-z]{2})?/\d{7}|\d{4}\.\d{4,5})(?:v\d+)?(?:\.pdf)?$",
    re.IGNORECASE,
)
_DOI_IN = re.compile(
    r"(?:^doi:\s*|^https?://(?:dx\.)?doi\.org/|^)(?P<doi>10\.\d{4,9}/\S+)$", re.IGNORECASE
)
_REJECTED = "the response was rejected and nothing from it was used"


def parse_feed_entries(content: bytes, *, url: str, now: datetime) -> list[FetchedPaper]:
    """Every entry of an RSS/Atom feed as a paper, or FetchError naming the URL, entry and field.

    `featured_at` is the entry's published (else updated) date, taken as UTC when it has no
    zone; an entry without any date gets `now` (the first time it is seen). `published_at` is
    the published date when the entry has one.
    """
    shown = text.snippet(url, 300)
    feed = parse_feed(content, url=url)
    papers: dict[str, FetchedPaper] = {}
    for index, entry in enumerate(feed.get("entries", [])):
        try:
            paper = _entry(entry, now=now)
        except Reject as exc:
            raise FetchError(f"{shown}: entry {index}{_hint(entry)}: {exc}; {_REJECTED}") from None
        papers.setdefault(paper.arxiv_id, paper)
    return list(papers.values())


def paper_key(*, links: list[str], ids: list[str], dois: list[str]) -> str | None:
    """The key of an entry from what it carries: arXiv id, else `doi:` DOI, else link, else id.

    `links` are its http(s) links, `ids` its id/guid values, `dois` its DOI-bearing fields
    (dc:identifier, prism:doi). None when it carries nothing usable.
    """
    for value in (*links, *ids, *dois):
        match = _ARXIV_IN.search(value.strip())
        if match:
            found = text.arxiv_id(match["id"])
            if found:
                return found
    for value in (*dois, *ids, *links):
        match = _DOI_IN.match(value.strip())
        if match:
            doi = match["doi"].rstrip(".,;").lower()
            if not text.has_unsafe(doi):
                return f"doi:{doi}"
    for value in links:
        link = text.safe_http_url(value)
        if link:
            return link
    for value in ids:
        guid = text.clean_line(value)
        if guid:
            return guid
    return None


def _entry(entry: Any, *, now: datetime) -> FetchedPaper:
    links = _links(entry)
    ids = [v for v in (entry_text(entry, "id", "id/guid", MAX_URL_CHARS),) if v.strip()]
    dois = [
        v
        for v in (
            entry_text(entry, "dc_identifier", "dc:identifier", MAX_URL_CHARS),
            entry_text(entry, "prism_doi", "prism:doi", MAX_URL_CHARS),
        )
        if v.strip()
    ]
    key = paper_key(links=links, ids=ids, dois=dois)
    if key is None:
        raise Reject("has no link, id or DOI")
    title = html_text(entry_text(entry, "title", "title", MAX_TITLE_CHARS))
    if not title:
        raise Reject("'title' is empty")
    summary = entry_text(entry, "summary", "summary", MAX_ABSTRACT_CHARS)
    dates: dict[str, datetime] = {}
    for field in ("published", "updated"):
        raw = entry_text(entry, field, field, 100)
        if raw.strip():
            try:
                dates[field] = feed_datetime(raw)
            except BadDate as exc:
                raise Reject(f"'{field}' {exc}") from None
    published_at = dates.get("published")
    featured_at = published_at or dates.get("updated") or now
    link = next((safe for value in links if (safe := text.safe_http_url(value))), None)
    if link is None and key.startswith("doi:"):
        link = text.safe_http_url(f"https://doi.org/{key.removeprefix('doi:')}")
    return FetchedPaper(
        arxiv_id=key,
        title=title,
        summary=html_text(summary),
        authors=_authors(entry),
        published_at=published_at,
        featured_at=featured_at,
        categories=_categories(entry),
        link=link,
    )


def _links(entry: Any) -> list[str]:
    found: list[str] = []
    for item in entry.get("links") or []:
        href = item.get("href") if isinstance(item, dict) else None
        if isinstance(href, str) and href.strip():
            if len(href) > MAX_URL_CHARS:
                raise Reject(f"a link has {len(href):,} characters, over {MAX_URL_CHARS:,}")
            if item.get("rel", "alternate") == "alternate":
                found.insert(0, href)
            else:
                found.append(href)
    link = entry_text(entry, "link", "link", MAX_URL_CHARS)
    if link.strip() and link not in found:
        found.insert(0, link)
    return found


def _authors(entry: Any) -> tuple[str, ...]:
    raw = entry.get("authors") or []
    if not raw and isinstance(entry.get("author"), str):
        raw = [{"name": entry["author"]}]
    if len(raw) > MAX_AUTHORS:
        raise Reject(f"'author' has {len(raw):,} entries, over the limit of {MAX_AUTHORS:,}")
    names: dict[str, None] = {}
    for position, author in enumerate(raw):
        name = author.get("name") if isinstance(author, dict) else None
        if not isinstance(name, str):
            continue
        if len(name) > MAX_AUTHOR_CHARS:
            raise Reject(
                f"'author[{position}]' has {len(name):,} characters, over the limit of "
                f"{MAX_AUTHOR_CHARS:,}"
            )
        cleaned = html_text(name)
        if cleaned:
            names.setdefault(cleaned, None)
    return tuple(names)


def _categories(entry: Any) -> tuple[str, ...]:
    tags = entry.get("tags") or []
    if len(tags) > MAX_KEYWORDS:
        raise Reject(f"'category' has {len(tags):,} entries, over the limit of {MAX_KEYWORDS:,}")
    seen: dict[str, None] = {}
    for position, tag in enumerate(tags):
        term = tag.get("term") if isinstance(tag, dict) else None
        if not isinstance(term, str):
            continue
        if len(term) > MAX_KEYWORD_CHARS:
            raise Reject(
                f"'category[{position}]' has {len(term):,} characters, over the limit of "
                f"{MAX_KEYWORD_CHARS:,}"
            )
        cleaned = text.clean_line(term)
        if cleaned:
            seen.setdefault(cleaned, None)
    return tuple(seen)


def _hint(entry: Any) -> str:
    for key in ("link", "id", "title"):
        value = entry.get(key)
        if isinstance(value, str) and value.strip():
            return f" ({text.snippet(value[:200], 60)!r})"
    return ""


class FeedSource:
    """One RSS/Atom feed, live over HTTP (conditional GET) or offline from a saved file."""

    def __init__(
        self,
        *,
        name: str,
        url: str,
        client: httpx.Client | None,
        retries: int = 3,
        backoff: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
        now: Callable[[], datetime] | None = None,
        pacer: Pacer | None = None,
    ) -> None:
        """`pacer`: the run's arXiv pacer, for a feed on an arXiv host (see app.make_sources)."""
        self.name = name
        self.url = os.fspath(url)
        self._where = source_location(
            self.url, client, retries=retries, backoff=backoff, what="feed"
        )
        self._client = client
        self._pacer = pacer
        self._retries = retries
        self._backoff = backoff
        self._sleep = sleep
        self._now = now or (lambda: datetime.now(UTC))

    def fetch_days(
        self,
        *,
        today: date,
        lookback: int,
        since: datetime | None = None,
        validators: Validators | None = None,
    ) -> WindowResult:
        """The entries dated from `today - lookback` 00:00 UTC up to now, fetched once.

        `since` is not needed (a feed cannot be asked for past days). A failed fetch fails
        every day of the window, since the one answer covered them all. 304 → not_modified.
        """
        if lookback < 0:
            raise ValueError("lookback must be 0 or more")
        days = tuple(today - timedelta(days=offset) for offset in range(lookback, -1, -1))
        now = self._now().astimezone(UTC)
        start = datetime.combine(days[0], datetime.min.time(), tzinfo=UTC)
        fresh: Validators | None = None
        try:
            if self._where.kind == "http":
                assert self._client is not None
                body, fresh = get_conditional(
                    self._client,
                    self._where.value,
                    validators=validators,
                    retries=self._retries,
                    backoff=self._backoff,
                    sleep=self._sleep,
                    now=self._now,
                    pacer=self._pacer,
                    setting=f"the url of source {self.name!r}",
                )
                if body is None:
                    return WindowResult((), (), days, validators=fresh, not_modified=True)
                shown = self.url
            else:
                path = self._offline_path()
                body, shown = read_saved(path), str(path)
            papers = parse_feed_entries(body, url=shown, now=now)
        except FetchError as exc:
            named = source_error(exc, self.name)
            return WindowResult(
                (), tuple(DayFailure(day, named) for day in days), days, validators=validators
            )
        kept = tuple(p for p in papers if start <= p.featured_at <= now)
        return WindowResult(kept, (), days, validators=fresh)

    def _offline_path(self) -> Path:
        if self._where.kind == "path":
            path = Path(self._where.value)
            if path.is_file():
                return path
        raise FetchError(
            f"url {text.snippet(self.url, 200)!r} is neither an http(s) URL nor an existing "
            "file; check the source's url"
        )
