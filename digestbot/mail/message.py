"""Build the MIME message of one digest, serialize it for SMTP and optionally DKIM-sign it.

Pure standard library ``email`` plus dkimpy. Every header value is cleaned of control
characters first, and addresses go through :class:`email.headerregistry.Address`, so nothing
from the feed or the configuration can add a header or a recipient. Bodies are
quoted-printable, so no line exceeds 998 octets whatever the abstract looks like.
"""

from __future__ import annotations

import base64
import email.policy
import hashlib
import re
from datetime import datetime
from email.errors import HeaderParseError
from email.headerregistry import Address, HeaderRegistry, UnstructuredHeader
from email.message import EmailMessage
from typing import TYPE_CHECKING

from digestbot.errors import ConfigError

if TYPE_CHECKING:
    from digestbot.render import RenderedDigest

__all__ = [
    "DKIM_HEADERS",
    "MAX_LINE_OCTETS",
    "build_message",
    "dkim_sign",
    "make_message_id",
    "message_bytes",
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


class _VerbatimHeader(UnstructuredHeader):
    """An ASCII header whose value is kept exactly as given and folded only at spaces.

    The standard folder RFC 2047-encodes any token longer than a line, which would turn a long
    List-Unsubscribe URL into an encoded word that mail clients cannot use.
    """

    @classmethod
    def parse(cls, value: str, kwds: dict[str, object]) -> None:
        kwds["parse_tree"] = cls.value_parser(value)
        kwds["decoded"] = value

    def fold(self, *, policy: email.policy.Policy) -> str:
        head = f"{self.name}:"
        limit = policy.max_line_length or 78
        lines: list[str] = []
        line = head
        for token in filter(None, str(self).split(" ")):
            if line != head and len(line) + 1 + len(token) > limit:
                lines.append(line)
                line = ""
            line += " " + token
        lines.append(line)
        return policy.linesep.join(lines) + policy.linesep


def _make_policy() -> email.policy.EmailPolicy:
    registry = HeaderRegistry()
    registry.map_to_type("list-unsubscribe", _VerbatimHeader)
    registry.map_to_type("list-id", _VerbatimHeader)
    # SMTP settings (CRLF line endings, 78-column folding) with a private header registry, so
    # the shared email.policy.SMTP is never modified.
    return email.policy.EmailPolicy(linesep="\r\n", header_factory=registry)


_POLICY = _make_policy()

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u0085]")
_SPACE_RUN = re.compile(r"\s+")
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_DOMAIN = re.compile(
    r"(?=.{1,253}\Z)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
)
_MSGID = re.compile(r"<[\x21-\x3b\x3d\x3f-\x7e]+@[\x21-\x3b\x3d\x3f-\x5a\x5e-\x7e]+>")
_URI_FORBIDDEN = re.compile(r"[\x00-\x20\x7f-\uffff<>\"\\`{}|^,]")
_URI_MAX = 900


def clean_header_text(value: object, *, limit: int = 900) -> str:
    """One line of header text: control characters become spaces, runs collapse, ends trimmed."""
    text = _SPACE_RUN.sub(" ", _CONTROL.sub(" ", str(value))).strip()
    return text[:limit].rstrip()


def _ascii_domain(domain: str, *, what: str) -> str:
    """The domain in ASCII (IDNA for non-ASCII), or ConfigError when it is not a hostname."""
    try:
        ascii_domain = domain.encode("idna").decode("ascii") if not domain.isascii() else domain
    except UnicodeError as exc:
        raise ConfigError(f"{what}: invalid domain {domain!r}") from exc
    if not _DOMAIN.fullmatch(ascii_domain) or "." not in ascii_domain.strip("."):
        raise ConfigError(f"{what}: invalid domain {domain!r}")
    return ascii_domain.lower()


def parse_address(value: str, *, what: str, allow_display_name: bool = False) -> Address:
    """Parse one mailbox (``addr@domain`` or, when allowed, ``Name <addr@domain>``).

    Anything else (no address, several addresses, control characters, a non-ASCII local part,
    parse defects) is a ConfigError naming ``what``.
    """
    if not isinstance(value, str) or _CONTROL.search(value) or not value.strip():
        raise ConfigError(f"{what}: not a single email address: {value!r}")
    value = value.strip()
    if allow_display_name and "<" in value:
        header = _POLICY.header_factory("From", value)
        addresses = getattr(header, "addresses", ())
        if len(addresses) != 1 or header.defects:  # type: ignore[attr-defined]
            raise ConfigError(f"{what}: not a single email address: {value!r}")
        display_name = clean_header_text(addresses[0].display_name, limit=200)
        addr_spec = addresses[0].addr_spec
    else:
        display_name, addr_spec = "", value
    if any(ch.isspace() for ch in addr_spec) or addr_spec.count("@") < 1:
        raise ConfigError(f"{what}: not a single email address: {value!r}")
    local, _, domain = addr_spec.rpartition("@")
    if not local or not local.isascii() or not _DOT_ATOM.fullmatch(local):
        raise ConfigError(
            f"{what}: unsupported mailbox {addr_spec!r} (plain ASCII local part needed)"
        )
    domain = _ascii_domain(domain, what=what)
    try:
        return Address(display_name=display_name, username=local, domain=domain)
    except (ValueError, HeaderParseError, IndexError) as exc:
        raise ConfigError(f"{what}: not a single email address: {value!r}") from exc


def make_message_id(*, digest_key: str, from_addr: str, database_id: str) -> str:
    """A stable Message-ID: the same key in the same database always gives the same ``<...@domain>``.

    ``database_id`` is the random id written when the database was created
    (``store.database_id``). It is hashed in with the key, so two databases (a fresh install, a
    recreated file) never give a digest the same Message-ID, and whatever the key contains
    (emails, dates) the id is a safe dot-atom. The domain is the From address's.
    """
    if not database_id:
        raise ValueError("a Message-ID needs the database id")
    domain = parse_address(from_addr, what="From address", allow_display_name=True).domain
    digest = hashlib.sha256(f"{database_id}\0{digest_key}".encode()).hexdigest()[:40]
    return f"<digest.{digest}@{domain}>"


def _mailto_uri(value: str) -> str:
    value = value.strip()
    if (
        not value.lower().startswith("mailto:")
        or len(value) > _URI_MAX
        or _URI_FORBIDDEN.search(value)
    ):
        raise ConfigError(f"unsubscribe address must be a plain ASCII mailto: URI, got {value!r}")
    if "@" not in value.partition("?")[0]:
        raise ConfigError(f"unsubscribe mailto: URI has no address: {value!r}")
    return value


def _https_uri(value: str) -> str:
    value = value.strip()
    if (
        not value.lower().startswith("https://")
        or len(value) > _URI_MAX
        or _URI_FORBIDDEN.search(value)
    ):
        raise ConfigError(
            f"unsubscribe URL must be a plain ASCII https:// URL (RFC 8058), got {value!r}"
        )
    if len(value) <= len("https://") or value[len("https://")] in "/?#":
        raise ConfigError(f"unsubscribe URL has no host: {value!r}")
    return value


def _list_id(value: str) -> str:
    """``Label <list.id.example>`` or a bare ``list.id.example`` → a safe List-Id value."""
    text = clean_header_text(value)
    label, sep, rest = text.rpartition("<")
    if sep:
        ident = rest.rstrip(">").strip()
        label = label.strip()
    else:
        ident, label = text, ""
    if not _DOT_ATOM.fullmatch(ident) or "." not in ident or len(ident) > 255:
        raise ConfigError(f"List-Id must look like 'Label <name.example.org>', got {value!r}")
    label = label.strip('"').replace('"', "'").replace("\\", "/")[:100].strip()
    if not label:
        return f"<{ident}>"
    if label.isascii():
        return f'"{label}" <{ident}>'
    return f"{_encoded_words(label)} <{ident}>"


def _encoded_words(text: str) -> str:
    """RFC 2047 base64 encoded words of at most 75 characters each, separated by spaces."""
    chunks: list[str] = []
    chunk = ""
    for ch in text:
        if chunk and len((chunk + ch).encode("utf-8")) > 30:
            chunks.append(chunk)
            chunk = ""
        chunk += ch
    if chunk:
        chunks.append(chunk)
    return " ".join(
        "=?utf-8?b?" + base64.b64encode(c.encode("utf-8")).decode("ascii") + "?=" for c in chunks
    )


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
) -> EmailMessage:
    """The multipart/alternative digest (text/plain first, then text/html), UTF-8, quoted-printable.

    ``to_addr`` must be a single addr-spec (ConfigError otherwise); names and the subject are
    cleaned of control characters and encoded per RFC 2047 where needed. List-Unsubscribe-Post
    is set only with an https ``unsubscribe_url`` (RFC 8058).
    """
    if date.tzinfo is None or date.utcoffset() is None:
        raise ValueError("message date must be timezone-aware")
    if not _MSGID.fullmatch(message_id or ""):
        raise ValueError(f"malformed Message-ID {message_id!r}")
    sender = parse_address(from_addr, what="From address", allow_display_name=True)
    if "<" in to_addr or ">" in to_addr:
        raise ConfigError(f"recipient must be a bare address, got {to_addr!r}")
    recipient = parse_address(to_addr, what="recipient")
    name = clean_header_text(to_name, limit=200) if to_name else ""
    recipient = Address(display_name=name, username=recipient.username, domain=recipient.domain)
    unsubscribe = [f"<{_mailto_uri(unsubscribe_mailto)}>"]
    if unsubscribe_url:
        unsubscribe.append(f"<{_https_uri(unsubscribe_url)}>")

    msg = EmailMessage(policy=_POLICY)
    msg["From"] = sender
    msg["To"] = recipient
    msg["Subject"] = clean_header_text(rendered.subject, limit=400) or "Paper digest"
    msg["Date"] = date
    msg["Message-ID"] = message_id
    msg["List-Id"] = _list_id(list_id)
    msg["List-Unsubscribe"] = ", ".join(unsubscribe)
    if unsubscribe_url:
        msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg["Auto-Submitted"] = "auto-generated"
    msg["Precedence"] = "bulk"
    msg.set_content(_body(rendered.text), subtype="plain", charset="utf-8", cte="quoted-printable")
    msg.add_alternative(
        _body(rendered.html), subtype="html", charset="utf-8", cte="quoted-printable"
    )
    for part in msg.iter_parts():
        del part["MIME-Version"]  # only the top level carries it
    return msg


def _body(text: str) -> str:
    """Normalize line endings and drop stray control characters (tabs and newlines stay)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", "", text)
    return text if text.endswith("\n") else text + "\n"


def message_bytes(msg: EmailMessage) -> bytes:
    """The raw message for SMTP: CRLF line endings, no line over 998 octets (else ValueError)."""
    raw = msg.as_bytes(policy=_POLICY)
    longest = max((len(line) for line in raw.split(b"\r\n")), default=0)
    if longest > MAX_LINE_OCTETS:
        raise ValueError(f"message has a line of {longest} octets (limit {MAX_LINE_OCTETS})")
    return raw


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
    Subject. A bad key, selector or domain is a ConfigError.
    """
    import dkim  # dkimpy; imported here so building unsigned mail never needs it

    present = {name.lower(): name for name in _header_names(raw)}
    include = [name for name in DKIM_HEADERS if name.lower() in present]
    include += [name for name in _OVERSIGNED if name.lower() in present]
    if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?", selector or ""):
        raise ConfigError(f"invalid DKIM selector {selector!r}")
    ascii_domain = _ascii_domain(domain, what="DKIM domain")
    try:
        signature = dkim.sign(
            raw,
            selector.encode("ascii"),
            ascii_domain.encode("ascii"),
            private_key,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=[name.encode("ascii") for name in include],
            linesep=b"\r\n",
        )
    except dkim.DKIMException as exc:
        raise ConfigError(f"DKIM signing failed: {exc}") from exc
    return signature + raw
