"""Tests of the Hugging Face daily papers source: parsing, paging, retries, offline, hostile input.

The feed is served from the fixture files by httpx.MockTransport; sleeps and the clock are injected,
so nothing here waits or touches the network.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from digestbot import __version__
from digestbot.errors import FetchError
from digestbot.sources.base import (
    MAX_ABSTRACT_CHARS,
    MAX_AI_SUMMARY_CHARS,
    MAX_AUTHOR_CHARS,
    MAX_AUTHORS,
    MAX_KEYWORD_CHARS,
    MAX_KEYWORDS,
    MAX_RESPONSE_BYTES,
    MAX_TITLE_CHARS,
    MAX_URL_CHARS,
    FetchedPaper,
)
from digestbot.sources.hf_daily import HFDailyPapers, make_client, parse_daily_papers

FIXTURES = Path(__file__).parent / "fixtures" / "hf_daily_papers"
FEED = "https://huggingface.co/api/daily_papers"
NOW = datetime(2026, 3, 7, 12, 0, tzinfo=UTC)
EXPECTED_COUNTS = {
    "2026-03-02": 15,
    "2026-03-03": 15,
    "2026-03-04": 15,
    "2026-03-05": 15,
    "2026-03-06": 16,  # includes the real captured item 2602.23229
    "2026-03-07": 0,  # a Saturday
}
Handler = Callable[[httpx.Request], httpx.Response]


def fixture_items(day: str) -> list[Any]:
    return json.loads((FIXTURES / f"{day}.json").read_bytes())


def serve_fixtures(request: httpx.Request) -> httpx.Response:
    """Answer like the real API: a page of the day's items, [] past the end, 400 for the future."""
    day = request.url.params.get("date", "")
    limit = int(request.url.params.get("limit", "100"))
    page = int(request.url.params.get("p", "0"))
    if day > NOW.date().isoformat():
        return httpx.Response(400, json={"error": "Invalid date: the date is in the future"})
    path = FIXTURES / f"{day}.json"
    items = json.loads(path.read_bytes()) if path.exists() else []
    return httpx.Response(200, json=items[page * limit : (page + 1) * limit])


class Recorder:
    """A MockTransport handler that logs requests and plays scripted answers before the fixtures."""

    def __init__(self, *script: httpx.Response | Exception | Handler) -> None:
        self.script = list(script)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if not self.script:
            return serve_fixtures(request)
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        if isinstance(step, httpx.Response):
            return step
        return step(request)


def make_source(
    handler: Handler, *, token: str | None = None, sleeps: list[float] | None = None, **options: Any
) -> HFDailyPapers:
    client = make_client(timeout=5.0, token=token, transport=httpx.MockTransport(handler))
    sleep = sleeps.append if sleeps is not None else (lambda s: None)
    return HFDailyPapers(feed_url=FEED, client=client, sleep=sleep, now=lambda: NOW, **options)


def item(**paper: Any) -> dict[str, Any]:
    """A minimal valid item; keyword arguments override or add paper fields (None deletes one)."""
    base: dict[str, Any] = {
        "id": "2401.00001",
        "title": "A Title",
        "submittedOnDailyAt": "2026-03-02T10:00:00.000Z",
    }
    base.update(paper)
    return {"paper": {k: v for k, v in base.items() if v is not None}}


def body(*items: Any) -> bytes:
    return json.dumps(list(items)).encode()


# ------------------------------------------------------------------------------------------------
# Parsing the fixtures
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("day", sorted(EXPECTED_COUNTS))
def test_each_fixture_day_parses_into_its_papers(day: str) -> None:
    """Every fixture day parses into the expected number of UTC-dated papers featured that day."""
    papers = parse_daily_papers((FIXTURES / f"{day}.json").read_bytes(), url=f"{FEED}?date={day}")
    assert len(papers) == EXPECTED_COUNTS[day]
    for paper in papers:
        assert paper.featured_at.tzinfo is UTC
        assert paper.featured_at.date().isoformat() == day
        assert paper.published_at is None or paper.published_at.tzinfo is UTC
        assert paper.title and paper.authors and paper.summary
        assert "v" not in paper.arxiv_id


def test_fixture_fields_map_onto_fetched_paper() -> None:
    """Id, upvotes, top-level numComments, author names and GitHub data land in the right fields."""
    raw = fixture_items("2026-03-02")[0]
    paper = parse_daily_papers(body(raw), url=FEED)[0]
    assert paper.arxiv_id == raw["paper"]["id"] == "2007.14966"
    assert paper.upvotes == raw["paper"]["upvotes"]
    assert paper.num_comments == raw["numComments"]
    assert paper.authors == tuple(a["name"] for a in raw["paper"]["authors"])
    assert paper.featured_at == datetime(2026, 3, 2, 14, 23, 52, tzinfo=UTC)
    with_repo = [
        p for p in parse_daily_papers(body(*fixture_items("2026-03-02")), url=FEED) if p.github_repo
    ]
    assert with_repo and all(p.github_stars is not None for p in with_repo)


def test_real_item_keeps_its_optional_fields() -> None:
    """The item captured from the real API yields AI keywords, summary, repo and project page."""
    papers = parse_daily_papers((FIXTURES / "real_item_2602.23229.json").read_bytes(), url=FEED)
    assert len(papers) == 1
    paper = papers[0]
    assert paper.arxiv_id == "2602.23229"
    assert paper.github_repo == "https://github.com/marco-garosi/CIRCLE"
    assert paper.github_stars == 9
    assert paper.project_page == "https://circle-lmm.github.io/"
    assert paper.ai_keywords[:2] == ("Vision-Language Models", "Large Multimodal Models")
    assert len(paper.ai_keywords) == 9
    assert paper.ai_summary and paper.ai_summary.startswith("Large Multimodal Models demonstrate")
    assert paper.featured_at == datetime(2026, 3, 6, 3, 55, 12, 777000, tzinfo=UTC)
    # paper.publishedAt (the arXiv date), not the item's differently-zoned copy
    assert paper.published_at == datetime(2026, 2, 26, 17, 8, 18, tzinfo=UTC)
    assert paper.upvotes == 10 and paper.num_comments == 1


def test_missing_or_null_optional_fields_are_fine() -> None:
    """An item with only id, title and submittedOnDailyAt (or nulls elsewhere) gets defaults."""
    minimal = item()
    nulls = item(id="2401.00002", summary=None, authors=None, upvotes=None, githubRepo=None)
    nulls["paper"].update(githubStars=None, ai_keywords=None, projectPage=None, publishedAt=None)
    nulls["numComments"] = None
    for paper in parse_daily_papers(body(minimal, nulls), url=FEED):
        assert paper.summary == "" and paper.authors == () and paper.published_at is None
        assert paper.upvotes == 0 and paper.num_comments == 0
        assert paper.github_repo is None and paper.github_stars is None
        assert paper.project_page is None and paper.ai_summary is None and paper.ai_keywords == ()


def test_versioned_naive_and_offset_values_are_normalised() -> None:
    """A versioned arXiv id loses its version; naive and offset datetimes become aware UTC."""
    raw = item(
        id="2401.00001v3",
        submittedOnDailyAt="2026-03-02T12:00:00+02:00",
        publishedAt="2026-03-01T08:30:00",
    )
    paper = parse_daily_papers(body(raw), url=FEED)[0]
    assert paper.arxiv_id == "2401.00001"
    assert paper.featured_at == datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
    assert paper.published_at == datetime(2026, 3, 1, 8, 30, tzinfo=UTC)
    old_style = parse_daily_papers(body(item(id="hep-th/9901001")), url=FEED)[0]
    assert old_style.arxiv_id == "hep-th/9901001"


# ------------------------------------------------------------------------------------------------
# Fetching over HTTP
# ------------------------------------------------------------------------------------------------


def test_fetch_window_covers_today_and_lookback_days() -> None:
    """A six-day window asks each date once and returns all 76 papers; Saturday's [] is normal."""
    recorder = Recorder()
    papers = make_source(recorder).fetch_window(today=date(2026, 3, 7), lookback=5)
    assert len(papers) == sum(EXPECTED_COUNTS.values()) == 76
    assert len({p.arxiv_id for p in papers}) == 76
    asked = [r.url.params["date"] for r in recorder.requests]
    assert asked == sorted(EXPECTED_COUNTS)
    assert all(
        r.url.params["limit"] == "100" and r.url.params["p"] == "0" for r in recorder.requests
    )
    assert all(isinstance(p, FetchedPaper) for p in papers)


def test_saturday_is_an_empty_day_not_an_error() -> None:
    """The weekend answer [] gives no papers and no error."""
    assert make_source(Recorder()).fetch_day(date(2026, 3, 7)) == []


def test_pagination_reads_every_page_until_a_short_one() -> None:
    """With page_size 4, a 16-paper day is read over pages 0..4, the last one empty."""
    recorder = Recorder()
    papers = make_source(recorder, page_size=4).fetch_day(date(2026, 3, 6))
    assert [p.arxiv_id for p in papers] == [i["paper"]["id"] for i in fixture_items("2026-03-06")]
    assert [r.url.params["p"] for r in recorder.requests] == ["0", "1", "2", "3", "4"]
    assert {r.url.params["limit"] for r in recorder.requests} == {"4"}

    recorder = Recorder()
    assert len(make_source(recorder, page_size=4).fetch_day(date(2026, 3, 2))) == 15
    assert [r.url.params["p"] for r in recorder.requests] == ["0", "1", "2", "3"]


def test_feed_url_query_is_kept_alongside_paging_parameters() -> None:
    """Query parameters already in the feed URL survive next to date, limit and p."""
    recorder = Recorder()
    client = make_client(timeout=5.0, token=None, transport=httpx.MockTransport(recorder))
    source = HFDailyPapers(feed_url=FEED + "?sort=trending", client=client, now=lambda: NOW)
    source.fetch_day(date(2026, 3, 2))
    assert recorder.requests[0].url.params["sort"] == "trending"
    assert recorder.requests[0].url.params["date"] == "2026-03-02"


def test_feed_ignoring_paging_does_not_loop_forever() -> None:
    """A server that answers the same full page for every p stops after the first repeat."""
    page = fixture_items("2026-03-02")[:4]
    recorder = Recorder(*[httpx.Response(200, json=page)] * 10)
    papers = make_source(recorder, page_size=4).fetch_day(date(2026, 3, 2))
    assert len(papers) == 4 and len(recorder.requests) == 2


def test_window_deduplicates_a_paper_featured_on_two_days() -> None:
    """A paper listed on two days of the window is returned once, with its earlier featuring."""
    again = fixture_items("2026-03-02")[0]

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.params["date"] == "2026-03-03":
            return httpx.Response(200, json=[*fixture_items("2026-03-03"), again])
        return serve_fixtures(request)

    papers = make_source(handler).fetch_window(today=date(2026, 3, 3), lookback=1)
    assert len(papers) == 30
    [twice] = [p for p in papers if p.arxiv_id == again["paper"]["id"]]
    assert twice.featured_at.date() == date(2026, 3, 2)


def test_503_then_success_retries_with_growing_sleeps() -> None:
    """Three 503s then a good answer: three retries, sleeping longer each time, then the papers."""
    sleeps: list[float] = []
    recorder = Recorder(*[httpx.Response(503, text="busy")] * 3)
    papers = make_source(recorder, sleeps=sleeps, retries=3, backoff=1.0).fetch_day(
        date(2026, 3, 2)
    )
    assert len(papers) == 15
    assert len(recorder.requests) == 4 and len(sleeps) == 3
    assert 0.5 <= sleeps[0] <= 1.0 <= sleeps[1] <= 2.0 <= sleeps[2] <= 4.0


def test_connection_error_and_timeout_are_retried() -> None:
    """A refused connection and a read timeout are retried, then the fetch succeeds."""
    sleeps: list[float] = []
    recorder = Recorder(httpx.ConnectError("refused"), httpx.ReadTimeout("slow"))
    papers = make_source(recorder, sleeps=sleeps).fetch_day(date(2026, 3, 3))
    assert len(papers) == 15 and len(sleeps) == 2


def test_429_retry_after_seconds_is_honoured() -> None:
    """A 429 with Retry-After: 7 waits exactly 7 seconds before retrying."""
    sleeps: list[float] = []
    recorder = Recorder(httpx.Response(429, headers={"Retry-After": "7"}))
    assert len(make_source(recorder, sleeps=sleeps).fetch_day(date(2026, 3, 4))) == 15
    assert sleeps == [7.0]


def test_429_retry_after_http_date_is_honoured_and_capped() -> None:
    """Retry-After as an HTTP-date is measured from the response's Date; absurd waits are capped."""
    served = datetime(2026, 3, 7, 9, 0, tzinfo=UTC)
    dated = httpx.Response(
        429,
        headers={
            "Date": format_datetime(served, usegmt=True),
            "Retry-After": format_datetime(served + timedelta(seconds=30), usegmt=True),
        },
    )
    huge = httpx.Response(429, headers={"Retry-After": "86400"})
    sleeps: list[float] = []
    make_source(Recorder(dated, huge), sleeps=sleeps).fetch_day(date(2026, 3, 4))
    assert sleeps == [30.0, 300.0]


def test_retries_exhausted_raise_fetch_error_naming_url_status_and_advice() -> None:
    """After the last retry, FetchError names the URL with its query, the status and what to do."""
    sleeps: list[float] = []
    recorder = Recorder(*[httpx.Response(503)] * 10)
    with pytest.raises(FetchError) as caught:
        make_source(recorder, sleeps=sleeps, retries=2).fetch_day(date(2026, 3, 2))
    message = str(caught.value)
    assert f"{FEED}?date=2026-03-02&limit=100&p=0" in message
    assert "503" in message and "3 attempts" in message and "try again later" in message
    assert len(recorder.requests) == 3 and len(sleeps) == 2


def test_rate_limit_exhausted_suggests_a_token() -> None:
    """Persistent 429s end in a FetchError that suggests HF_TOKEN."""
    recorder = Recorder(*[httpx.Response(429, headers={"Retry-After": "1"})] * 5)
    with pytest.raises(FetchError, match="HF_TOKEN"):
        make_source(recorder, retries=1).fetch_day(date(2026, 3, 2))


def test_timeouts_exhausted_name_the_timeout_setting() -> None:
    """Timeouts on every attempt end in a FetchError that points at DIGESTBOT_FETCH_TIMEOUT."""
    recorder = Recorder(*[httpx.ReadTimeout("slow")] * 5)
    with pytest.raises(FetchError, match="timed out.*DIGESTBOT_FETCH_TIMEOUT"):
        make_source(recorder, retries=2).fetch_day(date(2026, 3, 2))
    assert len(recorder.requests) == 3


def test_future_date_400_fails_at_once_and_says_so() -> None:
    """HTTP 400 for a future date is not retried and the error says the date is in the future."""
    sleeps: list[float] = []
    recorder = Recorder()
    with pytest.raises(FetchError) as caught:
        make_source(recorder, sleeps=sleeps).fetch_day(date(2026, 3, 9))
    message = str(caught.value)
    assert (
        "400" in message
        and "2026-03-09 is in the future" in message
        and "date=2026-03-09" in message
    )
    assert len(recorder.requests) == 1 and sleeps == []


@pytest.mark.parametrize("status", [401, 403, 404, 410])
def test_other_client_errors_fail_at_once(status: int) -> None:
    """A 4xx other than 429 is a FetchError on the first answer, without retrying."""
    recorder = Recorder(httpx.Response(status, text="nope"))
    with pytest.raises(FetchError, match=f"HTTP {status}"):
        make_source(recorder).fetch_day(date(2026, 3, 2))
    assert len(recorder.requests) == 1


BROKEN_BODIES = {
    "html": (b"<!DOCTYPE html><html><body>Maintenance</body></html>", "HTML"),
    "truncated": (body(*fixture_items("2026-03-02"))[:5000], "truncated JSON"),
    "invalid": (b"[{'paper': 1}]", "invalid JSON"),
    "empty": (b"", "empty response"),
    "dict": (b'{"error": "Something went wrong"}', "expected a JSON list of papers, got an object"),
    "strings": (b'["2401.00001", "2401.00002"]', "item 0: expected an object, got a string"),
    "no paper": (b'[{"title": "x"}]', "missing 'paper' object"),
    "missing id": (body(item(id=None)), "missing 'paper.id'"),
    "missing title": (body(item(title=None)), "missing 'paper.title'"),
    "blank title": (body(item(title=" \r\n ")), "'paper.title' is empty"),
    "missing featured": (body(item(submittedOnDailyAt=None)), "missing 'paper.submittedOnDailyAt'"),
    "bad date": (body(item(submittedOnDailyAt="2026-02-30T10:00:00Z")), "not an ISO 8601"),
    "date only": (body(item(submittedOnDailyAt="2026-03-02")), "not an ISO 8601"),
    "bad published": (body(item(publishedAt="last week")), "'paper.publishedAt'"),
    "bad id": (body(item(id="not-an-id")), "not an arXiv id"),
    "id type": (body(item(id=2401.00001)), "'paper.id' should be a string, got a number"),
    "upvotes type": (body(item(upvotes="12")), "'paper.upvotes' should be a whole number"),
    "negative upvotes": (body(item(upvotes=-1)), "'paper.upvotes' is out of range"),
    "authors type": (body(item(authors={"name": "x"})), "'paper.authors' should be a list"),
    "author type": (body(item(authors=["Ada"])), "'paper.authors[0]' should be an object"),
    "keywords type": (body(item(ai_keywords="llm")), "'paper.ai_keywords' should be a list"),
    "comments type": (
        body({**item(), "numComments": 1.5}),
        "'numComments' should be a whole number",
    ),
}


@pytest.mark.parametrize("name", sorted(BROKEN_BODIES))
def test_broken_response_is_rejected_naming_url_and_problem(name: str) -> None:
    """A 200 answer that is not the expected JSON is a FetchError naming the URL and the problem."""
    content, problem = BROKEN_BODIES[name]
    recorder = Recorder(httpx.Response(200, content=content))
    with pytest.raises(FetchError) as caught:
        make_source(recorder).fetch_day(date(2026, 3, 2))
    message = str(caught.value)
    assert f"{FEED}?date=2026-03-02&limit=100&p=0" in message
    assert problem in message
    assert len(recorder.requests) == 1  # a bad body is not retried


def test_a_bad_item_rejects_the_whole_day_even_after_good_pages() -> None:
    """A broken second page makes the whole day fail: nothing half-fetched is returned."""
    good = fixture_items("2026-03-02")[:4]
    recorder = Recorder(
        httpx.Response(200, json=good),
        httpx.Response(200, json=[*good[:2], {"paper": {"id": "2401.1"}}]),
    )
    with pytest.raises(FetchError, match=r"p=1.*item 2"):
        make_source(recorder, page_size=4).fetch_day(date(2026, 3, 2))


# ------------------------------------------------------------------------------------------------
# The client
# ------------------------------------------------------------------------------------------------


def test_token_is_sent_as_bearer_with_user_agent_and_accept() -> None:
    """With a token, requests carry a Bearer Authorization, a descriptive User-Agent and Accept."""
    recorder = Recorder()
    make_source(recorder, token="hf_s3cret").fetch_day(date(2026, 3, 2))
    headers = recorder.requests[0].headers
    assert headers["Authorization"] == "Bearer hf_s3cret"
    assert headers["User-Agent"] == (
        f"digestbot/{__version__} (+https://github.com/digestbot/digestbot)"
    )
    assert headers["Accept"] == "application/json"


def test_without_token_no_authorization_header_is_sent() -> None:
    """Without a token (or with a blank one) no Authorization header is sent."""
    for token in (None, "", "  "):
        recorder = Recorder()
        make_source(recorder, token=token).fetch_day(date(2026, 3, 2))
        assert "Authorization" not in recorder.requests[0].headers
        assert recorder.requests[0].headers["User-Agent"].startswith("digestbot/")


def test_client_has_a_timeout_and_errors_never_show_the_token() -> None:
    """The client applies the timeout to every phase; a failure message never shows the token."""
    client = make_client(timeout=12.5, token="hf_s3cret")
    assert client.timeout == httpx.Timeout(12.5)
    client.close()
    recorder = Recorder(httpx.Response(401, text='{"error": "Invalid credentials"}'))
    with pytest.raises(FetchError) as caught:
        make_source(recorder, token="hf_s3cret").fetch_day(date(2026, 3, 2))
    assert "hf_s3cret" not in str(caught.value) and "HF_TOKEN" in str(caught.value)


# ------------------------------------------------------------------------------------------------
# Offline feeds
# ------------------------------------------------------------------------------------------------


def test_offline_directory_serves_one_file_per_day() -> None:
    """A directory feed reads YYYY-MM-DD.json per day; a missing file is an empty day."""
    source = HFDailyPapers(feed_url=str(FIXTURES), client=None)
    assert len(source.fetch_window(today=date(2026, 3, 8), lookback=6)) == 76
    assert len(source.fetch_day(date(2026, 3, 6))) == 16
    assert source.fetch_day(date(2025, 1, 1)) == []


def test_offline_file_url_returns_all_its_papers_whatever_the_date() -> None:
    """A file:// URL of a saved response yields its papers for any day and any window."""
    source = HFDailyPapers(feed_url=(FIXTURES / "2026-03-04.json").as_uri(), client=None)
    assert len(source.fetch_day(date(2030, 1, 1))) == 15
    assert len(source.fetch_window(today=date(2030, 1, 1), lookback=3)) == 15
    directory = HFDailyPapers(feed_url=FIXTURES.as_uri(), client=None)
    assert len(directory.fetch_day(date(2026, 3, 5))) == 15


def test_offline_broken_file_is_rejected_naming_the_path(tmp_path: Path) -> None:
    """A saved response that is HTML is rejected with an error naming the file."""
    saved = tmp_path / "2026-03-02.json"
    saved.write_text("<html>Sign in</html>")
    for feed_url in (str(saved), str(tmp_path)):
        with pytest.raises(FetchError, match="HTML") as caught:
            HFDailyPapers(feed_url=feed_url, client=None).fetch_day(date(2026, 3, 2))
        assert str(saved) in str(caught.value)


@pytest.mark.parametrize(
    "feed_url",
    ["ftp://example.org/feed", "/no/such/feed.json", "file://otherhost/feed.json", "http://"],
)
def test_feed_url_neither_http_nor_existing_path_is_a_fetch_error(feed_url: str) -> None:
    """A feed URL neither http(s) nor an existing file or folder is a FetchError saying so."""
    source = HFDailyPapers(feed_url=feed_url, client=None)
    with pytest.raises(FetchError, match="neither an http\\(s\\) URL nor an existing"):
        source.fetch_day(date(2026, 3, 2))


# ------------------------------------------------------------------------------------------------
# Hostile input
# ------------------------------------------------------------------------------------------------


def test_hostile_values_are_neutralised() -> None:
    """CR/LF, NUL and bidi overrides leave single-line fields; non-http links are dropped."""
    raw = item(
        title="Innocent\r\nBcc: victim@example.org\x00\u202eevil",
        authors=[
            {"name": "Eve\nTo: x@example.org"},
            {"name": " \t "},
            {"name": None},
            {"name": "Bob"},
        ],
        summary="Line one\r\n\r\n  line\ttwo\x07 <script>alert(1)</script>",
        githubRepo="javascript:alert(document.cookie)",
        projectPage="https://ok.example.org/\r\nX-Evil: 1",
        ai_keywords=["LLM\r\n", "", "LLM", "agents\u2028x"],
    )
    [paper] = parse_daily_papers(body(raw), url=FEED)
    assert paper.title == "Innocent Bcc: victim@example.org evil"
    assert paper.authors == ("Eve To: x@example.org", "Bob")
    assert (
        paper.summary == "Line one line two <script>alert(1)</script>"
    )  # escaping is render's job
    assert paper.github_repo is None and paper.project_page is None
    assert paper.ai_keywords == ("LLM", "agents x")
    for bad in (
        "data:text/html,x",
        "//evil.example.org",
        "https:///nohost",
        'https://x.org/"onload',
    ):
        assert parse_daily_papers(body(item(githubRepo=bad)), url=FEED)[0].github_repo is None
    assert (
        parse_daily_papers(body(item(githubRepo="HTTPS://github.com/a/b")), url=FEED)[0].github_repo
        == "HTTPS://github.com/a/b"
    )


def test_error_messages_do_not_echo_control_characters() -> None:
    """A hostile value quoted in an error message cannot smuggle a line break into logs."""
    with pytest.raises(FetchError) as caught:
        parse_daily_papers(body(item(id="x\r\nInjected: yes")), url=FEED)
    assert "\r" not in str(caught.value) and "\n" not in str(caught.value)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def maybe(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a valid value, sometimes any JSON value, to probe every field's type checks."""
    return st.one_of(valid, valid, valid, json_values)


near_valid_items = st.fixed_dictionaries(
    {
        "paper": st.fixed_dictionaries(
            {
                "id": maybe(st.from_regex(r"\A\d{2}(0[1-9]|1[0-2])\.\d{5}(v\d)?\Z")),
                "title": maybe(st.text()),
                "submittedOnDailyAt": maybe(
                    st.datetimes(min_value=datetime(1990, 1, 2), timezones=st.just(UTC)).map(
                        lambda d: d.isoformat()
                    )
                ),
            },
            optional={
                "summary": maybe(st.text()),
                "publishedAt": maybe(st.datetimes().map(lambda d: d.isoformat())),
                "authors": maybe(st.lists(st.fixed_dictionaries({"name": maybe(st.text())}))),
                "upvotes": maybe(st.integers(min_value=0)),
                "githubRepo": maybe(st.text() | st.just("https://github.com/a/b")),
                "githubStars": maybe(st.integers(min_value=0)),
                "projectPage": maybe(st.text()),
                "ai_summary": maybe(st.text()),
                "ai_keywords": maybe(st.lists(st.text())),
            },
        ),
    },
    optional={"numComments": maybe(st.integers(min_value=0))},
)

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_ever_raise_fetch_error(content: bytes) -> None:
    """Any byte string either parses or raises FetchError, never another exception."""
    try:
        parse_daily_papers(content, url=FEED)
    except FetchError:
        pass


@FUZZ
@given(json_values)
def test_arbitrary_json_only_ever_raises_fetch_error(value: Any) -> None:
    """Any JSON value either parses or raises FetchError naming the URL, never another exception."""
    try:
        parse_daily_papers(json.dumps(value).encode(), url=FEED)
    except FetchError as exc:
        assert FEED in str(exc)


@FUZZ
@given(st.lists(near_valid_items, max_size=3))
def test_near_valid_items_parse_cleanly_or_raise_fetch_error(items: list[Any]) -> None:
    """Items with any field swapped for any JSON value give clean papers or raise FetchError."""
    try:
        papers = parse_daily_papers(json.dumps(items).encode(), url=FEED)
    except FetchError:
        return
    assert len(papers) == len(items)
    for paper in papers:
        assert paper.featured_at.tzinfo is UTC and paper.title
        for line in (paper.title, *paper.authors, *paper.ai_keywords):
            assert line == line.strip() and not any(c in line for c in "\r\n\x00\u2028")
            line.encode("utf-8")  # no lone surrogates left to break storage or mail
        paper.summary.encode("utf-8")
        for link in (paper.github_repo, paper.project_page):
            assert link is None or link.lower().startswith(("http://", "https://"))


# ------------------------------------------------------------------------------------------------
# Limits: field lengths and response size
# ------------------------------------------------------------------------------------------------

OVER_LIMIT = {
    "title": ({"title": "t" * (MAX_TITLE_CHARS + 1)}, "'paper.title'"),
    "summary": ({"summary": "s" * (MAX_ABSTRACT_CHARS + 1)}, "'paper.summary'"),
    "ai_summary": ({"ai_summary": "a" * (MAX_AI_SUMMARY_CHARS + 1)}, "'paper.ai_summary'"),
    "authors": ({"authors": [{"name": "A"}] * (MAX_AUTHORS + 1)}, "'paper.authors'"),
    "author name": (
        {"authors": [{"name": "ok"}, {"name": "n" * (MAX_AUTHOR_CHARS + 1)}]},
        "'paper.authors[1].name'",
    ),
    "keywords": ({"ai_keywords": ["k"] * (MAX_KEYWORDS + 1)}, "'paper.ai_keywords'"),
    "keyword": ({"ai_keywords": ["k" * (MAX_KEYWORD_CHARS + 1)]}, "'paper.ai_keywords[0]'"),
    "githubRepo": (
        {"githubRepo": "https://github.com/" + "r" * MAX_URL_CHARS},
        "'paper.githubRepo'",
    ),
    "projectPage": (
        {"projectPage": "https://example.org/" + "p" * MAX_URL_CHARS},
        "'paper.projectPage'",
    ),
}


@pytest.mark.parametrize("name", sorted(OVER_LIMIT))
def test_a_field_over_its_limit_rejects_the_response_naming_paper_and_field(name: str) -> None:
    """One item over a documented field limit rejects the whole response, naming paper id and field."""
    fields, shown = OVER_LIMIT[name]
    good = item(id="2401.00002")
    with pytest.raises(FetchError) as caught:
        parse_daily_papers(body(good, item(id="2401.00001", **fields)), url=FEED)
    message = str(caught.value)
    assert "item 1 (paper '2401.00001')" in message and shown in message
    assert "over the limit" in message and "nothing from it was used" in message
    assert len(message) < 600


def test_fields_at_their_limits_are_kept_whole() -> None:
    """Fields exactly at their limits parse, with nothing cut."""
    at_limit = item(
        title="t" * MAX_TITLE_CHARS,
        summary="s" * MAX_ABSTRACT_CHARS,
        authors=[{"name": "n" * MAX_AUTHOR_CHARS}] * MAX_AUTHORS,
        ai_keywords=[f"k{i}" for i in range(MAX_KEYWORDS)],
    )
    [paper] = parse_daily_papers(body(at_limit), url=FEED)
    assert len(paper.title) == MAX_TITLE_CHARS and len(paper.summary) == MAX_ABSTRACT_CHARS
    assert len(paper.authors) == MAX_AUTHORS and len(paper.ai_keywords) == MAX_KEYWORDS


@FUZZ
@given(
    st.sampled_from(
        [("title", MAX_TITLE_CHARS), ("summary", MAX_ABSTRACT_CHARS), ("ai_summary", 5_000)]
    ),
    st.integers(min_value=-3, max_value=3),
)
def test_length_limits_hold_exactly_at_the_boundary(field: tuple[str, int], delta: int) -> None:
    """A text field parses up to its limit and is rejected one character past it."""
    key, limit = field
    content = body(item(**{key: "x" * (limit + delta)}))
    if delta <= 0:
        assert len(parse_daily_papers(content, url=FEED)) == 1
    else:
        with pytest.raises(FetchError, match=f"'paper.{key}'"):
            parse_daily_papers(content, url=FEED)


def test_a_ten_megabyte_title_is_rejected_over_http() -> None:
    """A 10 MB title (under the response cap) makes that day's response rejected, naming the paper."""
    huge = body(item(id="2401.09999", title="T" * 10_000_000))
    recorder = Recorder(httpx.Response(200, content=huge))
    with pytest.raises(FetchError) as caught:
        make_source(recorder).fetch_day(date(2026, 3, 2))
    assert "2401.09999" in str(caught.value) and "'paper.title'" in str(caught.value)
    assert len(str(caught.value)) < 600


def test_an_oversized_http_response_is_refused_without_reading_it_all() -> None:
    """A response that never ends is cut off just past the byte cap and refused, not retried."""
    sent: list[int] = []

    def endless() -> Iterator[bytes]:
        chunk = b" " * (1024 * 1024)
        while True:
            sent.append(len(chunk))
            yield chunk

    recorder = Recorder(lambda request: httpx.Response(200, content=endless()))
    with pytest.raises(FetchError, match="larger than 16,777,216 bytes"):
        make_source(recorder).fetch_day(date(2026, 3, 2))
    assert sum(sent) <= MAX_RESPONSE_BYTES + 2 * 1024 * 1024
    assert len(recorder.requests) == 1


def test_an_oversized_saved_file_is_refused(tmp_path: Path) -> None:
    """A saved response over the byte cap is refused naming the file, whatever it holds."""
    saved = tmp_path / "2026-03-02.json"
    with saved.open("wb") as handle:
        handle.truncate(MAX_RESPONSE_BYTES + 1)
    with pytest.raises(FetchError, match="larger than") as caught:
        HFDailyPapers(feed_url=str(tmp_path), client=None).fetch_day(date(2026, 3, 2))
    assert str(saved) in str(caught.value)


# ------------------------------------------------------------------------------------------------
# A window of days: a bad day is rejected alone
# ------------------------------------------------------------------------------------------------


def test_a_bad_day_in_the_window_is_rejected_alone(tmp_path: Path) -> None:
    """With a truncated middle day, fetch_days keeps the other days' papers and names the bad day."""
    for day in ("2026-03-02", "2026-03-04"):
        (tmp_path / f"{day}.json").write_bytes((FIXTURES / f"{day}.json").read_bytes())
    (tmp_path / "2026-03-03.json").write_text('{"broken": ')
    source = HFDailyPapers(feed_url=str(tmp_path), client=None)
    result = source.fetch_days(today=date(2026, 3, 4), lookback=2)
    assert len(result.papers) == 30
    assert {p.featured_at.date() for p in result.papers} == {date(2026, 3, 2), date(2026, 3, 4)}
    assert [f.day for f in result.failures] == [date(2026, 3, 3)]
    error = result.error()
    assert error is not None and error.days == (date(2026, 3, 3),)
    assert "2026-03-03" in str(error) and "truncated JSON" in str(error)
    with pytest.raises(FetchError, match="truncated JSON"):
        source.fetch_window(today=date(2026, 3, 4), lookback=2)


def test_a_rejected_day_over_http_does_not_stop_the_following_days() -> None:
    """A day answered with HTML is rejected; the days after it are still fetched and kept."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.params["date"] == "2026-03-03":
            return httpx.Response(200, text="<html>maintenance</html>")
        return serve_fixtures(request)

    result = make_source(handler).fetch_days(today=date(2026, 3, 5), lookback=3)
    assert [f.day for f in result.failures] == [date(2026, 3, 3)]
    assert len(result.papers) == 45


def test_an_unreachable_feed_is_not_retried_for_every_day() -> None:
    """When the feed stays unreachable after the retries, the remaining days fail without new requests."""
    recorder = Recorder(*[httpx.ConnectError("refused")] * 20)
    result = make_source(recorder, retries=1).fetch_days(today=date(2026, 3, 4), lookback=2)
    assert len(recorder.requests) == 2
    assert [f.day for f in result.failures] == [
        date(2026, 3, 2),
        date(2026, 3, 3),
        date(2026, 3, 4),
    ]
    assert not result.papers and "could not connect" in str(result.error())
