"""Several sources end to end: HF and arXiv served by a real local HTTP server, fetched through the
configured `[[sources]]`, merged into one paper each, a failing source next to a working one, the
3 s arXiv pause (measured on an injected clock), conditional GET, and the CLI's fetch and status."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlmodel import select
from typer.testing import CliRunner

from digestbot import app, pipeline
from digestbot.cli import cli
from digestbot.db import open_database, session_scope
from digestbot.models import FetchRun, Paper
from digestbot.settings import load_settings
from digestbot.sources.http import Pacer
from digestbot.subscribers import parse_config
from tests.helpers import FIXTURES, FakeClock, FeedServer, Reply, Seen

TESTS = Path(__file__).resolve().parent / "fixtures"
ARXIV = TESTS / "arxiv" / "rss"
HF = FIXTURES
CATS = "cs.AI+cs.CL+cs.CV+cs.LG"
runner = CliRunner()


def hf_reply(seen: Seen) -> Reply:
    """The HF API: the saved day of `?date=`, page 0 only (the fixture days hold < 100 papers)."""
    query = parse_qs(urlsplit(seen.path).query)
    day, page = query["date"][0], query.get("p", ["0"])[0]
    path = HF / f"{day}.json"
    body = path.read_bytes() if path.exists() and page == "0" else b"[]"
    return Reply(body, 200, {"Content-Type": "application/json"})


def rss(day: str) -> Reply:
    return Reply((ARXIV / f"{day}.xml").read_bytes(), 200, {"ETag": f'"{day}"'})


def config_text(server: FeedServer, *, people: str = "") -> str:
    return (
        f'[[sources]]\nname = "hf"\nkind = "hf"\nurl = "{server.url("/api/daily_papers")}"\n\n'
        f'[[sources]]\nname = "arxiv"\nkind = "arxiv"\ncategories = ["cs.AI", "cs.CL", "cs.CV", "cs.LG"]\n'
        f'url = "{server.url("/rss/" + CATS)}"\napi_url = "{server.url("/api/query")}"\n\n'
        + (people or '[[subscribers]]\nemail = "ada@example.org"\nkeywords = ["diffusion"]\n')
    )


@pytest.fixture
def setup(tmp_path: Path, db_url: str):  # type: ignore[no-untyped-def]
    with FeedServer() as server:
        server.route("/api/daily_papers", hf_reply)
        settings = load_settings(
            environ={"DIGESTBOT_DATABASE_URL": db_url, "DIGESTBOT_LOOKBACK_DAYS": "0"},
            env_file=None,
        )
        engine = open_database(db_url)
        yield server, settings, engine
        engine.dispose()


def fetch_all(server, settings, engine, day: str, clock: FakeClock | None = None):  # type: ignore[no-untyped-def]
    config = parse_config(config_text(server), source="subscribers.toml")
    clock = clock or FakeClock()
    pacer = Pacer(3.0, sleep=clock.sleep, monotonic=clock.monotonic)
    sources = app.make_sources(settings, config.sources, pacer=pacer)
    when = datetime.fromisoformat(day).replace(hour=6, tzinfo=UTC)
    return pipeline.fetch_sources(
        engine, sources, today=date.fromisoformat(day), lookback=0, clock=lambda: when
    )


def test_the_same_paper_from_hf_and_arxiv_is_stored_once_with_both_sources(setup) -> None:  # type: ignore[no-untyped-def]
    """HF and arXiv bring the same 15 papers on 2026-03-02: 15 stored, each naming both sources,
    with HF's upvotes and arXiv's categories and version."""
    server, settings, engine = setup
    server.route("/rss/" + CATS, rss("2026-03-02"))
    report = fetch_all(server, settings, engine, "2026-03-02")
    assert report.failed == ()
    hf, arxiv = report.done
    assert (hf.name, hf.new) == ("hf", 15)
    assert (arxiv.name, arxiv.new, arxiv.updated) == ("arxiv", 0, 15)
    with session_scope(engine) as s:
        papers = s.exec(select(Paper)).all()
        assert len(papers) == 15
        assert all(p.sources == ["hf", "arxiv"] for p in papers)
        assert all(p.categories and p.version and p.upvotes > 0 for p in papers)


def test_a_failing_source_does_not_stop_the_others(setup) -> None:  # type: ignore[no-untyped-def]
    """An HTML error page from arXiv rejects arXiv alone, naming it; HF's papers are stored and
    each source has its own fetch record."""
    server, settings, engine = setup
    server.route("/rss/" + CATS, Reply(b"<!DOCTYPE html><html><body>Oops</body></html>", 200))
    report = fetch_all(server, settings, engine, "2026-03-02")
    assert [d.name for d in report.done] == ["hf"]
    [failed] = report.failed
    assert failed.name == "arxiv" and failed.days == (date(2026, 3, 2),)
    assert "source arxiv" in str(report.error()) and "HTML" in str(report.error())
    with session_scope(engine) as s:
        assert len(s.exec(select(Paper)).all()) == 15
        runs = {r.source: r.ok for r in s.exec(select(FetchRun)).all()}
    assert runs == {"hf": True, "arxiv": False}


def test_arxiv_is_asked_with_its_validators_and_a_304_brings_nothing(setup) -> None:  # type: ignore[no-untyped-def]
    """The second fetch of an unchanged listing sends If-None-Match and stores nothing new."""
    server, settings, engine = setup
    server.route("/rss/" + CATS, rss("2026-03-02"))
    fetch_all(server, settings, engine, "2026-03-02")
    report = fetch_all(server, settings, engine, "2026-03-02")
    arxiv = report.done[1]
    assert arxiv.not_modified and arxiv.fetched == 0
    asked = [r for r in server.requests if r.path.startswith("/rss/")]
    assert "if-none-match" not in asked[0].headers
    assert asked[1].headers["if-none-match"] == '"2026-03-02"'


def test_requests_to_arxiv_hosts_are_3_seconds_apart(setup) -> None:  # type: ignore[no-untyped-def]
    """A first fetch with a lookback reads the listing, then catches up through the API, and the
    pacer spaces the two arXiv requests by 3 s (on its injected clock)."""
    server, settings, engine = setup
    server.route("/rss/" + CATS, rss("2026-03-04"))
    api = (TESTS / "arxiv" / "api_query_seed.xml").read_bytes()
    server.route("/api/query", Reply(api, 200))
    config = parse_config(config_text(server), source="subscribers.toml")
    clock = FakeClock()
    pacer = Pacer(3.0, sleep=clock.sleep, monotonic=clock.monotonic)
    [arxiv] = app.make_sources(settings, config.sources[1:], pacer=pacer)
    when = datetime(2026, 3, 4, 6, tzinfo=UTC)
    pipeline.fetch_sources(engine, [arxiv], today=date(2026, 3, 4), lookback=2, clock=lambda: when)
    hits = [r.path for r in server.requests if r.path.startswith(("/rss/", "/api/query"))]
    assert hits[0].startswith("/rss/") and any(h.startswith("/api/query") for h in hits)
    assert clock.sleeps and all(abs(s - 3.0) < 1e-9 for s in clock.sleeps)


@pytest.fixture
def cli_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    with FeedServer() as server:
        server.route("/api/daily_papers", hf_reply)
        monkeypatch.chdir(tmp_path)
        for key in ("DIGESTBOT_FEED_URL", "DIGESTBOT_SUBSCRIBERS", "HF_TOKEN"):
            monkeypatch.delenv(key, raising=False)
        monkeypatch.setenv("DIGESTBOT_DATABASE_URL", f"sqlite:///{tmp_path / 'digestbot.db'}")
        monkeypatch.setenv("DIGESTBOT_LOOKBACK_DAYS", "0")
        monkeypatch.setenv("DIGESTBOT_MAIL_DIR", str(tmp_path / "outbox"))
        (tmp_path / "subscribers.toml").write_text(config_text(server))
        yield server, tmp_path


def test_fetch_names_each_source_and_exits_1_when_one_fails(cli_dir) -> None:  # type: ignore[no-untyped-def]
    """`digestbot fetch` stores HF, reports arXiv's failure by name and exits 1; `status` then
    lists both sources with their outcome."""
    server, _ = cli_dir
    server.route("/rss/" + CATS, Reply(b"<rss><channel><item>", 200))
    result = runner.invoke(cli, ["fetch", "--date", "2026-03-02"])
    assert result.exit_code == 1, result.output
    assert "source hf: fetched 15 papers" in result.output
    [error] = [line for line in result.output.splitlines() if "error" in line]
    assert error.startswith("digestbot: error: source arxiv: ") and "hf" not in error
    status = runner.invoke(cli, ["status"])
    assert "source hf: last fetch" in status.output and "ok, 15 new" in status.output
    assert "source arxiv: last fetch" in status.output and "FAILED" in status.output
    data = json.loads(runner.invoke(cli, ["status", "--json"]).stdout)
    assert [(s["name"], s["ok"]) for s in data["sources"]] == [("hf", True), ("arxiv", False)]


def test_fetch_source_fetches_only_that_source(cli_dir) -> None:  # type: ignore[no-untyped-def]
    """`digestbot fetch --source arxiv` asks arXiv only; an unknown name is a usage error."""
    server, _ = cli_dir
    server.route("/rss/" + CATS, rss("2026-03-03"))
    result = runner.invoke(cli, ["fetch", "--source", "arxiv", "--date", "2026-03-03"])
    assert result.exit_code == 0, result.output
    assert "source arxiv: fetched" in result.output and "source hf" not in result.output
    assert not any(r.path.startswith("/api/daily_papers") for r in server.requests)
    bad = runner.invoke(cli, ["fetch", "--source", "nope"])
    assert bad.exit_code == 2 and "no source named nope" in bad.output


def test_send_mails_each_paper_once_whatever_brought_it(cli_dir) -> None:  # type: ignore[no-untyped-def]
    """`digestbot send` with HF and arXiv lists each matching paper once in the digest."""
    server, folder = cli_dir
    server.route("/rss/" + CATS, rss("2026-03-02"))
    result = runner.invoke(cli, ["send", "--date", "2026-03-02"])
    assert result.exit_code == 0, result.output
    [eml] = list((folder / "outbox").glob("*.eml"))
    text = eml.read_text()
    links = [line for line in text.splitlines() if "arxiv.org/abs/" in line]
    ids = [link.split("arxiv.org/abs/")[1].split()[0].strip("<>)") for link in links]
    assert ids and len(ids) == len(set(ids)), ids


def test_a_moved_source_is_fetched_afresh_not_with_the_old_validators(setup) -> None:  # type: ignore[no-untyped-def]
    """After a source's url changes (new categories), its first fetch sends no If-None-Match
    from the old address, so the new listing is read whole."""
    server, settings, engine = setup
    server.route("/rss/" + CATS, rss("2026-03-02"))
    fetch_all(server, settings, engine, "2026-03-02")
    server.route("/rss/cs.CL", rss("2026-03-02"))
    text = config_text(server).replace("/rss/" + CATS, "/rss/cs.CL")
    config = parse_config(text, source="subscribers.toml")
    clock = FakeClock()
    pacer = Pacer(3.0, sleep=clock.sleep, monotonic=clock.monotonic)
    [moved] = app.make_sources(settings, config.sources[1:], pacer=pacer)
    when = datetime(2026, 3, 2, 7, tzinfo=UTC)
    pipeline.fetch_sources(engine, [moved], today=date(2026, 3, 2), lookback=0, clock=lambda: when)
    [asked] = [r for r in server.requests if r.path == "/rss/cs.CL"]
    assert "if-none-match" not in asked.headers


def test_check_refuses_a_source_path_that_does_not_exist(cli_dir) -> None:  # type: ignore[no-untyped-def]
    """`digestbot check` exits 2 naming the file, line and field of a source whose saved
    file is missing, as `send` would."""
    _, folder = cli_dir
    (folder / "subscribers.toml").write_text(
        '[[sources]]\nname = "j"\nkind = "feed"\nurl = "missing/feed.xml"\n\n'
        '[[subscribers]]\nemail = "ada@example.org"\nkeywords = ["x"]\n'
    )
    for command in (["check"], ["send", "--dry-run"]):
        result = runner.invoke(cli, command)
        assert result.exit_code == 2, result.output
        assert "subscribers.toml:1" in result.output and "sources[1].url" in result.output
