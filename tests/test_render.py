"""Tests of digestbot.render: golden digests, escaping of hostile feed text, links, highlights, cache."""

from __future__ import annotations

import functools
import os
import re
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import jinja2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from digestbot import render
from digestbot.errors import ConfigError, TemplateError
from digestbot.mail import build_message
from digestbot.mail.context import paper_view
from digestbot.matching import compile_filter, explain, parse_query
from digestbot.matching.text import tokenize, words
from digestbot.models import Paper
from digestbot.render import (
    MARK_STYLE,
    SUMMARY_LIMIT,
    DigestView,
    PaperView,
    RenderedDigest,
    Renderer,
    _tidy_text,
)
from digestbot.resources import templates_dir
from digestbot.sources.hf_daily import parse_daily_papers
from digestbot.text import safe_http_url

GOLDEN = Path(__file__).parent / "golden"
REGEN = os.environ.get("DIGESTBOT_REGEN_GOLDEN") == "1"

MIROSTAT_SUMMARY = (
    "Neural text decoding is important for generating high-quality texts using language "
    "models. To generate high-quality text, popular decoding algorithms like top-k, top-p "
    "(nucleus), and temperature-based sampling truncate or distort the unreliable low "
    "probability tail of the language model. Though these methods generate high-quality "
    "text after parameter tuning, they are ad hoc. Not much is known about the control they "
    "provide over the statistics of the output, which is important since recent reports "
    "show text quality is highest for a specific range of likelihoods. Here, first we "
    "provide a theoretical analysis of perplexity in top-k, top-p, and temperature sampling, "
    "finding that cross-entropy behaves approximately linearly as a function of p in top-p "
    "sampling whereas it is a nonlinear function of k in top-k sampling, under Zipfian "
    "statistics. We use this analysis to design a feedback-based adaptive top-k text "
    "decoding algorithm called mirostat that generates text (of any length) with a "
    "predetermined value of perplexity, and thereby high-quality text without any tuning."
)


def _span(text: str, word: str, nth: int = 0) -> tuple[int, int]:
    start = -1
    for _ in range(nth + 1):
        start = text.index(word, start + 1)
    return (start, start + len(word))


def _paper(**changes: object) -> PaperView:
    base = PaperView(
        arxiv_id="2401.01234",
        title="A title",
        summary="An abstract.",
        authors=("Ada Lovelace",),
        upvotes=1,
        github_repo=None,
        github_stars=None,
        project_page=None,
        matched=("title",),
        title_spans=(),
        summary_spans=(),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def _view(*papers: PaperView, **changes: object) -> DigestView:
    base = DigestView(
        subscriber_email="ada@example.org",
        subscriber_name="Ada Lovelace",
        digest_date=date(2026, 3, 2),
        papers=tuple(papers),
        more_count=0,
        list_name="Paper Digest",
        unsubscribe_mailto="mailto:unsubscribe@example.org?subject=unsubscribe",
        unsubscribe_url=None,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def golden_view() -> DigestView:
    """The fixed digest of the golden files: three papers, non-ASCII authors, spans, more_count."""
    title1 = "Mirostat: A Neural Text Decoding Algorithm that Directly Controls Perplexity"
    title2 = "Données et diffusion : Test-Time Compute for Speculative Decoding"
    summary2 = (
        "We study test-time compute for speculative decoding with multi-draft diffusion models."
    )
    title3 = "Bandits with Knapsacks & <Constraints>"
    summary3 = "Regret bounds for bandits when budgets bind; see the appendix for proofs."
    return DigestView(
        subscriber_email="ada@example.org",
        subscriber_name="Ada Lovelace",
        digest_date=date(2026, 3, 2),
        papers=(
            _matched(
                Paper(
                    arxiv_id="2007.14966",
                    title=title1,
                    summary=MIROSTAT_SUMMARY,
                    authors=[
                        "Sourya Basu",
                        "Govardana Sachitanandam Ramachandran",
                        "Nitish Shirish Keskar",
                        "Lav R. Varshney",
                        "Christopher Ré",
                        "Zoë Łukasiewicz",
                    ],
                    upvotes=75,
                    github_repo="https://github.com/example-lab/2007-14966",
                    github_stars=128,
                    ai_summary="Mirostat keeps perplexity at a target value while decoding.",
                    ai_keywords=["neural text decoding", "nucleus sampling", "perplexity"],
                ),
                keywords=['"text decoding"', "perplexity", "keyword:sampling"],
                authors=["Łukasiewicz"],
            ),
            _matched(
                Paper(
                    arxiv_id="2502.00001v2",
                    title=title2,
                    summary=summary2,
                    authors=["Jürgen Schmidhuber", "François Chollet", "李飞飞"],
                    upvotes=1,
                    project_page="https://example.org/données?x=1&y=2",
                ),
                keywords=['"test-time compute"', "author:Chollet"],
            ),
            PaperView(
                arxiv_id="hep-th/9901001",
                title=title3,
                summary=summary3,
                authors=("Aleksandrs Slivkins",),
                upvotes=0,
                github_repo="example/bandits",
                github_stars=None,
                project_page=None,
                matched=("bandit*",),
                title_spans=(_span(title3, "Bandits"), _span(title3, "<Constraints>")),
                summary_spans=(_span(summary3, "bandits"),),
            ),
        ),
        more_count=4,
        list_name="Paper Digest",
        unsubscribe_mailto="mailto:unsubscribe@example.org?subject=unsubscribe",
        unsubscribe_url="https://digest.example.org/unsubscribe?token=abc123",
    )


def _matched(
    paper: Paper, *, keywords: list[str], authors: tuple[str, ...] | list[str] = ()
) -> PaperView:
    """The view of a paper that the real filter `keywords`/`authors` matched, as a digest has it."""
    found = explain(compile_filter(keywords=keywords, authors=authors), paper)
    assert found is not None
    return paper_view(paper, found)


def _check_golden(name: str, actual: str) -> None:
    path = GOLDEN / name
    if REGEN:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(actual.encode("utf-8"))
    assert path.exists(), f"missing golden file {path}; run with DIGESTBOT_REGEN_GOLDEN=1"
    assert actual == path.read_bytes().decode("utf-8")


class _TagCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


ALLOWED_TAGS = {
    "html",
    "head",
    "meta",
    "title",
    "body",
    "div",
    "table",
    "tr",
    "td",
    "a",
    "span",
    "mark",
    "strong",
}


def _tags(html: str) -> _TagCollector:
    parser = _TagCollector()
    parser.feed(html)
    parser.close()
    return parser


def _assert_safe_html(html: str) -> None:
    parsed = _tags(html)
    for tag, attrs in parsed.tags:
        assert tag in ALLOWED_TAGS, f"unexpected tag <{tag}>"
        for name, value in attrs.items():
            assert not name.startswith("on"), f"event handler attribute {name} on <{tag}>"
            if name == "href":
                assert value is not None
                assert value.startswith(("https://", "http://", "mailto:")), value


# --------------------------------------------------------------------------- golden files


def test_golden_text() -> None:
    """The text part of a fixed three-paper digest matches tests/golden/digest.txt exactly."""
    _check_golden("digest.txt", Renderer().render(golden_view()).text)


def test_golden_html() -> None:
    """The HTML part of a fixed three-paper digest matches tests/golden/digest.html exactly."""
    _check_golden("digest.html", Renderer().render(golden_view()).html)


def test_rendered_digest_names_the_blocks_it_inserted() -> None:
    """Each part lists the paper blocks as it holds them, in order (what the message builder
    encodes once per run), and the message built from them is the one built without."""
    view = golden_view()
    out = Renderer().render(view)
    blocks = len(view.papers) + len(view.trending)
    assert len(out.text_pieces) == len(out.html_pieces) == blocks > 0
    for part, pieces in ((out.text, out.text_pieces), (out.html, out.html_pieces)):
        at = 0
        for piece in pieces:
            assert "\n" in piece
            at = part.index(piece, at) + len(piece)
    bare = replace(out, text_pieces=(), html_pieces=())
    assert _message(out) == _message(bare)


def _message(rendered: RenderedDigest) -> bytes:
    return build_message(
        rendered=rendered,
        from_addr="Paper Digest <digest@example.org>",
        to_addr="reader@example.org",
        to_name="Reader",
        message_id="<digest.1@example.org>",
        date=datetime(2026, 3, 6, 7, 0, tzinfo=UTC),
        list_id="Paper Digest <digest.example.org>",
        unsubscribe_mailto="mailto:unsubscribe@example.org",
        unsubscribe_url=None,
    )


def test_golden_content() -> None:
    """The golden digest shows shortened authors with the named one, TL;DR, keywords, trimmed abstract, links, matches, more-line."""
    out = Renderer().render(golden_view())
    assert out.subject == "Paper Digest — 3 new papers for 2026-03-02"
    flat = " ".join(out.text.split())  # the text part is word-wrapped
    assert "Sourya Basu, Govardana Sachitanandam Ramachandran, \u2026 *Zoë Łukasiewicz*" in flat
    assert "Sourya Basu, Govardana Sachitanandam Ramachandran, &hellip; <mark" in out.html
    assert "TL;DR: Mirostat keeps perplexity" in flat
    assert "Keywords: neural *text decoding*, nucleus *sampling*, *perplexity*" in flat
    assert "Jürgen Schmidhuber, *François Chollet*, 李飞飞" in out.text
    assert 'Matched: "text decoding", perplexity' in out.text
    assert "*Text Decoding*" in out.text
    assert "4 more papers matched" in out.text and "4 more papers matched" in out.html
    for url in (
        "https://huggingface.co/papers/2007.14966",
        "https://arxiv.org/abs/2007.14966",
        "https://arxiv.org/pdf/2007.14966",
        "https://github.com/example-lab/2007-14966",
        "https://arxiv.org/abs/hep-th/9901001",
        "https://github.com/example/bandits",
        "https://example.org/donn%C3%A9es?x=1&y=2",
    ):
        assert url in out.text
        assert f'href="{url.replace("&", "&amp;")}"' in out.html
    assert "&lt;Constraints&gt;</mark>" in out.html
    _assert_safe_html(out.html)


# --------------------------------------------------------------------------- structure


def test_subject_is_one_line_with_count_and_date() -> None:
    """The subject counts papers (singular and plural) and drops CR/LF from the list name."""
    r = Renderer()
    assert r.render(_view(_paper())).subject == "Paper Digest — 1 new paper for 2026-03-02"
    hostile = _view(_paper(), _paper(arxiv_id="2401.00002"), list_name="Evil\r\nBcc: x@y.org")
    subject = r.render(hostile).subject
    assert subject == "Evil Bcc: x@y.org — 2 new papers for 2026-03-02"
    assert "\r" not in subject and "\n" not in subject


def test_empty_digest_says_nothing_matched() -> None:
    """A digest without papers says no new papers matched today, and that the next digest follows."""
    out = Renderer().render(_view())
    assert out.subject == "Paper Digest — no new papers for 2026-03-02"
    for part in (out.text, out.html):
        flat = " ".join(part.split())
        assert "No new papers matched your filters today." in flat
        assert "Your next digest will list any that do." in flat
        # Not "you will hear from us when new papers do": this reader asked for daily mail.
        assert "hear from us" not in flat
    assert "more paper" not in out.text
    _assert_safe_html(out.html)


def test_golden_empty_text_and_html() -> None:
    """An empty digest's text and HTML parts match tests/golden/digest_empty.txt and .html."""
    empty = replace(golden_view(), papers=(), more_count=0)
    out = Renderer().render(empty)
    _check_golden("digest_empty.txt", out.text)
    _check_golden("digest_empty.html", out.html)


def test_more_count_line_only_when_positive() -> None:
    """The 'N more papers matched' line appears only when more_count > 0, with the right number."""
    r = Renderer()
    assert "more paper" not in r.render(_view(_paper())).text
    one = r.render(_view(_paper(), more_count=1))
    assert "1 more paper matched but was left out" in one.text
    assert "1 more paper matched but was left out" in one.html
    assert "7 more papers matched" in r.render(_view(_paper(), more_count=7)).html


def test_unsubscribe_line_visible_in_both_parts() -> None:
    """Both parts show the unsubscribe URL when set, else the mailto address."""
    r = Renderer()
    with_url = r.render(_view(_paper(), unsubscribe_url="https://x.example.org/u?t=1"))
    assert "Unsubscribe: https://x.example.org/u?t=1" in with_url.text
    assert 'href="https://x.example.org/u?t=1"' in with_url.html
    mail_only = r.render(_view(_paper()))
    assert 'email unsubscribe@example.org with the subject "unsubscribe"' in mail_only.text
    assert 'href="mailto:unsubscribe@example.org?subject=unsubscribe"' in mail_only.html


def test_html_is_made_for_mail_clients() -> None:
    """The HTML uses tables and inline styles, has lang, charset and viewport, and no scripts or CSS files."""
    html = Renderer().render(golden_view()).html
    lowered = html.lower()
    for forbidden in ("<script", "<link", "<style", "stylesheet", "@import", "<iframe", "<form"):
        assert forbidden not in lowered
    assert '<html lang="en">' in html
    assert '<meta charset="utf-8">' in html
    assert 'name="viewport"' in html
    assert "max-width:600px" in html
    assert html.count("<table") >= 2 and "<tr>" in html and "<td" in html
    assert "display:none" in html  # hidden preheader
    assert "3 new papers: Mirostat" in html


def test_long_author_lists_are_shortened() -> None:
    """Up to four authors are listed in full; longer lists show three and 'and N more'."""
    r = Renderer()
    four = r.render(_view(_paper(authors=("A", "B", "C", "D")))).text
    assert "A, B, C, D" in four
    ten = r.render(_view(_paper(authors=tuple(f"Author {i}" for i in range(10))))).text
    assert "Author 0, Author 1, Author 2 and 7 more" in ten
    assert "Author 3" not in ten


# --------------------------------------------------------------------------- highlights


def test_highlights_are_escaped_in_html_and_marked_in_text() -> None:
    """Highlighted and plain segments are both HTML-escaped; the text part wraps highlights in *...*."""
    title = 'x <b>bold</b> & "q"'
    out = Renderer().render(_view(_paper(title=title, title_spans=(_span(title, "<b>bold</b>"),))))
    assert "<b>" not in out.html
    assert ">&lt;b&gt;bold&lt;/b&gt;</mark> &amp; &#34;q&#34;" in out.html
    assert 'x *<b>bold</b>* & "q"' in out.text


def test_bad_spans_are_clamped_or_ignored() -> None:
    """Negative, reversed, out-of-range, overlapping and malformed spans never break rendering."""
    title = "alpha beta gamma"
    spans = ((-5, 5), (12, 9), (100, 200), (6, 8), (7, 10), (11, 999), ("a", "b"), (3,))  # type: ignore[arg-type]
    out = Renderer().render(_view(_paper(title=title, title_spans=spans)))
    assert "*alpha* *beta* *gamma*" in out.text


def test_spans_follow_whitespace_cleanup() -> None:
    """Spans still cover the right words after CR/LF and runs of spaces in a title collapse."""
    title = "Fast\r\n\r\n  Speculative\tDecoding"
    out = Renderer().render(_view(_paper(title=title, title_spans=(_span(title, "Speculative"),))))
    assert "Fast *Speculative* Decoding" in out.text


def test_trimmed_abstract_keeps_spans_consistent() -> None:
    """A long abstract is cut at a word boundary near the limit; a span across the cut is shortened, a later span's word follows as a short part after " … ", one already shown does not."""
    words = " ".join(f"word{i:03d}" for i in range(300))
    cut_word = words.index("word075")  # around character 600
    spans = ((0, 7), (cut_word - 4, cut_word + 30), (1500, 1507), (1600, 1607), (2000, 2007))
    out = Renderer().render(_view(_paper(summary=words, summary_spans=spans)))
    body = re.search(r'padding-top:10px;">(.*?)</div>', out.html, re.DOTALL)
    assert body is not None
    shown = unescape(re.sub(r"<[^>]+>", "", body.group(1)))
    assert shown.endswith("\u2026")
    main, *more = shown.split(" \u2026 ")
    assert len(main) <= SUMMARY_LIMIT
    assert re.search(r"word\d{3}$", main)  # cut at a word boundary
    assert len(more) == 2  # (1500, 1507) and (1600, 1607) share one part; (2000, 2007) has its own
    assert all(len(part) < 2 * 200 for part in more)
    assert body.group(1).count("<mark") == 5
    assert "word299" not in out.text


# --------------------------------------------------------------------------- hostile input


HOSTILE = '<script>alert(1)</script>"><img src=x onerror=alert(2)>\r\nBcc: evil@example.org'


def test_hostile_feed_text_cannot_add_markup_or_script_links() -> None:
    """Markup in titles, abstracts, authors and queries is escaped, and javascript:/data: links are dropped."""
    paper = _paper(
        arxiv_id="2401.01234",
        title=HOSTILE,
        summary=HOSTILE * 3,
        authors=(HOSTILE, "Normal Name"),
        matched=(HOSTILE,),
        github_repo="javascript:alert(document.cookie)",
        project_page="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
        title_spans=((0, 8),),
        summary_spans=((10, 30),),
    )
    out = Renderer().render(_view(paper, subscriber_name=HOSTILE))
    lowered = out.html.lower()
    assert "<script" not in lowered and "<img" not in lowered
    assert "javascript:" not in lowered and "data:text" not in lowered
    assert "&lt;script&gt;" in out.html
    _assert_safe_html(out.html)
    assert "javascript:" not in out.text and "data:text" not in out.text
    assert "\r" not in out.text and "\r" not in out.html
    assert "\nBcc:" not in out.text


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(1)",
        "JaVaScRiPt:alert(1)",
        " javascript:alert(1)",
        "java\tscript:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        "vbscript:msgbox(1)",
        "ftp://example.org/file",
        "//evil.example.org/x",
        "/relative/path",
        "https://",
        "https:///path-only",
        'https://example.org/"onmouseover="alert(1)',
        "https://example.org/a b",
        "https://example.org/\r\nX-Evil: 1",
        "http://[::1",
        "",
    ],
)
def test_only_http_urls_become_links(url: str) -> None:
    """safe_http_url refuses every non-http(s), relative, malformed or whitespace-bearing URL."""
    assert safe_http_url(url) is None
    out = Renderer().render(_view(_paper(github_repo=url, project_page=url)))
    assert "Code:" not in out.text and "Project:" not in out.text
    _assert_safe_html(out.html)


def test_http_urls_are_kept_and_non_ascii_is_percent_encoded() -> None:
    """http and https URLs pass through; non-ASCII characters in them are percent-encoded."""
    assert safe_http_url("https://github.com/a/b") == "https://github.com/a/b"
    assert safe_http_url("HTTP://Example.org/x?a=1&b=2") == "HTTP://Example.org/x?a=1&b=2"
    assert safe_http_url("https://example.org/ünï") == "https://example.org/%C3%BCn%C3%AF"


@pytest.mark.parametrize(
    "bad_id", ["../../evil", "2401.01234?x=<b>", "javascript:alert(1)", "", "2401 01234"]
)
def test_invalid_arxiv_ids_make_no_links(bad_id: str) -> None:
    """A malformed arXiv id is never put into a URL; the title is shown without a link."""
    out = Renderer().render(_view(_paper(arxiv_id=bad_id, title="Plain title")))
    assert "arxiv.org" not in out.html and "huggingface.co/papers" not in out.html
    assert "Plain title" in out.html
    _assert_safe_html(out.html)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    title=st.text(max_size=200),
    summary=st.text(max_size=900),
    author=st.text(max_size=60),
    url=st.text(max_size=60),
    spans=st.lists(st.tuples(st.integers(-5, 950), st.integers(-5, 950)), max_size=6),
)
def test_arbitrary_feed_text_renders_safely(
    title: str, summary: str, author: str, url: str, spans: list[tuple[int, int]]
) -> None:
    """Any title, abstract, author, link and spans render without error into safe HTML and a one-line subject."""
    paper = _paper(
        title=title,
        summary=summary,
        authors=(author,),
        github_repo=url,
        project_page=url,
        title_spans=tuple(spans),
        summary_spans=tuple(spans),
    )
    out = Renderer().render(_view(paper, list_name=title or "x"))
    assert "\n" not in out.subject and "\r" not in out.subject
    _assert_safe_html(out.html)


# --------------------------------------------------------------------------- templates and cache


def test_builtin_templates_exist() -> None:
    """The built-in template folder holds the subject, text, HTML and paper partial templates."""
    names = {p.name for p in templates_dir().iterdir()}
    assert {
        "subject.txt.j2",
        "digest.txt.j2",
        "digest.html.j2",
        "_paper.txt.j2",
        "_paper.html.j2",
    } <= names


def test_override_templates_dir_wins(tmp_path: Path) -> None:
    """A template in the override folder replaces the built-in one; the others still come from the built-ins."""
    (tmp_path / "subject.txt.j2").write_text("[{{ list_name }}] {{ count }} for {{ date }}\n")
    (tmp_path / "_paper.html.j2").write_text("<tr><td>{{ paper.title_html }} custom</td></tr>")
    out = Renderer(templates_dir=tmp_path).render(_view(_paper(title="<T>")))
    assert out.subject == "[Paper Digest] 1 for 2026-03-02"
    assert "<tr><td>&lt;T&gt; custom</td></tr>" in out.html  # autoescape holds in overrides too
    assert "1 new paper matched your filters." in out.text  # built-in text template


def test_each_paper_block_is_rendered_once_per_renderer(tmp_path: Path) -> None:
    """Rendering many digests that share papers renders each distinct paper block only once."""
    (tmp_path / "_paper.txt.j2").write_text(
        "{{ paper.arxiv_id | count_render }} {{ paper.title_text }}"
    )
    rendered_ids: list[str] = []

    def count_render(value: str) -> str:
        rendered_ids.append(value)
        return value

    renderer = Renderer(templates_dir=tmp_path)
    renderer.environment.filters["count_render"] = count_render
    papers = [_paper(arxiv_id=f"2401.0000{i}", title=f"Paper {i}") for i in range(4)]
    for start in range(5):  # five digests, overlapping paper sets
        subset = [papers[(start + k) % 4] for k in range(3)]
        text = renderer.render(_view(*subset)).text
        assert all(f"{p.arxiv_id} {p.title}" in text for p in subset)
    assert sorted(rendered_ids) == sorted(p.arxiv_id for p in papers)
    info = renderer.cache_info()
    assert info.misses == 4 and info.hits == 5 * 3 - 4


# ------------------------------------------------------------------------------------------------
# Template failures: one ConfigError naming the template file and line
# ------------------------------------------------------------------------------------------------


def test_check_passes_for_the_built_in_templates() -> None:
    """Renderer.check compiles and renders the built-in templates without complaint."""
    Renderer().check()


def test_check_names_the_broken_override_file_and_line(tmp_path: Path) -> None:
    """An override that does not compile fails check() with its file, line and DIGESTBOT_TEMPLATES_DIR."""
    (tmp_path / "subject.txt.j2").write_text("{{ list_name }}\n{% if %}x{% endif %}\n")
    with pytest.raises(ConfigError) as caught:
        Renderer(templates_dir=tmp_path).check()
    error = caught.value
    assert isinstance(error, TemplateError) and error.exit_code == 2
    assert error.file == str(tmp_path / "subject.txt.j2") and error.line == 2
    assert error.field == "DIGESTBOT_TEMPLATES_DIR"
    assert f"{tmp_path / 'subject.txt.j2'}:2" in str(error) and "\n" not in str(error)


def test_check_compiles_overrides_that_no_digest_uses(tmp_path: Path) -> None:
    """check() compiles every .j2 file in the override folder, not only the ones a digest uses."""
    (tmp_path / "_footer.txt.j2").write_text("{% for %}")
    with pytest.raises(TemplateError, match="_footer.txt.j2:1"):
        Renderer(templates_dir=tmp_path).check()


@pytest.mark.parametrize(
    ("name", "body", "line", "problem"),
    [
        ("digest.txt.j2", "Hello\n{{ no_such_name }}\n", 2, "'no_such_name' is undefined"),
        ("_paper.html.j2", "<p>\n\n{{ paper.title_text + 1 }}</p>", 3, "TypeError"),
        ("digest.html.j2", "{% include 'missing.html.j2' %}", 1, "'missing.html.j2'"),
    ],
)
def test_a_render_failure_names_the_template_and_line(
    tmp_path: Path, name: str, body: str, line: int, problem: str
) -> None:
    """A template that compiles but fails at render time is a TemplateError naming file and line."""
    (tmp_path / name).write_text(body)
    renderer = Renderer(templates_dir=tmp_path)
    for attempt in (renderer.check, lambda: renderer.render(_view(_paper()))):
        with pytest.raises(TemplateError) as caught:
            attempt()
        assert (caught.value.file, caught.value.line) == (str(tmp_path / name), line)
        assert problem in str(caught.value)


def test_a_render_error_never_quotes_paper_data(tmp_path: Path) -> None:
    """A Python error inside a template is reported by kind only, never with the paper's text."""
    # str.format raises KeyError('Secret Title Words'): Python's message would quote the title.
    (tmp_path / "_paper.txt.j2").write_text('{{ ("{" ~ paper.title_text ~ "}").format() }}')
    with pytest.raises(TemplateError) as caught:
        Renderer(templates_dir=tmp_path).render(_view(_paper(title="Secret Title Words")))
    assert "KeyError" in str(caught.value) and "Secret" not in str(caught.value)


# --------------------------------------------------------------------------- trending and weekly


def _trending_papers() -> tuple[PaperView, ...]:
    return (
        _paper(
            arxiv_id="2603.00101",
            title="A Very Popular Paper About Scaling Everything",
            summary="Everyone upvoted this one.",
            authors=("Grace Hopper", "Katherine Johnson"),
            upvotes=163,
            matched=(),
            github_repo="popular/scaling",
            github_stars=2048,
        ),
        _paper(
            arxiv_id="2603.00102",
            title="World Models & <Agents> at Scale",
            summary="A runner-up with many upvotes.",
            authors=("Hedy Lamarr",),
            upvotes=1,
            matched=(),
        ),
    )


def trending_only_view() -> DigestView:
    """A trending-only subscriber's daily digest: no matched section, two trending papers."""
    return replace(golden_view(), papers=(), more_count=0, trending=_trending_papers())


def mixed_view() -> DigestView:
    """A digest with both sections: the golden matched papers, then the trending ones."""
    return replace(golden_view(), trending=_trending_papers())


def weekly_view() -> DigestView:
    """A weekly digest covering 2026-03-02 to 2026-03-08, with both sections."""
    return replace(
        golden_view(),
        digest_date=date(2026, 3, 9),
        frequency="weekly",
        first_day=date(2026, 3, 2),
        last_day=date(2026, 3, 8),
        papers=golden_view().papers[:2],
        more_count=0,
        trending=_trending_papers()[:1],
    )


def test_golden_trending_only() -> None:
    """A trending-only digest matches tests/golden/digest_trending.txt and .html."""
    out = Renderer().render(trending_only_view())
    _check_golden("digest_trending.txt", out.text)
    _check_golden("digest_trending.html", out.html)


def test_golden_mixed() -> None:
    """A digest with matched and trending papers matches tests/golden/digest_mixed.txt and .html."""
    out = Renderer().render(mixed_view())
    _check_golden("digest_mixed.txt", out.text)
    _check_golden("digest_mixed.html", out.html)


def test_golden_weekly() -> None:
    """A weekly digest matches tests/golden/digest_weekly.txt and .html."""
    out = Renderer().render(weekly_view())
    _check_golden("digest_weekly.txt", out.text)
    _check_golden("digest_weekly.html", out.html)


def test_trending_only_digest_says_what_it_is_and_shows_upvotes() -> None:
    """A trending-only digest names the most upvoted papers in subject and greeting (not 'matched your filters') and shows each paper's upvotes."""
    out = Renderer().render(trending_only_view())
    assert out.subject == "Paper Digest — 2 trending papers for 2026-03-02"
    for part in (out.text, out.html):
        flat = " ".join(part.split())
        assert "The 2 most upvoted new papers today." in flat
        assert "matched your filters" not in flat
        assert "163 upvotes" in flat and "1 upvote" in flat
    _assert_safe_html(out.html)


def test_mixed_digest_shows_matches_then_a_trending_section_numbered_on() -> None:
    """A mixed digest lists matched papers, the more-line, then a Trending heading and the trending papers numbered after the matched ones."""
    out = Renderer().render(mixed_view())
    assert out.subject == "Paper Digest — 3 new papers and 2 trending for 2026-03-02"
    text = out.text
    assert text.index("Knapsacks") < text.index("4 more papers") < text.index("Trending today")
    assert text.index("Trending today") < text.index("4.  A Very Popular Paper")
    assert "5.  World Models & <Agents> at Scale" in text
    assert text.count("A Very Popular Paper") == 1
    html = out.html
    assert html.index("Trending today") < html.index("A Very Popular Paper")
    assert "World Models &amp; &lt;Agents&gt; at Scale" in html
    _assert_safe_html(html)


def test_weekly_digest_names_the_week_and_its_dates() -> None:
    """A weekly digest's subject and greeting name the week it covers ("this past week" for the seven days before its weekday) with the dates."""
    out = Renderer().render(weekly_view())
    assert out.subject == (
        "Paper Digest — 2 new papers and 1 trending this past week (2026-03-02 to 2026-03-08)"
    )
    for part in (out.text, out.html):
        flat = " ".join(part.split())
        assert "2026-03-02 to 2026-03-08" in flat
        assert "2 new papers matched your filters this past week." in flat
        assert "Trending this past week" in flat
    empty = Renderer().render(replace(weekly_view(), papers=(), trending=()))
    assert "No new papers matched your filters this past week." in " ".join(empty.text.split())


# --------------------------------------------------------------------------- evidence and richer papers


def _positive_terms(node: tuple) -> list[tuple[str, tuple[str, ...]]]:
    if node[0] == "T":
        return [node[1]]
    if node[0] == "N":
        return []
    return [t for child in node[1] for t in _positive_terms(child)]


def _evidence_for(query: str, highlights: list[str]) -> bool:
    """Whether one highlighted piece shows a positive term of `query` (an author named, a word)."""
    from digestbot.matching.text import name_matches

    for field, items in _positive_terms(parse_query(query).node):
        for piece in highlights:
            if field == "author":
                if name_matches(items, words(piece)):
                    return True
                continue
            for tok in tokenize(piece):
                item = items[0]
                if (item.endswith("*") and tok.surface.startswith(item[:-1])) or tok.stem == item:
                    return True
    return False


def _blocks(out_text: str, out_html: str, paper: PaperView) -> tuple[str, str]:
    """The text and HTML of one paper's block in a rendered digest."""
    url = f"https://huggingface.co/papers/{paper.arxiv_id}"
    items = re.split(r"\n(?=\d+\.\s)", out_text)
    text = next(i for i in items if url in i)
    start = out_html.index(f'href="{url}"')
    end = out_html.find("https://huggingface.co/papers/", out_html.index("</tr>", start))
    return text, out_html[start : end if end > 0 else len(out_html)]


@pytest.mark.parametrize(
    "make", [golden_view, mixed_view, trending_only_view, weekly_view], ids=lambda f: f.__name__
)
def test_every_matched_query_shows_highlighted_evidence(make: object) -> None:
    """In every golden digest, each paper shows a highlight (text and HTML) for each query that matched it."""
    view = make()  # type: ignore[operator]
    out = Renderer().render(view)
    for paper in view.papers + view.trending:
        text, html = _blocks(out.text, out.html, paper)
        text_marks = re.findall(r"\*([^*]+)\*", " ".join(text.split()))
        html_marks = [
            unescape(re.sub(r"<[^>]+>", "", m))
            for m in re.findall(r"<mark[^>]*>(.*?)</mark>", html, re.DOTALL)
        ]
        for query in paper.matched:
            assert _evidence_for(query, text_marks), (paper.arxiv_id, query, text_marks)
            assert _evidence_for(query, html_marks), (paper.arxiv_id, query, html_marks)


MULTI_QUERY_SUBSCRIBERS = [
    ["sampling", "reasoning"],
    ["sampling", "language model*", "benchmark"],
    ["diffusion", "video", "agent*", "reinforcement learning"],
]


def _fixture_papers() -> list[Paper]:
    """Every paper of the HF fixture days, as stored."""
    seen: dict[str, Paper] = {}
    for path in sorted(
        (Path(__file__).parent / "fixtures" / "hf_daily_papers").glob("2026-*.json")
    ):
        for fetched in parse_daily_papers(
            path.read_bytes(), url="https://huggingface.co/api/daily_papers"
        ):
            fields = {f: getattr(fetched, f) for f in Paper.model_fields if hasattr(fetched, f)}
            fields["authors"] = list(fetched.authors)
            fields["ai_keywords"] = list(fetched.ai_keywords)
            seen[fetched.arxiv_id] = Paper(**fields)
    return list(seen.values())


@pytest.mark.parametrize("keywords", MULTI_QUERY_SUBSCRIBERS, ids=lambda k: "+".join(k))
def test_every_matched_query_shows_highlighted_evidence_with_real_matching(
    keywords: list[str],
) -> None:
    """Papers that really match several of a subscriber's queries show a highlight for each one."""
    flt = compile_filter(keywords=keywords, authors=())
    found = [(p, explain(flt, p)) for p in _fixture_papers()]
    views = tuple(paper_view(p, m) for p, m in found if m is not None)
    assert any(len(v.matched) > 1 for v in views)
    out = Renderer().render(_view(*views))
    for paper in views:
        text, html = _blocks(out.text, out.html, paper)
        shown = re.sub(r"Matched: [^\n]*", "", text)  # a query's wildcard is no highlight
        text_marks = re.findall(r"\*([^*]+)\*", " ".join(shown.split()))
        html_marks = [
            unescape(re.sub(r"<[^>]+>", "", m))
            for m in re.findall(r"<mark[^>]*>(.*?)</mark>", html, re.DOTALL)
        ]
        for query in paper.matched:
            assert _evidence_for(query, text_marks), (paper.arxiv_id, query, text_marks)
            assert _evidence_for(query, html_marks), (paper.arxiv_id, query, html_marks)


def test_a_named_author_is_never_hidden_behind_and_n_more() -> None:
    """A long author list keeps its first names, then the matched author, highlighted, not "and N more"."""
    paper = Paper(
        arxiv_id="2305.10601",
        title="Complexity-Based Prompting",
        summary="Chain of thought.",
        authors=["Yao Fu", "Hao Peng", "Litu Ou", "Tushar Khot", "Ashish Sabharwal"],
    )
    out = Renderer().render(_view(_matched(paper, keywords=[], authors=["Sabharwal"])))
    assert "Yao Fu, Hao Peng, \u2026 *Ashish Sabharwal*" in " ".join(out.text.split())
    assert "and 2 more" not in out.text
    assert (
        f'Yao Fu, Hao Peng, &hellip; <mark style="{MARK_STYLE}">Ashish Sabharwal</mark>' in out.html
    )
    ten = tuple(f"Author {i}" for i in range(10))
    middle = Renderer().render(_view(_paper(authors=ten, author_hits=(5,)))).text
    assert "Author 0, Author 1, \u2026 *Author 5* and 4 more" in " ".join(middle.split())


def test_abstract_excerpt_is_the_part_around_the_first_match() -> None:
    """A match deep in a long abstract is shown with its context and highlighted, not cut away."""
    summary = " ".join(f"filler{i:03d}" for i in range(120)) + " we study nucleus sampling here."
    summary += " " + " ".join(f"tail{i:03d}" for i in range(100))
    paper = Paper(arxiv_id="2305.02309", title="CodeGen2", summary=summary, authors=["A B"])
    out = Renderer().render(_view(_matched(paper, keywords=["sampling"])))
    flat = " ".join(out.text.split())
    assert "we study nucleus *sampling* here." in flat
    assert re.search(r"\u2026 filler\d{3} ", flat)  # starts at a word, marked as cut
    assert "filler000" not in flat
    assert f'nucleus <mark style="{MARK_STYLE}">sampling</mark>' in out.html
    early = Renderer().render(_view(_paper(summary=summary, summary_spans=((0, 9),)))).text
    assert "*filler000*" in early  # a match near the start keeps the start


def test_a_keyword_match_shows_the_feed_keyword_highlighted() -> None:
    """A keyword: query shows the matching feed keyword, highlighted, in both parts."""
    paper = Paper(
        arxiv_id="2401.00003",
        title="Something else",
        summary="Nothing here.",
        authors=["A B"],
        ai_keywords=["Vision-Language Models", "zero-shot classification"],
    )
    out = Renderer().render(_view(_matched(paper, keywords=["keyword:zero-shot"])))
    assert "Keywords: *zero-shot* classification" in out.text
    assert f'Keywords: <mark style="{MARK_STYLE}">zero-shot</mark> classification' in out.html
    assert "Vision-Language" not in out.text  # only the keywords that matched


def test_real_item_shows_tldr_project_page_and_keyword_evidence() -> None:
    """The real HF item shows its AI summary as a TL;DR above the abstract and its project page beside the code link."""
    fixture = Path(__file__).parent / "fixtures" / "hf_daily_papers" / "real_item_2602.23229.json"
    (fetched,) = parse_daily_papers(
        fixture.read_bytes(), url="https://huggingface.co/api/daily_papers"
    )
    fields = {f: getattr(fetched, f) for f in Paper.model_fields if hasattr(fetched, f)}
    fields["authors"] = list(fetched.authors)
    fields["ai_keywords"] = list(fetched.ai_keywords)
    paper = Paper(**fields)
    view = _matched(paper, keywords=['keyword:"in-context learning"'])
    out = Renderer().render(_view(view))
    flat = " ".join(out.text.split())
    tldr = "TL;DR: Large Multimodal Models demonstrate superior performance"
    assert tldr in flat
    assert flat.index(tldr) < flat.index("Which multimodal model should we use")
    assert (
        "Code: https://github.com/marco-garosi/CIRCLE (9 stars) Project: https://circle-lmm.github.io/"
        in flat
    )
    assert "<strong>TL;DR:</strong> Large Multimodal Models demonstrate" in out.html
    code = out.html.index("Code: marco-garosi/CIRCLE")
    assert out.html.index('href="https://circle-lmm.github.io/"') > code
    assert f'<mark style="{MARK_STYLE}">in-context learning</mark>' in out.html
    bare = Renderer().render(_view(replace(view, tldr=None, project_page=None, keywords=())))
    assert "TL;DR" not in bare.text and "TL;DR" not in bare.html
    assert "Project" not in bare.text


def test_period_wording_is_true_for_the_days_covered() -> None:
    """A daily digest over several days says "since" its first day, not "today"; a weekly one reaching before its week does not say "this week"."""
    daily = replace(mixed_view(), first_day=date(2026, 3, 2), last_day=date(2026, 3, 4))
    out = Renderer().render(daily)
    for part in (out.text, out.html):
        flat = " ".join(part.split())
        assert "today" not in flat
        assert "Trending since 2026-03-02" in flat
    one_day = Renderer().render(replace(daily, first_day=None, last_day=None))
    assert "Trending today" in one_day.text
    past = replace(weekly_view(), first_day=date(2026, 2, 20), last_day=date(2026, 3, 9))
    out = Renderer().render(past)
    assert out.subject.endswith("for 2026-02-20 to 2026-03-09")
    for part in (out.text, out.html):
        flat = " ".join(part.split())
        assert "this week" not in flat.lower()
        assert "since 2026-02-20" in flat
    so_far = replace(weekly_view(), digest_date=date(2026, 3, 2), last_day=date(2026, 3, 4))
    assert Renderer().render(so_far).subject.endswith("this week (2026-03-02 to 2026-03-04)")


def test_an_override_that_is_not_utf8_is_a_template_error_naming_the_file(tmp_path: Path) -> None:
    """An override template with a non-UTF-8 byte fails check() with a TemplateError naming the file and "not UTF-8 text", not a UnicodeDecodeError."""
    (tmp_path / "subject.txt.j2").write_bytes(b"Digest \xff\n")
    with pytest.raises(TemplateError) as caught:
        Renderer(templates_dir=tmp_path).check()
    error = caught.value
    assert (
        error.file == str(tmp_path / "subject.txt.j2") and error.field == "DIGESTBOT_TEMPLATES_DIR"
    )
    assert "not UTF-8 text" in str(error) and "\n" not in str(error)


def test_an_included_override_that_is_not_utf8_is_a_template_error_naming_it(
    tmp_path: Path,
) -> None:
    """A non-UTF-8 override reached only through an include (the paper block) fails rendering with a TemplateError naming that file."""
    (tmp_path / "_paper.txt.j2").write_bytes(b"{{ paper.title }} \xe9t\xe9\n")
    renderer = Renderer(templates_dir=tmp_path)
    with pytest.raises(TemplateError) as caught:
        renderer.render(_view(_paper()))
    assert caught.value.file == str(tmp_path / "_paper.txt.j2")
    assert "not UTF-8 text" in str(caught.value)


# ------------------------------------------------------------------------------------------------
# Per-run caches: what is the same for many subscribers is done once, and never mixed up
# ------------------------------------------------------------------------------------------------

BANDITS_TITLE = "Bandits with Knapsacks and Diffusion Constraints"
BANDITS_SUMMARY = "Regret bounds for bandits\nwhen   budgets bind, with diffusion priors. " * 12


def _bandits(**changes: object) -> PaperView:
    """One paper as different subscribers see it: `changes` give their matches and highlights."""
    base: dict[str, object] = {
        "arxiv_id": "2603.00777",
        "title": BANDITS_TITLE,
        "summary": BANDITS_SUMMARY,
        "authors": ("Aleksandrs Slivkins", "Ada Lovelace"),
        "upvotes": 12,
        "matched": (),
    }
    return _paper(**{**base, **changes})


def _sub(n: int, *papers: PaperView, **changes: object) -> DigestView:
    return _view(
        *papers,
        subscriber_email=f"reader{n}@example.org",
        subscriber_name=f"Reader {n}",
        **changes,
    )


def test_a_block_shared_by_many_subscribers_is_rendered_once() -> None:
    """A paper that 50 subscribers get with the same matches is rendered from the templates once
    per run, and every one of them gets the same block."""
    renderer = Renderer()
    paper = _bandits(matched=("bandit*",), title_spans=(_span(BANDITS_TITLE, "Bandits"),))
    outs = [renderer.render(_sub(n, replace(paper))) for n in range(50)]
    stats = renderer.stats()
    assert stats.digests == 50
    assert stats.template_renders["_paper.txt.j2"] == 1
    assert stats.template_renders["_paper.html.j2"] == 1
    # the digest around the block: rendered for the first digest, and once more with
    # placeholders to make its frame, which the 49 others fill in
    assert stats.template_renders["digest.html.j2"] == 2
    assert (stats.frames_built, stats.frames_used) == (3, 3 * 49)
    assert (stats.blocks_rendered, stats.blocks_reused) == (1, 49)
    assert all("*Bandits* with Knapsacks" in out.text for out in outs)
    for n, out in enumerate(outs):
        assert out.text.replace(f"eader{n}", "eader0").replace(f"Reader {n}", "Reader 0") == (
            outs[0].text
        )


def test_a_paper_text_is_cleaned_once_however_many_highlight_sets() -> None:
    """A paper's abstract is cleaned up once per run even when subscribers highlight different
    words of it, and subscribers whose different queries hit the same words share the pieces."""
    renderer = Renderer()
    words = ["Regret", "bounds", "budgets", "bind", "diffusion", "priors"]
    for n, word in enumerate(words):
        renderer.render(
            _sub(n, _bandits(matched=(word,), summary_spans=(_span(BANDITS_SUMMARY, word),)))
        )
    diffusion = (_span(BANDITS_SUMMARY, "diffusion"),)
    renderer.render(_sub(9, _bandits(matched=("diffus*",), summary_spans=diffusion)))
    stats = renderer.stats()
    assert stats.texts_normalized == 2  # the title and the abstract
    assert stats.blocks_rendered == len(words) + 1  # each subscriber's "Matched:" differs
    assert (stats.highlights_built, stats.highlights_reused) == (len(words), 1)


def _highlighted(out_text: str, out_html: str) -> tuple[set[str], set[str]]:
    """The words marked in the text part (*word*) and the HTML part (<mark>)."""
    text = set(re.findall(r"\*([^*\n]+)\*", out_text)) - {"like this"}
    html = {unescape(m) for m in re.findall(r"<mark [^>]*>([^<]*)</mark>", out_html)}
    return text, html


def test_subscribers_with_different_highlights_get_their_own_blocks() -> None:
    """Two subscribers who get the same paper for different words each see their own words
    highlighted and their own "Matched:", in any order, from one renderer."""
    renderer = Renderer()
    ada = _bandits(matched=("bandit*",), title_spans=(_span(BANDITS_TITLE, "Bandits"),))
    bob = _bandits(
        matched=("diffusion",),
        title_spans=(_span(BANDITS_TITLE, "Diffusion"),),
        summary_spans=(_span(BANDITS_SUMMARY, "diffusion"),),
    )
    for _ in range(3):
        a = renderer.render(_sub(1, ada))
        b = renderer.render(_sub(2, bob))
        assert _highlighted(a.text, a.html) == ({"Bandits"}, {"Bandits"})
        assert _highlighted(b.text, b.html) == ({"Diffusion", "diffusion"},) * 2
        assert "Matched: bandit*\n" in a.text
        assert "Matched: diffusion" in b.text
        assert a.text.count("*Bandits* with Knapsacks") == 1
        assert "*Bandits*" not in b.text
    assert renderer.stats().blocks_rendered == 2


# A small world of views that differ in one thing each: highlights, matches, content, key,
# sources, links. One renderer rendering them in any order must give what a fresh one gives.
_POOL_PAPERS = (
    _bandits(),
    _bandits(matched=("bandit*",), title_spans=(_span(BANDITS_TITLE, "Bandits"),)),
    _bandits(matched=("knapsack*",), title_spans=(_span(BANDITS_TITLE, "Bandits"),)),
    _bandits(matched=("diffusion",), summary_spans=(_span(BANDITS_SUMMARY, "diffusion", 3),)),
    _bandits(matched=("diffusion",), summary_spans=(_span(BANDITS_SUMMARY, "diffusion", 11),)),
    _bandits(summary=BANDITS_SUMMARY.upper()),
    _bandits(arxiv_id="2603.00778"),
    _bandits(upvotes=13),
    _bandits(author_hits=(1,)),
    _bandits(tldr="Knapsacks, briefly."),
    _bandits(sources=("hf",)),
    _bandits(sources=("hf", "arxiv-ml")),
    _bandits(arxiv_id="doi:10.1101/2026.01.01.000001", link="https://example.org/paper"),
)
_POOL_VIEWS = tuple(
    [_sub(n, p) for n, p in enumerate(_POOL_PAPERS)]
    + [_sub(100, _POOL_PAPERS[1], _POOL_PAPERS[10]), _sub(101, _POOL_PAPERS[0], _POOL_PAPERS[11])]
)
_SHARED = Renderer()


@functools.cache
def _alone(i: int) -> tuple[str, str]:
    out = Renderer().render(_POOL_VIEWS[i])
    return out.text, out.html


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, len(_POOL_VIEWS) - 1), min_size=1, max_size=12))
def test_a_cached_block_never_mixes_two_papers_or_two_highlight_sets(order: list[int]) -> None:
    """Digests rendered one after another by one renderer, in any order, are byte for byte what
    each would be if rendered alone: no block is ever taken for another paper or highlight."""
    for i in order:
        out = _SHARED.render(_POOL_VIEWS[i])
        assert (out.text, out.html) == _alone(i)


# ------------------------------------------------------------------------------------------------
# Several sources (issue 10): where a paper came from, and papers without an arXiv id
# ------------------------------------------------------------------------------------------------


def sources_view() -> DigestView:
    """A digest whose papers came from three sources: an arXiv paper two of them brought, and a
    bioRxiv paper (a DOI key) with its own page."""
    biorxiv_title = "Single-cell atlases & <tissue> maps"
    return _view(
        _paper(
            arxiv_id="2603.00901",
            title="Speculative Decoding for Diffusion Models",
            summary="Drafts and verifies denoising steps in parallel.",
            authors=("Ada Lovelace", "Alan Turing"),
            upvotes=42,
            matched=("speculative decoding",),
            title_spans=((0, 20),),
            sources=("hf", "arxiv-ml"),
        ),
        _paper(
            arxiv_id="doi:10.1101/2026.03.01.123456",
            title=biorxiv_title,
            summary="Maps of every cell in <b>three</b> tissues.",
            authors=("Rosalind Franklin",),
            upvotes=0,
            matched=("atlas*",),
            title_spans=(_span(biorxiv_title, "atlases"),),
            sources=("bio<rxiv>",),
            link="https://www.biorxiv.org/content/10.1101/2026.03.01.123456v1",
        ),
    )


def test_golden_several_sources() -> None:
    """A digest mixing sources matches tests/golden/digest_sources.txt and .html."""
    out = Renderer().render(sources_view())
    _check_golden("digest_sources.txt", out.text)
    _check_golden("digest_sources.html", out.html)


def test_a_digest_mixing_sources_says_which_brought_each_paper() -> None:
    """When a digest's papers came from more than one source, each paper says "via" its
    sources, escaped in HTML; a single-source digest says nothing of the kind."""
    view = sources_view()
    assert view.multi_source
    out = Renderer().render(view)
    assert "42 upvotes · Matched: speculative decoding · via hf, arxiv-ml" in out.text
    assert "· via bio<rxiv>" in out.text
    assert "&middot; via hf, arxiv-ml</div>" in out.html
    assert "via bio&lt;rxiv&gt;</div>" in out.html
    _assert_safe_html(out.html)
    one = replace(view, papers=tuple(replace(p, sources=("hf",)) for p in view.papers))
    assert not one.multi_source
    single = Renderer().render(one)
    assert " via " not in single.text and " via " not in single.html


def test_the_same_paper_block_follows_whether_the_digest_mixes_sources() -> None:
    """One renderer shows a paper's sources in a digest that mixes sources and hides them in one
    that does not, though the paper is the same in both."""
    renderer = Renderer()
    hf_and_arxiv = _bandits(sources=("hf", "arxiv-ml"))
    mixed = renderer.render(_sub(1, hf_and_arxiv))
    alone = renderer.render(_sub(2, replace(hf_and_arxiv, sources=("hf", "hf"))))
    again = renderer.render(_sub(3, hf_and_arxiv))
    assert "via hf, arxiv-ml" in mixed.text and "via hf, arxiv-ml" in again.text
    assert " via " not in alone.text


def test_a_paper_without_an_arxiv_id_links_to_its_own_page() -> None:
    """A paper whose key is a DOI or a URL links to its own page, never to arxiv.org, Hugging
    Face or a PDF; a DOI key without a link falls back to doi.org."""
    out = Renderer().render(sources_view())
    biorxiv = "https://www.biorxiv.org/content/10.1101/2026.03.01.123456v1"
    text = out.text.split("\n2.")[1]
    assert f"Paper:   {biorxiv}" in text
    assert "arxiv.org" not in text and "huggingface.co" not in text and "PDF" not in text
    html = out.html[out.html.rindex("<tr>", 0, out.html.index(">Single-cell <mark")) :]
    assert f'<a href="{biorxiv}"' in html
    assert "arxiv.org" not in html and "huggingface.co" not in html and ">PDF<" not in html
    for key, link, expected in [
        ("doi:10.1101/X.Y", None, "https://doi.org/10.1101/X.Y"),
        ("https://example.org/p?id=1", None, "https://example.org/p?id=1"),
        ("doi:10.1/x", "javascript:alert(1)", "https://doi.org/10.1/x"),
        ("2603.00901", "https://example.org/elsewhere", "https://arxiv.org/abs/2603.00901"),
    ]:
        got = Renderer().render(_view(_paper(arxiv_id=key, link=link))).text
        assert expected in got
        assert "javascript" not in got and ("elsewhere" not in got)
    bare = Renderer().render(_view(_paper(arxiv_id="feed-guid-42", link=None)))
    assert "Paper:" not in bare.text and "<a href" not in bare.html.split("A title")[0][-300:]


def test_an_arxiv_paper_hugging_face_never_featured_links_to_arxiv() -> None:
    """A paper only arXiv (or a feed) brought has no Hugging Face page link: its title and
    first link go to its arXiv abstract, with the PDF beside it."""
    out = Renderer().render(_view(_paper(arxiv_id="2603.00901", on_hf=False)))
    assert "huggingface.co" not in out.text and "huggingface.co" not in out.html
    assert "arXiv:   https://arxiv.org/abs/2603.00901" in out.text
    assert "PDF:     https://arxiv.org/pdf/2603.00901" in out.text
    assert (
        '<a href="https://arxiv.org/abs/2603.00901" style="color:#1d4ed8;text-decoration:none;">'
        in out.html
    )


@given(
    st.text(alphabet=st.sampled_from(["a", "é", " ", "\t", "\n", "\r", "\x0c", "\u2028", "\xa0"]))
)
def test_the_text_part_is_tidied_as_before(text: str) -> None:
    """The text part loses trailing spaces and extra blank lines exactly as the regex did."""
    lines = [line.rstrip() for line in text.splitlines()]
    expected = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n") + "\n"
    assert _tidy_text(text) == expected


def test_a_runs_memoised_paper_views_equal_fresh_ones_and_follow_a_changed_paper() -> None:
    """Within one delivery run every digest shows a paper exactly as a fresh view would, and a paper updated mid-run shows its new text."""
    from datetime import UTC, datetime

    from digestbot.mail.context import PaperViews

    views = PaperViews(size=4)
    flt = compile_filter(keywords=["diffusion", "agent*", "reasoning"], authors=())
    found = [(p, m) for p in _fixture_papers() if (m := explain(flt, p)) is not None]
    assert len(found) > 4  # more than the memo holds: some views are built again
    for _ in range(2):
        for paper, match in found:
            assert views.view(paper, match) == paper_view(paper, match)
    paper, match = found[0]
    changed = paper.model_copy(
        update={"title": paper.title + " (revised)", "updated_at": datetime.now(UTC)}
    )
    assert views.view(changed, match).title == changed.title


# -- digest frames: the built-in digest templates filled in, not rendered, per digest ----------

_PAPER_POOL = (
    _bandits(matched=("bandit*",), title_spans=(_span(BANDITS_TITLE, "Bandits"),)),
    _bandits(matched=("regret",), summary_spans=(_span(BANDITS_SUMMARY, "Regret"),)),
    _paper(title="Données & <diffusion>\n", summary="Line one.\n\n   Line   two  ", upvotes=0),
    _paper(arxiv_id="doi:10.1/x", link="https://example.org/p?a=1&b=2", matched=()),
    _paper(authors=(), tldr="Short & sweet.", sources=("hf", "arxiv"), upvotes=7),
    _paper(  # every kind of whitespace the text part's tidying deals with
        arxiv_id="2401.05678",
        title="Spaced\u00a0out\u2028title \t",
        summary="Tabs\tand\u3000wide  spaces,\r\nbreaks\x0b\x0cand\u2029more \n\n\n\n",
        tldr=" trailing\u00a0",
        authors=(" Grace\u2003Hopper ", "\u00a0"),
    ),
)


@pytest.fixture(scope="module")
def frames_and_reference(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Renderer, Renderer]:
    """A Renderer whose built-in digest templates get frames, and one that renders them each
    time: the same templates, copied to an override folder (overrides get no frames). Both last
    the whole module, so frames made by one example are filled in by the next ones (and frames
    never stop paying off here: its frame_trial is raised)."""
    copies = tmp_path_factory.mktemp("templates")
    for name in ("subject.txt.j2", "digest.txt.j2", "digest.html.j2"):
        (copies / name).write_bytes((templates_dir() / name).read_bytes())
    framed = Renderer()
    framed.frame_trial = 10**9
    return framed, Renderer(templates_dir=copies)


_names = st.one_of(st.none(), st.text(max_size=40), st.sampled_from(["", "Zoë <b>&amp;", "Ann"]))
_urls = st.one_of(
    st.none(),
    st.builds(
        lambda t: f"https://digest.example.org/u?token={t}&x=<y>",
        st.text("abcXYZ09-_&<>\"'", max_size=30),
    ),
)
_views = st.builds(
    lambda email, name, url, papers, trending, more, weekly, first, span, list_name: _view(
        *papers,
        subscriber_email=email,
        subscriber_name=name,
        unsubscribe_url=url,
        trending=tuple(trending),
        more_count=more,
        frequency="weekly" if weekly else "daily",
        first_day=date(2026, 3, 2) - timedelta(days=first) if first is not None else None,
        last_day=date(2026, 3, 2) - timedelta(days=span) if span is not None else None,
        list_name=list_name,
    ),
    email=st.emails().map(str) | st.sampled_from(["a&b@example.org", "<x>@example.org"]),
    name=_names,
    url=_urls,
    papers=st.lists(st.sampled_from(_PAPER_POOL), max_size=4),
    trending=st.lists(st.sampled_from(_PAPER_POOL), max_size=2),
    more=st.sampled_from([0, 1, 5]),
    weekly=st.booleans(),
    first=st.none() | st.integers(0, 9),
    span=st.none() | st.integers(0, 3),
    list_name=st.sampled_from(["Paper Digest", "Lab & <Co>", ""]),
)


_frame_text = st.text(st.sampled_from("ab \n\t\u00a0\u2028\r"), max_size=12)
_FILLED = ("name", "email", "unsubscribe_url", "preheader")  # a frame's own values


@given(texts=st.lists(_frame_text, min_size=1, max_size=5), data=st.data())
def test_a_frame_filled_in_is_said_tidy_only_when_tidying_changes_nothing_but_its_ends(
    texts: list[str], data: st.DataObject
) -> None:
    """A text part filled in from a frame skips the tidying (no space before a line break, no
    three line breaks in a row: _tidy_text) only when the tidying would just strip its line
    breaks at the ends; whatever whitespace the frame's texts and the values hold."""
    keys = _FILLED[: len(texts) - 1]
    frame = render._Frame.parse(
        "".join(t + (f"\x00{k}&\x00" if k else "") for t, k in zip(texts, [*keys, ""]))
    )
    assert frame is not None
    values = {k: data.draw(_frame_text, label=k) for k in keys}
    out, tidy = frame.fill(values, str, None, check=True)
    if tidy:
        assert render._tidy_text(out) == out.strip("\n") + "\n", (texts, values)
    assert frame.fill(values, str, None)[1] is False  # not asked


def test_a_tidy_frame_filled_in_with_tidy_values_is_said_tidy() -> None:
    """The check does not refuse what is tidy: a frame of plain lines, and plain values."""
    frame = render._Frame.parse("Hello \x00name&\x00,\n\nYour papers:\n")
    assert frame is not None and frame.tidy
    assert frame.fill({"name": "Ada Lovelace"}, str, None, check=True) == (
        "Hello Ada Lovelace,\n\nYour papers:\n",
        True,
    )
    assert frame.fill({"name": "Ada "}, str, None, check=True)[1] is False
    untidy = render._Frame.parse("Hello \x00name&\x00, \n")
    assert untidy is not None and not untidy.tidy


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(views=st.lists(_views, min_size=1, max_size=4))
def test_a_digest_filled_in_from_its_frame_is_the_digest_rendered(
    frames_and_reference: tuple[Renderer, Renderer], views: list[DigestView]
) -> None:
    """Whatever the subscriber's name, address and unsubscribe URL hold (HTML, "&", non-ASCII,
    nothing), and however many papers, trending papers and days a digest has, its subject,
    text and HTML filled in from frames are the bytes the templates render; so are the pieces
    the MIME encoder reuses."""
    framed, reference = frames_and_reference
    for view in views:
        expected = reference.render(view)
        assert framed.render(view) == expected  # made its frames, or filled them in
        filled = framed.stats().frames_used
        assert framed.render(view) == expected
        assert framed.stats().frames_used == filled + 3  # subject, text, HTML: filled in
    assert framed.stats().frames_refused == 0
    assert reference.stats().frames_used == reference.stats().frames_built == 0


def test_frames_stop_where_most_digests_have_a_shape_of_their_own() -> None:
    """A frame costs a render: when nearly every digest has a shape of its own (here each a
    different count of papers left out), a template gets no more frames after FRAME_TRIAL, and
    each digest is rendered once, as without frames."""
    renderer = Renderer()
    digests = render.FRAME_TRIAL + 150
    outs = [renderer.render(_sub(n, _bandits(), more_count=n)) for n in range(digests)]
    stats = renderer.stats()
    assert stats.frames_built == 3 * render.FRAME_TRIAL and stats.frames_used == 0
    assert stats.template_renders["digest.html.j2"] == digests + render.FRAME_TRIAL
    assert f"{digests - 1} more papers matched" in outs[-1].text


def test_an_overridden_digest_template_is_rendered_for_every_digest(tmp_path: Path) -> None:
    """An override may use the subscriber's values any way it likes, so it gets no frame: a
    template that shortens the name shows each subscriber's own."""
    (tmp_path / "subject.txt.j2").write_text("{{ name[:3] }}: {{ count }} papers\n")
    renderer = Renderer(templates_dir=tmp_path)
    subjects = [
        renderer.render(_view(subscriber_name=name)).subject for name in ("Ada L.", "Bob K.")
    ]
    assert subjects == ["Ada: 0 papers", "Bob: 0 papers"]
    assert renderer.stats().template_renders["subject.txt.j2"] == 2


_WRAP_TEXT = st.lists(
    st.sampled_from(
        [
            *"ab cdéwxyz-.,*",
            "  ",
            "\t",
            "\n",
            "\r",
            "\u00a0",
            "\u2003",
            "\x0b",
            "\x0c",
            "abcdefghijk",
        ]
    ),
    max_size=60,
).map("".join)


@settings(max_examples=400, deadline=None)
@given(
    text=st.one_of(
        _WRAP_TEXT,
        st.lists(st.text("abcdefghij", min_size=1, max_size=30), max_size=30).map(" ".join),
    ),
    width=st.integers(1, 80),
    wrapstring=st.sampled_from([None, "\n", "<br>", " | "]),
    break_long_words=st.booleans(),
    break_on_hyphens=st.booleans(),
)
def test_the_wordwrap_filter_wraps_as_jinjas_own(
    text: str, width: int, wrapstring: str | None, break_long_words: bool, break_on_hyphens: bool
) -> None:
    """A template's `wordwrap` (the renderer's own, faster where the built-in templates call it)
    gives exactly the lines Jinja's filter gives, for any text and arguments: runs of spaces,
    tabs, line breaks, no-break and other Unicode spaces, words longer than a line."""
    environment = Renderer().environment
    args = (text, width, break_long_words, wrapstring, break_on_hyphens)
    expected = jinja2.filters.do_wordwrap(environment, *args)
    assert environment.filters["wordwrap"](environment, *args) == expected
    template = environment.from_string(
        "{{ text | wordwrap(width, break_long_words=long, wrapstring=joint, break_on_hyphens=hyphens) }}"
    )
    rendered = template.render(
        text=text, width=width, long=break_long_words, joint=wrapstring, hyphens=break_on_hyphens
    )
    assert rendered == expected
