"""Crash safety: `digestbot send` killed with SIGKILL mid-send, again and again, then run to completion.

The only duplicate allowed is the message in flight at the moment of a kill, with the same Message-ID.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from digestbot.cli import cli
from digestbot.db import make_engine
from tests.conftest import SMTPHandler, SMTPServer, run_digestbot, serve

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
    """Accepts every message after `delay` seconds (a wide window to kill the sender in), noting the connection."""

    delay: float = 0.02
    peers: list[Any] = field(default_factory=list)

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        await asyncio.sleep(self.delay)
        self.peers.append(session.peer)
        return await super().handle_DATA(server, session, envelope)


def slow_server(delay: float) -> Iterator[SMTPServer]:
    with serve(SlowHandler(delay=delay)) as server:
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


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "X"


@pytest.fixture
def slow_smtp() -> Iterator[SMTPServer]:
    yield from slow_server(0.02)


@pytest.mark.slow
def test_send_killed_repeatedly_then_finished_sends_each_digest_once(
    workdir: Path, slow_smtp: SMTPServer
) -> None:
    """SIGKILL of a real `digestbot send` at random moments, four times, then a full run: everyone gets one digest, only in-flight ones repeat."""
    emails = many_subscribers(workdir, 40)
    env = bot_env(slow_smtp)
    assert CliRunner().invoke(cli, ["fetch", "--date", DAY], env=env).exit_code == 0
    handler = slow_smtp.handler
    rng = random.Random(os.environ.get("DIGESTBOT_TEST_SEED", "crash"))
    args = ["send", "--date", DAY, "--no-fetch"]
    log = workdir / "send.log"
    kills = 0
    for round_ in range(5):
        before = len(handler.received)
        proc = start(args, env, workdir, log)
        if round_ == 0:
            target = None  # a kill while starting up, planning or claiming
            deadline = time.monotonic() + rng.uniform(0.3, 1.0)
        else:
            target = before + rng.randint(1, 6)
            deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            if target is not None and len(handler.received) >= target:
                break
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.025))  # land anywhere in the next message, DATA included
        if proc.poll() is not None:
            break  # it finished before we got to kill it
        os.kill(proc.pid, signal.SIGKILL)
        kills += 1
        if round_ < 4:
            proc.wait()
        else:  # the last one stays a zombie (killed, not reaped yet) while the next run starts
            while _state(proc.pid) not in ("Z", "X"):
                time.sleep(0.001)
    assert kills >= 3, log.read_text()

    final = run_digestbot(args, env=env, cwd=workdir)
    proc.wait()
    assert final.returncode == 0, final.stdout + final.stderr
    assert_exactly_one_digest_each(
        handler, emails, os.environ["DIGESTBOT_DATABASE_URL"], kills=kills
    )

    again = run_digestbot(args, env=env, cwd=workdir)
    assert again.returncode == 0 and "sent 0" in again.stdout, again.stdout + again.stderr
