"""The one home of email addresses: parsing, validation and comparison.

Settings, the subscribers file, the CLI and message building all use these functions, so an
address that one part accepts, every part accepts. The address grammar is the well-kept
`email-validator` library's (no DNS lookups); display names (`Name <addr>`) are parsed by the
standard library's header parser. Errors are `AddressError` (a ValueError) with a reason; each
caller adds where the address came from.

The rule, written once:
- the local part is plain ASCII (a dot-atom: no quoting, no SMTPUTF8), kept as written;
- the domain is a host name with at least one dot (internationalized names allowed, stored in
  lower case); special-use names such as `localhost`, `.local` or `.invalid` are refused, but
  the RFC 2606 testing domain `.test` is accepted;
- two addresses are the same when `address_key` says so.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from email.errors import ObsoleteHeaderDefect
from email.headerregistry import HeaderRegistry

import idna
from email_validator import EmailNotValidError, validate_email
from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES

from digestbot.text import clean_line, has_unsafe, header_uri_problem

__all__ = [
    "AddressError",
    "Mailbox",
    "address_key",
    "check_address",
    "check_dns_name",
    "is_dot_atom",
    "mailto_parts",
    "parse_addr_spec",
    "parse_list_id",
    "parse_mailbox",
    "smtp_address",
]

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


class AddressError(ValueError):
    """An address, mailbox or DNS name that is not valid; the message says why."""


@dataclass(frozen=True, slots=True)
class Mailbox:
    """One validated mailbox: `display_name <local_part@domain>`."""

    display_name: str
    local_part: str
    domain: str  # lower case, Unicode for internationalized names
    ascii_domain: str  # the same in ASCII (IDNA), for headers and SMTP

    @property
    def addr_spec(self) -> str:
        """`local@domain`, the local part as written."""
        return f"{self.local_part}@{self.domain}"

    @property
    def ascii_addr_spec(self) -> str:
        """`local@domain` with the domain in ASCII (IDNA): what headers, URIs and SMTP carry."""
        return f"{self.local_part}@{self.ascii_domain}"


def address_key(address: str) -> str:
    """The form two addresses are compared in: `Ada@Example.org`, `ada@example.org` are one, and
    so are `ada@Bücher.example` and `ada@xn--bcher-kva.example`.

    The key is the local part in lower case, '@', and the domain in ASCII (IDNA, as
    email-validator encodes it) in lower case. The domain is case-insensitive by standard; the
    local part is compared case-insensitively too, as every mainstream mail system treats it,
    and mail is still delivered as written.
    """
    text = address.strip()
    if text.isascii():
        return text.lower()
    return _key_non_ascii(text)


@functools.lru_cache(maxsize=4096)
def _key_non_ascii(text: str) -> str:
    local, at, domain = text.rpartition("@")
    if not at:
        return text.lower()
    try:
        domain = idna.encode(domain, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        pass  # not a valid name: compared as written, in lower case
    return f"{local.lower()}@{domain.lower()}"


_PLAIN_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_NOT_IN_PLAIN_DOMAIN = re.compile(r"[@<>\"()\s,;:\[\]\\]")
_SAFE_LENGTH = 200  # bytes; email-validator's limits (64 local, 254 whole) are checked above it


def _validate(addr_spec: str) -> Mailbox:
    """Validate with email-validator; a plain dot-atom local part reuses its domain's verdict.

    Thousands of subscribers share a few domains, and the domain is most of email-validator's
    work, so an address whose local part is a short ASCII dot-atom (which email-validator keeps as
    written) is checked as `local@<domain already validated>`. Anything else, and any failure,
    takes the full path, so the result and the error text are email-validator's own.
    """
    if has_unsafe(addr_spec):
        raise AddressError("contains a control character (CR, LF, ...)")
    local, _, domain = addr_spec.partition("@")
    if (
        len(local) <= 64
        and _PLAIN_LOCAL.fullmatch(local)
        and local.lower() not in CASE_INSENSITIVE_MAILBOX_NAMES
        and not _NOT_IN_PLAIN_DOMAIN.search(domain)
    ):
        checked = _checked_domain(domain)
        if checked is not None and all(
            len(f"{local}@{d}".encode()) <= _SAFE_LENGTH for d in (domain, *checked)
        ):
            return Mailbox(
                display_name="",
                local_part=local,
                domain=checked[0].lower(),
                ascii_domain=checked[1].lower(),
            )
    return _validate_fully(addr_spec)


@functools.lru_cache(maxsize=4096)
def _checked_domain(domain: str) -> tuple[str, str] | None:
    """email-validator's (domain, ascii_domain) for `domain`, or None when it refuses it."""
    try:
        result = validate_email(
            f"a@{domain}",
            check_deliverability=False,
            allow_smtputf8=False,
            allow_quoted_local=False,
            allow_domain_literal=False,
            test_environment=True,
        )
    except EmailNotValidError:
        return None
    return result.domain, result.ascii_domain or result.domain


def _validate_fully(addr_spec: str) -> Mailbox:
    try:
        result = validate_email(
            addr_spec,
            check_deliverability=False,
            allow_smtputf8=False,
            allow_quoted_local=False,
            allow_domain_literal=False,
            test_environment=True,  # accept the reserved testing domain .test
        )
    except EmailNotValidError as exc:
        # email-validator's text is one or more sentences ("The part after the @-sign is not
        # valid. It should have a period."): made one clause after "is not valid: "
        reason = re.sub(r"\.\s+(\w)", lambda m: "; " + m.group(1).lower(), str(exc).strip())
        reason = reason.rstrip(".")
        raise AddressError(f"is not valid: {reason[:1].lower()}{reason[1:]}") from None
    return Mailbox(
        display_name="",
        local_part=result.local_part,
        domain=result.domain.lower(),
        ascii_domain=(result.ascii_domain or result.domain).lower(),
    )


def check_address(value: str) -> str:
    """Validate a bare address `local@domain`; return it with the domain in lower case.

    Raises AddressError with a reason (a display name, two addresses, a bad domain...).
    """
    return parse_addr_spec(value).addr_spec


@functools.lru_cache(maxsize=4096)
def parse_addr_spec(value: str) -> Mailbox:
    """Validate a bare address `local@domain` into a Mailbox without display name (see check_address)."""
    value = value.strip()
    if has_unsafe(value):
        raise AddressError("contains a control character (CR, LF, ...)")
    if "<" in value or ">" in value or any(ch.isspace() for ch in value):
        raise AddressError("must be a bare address like ada@example.org, without a display name")
    return _validate(value)


@functools.lru_cache(maxsize=256)
def parse_mailbox(value: str) -> Mailbox:
    """Parse `Display Name <addr@domain>` or a bare address into a validated Mailbox.

    Raises AddressError with a reason when the value is not exactly one valid mailbox.
    """
    if has_unsafe(value):
        raise AddressError("contains a control character (CR, LF, ...)")
    try:
        header = HeaderRegistry()("From", value.strip())
        groups = header.groups  # type: ignore[attr-defined]
        addresses = header.addresses  # type: ignore[attr-defined]
    except Exception as exc:  # the header parser raises IndexError, HeaderParseError, ...
        raise AddressError(f"cannot be parsed as an address ({exc})") from exc
    if any(group.display_name is not None for group in groups):
        raise AddressError("is a group ('Name: addresses;'), which is not allowed here")
    if len(addresses) != 1:
        raise AddressError(f"must be exactly one address, found {len(addresses)}")
    # obsolete-but-readable forms (a '.' in an unquoted name) are fine; Address re-quotes them
    if any(not isinstance(d, ObsoleteHeaderDefect) for d in header.defects):
        raise AddressError("is not a valid address like 'Paper Digest <digest@example.org>'")
    box = _validate(addresses[0].addr_spec)
    return Mailbox(
        display_name=" ".join(addresses[0].display_name.split()),
        local_part=box.local_part,
        domain=box.domain,
        ascii_domain=box.ascii_domain,
    )


def smtp_address(address: str) -> str:
    """A valid bare address as SMTP without SMTPUTF8 takes it: the domain in ASCII (IDNA)."""
    return parse_addr_spec(address).ascii_addr_spec


def check_dns_name(value: str) -> str:
    """Validate a DNS name (letters, digits, '-' and dots; IDNA allowed); return it in ASCII, lower case.

    Used for the DKIM selector and signing domain. Raises AddressError with a reason.
    """
    name = value.strip().lower()
    if has_unsafe(name):
        raise AddressError("contains a control character")
    try:
        ascii_name = name.encode("idna").decode("ascii") if not name.isascii() else name
    except UnicodeError:
        raise AddressError("is not a valid DNS name") from None
    labels = ascii_name.split(".")
    if not 0 < len(ascii_name) <= 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise AddressError(
            "is not a DNS name (labels of letters, digits and '-', separated by dots; "
            "no '_', no leading or trailing '-')"
        )
    return ascii_name


def is_dot_atom(value: str) -> bool:
    """True when `value` is an RFC 5322 dot-atom (the grammar of a List-Id identifier)."""
    return bool(_DOT_ATOM.fullmatch(value))


def parse_list_id(value: str) -> tuple[str, str]:
    """The label and identifier of a List-Id (RFC 2919): `Label <list.example.org>` or a bare
    `list.example.org`. The identifier is an ASCII dot-atom with at least one dot, at most 255
    characters. Raises AddressError; the one grammar of settings and message building."""
    text = value.strip()
    if has_unsafe(text):
        raise AddressError("contains a control character")
    label, sep, rest = text.rpartition("<")
    if sep:
        if not rest.endswith(">") or "<" in label or ">" in label:
            raise AddressError("is not a List-Id")
        ident = rest[:-1].strip()
    else:
        ident, label = text, ""
    if not is_dot_atom(ident) or "." not in ident or len(ident) > 255:
        raise AddressError("is not a List-Id")
    return label.strip(), ident


def mailto_parts(uri: str) -> tuple[str, str | None] | None:
    """The address and subject of a `mailto:ADDR?subject=...` URI, or None when it is not one
    (the one reading of the unsubscribe mailto:, for the List-Unsubscribe header and digests)."""
    from urllib.parse import unquote

    value = uri.strip()
    if not value.lower().startswith("mailto:") or header_uri_problem(value):
        return None
    address, _, query = value[len("mailto:") :].partition("?")
    address = unquote(address)
    if "@" not in address or has_unsafe(address):
        return None
    subject = None
    for pair in query.split("&"):
        key, _, val = pair.partition("=")
        if key.lower() == "subject" and val:
            subject = clean_line(unquote(val))
    return address, subject
