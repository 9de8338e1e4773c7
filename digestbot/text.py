"""The one home of text hygiene: cleaning outside text, arXiv ids and safe links.

Feed data, config values, headers and rendered digests all go through these functions, so the
rule for "what may reach a header, a log line or markup" is written once.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import Any
from urllib.parse import quote, urlsplit

__all__ = [
    "UNSAFE",
    "arxiv_id",
    "block_bytes",
    "clean_block",
    "clean_line",
    "has_unsafe",
    "header_uri_problem",
    "latex_to_text",
    "plain_text",
    "safe_http_url",
    "snippet",
]

# C0 controls (CR, LF, NUL...), DEL, C1 controls, Unicode line/paragraph separators and the bidi
# embedding, override and isolate marks: none of them may reach a header, a log line or one line
# of a digest.
UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")

# arXiv identifiers: new style 2401.01234 (YYMM.NNNNN) and old style hep-th/9901001, either with vN.
_ARXIV_NEW = re.compile(r"(\d{2}(?:0[1-9]|1[0-2])\.\d{4,5})(?:v\d+)?")
_ARXIV_OLD = re.compile(r"([a-z]+(?:-[a-z]+)*(?:\.[A-Z]{2})?/\d{2}(?:0[1-9]|1[0-2])\d{3})(?:v\d+)?")

_URL_FORBIDDEN = re.compile(r"[\s<>\"'`\\{}|^]")
_URL_SAFE = "/:?#[]@!$&'()*+,;=%~-._"
URL_MAX = 2000

# What a URI inside a header's <...> may not contain (RFC 2369/8058 and what mail clients read):
# space and controls, non-ASCII, the delimiters <>"\`{}|^ and ',' (it separates the URIs).
_HEADER_URI_FORBIDDEN = re.compile(r"[\x00-\x20\x7f-\U0010ffff<>\"\\`{}|^,]")
HEADER_URI_MAX = 900

# Control characters dropped from a multi-line body (tab and newline stay).
_BLOCK_UNSAFE_BYTES = bytes([*range(0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F])


def has_unsafe(value: str) -> bool:
    """True when `value` holds a character that must never reach a header or one line of output."""
    return bool(UNSAFE.search(value) or _SURROGATE.search(value))


def clean_line(value: object) -> str:
    """`value` as one line of text: unsafe characters become spaces, runs of space collapse, NFC."""
    text = _SURROGATE.sub("\ufffd", str(value))
    text = unicodedata.normalize("NFC", UNSAFE.sub(" ", text))
    return " ".join(text.split())


def clean_block(value: str) -> bytes:
    """Multi-line text (a message body) as the UTF-8 bytes a body is encoded from: CRLF and CR
    become LF, control characters other than tab and newline are dropped, and the text ends
    with one newline. A lone surrogate (no UTF-8 form) is a UnicodeEncodeError, a ValueError.

    The controls are dropped from the UTF-8 bytes (bytes.translate, C): a multi-byte UTF-8
    sequence holds no byte below 0x80, so this is the same as dropping the characters, and
    several times faster than a regex over a 40 KB body. The bytes are what quoted-printable
    reads, so a body is encoded to UTF-8 once.
    """
    text = value.replace("\r\n", "\n").replace("\r", "\n") if "\r" in value else value
    data = block_bytes(text)
    return data if data.endswith(b"\n") else data + b"\n"


def block_bytes(value: str) -> bytes:
    """The UTF-8 bytes of `value` without the control characters clean_block drops (CR stays:
    clean_block turns it into LF first). Dropping a character never joins or splits a line, so
    the bytes of a text are those of its parts, one after another (mime.encode_body cuts a
    body so)."""
    return value.encode("utf-8").translate(None, _BLOCK_UNSAFE_BYTES)


def header_uri_problem(value: str) -> str | None:
    """Why `value` cannot stand as a URI in a header like List-Unsubscribe, or None when it can.

    The one rule for the unsubscribe mailto: and https URIs: plain ASCII, at most
    HEADER_URI_MAX characters, none of space, controls or <>"\\`{}|^ and no ','.
    """
    if len(value) > HEADER_URI_MAX:
        return f"is longer than {HEADER_URI_MAX} characters"
    bad = _HEADER_URI_FORBIDDEN.search(value)
    if bad:
        char = bad.group()
        what = "a non-ASCII character" if not char.isascii() else f"the character {char!r}"
        return f"contains {what}, which a List-Unsubscribe URI may not hold (use ASCII/IDNA)"
    return None


def snippet(value: object, limit: int = 120) -> str:
    """A short single-line excerpt of outside text, safe in an error message or a log line."""
    text = clean_line(value)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def arxiv_id(value: str) -> str | None:
    """The arXiv id in `value` without its version (``2401.01234v2`` -> ``2401.01234``), else None."""
    value = value.strip()
    match = _ARXIV_NEW.fullmatch(value) or _ARXIV_OLD.fullmatch(value)
    return match.group(1) if match else None


def safe_http_url(value: object) -> str | None:
    """`value` as a link target if it is an absolute http(s) URL with a host, else None.

    Anything else (``javascript:``, ``data:``, relative paths, whitespace or control characters,
    quotes or angle brackets, over URL_MAX characters) is refused. Non-ASCII is percent-encoded.
    """
    if not isinstance(value, str):
        return None
    url = value.strip()
    if not url or len(url) > URL_MAX or has_unsafe(url) or _URL_FORBIDDEN.search(url):
        return None
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc or not host:
        return None
    return quote(url, safe=_URL_SAFE)


# --------------------------------------------------------------------------- LaTeX as text

# Characters that LaTeX reads as markup but feeds use as plain text: a comment sign would hide
# the rest of an abstract ("5% better ..."), '&' and '#' are table and macro syntax.
_LATEX_PLAIN = re.compile(r"(?<!\\)([%&#])")


@lru_cache(maxsize=1)
def _latex_converter() -> tuple[Any, Any]:
    """pylatexenc's walker context and converter, built on first use (no work at import time).

    One addition to pylatexenc's defaults: '_' in math is a subscript and reads as nothing
    (`$\\ell_p$` is "ℓp"); outside math it stays a plain underscore.
    """
    from pylatexenc import macrospec
    from pylatexenc.latex2text import LatexNodes2Text, SpecialsTextSpec
    from pylatexenc.latex2text import get_default_latex_context_db as text_db
    from pylatexenc.latexwalker import get_default_latex_context_db as walker_db

    def underscore(node: Any, **_: Any) -> str:
        return "" if node.parsing_state.in_math_mode else "_"

    walker_context = walker_db()
    walker_context.add_context_category(
        "digestbot", prepend=True, specials=[macrospec.SpecialsSpec("_")]
    )
    text_context = text_db()
    text_context.add_context_category(
        "digestbot", prepend=True, specials=[SpecialsTextSpec("_", simplify_repl=underscore)]
    )
    return walker_context, LatexNodes2Text(latex_context=text_context, math_mode="text")


@lru_cache(maxsize=4096)
def latex_to_text(value: str) -> str:
    """LaTeX in a title or abstract as plain Unicode (`$\\ell_p$` -> ℓp, `\\emph{x}` -> x).

    Text without a backslash or a dollar is returned unchanged. The conversion is pylatexenc's
    (tolerant parsing); should it fail on some input, the text is kept as it was.
    """
    if "\\" not in value and "$" not in value:
        return value
    from pylatexenc.latexwalker import LatexWalker, LatexWalkerError

    walker_context, converter = _latex_converter()
    try:
        walker = LatexWalker(
            _LATEX_PLAIN.sub(r"\\\1", value), latex_context=walker_context, tolerant_parsing=True
        )
        return str(converter.nodelist_to_text(walker.get_latex_nodes()[0]))
    except (LatexWalkerError, ValueError, IndexError, KeyError, RecursionError):
        # a converter failure must not lose a paper: keep the text as sent
        return value


def plain_text(value: object) -> str:
    """A feed's title or abstract as one clean line of plain text: LaTeX converted, then
    :func:`clean_line`. Matching, highlights and digests all see this same text."""
    return clean_line(latex_to_text(str(value)))
