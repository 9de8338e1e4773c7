"""Front-door wiring shared by the CLI and the daemon: builds stage inputs from Settings.

Nothing here holds logic of the pipeline; it only turns settings into the objects the pipeline
functions take (engine, source, backend, mail context, retry policy).
"""

from __future__ import annotations

import ctypes
import functools
import gc
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.engine import Engine

from digestbot import logs, outbox
from digestbot.db import open_database
from digestbot.errors import ConfigError, PermanentDeliveryError
from digestbot.mail.backends import Backend, ConsoleBackend, FileBackend, SMTPBackend
from digestbot.mail.context import MailContext, compose, digest_view
from digestbot.mail.message import make_message_id
from digestbot.mail.ratelimit import RateLimiter
from digestbot.pipeline import NamedSource, Source
from digestbot.render import Renderer
from digestbot.settings import Settings
from digestbot.sources.base import SourceSpec, locate_feed
from digestbot.subscribers import Config, SubscriberSpec
from digestbot.subscribers import load_config as load_config_file

if TYPE_CHECKING:
    import httpx

    from digestbot.sources.http import Pacer

# The source modules (with httpx, which brings click, rich and pygments for its own command line)
# are imported by the functions that build sources, not with this module: the delivery worker
# processes import this module and fetch nothing, and are 15 MB smaller without them.


def configure_logging(settings: Settings) -> None:
    """Log to stderr at DIGESTBOT_LOG_LEVEL in DIGESTBOT_LOG_FORMAT (digestbot.logs)."""
    logs.configure(level=settings.log_level, kind=settings.log_format)


def release_memory() -> None:
    """Give back to the system the memory of what is no longer referenced (the subscribers file
    and the planning, before delivery).

    First digestbot's memo caches (functools.lru_cache of pure functions: parsed addresses and
    queries, stems) are emptied: filled while the file was read, their entries sit among its
    freed objects and keep Python's allocator from returning those pages (at 100,000
    subscribers, about 20 MB more given back). Then a collection, then glibc's malloc_trim, without which freed heap
    pages mostly stay with the process (elsewhere than glibc, the collection alone)."""
    for found in gc.get_objects():
        if isinstance(found, functools._lru_cache_wrapper) and getattr(
            found, "__module__", ""
        ).startswith("digestbot."):
            found.cache_clear()
    gc.collect()
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return
    trim(0)


def load_people(settings: Settings) -> list[SubscriberSpec]:
    """The validated subscribers file (ConfigError names file, line, subscriber and field)."""
    return load_config(settings).subscribers


def load_config(settings: Settings) -> Config:
    """The validated configuration file: subscribers and `[[sources]]` (the default: one HF source)."""
    return load_config_file(settings.subscribers_path)


def database(settings: Settings, *, create: bool = True) -> Engine:
    """The migrated database; with create=False (read-only commands) a missing one is an error."""
    return open_database(settings.database_url, create=create)


def source_location(settings: Settings, spec: SourceSpec) -> str:
    """Where a source reads, as messages and `status` show it."""
    from digestbot.sources.arxiv import DEFAULT_RSS_URL

    if spec.kind == "hf":
        return spec.url or settings.feed_url
    if spec.kind == "arxiv":
        return spec.url or DEFAULT_RSS_URL + "+".join(spec.categories)
    return spec.url or ""


def make_sources(
    settings: Settings,
    specs: Sequence[SourceSpec],
    *,
    transport: httpx.BaseTransport | None = None,
    pacer: Pacer | None = None,
) -> list[NamedSource]:
    """The configured sources, ready to fetch. Every arXiv source of a run, and any feed on an
    arXiv host, shares one Pacer, so requests to arXiv hosts stay 3 s apart whichever source
    makes them. A `url` naming a file
    or folder that does not exist is a ConfigError (file, line, field), as for DIGESTBOT_FEED_URL."""
    from digestbot.sources.arxiv import ArxivSource
    from digestbot.sources.feed import FeedSource
    from digestbot.sources.hf_daily import HFDailyPapers
    from digestbot.sources.http import FEED_ACCEPT, Pacer, make_client, on_arxiv_host

    pacer = pacer or Pacer()
    out: list[NamedSource] = []
    for number, spec in enumerate(specs, start=1):
        where = source_location(settings, spec)
        found = locate_feed(where)
        if spec.url is not None and found.kind == "path" and not Path(found.value).exists():
            raise ConfigError(
                f"source {spec.name!r}: {found.value!r} is not an existing file or folder; "
                "give a saved feed (a file, or a folder of YYYY-MM-DD files) or an http(s) URL",
                file=str(settings.subscribers_path),
                line=spec.line,
                field=f"sources[{number}].url",
            )
        source: Source
        if spec.kind == "hf":
            client = None
            if locate_feed(where).kind == "http":
                client = make_client(
                    timeout=settings.fetch_timeout, token=settings.hf_token, transport=transport
                )
            source = HFDailyPapers(feed_url=where, client=client, retries=settings.fetch_retries)
        else:
            client = make_client(
                timeout=settings.fetch_timeout, token=None, transport=transport, accept=FEED_ACCEPT
            )
            if spec.kind == "arxiv":
                source = ArxivSource(
                    name=spec.name,
                    categories=spec.categories,
                    url=spec.url,
                    api_url=spec.api_url,
                    client=client,
                    pacer=pacer,
                    retries=settings.fetch_retries,
                )
            else:
                source = FeedSource(
                    name=spec.name,
                    url=where,
                    client=client,
                    retries=settings.fetch_retries,
                    pacer=pacer if on_arxiv_host(where) else None,
                )
        out.append(NamedSource(name=spec.name, location=where, source=source))
    return out


def choose_sources(
    specs: Sequence[SourceSpec], names: Sequence[str], *, file: str
) -> list[SourceSpec]:
    """The sources named by `--source` (any case, as in `sources = [...]`), in the file's order;
    an unknown name is a ConfigError."""
    known = {spec.name.lower() for spec in specs}
    unknown = [n for n in names if n.lower() not in known]
    if unknown:
        raise ConfigError(
            f"no source named {', '.join(unknown)} in {file} (configured: "
            f"{', '.join(spec.name for spec in specs)})",
            field="--source",
        )
    wanted = {n.lower() for n in names}
    return [spec for spec in specs if spec.name.lower() in wanted]


def make_backend(settings: Settings) -> Backend:
    if settings.mail_backend == "file":
        return FileBackend(settings.mail_dir)
    if settings.mail_backend == "console":
        return ConsoleBackend()
    if settings.mail_backend == "smtp":
        return SMTPBackend(
            host=settings.smtp_host,
            port=settings.smtp_port,
            security=settings.smtp_security,
            username=settings.smtp_username,
            password=settings.smtp_password,
            timeout=settings.smtp_timeout,
        )
    raise ConfigError(
        f"unknown mail backend {settings.mail_backend!r}", field="DIGESTBOT_MAIL_BACKEND"
    )


def mail_context(settings: Settings) -> MailContext:
    """What every message shares; reads the DKIM key file once and checks every template."""
    key = None
    if settings.dkim_key_file is not None:
        try:
            key = Path(settings.dkim_key_file).read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"cannot read DKIM key file {settings.dkim_key_file}: {exc.strerror}",
                field="DIGESTBOT_DKIM_KEY_FILE",
            ) from exc
    if settings.templates_dir is not None and not Path(settings.templates_dir).is_dir():
        raise ConfigError(
            f"templates folder {settings.templates_dir} does not exist",
            field="DIGESTBOT_TEMPLATES_DIR",
        )
    renderer = Renderer(templates_dir=settings.templates_dir)
    renderer.check()  # a template that does not compile or render stops here, naming file and line
    context = MailContext(
        renderer=renderer,
        from_addr=settings.mail_from,
        envelope_from=settings.mail_from_address,
        list_name=settings.list_name,
        list_id=settings.effective_list_id,
        unsubscribe_email=settings.effective_unsubscribe_email,
        unsubscribe_url=settings.unsubscribe_url,
        unsubscribe_secret=settings.unsubscribe_secret,
        dkim_selector=settings.dkim_selector,
        dkim_domain=settings.effective_dkim_domain,
        dkim_key=key,
    )
    probe_message(context)
    return context


_PROBE_SETTINGS = (
    "DIGESTBOT_MAIL_FROM, DIGESTBOT_UNSUBSCRIBE_EMAIL, DIGESTBOT_UNSUBSCRIBE_URL, "
    "DIGESTBOT_LIST_ID or the DKIM settings"
)


def probe_message(mail: MailContext) -> bytes:
    """Compose one sample digest to a sample recipient through the real `compose` path (build,
    serialise, DKIM-sign when configured) and read it back with the standard parser.

    What every message shares (sender, list headers, unsubscribe URIs, signing) is thus tried
    once before any digest: a problem there is a ConfigError naming the setting(s) (exit 2 from
    `check`, `send`, `send --dry-run`, `preview` and the daemon alike), never a failed digest.
    """
    import email
    import email.policy

    when = datetime(2000, 1, 1, tzinfo=UTC)
    try:
        view = digest_view(
            mail=mail,
            email="subscriber@example.org",
            name="Sample Subscriber",
            period=when.date().isoformat(),
            items=(),
            papers={},
            more_count=0,
        )
        message_id = make_message_id(
            digest_key="probe", from_addr=mail.from_addr, database_id="probe"
        )
        raw = compose(mail=mail, view=view, message_id=message_id, date_=when)
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        for name in ("From", "To", "List-Id", "List-Unsubscribe"):
            header = parsed[name]
            if header is None or header.defects:
                raise ValueError(f"the {name} header does not read back")
    except ConfigError as exc:
        if exc.field:
            raise
        raise ConfigError(
            f"a sample message cannot be built: {exc.message}; check {_PROBE_SETTINGS}"
        ) from exc
    except (PermanentDeliveryError, ValueError) as exc:
        cause = exc.__cause__
        field = cause.field if isinstance(cause, ConfigError) else None
        raise ConfigError(
            f"a sample message cannot be built ({exc}); every digest would fail; "
            f"check {field or _PROBE_SETTINGS}",
            field=field,
        ) from exc
    return raw


def retry_policy(settings: Settings) -> outbox.RetryPolicy:
    return outbox.RetryPolicy(
        initial=settings.retry_initial, maximum=settings.retry_max, give_up=settings.retry_give_up
    )


def rate_limiter(settings: Settings) -> RateLimiter:
    return RateLimiter(settings.smtp_rate if settings.mail_backend == "smtp" else None)


@dataclass(frozen=True, slots=True)
class Delivery:
    """Everything deliver_due needs besides the engine."""

    backend: Backend
    mail: MailContext
    policy: outbox.RetryPolicy
    limiter: RateLimiter


def delivery(settings: Settings) -> Delivery:
    return Delivery(
        backend=make_backend(settings),
        mail=mail_context(settings),
        policy=retry_policy(settings),
        limiter=rate_limiter(settings),
    )
