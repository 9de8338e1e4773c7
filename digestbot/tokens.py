"""The one home of unsubscribe tokens: issuing them for digests and checking them at the endpoint.

A token is self-contained, so the server learns the address from it and needs no lookup table:

    base64url(address) "." base64url(HMAC-SHA256(secret, "digestbot-unsubscribe\\n" LIST "\\n" KEY))

where LIST is the List-Id identifier (the part in angle brackets, lower case) and KEY is
`addresses.address_key(address)`. The token binds the address and the list: changing either
breaks the signature. Only the current secret issues tokens; checking also accepts the old
secrets given (DIGESTBOT_UNSUBSCRIBE_OLD_SECRETS), so links in digests already sent keep
working while a secret is rotated. Signatures are compared in constant time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import urllib.parse
from collections.abc import Sequence

from digestbot.addresses import AddressError, address_key, check_address

__all__ = [
    "ENDPOINT_PATH",
    "TOKEN_PARAM",
    "MalformedToken",
    "TokenError",
    "WrongToken",
    "check",
    "is_endpoint_url",
    "is_public_url_scheme_ok",
    "issue",
    "list_key",
]

ENDPOINT_PATH = "/unsubscribe"  # the route of `digestbot serve` that unsubscribe links open
TOKEN_PARAM = "token"  # the query parameter that carries the token
_DOMAIN = b"digestbot-unsubscribe"
_MAX_TOKEN = 1024


class TokenError(ValueError):
    """A token the endpoint refuses; `status` is the HTTP status the page answers with."""

    status = 403


class MalformedToken(TokenError):
    """Missing, or not shaped like a token digestbot issues (HTTP 400)."""

    status = 400


class WrongToken(TokenError):
    """Well formed, but not signed by this list's secret for this address (HTTP 403)."""

    status = 403


def list_key(list_id: str) -> str:
    """The identifier a token binds: `Paper Digest <digest.example.org>` → `digest.example.org`."""
    ident = list_id.rpartition("<")[2].rstrip(">") if "<" in list_id else list_id
    return ident.strip().lower()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not text or any(c not in _ALPHABET for c in text):
        raise MalformedToken("the token is not in the expected form")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise MalformedToken("the token is not in the expected form") from None


_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def _signature(secret: str, list_id: str, address: str) -> bytes:
    message = b"\n".join(
        (_DOMAIN, list_key(list_id).encode("utf-8"), address_key(address).encode("utf-8"))
    )
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).digest()


def issue(*, secret: str, list_id: str, address: str) -> str:
    """The unsubscribe token of `address` on the list `list_id`, signed with `secret`."""
    return f"{_b64(address.encode('utf-8'))}.{_b64(_signature(secret, list_id, address))}"


def check(token: str | None, *, secrets: Sequence[str], list_id: str) -> str:
    """The address a token was issued for, if one of `secrets` signed it for `list_id`.

    Raises MalformedToken (missing, not shaped like a token, no valid address inside) or
    WrongToken (forged, another address's signature, another list's or secret's).
    """
    if not token:
        raise MalformedToken("the link has no token")
    if len(token) > _MAX_TOKEN or token.count(".") != 1:
        raise MalformedToken("the token is not in the expected form")
    head, _, tail = token.partition(".")
    try:
        address = _unb64(head).decode("utf-8")
        check_address(address)
    except (UnicodeDecodeError, AddressError):
        raise MalformedToken("the token does not hold a valid address") from None
    given = _unb64(tail)
    ok = False
    for secret in secrets:
        # every secret is tried (no early exit), each comparison in constant time
        ok |= hmac.compare_digest(given, _signature(secret, list_id, address))
    if not ok:
        raise WrongToken("the token was not issued by this list for this address")
    return address


def is_public_url_scheme_ok(url: str) -> bool:
    """The rule for DIGESTBOT_UNSUBSCRIBE_URL: https, or plain http only for a loopback host
    (127.0.0.0/8, ::1, localhost), for local testing."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "https":
        return bool(parts.netloc)
    if scheme != "http":
        return False
    host = parts.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_endpoint_url(url: str) -> bool:
    """Whether the DIGESTBOT_UNSUBSCRIBE_URL template `url` opens the route `digestbot serve`
    answers: a path ending in ENDPOINT_PATH (any prefix before it, for a reverse proxy) whose
    `{token}` is the whole value of the single TOKEN_PARAM query parameter, and nowhere else."""
    token_mark, email_mark = "TOKENMARK0", "EMAILMARK0"
    filled = url.replace("{token}", token_mark).replace("{email}", email_mark)
    if filled.count(token_mark) != 1:
        return False
    parts = urllib.parse.urlsplit(filled)
    if not parts.path.endswith(ENDPOINT_PATH) or token_mark in parts.fragment:
        return False
    fields = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    values = [value for key, value in fields if key == TOKEN_PARAM]
    return values == [token_mark]
