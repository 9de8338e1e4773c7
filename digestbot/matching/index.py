"""Bulk evaluation: an inverted index of one window's papers, shared by every subscriber of a run.

Each term (stem, prefix or phrase, in a field) maps to a bitset over paper positions, held in a
Python int. A query is evaluated with &, | and ~ on those ints; phrase positions are checked only
on the papers that contain all of the phrase's words. Term bitsets, per-paper term scores and
finished Match values are cached in the index, since thousands of subscribers share words.
"""

from __future__ import annotations

import bisect
import contextlib
import gc
from collections.abc import Iterable, Iterator
from operator import itemgetter

from .explain import satisfying_terms
from .model import (
    DEFAULT_FIELDS,
    Match,
    PaperDoc,
    field_score,
    idf,
    merge_spans,
    new_match,
)
from .query import CompiledFilter, Node, Query, Term
from .text import Token, name_matches, tokenize, words

_CACHE_LIMIT = 400_000
_ENTRY_LIMIT = 150_000  # query texts remembered per index (their ranked matches included)


class _Field:
    """Postings of one text field: stem -> bits, surface word -> bits, token lists per paper."""

    __slots__ = (
        "avg",
        "docs",
        "lengths",
        "positions",
        "prefix_words",
        "prefixes",
        "sorted_surfs",
        "stems",
        "surface_positions",
        "surfs",
    )

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
        self.sorted_surfs: list[str] | None = None
        self.avg = (sum(self.lengths) / len(docs)) if docs else 0.0
        self.prefixes: dict[str, int] = {}
        self.prefix_words: dict[str, list[str]] = {}

    def words_with_prefix(self, prefix: str) -> list[str]:
        got = self.prefix_words.get(prefix)
        if got is None:
            if self.sorted_surfs is None:
                self.sorted_surfs = sorted(self.surfs)
            keys = self.sorted_surfs
            got = []
            i = bisect.bisect_left(keys, prefix)
            while i < len(keys) and keys[i].startswith(prefix):
                got.append(keys[i])
                i += 1
            self.prefix_words[prefix] = got
        return got

    def prefix_bits(self, prefix: str) -> int:
        got = self.prefixes.get(prefix)
        if got is None:
            got = 0
            for w in self.words_with_prefix(prefix):
                got |= self.surfs[w]
            self.prefixes[prefix] = got
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
        self._bits: dict[Term, int] = {}
        self._hits: dict[Term, dict[int, tuple[float, tuple, tuple]]] = {}
        self._matches: dict[tuple[int, tuple[str, ...]], Match] = {}
        self._upvote_masks: dict[int, int] = {}
        self._entries: dict[str, _Entry] = {}

    @classmethod
    def build(cls, papers: Iterable[PaperDoc]) -> PaperIndex:
        """Tokenize and index a window's papers (a few ms per hundred papers)."""
        return cls(list(papers))

    def __len__(self) -> int:
        return self.n

    # ------------------------------------------------------------------ term bitsets

    def term_bits(self, term: Term) -> int:
        """Bitset of the papers where one term occurs (cached)."""
        got = self._bits.get(term, -1)
        if got < 0:
            got = self._compute_bits(term)
            if len(self._bits) > _CACHE_LIMIT:
                self._bits.clear()
            self._bits[term] = got
        return got

    def _compute_bits(self, term: Term) -> int:
        field, items = term
        if field == "author":
            return self._author_bits(items)
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
        while cand:
            low = cand & -cand
            cand ^= low
            p = low.bit_length() - 1
            if any(fi.occurrences(p, items) for fi in fields):
                bits |= low
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
        while cand:
            low = cand & -cand
            cand ^= low
            p = low.bit_length() - 1
            if any(name_matches(items, name) for name in self.authors[p]):
                bits |= low
        return bits

    def eval(self, node: Node) -> int:
        """Bitset of the papers a query tree matches."""
        kind = node[0]
        if kind == "T":
            got = self._bits.get(node[1], -1)
            return got if got >= 0 else self.term_bits(node[1])
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

    def _upvote_mask(self, threshold: int) -> int:
        got = self._upvote_masks.get(threshold)
        if got is None:
            got = 0
            for i, u in enumerate(self.upvotes):
                if u >= threshold:
                    got |= 1 << i
            self._upvote_masks[threshold] = got
        return got

    # ------------------------------------------------------------------ scores and spans

    def _term_hits(self, term: Term) -> dict[int, tuple[float, tuple, tuple]]:
        got = self._hits.get(term)
        if got is None:
            if len(self._hits) > _CACHE_LIMIT // 10:
                self._hits.clear()
            got = self._hits[term] = {}
        return got

    def _hit(self, term: Term, p: int) -> tuple[float, tuple, tuple]:
        """(score, title spans, summary spans) of one term in one paper (cached)."""
        hits = self._term_hits(term)
        got = hits.get(p)
        if got is not None:
            return got
        field, items = term
        w = idf(self.n, self.term_bits(term).bit_count())
        tspans: list[tuple[int, int]] = []
        sspans: list[tuple[int, int]] = []
        if field == "author":
            score = w * field_score("author", 1, 1, 1.0)
        else:
            score = 0.0
            k = len(items)
            for f in DEFAULT_FIELDS if field == "any" else (field,):
                fi = self.fields[f]
                doc = fi.docs[p]
                occ = fi.occurrences(p, items)
                if f == "title":
                    tspans = [(doc[i].start, doc[i + k - 1].end) for i in occ]  # type: ignore[union-attr]
                elif f == "abstract":
                    sspans = [(doc[i].start, doc[i + k - 1].end) for i in occ]  # type: ignore[union-attr]
                score += w * field_score(f, len(occ), fi.lengths[p], fi.avg)
        got = hits[p] = (score, merge_spans(tspans), merge_spans(sspans))
        return got

    def _terms_at(self, q: Query, low: int) -> tuple[Term, ...] | list[Term]:
        if q.terms is not None:
            return q.terms
        return satisfying_terms(q.node, lambda t: bool(self.term_bits(t) & low)) or []

    def _build_match(
        self, p: int, low: int, queries: list[Query], matched: tuple[str, ...]
    ) -> Match:
        if len(queries) == 1:
            terms = self._terms_at(queries[0], low)
        else:
            terms = []
            for q in queries:
                for t in self._terms_at(q, low):
                    if t not in terms:
                        terms.append(t)
        if len(terms) == 1:
            score, tspans, sspans = self._hit(terms[0], p)
        else:
            score = 0.0
            ts: list[tuple[int, int]] = []
            ss: list[tuple[int, int]] = []
            for t in terms:
                s, a, b = self._hit(t, p)
                score += s
                ts += a
                ss += b
            tspans, sspans = merge_spans(ts), merge_spans(ss)
        return new_match(self.arxiv_ids[p], score, self.upvotes[p], matched, tspans, sspans)

    def _entry(self, q: Query) -> _Entry:
        e = _Entry(self.eval(q.node))
        if len(self._entries) > _ENTRY_LIMIT:
            self._entries.clear()
        self._entries[q.text] = e
        return e

    def _ranked(self, q: Query, e: _Entry) -> dict[int, tuple[float, int, Match]]:
        """Fill the entry of one query: its Matches by paper position and in rank order."""
        bits = e.bits
        matched = (q.text,)
        by_p = {}
        terms = q.terms
        if terms is not None and len(terms) == 1:  # most queries: one word, phrase or prefix
            term = terms[0]
            th = self._term_hits(term)
            aids, ups = self.arxiv_ids, self.upvotes
            while bits:
                low = bits & -bits
                bits ^= low
                p = low.bit_length() - 1
                h = th.get(p) or self._hit(term, p)
                by_p[p] = (-h[0], p, new_match(aids[p], h[0], ups[p], matched, h[1], h[2]))
        else:
            while bits:
                low = bits & -bits
                bits ^= low
                p = low.bit_length() - 1
                m = self._build_match(p, low, [q], matched)
                by_p[p] = (-m.score, p, m)
        e.by_p = by_p
        e.ranked = list(map(_third, sorted(by_p.values())))
        return by_p

    # ------------------------------------------------------------------ the public entry

    def match(self, flt: CompiledFilter) -> list[Match]:
        """Every paper the filter selects, ranked by score, then upvotes, then arXiv id."""
        entries = self._entries
        hits: list[tuple[Query, _Entry]] = []
        total = multi = 0
        for q in flt.positive:
            e = entries.get(q.text) or self._entry(q)
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
            keep &= ~(entries.get(q.text) or self._entry(q)).bits
        if not keep:
            return []
        if len(hits) == 1 and keep == total:
            q, e = hits[0]
            if e.ranked is None:
                self._ranked(q, e)
            return e.ranked.copy()  # type: ignore[union-attr]
        # all candidates by position, then drop what exclude/min_upvotes removed and
        # replace papers that several queries matched by one combined Match
        d: dict[int, tuple[float, int, Match]] = {}
        for q, e in hits:
            d.update(e.by_p or self._ranked(q, e))
        removed = total & ~keep
        if removed:
            if removed.bit_count() > keep.bit_count():
                d = {p: d[p] for p in _positions(keep)}
            else:
                for p in _positions(removed):
                    del d[p]
        multi &= keep
        if multi:
            cache = self._matches
            for p in _positions(multi):
                low = 1 << p
                queries = [q for q, e in hits if e.bits & low]
                matched = tuple(q.text for q in queries)
                key = (p, matched)
                m = cache.get(key)
                if m is None:
                    m = self._build_match(p, low, queries, matched)
                    if len(cache) > _CACHE_LIMIT:
                        cache.clear()
                    cache[key] = m
                d[p] = (-m.score, p, m)
        return list(map(_third, sorted(d.values())))


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


class _Entry:
    """What the index knows about one query text: its bitset, and lazily its ranked matches."""

    __slots__ = ("bits", "by_p", "ranked")

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.by_p: dict[int, tuple[float, int, Match]] | None = None
        self.ranked: list[Match] | None = None
