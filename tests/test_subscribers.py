"""Subscribers file: the example loads, defaults merge, and every error names file, line, subscriber, field."""

from __future__ import annotations

import datetime
import json
import re
import tomllib
import zoneinfo
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from digestbot.configcheck import unmatchable
from digestbot.errors import ConfigError, QueryError
from digestbot.matching import parse_query
from digestbot.sources.base import SourceSpec
from digestbot.subscribers import (
    DEFAULT_KEYS,
    DEFAULT_SOURCE,
    SOURCE_KEYS,
    SUBSCRIBER_KEYS,
    Config,
    SubscriberSpec,
    load_config,
    load_subscribers,
    parse_config,
    parse_subscribers,
)

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "subscribers.example.toml"
SRC = "subs.toml"


def parse(text: str) -> list[SubscriberSpec]:
    """Parse subscribers text under the source name SRC."""
    return parse_subscribers(text, source=SRC)


def fails(text: str) -> ConfigError:
    """Parse text that must be rejected and return the ConfigError."""
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert info.value.file == SRC
    return info.value


def where(err: ConfigError) -> tuple[int | None, str | None, str | None]:
    """The (line, subscriber, field) an error points at."""
    return err.line, err.subscriber, err.field


TWO = """\
[defaults]
timezone = "Europe/Paris"

[[subscribers]]
email = "ada@example.org"
keywords = ["diffusion"]

[[subscribers]]
email = "grace@example.org"
authors = ["Grace Hopper"]
{extra}
"""


def two(extra: str) -> str:
    """The TWO document with `extra` lines appended to the second subscriber (its lines 11+)."""
    return TWO.format(extra=extra)


# --------------------------------------------------------------------------- the example file


def test_example_file_loads() -> None:
    """subscribers.example.toml is valid and holds realistic @example.org subscribers."""
    specs = load_subscribers(EXAMPLE)
    assert 2 <= len(specs) <= 4
    assert all(s.email.endswith("@example.org") for s in specs)
    assert all(s.keywords or s.trending for s in specs)
    assert any(s.trending and not s.keywords and not s.authors for s in specs), "trending-only"
    assert any(s.frequency == "weekly" for s in specs)
    assert all(isinstance(s.tz, zoneinfo.ZoneInfo) for s in specs)


def test_example_file_shows_every_key_and_the_query_syntax() -> None:
    """The example shows every defaults key (set, or commented out when any value would change what
    everyone gets) and uses every subscriber key, and phrases, OR, -word, title: and author:."""
    text = EXAMPLE.read_text(encoding="utf-8")
    doc = tomllib.loads(text)
    block = text.split("\n[defaults]", 1)[1].split("\n[[", 1)[0]
    shown = set(doc["defaults"]) | set(re.findall(r"^# (\w+) = ", block, flags=re.MULTILINE))
    assert shown == set(DEFAULT_KEYS)
    used = set().union(*(set(s) for s in doc["subscribers"]))
    assert used == set(SUBSCRIBER_KEYS)
    queries = [q for s in doc["subscribers"] for q in s.get("keywords", []) + s.get("exclude", [])]
    joined = "\n".join(queries)
    assert re.search(r'"[^"]+ [^"]+"', joined), "a phrase"
    assert " OR " in joined
    assert re.search(r"(^|\s)-\w", joined, flags=re.MULTILINE), "-word"
    assert "title:" in joined and "author:" in joined


def test_example_queries_parse_with_the_matching_language() -> None:
    """Every query in the example file parses with digestbot.matching."""
    for spec in load_subscribers(EXAMPLE):
        for query in spec.keywords + spec.exclude:
            parse_query(query)


# --------------------------------------------------------------------------- defaults and values


def test_builtin_defaults_apply() -> None:
    """A subscriber with only email and keywords gets the built-in defaults."""
    [spec] = parse('[[subscribers]]\nemail = "ada@example.org"\nkeywords = ["diffusion"]\n')
    assert spec == SubscriberSpec(
        email="ada@example.org",
        name=None,
        keywords=("diffusion",),
        exclude=(),
        authors=(),
        min_upvotes=0,
        send_at=datetime.time(7, 0),
        timezone="UTC",
        max_papers=25,
        send_empty=False,
        line=1,
    )


def test_file_defaults_apply_and_are_overridable() -> None:
    """[defaults] values apply to every subscriber; a subscriber's own value wins."""
    text = """\
[defaults]
send_at = "06:15"
timezone = "Asia/Tokyo"
max_papers = 10
send_empty = true
min_upvotes = 3

[[subscribers]]
email = "ada@example.org"
keywords = ["diffusion"]

[[subscribers]]
email = "grace@example.org"
name = "  Grace Hopper "
keywords = ["agents"]
send_at = 21:05:00
timezone = "America/New_York"
max_papers = 40
send_empty = false
min_upvotes = 0
"""
    ada, grace = parse(text)
    assert (ada.send_at, ada.timezone, ada.max_papers, ada.send_empty, ada.min_upvotes) == (
        datetime.time(6, 15),
        "Asia/Tokyo",
        10,
        True,
        3,
    )
    assert (
        grace.send_at,
        grace.timezone,
        grace.max_papers,
        grace.send_empty,
        grace.min_upvotes,
    ) == (datetime.time(21, 5), "America/New_York", 40, False, 0)
    assert grace.name == "Grace Hopper"
    assert (ada.line, grace.line) == (8, 12)
    assert grace.tz == zoneinfo.ZoneInfo("America/New_York")


def test_email_domain_is_lower_cased() -> None:
    """The domain of an address is normalized to lower case; the local part is kept."""
    [spec] = parse('[[subscribers]]\nemail = " Ada.L@Example.ORG "\nauthors = ["Ada"]\n')
    assert spec.email == "Ada.L@example.org"


def test_authors_alone_are_enough() -> None:
    """A subscriber that follows only authors is valid."""
    [spec] = parse('[[subscribers]]\nemail = "a@example.org"\nauthors = ["Christopher Ré"]\n')
    assert spec.authors == ("Christopher Ré",) and spec.keywords == ()


def test_load_strips_a_byte_order_mark(tmp_path: Path) -> None:
    """A UTF-8 file with a BOM (as some editors write) loads."""
    path = tmp_path / "subscribers.toml"
    path.write_bytes(b'\xef\xbb\xbf[[subscribers]]\nemail = "a@example.org"\nkeywords = ["x"]\n')
    assert [s.email for s in load_subscribers(path)] == ["a@example.org"]


# --------------------------------------------------------------------------- errors: file level


def test_missing_file_says_to_run_init(tmp_path: Path) -> None:
    """A missing subscribers file is a ConfigError that tells to run `digestbot init`."""
    path = tmp_path / "subscribers.toml"
    with pytest.raises(ConfigError) as info:
        load_subscribers(path)
    assert info.value.file == str(path)
    assert "digestbot init" in info.value.message


def test_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 are reported at their line."""
    path = tmp_path / "subscribers.toml"
    path.write_bytes(b'[[subscribers]]\nemail = "a@example.org"\nname = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        load_subscribers(path)
    assert (info.value.file, info.value.line) == (str(path), 3)


def test_toml_syntax_error_gives_line_and_column() -> None:
    """A TOML syntax error is reported with tomllib's line, and its column in the message."""
    err = fails('[[subscribers]]\nemail = "ada@example.org"\nkeywords = ["diffusion"\n')
    assert err.line == 3
    assert "end of the file" in err.message
    err = fails("[[subscribers]]\nemail = ada@example.org\n")
    assert err.line == 2
    assert "column 9" in err.message and "invalid TOML" in err.message


def test_unknown_top_level_key() -> None:
    """An unknown top-level key or table names its line and suggests the right name."""
    err = fails('title = "x"\n[[subscribers]]\nemail = "a@example.org"\nkeywords = ["x"]\n')
    assert where(err) == (1, None, "title")
    err = fails('[[subscriber]]\nemail = "a@example.org"\nkeywords = ["x"]\n')
    assert where(err) == (1, None, "subscriber")
    assert "did you mean 'subscribers'" in err.message


def test_unknown_key_in_defaults() -> None:
    """An unknown key in [defaults] names its line; a per-subscriber key there is explained."""
    err = fails(
        TWO.replace('timezone = "Europe/Paris"', 'timezone = "UTC"\ntime_zone = "UTC"', 1).format(
            extra=""
        )
    )
    assert where(err) == (3, None, "time_zone")
    assert "did you mean 'timezone'" in err.message
    err = fails(TWO.replace('timezone = "Europe/Paris"', 'keywords = ["x"]').format(extra=""))
    assert where(err) == (2, None, "keywords")
    assert "set it per subscriber" in err.message


def test_bad_value_in_defaults() -> None:
    """A bad value in [defaults] names its line and field."""
    err = fails(TWO.replace('"Europe/Paris"', '"Europe/Pariss"').format(extra=""))
    assert where(err) == (2, None, "timezone")
    assert "did you mean 'Europe/Paris'" in err.message


def test_defaults_must_be_a_table() -> None:
    """`defaults` that is not a table is rejected at its line."""
    err = fails('defaults = 3\n[[subscribers]]\nemail = "a@example.org"\nkeywords = ["x"]\n')
    assert where(err) == (1, None, "defaults")


@pytest.mark.parametrize(
    "text",
    ["", "# nothing here\n", '[defaults]\nsend_at = "07:00"\n', "subscribers = []\n"],
)
def test_no_subscribers_is_an_error(text: str) -> None:
    """A file without any subscriber is rejected."""
    err = fails(text)
    assert "no subscribers" in err.message
    assert err.field == "subscribers"


def test_subscribers_must_be_an_array_of_tables() -> None:
    """`[subscribers]` written as a single table is rejected at its line."""
    err = fails('\n[subscribers]\nemail = "a@example.org"\n')
    assert where(err) == (2, None, "subscribers")
    assert "[[subscribers]]" in err.message


# --------------------------------------------------------------------------- errors: subscriber level


def test_unknown_key_in_a_subscriber() -> None:
    """An unknown subscriber key names its line, the subscriber and the key, with a suggestion."""
    err = fails(two('keyword = ["agents"]'))
    assert where(err) == (11, "grace@example.org", "keyword")
    assert "did you mean 'keywords'" in err.message


def test_unknown_sub_table_in_a_subscriber() -> None:
    """A table nested under a subscriber is an unknown key at its header line."""
    err = fails(two("[subscribers.filters]\nx = 1"))
    assert where(err) == (11, "grace@example.org", "filters")


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ('"Grace <grace@example.org>"', "without a display name"),
        ('"grace"', "must have an @-sign"),
        ('"grace@localhost"', "should have a period"),
        ('"grace@@example.org"', "invalid characters: '@'"),
        ('"gr ace@example.org"', "display name"),
        ('"grace@example.org\\r\\nBcc: eve@example.org"', "control character"),
        ('"grace@exa_mple.org"', "invalid characters: '_'"),
        ('"grace@[127.0.0.1]"', "bracketed IP address"),
        ('"grace@example..org"', "two periods in a row"),
        ("42", "expected an address as a string"),
    ],
)
def test_bad_email_names_subscriber_by_number(value: str, fragment: str) -> None:
    """A bad address is reported at its line, for subscriber '#n', field 'email'."""
    text = two("").replace('email = "grace@example.org"', f"email = {value}")
    err = fails(text)
    assert where(err) == (9, "#2", "email")
    assert fragment in err.message


def test_missing_email() -> None:
    """A subscriber without an email is reported at its header line."""
    err = fails(two("").replace('email = "grace@example.org"\n', ""))
    assert where(err) == (8, "#2", "email")
    assert "missing 'email'" in err.message


def test_unknown_key_is_reported_before_a_bad_email() -> None:
    """A misspelt `e-mail` key is reported as unknown, not as a missing email."""
    err = fails(two("").replace('email = "grace@example.org"', 'e-mail = "grace@example.org"'))
    assert where(err) == (9, "#2", "e-mail")


@pytest.mark.parametrize(
    ("line", "field", "fragment"),
    [
        ('send_at = "25:00"', "send_at", "HH:MM"),
        ('send_at = "7am"', "send_at", "HH:MM"),
        ("send_at = 700", "send_at", "expected a time"),
        ("send_at = 07:00:30", "send_at", "whole minute"),
        ('timezone = "Mars/Olympus_Mons"', "timezone", "not a known IANA time zone"),
        ('timezone = "../../etc/passwd"', "timezone", "not a known IANA time zone"),
        ("timezone = 1", "timezone", "IANA zone name"),
        ("max_papers = 0", "max_papers", "out of range"),
        ("max_papers = 100000", "max_papers", "out of range"),
        ('max_papers = "10"', "max_papers", "got a string"),
        ("max_papers = true", "max_papers", "got a boolean"),
        ("max_papers = 2.5", "max_papers", "got a float"),
        ("min_upvotes = -1", "min_upvotes", "out of range"),
        ('send_empty = "no"', "send_empty", "true or false"),
        ("name = 3", "name", "as a string"),
        ('name = "Grace\\nBcc: eve@example.org"', "name", "control character"),
        ('exclude = "survey"', "exclude", "array of strings"),
        ("exclude = [1]", "exclude", "entry 1"),
        ('exclude = ["ok", "   "]', "exclude", "entry 2: is empty"),
    ],
)
def test_bad_field_names_line_subscriber_and_field(line: str, field: str, fragment: str) -> None:
    """A bad value is reported at its line, with the subscriber's email and the field."""
    err = fails(two(line))
    assert where(err) == (11, "grace@example.org", field)
    assert fragment in err.message


def test_bad_authors_type() -> None:
    """`authors` that is not an array of strings is reported at its line."""
    err = fails(two("").replace('authors = ["Grace Hopper"]', 'authors = "Grace Hopper"'))
    assert where(err) == (10, "grace@example.org", "authors")


def test_bad_entry_in_multiline_array_names_its_own_line() -> None:
    """In an array written over several lines, an error names the line of the bad entry."""
    err = fails(two('exclude = [\n  "survey",  # no reviews\n  "",\n]'))
    assert where(err) == (13, "grace@example.org", "exclude")


def test_subscriber_following_nothing() -> None:
    """A subscriber with neither keywords nor authors is rejected."""
    err = fails(two("").replace('authors = ["Grace Hopper"]', "authors = []"))
    assert where(err) == (8, "grace@example.org", "keywords")
    assert "keywords or authors" in err.message


def test_duplicate_email_ignores_case() -> None:
    """Two subscribers with the same address, differing only in case, are rejected at the second."""
    err = fails(two("").replace("grace@example.org", "ADA@Example.org"))
    assert where(err) == (9, "ADA@example.org", "email")
    assert "#1 (line 5)" in err.message


def test_inline_subscribers_fall_back_to_the_array_line() -> None:
    """Subscribers written as inline tables are located at the `subscribers =` line."""
    text = (
        '# comment\nsubscribers = [\n  {email = "a@example.org", keywords = ["x"]},\n'
        '  {email = "b@example.org", keywords = ["y"], max_papers = 0},\n]\n'
    )
    err = fails(text)
    assert where(err) == (2, "b@example.org", "max_papers")


def test_line_scanner_is_not_fooled_by_strings() -> None:
    """Keys that only look like keys, inside strings and multi-line strings, do not move lines."""
    text = '''\
[[subscribers]]
email = "a@example.org"
name = """Ada \\
max_papers = 3 \\
[[subscribers]]"""
keywords = ['[[subscribers]]', "x = 1"]
"max_papers" = 0
'''
    err = fails(text)
    assert where(err) == (7, "a@example.org", "max_papers")


# --------------------------------------------------------------------------- queries


def test_query_error_names_line_column_and_query() -> None:
    """An invalid keywords query is a ConfigError with file, line, subscriber, field and column."""
    err = fails(two('exclude = [\n  "survey",\n  "(diffusion OR sampling",\n]'))
    assert where(err) == (13, "grace@example.org", "exclude")
    cause = err.__cause__
    assert isinstance(cause, QueryError) and cause.column is not None
    assert (
        err.message == f"{cause.reason} at column {cause.column} in query '(diffusion OR sampling'"
    )


def test_query_error_in_keywords_names_the_field() -> None:
    """An invalid keywords query names the keywords field and the query's own line."""
    err = fails(two('keywords = ["agents", "title:(a"]'))
    assert where(err) == (11, "grace@example.org", "keywords")
    assert re.search(r" at column \d+ in query 'title:\(a'$", err.message)


# --------------------------------------------------------------------------- fuzzing


def _attempt(text: str) -> None:
    try:
        specs = parse(text)
    except ConfigError as err:
        assert err.file == SRC
        assert err.line is None or err.line >= 1
    else:
        assert specs and all(isinstance(s, SubscriberSpec) for s in specs)


@given(st.text(max_size=300))
@hsettings(max_examples=300, deadline=None)
def test_arbitrary_text_raises_only_config_error(text: str) -> None:
    """parse_subscribers on arbitrary text returns specs or raises ConfigError, never anything else."""
    _attempt(text)


def _toml_string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


_scalar_values = st.one_of(
    st.sampled_from(
        [
            '"ada@example.org"',
            '"Ada@Example.org"',
            '"x@localhost"',
            '"07:30"',
            '"24:00"',
            '"UTC"',
            '"Europe/Paris"',
            '"Nowhere/Zone"',
            "07:00:00",
            "1979-05-27",
            "true",
            "false",
            "0",
            "-1",
            "25",
            "1e3",
            "inf",
            "{}",
            "{a = 1}",
            '"(unbalanced"',
            '"a OR"',
            '"title:x"',
            '"-"',
            '"\\"x\\""',
        ]
    ),
    st.integers(min_value=-(2**63), max_value=2**63 - 1).map(str),
    st.text(max_size=20).map(_toml_string),
)
_values = st.one_of(
    _scalar_values,
    st.lists(_scalar_values, max_size=4).map(lambda xs: "[" + ", ".join(xs) + "]"),
    st.lists(st.text(max_size=12).map(_toml_string), max_size=4).map(
        lambda xs: "[\n  " + ",\n  ".join(xs) + ",\n]" if xs else "[]"
    ),
)
_keys = st.one_of(
    st.sampled_from(SUBSCRIBER_KEYS + DEFAULT_KEYS),
    st.sampled_from(['"email"', "'keywords'", "bogus", "e-mail", "a.b", '"quoted key"']),
)
_table = st.lists(st.tuples(_keys, _values), max_size=7, unique_by=lambda kv: kv[0])


def _render_table(pairs: list[tuple[str, str]]) -> str:
    return "".join(f"{key} = {value}\n" for key, value in pairs)


@st.composite
def _documents(draw: st.DrawFn) -> str:
    parts = []
    if draw(st.booleans()):
        parts.append(draw(st.sampled_from(["", "# comment\n", 'title = "x"\n'])))
    if draw(st.booleans()):
        parts.append("[defaults]\n" + _render_table(draw(_table)))
    subs = draw(st.lists(_table, max_size=4))
    for n, table in enumerate(subs):
        if draw(st.booleans()):  # mostly valid subscribers, so validation goes deep
            table[:] = [
                (k, v) for k, v in table if k not in ("email", '"email"', "keywords", "'keywords'")
            ]
            table.insert(0, ("keywords", '["diffusion"]'))
            table.insert(0, ("email", f'"user{n}@example.org"'))
    if draw(st.integers(0, 4)) == 0:
        inline = ", ".join(
            "{" + ", ".join(f"{k} = {v}" for k, v in t if "\n" not in v) + "}" for t in subs
        )
        parts.insert(0, f"subscribers = [{inline}]\n")
    else:
        for table in subs:
            parts.append("[[subscribers]]\n" + _render_table(table))
    return "\n".join(parts)


@given(_documents())
@hsettings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_arbitrary_toml_documents_raise_only_config_error(text: str) -> None:
    """On TOML-like documents: specs or ConfigError, and a named line shows the field or its block."""
    _attempt(text)
    try:
        parse(text)
    except ConfigError as err:
        if err.line and err.field and not err.message.startswith("invalid TOML"):
            shown = text.split("\n")[err.line - 1]
            assert (
                err.field.split(".")[0] in shown
                or "subscribers" in shown
                or "defaults" in shown
                or shown.lstrip().startswith(('"', "'"))
            ), (err, shown)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["ada", "Grace.H", "x+tag"]),
            st.sampled_from(["example.org", "EXAMPLE.org", "Example.Com"]),
        ),
        min_size=1,
        max_size=5,
    )
)
@hsettings(max_examples=100, deadline=None)
def test_duplicates_are_found_whatever_the_case(addresses: list[tuple[str, str]]) -> None:
    """A list of subscribers loads exactly when no two addresses are equal ignoring case."""
    text = "".join(
        f'[[subscribers]]\nemail = "{local}@{domain}"\nkeywords = ["x"]\n'
        for local, domain in addresses
    )
    distinct = {f"{local}@{domain}".casefold() for local, domain in addresses}
    if len(distinct) == len(addresses):
        assert len(parse(text)) == len(addresses)
    else:
        assert fails(text).field == "email"


# --------------------------------------------------------------------------- trending and frequency


def test_a_trending_only_subscriber_is_valid() -> None:
    """A subscriber with only `trending` (no keywords or authors) is valid and follows no query."""
    [spec] = parse('[[subscribers]]\nemail = "t@example.org"\ntrending = 5\n')
    assert (spec.trending, spec.keywords, spec.authors) == (5, (), ())
    assert (spec.frequency, spec.weekday) == ("daily", "monday")


def test_trending_frequency_weekday_and_exclude_come_from_defaults() -> None:
    """[defaults] sets trending, frequency and weekday; its exclude list is merged with each subscriber's own, list-wide first."""
    specs = parse(
        '[defaults]\ntrending = 3\nfrequency = "weekly"\nweekday = "Fri"\nexclude = ["survey"]\n'
        '[[subscribers]]\nemail = "a@example.org"\nkeywords = ["x"]\nexclude = ["video"]\n'
        '[[subscribers]]\nemail = "b@example.org"\nkeywords = ["x"]\ntrending = 1\n'
        'frequency = "daily"\nexclude = ["survey"]\n'
    )
    assert [(s.trending, s.frequency, s.weekday) for s in specs] == [
        (3, "weekly", "friday"),
        (1, "daily", "friday"),
    ]
    assert [s.exclude for s in specs] == [("survey", "video"), ("survey",)]


@pytest.mark.parametrize(
    ("line", "field", "fragment"),
    [
        ("trending = 0", "trending", "not a positive integer"),
        ("trending = -3", "trending", "not a positive integer"),
        ('trending = "5"', "trending", "got a string"),
        ("trending = true", "trending", "got a boolean"),
        ('frequency = "wekly"', "frequency", "did you mean 'weekly'"),
        ('frequency = "monthly"', "frequency", "one of daily, weekly, off"),
        ("frequency = 7", "frequency", "got an integer"),
        ('weekday = "Mondy"', "weekday", "did you mean 'monday'"),
        ('weekday = "someday"', "weekday", "not a weekday"),
        ("weekday = 1", "weekday", "got an integer"),
    ],
)
def test_bad_trending_frequency_weekday_name_line_subscriber_and_field(
    line: str, field: str, fragment: str
) -> None:
    """An unknown frequency or weekday, or a trending that is not a positive integer, names file, line, subscriber and field."""
    err = fails(two(line))
    assert where(err) == (11, "grace@example.org", field)
    assert fragment in err.message


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ("trending = 0", "trending"),
        ('frequency = "often"', "frequency"),
        ("exclude = [3]", "exclude"),
    ],
)
def test_bad_new_keys_in_defaults_name_the_line_and_field(line: str, field: str) -> None:
    """A bad trending, frequency or exclude in [defaults] names its line and field."""
    err = fails(two("").replace('timezone = "Europe/Paris"', line))
    assert where(err) == (2, None, field)
    assert "[defaults]" in err.message


@given(value=st.integers(max_value=0) | st.integers(min_value=501))
def test_any_trending_outside_one_to_the_limit_is_refused(value: int) -> None:
    """Any integer trending below 1 or above the limit is refused, naming the field."""
    err = fails(two(f"trending = {value}"))
    assert where(err) == (11, "grace@example.org", "trending")


def toml_str(text: str) -> str:
    """`text` as a TOML basic string, every character escaped as \\UXXXXXXXX."""
    return '"' + "".join(f"\\U{ord(ch):08X}" for ch in text) + '"'


@given(text=st.text(max_size=20))
def test_any_frequency_text_is_accepted_only_when_it_names_one(text: str) -> None:
    """A frequency string is accepted exactly when, trimmed and lower-cased, it is daily, weekly or off."""
    doc = two(f"frequency = {toml_str(text)}")
    if text.strip().lower() in ("daily", "weekly", "off"):
        assert parse(doc)[1].frequency == text.strip().lower()
    else:
        assert where(fails(doc))[2] == "frequency"


@given(text=st.text(max_size=20))
def test_any_weekday_text_is_accepted_only_when_it_names_a_day(text: str) -> None:
    """A weekday string is accepted exactly when it is a day's English name or its first three letters, any case."""
    doc = two(f"weekday = {toml_str(text)}")
    days = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
    key = text.strip().lower()
    full = next((d for d in days if key in (d, d[:3])), None)
    if full is not None:
        assert parse(doc)[1].weekday == full
    else:
        assert where(fails(doc))[2] == "weekday"


def test_describe_says_what_each_subscriber_gets() -> None:
    """describe() names the frequency, send time, zone, number of queries and trending."""
    specs = parse(
        '[[subscribers]]\nemail = "a@example.org"\nkeywords = ["x", "y"]\nauthors = ["Z"]\n'
        'trending = 5\ntimezone = "Europe/Paris"\n'
        '[[subscribers]]\nemail = "b@example.org"\ntrending = 10\nfrequency = "weekly"\n'
        'weekday = "fri"\nsend_at = "17:00"\n'
        '[[subscribers]]\nemail = "c@example.org"\nkeywords = ["x"]\nfrequency = "off"\n'
    )
    assert [s.describe() for s in specs] == [
        "daily at 07:00 Europe/Paris; 3 queries; trending 5",
        "weekly on Friday at 17:00 UTC; trending 10",
        "off (nothing planned or sent); 1 query",
    ]


# --------------------------------------------------------------------------- [[sources]]

SOURCES = """\
[[sources]]
name = "hf"
kind = "hf"

[[sources]]
name = "arxiv-ml"
kind = "arxiv"
categories = ["cs.CL", "cs.LG"]
api_url = "http://127.0.0.1:9/api/query"

[[sources]]
name = "biorxiv-neuro"
kind = "feed"
url = "https://connect.biorxiv.org/biorxiv_xml/neuroscience"

[[subscribers]]
email = "ada@example.org"
keywords = ["diffusion"]
{extra}
"""


def config(text: str) -> Config:
    """Parse a whole configuration text under the source name SRC."""
    return parse_config(text, source=SRC)


def config_fails(text: str) -> ConfigError:
    """Parse a configuration that must be rejected and return the ConfigError."""
    with pytest.raises(ConfigError) as info:
        config(text)
    assert info.value.file == SRC
    return info.value


def test_without_sources_there_is_one_default_hf_source() -> None:
    """A file without [[sources]] reads one Hugging Face source named hf, as before sources existed."""
    got = config('[[subscribers]]\nemail = "a@example.org"\nkeywords = ["x"]\n')
    assert got.sources == (SourceSpec(name="hf", kind="hf", url=None),) == (DEFAULT_SOURCE,)
    assert [s.email for s in got.subscribers] == ["a@example.org"]
    assert got.subscribers[0].sources == ()


def test_sources_are_read_in_file_order_with_their_lines(tmp_path: Path) -> None:
    """[[sources]] entries come back in file order, with kind, url, categories and line; load_config,
    load_subscribers and parse_subscribers read the same file the same way."""
    text = SOURCES.format(extra="")
    got = config(text)
    assert got.sources == (
        SourceSpec(name="hf", kind="hf"),
        SourceSpec(
            name="arxiv-ml",
            kind="arxiv",
            categories=("cs.CL", "cs.LG"),
            api_url="http://127.0.0.1:9/api/query",
        ),
        SourceSpec(
            name="biorxiv-neuro",
            kind="feed",
            url="https://connect.biorxiv.org/biorxiv_xml/neuroscience",
        ),
    )
    assert [s.line for s in got.sources] == [1, 5, 11]
    path = tmp_path / "subscribers.toml"
    path.write_text(text, encoding="utf-8")
    assert load_config(path).sources == got.sources
    assert load_subscribers(path) == got.subscribers == parse(text)


def test_source_urls_may_be_saved_files_or_folders(tmp_path: Path) -> None:
    """A source url may be a path or a file:// URL, like DIGESTBOT_FEED_URL; an arxiv url is optional."""
    got = config(
        f'[[sources]]\nname = "a"\nkind = "arxiv"\ncategories = ["math.AP"]\nurl = "{tmp_path}"\n'
        '[[sources]]\nname = "f"\nkind = "feed"\nurl = "file:///srv/feeds/toc.xml"\n'
        '[[subscribers]]\nemail = "a@example.org"\nkeywords = ["x"]\n'
    )
    assert [s.url for s in got.sources] == [str(tmp_path), "file:///srv/feeds/toc.xml"]


BAD_SOURCES = [
    # (the [[sources]] entry after `[[sources]]` on line 1, error line, field, part of the message)
    ('kind = "hf"', 1, "sources[1].name", "missing 'name'"),
    ('name = "ArXiv"\nkind = "hf"', 2, "sources[1].name", "is not a source name"),
    ('name = "arxiv ml"\nkind = "hf"', 2, "sources[1].name", 'e.g. "arxiv-ml"'),
    ('name = "a--b"\nkind = "hf"', 2, "sources[1].name", "single hyphens"),
    ('name = "' + "a" * 41 + '"\nkind = "hf"', 2, "sources[1].name", "at most 40"),
    ("name = 7\nkind = 'hf'", 2, "sources[1].name", "got an integer (7)"),
    ('name = "hf"', 1, "sources[1].kind", "missing 'kind': one of hf, arxiv, feed"),
    ('name = "hf"\nkind = "arxv"', 3, "sources[1].kind", "did you mean 'arxiv'?"),
    (
        'name = "hf"\nkind = "hf"\ncategorie = ["cs.CL"]',
        4,
        "sources[1].categorie",
        "did you mean 'categories'?",
    ),
    ('name = "f"\nkind = "feed"', 1, "sources[1].url", "a feed source needs a url"),
    (
        'name = "f"\nkind = "feed"\nurl = "ftp://example.org/x"',
        4,
        "sources[1].url",
        "unsupported scheme 'ftp'",
    ),
    ('name = "f"\nkind = "feed"\nurl = "https://"', 4, "sources[1].url", "has no host name"),
    ('name = "f"\nkind = "feed"\nurl = "  "', 4, "sources[1].url", "is empty"),
    (
        'name = "f"\nkind = "feed"\nurl = "https://x.org/\\nBcc: y"',
        4,
        "sources[1].url",
        "control character",
    ),
    ('name = "f"\nkind = "feed"\nurl = ["https://x.org"]', 4, "sources[1].url", "got an array"),
    (
        'name = "f"\nkind = "feed"\nurl = "file://elsewhere/x.xml"',
        4,
        "sources[1].url",
        "names another host",
    ),
    (
        'name = "hf"\nkind = "hf"\ncategories = ["cs.CL"]',
        4,
        "sources[1].categories",
        'only for kind = "arxiv"',
    ),
    (
        'name = "f"\nkind = "feed"\nurl = "x.xml"\napi_url = "https://a.org"',
        5,
        "sources[1].api_url",
        'only for kind = "arxiv"',
    ),
    ('name = "a"\nkind = "arxiv"', 1, "sources[1].categories", "an arxiv source needs categories"),
    ('name = "a"\nkind = "arxiv"\ncategories = []', 4, "sources[1].categories", "is empty"),
    (
        'name = "a"\nkind = "arxiv"\ncategories = "cs.CL"',
        4,
        "sources[1].categories",
        "expected an array",
    ),
    (
        'name = "a"\nkind = "arxiv"\ncategories = [\n  "cs.CL",\n  "cs.cl",\n]',
        6,
        "sources[1].categories",
        "entry 2: 'cs.cl' is not an arXiv category such as cs.CL, math.AP, q-bio.NC, astro-ph or astro-ph.GA; did you mean 'cs.CL'?",
    ),
    (
        'name = "a"\nkind = "arxiv"\ncategories = ["cs.CL", "cs.CL"]',
        4,
        "sources[1].categories",
        "entry 2: 'cs.CL' is listed twice",
    ),
    (
        'name = "a"\nkind = "arxiv"\ncategories = ["cs CL"]',
        4,
        "sources[1].categories",
        "not an arXiv category",
    ),
    (
        'name = "a"\nkind = "arxiv"\ncategories = [1]',
        4,
        "sources[1].categories",
        "entry 1: expected an arXiv category as a string",
    ),
    (
        'name = "a"\nkind = "arxiv"\ncategories = ["cs.CL"]\napi_url = "gopher://x"',
        5,
        "sources[1].api_url",
        "unsupported scheme",
    ),
]


@pytest.mark.parametrize(("entry", "line", "field", "message"), BAD_SOURCES)
def test_bad_source_entries_name_the_line_and_field(
    entry: str, line: int, field: str, message: str
) -> None:
    """Each problem of a [[sources]] entry is an error naming the file, its line and field sources[N].key."""
    err = config_fails(
        f"[[sources]]\n{entry}\n\n[[subscribers]]\nemail = 'a@example.org'\nauthors = ['X']\n"
    )
    assert (err.line, err.subscriber, err.field) == (line, None, field)
    assert message in err.message
    assert str(err).startswith(f"{SRC}:{line}, field '{field}': ")


def test_a_bad_second_source_names_itself() -> None:
    """An error in the second of several sources counts it (sources[2]) and names it by its name."""
    err = config_fails(SOURCES.format(extra="").replace('"cs.LG"', '"cs.XYZ"'))
    assert (err.line, err.field) == (8, "sources[2].categories")
    assert err.message.startswith("source 'arxiv-ml': entry 2: 'cs.XYZ' is not an arXiv category")


def test_duplicate_source_names_are_refused() -> None:
    """Two sources with one name is an error at the second, naming the first's line."""
    err = config_fails(SOURCES.format(extra="").replace('"biorxiv-neuro"', '"hf"'))
    assert (err.line, err.field) == (12, "sources[3].name")
    assert "duplicate source name 'hf': source #1 (line 2) already uses it" in err.message


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (
            'sources = []\n[[subscribers]]\nemail = "a@example.org"\nkeywords = ["x"]\n',
            1,
            "no sources",
        ),
        (
            'sources = "hf"\n[[subscribers]]\nemail = "a@example.org"\nkeywords = ["x"]\n',
            1,
            "array of tables",
        ),
        (
            'sources = ["hf"]\n[[subscribers]]\nemail = "a@example.org"\nkeywords = ["x"]\n',
            1,
            "each source must be a table",
        ),
    ],
)
def test_top_level_sources_must_be_tables(text: str, line: int, message: str) -> None:
    """A top-level `sources` that is not a non-empty array of tables is refused, naming its line."""
    err = config_fails(text)
    assert err.line == line and err.field is not None and err.field.startswith("sources")
    assert message in err.message


def test_sources_in_an_inline_array_still_validate() -> None:
    """Sources written as an inline array of tables validate like [[sources]] blocks."""
    got = config(
        'sources = [{name = "hf", kind = "hf"}, {name = "x", kind = "arxiv", categories = ["q-bio.NC"]}]\n'
        '[[subscribers]]\nemail = "a@example.org"\nkeywords = ["x"]\n'
    )
    assert [s.name for s in got.sources] == ["hf", "x"]
    err = config_fails(
        'sources = [{name = "hf", kind = "nope"}]\n'
        '[[subscribers]]\nemail = "a@example.org"\nkeywords = ["x"]\n'
    )
    assert (err.line, err.field) == (1, "sources[1].kind")


_LOWER = st.text(alphabet="abcdqxyz", min_size=1, max_size=8)
_NAME = st.lists(st.text(alphabet="abxyz019", min_size=1, max_size=8), min_size=1, max_size=5).map(
    "-".join
)
_ARCHIVE = st.one_of(_LOWER, st.tuples(_LOWER, _LOWER).map("-".join))
_SUBJECT = st.one_of(
    st.text(alphabet="ABCLMX", min_size=2, max_size=2),
    st.text(alphabet="abcdqxyz", min_size=3, max_size=8),
    st.tuples(_LOWER, _LOWER).map("-".join),
)
_CATEGORY = st.one_of(_ARCHIVE, st.tuples(_ARCHIVE, _SUBJECT).map(".".join))


@given(name=_NAME, categories=st.lists(_CATEGORY, min_size=1, max_size=5, unique=True))
@hsettings(max_examples=80, deadline=None)
def test_any_valid_name_and_categories_are_accepted(name: str, categories: list[str]) -> None:
    """Any name of lower-case words joined by hyphens (up to 40) and any arXiv-shaped categories load."""
    text = (
        f'[[sources]]\nname = "{name}"\nkind = "arxiv"\ncategories = {json.dumps(categories)}\n'
        f'[[subscribers]]\nemail = "a@example.org"\nkeywords = ["x"]\nsources = ["{name.upper()}"]\n'
    )
    if len(name) > 40 or any(len(c) > 40 for c in categories):
        assert config_fails(text).field is not None
        return
    got = config(text)
    assert got.sources == (SourceSpec(name=name, kind="arxiv", categories=tuple(categories)),)
    assert got.subscribers[0].sources == (name,)


@given(name=st.text(max_size=45))
@hsettings(max_examples=200, deadline=None)
def test_any_name_text_is_accepted_only_when_it_is_a_source_name(name: str) -> None:
    """A source name is accepted exactly when, trimmed, it is lower-case words joined by single hyphens."""
    doc = f"[[sources]]\nname = {toml_str(name)}\nkind = 'hf'\n[[subscribers]]\nemail = 'a@example.org'\nkeywords = ['x']\n"
    key = name.strip()
    if re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", key, flags=re.ASCII) and len(key) <= 40:
        assert config(doc).sources[0].name == key
    else:
        err = config_fails(doc)
        assert (err.line, err.field) == (2, "sources[1].name")


@given(category=st.text(max_size=30))
@hsettings(max_examples=200, deadline=None)
def test_any_category_text_is_accepted_only_when_it_is_arxiv_shaped(category: str) -> None:
    """A category is accepted exactly when it has arXiv's shape (archive[.SUBJECT]); otherwise its line is named."""
    doc = (
        f"[[sources]]\nname = 'a'\nkind = 'arxiv'\ncategories = [\n  'cs.CL',\n  {toml_str(category)},\n]\n"
        "[[subscribers]]\nemail = 'a@example.org'\nkeywords = ['x']\n"
    )
    key = category.strip()
    shaped = re.fullmatch(
        r"[a-z]+(-[a-z]+)?(\.([A-Z]{2}|[a-z]{3,}|[a-z]+-[a-z]+))?", key, flags=re.ASCII
    )
    if shaped and len(key) <= 40 and key != "cs.CL":
        assert config(doc).sources[0].categories == ("cs.CL", key)
    else:
        err = config_fails(doc)
        assert (err.line, err.field) == (6, "sources[1].categories")


@st.composite
def _source_documents(draw: st.DrawFn) -> str:
    keys = st.sampled_from([*SOURCE_KEYS, "bogus", "categorie"])
    parts = []
    for _ in range(draw(st.integers(0, 3))):
        pairs = draw(st.lists(st.tuples(keys, _values), max_size=5, unique_by=lambda kv: kv[0]))
        if draw(st.booleans()):
            pairs = [(k, v) for k, v in pairs if k not in ("name", "kind")]
            pairs[:0] = [("name", _toml_string(draw(_NAME))), ("kind", '"hf"')]
        parts.append("[[sources]]\n" + _render_table(pairs))
    sub = [("email", '"a@example.org"'), ("keywords", '["x"]')]
    if draw(st.booleans()):
        sub.append(("sources", draw(_values)))
    parts.append("[[subscribers]]\n" + _render_table(sub))
    return "\n".join(parts)


@given(_source_documents())
@hsettings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_arbitrary_sources_raise_only_config_error_naming_their_line(text: str) -> None:
    """On documents with [[sources]]: a Config or a ConfigError whose line shows the field or its block."""
    try:
        got = config(text)
    except ConfigError as err:
        assert err.file == SRC and err.line is not None
        if not err.message.startswith("invalid TOML"):
            assert err.field is not None
            shown = text.split("\n")[err.line - 1]
            key = err.field.split(".")[-1]
            assert (
                key in shown or "[[sources]]" in shown or shown.lstrip().startswith(('"', "'"))
            ), (err, shown)
    else:
        assert got.sources and len({s.name for s in got.sources}) == len(got.sources)


# --------------------------------------------------------------------------- subscriber sources


def test_subscriber_sources_restrict_and_defaults_apply() -> None:
    """`sources` in [defaults] applies to everyone; a subscriber's own list wins; names ignore case."""
    text = SOURCES.format(extra='sources = ["ARXIV-ML", " hf "]') + (
        '\n[[subscribers]]\nemail = "bob@example.org"\nkeywords = ["x"]\n'
        '\n[defaults]\nsources = ["biorxiv-neuro"]\n'
    )
    ada, bob = config(text).subscribers
    assert ada.sources == ("arxiv-ml", "hf")
    assert bob.sources == ("biorxiv-neuro",)
    assert ada.describe() == "daily at 07:00 UTC; 1 query; sources arxiv-ml, hf"
    assert config(SOURCES.format(extra="")).subscribers[0].sources == ()


@pytest.mark.parametrize(
    ("extra", "line", "message"),
    [
        (
            'sources = ["arxiv"]',
            19,
            (
                "entry 1: no source is named 'arxiv'; did you mean 'arxiv-ml'? "
                "configured: hf, arxiv-ml, biorxiv-neuro"
            ),
        ),
        ('sources = [\n  "hf",\n  "nope",\n]', 21, "entry 2: no source is named 'nope'"),
        ('sources = ["hf", "HF"]', 19, "entry 2: 'hf' is listed twice"),
        ("sources = []", 19, "is empty"),
        ('sources = "hf"', 19, "expected an array of source names"),
        ("sources = [1]", 19, "entry 1: expected a source name as a string"),
    ],
)
def test_bad_subscriber_sources_name_the_line_and_the_configured_names(
    extra: str, line: int, message: str
) -> None:
    """A subscriber's `sources` must list configured names; errors name line, subscriber, field and the names."""
    err = config_fails(SOURCES.format(extra=extra))
    assert (err.line, err.subscriber, err.field) == (line, "ada@example.org", "sources")
    assert message in err.message


def test_bad_default_sources_name_defaults() -> None:
    """An unknown name in [defaults] sources is an error naming [defaults], its line and the field."""
    err = config_fails('[defaults]\nsources = ["arxiv"]\n' + SOURCES.format(extra=""))
    assert (err.line, err.subscriber, err.field) == (2, None, "sources")
    assert err.message.startswith("in [defaults]: entry 1: no source is named 'arxiv'")
    assert "configured: hf, arxiv-ml, biorxiv-neuro" in err.message


def test_without_sources_a_subscriber_may_name_the_default_hf() -> None:
    """With no [[sources]], `sources = ["hf"]` names the default source and anything else is refused."""
    ok = config('[[subscribers]]\nemail = "a@example.org"\nkeywords = ["x"]\nsources = ["hf"]\n')
    assert ok.subscribers[0].sources == ("hf",)
    err = config_fails(
        '[[subscribers]]\nemail = "a@example.org"\nkeywords = ["x"]\nsources = ["arxiv"]\n'
    )
    assert "configured: hf" in err.message


# --------------------------------------------------------------------------- check warnings


def warnings_for(text: str) -> list[str]:
    """The `check` warnings of a configuration text."""
    return unmatchable(config(text))


def test_trending_with_no_source_that_has_upvotes_warns() -> None:
    """`trending` for a subscriber limited to arXiv gets a warning (nothing there has upvotes);
    the same subscriber on the HF source gets none."""
    sources = (
        '[[sources]]\nname = "hf"\nkind = "hf"\n\n'
        '[[sources]]\nname = "arxiv"\nkind = "arxiv"\ncategories = ["cs.CL"]\n\n'
    )
    got = warnings_for(
        sources + '[[subscribers]]\nemail = "t@example.org"\ntrending = 5\nsources = ["arxiv"]\n'
    )
    assert got == [
        (
            "subscriber t@example.org: trending = 5 can never add a paper: only papers with "
            'upvotes trend, and none of their sources (arxiv) has upvotes; add a kind = "hf" source'
        )
    ]
    assert warnings_for(sources + '[[subscribers]]\nemail = "t@example.org"\ntrending = 5\n') == []


def test_category_queries_with_only_hf_warn() -> None:
    """A category: query with only the Hugging Face source gets a warning saying to add an arxiv source."""
    got = warnings_for(
        '[[subscribers]]\nemail = "ada@example.org"\nkeywords = ["category:cs.CL", "diffusion"]\n'
    )
    assert got == [
        (
            "subscriber ada@example.org: query 'category:cs.CL' can never match: no configured source "
            "(hf) has categories; add a source of kind arxiv or feed"
        )
    ]


def test_warnings_follow_what_the_query_requires() -> None:
    """Only a required (ANDed, positive) unfilled field warns: NOT, or an OR with a fillable side, does not."""
    quiet = [
        "category:cs.CL OR diffusion",
        "diffusion -category:cs.CV",
        "diffusion NOT (category:cs.CV source:nowhere)",
        "keyword:diffusion",
        "author:Sabharwal",
        "source:hf",
        "source:h*",
    ]
    loud = [
        "diffusion category:cs.CL",
        "(category:cs.CL OR category:cs.LG) diffusion",
        "source:arxiv*",
    ]
    keywords = json.dumps(quiet + loud)
    got = warnings_for(f'[[subscribers]]\nemail = "ada@example.org"\nkeywords = {keywords}\n')
    assert [w.split("query ", 1)[1].split(" can never", 1)[0] for w in got] == [
        repr(q) for q in loud
    ]
    assert got[-1].endswith("no configured source is named 'arxiv*' (configured: hf)")


def test_warnings_follow_the_subscriber_sources() -> None:
    """A subscriber limited to sources without a field is told which configured source to add."""
    got = warnings_for(
        SOURCES.format(extra='sources = ["hf"]\nauthors = ["Ada"]').replace(
            '"diffusion"', '"category:cs.CL", "source:arxiv-ml", "keyword:x"'
        )
        + '\n[[subscribers]]\nemail = "bob@example.org"\nkeywords = ["keyword:x", "category:cs.CL"]\nsources = ["arxiv-ml"]\n'
    )
    assert got == [
        (
            "subscriber ada@example.org: query 'category:cs.CL' can never match: none of the "
            "subscriber's sources (hf) has categories; add arxiv-ml or biorxiv-neuro to the "
            "subscriber's sources"
        ),
        (
            "subscriber ada@example.org: query 'source:arxiv-ml' can never match: source:arxiv-ml is "
            "not among the subscriber's sources (hf); add it there"
        ),
        (
            "subscriber bob@example.org: query 'keyword:x' can never match: none of the subscriber's "
            "sources (arxiv-ml) has feed keywords; add hf to the subscriber's sources"
        ),
    ]


def test_check_prints_warnings_and_still_passes(workdir: Path) -> None:
    """`digestbot check` prints a warning for `category:cs.CL` with only the HF source and exits 0."""
    from typer.testing import CliRunner

    from digestbot.cli import cli

    (workdir / "subscribers.toml").write_text(
        '[[subscribers]]\nemail = "ada@example.org"\nkeywords = ["category:cs.CL", "diffusion"]\n'
    )
    result = CliRunner().invoke(cli, ["check"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert (
        "warning: subscriber ada@example.org: query 'category:cs.CL' can never match: "
        "no configured source (hf) has categories; add a source of kind arxiv or feed"
    ) in result.output
    (workdir / "subscribers.toml").write_text(
        '[[sources]]\nname = "arxiv-cl"\nkind = "arxiv"\ncategories = ["cs.CL"]\n'
        '[[subscribers]]\nemail = "ada@example.org"\nkeywords = ["category:cs.CL"]\n'
    )
    quiet = CliRunner().invoke(cli, ["check"], catch_exceptions=False)
    assert quiet.exit_code == 0, quiet.output
    assert "warning" not in quiet.output


def test_the_readme_and_example_configurations_load_without_warnings() -> None:
    """The README's subscribers-file example and subscribers.example.toml load, and `check` warns about neither."""
    section = (
        (REPO / "README.md").read_text(encoding="utf-8").split("## Subscribers file reference")[1]
    )
    readme = re.search(r"```toml\n(.*?)```", section, flags=re.DOTALL)
    assert readme is not None
    for got in (config(readme.group(1)), load_config(EXAMPLE)):
        assert got.subscribers and unmatchable(got) == []
    assert [s.name for s in config(readme.group(1)).sources] == ["hf", "arxiv-ml"]


# -- large files: lines found lazily, addresses checked per domain (issue 12) -------------------

_QUERY_FORMS = st.sampled_from(
    [
        ('keywords = ["diffusion", "{bad}"]', 0),  # one-line array: the fast path
        ('keywords = [\n  "diffusion",\n  "{bad}",\n]', 2),  # multi-line array: the lexer
        ('keywords = ["\\"flow matching\\"", "{bad}"]  # a comment', 0),  # escapes and a comment
        ("keywords = ['diffusion', '{bad}']", 0),  # literal strings: the lexer
    ]
)


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    before=st.integers(min_value=0, max_value=30),
    form=_QUERY_FORMS,
    commented=st.booleans(),
)
def test_bad_query_deep_in_a_file_names_its_line(
    before: int, form: tuple[str, int], commented: bool
) -> None:
    """A bad query in any subscriber of a long file, however its keywords are written, is reported at its own line."""
    name = 'name = "Ada"  # [[subscribers]]\n# [[subscribers]]' if commented else 'name = "Ada"'
    blocks = [
        f'[[subscribers]]\nemail = "u{i}@example.org"\n{name}\nkeywords = ["x{i}"]\n'
        for i in range(before)
    ]
    keywords, offset = form
    bad = f'[[subscribers]]\nemail = "bad@example.org"\n{keywords.format(bad="(unclosed")}\n'
    text = "\n".join([*blocks, bad])
    bad_start = text.count("\n", 0, text.index('email = "bad@example.org"')) + 1
    err = fails(text)
    assert where(err) == (bad_start + 1 + offset, "bad@example.org", "keywords")


def test_duplicate_far_down_names_the_first_line() -> None:
    """A duplicate address in subscriber #2000 names the line of the first subscriber that used it."""
    blocks = [
        f'[[subscribers]]\nemail = "u{i}@example.org"\nkeywords = ["x"]\n' for i in range(2000)
    ]
    blocks.append('[[subscribers]]\nemail = "U7@Example.org"\nkeywords = ["x"]\n')
    err = fails("\n".join(blocks))
    assert "subscriber #8 (line 30) already uses it" in err.message
    assert err.line == 2000 * 4 + 2


def test_addresses_sharing_a_domain_keep_their_own_verdict() -> None:
    """Many addresses on one domain are each checked: a bad local part is refused, the domain is kept in lower case."""
    blocks = [f'[[subscribers]]\nemail = "u{i}@Example.ORG"\nkeywords = ["x"]\n' for i in range(50)]
    assert {sp.email for sp in parse("\n".join(blocks))} == {f"u{i}@example.org" for i in range(50)}
    err = fails(
        "\n".join([*blocks, '[[subscribers]]\nemail = "a..b@Example.ORG"\nkeywords = ["x"]\n'])
    )
    assert where(err) == (50 * 4 + 2, "#51", "email")
    assert "is not valid" in err.message
