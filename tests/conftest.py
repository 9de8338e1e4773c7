"""Shared test fixtures: real SQLite files, a real SMTP server, the feed from fixture files.

PostgreSQL tests run when DIGESTBOT_TEST_POSTGRES_URL is set; each test gets its own schema.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller

FIXTURES = Path(__file__).parent / "fixtures" / "hf_daily_papers"
PG_URL = os.environ.get("DIGESTBOT_TEST_POSTGRES_URL")


# -- databases ------------------------------------------------------------------------------


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'digestbot.db'}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped afterwards."""
    if not PG_URL:
        pytest.skip("DIGESTBOT_TEST_POSTGRES_URL is not set")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each storage test runs on a fresh SQLite file and, when configured, a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'digestbot.db'}"
    else:
        yield request.getfixturevalue("pg_url")


# -- feed -----------------------------------------------------------------------------------


def fixture_day(day: str) -> list[dict[str, Any]]:
    return json.loads((FIXTURES / f"{day}.json").read_text())


@pytest.fixture
def feed_dir(tmp_path: Path) -> Path:
    """A folder of saved daily responses (YYYY-MM-DD.json), copied from the fixtures."""
    target = tmp_path / "feed"
    target.mkdir()
    for f in FIXTURES.glob("20*.json"):
        shutil.copy(f, target / f.name)
    return target


def write_day(folder: Path, day: str, items: list[dict[str, Any]]) -> None:
    (folder / f"{day}.json").write_text(json.dumps(items))


def shift_items(items: list[dict[str, Any]], to_day: date) -> list[dict[str, Any]]:
    """The same items, featured on another day (for tests that need papers near the real clock)."""
    out = json.loads(json.dumps(items))
    for it in out:
        old = datetime.fromisoformat(it["paper"]["submittedOnDailyAt"].replace("Z", "+00:00"))
        new = datetime.combine(to_day, old.timetz())
        it["paper"]["submittedOnDailyAt"] = new.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return out


# -- SMTP -----------------------------------------------------------------------------------


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
    """Records what it accepts; `reject_rcpt` / `reject_data` map an address to an SMTP reply."""

    received: list[Received] = field(default_factory=list)
    reject_rcpt: dict[str, str] = field(default_factory=dict)
    reject_data: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # type: ignore[no-untyped-def]
        if address in self.reject_rcpt:
            return self.reject_rcpt[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        for rcpt in envelope.rcpt_tos:
            if rcpt in self.reject_data:
                return self.reject_data[rcpt]
        with self.lock:
            self.received.append(
                Received(mail_from=envelope.mail_from, rcpt_tos=list(envelope.rcpt_tos), raw=envelope.original_content)
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


@pytest.fixture
def smtp_server() -> Iterator[SMTPServer]:
    """A real aiosmtpd server on a free loopback port."""
    with serve(SMTPHandler()) as server:
        yield server


def run_digestbot(
    args: list[str], *, env: dict[str, str], cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `python -m digestbot ARGS` as a real process and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "digestbot", *args],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False,
    )


# -- subscribers ----------------------------------------------------------------------------

SUBSCRIBERS = """
[defaults]
send_at = "07:00"
timezone = "UTC"
max_papers = 10

[[subscribers]]
email = "ada@example.org"
name = "Ada Lovelace"
keywords = ['"speculative decoding"', "diffusion"]
exclude = ["survey"]

[[subscribers]]
email = "grace@example.org"
name = "Grace Hopper"
keywords = ["agent", "reasoning"]

[[subscribers]]
email = "alan@example.org"
name = "Alan Turing"
keywords = ["reinforcement learning", "transformer"]
"""


@pytest.fixture
def workdir(tmp_path: Path, feed_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder with subscribers.toml, an offline feed and a SQLite database; cwd set there.

    The process environment is cleared of DIGESTBOT_* so only what a test sets applies.
    """
    for key in list(os.environ):
        if key.startswith("DIGESTBOT_") and not key.startswith("DIGESTBOT_TEST_") or key == "HF_TOKEN":
            monkeypatch.delenv(key, raising=False)
    (tmp_path / "subscribers.toml").write_text(SUBSCRIBERS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DIGESTBOT_FEED_URL", str(feed_dir))
    monkeypatch.setenv("DIGESTBOT_DATABASE_URL", f"sqlite:///{tmp_path / 'digestbot.db'}")
    return tmp_path


def day_start(day: str) -> datetime:
    return datetime.combine(date.fromisoformat(day), datetime.min.time(), tzinfo=UTC)


def after(day: str, hours: float) -> datetime:
    return day_start(day) + timedelta(hours=hours)
