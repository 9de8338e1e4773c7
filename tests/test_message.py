"""Tests of digestbot.mail.message: MIME structure, headers, injection safety, encoding, DKIM."""

from __future__ import annotations

import base64
import email.policy
import os
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import dkim
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from digestbot.errors import ConfigError
from digestbot.mail import build_message, dkim_sign, make_message_id
from digestbot.render import RenderedDigest
from tests.helpers import MESSAGE_HEADERS, make_rsa_key

GOLDEN = Path(__file__).parent / "golden"
REGEN = os.environ.get("DIGESTBOT_REGEN_GOLDEN") == "1"

FROM = "Paper Digest <digest@example.org>"
DATE = datetime(2026, 3, 2, 7, 0, tzinfo=UTC)
LIST_ID = "Paper Digest <paper-digest.example.org>"
MAILTO = "mailto:unsubscribe@example.org?subject=unsubscribe"
UNSUB_URL = "https://digest.example.org/unsubscribe?token=abc123"

RENDERED = RenderedDigest(
    subject="Paper Digest — 2 new papers for 2026-03-02",
    text=(
        "Hello Zoë,\n\n1.  *Speculative decoding* for LLMs\n    Jürgen Schmidhuber, 李飞飞\n\n"
        + "An unbroken abstract: "
        + "x" * 1200
        + "\n\n"
        "Unsubscribe: https://digest.example.org/unsubscribe?token=abc123\n"
    ),
    html=(
        '<!DOCTYPE html>\n<html lang="en"><body><table><tr><td>'
        '<mark style="background-color:#fff3a3;">Speculative decoding</mark> for LLMs — Zoë'
        "</td></tr></table></body></html>\n"
    ),
)

EXPECTED_HEADERS = MESSAGE_HEADERS


def _build(**changes: Any) -> bytes:
    kwargs: dict[str, Any] = {
        "rendered": RENDERED,
        "from_addr": FROM,
        "to_addr": "ada@example.org",
        "to_name": "Ada Lovelace",
        "message_id": make_message_id(
            digest_key="ada@example.org/2026-03-02", from_addr=FROM, database_id="db1"
        ),
        "date": DATE,
        "list_id": LIST_ID,
        "unsubscribe_mailto": MAILTO,
        "unsubscribe_url": UNSUB_URL,
    }
    kwargs.update(changes)
    return build_message(**kwargs)


def _parse(raw: bytes) -> EmailMessage:
    msg = BytesParser(policy=email.policy.strict).parsebytes(raw)
    assert isinstance(msg, EmailMessage)
    return msg


def _assert_clean(raw: bytes) -> EmailMessage:
    """Parse strictly, and check CRLF endings, line lengths and defect-free parts."""
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert b"\r" not in raw.replace(b"\r\n", b"")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert head.isascii()
    msg = _parse(raw)
    for part in msg.walk():
        assert not part.defects, part.defects
    return msg


def _content(part: EmailMessage) -> str:
    """A decoded text part with the wire's CRLF line endings turned back into LF."""
    content = part.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")


def _mask(raw: bytes) -> str:
    text = raw.decode("ascii")
    text = re.sub(r"(?m)^Message-ID: .*$", "Message-ID: <MASKED>", text)
    text = re.sub(r"(?m)^Date: .*$", "Date: MASKED", text)
    for boundary in set(re.findall(r'boundary="([^"]+)"', text)):
        text = text.replace(boundary, "BOUNDARY")
    return text


# --------------------------------------------------------------------------- structure


def test_golden_message() -> None:
    """The raw message, with Message-ID, Date and boundaries masked, matches tests/golden/message.eml."""
    actual = _mask(_build())
    path = GOLDEN / "message.eml"
    if REGEN:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(actual.encode("ascii"))
    assert path.exists(), f"missing golden file {path}; run with DIGESTBOT_REGEN_GOLDEN=1"
    assert actual == path.read_bytes().decode("ascii")


def test_headers_present_once_each() -> None:
    """Every required header is present exactly once, with the documented values."""
    msg = _assert_clean(_build())
    assert list(msg.keys()) == EXPECTED_HEADERS
    assert msg["From"] == "Paper Digest <digest@example.org>"
    assert msg["To"] == "Ada Lovelace <ada@example.org>"
    assert msg["Subject"] == RENDERED.subject
    assert msg["Date"].datetime == DATE
    assert msg["Message-ID"] == make_message_id(
        digest_key="ada@example.org/2026-03-02", from_addr=FROM, database_id="db1"
    )
    assert msg["List-Id"] == '"Paper Digest" <paper-digest.example.org>'
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["Precedence"] == "bulk"
    assert msg["MIME-Version"] == "1.0"


def test_multipart_alternative_text_first_then_html() -> None:
    """The body is multipart/alternative with UTF-8 quoted-printable text/plain first, text/html second."""
    msg = _assert_clean(_build())
    assert msg.get_content_type() == "multipart/alternative"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    for part, source in zip(parts, (RENDERED.text, RENDERED.html)):
        assert part.get_content_charset() == "utf-8"
        assert part["Content-Transfer-Encoding"] == "quoted-printable"
        assert _content(part) == source
        assert "MIME-Version" not in part


def test_long_unbroken_abstract_keeps_lines_short() -> None:
    """A 5000-character unbroken abstract and a very long subject never produce a line over 998 octets."""
    word = "y" * 5000
    rendered = RenderedDigest(subject="Über " * 300, text=word + "\n", html=f"<p>{word}</p>\n")
    raw = _build(rendered=rendered)
    msg = _assert_clean(raw)
    parts = list(msg.iter_parts())
    assert _content(parts[0]) == word + "\n"
    assert _content(parts[1]) == f"<p>{word}</p>\n"


def test_message_bytes_are_crlf() -> None:
    """build_message serializes with CRLF line endings only."""
    raw = _build()
    assert raw.count(b"\r\n") == raw.count(b"\n")


# --------------------------------------------------------------------------- encoding


def test_non_ascii_names_and_subject_round_trip() -> None:
    """Non-ASCII display names and subjects are RFC 2047-encoded in ASCII headers and decode back intact."""
    name = "Zoë Ørsted-Łukasiewicz 李飞飞"
    subject = "Päper Digest — 3 neue Arbeiten für Zoë 🚀"
    raw = _build(
        to_name=name,
        from_addr="Bücherwurm Digest <digest@example.org>",
        rendered=RenderedDigest(subject=subject, text="t\n", html="<p>h</p>\n"),
        list_id="Bücher Liste <books.example.org>",
    )
    msg = _assert_clean(raw)
    assert msg["To"].addresses[0].display_name == name
    assert msg["To"].addresses[0].addr_spec == "ada@example.org"
    assert msg["From"].addresses[0].display_name == "Bücherwurm Digest"
    assert msg["Subject"] == subject
    assert msg["List-Id"] == "Bücher Liste <books.example.org>"
    assert b"=?utf-8?" in raw


def test_display_name_with_specials_is_quoted() -> None:
    """A display name with commas, quotes and angle brackets stays one mailbox for the right address."""
    msg = _assert_clean(_build(to_name='Lovelace, Ada "The Countess" <ada@evil.org>'))
    addresses = msg["To"].addresses
    assert len(addresses) == 1
    assert addresses[0].addr_spec == "ada@example.org"
    assert addresses[0].display_name == 'Lovelace, Ada "The Countess" <ada@evil.org>'


# --------------------------------------------------------------------------- injection


def test_hostile_name_and_subject_cannot_add_headers_or_recipients() -> None:
    """CR/LF and control characters in the name and subject cannot add a header, a recipient or a body."""
    raw = _build(
        to_name="Eve\r\nBcc: victim@example.net\r\nCc: other@example.net",
        rendered=RenderedDigest(
            subject="Hi\r\nBcc: victim@example.net\r\n\r\n<html>fake body\x00\x1b[31m",
            text=RENDERED.text,
            html=RENDERED.html,
        ),
    )
    msg = _assert_clean(raw)
    assert list(msg.keys()) == EXPECTED_HEADERS
    assert msg.get_all("To") is not None and len(msg.get_all("To")) == 1
    assert [a.addr_spec for a in msg["To"].addresses] == ["ada@example.org"]
    assert msg["Bcc"] is None and msg["Cc"] is None
    assert "\n" not in msg["Subject"] and "\x00" not in msg["Subject"]
    assert msg["Subject"].startswith("Hi Bcc: victim@example.net")


@pytest.mark.parametrize(
    "to_addr",
    [
        "ada@example.org, eve@example.net",
        "ada@example.org\r\nBcc: eve@example.net",
        "ada@example.org\nBcc: eve@example.net",
        "Ada <ada@example.org>",
        "<ada@example.org>",
        "ada@example.org eve@example.net",
        "ada@example.org;eve@example.net",
        "not-an-address",
        "@example.org",
        "ada@",
        "ada@localhost",
        "",
        "   ",
        "ada@exa mple.org",
        "ada\x00@example.org",
    ],
)
def test_recipient_must_be_one_plain_address(to_addr: str) -> None:
    """Anything but a single plain addr-spec as the recipient is a ConfigError."""
    with pytest.raises(ConfigError):
        _build(to_addr=to_addr)


@pytest.mark.parametrize(
    "from_addr", ["", "Digest", "a@b.org, c@d.org", "Digest <digest@example.org>\r\nBcc: x@y.z"]
)
def test_from_address_must_be_one_mailbox(from_addr: str) -> None:
    """A From setting that is not exactly one mailbox is a ConfigError."""
    with pytest.raises(ConfigError):
        _build(from_addr=from_addr)


def test_naive_date_and_bad_message_id_are_rejected() -> None:
    """A naive datetime or a malformed Message-ID is a programming error (ValueError)."""
    with pytest.raises(ValueError):
        _build(date=datetime(2026, 3, 2, 7, 0))
    with pytest.raises(ValueError):
        _build(message_id="<abc@example.org>\r\nBcc: x@y.z")
    with pytest.raises(ValueError):
        _build(message_id="no-angle@example.org")


def test_date_keeps_its_offset() -> None:
    """A non-UTC aware date is written with its own offset."""
    zone = timezone(timedelta(hours=2))
    msg = _assert_clean(_build(date=datetime(2026, 3, 2, 9, 0, tzinfo=zone)))
    assert msg["Date"] == "Mon, 02 Mar 2026 09:00:00 +0200"


def test_each_message_has_its_own_date_and_subject_whatever_came_before() -> None:
    """The fields digests of a run share are built once (Date within a second, Subject, the
    mailto: URI), yet each message still shows its own: the same instant in another zone, the
    next second, another subject."""
    utc = datetime(2026, 3, 2, 7, 0, 0, 1000, tzinfo=UTC)
    shown = [
        (_assert_clean(_build(date=d, rendered=replace(RENDERED, subject=s))), d, s)
        for d, s in [
            (utc, "Papers A"),
            (utc.replace(microsecond=999_000), "Papers A"),
            (utc.astimezone(timezone(timedelta(hours=2))), "Papers A"),
            (utc + timedelta(seconds=1), "Papers B"),
            (utc, "Papers A"),
        ]
    ]
    assert [(m["Date"], m["Subject"]) for m, _, _ in shown] == [
        ("Mon, 02 Mar 2026 07:00:00 +0000", "Papers A"),
        ("Mon, 02 Mar 2026 07:00:00 +0000", "Papers A"),
        ("Mon, 02 Mar 2026 09:00:00 +0200", "Papers A"),
        ("Mon, 02 Mar 2026 07:00:01 +0000", "Papers B"),
        ("Mon, 02 Mar 2026 07:00:00 +0000", "Papers A"),
    ]
    other = _assert_clean(_build(unsubscribe_mailto="mailto:leave@example.org?subject=stop"))
    assert "<mailto:leave@example.org?subject=stop>" in str(other["List-Unsubscribe"])


# --------------------------------------------------------------------------- list headers


def test_list_unsubscribe_with_https_url_enables_one_click() -> None:
    """With an https URL, List-Unsubscribe holds mailto and URL, and List-Unsubscribe-Post is One-Click."""
    msg = _assert_clean(_build())
    assert msg["List-Unsubscribe"] == f"<{MAILTO}>, <{UNSUB_URL}>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_list_unsubscribe_without_url_has_no_post_header() -> None:
    """Without a URL, List-Unsubscribe holds only the mailto URI and there is no List-Unsubscribe-Post."""
    msg = _assert_clean(_build(unsubscribe_url=None))
    assert msg["List-Unsubscribe"] == f"<{MAILTO}>"
    assert msg["List-Unsubscribe-Post"] is None


def test_long_unsubscribe_url_is_never_encoded() -> None:
    """A long unsubscribe URL stays verbatim (no RFC 2047 encoded word) and within line limits."""
    url = "https://digest.example.org/unsubscribe?token=" + "a" * 400
    raw = _build(unsubscribe_url=url)
    msg = _assert_clean(raw)
    assert msg["List-Unsubscribe"] == f"<{MAILTO}>, <{url}>"
    header = raw.split(b"\r\n\r\n", 1)[0]
    assert (
        b"=?utf-8?"
        not in header.split(b"List-Unsubscribe:", 1)[1].split(b"List-Unsubscribe-Post")[0]
    )


@pytest.mark.parametrize(
    "url",
    [
        "http://digest.example.org/u",
        "javascript:alert(1)",
        "https://digest.example.org/u>, <https://evil.example.net/",
        "https://digest.example.org/u\r\nBcc: x@y.z",
        "https://",
    ],
)
def test_unsubscribe_url_must_be_plain_https(url: str) -> None:
    """An unsubscribe URL that is not a plain https URL is a ConfigError (RFC 8058 needs HTTPS)."""
    with pytest.raises(ConfigError):
        _build(unsubscribe_url=url)


@pytest.mark.parametrize(
    "mailto", ["unsubscribe@example.org", "mailto:", "mailto:a@b.org>, <https://evil/", "http://x"]
)
def test_unsubscribe_mailto_must_be_mailto_uri(mailto: str) -> None:
    """An unsubscribe address that is not a plain mailto: URI is a ConfigError."""
    with pytest.raises(ConfigError):
        _build(unsubscribe_mailto=mailto)


@pytest.mark.parametrize("list_id", ["", "Paper Digest", "Label <not an id>", "<nodots>"])
def test_list_id_must_name_a_dotted_identifier(list_id: str) -> None:
    """A List-Id without a dotted identifier is a ConfigError."""
    with pytest.raises(ConfigError):
        _build(list_id=list_id)


# --------------------------------------------------------------------------- Message-ID


def test_message_id_is_stable_per_digest_key() -> None:
    """The same digest key gives the same Message-ID, a different key a different one, at the From domain."""
    first = make_message_id(
        digest_key="ada@example.org/2026-03-02", from_addr=FROM, database_id="db1"
    )
    again = make_message_id(
        digest_key="ada@example.org/2026-03-02", from_addr="digest@example.org", database_id="db1"
    )
    other = make_message_id(
        digest_key="ada@example.org/2026-03-03", from_addr=FROM, database_id="db1"
    )
    assert first == again != other
    assert re.fullmatch(r"<digest\.[0-9a-f]{40}@example\.org>", first)
    hostile = make_message_id(digest_key="a>\r\nBcc: x@y.z <", from_addr=FROM, database_id="db1")
    assert re.fullmatch(r"<digest\.[0-9a-f]{40}@example\.org>", hostile)


# --------------------------------------------------------------------------- DKIM


@pytest.fixture(scope="module")
def rsa_key() -> tuple[bytes, bytes]:
    return make_rsa_key()


def _dnsfunc(public_der: bytes) -> Any:
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public_der)

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return record if name == b"mail._domainkey.example.org." else None

    return dnsfunc


def test_dkim_signature_verifies_and_covers_list_headers(rsa_key: tuple[bytes, bytes]) -> None:
    """A signed message verifies against the public key and the signature covers the List-* headers."""
    private_pem, public_der = rsa_key
    signed = dkim_sign(_build(), selector="mail", domain="example.org", private_key=private_pem)
    assert signed.startswith(b"DKIM-Signature:")
    assert dkim.verify(signed, dnsfunc=_dnsfunc(public_der))
    msg = _assert_clean(signed)
    tags = dict(
        item.strip().split("=", 1)
        for item in re.sub(r"\s+", "", str(msg["DKIM-Signature"])).split(";")
        if item
    )
    signed_headers = tags["h"].lower().split(":")
    for name in (
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "list-id",
        "list-unsubscribe",
        "list-unsubscribe-post",
    ):
        assert name in signed_headers
    assert signed_headers.count("from") == 2  # over-signed: a second From breaks the signature
    assert tags["d"] == "example.org" and tags["s"] == "mail"


def test_dkim_without_url_signs_only_present_headers(rsa_key: tuple[bytes, bytes]) -> None:
    """Without an unsubscribe URL, List-Unsubscribe-Post is not listed and the signature still verifies."""
    private_pem, public_der = rsa_key
    signed = dkim_sign(
        _build(unsubscribe_url=None),
        selector="mail",
        domain="example.org",
        private_key=private_pem,
    )
    assert dkim.verify(signed, dnsfunc=_dnsfunc(public_der))
    head = signed.split(b"\r\n\r\n", 1)[0].lower()
    assert b"list-unsubscribe-post" not in head


def test_dkim_detects_tampering(rsa_key: tuple[bytes, bytes]) -> None:
    """Changing a signed header, adding a second From, or changing the body makes verification fail."""
    private_pem, public_der = rsa_key
    signed = dkim_sign(_build(), selector="mail", domain="example.org", private_key=private_pem)
    dnsfunc = _dnsfunc(public_der)
    assert not dkim.verify(
        signed.replace(b"unsubscribe?token=abc123", b"unsubscribe?token=evil00"), dnsfunc=dnsfunc
    )
    assert not dkim.verify(b"From: evil@example.net\r\n" + signed, dnsfunc=dnsfunc)
    assert not dkim.verify(signed.replace(b"Hello Zo", b"Hallo Zo"), dnsfunc=dnsfunc)


def test_dkim_bad_key_or_selector_is_config_error() -> None:
    """An unparsable private key or a malformed selector is a ConfigError."""
    raw = _build()
    with pytest.raises(ConfigError):
        dkim_sign(raw, selector="mail", domain="example.org", private_key=b"not a key")
    with pytest.raises(ConfigError):
        dkim_sign(raw, selector="bad selector\r\n", domain="example.org", private_key=b"not a key")


# --------------------------------------------------------------------------- property


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    subject=st.text(max_size=300),
    name=st.one_of(st.none(), st.text(max_size=120)),
    body=st.text(max_size=2000),
)
def test_arbitrary_text_never_adds_headers_or_defects(
    subject: str, name: str | None, body: str
) -> None:
    """Arbitrary subject, recipient name and body text never add a header or recipient nor cause a parse defect."""
    raw = _build(rendered=RenderedDigest(subject=subject, text=body, html=body), to_name=name)
    msg = _assert_clean(raw)
    assert list(msg.keys()) == EXPECTED_HEADERS
    assert [a.addr_spec for a in msg["To"].addresses] == ["ada@example.org"]
    assert "\n" not in str(msg["Subject"]) and "\r" not in str(msg["Subject"])
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]


# -- whatever settings accept, a message can carry ------------------------------------------------

_DOMAINS = st.sampled_from(
    ["example.org", "bücher.example", "Bücher.Example", "xn--bcher-kva.example", "ñandú.test"]
)
_LOCALS = st.sampled_from(["digest", "a.b", "x+y", "o'neil", "a|b", "a{b}", "a^b", "a`b"])
_URLS = st.sampled_from(
    [
        "https://example.org/unsubscribe?token={token}",
        "https://example.org/unsubscribe?token={token}&email={email}",
        "https://example.org/unsubscribe?token={token}&a=b,c",
        "https://example.org/unsubscribe?token={token}&a=b|c",
        "https://exämple.org/unsubscribe?token={token}",
        "https://example.org/unsubscribe/ü?token={token}",
        "https://example.org/unsubscribe?token={token}&a=^",
        "http://127.0.0.1:8080/unsubscribe?token={token}",
    ]
)
_LIST_IDS = st.sampled_from(
    ["", "digest.example.org", "Bücher <digest.example.org>", "Digest <a.b.c>", "<x.y>"]
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    from_local=_LOCALS,
    from_domain=_DOMAINS,
    unsub=st.one_of(st.none(), st.tuples(_LOCALS, _DOMAINS)),
    url=st.one_of(st.none(), _URLS),
    list_id=_LIST_IDS,
)
def test_settings_load_accepts_are_refused_by_check_or_compose_a_readable_message(
    from_local: str,
    from_domain: str,
    unsub: tuple[str, str] | None,
    url: str | None,
    list_id: str,
) -> None:
    """Mail settings that load either make app.mail_context (what check, send and preview call) raise ConfigError, or compose a digest the standard parser reads back with ASCII headers."""
    from digestbot import app
    from digestbot.mail.context import compose, digest_view
    from digestbot.settings import load_settings

    env = {"DIGESTBOT_MAIL_FROM": f"Bücher Digest <{from_local}@{from_domain}>"}
    if unsub:
        env["DIGESTBOT_UNSUBSCRIBE_EMAIL"] = f"{unsub[0]}@{unsub[1]}"
    if url:
        env["DIGESTBOT_UNSUBSCRIBE_URL"] = url
        env["DIGESTBOT_UNSUBSCRIBE_SECRET"] = "s" * 32
    if list_id:
        env["DIGESTBOT_LIST_ID"] = list_id
    try:
        loaded = load_settings(env, env_file=None)
    except ConfigError:
        return  # refused at load: nothing to compare
    try:
        mail = app.mail_context(loaded)
    except ConfigError as exc:
        assert exc.exit_code == 2
        return
    view = digest_view(
        mail=mail,
        email="Grace.Hopper@Example.ORG",
        name="Grace",
        period="2026-03-04",
        items=(),
        papers={},
        more_count=0,
    )
    message_id = make_message_id(digest_key="k", from_addr=mail.from_addr, database_id="db")
    raw = compose(mail=mail, view=view, message_id=message_id, date_=datetime.now(UTC))
    assert raw.isascii()
    parsed = BytesParser(policy=email.policy.default).parsebytes(raw)
    for name in ("From", "To", "List-Id", "List-Unsubscribe", "Message-ID"):
        assert parsed[name] is not None and not parsed[name].defects, name
    assert parsed["To"].addresses[0].addr_spec == "Grace.Hopper@example.org"
