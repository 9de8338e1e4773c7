"""Helpers shared by the test modules: the feed fixtures, a real SMTP server, a digestbot subprocess.

Fixtures live in conftest.py; plain functions and classes live here, so no test module imports another.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from functools import cache
from pathlib import Path
from typing import Any, Self

import sqlalchemy as sa
from aiosmtpd.controller import Controller

from digestbot.db import make_engine

FIXTURES = Path(__file__).parent / "fixtures" / "hf_daily_papers"
PG_URL = os.environ.get("DIGESTBOT_TEST_POSTGRES_URL")


# -- feed -----------------------------------------------------------------------------------


def fixture_day(day: str) -> list[dict[str, Any]]:
    return json.loads((FIXTURES / f"{day}.json").read_text())


def write_day(folder: Path, day: str, items: list[dict[str, Any]]) -> None:
    (folder / f"{day}.json").write_text(json.dumps(items))


def shift_items(
    items: list[dict[str, Any]], to_day: date, *, not_after: datetime | None = None
) -> list[dict[str, Any]]:
    """The same items, featured on another day (for tests that need papers near the real clock);
    with `not_after`, none later than it (today's papers, but never in the future: the fixture's
    times of day, 03:00 to 10:00 UTC, are still to come in the first hours of a day)."""
    out = json.loads(json.dumps(items))
    for it in out:
        old = datetime.fromisoformat(it["paper"]["submittedOnDailyAt"])
        new = datetime.combine(to_day, old.timetz())
        if not_after is not None:
            new = min(new, not_after)
        it["paper"]["submittedOnDailyAt"] = new.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return out


# -- SMTP-----------------------------------------------------------------------------------


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes

    @property
    def message(self) -> EmailMessage:
        return message_from_bytes(self.raw, policy=default_policy)  # type: ignore[return-value]


@dataclass
class SMTPHandler:
    """Records what it accepts; `reject_rcpt` / `reject_data` map an address to an SMTP reply.

    It offers PIPELINING (RFC 2920), as Postfix, Exim and the big mail services do (aiosmtpd
    reads pipelined commands in order); `pipelining=False` makes a server without it.
    `on_data` is called with each message's envelope as its content arrives.
    """

    received: list[Received] = field(default_factory=list)
    reject_rcpt: dict[str, str] = field(default_factory=dict)
    reject_data: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    pipelining: bool = True
    on_data: Callable[[Any], None] | None = None

    async def handle_EHLO(self, server, session, envelope, hostname, responses):  # type: ignore[no-untyped-def]
        session.host_name = hostname
        if not self.pipelining:
            return responses
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # type: ignore[no-untyped-def]
        if address in self.reject_rcpt:
            return self.reject_rcpt[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        if self.on_data is not None:
            self.on_data(envelope)
        for rcpt in envelope.rcpt_tos:
            if rcpt in self.reject_data:
                return self.reject_data[rcpt]
        with self.lock:
            self.received.append(
                Received(
                    mail_from=envelope.mail_from,
                    rcpt_tos=list(envelope.rcpt_tos),
                    raw=envelope.original_content,
                )
            )
        return "250 Message accepted for delivery"

    def to(self, address: str) -> list[Received]:
        return [r for r in self.received if address in r.rcpt_tos]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class SMTPServer:
    handler: SMTPHandler
    host: str
    port: int

    def env(self) -> dict[str, str]:
        """Settings that point digestbot at this server (plain SMTP on loopback)."""
        return {
            "DIGESTBOT_MAIL_BACKEND": "smtp",
            "DIGESTBOT_SMTP_HOST": self.host,
            "DIGESTBOT_SMTP_PORT": str(self.port),
            "DIGESTBOT_SMTP_SECURITY": "none",
            "DIGESTBOT_MAIL_FROM": "Paper Digest <digest@lab.example.net>",
        }


@contextmanager
def serve(handler: SMTPHandler, **smtp_kwargs: Any) -> Iterator[SMTPServer]:
    """A real aiosmtpd server for `handler` on a free loopback port (options: login, TLS, timeout)."""
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, **smtp_kwargs)
    controller.start()
    try:
        yield SMTPServer(handler=handler, host="127.0.0.1", port=port)
    finally:
        controller.stop()


def run_digestbot(
    args: list[str], *, env: dict[str, str], cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `python -m digestbot ARGS` as a real process and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "digestbot", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def day_start(day: str) -> datetime:
    return datetime.combine(date.fromisoformat(day), datetime.min.time(), tzinfo=UTC)


def after(day: str, hours: float) -> datetime:
    return day_start(day) + timedelta(hours=hours)


# -- many subscribers, real digestbot processes (crash and concurrency tests) --------------------

DAY = "2026-03-04"
FROM = "Paper Digest <digest@lab.test>"
KEYWORDS = ["model", "language", "diffusion", "reasoning", "learning", "llm", "transformer"]


def many_subscribers(folder: Path, n: int, *, send_at: str = "07:00") -> list[str]:
    """Write a subscribers.toml of `n` people with distinct emails whose keywords match the fixture papers."""
    emails = [f"reader{i:03d}@example.org" for i in range(n)]
    body = f'[defaults]\nsend_at = "{send_at}"\ntimezone = "UTC"\nmax_papers = 5\n'
    for i, email in enumerate(emails):
        words = sorted({KEYWORDS[i % len(KEYWORDS)], KEYWORDS[(3 * i + 1) % len(KEYWORDS)]})
        body += f'\n[[subscribers]]\nemail = "{email}"\nname = "Reader {i}"\nkeywords = {words!r}\n'
    (folder / "subscribers.toml").write_text(body.replace("'", '"'))
    return emails


@dataclass
class SlowHandler(SMTPHandler):
    """Accepts every message after `delay` seconds (a wide window to kill the sender in), noting the connection.

    With `wait_for_peers`, no message is accepted before that many connections were opened (or
    a minute passed): a run meant to use that many is not over before its last process starts.
    """

    delay: float = 0.02
    peers: list[Any] = field(default_factory=list)
    wait_for_peers: int = 0
    connected: set[Any] = field(default_factory=set)

    async def handle_EHLO(self, server, session, envelope, hostname, responses):  # type: ignore[no-untyped-def]
        self.connected.add(session.peer)
        return await super().handle_EHLO(server, session, envelope, hostname, responses)

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while len(self.connected) < self.wait_for_peers and loop.time() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(self.delay)
        self.peers.append(session.peer)
        return await super().handle_DATA(server, session, envelope)


def slow_server(delay: float, *, wait_for_peers: int = 0) -> Iterator[SMTPServer]:
    with serve(SlowHandler(delay=delay, wait_for_peers=wait_for_peers)) as server:
        yield server


def bot_env(server: SMTPServer, **extra: str) -> dict[str, str]:
    """The process environment for a real digestbot subprocess (cwd, feed and database come from `workdir`)."""
    return {
        **os.environ,
        **server.env(),
        "DIGESTBOT_MAIL_FROM": FROM,
        "DIGESTBOT_LOG_LEVEL": "WARNING",
        **extra,
    }


def start(args: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "ab")  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "digestbot", *args],
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    finally:
        out.close()


def digest_rows(url: str) -> list[tuple[str, str, str, str, int]]:
    """(email, period, state, message_id, attempts) of every digest."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return [
                tuple(r)
                for r in conn.execute(
                    sa.text(
                        "SELECT s.email, d.period, d.state, d.message_id, d.attempts "
                        "FROM digests d JOIN subscribers s ON s.id = d.subscriber_id"
                    )
                )
            ]  # type: ignore[misc]
    finally:
        engine.dispose()


def sent_papers(url: str) -> dict[str, set[str]]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            out: dict[str, set[str]] = {}
            for email, arxiv_id in conn.execute(
                sa.text(
                    "SELECT s.email, i.arxiv_id FROM digest_items i JOIN subscribers s ON s.id = i.subscriber_id"
                )
            ):
                out.setdefault(email, set()).add(arxiv_id)
            return out
    finally:
        engine.dispose()


def assert_exactly_one_digest_each(
    handler: SMTPHandler, emails: list[str], url: str, *, kills: int
) -> None:
    """Everyone got their digest; repeats are the same message (same Message-ID), at most one per kill."""
    rows = digest_rows(url)
    by_email = {email: (period, state, mid) for email, period, state, mid, _ in rows}
    assert len(rows) == len(emails) == len(by_email), "exactly one digest per subscriber and period"
    assert all(state == "sent" and period == DAY for period, state, _ in by_email.values()), rows
    assert all(len(r.rcpt_tos) == 1 for r in handler.received)
    copies = Counter(r.rcpt_tos[0] for r in handler.received)
    assert set(copies) == set(emails), f"no message for {sorted(set(emails) - set(copies))}"
    for email in emails:
        ids = {r.message["Message-ID"] for r in handler.to(email)}
        assert ids == {by_email[email][2]}, (email, ids)
    extra = sum(n - 1 for n in copies.values())
    assert extra <= kills, f"{extra} duplicates for {kills} kills: {copies.most_common(5)}"
    # every paper a subscriber was sent appears in that one digest only, listed once
    papers = sent_papers(url)
    for email in emails:
        body = handler.to(email)[0].message.get_body(preferencelist=("plain",)).get_content()
        listed = re.findall(r"arxiv\.org/abs/(\d{4}\.\d{4,5})", body)
        assert listed and set(listed) <= papers[email], (email, listed)
        assert len(listed) == len(set(listed)), (email, listed)


# -- matching ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Paper:
    """A PaperDoc for tests (FetchedPaper has more fields than matching needs)."""

    arxiv_id: str
    title: str
    summary: str
    authors: tuple[str, ...] = ()
    ai_keywords: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    upvotes: int = 0
    sources: tuple[str, ...] = ()
    has_upvotes: bool = True


def fixture_dir() -> Path:
    local = Path(__file__).parent / "fixtures" / "hf_daily_papers"
    if local.is_dir() and any(local.glob("2026-*.json")):
        return local
    return Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "hf_daily_papers"


# The feed gives no arXiv categories; these few are assigned here so category: has something to find.
CATEGORIES = {
    "2310.15141": ("cs.LG", "cs.CL"),
    "2502.06155": ("cs.CV",),
    "2303.16998": ("stat.ML", "cs.LG"),
}

# Two made-up papers for what the fixtures do not contain: accents, ß, LaTeX markup, apostrophes.
EXTRA = (
    Paper(
        "9901.00001",
        "Données Straße: \\textbf{Robust} $\\alpha$-Divergence for Café Recommendation",
        "We study the Øresund dataset's naïve baselines with \\emph{coöperative} agents; see https://example.org/url.",
        ("Zoë Ångström", "José María García-López"),
        upvotes=2,
    ),
    Paper(
        "9901.00002",
        "Self-Play RL for the World Model of URL Ranking",
        "Reinforcement learning (RL) agents rank URLs; world models help.",
        ("Jane Q. Public",),
        upvotes=2,
    ),
)


@cache
def papers() -> tuple[Paper, ...]:
    seen: dict[str, Paper] = {}
    for f in sorted(fixture_dir().glob("*.json")):
        for item in json.loads(f.read_text()):
            p = item["paper"]
            seen[p["id"]] = Paper(
                arxiv_id=p["id"],
                title=p["title"],
                summary=p["summary"],
                authors=tuple(a["name"] for a in p["authors"]),
                ai_keywords=tuple(p.get("ai_keywords", ())),
                categories=CATEGORIES.get(p["id"], ()),
                upvotes=p.get("upvotes", 0),
            )
    return tuple(seen.values()) + EXTRA


# -- DKIM -------------------------------------------------------------------------------------


def make_rsa_key() -> tuple[bytes, bytes]:
    """A fresh 2048-bit RSA key as (PKCS#8 PEM private key, DER SubjectPublicKeyInfo)."""
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
    except ImportError:
        pem = subprocess.run(["openssl", "genrsa", "2048"], check=True, capture_output=True).stdout
        der = subprocess.run(
            ["openssl", "rsa", "-pubout", "-outform", "DER"],
            input=pem,
            check=True,
            capture_output=True,
        ).stdout
        return pem, der
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem, der


MESSAGE_HEADERS = [  # a digest's headers, in order, as written here independently of mail.message
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "Auto-Submitted",
    "Precedence",
    "MIME-Version",
    "Content-Type",
]


# -- HTTP feed server ------------------------------------------------------------------------


class FakeClock:
    """A monotonic clock that only moves when slept on; records every sleep."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


@dataclass
class Reply:
    """One scripted HTTP answer of FeedServer."""

    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Seen:
    """One request FeedServer received: its path with query, and its headers (lower-case names)."""

    path: str
    headers: dict[str, str]


class FeedServer:
    """A real HTTP server on 127.0.0.1 (a thread) answering from a script, logging each request.

    `route(path, reply)` answers one path (without query) with a fixed reply, or with a callable
    `(Seen) -> Reply`; unrouted paths answer 404. An ETag reply answers 304 to a matching
    If-None-Match by itself.
    """

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.routes: dict[str, Any] = {}
        self.requests: list[Seen] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen = Seen(self.path, {k.lower(): v for k, v in self.headers.items()})
                server.requests.append(seen)
                route = server.routes.get(self.path.split("?", 1)[0])
                reply = route(seen) if callable(route) else route
                if reply is None:
                    reply = Reply(b"not found", 404)
                etag = reply.headers.get("ETag")
                if etag and seen.headers.get("if-none-match") == etag and reply.status == 200:
                    reply = Reply(b"", 304, {"ETag": etag})
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                if reply.status != 304:
                    self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                if reply.status != 304:
                    self.wfile.write(reply.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def url(self, path: str) -> str:
        return self.base + path

    def route(self, path: str, reply: Any) -> None:
        self.routes[path] = reply

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


# -- a planned outbox of many digests (worker and many-host tests) -------------------------------


def planned_outbox(folder: Path, url: str, n: int, *, day: str = DAY) -> list[str]:
    """Write a subscribers.toml of `n` people and plan their digests for `day` in the database at
    `url` through the pipeline (fetch from the fixture feed, sync, plan), as `send --date` would;
    returns their addresses. Saves each test's processes the planning."""
    from digestbot import pipeline, schedule
    from digestbot.db import open_database
    from digestbot.sources.hf_daily import HFDailyPapers
    from digestbot.subscribers import load_subscribers

    emails = many_subscribers(folder, n)
    specs = load_subscribers(folder / "subscribers.toml")
    the_day = date.fromisoformat(day)
    as_of = schedule.as_of(the_day, datetime.now(UTC))
    engine = open_database(url)
    try:
        pipeline.fetch_and_store(
            engine,
            source=HFDailyPapers(feed_url=str(FIXTURES), client=None),
            feed_url=str(FIXTURES),
            today=the_day,
            lookback=2,
            clock=lambda: as_of,
        )
        recipients = pipeline.sync_subscribers(engine, specs, now=as_of)
        plan = pipeline.plan_digests(
            engine, recipients, as_of=as_of, lookback=2, day=the_day, from_addr=FROM, now=as_of
        )
    finally:
        engine.dispose()
    assert plan.planned == n, plan
    return emails
