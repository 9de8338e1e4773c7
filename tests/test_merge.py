"""One paper, many sources: merged storage, per-source windows, per-subscriber sources, the feed rule.

Papers are stored through store.upsert_papers and planned through pipeline.plan_digests on real
databases (SQLite, and PostgreSQL when configured); the sources' own parsers are tested elsewhere.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, time

import sqlalchemy as sa
from sqlmodel import select

from digestbot import app, pipeline, store
from digestbot.db import open_database, session_scope
from digestbot.errors import FetchError
from digestbot.mail.backends import Envelope
from digestbot.mail.ratelimit import RateLimiter
from digestbot.models import Paper, PaperSource
from digestbot.outbox import RetryPolicy
from digestbot.settings import load_settings
from digestbot.sources.base import FetchedPaper
from digestbot.subscribers import SubscriberSpec


class Keep:
    """A mail backend that keeps each recipient it is handed."""

    def __init__(self) -> None:
        self.to: list[str] = []

    def send(self, envelope: Envelope, *, then: str | None = None) -> None:
        self.to.append(envelope.recipient)

    def close(self) -> None:
        pass


def at(day: str, hour: int = 12) -> datetime:
    return datetime.fromisoformat(day).replace(hour=hour, tzinfo=UTC)


def hf_paper(key: str, day: str, **kw: object) -> FetchedPaper:
    values: dict[str, object] = {
        "arxiv_id": key,
        "title": f"Diffusion paper {key}",
        "summary": "We study diffusion models.",
        "authors": ("Ada Lovelace",),
        "published_at": None,
        "featured_at": at(day, 8),
        "upvotes": 40,
        "num_comments": 2,
        "ai_summary": "A TL;DR.",
        "github_repo": "https://github.com/x/y",
    }
    values.update(kw)
    return FetchedPaper(**values)  # type: ignore[arg-type]


def arxiv_paper(key: str, day: str, **kw: object) -> FetchedPaper:
    values: dict[str, object] = {
        "arxiv_id": key,
        "title": f"Diffusion paper {key}",
        "summary": "We study diffusion models.",
        "authors": ("Ada Lovelace",),
        "published_at": None,
        "featured_at": at(day, 5),
        "categories": ("cs.LG", "cs.CV"),
        "version": 1,
    }
    values.update(kw)
    return FetchedPaper(**values)  # type: ignore[arg-type]


def person(email: str, **kw: object) -> SubscriberSpec:
    values: dict[str, object] = {
        "email": email,
        "name": None,
        "keywords": ("diffusion",),
        "exclude": (),
        "authors": (),
        "min_upvotes": 0,
        "send_at": time(7, 0),
        "timezone": "UTC",
        "max_papers": 25,
        "send_empty": False,
    }
    values.update(kw)
    return SubscriberSpec(**values)  # type: ignore[arg-type]


def put(engine, source: str, papers: list[FetchedPaper], day: str) -> store.StoreResult:  # type: ignore[no-untyped-def]
    with session_scope(engine) as s:
        return store.upsert_papers(s, papers=papers, now=at(day, 6), source=source)


def plan(engine, specs: list[SubscriberSpec], day: str) -> dict[str, list[str]]:  # type: ignore[no-untyped-def]
    """Plan `day` for `specs` at 23:00 UTC; returns each subscriber's planned paper keys."""
    now = at(day, 23)
    recipients = pipeline.sync_subscribers(engine, specs, now=now)
    pipeline.plan_digests(
        engine,
        recipients,
        as_of=now,
        lookback=0,
        day=date.fromisoformat(day),
        from_addr="bot@example.org",
        now=now,
    )
    with session_scope(engine) as s:
        rows = s.execute(
            sa.text(
                "SELECT s.email, i.arxiv_id FROM digest_items i JOIN digests d ON d.id = i.digest_id "
                "JOIN subscribers s ON s.id = d.subscriber_id WHERE d.period = :p"
            ),
            {"p": day},
        ).all()
    out: dict[str, list[str]] = {sp.email: [] for sp in specs}
    for email, key in rows:
        out[email].append(key)
    return out


def test_one_paper_from_two_sources_is_stored_once_with_both_sources_facts(db_url: str) -> None:
    """The same arXiv id from HF and from arXiv is one stored paper with HF's upvotes, TL;DR and
    repo and arXiv's categories and version, and both sources named."""
    engine = open_database(db_url)
    first = put(engine, "hf", [hf_paper("2303.00001", "2026-03-02")], "2026-03-02")
    second = put(engine, "arxiv-ml", [arxiv_paper("2303.00001", "2026-03-02")], "2026-03-02")
    assert (first.new, first.updated) == (1, 0)
    assert (second.new, second.updated) == (0, 1)
    with session_scope(engine) as s:
        [row] = s.exec(select(Paper)).all()
        assert row.upvotes == 40 and row.ai_summary == "A TL;DR."
        assert row.github_repo == "https://github.com/x/y"
        assert row.categories == ["cs.LG", "cs.CV"] and row.version == 1
        assert row.sources == ["hf", "arxiv-ml"]
        assert sorted(r.source for r in s.exec(select(PaperSource)).all()) == ["arxiv-ml", "hf"]
    again = put(engine, "arxiv-ml", [arxiv_paper("2303.00001", "2026-03-02")], "2026-03-03")
    assert (again.new, again.updated) == (0, 0)
    engine.dispose()


def test_a_source_without_upvotes_never_erases_them(db_url: str) -> None:
    """An arXiv sighting after HF's keeps the paper's upvotes, so it stays trending."""
    engine = open_database(db_url)
    put(engine, "hf", [hf_paper("2303.00002", "2026-03-02", upvotes=99)], "2026-03-02")
    put(engine, "arxiv-ml", [arxiv_paper("2303.00002", "2026-03-03")], "2026-03-03")
    with session_scope(engine) as s:
        assert s.get(Paper, "2303.00002").upvotes == 99  # type: ignore[union-attr]
    engine.dispose()


def test_a_new_version_updates_a_known_paper_and_is_never_a_new_one(db_url: str) -> None:
    """An arXiv `replace` of a stored paper updates its title, abstract, authors and version; one of
    a paper never stored is not stored, so it is never mailed as new."""
    engine = open_database(db_url)
    put(engine, "arxiv-ml", [arxiv_paper("2303.00003", "2026-03-02")], "2026-03-02")
    revised = arxiv_paper(
        "2303.00003",
        "2026-03-04",
        title="Diffusion paper, revised",
        summary="Now with experiments.",
        authors=("Ada Lovelace", "Alan Turing"),
        version=2,
        revision=True,
    )
    unknown = arxiv_paper("2303.00004", "2026-03-04", version=3, revision=True)
    result = put(engine, "arxiv-ml", [revised, unknown], "2026-03-04")
    assert (result.new, result.updated) == (0, 1)
    with session_scope(engine) as s:
        row = s.get(Paper, "2303.00003")
        assert row is not None and row.title == "Diffusion paper, revised"
        assert row.authors == ["Ada Lovelace", "Alan Turing"] and row.version == 2
        assert s.get(Paper, "2303.00004") is None
        featured = s.exec(select(PaperSource.featured_at)).all()
        assert featured == [at("2026-03-02", 5)]  # the revision is not a new sighting
    stale = dataclasses.replace(revised, title="Older", version=1)
    assert put(engine, "arxiv-ml", [stale], "2026-03-05").updated == 0
    engine.dispose()


def test_subscribers_get_only_their_sources_and_never_a_paper_twice(db_url: str) -> None:
    """A paper arXiv announces on Monday and HF features on Wednesday reaches the arXiv follower
    on Monday, the HF-only follower on Wednesday, and the follower of both only once."""
    engine = open_database(db_url)
    people = [
        person("arx@example.org", sources=("arxiv-ml",)),
        person("hf@example.org", sources=("hf",)),
        person("both@example.org"),
    ]
    put(engine, "arxiv-ml", [arxiv_paper("2303.00005", "2026-03-02")], "2026-03-02")
    monday = plan(engine, people, "2026-03-02")
    assert monday == {
        "arx@example.org": ["2303.00005"],
        "hf@example.org": [],
        "both@example.org": ["2303.00005"],
    }
    put(engine, "hf", [hf_paper("2303.00005", "2026-03-04")], "2026-03-04")
    wednesday = plan(engine, people, "2026-03-04")
    assert wednesday == {
        "arx@example.org": [],
        "hf@example.org": ["2303.00005"],
        "both@example.org": [],
    }
    engine.dispose()


def test_trending_takes_only_papers_with_upvotes(db_url: str) -> None:
    """A trending-only subscriber of every source gets HF's upvoted papers, never an arXiv
    paper that has no upvotes."""
    engine = open_database(db_url)
    put(engine, "hf", [hf_paper("2303.00006", "2026-03-02", upvotes=5)], "2026-03-02")
    put(engine, "arxiv-ml", [arxiv_paper("2303.00007", "2026-03-02")], "2026-03-02")
    got = plan(engine, [person("t@example.org", keywords=(), trending=5)], "2026-03-02")
    assert got == {"t@example.org": ["2303.00006"]}
    engine.dispose()


def test_a_failed_source_holds_only_the_subscribers_who_follow_it(db_url: str) -> None:
    """When arXiv failed today, the rule holds the digest of the subscriber who follows every
    source (naming the day) and not that of the HF-only subscriber."""
    engine = open_database(db_url)
    now = at("2026-03-02", 23)
    specs = [person("hf@example.org", sources=("hf",)), person("all@example.org")]
    recipients = pipeline.known_recipients(engine, specs)
    failed = {"arxiv-ml": (date(2026, 3, 2),)}
    held = pipeline.unread_days(engine, recipients, failed_days=failed, as_of=now, lookback=0)
    assert held == {"all@example.org": (date(2026, 3, 2),)}
    engine.dispose()


def test_a_feed_cannot_replace_arxiv_categories_or_link(db_url: str) -> None:
    """A journal feed carrying an arXiv paper adds its categories after arXiv's and keeps the
    first link, so `category:cs.LG` still matches and the stored link stays."""
    engine = open_database(db_url)
    put(engine, "arxiv-ml", [arxiv_paper("2303.00010", "2026-03-02")], "2026-03-02")
    journal = arxiv_paper(
        "2303.00010",
        "2026-03-03",
        categories=("Neuroscience",),
        link="https://j.example/1",
        version=None,
    )
    put(engine, "journal", [journal], "2026-03-03")
    later = arxiv_paper("2303.00010", "2026-03-04", link="https://j.example/2", version=None)
    put(engine, "journal", [later], "2026-03-04")
    with session_scope(engine) as s:
        row = s.get(Paper, "2303.00010")
        assert row is not None
        assert row.categories == ["cs.LG", "cs.CV", "Neuroscience"]
        assert row.link == "https://j.example/1"
    engine.dispose()


def test_min_upvotes_holds_back_only_papers_that_have_upvotes(db_url: str) -> None:
    """With min_upvotes = 5, an arXiv-only paper (no upvotes) is still mailed, an HF paper with
    2 upvotes is not, and one with 9 is."""
    engine = open_database(db_url)
    put(engine, "arxiv-ml", [arxiv_paper("2303.00020", "2026-03-02")], "2026-03-02")
    put(
        engine,
        "hf",
        [
            hf_paper("2303.00021", "2026-03-02", upvotes=2),
            hf_paper("2303.00022", "2026-03-02", upvotes=9),
        ],
        "2026-03-02",
    )
    got = plan(engine, [person("m@example.org", min_upvotes=5)], "2026-03-02")
    assert sorted(got["m@example.org"]) == ["2303.00020", "2303.00022"]
    engine.dispose()


def test_an_hf_sighting_gives_an_arxiv_paper_its_upvotes(db_url: str) -> None:
    """A paper arXiv brought first and HF featured later has upvotes from then on (min_upvotes
    and trending apply to it)."""
    engine = open_database(db_url)
    put(engine, "arxiv-ml", [arxiv_paper("2303.00030", "2026-03-02")], "2026-03-02")
    with session_scope(engine) as s:
        assert s.get(Paper, "2303.00030").has_upvotes is False  # type: ignore[union-attr]
    put(engine, "hf", [hf_paper("2303.00030", "2026-03-03", upvotes=3)], "2026-03-03")
    with session_scope(engine) as s:
        row = s.get(Paper, "2303.00030")
        assert row is not None and row.has_upvotes and row.upvotes == 3
    engine.dispose()


def test_subscribers_of_working_sources_are_planned_when_another_source_fails(
    db_url: str,
) -> None:
    """When arXiv failed today, `send` plans and mails the HF-only subscriber and holds the one
    who follows every source, saying so (not a refusal for everyone)."""

    engine = open_database(db_url)
    put(engine, "hf", [hf_paper("2303.00040", "2026-03-02")], "2026-03-02")
    settings = load_settings(environ={"DIGESTBOT_DATABASE_URL": db_url}, env_file=None)
    backend = Keep()
    people = [person("hf@example.org", sources=("hf",)), person("all@example.org")]
    now = at("2026-03-02", 23)
    mail = app.mail_context(settings)
    prepared = pipeline.prepare_send(
        engine,
        people,
        only=None,
        from_addr=mail.from_addr,
        as_of=now,
        day=date(2026, 3, 2),
        lookback=0,
        clock=lambda: now,
        fetch_error=FetchError("source arxiv-ml: unreachable"),
        failed_days={"arxiv-ml": (date(2026, 3, 2),)},
    )
    done = pipeline.finish_send(
        engine,
        prepared,
        backend=backend,
        mail=mail,
        policy=RetryPolicy(initial=60, maximum=600, give_up=3600),
        limiter=RateLimiter(None),
        clock=lambda: now,
    )
    assert backend.to == ["hf@example.org"]
    assert done.held is not None and "1 subscriber(s) not planned" in str(done.held)
    assert "2026-03-02" in str(done.held)
    engine.dispose()
