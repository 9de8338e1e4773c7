"""Text normalization shared by queries and papers: one tokenizer, so both sides always agree.

A raw token is a run of letters/digits (plus combining marks and inner apostrophes) in the
original string; everything else (spaces, hyphens, punctuation, LaTeX braces and dollars) separates
words. Each raw token is folded (NFKC, full casefold, accents removed) into one or more normalized
words; the raw token's [start, end) offsets are kept so matches can be highlighted in the original.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import NamedTuple, Protocol

import snowballstemmer  # uses PyStemmer's C implementation when it is installed

_MARKS = "\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f"
_WCH = rf"(?:[^\W_]|[{_MARKS}])"
# optional backslash (a LaTeX command), then letters/digits with inner apostrophes ("model's")
_RAW_TOKEN = re.compile(rf"(\\)?({_WCH}+(?:['\u2019]{_WCH}+)*)")
_WORD = re.compile(r"[^\W_]+")
_APOSTROPHES = str.maketrans("", "", "'\u2019\u02bc")
# letters that carry no decomposition but are "accented" to a reader
_FOLD_LETTERS = str.maketrans(
    {
        "ø": "o",
        "ł": "l",
        "đ": "d",
        "ħ": "h",
        "ı": "i",
        "æ": "ae",
        "œ": "oe",
        "þ": "th",
        "ð": "d",
        "ŧ": "t",
        "ŀ": "l",
        "ƒ": "f",
        "ŋ": "n",
    }
)
# LaTeX commands that only format text: dropped. Other commands (\alpha, \ell) keep their name.
_LATEX_FORMAT = frozenset(
    [
        "textbf",
        "textit",
        "texttt",
        "textrm",
        "textsc",
        "textsf",
        "emph",
        "mathrm",
        "mathbf",
        "mathit",
        "mathcal",
        "mathbb",
        "mathsf",
        "mathtt",
        "mathfrak",
        "boldsymbol",
        "bm",
        "text",
        "it",
        "bf",
        "rm",
        "tt",
        "sf",
        "sc",
        "em",
        "cal",
        "scriptsize",
        "footnotesize",
        "small",
        "large",
        "huge",
        "tiny",
        "normalsize",
        "left",
        "right",
        "big",
        "bigl",
        "bigr",
        "operatorname",
        "mbox",
        "hbox",
        "displaystyle",
        "textstyle",
        "frac",
        "sqrt",
        "cite",
        "ref",
        "url",
        "href",
    ]
)
_VOWELS = frozenset("aeiouy")


class Token(NamedTuple):
    """One normalized word of an original string: its stem, its unstemmed form and its offsets."""

    stem: str
    surface: str
    start: int
    end: int


def _fold_once(s: str) -> str:
    s = unicodedata.normalize("NFKC", s).casefold()
    s = unicodedata.normalize("NFD", s)
    s = "".join(c for c in s if unicodedata.category(c) != "Mn")
    s = s.translate(_FOLD_LETTERS).translate(_APOSTROPHES)
    return unicodedata.normalize("NFKC", s).casefold()


def _fold(s: str) -> str:
    """NFKC + casefold + accent folding, repeated until stable (a handful of code points need 2 passes)."""
    for _ in range(6):
        t = _fold_once(s)
        if t == s:
            break
        s = t
    return s


_WORD_CACHE = 200_000  # distinct words remembered: a language's working vocabulary


@lru_cache(maxsize=_WORD_CACHE)
def fold_words(raw: str) -> tuple[str, ...]:
    """The normalized (unstemmed) words of one raw token or query word; cached, words repeat."""
    return tuple(_WORD.findall(_fold(raw)))


class _Stemmer(Protocol):
    def stemWord(self, word: str) -> str: ...  # snowballstemmer's name


@lru_cache(maxsize=1)
def _stemmer() -> _Stemmer:
    """The English stemmer, made on first use (no work at import time)."""
    return snowballstemmer.stemmer("english")


@lru_cache(maxsize=_WORD_CACHE)
def stem(word: str) -> str:
    """Snowball English stem of a normalized word, plus acronym plurals ("llms" -> "llm"); cached."""
    got = word if word.isdigit() else _stemmer().stemWord(word)
    # Snowball keeps the "s" of vowel-less acronyms (llms, cnns, mdps); people expect LLMs = LLM.
    if len(got) >= 4 and got[-1] == "s" and got[-2] != "s" and not _VOWELS.intersection(got[:-1]):
        got = got[:-1]
    return got


def raw_words(text: str) -> list[tuple[str, int, int]]:
    """(normalized word, start, end) for every word of `text`; offsets are the raw token's."""
    out: list[tuple[str, int, int]] = []
    for m in _RAW_TOKEN.finditer(text):
        raw = m.group(2)
        if m.group(1) is not None and raw in _LATEX_FORMAT:
            continue
        start, end = m.span(2)
        for w in fold_words(raw):
            out.append((w, start, end))
    return out


def tokenize(text: str) -> list[Token]:
    """Tokens of an original string (title, abstract, keyword...), with offsets into it."""
    return [Token(stem(w), w, s, e) for w, s, e in raw_words(text)]


def words(text: str) -> tuple[str, ...]:
    """Normalized, unstemmed words of `text` (used for author names and query words)."""
    return tuple(w for w, _, _ in raw_words(text))


def normalize(text: str) -> str:
    """NFKC, casefold, accents folded, hyphens and punctuation/LaTeX to spaces, collapsed; idempotent."""
    out = " ".join(words(text))
    for _ in range(6):  # pathological code points can need another pass; stop at the fixed point
        again = " ".join(words(out))
        if again == out:
            break
        out = again
    return out


def _given_eq(q: str, a: str) -> bool:
    """A given (first or middle) name of the query against the author's: equal, or either is an initial."""
    if q.endswith("*"):
        return a.startswith(q[:-1])
    return q == a or (len(q) == 1 and a[:1] == q) or (len(a) == 1 and q[:1] == a)


def _word_eq(q: str, a: str) -> bool:
    return a.startswith(q[:-1]) if q.endswith("*") else q == a


def name_matches(query: tuple[str, ...], author: tuple[str, ...]) -> bool:
    """Whether normalized query name words designate this author's normalized name words.

    Either the query is the surname alone (the author's last word, or last words: "williams",
    "vassilevska williams", "hatfield dodds"), or it is a full name: same surname, same first name
    (an initial on either side matches, "y wang" = "yue wang"), and any middle names the query gives
    appear in order among the author's (full or as initials); middle names the query omits are
    ignored ("lav varshney" finds "Lav R. Varshney"). A trailing '*' makes a word a prefix.
    """
    nq, na = len(query), len(author)
    if not nq or not na:
        return False
    if nq <= na and all(_word_eq(q, a) for q, a in zip(query, author[na - nq :])):
        return True
    if (
        nq < 2
        or na < 2
        or not _word_eq(query[-1], author[-1])
        or not _given_eq(query[0], author[0])
    ):
        return False
    j = 1
    for q in query[1:-1]:
        while j < na - 1 and not _given_eq(q, author[j]):
            j += 1
        if j >= na - 1:
            return False
        j += 1
    return True


def source_matches(query: tuple[str, ...], name: tuple[str, ...]) -> bool:
    """Whether normalized query words name a source whose name has these normalized words.

    The whole name must be given ("arxiv ml" names arxiv-ml, "arxiv" does not), unless the last
    query word ends in '*': then the name only has to start with the query ("arxiv*" names
    arxiv-ml and arxiv-cv). A '*' on an inner word makes that word a prefix.
    """
    nq, nn = len(query), len(name)
    if not nq or nq > nn:
        return False
    if nq < nn and not query[-1].endswith("*"):
        return False
    return all(_word_eq(q, a) for q, a in zip(query, name))
