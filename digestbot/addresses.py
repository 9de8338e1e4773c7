"""The one home of email addresses: parsing, validation and comparison.

Settings, the subscribers file, the CLI and message building all use these functions, so an
address that one part accepts, every part accepts.
"""

from __future__ import annotations

__all__ = ["address_key"]


def address_key(address: str) -> str:
    """The form two addresses are compared in: `Ada@Example.org` and `ada@example.org` are one.

    The domain is case-insensitive by standard; the local part is compared case-insensitively
    too, as every mainstream mail system treats it, and mail is still delivered as written.
    """
    return address.strip().lower()
