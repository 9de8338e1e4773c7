"""Delivery you can trust: outbox states, retries with backoff, setup failures, rate limit, check --smtp.

Everything runs against a real aiosmtpd server and a real database (SQLite, and PostgreSQL where the
test takes `db_url`); the clock of later runs is driven through deliver_due's `clock=` argument.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import ssl
import statistics
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from email.utils import getaddresses
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa
from aiosmtpd.smtp import AuthResult, LoginPassword
from hypothesis import given
from hypothesis import strategies as st
from sqlmodel import Session, select
from typer.testing import CliRunner, Result

from digestbot import app, pipeline
from digestbot.cli import cli
from digestbot.db import make_engine
from digestbot.errors import ConfigError, DeliverySetupError
from digestbot.mail.ratelimit import RateLimiter
from digestbot.models import Digest, Subscriber
from digestbot.settings import load_settings
from tests.helpers import SMTPHandler, SMTPServer, fixture_day, free_port, serve, write_day

DAY = "2026-03-04"
ADA, GRACE, ALAN = "ada@example.org", "grace@example.org", "alan@example.org"
PEOPLE = (ADA, GRACE, ALAN)
FROM = "Paper Digest <digest@lab.test>"  # the conftest default is the refused placeholder


# -- helpers --------------------------------------------------------------------------------


@dataclass
class Row:
    state: str
    attempts: int
    message_id: str
    last_error: str | None
    next_attempt_at: datetime | None
    first_attempt_at: datetime | None
    claimed_by: str | None
    period: str


@dataclass
class Bot:
    """digestbot pointed at a real SMTP server, through its CLI and its pipeline functions."""

    server: SMTPServer
    monkeypatch: pytest.MonkeyPatch
    workdir: Path

    def setenv(self, **env: str) -> None:
        for key, value in env.items():
            self.monkeypatch.setenv(key, value)

    def cli(self, *args: str, **env: str) -> Result:
        return CliRunner().invoke(cli, list(args), env={"COLUMNS": "400", **env})

    @property
    def url(self) -> str:
        return load_settings().database_url

    def rows(self) -> dict[str, Row]:
        engine = make_engine(self.url)
        try:
            with Session(engine) as s:
                out = {}
                for email, d in s.exec(select(Subscriber.email, Digest).join(Digest)):
                    out[email] = Row(
                        d.state,
                        d.attempts,
                        d.message_id,
                        d.last_error,
                        d.next_attempt_at,
                        d.first_attempt_at,
                        d.claimed_by,
                        d.period,
                    )
                return out
        finally:
            engine.dispose()

    def deliver(self, at: datetime) -> pipeline.DeliveryReport:
        """One delivery run in-process, as a run at `at` would do it."""
        settings = load_settings()
        d = app.delivery(settings)
        engine = app.database(settings)
        try:
            return pipeline.deliver_due(
                engine,
                backend=d.backend,
                mail=d.mail,
                policy=d.policy,
                limiter=d.limiter,
                clock=lambda: at,
            )
        finally:
            d.backend.close()
            engine.dispose()


@pytest.fixture
def bot(workdir: Path, smtp_server: SMTPServer, monkeypatch: pytest.MonkeyPatch) -> Bot:
    b = Bot(server=smtp_server, monkeypatch=monkeypatch, workdir=workdir)
    b.setenv(**{**smtp_server.env(), "DIGESTBOT_MAIL_FROM": FROM})
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    return b


@dataclass
class RecordingHandler(SMTPHandler):
    """Also records every DATA attempt (accepted or not), its connection and arrival time;
    `drop` closes the connection of the next N messages to an address without replying,
    `stall` holds them past the client's timeout."""

    attempts: list[tuple[str, str, Any]] = field(default_factory=list)  # rcpt, Message-ID, peer
    drop: dict[str, int] = field(default_factory=dict)
    arrivals: list[float] = field(default_factory=list)
    wall_arrivals: list[float] = field(default_factory=list)  # time.time() of each arrival
    stall: dict[str, int] = field(default_factory=dict)
    delay: float = 0.0

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        mid = _message_id(envelope.original_content)
        rcpt = envelope.rcpt_tos[0]
        self.attempts.append((rcpt, mid, session.peer))
        if self.drop.get(rcpt, 0) > 0:
            self.drop[rcpt] -= 1
            server.transport.close()
            return "421 4.4.2 gone"
        if self.stall.get(rcpt, 0) > 0:
            self.stall[rcpt] -= 1
            await asyncio.sleep(1.0)  # longer than the client's DIGESTBOT_SMTP_TIMEOUT
            return "451 4.4.2 too slow"
        if self.delay:
            await asyncio.sleep(self.delay)
        self.arrivals.append(time.monotonic())
        self.wall_arrivals.append(time.time())
        return await super().handle_DATA(server, session, envelope)


def _message_id(raw: bytes) -> str:
    for line in raw.split(b"\r\n"):
        if line.lower().startswith(b"message-id:"):
            return line.split(b":", 1)[1].strip().decode()
    return ""


def status_json(bot: Bot, **env: str) -> dict[str, Any]:
    """`digestbot status --json`, parsed (it must be one JSON object on stdout)."""
    result = bot.cli("status", "--json", **env)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    return data


def received_ids(handler: SMTPHandler, rcpt: str) -> list[str]:
    return [r.message["Message-ID"] for r in handler.to(rcpt)]


def write_subscribers(folder: Path, emails: list[str], keywords: str = '["model"]') -> None:
    body = '[defaults]\nsend_at = "07:00"\ntimezone = "UTC"\n'
    for e in emails:
        body += f'\n[[subscribers]]\nemail = "{e}"\nkeywords = {keywords}\n'
    (folder / "subscribers.toml").write_text(body)


# -- temporary and permanent replies --------------------------------------------------------


@pytest.mark.parametrize("stage", ["rcpt", "data"])
def test_temporary_reply_defers_with_backoff_then_gives_up(
    bot: Bot, db_url: str, stage: str
) -> None:
    """A 4xx reply defers only that digest with doubling, jittered, capped retry times, and fails it after the give-up time."""
    bot.setenv(
        DIGESTBOT_DATABASE_URL=db_url,
        DIGESTBOT_RETRY_INITIAL="60",
        DIGESTBOT_RETRY_MAX="240",
        DIGESTBOT_RETRY_GIVE_UP="1000",
    )
    handler = bot.server.handler
    (handler.reject_rcpt if stage == "rcpt" else handler.reject_data)[GRACE] = "451 4.3.0 try later"

    t0 = datetime.now(UTC)
    result = bot.cli("send", "--date", DAY)
    t1 = datetime.now(UTC)

    assert result.exit_code == 1, result.output
    assert "deferred grace@example.org" in result.output and "451 4.3.0 try later" in result.output
    assert sorted(r for m in handler.received for r in m.rcpt_tos) == [ADA, ALAN]
    rows = bot.rows()
    assert rows[ADA].state == rows[ALAN].state == "sent"
    g = rows[GRACE]
    assert (g.state, g.attempts) == ("deferred", 1)
    assert "451 4.3.0 try later" in (g.last_error or "")
    assert g.next_attempt_at is not None
    assert t0 + timedelta(seconds=30) <= g.next_attempt_at <= t1 + timedelta(seconds=60)

    bases = []
    at = g.next_attempt_at
    for _ in range(20):
        early = bot.deliver(at - timedelta(seconds=1))
        assert not (early.sent or early.deferred or early.failed), (
            "a retry went out before its time"
        )
        report = bot.deliver(at)
        row = bot.rows()[GRACE]
        assert row.claimed_by is None
        if row.state == "failed":
            assert [e for e, _ in report.failed] == [GRACE]
            break
        assert [e for e, _ in report.deferred] == [GRACE] and not report.sent
        assert row.state == "deferred" and row.attempts == len(bases) + 2
        assert row.next_attempt_at is not None
        delay = (row.next_attempt_at - at).total_seconds()
        base = min(240.0, 60.0 * 2 ** (row.attempts - 1))
        assert base / 2 - 0.01 <= delay <= base + 0.01, (row.attempts, delay)
        bases.append(base)
        at = row.next_attempt_at
    else:
        pytest.fail("the digest was never given up")

    assert bases[:3] == [120.0, 240.0, 240.0]
    assert row.first_attempt_at is not None
    assert (at - row.first_attempt_at).total_seconds() >= 1000
    assert "gave up" in (row.last_error or "") and "451 4.3.0 try later" in (row.last_error or "")
    assert handler.to(GRACE) == []
    assert bot.rows()[ADA].attempts == 1 and len(handler.to(ADA)) == 1


@pytest.mark.parametrize("stage", ["rcpt", "data"])
def test_deferred_digest_is_sent_later_with_same_message_id(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, stage: str
) -> None:
    """After a 4xx, a later run past the retry time sends the deferred digest with the Message-ID it was planned with."""
    handler = RecordingHandler()
    with serve(handler) as server:
        b = Bot(server=server, monkeypatch=monkeypatch, workdir=workdir)
        b.setenv(**{**server.env(), "DIGESTBOT_MAIL_FROM": FROM})
        (handler.reject_rcpt if stage == "rcpt" else handler.reject_data)[ALAN] = (
            "452 4.2.2 mailbox full"
        )
        assert b.cli("send", "--date", DAY).exit_code == 1
        row = b.rows()[ALAN]
        assert row.state == "deferred" and row.next_attempt_at is not None

        handler.reject_rcpt.clear()
        handler.reject_data.clear()
        assert b.deliver(row.next_attempt_at - timedelta(seconds=5)).sent == 0
        report = b.deliver(row.next_attempt_at)
        assert report.sent == 1 and report.ok

    assert received_ids(handler, ALAN) == [row.message_id]
    if stage == "data":  # the refused attempt carried the same Message-ID too
        assert [mid for rcpt, mid, _ in handler.attempts if rcpt == ALAN] == [row.message_id] * 2
    after = b.rows()[ALAN]
    assert (after.state, after.attempts, after.last_error) == ("sent", 2, None)
    assert all(len(handler.to(p)) == 1 for p in PEOPLE)


def test_permanent_reply_fails_is_listed_and_retry_requeues(bot: Bot, db_url: str) -> None:
    """A 5xx fails that digest at once, `status` shows subscriber, attempts and reply, and `retry EMAIL` gets it sent next run."""
    bot.setenv(DIGESTBOT_DATABASE_URL=db_url)
    handler = bot.server.handler
    handler.reject_rcpt[ADA] = "550 5.1.1 no such user"

    result = bot.cli("send", "--date", DAY)
    assert result.exit_code == 1
    assert "failed ada@example.org" in result.output and "550 5.1.1 no such user" in result.output
    rows = bot.rows()
    assert (rows[ADA].state, rows[ADA].attempts) == ("failed", 1)
    assert "550 5.1.1 no such user" in (rows[ADA].last_error or "")
    assert rows[ADA].next_attempt_at is None
    assert rows[GRACE].state == rows[ALAN].state == "sent"
    assert len(handler.to(GRACE)) == len(handler.to(ALAN)) == 1

    status = bot.cli("status")
    assert status.exit_code == 0, status.output
    lines = status.output.splitlines()
    at = next(i for i, ln in enumerate(lines) if ADA in ln)
    entry = " ".join(lines[at : at + 2])  # one entry: state, subscriber, attempts, then the reply
    assert "failed" in entry and re.search(r"\battempts\D{0,3}1\b|\b1\b", entry)
    assert "550 5.1.1 no such user" in entry
    assert GRACE not in status.output

    # a second send does not retry a failed digest by itself
    assert bot.cli("send", "--date", DAY, "--no-fetch").exit_code == 0
    assert handler.to(ADA) == []

    handler.reject_rcpt.clear()
    requeue = bot.cli("retry", ADA)
    assert requeue.exit_code == 0 and "requeued 1" in requeue.output
    assert (bot.rows()[ADA].state, bot.rows()[ADA].attempts) == ("planned", 0)

    again = bot.cli("send", "--date", DAY, "--no-fetch")
    assert again.exit_code == 0, again.output
    assert received_ids(handler, ADA) == [rows[ADA].message_id]
    assert len(handler.to(GRACE)) == len(handler.to(ALAN)) == 1
    assert bot.rows()[ADA].state == "sent"


@pytest.mark.parametrize("how", ["drop", "timeout"])
def test_dropped_connection_defers_and_next_digest_reconnects(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """A connection dropped (or timed out) mid-message defers that digest; the next digest goes out on a new connection in the same run."""
    handler = RecordingHandler(**({"drop": {ADA: 1}} if how == "drop" else {"stall": {ADA: 1}}))
    with serve(handler) as server:
        b = Bot(server=server, monkeypatch=monkeypatch, workdir=workdir)
        b.setenv(**{**server.env(), "DIGESTBOT_MAIL_FROM": FROM}, DIGESTBOT_SMTP_TIMEOUT="0.5")
        result = b.cli("send", "--date", DAY)
        assert result.exit_code == 1
        assert "deferred ada@example.org" in result.output
        rows = b.rows()
        assert (rows[ADA].state, rows[ADA].attempts) == ("deferred", 1)
        assert "lost" in (rows[ADA].last_error or "")
        handler.received[:] = [
            m for m in handler.received if ADA not in m.rcpt_tos
        ]  # a stalled one may land
        assert rows[GRACE].state == rows[ALAN].state == "sent"
        dropped_peer = next(peer for rcpt, _, peer in handler.attempts if rcpt == ADA)
        later_peers = {peer for rcpt, _, peer in handler.attempts if rcpt != ADA}
        assert len(later_peers) == 1 and dropped_peer not in later_peers

        assert rows[ADA].next_attempt_at is not None
        assert b.deliver(rows[ADA].next_attempt_at).sent == 1
    assert received_ids(handler, ADA) == [rows[ADA].message_id]
    assert [mid for rcpt, mid, _ in handler.attempts if rcpt == ADA] == [rows[ADA].message_id] * 2


# -- the server cannot be used at all -------------------------------------------------------


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def _login_ok(server, session, envelope, mechanism, auth_data):  # type: ignore[no-untyped-def]
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == b"digest"
        and auth_data.password == b"s3cret"
    )
    return AuthResult(success=ok, handled=False)


@contextmanager
def failing_setup(
    kind: str, bot: Bot, cert: tuple[Path, Path]
) -> Iterator[tuple[dict[str, str], dict[str, str], str, SMTPHandler]]:
    """(env of the broken run, env of the fixed run, the setting the error must name, the server's handler)."""
    handler = SMTPHandler()
    if kind == "unreachable":
        yield (
            {"DIGESTBOT_SMTP_PORT": str(free_port())},
            {},
            "DIGESTBOT_SMTP_PORT",
            bot.server.handler,
        )
    elif kind == "login":
        with serve(handler, authenticator=_login_ok, auth_require_tls=False) as s:
            port = {"DIGESTBOT_SMTP_PORT": str(s.port), "DIGESTBOT_SMTP_USERNAME": "digest"}
            yield (
                {**port, "DIGESTBOT_SMTP_PASSWORD": "wrong"},
                {**port, "DIGESTBOT_SMTP_PASSWORD": "s3cret"},
                "DIGESTBOT_SMTP_PASSWORD",
                handler,
            )
    else:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
        with serve(handler, tls_context=ctx, require_starttls=True) as s:
            env = {"DIGESTBOT_SMTP_PORT": str(s.port), "DIGESTBOT_SMTP_SECURITY": "starttls"}
            yield env, {**env, "SSL_CERT_FILE": str(cert[0])}, "DIGESTBOT_SMTP_SECURITY", handler


def _setup_failure_then_recovery(bot: Bot, kind: str, cert: tuple[Path, Path]) -> None:
    with failing_setup(kind, bot, cert) as (bad, good, setting, handler):
        result = bot.cli("send", "--date", DAY, **bad)
        assert result.exit_code == 1, result.output
        assert setting in result.output and "nothing more was attempted" in result.output
        if kind == "tls":
            assert "certificate verify failed" in result.output
        assert handler.received == []
        rows = bot.rows()
        assert sorted(rows) == sorted(PEOPLE)
        assert all(
            (r.state, r.attempts, r.claimed_by, r.last_error) == ("planned", 0, None, None)
            for r in rows.values()
        ), rows
        status = bot.cli("status", **bad)
        line = next(ln for ln in status.stdout.splitlines() if ln.startswith("delivery:"))
        assert "FAILING" in line and setting in line, status.output
        assert re.search(r"since \d{4}-\d\d-\d\d \d\d:\d\d UTC", line), line
        data = status_json(bot, **bad)
        assert data["waiting_for_retry"] == data["failed"] == []
        assert data["digests"]["planned"] == 3
        health = data["delivery"]
        assert health["failing"] is True and setting in health["last_error"]
        assert health["last_error_at"].endswith("Z") and health["errors_in_a_row"] == 1

        fixed = bot.cli("send", "--date", DAY, "--no-fetch", **good)
        assert fixed.exit_code == 0, fixed.output
        assert sorted(r for m in handler.received for r in m.rcpt_tos) == sorted(PEOPLE)
        assert all((r.state, r.attempts) == ("sent", 1) for r in bot.rows().values())
        line = next(
            ln for ln in bot.cli("status", **good).stdout.splitlines() if ln.startswith("delivery:")
        )
        assert "FAILING" not in line and line.startswith("delivery: ok"), line
        health = status_json(bot, **good)["delivery"]
        assert health["failing"] is False and health["last_ok_at"] >= health["last_error_at"]


def test_unreachable_server_stops_run_and_attempts_nothing(
    bot: Bot, db_url: str, self_signed: tuple[Path, Path]
) -> None:
    """A closed SMTP port stops the run naming the host/port settings, leaves every digest planned with 0 attempts, and the next run sends all."""
    bot.setenv(DIGESTBOT_DATABASE_URL=db_url)
    _setup_failure_then_recovery(bot, "unreachable", self_signed)


@pytest.mark.parametrize("kind", ["login", "tls"])
def test_refused_login_or_unverified_tls_stops_run_and_attempts_nothing(
    bot: Bot, kind: str, self_signed: tuple[Path, Path]
) -> None:
    """A refused login, or a STARTTLS certificate that does not verify (the same server works once SSL_CERT_FILE trusts it), stops the run naming the setting and attempts nothing."""
    _setup_failure_then_recovery(bot, kind, self_signed)


# -- rate limit -----------------------------------------------------------------------------


def test_rate_setting_spaces_messages_across_a_run(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DIGESTBOT_SMTP_RATE caps messages per second over the whole run, across claim batches."""
    n = 155
    write_subscribers(workdir, [f"reader{i:02d}@example.org" for i in range(n)])
    handler = RecordingHandler()
    with serve(handler) as server:
        b = Bot(server=server, monkeypatch=monkeypatch, workdir=workdir)
        b.setenv(**{**server.env(), "DIGESTBOT_MAIL_FROM": FROM}, DIGESTBOT_SMTP_RATE="50")
        result = b.cli("send", "--date", DAY)
    assert result.exit_code == 0, result.output
    assert len(handler.received) == n
    span = handler.arrivals[-1] - handler.arrivals[0]
    assert span >= (n - 1) / 50 * 0.9, span
    gaps = [b_ - a for a, b_ in itertools.pairwise(handler.arrivals)]
    assert statistics.median(gaps) >= 0.8 / 50, gaps  # evenly spaced, not bursts
    # and no burst at a claim-batch boundary either (a claim holds a second of sending)
    batch = int(pipeline.BUILT_AHEAD * 50)
    assert handler.arrivals[batch] - handler.arrivals[batch - 2] >= 1.5 / 50, gaps
    # each message is built just before its turn: its Date (whole seconds) is at most about
    # BUILT_AHEAD older than its arrival, however long the run
    for message, arrived in zip(handler.received, handler.wall_arrivals, strict=True):
        built = message.message["Date"].datetime.timestamp()
        assert 0 <= arrived - built < pipeline.BUILT_AHEAD + 1.5, (arrived, built)


def test_outcome_log_lines_wait_at_most_a_quarter_second_and_none_is_lost(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A run writes its outcome lines several at a time (at a claim batch's end), but under a
    slow rate none waits longer than LOG_EVERY; each digest gets its line, in order."""
    from digestbot import outbox

    now = [1000.0]
    monkeypatch.setattr(pipeline, "time", SimpleNamespace(monotonic=lambda: now[0]))
    lines = pipeline._OutcomeLines()

    def digest(n: int) -> outbox.StoredDigest:
        return outbox.StoredDigest(
            id=n,
            email=f"r{n}@example.org",
            name=None,
            period=DAY,
            message_id=f"<{n}@x>",
            more_count=0,
            attempts=0,
            items=(),
        )

    def logged() -> list[str]:
        return [r.getMessage().split(" ")[2] for r in caplog.records]

    caplog.set_level("INFO", logger="digestbot")
    lines.add(digest(1), outbox.Outcome.SENT, "")
    now[0] += 0.1
    lines.add(digest(2), outbox.Outcome.DEFERRED, "451 busy")
    assert logged() == []
    now[0] += pipeline.LOG_EVERY
    lines.add(digest(3), outbox.Outcome.SENT, "")  # the first has waited long enough
    assert logged() == ["r1@example.org", "r2@example.org", "r3@example.org"]
    lines.add(digest(4), outbox.Outcome.SENT, "")
    assert len(logged()) == 3
    lines.flush()  # the batch's end
    assert logged()[3:] == ["r4@example.org"]
    assert "451 busy" in caplog.records[1].getMessage()


def test_rate_limiter_spaces_sends_on_its_clock(bot: Bot) -> None:
    """The rate limiter given to deliver_due lets at most `rate` messages out per second of its clock."""
    assert bot.cli("fetch", "--date", DAY).exit_code == 0
    settings = load_settings()
    engine = app.database(settings)
    recipients = pipeline.sync_subscribers(engine, app.load_people(settings), now=datetime.now(UTC))
    pipeline.plan_digests(
        engine,
        recipients,
        as_of=datetime(2026, 3, 5, tzinfo=UTC),
        lookback=2,
        day=date.fromisoformat(DAY),
        from_addr=FROM,
        now=datetime.now(UTC),
    )
    fake = [100.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        fake[0] += seconds

    sent_at: list[float] = []
    d = app.delivery(settings)
    report = pipeline.deliver_due(
        engine,
        backend=d.backend,
        mail=d.mail,
        policy=d.policy,
        clock=lambda: datetime.now(UTC),
        limiter=RateLimiter(2.0, clock=lambda: fake[0], sleep=sleep),
        on_result=lambda _e, _o: sent_at.append(fake[0]),
    )
    d.backend.close()
    engine.dispose()
    assert report.sent == 3
    assert [b - a for a, b in itertools.pairwise(sent_at)] == [0.5, 0.5]
    assert sleeps == [0.5, 0.5]


# -- check --smtp ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["plain", "login", "unreachable", "login refused"])
def test_check_smtp_reports_what_works_and_sends_nothing(bot: Bot, case: str) -> None:
    """`check --smtp` says whether the feed and the SMTP server (and login) work, exits 1 naming the setting when not, and sends nothing."""
    handler = SMTPHandler()
    with serve(handler, authenticator=_login_ok, auth_require_tls=False) as auth:
        env = {
            "plain": {},
            "login": {
                "DIGESTBOT_SMTP_PORT": str(auth.port),
                "DIGESTBOT_SMTP_USERNAME": "digest",
                "DIGESTBOT_SMTP_PASSWORD": "s3cret",
            },
            "unreachable": {"DIGESTBOT_SMTP_PORT": str(free_port())},
            "login refused": {
                "DIGESTBOT_SMTP_PORT": str(auth.port),
                "DIGESTBOT_SMTP_USERNAME": "digest",
                "DIGESTBOT_SMTP_PASSWORD": "nope",
            },
        }[case]
        result = bot.cli("check", "--smtp", **env)
    out = result.output
    assert "source hf: ok" in out
    if case in ("plain", "login"):
        assert result.exit_code == 0, out
        assert "smtp: ok" in out
        if case == "login":
            assert "logged in as digest" in out
    else:
        assert result.exit_code == 1, out
        assert "smtp: FAILED" in out
        assert (
            "DIGESTBOT_SMTP_PORT" if case == "unreachable" else "DIGESTBOT_SMTP_PASSWORD"
        ) in out
    assert bot.server.handler.received == [] and handler.received == []


# -- envelope -------------------------------------------------------------------------------


def test_envelope_recipient_is_only_the_subscriber(bot: Bot, feed_dir: Path) -> None:
    """Whatever a paper's title, authors or abstract contain, each message goes to exactly its subscriber and no one else."""
    items = fixture_day(DAY)
    evil = json.loads(json.dumps(items[0]))
    paper = evil["paper"]
    paper["id"] = "2603.99999"
    paper["title"] = (
        "Diffusion agents for transformer reasoning, cc: evil@attacker.test; To: <evil@attacker.test>"
    )
    paper["summary"] = (
        "Speculative decoding with diffusion.\n.\nRCPT TO:<evil@attacker.test>\r\nBcc: evil@attacker.test\n"
        "DATA\nSubject: owned\n\n.\nQUIT\n"
    )
    paper["authors"][0]["name"] = "Mallory <evil@attacker.test>, Eve <eve@attacker.test>"
    write_day(feed_dir, DAY, [evil, *items])

    result = bot.cli("send", "--date", DAY)
    assert result.exit_code == 0, result.output
    received = bot.server.handler.received
    assert sorted(r for m in received for r in m.rcpt_tos) == sorted(PEOPLE)
    assert "evil@attacker.test" in received[0].raw.decode("utf-8", "replace") or any(
        "2603.99999" in m.raw.decode() for m in received
    )
    for m in received:
        assert m.mail_from == "digest@lab.test"
        assert len(m.rcpt_tos) == 1
        msg = m.message
        assert [a for _, a in getaddresses(msg.get_all("To", []))] == m.rcpt_tos
        assert msg["Cc"] is None and msg["Bcc"] is None
        assert "owned" not in str(msg["Subject"])


def test_connection_closed_by_the_server_while_idle_is_reopened() -> None:
    """When the server drops a connection left idle between two digests, the next one still goes out."""
    from digestbot.mail.backends import Envelope, SMTPBackend

    handler = SMTPHandler()
    with serve(handler, timeout=0.3) as server:
        backend = SMTPBackend(
            host=server.host, port=server.port, security="none", idle_probe_after=0.1
        )
        raw = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: x\r\n\r\nhello\r\n"
        backend.send(Envelope(sender="a@example.org", recipient="b@example.org", raw=raw, name="1"))
        time.sleep(0.8)  # the server's idle timeout closes the session
        backend.send(Envelope(sender="a@example.org", recipient="c@example.org", raw=raw, name="2"))
        backend.close()
    assert [r.rcpt_tos for r in handler.received] == [["b@example.org"], ["c@example.org"]]


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "plain"])
def test_messages_and_refusals_are_the_same_with_or_without_pipelining(pipelining: bool) -> None:
    """With a server that offers PIPELINING and with one that does not, messages (dot-leading lines included) arrive byte for byte, a refused or deferred recipient is classified the same, and the connection keeps working."""
    from digestbot.errors import PermanentDeliveryError, TemporaryDeliveryError
    from digestbot.mail.backends import Envelope, SMTPBackend

    handler = SMTPHandler(
        reject_rcpt={"gone@example.org": "550 5.1.1 no such user"},
        reject_data={"busy@example.org": "451 4.3.0 try later"},
        pipelining=pipelining,
    )
    raw = b"From: a@example.org\r\nSubject: x\r\n\r\nhello\r\n.\r\n..two\r\n.end\r\n"
    order = ["b@example.org", "gone@example.org", "busy@example.org", "c@example.org"]
    with serve(handler) as server:
        backend = SMTPBackend(host=server.host, port=server.port, security="none")

        def send(i: int) -> None:
            then = order[i + 1] if i + 1 < len(order) else None
            backend.send(
                Envelope(sender="a@example.org", recipient=order[i], raw=raw, name=str(i)),
                then=then,
            )

        send(0)
        assert backend._conn is not None and backend._conn.has_extn("pipelining") == pipelining
        with pytest.raises(PermanentDeliveryError, match="550"):
            send(1)
        with pytest.raises(TemporaryDeliveryError, match="451"):
            send(2)
        send(3)
        backend.close()
    assert [(r.mail_from, r.rcpt_tos) for r in handler.received] == [
        ("a@example.org", ["b@example.org"]),
        ("a@example.org", ["c@example.org"]),
    ]
    assert all(r.raw == raw for r in handler.received)


def test_pipelining_takes_one_round_trip_a_message_and_an_unused_announcement_delivers_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With PIPELINING, each message after the first needs one write and one wait: its envelope went out with the previous content. An announced recipient that is not sent next (the run stopped, the next digest failed to compose) gets nothing: no empty message, and the message sent instead arrives once."""
    import smtplib

    from digestbot.mail.backends import Envelope, SMTPBackend

    writes: list[bytes] = []
    real_send = smtplib.SMTP.send

    def counting_send(self: smtplib.SMTP, s: str | bytes) -> None:
        writes.append(s.encode("ascii") if isinstance(s, str) else s)
        real_send(self, s)

    monkeypatch.setattr(smtplib.SMTP, "send", counting_send)
    handler = SMTPHandler()
    raw = b"From: a@example.org\r\nSubject: x\r\n\r\nhello\r\n"
    people = [f"p{i}@example.org" for i in range(5)]

    def envelope(to: str) -> Envelope:
        return Envelope(sender="a@example.org", recipient=to, raw=raw, name=to)

    with serve(handler) as server:
        backend = SMTPBackend(host=server.host, port=server.port, security="none")
        backend.open()
        writes.clear()  # EHLO is not a message's
        for i, to in enumerate(people):
            backend.send(envelope(to), then=people[i + 1] if i + 1 < len(people) else None)
        # the first message: its envelope, then its content; every other: its content only
        assert len(writes) == 1 + len(people)
        assert writes[1].endswith(
            b"\r\n.\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<p1@example.org>\r\nDATA\r\n"
        )
        backend.send(envelope("x@example.org"), then="never@example.org")
        backend.send(envelope("y@example.org"), then="also-never@example.org")  # not announced
        backend.close()  # with "also-never" announced: no QUIT, which would be its content
    assert [r.rcpt_tos for r in handler.received] == [
        [p] for p in [*people, "x@example.org", "y@example.org"]
    ]
    assert all(r.raw == raw for r in handler.received)


def test_each_digest_is_recorded_sent_before_the_next_message_reaches_the_server(
    bot: Bot, db_url: str
) -> None:
    """With PIPELINING the next digest's envelope travels with a message's content, but the next content goes out only once the message before it is recorded as sent: a crash leaves at most the message in hand unrecorded."""
    bot.setenv(DIGESTBOT_DATABASE_URL=db_url)
    handler = bot.server.handler
    snapshots: list[dict[str, str]] = []

    def on_data(envelope: object) -> None:
        rows = bot.rows()  # what the database says as this message's content arrives
        earlier = [r for m in handler.received for r in m.rcpt_tos]
        snapshots.append({e: rows[e].state for e in earlier})

    handler.on_data = on_data
    result = bot.cli("send", "--date", DAY)
    assert result.exit_code == 0, result.output
    assert sorted(r for m in handler.received for r in m.rcpt_tos) == sorted(PEOPLE)
    assert [len(s) for s in snapshots] == [0, 1, 2]
    assert all(state == "sent" for s in snapshots for state in s.values()), snapshots


def test_a_batch_is_built_before_it_is_sent_and_each_answer_goes_to_its_own_digest(
    bot: Bot, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim batch's messages are all built before the first reaches the server (no rate
    limit); each server answer is still recorded for the message it belongs to (a refused
    content defers that digest only) before the next content goes out."""
    bot.setenv(DIGESTBOT_DATABASE_URL=db_url)
    handler = bot.server.handler
    handler.reject_data[GRACE] = "451 4.3.0 try later"
    built: list[str] = []
    real_compose = pipeline.compose

    def compose(**kw: Any) -> bytes:
        built.append(kw["view"].subscriber_email)
        return real_compose(**kw)

    built_at_arrival: list[int] = []

    def on_data(envelope: Any) -> None:
        built_at_arrival.append(len(built))

    monkeypatch.setattr(pipeline, "compose", compose)
    handler.on_data = on_data
    result = bot.cli("send", "--date", DAY)
    assert result.exit_code == 1, result.output  # one digest deferred
    assert built == list(PEOPLE)
    assert built_at_arrival == [3, 3, 3]
    rows = bot.rows()
    assert {e: rows[e].state for e in PEOPLE} == {ADA: "sent", GRACE: "deferred", ALAN: "sent"}
    assert "451 4.3.0 try later" in (rows[GRACE].last_error or "")
    assert sorted(r for m in handler.received for r in m.rcpt_tos) == sorted([ADA, ALAN])


def test_a_template_failing_mid_batch_sends_the_digests_built_before_and_never_twice(
    bot: Bot, tmp_path: Path
) -> None:
    """When building a digest stops the run (a template that fails for that reader), the
    digests built before it in the batch are still sent and recorded, the rest are given back
    untouched, and the next run sends them once each."""
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "subject.txt.j2").write_text(
        f'{{{{ "Papers" if email != "{GRACE}" else no_such_name.attr }}}}\n'
    )
    result = bot.cli("send", "--date", DAY, DIGESTBOT_TEMPLATES_DIR=str(templates))
    assert result.exit_code == 2, result.output
    assert "subject.txt.j2" in result.output, result.output
    assert [m.rcpt_tos for m in bot.server.handler.received] == [[ADA]]
    rows = bot.rows()
    assert rows[ADA].state == "sent"
    assert [(rows[e].state, rows[e].attempts) for e in (GRACE, ALAN)] == [("planned", 0)] * 2
    fixed = bot.cli("send", "--date", DAY, "--no-fetch")
    assert fixed.exit_code == 0, fixed.output
    assert sorted(r for m in bot.server.handler.received for r in m.rcpt_tos) == sorted(PEOPLE)


# -- one address rule, outcomes, run-wide errors ----------------------------------------------


def test_retry_finds_a_subscriber_whatever_the_case_of_the_address(bot: Bot) -> None:
    """A subscriber written `Ada@Example.org` whose digest got a 550 is listed by `status`, and both `retry Ada@Example.org` and `retry ada@example.org` requeue it."""
    write_subscribers(bot.workdir, ["Ada@Example.org", GRACE])
    for spelling in ("Ada@Example.org", "Ada@example.org"):  # whether or not the domain is lowered
        bot.server.handler.reject_rcpt[spelling] = "550 5.1.1 no such user"
    assert bot.cli("send", "--date", DAY).exit_code == 1
    [ada] = [e for e in bot.rows() if e.lower() == ADA]
    assert ada.startswith("Ada@"), "the address is kept as written"
    assert ada in bot.cli("status").output
    for spelling in ("Ada@Example.org", "ada@example.org"):
        requeue = bot.cli("retry", spelling)
        assert requeue.exit_code == 0, requeue.output
        assert "requeued 1" in requeue.output
        assert bot.rows()[ada].state == "planned"
        assert bot.cli("send", "--date", DAY, "--no-fetch", "-s", "ADA@example.ORG").exit_code == 1
        assert bot.rows()[ada].state == "failed"
    preview = bot.cli("preview", "ada@EXAMPLE.org")
    assert preview.exit_code == 0, preview.output
    assert sorted(bot.rows()) == sorted([ada, GRACE])


@dataclass
class TakeoverHandler(SMTPHandler):
    """While a message is in DATA, another run takes its digest back (it claims the row for
    itself, as after a lease ran out); then the server answers `reply`."""

    url: str = ""
    reply: str = "250 OK"

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        engine = make_engine(self.url)
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "UPDATE digests SET claimed_by = 'elsewhere:1:1' WHERE state = 'sending' "
                    "AND subscriber_id = (SELECT id FROM subscribers WHERE email = :e)"
                ),
                {"e": envelope.rcpt_tos[0]},
            )
        engine.dispose()
        if self.reply.startswith("250"):
            return await super().handle_DATA(server, session, envelope)
        return self.reply


@pytest.mark.parametrize("reply", ["451 4.3.0 try later", "550 5.1.1 no such user", "250 OK"])
def test_digest_taken_over_by_another_run_is_reported_apart_and_exits_0(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, reply: str
) -> None:
    """A digest another run took back while we were sending it is reported as taken over, not deferred or failed, its row is left to that run, and the command exits 0."""
    write_subscribers(workdir, [ADA])
    handler = TakeoverHandler(url=f"sqlite:///{workdir / 'digestbot.db'}", reply=reply)
    with serve(handler) as server:
        b = Bot(server=server, monkeypatch=monkeypatch, workdir=workdir)
        b.setenv(**{**server.env(), "DIGESTBOT_MAIL_FROM": FROM})
        result = b.cli("send", "--date", DAY)
    assert result.exit_code == 0, result.output
    assert "taken over by another run" in result.output
    assert "deferred 0, failed 0" in result.output
    row = b.rows()[ADA]
    assert (row.state, row.claimed_by, row.attempts) == ("sending", "elsewhere:1:1", 0)


def _rsa_pem(folder: Path) -> Path:
    key = folder / "dkim.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
    return key


def test_template_that_does_not_render_exits_2_and_fails_no_digest(
    bot: Bot, tmp_path: Path
) -> None:
    """A template override that does not render stops `send` with exit 2 naming the file, sends nothing and leaves digests planned earlier untouched, never failed (a bad DKIM setting is refused earlier, at settings load: see test_settings)."""
    unreachable = bot.cli("send", "--date", DAY, DIGESTBOT_SMTP_PORT=str(free_port()))
    assert unreachable.exit_code == 1, unreachable.output  # plans the three digests only
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "subject.txt.j2").write_text("{{ no_such_name.attr }}\n")
    env = {"DIGESTBOT_TEMPLATES_DIR": str(templates)}
    result = bot.cli("send", "--date", DAY, "--no-fetch", **env)
    assert result.exit_code == 2, result.output
    assert "templates/subject.txt.j2:1" in result.output, result.output
    assert bot.server.handler.received == []
    rows = bot.rows()
    assert sorted(rows) == sorted(PEOPLE)
    assert all((r.state, r.attempts, r.last_error) == ("planned", 0, None) for r in rows.values())
    fixed = bot.cli("send", "--date", DAY, "--no-fetch")
    assert fixed.exit_code == 0, fixed.output
    assert len(bot.server.handler.received) == 3


def test_signing_key_that_does_not_work_stops_delivery_untouched(bot: Bot, db_url: str) -> None:
    """deliver_due given a DKIM key the signer cannot use raises ConfigError and leaves every claimed digest planned with 0 attempts."""
    bot.setenv(DIGESTBOT_DATABASE_URL=db_url)
    assert bot.cli("fetch", "--date", DAY).exit_code == 0
    settings = load_settings()
    engine = app.database(settings)
    recipients = pipeline.sync_subscribers(engine, app.load_people(settings), now=datetime.now(UTC))
    pipeline.plan_digests(
        engine,
        recipients,
        as_of=datetime(2026, 3, 5, tzinfo=UTC),
        lookback=2,
        day=date.fromisoformat(DAY),
        from_addr=FROM,
        now=datetime.now(UTC),
    )
    d = app.delivery(settings)
    broken = replace(d.mail, dkim_key=b"not a key", dkim_selector="mail", dkim_domain="lab.test")
    with pytest.raises(ConfigError):
        pipeline.deliver_due(
            engine, backend=d.backend, mail=broken, policy=d.policy, clock=lambda: datetime.now(UTC)
        )
    d.backend.close()
    engine.dispose()
    rows = bot.rows()
    assert sorted(rows) == sorted(PEOPLE)
    assert all((r.state, r.attempts, r.claimed_by) == ("planned", 0, None) for r in rows.values())
    assert bot.server.handler.received == []


# -- what an operator sees: status, the send summary, retry ------------------------------------


def test_delivery_error_met_by_a_daemon_run_is_recorded_until_the_server_answers(bot: Bot) -> None:
    """A delivery run (as the daemon runs it) that cannot reach the server records the error and its time for `status`, and a later run that hands a message over supersedes it."""
    bot.setenv(DIGESTBOT_SMTP_PORT=str(free_port()))
    assert bot.cli("send", "--date", DAY).exit_code == 1  # plans the digests, sends nothing
    at = (datetime.now(UTC) + timedelta(hours=1)).replace(second=0, microsecond=0)
    with pytest.raises(DeliverySetupError):
        bot.deliver(at)
    health = status_json(bot)["delivery"]
    assert health["failing"] is True and health["last_error_at"] == f"{at:%Y-%m-%dT%H:%M}:00Z"
    assert health["errors_in_a_row"] == 2 and "DIGESTBOT_SMTP_PORT" in health["last_error"]
    assert health["failing_since"] < health["last_error_at"] and health["last_ok_at"] is None
    assert f"last error {at:%Y-%m-%d %H:%M} UTC" in bot.cli("status").stdout

    bot.setenv(DIGESTBOT_SMTP_PORT=str(bot.server.port))
    later = at + timedelta(minutes=5)
    assert bot.deliver(later).sent == len(PEOPLE)
    assert {email for email, row in bot.rows().items() if row.state == "sent"} == set(PEOPLE)
    health = status_json(bot)["delivery"]
    assert health["failing"] is False and health["last_ok_at"] == f"{later:%Y-%m-%dT%H:%M}:00Z"
    assert health["errors_in_a_row"] == 0 and health["failing_since"] is None
    assert "DIGESTBOT_SMTP_PORT" in health["last_error"], "the last error is kept, superseded"


def test_deferred_digest_not_yet_due_is_named_by_send_and_status(bot: Bot, db_url: str) -> None:
    """A digest deferred by a 4xx and not yet due is mentioned by the next `send` (how many, next attempt time) and listed by `status` and `status --json` with subscriber, attempts, reply and next attempt."""
    bot.setenv(DIGESTBOT_DATABASE_URL=db_url)
    bot.server.handler.reject_rcpt[GRACE] = "451 4.3.0 try later"
    assert bot.cli("send", "--date", DAY).exit_code == 1
    nxt = bot.rows()[GRACE].next_attempt_at
    assert nxt is not None

    again = bot.cli("send", "--date", DAY, "--no-fetch")
    assert again.exit_code == 0, again.output
    assert "sent 0, deferred 0, failed 0" in again.stdout
    assert f"1 waiting for a later retry, next at {nxt:%Y-%m-%d %H:%M} UTC" in again.stdout

    status = bot.cli("status")
    lines = status.stdout.splitlines()
    at = next(i for i, ln in enumerate(lines) if GRACE in ln)
    entry = " ".join(lines[at : at + 2])
    assert "deferred" in entry and "attempts 1" in entry and "451 4.3.0 try later" in entry
    assert f"next try {nxt:%Y-%m-%d %H:%M} UTC" in entry

    data = status_json(bot)
    [waiting] = data["waiting_for_retry"]
    assert waiting["email"] == GRACE and waiting["attempts"] == 1 and waiting["period"] == DAY
    assert "451 4.3.0" in waiting["last_error"]
    assert datetime.fromisoformat(waiting["next_attempt_at"]) == nxt.replace(microsecond=0)
    assert waiting["next_attempt_at"].endswith("Z")
    assert (
        data["failed"] == [] and data["digests"]["deferred"] == 1 and data["digests"]["sent"] == 2
    )


def test_retry_requeues_failed_and_deferred_for_now_and_failed_only_keeps_the_old_rule(
    bot: Bot,
) -> None:
    """`retry` makes failed and deferred digests due at once (the next send delivers both, counted as retries); `retry --failed-only` leaves deferred ones to their retry time."""
    handler = bot.server.handler
    handler.reject_rcpt[ADA] = "550 5.1.1 no such user"
    handler.reject_rcpt[GRACE] = "451 4.3.0 try later"
    assert bot.cli("send", "--date", DAY).exit_code == 1
    handler.reject_rcpt.clear()

    only = bot.cli("retry", "--failed-only")
    assert only.exit_code == 0, only.output
    assert "requeued 1 failed digest(s)" in only.stdout
    rows = bot.rows()
    assert rows[ADA].state == "planned" and rows[GRACE].state == "deferred"
    assert bot.cli("send", "--date", DAY, "--no-fetch").exit_code == 0
    assert len(handler.to(ADA)) == 1 and handler.to(GRACE) == []

    requeue = bot.cli("retry", GRACE)
    assert requeue.exit_code == 0, requeue.output
    assert "requeued 0 failed and 1 deferred digest(s)" in requeue.stdout
    sent = bot.cli("send", "--date", DAY, "--no-fetch")
    assert sent.exit_code == 0, sent.output
    assert "sent 1, deferred 0, failed 0 (1 of them retries of earlier attempts)" in sent.stdout
    assert received_ids(handler, GRACE) == [rows[GRACE].message_id]
    assert bot.rows()[GRACE].state == "sent"


# -- check and send agree on what every message shares ------------------------------------------

_SECRET = {"DIGESTBOT_UNSUBSCRIBE_SECRET": "s" * 32}


@pytest.mark.parametrize(
    ("env", "accepted"),
    [
        ({"DIGESTBOT_MAIL_FROM": "Digest <digest@bücher.example>"}, True),
        ({"DIGESTBOT_UNSUBSCRIBE_EMAIL": "u@bücher.example"}, True),
        ({"DIGESTBOT_LIST_ID": "Bücher <digest.xn--bcher-kva.example>"}, True),
        (
            {"DIGESTBOT_UNSUBSCRIBE_URL": "https://example.org/unsubscribe?token={token}&a=b,c"}
            | _SECRET,
            False,
        ),
        (
            {"DIGESTBOT_UNSUBSCRIBE_URL": "https://example.org/unsubscribe?token={token}&a=b|c"}
            | _SECRET,
            False,
        ),
        (
            {"DIGESTBOT_UNSUBSCRIBE_URL": "https://exämple.org/unsubscribe?token={token}"}
            | _SECRET,
            False,
        ),
        (
            {"DIGESTBOT_UNSUBSCRIBE_URL": "https://example.org/unsubscribe/ü?token={token}"}
            | _SECRET,
            False,
        ),
    ],
)
def test_check_and_send_agree_and_no_digest_fails_on_mail_settings(
    bot: Bot, env: dict[str, str], accepted: bool
) -> None:
    """A setting that shapes every message is either accepted by check, send --dry-run and send alike (and mailed in ASCII headers) or refused by all three with exit 2, never failing a digest."""
    unreachable = bot.cli("send", "--date", DAY, DIGESTBOT_SMTP_PORT=str(free_port()))
    assert unreachable.exit_code == 1, unreachable.output  # plans the three digests only
    check = bot.cli("check", **env)
    dry = bot.cli("send", "--date", DAY, "--dry-run", **env)
    send = bot.cli("send", "--date", DAY, **env)
    want = 0 if accepted else 2
    for result in (check, dry, send):
        assert result.exit_code == want, result.output
    rows = bot.rows()
    assert sorted(rows) == sorted(PEOPLE)
    assert {r.state for r in rows.values()} == ({"sent"} if accepted else {"planned"})
    received = bot.server.handler.received
    assert len(received) == (3 if accepted else 0)
    for item in received:
        assert item.raw.isascii() and item.mail_from.isascii()
        for name in ("From", "To", "List-Id", "List-Unsubscribe"):
            assert not item.message[name].defects, (name, item.message[name])


def test_retry_finds_an_internationalized_domain_by_its_ascii_form(bot: Bot) -> None:
    """A subscriber written `ada@Bücher.example` whose digest failed is requeued by `retry ada@xn--bcher-kva.example` (address_key compares domains in IDNA)."""
    write_subscribers(bot.workdir, ["ada@Bücher.example", GRACE])
    for spelling in ("ada@xn--bcher-kva.example", "ada@Bücher.example", "ada@bücher.example"):
        bot.server.handler.reject_rcpt[spelling] = "550 5.1.1 no such user"
    sent = bot.cli("send", "--date", DAY)
    assert sent.exit_code == 1, sent.output
    [ada] = [e for e in bot.rows() if e != GRACE]
    assert bot.rows()[ada].state == "failed"
    requeue = bot.cli("retry", "ada@xn--bcher-kva.example")
    assert requeue.exit_code == 0, requeue.output
    assert "requeued 1" in requeue.output
    assert bot.rows()[ada].state == "planned"


def test_migration_0008_recomputes_address_keys_of_internationalized_domains(
    tmp_path: Path,
) -> None:
    """Upgrading a database at 0007 turns the stored key `ada@bücher.example` (and a suppression key) into its IDNA form and keeps ASCII keys."""
    from alembic import command

    from digestbot.db import alembic_config

    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    now = datetime(2026, 3, 4, tzinfo=UTC).isoformat()
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0007")
        for email in ("ada@Bücher.example", "grace@example.org"):
            conn.execute(
                sa.text(
                    "INSERT INTO subscribers (email, address_key, name, active, created_at,"
                    " updated_at) VALUES (:e, :k, NULL, 1, :t, :t)"
                ),
                {"e": email, "k": email.lower(), "t": now},
            )
        conn.execute(
            sa.text(
                "INSERT INTO suppressions (address_key, address, method, created_at)"
                " VALUES (:k, :a, 'web', :t)"
            ),
            {"k": "u@bücher.example", "a": "u@Bücher.example", "t": now},
        )
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "head")
        keys = set(conn.execute(sa.text("SELECT address_key FROM subscribers")).scalars())
        suppressed = set(conn.execute(sa.text("SELECT address_key FROM suppressions")).scalars())
    engine.dispose()
    assert keys == {"ada@xn--bcher-kva.example", "grace@example.org"}
    assert suppressed == {"u@xn--bcher-kva.example"}


_LINE = st.tuples(st.sampled_from([b"", b".", b".."]), st.binary(max_size=12)).map(
    lambda parts: parts[0] + parts[1].replace(b"\r", b"").replace(b"\n", b"")
)


@given(lines=st.lists(_LINE, max_size=12))
def test_dot_stuffing_is_undone_by_the_server_and_never_ends_the_data_early(
    lines: list[bytes],
) -> None:
    """Any message, with lines that start with dots or are a lone dot, goes out with a dot in
    front of each line that starts with one: no line of what is sent is a lone "." (which would
    end the data there), and a server taking one leading dot off each line gets the message back
    byte for byte (RFC 5321 §4.5.2)."""
    from digestbot.mail.backends import _dot_stuffed

    raw = b"".join(line + b"\r\n" for line in lines)
    sent = _dot_stuffed(raw).split(b"\r\n")
    assert b"." not in sent[:-1]
    assert b"\r\n".join(line[1:] if line.startswith(b".") else line for line in sent) == raw
