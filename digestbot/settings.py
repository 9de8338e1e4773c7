"""Settings from the process environment and `.env`, validated into one frozen value.

Nothing is read at import time: the front door calls `load_settings()` once and passes the
result down. The process environment wins over `.env`; a variable set to an empty string counts
as unset (its default applies). Every bad value raises ConfigError naming the variable, where it
came from (`.env` and its line, or the environment), what is wrong and what is allowed.
`SETTINGS_REFERENCE` is the single list of settings behind .env.example and the README table.
"""

from __future__ import annotations

import difflib
import io
import math
import os
import re
import string
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.headerregistry import HeaderRegistry
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

from digestbot.errors import ConfigError

__all__ = [
    "SETTINGS_REFERENCE",
    "SettingDoc",
    "Settings",
    "check_addr_spec",
    "load_settings",
    "parse_mailbox",
    "render_env_example",
]

MAIL_BACKENDS = ("smtp", "file", "console")
SMTP_SECURITY = ("starttls", "ssl", "none")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything digestbot reads from its environment; the defaults need no mail server."""

    database_url: str = "sqlite:///digestbot.db"
    subscribers_path: Path = Path("subscribers.toml")
    feed_url: str = "https://huggingface.co/api/daily_papers"
    fetch_retries: int = 3
    fetch_timeout: float = 30.0
    lookback_days: int = 2
    fetch_interval_minutes: int = 60
    hf_token: str | None = field(default=None, repr=False)
    mail_from: str = "Paper Digest <digest@example.org>"
    mail_backend: str = "file"
    mail_dir: Path = Path("outbox")
    smtp_host: str = "localhost"
    smtp_port: int = 587
    smtp_username: str | None = None
    smtp_password: str | None = field(default=None, repr=False)
    smtp_security: str = "starttls"
    smtp_timeout: float = 30.0
    smtp_rate: float | None = None
    templates_dir: Path | None = None
    retry_initial: float = 60.0
    retry_max: float = 3600.0
    retry_give_up: float = 86400.0
    unsubscribe_email: str | None = None
    unsubscribe_url: str | None = None
    dkim_key_file: Path | None = None
    dkim_selector: str | None = None
    dkim_domain: str | None = None
    unsubscribe_secret: str | None = field(default=None, repr=False)
    list_id: str | None = None
    log_level: str = "INFO"

    @property
    def mail_from_address(self) -> str:
        """The bare addr-spec of the From address (`digest@example.org`), for the SMTP envelope."""
        return parse_mailbox(self.mail_from)[1]

    @property
    def from_domain(self) -> str:
        """The domain of the From address, lower-cased."""
        return self.mail_from_address.rpartition("@")[2].lower()

    @property
    def effective_unsubscribe_email(self) -> str:
        """The `mailto:` target of List-Unsubscribe: DIGESTBOT_UNSUBSCRIBE_EMAIL, else the From address."""
        return self.unsubscribe_email or self.mail_from_address

    @property
    def effective_list_id(self) -> str:
        """The List-Id header value: DIGESTBOT_LIST_ID as given, else `<digest.FROMDOMAIN>`."""
        if self.list_id:
            return self.list_id if ">" in self.list_id else f"<{self.list_id}>"
        return f"<digest.{self.from_domain}>"

    @property
    def effective_dkim_domain(self) -> str | None:
        """The DKIM signing domain (d=): DIGESTBOT_DKIM_DOMAIN, else the From domain; None without DKIM."""
        if self.dkim_key_file is None:
            return None
        return self.dkim_domain or self.from_domain


@dataclass(frozen=True, slots=True)
class SettingDoc:
    """One documented setting: its variable name, its default as written in .env, one line of help."""

    name: str
    default: str  # "" means unset
    description: str
    group: str


def _doc(group: str, name: str, default: str, description: str) -> SettingDoc:
    return SettingDoc(name=name, default=default, description=description, group=group)


SETTINGS_REFERENCE: tuple[SettingDoc, ...] = (
    _doc(
        "Storage",
        "DIGESTBOT_DATABASE_URL",
        "sqlite:///digestbot.db",
        "SQLAlchemy database URL (sqlite:///FILE or postgresql+psycopg://USER@HOST/DB).",
    ),
    _doc(
        "Storage",
        "DIGESTBOT_SUBSCRIBERS",
        "subscribers.toml",
        "Path of the subscribers file (`digestbot init` writes an example).",
    ),
    _doc(
        "Feed",
        "DIGESTBOT_FEED_URL",
        "https://huggingface.co/api/daily_papers",
        "Feed to fetch: an http(s) URL, or a file path / file:// URL of a saved response.",
    ),
    _doc(
        "Feed",
        "DIGESTBOT_FETCH_RETRIES",
        "3",
        "Retries per feed request on connection errors, 429 and 5xx (0-100).",
    ),
    _doc("Feed", "DIGESTBOT_FETCH_TIMEOUT", "30", "Timeout of each feed request, in seconds."),
    _doc(
        "Feed",
        "DIGESTBOT_LOOKBACK_DAYS",
        "2",
        "Days before today (UTC) fetched and considered for a new subscriber's first digest (0-365).",
    ),
    _doc(
        "Feed",
        "DIGESTBOT_FETCH_INTERVAL",
        "60",
        "Minutes between feed fetches in the daemon (`digestbot run`).",
    ),
    _doc(
        "Feed", "HF_TOKEN", "", "Optional Hugging Face token, sent as a bearer token to the feed."
    ),
    _doc(
        "Mail",
        "DIGESTBOT_MAIL_FROM",
        "Paper Digest <digest@example.org>",
        "From address of every digest, with an optional display name.",
    ),
    _doc(
        "Mail",
        "DIGESTBOT_MAIL_BACKEND",
        "file",
        "How digests leave: smtp, file (one .eml per digest in DIGESTBOT_MAIL_DIR) or console.",
    ),
    _doc("Mail", "DIGESTBOT_MAIL_DIR", "outbox", "Folder of the file backend."),
    _doc(
        "Mail",
        "DIGESTBOT_TEMPLATES_DIR",
        "",
        "Optional folder whose templates override the built-in ones (same file names).",
    ),
    _doc("SMTP", "DIGESTBOT_SMTP_HOST", "localhost", "SMTP server host name."),
    _doc("SMTP", "DIGESTBOT_SMTP_PORT", "587", "SMTP server port (465 is usual with ssl)."),
    _doc("SMTP", "DIGESTBOT_SMTP_USERNAME", "", "SMTP login; no login when unset."),
    _doc("SMTP", "DIGESTBOT_SMTP_PASSWORD", "", "SMTP password."),
    _doc(
        "SMTP",
        "DIGESTBOT_SMTP_SECURITY",
        "starttls",
        "Transport security: starttls, ssl (implicit TLS) or none; certificates are verified.",
    ),
    _doc("SMTP", "DIGESTBOT_SMTP_TIMEOUT", "30", "SMTP network timeout, in seconds."),
    _doc(
        "SMTP",
        "DIGESTBOT_SMTP_RATE",
        "",
        "Maximum messages per second sent over SMTP (e.g. 0.5); unlimited when unset.",
    ),
    _doc(
        "Delivery",
        "DIGESTBOT_RETRY_INITIAL",
        "60",
        "Seconds before the first retry of a temporarily failed digest; doubles on each attempt.",
    ),
    _doc(
        "Delivery", "DIGESTBOT_RETRY_MAX", "3600", "Longest wait between two retries, in seconds."
    ),
    _doc(
        "Delivery",
        "DIGESTBOT_RETRY_GIVE_UP",
        "86400",
        "Seconds after the first attempt when a digest still deferred is marked failed.",
    ),
    _doc(
        "Headers",
        "DIGESTBOT_UNSUBSCRIBE_EMAIL",
        "",
        "mailto: address of List-Unsubscribe; default: the From address.",
    ),
    _doc(
        "Headers",
        "DIGESTBOT_UNSUBSCRIBE_URL",
        "",
        "Optional one-click unsubscribe URL: https, with {token} (and optionally {email}).",
    ),
    _doc(
        "Headers",
        "DIGESTBOT_UNSUBSCRIBE_SECRET",
        "",
        "Secret key (16+ characters) signing unsubscribe tokens; required with DIGESTBOT_UNSUBSCRIBE_URL.",
    ),
    _doc(
        "Headers",
        "DIGESTBOT_LIST_ID",
        "",
        "List-Id header, e.g. 'Paper Digest <digest.example.org>'; default: <digest.FROM-DOMAIN>.",
    ),
    _doc(
        "Headers",
        "DIGESTBOT_DKIM_KEY_FILE",
        "",
        "PEM private key for DKIM signing; set together with DIGESTBOT_DKIM_SELECTOR.",
    ),
    _doc(
        "Headers",
        "DIGESTBOT_DKIM_SELECTOR",
        "",
        "DKIM selector (the s= tag; DNS name SELECTOR._domainkey.DOMAIN).",
    ),
    _doc(
        "Headers",
        "DIGESTBOT_DKIM_DOMAIN",
        "",
        "DKIM signing domain (the d= tag); default: the From address's domain.",
    ),
    _doc(
        "Logging",
        "DIGESTBOT_LOG_LEVEL",
        "INFO",
        "Log level: DEBUG, INFO, WARNING, ERROR or CRITICAL.",
    ),
)


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


def _dotenv_quote(value: str) -> str:
    return f'"{value}"' if any(c in value for c in " <>#'\"") else value


# --------------------------------------------------------------------------- mailbox parsing

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def check_addr_spec(value: str, *, need_dot: bool = True) -> str:
    """Validate a bare address `local@domain` and return it with the domain lower-cased.

    Raises ValueError with a reason. The local part must be a dot-atom (no quoting); the
    domain a host name (internationalized names allowed), with a dot unless `need_dot` is False.
    """
    if _CONTROL.search(value):
        raise ValueError("contains a control character (CR, LF, ...)")
    if "<" in value or ">" in value or " " in value.strip():
        raise ValueError("must be a bare address like ada@example.org, without a display name")
    value = value.strip()
    local, at, domain = value.rpartition("@")
    if not at or not local or not domain:
        raise ValueError("must look like name@example.org")
    if not _DOT_ATOM.fullmatch(local):
        raise ValueError(f"the part before '@' ({local!r}) is not a plain dot-atom")
    domain = domain.lower()
    try:
        ascii_domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        raise ValueError(f"the domain {domain!r} is not a valid host name") from None
    labels = ascii_domain.split(".")
    if len(ascii_domain) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"the domain {domain!r} is not a valid host name")
    if need_dot and len(labels) < 2:
        raise ValueError(f"the domain {domain!r} has no dot (e.g. example.org)")
    return f"{local}@{domain}"


def parse_mailbox(value: str) -> tuple[str, str]:
    """Parse `Display Name <addr@domain>` or a bare address into (display name, addr-spec).

    Raises ValueError with a reason when the value is not exactly one valid mailbox.
    """
    if _CONTROL.search(value):
        raise ValueError("contains a control character (CR, LF, ...)")
    try:
        header = HeaderRegistry()("From", value)
        addresses = header.addresses
    except Exception as exc:  # the header parser raises IndexError, HeaderParseError, ...
        raise ValueError(f"cannot be parsed as an address ({exc})") from None
    if len(addresses) != 1:
        raise ValueError(f"must be exactly one address, found {len(addresses)}")
    if header.defects:
        raise ValueError("is not a valid address like 'Paper Digest <digest@example.org>'")
    address = addresses[0]
    addr_spec = check_addr_spec(address.addr_spec, need_dot=False)
    return address.display_name, addr_spec


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True, slots=True)
class _Raw:
    value: str
    file: str
    line: int | None


def load_settings(
    environ: Mapping[str, str] | None = None,
    *,
    env_file: Path | None = Path(".env"),
) -> Settings:
    """Read and validate settings from `environ` (default os.environ) over `env_file` (default .env).

    A missing env file is fine; `env_file=None` skips it. os.environ is never modified.
    """
    if environ is None:
        environ = os.environ
    raw: dict[str, _Raw] = {}
    if env_file is not None and env_file.is_file():
        file_label = str(env_file)
        try:
            values = dotenv_values(env_file, encoding="utf-8")
            lines = _dotenv_lines(env_file)
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the settings file: {exc}", file=file_label) from exc
        known = {doc.name for doc in SETTINGS_REFERENCE}
        for name, value in values.items():
            if (
                name not in known
                and name.startswith("DIGESTBOT_")
                and not name.startswith("DIGESTBOT_TEST_")
            ):
                close = difflib.get_close_matches(name, known, n=1)
                hint = f"did you mean {close[0]}? " if close else ""
                raise ConfigError(
                    f"unknown setting; {hint}see .env.example for the list",
                    file=file_label,
                    line=lines.get(name),
                    field=name,
                )
            if value is not None:
                raw[name] = _Raw(value, file_label, lines.get(name))
    for doc in SETTINGS_REFERENCE:
        if doc.name in environ:
            raw[doc.name] = _Raw(environ[doc.name], "environment", None)
    return _build(raw)


def _dotenv_lines(path: Path) -> dict[str, int]:
    """Line of the (last) assignment of each variable in a .env file, as python-dotenv parses it."""
    try:
        from dotenv.parser import parse_stream
    except ImportError:  # pragma: no cover - private module moved; lines are a nicety
        return {}
    lines: dict[str, int] = {}
    text = path.read_text(encoding="utf-8")
    for binding in parse_stream(io.StringIO(text)):
        if binding.key is not None and not binding.error:
            lines[binding.key] = binding.original.line
    return lines


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
        if _CONTROL.search(value):
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
        return Path(value).expanduser() if value is not None else None


def _show(value: str, limit: int = 60) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")


def _build(raw: Mapping[str, _Raw]) -> Settings:
    r = _Reader(raw)
    kw: dict[str, Any] = {}

    def put(field_name: str, value: object) -> None:
        if value is not None:
            kw[field_name] = value

    put("database_url", _database_url(r))
    put("subscribers_path", r.path("DIGESTBOT_SUBSCRIBERS"))
    put("feed_url", _feed_url(r))
    put("fetch_retries", r.integer("DIGESTBOT_FETCH_RETRIES", minimum=0, maximum=100))
    put("fetch_timeout", r.number("DIGESTBOT_FETCH_TIMEOUT", minimum=0, maximum=3600))
    put("lookback_days", r.integer("DIGESTBOT_LOOKBACK_DAYS", minimum=0, maximum=365))
    put(
        "fetch_interval_minutes",
        r.integer("DIGESTBOT_FETCH_INTERVAL", minimum=1, maximum=7 * 24 * 60),
    )
    put("hf_token", r.text("HF_TOKEN", secret=True, allow_space=False))
    put("mail_from", _mail_from(r))
    put("mail_backend", r.choice("DIGESTBOT_MAIL_BACKEND", MAIL_BACKENDS))
    put("mail_dir", r.path("DIGESTBOT_MAIL_DIR"))
    put("templates_dir", _existing(r, "DIGESTBOT_TEMPLATES_DIR", Path.is_dir, "folder"))
    put("smtp_host", r.text("DIGESTBOT_SMTP_HOST", allow_space=False))
    put("smtp_port", r.integer("DIGESTBOT_SMTP_PORT", minimum=1, maximum=65535))
    put("smtp_username", r.text("DIGESTBOT_SMTP_USERNAME"))
    put("smtp_password", r.text("DIGESTBOT_SMTP_PASSWORD", secret=True))
    put("smtp_security", r.choice("DIGESTBOT_SMTP_SECURITY", SMTP_SECURITY))
    put("smtp_timeout", r.number("DIGESTBOT_SMTP_TIMEOUT", minimum=0, maximum=3600))
    put(
        "smtp_rate",
        r.number("DIGESTBOT_SMTP_RATE", minimum=0, maximum=10000, unit="messages per second"),
    )
    put("retry_initial", r.number("DIGESTBOT_RETRY_INITIAL", minimum=0, maximum=7 * 86400))
    put("retry_max", r.number("DIGESTBOT_RETRY_MAX", minimum=0, maximum=7 * 86400))
    put("retry_give_up", r.number("DIGESTBOT_RETRY_GIVE_UP", minimum=0, maximum=30 * 86400))
    put("unsubscribe_email", _unsubscribe_email(r))
    put("unsubscribe_url", _unsubscribe_url(r))
    put("unsubscribe_secret", r.text("DIGESTBOT_UNSUBSCRIBE_SECRET", secret=True))
    put("list_id", _list_id(r))
    put("dkim_key_file", _existing(r, "DIGESTBOT_DKIM_KEY_FILE", Path.is_file, "file"))
    put("dkim_selector", _dns_name(r, "DIGESTBOT_DKIM_SELECTOR", underscore=True))
    put("dkim_domain", _dns_name(r, "DIGESTBOT_DKIM_DOMAIN"))
    put("log_level", r.choice("DIGESTBOT_LOG_LEVEL", LOG_LEVELS, upper=True))
    settings = Settings(**kw)
    _check_together(r, settings)
    return settings


def _database_url(r: _Reader) -> str | None:
    name = "DIGESTBOT_DATABASE_URL"
    value = r.text(name, allow_space=False)
    if value is not None and not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*://.*", value):
        raise r.error(
            name,
            f"{_show(value)} is not a database URL; expected e.g. sqlite:///digestbot.db "
            "or postgresql+psycopg://user@host/db",
        )
    return value


def _feed_url(r: _Reader) -> str | None:
    name = "DIGESTBOT_FEED_URL"
    value = r.text(name)
    if value is None:
        return None
    scheme, sep, _ = value.partition("://")
    if sep and scheme.lower() not in ("http", "https", "file"):
        raise r.error(
            name, f"unsupported scheme {scheme!r}; expected an http(s) URL, a file:// URL or a path"
        )
    if scheme.lower() in ("http", "https") and not urllib.parse.urlsplit(value).netloc:
        raise r.error(name, f"{_show(value)} has no host name")
    return value


def _mail_from(r: _Reader) -> str | None:
    name = "DIGESTBOT_MAIL_FROM"
    value = r.text(name)
    if value is None:
        return None
    try:
        parse_mailbox(value)
    except ValueError as exc:
        raise r.error(
            name, f"{_show(value)} {exc}; expected e.g. 'Paper Digest <digest@example.org>'"
        ) from None
    return value


def _unsubscribe_email(r: _Reader) -> str | None:
    name = "DIGESTBOT_UNSUBSCRIBE_EMAIL"
    value = r.text(name)
    if value is None:
        return None
    if value.lower().startswith("mailto:"):
        value = value[len("mailto:") :]
    try:
        return check_addr_spec(value, need_dot=False)
    except ValueError as exc:
        raise r.error(
            name, f"{_show(value)} {exc}; expected a bare address like unsubscribe@example.org"
        ) from None


def _unsubscribe_url(r: _Reader) -> str | None:
    name = "DIGESTBOT_UNSUBSCRIBE_URL"
    value = r.text(name, allow_space=False)
    if value is None:
        return None
    example = "expected e.g. https://example.org/unsubscribe?token={token}"
    parts = urllib.parse.urlsplit(value)
    if parts.scheme.lower() != "https" or not parts.netloc:
        raise r.error(name, f"{_show(value)} is not an https URL; {example}")
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
    return value


def _list_id(r: _Reader) -> str | None:
    name = "DIGESTBOT_LIST_ID"
    value = r.text(name)
    if value is None:
        return None
    match = re.fullmatch(r"(?:([^<>]*)<([^<>]+)>|([^<>\s]+))", value)
    list_id = match and (match.group(2) or match.group(3))
    if not list_id or not re.fullmatch(rf"{_ATEXT}(?:\.{_ATEXT})+", list_id):
        raise r.error(
            name,
            f"{_show(value)} is not a List-Id; expected 'Name <label.example.org>' "
            "or label.example.org (RFC 2919)",
        )
    return value


def _dns_name(r: _Reader, name: str, *, underscore: bool = False) -> str | None:
    value = r.text(name, allow_space=False)
    if value is None:
        return None
    label = (
        r"[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?"
        if underscore
        else r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    )
    if not re.fullmatch(rf"{label}(?:\.{label})*", value) or len(value) > 253:
        raise r.error(name, f"{_show(value)} is not a DNS name (letters, digits, '-' and dots)")
    return value.lower()


def _existing(r: _Reader, name: str, check: Callable[[Path], bool], kind: str) -> Path | None:
    path = r.path(name)
    if path is not None and not check(path):
        raise r.error(name, f"{str(path)!r} is not an existing {kind}")
    return path


def _check_together(r: _Reader, s: Settings) -> None:
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
