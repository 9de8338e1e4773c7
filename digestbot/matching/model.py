"""Values of the matching package: what it needs of a paper, and what it says about a match."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class PaperDoc(Protocol):
    """What matching needs of a paper (a stored row satisfies it).

    Read-only members, so a row whose `authors` is a list satisfies `Sequence[str]` too.
    `sources` are the names of the sources that brought the paper (what `source:NAME` matches);
    `has_upvotes` says whether a source that counts upvotes (Hugging Face) brought it: a paper
    without upvotes is never held back by a `min_upvotes` floor.
    """

    @property
    def arxiv_id(self) -> str: ...
    @property
    def title(self) -> str: ...
    @property
    def summary(self) -> str: ...
    @property
    def authors(self) -> Sequence[str]: ...
    @property
    def ai_keywords(self) -> Sequence[str]: ...
    @property
    def categories(self) -> Sequence[str]: ...
    @property
    def upvotes(self) -> int: ...
    @property
    def sources(self) -> Sequence[str]: ...
    @property
    def has_upvotes(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Match:
    """Why one paper matched one subscriber: score, matched queries and words to highlight."""

    arxiv_id: str
    score: float
    upvotes: int
    matched: tuple[str, ...]
    title_spans: tuple[tuple[int, int], ...]
    summary_spans: tuple[tuple[int, int], ...]


def rank_key(m: Match) -> tuple[float, int, str]:
    """Ranking: score descending, then upvotes descending, then arXiv id."""
    return (-m.score, -m.upvotes, m.arxiv_id)


# BM25F-style scoring. Fields weigh differently: a title hit is worth more than an abstract hit.
K1 = 1.2
B = 0.75
FIELD_WEIGHT = {
    "title": 3.0,
    "keyword": 1.5,
    "abstract": 1.0,
    "author": 3.0,
    "category": 0.5,
    "source": 0.0,  # a filter, not relevance: where a paper came from says nothing of its topic
}
DEFAULT_FIELDS = ("title", "abstract", "keyword")
TEXT_FIELDS = ("title", "abstract", "keyword", "category")


def idf(n_docs: int, df: int) -> float:
    """BM25 inverse document frequency (always positive)."""
    return math.log(1.0 + (n_docs - df + 0.5) / (df + 0.5))


def field_score(field: str, tf: int, length: int, avg: float) -> float:
    """Saturated, length-normalized term frequency of one field, times the field's weight."""
    if not tf:
        return 0.0
    if field in ("author", "category", "source"):
        return FIELD_WEIGHT[field]
    norm = 1.0 - B + B * (length / avg if avg > 0 else 1.0)
    return FIELD_WEIGHT[field] * tf * (K1 + 1.0) / (tf + K1 * norm)


def merge_spans(spans: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Sorted, non-overlapping spans; spans that overlap or touch are joined."""
    if not spans:
        return ()
    spans.sort()
    out = [spans[0]]
    for s, e in spans[1:]:
        ps, pe = out[-1]
        if s <= pe:
            if e > pe:
                out[-1] = (ps, e)
        else:
            out.append((s, e))
    return tuple(out)
