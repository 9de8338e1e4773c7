"""The filter language over the real fixture papers: syntax, fields, normalization, errors, ranking."""

from __future__ import annotations

from dataclasses import replace
from functools import cache

import pytest

from digestbot.errors import ConfigError, QueryError
from digestbot.matching import (
    Match,
    PaperIndex,
    compile_filter,
    explain,
    normalize,
    parse_query,
)
from tests.helpers import Paper, papers


@cache
def index() -> PaperIndex:
    return PaperIndex.build(papers())


def by_id(arxiv_id: str) -> Paper:
    return next(p for p in papers() if p.arxiv_id == arxiv_id)


def ids(query: str) -> set[str]:
    return {m.arxiv_id for m in index().match(compile_filter(keywords=[query]))}


SPEC = {"2310.15141", "2502.18779"}  # SpecTr; Towards Optimal Multi-draft Speculative Decoding
DIFFUSION = {"2402.15170", "2410.20502", "2411.02780", "2412.06028", "2501.09732", "2502.06155"}
BANDIT = {"2010.15382", "2303.16998", "2310.02246"}
SABHARWAL = {"2112.09054", "2210.00720", "2301.12726"}
RE = {"2407.05483", "2407.21787"}  # Christopher Ré
LMM = "2602.23229"  # the only paper with feed keywords (ai_keywords)

# (query, the exact set of arXiv ids it must match)
CASES: list[tuple[str, set[str]]] = [
    # words, implicit AND, phrases
    ("speculative", SPEC),
    ("speculative decoding", SPEC),
    ('"speculative decoding"', SPEC),
    ("optimal transport", {"2302.01734"} | SPEC),
    ('"optimal transport"', SPEC),
    ('"transport optimal"', set()),
    ("halpern iteration", {"2310.02987"}),
    ("mirostat", {"2007.14966"}),
    ('"Language Models (Mostly) Know"', {"2207.05221"}),
    # AND / OR / NOT, -word, -"phrase", parentheses, precedence
    ("Sensitivity AND Sampling", {"2212.09019", "2303.90029", "2306.00732"}),
    ("diffusion OR bandit", DIFFUSION | BANDIT),
    ("speculative OR bandit OR halpern", SPEC | BANDIT | {"2310.02987"}),
    ("diffusion -video", {"2402.15170", "2411.02780", "2501.09732"}),
    ("diffusion NOT video", {"2402.15170", "2411.02780", "2501.09732"}),
    ('diffusion -"video diffusion"', DIFFUSION - {"2502.06155"}),
    (
        "decoding -speculative",
        {"2007.14966", "2210.00720", "2305.02309", "2310.03262", "2402.15170", "2405.18400"},
    ),
    ("Speculative AND NOT multi-draft", {"2310.15141"}),
    ("NOT NOT mirostat", {"2007.14966"}),
    ("NOT diffusion mirostat", {"2007.14966"}),
    ("-(diffusion video) diffusion", {"2402.15170", "2411.02780", "2501.09732"}),
    ("(diffusion OR bandit) sampling", (DIFFUSION | BANDIT) - {"2310.02246"}),
    ("mirostat OR halpern iteration", {"2007.14966", "2310.02987"}),  # AND binds tighter than OR
    ("(mirostat OR halpern) iteration", {"2310.02987"}),
    # lower-case and/or/not are ordinary words
    ("perplexity and decoding", {"2007.14966"}),
    ("mirostat or", {"2007.14966"}),
    ("mirostat not", {"2007.14966"}),  # "Not much is known..."
    # fields
    ("title:decoding", {"2007.14966", "2310.15141", "2405.18400", "2502.18779"}),
    ("title:speculative abstract:transport", SPEC),
    ('title:"large language monkeys"', {"2407.21787"}),
    ("title:(diffusion OR bandits)", DIFFUSION | {"2303.16998"}),
    ('abstract:"video diffusion"', {"2502.06155"}),
    ("Title:mirostat", {"2007.14966"}),
    ('keyword:"in-context learning"', {LMM}),
    ("keyword:classification", {LMM}),
    ("keyword:mirostat", set()),
    ('"large multimodal models"', {LMM}),
    ("category:cs.CL", {"2310.15141"}),
    ("category:cs.LG", {"2310.15141", "2303.16998"}),
    ("category:stat.ML bandits", {"2303.16998"}),
    ("category:lg -category:cl", {"2303.16998"}),
    ('title:"speculative decoding" OR author:Sabharwal', SPEC | SABHARWAL),
    # prefixes
    ("diffus*", DIFFUSION),
    ("speculat*", SPEC),
    ("multimodal*", {"2407.12358", LMM}),
    ("author:Sab*", SABHARWAL),
    ('"speculative dec*"', SPEC),
    # authors: full name, surname alone, accents, initials, compound surnames
    ('author:"Christopher Re"', RE),
    ('author:"Christopher Ré"', RE),
    ("author:Ré", RE),
    ("author:re", RE),
    ("author:Christopher", set()),  # a first name alone is not a surname
    ("author:Sabharwal", SABHARWAL),
    ('author:"Ashish Sabharwal"', SABHARWAL),
    ('author:"A. Sabharwal"', SABHARWAL),
    ('author:"Lav Varshney"', {"2007.14966"}),  # middle initial omitted
    ('author:"Lav Q Varshney"', set()),  # a wrong middle initial
    ("author:Hatfield-Dodds", {"2207.05221"}),
    ('author:"Vassilevska Williams"', {"2310.13174"}),
    ('author:"Y. Wang"', {"2303.90029", "2501.04694"}),
    ('author:"Zoe Angstrom"', {"9901.00001"}),
    ('author:"Jose Maria Garcia Lopez"', {"9901.00001"}),
    ("author:García-López", {"9901.00001"}),
    # normalization: stemming, case, hyphens, whole words, accents, LaTeX, punctuation
    (
        "transformers",
        {
            "1508.06336",
            "2112.09054",
            "2303.09730",
            "2303.90011",
            "2307.11353",
            "2310.04064",
            "2311.04420",
            "2402.15170",
            "2407.05483",
            "2410.20502",
            "2412.06028",
            "2502.06155",
        },
    ),
    ("LLMs", ids("llm")),
    ("bandit", BANDIT),
    ("bandits", BANDIT),
    ("Monkeys", {"2407.21787"}),
    ("monkey", {"2407.21787"}),
    ("NeRFs", {"2307.15333"}),
    ("RL", {"2303.10165", "2303.16998", "2310.14554", "2409.19790", "2502.12118", "9901.00002"}),
    ("URL", {"9901.00002", "9901.00001"}),
    ("CoT", {"2210.00720", "2405.04776", "2409.19790"}),
    ('"test-time compute"', {"2502.07154", "2502.12118"}),
    ("test-time compute", {"2502.07154", "2502.12118"}),
    ("test time compute", {"2402.10949", "2502.07154", "2502.12118"}),
    ("multi-draft", {"2502.18779"}),
    ("multi draft", {"2502.18779"}),
    ('"multi draft"', {"2502.18779"}),
    ("zero-shot", {"2501.02406", LMM}),
    ("zeroshot", set()),
    ("cross-entropy", {"2007.14966", "2409.19790", "2501.02406", "2502.07154"}),
    ('"top k"', {"2007.14966", "2202.00666", "2405.18400", "2409.19790"}),
    ("ell_p", {"2306.00732"}),
    ("$\\ell_p$ sensitivity", {"2306.00732"}),
    ("donnees", {"9901.00001"}),
    ("DONNÉES", {"9901.00001"}),
    ("strasse", {"9901.00001"}),
    ("Straße", {"9901.00001"}),
    ("robust alpha divergence", {"9901.00001"}),
    ("textbf", set()),  # LaTeX formatting commands are not words
    ("oresund naive cooperative", {"9901.00001"}),
    ("dataset's", ids("dataset")),
    ("self-play", {"9901.00002"}),
]


@pytest.mark.parametrize(("query", "expected"), CASES, ids=[q for q, _ in CASES])
def test_query_matches_exactly_the_expected_fixture_papers(query: str, expected: set[str]) -> None:
    """Each query of the table selects exactly the listed papers, in bulk and one paper at a time."""
    assert ids(query) == expected
    flt = compile_filter(keywords=[query])
    assert {p.arxiv_id for p in papers() if explain(flt, p)} == expected


# (query, reason fragment, 1-based column)
ERRORS: list[tuple[str, str, int]] = [
    ("", "empty query", 1),
    ("   ", "empty query", 1),
    ("diffusion (sampling OR video", "unbalanced parenthesis", 11),
    ("(diffusion sampling) video)", "unbalanced parenthesis", 27),
    ('"speculative decoding', "unterminated phrase", 1),
    ('diffusion "video', "unterminated phrase", 11),
    ("foo:bar", "unknown field 'foo:'", 1),
    ("diffusion https://x.org", "unknown field 'https:'", 11),
    ("diffusion AND", "operator AND with nothing after it", 11),
    ("AND diffusion", "operator AND with nothing before it", 1),
    ("diffusion OR", "operator OR with nothing after it", 11),
    ("diffusion OR AND video", "operator OR with nothing after it", 11),
    ("(OR diffusion)", "operator OR with nothing before it", 2),
    ("diffusion NOT", "operator NOT with nothing after it", 11),
    ("title:", "field 'title:' with nothing after it", 1),
    ("diffusion title: AND x", "field 'title:' with nothing after it", 11),
    ("()", "empty parentheses", 1),
    ('diffusion ""', "empty phrase", 11),
    ("dif*sion", "'*' is only allowed at the end of a word", 4),
    ("diffusion *", "'*' with no word before it", 11),
    ("-diffusion", "only negated terms", 1),
    ("NOT video NOT audio", "only negated terms", 1),
    ("&& ... !!", "no words", 1),
]


@pytest.mark.parametrize(
    ("query", "reason", "column"), ERRORS, ids=[q or "<empty>" for q, _, _ in ERRORS]
)
def test_invalid_query_names_reason_and_column(query: str, reason: str, column: int) -> None:
    """An invalid query raises QueryError (a ConfigError) with a precise reason and 1-based column."""
    with pytest.raises(QueryError) as info:
        parse_query(query)
    err = info.value
    assert isinstance(err, ConfigError)
    assert reason in err.reason
    assert err.column == column
    assert err.query == query
    assert f"at column {column}" in str(err)


def test_compile_filter_reports_the_bad_query() -> None:
    """compile_filter raises the QueryError of the first bad keywords or exclude entry."""
    with pytest.raises(QueryError) as info:
        compile_filter(keywords=["diffusion"], exclude=["video AND"])
    assert info.value.query == "video AND"
    assert info.value.column == 7
    with pytest.raises(QueryError):
        compile_filter(keywords=["ok"], authors=["  "])


def test_table_covers_enough_cases() -> None:
    """The language table has at least 60 match cases and covers every operator and field."""
    assert len(CASES) + len(ERRORS) >= 60 and len(CASES) >= 60
    text = " ".join(q for q, _ in CASES)
    for token in (
        "AND",
        "OR",
        "NOT",
        " -",
        '-"',
        "(",
        '"',
        "*",
        "title:",
        "abstract:",
        "author:",
        "keyword:",
        "category:",
    ):
        assert token in text, token


def test_filter_combines_keywords_authors_exclude_and_upvotes() -> None:
    """Any keywords query or authors entry selects, any exclude query rejects, min_upvotes filters."""
    idx = index()
    flt = compile_filter(keywords=["speculative", "mirostat"], authors=["Christopher Ré"])
    got = {m.arxiv_id for m in idx.match(flt)}
    assert got == SPEC | RE | {"2007.14966"}
    flt = compile_filter(
        keywords=["speculative", "mirostat"], exclude=["multi-draft", "perplexity"]
    )
    assert {m.arxiv_id for m in idx.match(flt)} == {"2310.15141"}
    flt = compile_filter(keywords=["speculative", "mirostat"], min_upvotes=10)
    assert {m.arxiv_id for m in idx.match(flt)} == {"2007.14966"}  # 75 upvotes; SpecTr has 9
    assert idx.match(compile_filter(keywords=[])) == []
    assert idx.match(compile_filter(keywords=[], exclude=["diffusion"])) == []


def test_matched_lists_queries_in_config_order_and_authors_as_author_field() -> None:
    """Match.matched lists the subscriber's own query strings that matched, keywords then authors."""
    flt = compile_filter(
        keywords=["decoding", "Bandits", '"speculative decoding"'],
        authors=["Christopher Ré", "Sabharwal"],
    )
    got = {m.arxiv_id: m for m in index().match(flt)}
    assert got["2310.15141"].matched == ("decoding", '"speculative decoding"')
    assert got["2303.16998"].matched == ("Bandits",)
    assert got["2407.21787"].matched == ('author:"Christopher Ré"',)
    assert got["2210.00720"].matched == ("decoding", 'author:"Sabharwal"')


def test_spans_point_at_the_original_title_and_abstract() -> None:
    """Spans are [start, end) offsets into the original strings covering the matched words."""
    paper = by_id("2310.15141")
    flt = compile_filter(keywords=['"speculative decoding"', "transport -video"])
    m = next(m for m in index().match(flt) if m.arxiv_id == paper.arxiv_id)
    assert [paper.title[s:e] for s, e in m.title_spans] == ["Speculative Decoding", "Transport"]
    assert {paper.summary[s:e].lower() for s, e in m.summary_spans} == {
        "speculative decoding",
        "transport",
    }
    assert list(m.summary_spans) == sorted(set(m.summary_spans))
    assert all(a[1] < b[0] for a, b in zip(m.summary_spans, m.summary_spans[1:]))


def test_spans_survive_accents_latex_and_hyphens() -> None:
    """Offsets stay right when normalization changes lengths (ß -> ss, accents, LaTeX, hyphens)."""
    paper = by_id("9901.00001")
    m = explain(compile_filter(keywords=["strasse alpha-divergence cafe robust"]), paper)
    assert m is not None
    assert [paper.title[s:e] for s, e in m.title_spans] == [
        "Straße",
        "Robust",
        "alpha$-Divergence",
        "Café",
    ]


def test_negated_and_unmatched_or_branches_are_not_highlighted() -> None:
    """Only positive terms that made the query true are highlighted, never NOT terms."""
    paper = by_id("2310.15141")
    m = explain(compile_filter(keywords=["(speculative OR bandit) -video NOT diffusion"]), paper)
    assert m is not None
    assert [paper.title[s:e] for s, e in m.title_spans] == ["Speculative"]


def test_ranking_puts_title_hits_first_then_upvotes() -> None:
    """Papers with the words in the title outrank abstract-only ones; equal scores go by upvotes."""
    got = index().match(compile_filter(keywords=["decoding"]))
    title_hits = {"2007.14966", "2310.15141", "2405.18400", "2502.18779"}
    assert {m.arxiv_id for m in got[:4]} == title_hits
    assert [m.score for m in got] == sorted((m.score for m in got), reverse=True)
    same = index().match(compile_filter(keywords=[], authors=["Christopher Ré"]))
    assert same[0].score == same[1].score
    assert [m.upvotes for m in same] == sorted((m.upvotes for m in same), reverse=True)


def test_normalize_examples() -> None:
    """normalize folds case, ß, accents, hyphens, LaTeX and punctuation the same for every input."""
    assert normalize("Données") == "donnees"
    assert normalize("Straße") == normalize("STRASSE") == "strasse"
    assert normalize("test-time  compute") == normalize("Test Time Compute") == "test time compute"
    assert normalize("$\\alpha$-\\textbf{Divergence}!") == "alpha divergence"
    assert normalize("ＬＬＭｓ") == "llms"  # NFKC full-width
    assert normalize("model's") == "models"


def test_bulk_match_equals_explain_on_every_fixture_paper() -> None:
    """For a mixed filter, PaperIndex.match and explain() agree on ids, matched queries and spans."""
    flt = compile_filter(
        keywords=["diffusion -video", '"language models"', "title:(sampling OR decoding)", "RL"],
        exclude=["author:Wang"],
        authors=["Sabharwal"],
        min_upvotes=3,
    )
    bulk = {m.arxiv_id: m for m in index().match(flt)}
    one = {p.arxiv_id: m for p in papers() if (m := explain(flt, p)) is not None}
    assert bulk.keys() == one.keys()
    for k, m in bulk.items():
        assert isinstance(m, Match)
        assert (m.matched, m.title_spans, m.summary_spans) == (
            one[k].matched,
            one[k].title_spans,
            one[k].summary_spans,
        )


# (query, the same query as written without the lone dashes): a '-' followed by a space, a ')'
# or the end of the query is punctuation, ignored like a comma
LONE_DASHES: list[tuple[str, str]] = [
    ('language - model -"survey"', 'language model -"survey"'),
    ('(language - model -"survey")', 'language model -"survey"'),
    ("language - model", "language model"),
    ("diffusion -", "diffusion"),
    ("(diffusion -)", "diffusion"),
    ('diffusion - "video generation"', 'diffusion "video generation"'),
    ("language -- model", "language model"),
    ("(language -- model)", "language model"),
    ("language --- model --", "language model"),
]


@pytest.mark.parametrize(("query", "same_as"), LONE_DASHES, ids=[q for q, _ in LONE_DASHES])
def test_lone_dash_is_punctuation_not_an_operator(query: str, same_as: str) -> None:
    """A '-' with a space after it (or at the end) is ignored, with or without brackets around."""
    assert parse_query(query).node == parse_query(same_as).node


def test_brackets_do_not_change_the_meaning_of_a_lone_dash() -> None:
    """`language - model -"survey"` means the same with and without brackets around it."""
    plain = parse_query('language - model -"survey"')
    assert plain.node == parse_query('(language - model -"survey")').node
    assert plain.describe() == "(languag AND model AND NOT survey)"


def test_lone_dash_before_a_negated_phrase_is_still_only_negated() -> None:
    """`- -"video generation"` is a query of negated terms only, an error, not the bare phrase."""
    with pytest.raises(QueryError) as info:
        parse_query('- -"video generation"')
    assert "only negated terms" in info.value.reason
    assert info.value.column == 3


@pytest.mark.parametrize(
    ("query", "branch"),
    [("a OR -b", "NOT b"), ("x OR (y OR -z)", "NOT z"), ("(a OR -b) -c", "NOT b")],
)
def test_only_negated_or_alternative_is_named(query: str, branch: str) -> None:
    """A query refused because one OR alternative has only negated terms names that alternative, not column 1."""
    with pytest.raises(QueryError) as info:
        parse_query(query)
    assert f"the OR alternative {branch} has only negated terms" in info.value.reason
    assert info.value.column is None


def test_positive_word_outside_the_or_anchors_a_negated_alternative() -> None:
    """`(a OR -b) c` is accepted: every match contains c."""
    assert parse_query("(a OR -b) c").describe() == "((a OR NOT b) AND c)"


def test_evidence_names_matched_authors_and_feed_keywords() -> None:
    """evidence() returns the authors an author: query names and the spans of the feed keywords a query hits."""
    from types import SimpleNamespace

    from digestbot.matching import evidence

    paper = SimpleNamespace(
        sources=(),
        has_upvotes=True,
        arxiv_id="2305.10601",
        title="Complexity-Based Prompting",
        summary="Chain of thought.",
        authors=["Yao Fu", "Hao Peng", "Litu Ou", "Tushar Khot", "Ashish Sabharwal"],
        ai_keywords=["diffusion models", "in-context learning"],
        categories=[],
        upvotes=3,
    )
    found = evidence(['author:"Sabharwal"', "keyword:diffusion", "learning -video"], paper)
    assert found.authors == (4,)
    assert found.keywords == ((0, ((0, 9),)), (1, ((11, 19),)))
    assert evidence(["prompting NOT thought", "((broken"], paper).keywords == ()


# --------------------------------------------------------------------------- source:


def _with_sources() -> list[Paper]:
    """The fixture papers, each brought by one to three named sources (by position)."""
    names = [("hf",), ("arxiv-ml",), ("hf", "arxiv-ml"), ("arxiv-cv",), ("biorxiv-neuro", "hf")]
    return [replace(p, sources=names[i % len(names)]) for i, p in enumerate(papers())]


@cache
def _source_index() -> PaperIndex:
    return PaperIndex.build(_with_sources())


def _from(*names: str) -> set[str]:
    return {p.arxiv_id for p in _with_sources() if set(p.sources) & set(names)}


SOURCE_CASES: list[tuple[str, set[str]]] = [
    ("source:hf", _from("hf")),
    ("source:HF", _from("hf")),
    ("sources:arxiv-ml", _from("arxiv-ml")),
    ('source:"arxiv ml"', _from("arxiv-ml")),
    ("source:ARXIV_ML", _from("arxiv-ml")),
    ("source:arxiv", set()),  # a whole name only
    ("source:arxiv-m", set()),
    ("source:arxiv*", _from("arxiv-ml", "arxiv-cv")),
    ("source:arxiv-*", _from("arxiv-ml", "arxiv-cv")),
    ("source:arxiv-c*", _from("arxiv-cv")),
    ("source:bio*", _from("biorxiv-neuro")),
    ("source:nowhere", set()),
    ("source:(hf OR arxiv-cv)", _from("hf", "arxiv-cv")),
    ("source:hf -source:arxiv-ml", _from("hf") - _from("arxiv-ml")),
    ("diffusion source:hf", ids("diffusion") & _from("hf")),
    ("hf", set()),  # a bare word never matches a source name
    ("neuro", set()),
]


@pytest.mark.parametrize(("query", "expected"), SOURCE_CASES, ids=[q for q, _ in SOURCE_CASES])
def test_source_field_matches_papers_a_named_source_brought(query: str, expected: set[str]) -> None:
    """`source:NAME` selects the papers that source brought (whole names, any case, NAME* a prefix)."""
    flt = compile_filter(keywords=[query])
    assert {m.arxiv_id for m in _source_index().match(flt)} == expected
    assert {p.arxiv_id for p in _with_sources() if explain(flt, p)} == expected


def test_a_source_term_adds_nothing_to_the_score() -> None:
    """`source:` filters without ranking: `diffusion source:hf` scores each paper as `diffusion` does."""
    index = _source_index()
    alone = {m.arxiv_id: m.score for m in index.match(compile_filter(keywords=["diffusion"]))}
    both = index.match(compile_filter(keywords=["diffusion source:hf"]))
    assert both and all(m.score == alone[m.arxiv_id] for m in both)
    assert {m.score for m in index.match(compile_filter(keywords=["source:hf"]))} == {0.0}


def test_a_paper_without_sources_matches_no_source_query() -> None:
    """A paper value with no `sources` member (a plain fetched paper) matches no `source:` query."""
    from types import SimpleNamespace

    paper = SimpleNamespace(
        sources=(),
        has_upvotes=True,
        arxiv_id="1",
        title="Diffusion",
        summary="",
        authors=[],
        ai_keywords=[],
        categories=[],
        upvotes=0,
    )
    assert explain(compile_filter(keywords=["source:hf"]), paper) is None
    assert PaperIndex.build([paper]).match(compile_filter(keywords=["source:hf"])) == []
    assert explain(compile_filter(keywords=["diffusion -source:hf"]), paper) is not None


def test_evidence_ignores_the_source_term_of_a_query() -> None:
    """A query like `source:hf keyword:diffusion` still shows the feed keywords it hit."""
    from digestbot.matching import evidence

    paper = Paper("1", "T", "S", ai_keywords=("diffusion models",), sources=("hf",))
    assert evidence(["source:hf keyword:diffusion"], paper).keywords == ((0, ((0, 9),)),)
