"""Shared test fixtures: real SQLite files, a real SMTP server, the feed from fixture files.

PostgreSQL tests run when DIGESTBOT_TEST_POSTGRES_URL is set; each test gets its own schema.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from hypothesis import settings

from digestbot.sources.http import FEED_ACCEPT, make_client
from tests.helpers import FIXTURES, PG_URL, FeedServer, SMTPHandler, SMTPServer, serve

# Property tests run on a shared 2-core machine, beside subprocesses and servers: how long one
# example took says nothing about digestbot, and Hypothesis's default 200 ms deadline made a
# slow example fail a run now and then. DIGESTBOT_HYPOTHESIS_PROFILE=thorough runs 2,000
# examples of each property test that does not set its own count.
settings.register_profile("digestbot", deadline=None)
settings.register_profile("thorough", deadline=None, max_examples=2000)
settings.load_profile(os.environ.get("DIGESTBOT_HYPOTHESIS_PROFILE", "digestbot"))

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


@pytest.fixture
def feed_dir(tmp_path: Path) -> Path:
    """A folder of saved daily responses (YYYY-MM-DD.json), copied from the fixtures."""
    target = tmp_path / "feed"
    target.mkdir()
    for f in FIXTURES.glob("20*.json"):
        shutil.copy(f, target / f.name)
    return target


# -- SMTP -----------------------------------------------------------------------------------


@pytest.fixture
def smtp_server() -> Iterator[SMTPServer]:
    """A real aiosmtpd server on a free loopback port."""
    with serve(SMTPHandler()) as server:
        yield server


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
        if (
            key.startswith("DIGESTBOT_")
            and not key.startswith("DIGESTBOT_TEST_")
            or key == "HF_TOKEN"
        ):
            monkeypatch.delenv(key, raising=False)
    (tmp_path / "subscribers.toml").write_text(SUBSCRIBERS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DIGESTBOT_FEED_URL", str(feed_dir))
    monkeypatch.setenv("DIGESTBOT_DATABASE_URL", f"sqlite:///{tmp_path / 'digestbot.db'}")
    return tmp_path


# -- feed HTTP server -----------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[FeedServer]:
    """A real HTTP server on 127.0.0.1 answering from a script (helpers.FeedServer)."""
    with FeedServer() as running:
        yield running


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    """The feed sources' HTTP client, asking for XML feeds."""
    with make_client(timeout=5, token=None, accept=FEED_ACCEPT) as c:
        yield c
