"""The Hugging Face daily papers feed: a day (every page) or a window of days, strictly parsed.

Format: `GET https://huggingface.co/api/daily_papers?date=YYYY-MM-DD&limit=100&p=N` answers a JSON
list of items, each `{"paper": {...}, "numComments": N, ...}`. A response that is not that shape is
rejected whole (FetchError naming the URL and the problem), so nothing half-parsed is ever stored;
so is one with an item over a field limit (digestbot.sources.base) or a body over the byte cap.
A window of days is fetched day by day (`fetch_days`): a bad day is rejected alone.
Offline, the feed URL may name a saved response (a file) or a folder of `YYYY-MM-DD.json` files.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from digestbot import text
from digestbot.errors import FeedUnavailableError, FetchError
from digestbot.sources.base import (
    MAX_ABSTRACT_CHARS,
    MAX_AI_SUMMARY_CHARS,
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
    check_length,
    read_saved,
    source_location,
)
from digestbot.sources.http import get_bytes, make_client

__all__ = ["HFDailyPapers", "make_client", "parse_daily_papers"]

log = logging.getLogger(__name__)

MAX_PAGE_SIZE = 100  # the API's own maximum for `limit`
MAX_PAGES = 100  # 10,000 papers in a day would mean the feed ignores `p`

_ISO_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")


# ----------------------------------------------------------------------------------------------
# Parsing
# ----------------------------------------------------------------------------------------------


def parse_daily_papers(content: bytes, *, url: str) -> list[FetchedPaper]:
    """Parse one response body into papers, one per item, or reject it whole with FetchError.

    Required per item: `paper.id` (an arXiv id), `paper.title`, `paper.submittedOnDailyAt`.
    Everything else is optional; a present field of the wrong type is still an error.
    """
    shown = text.snippet(str(url), 300)
    data = _decode_json(content, url=shown)
    if not isinstance(data, list):
        detail = ""
        if isinstance(data, dict) and isinstance(data.get("error"), str):
            detail = f" (it says: {text.snippet(data['error'])})"
        raise FetchError(
            f"{shown}: expected a JSON list of papers, got {_kind(data)}{detail}; "
            "the response was rejected and nothing from it was used"
        )
    papers: list[FetchedPaper] = []
    for index, item in enumerate(data):
        try:
            papers.append(_parse_item(item))
        except Reject as exc:
            label = _item_label(index, item)
            raise FetchError(
                f"{shown}: {label}: {exc}; the response was rejected and nothing from it was used"
            ) from None
    return papers


def _decode_json(content: bytes, *, url: str) -> Any:
    if not isinstance(content, bytes | bytearray | memoryview):
        raise FetchError(
            f"{url}: expected the response body as bytes, got {type(content).__name__}"
        )
    content = bytes(content)
    head = content.lstrip(b"\xef\xbb\xbf \t\r\n")[:200]
    if not head:
        raise FetchError(f"{url}: empty response where a JSON list of papers was expected")
    if head.startswith(b"<"):
        start = text.snippet(head.decode("utf-8", "replace"), 60)
        raise FetchError(f"{url}: the response is HTML or XML, not JSON (it starts with {start!r})")
    try:
        return json.loads(content)
    except json.JSONDecodeError as exc:
        truncated = exc.pos >= len(exc.doc.rstrip()) - 1
        what = "truncated JSON (the response ends early)" if truncated else "invalid JSON"
        raise FetchError(
            f"{url}: {what}: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except UnicodeDecodeError:
        raise FetchError(f"{url}: the response is not valid UTF-8 JSON") from None
    except RecursionError:
        raise FetchError(f"{url}: the JSON is nested too deeply to be a list of papers") from None
    except ValueError as exc:  # e.g. numbers too long to convert
        raise FetchError(f"{url}: invalid JSON: {text.snippet(str(exc))}") from None


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int | float):
        return "a number"
    return type(value).__name__  # pragma: no cover


def _item_label(index: int, item: Any) -> str:
    label = f"item {index}"
    if isinstance(item, dict) and isinstance(item.get("paper"), dict):
        pid = item["paper"].get("id")
        if isinstance(pid, str) and pid:
            label += f" (paper {text.snippet(pid[:200], 40)!r})"
    return label


def _parse_item(item: Any) -> FetchedPaper:
    if not isinstance(item, dict):
        raise Reject(f"expected an object, got {_kind(item)}")
    paper = item.get("paper")
    if not isinstance(paper, dict):
        raise Reject(
            "missing 'paper' object"
            if paper is None
            else f"'paper' should be an object, got {_kind(paper)}"
        )
    f = _Fields(paper, "paper")
    arxiv_id = _arxiv_id(f.required_str("id"))
    title = text.plain_text(f.required_str("title", limit=MAX_TITLE_CHARS))
    if not title:
        raise Reject("'paper.title' is empty")
    featured_at = _datetime(f.required_str("submittedOnDailyAt"), "paper.submittedOnDailyAt")
    published_raw = f.optional_str("publishedAt")
    published_at = _datetime(published_raw, "paper.publishedAt") if published_raw else None
    top = _Fields(item, "")
    return FetchedPaper(
        arxiv_id=arxiv_id,
        title=title,
        summary=text.plain_text(f.optional_str("summary", limit=MAX_ABSTRACT_CHARS) or ""),
        authors=_authors(f.optional_list("authors", limit=MAX_AUTHORS)),
        published_at=published_at,
        featured_at=featured_at,
        upvotes=f.optional_count("upvotes") or 0,
        num_comments=top.optional_count("numComments") or 0,
        github_repo=text.safe_http_url(f.optional_str("githubRepo", limit=MAX_URL_CHARS)),
        github_stars=f.optional_count("githubStars"),
        project_page=text.safe_http_url(f.optional_str("projectPage", limit=MAX_URL_CHARS)),
        ai_summary=text.plain_text(f.optional_str("ai_summary", limit=MAX_AI_SUMMARY_CHARS) or "")
        or None,
        ai_keywords=_keywords(f.optional_list("ai_keywords", limit=MAX_KEYWORDS)),
    )


@dataclass(frozen=True)
class _Fields:
    """Typed access to one JSON object's fields; a wrong type raises Reject naming the field."""

    obj: dict[str, Any]
    prefix: str

    def _name(self, key: str) -> str:
        return f"'{self.prefix}.{key}'" if self.prefix else f"'{key}'"

    def required_str(self, key: str, *, limit: int | None = None) -> str:
        if key not in self.obj or self.obj[key] is None:
            raise Reject(f"missing {self._name(key)}")
        return self.optional_str(key, limit=limit) or ""

    def optional_str(self, key: str, *, limit: int | None = None) -> str | None:
        value = self.obj.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise Reject(f"{self._name(key)} should be a string, got {_kind(value)}")
        check_length(value, limit, self._name(key), "characters")
        return value

    def optional_list(self, key: str, *, limit: int | None = None) -> list[Any]:
        value = self.obj.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise Reject(f"{self._name(key)} should be a list, got {_kind(value)}")
        check_length(value, limit, self._name(key), "entries")
        return value

    def optional_count(self, key: str) -> int | None:
        value = self.obj.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise Reject(f"{self._name(key)} should be a whole number, got {_kind(value)}")
        if not 0 <= value < 2**63:
            raise Reject(f"{self._name(key)} is out of range ({value})")
        return value


def _arxiv_id(raw: str) -> str:
    found = text.arxiv_id(raw)
    if found is None:
        raise Reject(f"'paper.id' is not an arXiv id: {text.snippet(raw[:200], 40)!r}")
    return found  # without any version suffix


def _datetime(raw: str, name: str) -> datetime:
    """An ISO 8601 date and time as timezone-aware UTC; a naive value is taken to be UTC."""
    bad = Reject(f"'{name}' is not an ISO 8601 date and time: {text.snippet(raw, 40)!r}")
    value = raw.strip()
    if not _ISO_DATETIME.match(value):
        raise bad
    try:
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        parsed = parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        raise bad from None
    if parsed.year < 1990:
        raise bad
    return parsed


def _authors(raw: Iterable[Any]) -> tuple[str, ...]:
    names: list[str] = []
    for position, author in enumerate(raw):
        if not isinstance(author, dict):
            raise Reject(f"'paper.authors[{position}]' should be an object, got {_kind(author)}")
        name = author.get("name")
        if name is None:
            continue
        where = f"'paper.authors[{position}].name'"
        if not isinstance(name, str):
            raise Reject(f"{where} should be a string, got {_kind(name)}")
        check_length(name, MAX_AUTHOR_CHARS, where, "characters")
        cleaned = text.clean_line(name)
        if cleaned:
            names.append(cleaned)
    return tuple(names)


def _keywords(raw: Iterable[Any]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for position, keyword in enumerate(raw):
        if not isinstance(keyword, str):
            raise Reject(
                f"'paper.ai_keywords[{position}]' should be a string, got {_kind(keyword)}"
            )
        check_length(keyword, MAX_KEYWORD_CHARS, f"'paper.ai_keywords[{position}]'", "characters")
        cleaned = text.clean_line(keyword)
        if cleaned:
            seen.setdefault(cleaned, None)
    return tuple(seen)


# ----------------------------------------------------------------------------------------------
# Fetching
# ----------------------------------------------------------------------------------------------


class HFDailyPapers:
    """The Hugging Face daily papers feed, live over HTTP or offline from saved responses."""

    def __init__(
        self,
        *,
        feed_url: str,
        client: httpx.Client | None,
        retries: int = 3,
        sleep: Callable[[float], None] = time.sleep,
        page_size: int = 100,
        backoff: float = 1.0,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be between 1 and {MAX_PAGE_SIZE}")
        self.feed_url = os.fspath(feed_url)
        self._where = source_location(
            feed_url, client, retries=retries, backoff=backoff, what="feed"
        )
        self._client = client
        self._retries = retries
        self._sleep = sleep
        self._page_size = page_size
        self._backoff = backoff
        self._now = now or (lambda: datetime.now(UTC))

    def fetch_day(self, day: date) -> list[FetchedPaper]:
        """Every paper featured on `day` (all pages); [] for a day without papers.

        Offline, a saved-response file yields all its papers whatever the day.
        """
        if self._where.kind == "http":
            return self._fetch_day_http(day)
        path = self._offline_path()
        if path.is_dir():
            saved = path / f"{day.isoformat()}.json"
            if not saved.exists():
                return []
            return _dedupe(_read_saved(saved))
        return _dedupe(_read_saved(path))

    def fetch_window(self, *, today: date, lookback: int) -> list[FetchedPaper]:
        """Papers of `today` and the `lookback` days before it, oldest first, once per arXiv id.

        All or nothing: the first bad day raises its FetchError. `fetch_days` keeps the good days.
        """
        result = self.fetch_days(today=today, lookback=lookback)
        if result.failures:
            raise result.failures[0].error
        return list(result.papers)

    def fetch_days(
        self,
        *,
        today: date,
        lookback: int,
        since: datetime | None = None,
        validators: Validators | None = None,
    ) -> WindowResult:
        """Fetch `today` and the `lookback` days before it day by day; a bad day is rejected alone.

        `since` and `validators` are ignored (every day can be asked for, and the API sends no
        validators); they are accepted so every kind of source shares one `fetch_days`.

        The result holds the good days' papers (oldest first, once per arXiv id) and, per bad
        day, its FetchError. When the feed is unreachable (every retry used up), the remaining
        days are not tried and fail with the same error. A feed location that does not exist
        fails the whole window (FetchError raised).
        """
        if lookback < 0:
            raise ValueError("lookback must be 0 or more")
        if self._where.kind != "http" and self._offline_path().is_file():
            days = [today]
        else:
            days = [today - timedelta(days=offset) for offset in range(lookback, -1, -1)]
        papers: list[FetchedPaper] = []
        failures: list[DayFailure] = []
        unreachable: FetchError | None = None
        for day in days:
            if unreachable is not None:
                failures.append(DayFailure(day, unreachable))
                continue
            try:
                papers.extend(self.fetch_day(day))
            except FeedUnavailableError as exc:
                unreachable = exc
                failures.append(DayFailure(day, exc))
            except FetchError as exc:
                failures.append(DayFailure(day, exc))
        return WindowResult(
            papers=tuple(_dedupe(papers)), failures=tuple(failures), days=tuple(days)
        )

    def _offline_path(self) -> Path:
        where = self._where
        if where.kind == "path":
            path = Path(where.value)
            if path.is_file() or path.is_dir():
                return path
        raise FetchError(
            f"feed URL {text.snippet(self.feed_url, 200)!r} is neither an http(s) URL nor an "
            "existing file or directory; check DIGESTBOT_FEED_URL"
        )

    def _fetch_day_http(self, day: date) -> list[FetchedPaper]:
        assert self._client is not None
        base = httpx.URL(self._where.value)
        seen: dict[str, FetchedPaper] = {}
        for page in range(MAX_PAGES):
            url = base.copy_merge_params(
                {"date": day.isoformat(), "limit": str(self._page_size), "p": str(page)}
            )
            content = get_bytes(
                self._client,
                url,
                retries=self._retries,
                backoff=self._backoff,
                sleep=self._sleep,
                now=self._now,
                explain_client_error=lambda status, _body: self._explain(status, day),
            )
            papers = parse_daily_papers(content, url=str(url))
            fresh = [p for p in papers if p.arxiv_id not in seen]
            for paper in fresh:
                seen[paper.arxiv_id] = paper
            log.debug("GET %s: %d papers (%d new)", url, len(papers), len(fresh))
            if len(papers) < self._page_size:
                return list(seen.values())
            if not fresh:
                log.warning("GET %s repeated earlier papers; the feed may ignore paging", url)
                return list(seen.values())
        raise FetchError(
            f"{base}: more than {MAX_PAGES} pages of papers for {day.isoformat()}; "
            "the feed seems to ignore the page parameter p"
        )

    def _explain(self, status: int, day: date) -> str:
        today = self._now().astimezone(UTC).date()
        if status == 400 and day > today:
            return (
                f"{day.isoformat()} is in the future (today is {today.isoformat()} UTC) and the "
                "feed only answers for past days; ask for an earlier date"
            )
        if status == 400:
            return f"the feed rejected the date {day.isoformat()}; check the date"
        if status in (401, 403):
            return "the feed refused the credentials; check HF_TOKEN (or unset it)"
        if status == 404:
            return "no feed at this address; check DIGESTBOT_FEED_URL"
        return ""


def _read_saved(path: Path) -> list[FetchedPaper]:
    return parse_daily_papers(read_saved(path), url=str(path))


def _dedupe(papers: Iterable[FetchedPaper]) -> list[FetchedPaper]:
    """One paper per arXiv id; the first seen (the earliest featuring) wins."""
    seen: dict[str, FetchedPaper] = {}
    for paper in papers:
        seen.setdefault(paper.arxiv_id, paper)
    return list(seen.values())
