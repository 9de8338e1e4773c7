"""Concurrency: two real `digestbot send` processes at once, or one beside the running daemon.

Digests are claimed in the database, so every subscriber gets exactly one digest and none is skipped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from digestbot.cli import cli
from tests.helpers import (
    DAY,
    SMTPServer,
    bot_env,
    digest_rows,
    fixture_day,
    many_subscribers,
    run_digestbot,
    shift_items,
    slow_server,
    start,
    write_day,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def slower_smtp() -> Iterator[SMTPServer]:
    yield from slow_server(0.04)


def _exactly_once(server: SMTPServer, emails: list[str], url: str, period: str) -> None:
    copies = Counter(r for m in server.handler.received for r in m.rcpt_tos)
    assert sorted(copies) == sorted(emails), f"skipped: {sorted(set(emails) - set(copies))}"
    assert max(copies.values()) == 1, f"sent twice: {[e for e, n in copies.items() if n > 1]}"
    rows = digest_rows(url)
    assert len(rows) == len(emails)
    assert {(email, p, state) for email, p, state, _, _ in rows} == {
        (e, period, "sent") for e in emails
    }
    assert all(attempts == 1 for *_, attempts in rows)


@pytest.mark.parametrize("fresh", [False, True], ids=["fetched", "fresh-db"])
def test_two_sends_at_once_deliver_each_digest_once(
    workdir: Path, slower_smtp: SMTPServer, db_url: str, fresh: bool
) -> None:
    """Two `digestbot send` started together (on a fetched or a brand-new database) send every subscriber exactly one digest."""
    emails = many_subscribers(workdir, 150)
    # one worker each, claiming a second's sending at a time (25 digests): six claims to share
    env = bot_env(
        slower_smtp,
        DIGESTBOT_DATABASE_URL=db_url,
        DIGESTBOT_WORKERS="1",
        DIGESTBOT_SMTP_RATE="25",
    )
    args = ["send", "--date", DAY]
    if not fresh:
        assert CliRunner().invoke(cli, ["fetch", "--date", DAY], env=env).exit_code == 0
        args.append("--no-fetch")
    logs = [workdir / "a.log", workdir / "b.log"]
    procs = [start(args, env, workdir, log) for log in logs]
    codes = [p.wait(timeout=60) for p in procs]
    output = "\n".join(log.read_text() for log in logs)
    assert codes == [0, 0], output
    _exactly_once(slower_smtp, emails, db_url, DAY)
    assert len(set(slower_smtp.handler.peers)) == 2, "both processes should have delivered a share"


def test_send_while_daemon_runs_delivers_each_digest_once(
    workdir: Path, feed_dir: Path, slower_smtp: SMTPServer
) -> None:
    """A `digestbot send` started while the daemon plans and sends the same day gives every subscriber exactly one digest."""
    now = datetime.now(UTC)
    today = now.date()
    items = shift_items(fixture_day(DAY), today, not_after=now - timedelta(minutes=5))
    write_day(feed_dir, today.isoformat(), items)
    emails = many_subscribers(workdir, 40, send_at="00:00")  # the send time has passed
    url = os.environ["DIGESTBOT_DATABASE_URL"]
    env = bot_env(slower_smtp)
    assert CliRunner().invoke(cli, ["fetch"], env=env).exit_code == 0  # database ready for both
    daemon = start(["run"], env, workdir, workdir / "daemon.log")
    try:
        time.sleep(0.3)
        sender = start(["send"], env, workdir, workdir / "send.log")
        assert sender.wait(timeout=60) == 0, (workdir / "send.log").read_text()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            rows = digest_rows(url)
            if len(rows) == len(emails) and all(state == "sent" for _, _, state, _, _ in rows):
                break
            assert daemon.poll() is None, (workdir / "daemon.log").read_text()
            time.sleep(0.1)
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=15)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
    assert daemon.returncode == 0, (workdir / "daemon.log").read_text()
    _exactly_once(slower_smtp, emails, url, today.isoformat())
    log = (workdir / "daemon.log").read_text()
    assert "Traceback" not in log, log


def test_claims_are_checked_by_pid_not_memory(workdir: Path, slower_smtp: SMTPServer) -> None:
    """A second `send` started while the first holds digests in flight leaves those alone (claims live in the database)."""
    emails = many_subscribers(workdir, 25)
    env = bot_env(slower_smtp)
    assert CliRunner().invoke(cli, ["fetch", "--date", DAY], env=env).exit_code == 0
    args = ["send", "--date", DAY, "--no-fetch"]
    first = start(args, env, workdir, workdir / "a.log")
    deadline = time.monotonic() + 30
    while not slower_smtp.handler.received and time.monotonic() < deadline:
        time.sleep(0.005)
    second = run_digestbot(args, env=env, cwd=workdir)
    assert first.wait(timeout=60) == 0, (workdir / "a.log").read_text()
    assert second.returncode == 0, second.stdout + second.stderr
    assert "took back" not in second.stderr  # a live sender's digests are not "reclaimed"
    _exactly_once(slower_smtp, emails, os.environ["DIGESTBOT_DATABASE_URL"], DAY)
