"""The daemon (`digestbot run`): local send times, coalescing after downtime, failures, reload, signals.

In-process tests drive `Daemon.tick()` / `Daemon.fetch()` with a fake clock against a real SQLite
file, the offline feed folder and the file or SMTP backend. Subprocess tests run the real command.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import col

from digestbot import app
from digestbot.daemon import FRESH_FETCH, Daemon
from digestbot.db import open_database, session_scope
from digestbot.models import Digest, Subscriber
from digestbot.settings import Settings, load_settings
from digestbot.subscribers import SubscriberSpec, load_subscribers, parse_subscribers
from tests.helpers import SMTPServer, after, fixture_day, run_digestbot, shift_items, write_day

PAPER_LINK = re.compile(r"huggingface\.co/papers/(\d{4}\.\d{4,5})")


# -- helpers --------------------------------------------------------------------------------


class Clock:
    """A settable clock handed to the daemon in place of the wall clock."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass(frozen=True)
class Mail:
    name: str
    to: str
    subject: str
    papers: frozenset[str]


def mailbox(folder: Path) -> list[Mail]:
    """The digests the file backend wrote, oldest first."""
    out = []
    for path in sorted(folder.glob("*.eml")):
        msg: EmailMessage = message_from_bytes(path.read_bytes(), policy=default_policy)  # type: ignore[assignment]
        body = msg.get_body(preferencelist=("plain",))
        text = body.get_content() if body is not None else ""
        out.append(
            Mail(
                path.name,
                msg["To"].addresses[0].addr_spec,
                str(msg["Subject"]),
                frozenset(PAPER_LINK.findall(text)),
            )
        )
    return out


def to(mails: list[Mail], address: str) -> list[Mail]:
    return [m for m in mails if m.to == address]


def featured_days(feed: Path) -> dict[str, str]:
    """arXiv id → the day file of the feed folder it is featured in."""
    out = {}
    for path in sorted(feed.glob("20*.json")):
        for item in json.loads(path.read_text()):
            out[item["paper"]["id"]] = path.stem
    return out


def periods(engine: Engine) -> list[tuple[str, str, str]]:
    """(email, period, state) of every stored digest, in planning order."""
    with session_scope(engine) as s:
        rows = s.execute(
            sa.select(Subscriber.email, Digest.period, Digest.state)
            .join(Subscriber, Subscriber.id == Digest.subscriber_id)
            .order_by(Digest.id)
        ).all()
    return [tuple(r) for r in rows]  # type: ignore[misc]


@pytest.fixture
def make_settings(workdir: Path) -> Callable[..., Settings]:
    """Settings for the workdir (offline feed folder, SQLite file, file backend), plus overrides."""

    def build(**extra: str) -> Settings:
        env = {
            "DIGESTBOT_DATABASE_URL": f"sqlite:///{workdir / 'digestbot.db'}",
            "DIGESTBOT_FEED_URL": str(workdir / "feed"),
            "DIGESTBOT_SUBSCRIBERS": str(workdir / "subscribers.toml"),
            "DIGESTBOT_MAIL_BACKEND": "file",
            "DIGESTBOT_MAIL_DIR": str(workdir / "outbox"),
            **extra,
        }
        return load_settings(environ=env, env_file=None)

    return build


@pytest.fixture
def make_daemon() -> Iterator[Callable[..., Daemon]]:
    """Build a Daemon from settings with a fake clock; engines are disposed afterwards."""
    engines: list[Engine] = []

    def build(
        settings: Settings, clock: Clock, specs: list[SubscriberSpec] | None = None
    ) -> Daemon:
        engine = open_database(settings.database_url)
        engines.append(engine)
        if specs is None:
            specs = load_subscribers(settings.subscribers_path)
        return Daemon(
            settings=settings,
            engine=engine,
            specs=specs,
            delivery=app.delivery(settings),
            clock=clock,
        )

    yield build
    for engine in engines:
        engine.dispose()


def settings_env(workdir: Path) -> dict[str, str]:
    """The environment that points a real `digestbot` process at the workdir (as make_settings)."""
    return {
        "DIGESTBOT_DATABASE_URL": f"sqlite:///{workdir / 'digestbot.db'}",
        "DIGESTBOT_FEED_URL": str(workdir / "feed"),
        "DIGESTBOT_SUBSCRIBERS": str(workdir / "subscribers.toml"),
    }


def ticks(daemon: Daemon, clock: Clock, start: datetime, end: datetime, step: timedelta) -> None:
    clock.now = start
    while clock.now < end:
        daemon.tick()
        clock.now += step


# -- in-process: schedule -------------------------------------------------------------------


def test_nothing_before_send_at_then_exactly_one_digest_that_day(
    workdir: Path, make_settings: Callable[..., Settings], make_daemon: Callable[..., Daemon]
) -> None:
    """Before a subscriber's send_at nothing is sent; the first tick after it sends one digest each; later ticks that day send nothing more."""
    settings = make_settings()
    clock = Clock(after("2026-03-04", 0))
    daemon = make_daemon(settings, clock)

    ticks(daemon, clock, after("2026-03-04", 0), after("2026-03-04", 7), timedelta(minutes=10))
    assert mailbox(workdir / "outbox") == []

    clock.now = after("2026-03-04", 7)
    daemon.tick()
    sent = mailbox(workdir / "outbox")
    assert sorted(m.to for m in sent) == [
        "ada@example.org",
        "alan@example.org",
        "grace@example.org",
    ]
    assert all("for 2026-03-04" in m.subject and m.papers for m in sent)

    ticks(daemon, clock, after("2026-03-04", 7.25), after("2026-03-05", 0), timedelta(minutes=15))
    assert mailbox(workdir / "outbox") == sent


def test_each_subscriber_gets_the_digest_at_their_own_local_time(
    workdir: Path, make_settings: Callable[..., Settings], make_daemon: Callable[..., Daemon]
) -> None:
    """Subscribers at 07:00 in Tokyo and New York are mailed at their own local 07:00, for their local date."""
    (workdir / "subscribers.toml").write_text(
        """
[defaults]
send_at = "07:00"
send_empty = true

[[subscribers]]
email = "kenji@example.org"
timezone = "Asia/Tokyo"
keywords = ["diffusion"]

[[subscribers]]
email = "nora@example.org"
timezone = "America/New_York"
keywords = ["reasoning"]
"""
    )
    settings = make_settings()
    clock = Clock(after("2026-03-03", 23))
    daemon = make_daemon(settings, clock)
    daemon.tick()  # 08:00 on 4 March in Tokyo, 18:00 on 3 March in New York: both have their first digest
    assert sorted(m.name[:10] for m in mailbox(workdir / "outbox")) == ["2026-03-03", "2026-03-04"]

    seen = {m.name for m in mailbox(workdir / "outbox")}
    arrivals = []
    clock.now = after("2026-03-04", 0)
    while clock.now < after("2026-03-05", 0):  # one UTC day, a tick every 5 minutes
        daemon.tick()
        if len(list((workdir / "outbox").glob("*.eml"))) == len(seen):
            clock.now += timedelta(minutes=5)
            continue
        for m in mailbox(workdir / "outbox"):
            if m.name not in seen:
                seen.add(m.name)
                arrivals.append((clock.now, m.to, m.subject.rsplit(" for ", 1)[1]))
        clock.now += timedelta(minutes=5)

    assert arrivals == [
        (after("2026-03-04", 12), "nora@example.org", "2026-03-04"),  # 07:00 EST is 12:00 UTC
        (
            after("2026-03-04", 22),
            "kenji@example.org",
            "2026-03-05",
        ),  # 07:00 JST is 22:00 UTC the day before
    ]
    stored = periods(daemon.engine)
    assert ("kenji@example.org", "2026-03-05", "sent") in stored
    assert ("nora@example.org", "2026-03-04", "sent") in stored
    assert len(stored) == 4


def test_downtime_is_coalesced_into_one_digest_with_the_missed_days(
    workdir: Path,
    feed_dir: Path,
    make_settings: Callable[..., Settings],
    make_daemon: Callable[..., Daemon],
) -> None:
    """After three days down, the next tick sends one digest per subscriber holding the papers of every missed day."""
    for f in feed_dir.glob("*.json"):
        f.unlink()
    for source, day in [
        ("2026-03-02", 10),
        ("2026-03-03", 11),
        ("2026-03-04", 12),
        ("2026-03-05", 13),
    ]:
        write_day(feed_dir, f"2026-03-{day}", shift_items(fixture_day(source), date(2026, 3, day)))
    (workdir / "subscribers.toml").write_text(
        (workdir / "subscribers.toml").read_text().replace("max_papers = 10", "max_papers = 100")
    )
    settings = make_settings()
    assert settings.lookback_days == 2  # shorter than the downtime

    clock = Clock(after("2026-03-10", 7))
    make_daemon(settings, clock).tick()
    before = {m.name for m in mailbox(workdir / "outbox")}

    # Down on the 11th, 12th and 13th: no ticks, no fetches. A new process starts on the 14th.
    clock.now = after("2026-03-14", 7.5)
    daemon = make_daemon(settings, clock)
    daemon.tick()
    daemon.tick()

    new = [m for m in mailbox(workdir / "outbox") if m.name not in before]
    assert sorted(m.to for m in new) == ["ada@example.org", "alan@example.org", "grace@example.org"]
    assert all("for 2026-03-14" in m.subject for m in new)
    day_of = featured_days(feed_dir)
    for m in new:
        assert {"2026-03-11", "2026-03-12", "2026-03-13"} <= {day_of[p] for p in m.papers}, m.to
    assert [p for e, p, _ in periods(daemon.engine) if e == "ada@example.org"][-1] == "2026-03-14"
    assert not {p for e, p, _ in periods(daemon.engine)} & {
        "2026-03-11",
        "2026-03-12",
        "2026-03-13",
    }


def test_paper_featured_after_the_digest_comes_the_next_day_and_nothing_twice(
    workdir: Path,
    feed_dir: Path,
    make_settings: Callable[..., Settings],
    make_daemon: Callable[..., Daemon],
) -> None:
    """A paper featured after today's digest went out arrives in tomorrow's digest, and no paper is sent twice."""
    late = [
        it for it in fixture_day("2026-03-04") if it["paper"]["id"] == "2410.20502"
    ]  # diffusion, 08:07
    early = [
        it
        for it in fixture_day("2026-03-04")
        if it["paper"]["submittedOnDailyAt"] < "2026-03-04T07"
    ]
    write_day(feed_dir, "2026-03-04", early)
    settings = make_settings()
    clock = Clock(after("2026-03-04", 7))
    daemon = make_daemon(settings, clock)
    daemon.tick()
    first = {m.to: m for m in mailbox(workdir / "outbox")}
    assert "2410.20502" not in first["ada@example.org"].papers

    write_day(feed_dir, "2026-03-04", early + late)  # the feed features it at 08:07
    ticks(daemon, clock, after("2026-03-04", 8), after("2026-03-04", 12), timedelta(minutes=30))
    clock.now = after("2026-03-04", 12)
    daemon.fetch()  # the hourly fetch job stores it
    ticks(daemon, clock, after("2026-03-04", 12), after("2026-03-05", 7), timedelta(hours=1))
    assert {m.name for m in mailbox(workdir / "outbox")} == {m.name for m in first.values()}

    clock.now = after("2026-03-05", 7)
    daemon.tick()
    second = [
        m for m in mailbox(workdir / "outbox") if m.name not in {f.name for f in first.values()}
    ]
    ada = to(second, "ada@example.org")
    assert len(ada) == 1 and "2410.20502" in ada[0].papers and "for 2026-03-05" in ada[0].subject
    for m in second:
        if m.to in first:
            assert not m.papers & first[m.to].papers, m.to


# -- in-process: failures -------------------------------------------------------------------


def test_feed_failure_at_send_time_holds_digests_until_the_feed_answers(
    workdir: Path,
    feed_dir: Path,
    make_settings: Callable[..., Settings],
    make_daemon: Callable[..., Daemon],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A broken feed at send time is logged with its URL; digests wait for it, then go out with the day's papers."""
    good = (feed_dir / "2026-03-04.json").read_bytes()
    (feed_dir / "2026-03-04.json").write_text("<html><body>502 Bad Gateway</body></html>")
    settings = make_settings()
    clock = Clock(after("2026-03-04", 7))
    daemon = make_daemon(settings, clock)
    with caplog.at_level(logging.INFO, logger="digestbot"):
        daemon.tick()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors and str(feed_dir) in errors[0].getMessage()
    assert "HTML" in errors[0].getMessage()
    assert any("holding 3 digests" in r.getMessage() for r in caplog.records)
    assert mailbox(workdir / "outbox") == [] and periods(daemon.engine) == []

    (feed_dir / "2026-03-04.json").write_bytes(good)
    clock.now = after("2026-03-04", 7.5)  # the next fetch attempt, once the feed is back
    daemon.tick()
    sent = mailbox(workdir / "outbox")
    assert sorted(m.to for m in sent) == [
        "ada@example.org",
        "alan@example.org",
        "grace@example.org",
    ]
    day_of = featured_days(feed_dir)
    assert any(day_of[p] == "2026-03-04" for m in sent for p in m.papers)


def test_digests_go_out_anyway_when_the_feed_stays_down(
    workdir: Path,
    feed_dir: Path,
    make_settings: Callable[..., Settings],
    make_daemon: Callable[..., Daemon],
) -> None:
    """If the feed is still down hours after send time, the day's digests go out from the papers already stored."""
    settings = make_settings()
    clock = Clock(after("2026-03-04", 7))
    daemon = make_daemon(settings, clock)
    daemon.tick()  # the feed works: today's digests go out
    assert len(mailbox(workdir / "outbox")) == 3
    (feed_dir / "2026-03-05.json").write_text("<html><body>502 Bad Gateway</body></html>")
    for hour in (7, 8, 9, 9.5):
        clock.now = after("2026-03-05", hour)
        daemon.tick()
        assert len({p for _, p, _ in periods(daemon.engine)}) == 1, "held while the feed is down"
    clock.now = after("2026-03-05", 10.25)  # more than FEED_WAIT after send time
    daemon.tick()
    assert {p for _, p, _ in periods(daemon.engine)} == {"2026-03-04", "2026-03-05"}


EMMY = """
[[subscribers]]
email = "emmy@example.org"
keywords = ["zzzq-no-such-topic"]
send_empty = true
"""
TRUNCATED = '{"broken": '


def digest_notes(engine: Engine) -> dict[tuple[str, str], tuple[str, str | None]]:
    """(email, period) → (state, note) of every stored digest."""
    with session_scope(engine) as s:
        rows = s.execute(
            sa.select(
                col(Subscriber.email), col(Digest.period), col(Digest.state), col(Digest.note)
            ).join(Subscriber, col(Subscriber.id) == col(Digest.subscriber_id))
        ).all()
    return {(e, p): (st, note) for e, p, st, note in rows}


def test_truncated_feed_at_send_time_holds_digests_and_a_good_fetch_releases_them(
    workdir: Path,
    feed_dir: Path,
    make_settings: Callable[..., Settings],
    make_daemon: Callable[..., Daemon],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """When the scheduled fetch got a truncated response just before send time, nobody is mailed a false "nothing new" or marked skipped; the next good fetch releases the digests."""
    with (workdir / "subscribers.toml").open("a") as fh:
        fh.write(EMMY)
    settings = make_settings()
    clock = Clock(after("2026-03-04", 23))  # every paper of the 4th goes out on the 4th
    daemon = make_daemon(settings, clock)
    daemon.tick()
    first = {m.name for m in mailbox(workdir / "outbox")}
    assert len(first) == 4

    good = (feed_dir / "2026-03-05.json").read_bytes()
    (feed_dir / "2026-03-05.json").write_text(TRUNCATED)
    clock.now = after("2026-03-05", 6.9)
    with caplog.at_level(logging.INFO, logger="digestbot"):
        assert daemon.fetch() is False  # the hourly job, a few minutes before send time
        for minutes in range(0, 45, 5):  # ticks from 07:00; fetch retried every FRESH_FETCH
            clock.now = after("2026-03-05", 7) + timedelta(minutes=minutes)
            daemon.tick()
            assert {m.name for m in mailbox(workdir / "outbox")} == first
            assert [p for _, p, _ in periods(daemon.engine) if p == "2026-03-05"] == []
    failures = [r for r in caplog.records if "fetch from" in r.getMessage()]
    assert len(failures) >= 3, "the failed fetch is retried while digests are held"
    assert any("holding 4 digests" in r.getMessage() for r in caplog.records)

    (feed_dir / "2026-03-05.json").write_bytes(good)
    released = after("2026-03-05", 7.75)
    clock.now = released
    while not (new := [m for m in mailbox(workdir / "outbox") if m.name not in first]):
        assert clock.now - released <= FRESH_FETCH, "the next fetch attempt releases the hold"
        daemon.tick()
        clock.now += timedelta(minutes=1)
    day_of = featured_days(feed_dir)
    assert "emmy@example.org" in {m.to for m in new}  # send_empty: mailed once the day is known
    assert all("for 2026-03-05" in m.subject for m in new)
    assert any(day_of[p] == "2026-03-05" for m in new for p in m.papers)
    notes = digest_notes(daemon.engine)
    assert all(note is None for (_, p), (_, note) in notes.items())


def test_truncated_feed_past_the_hold_sends_stored_papers_with_a_note_and_no_false_empty_digest(
    workdir: Path,
    feed_dir: Path,
    make_settings: Callable[..., Settings],
    make_daemon: Callable[..., Daemon],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Once the hold expires on a still-broken feed, digests go out from stored papers with a note, an empty one is skipped with the feed's error instead of mailed, a WARNING names the feed and error, and `status` lists them."""
    with (workdir / "subscribers.toml").open("a") as fh:
        fh.write(EMMY)
    settings = make_settings()
    clock = Clock(after("2026-03-04", 7))
    daemon = make_daemon(settings, clock)
    daemon.tick()
    first = {m.name for m in mailbox(workdir / "outbox")}
    clock.now = after("2026-03-04", 20)
    assert daemon.fetch()  # stores the papers featured after today's digests

    (feed_dir / "2026-03-05.json").write_text(TRUNCATED)
    with caplog.at_level(logging.INFO, logger="digestbot"):
        ticks(daemon, clock, after("2026-03-05", 7), after("2026-03-05", 10), timedelta(minutes=20))
        assert [p for _, p, _ in periods(daemon.engine) if p == "2026-03-05"] == []
        caplog.clear()
        clock.now = after("2026-03-05", 10.1)  # FEED_WAIT after send time
        daemon.tick()

    notes = digest_notes(daemon.engine)
    new = [m for m in mailbox(workdir / "outbox") if m.name not in first]
    assert "emmy@example.org" not in {m.to for m in new}, "no false 'nothing matched' mail"
    state, note = notes[("emmy@example.org", "2026-03-05")]
    assert state == "skipped" and note is not None and "2026-03-05" in note and "JSON" in note
    assert new and all(notes[(m.to, "2026-03-05")][0] == "sent" for m in new)
    assert all("2026-03-05" in (notes[(m.to, "2026-03-05")][1] or "") for m in new), (
        "a digest sent after the hold says the day's fetch failed"
    )
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(feed_dir) in w and "JSON" in w and "hold" in w for w in warnings), warnings
    shown = run_digestbot(["status"], env={**os.environ, **settings_env(workdir)}, cwd=workdir)
    assert shown.returncode == 0, shown.stderr
    assert "planned without a good fetch" in shown.stdout
    assert "emmy@example.org  day 2026-03-05" in shown.stdout, shown.stdout


def test_smtp_rejection_of_one_subscriber_is_logged_and_the_others_are_sent(
    workdir: Path,
    smtp_server: SMTPServer,
    make_settings: Callable[..., Settings],
    make_daemon: Callable[..., Daemon],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """When the mail server refuses one recipient (550), that failure is logged and the other subscribers still get theirs."""
    smtp_server.handler.reject_rcpt["grace@example.org"] = (
        "550 5.1.1 <grace@example.org>: mailbox unavailable"
    )
    settings = make_settings(**smtp_server.env())
    clock = Clock(after("2026-03-04", 7))
    daemon = make_daemon(settings, clock)
    with caplog.at_level(logging.INFO, logger="digestbot"):
        daemon.tick()
        daemon.tick()

    received = [r.rcpt_tos for r in smtp_server.handler.received]
    assert sorted(received) == [["ada@example.org"], ["alan@example.org"]]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("grace@example.org" in e and "550" in e for e in errors), errors
    assert ("grace@example.org", "2026-03-04", "failed") in periods(daemon.engine)


# -- in-process: reload ---------------------------------------------------------------------


def test_reload_picks_up_a_subscriber_added_to_the_file(
    workdir: Path, make_settings: Callable[..., Settings], make_daemon: Callable[..., Daemon]
) -> None:
    """After a reload, a subscriber added to the file gets their digest at the next tick, and nobody gets a second one."""
    settings = make_settings()
    clock = Clock(after("2026-03-04", 7))
    daemon = make_daemon(settings, clock)
    daemon.tick()
    assert len(mailbox(workdir / "outbox")) == 3

    with (workdir / "subscribers.toml").open("a") as fh:
        fh.write('\n[[subscribers]]\nemail = "edsger@example.org"\nkeywords = ["diffusion"]\n')
    daemon.reload()
    clock.now = after("2026-03-04", 7.25)
    daemon.tick()

    sent = mailbox(workdir / "outbox")
    assert len(sent) == 4
    assert len(to(sent, "edsger@example.org")) == 1


def test_reload_of_a_broken_file_is_logged_and_keeps_the_old_list(
    workdir: Path,
    make_settings: Callable[..., Settings],
    make_daemon: Callable[..., Daemon],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Reloading a broken subscribers file logs the error with the file name and the daemon keeps sending to the old list."""
    settings = make_settings()
    clock = Clock(after("2026-03-04", 6))
    daemon = make_daemon(settings, clock)
    (workdir / "subscribers.toml").write_text('[[subscribers]]\nemail = "not an address"\n')
    with caplog.at_level(logging.INFO, logger="digestbot"):
        daemon.reload()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "subscribers.toml" in errors[0] and "email" in errors[0]

    clock.now = after("2026-03-04", 7)
    daemon.tick()
    assert sorted(m.to for m in mailbox(workdir / "outbox")) == [
        "ada@example.org",
        "alan@example.org",
        "grace@example.org",
    ]


def test_reload_logs_who_was_added_removed_and_changed(
    workdir: Path,
    make_settings: Callable[..., Settings],
    make_daemon: Callable[..., Daemon],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A reload logs, by address, the subscribers added to, removed from and changed in the file, and leaves out those unchanged."""
    settings = make_settings()
    clock = Clock(after("2026-03-04", 6))
    daemon = make_daemon(settings, clock)
    daemon.tick()
    path = workdir / "subscribers.toml"
    text = path.read_text()
    grace = text.index('[[subscribers]]\nemail = "grace@example.org"')
    alan = text.index('[[subscribers]]\nemail = "alan@example.org"')
    text = text[:grace] + text[alan:]  # grace removed
    text = text.replace('exclude = ["survey"]', 'exclude = ["survey", "benchmark"]')  # ada changed
    text += '\n[[subscribers]]\nemail = "edsger@example.org"\nkeywords = ["diffusion"]\n'
    path.write_text("# a comment that moves every line\n" + text)  # alan: moved, not changed
    with caplog.at_level(logging.INFO, logger="digestbot"):
        daemon.reload()
    [line] = [r for r in caplog.records if "reloaded" in r.getMessage()]
    message = line.getMessage()
    assert "added edsger@example.org" in message
    assert "removed grace@example.org" in message
    assert "changed ada@example.org" in message
    assert "alan@example.org" not in message
    assert line.__dict__["added"] == ["edsger@example.org"]
    assert line.__dict__["removed"] == ["grace@example.org"]
    assert line.__dict__["changed"] == ["ada@example.org"]


# -- the real command -----------------------------------------------------------------------


@pytest.fixture
def run_env(workdir: Path, feed_dir: Path) -> dict[str, str]:
    """A workdir where every subscriber is due at once (send_at 00:00 UTC) and papers are featured today."""
    (workdir / "subscribers.toml").write_text(
        (workdir / "subscribers.toml").read_text().replace('send_at = "07:00"', 'send_at = "00:00"')
    )
    parse_subscribers((workdir / "subscribers.toml").read_text(), source="subscribers.toml")
    now = datetime.now(UTC)
    today = now.date()
    items = shift_items(fixture_day("2026-03-06"), today, not_after=now - timedelta(minutes=5))
    write_day(feed_dir, today.isoformat(), items)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("DIGESTBOT_") or k.startswith("DIGESTBOT_TEST_")
    }
    env.update(
        DIGESTBOT_DATABASE_URL=f"sqlite:///{workdir / 'digestbot.db'}",
        DIGESTBOT_FEED_URL=str(feed_dir),
        DIGESTBOT_SUBSCRIBERS=str(workdir / "subscribers.toml"),
        DIGESTBOT_MAIL_BACKEND="file",
        DIGESTBOT_MAIL_DIR=str(workdir / "outbox"),
        DIGESTBOT_LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
    )
    return env


class Running:
    """A `digestbot run` subprocess whose output goes to a file."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.log = cwd / f"daemon-{time.monotonic_ns()}.log"
        self._fh = self.log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "digestbot", "run"],
            cwd=cwd,
            env=env,
            stdout=self._fh,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.output()):
            if self.proc.poll() is not None:
                pytest.fail(f"digestbot run exited {self.proc.returncode} early:\n{self.output()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {pattern!r} within {timeout}s:\n{self.output()}")
            time.sleep(0.05)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._fh.close()


@pytest.fixture
def start_daemon(workdir: Path, run_env: dict[str, str]) -> Iterator[Callable[[], Running]]:
    started: list[Running] = []

    def start() -> Running:
        r = Running(workdir, run_env)
        started.append(r)
        return r

    yield start
    for r in started:
        r.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_run_sends_each_digest_once_and_stops_cleanly_on_signal(
    workdir: Path, start_daemon: Callable[[], Running], sig: signal.Signals
) -> None:
    """`digestbot run` sends one digest per subscriber when due, logs the run, and exits 0 promptly on SIGTERM or SIGINT, logging that it stopped."""
    daemon = start_daemon()
    daemon.wait_for(r"sent 3, deferred 0, failed 0")
    sent = mailbox(workdir / "outbox")
    assert sorted(m.to for m in sent) == [
        "ada@example.org",
        "alan@example.org",
        "grace@example.org",
    ]
    log = daemon.output()
    assert (
        "daemon started" in log
        and re.search(r"fetched \d+ papers", log)
        and "run: planned 3, skipped 0; sent 3" in log
    )

    daemon.proc.send_signal(sig)
    assert daemon.proc.wait(timeout=10) == 0
    log = daemon.output()
    assert "daemon stopped" in log
    assert "Traceback" not in log and "KeyboardInterrupt" not in log
    assert "apscheduler" not in log, "APScheduler's per-job INFO lines are not shown at INFO"
    assert mailbox(workdir / "outbox") == sent


def test_json_logs_are_one_object_a_line_naming_each_digest_without_scheduler_chatter(
    workdir: Path, run_env: dict[str, str], start_daemon: Callable[[], Running]
) -> None:
    """With DIGESTBOT_LOG_FORMAT=json every output line of `digestbot run` is a JSON object (timestamp, level, logger, event, fields); each digest's line names the subscriber and its Message-ID, a run has a summary, a SIGHUP names who changed, APScheduler's INFO chatter is absent and no secret appears."""
    run_env.update(
        DIGESTBOT_LOG_FORMAT="json",
        HF_TOKEN="hf_secret_token_4242",
        DIGESTBOT_SMTP_PASSWORD="smtp-secret-4242",
    )
    daemon = start_daemon()
    daemon.wait_for(r'"sent": 3')
    with (workdir / "subscribers.toml").open("a") as fh:
        fh.write('\n[[subscribers]]\nemail = "edsger@example.org"\nkeywords = ["diffusion"]\n')
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for(r"reloaded")
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=10) == 0
    output = daemon.output()
    assert "secret_token_4242" not in output and "smtp-secret-4242" not in output

    lines = [json.loads(line) for line in output.splitlines()]  # every line parses
    assert all(isinstance(e, dict) for e in lines)
    for entry in lines:
        assert {"timestamp", "level", "logger", "event"} <= entry.keys(), entry
        stamp = datetime.fromisoformat(entry["timestamp"])
        assert stamp.utcoffset() == timedelta(0), entry["timestamp"]
    assert not [e for e in lines if e["logger"].startswith("apscheduler") and e["level"] == "INFO"]
    assert not [e for e in lines if "Running job" in e["event"] or "Adding job" in e["event"]]

    sent = {
        e["subscriber"]: e["message_id"]
        for e in lines
        if e.get("outcome") == "sent" and e["level"] == "INFO"
    }
    headers = {}
    for path in (workdir / "outbox").glob("*.eml"):
        msg = message_from_bytes(path.read_bytes(), policy=default_policy)
        headers[msg["To"].addresses[0].addr_spec] = msg["Message-ID"]
    assert sent == headers and len(sent) == 3
    assert all(
        e["message_id"] in e["event"] and e["subscriber"] in e["event"]
        for e in lines
        if "outcome" in e
    )
    [summary] = [e for e in lines if "sent" in e and "planned" in e]
    assert (summary["planned"], summary["sent"], summary["deferred"], summary["failed"]) == (
        3,
        3,
        0,
        0,
    )
    assert isinstance(summary["seconds"], float | int)
    [reload] = [e for e in lines if "reloaded" in e["event"]]
    assert reload["added"] == ["edsger@example.org"] and "edsger@example.org" in reload["event"]


def test_a_second_daemon_on_the_same_database_only_delivers(
    workdir: Path, run_env: dict[str, str], start_daemon: Callable[[], Running]
) -> None:
    """A second `digestbot run` against the same database says the first one plans, syncs
    nothing, mails nobody a second time, and stops cleanly; the first is unaffected."""
    first = start_daemon()
    first.wait_for(r"sent 3, deferred 0, failed 0")
    subscribers = workdir / "subscribers.toml"
    subscribers.write_text(  # the file now lists someone else only
        subscribers.read_text().split("[[subscribers]]")[0]
        + '[[subscribers]]\nemail = "x@example.org"\nkeywords = ["agent"]\n'
    )
    second = start_daemon()
    second.wait_for(r"another digestbot daemon fetches and plans for this database")
    second.wait_for(r"digestbot daemon started")
    second.proc.send_signal(signal.SIGTERM)
    assert second.proc.wait(timeout=30) == 0
    assert len(mailbox(workdir / "outbox")) == 3
    engine = sa.create_engine(run_env["DIGESTBOT_DATABASE_URL"])
    with engine.connect() as conn:  # the second one did not sync its subscribers file
        active = (
            conn.execute(sa.select(Subscriber.email).where(Subscriber.active.is_(True)))
            .scalars()
            .all()
        )
    engine.dispose()
    assert sorted(active) == ["ada@example.org", "alan@example.org", "grace@example.org"]

    assert first.proc.poll() is None  # the first one is unaffected
    first.proc.send_signal(signal.SIGTERM)
    assert first.proc.wait(timeout=10) == 0


def test_daily_and_weekly_subscribers_at_one_send_time_are_each_due_on_their_own_schedule(
    workdir: Path, make_settings: Callable[..., Settings], make_daemon: Callable[..., Daemon]
) -> None:
    """A daily and a weekly (Monday) subscriber sharing send_at and zone get one digest a day and one a week respectively, whoever is listed first."""
    (workdir / "subscribers.toml").write_text(
        """
[defaults]
send_at = "07:00"
timezone = "UTC"
send_empty = true

[[subscribers]]
email = "wes@example.org"
frequency = "weekly"
weekday = "monday"
keywords = ["diffusion"]

[[subscribers]]
email = "dee@example.org"
keywords = ["reasoning"]
"""
    )
    settings = make_settings()
    clock = Clock(after("2026-03-03", 6))
    daemon = make_daemon(settings, clock)
    ticks(daemon, clock, after("2026-03-03", 6), after("2026-03-09", 8), timedelta(hours=1))
    planned = periods(daemon.engine)
    weekly = [p for email, p, _ in planned if email == "wes@example.org"]
    daily = [p for email, p, _ in planned if email == "dee@example.org"]
    assert weekly == ["2026-03-02", "2026-03-09"]  # the week so far on Tuesday, then next Monday
    assert daily == [f"2026-03-{d:02d}" for d in range(3, 10)]


def test_a_failed_earlier_day_in_the_window_holds_digests_then_notes_it(
    workdir: Path,
    feed_dir: Path,
    make_settings: Callable[..., Settings],
    make_daemon: Callable[..., Daemon],
) -> None:
    """After downtime, a failed day inside the due digests' window (not today) holds them, and after the hold an empty one is skipped with a note naming that day, never mailed as "nothing new"."""
    with (workdir / "subscribers.toml").open("a") as fh:
        fh.write(EMMY)
    settings = make_settings()
    clock = Clock(after("2026-03-04", 7))
    daemon = make_daemon(settings, clock)
    daemon.tick()
    first = {m.name for m in mailbox(workdir / "outbox")}
    (feed_dir / "2026-03-05.json").write_text(TRUNCATED)
    (feed_dir / "2026-03-06.json").write_text("[]")

    ticks(daemon, clock, after("2026-03-06", 7 + 1 / 60), after("2026-03-06", 9.9), FRESH_FETCH)
    assert [m for m in mailbox(workdir / "outbox") if m.name not in first] == []
    assert [p for _, p, _ in periods(daemon.engine) if p == "2026-03-06"] == []

    clock.now = after("2026-03-06", 10.1)  # FEED_WAIT after send time
    daemon.tick()
    new = [m for m in mailbox(workdir / "outbox") if m.name not in first]
    assert "emmy@example.org" not in {m.to for m in new}, "no false 'nothing matched' mail"
    state, note = digest_notes(daemon.engine)[("emmy@example.org", "2026-03-06")]
    assert state == "skipped" and note is not None and "2026-03-05" in note, note
