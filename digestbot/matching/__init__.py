"""Subscriber filters: a small query language, compiled once, evaluated in bulk over a window's papers.

    flt = compile_filter(keywords=['"speculative decoding"', "diffus* -video"], authors=["Christopher Ré"])
    index = PaperIndex.build(papers)
    for m in index.match(flt): ...      # ranked Match values with matched queries and highlight spans
    explain(flt, paper)                 # the same answer for one paper, evaluated directly
    evidence(m.matched, paper)          # the authors and feed keywords behind a Match
    merge_evidence([query_evidence(q, paper) for q in m.matched])   # the same, query by query

Pure: no database, HTTP, SMTP or settings imports.
"""

from digestbot.errors import QueryError

from .explain import Evidence, evidence, explain, merge_evidence, query_evidence
from .index import PaperIndex, bulk_matching
from .model import Match, PaperDoc, rank_key
from .query import CompiledFilter, Query, compile_filter, parse_query
from .text import normalize

__all__ = [
    "CompiledFilter",
    "Evidence",
    "Match",
    "PaperDoc",
    "PaperIndex",
    "Query",
    "QueryError",
    "bulk_matching",
    "compile_filter",
    "evidence",
    "explain",
    "merge_evidence",
    "normalize",
    "parse_query",
    "query_evidence",
    "rank_key",
]
