"""The one safe gate for XML feeds (arXiv RSS and API, any RSS/Atom): checked strictly, then parsed.

Every XML response goes through `parse_feed` before anything reads it: an empty body, an HTML page,
malformed XML or any DTD entity declaration (entity bombs, external entities) rejects the whole
response with a FetchError naming the URL. Only then does feedparser (a well-kept, lenient parser)
read it, from memory: it is never handed a URL or a path, so it never fetches or opens anything.
Also here, shared by the XML sources: reading a saved feed file (`read_saved`), naming the
source in an error (`source_error`), the feed date rule (`feed_datetime`) and the HTML-to-text step of feed fields (`html_text`).
"""

from __future__ import annotations

import io
import re
from datetime import UTC, date, datetime, time
from email.utils import parsedate_to_datetime
from html.parser import HTMLParser
from typing import Any
from xml.etree.ElementTree import ParseError

from defusedxml import (
    DefusedXmlException,
    DTDForbidden,
    EntitiesForbidden,
    ExternalReferenceForbidden,
)
from defusedxml import ElementTree as SafeElementTree

from digestbot import text
from digestbot.errors import FetchError
from digestbot.sources.base import Reject, check_length

__all__ = ["entry_text", "feed_datetime", "html_text", "parse_feed", "source_error"]

_FEED_ROOTS = frozenset({"rss", "feed", "RDF"})
_HTML_START = re.compile(
    rb"^(?:<\?xml[^>]*>\s*)?(?:<!--.*?-->\s*)*<(?:!doctype\s+html|html)\b",
    re.IGNORECASE | re.DOTALL,
)
_REJECTED = "the response was rejected and nothing from it was used"


def parse_feed(content: bytes, *, url: str) -> Any:
    """`content` as a feedparser result (a FeedParserDict), or FetchError naming `url` and why.

    Refused whole: an empty body, an HTML page, XML that is not well-formed, a DTD declaring any
    entity (billion laughs, external entities: refused before any expansion, so it fails fast),
    and a document whose root is not RSS, RDF or Atom. feedparser's HTML sanitizer and relative-URI
    resolution are off: callers turn every field into plain text themselves (`html_text` or
    `text.plain_text`), and arXiv abstracts would lose text to the sanitizer ("x<y" is not a tag).
    """
    import feedparser

    shown = text.snippet(url, 300)
    if not isinstance(content, bytes | bytearray | memoryview):
        raise FetchError(
            f"{shown}: expected the response body as bytes, got {type(content).__name__}"
        )
    content = bytes(content)
    head = content.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not head:
        raise FetchError(f"{shown}: empty response where an RSS or Atom feed was expected")
    if _HTML_START.match(head[:4096]):
        raise FetchError(
            f"{shown}: the response is an HTML page, not an RSS or Atom feed; check the address "
            f"(it may be a web page or an error page); {_REJECTED}"
        )
    root = _check_xml(content, url=shown)
    local = root.tag.rsplit("}", 1)[-1] if isinstance(root.tag, str) else ""
    if local.lower() == "html":
        raise FetchError(
            f"{shown}: the response is an HTML page, not an RSS or Atom feed; {_REJECTED}"
        )
    if local not in _FEED_ROOTS:
        raise FetchError(
            f"{shown}: the response is XML but not an RSS or Atom feed (its root element is "
            f"{text.snippet(local, 40)!r}); {_REJECTED}"
        )
    parsed = feedparser.parse(io.BytesIO(content), sanitize_html=False, resolve_relative_uris=False)
    if not parsed.get("version") and not parsed.get("entries"):
        raise FetchError(f"{shown}: the response is not an RSS or Atom feed; {_REJECTED}")
    return parsed


def _check_xml(content: bytes, *, url: str) -> Any:
    """Parse strictly with defusedxml (entities refused) and return the root element."""
    try:
        return SafeElementTree.fromstring(
            content, forbid_dtd=False, forbid_entities=True, forbid_external=True
        )
    except (EntitiesForbidden, ExternalReferenceForbidden, DTDForbidden):
        raise FetchError(
            f"{url}: the feed declares XML entities in a DTD; entities are refused (they can expand "
            f"into an entity bomb or read other files); {_REJECTED}"
        ) from None
    except DefusedXmlException as exc:  # pragma: no cover - other defusedxml refusals
        raise FetchError(f"{url}: unsafe XML refused ({type(exc).__name__}); {_REJECTED}") from None
    except ParseError as exc:
        line, column = getattr(exc, "position", (None, None))
        where = f" at line {line} column {column}" if line else ""
        reason = text.snippet(str(exc).split(":")[0], 80)
        raise FetchError(f"{url}: malformed XML ({reason}){where}; {_REJECTED}") from None
    except (ValueError, RecursionError) as exc:
        raise FetchError(f"{url}: malformed XML ({text.snippet(exc, 80)}); {_REJECTED}") from None


class BadDate(ValueError):
    """A feed date that is not a real date and time (the caller names the entry and field)."""


def feed_datetime(raw: str) -> datetime:
    """A feed date (RFC 822 as in RSS, or ISO 8601 as in Atom, or a bare date) as aware UTC.

    A date or time without a timezone is taken to be UTC: feeds that omit the zone mostly mean
    UTC, and a fixed rule keeps a rerun's dates stable. Impossible dates raise BadDate.
    """
    value = text.clean_line(raw)
    if not value or len(value) > 100:
        raise BadDate(f"is not a date: {text.snippet(value, 40)!r}")
    parsed: datetime | None = None
    if value[:4].isdigit():
        try:
            if len(value) == 10:
                parsed = datetime.combine(date.fromisoformat(value), time())
            else:
                parsed = datetime.fromisoformat(value.replace("z", "Z"))
        except ValueError:
            parsed = None
    else:
        try:
            parsed = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            parsed = None
    if parsed is None:
        raise BadDate(f"is not a valid date: {text.snippet(value, 40)!r}")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        parsed = parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        raise BadDate(f"is out of range: {text.snippet(value, 40)!r}") from None
    if parsed.year < 1990:
        raise BadDate(f"is before 1990: {text.snippet(value, 40)!r}")
    return parsed


class _TextOnly(HTMLParser):
    """Collects the text of an HTML fragment; tags go, script/style contents go with them."""

    _DROP = frozenset({"script", "style", "template", "noscript"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._dropping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._DROP:
            self._dropping += 1
        elif tag in ("br", "p", "div", "li"):
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._DROP and self._dropping:
            self._dropping -= 1

    def handle_data(self, data: str) -> None:
        if not self._dropping:
            self.parts.append(data)


def html_text(value: str) -> str:
    """An HTML fragment from a feed (title or summary) as one line of plain text.

    The stdlib HTML parser drops every tag (and the contents of script and style) and decodes
    entities; the text then goes through `text.plain_text`, the one cleaning step.
    """
    parser = _TextOnly()
    parser.feed(value)
    parser.close()
    return text.plain_text("".join(parser.parts))


def source_error(error: FetchError, name: str) -> FetchError:
    """The same kind of error, its message starting with the source's name (`source 'x': ...`)."""
    prefix = f"source {name!r}: "
    if str(error).startswith(prefix):
        return error
    try:
        named = type(error)(prefix + str(error))
    except TypeError:  # a subclass that takes other arguments
        named = FetchError(prefix + str(error))
    named.__cause__ = error
    return named


def entry_text(entry: Any, key: str, shown: str, limit: int) -> str:
    """One string field of a feedparser entry ('' when absent); Reject when it is not text or is
    over `limit` characters (`shown` names it as the feed writes it)."""
    value = entry.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise Reject(f"'{shown}' should be text")
    check_length(value, limit, f"'{shown}'")
    return value
