"""`digestbot check` warnings: queries that can never match with the configured sources, and a
`trending` section that none of a subscriber's sources can fill (only Hugging Face has upvotes).

A query is unmatchable when every way of satisfying it needs a term whose field no source of the
subscriber fills (sources.base.KIND_FIELDS), or a `source:` term naming none of its sources.
Only terms a match requires count: a term under NOT never stops a match, and an OR is fine as
long as one alternative can match (`category:cs.CL OR diffusion` gets no warning).
"""

from __future__ import annotations

from collections.abc import Sequence

from digestbot.matching import compile_filter
from digestbot.matching.query import Node, Term
from digestbot.matching.text import source_matches, words
from digestbot.sources.base import KIND_FIELDS, KINDS, UPVOTED_KINDS, SourceSpec
from digestbot.subscribers import Config, SubscriberSpec

__all__ = ["unmatchable"]

_WHAT = {"category": "categories", "keyword": "feed keywords", "author": "authors"}
"""How a warning names a field's data ("no configured source (hf) has categories")."""


def unmatchable(config: Config) -> list[str]:
    """One warning per subscriber query that no paper of the subscriber's sources can match, and
    one per subscriber whose `trending` no source of theirs can fill."""
    out: list[str] = []
    by_name = {sp.name: sp for sp in config.sources}
    for sub in config.subscribers:
        mine = tuple(by_name[n] for n in sub.sources) if sub.sources else config.sources
        if sub.trending and not any(sp.kind in UPVOTED_KINDS for sp in mine):
            names = ", ".join(sp.name for sp in mine)
            out.append(
                f"subscriber {sub.email}: trending = {sub.trending} can never add a paper: only "
                f"papers with upvotes trend, and none of their sources ({names}) has upvotes; "
                'add a kind = "hf" source'
            )
        for query in compile_filter(keywords=sub.keywords, authors=sub.authors).positive:
            blocked = _blocked(query.node, mine)
            if blocked:
                why = "; ".join(_reason(term, mine, config.sources, sub) for term in blocked)
                out.append(f"subscriber {sub.email}: query {query.text!r} can never match: {why}")
    return out


def _fills(term: Term, sources: Sequence[SourceSpec]) -> bool:
    """Whether some source could bring a paper with this term's field (or named by source:)."""
    field, items = term
    if field == "source":
        return any(source_matches(items, words(sp.name)) for sp in sources)
    if field == "any":
        return True  # a bare word looks in the title, which every kind has
    return any(field in KIND_FIELDS[sp.kind] for sp in sources)


def _blocked(node: Node, sources: Sequence[SourceSpec]) -> list[Term]:
    """The required terms that make `node` unmatchable with `sources`; empty when it can match."""
    kind = node[0]
    if kind == "T":
        return [] if _fills(node[1], sources) else [node[1]]
    if kind == "N":
        return []  # NOT of a field nobody fills is simply always true
    if kind == "A":
        out: list[Term] = []
        for child in node[1]:
            out += [t for t in _blocked(child, sources) if t not in out]
        return out
    # OR: unmatchable only when every alternative is
    found: list[Term] = []
    for child in node[1]:
        got = _blocked(child, sources)
        if not got:
            return []
        found += [t for t in got if t not in found]
    return found


def _reason(
    term: Term, mine: Sequence[SourceSpec], configured: Sequence[SourceSpec], sub: SubscriberSpec
) -> str:
    """Why one term cannot hold, and what to change."""
    field, items = term
    names = ", ".join(sp.name for sp in mine)
    if field == "source":
        spelled = "-".join(items)
        if sub.sources and _fills(term, configured):
            return f"source:{spelled} is not among the subscriber's sources ({names}); add it there"
        every = ", ".join(sp.name for sp in configured)
        return f"no configured source is named {spelled!r} (configured: {every})"
    what = _WHAT.get(field, f"{field}s")
    kinds = [k for k in KINDS if field in KIND_FIELDS[k]]
    others = [sp.name for sp in configured if field in KIND_FIELDS[sp.kind]]
    if sub.sources:
        fix = (
            f"add {' or '.join(others)} to the subscriber's sources"
            if others
            else f"add a source of kind {' or '.join(kinds)}"
        )
        return f"none of the subscriber's sources ({names}) has {what}; {fix}"
    return f"no configured source ({names}) has {what}; add a source of kind {' or '.join(kinds)}"
