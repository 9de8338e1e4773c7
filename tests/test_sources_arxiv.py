"""arXiv source: RSS listings and API answers parsed strictly, conditional GET, the 3 s pause and
catch-up through the API, served by a real local HTTP server."""

from __future__ import annotations

import itertools
import json
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit
from xml.sax.saxutils import escape
from zoneinfo import ZoneInfo

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from digestbot import text
from digestbot.errors import FetchError
from digestbot.sources.arxiv import (
    LISTING_LAG,
    ArxivSource,
    listing_after,
    parse_api,
    parse_rss,
    previous_announcement,
)
from digestbot.sources.base import MAX_TITLE_CHARS, Validators
from digestbot.sources.http import FEED_ACCEPT, Pacer, make_client
from tests.helpers import FakeClock, FeedServer, Reply, Seen

ARXIV = Path(__file__).parent / "fixtures" / "arxiv"
HF = Path(__file__).parent / "fixtures" / "hf_daily_papers"
DAYS = ["2026-03-02", "2026-03-03", "2026-03-04", "2026-03-05", "2026-03-06"]
NS = (
    'xmlns:arxiv="http://arxiv.org/schemas/atom" xmlns:dc="http://purl.org/dc/elements/1.1/" '
    'version="2.0"'
)


def rss_day(day: str) -> bytes:
    return (ARXIV / "rss" / f"{day}.xml").read_bytes()


def hf_ids(day: str) -> set[str]:
    return {item["paper"]["id"] for item in json.loads((HF / f"{day}.json").read_text())}


def rss(*items: str, pub: str = "Mon, 02 Mar 2026 00:00:00 -0500") -> bytes:
    body = "".join(items)
    return (
        f'<?xml version="1.0"?><rss {NS}><channel><title>t</title><pubDate>{pub}</pubDate>'
        f"{body}</channel></rss>"
    ).encode()


def item(
    *,
    arxiv_id: str = "2401.01234",
    version: int = 1,
    kind: str = "new",
    title: str = "A title",
    abstract: str = "An abstract.",
    creator: str = "Ada Lovelace, Alan Turing",
    pub: str = "Mon, 02 Mar 2026 00:00:00 -0500",
    raw_title: str | None = None,
) -> str:
    shown = raw_title if raw_title is not None else escape(title, {"\r": "&#13;"})
    description = escape(
        f"arXiv:{arxiv_id}v{version} Announce Type: {kind} \nAbstract: {abstract}", {"\r": "&#13;"}
    )
    return (
        f"<item><title>{shown}</title><link>https://arxiv.org/abs/{arxiv_id}</link>"
        f"<description>{description}</description><category>cs.CL</category>"
        f"<pubDate>{pub}</pubDate><arxiv:announce_type>{kind}</arxiv:announce_type>"
        f"<dc:creator>{escape(creator, {chr(13): '&#13;'})}</dc:creator></item>"
    )


def api_entry(arxiv_id: str, published: datetime, version: int = 1) -> str:
    stamp = published.strftime("%Y-%m-%dT%H:%M:%SZ")
    return (
        f"<entry><id>http://arxiv.org/abs/{arxiv_id}v{version}</id><published>{stamp}</published>"
        f"<updated>{stamp}</updated><title>Paper {arxiv_id}</title>"
        f"<summary>  Wrapped\n    abstract of {arxiv_id}.\n  </summary>"
        f"<author><name>Grace Hopper</name></author>"
        f'<arxiv:primary_category xmlns:arxiv="http://arxiv.org/schemas/atom" term="cs.LG"/>'
        f'<category term="cs.CL"/><category term="cs.LG"/></entry>'
    )


def api_feed(entries: list[str], *, total: int, start: int) -> bytes:
    return (
        '<?xml version="1.0"?><feed xmlns="http://www.w3.org/2005/Atom" '
        'xmlns:opensearch="http://a9.com/-/spec/opensearch/1.1/"><title>q</title>'
        f"<id>http://arxiv.org/api/x</id><updated>2026-03-06T00:00:00Z</updated>"
        f"<opensearch:totalResults>{total}</opensearch:totalResults>"
        f"<opensearch:startIndex>{start}</opensearch:startIndex>"
        f"<opensearch:itemsPerPage>{len(entries)}</opensearch:itemsPerPage>"
        f"{''.join(entries)}</feed>"
    ).encode()


def source(
    server: FeedServer,
    client: httpx.Client,
    *,
    pacer: Pacer | None = None,
    categories: tuple[str, ...] = ("cs.CL", "cs.LG"),
    page_size: int = 200,
    retries: int = 0,
) -> ArxivSource:
    clock = FakeClock()
    return ArxivSource(
        name="arxiv-ml",
        categories=categories,
        url=server.url("/rss/cs.CL+cs.LG"),
        api_url=server.url("/api/query"),
        client=client,
        pacer=pacer or Pacer(3.0, sleep=clock.sleep, monotonic=clock.monotonic),
        retries=retries,
        backoff=0,
        sleep=clock.sleep,
        now=lambda: datetime(2026, 3, 6, 12, tzinfo=UTC),
        api_page_size=page_size,
    )


# -- parsing --------------------------------------------------------------------------------


@pytest.mark.parametrize("day", DAYS)
def test_each_fixture_day_parses_into_new_papers_and_flagged_replacements(day: str) -> None:
    """Each day's listing gives its 15 new or cross-listed papers, the HF papers of that day, and
    flags its replace announcements as revisions."""
    listing = parse_rss(rss_day(day), url=f"{day}.xml")
    new = [p for p in listing.papers if not p.revision]
    revised = [p for p in listing.papers if p.revision]
    assert len(new) == 15
    assert len(revised) == (0 if day == "2026-03-02" else 2)
    assert {p.arxiv_id for p in new} <= hf_ids(day)
    assert listing.announced_at is not None and listing.announced_at.date().isoformat() == day
    for paper in listing.papers:
        assert paper.featured_at.tzinfo is UTC
        assert paper.revision or paper.featured_at.date().isoformat() == day
        assert paper.published_at is None and paper.upvotes is None and paper.version
        assert paper.title and paper.summary and paper.authors and paper.categories
        assert not paper.summary.startswith(("arXiv:", "Abstract"))


def test_rss_item_maps_creator_description_and_categories() -> None:
    """An item's comma-separated creators become authors, and its description gives id, version,
    announce type and the abstract alone."""
    listing = parse_rss((ARXIV / "rss_cs_AI_sample.xml").read_bytes(), url="sample.xml")
    paper = listing.papers[1]
    assert paper.arxiv_id == "2203.01250" and paper.version == 3 and paper.revision
    assert paper.authors == ("Antonin Monteil", "Paul Pegon")
    assert paper.categories == ("math.AP", "math.OC")
    assert paper.summary.startswith("We consider first order")
    assert paper.featured_at == datetime(2024, 8, 23, 4, tzinfo=UTC)
    assert not listing.papers[0].revision


def test_creators_joined_with_and_are_split() -> None:
    """'A, B and C' in dc:creator is three authors, and names containing 'and' stay whole."""
    listing = parse_rss(rss(item(creator="Ada Lovelace, Sandy Andersen and Alan Turing")), url="u")
    assert listing.papers[0].authors == ("Ada Lovelace", "Sandy Andersen", "Alan Turing")


def test_saturday_empty_channel_is_a_normal_day() -> None:
    """A listing with no items (Saturday) parses to no papers, not an error."""
    listing = parse_rss(rss_day("2026-03-07"), url="sat")
    assert listing.papers == ()
    assert listing.announced_at is not None and listing.announced_at.weekday() == 5


def test_api_fixture_parses_75_papers_unversioned_and_unwrapped() -> None:
    """The API answer gives its 75 papers with versions stripped from ids, abstracts on one line,
    the primary category first, and the same ids as the HF fixtures."""
    page = parse_api((ARXIV / "api_query_seed.xml").read_bytes(), url="api")
    assert (page.total_results, page.start_index, page.items_per_page) == (75, 0, 75)
    assert len(page.papers) == 75
    first = page.papers[0]
    assert first.arxiv_id == "2303.09730" and first.version == 2
    assert first.categories[0] == "cs.CV"
    assert first.published_at == datetime(2023, 6, 1, 17, tzinfo=UTC)  # Thursday 13:00 EDT
    assert first.featured_at == datetime(2023, 6, 2, 4, tzinfo=UTC)  # Friday's listing
    for paper in page.papers:
        assert "v" not in paper.arxiv_id and "\n" not in paper.summary and "  " not in paper.summary
        assert paper.authors and not paper.revision and paper.upvotes is None
    rss_ids = {p.arxiv_id for d in DAYS for p in parse_rss(rss_day(d), url=d).papers}
    assert {p.arxiv_id for p in page.papers} == rss_ids
    assert rss_ids <= set().union(*(hf_ids(d) for d in DAYS))


# -- bad input ------------------------------------------------------------------------------

BOMB = (
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + b"".join(
        b'<!ENTITY lol%d "%s">' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10)
        for i in range(1, 10)
    )
    + b']><rss version="2.0"><channel><title>&lol9;</title></channel></rss>'
)
EXTERNAL = (
    b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    b'<rss version="2.0"><channel><title>&x;</title></channel></rss>'
)

BAD = {
    "empty": (b"  \n", "empty response"),
    "malformed": (rss(item()).replace(b"</channel>", b""), "malformed XML"),
    "html page": (b"<!DOCTYPE html><html><body>Oops</body></html>", "HTML page"),
    "xhtml page": (b'<html xmlns="http://www.w3.org/1999/xhtml"><body/></html>', "HTML page"),
    "not a feed": (b"<?xml version='1.0'?><error>busy</error>", "not an RSS or Atom feed"),
    "billion laughs": (BOMB, "entities are refused"),
    "external entity": (EXTERNAL, "entities are refused"),
    "no arXiv id": (rss(item(arxiv_id="not-an-id")), "item 0"),
    "bad announce type": (rss(item(kind="withdrawn")), "announce_type"),
    "impossible date": (rss(item(pub="Mon, 30 Feb 2026 00:00:00 -0500")), "pubDate"),
    "long title": (rss(item(title="x" * (MAX_TITLE_CHARS + 1))), "'title' has 1,001"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_rss_is_rejected_whole_naming_url_and_problem(name: str) -> None:
    """A broken or hostile RSS answer raises one FetchError naming the URL and what is wrong."""
    content, expected = BAD[name]
    start = time.monotonic()
    with pytest.raises(FetchError) as info:
        parse_rss(content, url="https://rss.arxiv.org/rss/cs.CL")
    assert time.monotonic() - start < 1.0
    assert "https://rss.arxiv.org/rss/cs.CL" in str(info.value)
    assert expected in str(info.value)


@pytest.mark.parametrize("name", ["malformed", "billion laughs", "html page"])
def test_bad_api_answer_is_rejected_whole(name: str) -> None:
    """The API parser refuses the same bad input as the RSS parser."""
    with pytest.raises(FetchError, match=BAD[name][1]):
        parse_api(BAD[name][0], url="https://export.arxiv.org/api/query")


def test_api_entry_without_arxiv_id_rejects_the_page_naming_the_entry() -> None:
    """An API entry whose id is not an arXiv abstract URL rejects the page, naming entry and field."""
    entries = [api_entry("2401.00001", datetime(2026, 3, 5, tzinfo=UTC))]
    content = api_feed(entries, total=1, start=0).replace(b"abs/2401.00001v1", b"abs/nothing")
    with pytest.raises(FetchError, match=r"entry 0.*'id' is not an arXiv abstract URL"):
        parse_api(content, url="api")


def test_ten_megabyte_title_over_http_is_rejected(server: FeedServer, client: httpx.Client) -> None:
    """A 10 MB title in the RSS fails today's fetch with a message naming the title limit."""
    server.route("/rss/cs.CL+cs.LG", Reply(rss(item(title="T" * 10_000_000))))
    result = source(server, client).fetch_days(
        today=date(2026, 3, 6), lookback=0, since=datetime(2026, 3, 6, 1, tzinfo=UTC)
    )
    assert [f.day for f in result.failures] == [date(2026, 3, 6)]
    assert "arxiv-ml" in str(result.failures[0].error)
    assert "over the limit of 1,000" in str(result.failures[0].error)
    assert result.papers == ()


def test_hostile_text_reaches_no_output_field_as_a_control_character() -> None:
    """CR/LF in a title or creator are cleaned to spaces; a <script> in an abstract stays inert
    literal text (arXiv fields are plain text, escaped wherever they are shown)."""
    listing = parse_rss(
        rss(
            item(
                title="Evil\r\nBcc: victim@example.com",
                creator="Eve\r\nX-Injected: 1, Bob",
                abstract="<script>alert(1)</script> and x<y",
            )
        ),
        url="u",
    )
    paper = listing.papers[0]
    assert paper.title == "Evil Bcc: victim@example.com"
    assert paper.authors == ("Eve X-Injected: 1", "Bob")
    assert paper.summary == "<script>alert(1)</script> and x<y"


_ANY_TEXT = st.text(
    alphabet=st.characters(exclude_categories=["Cs"]) | st.sampled_from("\r\n<>&;,"), max_size=80
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(title=_ANY_TEXT, abstract=_ANY_TEXT, creator=_ANY_TEXT)
def test_arbitrary_item_text_yields_clean_fields_or_fetch_error(
    title: str, abstract: str, creator: str
) -> None:
    """Any text in an item's title, abstract or creator gives single-line fields with no control
    characters, equal to the cleaned text, or the response is rejected with FetchError."""
    try:
        listing = parse_rss(rss(item(title=title, abstract=abstract, creator=creator)), url="u")
    except FetchError:
        return
    for paper in listing.papers:
        for value in (paper.title, paper.summary, *paper.authors):
            assert not text.has_unsafe(value)
        # feedparser reads U+0080-U+009F as cp1252 and repairs Latin-1 text that reads as UTF-8
        if not any("\x80" <= ch <= "\xff" for ch in title):
            assert paper.title == text.plain_text(title)


# -- fetching -------------------------------------------------------------------------------


def test_conditional_get_304_means_not_modified_and_no_papers(
    server: FeedServer, client: httpx.Client
) -> None:
    """The second fetch sends the first answer's ETag; the server's 304 gives not_modified and no
    papers, and is still a good fetch."""
    server.route(
        "/rss/cs.CL+cs.LG",
        Reply(
            rss_day("2026-03-06"),
            headers={"ETag": '"v1"', "Last-Modified": "Fri, 06 Mar 2026 05:00:00 GMT"},
        ),
    )
    since = datetime(2026, 3, 6, 6, tzinfo=UTC)
    arxiv = source(server, client)
    first = arxiv.fetch_days(today=date(2026, 3, 6), lookback=0, since=since)
    assert first.ok and len(first.papers) == 17 and not first.not_modified
    assert first.validators == Validators(
        etag='"v1"', last_modified="Fri, 06 Mar 2026 05:00:00 GMT"
    )
    second = arxiv.fetch_days(
        today=date(2026, 3, 6), lookback=0, since=since, validators=first.validators
    )
    assert second.ok and second.not_modified and second.papers == ()
    assert second.validators is not None and second.validators.etag == '"v1"'
    sent = server.requests[-1].headers
    assert sent["if-none-match"] == '"v1"'
    assert sent["if-modified-since"] == "Fri, 06 Mar 2026 05:00:00 GMT"
    assert "application/rss+xml" in sent["accept"]


def test_a_rejected_listing_keeps_the_previous_validators(
    server: FeedServer, client: httpx.Client
) -> None:
    """A listing rejected as malformed does not hand back its own ETag, so the next fetch gets it
    again in full instead of a 304 for a response that was never used."""
    server.route("/rss/cs.CL+cs.LG", Reply(b"<rss><channel>", headers={"ETag": '"bad"'}))
    old = Validators(etag='"old"')
    since = datetime(2026, 3, 6, 6, tzinfo=UTC)
    result = source(server, client).fetch_days(
        today=date(2026, 3, 6), lookback=0, since=since, validators=old
    )
    assert not result.ok and result.validators == old and not result.not_modified


def test_pacer_keeps_three_seconds_between_requests() -> None:
    """Consecutive guarded requests are at least 3 s apart, measured on the injected clock."""
    clock = FakeClock()
    pacer = Pacer(3.0, sleep=clock.sleep, monotonic=clock.monotonic)
    pacer.wait()
    assert clock.sleeps == []
    clock.t += 1.0
    pacer.wait()
    assert clock.sleeps == [pytest.approx(2.0)]
    clock.t += 5.0
    pacer.wait()
    assert clock.sleeps == [pytest.approx(2.0)]


def window_server(server: FeedServer, clock: FakeClock | None = None) -> list[float]:
    """Route today's RSS (Friday 2026-03-06) and an API whose papers go back one per 6 hours."""
    stamps: list[float] = []

    def note(seen: Seen) -> None:
        if clock is not None:
            stamps.append(clock.t)

    def rss_reply(seen: Seen) -> Reply:
        note(seen)
        return Reply(rss_day("2026-03-06"))

    newest = datetime(2026, 3, 6, 3, tzinfo=UTC)
    # 2 papers already in the RSS, then one paper every 6 hours going back
    ids = ["2307.15333", "2502.18779"] + [f"2603.{n:05d}" for n in range(1, 41)]

    def api_reply(seen: Seen) -> Reply:
        note(seen)
        query = parse_qs(urlsplit(seen.path).query)
        start, size = int(query["start"][0]), int(query["max_results"][0])
        chosen = ids[start : start + size]
        entries = [
            api_entry(pid, newest - timedelta(hours=6 * (start + n)))
            for n, pid in enumerate(chosen)
        ]
        return Reply(api_feed(entries, total=len(ids), start=start))

    server.route("/rss/cs.CL+cs.LG", rss_reply)
    server.route("/api/query", api_reply)
    return stamps


def test_rss_then_api_requests_wait_three_seconds_each(
    server: FeedServer, client: httpx.Client
) -> None:
    """Every request to arXiv (the RSS, then each API page) comes at least 3 s after the one
    before, the pause measured with a fake clock instead of slept through."""
    clock = FakeClock()
    stamps = window_server(server, clock)
    pacer = Pacer(3.0, sleep=clock.sleep, monotonic=clock.monotonic)
    arxiv = source(server, client, pacer=pacer, page_size=4)
    result = arxiv.fetch_days(today=date(2026, 3, 6), lookback=2, since=None)
    assert result.ok
    assert len(stamps) >= 3
    assert all(b - a >= 3.0 for a, b in itertools.pairwise(stamps))


def test_catch_up_pages_the_api_until_entries_are_older_than_the_window(
    server: FeedServer, client: httpx.Client
) -> None:
    """Without a previous fetch, the window's earlier days come from the API, paged with
    start/max_results, stopping at the first page that reaches before the window; papers already
    in the RSS are not duplicated."""
    window_server(server)
    result = source(server, client, page_size=4).fetch_days(
        today=date(2026, 3, 6), lookback=2, since=None
    )
    assert result.ok and result.days == (date(2026, 3, 4), date(2026, 3, 5), date(2026, 3, 6))
    api = [parse_qs(urlsplit(r.path).query) for r in server.requests if "/api/" in r.path]
    # one submission every 6 h back from 2026-03-06 03:00: the 30th (index 29, on page 28..31) is
    # the first submitted more than LISTING_LAG before the window, so paging stops there
    assert [(q["start"][0], q["max_results"][0]) for q in api] == [
        (str(n), "4") for n in range(0, 32, 4)
    ]
    assert api[0]["search_query"] == ["cat:cs.CL OR cat:cs.LG"]
    assert api[0]["sortBy"] == ["submittedDate"] and api[0]["sortOrder"] == ["descending"]
    ids = [p.arxiv_id for p in result.papers]
    assert len(ids) == len(set(ids))
    caught = {p.arxiv_id for p in result.papers if p.published_at is not None}
    window_start = datetime(2026, 3, 4, tzinfo=UTC)
    newest = datetime(2026, 3, 6, 3, tzinfo=UTC)
    expected = {
        f"2603.{n - 1:05d}"
        for n in range(2, 32)
        if listing_after(newest - timedelta(hours=6 * n)) >= window_start
    }
    assert caught == expected and len(expected) > 5
    assert len(result.papers) == 17 + len(expected)


def test_a_recent_last_fetch_needs_no_api_call(server: FeedServer, client: httpx.Client) -> None:
    """When the last good fetch came after the previous announcement, only the RSS is read."""
    window_server(server)
    since = datetime(2026, 3, 5, 12, tzinfo=UTC)
    result = source(server, client).fetch_days(today=date(2026, 3, 6), lookback=3, since=since)
    assert result.ok and len(result.papers) == 17
    assert [r.path for r in server.requests] == ["/rss/cs.CL+cs.LG"]


def test_previous_announcement_skips_the_weekend() -> None:
    """The announcement before a Monday's is the Friday's."""
    monday = datetime(2026, 3, 2, 5, tzinfo=UTC)
    assert previous_announcement(monday) == datetime(2026, 2, 27, 5, tzinfo=UTC)


def test_rss_failure_fails_today_and_keeps_the_api_days(
    server: FeedServer, client: httpx.Client
) -> None:
    """A failing RSS fails only today; the catch-up days from the API are kept."""
    window_server(server)
    server.route("/rss/cs.CL+cs.LG", Reply(b"<!doctype html><title>down</title>", 200))
    result = source(server, client).fetch_days(today=date(2026, 3, 6), lookback=1, since=None)
    assert [f.day for f in result.failures] == [date(2026, 3, 6)]
    assert "HTML page" in str(result.failures[0].error)
    assert result.papers and all(p.published_at is not None for p in result.papers)


def test_api_failure_fails_each_catch_up_day_and_keeps_the_rss(
    server: FeedServer, client: httpx.Client
) -> None:
    """A failing API fails each catch-up day, naming the source; today's RSS papers are kept."""
    window_server(server)
    server.route("/api/query", Reply(b"busy", 503))
    result = source(server, client).fetch_days(today=date(2026, 3, 6), lookback=2, since=None)
    assert [f.day for f in result.failures] == [date(2026, 3, 4), date(2026, 3, 5)]
    assert "source 'arxiv-ml'" in str(result.failures[0].error)
    assert len(result.papers) == 17
    error = result.error()
    assert error is not None and "2026-03-06" in str(error)


def test_offline_folder_reads_each_day_of_the_window() -> None:
    """A folder of YYYY-MM-DD.xml listings gives each window day's papers; a missing day is empty."""
    arxiv = ArxivSource(
        name="offline",
        categories=("cs.CL",),
        url=str(ARXIV / "rss"),
        api_url=None,
        client=None,
        pacer=Pacer(0),
    )
    result = arxiv.fetch_days(today=date(2026, 3, 8), lookback=3)
    assert result.ok and len([p for p in result.papers if not p.revision]) == 15 + 15
    assert result.days == (date(2026, 3, 5), date(2026, 3, 6), date(2026, 3, 7), date(2026, 3, 8))
    whole = arxiv.fetch_days(today=date(2026, 3, 6), lookback=4)
    assert len([p for p in whole.papers if not p.revision]) == 75


def test_offline_file_is_todays_listing(tmp_path: Path) -> None:
    """A saved listing is read as today's, and a broken one fails today naming the file."""
    good = ArxivSource(
        name="f",
        categories=(),
        url=str(ARXIV / "rss" / "2026-03-02.xml"),
        api_url=None,
        client=None,
        pacer=Pacer(0),
    )
    assert len(good.fetch_days(today=date(2030, 1, 1), lookback=3).papers) == 15
    broken = tmp_path / "broken.xml"
    broken.write_bytes(b"<rss><channel>")
    bad = ArxivSource(
        name="f", categories=(), url=str(broken), api_url=None, client=None, pacer=Pacer(0)
    )
    result = bad.fetch_days(today=date(2030, 1, 1), lookback=0)
    assert [f.day for f in result.failures] == [date(2030, 1, 1)]
    assert "broken.xml" in str(result.failures[0].error)


def test_default_urls_come_from_the_categories() -> None:
    """Without url and api_url, the RSS of the joined categories and arXiv's API are used."""
    with make_client(timeout=5, token=None, accept=FEED_ACCEPT) as c:
        arxiv = ArxivSource(
            name="d",
            categories=("cs.CL", "cs.LG"),
            url=None,
            api_url=None,
            client=c,
            pacer=Pacer(),
        )
    assert arxiv.url == "https://rss.arxiv.org/rss/cs.CL+cs.LG"
    query = arxiv.api_query(start=200)
    assert (
        query.host == "export.arxiv.org"
        and query.params["search_query"] == "cat:cs.CL OR cat:cs.LG"
    )
    assert "cat%3Acs.CL+OR+cat%3Acs.LG" in str(query) and query.params["start"] == "200"


@pytest.mark.parametrize(
    ("submitted", "listed"),
    [
        ("2026-03-02T14:00:00+00:00", "2026-03-03"),  # Monday 09:00 ET: Tuesday's listing
        ("2026-03-02T20:00:00+00:00", "2026-03-04"),  # Monday 15:00 ET, after the deadline
        ("2026-02-27T18:30:00+00:00", "2026-03-02"),  # Friday 13:30 ET: Monday's listing
        ("2026-02-27T20:00:00+00:00", "2026-03-03"),  # Friday after the deadline: Tuesday
        ("2026-02-28T12:00:00+00:00", "2026-03-03"),  # Saturday: Tuesday
    ],
)
def test_a_catch_up_paper_is_dated_by_the_listing_it_appeared_in(
    submitted: str, listed: str
) -> None:
    """An API paper (which says only when it was submitted) is dated 00:00 US Eastern of the
    weekday listing that announced it, as the RSS would have dated it."""
    got = listing_after(datetime.fromisoformat(submitted))
    assert got.astimezone(ZoneInfo("America/New_York")).isoformat() == f"{listed}T00:00:00-05:00"


@given(
    st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
    )
)
def test_a_listing_is_a_weekday_within_five_days_after_submission(submitted: datetime) -> None:
    """Whatever the submission time, its listing is a later weekday, at most 5 days on."""
    got = listing_after(submitted)
    local = got.astimezone(ZoneInfo("America/New_York"))
    assert local.weekday() < 5 and local.hour == 0
    assert submitted < got <= submitted + LISTING_LAG


def test_a_paper_announced_and_revised_in_one_window_is_one_new_paper_at_its_newest_version() -> (
    None
):
    """2303.09730 is announced on 2026-03-02 (v1) and replaced on 2026-03-03 (v2): fetching both
    days gives it once, as a new paper (so it is stored) dated by its announcement, at v2."""
    arxiv = ArxivSource(
        name="offline",
        categories=("cs.CV",),
        url=str(ARXIV / "rss"),
        api_url=None,
        client=None,
        pacer=Pacer(0),
    )
    result = arxiv.fetch_days(today=date(2026, 3, 3), lookback=1)
    [paper] = [p for p in result.papers if p.arxiv_id == "2303.09730"]
    assert not paper.revision and paper.version == 2
    assert paper.featured_at.date() == date(2026, 3, 2)
    alone = arxiv.fetch_days(today=date(2026, 3, 3), lookback=0)
    [again] = [p for p in alone.papers if p.arxiv_id == "2303.09730"]
    assert again.revision and again.version == 2  # only the replacement: an update, not news
