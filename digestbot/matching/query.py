"""The filter language: lexer, parser and compiled filters.

Grammar (precedence NOT > AND > OR; juxtaposition is AND):

    query   := or
    or      := and ("OR" and)*
    and     := unary (["AND"] unary)*
    unary   := ("NOT" | "-") unary | primary
    primary := "(" or ")" | FIELD ":" primary | WORD | WORD"*" | '"' words '"'

"-" is NOT only when something other than a space or ")" follows it directly ("-video",
'-"video generation"', "-(a OR b)"); a lone "-" (a space after it, or at the end) is punctuation
and ignored, so "language - model" = "language model". Brackets never change a query's meaning.

A compiled query is a small tree of tuples, cheap to hash and to walk:

    ("T", (field, items))   field: any|title|abstract|keyword|author|category|source
                            items: stems (normalized words for author and source), "x*" = prefix x
    ("A", children) | ("O", children) | ("N", child)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

from digestbot.errors import QueryError

from .text import stem, words

FIELDS = frozenset({"title", "abstract", "author", "keyword", "category", "source"})
_FIELD_ALIASES = {
    "keywords": "keyword",
    "summary": "abstract",
    "authors": "author",
    "cat": "category",
    "sources": "source",
}
_OPS = frozenset({"AND", "OR", "NOT"})
_QUERY_CACHE = 150_000  # distinct query texts remembered (a run's subscribers share most of them)
_WORD_CACHE = 200_000  # distinct words and phrases of queries remembered

Term = tuple[str, tuple[str, ...]]
Node = tuple  # ("T", Term) | ("A", tuple[Node, ...]) | ("O", tuple[Node, ...]) | ("N", Node)


@dataclass(frozen=True, slots=True)
class Query:
    """One parsed query: the text the subscriber wrote and its compiled tree."""

    text: str
    node: Node
    terms: tuple[Term, ...] | None = None  # positive terms, when all of them hold on every match

    def describe(self) -> str:
        """The tree in explicit syntax, e.g. `(title:diffus AND NOT "video generat")`."""
        return _describe(self.node)


@dataclass(frozen=True, slots=True)
class CompiledFilter:
    """A subscriber's whole filter, compiled once per run and evaluated against a PaperIndex."""

    positive: tuple[
        Query, ...
    ]  # keywords, then authors as author:"NAME": the order of Match.matched
    exclude: tuple[Query, ...]
    min_upvotes: int


def _describe(node: Node) -> str:
    kind = node[0]
    if kind == "T":
        field, items = node[1]
        body = items[0] if len(items) == 1 else '"' + " ".join(items) + '"'
        return body if field == "any" else f"{field}:{body}"
    if kind == "N":
        return "NOT " + _describe(node[1])
    op = " AND " if kind == "A" else " OR "
    return "(" + op.join(_describe(c) for c in node[1]) + ")"


# --------------------------------------------------------------------------- lexer


class _Tok(NamedTuple):
    """One token: kind is ( ) AND OR NOT FIELD or TERM."""

    kind: str
    column: int  # 1-based in the query (0-based within its word, in what _lex_word returns)
    spelled: str  # as written: the operator, or the field with its colon ("Title:")
    field: str = ""  # FIELD: the canonical field name
    items: tuple[tuple[str, bool], ...] = ()  # TERM: (normalized word, is a prefix)

    def at(self, column: int) -> _Tok:
        """The same token moved by `column` (a word's token placed in its query)."""
        return _Tok(self.kind, self.column + column, self.spelled, self.field, self.items)


class _WordError(Exception):
    """A lexing error inside one word or phrase, at an offset from its start."""

    def __init__(self, reason: str, offset: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.offset = offset


# A '-' is the NOT operator when something other than a space or ')' follows it directly;
# any other run of '-' ("-" or "--" with a space after it, a ')' or the end of the query) is
# lexed as a word of punctuation, which yields no token, like a comma. Inside a word
# ("test-time") it is a hyphen.
_LEX = re.compile(
    r"""(?P<space>\s+)|(?P<paren>[()])|(?P<phrase>"[^"]*"?)|(?P<dash>-(?!-*(?:[\s)]|$)))|(?P<word>[^\s()"]+)"""
)
_FIELD_PREFIX = re.compile(r"([A-Za-z]+):")


def _lex(query: str) -> list[_Tok]:
    toks: list[_Tok] = []
    for m in _LEX.finditer(query):
        kind, text, col = m.lastgroup, m.group(), m.start() + 1
        if kind == "paren":
            toks.append(_Tok(text, col, text))
        elif kind == "dash":
            toks.append(_Tok("NOT", col, "'-'"))
        elif kind == "phrase" or kind == "word":
            try:
                got = _lex_phrase(text) if kind == "phrase" else _lex_word(text)
            except _WordError as exc:
                raise QueryError(exc.reason, query=query, column=col + exc.offset) from None
            toks += [t.at(col) for t in got]
    return toks


# Words and phrases recur across queries ("diffusion", "-video"): each is lexed once per process.
@lru_cache(maxsize=_WORD_CACHE)
def _lex_phrase(text: str) -> tuple[_Tok, ...]:
    if len(text) < 2 or text[-1] != '"':
        raise _WordError("unterminated phrase", 0)
    items: list[tuple[str, bool]] = []
    for m in re.finditer(r"\S+", text[1:-1]):
        items += _items(m.group(), 1 + m.start(), in_phrase=True)
    if not items:
        raise _WordError("empty phrase", 0)
    return (_Tok("TERM", 0, text, items=tuple(items)),)


@lru_cache(maxsize=_WORD_CACHE)
def _lex_word(text: str) -> tuple[_Tok, ...]:
    """Tokens of one space-free word: an operator, or an optional field prefix and a term."""
    if text in _OPS:
        return (_Tok(text, 0, text),)
    out: list[_Tok] = []
    col = 0
    fm = _FIELD_PREFIX.match(text)
    if fm:
        name = fm.group(1).lower()
        name = _FIELD_ALIASES.get(name, name)
        if name not in FIELDS:
            raise _WordError(f"unknown field '{fm.group()}'", 0)
        out.append(_Tok("FIELD", 0, fm.group(), field=name))
        text, col = text[fm.end() :], fm.end()
    items = _items(text, col, in_phrase=False)
    if items:
        out.append(_Tok("TERM", col, text, items=tuple(items)))
    return tuple(out)


def _items(piece: str, col: int, *, in_phrase: bool) -> list[tuple[str, bool]]:
    """Words of one query word (or one whitespace-separated piece of a phrase), last may be a prefix."""
    body = piece.rstrip("*")
    prefix = body != piece
    star = body.find("*")
    if star >= 0 and not in_phrase:
        raise _WordError("'*' is only allowed at the end of a word", col + star)
    ws = words(body)
    if not ws:
        if prefix and not in_phrase:
            raise _WordError("'*' with no word before it", col)
        return []
    return [(w, prefix and i == len(ws) - 1) for i, w in enumerate(ws)]


# --------------------------------------------------------------------------- parser


class _Parser:
    """Recursive descent over the tokens of one query, by the grammar in the module docstring."""

    def __init__(self, query: str, toks: list[_Tok]) -> None:
        self.q = query
        self.toks = toks
        self.i = 0

    def err(self, reason: str, col: int) -> QueryError:
        return QueryError(reason, query=self.q, column=col)

    def peek(self) -> _Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def parse(self) -> Node:
        node = self.or_(None)
        tok = self.peek()
        if tok is not None:  # only a stray ')' can stop the top-level or_
            raise self.err("unbalanced parenthesis", tok.column)
        return node

    def _operand_follows(self, op: _Tok) -> None:
        nxt = self.peek()
        if nxt is None or nxt.kind in (")", "AND", "OR"):
            raise self.err(f"operator {op.spelled} with nothing after it", op.column)

    def or_(self, field: str | None) -> Node:
        parts = [self.and_(field)]
        while (tok := self.peek()) is not None and tok.kind == "OR":
            self.i += 1
            self._operand_follows(tok)
            parts.append(self.and_(field))
        return _mk("O", parts)

    def and_(self, field: str | None) -> Node:
        parts = [self.unary(field)]
        while (tok := self.peek()) is not None and tok.kind not in (")", "OR"):
            if tok.kind == "AND":
                self.i += 1
                self._operand_follows(tok)
            parts.append(self.unary(field))
        return _mk("A", parts)

    def unary(self, field: str | None) -> Node:
        tok = self.peek()
        if tok is None:  # callers check before descending; kept for safety
            raise self.err("unexpected end of query", len(self.q) + 1)
        if tok.kind == "NOT":
            self.i += 1
            self._operand_follows(tok)
            child = self.unary(field)
            return child[1] if child[0] == "N" else ("N", child)
        if tok.kind in ("AND", "OR"):
            raise self.err(f"operator {tok.spelled} with nothing before it", tok.column)
        return self.primary(field)

    def primary(self, field: str | None) -> Node:
        tok = self.peek()
        assert tok is not None
        self.i += 1
        if tok.kind == "TERM":
            return ("T", _term(field or "any", tok.items))
        if tok.kind == "(":
            nxt = self.peek()
            if nxt is not None and nxt.kind == ")":
                raise self.err("empty parentheses", tok.column)
            if nxt is None:
                raise self.err("unbalanced parenthesis", tok.column)
            node = self.or_(field)
            close = self.peek()
            if close is None or close.kind != ")":
                raise self.err("unbalanced parenthesis", tok.column)
            self.i += 1
            return node
        if tok.kind == "FIELD":
            nxt = self.peek()
            if nxt is None or nxt.kind not in ("TERM", "(", "FIELD"):
                raise self.err(f"field '{tok.spelled}' with nothing after it", tok.column)
            return self.primary(tok.field)
        # a ')' where an operand should be
        raise self.err("unbalanced parenthesis", tok.column)


@lru_cache(maxsize=_WORD_CACHE)
def _term(field: str, items: tuple[tuple[str, bool], ...]) -> Term:
    """Stems for text fields, normalized words for author and source names; a prefix keeps its
    word and '*'."""
    if field in ("author", "source"):
        return (field, tuple(w + "*" if p else w for w, p in items))
    return (field, tuple(w + "*" if p else stem(w) for w, p in items))


def _mk(kind: str, parts: list[Node]) -> Node:
    flat: list[Node] = []
    for p in parts:
        if p[0] == kind:
            flat.extend(p[1])
        elif p not in flat:
            flat.append(p)
    if kind == "A":  # positives first: evaluation starts with them and stops at an empty set
        flat.sort(key=lambda n: n[0] == "N")
    if len(flat) == 1:
        return flat[0]
    return (kind, tuple(flat))


def anchored(node: Node) -> bool:
    """Whether the node can only match papers containing one of its positive terms."""
    kind = node[0]
    if kind == "T":
        return True
    if kind == "N":
        return False
    if kind == "A":
        return any(map(anchored, node[1]))
    return all(map(anchored, node[1]))


def _negated_branch(node: Node) -> Node | None:
    """The first alternative of an OR (at any depth) that is not anchored, when the whole
    query is not anchored because of it; None when the query is anchored or has no OR."""
    kind = node[0]
    if kind == "O":
        for child in node[1]:
            if not anchored(child):
                return _negated_branch(child) or child
    if kind == "A" and not anchored(node):
        for child in node[1]:
            found = _negated_branch(child)
            if found is not None:
                return found
    return None


@lru_cache(maxsize=_QUERY_CACHE)
def parse_query(text: str) -> Query:
    """Parse one `keywords`/`exclude` entry; raises QueryError with a 1-based column.

    The one parser. Cached, since many subscribers write the same queries.
    """
    if not isinstance(text, str):
        raise QueryError(f"a query must be a string, not {type(text).__name__}", query=repr(text))
    if not text.strip():
        raise QueryError("empty query", query=text, column=1)
    toks = _lex(text)
    if not toks:
        raise QueryError("query has no words to match", query=text, column=1)
    node = _Parser(text, toks).parse()
    branch = _negated_branch(node)
    if branch is not None:
        raise QueryError(
            f"the OR alternative {_describe(branch)} has only negated terms (NOT/-): "
            "each alternative needs a word it must contain",
            query=text,
        )
    if not anchored(node):
        raise QueryError(
            "query has only negated terms (NOT/-): add a word it must contain",
            query=text,
            column=toks[0].column,
        )
    return Query(text, node, _static_terms(node))


def _static_terms(node: Node) -> tuple[Term, ...] | None:
    """The positive terms of a tree without OR: then every one of them holds when the query does."""
    kind = node[0]
    if kind == "T":
        return (node[1],)
    if kind == "N":
        return ()  # negated terms are never highlighted
    if kind == "O":
        return None
    out: list[Term] = []
    for child in node[1]:
        got = _static_terms(child)
        if got is None:
            return None
        out += [t for t in got if t not in out]
    return tuple(out)


def author_query(name: str) -> Query:
    """An `authors` entry "X": exactly the query author:"X" (so reported as 'author:"X"')."""
    if not isinstance(name, str):
        raise QueryError(f"an author must be a string, not {type(name).__name__}", query=repr(name))
    clean = " ".join(name.replace('"', " ").split())
    if not clean:
        raise QueryError("empty author name", query=name, column=1)
    try:
        return parse_query(f'author:"{clean}"')
    except QueryError as exc:  # e.g. a name of punctuation only
        raise QueryError(
            f"author name has no usable words ({exc.reason})", query=name, column=1
        ) from exc


def compile_filter(
    *,
    keywords: Sequence[str],
    exclude: Sequence[str] = (),
    authors: Sequence[str] = (),
    min_upvotes: int = 0,
) -> CompiledFilter:
    """Compile a subscriber's filter once; raises QueryError naming the bad query and column."""
    if isinstance(keywords, str) or isinstance(exclude, str) or isinstance(authors, str):
        raise TypeError("keywords, exclude and authors are sequences of strings, not one string")
    positive = tuple(map(parse_query, keywords)) + tuple(map(author_query, authors))
    return CompiledFilter(positive, tuple(map(parse_query, exclude)), int(min_upvotes))
