"""The pipeline stages on real databases (SQLite and PostgreSQL): store, plan, deliver."""

from __future__ import annotations

import json
import logging
import re
import threading
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from digestbot import app, outbox, pipeline, store
from digestbot.db import open_database, session_scope
from digestbot.errors import DatabaseError
from digestbot.models import Digest, DigestItem, DigestState, FetchRun, Paper, Subscriber
from digestbot.settings import load_settings
from digestbot.sources.hf_daily import HFDailyPapers
from digestbot.subscribers import parse_subscribers
from tests.helpers import fixture_day, shift_items, write_day

PEOPLE = """
[[subscribers]]
email = "ada@example.org"
keywords = ["diffusion", "decoding"]
max_papers = 2

[[subscribers]]
email = "bob@example.org"
keywords = ["zzzz-never-matches"]

[[subscribers]]
email = "cy@example.org"
keywords = ["zzzz-never-matches"]
send_empty = true
"""


def at(day: str, hour: int = 12) -> datetime:
    return datetime.fromisoformat(day).replace(hour=hour, tzinfo=UTC)


@pytest.fixture
def env(db_url: str, feed_dir: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    settings = load_settings(
        environ={
            "DIGESTBOT_DATABASE_URL": db_url,
            "DIGESTBOT_FEED_URL": str(feed_dir),
            "DIGESTBOT_MAIL_DIR": str(tmp_path / "out"),
        },
        env_file=None,
    )
    engine = open_database(db_url)
    yield settings, engine
    engine.dispose()


def fetch(settings, engine, day: str, now: datetime | None = None) -> pipeline.FetchSummary:  # type: ignore[no-untyped-def]
    source = HFDailyPapers(feed_url=settings.feed_url, client=None)
    return pipeline.fetch_and_store(
        engine,
        source=source,
        feed_url=settings.feed_url,
        today=date.fromisoformat(day),
        lookback=settings.lookback_days,
        clock=lambda: now or at(day, 6),
    )


def plan(settings, engine, specs, day: str, now: datetime | None = None) -> pipeline.PlanSummary:  # type: ignore[no-untyped-def]
    now = now or at(day, 23)
    recipients = pipeline.sync_subscribers(engine, specs, now=now)
    return pipeline.plan_digests(
        engine,
        recipients,
        as_of=now,
        lookback=settings.lookback_days,
        day=date.fromisoformat(day),
        from_addr=settings.mail_from,
        now=now,
    )


def items_of(engine, email_prefix: str = "ada") -> dict[str, list[str]]:  # type: ignore[no-untyped-def]
    with session_scope(engine) as s:
        rows = s.execute(
            sa.text(
                "SELECT d.period, i.arxiv_id FROM digest_items i JOIN digests d ON d.id = i.digest_id "
                "JOIN subscribers s ON s.id = d.subscriber_id WHERE s.email LIKE :p ORDER BY d.period, i.position"
            ),
            {"p": f"{email_prefix}%"},
        ).all()
    out: dict[str, list[str]] = {}
    for period, arxiv_id in rows:
        out.setdefault(period, []).append(arxiv_id)
    return out


def test_fetch_stores_once_and_updates_what_changes(env, feed_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """A paper is stored once; a later fetch updates upvotes and keeps when it was first seen and featured."""
    settings, engine = env
    first = fetch(settings, engine, "2026-03-04", now=at("2026-03-04", 6))
    assert (first.new, first.updated) == (45, 0)
    items = fixture_day("2026-03-04")
    items[0]["paper"]["upvotes"] += 100
    items[0]["paper"]["submittedOnDailyAt"] = "2026-03-05T01:00:00.000Z"
    write_day(feed_dir, "2026-03-04", items)
    second = fetch(settings, engine, "2026-03-04", now=at("2026-03-04", 9))
    assert (second.new, second.updated) == (0, 1)
    with session_scope(engine) as s:
        paper = s.get(Paper, items[0]["paper"]["id"])
    assert paper is not None
    assert paper.upvotes == fixture_day("2026-03-04")[0]["paper"]["upvotes"] + 100
    assert paper.first_seen_at == at("2026-03-04", 6)
    assert paper.featured_at.date() == date(2026, 3, 4)


def test_planning_is_idempotent_and_respects_max_and_send_empty(env) -> None:  # type: ignore[no-untyped-def]
    """Planning twice for a day makes one digest each; max_papers caps it; empty ones follow send_empty."""
    settings, engine = env
    specs = parse_subscribers(PEOPLE, source="t.toml")
    fetch(settings, engine, "2026-03-04")
    first = plan(settings, engine, specs, "2026-03-04")
    again = plan(settings, engine, specs, "2026-03-04")
    assert (first.planned, first.skipped, first.existing) == (2, 1, 0)
    assert (again.planned, again.skipped, again.existing) == (0, 0, 3)
    with session_scope(engine) as s:
        states = dict(
            s.execute(
                sa.text(
                    "SELECT s.email, d.state FROM digests d JOIN subscribers s ON s.id = d.subscriber_id"
                )
            ).all()
        )
        ada = s.execute(
            sa.text(
                "SELECT d.paper_count, d.more_count FROM digests d JOIN subscribers s ON s.id = d.subscriber_id "
                "WHERE s.email = 'ada@example.org'"
            )
        ).one()
    assert states == {
        "ada@example.org": "planned",
        "bob@example.org": "skipped",
        "cy@example.org": "planned",
    }
    assert ada[0] == 2 and ada[1] >= 1


def test_next_digest_holds_only_new_papers_and_no_overflow(env) -> None:  # type: ignore[no-untyped-def]
    """The next day's digest has the papers featured since, never one already sent, and no carried-over overflow."""
    settings, engine = env
    specs = parse_subscribers(PEOPLE, source="t.toml")
    fetch(settings, engine, "2026-03-03")
    plan(settings, engine, specs, "2026-03-03")
    fetch(settings, engine, "2026-03-05")
    plan(settings, engine, specs, "2026-03-05")
    got = items_of(engine)
    assert set(got) == {"2026-03-03", "2026-03-05"}
    assert not set(got["2026-03-03"]) & set(got["2026-03-05"])
    with session_scope(engine) as s:
        featured = {p.arxiv_id: p.featured_at for p in s.execute(sa.select(Paper)).scalars()}
    assert all(featured[a] >= at("2026-03-03", 23) for a in got["2026-03-05"])


def test_paper_stored_late_still_reaches_the_subscriber(env, feed_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """A paper featured before a digest was planned but fetched after it goes out in the next digest."""
    settings, engine = env
    specs = parse_subscribers(PEOPLE.replace("max_papers = 2", "max_papers = 50"), source="t.toml")
    items = fixture_day("2026-03-04")
    late = [
        it
        for it in items
        if "iffusion" in it["paper"]["title"] or "ecoding" in it["paper"]["title"]
    ][:1]
    assert late, "a 2026-03-04 fixture paper matches ada"
    write_day(feed_dir, "2026-03-04", [it for it in items if it not in late])
    fetch(settings, engine, "2026-03-04", now=at("2026-03-04", 22))
    plan(settings, engine, specs, "2026-03-04", now=at("2026-03-04", 23))
    assert late[0]["paper"]["id"] not in items_of(engine).get("2026-03-04", [])
    write_day(feed_dir, "2026-03-04", items)  # the feed now shows it, featured on the 4th
    fetch(settings, engine, "2026-03-05", now=at("2026-03-05", 6))
    plan(settings, engine, specs, "2026-03-05")
    assert late[0]["paper"]["id"] in items_of(engine)["2026-03-05"]


def test_deliver_sends_each_planned_digest_once(env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Delivery marks digests sent with their Message-ID kept; a second delivery sends nothing."""
    settings, engine = env
    specs = parse_subscribers(PEOPLE, source="t.toml")
    fetch(settings, engine, "2026-03-04")
    plan(settings, engine, specs, "2026-03-04")
    d = app.delivery(settings)
    report = pipeline.deliver_due(
        engine, backend=d.backend, mail=d.mail, policy=d.policy, clock=lambda: at("2026-03-05")
    )
    assert report.sent == 2 and report.ok
    files = sorted((tmp_path / "out").glob("*.eml"))
    assert len(files) == 2
    again = pipeline.deliver_due(
        engine, backend=d.backend, mail=d.mail, policy=d.policy, clock=lambda: at("2026-03-05")
    )
    assert again.sent == 0 and len(list((tmp_path / "out").glob("*.eml"))) == 2
    with session_scope(engine) as s:
        digests = (
            s.execute(sa.select(Digest).where(Digest.state == DigestState.SENT)).scalars().all()
        )
    ids = {dg.message_id for dg in digests}
    raw = b"".join(f.read_bytes() for f in files)
    assert all(mid.encode() in raw for mid in ids)
    cy = next(f for f in files if b"cy@example.org" in f.read_bytes())
    assert b"no new papers" in cy.read_bytes().lower() or b"nothing" in cy.read_bytes().lower()


def test_item_uniqueness_is_enforced_by_the_database(env) -> None:  # type: ignore[no-untyped-def]
    """The database itself refuses a second copy of a paper for the same subscriber."""
    settings, engine = env
    specs = parse_subscribers(PEOPLE, source="t.toml")
    fetch(settings, engine, "2026-03-04")
    plan(settings, engine, specs, "2026-03-04")
    with session_scope(engine) as s:
        item = s.execute(sa.select(DigestItem)).scalars().first()
        assert item is not None
        values = {
            c: getattr(item, c)
            for c in ("digest_id", "subscriber_id", "arxiv_id", "score", "upvotes")
        }
    with pytest.raises(sa.exc.IntegrityError), session_scope(engine) as s:
        s.add(DigestItem(**values, position=99, matched=[], title_spans=[], summary_spans=[]))


def test_new_subscriber_gets_today_and_the_lookback_days(env) -> None:  # type: ignore[no-untyped-def]
    """A new subscriber's first digest covers the run's day and the lookback days before it, no more."""
    settings, engine = env
    everything = parse_subscribers(
        '[[subscribers]]\nemail = "all@example.org"\nkeywords = ["the"]\nmax_papers = 500\n',
        source="t.toml",
    )
    fetch(settings, engine, "2026-03-02")
    fetch(settings, engine, "2026-03-05")
    plan(settings, engine, everything, "2026-03-05", now=datetime(2026, 3, 6, tzinfo=UTC))
    with session_scope(engine) as s:
        featured = {
            p.arxiv_id: p.featured_at.date().isoformat()
            for p in s.execute(sa.select(Paper)).scalars()
        }
    days = {featured[a] for a in items_of(engine, "all")["2026-03-05"]}
    assert days == {"2026-03-03", "2026-03-04", "2026-03-05"}


def test_a_long_gap_is_capped_to_the_last_thirty_days(env, feed_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """A subscriber whose last digest is months old gets the last 30 days of matches, not months of them."""
    settings, engine = env
    everything = parse_subscribers(
        '[[subscribers]]\nemail = "all@example.org"\nkeywords = ["the"]\nmax_papers = 500\n',
        source="t.toml",
    )
    fetch(settings, engine, "2026-03-02")
    plan(settings, engine, everything, "2026-01-01", now=datetime(2026, 1, 1, 23, tzinfo=UTC))
    items = shift_items(fixture_day("2026-03-06"), date(2026, 4, 20))
    write_day(feed_dir, "2026-04-20", items)
    fetch(settings, engine, "2026-04-20")
    plan(settings, engine, everything, "2026-04-20", now=datetime(2026, 4, 20, 23, tzinfo=UTC))
    got = set(items_of(engine, "all")["2026-04-20"])
    assert got == {it["paper"]["id"] for it in items}, (
        "March papers are older than 30 days: left out"
    )


def test_fetch_reads_the_time_only_from_the_clock_it_is_given(env) -> None:  # type: ignore[no-untyped-def]
    """fetch_and_store records the start and end of a fetch, and when papers were first seen, from its clock, never the wall clock."""
    settings, engine = env
    fixed = datetime(2031, 1, 2, 3, 4, tzinfo=UTC)
    pipeline.fetch_and_store(
        engine,
        source=HFDailyPapers(feed_url=settings.feed_url, client=None),
        feed_url=settings.feed_url,
        today=date(2026, 3, 4),
        lookback=0,
        clock=lambda: fixed,
    )
    with session_scope(engine) as s:
        run = s.execute(sa.select(FetchRun)).scalar_one()
        seen = set(s.execute(sa.select(Paper.first_seen_at)).scalars())
    assert (run.started_at, run.finished_at) == (fixed, fixed)
    assert seen == {fixed}


def test_message_ids_differ_across_databases_and_stay_with_the_digest(env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Two fresh databases give the same subscriber's digest for the same day different Message-IDs; a digest keeps its Message-ID through a retry."""
    settings, engine = env
    specs = parse_subscribers(PEOPLE, source="t.toml")
    other = open_database(f"sqlite:///{tmp_path / 'other.db'}")
    ids = []
    for e in (engine, other):
        fetch(settings, e, "2026-03-04")
        plan(settings, e, specs, "2026-03-04")
        with session_scope(e) as s:
            ids.append(message_ids(s))
    assert ids[0].keys() == ids[1].keys() == {"ada@example.org", "cy@example.org"}
    assert all(ids[0][k] != ids[1][k] for k in ids[0])
    with session_scope(engine) as s:
        assert store.database_id(s) != "" and store.database_id(s) == store.database_id(s)
        s.execute(
            sa.update(Digest)
            .where(Digest.state == DigestState.PLANNED)  # type: ignore[arg-type]
            .values(state=DigestState.FAILED)
        )
    with session_scope(engine) as s:
        outbox.requeue_failed(s, subscriber_ids=None, now=at("2026-03-05"))
    plan(settings, engine, specs, "2026-03-04")  # planning again changes nothing
    with session_scope(engine) as s:
        assert message_ids(s) == ids[0]
    other.dispose()


def message_ids(session) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return dict(
        session.execute(
            sa.text(
                "SELECT s.email, d.message_id FROM digests d JOIN subscribers s "
                "ON s.id = d.subscriber_id WHERE d.state != 'skipped'"
            )
        ).all()
    )


def test_a_subscriber_is_one_whatever_the_case_of_their_address(env) -> None:  # type: ignore[no-untyped-def]
    """Rewriting `Ada@Example.org` as `ada@example.org` in the file keeps the same subscriber (same id, history kept), stored as now written."""
    _, engine = env
    first = parse_subscribers(
        '[[subscribers]]\nemail = "Ada@Example.org"\nkeywords = ["x"]\n', source="t.toml"
    )
    again = parse_subscribers(
        '[[subscribers]]\nemail = "ada@example.org"\nkeywords = ["x"]\n', source="t.toml"
    )
    [before] = pipeline.sync_subscribers(engine, first, now=at("2026-03-04"))
    [after] = pipeline.sync_subscribers(engine, again, now=at("2026-03-05"))
    assert before.id == after.id
    with session_scope(engine) as s:
        rows = s.execute(sa.select(Subscriber.email, Subscriber.active)).all()
    assert [tuple(r) for r in rows] == [("ada@example.org", True)]
    assert pipeline.subscriber_ids(engine, ["ADA@EXAMPLE.ORG"]) == [before.id]


# -- trending ---------------------------------------------------------------------------------


def sections_of(engine, email: str) -> dict[str, list[tuple[str, str]]]:  # type: ignore[no-untyped-def]
    """period -> [(section, arxiv_id)] in digest order, for one subscriber."""
    with session_scope(engine) as s:
        rows = s.execute(
            sa.text(
                "SELECT d.period, i.section, i.arxiv_id FROM digest_items i "
                "JOIN digests d ON d.id = i.digest_id JOIN subscribers s ON s.id = d.subscriber_id "
                "WHERE s.email = :e ORDER BY d.period, i.position"
            ),
            {"e": email},
        ).all()
    out: dict[str, list[tuple[str, str]]] = {}
    for period, section, arxiv_id in rows:
        out.setdefault(period, []).append((section, arxiv_id))
    return out


def upvotes_by_id(engine) -> dict[str, int]:  # type: ignore[no-untyped-def]
    with session_scope(engine) as s:
        return dict(s.execute(sa.select(Paper.arxiv_id, Paper.upvotes)).all())  # type: ignore[arg-type]


def window_ids(engine, start: datetime, end: datetime) -> list[str]:  # type: ignore[no-untyped-def]
    """Papers featured in [start, end), most upvoted first (ties by arXiv id), upvotes > 0."""
    with session_scope(engine) as s:
        papers = store.papers_featured_between(s, start=start, end=end)
    ranked = sorted((p for p in papers if p.upvotes > 0), key=lambda p: (-p.upvotes, p.arxiv_id))
    return [p.arxiv_id for p in ranked]


def test_a_trending_only_subscriber_gets_the_most_upvoted_new_papers(env) -> None:  # type: ignore[no-untyped-def]
    """A subscriber with only `trending = 3` gets the 3 most upvoted papers of their window, recorded in the trending section."""
    settings, engine = env
    specs = parse_subscribers(
        '[[subscribers]]\nemail = "t@example.org"\ntrending = 3\n', source="t.toml"
    )
    fetch(settings, engine, "2026-03-04")
    summary = plan(settings, engine, specs, "2026-03-04")
    assert summary.planned == 1
    first_day = datetime(2026, 3, 4, tzinfo=UTC) - pipeline_lookback(settings)
    expected = window_ids(engine, first_day, at("2026-03-04", 23))[:3]
    assert sections_of(engine, "t@example.org") == {
        "2026-03-04": [("trending", a) for a in expected]
    }


def pipeline_lookback(settings):  # type: ignore[no-untyped-def]
    from datetime import timedelta

    return timedelta(days=settings.lookback_days)


def test_mixed_digest_lists_matches_then_trending_papers_not_listed_once_each(env) -> None:  # type: ignore[no-untyped-def]
    """With keywords and trending, matched papers come first (capped by max_papers), then the most upvoted papers not already listed; none repeats, even the next day."""
    settings, engine = env
    fetch(settings, engine, "2026-03-04")
    start = datetime(2026, 3, 4, tzinfo=UTC) - pipeline_lookback(settings)
    ranked = window_ids(engine, start, at("2026-03-04", 23))
    top = ranked[0]
    specs = parse_subscribers(
        f'[[subscribers]]\nemail = "m@example.org"\nkeywords = [{title_phrase(engine, top)}]\n'
        "trending = 3\nmax_papers = 1\n",
        source="t.toml",
    )
    plan(settings, engine, specs, "2026-03-04")
    got = sections_of(engine, "m@example.org")["2026-03-04"]
    assert got[0] == ("matched", top)
    assert [a for sec, a in got[1:]] == ranked[1:3] and all(s == "trending" for s, _ in got[1:])
    assert len({a for _, a in got}) == len(got)
    plan(settings, engine, specs, "2026-03-05", now=at("2026-03-05", 23))
    later = sections_of(engine, "m@example.org").get("2026-03-05", [])
    assert not {a for _, a in later} & {a for _, a in got}, "nothing mailed twice"


def test_exclude_and_min_upvotes_apply_to_the_trending_section(env) -> None:  # type: ignore[no-untyped-def]
    """A trending paper an exclude query matches, or with fewer than min_upvotes upvotes, is left out of the trending section."""
    settings, engine = env
    fetch(settings, engine, "2026-03-04")
    start = datetime(2026, 3, 4, tzinfo=UTC) - pipeline_lookback(settings)
    ranked = window_ids(engine, start, at("2026-03-04", 23))
    votes = upvotes_by_id(engine)
    specs = parse_subscribers(
        f"[defaults]\nexclude = [{title_phrase(engine, ranked[0])}]\n"
        f'[[subscribers]]\nemail = "x@example.org"\ntrending = 50\nmin_upvotes = {votes[ranked[3]]}\n',
        source="t.toml",
    )
    plan(settings, engine, specs, "2026-03-04")
    got = [a for _, a in sections_of(engine, "x@example.org")["2026-03-04"]]
    assert got and all(votes[a] >= votes[ranked[3]] for a in got)
    assert ranked[0] not in got and set(got) <= set(ranked[1:])


def title_phrase(engine, arxiv_id: str) -> str:  # type: ignore[no-untyped-def]
    """A TOML string holding a title: query for the paper's first words, as a phrase."""
    with session_scope(engine) as s:
        paper = s.get(Paper, arxiv_id)
        assert paper is not None
        words = [w for w in re.findall(r"[A-Za-z]+", paper.title)][:5]
    return json.dumps('title:"' + " ".join(words) + '"')


# -- frequency --------------------------------------------------------------------------------

WEEKLY = """
[[subscribers]]
email = "w@example.org"
keywords = ["the"]
frequency = "weekly"
weekday = "monday"
max_papers = 500
"""


def digests_of(engine, email: str) -> list[tuple[str, str, str]]:  # type: ignore[no-untyped-def]
    """(period, frequency, state) of a subscriber's digests, oldest first."""
    with session_scope(engine) as s:
        rows = s.execute(
            sa.text(
                "SELECT d.period, d.frequency, d.state FROM digests d "
                "JOIN subscribers s ON s.id = d.subscriber_id WHERE s.email = :e ORDER BY d.id"
            ),
            {"e": email},
        ).all()
    return [tuple(r) for r in rows]  # type: ignore[misc]


def featured_days(engine, ids: list[str]) -> set[str]:  # type: ignore[no-untyped-def]
    with session_scope(engine) as s:
        return {s.get(Paper, a).featured_at.date().isoformat() for a in ids}  # type: ignore[union-attr]


def test_weekly_subscriber_gets_one_digest_a_week_and_the_next_covers_what_came_after(
    env,  # type: ignore[no-untyped-def]
) -> None:
    """A mid-week send gives a weekly subscriber the week so far; sends later that week plan nothing; the next week's digest holds only what came after, nothing twice."""
    settings, engine = env
    specs = parse_subscribers(WEEKLY, source="t.toml")
    fetch(settings, engine, "2026-03-02")
    fetch(settings, engine, "2026-03-04")
    wednesday = plan(settings, engine, specs, "2026-03-04")  # 2026-03-04 is a Wednesday
    assert wednesday.planned == 1
    thursday = plan(settings, engine, specs, "2026-03-05", now=at("2026-03-05", 23))
    assert (thursday.planned, thursday.existing) == (0, 1)
    assert digests_of(engine, "w@example.org") == [("2026-03-02", "weekly", "planned")]
    first = [a for _, a in sections_of(engine, "w@example.org")["2026-03-02"]]
    assert featured_days(engine, first) >= {"2026-03-02", "2026-03-03", "2026-03-04"}, (
        "the week so far, several days ranked together"
    )
    fetch(settings, engine, "2026-03-06")
    monday = plan(settings, engine, specs, "2026-03-09", now=at("2026-03-09", 8))
    assert monday.planned == 1
    second = [a for _, a in sections_of(engine, "w@example.org")["2026-03-09"]]
    assert second and not set(second) & set(first)
    assert featured_days(engine, second) <= {"2026-03-04", "2026-03-05", "2026-03-06"}


def test_weekly_digest_is_ranked_over_the_week_and_capped(env) -> None:  # type: ignore[no-untyped-def]
    """A weekly digest holds the week's best matches, capped by max_papers, with the rest counted as more."""
    settings, engine = env
    specs = parse_subscribers(WEEKLY.replace("max_papers = 500", "max_papers = 5"), source="t.toml")
    everyone = parse_subscribers(WEEKLY, source="t.toml")
    fetch(settings, engine, "2026-03-02")
    fetch(settings, engine, "2026-03-05")
    plan(settings, engine, everyone, "2026-03-05")
    with session_scope(engine) as s:
        all_ids = [
            a
            for (a,) in s.execute(
                sa.text("SELECT arxiv_id FROM digest_items ORDER BY position")
            ).all()
        ]
        s.execute(sa.text("DELETE FROM digest_items"))
        s.execute(sa.text("DELETE FROM digests"))
    plan(settings, engine, specs, "2026-03-05")
    got = [a for _, a in sections_of(engine, "w@example.org")["2026-03-02"]]
    assert got == all_ids[:5]
    assert len(featured_days(engine, all_ids)) >= 3
    with session_scope(engine) as s:
        more = s.execute(sa.text("SELECT more_count FROM digests")).scalar_one()
    assert more == len(all_ids) - 5


def test_off_plans_nothing_and_back_on_gets_the_normal_window_not_the_backlog(
    env,  # type: ignore[no-untyped-def]
    feed_dir: Path,
) -> None:
    """`frequency = "off"` plans and sends nothing; turned back on, the next digest covers a day and its lookback, not the weeks missed."""
    settings, engine = env
    on = parse_subscribers(
        '[[subscribers]]\nemail = "o@example.org"\nkeywords = ["the"]\nmax_papers = 500\n',
        source="t.toml",
    )
    off = parse_subscribers(
        '[[subscribers]]\nemail = "o@example.org"\nkeywords = ["the"]\nfrequency = "off"\n',
        source="t.toml",
    )
    fetch(settings, engine, "2026-03-02")
    plan(settings, engine, on, "2026-03-02")
    fetch(settings, engine, "2026-03-04")
    paused = plan(settings, engine, off, "2026-03-04")
    assert (paused.planned, paused.skipped, paused.off) == (0, 0, 1)
    assert [p for p, _, _ in digests_of(engine, "o@example.org")] == ["2026-03-02"]
    items = shift_items(fixture_day("2026-03-06"), date(2026, 3, 20))
    write_day(feed_dir, "2026-03-20", items)
    fetch(settings, engine, "2026-03-20")
    back = plan(settings, engine, on, "2026-03-20")
    assert back.planned == 1
    got = [a for _, a in sections_of(engine, "o@example.org")["2026-03-20"]]
    assert set(got) == {it["paper"]["id"] for it in items}, "the March 3-4 papers are the backlog"
    later = plan(settings, engine, on, "2026-03-21", now=at("2026-03-21", 23))
    assert later.planned + later.skipped == 1, "paused mark cleared: a normal next day"


def test_a_paper_deleted_by_hand_is_left_out_of_its_digest_with_a_warning(  # type: ignore[no-untyped-def]
    env, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No foreign key ties a planned item to its paper (migration 0012): when the paper's row
    is deleted by hand before delivery, the digest goes out with its other papers and a warning
    names the digest and the paper."""
    settings, engine = env
    specs = parse_subscribers(PEOPLE, source="t.toml")
    fetch(settings, engine, "2026-03-04")
    plan(settings, engine, specs, "2026-03-04")
    ada = items_of(engine)["2026-03-04"]
    assert len(ada) >= 2
    gone, kept = ada[0], ada[1:]
    with session_scope(engine) as s:
        digest_id = s.execute(
            sa.text(
                "SELECT digest_id FROM digest_items WHERE arxiv_id = :p AND subscriber_id ="
                " (SELECT id FROM subscribers WHERE email LIKE 'ada%')"
            ),
            {"p": gone},
        ).scalar_one()
        s.execute(sa.text("DELETE FROM paper_sources WHERE arxiv_id = :p"), {"p": gone})
        s.execute(sa.text("DELETE FROM papers WHERE arxiv_id = :p"), {"p": gone})
    d = app.delivery(settings)
    with caplog.at_level(logging.WARNING, logger="digestbot"):
        report = pipeline.deliver_due(
            engine, backend=d.backend, mail=d.mail, policy=d.policy, clock=lambda: at("2026-03-05")
        )
    assert report.sent == 2 and report.ok
    eml = next(f for f in (tmp_path / "out").glob("*.eml") if b"ada@example.org" in f.read_bytes())
    raw = eml.read_bytes()
    assert gone.encode() not in raw
    assert all(p.encode() in raw for p in kept)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert (
        f"digest {digest_id}: paper {gone} is no longer in the database; sent without it" in warned
    )


def test_a_weekly_digest_is_delivered_naming_the_week(env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A stored weekly digest goes out saying "this week" with the dates it covers: the week so far."""
    settings, engine = env
    specs = parse_subscribers(WEEKLY + "trending = 2\n", source="t.toml")
    fetch(settings, engine, "2026-03-04")
    plan(settings, engine, specs, "2026-03-04")
    d = app.delivery(settings)
    report = pipeline.deliver_due(
        engine, backend=d.backend, mail=d.mail, policy=d.policy, clock=lambda: at("2026-03-05")
    )
    assert report.sent == 1
    [eml] = (tmp_path / "out").glob("*.eml")
    raw = eml.read_bytes().decode("utf-8", "replace")
    assert "this week" in raw and "2026-03-02 to 2026-03-04" in raw


def test_syncing_an_off_subscriber_marks_them_paused_without_planning(env) -> None:  # type: ignore[no-untyped-def]
    """Loading the file with `frequency = "off"` (as the daemon does at start and on SIGHUP) notes the pause, so no planning run is needed for the backlog rule."""
    _, engine = env
    specs = parse_subscribers(
        '[[subscribers]]\nemail = "o@example.org"\nkeywords = ["x"]\nfrequency = "off"\n',
        source="t.toml",
    )
    pipeline.sync_subscribers(engine, specs, now=at("2026-03-04"))
    with session_scope(engine) as s:
        paused_at = s.execute(sa.select(Subscriber.paused_at)).scalar_one()  # type: ignore[call-overload]
        assert s.execute(sa.text("SELECT COUNT(*) FROM digests")).scalar_one() == 0
    assert paused_at == at("2026-03-04")


def test_release_memory_empties_the_memo_caches_and_changes_no_result() -> None:
    """Before delivery `send` gives back the memory of the subscribers file: the memo caches
    reading it filled (parsed queries and addresses, which pin its freed pages) are emptied, and
    what they compute is the same afterwards."""
    from digestbot.addresses import parse_addr_spec
    from digestbot.matching.query import parse_query

    before = parse_query('"sparse attention" -survey'), parse_addr_spec("Ada@Example.org")
    assert parse_query.cache_info().currsize and parse_addr_spec.cache_info().currsize
    app.release_memory()
    assert parse_query.cache_info().currsize == 0
    assert parse_addr_spec.cache_info().currsize == 0
    assert (parse_query('"sparse attention" -survey'), parse_addr_spec("Ada@Example.org")) == before


def test_plans_are_stored_batch_by_batch_and_a_failed_batch_stops_planning(
    env, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """Planning stores and commits each batch (on PostgreSQL in writer threads while the next is
    matched): every plan is stored in batches; a batch the database refuses stops planning with
    that error, the batches before it stay stored (on PostgreSQL, another writer may also have
    stored the one after it), and no thread is left behind."""
    settings, engine = env
    fetch(settings, engine, "2026-03-04")
    people = "".join(
        f'[[subscribers]]\nemail = "reader{i:02d}@example.org"\nkeywords = ["model"]\n\n'
        for i in range(10)
    )
    specs = parse_subscribers(people, source="t.toml")
    monkeypatch.setattr(pipeline, "PLAN_BATCH", 3)
    threads = threading.active_count()

    def digests() -> int:
        with session_scope(engine) as s:
            return int(s.execute(sa.text("SELECT count(*) FROM digests")).scalar_one())

    stored = outbox.store_plans
    calls: list[int] = []

    def refusing(session, *, plans, now):  # type: ignore[no-untyped-def]
        calls.append(len(plans))
        if len(calls) == 3:
            raise DatabaseError("cannot write the database: disk full (test)")
        return stored(session, plans=plans, now=now)

    monkeypatch.setattr(outbox, "store_plans", refusing)
    with pytest.raises(DatabaseError, match="disk full"):
        plan(settings, engine, specs, "2026-03-04")
    before = digests()
    assert before == 6 or (before == 9 and "postgresql" in str(engine.url)), before
    assert threading.active_count() == threads

    monkeypatch.setattr(outbox, "store_plans", stored)
    done = plan(settings, engine, specs, "2026-03-04")
    assert (done.planned + done.skipped, done.existing) == (10 - before, before)
    assert digests() == 10
    assert threading.active_count() == threads
