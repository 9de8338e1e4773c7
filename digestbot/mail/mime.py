"""Hand-built MIME: header folding (RFC 5322), encoded words (RFC 2047), quoted-printable (RFC 2045).

The standard ``email`` package's header registry, ``set_content`` and generator cost a seventh
of a send; a digest is always the same shape (a few ASCII headers, one multipart/alternative of
UTF-8 text and HTML), so these few functions write it straight to bytes. They are safe on any
input: a header token that is not plain printable ASCII becomes encoded words, and
:func:`header` refuses CR, LF and non-ASCII, so no value can start a header of its own.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections.abc import Sequence

from digestbot.text import block_bytes, clean_block

__all__ = [
    "LINE_LIMIT",
    "WORD_LIMIT",
    "encode_body",
    "encoded_words",
    "header",
    "multipart_alternative",
    "phrase_tokens",
    "quoted_printable",
    "unstructured_tokens",
]

LINE_LIMIT = 78
"""RFC 5322 §2.1.1: a header line should be at most 78 characters (without CRLF)."""

WORD_LIMIT = LINE_LIMIT - len("Subject: ")
"""The longest word (encoded or literal) written: it fits on a header's first line after the
longest name that carries text (``Subject: ``), and on any continuation line. Below RFC 2047's
75 characters per encoded word."""

_ATEXT = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+/=?^_`{|}~-"
)

# RFC 2047 §5(3) "Q" for a phrase (the strictest context, so one table serves every header):
# letters, digits and !*+-/ stay, space is "_", every other octet is =XX.
_Q_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!*+-/")
_Q = [chr(o) if o in _Q_SAFE else f"={o:02X}" for o in range(256)]
_Q[0x20] = "_"

_EW_OVERHEAD = len("=?utf-8?q??=")
_B_CHUNK = (WORD_LIMIT - _EW_OVERHEAD) // 4 * 3  # octets per "B" word
_Q_CHUNK = WORD_LIMIT - _EW_OVERHEAD  # encoded characters per "Q" word


def encoded_words(text: str) -> list[str]:
    """``text`` as RFC 2047 UTF-8 encoded words of at most WORD_LIMIT characters each.

    "Q" unless "B" is clearly shorter (the standard library's bias, so plain-Latin text stays
    readable); a character is never split between two words, so each decodes on its own.
    Joined by spaces, the words decode back to exactly ``text`` (space between encoded words
    is dropped by decoders; spaces of ``text`` are inside the words).
    """
    data = text.encode("utf-8")
    q_len = sum(len(_Q[o]) for o in data)
    use_q = q_len - (len(data) + 2) // 3 * 4 < 5
    words: list[str] = []
    chunk = bytearray()
    size = 0
    for ch in text:
        octets = ch.encode("utf-8")
        cost = sum(len(_Q[o]) for o in octets) if use_q else len(octets)
        if chunk and size + cost > (_Q_CHUNK if use_q else _B_CHUNK):
            words.append(_encoded_word(bytes(chunk), use_q))
            chunk.clear()
            size = 0
        chunk += octets
        size += cost
    if chunk or not words:
        words.append(_encoded_word(bytes(chunk), use_q))
    return words


def _encoded_word(data: bytes, use_q: bool) -> str:
    if use_q:
        return "=?utf-8?q?" + "".join([_Q[o] for o in data]) + "?="
    return "=?utf-8?b?" + base64.b64encode(data).decode("ascii") + "?="


def _plain_word(word: str) -> bool:
    """A word that may stand as itself: printable ASCII, short, and not mistakable for an
    encoded word (a decoder would decode ``=?...?=`` found in plain text)."""
    return (
        0 < len(word) <= WORD_LIMIT
        and word.isascii()
        and word.isprintable()
        and "=?" not in word
        and "?=" not in word
    )


def unstructured_tokens(text: str) -> list[str]:
    """The words of an unstructured header (Subject), to be joined by single spaces.

    Plain words stay as they are; each run of other words (non-ASCII, control characters,
    over-long, ``=?``-like) becomes encoded words, spaces included. Text with leading,
    trailing or doubled spaces is encoded whole, so every space survives a decoder.
    """
    if not text:
        return []
    words = text.split(" ")
    if not all(words):
        return encoded_words(text)
    tokens: list[str] = []
    run: list[str] = []
    for word in words:
        if _plain_word(word):
            if run:
                tokens += encoded_words(" ".join(run))
                run = []
            tokens.append(word)
        else:
            run.append(word)
    if run:
        tokens += encoded_words(" ".join(run))
    return tokens


def phrase_tokens(text: str, *, quote: bool = False) -> list[str]:
    """A display name (RFC 5322 phrase) as words to be joined by single spaces.

    Atoms when every word is one, a quoted-string when the name is plain ASCII with specials
    (or ``quote`` asks for one), encoded words otherwise (non-ASCII, control characters,
    words too long to fold, ``=?``). The empty name gives no words.
    """
    if not text:
        return []
    words = text.split(" ")
    if all(words) and all(_plain_word(w) for w in words):
        if not quote and all(_ATEXT.issuperset(w) for w in words):
            return words
        parts = ('"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"').split(" ")
        if all(len(p) <= WORD_LIMIT for p in parts):
            return parts
    return encoded_words(text)


def header(name: str, tokens: Sequence[str]) -> str:
    """One header field, folded with CRLF before a token that would pass LINE_LIMIT.

    The first token always stays on the name's line; a token longer than a line (a long URL
    or address) gets a line of its own. Refuses (ValueError) CR, LF or non-ASCII in a token:
    whatever reaches here was encoded or validated, this is the last guard against injection.
    """
    line = name + ":"
    lines: list[str] = []
    for i, token in enumerate(tokens):
        if not (token.isascii() and token.isprintable()) or not token or " " in token:
            raise ValueError(f"{name}: header token {token[:40]!r} is not one printable ASCII word")
        if i and len(line) + 1 + len(token) > LINE_LIMIT:
            lines.append(line)
            line = ""
        line += " " + token
    lines.append(line)
    return "\r\n".join(lines) + "\r\n"


QP_CACHE_LINES = 4096
"""Encoded lines kept for reuse (about 2 MB): the lines of the frame around the paper blocks
(encode_body keeps the blocks' own lines) recur in many digests of a run."""

_qp_lines: dict[bytes, bytes] = {}


def quoted_printable(body: bytes) -> bytes:
    """A UTF-8 ``body`` (LF line ends; text.clean_block) as quoted-printable with CRLF line ends.

    binascii's encoder (C): lines of at most 76 characters with soft breaks (RFC 2045 §6.7),
    ``=`` always escaped, trailing space or tab escaped, a lone ``.`` escaped (SMTP).

    It encodes each line on its own, which is what it does over the whole text, so a line is
    encoded once and reused: lines of the frame recur in thousands of digests of a run, and the
    encoder costs ten nanoseconds a byte. The reuse is bounded
    (QP_CACHE_LINES) and changes no byte (tests/test_mime.py checks it against the whole).
    """
    if b"\r" in body:
        raise ValueError("a body must have LF line ends (text.clean_block) before encoding")
    cache = _qp_lines
    out = []
    lines = body.split(b"\n")
    last = lines.pop()  # the end of the body, after its last line break (often nothing)
    for line in lines:
        encoded = cache.get(line)
        if encoded is None:
            # with its line break, as in the whole: a line ending in a space or tab takes a soft
            # break where the encoder sees the end of the data, not where it sees a line break
            encoded = binascii.b2a_qp(line + b"\n", istext=True)[:-1].replace(b"\n", b"\r\n")
            if len(cache) >= QP_CACHE_LINES:
                cache.clear()
            cache[line] = encoded
        out.append(encoded)
    out.append(binascii.b2a_qp(last, istext=True).replace(b"\n", b"\r\n") if last else b"")
    return b"\r\n".join(out)


PIECE_CACHE = 4096
"""Pieces (paper blocks as a template inserted them) whose inner lines are kept encoded."""

PIECE_MIN = 64
"""Characters: a piece's inner lines shorter than this are encoded with the rest of the body."""

_HEAD = 32


def encode_body(text: str, pieces: Sequence[str] = ()) -> bytes:
    """``text`` as a body: ``quoted_printable(clean_block(text))``, byte for byte.

    ``pieces`` are strings the text may hold verbatim, in this order: the paper blocks as the
    templates inserted them. The same block is in thousands of digests of a run, so the lines
    of each piece after its first and up to its last (those of the piece alone, whatever stands
    before or after it on the first and last lines) are encoded once and reused (PIECE_CACHE
    pieces kept). A piece is used only where it is found, from a line start to a line end;
    one that is not found, or text with a CR (clean_block rewrites line ends), changes
    nothing but the speed: quoted-printable encodes each line on its own, so the encoding of
    a body is that of its runs of whole lines, one after another.
    """
    if not pieces or "\r" in text:
        return quoted_printable(clean_block(text))
    out: list[bytes] = []
    at = 0
    for piece in pieces:
        inner = _inner_lines(piece)
        if inner is None:
            continue
        start, end, head, encoded = inner
        # find its head, then compare the rest: several times faster than finding the piece
        found = text.find(head, at)
        while found >= 0 and not text.startswith(piece, found):
            found = text.find(head, found + 1)
        if found < 0:
            continue
        if found + start > at:  # whole lines, ending with the LF before the piece's second line
            out.append(quoted_printable(block_bytes(text[at : found + start])))
        out.append(encoded)
        at = found + end
    rest = text[at:]  # the frame after the last piece (or the whole text): a few lines
    if not out or block_bytes(rest):  # nothing but dropped characters adds no line after a piece
        out.append(quoted_printable(clean_block(rest)))
    return b"".join(out)


@functools.lru_cache(maxsize=PIECE_CACHE)
def _inner_lines(piece: str) -> tuple[int, int, str, bytes] | None:
    """Where the whole lines of ``piece`` after its first start and end, its first characters
    (what encode_body looks for) and the lines' encoding; None when they are too short to be
    worth it or cannot be encoded."""
    start = piece.find("\n") + 1
    end = piece.rfind("\n") + 1
    if end - start < PIECE_MIN:
        return None
    try:
        data = block_bytes(piece[start:end])
    except UnicodeEncodeError:  # a lone surrogate: the body fails to encode where it holds it
        return None
    return start, end, piece[:_HEAD], quoted_printable(data)


_BOUNDARY = re.compile(r"=_[0-9A-Za-z'()+_,./:=?-]{1,68}")
_PART_HEAD = (
    'Content-Type: text/{}; charset="utf-8"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n'
)
_PLAIN_HEAD = _PART_HEAD.format("plain").encode("ascii")
_HTML_HEAD = _PART_HEAD.format("html").encode("ascii")


def multipart_alternative(
    head: str,
    *,
    text: str,
    html: str,
    boundary: str,
    text_pieces: Sequence[str] = (),
    html_pieces: Sequence[str] = (),
) -> bytes:
    """The whole message: ``head`` (header fields, CRLF-ended), MIME-Version, then a
    multipart/alternative of ``text`` (text/plain) and ``html`` (text/html), both cleaned
    (text.clean_block) and UTF-8 quoted-printable (encode_body, with each part's pieces).

    ``boundary`` must start with ``=_``: quoted-printable writes ``=`` only before two hex
    digits or a line end, so such a boundary can never occur in either body (RFC 2046 §5.1.1).
    """
    if not _BOUNDARY.fullmatch(boundary):
        raise ValueError(f"boundary {boundary!r} must start with '=_', at most 70 characters")
    mark = boundary.encode("ascii")
    return b"".join(
        (
            head.encode("ascii"),
            b'MIME-Version: 1.0\r\nContent-Type: multipart/alternative;\r\n boundary="',
            mark,
            b'"\r\n\r\n--',
            mark,
            b"\r\n",
            _PLAIN_HEAD,
            encode_body(text, text_pieces),
            b"\r\n--",
            mark,
            b"\r\n",
            _HTML_HEAD,
            encode_body(html, html_pieces),
            b"\r\n--",
            mark,
            b"--\r\n",
        )
    )
