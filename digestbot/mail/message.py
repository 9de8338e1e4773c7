"""Build the MIME message of one digest as bytes for SMTP, and optionally DKIM-sign it.

The message is written by hand (digestbot.mail.mime), not through the ``email`` package's header
registry and generator, which cost a seventh of a send. Every header value is cleaned of
control characters first (digestbot.text), addresses come from digestbot.addresses (the one
validator, domains in IDNA), and mime.header refuses anything but printable ASCII words, so
nothing from the feed or the configuration can add a header or a recipient. Bodies are
quoted-printable, so no line exceeds 76 octets whatever the abstract looks like.
"""

from __future__ import annotations

import functools
import hashlib
import re
from datetime import datetime, timedelta
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.utils import format_datetime
from typing import TYPE_CHECKING

from digestbot import tokens
from digestbot.addresses import (
    AddressError,
    check_dns_name,
    mailto_parts,
    parse_addr_spec,
    parse_list_id,
)
from digestbot.addresses import parse_mailbox as _parse_mailbox
from digestbot.errors import ConfigError
from digestbot.mail import mime
from digestbot.text import clean_line, header_uri_problem

if TYPE_CHECKING:
    from digestbot.render import RenderedDigest

__all__ = [
    "DKIM_HEADERS",
    "MAX_LINE_OCTETS",
    "build_message",
    "dkim_sign",
    "make_message_id",
    "parse_address",
]

MAX_LINE_OCTETS = 998
"""RFC 5322 hard limit on a line, excluding CRLF."""

DKIM_HEADERS = (
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
)
"""Headers signed when present. From, To and Subject are over-signed (listed once more than
they occur) so a relay cannot add a second copy without breaking the signature."""

_OVERSIGNED = ("From", "To", "Subject")


_MSGID = re.compile(r"<[\x21-\x3b\x3d\x3f-\x7e]+@[\x21-\x3b\x3d\x3f-\x5a\x5e-\x7e]+>")


def clean_header_text(value: object, *, limit: int = 900) -> str:
    """One line of header text: unsafe characters become spaces, runs collapse, ends trimmed."""
    return clean_line(value)[:limit].rstrip()


def parse_address(
    value: str, *, what: str, allow_display_name: bool = False, field: str | None = None
) -> Address:
    """Parse one mailbox (``addr@domain`` or, when allowed, ``Name <addr@domain>``).

    The rule is digestbot.addresses' (the one validator); anything it refuses is a ConfigError
    naming ``what`` (and ``field``, the setting it came from, if any). The domain of the result
    is ASCII (IDNA), ready for a header.
    """
    if not isinstance(value, str):
        raise ConfigError(f"{what}: not a single email address: {value!r}", field=field)
    try:
        box = _parse_mailbox(value) if allow_display_name else parse_addr_spec(value)
    except AddressError as exc:
        raise ConfigError(
            f"{what}: {clean_header_text(value, limit=200)!r} {exc}", field=field
        ) from None
    try:
        return Address(
            display_name=clean_header_text(box.display_name, limit=200),
            username=box.local_part,
            domain=box.ascii_domain,
        )
    except (ValueError, HeaderParseError, IndexError) as exc:
        raise ConfigError(f"{what}: not a single email address: {value!r}", field=field) from exc


@functools.lru_cache(maxsize=16)
def _from_domain(from_addr: str) -> str:
    """The From address's domain (a run plans every digest with the same From: parsed once)."""
    return parse_address(from_addr, what="From address", allow_display_name=True).domain


def make_message_id(*, digest_key: str, from_addr: str, database_id: str) -> str:
    """A stable Message-ID: the same key in the same database always gives the same ``<...@domain>``.

    ``database_id`` is the random id written when the database was created
    (``store.database_id``). It is hashed in with the key, so two databases (a fresh install, a
    recreated file) never give a digest the same Message-ID, and whatever the key contains
    (emails, dates) the id is a safe dot-atom. The domain is the From address's.
    """
    if not database_id:
        raise ValueError("a Message-ID needs the database id")
    domain = _from_domain(from_addr)
    digest = hashlib.sha256(f"{database_id}\0{digest_key}".encode()).hexdigest()[:40]
    return f"<digest.{digest}@{domain}>"


def _mailto_uri(value: str) -> str:
    value = value.strip()
    if mailto_parts(value) is None:
        reason = header_uri_problem(value) or "is not a mailto: URI with an address"
        raise ConfigError(
            f"unsubscribe mailto: URI {value!r} {reason}", field="DIGESTBOT_UNSUBSCRIBE_EMAIL"
        )
    return value


def _https_uri(value: str) -> str:
    value = value.strip()
    reason = header_uri_problem(value)
    if not reason and not (
        value.lower().startswith("https://") or tokens.is_public_url_scheme_ok(value)
    ):
        reason = "is not an https:// URL (RFC 8058)"
    if not reason and (len(value) <= len("https://") or value[len("https://")] in "/?#"):
        reason = "has no host"
    if reason:
        raise ConfigError(f"unsubscribe URL {value!r} {reason}", field="DIGESTBOT_UNSUBSCRIBE_URL")
    return value


def _list_id(value: str) -> list[str]:
    """``Label <list.id.example>`` or a bare ``list.id.example`` → the words of a safe List-Id
    value, the label quoted or encoded (the grammar is addresses.parse_list_id)."""
    try:
        label, ident = parse_list_id(clean_header_text(value))
    except AddressError:
        raise ConfigError(
            f"List-Id must look like 'Label <name.example.org>', got {value!r}",
            field="DIGESTBOT_LIST_ID",
        ) from None
    label = label.strip('"').replace('"', "'").replace("\\", "/")[:100].strip()
    return [*mime.phrase_tokens(label, quote=True), f"<{ident}>"]


def _mailbox(address: Address) -> list[str]:
    """A From/To value as header words: the display name (atoms, quoted or encoded), then
    ``<local@domain>``; a bare ``local@domain`` without a name."""
    addr_spec = f"{address.username}@{address.domain}"
    if not address.display_name:
        return [addr_spec]
    return [*mime.phrase_tokens(address.display_name), f"<{addr_spec}>"]


@functools.lru_cache(maxsize=16)
def _run_headers(from_addr: str, list_id: str, unsubscribe_mailto: str) -> tuple[str, str, str]:
    """The From and List-Id fields and List-Unsubscribe's mailto: URI, the same for every
    message of a run: built once."""
    sender = parse_address(
        from_addr, what="From address", allow_display_name=True, field="DIGESTBOT_MAIL_FROM"
    )
    return (
        mime.header("From", _mailbox(sender)),
        mime.header("List-Id", _list_id(list_id)),
        f"<{_mailto_uri(unsubscribe_mailto)}>",
    )


@functools.lru_cache(maxsize=64)
def _subject_field(subject: str) -> str:
    """The Subject field of a rendered subject (a run's digests share a few)."""
    return mime.header(
        "Subject", mime.unstructured_tokens(clean_header_text(subject, limit=400) or "Paper digest")
    )


@functools.lru_cache(maxsize=4)
def _date_field(second: datetime, offset: timedelta | None) -> str:
    """The Date field of a message built in this `second`; the digests built within one second
    share it. `offset` is part of the key: aware times are equal by instant, whatever their zone."""
    return f"Date: {format_datetime(second)}\r\n"


def build_message(
    *,
    rendered: RenderedDigest,
    from_addr: str,
    to_addr: str,
    to_name: str | None,
    message_id: str,
    date: datetime,
    list_id: str,
    unsubscribe_mailto: str,
    unsubscribe_url: str | None,
) -> bytes:
    """The raw multipart/alternative digest (text/plain first, then text/html, UTF-8,
    quoted-printable), CRLF line ends, ready for SMTP or DKIM signing.

    ``to_addr`` must be a single addr-spec (ConfigError otherwise); names and the subject are
    cleaned of control characters and encoded per RFC 2047 where needed. List-Unsubscribe-Post
    (RFC 8058) is set whenever ``unsubscribe_url`` is given; it must be https, or plain http
    for a loopback host (local testing), see tokens.is_public_url_scheme_ok. A header line over
    998 octets (an absurd Message-ID) is a ValueError.
    """
    if date.tzinfo is None or date.utcoffset() is None:
        raise ValueError("message date must be timezone-aware")
    if not _MSGID.fullmatch(message_id or ""):
        raise ValueError(f"malformed Message-ID {message_id!r}")
    from_field, list_id_field, mailto = _run_headers(from_addr, list_id, unsubscribe_mailto)
    if "<" in to_addr or ">" in to_addr:
        raise ConfigError(f"recipient must be a bare address, got {to_addr!r}")
    recipient = parse_address(to_addr, what="recipient")
    name = clean_header_text(to_name, limit=200) if to_name else ""
    recipient = Address(display_name=name, username=recipient.username, domain=recipient.domain)
    unsubscribe = [mailto]
    if unsubscribe_url:
        unsubscribe.append(f"<{_https_uri(unsubscribe_url)}>")

    head = [
        from_field,
        mime.header("To", _mailbox(recipient)),
        _subject_field(rendered.subject),
        _date_field(date.replace(microsecond=0), date.utcoffset()),
        f"Message-ID: {message_id}\r\n",
        list_id_field,
        mime.header("List-Unsubscribe", [u + "," for u in unsubscribe[:-1]] + unsubscribe[-1:]),
    ]
    if unsubscribe_url:
        head.append("List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n")
    head.append("Auto-Submitted: auto-generated\r\nPrecedence: bulk\r\n")
    text = "".join(head)
    longest = max(len(line) for line in text.split("\r\n"))
    if longest > MAX_LINE_OCTETS:
        raise ValueError(f"message has a line of {longest} octets (limit {MAX_LINE_OCTETS})")
    # quoted-printable never writes "=_", so this boundary cannot occur in a body (mime docs);
    # derived from the Message-ID, the same digest is the same bytes every time it is built
    boundary = "=_" + hashlib.sha256(message_id.encode("ascii")).hexdigest()[:32]
    return mime.multipart_alternative(
        text,
        text=rendered.text,
        html=rendered.html,
        boundary=boundary,
        text_pieces=rendered.text_pieces,
        html_pieces=rendered.html_pieces,
    )


def _header_names(raw: bytes) -> list[str]:
    head = raw.split(b"\r\n\r\n", 1)[0]
    names = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") or b":" not in line:
            continue
        names.append(line.split(b":", 1)[0].strip().decode("ascii", "replace"))
    return names


def dkim_sign(raw: bytes, *, selector: str, domain: str, private_key: bytes) -> bytes:
    """Return ``raw`` with a DKIM-Signature header (rsa-sha256, relaxed/relaxed) prepended.

    Signs those of :data:`DKIM_HEADERS` present in the message, over-signing From, To and
    Subject. A bad key, selector or domain hits every message, so it is a ConfigError naming
    the DKIM variable to fix (settings check the same at load, by signing a probe).
    """
    import dkim  # dkimpy; imported here so building unsigned mail never needs it

    present = {name.lower(): name for name in _header_names(raw)}
    include = [name for name in DKIM_HEADERS if name.lower() in present]
    include += [name for name in _OVERSIGNED if name.lower() in present]
    try:
        ascii_selector = check_dns_name(selector or "")
    except AddressError as exc:
        raise ConfigError(
            f"invalid DKIM selector {selector!r}: {exc}", field="DIGESTBOT_DKIM_SELECTOR"
        ) from None
    try:
        ascii_domain = check_dns_name(domain or "")
    except AddressError as exc:
        raise ConfigError(
            f"invalid DKIM domain {domain!r}: {exc}", field="DIGESTBOT_DKIM_DOMAIN"
        ) from None
    try:
        signature = dkim.sign(
            raw,
            ascii_selector.encode("ascii"),
            ascii_domain.encode("ascii"),
            private_key,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=[name.encode("ascii") for name in include],
            linesep=b"\r\n",
        )
    except Exception as exc:  # dkimpy raises KeyFormatError, but also ValueError, IndexError...
        raise ConfigError(
            f"DKIM signing failed: {type(exc).__name__}: {str(exc)[:120]}",
            field="DIGESTBOT_DKIM_KEY_FILE",
        ) from exc
    return signature + raw
