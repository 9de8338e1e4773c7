"""Tests of digestbot.text's LaTeX step: feed titles and abstracts read as plain text."""

from __future__ import annotations

import json
import re

from hypothesis import given
from hypothesis import strategies as st

from digestbot.matching import compile_filter, explain
from digestbot.models import Paper
from digestbot.render import PaperView, Renderer
from digestbot.sources.hf_daily import parse_daily_papers
from digestbot.text import UNSAFE, clean_block, latex_to_text, plain_text

FEED = "https://huggingface.co/api/daily_papers"


def test_math_and_formatting_commands_read_as_text() -> None:
    """`$\\ell_p$` becomes ℓp and `\\emph{x}` becomes x; accents and symbols become Unicode."""
    assert plain_text(r"Robust bounds in $\ell_p$ norms") == "Robust bounds in ℓp norms"
    assert plain_text(r"An \emph{x} and \textbf{bold} claim") == "An x and bold claim"
    assert (
        plain_text(r"$\alpha$-divergence of Erd\H{o}s and caf\'e")
        == "α-divergence of Erdős and café"
    )


def test_plain_feed_text_is_left_alone() -> None:
    """Percent signs, ampersands and underscores outside math are kept as written."""
    assert (
        plain_text("We gain 5% on A & B with snake_case") == "We gain 5% on A & B with snake_case"
    )
    assert (
        plain_text(r"We gain 5% on $\ell_1$ & keep the rest") == "We gain 5% on ℓ1 & keep the rest"
    )


@given(st.text())
def test_latex_conversion_never_raises_and_yields_one_clean_line(value: str) -> None:
    """Any text, LaTeX or not, converts without an error into one line with no control characters."""
    latex_to_text(value)
    out = plain_text(value)
    assert not UNSAFE.search(out)
    assert "\n" not in out and out == out.strip()


@given(
    st.lists(
        st.sampled_from(list("\\${}_^%&#~ abcxyz") + ["\\ell", "\\emph{", "\\frac", "\\begin{"]),
        max_size=40,
    ).map("".join)
)
def test_latex_like_input_never_raises(value: str) -> None:
    """Broken LaTeX (unbalanced braces and dollars, stray commands) still converts to a clean line."""
    assert not UNSAFE.search(plain_text(value))


def test_fetched_latex_is_matched_and_highlighted_as_read() -> None:
    """A feed title with LaTeX is stored as text; a query finds its words and highlights the right characters."""
    item = {
        "paper": {
            "id": "2603.00042",
            "title": r"Sparse \emph{Attention} under $\ell_p$ Constraints",
            "summary": r"We bound \textit{attention} error in $\ell_p$ for 5% of heads.",
            "authors": [{"name": "Ada Lovelace"}],
            "submittedOnDailyAt": "2026-03-02T08:00:00.000Z",
            "upvotes": 3,
        }
    }
    (paper,) = parse_daily_papers(json.dumps([item]).encode(), url=FEED)
    assert paper.title == "Sparse Attention under ℓp Constraints"
    assert paper.summary == "We bound attention error in ℓp for 5% of heads."
    stored = Paper(  # what matching sees: the stored row
        arxiv_id=paper.arxiv_id,
        title=paper.title,
        summary=paper.summary,
        authors=list(paper.authors),
        featured_at=paper.featured_at,
        first_seen_at=paper.featured_at,
        updated_at=paper.featured_at,
        sources=["hf"],
    )
    found = explain(compile_filter(keywords=["attention"]), stored)
    assert found is not None
    assert [paper.title[a:b] for a, b in found.title_spans] == ["Attention"]
    view = PaperView(
        arxiv_id=paper.arxiv_id,
        title=paper.title,
        summary=paper.summary,
        authors=paper.authors,
        upvotes=paper.upvotes,
        github_repo=None,
        github_stars=None,
        project_page=None,
        matched=found.matched,
        title_spans=found.title_spans,
        summary_spans=found.summary_spans,
    )
    text, html = Renderer().paper_block(view)
    assert "Sparse *Attention* under ℓp Constraints" in text
    assert "We bound *attention* error in ℓp for 5% of heads." in " ".join(text.split())
    assert ">Attention</mark> under ℓp" in html


@given(st.text(alphabet=st.characters(codec="utf-8", max_codepoint=0x2100)) | st.text())
def test_clean_block_drops_exactly_the_control_characters(value: str) -> None:
    """A body keeps every character but the controls other than tab and newline; CR and CRLF
    become LF; it ends with one newline (as the regex it replaced did)."""
    text = re.sub(
        r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", "", value.replace("\r\n", "\n").replace("\r", "\n")
    )
    assert clean_block(value) == (text if text.endswith("\n") else text + "\n").encode("utf-8")
