"""Conformance of the hand-built MIME (digestbot.mail.mime, build_message): RFC 5322 folding,
RFC 2047 encoded words, RFC 2045 quoted-printable, injection safety and DKIM, each proven by a
parse back with the standard library's parser."""

from __future__ import annotations

import base64
import binascii
import email
import email.policy
import re
from datetime import UTC, datetime
from email.header import decode_header, make_header
from email.message import EmailMessage
from typing import Any

import dkim
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from digestbot.mail import build_message, dkim_sign, make_message_id, mime
from digestbot.render import RenderedDigest
from digestbot.text import clean_block, clean_line
from tests.helpers import MESSAGE_HEADERS, make_rsa_key

FROM = "Paper Digest <digest@example.org>"
MAILTO = "mailto:unsubscribe@example.org?subject=unsubscribe"
UNSUB_URL = "https://digest.example.org/unsubscribe?token=abc123"
HEADERS = MESSAGE_HEADERS
_EW = re.compile(r"=\?utf-8\?([qb])\?([^?\s]*)\?=")
_FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Any text at all: every Unicode plane, controls, CR/LF, tabs, '=?' look-alikes, long words.
_ANY_TEXT = st.lists(
    st.one_of(
        st.characters(codec="utf-8"),
        st.sampled_from(["\r", "\n", "\t", " ", "=?", "?=", '"', "\\", "<", ">", ",", "_", "é"]),
    ),
    max_size=200,
).map("".join)
_LONG_WORDS = st.lists(
    st.text(alphabet="abcxyzéü李🚀=?_", min_size=1, max_size=200), max_size=6
).map(" ".join)


def _parse(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def _one_header(value: str) -> EmailMessage:
    """Parse one header field written by mime.header, followed by an empty body."""
    return _parse(value.encode("ascii") + b"\r\nbody\r\n")


def _stdlib_name_readings(name: str, *, quote: bool = False) -> set[str]:
    """How the stdlib parser may read back the display name ``name`` as phrase_tokens writes it.

    RFC 2047 §6.2: space between two adjacent encoded words is ignored, so a long name split
    into several words keeps its spaces inside them (email.header.decode_header reads it so).
    CPython's address parser before gh-128110 (fixed in 2025) wrongly keeps that space: one
    extra space at each split, which is that parser's reading, not a different name.
    """
    tokens = mime.phrase_tokens(name, quote=quote)
    if len(tokens) < 2 or not all(_EW.fullmatch(t) for t in tokens):
        return {name}
    pieces = [str(make_header(decode_header(t))) for t in tokens]
    assert "".join(pieces) == name
    assert str(make_header(decode_header(" ".join(tokens)))) == name  # the RFC reading
    return {name, " ".join(pieces)}


def _header_lines(raw: bytes) -> list[bytes]:
    return raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


def _build(**changes: Any) -> bytes:
    kwargs: dict[str, Any] = {
        "rendered": RenderedDigest(subject="Digest", text="text\n", html="<p>html</p>\n"),
        "from_addr": FROM,
        "to_addr": "ada@example.org",
        "to_name": "Ada Lovelace",
        "message_id": make_message_id(digest_key="k", from_addr=FROM, database_id="db"),
        "date": datetime(2026, 3, 2, 7, 0, tzinfo=UTC),
        "list_id": "Paper Digest <paper-digest.example.org>",
        "unsubscribe_mailto": MAILTO,
        "unsubscribe_url": UNSUB_URL,
    }
    kwargs.update(changes)
    return build_message(**kwargs)


# --------------------------------------------------------------------------- RFC 2047


@_FAST
@given(text=st.one_of(_ANY_TEXT, _LONG_WORDS))
def test_encoded_words_are_short_whole_characters_and_decode_back(text: str) -> None:
    """Encoded words are at most 75 characters, never split a character, and decode to the text."""
    words = mime.encoded_words(text)
    pieces = []
    for word in words:
        assert len(word) <= min(75, mime.WORD_LIMIT) and word.isascii()
        match = _EW.fullmatch(word)
        assert match, word
        kind, payload = match.groups()
        if kind == "b":
            data = base64.b64decode(payload, validate=True)
        else:
            data = binascii.a2b_qp(payload.encode("ascii"), header=True)
        pieces.append(data.decode("utf-8"))  # each word is whole UTF-8 characters on its own
    assert "".join(pieces) == text
    decoded = decode_header(" ".join(words))
    assert b"".join(part for part, _ in decoded).decode("utf-8") == text  # type: ignore[union-attr]


def test_q_unless_b_is_clearly_shorter() -> None:
    """Mostly-Latin text is Q (readable), mostly-CJK or emoji text is B (shorter)."""
    assert mime.encoded_words("Zoë") == ["=?utf-8?q?Zo=C3=AB?="]
    assert mime.encoded_words("李飞飞")[0].startswith("=?utf-8?b?")
    assert mime.encoded_words("—") == ["=?utf-8?b?4oCU?="]  # as the standard library chose


@_FAST
@given(subject=st.one_of(_ANY_TEXT, _LONG_WORDS))
def test_subject_of_any_text_is_one_header_that_decodes_back(subject: str) -> None:
    """Any subject, even with CR/LF, tabs, controls or '=?', is one folded ASCII header that
    decodes to exactly the same text, every line within 78 characters."""
    field = mime.header("Subject", mime.unstructured_tokens(subject) or ["x"])
    assert field.isascii() and field.endswith("\r\n")
    lines = field[:-2].split("\r\n")
    assert all(len(line) <= mime.LINE_LIMIT for line in lines), lines
    assert all(line.startswith(" ") for line in lines[1:])
    msg = _one_header(field)
    assert list(msg.keys()) == ["Subject"]
    assert msg["Subject"] == (subject or "x")
    assert not msg["Subject"].defects


def test_plain_words_stay_readable() -> None:
    """ASCII words of a subject are written as they are; only the non-ASCII run is encoded."""
    assert mime.unstructured_tokens("Paper Digest — 2 new papers") == [
        "Paper",
        "Digest",
        "=?utf-8?b?4oCU?=",
        "2",
        "new",
        "papers",
    ]
    assert mime.phrase_tokens("Ada Lovelace") == ["Ada", "Lovelace"]
    assert mime.phrase_tokens("Lovelace, Ada") == ['"Lovelace,', 'Ada"']


@_FAST
@given(name=st.one_of(_ANY_TEXT, _LONG_WORDS), quote=st.booleans())
def test_display_name_of_any_text_is_one_mailbox_that_decodes_back(name: str, quote: bool) -> None:
    """Any display name is one folded header line set; cleaned as build_message cleans it, it
    gives exactly one mailbox for the right address, and the name decodes back."""
    raw_field = mime.header("To", [*mime.phrase_tokens(name, quote=quote), "<ada@example.org>"])
    assert all(line.startswith(" ") for line in raw_field[:-2].split("\r\n")[1:])  # no new field
    name = clean_line(name)
    field = mime.header("To", [*mime.phrase_tokens(name, quote=quote), "<ada@example.org>"])
    assert all(len(line) <= mime.LINE_LIMIT for line in field[:-2].split("\r\n"))
    msg = _one_header(field)
    assert list(msg.keys()) == ["To"]
    (address,) = msg["To"].addresses
    assert address.addr_spec == "ada@example.org"
    assert address.display_name in _stdlib_name_readings(name, quote=quote)
    assert not msg["To"].defects


@pytest.mark.parametrize("token", ["a\r\nBcc: x@y.z", "a\nb", "a\rb", "é", "a b", "", "a\x00b"])
def test_header_refuses_tokens_that_could_inject(token: str) -> None:
    """A header word with CR, LF, a control, a space or non-ASCII is refused, never written."""
    with pytest.raises(ValueError):
        mime.header("Subject", ["ok", token])


def test_long_verbatim_token_gets_its_own_line() -> None:
    """A URL longer than a line is kept whole on its own continuation line."""
    url = "<https://example.org/u?t=" + "a" * 200 + ">"
    field = mime.header("List-Unsubscribe", ["<mailto:u@example.org>,", url])
    assert field == f"List-Unsubscribe: <mailto:u@example.org>,\r\n {url}\r\n"


# --------------------------------------------------------------------------- RFC 2045


@_FAST
@given(
    body=st.one_of(_ANY_TEXT, st.text(max_size=3000), st.text(alphabet="x. \t=\n", max_size=500))
)
def test_quoted_printable_is_short_crlf_ascii_and_decodes_back(body: str) -> None:
    """A body is quoted-printable with CRLF, lines of at most 76, no '=_', and decodes to the text."""
    text = clean_block(body)
    encoded = mime.quoted_printable(text)
    assert encoded.isascii()
    assert b"\r" not in encoded.replace(b"\r\n", b"") and b"\n" not in encoded.replace(b"\r\n", b"")
    assert all(len(line) <= 76 for line in encoded.split(b"\r\n"))
    assert b"=_" not in encoded
    assert all(line != b"." for line in encoded.split(b"\r\n"))  # never ends an SMTP DATA
    assert binascii.a2b_qp(encoded) == text.replace(b"\n", b"\r\n")


@_FAST
@given(
    bodies=st.lists(
        st.one_of(_ANY_TEXT, st.text(alphabet="ab. \t=\n\u00e9\u2026", max_size=300)),
        min_size=1,
        max_size=4,
    )
)
@example(bodies=["=======ééé………… "])  # a last line of 76 with a trailing space (found by CI)
def test_quoted_printable_line_by_line_is_the_whole_encoded_at_once(bodies: list[str]) -> None:
    """Encoding reuses lines seen before and changes no byte: each body is what binascii makes
    of the whole of it, whatever bodies came before."""
    for body in bodies + bodies:
        text = clean_block(body)
        whole = binascii.b2a_qp(text, istext=True).replace(b"\n", b"\r\n")
        assert mime.quoted_printable(text) == whole


_LINES = st.text(alphabet="ab .=\t\u00e9\u2026\x01", max_size=90)
_BLOCK = st.one_of(
    st.lists(_LINES, min_size=2, max_size=8).map("\n".join),  # a paper block: several lines
    _ANY_TEXT,
)


@_FAST
@given(
    frame=st.lists(st.one_of(_ANY_TEXT, _LINES), min_size=1, max_size=5),
    blocks=st.lists(_BLOCK, max_size=4),
    stray=st.lists(_BLOCK, max_size=2),
    data=st.data(),
)
def test_encode_body_with_pieces_is_the_whole_body_encoded(
    frame: list[str], blocks: list[str], stray: list[str], data: st.DataObject
) -> None:
    """A body encoded with its pieces (the paper blocks it holds, found and encoded once per
    run) is byte for byte the body encoded whole: whatever the frame around the blocks (CR,
    controls, text on the blocks' first and last lines), pieces the body does not hold, and
    pieces in another order."""
    text = frame[0]
    for i, block in enumerate(blocks):
        text += block + (frame[(i + 1) % len(frame)] if data.draw(st.booleans()) else "\n")
    pieces = data.draw(st.permutations(blocks + stray)) if data.draw(st.booleans()) else blocks
    whole = mime.quoted_printable(clean_block(text))
    for _ in range(2):  # the second time from the cache
        assert mime.encode_body(text, pieces) == whole


def test_encode_body_encodes_a_block_once_for_every_body_holding_it() -> None:
    """The lines of a block after its first are encoded once and reused in each body that
    holds it, with different text before and after it on its first and last lines."""
    block = (
        "Title line\n"
        + "".join(f"    abstract line {i} = caf\u00e9\n" for i in range(5))
        + "    end"
    )
    mime._inner_lines.cache_clear()
    for name in ("Ann", "Bob", "Chi"):
        text = f"Hello {name},\n\n1.  {block} [{name}]\n\nBye {name}\n"
        assert mime.encode_body(text, [block]) == mime.quoted_printable(clean_block(text))
    info = mime._inner_lines.cache_info()
    assert (info.misses, info.hits) == (1, 2)


def test_body_with_carriage_returns_is_refused() -> None:
    """A body not cleaned to LF line ends is a ValueError rather than a bare CR on the wire."""
    with pytest.raises(ValueError):
        mime.quoted_printable(b"a\rb\n")


@pytest.mark.parametrize("boundary", ["abc", "==x", "=_", "=_a b", "=_" + "a" * 69, "=_é"])
def test_boundary_that_could_occur_in_a_body_is_refused(boundary: str) -> None:
    """Only a boundary starting '=_' (which quoted-printable never writes) and within RFC 2046's
    grammar and 70 characters is accepted."""
    with pytest.raises(ValueError):
        mime.multipart_alternative("", text="t\n", html="h\n", boundary=boundary)


# --------------------------------------------------------------------------- whole messages


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    subject=st.one_of(_ANY_TEXT, _LONG_WORDS),
    name=st.one_of(st.none(), _ANY_TEXT, _LONG_WORDS),
    text=st.one_of(_ANY_TEXT, st.text(max_size=2000)),
    html=st.one_of(_ANY_TEXT, st.text(max_size=2000)),
)
def test_any_subject_name_and_bodies_survive_a_parse_back(
    subject: str, name: str | None, text: str, html: str
) -> None:
    """Whatever the subject, name and bodies, the stdlib parser reads exactly the headers written,
    one recipient, and the same subject, name, text and HTML after today's cleaning."""
    raw = _build(
        rendered=RenderedDigest(subject=subject, text=text, html=html),
        to_name=name,
        unsubscribe_url=UNSUB_URL,
    )
    assert raw.isascii()
    assert b"\r" not in raw.replace(b"\r\n", b"") and b"\n" not in raw.replace(b"\r\n", b"")
    assert all(len(line) <= mime.LINE_LIMIT for line in _header_lines(raw))
    assert all(len(line) <= 76 for line in raw.split(b"\r\n\r\n", 1)[1].split(b"\r\n"))
    msg = _parse(raw)
    assert list(msg.keys()) == HEADERS
    assert msg["Subject"] == (clean_line(subject)[:400].rstrip() or "Paper digest")
    (to,) = msg["To"].addresses
    assert to.addr_spec == "ada@example.org"
    assert to.display_name in _stdlib_name_readings(clean_line(name)[:200].rstrip() if name else "")
    assert msg.get_content_type() == "multipart/alternative"
    boundary = msg.get_boundary()
    assert boundary and boundary.startswith("=_")
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    for part, source in zip(parts, (text, html)):
        assert part["Content-Transfer-Encoding"] == "quoted-printable"
        assert part.get_content_charset() == "utf-8"
        assert list(part.keys()) == ["Content-Type", "Content-Transfer-Encoding"]
        assert part.get_content().replace("\r\n", "\n") == clean_block(source).decode("utf-8")
    for part in msg.walk():
        assert not part.defects
    for key in msg:
        assert not msg[key].defects, key


def test_same_digest_gives_the_same_bytes() -> None:
    """Building the same digest twice gives identical bytes (the boundary comes from the Message-ID)."""
    assert _build() == _build()
    other = make_message_id(digest_key="other", from_addr=FROM, database_id="db")
    assert _parse(_build()).get_boundary() != _parse(_build(message_id=other)).get_boundary()


def test_absurd_message_id_line_is_refused() -> None:
    """A Message-ID that would make a header line over 998 octets is a ValueError, never sent."""
    with pytest.raises(ValueError):
        _build(message_id="<" + "a" * 1000 + "@example.org>")


# --------------------------------------------------------------------------- DKIM


@pytest.fixture(scope="module")
def rsa_key() -> tuple[bytes, bytes]:
    return make_rsa_key()


def _dnsfunc(public_der: bytes) -> Any:
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public_der)

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return record if name == b"mail._domainkey.example.org." else None

    return dnsfunc


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(subject=st.one_of(_ANY_TEXT, _LONG_WORDS), name=st.one_of(_ANY_TEXT, _LONG_WORDS))
def test_dkim_verifies_over_folded_encoded_headers(
    rsa_key: tuple[bytes, bytes], subject: str, name: str
) -> None:
    """A message with folded, encoded From/To/Subject headers is signed and verifies."""
    private_pem, public_der = rsa_key
    raw = _build(
        rendered=RenderedDigest(subject=subject, text=subject, html=name),
        to_name=name,
        from_addr="Bücherwurm Digest — Zoë <digest@example.org>",
    )
    signed = dkim_sign(raw, selector="mail", domain="example.org", private_key=private_pem)
    assert dkim.verify(signed, dnsfunc=_dnsfunc(public_der))
    assert not dkim.verify(signed + b"x", dnsfunc=_dnsfunc(public_der))
