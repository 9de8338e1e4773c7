"""Straightforward evaluation of one filter on one paper: the reference the bulk index must agree with.

It walks the query tree over the paper's token lists directly (no bitsets, no caches of results),
so `digestbot match` can explain any single paper and the tests can check PaperIndex against it.
Its score uses the paper alone as the corpus, so it ranks nothing; PaperIndex scores with the
statistics of the whole window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from digestbot.errors import QueryError

from .model import (
    DEFAULT_FIELDS,
    Match,
    PaperDoc,
    field_score,
    idf,
    merge_spans,
)
from .query import CompiledFilter, Node, Term, parse_query
from .text import Token, name_matches, source_matches, tokenize, words


@dataclass(frozen=True, slots=True)
class Analyzed:
    """A paper's fields as lists of token segments (a phrase never spans two segments)."""

    fields: dict[str, tuple[tuple[Token, ...], ...]]
    authors: tuple[tuple[str, ...], ...]
    sources: tuple[tuple[str, ...], ...] = ()
    """The normalized words of each source name."""


def analyze(title: str, summary: str, authors, ai_keywords, categories, sources=()) -> Analyzed:
    """Tokenize each field of a paper once."""
    return Analyzed(
        fields={
            "title": (tuple(tokenize(title or "")),),
            "abstract": (tuple(tokenize(summary or "")),),
            "keyword": tuple(tuple(tokenize(k)) for k in ai_keywords or ()),
            "category": tuple(tuple(tokenize(c)) for c in categories or ()),
        },
        authors=tuple(w for w in (words(a) for a in authors or ()) if w),
        sources=tuple(words(s) for s in sources or ()),
    )


@lru_cache(maxsize=2048)
def _analyze_cached(
    title: str, summary: str, authors: tuple, kws: tuple, cats: tuple, sources: tuple = ()
) -> Analyzed:
    return analyze(title, summary, authors, kws, cats, sources)


def _item_ok(item: str, tok: Token) -> bool:
    return tok.surface.startswith(item[:-1]) if item[-1] == "*" else tok.stem == item


def occurrences(seg: tuple[Token, ...], items: tuple[str, ...]) -> list[int]:
    """Start positions where the items appear as consecutive tokens of the segment."""
    k = len(items)
    out = []
    for i in range(len(seg) - k + 1):
        if all(_item_ok(items[j], seg[i + j]) for j in range(k)):
            out.append(i)
    return out


def _fields_of(field: str) -> tuple[str, ...]:
    return DEFAULT_FIELDS if field == "any" else (field,)


def term_holds(term: Term, a: Analyzed) -> bool:
    field, items = term
    if field == "author":
        return any(name_matches(items, name) for name in a.authors)
    if field == "source":
        return any(source_matches(items, name) for name in a.sources)
    return any(occurrences(seg, items) for f in _fields_of(field) for seg in a.fields[f])


def holds(node: Node, a: Analyzed) -> bool:
    """Boolean value of a query tree on one analyzed paper."""
    kind = node[0]
    if kind == "T":
        return term_holds(node[1], a)
    if kind == "N":
        return not holds(node[1], a)
    if kind == "A":
        return all(holds(c, a) for c in node[1])
    return any(holds(c, a) for c in node[1])


def satisfying_terms(node: Node, ok) -> list[Term] | None:
    """Positive terms that make a matching node true (None when the node is false).

    `ok(term)` says whether a term holds. AND contributes all of its children's terms, OR those of
    its true children, NOT nothing: these are the words worth highlighting.
    """
    kind = node[0]
    if kind == "T":
        return [node[1]] if ok(node[1]) else None
    if kind == "N":
        return None if satisfying_terms(node[1], ok) is not None else []
    if kind == "A":
        out: list[Term] = []
        for c in node[1]:
            got = satisfying_terms(c, ok)
            if got is None:
                return None
            out += got
        return out
    found = False
    out = []
    for c in node[1]:
        got = satisfying_terms(c, ok)
        if got is not None:
            found = True
            out += got
    return out if found else None


def explain(flt: CompiledFilter, paper: PaperDoc) -> Match | None:
    """Evaluate a compiled filter on one paper; the Match (with spans) or None."""
    if not flt.positive:
        return None
    upvotes = paper.upvotes or 0
    if paper.has_upvotes and upvotes < flt.min_upvotes:
        return None
    a = _analyze_cached(
        paper.title,
        paper.summary,
        tuple(paper.authors or ()),
        tuple(paper.ai_keywords or ()),
        tuple(paper.categories or ()),
        tuple(paper.sources or ()),
    )
    matched = [q for q in flt.positive if holds(q.node, a)]
    if not matched or any(holds(q.node, a) for q in flt.exclude):
        return None
    terms: list[Term] = []
    for q in matched:
        for t in satisfying_terms(q.node, lambda t: term_holds(t, a)) or ():
            if t not in terms:
                terms.append(t)
    score = 0.0
    tspans: list[tuple[int, int]] = []
    sspans: list[tuple[int, int]] = []
    one = idf(1, 1)
    for field, items in terms:
        k = len(items)
        if field in ("author", "source"):
            score += one * field_score(field, 1, 1, 1.0)
            continue
        for f in _fields_of(field):
            tf = 0
            for seg in a.fields[f]:
                occ = occurrences(seg, items)
                tf += len(occ)
                if f == "title":
                    tspans += [(seg[i].start, seg[i + k - 1].end) for i in occ]
                elif f == "abstract":
                    sspans += [(seg[i].start, seg[i + k - 1].end) for i in occ]
            n = sum(len(seg) for seg in a.fields[f])
            score += one * field_score(f, tf, n, float(n))
    return Match(
        paper.arxiv_id,
        score,
        upvotes,
        tuple(q.text for q in matched),
        merge_spans(tspans),
        merge_spans(sspans),
    )


Spans = tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class Evidence:
    """Where a paper's matched queries hold outside title and abstract, for showing the reason.

    (Title and abstract spans are in the Match itself.)
    """

    authors: tuple[int, ...]
    """Indices into the paper's ``authors`` that an ``author:`` term names."""
    keywords: tuple[tuple[int, Spans], ...]
    """(index into the paper's ``ai_keywords``, [start, end) spans in that keyword) for every
    feed keyword a matched query's term occurs in."""


def evidence(queries: Sequence[str], paper: PaperDoc) -> Evidence:
    """The authors and feed keywords that `queries` (a Match's ``matched`` texts) hit in `paper`:
    the union of each query's evidence (query_evidence).

    Only the terms that make each query true count (not its negated ones). A query text that no
    longer parses is skipped: evidence is shown, never required.
    """
    return merge_evidence([query_evidence(text, paper) for text in queries])


NO_EVIDENCE = Evidence((), ())


def query_evidence(text: str, paper: PaperDoc) -> Evidence:
    """The authors and feed keywords that one query `text` hits in `paper` (see evidence)."""
    try:
        node = parse_query(text).node
    except QueryError:
        return NO_EVIDENCE
    authors = tuple(paper.authors or ())
    a = _analyze_cached(
        paper.title,
        paper.summary,
        authors,
        tuple(paper.ai_keywords or ()),
        tuple(paper.categories or ()),
        tuple(paper.sources or ()),
    )
    names = [words(n) for n in authors]  # by the paper's author index (Analyzed drops blanks)
    hit_authors: set[int] = set()
    hit_keywords: dict[int, list[tuple[int, int]]] = {}
    for field, items in satisfying_terms(node, lambda t: term_holds(t, a)) or ():
        if field == "author":
            hit_authors.update(i for i, n in enumerate(names) if name_matches(items, n))
        elif field in ("keyword", "any"):
            k = len(items)
            for i, seg in enumerate(a.fields["keyword"]):
                for j in occurrences(seg, items):
                    hit_keywords.setdefault(i, []).append((seg[j].start, seg[j + k - 1].end))
    return _collected(hit_authors, hit_keywords)


def merge_evidence(parts: Sequence[Evidence]) -> Evidence:
    """One Evidence holding every author and keyword span of `parts`."""
    if len(parts) == 1:
        return parts[0]
    hit_authors: set[int] = set()
    hit_keywords: dict[int, list[tuple[int, int]]] = {}
    for part in parts:
        hit_authors.update(part.authors)
        for i, spans in part.keywords:
            hit_keywords.setdefault(i, []).extend(spans)
    return _collected(hit_authors, hit_keywords)


def _collected(authors: set[int], keywords: dict[int, list[tuple[int, int]]]) -> Evidence:
    """Evidence from the author indices and keyword spans found (spans sorted and joined)."""
    return Evidence(
        tuple(sorted(authors)),
        tuple((i, merge_spans(spans)) for i, spans in sorted(keywords.items())),
    )
