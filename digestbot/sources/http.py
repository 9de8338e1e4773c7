"""Shared HTTP plumbing for feed sources: one well-behaved client and a GET with retries.

Nothing here is feed-specific. Also: conditional GET (ETag / Last-Modified) and a Pacer that
spaces requests to one host. The retry loop sleeps through an injected `sleep` and reads the
clock through an injected `now`, so tests run it without waiting or patching time.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

from digestbot import __version__, text
from digestbot.errors import ConfigError, FeedUnavailableError, FetchError
from digestbot.sources.base import MAX_RESPONSE_BYTES, Validators
from digestbot.text import snippet

log = logging.getLogger(__name__)

USER_AGENT = f"digestbot/{__version__} (+https://github.com/digestbot/digestbot)"
FEED_ACCEPT = (
    "application/rss+xml, application/atom+xml, application/xml;q=0.9, text/xml;q=0.9, */*;q=0.1"
)
"""The Accept header of a client for XML feeds (arXiv RSS and API, any RSS/Atom feed)."""
MAX_RETRY_AFTER = 300.0  # never wait longer than this on the server's word
MAX_BACKOFF = 60.0  # cap of the exponential backoff between attempts

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504}) | frozenset(range(505, 600))


def make_client(
    *,
    timeout: float,
    token: str | None,
    transport: httpx.BaseTransport | None = None,
    accept: str = "application/json",
) -> httpx.Client:
    """The HTTP client for feeds: descriptive User-Agent, timeout on every request, TLS verified.

    The bearer token is sent only in the Authorization header (httpx drops it on cross-origin
    redirects) and never appears in a message or log line.
    """
    if not timeout > 0:
        raise ConfigError("must be a positive number of seconds", field="DIGESTBOT_FETCH_TIMEOUT")
    headers = {"User-Agent": USER_AGENT, "Accept": accept}
    token = (token or "").strip()
    if token:
        if any(ch.isspace() or not ch.isprintable() for ch in token):
            # Do not echo the token: it is a secret.
            raise ConfigError("contains spaces or control characters", field="HF_TOKEN")
        headers["Authorization"] = f"Bearer {token}"
    return httpx.Client(
        headers=headers,
        timeout=httpx.Timeout(timeout),
        follow_redirects=True,
        transport=transport,
    )


def retry_after_seconds(headers: httpx.Headers, *, now: datetime) -> float | None:
    """Seconds the server asks us to wait (Retry-After: seconds or HTTP-date), capped; else None.

    An HTTP-date is measured against the response's own Date header when present (immune to
    clock skew), else against `now`. Without Retry-After, the `t=` of a RateLimit header is used.
    """
    value = headers.get("retry-after", "").strip()
    seconds: float | None = None
    if value:
        if value.isdigit():
            seconds = float(value)
        else:
            try:
                when = parsedate_to_datetime(value)
            except (TypeError, ValueError, IndexError, OverflowError):
                when = None
            if when is not None:
                if when.tzinfo is None:
                    when = when.replace(tzinfo=UTC)
                ref = now
                try:
                    served = parsedate_to_datetime(headers.get("date", ""))
                    ref = served if served.tzinfo else served.replace(tzinfo=UTC)
                except (TypeError, ValueError, IndexError, OverflowError):
                    pass
                seconds = (when - ref).total_seconds()
    if seconds is None:
        match = re.search(r"(?:^|[;,\s])t=(\d+)", headers.get("ratelimit", ""))
        if match:
            seconds = float(match.group(1))
    if seconds is None:
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def backoff_delay(attempt: int, *, base: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with "equal jitter": in [d/2, d] for d = base·2^attempt (capped).

    Consecutive ranges touch but do not overlap, so a delay never shrinks from one try to the next.
    """
    ceiling = min(base * (2**attempt), MAX_BACKOFF)
    return ceiling * (rng or random).uniform(0.5, 1.0)


def _status_line(status: int) -> str:
    try:
        from http import HTTPStatus

        return f"HTTP {status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


def on_arxiv_host(url: str) -> bool:
    """Whether `url` is on an arXiv host (arxiv.org and its subdomains), whose requests keep the
    3 s pause arXiv asks for, whichever kind of source makes them."""
    if not url.startswith(("http://", "https://")):
        return False
    try:
        host = (httpx.URL(url).host or "").lower()
    except httpx.InvalidURL:
        return False
    return host == "arxiv.org" or host.endswith(".arxiv.org")


class Pacer:
    """Keeps at least `min_interval` seconds between the requests it guards (arXiv asks for 3 s).

    One Pacer is shared by every source that talks to the same host in a run; the caller makes it
    and passes it in. `sleep` and `monotonic` are injected so tests measure the pause unslept.
    """

    def __init__(
        self,
        min_interval: float = 3.0,
        *,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if min_interval < 0:
            raise ValueError("min_interval must be 0 or more")
        self.min_interval = min_interval
        self._sleep = sleep
        self._monotonic = monotonic
        self._last: float | None = None
        self._lock = threading.Lock()

    def wait(self) -> None:
        """Sleep until `min_interval` has passed since the previous guarded request, then mark now."""
        with self._lock:
            if self._last is not None:
                remaining = self._last + self.min_interval - self._monotonic()
                if remaining > 0:
                    self._sleep(remaining)
            self._last = self._monotonic()


def get_bytes(
    client: httpx.Client,
    url: httpx.URL | str,
    *,
    retries: int,
    backoff: float,
    sleep: Callable[[float], None],
    now: Callable[[], datetime],
    explain_client_error: Callable[[int, str], str] | None = None,
    max_bytes: int = MAX_RESPONSE_BYTES,
    rng: random.Random | None = None,
    pacer: Pacer | None = None,
    setting: str = "DIGESTBOT_FEED_URL",
) -> bytes:
    """GET `url` and return the body of a 2xx answer; retry what is worth retrying, else FetchError.

    Retried, up to `retries` times: connection errors, timeouts, 429 and 5xx (waiting Retry-After
    when the server gives one, else exponential backoff with jitter). Any other status fails at
    once; `explain_client_error(status, body_excerpt)` may supply the advice for a 4xx. With a
    `pacer`, every attempt waits its turn first. `setting` is what the advice says to check.
    """
    body, _ = _get(
        client,
        url,
        headers={},
        retries=retries,
        backoff=backoff,
        sleep=sleep,
        now=now,
        explain_client_error=explain_client_error,
        max_bytes=max_bytes,
        rng=rng,
        pacer=pacer,
        setting=setting,
    )
    assert body is not None
    return body


def get_conditional(
    client: httpx.Client,
    url: httpx.URL | str,
    *,
    validators: Validators | None,
    retries: int,
    backoff: float,
    sleep: Callable[[float], None],
    now: Callable[[], datetime],
    explain_client_error: Callable[[int, str], str] | None = None,
    max_bytes: int = MAX_RESPONSE_BYTES,
    rng: random.Random | None = None,
    pacer: Pacer | None = None,
    setting: str = "DIGESTBOT_FEED_URL",
) -> tuple[bytes | None, Validators]:
    """A conditional GET: sends If-None-Match / If-Modified-Since from `validators`.

    Returns (body, the answer's validators), or (None, the validators) when the server answers
    304 Not Modified. Retries and errors as `get_bytes`. Validators with CR/LF are not sent.
    """
    headers: dict[str, str] = {}
    if validators is not None:
        if validators.etag and not text.has_unsafe(validators.etag):
            headers["If-None-Match"] = validators.etag
        if validators.last_modified and not text.has_unsafe(validators.last_modified):
            headers["If-Modified-Since"] = validators.last_modified
    body, answer = _get(
        client,
        url,
        headers=headers,
        retries=retries,
        backoff=backoff,
        sleep=sleep,
        now=now,
        explain_client_error=explain_client_error,
        max_bytes=max_bytes,
        rng=rng,
        pacer=pacer,
        setting=setting,
    )
    etag = answer.get("etag")
    modified = answer.get("last-modified")
    fresh = Validators(
        etag=etag if etag and len(etag) <= 1000 and not text.has_unsafe(etag) else None,
        last_modified=modified
        if modified and len(modified) <= 100 and not text.has_unsafe(modified)
        else None,
    )
    if body is None:  # 304: the server may omit the validators; keep the ones we sent
        fresh = Validators(
            etag=fresh.etag or (validators.etag if validators else None),
            last_modified=fresh.last_modified or (validators.last_modified if validators else None),
        )
    return body, fresh


def _get(
    client: httpx.Client,
    url: httpx.URL | str,
    *,
    headers: dict[str, str],
    retries: int,
    backoff: float,
    sleep: Callable[[float], None],
    now: Callable[[], datetime],
    explain_client_error: Callable[[int, str], str] | None,
    max_bytes: int,
    rng: random.Random | None,
    pacer: Pacer | None,
    setting: str,
) -> tuple[bytes | None, httpx.Headers]:
    """The retry loop: (body, headers) of a 2xx answer, (None, headers) of a 304, else FetchError."""
    url = httpx.URL(url) if isinstance(url, str) else url
    shown = str(url)
    attempts = retries + 1
    for attempt in range(attempts):
        last = attempt == attempts - 1
        wait: float | None = None
        if pacer is not None:
            pacer.wait()
        try:
            with client.stream("GET", url, headers=headers) as response:
                status = response.status_code
                if 200 <= status < 300:
                    body = _read_capped(response, max_bytes=max_bytes, url=shown)
                    return body, response.headers
                if status == 304 and headers:
                    return None, response.headers
                if status in RETRYABLE_STATUSES:
                    wait = retry_after_seconds(response.headers, now=now())
                    problem = _status_line(status)
                    if status == 429 and setting == "DIGESTBOT_FEED_URL":
                        advice = (
                            "the feed is rate-limiting this address; wait a few minutes, or set "
                            "HF_TOKEN to raise the limit"
                        )
                    elif status == 429:
                        advice = "the feed is rate-limiting this address; wait a few minutes"
                    else:
                        advice = "the feed is having trouble; try again later"
                else:
                    body = _read_capped(response, max_bytes=4096, url=shown, truncate=True)
                    excerpt = snippet(body.decode("utf-8", "replace"))
                    if 300 <= status < 400:
                        where = snippet(response.headers.get("location", "nowhere"))
                        advice = f"unexpected redirect to {where}; check {setting}"
                    else:
                        advice = (
                            explain_client_error(status, excerpt) if explain_client_error else ""
                        )
                        advice = advice or f"the feed refused the request; check {setting}"
                    said = f" (server said: {excerpt})" if excerpt else ""
                    raise FetchError(f"GET {shown} failed: {_status_line(status)}{said}; {advice}")
        except httpx.TimeoutException as exc:
            problem = f"timed out ({type(exc).__name__})"
            advice = (
                "the feed is slow or unreachable; try again later or raise DIGESTBOT_FETCH_TIMEOUT"
            )
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise FetchError(f"GET {shown} failed: {snippet(str(exc))}; check {setting}") from exc
        except httpx.TransportError as exc:
            problem = f"could not connect ({type(exc).__name__}: {snippet(str(exc))})"
            advice = f"check the network connection and {setting}, then try again"
        except (
            httpx.HTTPError
        ) as exc:  # decoding errors, too many redirects: retrying will not help
            raise FetchError(
                f"GET {shown} failed: {type(exc).__name__}: {snippet(str(exc))}"
            ) from exc
        if last:
            tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
            raise FeedUnavailableError(f"GET {shown} failed after {tries}: {problem}; {advice}")
        delay = wait if wait is not None else backoff_delay(attempt, base=backoff, rng=rng)
        log.warning(
            "GET %s: %s; retry %d of %d in %.1f s", shown, problem, attempt + 1, retries, delay
        )
        sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def _read_capped(
    response: httpx.Response, *, max_bytes: int, url: str, truncate: bool = False
) -> bytes:
    """Read a streamed body, refusing (or, with `truncate`, cutting) one longer than `max_bytes`."""
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > max_bytes:
            if truncate:
                break
            raise FetchError(
                f"GET {url}: response larger than {max_bytes:,} bytes; refused unread as not a feed"
            )
    return b"".join(chunks)[:max_bytes]
