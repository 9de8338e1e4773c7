"""Settings from the process environment and `.env`, validated into one frozen value.

Nothing is read at import time: the front door calls `load_settings()` once and passes the
result down. The process environment wins over `.env`; a variable set to an empty string counts
as unset (its default applies). Every bad value raises ConfigError naming the variable, where it
came from (`.env` and its line, or the environment), what is wrong and what is allowed.

Each setting is declared once, as a field of `Settings` made by `setting()`: its variable, its
default, one line of help and its parser. `SETTINGS_REFERENCE`, .env.example
(`render_env_example`) and the README table (`render_settings_table`) are generated from there.
"""

from __future__ import annotations

import dataclasses
import difflib
import io
import math
import os
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from dotenv import dotenv_values

from digestbot.addresses import (
    AddressError,
    check_address,
    check_dns_name,
    parse_addr_spec,
    parse_list_id,
)
from digestbot.addresses import parse_mailbox as _parse_mailbox
from digestbot.errors import ConfigError
from digestbot.sources.base import locate_feed
from digestbot.text import has_unsafe, header_uri_problem
from digestbot.tokens import is_endpoint_url, is_public_url_scheme_ok

__all__ = [
    "PLACEHOLDER_FROM",
    "SETTINGS_REFERENCE",
    "SettingDoc",
    "Settings",
    "load_settings",
    "render_env_example",
    "render_settings_table",
]

MAIL_BACKENDS = ("smtp", "file", "console")
SMTP_SECURITY = ("starttls", "ssl", "none")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")
PLACEHOLDER_FROM = "Paper Digest <digest@example.org>"
"""The default From address: fine for the file and console backends, refused with SMTP."""

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Raw:
    value: str
    file: str
    line: int | None


class _Reader:
    """Turns raw strings into typed values, raising ConfigError that names variable and source."""

    def __init__(self, raw: Mapping[str, _Raw]) -> None:
        self.raw = raw

    def error(self, name: str, message: str, *, at: str | None = None) -> ConfigError:
        """A ConfigError for variable `name`, located where `at` (default `name`) was set."""
        src = self.raw.get(at or name)
        if src is None:
            return ConfigError(message, field=name)
        return ConfigError(message, file=src.file, line=src.line, field=name)

    def get(self, name: str) -> str | None:
        """The stripped value, or None when unset or empty."""
        src = self.raw.get(name)
        if src is None:
            return None
        value = src.value.strip()
        return value or None

    def text(self, name: str, *, secret: bool = False, allow_space: bool = True) -> str | None:
        value = self.get(name)
        if value is None:
            return None
        if has_unsafe(value):
            raise self.error(name, "contains a control character (CR, LF, tab...); use one line")
        if not allow_space and " " in value:
            shown = "the value" if secret else _show(value)
            raise self.error(name, f"{shown} must not contain spaces")
        return value

    def integer(self, name: str, *, minimum: int, maximum: int) -> int | None:
        value = self.get(name)
        if value is None:
            return None
        allowed = f"a whole number from {minimum} to {maximum}"
        if not re.fullmatch(r"[+-]?[0-9]{1,18}", value):
            raise self.error(name, f"{_show(value)} is not a whole number; expected {allowed}")
        number = int(value)
        if not minimum <= number <= maximum:
            raise self.error(name, f"{number} is out of range; expected {allowed}")
        return number

    def number(
        self, name: str, *, minimum: float, maximum: float, unit: str = "seconds"
    ) -> float | None:
        value = self.get(name)
        if value is None:
            return None
        allowed = f"a number of {unit} greater than {minimum:g} and at most {maximum:g}"
        if not re.fullmatch(r"[+-]?(?:[0-9]{1,15}(?:\.[0-9]{0,9})?|\.[0-9]{1,9})", value):
            raise self.error(name, f"{_show(value)} is not a number; expected {allowed}")
        number = float(value)
        if not (math.isfinite(number) and minimum < number <= maximum):
            raise self.error(name, f"{value} is out of range; expected {allowed}")
        return number

    def choice(self, name: str, choices: tuple[str, ...], *, upper: bool = False) -> str | None:
        value = self.get(name)
        if value is None:
            return None
        key = value.upper() if upper else value.lower()
        if key not in choices:
            raise self.error(name, f"{_show(value)} is not one of: {', '.join(choices)}")
        return key

    def path(self, name: str) -> Path | None:
        value = self.text(name)
        return _expand(self, name, value) if value is not None else None


def _expand(r: _Reader, name: str, value: str) -> Path:
    """`value` as a path, with a leading ~ or ~user expanded."""
    try:
        return Path(value).expanduser()
    except RuntimeError:  # ~user of a user that does not exist
        raise r.error(name, f"{_show(value)}: cannot expand the ~ (no such user)") from None


def _show(value: str, limit: int = 60) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")


# --------------------------------------------------------------------------- parsers
# Each takes the reader and the variable name and returns the typed value, or None when unset.

Parser = Callable[[_Reader, str], Any]


def _text(*, secret: bool = False, allow_space: bool = True) -> Parser:
    return lambda r, name: r.text(name, secret=secret, allow_space=allow_space)


def _integer(minimum: int, maximum: int) -> Parser:
    return lambda r, name: r.integer(name, minimum=minimum, maximum=maximum)


def _number(minimum: float, maximum: float, unit: str = "seconds") -> Parser:
    return lambda r, name: r.number(name, minimum=minimum, maximum=maximum, unit=unit)


def _choice(choices: tuple[str, ...], *, upper: bool = False) -> Parser:
    return lambda r, name: r.choice(name, choices, upper=upper)


def _path(r: _Reader, name: str) -> Path | None:
    return r.path(name)


def _existing(check: Callable[[Path], bool], kind: str) -> Parser:
    def parse(r: _Reader, name: str) -> Path | None:
        path = r.path(name)
        if path is not None and not check(path):
            raise r.error(name, f"{str(path)!r} is not an existing {kind}")
        return path

    return parse


def _database_url(r: _Reader, name: str) -> str | None:
    value = r.text(name, allow_space=False)
    if value is not None and not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*://.*", value):
        raise r.error(
            name,
            f"{_show(value)} is not a database URL; expected e.g. sqlite:///digestbot.db "
            "or postgresql+psycopg://user@host/db",
        )
    return value


def _feed_url(r: _Reader, name: str) -> str | None:
    """An http(s) URL with a host, or a file path / file:// URL of a file or folder that exists
    (the decision is sources.base.locate_feed's)."""
    value = r.text(name)
    if value is None:
        return None
    where = locate_feed(value)
    if where.kind == "bad":
        raise r.error(name, f"{_show(value)} {where.reason}")
    if where.kind == "path":
        path = Path(where.value)
        if not (path.is_file() or path.is_dir()):
            raise r.error(
                name,
                f"{str(path)!r} is not an existing file or folder; give a saved response "
                "(a file, or a folder of YYYY-MM-DD.json) or an http(s) URL",
            )
    return value


def _mail_from(r: _Reader, name: str) -> str | None:
    value = r.text(name)
    if value is None:
        return None
    try:
        _parse_mailbox(value)
    except AddressError as exc:
        raise r.error(
            name, f"{_show(value)} {exc}; expected e.g. 'Paper Digest <digest@example.org>'"
        ) from None
    return value


def _unsubscribe_email(r: _Reader, name: str) -> str | None:
    value = r.text(name)
    if value is None:
        return None
    if value.lower().startswith("mailto:"):
        value = value[len("mailto:") :]
    try:
        return check_address(value)
    except AddressError as exc:
        raise r.error(
            name, f"{_show(value)} {exc}; expected a bare address like unsubscribe@example.org"
        ) from None


def _unsubscribe_url(r: _Reader, name: str) -> str | None:
    value = r.text(name, allow_space=False)
    if value is None:
        return None
    example = "expected e.g. https://example.org/unsubscribe?token={token}"
    try:
        placeholders = {
            fname for _, fname, _, _ in string.Formatter().parse(value) if fname is not None
        }
    except ValueError as exc:
        raise r.error(name, f"unbalanced braces ({exc}); {example}") from None
    unknown = placeholders - {"token", "email"}
    if unknown:
        raise r.error(
            name,
            f"unknown placeholder(s) {', '.join(sorted('{' + p + '}' for p in unknown))}; "
            "only {token} and {email} are allowed",
        )
    if "token" not in placeholders:
        raise r.error(name, f"must contain the {{token}} placeholder; {example}")
    _check_header_uri(r, name, value, example)
    try:
        scheme_ok = is_public_url_scheme_ok(value)
    except ValueError as exc:
        raise r.error(name, f"{_show(value)} is not a URL ({exc}); {example}") from None
    if not scheme_ok:
        raise r.error(
            name,
            f"{_show(value)} is not an https URL (plain http only for a loopback host); {example}",
        )
    if not is_endpoint_url(value):
        raise r.error(
            name,
            f"{_show(value)} does not point at the endpoint of `digestbot serve`: the path must "
            "end in /unsubscribe (a prefix before it is fine) and {token} must be the whole "
            f"value of a single `token` query parameter; {example}",
        )
    return value


def _check_header_uri(r: _Reader, name: str, value: str, example: str) -> None:
    """The List-Unsubscribe URI rule (text.header_uri_problem) on the URL as a message carries
    it: the placeholders are filled in by replacement (MailContext.unsubscribe_for), so any other
    brace, "{{" included, stays in the URI and is refused here."""
    problem = header_uri_problem(value.replace("{token}", "").replace("{email}", ""))
    if problem:
        raise r.error(name, f"{_show(value)} {problem}; {example}")


def _old_secrets(r: _Reader, name: str) -> tuple[str, ...] | None:
    """Comma-separated former unsubscribe secrets, each of 16+ characters (spaces around commas
    are dropped)."""
    value = r.text(name, secret=True)
    if value is None:
        return None
    secrets = tuple(part for part in (p.strip() for p in value.split(",")) if part)
    if any(len(part) < 16 for part in secrets):
        raise r.error(name, "each old secret must have at least 16 characters")
    return secrets or None


def _list_id(r: _Reader, name: str) -> str | None:
    value = r.text(name)
    if value is None:
        return None
    try:
        parse_list_id(value)
    except AddressError:
        raise r.error(
            name,
            f"{_show(value)} is not a List-Id; expected 'Name <label.example.org>' "
            "or label.example.org (RFC 2919)",
        ) from None
    return value


def _dns_name(r: _Reader, name: str) -> str | None:
    value = r.text(name, allow_space=False)
    if value is None:
        return None
    try:
        return check_dns_name(value)
    except AddressError as exc:
        raise r.error(name, f"{_show(value)} {exc}") from None


# --------------------------------------------------------------------------- the declarations


@dataclass(frozen=True, slots=True)
class SettingDoc:
    """One setting: its variable, its default as written in .env, one line of help, its parser."""

    name: str
    default: str  # "" means unset
    description: str
    group: str
    field: str = ""  # the Settings attribute
    parse: Parser | None = dataclasses.field(default=None, repr=False, compare=False)


def _default_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def setting(
    name: str,
    default: T,
    description: str,
    *,
    group: str,
    parse: Parser,
    secret: bool = False,
) -> T:
    """Declare one setting as a Settings field: variable `name`, its default, help and parser."""
    doc = SettingDoc(
        name=name,
        default=_default_text(default),
        description=description,
        group=group,
        parse=parse,
    )
    return field(default=default, repr=not secret, metadata={"setting": doc})


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything digestbot reads from its environment; the defaults need no mail server."""

    # Storage
    database_url: str = setting(
        "DIGESTBOT_DATABASE_URL",
        "sqlite:///digestbot.db",
        "SQLAlchemy database URL (sqlite:///FILE or postgresql+psycopg://USER@HOST/DB).",
        group="Storage",
        parse=_database_url,
    )
    subscribers_path: Path = setting(  # noqa: RUF009 - setting() declares a field
        "DIGESTBOT_SUBSCRIBERS",
        Path("subscribers.toml"),
        "Path of the subscribers file (`digestbot init` writes an example).",
        group="Storage",
        parse=_path,
    )
    # Feed
    feed_url: str = setting(
        "DIGESTBOT_FEED_URL",
        "https://huggingface.co/api/daily_papers",
        "Feed to fetch: an http(s) URL, or the path / file:// URL of a saved response "
        "(a file, or a folder of YYYY-MM-DD.json) that exists.",
        group="Feed",
        parse=_feed_url,
    )
    fetch_retries: int = setting(
        "DIGESTBOT_FETCH_RETRIES",
        3,
        "Retries per feed request on connection errors, 429 and 5xx (0-100).",
        group="Feed",
        parse=_integer(0, 100),
    )
    fetch_timeout: float = setting(
        "DIGESTBOT_FETCH_TIMEOUT",
        30.0,
        "Timeout of each feed request, in seconds.",
        group="Feed",
        parse=_number(0, 3600),
    )
    lookback_days: int = setting(
        "DIGESTBOT_LOOKBACK_DAYS",
        2,
        "Days before today (UTC) fetched and considered for a new subscriber's first digest (0-365).",
        group="Feed",
        parse=_integer(0, 365),
    )
    fetch_interval_minutes: int = setting(
        "DIGESTBOT_FETCH_INTERVAL",
        60,
        "Minutes between feed fetches in the daemon (`digestbot run`).",
        group="Feed",
        parse=_integer(1, 7 * 24 * 60),
    )
    hf_token: str | None = setting(
        "HF_TOKEN",
        None,
        "Optional Hugging Face token, sent as a bearer token to the feed.",
        group="Feed",
        parse=_text(secret=True, allow_space=False),
        secret=True,
    )
    # Mail
    mail_from: str = setting(
        "DIGESTBOT_MAIL_FROM",
        PLACEHOLDER_FROM,
        "From address of every digest, with an optional display name; "
        "the placeholder is refused with smtp.",
        group="Mail",
        parse=_mail_from,
    )
    mail_backend: str = setting(
        "DIGESTBOT_MAIL_BACKEND",
        "file",
        "How digests leave: smtp, file (one .eml per digest in DIGESTBOT_MAIL_DIR) or console.",
        group="Mail",
        parse=_choice(MAIL_BACKENDS),
    )
    mail_dir: Path = setting(  # noqa: RUF009 - setting() declares a field
        "DIGESTBOT_MAIL_DIR",
        Path("outbox"),
        "Folder of the file backend.",
        group="Mail",
        parse=_path,
    )
    templates_dir: Path | None = setting(  # noqa: RUF009 - setting() declares a field
        "DIGESTBOT_TEMPLATES_DIR",
        None,
        "Optional folder whose templates override the built-in ones (same file names).",
        group="Mail",
        parse=_existing(Path.is_dir, "folder"),
    )
    # SMTP
    smtp_host: str = setting(
        "DIGESTBOT_SMTP_HOST",
        "localhost",
        "SMTP server host name.",
        group="SMTP",
        parse=_text(allow_space=False),
    )
    smtp_port: int = setting(
        "DIGESTBOT_SMTP_PORT",
        587,
        "SMTP server port (465 is usual with ssl).",
        group="SMTP",
        parse=_integer(1, 65535),
    )
    smtp_username: str | None = setting(
        "DIGESTBOT_SMTP_USERNAME",
        None,
        "SMTP login; no login when unset.",
        group="SMTP",
        parse=_text(),
    )
    smtp_password: str | None = setting(
        "DIGESTBOT_SMTP_PASSWORD",
        None,
        "SMTP password.",
        group="SMTP",
        parse=_text(secret=True),
        secret=True,
    )
    smtp_security: str = setting(
        "DIGESTBOT_SMTP_SECURITY",
        "starttls",
        "Transport security: starttls, ssl (implicit TLS) or none; certificates are verified.",
        group="SMTP",
        parse=_choice(SMTP_SECURITY),
    )
    smtp_timeout: float = setting(
        "DIGESTBOT_SMTP_TIMEOUT",
        30.0,
        "SMTP network timeout, in seconds.",
        group="SMTP",
        parse=_number(0, 3600),
    )
    smtp_rate: float | None = setting(
        "DIGESTBOT_SMTP_RATE",
        None,
        "Maximum messages per second sent over SMTP by one digestbot process, all its workers "
        "together (e.g. 0.5); unlimited when unset.",
        group="SMTP",
        parse=_number(0, 10000, unit="messages per second"),
    )
    # Delivery
    retry_initial: float = setting(
        "DIGESTBOT_RETRY_INITIAL",
        60.0,
        "Seconds before the first retry of a temporarily failed digest; doubles on each attempt.",
        group="Delivery",
        parse=_number(0, 7 * 86400),
    )
    retry_max: float = setting(
        "DIGESTBOT_RETRY_MAX",
        3600.0,
        "Longest wait between two retries, in seconds.",
        group="Delivery",
        parse=_number(0, 7 * 86400),
    )
    retry_give_up: float = setting(
        "DIGESTBOT_RETRY_GIVE_UP",
        86400.0,
        "Seconds after the first attempt when a digest still deferred is marked failed.",
        group="Delivery",
        parse=_number(0, 30 * 86400),
    )
    workers: int = setting(
        "DIGESTBOT_WORKERS",
        0,
        "Worker processes delivering digests, each with its own SMTP connection (0: one per "
        "CPU core); small runs use fewer; `send --workers N` overrides it.",
        group="Delivery",
        parse=_integer(0, 1024),
    )
    # Headers
    unsubscribe_email: str | None = setting(
        "DIGESTBOT_UNSUBSCRIBE_EMAIL",
        None,
        "mailto: address of List-Unsubscribe; default: the From address.",
        group="Headers",
        parse=_unsubscribe_email,
    )
    unsubscribe_url: str | None = setting(
        "DIGESTBOT_UNSUBSCRIBE_URL",
        None,
        "Public URL of `digestbot serve`'s unsubscribe page: a path ending in /unsubscribe "
        "(any prefix before it) with the query `token={token}`, e.g. "
        "https://example.org/unsubscribe?token={token}; https, plain http only for a loopback host.",
        group="Headers",
        parse=_unsubscribe_url,
    )
    unsubscribe_secret: str | None = setting(
        "DIGESTBOT_UNSUBSCRIBE_SECRET",
        None,
        "Secret key (16+ characters) signing unsubscribe tokens; "
        "required with DIGESTBOT_UNSUBSCRIBE_URL.",
        group="Headers",
        parse=_text(secret=True),
        secret=True,
    )
    unsubscribe_old_secrets: tuple[str, ...] | None = setting(
        "DIGESTBOT_UNSUBSCRIBE_OLD_SECRETS",
        None,
        "Former unsubscribe secrets, comma-separated: their tokens are still accepted by "
        "`digestbot serve`, never issued.",
        group="Headers",
        parse=_old_secrets,
        secret=True,
    )
    list_id: str | None = setting(
        "DIGESTBOT_LIST_ID",
        None,
        "List-Id header, e.g. 'Paper Digest <digest.example.org>'; default: <digest.FROM-DOMAIN>.",
        group="Headers",
        parse=_list_id,
    )
    dkim_key_file: Path | None = setting(  # noqa: RUF009 - setting() declares a field
        "DIGESTBOT_DKIM_KEY_FILE",
        None,
        "PEM RSA private key for DKIM signing, checked by signing a probe at start; "
        "set together with DIGESTBOT_DKIM_SELECTOR.",
        group="Headers",
        parse=_existing(Path.is_file, "file"),
    )
    dkim_selector: str | None = setting(
        "DIGESTBOT_DKIM_SELECTOR",
        None,
        "DKIM selector (the s= tag; DNS name SELECTOR._domainkey.DOMAIN: letters, digits, '-', dots).",
        group="Headers",
        parse=_dns_name,
    )
    dkim_domain: str | None = setting(
        "DIGESTBOT_DKIM_DOMAIN",
        None,
        "DKIM signing domain (the d= tag); default: the From address's domain.",
        group="Headers",
        parse=_dns_name,
    )
    # Logging
    log_level: str = setting(
        "DIGESTBOT_LOG_LEVEL",
        "INFO",
        "Log level: DEBUG, INFO, WARNING, ERROR or CRITICAL.",
        group="Logging",
        parse=_choice(LOG_LEVELS, upper=True),
    )
    log_format: str = setting(
        "DIGESTBOT_LOG_FORMAT",
        "text",
        "Log lines on stderr: text, or json (one object a line: timestamp, level, logger, event "
        "and fields).",
        group="Logging",
        parse=_choice(LOG_FORMATS),
    )

    @property
    def mail_from_address(self) -> str:
        """The bare addr-spec of the From address (`digest@example.org`), for the SMTP envelope:
        the domain in ASCII (IDNA), as SMTP without SMTPUTF8 needs it."""
        return _parse_mailbox(self.mail_from).ascii_addr_spec

    @property
    def from_domain(self) -> str:
        """The domain of the From address, lower-cased."""
        return _parse_mailbox(self.mail_from).domain

    @property
    def effective_unsubscribe_email(self) -> str:
        """The `mailto:` target of List-Unsubscribe: DIGESTBOT_UNSUBSCRIBE_EMAIL, else the From
        address; the domain in ASCII (IDNA), as headers need it."""
        if self.unsubscribe_email:
            return parse_addr_spec(self.unsubscribe_email).ascii_addr_spec
        return _parse_mailbox(self.mail_from).ascii_addr_spec

    @property
    def effective_list_id(self) -> str:
        """The List-Id header value: DIGESTBOT_LIST_ID as given, else `<digest.FROMDOMAIN>` with
        the From domain in ASCII (IDNA)."""
        if self.list_id:
            return self.list_id if ">" in self.list_id else f"<{self.list_id}>"
        return f"<digest.{_parse_mailbox(self.mail_from).ascii_domain}>"

    @property
    def list_name(self) -> str:
        """The list's name shown in digests and on the unsubscribe pages: the From display name."""
        return _parse_mailbox(self.mail_from).display_name or "Paper Digest"

    @property
    def unsubscribe_secrets(self) -> tuple[str, ...]:
        """Secrets whose unsubscribe tokens are accepted: the current one first, then the old ones."""
        current = (self.unsubscribe_secret,) if self.unsubscribe_secret else ()
        return current + (self.unsubscribe_old_secrets or ())

    @property
    def effective_dkim_domain(self) -> str | None:
        """The DKIM signing domain (d=): DIGESTBOT_DKIM_DOMAIN, else the From domain; None without DKIM."""
        if self.dkim_key_file is None:
            return None
        return self.dkim_domain or _parse_mailbox(self.mail_from).ascii_domain


SETTINGS_REFERENCE: tuple[SettingDoc, ...] = tuple(
    dataclasses.replace(f.metadata["setting"], field=f.name) for f in dataclasses.fields(Settings)
)
"""Every setting, in declaration order: the source of .env.example and the README table."""


def render_env_example() -> str:
    """The text of .env.example: every setting commented out with its default and a comment."""
    out = [
        "# digestbot settings. Copy to .env and uncomment what you change;",
        "# variables set in the process environment win over this file.",
        "# An empty value means unset: the default applies.",
    ]
    group = None
    for doc in SETTINGS_REFERENCE:
        if doc.group != group:
            group = doc.group
            out += ["", f"## {group}"]
        out.append(f"# {doc.description}")
        out.append(f"# {doc.name}={_dotenv_quote(doc.default)}")
    return "\n".join(out) + "\n"


def render_settings_table() -> str:
    """The README's configuration table (Markdown), one row per setting."""
    out = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for doc in SETTINGS_REFERENCE:
        default = f"`{doc.default}`" if doc.default else "(unset)"
        description = doc.description.replace("|", "\\|")
        out.append(f"| `{doc.name}` | {default} | {description} |")
    return "\n".join(out) + "\n"


def _dotenv_quote(value: str) -> str:
    return f'"{value}"' if any(c in value for c in " <>#'\"") else value


# --------------------------------------------------------------------------- loading


def load_settings(
    environ: Mapping[str, str] | None = None,
    *,
    env_file: Path | None = Path(".env"),
) -> Settings:
    """Read and validate settings from `environ` (default os.environ) over `env_file` (default .env).

    A missing env file is fine; `env_file=None` skips it. os.environ is never modified. A line
    of the env file that is not `NAME=VALUE` (or a comment) is an error naming the line.
    """
    if environ is None:
        environ = os.environ
    raw: dict[str, _Raw] = {}
    if env_file is not None and env_file.is_file():
        raw.update(_read_env_file(env_file))
    for doc in SETTINGS_REFERENCE:
        if doc.name in environ:
            raw[doc.name] = _Raw(environ[doc.name], "environment", None)
    return _build(raw)


def _read_env_file(path: Path) -> dict[str, _Raw]:
    file_label = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the settings file: {exc}", file=file_label) from exc
    lines = _dotenv_lines(text, file_label)  # first: python-dotenv would warn, echoing the line
    values = dotenv_values(stream=io.StringIO(text))
    known = {doc.name for doc in SETTINGS_REFERENCE}
    raw: dict[str, _Raw] = {}
    for name, value in values.items():
        ours = name.startswith("DIGESTBOT_") and not name.startswith("DIGESTBOT_TEST_")
        if name not in known and ours:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ConfigError(
                f"unknown setting; {hint}see .env.example for the list",
                file=file_label,
                line=lines.get(name),
                field=name,
            )
        if value is None and (ours or name in known):
            raise ConfigError(
                f"{name} has no '='; write {name}=VALUE (or {name}= for the default)",
                file=file_label,
                line=lines.get(name),
                field=name,
            )
        if value is not None:
            raw[name] = _Raw(value, file_label, lines.get(name))
    return raw


def _dotenv_lines(text: str, file_label: str) -> dict[str, int]:
    """Line of the (last) assignment of each variable, as python-dotenv parses the text.

    A line python-dotenv cannot parse (`NAME VALUE`, `NAME: VALUE`) is a ConfigError naming it:
    python-dotenv itself would only warn and skip it.
    """
    from dotenv.parser import parse_stream

    lines: dict[str, int] = {}
    for binding in parse_stream(io.StringIO(text)):
        original = binding.original.string
        # a binding's text starts with the blank lines before it
        line = binding.original.line + original[: len(original) - len(original.lstrip())].count(
            "\n"
        )
        if binding.error:
            shown = original.strip().splitlines()[0] if original.strip() else ""
            secret = next((n for n in _secret_names() if n in shown.upper()), None)
            if secret is not None:  # never echo what may be the secret's value
                shown = f"{secret} followed by its value, not shown"
            raise ConfigError(
                f"cannot parse this line ({_show(shown, 40) if secret is None else shown}); "
                "expected NAME=VALUE, a comment (#) or a blank line",
                file=file_label,
                line=line,
            )
        if binding.key is not None:
            lines[binding.key] = line
    return lines


def _secret_names() -> list[str]:
    """The variables of secret settings (not shown in Settings' repr), longest first."""
    names = [
        f.metadata["setting"].name
        for f in dataclasses.fields(Settings)
        if not f.repr and "setting" in f.metadata
    ]
    return sorted(names, key=len, reverse=True)


def _build(raw: Mapping[str, _Raw]) -> Settings:
    r = _Reader(raw)
    kw: dict[str, Any] = {}
    for doc in SETTINGS_REFERENCE:
        assert doc.parse is not None
        value = doc.parse(r, doc.name)
        if value is not None:
            kw[doc.field] = value
    settings = Settings(**kw)
    _check_together(r, settings)
    return settings


def _check_together(r: _Reader, s: Settings) -> None:
    """Rules between settings: every one here is something `send` would otherwise trip on."""
    if s.retry_max < s.retry_initial:
        if r.get("DIGESTBOT_RETRY_MAX") is None:
            raise r.error(
                "DIGESTBOT_RETRY_INITIAL",
                f"{s.retry_initial:g} s is more than DIGESTBOT_RETRY_MAX ({s.retry_max:g} s, "
                "its default); lower it or raise DIGESTBOT_RETRY_MAX",
            )
        raise r.error(
            "DIGESTBOT_RETRY_MAX",
            f"{s.retry_max:g} s is less than DIGESTBOT_RETRY_INITIAL ({s.retry_initial:g} s); "
            "the longest wait must be at least the first one",
        )
    if s.mail_backend == "smtp" and s.mail_from == PLACEHOLDER_FROM:
        raise r.error(
            "DIGESTBOT_MAIL_FROM",
            f"the From address is still the placeholder {PLACEHOLDER_FROM!r}, refused with "
            "DIGESTBOT_MAIL_BACKEND=smtp; set it to the address your SMTP server lets you send from",
            at="DIGESTBOT_MAIL_FROM" if r.get("DIGESTBOT_MAIL_FROM") else "DIGESTBOT_MAIL_BACKEND",
        )
    _check_dkim(r, s)
    if s.unsubscribe_url is not None and s.unsubscribe_secret is None:
        raise r.error(
            "DIGESTBOT_UNSUBSCRIBE_SECRET",
            "is required when DIGESTBOT_UNSUBSCRIBE_URL is set (it signs the {token}); "
            "use a random string of at least 16 characters",
            at="DIGESTBOT_UNSUBSCRIBE_URL",
        )
    if s.unsubscribe_secret is not None and len(s.unsubscribe_secret) < 16:
        raise r.error(
            "DIGESTBOT_UNSUBSCRIBE_SECRET",
            "is too short to sign unsubscribe tokens; use at least 16 random characters",
        )


def _check_dkim(r: _Reader, s: Settings) -> None:
    """DKIM is all or nothing, and a key that cannot sign is found now, not at the first message."""
    if (s.dkim_key_file is None) != (s.dkim_selector is None):
        missing = (
            "DIGESTBOT_DKIM_SELECTOR" if s.dkim_selector is None else "DIGESTBOT_DKIM_KEY_FILE"
        )
        given = "DIGESTBOT_DKIM_KEY_FILE" if s.dkim_selector is None else "DIGESTBOT_DKIM_SELECTOR"
        raise r.error(
            missing,
            f"DKIM is half-configured: {given} is set but {missing} is not; set both or neither",
            at=given,
        )
    if s.dkim_domain is not None and s.dkim_key_file is None:
        raise r.error(
            "DIGESTBOT_DKIM_DOMAIN",
            "is set but DKIM signing is off; also set DIGESTBOT_DKIM_KEY_FILE and "
            "DIGESTBOT_DKIM_SELECTOR, or unset it",
        )
    if s.dkim_key_file is None or s.dkim_selector is None:
        return
    name = "DIGESTBOT_DKIM_KEY_FILE"
    try:
        key = s.dkim_key_file.read_bytes()
    except OSError as exc:
        raise r.error(name, f"cannot read the key file: {exc.strerror or exc}") from exc
    domain = s.effective_dkim_domain
    assert domain is not None
    try:
        _dkim_probe(key, selector=s.dkim_selector, domain=domain)
    except Exception as exc:  # dkimpy raises KeyFormatError, but also ValueError, IndexError...
        reason = f"{type(exc).__name__}: {str(exc)[:120]}" if str(exc) else type(exc).__name__
        raise r.error(
            name,
            f"{str(s.dkim_key_file)!r} cannot sign ({reason}); expected a PEM RSA private key "
            "(-----BEGIN PRIVATE KEY----- or -----BEGIN RSA PRIVATE KEY-----)",
        ) from exc
    bits = _rsa_key_bits(key)
    if bits < MIN_DKIM_KEY_BITS:
        raise r.error(
            name,
            f"{str(s.dkim_key_file)!r} is a {bits}-bit RSA key; DKIM keys must have at least "
            f"{MIN_DKIM_KEY_BITS} bits (RFC 8301), 2048 recommended",
        )


MIN_DKIM_KEY_BITS = 1024
"""RFC 8301: verifiers must not accept signatures made with RSA keys under 1024 bits."""


def _rsa_key_bits(key: bytes) -> int:
    """The modulus size of a PEM RSA private key (one that dkimpy has just signed with)."""
    from dkim.crypto import parse_pem_private_key

    return int(parse_pem_private_key(key)["modulus"]).bit_length()


def _dkim_probe(key: bytes, *, selector: str, domain: str) -> None:
    """Sign a small probe message with dkimpy as sending will; raises what dkimpy raises."""
    import dkim  # dkimpy; imported here so settings without DKIM never need it

    probe = (
        f"From: probe@{domain}\r\nTo: probe@{domain}\r\nSubject: DKIM probe\r\n\r\nprobe\r\n"
    ).encode("ascii")
    dkim.sign(
        probe,
        selector.encode("ascii"),
        domain.encode("ascii"),
        key,
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=[b"from", b"to", b"subject"],
        linesep=b"\r\n",
    )
