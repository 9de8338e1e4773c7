"""Generic RSS/Atom source: paper keys, dates, HTML as plain text, the window, conditional GET and
whole-response rejection, served by a real local HTTP server."""

from __future__ import annotations

import re
import time
from datetime import UTC, date, datetime
from pathlib import Path
from xml.sax.saxutils import escape

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from digestbot import text
from digestbot.errors import FetchError
from digestbot.sources.base import FetchedPaper, Validators
from digestbot.sources.feed import FeedSource, parse_feed_entries
from digestbot.sources.feedxml import BadDate, feed_datetime
from digestbot.sources.http import Pacer, on_arxiv_host
from tests.helpers import FakeClock, FeedServer, Reply

NOW = datetime(2026, 3, 6, 12, tzinfo=UTC)
NS = (
    'xmlns:dc="http://purl.org/dc/elements/1.1/" '
    'xmlns:prism="http://prismstandard.org/namespaces/basic/2.0/" version="2.0"'
)


def rss(*items: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><rss {NS}><channel><title>Journal</title>'
        f"<link>https://journal.example/</link>{''.join(items)}</channel></rss>"
    ).encode()


def entry(body: str, *, title: str = "A paper", date: str | None = "2026-03-06T08:00:00Z") -> str:
    when = f"<dc:date>{date}</dc:date>" if date else ""
    return f"<item><title>{escape(title)}</title>{when}{body}</item>"


def parse(content: bytes) -> list[FetchedPaper]:
    return parse_feed_entries(content, url="https://journal.example/rss", now=NOW)


ATOM = b"""<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom">
  <title>Preprints</title><id>urn:x</id><updated>2026-03-06T00:00:00Z</updated>
  <entry>
    <id>https://www.biorxiv.org/content/10.1101/2026.03.01.123456v1</id>
    <title type="html">Neurons &lt;i&gt;in vivo&lt;/i&gt; &amp;amp; more</title>
    <link rel="alternate" href="https://www.biorxiv.org/content/10.1101/2026.03.01.123456v1"/>
    <published>2026-03-05T10:00:00+02:00</published>
    <updated>2026-03-06T10:00:00Z</updated>
    <author><name>Santiago Ram\xc3\xb3n</name></author><author><name>Camillo Golgi</name></author>
    <category term="neuroscience"/><category term="imaging"/>
    <summary type="html">&lt;p&gt;We image &lt;b&gt;neurons&lt;/b&gt;.&lt;/p&gt;&lt;script&gt;steal()&lt;/script&gt;</summary>
  </entry>
</feed>"""


# -- keys -----------------------------------------------------------------------------------

KEYS = {
    "arXiv id in the link": ("<link>https://arxiv.org/abs/2401.01234v3</link>", "2401.01234"),
    "arXiv id in a pdf link": ("<link>http://arxiv.org/pdf/2401.01234v1.pdf</link>", "2401.01234"),
    "arXiv id in the guid": (
        '<guid isPermaLink="false">oai:arXiv.org:2401.01234v1</guid>',
        "2401.01234",
    ),
    "arXiv DOI": (
        (
            "<dc:identifier>doi:10.48550/arXiv.2401.01234</dc:identifier>"
            "<link>https://journal.example/p/1</link>"
        ),
        "2401.01234",
    ),
    "arXiv DOI link": ("<link>https://doi.org/10.48550/arXiv.2401.01234</link>", "2401.01234"),
    "plain DOI in dc:identifier": (
        (
            "<dc:identifier>doi:10.1101/2026.03.01.ABC</dc:identifier>"
            "<link>https://journal.example/p/1</link>"
        ),
        "doi:10.1101/2026.03.01.abc",
    ),
    "DOI in prism:doi": (
        "<prism:doi>10.1038/S41586-026-0001-X</prism:doi>",
        "doi:10.1038/s41586-026-0001-x",
    ),
    "doi.org link": (
        "<link>https://doi.org/10.1145/3600006.3613138</link>",
        "doi:10.1145/3600006.3613138",
    ),
    "link only": (
        "<link>https://journal.example/p/42?x=1</link>",
        "https://journal.example/p/42?x=1",
    ),
    "guid only": ('<guid isPermaLink="false">journal-article-42</guid>', "journal-article-42"),
}


@pytest.mark.parametrize("name", sorted(KEYS))
def test_entry_key_is_arxiv_id_then_doi_then_link_then_guid(name: str) -> None:
    """An entry's paper key is its arXiv id when it carries one, else its DOI, else link or guid."""
    body, key = KEYS[name]
    papers = parse(rss(entry(body)))
    assert [p.arxiv_id for p in papers] == [key]


def test_a_doi_entry_links_to_its_page_or_to_doi_org() -> None:
    """An entry's link is its own http(s) link; a DOI-only entry links to doi.org."""
    linked = parse(rss(entry(KEYS["plain DOI in dc:identifier"][0])))[0]
    assert linked.link == "https://journal.example/p/1"
    bare = parse(rss(entry(KEYS["DOI in prism:doi"][0])))[0]
    assert bare.link == "https://doi.org/10.1038/s41586-026-0001-x"


def test_an_entry_without_link_id_or_doi_rejects_the_feed() -> None:
    """One entry with no usable key rejects the whole feed, naming the entry."""
    content = rss(entry("<link>https://journal.example/1</link>"), entry("", title="Orphan"))
    with pytest.raises(FetchError, match=r"entry 1 .*has no link, id or DOI"):
        parse(content)


def test_javascript_link_is_no_key_and_no_link() -> None:
    """A javascript: link is neither the key nor the paper's link."""
    papers = parse(
        rss(entry('<link>javascript:alert(1)</link><guid isPermaLink="false">g1</guid>'))
    )
    assert papers[0].arxiv_id == "g1" and papers[0].link is None


# -- fields ---------------------------------------------------------------------------------


def test_atom_entry_maps_authors_categories_dates_and_html_to_text() -> None:
    """An Atom entry gives its authors, categories, published date in UTC, and its HTML title and
    summary as plain text, script contents gone."""
    (paper,) = parse(ATOM)
    assert paper.arxiv_id == "https://www.biorxiv.org/content/10.1101/2026.03.01.123456v1"
    assert paper.title == "Neurons in vivo & more"
    assert paper.summary == "We image neurons."
    assert paper.authors == ("Santiago Ramón", "Camillo Golgi")
    assert paper.categories == ("neuroscience", "imaging")
    assert paper.featured_at == paper.published_at == datetime(2026, 3, 5, 8, tzinfo=UTC)
    assert paper.upvotes is None and not paper.revision


def test_hostile_title_and_summary_become_one_clean_line() -> None:
    """CR/LF in a title become spaces and a <script> in a summary is removed with its content."""
    (paper,) = parse(
        rss(
            entry(
                "<link>https://j.example/1</link><description>"
                + escape("Fine <script>alert('x')</script><b>bold</b>\r\nend")
                + "</description>",
                title="Evil\r\nBcc: victim@example.com",
            )
        )
    )
    assert paper.title == "Evil Bcc: victim@example.com"
    assert paper.summary == "Fine bold end"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2026-03-02T10:00:00", datetime(2026, 3, 2, 10, tzinfo=UTC)),
        ("2026-03-02", datetime(2026, 3, 2, tzinfo=UTC)),
        ("Mon, 02 Mar 2026 10:00:00", datetime(2026, 3, 2, 10, tzinfo=UTC)),
        ("Mon, 02 Mar 2026 10:00:00 GMT", datetime(2026, 3, 2, 10, tzinfo=UTC)),
        ("Mon, 02 Mar 2026 10:00:00 -0500", datetime(2026, 3, 2, 15, tzinfo=UTC)),
        ("2026-03-02T10:00:00+01:00", datetime(2026, 3, 2, 9, tzinfo=UTC)),
    ],
)
def test_dates_without_a_timezone_are_taken_as_utc(raw: str, expected: datetime) -> None:
    """A feed date without a zone is read as UTC; one with a zone is converted to UTC."""
    assert feed_datetime(raw) == expected


@pytest.mark.parametrize(
    "raw", ["2026-02-30", "Mon, 30 Feb 2026 10:00:00 GMT", "yesterday", "0001-01-01"]
)
def test_impossible_dates_are_refused(raw: str) -> None:
    """A date that does not exist is refused, and rejects the feed naming the field."""
    with pytest.raises(BadDate):
        feed_datetime(raw)
    with pytest.raises(FetchError, match=r"entry 0.*'updated'"):
        parse(rss(entry("<link>https://j.example/1</link>", date=raw)))


# -- bad input ------------------------------------------------------------------------------

BOMB = (
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + b"".join(
        b'<!ENTITY lol%d "%s">' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10)
        for i in range(1, 10)
    )
    + b'<!ENTITY x "x">]><rss version="2.0"><channel><title>&lol9;</title></channel></rss>'
)

BAD = {
    "empty": (b"", "empty response"),
    "malformed": (b"<rss version='2.0'><channel><item></channel></rss>", "malformed XML"),
    "html page": (b"\n<HTML><head><title>Login</title></head></HTML>", "HTML page"),
    "json": (b'{"items": []}', "malformed XML"),
    "billion laughs": (BOMB, "entities are refused"),
    "title over the limit": (
        rss(entry("<link>https://j.example/1</link>", title="x" * 1001)),
        "'title' has 1,001",
    ),
    "link over the limit": (
        rss(entry(f"<link>https://j.example/{'a' * 2100}</link>")),
        "over",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_feeds_are_rejected_whole_naming_url_and_problem(name: str) -> None:
    """A broken or hostile feed raises one FetchError naming the URL and the problem, fast."""
    content, expected = BAD[name]
    start = time.monotonic()
    with pytest.raises(FetchError) as info:
        parse(content)
    assert time.monotonic() - start < 1.0
    assert "https://journal.example/rss" in str(info.value) and expected in str(info.value)


_ANY_TEXT = st.text(
    alphabet=st.characters(exclude_categories=["Cs"]) | st.sampled_from("\r\n<>/&;\"'"),
    max_size=80,
)
_TAG = re.compile(r"<[A-Za-z/!?][^<>]*>")  # a whole tag; a lone "<" is text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(title=_ANY_TEXT, summary=_ANY_TEXT, creator=_ANY_TEXT)
def test_arbitrary_entry_text_yields_no_control_characters_or_tags(
    title: str, summary: str, creator: str
) -> None:
    """Any text in a title, summary or creator gives one-line fields with no control characters and
    no HTML tag (unless the text spelled one with entities), or the feed is rejected with FetchError."""
    body = (
        "<link>https://j.example/1</link>"
        f"<description>{escape(summary, {chr(13): '&#13;'})}</description>"
        f"<dc:creator>{escape(creator, {chr(13): '&#13;'})}</dc:creator>"
    )
    try:
        papers = parse(rss(entry(body, title=title.replace("\r", "&#13;"))))
    except FetchError:
        return
    for paper in papers:
        for value in (paper.title, paper.summary, *paper.authors):
            assert not text.has_unsafe(value)
        if "&" not in title + summary:
            assert not _TAG.search(paper.title) and not _TAG.search(paper.summary)


# -- fetching -------------------------------------------------------------------------------


WINDOWED = rss(
    entry("<link>https://j.example/old</link>", date="2026-03-01T23:59:59Z"),
    entry("<link>https://j.example/start</link>", date="2026-03-04T00:00:00Z"),
    entry("<link>https://j.example/today</link>", date="Fri, 06 Mar 2026 11:00:00"),
    entry("<link>https://j.example/future</link>", date="2026-03-06T13:00:00Z"),
    entry("<link>https://j.example/undated</link>", date=None),
)


def feed_source(url: str, client: httpx.Client | None) -> FeedSource:
    return FeedSource(name="journal", url=url, client=client, retries=0, now=lambda: NOW)


def test_fetch_keeps_entries_dated_in_the_window_and_dates_undated_ones_now(
    server: FeedServer, client: httpx.Client
) -> None:
    """Entries dated from the window's first midnight (UTC) up to now are kept, undated entries are
    dated now; older and future entries are left out."""
    server.route("/feed.xml", Reply(WINDOWED))
    result = feed_source(server.url("/feed.xml"), client).fetch_days(
        today=date(2026, 3, 6), lookback=2
    )
    assert result.ok and result.days == (date(2026, 3, 4), date(2026, 3, 5), date(2026, 3, 6))
    assert [p.arxiv_id.rsplit("/", 1)[1] for p in result.papers] == ["start", "today", "undated"]
    assert result.papers[-1].featured_at == NOW


def test_conditional_get_answers_not_modified_with_no_papers(
    server: FeedServer, client: httpx.Client
) -> None:
    """A repeated fetch sends the ETag it got; the server's 304 gives not_modified and no papers."""
    server.route("/feed.xml", Reply(WINDOWED, headers={"ETag": 'W/"abc"'}))
    journal = feed_source(server.url("/feed.xml"), client)
    first = journal.fetch_days(today=date(2026, 3, 6), lookback=2)
    assert first.validators == Validators(etag='W/"abc"') and first.papers
    second = journal.fetch_days(today=date(2026, 3, 6), lookback=2, validators=first.validators)
    assert second.ok and second.not_modified and second.papers == ()
    assert server.requests[-1].headers["if-none-match"] == 'W/"abc"'


def test_a_failing_feed_fails_every_day_of_the_window_naming_the_source(
    server: FeedServer, client: httpx.Client
) -> None:
    """An HTML error page instead of the feed fails the whole window, naming the source and URL."""
    server.route("/feed.xml", Reply(b"<!DOCTYPE html><p>maintenance</p>"))
    result = feed_source(server.url("/feed.xml"), client).fetch_days(
        today=date(2026, 3, 6), lookback=1
    )
    assert result.papers == () and [f.day for f in result.failures] == list(result.days)
    message = str(result.failures[0].error)
    assert "source 'journal'" in message and "/feed.xml" in message and "HTML page" in message


def test_a_ten_megabyte_title_over_http_is_rejected(
    server: FeedServer, client: httpx.Client
) -> None:
    """A feed with a 10 MB title is rejected whole with the title limit in the message."""
    server.route(
        "/feed.xml", Reply(rss(entry("<link>https://j.example/1</link>", title="T" * 10_000_000)))
    )
    result = feed_source(server.url("/feed.xml"), client).fetch_days(
        today=date(2026, 3, 6), lookback=0
    )
    assert result.papers == () and "over the limit of 1,000" in str(result.failures[0].error)


def test_offline_file_is_read_like_the_feed(tmp_path: Path) -> None:
    """A saved feed file is read and windowed like a live one; a missing path fails naming it."""
    saved = tmp_path / "feed.xml"
    saved.write_bytes(WINDOWED)
    result = feed_source(str(saved), None).fetch_days(today=date(2026, 3, 6), lookback=2)
    assert result.ok and len(result.papers) == 3
    missing = feed_source(str(tmp_path / "nope.xml"), None).fetch_days(
        today=date(2026, 3, 6), lookback=0
    )
    assert "nope.xml" in str(missing.failures[0].error)


def test_feedparser_never_reads_a_path_given_as_content(tmp_path: Path) -> None:
    """Content that happens to be a file path is parsed as (bad) XML, never opened as a file."""
    secret = tmp_path / "secret.xml"
    secret.write_bytes(rss(entry("<link>https://j.example/secret</link>")))
    with pytest.raises(FetchError, match="malformed XML"):
        parse(str(secret).encode())


@pytest.mark.parametrize(
    ("url", "paced"),
    [
        ("https://export.arxiv.org/api/query?search_query=cat:cs.CL", True),
        ("http://rss.arxiv.org/rss/cs.CL", True),
        ("https://arxiv.org/rss/cs.CL", True),
        ("https://notarxiv.org/feed", False),
        ("https://arxiv.org.example.com/feed", False),
        ("feeds/arxiv.org.xml", False),
    ],
)
def test_only_arxiv_hosts_count_as_arxiv(url: str, paced: bool) -> None:
    """A feed on arxiv.org or one of its subdomains keeps arXiv's pause; look-alike hosts and
    saved files do not."""
    assert on_arxiv_host(url) is paced


def test_a_feed_with_a_pacer_waits_its_turn(server: FeedServer, client: httpx.Client) -> None:
    """A feed given the run's arXiv pacer (as a feed on an arXiv host is) asks at most once every
    3 s, measured on the pacer's injected clock."""
    server.route("/feed.xml", Reply(WINDOWED))
    clock = FakeClock()
    pacer = Pacer(3.0, sleep=clock.sleep, monotonic=clock.monotonic)
    journal = FeedSource(
        name="arxiv-feed",
        url=server.url("/feed.xml"),
        client=client,
        retries=0,
        now=lambda: NOW,
        pacer=pacer,
    )
    journal.fetch_days(today=date(2026, 3, 6), lookback=0)
    journal.fetch_days(today=date(2026, 3, 6), lookback=0)
    assert clock.sleeps == [3.0] and len(server.requests) == 2
