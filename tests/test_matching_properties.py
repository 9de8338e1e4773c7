"""Property tests of matching: the parser only raises QueryError, normalize is idempotent, and the
bulk index gives exactly what evaluating each filter on each paper alone gives."""

from __future__ import annotations

from dataclasses import replace
from random import Random

from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from digestbot.errors import QueryError
from digestbot.matching import (
    PaperIndex,
    compile_filter,
    evidence,
    explain,
    normalize,
    parse_query,
)
from tests.helpers import Paper, papers

SYNTAX = " ()\"-*:ANDORNOTtitleabstractauthorkeywordcategory\\$_{}'.,éß"

# words that occur in the fixture papers, in several spellings, so random queries do match
VOCAB = [
    "diffusion",
    "Diffusion",
    "sampling",
    "language",
    "models",
    "LLMs",
    "LLM",
    "speculative",
    "decoding",
    "bandit",
    "bandits",
    "RL",
    "test-time",
    "compute",
    "video",
    "transformers",
    "reasoning",
    "learning",
    "optimal",
    "transport",
    "zero-shot",
    "scaling",
    "inference",
    "and",
    "or",
    "not",
    "Ré",
    "Données",
    "alpha",
    "the",
    "of",
    "text",
    "generation",
    "multi-draft",
    "cross-entropy",
    "perplexity",
    "training",
    "data",
    "large",
    "code",
    "Straße",
]
NAMES = [
    "Sabharwal",
    "Christopher Re",
    "Wang",
    "Y. Wang",
    "Lav Varshney",
    "Zoë Ångström",
    "Hatfield-Dodds",
]
FIELDS = ["title:", "abstract:", "keyword:", "category:", "author:"]
SOURCES = ["hf", "arxiv-ml", "arxiv-cv", "biorxiv-neuro"]


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(), st.text(alphabet=SYNTAX, max_size=40)))
def test_parse_query_raises_only_query_errors(text: str) -> None:
    """parse_query on any text either returns a query or raises QueryError with a column."""
    try:
        q = parse_query(text)
    except QueryError as err:
        assert err.column is None or 1 <= err.column <= len(text) + 1
    else:
        assert q.text == text


@settings(max_examples=400, deadline=None)
@given(st.text())
def test_normalize_is_idempotent(text: str) -> None:
    """normalize(normalize(x)) == normalize(x) for any text."""
    once = normalize(text)
    assert normalize(once) == once


def _term() -> st.SearchStrategy[str]:
    word = st.sampled_from(VOCAB)
    prefix = word.map(lambda w: w[: max(2, len(w) - 3)] + "*")
    phrase = st.lists(word, min_size=1, max_size=3).map(lambda ws: '"' + " ".join(ws) + '"')
    author = st.sampled_from(NAMES).map(lambda n: f'author:"{n}"' if " " in n else f"author:{n}")
    base = st.one_of(word, word, prefix, phrase)
    fielded = st.tuples(st.sampled_from(FIELDS[:4]), base).map("".join)
    category = st.sampled_from(["category:cs.LG", "category:cs.CL", "category:stat.ML"])
    source = st.sampled_from(
        [
            "source:hf",
            "source:arxiv-ml",
            "source:ARXIV-CV",
            "source:arxiv*",
            'source:"biorxiv neuro"',
        ]
    )
    return st.one_of(base, base, fielded, author, category, source)


def _query() -> st.SearchStrategy[str]:
    def extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        return st.one_of(
            st.tuples(inner, inner).map(" ".join),
            st.tuples(inner, inner).map(" AND ".join),
            st.tuples(inner, inner).map(" OR ".join),
            st.tuples(inner, inner).map(lambda t: f"{t[0]} NOT {t[1]}"),
            st.tuples(inner, inner).map(lambda t: f"{t[0]} -{t[1]}"),
            inner.map(lambda q: f"({q})"),
        )

    return st.recursive(_term(), extend, max_leaves=5)


def _paper() -> st.SearchStrategy[Paper]:
    """A made-up paper whose text mixes the vocabulary with hyphens, LaTeX, accents and punctuation."""
    sep = st.sampled_from(
        [" ", " ", "-", ", ", ": ", " $\\alpha$ ", " \\textbf{", "} ", "'s ", " (", ") "]
    )
    text = st.lists(st.tuples(st.sampled_from(VOCAB), sep), min_size=1, max_size=25).map(
        lambda pairs: "".join(w + s for w, s in pairs)
    )
    return st.builds(
        Paper,
        arxiv_id=st.integers(0, 10**5).map(lambda i: f"9902.{i:05d}"),
        title=text,
        summary=text,
        authors=st.lists(st.sampled_from(NAMES + ["Ashish Sabharwal", "Yue Wang"]), max_size=3).map(
            tuple
        ),
        ai_keywords=st.lists(text, max_size=2).map(tuple),
        categories=st.lists(st.sampled_from(["cs.LG", "cs.CL", "stat.ML"]), max_size=2).map(tuple),
        upvotes=st.integers(0, 20),
        sources=st.lists(st.sampled_from(SOURCES), max_size=2, unique=True).map(tuple),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    keywords=st.lists(_query(), min_size=0, max_size=4),
    exclude=st.lists(_query(), max_size=2),
    authors=st.lists(st.sampled_from(NAMES), max_size=2),
    min_upvotes=st.integers(0, 12),
    real=st.lists(st.integers(0, 10**6), min_size=0, max_size=25),
    made_up=st.lists(_paper(), max_size=4, unique_by=lambda p: p.arxiv_id),
)
def test_bulk_match_equals_explain_on_each_paper(
    keywords: list[str],
    exclude: list[str],
    authors: list[str],
    min_upvotes: int,
    real: list[int],
    made_up: list[Paper],
) -> None:
    """PaperIndex.match returns exactly the papers explain() accepts, with the same matched and spans."""
    try:
        flt = compile_filter(
            keywords=keywords, exclude=exclude, authors=authors, min_upvotes=min_upvotes
        )
    except QueryError:
        assume(False)  # e.g. a query of negated terms only
        return
    pool = [replace(p, sources=(SOURCES[i % len(SOURCES)],)) for i, p in enumerate(papers())]
    chosen = {pool[i % len(pool)].arxiv_id: pool[i % len(pool)] for i in real}
    docs = list(chosen.values()) + made_up
    got = PaperIndex.build(docs).match(flt)
    event(f"{min(len(got), 3)}+ matches" if len(got) >= 3 else f"{len(got)} matches")
    one = {p.arxiv_id: m for p in docs if (m := explain(flt, p)) is not None}
    assert {m.arxiv_id for m in got} == set(one)
    for m in got:
        e = one[m.arxiv_id]
        assert (m.matched, m.title_spans, m.summary_spans, m.upvotes) == (
            e.matched,
            e.title_spans,
            e.summary_spans,
            e.upvotes,
        )
    ranks = [(-m.score, -m.upvotes, m.arxiv_id) for m in got]
    assert ranks == sorted(ranks)


def _token_soup() -> st.SearchStrategy[str]:
    """Queries written as sequences of words, phrases, operators, brackets and dashes, lone or glued."""
    word = st.sampled_from(VOCAB)
    phrase = st.lists(word, min_size=1, max_size=2).map(lambda ws: '"' + " ".join(ws) + '"')
    piece = st.one_of(
        word,
        phrase,
        st.sampled_from(["-", "-", "--", "NOT", "AND", "OR", "(", ")", "title:", "author:"]),
        st.tuples(
            st.sampled_from(["-", "--", "title:", "-title:", "("]), st.one_of(word, phrase)
        ).map("".join),
    )
    sep = st.sampled_from([" ", " ", " ", "  ", ""])
    return st.lists(st.tuples(piece, sep), min_size=1, max_size=8).map(
        lambda pairs: "".join(p + s for p, s in pairs).strip()
    )


QUERIES = st.one_of(_token_soup(), _query(), st.text(alphabet=SYNTAX, max_size=40))


def _parsed(text: str) -> tuple[object, object] | None:
    """(tree, static terms) of a query, or None when it does not parse."""
    try:
        q = parse_query(text)
    except QueryError:
        return None
    return q.node, q.terms


@settings(max_examples=600, deadline=None)
@given(QUERIES)
def test_brackets_never_change_a_query(text: str) -> None:
    """A query that parses means exactly the same inside brackets: the parser has one meaning."""
    got = _parsed(text)
    assume(got is not None)
    event("parses")
    assert _parsed(f"({text})") == got


@settings(max_examples=600, deadline=None)
@given(QUERIES, st.data())
def test_a_lone_dash_is_ignored(text: str, data: st.DataObject) -> None:
    """Writing ' - ' where a query has a space never changes what it parses to, nor whether it does."""
    spaces = [i for i, c in enumerate(text) if c == " "]
    assume(spaces)
    i = data.draw(st.sampled_from(spaces))
    assert _parsed(text[:i] + " - " + text[i + 1 :]) == _parsed(text)


_SOURCE_NAME = st.lists(
    st.text(alphabet="abxyz019", min_size=1, max_size=3), min_size=1, max_size=3
).map("-".join)


@settings(max_examples=150, deadline=None)
@given(
    name=_SOURCE_NAME,
    brought=st.lists(st.lists(_SOURCE_NAME, max_size=3, unique=True), min_size=1, max_size=6),
    upper=st.booleans(),
)
def test_a_source_query_matches_exactly_the_papers_of_that_name(
    name: str, brought: list[list[str]], upper: bool
) -> None:
    """`source:NAME` (any case) matches a paper exactly when NAME is among the sources that brought it."""
    docs = [
        Paper(f"9903.{i:05d}", "t", "s", sources=tuple(names)) for i, names in enumerate(brought)
    ]
    flt = compile_filter(keywords=[f"source:{name.upper() if upper else name}"])
    expected = {p.arxiv_id for p in docs if name in p.sources}
    assert {m.arxiv_id for m in PaperIndex.build(docs).match(flt)} == expected
    assert {p.arxiv_id for p in docs if explain(flt, p)} == expected


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(QUERIES, min_size=1, max_size=4), _paper(), st.randoms(use_true_random=False))
def test_evidence_of_several_queries_is_the_union_of_each_querys(
    queries: list[str], paper: Paper, rng: Random
) -> None:
    """What a digest shows as the reason for a paper does not depend on the order of the matched
    queries, and is exactly what each query shows on its own, put together (delivery looks each
    query up once per paper and merges)."""
    whole = evidence(queries, paper)
    shuffled = list(queries)
    rng.shuffle(shuffled)
    assert evidence(shuffled + queries, paper) == whole
    singles = [evidence([q], paper) for q in queries]
    assert set(whole.authors) == {a for one in singles for a in one.authors}
    assert {i for i, _ in whole.keywords} == {i for one in singles for i, _ in one.keywords}
    covered = dict(whole.keywords)
    for one in singles:
        for i, spans in one.keywords:
            for start, end in spans:
                assert any(s <= start and end <= e for s, e in covered[i]), (i, start, end)
