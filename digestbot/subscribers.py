"""subscribers.toml → a validated Config: the `[[sources]]` and the subscribers; every error
names file, line, subscriber (or source) and field.

Validation is strict and complete before anything is fetched or sent: unknown keys, wrong types,
bad addresses, times, zones, limits, duplicates, bad source names, kinds, URLs and arXiv
categories, and queries that do not parse are all errors.
tomllib gives no positions for values; digestbot.tomlpos recovers them from the raw text.
"""

from __future__ import annotations

import datetime
import difflib
import functools
import re
import tomllib
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from digestbot.addresses import AddressError, address_key, check_address
from digestbot.errors import ConfigError, QueryError
from digestbot.matching import parse_query
from digestbot.sources.base import KINDS, MAX_URL_CHARS, SourceSpec, locate_feed
from digestbot.text import has_unsafe
from digestbot.tomlpos import LineMap

__all__ = [
    "DEFAULT_SOURCE",
    "Config",
    "SubscriberSpec",
    "load_config",
    "load_subscribers",
    "parse_config",
    "parse_subscribers",
]

TOP_KEYS = ("defaults", "sources", "subscribers")
SOURCE_KEYS = ("name", "kind", "url", "categories", "api_url")
DEFAULT_SOURCE = SourceSpec(name="hf", kind="hf", url=None)
"""The one source of a file without `[[sources]]`: Hugging Face at DIGESTBOT_FEED_URL."""
SOURCE_NAME = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
SOURCE_NAME_MAX = 40
"""A source name: lower-case ASCII letters and digits in words joined by single hyphens
("arxiv-ml"), at most 40 characters, so that it reads the same in a query (`source:arxiv-ml`)."""
ARXIV_CATEGORY = re.compile(
    r"[a-z]+(?:-[a-z]+)?(?:\.(?:[A-Z]{2}|[a-z]{3,}|[a-z]+-[a-z]+))?", flags=re.ASCII
)
"""An arXiv category: an archive ("cs", "q-bio", "astro-ph", "hep-th"), optionally a dot and a
subject class, two capitals ("cs.CL", "math.AP") or a lower-case word of three letters or more
or two joined by a hyphen ("physics.optics", "cond-mat.mes-hall", "physics.ed-ph")."""
ARXIV_CATEGORY_MAX = 40
DEFAULT_KEYS = (
    "send_at",
    "timezone",
    "max_papers",
    "send_empty",
    "min_upvotes",
    "trending",
    "frequency",
    "weekday",
    "exclude",
    "sources",
)
SUBSCRIBER_KEYS = (
    "email",
    "name",
    "keywords",
    "exclude",
    "authors",
    "min_upvotes",
    "send_at",
    "timezone",
    "max_papers",
    "send_empty",
    "trending",
    "frequency",
    "weekday",
    "sources",
)
BUILTIN_DEFAULTS: Mapping[str, Any] = {
    "send_at": datetime.time(7, 0),
    "timezone": "UTC",
    "max_papers": 25,
    "send_empty": False,
    "min_upvotes": 0,
    "trending": 0,
    "frequency": "daily",
    "weekday": "monday",
}
FREQUENCIES = ("daily", "weekly", "off")
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
MAX_PAPERS_LIMIT = 500
TRENDING_LIMIT = 500
MIN_UPVOTES_LIMIT = 1_000_000
MAX_ENTRY_LENGTH = 500


@dataclass(frozen=True, slots=True)
class SubscriberSpec:
    """One validated subscriber: who, what they follow, and when their digest goes out."""

    email: str
    name: str | None
    keywords: tuple[str, ...]
    exclude: tuple[str, ...]
    authors: tuple[str, ...]
    min_upvotes: int
    send_at: datetime.time
    timezone: str
    max_papers: int
    send_empty: bool
    trending: int = 0
    """How many of the period's most upvoted new papers to add (0: none)."""
    frequency: str = "daily"
    """One of FREQUENCIES: "daily", "weekly" or "off" (nothing planned or sent)."""
    weekday: str = "monday"
    """The day a weekly digest goes out (one of WEEKDAYS); unused for daily."""
    sources: tuple[str, ...] = ()
    """The names of the sources the subscriber follows (empty: every source)."""
    line: int | None = field(default=None, compare=False)

    @property
    def tz(self) -> zoneinfo.ZoneInfo:
        """The subscriber's zone (validated when the file was loaded)."""
        return zoneinfo.ZoneInfo(self.timezone)

    @property
    def weekday_number(self) -> int:
        """The weekly send day as date.weekday() counts it (Monday is 0)."""
        return WEEKDAYS.index(self.weekday)

    def describe(self) -> str:
        """What the subscriber gets, in one line: "daily at 07:00 Europe/Paris; 3 queries; trending 5"."""
        at = f"at {self.send_at:%H:%M} {self.timezone}"
        when = {
            "daily": f"daily {at}",
            "weekly": f"weekly on {self.weekday.capitalize()} {at}",
            "off": "off (nothing planned or sent)",
        }[self.frequency]
        queries = len(self.keywords) + len(self.authors)
        parts = [when]
        if queries:
            parts.append(count_queries(queries))
        if self.exclude:
            parts.append(count_exclusions(len(self.exclude)))
        if self.trending:
            parts.append(f"trending {self.trending}")
        if self.sources:
            parts.append(f"sources {', '.join(self.sources)}")
        return "; ".join(parts)


@dataclass(frozen=True, slots=True)
class Config:
    """The validated configuration file: its sources (in file order) and its subscribers."""

    subscribers: list[SubscriberSpec]
    sources: tuple[SourceSpec, ...] = (DEFAULT_SOURCE,)


def count_queries(n: int) -> str:
    """ "1 query", "3 queries": how `check` counts keywords and authors."""
    return f"{n} quer{'y' if n == 1 else 'ies'}"


def count_exclusions(n: int) -> str:
    """ "1 exclusion", "2 exclusions": how `check` counts exclude entries."""
    return f"{n} exclusion{'' if n == 1 else 's'}"


def load_subscribers(path: Path) -> list[SubscriberSpec]:
    """Read and validate the subscribers file at `path`; its subscribers only."""
    return load_config(path).subscribers


def parse_subscribers(text: str, *, source: str) -> list[SubscriberSpec]:
    """Parse and validate subscribers TOML `text`; its subscribers only (see parse_config)."""
    return parse_config(text, source=source).subscribers


def load_config(path: Path) -> Config:
    """Read and validate the configuration (subscribers) file at `path`."""
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            "subscribers file not found; run `digestbot init` to create an example "
            "there, or set DIGESTBOT_SUBSCRIBERS to your file",
            file=source,
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"cannot read the subscribers file: {exc.strerror or exc}", file=source
        ) from exc
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError("the file is not valid UTF-8", file=source, line=line) from exc
    return parse_config(text, source=source)


def parse_config(text: str, *, source: str) -> Config:
    """Parse and validate configuration TOML `text`; `source` names it in errors (usually the path)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _toml_error(exc, text, source) from exc
    except RecursionError as exc:
        raise ConfigError("invalid TOML: values nested too deeply", file=source) from exc
    except ValueError as exc:  # e.g. an integer literal with thousands of digits
        raise ConfigError(f"invalid TOML: {exc}", file=source) from exc
    return _Validator(doc, LineMap.scan(text), source).run()


def _toml_error(exc: tomllib.TOMLDecodeError, text: str, source: str) -> ConfigError:
    message = str(exc)
    match = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
    if match:
        reason = message[: match.start()]
        return ConfigError(
            f"invalid TOML: {reason} at column {match.group(2)}",
            file=source,
            line=int(match.group(1)),
        )
    if message.endswith("(at end of document)"):
        reason = message[: -len("(at end of document)")].rstrip()
        return ConfigError(
            f"invalid TOML: {reason} at the end of the file",
            file=source,
            line=_last_line(text) or None,
        )
    return ConfigError(f"invalid TOML: {message}", file=source)


def _last_line(text: str) -> int:
    return text.count("\n") + (0 if text.endswith("\n") else 1)


# --------------------------------------------------------------------------- validation


class _Invalid(ValueError):
    """A value-level problem; the caller adds file, line, subscriber and field."""


_TIME = re.compile(r"([01]?[0-9]|2[0-3]):([0-5][0-9])")
_ZONE_NAME = re.compile(r"[A-Za-z0-9_+\-]+(?:/[A-Za-z0-9_+\-]+)*")


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, str):
        return f"a string ({_short(value)})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a float ({value})"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, datetime.datetime):
        return "a date-time"
    if isinstance(value, datetime.date):
        return "a date"
    if isinstance(value, datetime.time):
        return "a time"
    return type(value).__name__  # pragma: no cover - tomllib produces nothing else


def _short(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _check_int(value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(f"expected an integer from {lo} to {hi}, got {_kind(value)}")
    if not lo <= value <= hi:
        raise _Invalid(f"{value} is out of range; expected an integer from {lo} to {hi}")
    return value


def _check_max_papers(value: object) -> int:
    return _check_int(value, 1, MAX_PAPERS_LIMIT)


def _check_min_upvotes(value: object) -> int:
    return _check_int(value, 0, MIN_UPVOTES_LIMIT)


def _check_trending(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(
            f"expected a positive integer (how many trending papers), got {_kind(value)}"
        )
    if not 1 <= value <= TRENDING_LIMIT:
        raise _Invalid(
            f"{value} is not a positive integer up to {TRENDING_LIMIT}; "
            "leave trending out to get no trending papers"
        )
    return value


def _check_choice(value: object, choices: tuple[str, ...], what: str) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"expected {what}, one of {', '.join(choices)}, got {_kind(value)}")
    name = value.strip().lower()
    if name in choices:
        return name
    close = difflib.get_close_matches(name, choices, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise _Invalid(f"{_short(value)} is not {what}; expected one of {', '.join(choices)}{hint}")


def _check_frequency(value: object) -> str:
    return _check_choice(value, FREQUENCIES, "a frequency")


def _check_weekday(value: object) -> str:
    if isinstance(value, str):
        short = {day[:3]: day for day in WEEKDAYS}.get(value.strip().lower())
        if short is not None:
            return short
    return _check_choice(value, WEEKDAYS, "a weekday")


def _check_bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"expected true or false, got {_kind(value)}")
    return value


def _check_send_at(value: object) -> datetime.time:
    if isinstance(value, datetime.time) and not isinstance(value, datetime.datetime):
        if value.tzinfo is None and value.second == 0 and value.microsecond == 0:
            return value
        raise _Invalid(f'{value.isoformat()} is not a whole minute; expected HH:MM, e.g. "07:00"')
    if not isinstance(value, str):
        raise _Invalid(f'expected a time as HH:MM (24-hour), e.g. "07:00", got {_kind(value)}')
    match = _TIME.fullmatch(value.strip())
    if not match:
        raise _Invalid(f'{_short(value)} is not a time; expected HH:MM (24-hour), e.g. "07:00"')
    return datetime.time(int(match.group(1)), int(match.group(2)))


@functools.cache
def _zone_names() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def _check_timezone(value: object) -> str:
    if not isinstance(value, str):
        raise _Invalid(f'expected an IANA zone name such as "Europe/Paris", got {_kind(value)}')
    name = value.strip()
    ok = bool(_ZONE_NAME.fullmatch(name)) and len(name) <= 64
    if ok:
        try:
            zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            ok = False
    if not ok:
        close = difflib.get_close_matches(name, _zone_names(), n=1) if len(name) <= 64 else []
        hint = f"; did you mean {close[0]!r}?" if close else ' such as "Europe/Paris" or "UTC"'
        raise _Invalid(f"{_short(value)} is not a known IANA time zone{hint}")
    return name


def _check_text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"expected {what} as a string, got {_kind(value)}")
    text = value.strip()
    if has_unsafe(text):
        raise _Invalid(f"{_short(value)} contains a control character (newline, tab...)")
    if len(text) > MAX_ENTRY_LENGTH:
        raise _Invalid(f"is longer than {MAX_ENTRY_LENGTH} characters")
    return text


def _check_list(value: object, example: str) -> list[object]:
    if not isinstance(value, list):
        raise _Invalid(f"expected an array of strings, e.g. {example}, got {_kind(value)}")
    return value


def _check_email(value: object) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"expected an address as a string, got {_kind(value)}")
    try:
        return check_address(value)
    except AddressError as exc:
        raise _Invalid(f"{_short(value)} is not a valid address: {exc}") from None


def _check_source_name(value: object) -> str:
    if not isinstance(value, str):
        raise _Invalid(f'expected a source name as a string, e.g. "arxiv-ml", got {_kind(value)}')
    name = value.strip()
    if SOURCE_NAME.fullmatch(name) and len(name) <= SOURCE_NAME_MAX:
        return name
    raise _Invalid(
        f"{_short(value)} is not a source name: use lower-case letters and digits, words joined "
        f'by single hyphens, at most {SOURCE_NAME_MAX} characters, e.g. "arxiv-ml"'
    )


def _check_location(value: object, example: str) -> str:
    """An http(s) URL or a path (file or folder), as sources.base.locate_feed decides."""
    if not isinstance(value, str):
        raise _Invalid(f"expected a URL or a path as a string, e.g. {example}, got {_kind(value)}")
    text = value.strip()
    if not text:
        raise _Invalid(f"is empty; give an http(s) URL or a path, e.g. {example}")
    if has_unsafe(text):
        raise _Invalid(f"{_short(value)} contains a control character (newline, tab...)")
    if len(text) > MAX_URL_CHARS:
        raise _Invalid(f"is longer than {MAX_URL_CHARS} characters")
    where = locate_feed(text)
    if where.kind == "bad":
        raise _Invalid(f"{_short(text)} {where.reason}")
    return text


def _check_category(value: object) -> str:
    if not isinstance(value, str):
        raise _Invalid(f'expected an arXiv category as a string, e.g. "cs.CL", got {_kind(value)}')
    name = value.strip()
    if ARXIV_CATEGORY.fullmatch(name) and len(name) <= ARXIV_CATEGORY_MAX:
        return name
    archive, dot, subject = name.partition(".")
    fixed = archive.lower() + dot + (subject.upper() if len(subject) == 2 else subject.lower())
    hint = (
        f"; did you mean {fixed!r}?"
        if fixed != name and ARXIV_CATEGORY.fullmatch(fixed) and len(fixed) <= ARXIV_CATEGORY_MAX
        else ""
    )
    raise _Invalid(
        f"{_short(value)} is not an arXiv category such as cs.CL, math.AP, q-bio.NC, astro-ph "
        f"or astro-ph.GA{hint}"
    )


_DEFAULT_CHECKS: Mapping[str, Callable[[object], object]] = {
    "send_at": _check_send_at,
    "timezone": _check_timezone,
    "max_papers": _check_max_papers,
    "send_empty": _check_bool,
    "min_upvotes": _check_min_upvotes,
    "trending": _check_trending,
    "frequency": _check_frequency,
    "weekday": _check_weekday,
}


def _unknown_key_message(key: str, allowed: tuple[str, ...], where: str) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown key {key!r} in {where}; {hint}allowed: {', '.join(allowed)}"


class _Validator:
    def __init__(self, doc: dict[str, Any], lines: LineMap, source: str) -> None:
        self.doc = doc
        self.lines = lines
        self.source = source
        self.configured: tuple[SourceSpec, ...] = (DEFAULT_SOURCE,)

    def error(
        self,
        message: str,
        *,
        line: int | None,
        subscriber: str | None = None,
        field_name: str | None = None,
    ) -> ConfigError:
        return ConfigError(
            message, file=self.source, line=line, subscriber=subscriber, field=field_name
        )

    def run(self) -> Config:
        for key in self.doc:
            if key not in TOP_KEYS:
                raise self.error(
                    _unknown_key_message(key, TOP_KEYS, "the file"),
                    line=self.lines.top.get(key),
                    field_name=key,
                )
        self.configured = self.sources()
        defaults = self.defaults()
        raw = self.doc.get("subscribers")
        if raw is None or raw == []:
            raise self.error(
                "no subscribers: add at least one [[subscribers]] entry with an email and keywords",
                line=self.lines.top.get("subscribers"),
                field_name="subscribers",
            )
        if not isinstance(raw, list):
            raise self.error(
                f"expected [[subscribers]] entries (an array of tables), got {_kind(raw)}",
                line=self.lines.top.get("subscribers"),
                field_name="subscribers",
            )
        specs: list[SubscriberSpec] = []
        seen: dict[str, int] = {}  # address_key → index of its first subscriber
        for index, entry in enumerate(raw):
            spec = self.subscriber(index, entry, defaults)
            # The parsed entry is done with: let it go now, so a large file never holds all of
            # its parsed tables and all of its specs at once (100,000 subscribers: 71 + 55 MB).
            raw[index] = None
            key = address_key(spec.email)
            if key in seen:
                first_n, first_line = seen[key] + 1, self.lines.sub(seen[key], "email")
                where = f" (line {first_line})" if first_line else ""
                raise self.error(
                    f"duplicate email {spec.email!r}: subscriber #{first_n}{where} already uses it "
                    "(addresses are compared ignoring case)",
                    line=self.lines.sub(index, "email"),
                    subscriber=spec.email,
                    field_name="email",
                )
            seen[key] = index
            specs.append(spec)
        return Config(specs, self.configured)

    # ------------------------------------------------------------------ [[sources]]

    def sources(self) -> tuple[SourceSpec, ...]:
        """The `[[sources]]` entries in file order; without any, the default hf source."""
        raw = self.doc.get("sources")
        if raw is None:
            return (DEFAULT_SOURCE,)
        line = self.lines.top.get("sources")
        if not isinstance(raw, list):
            raise self.error(
                f"expected [[sources]] entries (an array of tables), got {_kind(raw)}",
                line=line,
                field_name="sources",
            )
        if not raw:
            raise self.error(
                "no sources: add a [[sources]] entry, or leave `sources` out to use the "
                "default Hugging Face source",
                line=line,
                field_name="sources",
            )
        specs: list[SourceSpec] = []
        seen: dict[str, int] = {}
        for index, entry in enumerate(raw):
            spec = self.source_entry(index, entry)
            if spec.name in seen:
                first = seen[spec.name]
                at = self.lines.source(first, "name")
                where = f" (line {at})" if at else ""
                raise self.error(
                    f"duplicate source name {spec.name!r}: source #{first + 1}{where} already "
                    "uses it; give each source its own name",
                    line=self.lines.source(index, "name"),
                    field_name=f"sources[{index + 1}].name",
                )
            seen[spec.name] = index
            specs.append(spec)
        return tuple(specs)

    def source_entry(self, index: int, entry: object) -> SourceSpec:
        """One `[[sources]]` table; errors name its line and the field as `sources[N].key`."""
        header = self.lines.source(index)
        number = index + 1

        def fail(message: str, key: str | None, line: int | None = None) -> ConfigError:
            return self.error(
                message,
                line=line or self.lines.source(index, key),
                field_name=f"sources[{number}].{key}" if key else f"sources[{number}]",
            )

        if not isinstance(entry, dict):
            raise fail(f"each source must be a table, got {_kind(entry)}", None)
        for key in entry:
            if key not in SOURCE_KEYS:
                raise fail(_unknown_key_message(key, SOURCE_KEYS, "a [[sources]] entry"), key)
        if "name" not in entry:
            raise fail(
                "missing 'name': give each source a unique name, e.g. name = \"arxiv-ml\"", "name"
            )
        label = f"source #{number}: "

        def check(key: str, fn: Callable[[object], Any]) -> Any:
            try:
                return fn(entry[key])
            except _Invalid as exc:
                raise fail(f"{label}{exc}", key) from None

        name = check("name", _check_source_name)
        label = f"source {name!r}: "
        if "kind" not in entry:
            raise fail(f"{label}missing 'kind': one of {', '.join(KINDS)}", "kind")
        kind = check("kind", lambda v: _check_choice(v, KINDS, "a source kind"))
        url = None
        if "url" in entry:
            example = '"https://connect.biorxiv.org/biorxiv_xml/neuroscience"'
            url = check("url", lambda v: _check_location(v, example))
        elif kind == "feed":
            raise fail(
                f"{label}a feed source needs a url: the http(s) address of an RSS or Atom feed, "
                "or a saved file",
                "url",
            )
        for key in ("categories", "api_url"):
            if key in entry and kind != "arxiv":
                raise fail(f'{label}{key!r} is only for kind = "arxiv" sources', key)
        categories: tuple[str, ...] = ()
        api_url = None
        if kind == "arxiv":
            if "categories" not in entry:
                raise fail(
                    f'{label}an arxiv source needs categories, e.g. categories = ["cs.CL", "cs.LG"]',
                    "categories",
                )
            categories = self.categories(index, entry["categories"], fail, label)
            if "api_url" in entry:
                api_url = check(
                    "api_url", lambda v: _check_location(v, '"https://export.arxiv.org/api/query"')
                )
        return SourceSpec(
            name=name, kind=kind, url=url, categories=categories, api_url=api_url, line=header
        )

    def categories(
        self,
        index: int,
        value: object,
        fail: Callable[[str, str | None, int | None], ConfigError],
        label: str,
    ) -> tuple[str, ...]:
        """An arxiv source's `categories`: a non-empty array of arXiv categories, each once."""
        if not isinstance(value, list):
            raise fail(
                f'{label}expected an array of arXiv categories, e.g. ["cs.CL", "cs.LG"], '
                f"got {_kind(value)}",
                "categories",
                None,
            )
        if not value:
            raise fail(f'{label}is empty; list at least one, e.g. ["cs.CL"]', "categories", None)
        out: list[str] = []
        for position, item in enumerate(value):
            line = self.lines.source_item(index, "categories", position)
            try:
                category = _check_category(item)
            except _Invalid as exc:
                raise fail(f"{label}entry {position + 1}: {exc}", "categories", line) from None
            if category in out:
                raise fail(
                    f"{label}entry {position + 1}: {category!r} is listed twice", "categories", line
                )
            out.append(category)
        return tuple(out)

    def source_names(
        self,
        value: object,
        line: Callable[[int | None], int | None],
        *,
        subscriber: str | None,
        label: str = "",
    ) -> tuple[str, ...]:
        """A `sources = [...]` list of a subscriber or of [defaults]: configured names, each once.

        `line(position)` is the line of an element (None: of the key)."""
        names = tuple(sp.name for sp in self.configured)

        def fail(message: str, position: int | None) -> ConfigError:
            return self.error(
                label + message, line=line(position), subscriber=subscriber, field_name="sources"
            )

        if not isinstance(value, list):
            raise fail(
                f'expected an array of source names, e.g. ["{names[0]}"], got {_kind(value)}', None
            )
        if not value:
            raise fail(
                "is empty: name at least one source, or leave `sources` out to get the papers "
                "of every source",
                None,
            )
        out: list[str] = []
        for position, item in enumerate(value):
            if not isinstance(item, str):
                raise fail(
                    f"entry {position + 1}: expected a source name as a string, got {_kind(item)}",
                    position,
                )
            name = item.strip().lower()
            if name not in names:
                close = difflib.get_close_matches(name, names, n=1) if len(name) <= 100 else []
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise fail(
                    f"entry {position + 1}: no source is named {_short(item)}; {hint}"
                    f"configured: {', '.join(names)}",
                    position,
                )
            if name in out:
                raise fail(f"entry {position + 1}: {name!r} is listed twice", position)
            out.append(name)
        return tuple(out)

    def defaults(self) -> dict[str, Any]:
        merged = dict(BUILTIN_DEFAULTS)
        raw = self.doc.get("defaults")
        if raw is None:
            return merged
        if not isinstance(raw, dict):
            raise self.error(
                f"[defaults] must be a table, got {_kind(raw)}",
                line=self.lines.top.get("defaults"),
                field_name="defaults",
            )
        for key, value in raw.items():
            line = self.lines.default(key)
            if key == "exclude":
                merged[key] = self.default_exclude(value, line)
                continue
            if key == "sources":

                def at_key(_: int | None, key_line: int | None = line) -> int | None:
                    return key_line

                merged[key] = self.source_names(
                    value, at_key, subscriber=None, label="in [defaults]: "
                )
                continue
            if key not in DEFAULT_KEYS:
                hint = " (set it per subscriber)" if key in SUBSCRIBER_KEYS else ""
                raise self.error(
                    _unknown_key_message(key, DEFAULT_KEYS, "[defaults]") + hint,
                    line=line,
                    field_name=key,
                )
            try:
                merged[key] = _DEFAULT_CHECKS[key](value)
            except _Invalid as exc:
                raise self.error(f"in [defaults]: {exc}", line=line, field_name=key) from None
        return merged

    def default_exclude(self, value: object, line: int | None) -> tuple[str, ...]:
        """[defaults] exclude: list-wide exclusions, merged with each subscriber's own."""
        try:
            items = _check_list(value, '["survey"]')
        except _Invalid as exc:
            raise self.error(f"in [defaults]: {exc}", line=line, field_name="exclude") from None
        out = []
        for position, item in enumerate(items, start=1):
            try:
                text = _check_text(item, "a query")
                if not text:
                    raise _Invalid("is empty")
                parse_query(text)
            except _Invalid as exc:
                raise self.error(
                    f"in [defaults]: entry {position}: {exc}",
                    line=line,
                    field_name="exclude",
                ) from None
            except QueryError as exc:
                at = f" at column {exc.column}" if exc.column is not None else ""
                raise self.error(
                    f"in [defaults]: {exc.reason}{at} in query {text!r}",
                    line=line,
                    field_name="exclude",
                ) from exc
            out.append(text)
        return tuple(out)

    def subscriber(self, index: int, entry: object, defaults: Mapping[str, Any]) -> SubscriberSpec:
        number = f"#{index + 1}"
        header = self.lines.sub(index)
        if not isinstance(entry, dict):
            raise self.error(
                f"each subscriber must be a table, got {_kind(entry)}",
                line=header,
                subscriber=number,
            )
        try:
            email: str | None = _check_email(entry["email"]) if "email" in entry else None
            email_problem: str | None = None if email else "missing 'email'"
        except _Invalid as exc:
            email, email_problem = None, str(exc)
        who = email or number
        for key in entry:
            if key not in SUBSCRIBER_KEYS:
                raise self.error(
                    _unknown_key_message(key, SUBSCRIBER_KEYS, "a subscriber"),
                    line=self.lines.sub(index, key),
                    subscriber=who,
                    field_name=key,
                )
        if email is None:
            assert email_problem is not None
            raise self.error(
                email_problem,
                line=self.lines.sub(index, "email"),
                subscriber=number,
                field_name="email",
            )

        def check(key: str, fn: Callable[[object], Any]) -> Any:
            try:
                return fn(entry[key])
            except _Invalid as exc:
                raise self.error(
                    str(exc), line=self.lines.sub(index, key), subscriber=who, field_name=key
                ) from None

        def strings(key: str, example: str, what: str) -> tuple[str, ...]:
            if key not in entry:
                return ()
            items = check(key, lambda v: _check_list(v, example))
            out = []
            for position, item in enumerate(items, start=1):
                try:
                    text = _check_text(item, what)
                    if not text:
                        raise _Invalid("is empty")
                except _Invalid as exc:
                    raise self.error(
                        f"entry {position}: {exc}",
                        line=self.lines.item(index, key, position - 1),
                        subscriber=who,
                        field_name=key,
                    ) from None
                out.append(text)
            return tuple(out)

        name = None
        if "name" in entry:
            name = check("name", lambda v: _check_text(v, "a name")) or None
        keywords = strings("keywords", '["diffusion", "\\"speculative decoding\\""]', "a query")
        exclude = strings("exclude", '["survey"]', "a query")
        authors = strings("authors", '["Christopher Ré"]', "an author name")
        values = {
            key: check(key, fn) if key in entry else defaults[key]
            for key, fn in _DEFAULT_CHECKS.items()
        }
        if not keywords and not authors and not values["trending"]:
            raise self.error(
                "follows nothing: give at least one entry in keywords or authors, "
                "or set trending = N for the N most upvoted new papers",
                line=self.lines.sub(index, "keywords") if "keywords" in entry else header,
                subscriber=who,
                field_name="keywords",
            )
        for key, queries in (("keywords", keywords), ("exclude", exclude)):
            self.check_queries(queries, index=index, who=who, key=key)
        sources: tuple[str, ...] = defaults.get("sources", ())
        if "sources" in entry:
            sources = self.source_names(
                entry["sources"],
                lambda at: (
                    self.lines.sub(index, "sources")
                    if at is None
                    else self.lines.item(index, "sources", at)
                ),
                subscriber=who,
            )
        shared = tuple(q for q in defaults.get("exclude", ()) if q not in exclude)
        return SubscriberSpec(
            email=email,
            name=name,
            keywords=keywords,
            exclude=shared + exclude,
            authors=authors,
            min_upvotes=values["min_upvotes"],
            send_at=values["send_at"],
            timezone=values["timezone"],
            max_papers=values["max_papers"],
            send_empty=values["send_empty"],
            trending=values["trending"],
            frequency=values["frequency"],
            weekday=values["weekday"],
            sources=sources,
            line=header,
        )

    def check_queries(self, queries: tuple[str, ...], *, index: int, who: str, key: str) -> None:
        if not queries:
            return
        for position, query in enumerate(queries):
            try:
                parse_query(query)
            except QueryError as exc:
                at = f" at column {exc.column}" if exc.column is not None else ""
                raise self.error(
                    f"{exc.reason}{at} in query {query!r}",
                    line=self.lines.item(index, key, position),
                    subscriber=who,
                    field_name=key,
                ) from exc
