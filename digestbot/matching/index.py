"""Bulk evaluation: an inverted index of one window's papers, shared by every subscriber of a run.

Each term (stem, prefix or phrase, in a field) maps to a bitset over paper positions, held in a
Python int. A query is evaluated with &, | and ~ on those ints; phrase positions are checked only
on the papers that contain all of the phrase's words. Term bitsets, per-paper term scores and
finished Match values are cached in the index, since thousands of subscribers share words: each
cache is a functools.lru_cache (or functools.cache) made per index, so it lives for one run.
"""

from __future__ import annotations

import bisect
import contextlib
import gc
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from functools import cache, lru_cache
from operator import itemgetter
from typing import Generic, TypeVar

from .explain import satisfying_terms
from .model import (
    DEFAULT_FIELDS,
    Match,
    PaperDoc,
    field_score,
    idf,
    merge_spans,
)
from .query import CompiledFilter, Node, Query, Term
from .text import Token, name_matches, source_matches, tokenize, words

_CACHE_LIMIT = 400_000  # terms, (term, paper) scores and combined matches remembered per index
_ENTRY_LIMIT = 150_000  # query texts remembered per index (their ranked matches included)


class _Field:
    """Postings of one text field: stem -> bits, surface word -> bits, token lists per paper."""

    def __init__(self, docs: list[list[Token | None]]) -> None:
        self.docs = docs
        stems: dict[str, int] = {}
        surfs: dict[str, int] = {}
        self.lengths = []
        self.positions: list[dict[str, list[int]]] = []
        self.surface_positions: list[dict[str, list[int]]] = []
        for p, doc in enumerate(docs):
            bit = 1 << p
            n = 0
            pos: dict[str, list[int]] = {}
            spos: dict[str, list[int]] = {}
            for i, t in enumerate(doc):
                if t is None:
                    continue
                n += 1
                got = pos.get(t.stem)
                if got is None:
                    pos[t.stem] = [i]
                    stems[t.stem] = stems.get(t.stem, 0) | bit
                else:
                    got.append(i)
                got = spos.get(t.surface)
                if got is None:
                    spos[t.surface] = [i]
                    surfs[t.surface] = surfs.get(t.surface, 0) | bit
                else:
                    got.append(i)
            self.positions.append(pos)
            self.surface_positions.append(spos)
            self.lengths.append(n)
        self.stems = stems
        self.surfs = surfs
        self.sorted_surfs = sorted(surfs)
        self.avg = (sum(self.lengths) / len(docs)) if docs else 0.0
        # prefixes are few (those written in queries) and the field lives for one run
        self.words_with_prefix = cache(self._words_with_prefix)
        self.prefix_bits = cache(self._prefix_bits)

    def _words_with_prefix(self, prefix: str) -> list[str]:
        keys = self.sorted_surfs
        got = []
        i = bisect.bisect_left(keys, prefix)
        while i < len(keys) and keys[i].startswith(prefix):
            got.append(keys[i])
            i += 1
        return got

    def _prefix_bits(self, prefix: str) -> int:
        got = 0
        for w in self.words_with_prefix(prefix):
            got |= self.surfs[w]
        return got

    def item_bits(self, item: str) -> int:
        if item[-1] == "*":
            return self.prefix_bits(item[:-1])
        return self.stems.get(item, 0)

    def occurrences(self, p: int, items: tuple[str, ...]) -> list[int]:
        """Start positions of the items as consecutive tokens of paper p's field."""
        first = items[0]
        if first[-1] != "*":
            starts = self.positions[p].get(first)
            if not starts or len(items) == 1:
                return starts or []
            return _verify(self.docs[p], items, starts)
        spos = self.surface_positions[p]
        starts = sorted(i for w in self.words_with_prefix(first[:-1]) for i in spos.get(w, ()))
        if not starts or len(items) == 1:
            return starts
        return _verify(self.docs[p], items, starts)


def _verify(doc: list[Token | None], items: tuple[str, ...], starts: Iterable[int]) -> list[int]:
    k = len(items)
    n = len(doc)
    out = []
    for i in starts:
        if i + k > n:
            break
        for j in range(k):
            t = doc[i + j]
            item = items[j]
            if t is None:
                break
            if item[-1] == "*":
                if not t.surface.startswith(item[:-1]):
                    break
            elif t.stem != item:
                break
        else:
            out.append(i)
    return out


def _flat(parts: Iterable[str]) -> list[Token | None]:
    out: list[Token | None] = []
    for part in parts:
        if out:
            out.append(None)  # phrases never cross from one keyword (or category) to the next
        out.extend(tokenize(part))
    return out


class PaperIndex:
    """An index of one window's papers; `match` evaluates a compiled filter against all of them."""

    def __init__(self, papers: list[PaperDoc]) -> None:
        """Use PaperIndex.build."""
        # positions follow the tie-break order (upvotes desc, arXiv id), so sorting matches by
        # (-score, position) ranks them exactly as rank_key does
        papers = sorted(papers, key=lambda p: (-(p.upvotes or 0), p.arxiv_id))
        self.papers = papers
        self.n = len(papers)
        self.all = (1 << self.n) - 1
        self.upvotes = [p.upvotes or 0 for p in papers]
        self.rated = [p.has_upvotes for p in papers]
        self.arxiv_ids = [p.arxiv_id for p in papers]
        self.fields = {
            "title": _Field([list(tokenize(p.title or "")) for p in papers]),
            "abstract": _Field([list(tokenize(p.summary or "")) for p in papers]),
            "keyword": _Field([_flat(p.ai_keywords or ()) for p in papers]),
            "category": _Field([_flat(p.categories or ()) for p in papers]),
        }
        self.authors: list[tuple[tuple[str, ...], ...]] = []
        last: dict[str, int] = {}
        for i, p in enumerate(papers):
            names = tuple(w for w in (words(a) for a in p.authors or ()) if w)
            self.authors.append(names)
            for name in names:
                last[name[-1]] = last.get(name[-1], 0) | (1 << i)
        self.author_last = last
        self.author_last_sorted = sorted(last)
        # source names are few: each one's normalized words -> the papers it brought
        by_source: dict[tuple[str, ...], int] = {}
        for i, p in enumerate(papers):
            for source in p.sources:
                name = words(source)
                by_source[name] = by_source.get(name, 0) | (1 << i)
        self.by_source = by_source
        # per-index caches, so they last one run; lru_cache bounds those that grow with queries
        self.term_bits = lru_cache(maxsize=_CACHE_LIMIT)(self._term_bits)
        self._hit = lru_cache(maxsize=_CACHE_LIMIT)(self._term_hit)
        self._upvote_mask = cache(self._upvote_mask_of)
        self._entries = _Records(_Entry, _ENTRY_LIMIT)  # query text -> _Entry
        self._combined = _Records(_Combined, _CACHE_LIMIT)  # (position, matched) -> _Combined

    @classmethod
    def build(cls, papers: Iterable[PaperDoc]) -> PaperIndex:
        """Tokenize and index a window's papers (a few ms per hundred papers)."""
        return cls(list(papers))

    def __len__(self) -> int:
        return self.n

    # ------------------------------------------------------------------ term bitsets

    def _term_bits(self, term: Term) -> int:
        """Bitset of the papers where one term occurs (cached as term_bits)."""
        field, items = term
        if field == "author":
            return self._author_bits(items)
        if field == "source":
            bits = 0
            for name, got in self.by_source.items():
                if source_matches(items, name):
                    bits |= got
            return bits
        names = DEFAULT_FIELDS if field == "any" else (field,)
        fields = [self.fields[f] for f in names]
        if len(items) == 1:
            bits = 0
            for fi in fields:
                bits |= fi.item_bits(items[0])
            return bits
        cand = self.all
        for item in items:
            b = 0
            for fi in fields:
                b |= fi.item_bits(item)
            cand &= b
            if not cand:
                return 0
        bits = 0
        for p in _positions(cand):
            if any(fi.occurrences(p, items) for fi in fields):
                bits |= 1 << p
        return bits

    def _author_bits(self, items: tuple[str, ...]) -> int:
        last = items[-1]
        if last[-1] == "*":
            keys = self.author_last_sorted
            pfx = last[:-1]
            cand = 0
            i = bisect.bisect_left(keys, pfx)
            while i < len(keys) and keys[i].startswith(pfx):
                cand |= self.author_last[keys[i]]
                i += 1
        else:
            cand = self.author_last.get(last, 0)
        bits = 0
        for p in _positions(cand):
            if any(name_matches(items, name) for name in self.authors[p]):
                bits |= 1 << p
        return bits

    def eval(self, node: Node) -> int:
        """Bitset of the papers a query tree matches."""
        kind = node[0]
        if kind == "T":
            return self.term_bits(node[1])
        if kind == "A":
            bits = self.all
            for c in node[1]:
                if c[0] == "N":
                    bits &= ~self.eval(c[1])
                else:
                    bits &= self.eval(c)
                if not bits:
                    return 0
            return bits
        if kind == "O":
            bits = 0
            for c in node[1]:
                bits |= self.eval(c)
            return bits
        return self.all ^ self.eval(node[1])

    def _upvote_mask_of(self, threshold: int) -> int:
        got = 0
        for i, u in enumerate(self.upvotes):
            if u >= threshold or not self.rated[i]:
                got |= 1 << i
        return got

    # ------------------------------------------------------------------ scores and spans

    def _term_hit(self, term: Term, p: int) -> _Hit:
        """(score, title spans, summary spans) of one term in one paper (cached as _hit)."""
        field, items = term
        w = idf(self.n, self.term_bits(term).bit_count())
        tspans: list[tuple[int, int]] = []
        sspans: list[tuple[int, int]] = []
        if field in ("author", "source"):
            score = w * field_score(field, 1, 1, 1.0)
        else:
            score = 0.0
            k = len(items)
            for f in DEFAULT_FIELDS if field == "any" else (field,):
                fi = self.fields[f]
                doc = fi.docs[p]
                occ = fi.occurrences(p, items)
                spans = []
                for i in occ:
                    first, last = doc[i], doc[i + k - 1]
                    assert first is not None and last is not None  # a phrase never spans a break
                    spans.append((first.start, last.end))
                if f == "title":
                    tspans = spans
                elif f == "abstract":
                    sspans = spans
                score += w * field_score(f, len(occ), fi.lengths[p], fi.avg)
        return score, merge_spans(tspans), merge_spans(sspans)

    def _terms_at(self, q: Query, low: int) -> Sequence[Term]:
        if q.terms is not None:
            return q.terms
        return satisfying_terms(q.node, lambda t: bool(self.term_bits(t) & low)) or []

    def _build_match(
        self, p: int, low: int, queries: Sequence[Query], matched: tuple[str, ...]
    ) -> Match:
        terms: list[Term] = []
        for q in queries:
            for t in self._terms_at(q, low):
                if t not in terms:
                    terms.append(t)
        score = 0.0
        ts: list[tuple[int, int]] = []
        ss: list[tuple[int, int]] = []
        for t in terms:
            s, a, b = self._hit(t, p)
            score += s
            ts += a
            ss += b
        return Match(
            self.arxiv_ids[p],
            score,
            self.upvotes[p],
            matched,
            merge_spans(ts),
            merge_spans(ss),
        )

    def _rank(self, q: Query, e: _Entry) -> tuple[dict[int, _Ranked], list[Match]]:
        """Fill the entry of one query: its Matches by paper position and in rank order."""
        matched = (q.text,)
        by_p = {}
        if q.terms is not None and len(q.terms) == 1:  # most queries: one word, phrase or prefix
            term = q.terms[0]
            for p in _positions(e.bits):
                score, tspans, sspans = self._hit(term, p)
                m = Match(self.arxiv_ids[p], score, self.upvotes[p], matched, tspans, sspans)
                by_p[p] = (-score, p, m)
        else:
            for p in _positions(e.bits):
                m = self._build_match(p, 1 << p, (q,), matched)
                by_p[p] = (-m.score, p, m)
        e.by_p = by_p
        e.ranked = list(map(_third, sorted(by_p.values())))
        return e.by_p, e.ranked

    # ------------------------------------------------------------------ the public entry

    def match(self, flt: CompiledFilter) -> list[Match]:
        """Every paper the filter selects, ranked by score, then upvotes, then arXiv id."""
        entry = self._entries.get
        hits: list[tuple[Query, _Entry]] = []
        total = multi = 0
        for q in flt.positive:
            e = entry(q.text)
            if e.bits < 0:
                e.bits = self.eval(q.node)
            b = e.bits
            if b:
                hits.append((q, e))
                multi |= total & b
                total |= b
        if not total:
            return []
        keep = total
        if flt.min_upvotes > 0:
            keep &= self._upvote_mask(flt.min_upvotes)
        for q in flt.exclude:
            if not keep:
                return []
            e = entry(q.text)
            if e.bits < 0:
                e.bits = self.eval(q.node)
            keep &= ~e.bits
        if not keep:
            return []
        if len(hits) == 1 and keep == total:
            q, e = hits[0]
            return list(e.ranked if e.ranked is not None else self._rank(q, e)[1])
        # all candidates by position, then drop what exclude/min_upvotes removed and
        # replace papers that several queries matched by one combined Match
        d: dict[int, _Ranked] = {}
        for q, e in hits:
            d.update(e.by_p if e.by_p is not None else self._rank(q, e)[0])
        removed = total & ~keep
        if removed:
            if removed.bit_count() > keep.bit_count():
                d = {p: d[p] for p in _positions(keep)}
            else:
                for p in _positions(removed):
                    del d[p]
        multi &= keep
        for p in _positions(multi):
            low = 1 << p
            queries = [q for q, e in hits if e.bits & low]
            matched = tuple(q.text for q in queries)
            c = self._combined.get((p, matched))
            if c.match is None:
                c.match = self._build_match(p, low, queries, matched)
            d[p] = (-c.match.score, p, c.match)
        return list(map(_third, sorted(d.values())))


_Hit = tuple[float, tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]]
_Ranked = tuple[float, int, Match]  # (-score, position, match): sorts in rank order
_third = itemgetter(2)


@contextlib.contextmanager
def bulk_matching() -> Iterator[None]:
    """Pause the cyclic garbage collector while matching many subscribers.

    Bulk matching allocates millions of small acyclic objects (matches, tuples); each allocation
    burst makes the collector rescan every live object, index caches included, which costs more
    than the matching itself. Reference counting still frees everything; cycles made meanwhile
    are collected when the block ends.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _positions(bits: int) -> list[int]:
    """Positions of the set bits of a (sparse) bitset, ascending."""
    out = []
    while bits:
        low = bits & -bits
        bits ^= low
        out.append(low.bit_length() - 1)
    return out


R = TypeVar("R")


class _Records(Generic[R]):
    """A bounded map from a key to a mutable record, made empty on first use and filled by the
    caller; the least recently used records are dropped (functools.lru_cache does the keeping)."""

    def __init__(self, record: Callable[[], R], maxsize: int) -> None:
        self.get: Callable[[Hashable], R] = lru_cache(maxsize=maxsize)(lambda key: record())


class _Entry:
    """What the index knows about one query text: its bitset, and lazily its ranked matches."""

    __slots__ = ("bits", "by_p", "ranked")

    def __init__(self) -> None:
        self.bits = -1  # not evaluated yet
        self.by_p: dict[int, _Ranked] | None = None
        self.ranked: list[Match] | None = None


class _Combined:
    """The Match of one paper that several of a subscriber's queries matched."""

    __slots__ = ("match",)

    def __init__(self) -> None:
        self.match: Match | None = None
