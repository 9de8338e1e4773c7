"""End-to-end tests of the `digestbot` command: the real CLI, a real SQLite file, a real SMTP server."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.main import get_command
from typer.testing import CliRunner

from digestbot.cli import cli
from tests.helpers import SMTPServer, fixture_day, write_day

runner = CliRunner()
README = Path(__file__).resolve().parent.parent / "README.md"


def invoke(*args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return runner.invoke(cli, list(args), env=env, catch_exceptions=False)


def db_rows(workdir: Path, query: str) -> list[tuple]:
    engine = sa.create_engine(f"sqlite:///{workdir / 'digestbot.db'}")
    with engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(sa.text(query))]
    engine.dispose()
    return rows


def sent_ids(message) -> set[str]:  # type: ignore[no-untyped-def]
    """arXiv ids linked from a received digest's text part."""
    text = message.get_body(preferencelist=("plain",)).get_content()
    return set(re.findall(r"huggingface\.co/papers/([0-9.]+)", text))


# -- the main job ---------------------------------------------------------------------------


def test_send_end_to_end_over_smtp(workdir: Path, smtp_server: SMTPServer) -> None:
    """`digestbot send` fetches, matches and mails each subscriber one digest of their matching papers."""
    result = invoke("send", "--date", "2026-03-04", env=smtp_server.env())
    assert result.exit_code == 0, result.output
    received = smtp_server.handler.received
    assert sorted(r.rcpt_tos[0] for r in received) == [
        "ada@example.org",
        "alan@example.org",
        "grace@example.org",
    ]
    for r in received:
        assert r.rcpt_tos == [r.message["To"].addresses[0].addr_spec]
        assert r.mail_from == "digest@lab.example.net"
    ada = smtp_server.handler.to("ada@example.org")[0].message
    assert ada["Subject"] and "Ada Lovelace" in str(ada["To"])
    ids = sent_ids(ada)
    assert ids, "Ada's filters match papers in the fixture window"
    text = ada.get_body(preferencelist=("plain",)).get_content()
    assert "diffusion" in text.lower() or "speculative decoding" in text.lower()
    assert ada.get_body(preferencelist=("html",)) is not None
    assert "sent 3" in result.output


def test_second_run_sends_nothing_new(workdir: Path, smtp_server: SMTPServer) -> None:
    """Running `digestbot send` twice for the same day mails nobody a second time."""
    assert invoke("send", "--date", "2026-03-04", env=smtp_server.env()).exit_code == 0
    first = len(smtp_server.handler.received)
    again = invoke("send", "--date", "2026-03-04", env=smtp_server.env())
    assert again.exit_code == 0, again.output
    assert len(smtp_server.handler.received) == first
    assert (
        "planned 0 new, 0 skipped with nothing new, 3 already had their digest for their period, 0 off;"
        in (again.stdout)
    )
    assert "already done" not in again.output


def test_paper_featured_later_goes_out_in_next_digest(
    workdir: Path, feed_dir: Path, smtp_server: SMTPServer
) -> None:
    """A matching paper featured after a digest was sent arrives in the next day's digest, once."""
    assert invoke("send", "--date", "2026-03-02", env=smtp_server.env()).exit_code == 0
    first = {r.rcpt_tos[0]: sent_ids(r.message) for r in smtp_server.handler.received}
    assert invoke("send", "--date", "2026-03-03", env=smtp_server.env()).exit_code == 0
    later = [r for r in smtp_server.handler.received[len(first) :]]
    march3 = {it["paper"]["id"] for it in fixture_day("2026-03-03")}
    got_later = {r.rcpt_tos[0]: sent_ids(r.message) for r in later}
    assert any(ids & march3 for ids in got_later.values()), "some 2026-03-03 paper matched someone"
    for email, ids in got_later.items():
        assert not ids & first.get(email, set()), f"{email} got a paper twice"
    # Every paper sent is recorded once per subscriber in the database.
    dupes = db_rows(
        workdir,
        "SELECT subscriber_id, arxiv_id, COUNT(*) FROM digest_items GROUP BY 1, 2 HAVING COUNT(*) > 1",
    )
    assert dupes == []


def test_file_backend_is_the_default(workdir: Path) -> None:
    """With no mail settings, digests are written as .eml files in outbox/ (no mail server needed)."""
    result = invoke("send", "--date", "2026-03-04")
    assert result.exit_code == 0, result.output
    files = sorted((workdir / "outbox").glob("*.eml"))
    assert len(files) == 3
    assert all(f.read_bytes().startswith(b"From:") or b"\r\nTo:" in f.read_bytes() for f in files)


def test_dry_run_sends_and_records_nothing(workdir: Path, smtp_server: SMTPServer) -> None:
    """`send --dry-run` shows what each subscriber would get, sends nothing and records no digest."""
    result = invoke("send", "--date", "2026-03-04", "--dry-run", env=smtp_server.env())
    assert result.exit_code == 0, result.output
    assert "ada@example.org" in result.output and "dry run" in result.output
    assert smtp_server.handler.received == []
    for table in ("digests", "papers", "fetch_runs", "subscribers"):
        assert db_rows(workdir, f"SELECT COUNT(*) FROM {table}") == [(0,)], table
    # ... and a real send afterwards still sends everything.
    assert invoke("send", "--date", "2026-03-04", env=smtp_server.env()).exit_code == 0
    assert len(smtp_server.handler.received) == 3


def test_send_one_subscriber(workdir: Path, smtp_server: SMTPServer) -> None:
    """`send --subscriber EMAIL` mails only that subscriber; an unknown address is a usage error."""
    result = invoke(
        "send", "--date", "2026-03-04", "--subscriber", "grace@example.org", env=smtp_server.env()
    )
    assert result.exit_code == 0, result.output
    assert [r.rcpt_tos for r in smtp_server.handler.received] == [["grace@example.org"]]
    bad = invoke("send", "--subscriber", "nobody@example.org", env=smtp_server.env())
    assert bad.exit_code == 2 and "nobody@example.org" in bad.output
    # The others stay subscribed: a later full send still mails them.
    assert db_rows(workdir, "SELECT COUNT(*) FROM subscribers WHERE active") == [(3,)]
    assert (
        invoke("send", "--date", "2026-03-04", "--no-fetch", env=smtp_server.env()).exit_code == 0
    )
    assert sorted(r.rcpt_tos[0] for r in smtp_server.handler.received) == [
        "ada@example.org",
        "alan@example.org",
        "grace@example.org",
    ]


def test_removed_subscriber_gets_no_pending_digest(workdir: Path, smtp_server: SMTPServer) -> None:
    """Someone removed from the subscribers file is not mailed a digest that was waiting for a retry."""
    smtp_server.handler.reject_rcpt["grace@example.org"] = "451 4.3.0 try again later"
    assert invoke("send", "--date", "2026-03-04", env=smtp_server.env()).exit_code == 1
    text = (workdir / "subscribers.toml").read_text()
    grace = text[
        text.index('[[subscribers]]\nemail = "grace') : text.index('[[subscribers]]\nemail = "alan')
    ]
    (workdir / "subscribers.toml").write_text(text.replace(grace, ""))
    smtp_server.handler.reject_rcpt.clear()
    db = sa.create_engine(f"sqlite:///{workdir / 'digestbot.db'}")
    with db.begin() as conn:  # the retry is due now
        conn.execute(
            sa.text(
                "UPDATE digests SET next_attempt_at = '2000-01-01 00:00:00' WHERE state = 'deferred'"
            )
        )
    db.dispose()
    again = invoke("send", "--date", "2026-03-04", "--no-fetch", env=smtp_server.env())
    assert again.exit_code == 0, again.output
    assert smtp_server.handler.to("grace@example.org") == []


# -- broken feeds ---------------------------------------------------------------------------


class FeedServer:
    """A real local HTTP server answering every request with one canned response."""

    def __init__(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        outer = self
        self.requests: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests.append(self.path)
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/daily_papers"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def feed_server() -> Iterator[list[FeedServer]]:
    servers: list[FeedServer] = []
    yield servers
    for s in servers:
        s.close()


GOOD_DAY = json.dumps(fixture_day("2026-03-04")).encode()


@pytest.mark.parametrize(
    ("status", "body", "ctype", "expect"),
    [
        (503, b"Service Unavailable", "text/plain", "503"),
        (200, b"<!DOCTYPE html><html><body>Hugging Face</body></html>", "text/html", "HTML"),
        (200, GOOD_DAY[: len(GOOD_DAY) // 2], "application/json", "JSON"),
        (200, b'{"papers": []}', "application/json", "list"),
        (200, b'[{"paper": {"title": "no id"}}]', "application/json", "id"),
    ],
    ids=["http-503", "html", "truncated-json", "wrong-shape", "missing-id"],
)
def test_broken_feed_stores_nothing_and_exits_1(
    workdir: Path,
    smtp_server: SMTPServer,
    feed_server: list[FeedServer],
    status: int,
    body: bytes,
    ctype: str,
    expect: str,
) -> None:
    """A feed answering 503, HTML, truncated JSON or the wrong shape stores nothing, sends nothing, exits 1 naming the URL."""
    server = FeedServer(status, body, ctype)
    feed_server.append(server)
    env = {**smtp_server.env(), "DIGESTBOT_FEED_URL": server.url, "DIGESTBOT_FETCH_RETRIES": "1"}
    result = runner.invoke(cli, ["send", "--date", "2026-03-04"], env=env)
    assert result.exit_code == 1, result.output
    assert server.url.split("/api")[0] in result.output
    assert expect.lower() in result.output.lower()
    assert db_rows(workdir, "SELECT COUNT(*) FROM papers") == [(0,)]
    assert db_rows(workdir, "SELECT COUNT(*) FROM digests") == [(0,)]
    assert smtp_server.handler.received == []
    assert db_rows(workdir, "SELECT ok FROM fetch_runs") == [(0,)]


def test_fetch_over_http_stores_papers(workdir: Path, feed_server: list[FeedServer]) -> None:
    """`digestbot fetch` over HTTP stores the day's papers and reports how many were new."""
    server = FeedServer(200, GOOD_DAY)
    feed_server.append(server)
    result = invoke("fetch", "--date", "2026-03-04", env={"DIGESTBOT_FEED_URL": server.url})
    assert result.exit_code == 0, result.output
    assert "15 new" in result.output
    assert any("date=2026-03-04" in p for p in server.requests)
    again = invoke("fetch", "--date", "2026-03-04", env={"DIGESTBOT_FEED_URL": server.url})
    assert "0 new" in again.output
    assert db_rows(workdir, "SELECT COUNT(*) FROM papers") == [(15,)]


# -- configuration errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('[[subscribers]]\nemail = "not-an-address"\nkeywords = ["x"]\n', "email"),
        (
            '[[subscribers]]\nemail = "a@example.org"\nkeywords = ["x"]\nsend_at = "25:00"\n',
            "send_at",
        ),
        ('[[subscribers]]\nemail = "a@example.org"\nkeywords = ["x"]\ncolour = "blue"\n', "colour"),
        ('[[subscribers]]\nemail = "a@example.org"\nkeywords = ["(diffusion"]\n', "column"),
    ],
    ids=["bad-email", "bad-time", "unknown-key", "bad-query"],
)
def test_invalid_subscribers_file_exits_2_and_sends_nothing(
    workdir: Path, smtp_server: SMTPServer, text: str, needle: str
) -> None:
    """A broken subscribers file is reported with file, line and field; exit 2; nothing fetched or sent."""
    (workdir / "subscribers.toml").write_text(text)
    result = invoke("send", "--date", "2026-03-04", env=smtp_server.env())
    assert result.exit_code == 2, result.output
    assert "subscribers.toml:" in result.output and needle in result.output
    assert smtp_server.handler.received == []
    assert not (workdir / "digestbot.db").exists() or db_rows(
        workdir, "SELECT COUNT(*) FROM papers"
    ) == [(0,)]


def test_bad_setting_exits_2(workdir: Path) -> None:
    """A bad setting value names the variable and exits 2."""
    result = invoke("send", env={"DIGESTBOT_MAIL_BACKEND": "pigeon"})
    assert result.exit_code == 2
    assert "DIGESTBOT_MAIL_BACKEND" in result.output


def test_check_validates_configuration(workdir: Path) -> None:
    """`digestbot check` says the configuration is fine, or names the broken query and exits 2."""
    ok = invoke("check")
    assert ok.exit_code == 0, ok.output
    assert "3 in subscribers.toml" in ok.output
    (workdir / "subscribers.toml").write_text(
        '[[subscribers]]\nemail = "a@example.org"\nkeywords = ["(diffusion OR sampling"]\n'
    )
    bad = invoke("check")
    assert bad.exit_code == 2
    assert (
        "subscribers.toml:3" in bad.output
        and "a@example.org" in bad.output
        and "column" in bad.output
    )


# -- delivery failures ----------------------------------------------------------------------


def test_one_rejected_subscriber_does_not_stop_the_others(
    workdir: Path, smtp_server: SMTPServer
) -> None:
    """An SMTP rejection for one subscriber is reported; the others still get their digest; exit 1."""
    smtp_server.handler.reject_rcpt["grace@example.org"] = "550 5.1.1 mailbox unavailable"
    result = invoke("send", "--date", "2026-03-04", env=smtp_server.env())
    assert result.exit_code == 1
    assert sorted(r.rcpt_tos[0] for r in smtp_server.handler.received) == [
        "ada@example.org",
        "alan@example.org",
    ]
    assert "grace@example.org" in result.output and "550" in result.output
    status = invoke("status")
    assert "grace@example.org" in status.output and "failed" in status.output


# -- hostile feed text ----------------------------------------------------------------------


def test_hostile_feed_text_cannot_add_headers_recipients_or_markup(
    workdir: Path, feed_dir: Path, smtp_server: SMTPServer
) -> None:
    """CR/LF, <script> and javascript: links in feed data never reach headers, recipients or markup."""
    items = fixture_day("2026-03-04")
    evil = items[0]["paper"]
    evil["title"] = "Diffusion\r\nBcc: victim@evil.example\r\nX-Evil: 1 <script>alert(1)</script>"
    evil["summary"] = (
        'diffusion <img src=x onerror=alert(1)> <a href="javascript:alert(1)">click</a>'
    )
    evil["authors"] = [{"name": "Eve\r\nCc: also@evil.example"}]
    evil["githubRepo"] = "javascript:alert(document.cookie)"
    evil["projectPage"] = "data:text/html,<script>alert(1)</script>"
    write_day(feed_dir, "2026-03-04", items)
    result = invoke("send", "--date", "2026-03-04", env=smtp_server.env())
    assert result.exit_code == 0, result.output
    for r in smtp_server.handler.received:
        assert len(r.rcpt_tos) == 1 and "evil" not in r.rcpt_tos[0]
        msg = r.message
        assert msg["Bcc"] is None and msg["Cc"] is None and msg["X-Evil"] is None
        html = msg.get_body(preferencelist=("html",)).get_content()
        assert "<script" not in html.lower()
        assert "<img" not in html.lower()
        hrefs = re.findall(r"""href\s*=\s*["']([^"']*)""", html, flags=re.IGNORECASE)
        assert hrefs and all(h.startswith(("https://", "http://", "mailto:")) for h in hrefs), hrefs
    ada_html = (
        smtp_server.handler.to("ada@example.org")[0]
        .message.get_body(preferencelist=("html",))
        .get_content()
    )
    assert "&lt;script&gt;" in ada_html


# -- other commands -------------------------------------------------------------------------


def test_init_writes_examples_and_creates_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`digestbot init` writes subscribers.toml, .env and the database, and never overwrites them."""
    monkeypatch.chdir(tmp_path)
    for key in ("DIGESTBOT_DATABASE_URL", "DIGESTBOT_SUBSCRIBERS"):
        monkeypatch.delenv(key, raising=False)
    result = invoke("init")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "subscribers.toml").read_text().startswith("#")
    assert "DIGESTBOT_MAIL_BACKEND" in (tmp_path / ".env").read_text()
    assert (tmp_path / "digestbot.db").exists()
    (tmp_path / "subscribers.toml").write_text("# mine\n")
    again = invoke("init")
    assert "kept existing subscribers.toml" in again.output
    assert (tmp_path / "subscribers.toml").read_text() == "# mine\n"
    check = invoke("check")  # the example subscribers file written by init is valid as shipped
    assert "configuration error" in check.output or check.exit_code == 0


def test_preview_renders_without_sending_or_recording(workdir: Path, tmp_path: Path) -> None:
    """`digestbot preview EMAIL` prints the next digest and writes its HTML, recording nothing."""
    assert invoke("fetch", "--date", "2026-03-04").exit_code == 0
    html = tmp_path / "ada.html"
    result = invoke(
        "preview", "ada@example.org", "--date", "2026-03-04", "--html", str(html), "--text"
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Subject: ")
    assert "huggingface.co/papers/" in result.stdout
    assert html.read_text().lstrip().lower().startswith("<!doctype html")
    assert db_rows(workdir, "SELECT COUNT(*) FROM digests") == [(0,)]
    assert not (workdir / "outbox").exists()


def test_match_lists_matches_with_explanation_as_json(workdir: Path) -> None:
    """`digestbot match QUERY --json` lists stored papers the query matches, with the words that matched."""
    assert invoke("fetch", "--date", "2026-03-04").exit_code == 0
    result = invoke("match", "diffusion", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert rows and all(r["matched"] == ["diffusion"] for r in rows)
    assert all(
        any("diffusion" in h.lower() for h in r["title_highlights"] + r["abstract_highlights"])
        for r in rows
    )
    assert rows == sorted(rows, key=lambda r: (-r["score"], -r["upvotes"]))
    bad = invoke("match", "title:(diffusion")
    assert bad.exit_code == 2 and "column" in bad.output


def test_status_reports_fetch_papers_and_digests(workdir: Path) -> None:
    """`digestbot status` shows each source's last fetch, the papers stored and the digests sent."""
    assert invoke("send", "--date", "2026-03-04").exit_code == 0
    result = invoke("status")
    assert result.exit_code == 0, result.output
    assert "source hf: last fetch " in result.output and "ok, " in result.output
    assert "papers stored: 45" in result.output
    assert "sent 3" in result.output


def test_status_after_a_failed_first_fetch_counts_the_subscribers_file(
    workdir: Path, feed_dir: Path
) -> None:
    """After a first `send` whose fetch failed, `status` says the file holds 3 subscribers and none is synced yet, naming them, instead of "active subscribers: 0"."""
    for f in feed_dir.glob("*.json"):
        f.write_text('{"broken": ')
    assert invoke("send", "--date", "2026-03-04").exit_code == 1
    result = invoke("status")
    assert result.exit_code == 0, result.output
    assert "active subscribers: 0" not in result.output
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("subscribers:"))
    assert "3 in subscribers.toml, 0 synced yet" in line, line
    assert all(e in line for e in ("ada@example.org", "grace@example.org", "alan@example.org"))
    data = json.loads(invoke("status", "--json").stdout)
    subs = data["subscribers"]
    assert (subs["in_file"], subs["synced"], subs["file_error"]) == (3, 0, None)
    assert sorted(subs["not_synced"]) == [
        "ada@example.org",
        "alan@example.org",
        "grace@example.org",
    ]
    assert data["last_fetch"]["ok"] is False and data["last_good_fetch_at"] is None


@pytest.mark.parametrize("problem", ["missing", "broken"])
def test_status_with_a_missing_or_broken_subscribers_file_warns_and_still_reports(
    workdir: Path, problem: str
) -> None:
    """A missing or broken subscribers file is one warning line in `status` (and `file_error` in --json), never a failure of the command."""
    assert invoke("send", "--date", "2026-03-04").exit_code == 0
    target = workdir / "subscribers.toml"
    if problem == "missing":
        target.unlink()
    else:
        target.write_text("[[subscribers]]\nemail = \n")
    result = invoke("status")
    assert result.exit_code == 0, result.output
    assert "sent 3" in result.stdout
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("subscribers:"))
    assert "3 synced" in line and "warning" in line and "subscribers.toml" in line, line
    data = json.loads(invoke("status", "--json").stdout)
    assert data["subscribers"]["in_file"] is None and data["subscribers"]["synced"] == 3
    assert "subscribers.toml" in data["subscribers"]["file_error"]


def test_status_json_is_one_object_with_stable_keys_and_utc_times(workdir: Path) -> None:
    """`status --json` prints one JSON object with the same facts as the text, every time in ISO 8601 UTC, and writes nothing."""
    assert invoke("send", "--date", "2026-03-04").exit_code == 0
    before = (workdir / "digestbot.db").stat().st_mtime_ns
    result = invoke("status", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) == {
        "generated_at",
        "last_fetch",
        "last_good_fetch_at",
        "sources",
        "papers_stored",
        "papers_mailed",
        "subscribers",
        "digests",
        "digests_by_frequency",
        "planned_without_a_good_fetch",
        "delivery",
        "waiting_for_retry",
        "failed",
        "suppressed",
    }
    assert data["papers_stored"] == 45 and data["papers_mailed"] > 0
    assert data["digests_by_frequency"] == {"daily": 3}
    assert data["planned_without_a_good_fetch"] == []
    [hf] = data["sources"]
    assert hf["name"] == "hf" and hf["ok"] is True and hf["new"] == 45 and hf["error"] is None
    assert hf["last_fetch_at"] == hf["last_good_fetch_at"] == data["last_fetch"]["started_at"]
    assert data["digests"] == {
        "planned": 0,
        "sending": 0,
        "sent": 3,
        "deferred": 0,
        "failed": 0,
        "skipped": 0,
        "suppressed": 0,
    }
    assert set(data["last_fetch"]) == {
        "started_at",
        "finished_at",
        "feed_url",
        "ok",
        "new",
        "updated",
        "error",
    }
    assert set(data["delivery"]) == {
        "failing",
        "last_error",
        "last_error_at",
        "failing_since",
        "errors_in_a_row",
        "last_ok_at",
    }
    assert data["delivery"]["failing"] is False and data["delivery"]["last_ok_at"]
    times = [
        data["generated_at"],
        data["last_fetch"]["started_at"],
        data["last_good_fetch_at"],
        data["delivery"]["last_ok_at"],
    ]
    for t in times:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", t), t
    assert data["subscribers"] == {
        "file": "subscribers.toml",
        "file_error": None,
        "in_file": 3,
        "synced": 3,
        "not_synced": [],
    }
    assert (workdir / "digestbot.db").stat().st_mtime_ns == before


# -- documentation --------------------------------------------------------------------------


def test_every_command_has_help_with_example_and_is_in_readme() -> None:
    """Every CLI command has --help text ending with an example, and the README documents it."""
    group = get_command(cli)
    readme = README.read_text()
    names = sorted(group.commands)  # type: ignore[attr-defined]
    assert {"init", "fetch", "send", "preview", "run", "status", "retry", "check", "match"} <= set(
        names
    )
    for name in names:
        result = runner.invoke(cli, [name, "--help"])
        assert result.exit_code == 0
        assert "Example: digestbot " + name in result.output, name
        assert f"digestbot {name}" in readme, f"README lacks `digestbot {name}`"


def test_help_names_arguments_by_metavar_never_by_python_type() -> None:
    """Every command's --help shows arguments as EMAIL or QUERY, never `{email}` or `email <str>`."""
    group = get_command(cli)
    usage = {"preview": "preview [OPTIONS] EMAIL", "retry": "retry [OPTIONS] [EMAIL]"}
    usage["match"] = "match [OPTIONS] QUERY"
    for name in sorted(group.commands):  # type: ignore[attr-defined]
        result = runner.invoke(cli, [name, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0
        assert not re.search(r"\{[a-z_]+\}|<(str|int|float|path|bool)>", result.output), (
            name,
            result.output,
        )
        if name in usage:
            assert usage[name] in result.output, result.output
