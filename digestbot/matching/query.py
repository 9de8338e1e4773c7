"""The filter language: lexer, parser and compiled filters.

Grammar (precedence NOT > AND > OR; juxtaposition is AND):

    query   := or
    or      := and ("OR" and)*
    and     := unary (["AND"] unary)*
    unary   := ("NOT" | "-") unary | primary
    primary := "(" or ")" | FIELD ":" primary | WORD | WORD"*" | '"' words '"'

A compiled query is a small tree of tuples, cheap to hash and to walk:

    ("T", (field, items))   field: any|title|abstract|keyword|author|category
                            items: stems (or normalized words for author), "x*" = prefix x
    ("A", children) | ("O", children) | ("N", child)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from digestbot.errors import QueryError

from .text import raw_words, stem

FIELDS = frozenset({"title", "abstract", "author", "keyword", "category"})
_FIELD_ALIASES = {
    "keywords": "keyword",
    "summary": "abstract",
    "authors": "author",
    "cat": "category",
}
_LEX = re.compile(r'\s+|\(|\)|"[^"]*"?|[^\s()"]+')
_FIELD_PREFIX = re.compile(r"([A-Za-z]+):")
_OPS = frozenset({"AND", "OR", "NOT"})

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

    keywords: tuple[Query, ...]
    exclude: tuple[Query, ...]
    authors: tuple[Query, ...]
    min_upvotes: int
    positive: tuple[Query, ...]  # keywords then authors: the order of Match.matched


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

# token: (kind, column, payload); kinds: ( ) AND OR NOT FIELD TERM
_Tok = tuple[str, int, object]


def _piece_items(piece: str, col: int, query: str, *, in_phrase: bool) -> list[tuple[str, bool]]:
    """Words of one query word (or one whitespace-separated piece of a phrase), last may be a prefix."""
    prefix = False
    body = piece
    if body.endswith("*"):
        body = body.rstrip("*")
        prefix = True
    star = body.find("*")
    if star >= 0 and not in_phrase:
        raise QueryError("'*' is only allowed at the end of a word", query=query, column=col + star)
    ws = [w for w, _, _ in raw_words(body)]
    if not ws:
        if prefix and not in_phrase:
            raise QueryError("'*' with no word before it", query=query, column=col)
        return []
    items = [(w, False) for w in ws]
    if prefix:
        items[-1] = (ws[-1], True)
    return items


_chunk_cache: dict[str, tuple[_Tok, ...]] = {}


def _lex(query: str) -> list[_Tok]:
    toks: list[_Tok] = []
    n = len(query)
    for m in _LEX.finditer(query):
        text = m.group()
        c0 = text[0]
        if c0.isspace():
            continue
        col = m.start() + 1
        if c0 == "(" or c0 == ")":
            toks.append((c0, col, None))
            continue
        if text == "-":
            nxt = query[m.end()] if m.end() < n else ""
            if nxt == '"' or nxt == "(":
                toks.append(("NOT", col, "'-'"))
            continue  # a lone dash between spaces is punctuation
        got = _chunk_cache.get(text)
        if got is None:
            got = _lex_chunk(text, query, col)  # raises with the absolute column
            if len(_chunk_cache) > 200_000:
                _chunk_cache.clear()
            _chunk_cache[text] = got
        for kind, rel, payload in got:
            toks.append((kind, rel + col, payload))
    return toks


def _lex_chunk(text: str, query: str, col: int) -> tuple[_Tok, ...]:
    """Tokens of one phrase or one space-free word, columns relative to its start (0-based)."""
    base = col
    if text[0] == '"':
        if len(text) < 2 or text[-1] != '"':
            raise QueryError("unterminated phrase", query=query, column=col)
        items: list[tuple[str, bool]] = []
        for pm in re.finditer(r"\S+", text[1:-1]):
            items += _piece_items(pm.group(), col + 1 + pm.start(), query, in_phrase=True)
        if not items:
            raise QueryError("empty phrase", query=query, column=col)
        return (("TERM", 0, tuple(items)),)
    if text in _OPS:
        return ((text, 0, text),)
    out: list[_Tok] = []
    word = text
    while len(word) > 1 and word[0] == "-":
        out.append(("NOT", col - base, "'-'"))
        word = word[1:]
        col += 1
    if word == "-":
        return tuple(out)  # "--" then nothing: the parser reports the dangling '-'
    fm = _FIELD_PREFIX.match(word)
    if fm:
        name = fm.group(1).lower()
        name = _FIELD_ALIASES.get(name, name)
        if name not in FIELDS:
            raise QueryError(f"unknown field '{fm.group()}'", query=query, column=col)
        out.append(("FIELD", col - base, (name, fm.group())))
        word = word[fm.end() :]
        col += fm.end()
        if not word:
            return tuple(out)
    items = _piece_items(word, col, query, in_phrase=False)
    if items:
        out.append(("TERM", col - base, tuple(items)))
    return tuple(out)


# --------------------------------------------------------------------------- parser


class _Parser:
    __slots__ = ("i", "q", "toks")

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
            raise self.err("unbalanced parenthesis", tok[1])
        return node

    def _operand_follows(self, op: _Tok) -> None:
        nxt = self.peek()
        if nxt is None or nxt[0] in (")", "AND", "OR"):
            raise self.err(f"operator {op[2]} with nothing after it", op[1])

    def or_(self, field: str | None) -> Node:
        parts = [self.and_(field)]
        while (tok := self.peek()) is not None and tok[0] == "OR":
            self.i += 1
            self._operand_follows(tok)
            parts.append(self.and_(field))
        return _mk("O", parts)

    def and_(self, field: str | None) -> Node:
        parts = [self.unary(field)]
        while (tok := self.peek()) is not None and tok[0] not in (")", "OR"):
            if tok[0] == "AND":
                self.i += 1
                self._operand_follows(tok)
            parts.append(self.unary(field))
        return _mk("A", parts)

    def unary(self, field: str | None) -> Node:
        tok = self.peek()
        if tok is None:  # callers check before descending; kept for safety
            raise self.err("unexpected end of query", len(self.q) + 1)
        if tok[0] == "NOT":
            self.i += 1
            nxt = self.peek()
            if nxt is None or nxt[0] in (")", "AND", "OR"):
                raise self.err(f"operator {tok[2]} with nothing after it", tok[1])
            child = self.unary(field)
            return child[1] if child[0] == "N" else ("N", child)
        if tok[0] in ("AND", "OR"):
            raise self.err(f"operator {tok[2]} with nothing before it", tok[1])
        return self.primary(field)

    def primary(self, field: str | None) -> Node:
        tok = self.peek()
        assert tok is not None
        kind = tok[0]
        self.i += 1
        if kind == "TERM":
            return ("T", _term(field or "any", tok[2]))  # type: ignore[arg-type]
        if kind == "(":
            nxt = self.peek()
            if nxt is not None and nxt[0] == ")":
                raise self.err("empty parentheses", tok[1])
            if nxt is None:
                raise self.err("unbalanced parenthesis", tok[1])
            node = self.or_(field)
            close = self.peek()
            if close is None or close[0] != ")":
                raise self.err("unbalanced parenthesis", tok[1])
            self.i += 1
            return node
        if kind == "FIELD":
            name, spelled = tok[2]  # type: ignore[misc]
            nxt = self.peek()
            if nxt is None or nxt[0] not in ("TERM", "(", "FIELD"):
                raise self.err(f"field '{spelled}' with nothing after it", tok[1])
            return self.primary(name)
        # a ')' where an operand should be
        raise self.err("unbalanced parenthesis", tok[1])


_term_cache: dict[tuple, Term] = {}


def _term(field: str, items: tuple[tuple[str, bool], ...]) -> Term:
    key = (field, items)
    got = _term_cache.get(key)
    if got is None:
        if field == "author":
            got = (field, tuple(w + "*" if p else w for w, p in items))
        else:
            got = (field, tuple(w + "*" if p else stem(w) for w, p in items))
        if len(_term_cache) > 200_000:
            _term_cache.clear()
        _term_cache[key] = got
    return got


_SIMPLE_KINDS = frozenset({"TERM", "NOT", "FIELD"})


def _parse_simple(toks: list[_Tok]) -> tuple[Node, tuple[Term, ...]] | None:
    """The common case, no parentheses and no AND/OR: a conjunction of (negated) terms.

    Returns (tree, positive terms), or None when the tokens need the full parser (which also
    reports every error, including a query of negated terms only).
    """
    pos: list[Node] = []
    neg: list[Node] = []
    i, n = 0, len(toks)
    while i < n:
        negated = False
        field = "any"
        kind, _, payload = toks[i]
        while kind == "NOT":
            negated = not negated
            i += 1
            if i == n:
                return None
            kind, _, payload = toks[i]
        while kind == "FIELD":
            field = payload[0]  # type: ignore[index]
            i += 1
            if i == n:
                return None
            kind, _, payload = toks[i]
        if kind != "TERM":
            return None
        node: Node = ("T", _term(field, payload))  # type: ignore[arg-type]
        if negated:
            node = ("N", node)
            if node not in neg:
                neg.append(node)
        elif node not in pos:
            pos.append(node)
        i += 1
    if not pos:
        return None
    terms = tuple(t[1] for t in pos)
    if len(pos) == 1 and not neg:
        return pos[0], terms
    return ("A", tuple(pos + neg)), terms


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
        return any(anchored(c) for c in node[1])
    return all(anchored(c) for c in node[1])


_phrase_cache: dict[str, tuple[_Tok, ...]] = {}


def _parse_fast(text: str) -> Query | None:
    """Queries without parentheses, AND or OR: split on quotes and spaces, reuse cached words.

    None when the query needs the full lexer and parser, which also produce every error.
    """
    if "(" in text or ")" in text:
        return None
    segs = text.split('"') if '"' in text else (text,)
    if not len(segs) & 1:
        return None  # unterminated phrase
    chunks = _chunk_cache
    toks: list[_Tok] = []
    last = len(segs) - 1
    for i, seg in enumerate(segs):
        if i & 1:
            got = _phrase_cache.get(seg)
            if got is None:
                try:
                    got = _lex_chunk(f'"{seg}"', text, 1)
                except QueryError:
                    return None
                if len(_phrase_cache) > 200_000:
                    _phrase_cache.clear()
                _phrase_cache[seg] = got
            toks += got
            continue
        for w in seg.split():
            got = chunks.get(w)
            if got is None:
                if w == "-":  # NOT when glued to the next phrase, else punctuation
                    if i < last and seg.endswith("-"):
                        toks.append(("NOT", 1, "'-'"))
                    continue
                try:
                    got = _lex_chunk(w, text, 1)
                except QueryError:
                    return None
                if len(chunks) > 200_000:
                    chunks.clear()
                chunks[w] = got
            toks += got
    if not toks:
        return None
    for t in toks:
        if t[0] not in _SIMPLE_KINDS:
            return None
    got2 = _parse_simple(toks)
    if got2 is None:
        return None
    return Query(text, got2[0], got2[1])


_queries: dict[str, Query] = {}


def _parse(text: str) -> Query:
    got = _queries.get(text)
    if got is None:
        got = _parse_fast(text) or _parse_full(text)
        if len(_queries) > 150_000:
            _queries.clear()
        _queries[text] = got
    return got


def _parse_full(text: str) -> Query:
    if not text.strip():
        raise QueryError("empty query", query=text, column=1)
    toks = _lex(text)
    if not toks:
        raise QueryError("query has no words to match", query=text, column=1)
    node = _Parser(text, toks).parse()
    if not anchored(node):
        raise QueryError(
            "query has only negated terms (NOT/-): add a word it must contain",
            query=text,
            column=toks[0][1],
        )
    return Query(text, node, _static_terms(node))


def _static_terms(node: Node) -> tuple[Term, ...] | None:
    """The positive terms of a tree without OR: then every one of them holds when the query does."""
    out: list[Term] = []

    def walk(n: Node) -> bool:
        kind = n[0]
        if kind == "T":
            if n[1] not in out:
                out.append(n[1])
            return True
        if kind == "N":
            return True  # negated terms are never highlighted
        if kind == "O":
            return False
        return all(walk(c) for c in n[1])

    return tuple(out) if walk(node) else None


def parse_query(text: str) -> Query:
    """Parse one `keywords`/`exclude` entry; raises QueryError with a 1-based column."""
    if not isinstance(text, str):
        raise QueryError(f"a query must be a string, not {type(text).__name__}", query=repr(text))
    return _parse(text)


def author_query(name: str) -> Query:
    """An `authors` entry "X": exactly the query author:"X" (so reported as 'author:"X"')."""
    if not isinstance(name, str):
        raise QueryError(f"an author must be a string, not {type(name).__name__}", query=repr(name))
    clean = " ".join(name.replace('"', " ").split())
    if not clean:
        raise QueryError("empty author name", query=name, column=1)
    try:
        return _parse(f'author:"{clean}"')
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
    get = _queries.get
    try:
        kw = tuple([get(q) or _parse(q) for q in keywords])
        ex = tuple([get(q) or _parse(q) for q in exclude]) if exclude else ()
    except (TypeError, AttributeError):  # not strings: report it as a query error
        for q in (*keywords, *exclude):
            parse_query(q)
        raise
    au = tuple(map(author_query, authors)) if authors else ()
    if type(min_upvotes) is not int:
        min_upvotes = int(min_upvotes)
    return _new_filter(kw, ex, au, min_upvotes, kw + au if au else kw)


_setters = tuple(getattr(CompiledFilter, f).__set__ for f in CompiledFilter.__slots__)


def _new_filter(*values: object) -> CompiledFilter:
    """CompiledFilter(...) without the frozen-dataclass __init__ overhead (one per subscriber)."""
    flt = object.__new__(CompiledFilter)
    for setter, value in zip(_setters, values):
        setter(flt, value)
    return flt
