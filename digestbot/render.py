"""Render one digest (subject, plain text, HTML) from plain values with Jinja2.

Pure: no database, HTTP or SMTP imports. Everything that comes from a feed or the configuration
is treated as hostile text: control characters are removed, HTML is escaped (autoescape on for
``*.html.j2``; highlights are built with :func:`markupsafe.escape`), and only http(s) URLs
ever become links.

What is the same for many digests is done once per run, inside one :class:`Renderer`: a text's
clean-up and offset map once per distinct text, a paper's highlighted pieces once per
(paper, highlights), a paper's rendered block once per distinct :class:`PaperView`, and the
built-in digest templates' output around a subscriber's own values once per shape of digest
(a frame, filled in for each digest: Renderer._frame). Every cache is bounded, so memory stays
flat however many digests a run renders.
"""

from __future__ import annotations

import contextlib
import functools
import re
from array import array
from collections import Counter, OrderedDict
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import jinja2
from markupsafe import Markup, escape

from digestbot.addresses import mailto_parts
from digestbot.errors import TemplateError
from digestbot.resources import templates_dir as builtin_templates_dir
from digestbot.schedule import WEEK_DAYS
from digestbot.text import UNSAFE, arxiv_id, clean_line, safe_http_url, snippet

__all__ = [
    "DigestView",
    "PaperView",
    "RenderStats",
    "RenderedDigest",
    "Renderer",
]

SUMMARY_LIMIT = 600
"""Abstracts longer than this many characters are cut at a word boundary."""

EXCERPT_LEAD = 160
"""When the first highlight lies past what fits, the excerpt starts about this many characters
before it (at a word boundary), so the reader sees the match in its context."""

EXCERPT_CONTEXT = 80
"""A matched word that the excerpt does not reach is added as a short part: this many
characters around it, cut at word boundaries."""

EXCERPT_EXTRA = 3
"""At most this many such short parts follow the main excerpt."""

EXCERPT_JOIN = " \u2026 "
"""What stands between two parts of an excerpt."""

AUTHORS_SHOWN = 3
"""A long author list shows this many names, then "and N more"."""

AUTHORS_FULL_MAX = 4
"""Author lists up to this length are shown in full."""

BLOCK_CACHE_SIZE = 4096
"""Distinct paper blocks kept per Renderer (each is a (text, html) pair, a few KB)."""

HIGHLIGHT_CACHE_SIZE = 512
"""Distinct (paper, highlights) kept per Renderer: the title, excerpt, authors and keywords
already cut, escaped and marked, a few KB each. Subscribers whose queries differ but hit the
same words of a paper share one entry. It is only asked when a block is not in the block
cache: at 100,000 subscribers, one block in six found its highlights here with 4,096 entries
(tens of MB a worker at a few KB each), so it keeps the recent few."""

TEXT_CACHE_SIZE = 2048
"""Distinct texts (titles, abstracts, feed keywords) whose clean form and offset map are kept
per Renderer; a map costs 4 bytes per character of the original."""

FRAME_CACHE_SIZE = 1024
"""Digest frames kept per Renderer (see Renderer._frame): one per template and shape (the count
of papers, the period, whether the subscriber has a name...), a few KB each; the least recently
used goes first."""

FRAME_TRIAL = 256
"""Frames a template gets before they must pay: from then on it gets no more while it has had
fewer than four digests filled in per frame made."""

MARK_STYLE = "background-color:#fff3a3;color:inherit;padding:0 1px;"

TEMPLATE_SUBJECT = "subject.txt.j2"
TEMPLATE_TEXT = "digest.txt.j2"
TEMPLATE_HTML = "digest.html.j2"
TEMPLATE_PAPER_TEXT = "_paper.txt.j2"
TEMPLATE_PAPER_HTML = "_paper.html.j2"


@dataclass(frozen=True, slots=True)
class PaperView:
    """One paper as a digest shows it, with why it matched and what to highlight."""

    arxiv_id: str
    title: str
    summary: str
    authors: tuple[str, ...]
    upvotes: int
    github_repo: str | None
    github_stars: int | None
    project_page: str | None
    matched: tuple[str, ...]
    """The subscriber's queries that matched ("why you got this")."""
    title_spans: tuple[tuple[int, int], ...]
    """[start, end) offsets into ``title`` to highlight."""
    summary_spans: tuple[tuple[int, int], ...]
    """[start, end) offsets into ``summary`` to highlight."""
    tldr: str | None = None
    """The feed's one-line AI summary (HF ``ai_summary``), shown as "TL;DR" above the abstract."""
    author_hits: tuple[int, ...] = ()
    """Indices into ``authors`` that an ``author:`` query named: always shown, highlighted."""
    keywords: tuple[tuple[str, tuple[tuple[int, int], ...]], ...] = ()
    """The feed keywords a matched query hit, each with [start, end) offsets to highlight."""
    sources: tuple[str, ...] = ()
    """The names of the sources that brought the paper (shown when a digest mixes sources)."""
    link: str | None = None
    """A non-arXiv paper's page. A paper whose key is an arXiv id links to arxiv.org instead."""
    on_hf: bool = True
    """Hugging Face featured it, so it has a Hugging Face paper page (the main link); else an
    arXiv paper's main link is its arXiv abstract page."""


@dataclass(frozen=True, slots=True)
class DigestView:
    """Everything one subscriber's digest shows."""

    subscriber_email: str
    subscriber_name: str | None
    digest_date: date
    papers: tuple[PaperView, ...]
    more_count: int
    """How many more papers matched beyond the subscriber's ``max_papers``."""
    list_name: str
    unsubscribe_mailto: str
    """A full ``mailto:`` URI."""
    unsubscribe_url: str | None
    """An https URL, or None."""
    trending: tuple[PaperView, ...] = ()
    """The "Trending" section: the period's most upvoted new papers not in ``papers``."""
    frequency: str = "daily"
    """"daily" or "weekly": how the subject and greeting name the period."""
    first_day: date | None = None
    """The first day the digest covers (None: ``digest_date``)."""
    last_day: date | None = None
    """The last day the digest covers (None: ``digest_date``)."""

    @property
    def multi_source(self) -> bool:
        """Whether the digest's papers came from more than one source in total: only then does
        each paper say which sources brought it, so single-source installs see no change."""
        raw = {s for p in self.papers + self.trending for s in p.sources}
        if len(raw) < 2:
            return False
        names = {clean_line(s) for s in raw}
        names.discard("")
        return len(names) > 1


@dataclass(frozen=True, slots=True)
class RenderedDigest:
    """The rendered parts of one digest, ready for MIME building."""

    subject: str
    text: str
    html: str
    text_pieces: tuple[str, ...] = ()
    """The paper blocks as the text template inserted them (through its ``indent`` filter):
    mime.encode_body encodes each once per run. A hint only: a piece the text does not hold
    changes nothing."""
    html_pieces: tuple[str, ...] = ()
    """The same for the HTML part: the paper blocks, which the HTML template inserts as they are."""


# --------------------------------------------------------------------------- text hygiene

# Cleaning rules live in digestbot.text; here only the offset-keeping variant for highlights.


def _is_blank(ch: str) -> bool:
    return ch.isspace() or bool(UNSAFE.match(ch))


Normalized = tuple[str, "array[int] | None"]
"""A text after the clean-up and its offset map (None: the text was already clean)."""


def _normalize_with_map(text: str) -> Normalized:
    """Collapse whitespace/control runs to one space and strip the ends.

    Returns the new text and a map from every offset 0..len(text) of the original to an offset
    of the new text, so highlight spans survive the clean-up; None when nothing changed (offsets
    are the same). The map is a compact array since a run keeps one per distinct text.
    """
    out: list[str] = []
    mapping: list[int] = []
    pending_space = False
    for ch in text:
        if _is_blank(ch):
            mapping.append(len(out))  # offsets inside a run land before the single space
            if out:
                pending_space = True
            continue
        if pending_space:
            out.append(" ")
            pending_space = False
        mapping.append(len(out))
        out.append(ch)
    mapping.append(len(out))
    clean = "".join(out)
    return clean, (None if clean == text else array("i", mapping))


def _clean_spans(spans: object, length: int) -> list[tuple[int, int]]:
    """Sort, clamp and merge spans; silently drop anything malformed."""
    good: list[tuple[int, int]] = []
    try:
        items = list(spans)  # type: ignore[call-overload]
    except TypeError:
        return []
    for item in items:
        try:
            start, end = item
        except (TypeError, ValueError):
            continue
        if isinstance(start, bool) or isinstance(end, bool):
            continue
        if not isinstance(start, int) or not isinstance(end, int):
            continue
        start, end = max(0, start), min(length, end)
        if start < end:
            good.append((start, end))
    good.sort()
    merged: list[tuple[int, int]] = []
    for start, end in good:
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


Segments = tuple[tuple[tuple[str, bool], ...], bool, bool]
"""(piece, highlighted) segments, whether the end was cut, whether the start was."""


def _segments(
    text: str,
    spans: object,
    *,
    limit: int | None = None,
    normalize: Callable[[str], Normalized] = _normalize_with_map,
) -> Segments:
    """Split ``text`` into (piece, highlighted) segments after cleaning and optional trimming.

    With a ``limit``, the excerpt is the part around the first highlight (it starts at the
    beginning when the first highlight fits, else shortly before it), then a short part around
    each other highlighted word it does not reach (see :func:`_windows`). Returns the segments,
    whether the end was cut and whether the start was. Spans follow the whitespace clean-up and
    are cut at the trim points. ``normalize`` is the clean-up (a Renderer passes its cache).
    """
    raw = str(text)
    raw_spans = _clean_spans(spans, len(raw))
    clean, mapping = normalize(raw)
    mapped = []
    for start, end in raw_spans:
        new_start, new_end = (start, end) if mapping is None else (mapping[start], mapping[end])
        # A span that started on collapsed whitespace should not highlight the space itself.
        while new_start < new_end and clean[new_start] == " ":
            new_start += 1
        while new_end > new_start and clean[new_end - 1] == " ":
            new_end -= 1
        mapped.append((new_start, new_end))
    windows = _windows(clean, mapped, limit) if limit is not None else [(0, len(clean))]
    segments: list[tuple[str, bool]] = []
    for n, (begin, end) in enumerate(windows):
        if n:
            segments.append((EXCERPT_JOIN, False))
        part = clean[begin:end]
        pos = 0
        for start, stop in _clean_spans([(a - begin, b - begin) for a, b in mapped], len(part)):
            if start > pos:
                segments.append((part[pos:start], False))
            segments.append((part[start:stop], True))
            pos = stop
        if pos < len(part):
            segments.append((part[pos:], False))
    return tuple(segments), windows[-1][1] < len(clean), windows[0][0] > 0


def _word_end(clean: str, at: int) -> int:
    """Where the excerpt ending near `at` stops: the last word boundary, trailing punctuation off."""
    if at >= len(clean):
        return len(clean)
    cut = clean.rfind(" ", 0, at + 1)
    return len(clean[: cut if cut > 0 else at].rstrip(" ,;:.-\u2013\u2014"))


def _windows(clean: str, mapped: list[tuple[int, int]], limit: int) -> list[tuple[int, int]]:
    """The [begin, end) parts of ``clean`` an excerpt of about ``limit`` characters shows.

    The main part starts at the beginning when the first highlight fits, else shortly before it.
    Each highlighted word not shown there (the first span of each other matched query, as far
    as spans tell) adds a short part around its first occurrence, up to EXCERPT_EXTRA of them.
    """
    if len(clean) <= limit:
        return [(0, len(clean))]
    spans = sorted((a, b) for a, b in mapped if a < b)
    begin = 0
    if spans and spans[0][0] > limit - 60:
        begin = clean.rfind(" ", 0, max(0, spans[0][0] - EXCERPT_LEAD)) + 1
    end = begin + limit
    if end < len(clean):
        cut = clean.rfind(" ", 0, end + 1)
        end = _word_end(clean, end) if cut >= begin + limit // 2 else begin + limit
    windows = [(begin, end)]
    shown = {clean[a:b].casefold() for a, b in spans if a >= begin and a < end}
    for a, b in spans:
        word = clean[a:b].casefold()
        if word in shown or len(windows) > EXCERPT_EXTRA:
            continue
        shown.add(word)
        w_begin = clean.rfind(" ", 0, max(0, a - EXCERPT_CONTEXT)) + 1
        w_end = max(b, _word_end(clean, b + EXCERPT_CONTEXT))
        if w_begin <= windows[-1][1] + len(EXCERPT_JOIN):
            windows[-1] = (windows[-1][0], max(windows[-1][1], w_end))
        else:
            windows.append((w_begin, w_end))
        shown.update(clean[x:y].casefold() for x, y in spans if x >= w_begin and y <= w_end)
    return windows


def _segments_html(
    segments: Sequence[tuple[str, bool]], *, ellipsis: bool = False, lead: bool = False
) -> Markup:
    """Join segments as HTML: every piece escaped, highlights in an inline-styled <mark>."""
    out = "".join(
        f"{_MARK_OPEN}{escape(piece)}</mark>" if hot else escape(piece) for piece, hot in segments
    )  # plain str joins of escaped pieces (Markup.format and Markup.join escape each part anew)
    if lead and out:
        out = "\u2026 " + out
    return Markup(out + "\u2026" if ellipsis else out)


_MARK_OPEN = str(Markup('<mark style="{}">').format(MARK_STYLE))


def _segments_text(
    segments: Sequence[tuple[str, bool]], *, ellipsis: bool = False, lead: bool = False
) -> str:
    """Join segments as plain text, highlights wrapped in *asterisks*."""
    out = "".join(f"*{piece}*" if hot else piece for piece, hot in segments)
    if lead and out:
        out = "\u2026 " + out
    return out + "\u2026" if ellipsis else out


# --------------------------------------------------------------------------- URLs

_GITHUB_SHORT = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}")


def _github_url(value: str | None) -> str | None:
    if not value:
        return None
    value = value.strip()
    if _GITHUB_SHORT.fullmatch(value):
        return safe_http_url(f"https://github.com/{value}")
    return safe_http_url(value)


def _link_label(url: str) -> str:
    """A short human label for a URL: ``owner/repo`` for GitHub, else host and path."""
    parts = urlsplit(url)
    path = unquote(parts.path).strip("/")
    if (parts.hostname or "").lower() in ("github.com", "www.github.com") and path:
        return clean_line("/".join(path.split("/")[:2]))
    label = (parts.hostname or "") + (("/" + path) if path else "")
    return clean_line(label if len(label) <= 60 else label[:59] + "\u2026")


def _mailto_parts(mailto: str) -> tuple[str | None, str | None]:
    """The address and subject of a ``mailto:`` URI (None when it is not one): the reading of
    addresses.mailto_parts, which the List-Unsubscribe header uses too."""
    parts = mailto_parts(clean_line(mailto))
    return parts if parts is not None else (None, None)


# --------------------------------------------------------------------------- view models


def _authors(authors: Sequence[str], hits: Sequence[int] = ()) -> list[tuple[str, bool]]:
    """The author line as (piece, highlighted) segments: a long list is shortened to its first
    names and "and N more", but an author a query named is always shown, highlighted
    ("Yao Fu, Hao Peng, … Ashish Sabharwal")."""
    wanted = {h for h in hits if isinstance(h, int) and not isinstance(h, bool)}
    named = [(clean_line(a), i in wanted) for i, a in enumerate(authors)]
    names = [(n, hot) for n, hot in named if n]
    hot_at = [i for i, (_, hot) in enumerate(names) if hot]
    if len(names) <= AUTHORS_FULL_MAX:
        keep = list(range(len(names)))
    elif all(i < AUTHORS_SHOWN for i in hot_at):
        keep = list(range(AUTHORS_SHOWN))
    else:
        keep = sorted(set(range(AUTHORS_SHOWN - 1)) | set(hot_at))
    out: list[tuple[str, bool]] = []
    prev = -1
    for i in keep:
        if prev >= 0:
            out.append((", \u2026 " if i != prev + 1 else ", ", False))
        out.append(names[i])
        prev = i
    if names and prev < len(names) - 1:
        out.append((f" and {len(names) - 1 - prev} more", False))
    return out


def _int_or_none(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


Spans = tuple[tuple[int, int], ...]

HighlightKey = tuple[
    str, Spans, str, Spans, tuple[str, ...], tuple[int, ...], tuple[tuple[str, Spans], ...]
]
"""Everything a paper's highlighted pieces depend on (see :func:`_highlights`)."""


def _highlight_key(paper: PaperView) -> HighlightKey:
    return (
        paper.title,
        paper.title_spans,
        paper.summary,
        paper.summary_spans,
        paper.authors,
        paper.author_hits,
        paper.keywords,
    )


def _highlights(
    key: HighlightKey, normalize: Callable[[str], Normalized] = _normalize_with_map
) -> dict[str, Any]:
    """The pieces of a paper's block that its highlights change (title, abstract excerpt,
    authors, feed keywords): cleaned, cut, escaped for HTML and marked. A pure function of
    `key`, so every subscriber whose queries hit the same words of a paper can share them."""
    title, title_spans, summary, summary_spans, authors, author_hits, keywords = key
    title_segments, _, _ = _segments(title, title_spans, normalize=normalize)
    summary_segments, trimmed, lead = _segments(
        summary, summary_spans, limit=SUMMARY_LIMIT, normalize=normalize
    )
    author_segments = _authors(authors, author_hits)
    keyword_segments = [_segments(word, spans, normalize=normalize)[0] for word, spans in keywords]
    keyword_segments = [k for k in keyword_segments if k]
    return {
        "title_text": _segments_text(title_segments) or "(untitled)",
        "title_html": _segments_html(title_segments) or Markup("(untitled)"),
        "summary_text": _segments_text(summary_segments, ellipsis=trimmed, lead=lead),
        "summary_html": _segments_html(summary_segments, ellipsis=trimmed, lead=lead),
        "authors": _segments_text(author_segments),
        "authors_html": _segments_html(author_segments),
        "keywords_text": ", ".join(_segments_text(k) for k in keyword_segments),
        "keywords_html": Markup(", ").join(_segments_html(k) for k in keyword_segments),
    }


def _paper_link(link: str | None, key: str) -> str | None:
    """The page of a paper without an arXiv id: its ``link``; else its key when the key is a
    URL, or doi.org for a ``doi:`` key. Never an arxiv.org link."""
    url = safe_http_url(link)
    if url is None and key[:4].lower() == "doi:" and key[4:].strip():
        url = safe_http_url("https://doi.org/" + quote(key[4:].strip(), safe="/:;()._-"))
    return url or safe_http_url(key)


def paper_context(
    paper: PaperView, *, show_sources: bool = False, highlights: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Everything the paper partials need, already cleaned, escaped (HTML bits) and validated.

    ``show_sources``: the digest mixes sources, so the block names the ones that brought this
    paper. ``highlights``: the paper's :func:`_highlights`, when a cache already has them.
    """
    if highlights is None:
        highlights = _highlights(_highlight_key(paper))
    shown_id = clean_line(paper.arxiv_id)
    link_url = None
    if arxiv_id(shown_id) is not None:
        quoted = quote(shown_id, safe="./-")
        paper_url: str | None = f"https://huggingface.co/papers/{quoted}" if paper.on_hf else None
        abs_url: str | None = f"https://arxiv.org/abs/{quoted}"
        pdf_url: str | None = f"https://arxiv.org/pdf/{quoted}"
    else:
        paper_url = abs_url = pdf_url = None
        link_url = _paper_link(paper.link, shown_id)
    github_url = _github_url(paper.github_repo)
    project_url = safe_http_url(paper.project_page)
    upvotes = _int_or_none(paper.upvotes) or 0
    sources: list[str] = []
    if show_sources:
        for name in (clean_line(s) for s in paper.sources):
            if name and name not in sources:
                sources.append(name)
    return {
        **highlights,
        "arxiv_id": shown_id,
        "tldr": clean_line(paper.tldr or ""),
        "upvotes": upvotes,
        "matched": [q for q in (clean_line(m) for m in paper.matched) if q],
        "sources": sources,
        "paper_url": paper_url,
        "abs_url": abs_url,
        "pdf_url": pdf_url,
        "link_url": link_url,
        "link_label": _link_label(link_url) if link_url else None,
        "github_url": github_url,
        "github_label": _link_label(github_url) if github_url else None,
        "github_stars": _int_or_none(paper.github_stars),
        "project_url": project_url,
        "project_label": _link_label(project_url) if project_url else None,
    }


# --------------------------------------------------------------------------- renderer


class _TextLoader(jinja2.FileSystemLoader):
    """A folder of templates; a file that is not UTF-8 is a TemplateError naming it (loaded
    directly or through an include), never a UnicodeDecodeError."""

    def __init__(self, folder: Path, *, field: str | None) -> None:
        super().__init__(str(folder))
        self.folder = Path(folder)
        self.field = field

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str, Callable[[], bool]]:
        try:
            return super().get_source(environment, template)
        except UnicodeDecodeError as exc:
            raise TemplateError(
                f"the template is not UTF-8 text (byte {exc.start + 1} cannot be decoded)",
                file=str(self.folder / template),
                line=None,
                field=self.field,
            ) from None


@dataclass(frozen=True, slots=True)
class RenderStats:
    """What one Renderer has done so far: its three caches' use and its template renders."""

    digests: int
    """Digests rendered."""
    blocks_rendered: int
    """Paper blocks rendered from the templates (each a text and an HTML block)."""
    blocks_reused: int
    """Paper blocks taken from the cache instead."""
    highlights_built: int
    """Highlighted pieces (title, excerpt, authors, keywords) built for a (paper, highlights)."""
    highlights_reused: int
    texts_normalized: int
    """Texts (titles, abstracts, keywords) cleaned up and mapped."""
    texts_reused: int
    template_renders: dict[str, int] = field(default_factory=dict)
    """Renders per template name (a copy)."""
    frames_built: int = 0
    """Digest frames made (each from a template render with placeholders, checked against a
    real render)."""
    frames_used: int = 0
    """Digest parts filled in from a frame instead of rendered."""
    frames_refused: int = 0
    """Frames of a built-in template not made: its render with placeholders was not a frame,
    or the frame filled in was not the real render (that shape is rendered each time)."""


class _Environment(jinja2.Environment):
    """A Jinja2 environment whose templates' globals are a plain dict.

    Jinja2 gives each template a ChainMap over the environment's globals, which every render
    copies key by key in Python (3 to 4 % of a digest's time); a dict is copied in C. The
    globals are then read when a template is loaded, which is what Jinja2 asks of them anyway
    (Environment.make_globals: "avoid modifying any globals after a template is loaded").
    """

    def make_globals(self, d: MutableMapping[str, Any] | None) -> MutableMapping[str, Any]:
        return {**self.globals, **(d or {})}


class Renderer:
    """Jinja2 rendering of digests, with an override folder and per-run caches.

    Templates are looked up first in ``templates_dir`` (when given), then in the built-in
    folder; autoescape is on for ``*.html.j2``; undefined names are errors. Build one Renderer
    per run and reuse it: each distinct text is cleaned once, each paper's highlighted pieces
    are built once per set of highlights, each distinct paper block is rendered once, and each
    built-in digest template once per shape of digest (all caches bounded, see :meth:`stats`). Any template failure is a
    :class:`~digestbot.errors.TemplateError` (a ConfigError) naming the template file and line;
    call :meth:`check` before a run to find it before anything is sent.
    """

    def __init__(self, *, templates_dir: Path | None = None) -> None:
        self.templates_dir = templates_dir
        loaders: list[jinja2.BaseLoader] = []
        if templates_dir is not None:
            loaders.append(_TextLoader(templates_dir, field="DIGESTBOT_TEMPLATES_DIR"))
        loaders.append(_TextLoader(builtin_templates_dir(), field=None))
        self.environment = _Environment(
            loader=jinja2.ChoiceLoader(loaders),
            autoescape=jinja2.select_autoescape(
                enabled_extensions=("html.j2", "html", "htm"),
                disabled_extensions=("txt.j2", "txt"),
                default_for_string=False,
                default=False,
            ),
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
            auto_reload=False,
        )
        """The Jinja2 environment; add filters or globals here before the first render."""
        # The text template indents each paper block in every digest, the same way each time:
        # memoised per run, the filter's output is unchanged. What it gives is noted for the
        # render (RenderedDigest.text_pieces).
        self._indent = _memoised(_indent_checked, BLOCK_CACHE_SIZE)
        self.environment.filters["indent"] = _noted(lambda *a, **kw: self._indent(*a, **kw)[0])
        self.environment.filters["wordwrap"] = _wordwrap
        self._normalized: Callable[[str], Normalized] = functools.lru_cache(
            maxsize=TEXT_CACHE_SIZE
        )(_normalize_with_map)
        self._highlights: Callable[[HighlightKey], dict[str, Any]] = functools.lru_cache(
            maxsize=HIGHLIGHT_CACHE_SIZE
        )(self._build_highlights)
        self._block: Callable[[PaperView, bool], tuple[str, Markup]] = functools.lru_cache(
            maxsize=BLOCK_CACHE_SIZE
        )(self._render_block)
        # The same for every digest of a run (list name, unsubscribe address) or for many (titles).
        self._line: Callable[[str], str] = functools.lru_cache(maxsize=TEXT_CACHE_SIZE)(clean_line)
        self._mailto = functools.lru_cache(maxsize=64)(_mailto_parts)
        self._renders: Counter[str] = Counter()
        self._digests = 0
        self._frames: OrderedDict[tuple[Any, ...], _Frame | None] = OrderedDict()
        self.frame_trial = FRAME_TRIAL
        """Frames a template gets before they must pay (FRAME_TRIAL)."""
        self._builds: Counter[str] = Counter()
        self._fills: Counter[str] = Counter()
        self._builtin: dict[str, bool] = {}
        self._refused: Counter[str] = Counter()

    def check(self) -> None:
        """Compile every template (overrides and built-ins) and render a sample digest with and
        without papers; a problem is a TemplateError naming the file and line."""
        for name in self.environment.list_templates(filter_func=_is_template):
            self._template(name)
        sample = DigestView(
            subscriber_email="reader@example.org",
            subscriber_name="Reader",
            digest_date=date(2026, 1, 1),
            papers=(_SAMPLE_PAPER,),
            more_count=1,
            list_name="Paper Digest",
            unsubscribe_mailto="mailto:digest@example.org?subject=unsubscribe",
            unsubscribe_url="https://example.org/unsubscribe",
            trending=(_SAMPLE_TRENDING,),
            frequency="weekly",
            first_day=date(2025, 12, 26),
        )
        self.render(sample)
        self.render(
            DigestView(
                subscriber_email=sample.subscriber_email,
                subscriber_name=None,
                digest_date=sample.digest_date,
                papers=(),
                more_count=0,
                list_name=sample.list_name,
                unsubscribe_mailto=sample.unsubscribe_mailto,
                unsubscribe_url=None,
            )
        )

    def _template(self, name: str) -> jinja2.Template:
        """The compiled template `name`; a syntax error becomes a TemplateError with file and line."""
        try:
            return self.environment.get_template(name)
        except jinja2.TemplateSyntaxError as exc:
            raise self._error(
                f"the template does not compile: {exc.message}", exc.filename or name, exc.lineno
            ) from None
        except jinja2.TemplateError as exc:
            raise self._error(f"cannot load the template: {exc}", name, None) from None

    def _run(self, name: str, /, **context: Any) -> str:
        """Render template `name`; any failure becomes a TemplateError naming file and line."""
        template = self._template(name)
        self._renders[name] += 1
        try:
            return template.render(**context)
        except jinja2.TemplateSyntaxError as exc:  # an {% include %} that does not compile
            raise self._error(
                f"the template does not compile: {exc.message}", exc.filename or name, exc.lineno
            ) from None
        except jinja2.TemplateNotFound as exc:
            file, line = _template_frame(exc.__traceback__, template.filename or name)
            raise self._error(
                f"the template includes {exc.name!r}, which is neither an override nor built in",
                file,
                line,
            ) from None
        except jinja2.TemplateError as exc:
            file, line = _template_frame(exc.__traceback__, template.filename or name)
            reason = snippet(exc.message or type(exc).__name__, 200)
            raise self._error(f"the template fails to render: {reason}", file, line) from None
        except (TypeError, ValueError, ArithmeticError, AttributeError, LookupError) as exc:
            # Only the kind of error: a Python message may quote the data (a paper's title).
            file, line = _template_frame(exc.__traceback__, template.filename or name)
            raise self._error(
                f"the template fails to render: {type(exc).__name__}", file, line
            ) from None

    def _error(self, message: str, file: str, line: int | None) -> TemplateError:
        overrides = self.templates_dir
        overridden = overrides is not None and Path(file).resolve().is_relative_to(
            Path(overrides).resolve()
        )
        return TemplateError(
            message, file=file, line=line, field="DIGESTBOT_TEMPLATES_DIR" if overridden else None
        )

    def _build_highlights(self, key: HighlightKey) -> dict[str, Any]:
        return _highlights(key, self._normalized)

    def _render_block(self, paper: PaperView, show_sources: bool) -> tuple[str, Markup]:
        ctx = paper_context(
            paper, show_sources=show_sources, highlights=self._highlights(_highlight_key(paper))
        )
        text = self._run(TEMPLATE_PAPER_TEXT, paper=ctx)
        html = self._run(TEMPLATE_PAPER_HTML, paper=ctx).strip("\n")
        # The ellipsis of a shortened abstract or author list as the entity, which every mail
        # client shows as the character: a block without a character past Latin-1 is a Python
        # string of a byte a character, not two, and a run keeps thousands (BLOCK_CACHE_SIZE).
        return text.strip("\n"), Markup(html.replace("\u2026", "&hellip;"))

    def paper_block(self, paper: PaperView, *, show_sources: bool = False) -> tuple[str, Markup]:
        """The (text, HTML) block of one paper, from the cache when already rendered.

        The cache key is the whole PaperView (everything the block shows, the subscriber's
        matched queries and highlights included) and ``show_sources``, so two subscribers share
        a block only when it would be the same byte for byte.
        """
        return self._block(paper, show_sources)

    def cache_info(self) -> Any:
        """Hits, misses and size of the paper block cache (``functools.lru_cache`` info)."""
        return self._block.cache_info()  # type: ignore[attr-defined]

    def stats(self) -> RenderStats:
        """How much this Renderer rendered and how much it reused (for tests and benchmarks)."""
        blocks = self._block.cache_info()  # type: ignore[attr-defined]
        pieces = self._highlights.cache_info()  # type: ignore[attr-defined]
        texts = self._normalized.cache_info()  # type: ignore[attr-defined]
        return RenderStats(
            digests=self._digests,
            blocks_rendered=blocks.misses,
            blocks_reused=blocks.hits,
            highlights_built=pieces.misses,
            highlights_reused=pieces.hits,
            texts_normalized=texts.misses,
            texts_reused=texts.hits,
            template_renders=dict(self._renders),
            frames_built=self._builds.total() - self._refused.total(),
            frames_used=self._fills.total(),
            frames_refused=self._refused.total(),
        )

    def _part(
        self,
        name: str,
        context: dict[str, Any],
        inserted: list[str] | None = None,
        *,
        check: bool = False,
    ) -> tuple[str, bool]:
        """Template `name` rendered with `context`: filled in from its frame when it has one
        (see _frame), else rendered (and a frame made from that render when it can be).
        `inserted` gets the paper blocks as the template inserted them (text_pieces). Also,
        when asked to `check`, whether the output is tidy but for line breaks at its ends
        (_Frame.fill; False for a render, which is not looked at)."""
        if not self._is_builtin(name):  # an override never gets a frame: no key to look up
            noted = {_NOTED: inserted} if inserted is not None else {}
            return self._run(name, **context, **noted), False
        key = _frame_key(name, context)
        frame = self._frames.get(key)
        if frame is not None:
            with contextlib.suppress(KeyError):  # another thread's render let it go meanwhile
                self._frames.move_to_end(key)
            self._fills[name] += 1
            return frame.fill(context, self._indent, inserted, check=check)
        noted_here: list[str] = []
        out = self._run(name, **context, **{_NOTED: noted_here})
        if inserted is not None:
            inserted.extend(noted_here)
        if key not in self._frames and self._frames_pay(name):
            self._frames[key] = self._frame(name, context, out, noted_here)
            if len(self._frames) > FRAME_CACHE_SIZE:
                self._frames.popitem(last=False)
        return out, False

    def _frame(
        self, name: str, context: dict[str, Any], real: str, noted: list[str]
    ) -> _Frame | None:
        """The frame of a built-in digest template for this shape of digest, or None (it is
        rendered each time).

        A frame is the template's output for a shape, cut where the subscriber's own values go:
        the name, address, unsubscribe URL and preheader, each paper block. Every value of the
        context but those is the shape (the frame's key); of those, only whether each is empty
        and how many blocks there are. It is made by rendering the template once with
        placeholders in their place, which also shows what the template does with each (HTML
        escaping, an indent); filling it in does the same to the real values. That is exactly
        the render only for a template that never looks into those values beyond "is it empty":
        so only the built-in templates get frames (an override is rendered each time), and each
        frame is checked against `real`, the render of the digest that made it (with `noted`,
        the blocks its indent filter gave; tests/test_render.py checks many more digests).
        """
        self._builds[name] += 1
        probe = {k: _placeholder(k, v) for k, v in context.items()}
        frame = _Frame.parse(self._run(name, **probe))
        if frame is not None:
            filled: list[str] = []
            if frame.fill(context, self._indent, filled)[0] != real or filled != noted:
                frame = None
        if frame is None:
            self._refused[name] += 1
        return frame

    def _frames_pay(self, name: str) -> bool:
        """Whether to make another frame for built-in template `name`: not once most digests
        of the run have had a shape of their own (a frame costs a render; then it is never made
        up for, and rendering each digest is cheaper)."""
        builds = self._builds[name]
        return builds < self.frame_trial or builds * 4 <= self._fills[name]

    def _is_builtin(self, name: str) -> bool:
        found = self._builtin.get(name)
        if found is None:
            file = self._template(name).filename
            builtin = builtin_templates_dir().resolve()
            found = file is not None and Path(file).resolve().parent == builtin
            self._builtin[name] = found
        return found

    def render(self, view: DigestView) -> RenderedDigest:
        """Render the subject, text and HTML of one digest."""
        self._digests += 1
        show_sources = view.multi_source
        blocks = [self._block(p, show_sources) for p in view.papers]
        hot = [self._block(p, show_sources) for p in view.trending]
        count = len(view.papers)
        weekly = view.frequency == "weekly"
        first = view.first_day or view.digest_date
        last = max(view.last_day or view.digest_date, first)
        dates = first.isoformat() if first == last else f"{first.isoformat()} to {last.isoformat()}"
        # Words true for the days covered: "this week" when no day before the week is covered,
        # "this past week" for the seven days before it, "today" for one day, else "since".
        week_phrase = ""
        if weekly and first >= view.digest_date:
            week_phrase = "this week"
        elif weekly and (last - first).days < WEEK_DAYS:
            week_phrase = "this past week"
        if week_phrase:
            period = week_phrase
        elif first == last and not weekly:
            period = "today"
        else:
            period = f"since {first.isoformat()}"
        more = max(0, _int_or_none(view.more_count) or 0)
        list_name = self._line(view.list_name) or "Paper Digest"
        name = clean_line(view.subscriber_name) if view.subscriber_name else ""
        unsubscribe_url = safe_http_url(view.unsubscribe_url) if view.unsubscribe_url else None
        unsubscribe_address, unsubscribe_subject = self._mailto(view.unsubscribe_mailto)
        mailto = self._line(view.unsubscribe_mailto) if unsubscribe_address else None
        ctx: dict[str, Any] = {
            "list_name": list_name,
            "date": view.digest_date.isoformat(),
            "count": count,
            "more_count": more,
            "name": name,
            "email": clean_line(view.subscriber_email),
            "unsubscribe_url": unsubscribe_url,
            "unsubscribe_mailto": mailto,
            "unsubscribe_address": unsubscribe_address,
            "unsubscribe_subject": unsubscribe_subject,
            "weekly": weekly,
            "week_phrase": week_phrase,
            "period": period,
            "one_day": first == last,
            "dates": dates,
            "trending_count": len(hot),
        }
        subject = clean_line(self._part(TEMPLATE_SUBJECT, ctx)[0])
        titles = "; ".join(self._line(p.title) for p in (view.papers + view.trending)[:3])
        if count:
            preheader = f"{count} new paper{'s' if count != 1 else ''}: {titles}"
        elif hot:
            preheader = f"Trending {ctx['period']}: {titles}"
        else:
            preheader = f"No new papers matched your filters {ctx['period']}."
        if len(preheader) > 140:
            preheader = preheader[:139].rstrip() + "\u2026"
        inserted: list[str] = []
        ctx["subject"] = subject
        text, tidy = self._part(
            TEMPLATE_TEXT,
            {**ctx, "blocks": [b[0] for b in blocks], "trending_blocks": [b[0] for b in hot]},
            inserted,
            check=True,
        )
        ctx["preheader"] = preheader
        html, _ = self._part(
            TEMPLATE_HTML,
            {**ctx, "blocks": [b[1] for b in blocks], "trending_blocks": [b[1] for b in hot]},
        )
        return RenderedDigest(
            subject=subject,
            text=_tidy_text(text, tidy_inside=tidy),
            html=html,
            text_pieces=tuple(inserted),
            html_pieces=tuple(b[1] for b in blocks + hot),
        )


_SAMPLE_PAPER = PaperView(
    arxiv_id="2401.00001",
    title="A sample paper on speculative decoding",
    summary="We check that every template renders before anything is sent.",
    authors=("Ada Lovelace", "Alan Turing"),
    upvotes=3,
    github_repo="https://github.com/example/sample",
    github_stars=10,
    project_page="https://example.org/sample",
    matched=("speculative decoding",),
    title_spans=((20, 40),),
    summary_spans=(),
)


_SAMPLE_TRENDING = PaperView(
    arxiv_id="2401.00002",
    title="A sample trending paper",
    summary="Many readers upvoted it.",
    authors=("Grace Hopper",),
    upvotes=42,
    github_repo=None,
    github_stars=None,
    project_page=None,
    matched=(),
    title_spans=(),
    summary_spans=(),
)


@jinja2.pass_environment
def _wordwrap(
    environment: jinja2.Environment,
    s: str,
    width: int = 79,
    break_long_words: bool = True,
    wrapstring: str | None = None,
    break_on_hyphens: bool = True,
) -> str:
    """Jinja's `wordwrap` filter, the same output (tests/test_render.py holds them equal): as
    the built-in text templates call it (no long word broken, none at its hyphens) on text whose
    only whitespace is single spaces between words (a cleaned title or abstract), its breaks
    found by searching for spaces (_wrapped) instead of textwrap's word by word loop, a fifth
    of a paper block's render; any other call, or other text, is Jinja's own."""
    if (
        type(s) is not str
        or type(width) is not int
        or width <= 0
        or break_long_words is not False
        or break_on_hyphens is not False
        or not s
        or s[0] == " "
        or s[-1] == " "
        or _UNUSUAL_SPACE.search(s)  # also every line break: plain text is one line
    ):
        return str(
            jinja2.filters.do_wordwrap(
                environment, s, width, break_long_words, wrapstring, break_on_hyphens
            )
        )
    joint = environment.newline_sequence if wrapstring is None else wrapstring
    return joint.join(_wrapped(s, width))


def _wrapped(text: str, width: int) -> list[str]:
    """The lines textwrap gives (no long word broken, none at its hyphens) for non-empty text
    whose only whitespace is single spaces between words: each cut at the last space that fits,
    a word longer than a line alone on its own."""
    lines: list[str] = []
    at, n = 0, len(text)
    while n - at > width:
        cut = text.rfind(" ", at, at + width + 1)
        if cut < 0:  # the first word is longer than a line: alone on its own
            cut = text.find(" ", at)
            if cut < 0:
                break
        lines.append(text[at:cut])
        at = cut + 1
    lines.append(text[at:])
    return lines


_UNUSUAL_SPACE = re.compile(r"[^\S ]|  ")
"""Any whitespace but a single space: a tab or line break (textwrap's chunks; every character
str.splitlines breaks at), a run of spaces, or a space str.strip drops (no-break, em...; re's
\\s is str.isspace's set)."""


def _memoised(func: Callable[..., Any], maxsize: int) -> Callable[..., Any]:
    """`func` (a pure filter) with a bounded cache; arguments of another type (``Markup`` and
    ``str``) are cached apart, unhashable ones are computed each time."""
    cached = functools.lru_cache(maxsize=maxsize, typed=True)(func)

    @functools.wraps(func)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return cached(*args, **kwargs)
        except TypeError:  # unhashable arguments (or a wrong call, which fails again below)
            return func(*args, **kwargs)

    return call


_FRAME_VALUES = frozenset({"name", "email", "unsubscribe_url", "preheader"})
"""A digest's own strings: a frame has a place for each (the rest of the context is its shape)."""
_FRAME_LISTS = frozenset({"blocks", "trending_blocks"})
"""A digest's paper blocks: a frame has a place for each block."""
_PLACE = re.compile(r"\x00([a-z_]+)(\d*)(&amp;|&)\x00(?:\n([ ]*)\x00\1\2\.\x00)?")
"""A placeholder in a frame's render (see _placeholder): the value's name, its index in a list,
its "&" escaped or not, and for a block the indent given to its second line."""


def _frame_key(name: str, context: dict[str, Any]) -> tuple[Any, ...]:
    """A frame's key: the template, every value of the context but a digest's own, and of those
    whether each is empty (strings) and how many there are (blocks)."""
    return (
        name,
        *(
            bool(v) if k in _FRAME_VALUES else len(v) if k in _FRAME_LISTS else v
            for k, v in context.items()
        ),
    )


def _placeholder(key: str, value: Any) -> Any:
    """What stands in for a digest's own value when its frame is made. Control characters never
    reach a template from data (text.clean_line, clean_block), so NUL marks the places; the "&"
    shows whether the template escapes the value, the line break whether it indents a block."""
    if key in _FRAME_VALUES:
        return f"\x00{key}&\x00" if value else value
    if key in _FRAME_LISTS:
        return [
            type(block)(f"\x00{key}{i}&\x00\n\x00{key}{i}.\x00")
            if isinstance(block, str)
            else block
            for i, block in enumerate(value)
        ]
    return value


@dataclass(frozen=True, slots=True)
class _Frame:
    """A template's output for one shape of digest: text, then a place, then text... Each place
    is (name, index in its list or None, escaped for HTML, indent of a block or None)."""

    texts: tuple[str, ...]
    places: tuple[tuple[str, int | None, bool, int | None], ...]
    tidy: bool = False
    """Whether the texts can stand as they are in a tidy text part (_tidy_text): see fill."""

    @staticmethod
    def parse(output: str) -> _Frame | None:
        """The frame in a render with placeholders, or None where a placeholder is not found
        whole (the template changed it: it must be rendered each time)."""
        texts: list[str] = []
        places: list[tuple[str, int | None, bool, int | None]] = []
        at = 0
        for found in _PLACE.finditer(output):
            key, index, amp, indent = found.groups()
            block = key in _FRAME_LISTS
            if (
                block != bool(index)
                or block == (indent is None)
                or key not in _FRAME_VALUES | _FRAME_LISTS
            ):
                return None
            texts.append(output[at : found.start()])
            places.append(
                (
                    key,
                    int(index) if index else None,
                    amp == "&amp;",
                    len(indent) if indent is not None else None,
                )
            )
            at = found.end()
        texts.append(output[at:])
        if any("\x00" in text for text in texts):
            return None
        tidy = all(_UNTIDY.search(text) is None for text in texts) and not texts[-1].rstrip(
            "\n"
        ).endswith(" ")
        return _Frame(tuple(texts), tuple(places), tidy)

    def fill(
        self,
        context: dict[str, Any],
        indent: Callable[..., tuple[str, bool]],
        inserted: list[str] | None,
        *,
        check: bool = False,
    ) -> tuple[str, bool]:
        """The frame with this digest's values in their places, as the template puts them, and
        (when asked to `check`) whether that is tidy but for line breaks at its ends: then
        _tidy_text would only strip those (and end it with one).

        It is when the texts are (`tidy`: no whitespace but spaces and line breaks, no space
        before a line break or at the end, no three line breaks in a row) and so is every value
        put in (_tidy_value), each also without whitespace at its ends: a value cannot then
        join a text into a space before a line break, or into a run of line breaks."""
        out = [self.texts[0]]
        tidy = check and self.tidy
        for (key, index, escaped, width), text in zip(self.places, self.texts[1:], strict=True):
            value = context[key] if index is None else context[key][index]
            known: bool | None = None  # whether the value is tidy, when the cache says
            if width:  # through the template's indent filter, which notes what it gives
                value, known = indent(value, width)
                if inserted is not None:
                    inserted.append(value)
            if escaped:
                value, known = str(escape(value)), None
            if tidy:
                tidy = known if known is not None else _tidy_value(value)
            out.append(value)
            out.append(text)
        return "".join(out), tidy


_NOTED = "_digestbot_inserted"
"""The render's context variable where _noted puts what its filter gave (a list)."""


def _noted(func: Callable[..., Any]) -> Callable[..., Any]:
    """The filter `func`, its results also appended to the render's list under _NOTED (when the
    render has one): each render has its own context, so renders in two threads never mix."""

    @jinja2.pass_context
    @functools.wraps(func)
    def call(context: jinja2.runtime.Context, *args: Any, **kwargs: Any) -> Any:
        out = func(*args, **kwargs)
        noted = context.get(_NOTED)
        if noted is not None:
            noted.append(out)
        return out

    return call


def _is_template(name: str) -> bool:
    return name.endswith(".j2")


def _template_frame(tb: TracebackType | None, default: str) -> tuple[str, int | None]:
    """The template file and line where rendering failed: Jinja rewrites the traceback so that
    template frames carry the template's own file name and line number."""
    file, line = default, None
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if _is_template(name):
            file, line = name, tb.tb_lineno
        tb = tb.tb_next
    return file, line


_UNTIDY = re.compile(r"[^\S \n]| \n|\n\n\n")
"""What _tidy_text would change inside a text: whitespace but a space or a line break (a tab,
a no-break space, a line separator str.splitlines breaks at...), a space before a line break,
three line breaks in a row."""


def _tidy_value(value: str) -> bool:
    """Whether a value put into a frame leaves its text part tidy (_Frame.fill): not empty, no
    whitespace at its ends, nothing _UNTIDY finds."""
    return bool(value) and value == value.strip() and _UNTIDY.search(value) is None


def _indent_checked(*args: Any, **kwargs: Any) -> tuple[str, bool]:
    """Jinja's indent filter (a paper block in the text part), and _tidy_value of what it gives:
    the Renderer keeps both in one cache (a block is the same string in many digests)."""
    out: str = jinja2.filters.do_indent(*args, **kwargs)
    return out, _tidy_value(out)


def _tidy_text(text: str, *, tidy_inside: bool = False) -> str:
    """Strip trailing spaces and collapse three or more blank lines in the text part; it starts
    with no line break and ends with one. `tidy_inside`: the text is known to need nothing but
    that last step (_Frame.fill's check), which is then all that is done."""
    out = text
    if not tidy_inside:
        out = "\n".join(map(str.rstrip, text.splitlines()))
        while "\n\n\n" in out:  # str.replace is many times faster than re.sub here
            out = out.replace("\n\n\n", "\n\n")
    return out.strip("\n") + "\n"
