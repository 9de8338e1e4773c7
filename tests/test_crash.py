"""Crash safety: `digestbot send` killed with SIGKILL mid-send, again and again, then run to completion.

The only duplicate allowed is the message in flight at the moment of a kill, with the same Message-ID.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from digestbot.cli import cli
from tests.helpers import (
    DAY,
    SMTPServer,
    assert_exactly_one_digest_each,
    bot_env,
    many_subscribers,
    run_digestbot,
    slow_server,
    start,
)


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
