"""Front-door wiring shared by the CLI and the daemon: builds stage inputs from Settings.

Nothing here holds logic of the pipeline; it only turns settings into the objects the pipeline
functions take (engine, source, backend, mail context, retry policy).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
from sqlalchemy.engine import Engine

from digestbot import logs, outbox
from digestbot.db import open_database
from digestbot.errors import ConfigError, PermanentDeliveryError
from digestbot.mail.backends import Backend, ConsoleBackend, FileBackend, SMTPBackend
from digestbot.mail.context import MailContext, compose, digest_view
from digestbot.mail.message import make_message_id
from digestbot.mail.ratelimit import RateLimiter
from digestbot.render import Renderer
from digestbot.settings import Settings
from digestbot.sources.hf_daily import HFDailyPapers, make_client
from digestbot.subscribers import SubscriberSpec, load_subscribers


def configure_logging(settings: Settings) -> None:
    """Log to stderr at DIGESTBOT_LOG_LEVEL in DIGESTBOT_LOG_FORMAT (digestbot.logs)."""
    logs.configure(level=settings.log_level, kind=settings.log_format)


def load_people(settings: Settings) -> list[SubscriberSpec]:
    """The validated subscribers file (ConfigError names file, line, subscriber and field)."""
    return load_subscribers(settings.subscribers_path)


def database(settings: Settings, *, create: bool = True) -> Engine:
    """The migrated database; with create=False (read-only commands) a missing one is an error."""
    return open_database(settings.database_url, create=create)


def make_source(
    settings: Settings, *, transport: httpx.BaseTransport | None = None
) -> HFDailyPapers:
    url = settings.feed_url
    client = None
    if url.startswith(("http://", "https://")):
        client = make_client(
            timeout=settings.fetch_timeout, token=settings.hf_token, transport=transport
        )
    return HFDailyPapers(feed_url=url, client=client, retries=settings.fetch_retries)


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
