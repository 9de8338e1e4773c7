"""The unsubscribe endpoint of `digestbot serve`: a real uvicorn server on loopback, httpx as client."""

from __future__ import annotations

import logging
import re
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from digestbot import tokens
from digestbot.cli import cli
from digestbot.db import open_database
from digestbot.settings import Settings, load_settings
from digestbot.web import make_server
from tests.helpers import SMTPServer, free_port

SECRET = "s3cret-for-tests-0123456789"
LIST_ID = "<digest.lab.example.net>"  # the default List-Id of SMTPServer.env()'s From address
ADA = "ada@example.org"


@pytest.fixture
def settings(workdir: Path, smtp_server: SMTPServer, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key, value in smtp_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DIGESTBOT_UNSUBSCRIBE_SECRET", SECRET)
    return load_settings(env_file=None)


@contextmanager
def web_server(settings: Settings, *, port: int | None = None) -> Iterator[str]:
    """The app served by the real uvicorn server of `digestbot serve`, in a thread; yields its URL."""
    port = port or free_port()
    server = make_server(settings, host="127.0.0.1", port=port)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def base(settings: Settings) -> Iterator[str]:
    with web_server(settings) as url:
        yield url


def suppressions(settings: Settings) -> list[tuple[str, str, str]]:
    engine = open_database(settings.database_url)
    try:
        with engine.connect() as conn:
            return [
                tuple(r)
                for r in conn.execute(
                    sa.text("SELECT address_key, address, method FROM suppressions ORDER BY id")
                )
            ]
    finally:
        engine.dispose()


def token(address: str = ADA, *, secret: str = SECRET, list_id: str = LIST_ID) -> str:
    return tokens.issue(secret=secret, list_id=list_id, address=address)


def one_click(base: str, tok: str) -> httpx.Response:
    """The POST exactly as RFC 8058 section 3.2 shows it: form-urlencoded, no cookies."""
    return httpx.post(
        f"{base}/unsubscribe?token={urllib.parse.quote(tok)}",
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )


def form_action(html: str) -> str:
    [action] = re.findall(r'<form method="post" action="([^"]*)"', html)
    return action.replace("&amp;", "&")


def test_one_click_post_as_rfc_8058_unsubscribes_at_once(base: str, settings: Settings) -> None:
    """A one-click POST with body List-Unsubscribe=One-Click answers 200 and suppresses the address."""
    response = one_click(base, token())
    assert response.status_code == 200
    assert "set-cookie" not in response.headers
    assert suppressions(settings) == [(ADA, ADA, "one-click")]


def test_get_shows_a_page_and_changes_nothing_then_the_button_unsubscribes(
    base: str, settings: Settings
) -> None:
    """GET shows the list, the masked address and one button without changing anything; the
    button's POST unsubscribes and offers a resubscribe button, which works too."""
    url = f"{base}/unsubscribe?token={token()}"
    page = httpx.get(url)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "Paper Digest" in html and "a***@example.org" in html and ADA not in html
    assert html.count("<button") == 1
    assert "Press Unsubscribe to stop Paper Digest digests to a***@example.org." in html
    assert "will get no more" not in html  # nothing has happened yet
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    assert httpx.get(url).status_code == 200  # a scanner's second prefetch
    assert suppressions(settings) == []

    done = httpx.post(urllib.parse.urljoin(url, form_action(html)), data={"confirm": "yes"})
    assert done.status_code == 200
    assert "You are unsubscribed" in done.text and "Resubscribe" in done.text
    assert suppressions(settings) == [(ADA, ADA, "page")]

    back = httpx.post(urllib.parse.urljoin(url, form_action(done.text)), data={"confirm": "yes"})
    assert back.status_code == 200 and "subscribed again" in back.text
    assert suppressions(settings) == []


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("", 400),  # no token
        ("?token=", 400),
        ("?token=not-a-token", 400),
        ("?token=%3Cscript%3E.x", 400),
        ("?token=" + token().split(".")[0] + ".AAAA", 403),  # forged signature
        # Bob's valid signature under Ada's address
        ("?token=" + token().split(".")[0] + "." + token("bob@example.org").split(".")[1], 403),
        ("?token=" + token(list_id="<other.example.net>"), 403),  # another list
        ("?token=" + token(secret="another-secret-0123456789"), 403),  # another secret
    ],
)
def test_bad_tokens_get_a_clear_page_and_change_nothing(
    base: str, settings: Settings, query: str, status: int
) -> None:
    """A missing, malformed, forged, other-address, other-list or other-secret token is refused
    with 400/403 on GET and on both POSTs, and nothing is stored."""
    for method, path in (("GET", "unsubscribe"), ("POST", "unsubscribe"), ("POST", "resubscribe")):
        response = httpx.request(
            method,
            f"{base}/{path}{query}",
            content=b"List-Unsubscribe=One-Click" if method == "POST" else None,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert response.status_code == status, (method, path)
        assert "This unsubscribe link does not work" in response.text
        assert re.search(r"<p>[A-Z][^<]*\. Nothing was changed\.</p>", response.text)
        assert "<script>" not in response.text
    assert suppressions(settings) == []


def test_a_replayed_unsubscribe_is_harmless(base: str, settings: Settings) -> None:
    """Repeating the one-click POST, and then the page's POST, answers 200 each time and keeps
    the first entry."""
    for _ in range(3):
        assert one_click(base, token()).status_code == 200
    assert httpx.post(f"{base}/unsubscribe?token={token()}", data={"confirm": "yes"}).is_success
    assert suppressions(settings) == [(ADA, ADA, "one-click")]


def test_an_old_secret_still_unsubscribes(
    workdir: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a secret rotation, links signed with a secret listed in
    DIGESTBOT_UNSUBSCRIBE_OLD_SECRETS still work; secrets no longer listed do not."""
    monkeypatch.setenv("DIGESTBOT_UNSUBSCRIBE_SECRET", "the-new-secret-0123456789")
    monkeypatch.setenv("DIGESTBOT_UNSUBSCRIBE_OLD_SECRETS", f"{SECRET},older-secret-0123456789")
    rotated = load_settings(env_file=None)
    with web_server(rotated) as base:
        assert one_click(base, token(secret="retired-secret-0123456789")).status_code == 403
        assert one_click(base, token()).status_code == 200
    assert suppressions(rotated) == [(ADA, ADA, "one-click")]


def test_healthz_and_security_headers(base: str) -> None:
    """/healthz answers 200; pages are never cached nor leak the token through Referer."""
    assert httpx.get(f"{base}/healthz").status_code == 200
    page = httpx.get(f"{base}/unsubscribe?token={token()}")
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "server" not in page.headers


def test_serve_refuses_to_start_without_a_secret(workdir: Path) -> None:
    """`digestbot serve` without DIGESTBOT_UNSUBSCRIBE_SECRET is a configuration error (exit 2)."""
    result = CliRunner().invoke(cli, ["serve", "--port", str(free_port())])
    assert result.exit_code == 2
    assert "DIGESTBOT_UNSUBSCRIBE_SECRET" in result.output


def test_link_in_a_sent_message_unsubscribes_and_the_next_send_skips_the_address(
    workdir: Path, smtp_server: SMTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one-click URL of a digest really sent over SMTP is accepted by the running server, and
    the next `digestbot send` mails everyone else but not the address that unsubscribed."""
    port = free_port()
    for key, value in smtp_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DIGESTBOT_UNSUBSCRIBE_SECRET", SECRET)
    monkeypatch.setenv(
        "DIGESTBOT_UNSUBSCRIBE_URL", f"http://127.0.0.1:{port}/unsubscribe?token={{token}}"
    )
    runner = CliRunner()
    first = runner.invoke(cli, ["send", "--date", "2026-03-04"], catch_exceptions=False)
    assert first.exit_code == 0, first.output
    [mail] = smtp_server.handler.to(ADA)
    header = str(mail.message["List-Unsubscribe"])
    [url] = re.findall(r"<(http://[^>]+)>", header)
    assert mail.message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    with web_server(load_settings(env_file=None), port=port):
        response = httpx.post(
            url,
            content=b"List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
    assert response.status_code == 200

    smtp_server.handler.received.clear()
    second = runner.invoke(cli, ["send", "--date", "2026-03-05"], catch_exceptions=False)
    assert second.exit_code == 0, second.output
    assert smtp_server.handler.to(ADA) == []
    assert smtp_server.handler.to("grace@example.org")


def test_wrong_method_answers_405_listing_get_and_post(base: str) -> None:
    """A PUT to /unsubscribe answers 405 whose Allow header names both GET and POST."""
    response = httpx.put(f"{base}/unsubscribe?token={token()}")
    assert response.status_code == 405
    allowed = {m.strip() for m in response.headers["allow"].split(",")}
    assert {"GET", "POST"} <= allowed


def test_a_reader_cannot_lift_the_operators_unsubscribe(base: str, settings: Settings) -> None:
    """POST /resubscribe with a valid token leaves an operator's suppression in place and says
    whom to write to; nothing changes."""
    result = CliRunner().invoke(cli, ["unsubscribe", ADA], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    response = httpx.post(f"{base}/resubscribe?token={token()}", data={"confirm": "yes"})
    assert response.status_code == 200
    assert "stays unsubscribed" in response.text
    assert "digest@lab.example.net" in response.text  # the list's unsubscribe address
    assert "subscribed again" not in response.text
    assert suppressions(settings) == [(ADA, ADA, "operator")]


def test_serve_logs_each_change_without_the_token(
    base: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Each unsubscribe and resubscribe logs one INFO line with the address and how, and no
    log line carries the token."""
    tok = token()
    with caplog.at_level(logging.INFO, logger="digestbot.web"):
        assert one_click(base, tok).status_code == 200
        assert httpx.post(f"{base}/resubscribe?token={tok}", data={"confirm": "yes"}).is_success
    lines = [r.getMessage() for r in caplog.records if r.name == "digestbot.web"]
    assert len(lines) == 2, lines
    assert ADA in lines[0] and "one-click" in lines[0]
    assert ADA in lines[1] and "resubscribed" in lines[1]
    everything = "\n".join(r.getMessage() + repr(r.__dict__) for r in caplog.records)
    assert tok not in everything and tok.split(".")[1] not in everything


def test_one_click_between_planning_and_delivery_suppresses_the_planned_digest(
    workdir: Path, smtp_server: SMTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Digests planned by a send whose SMTP server was unreachable, then a real one-click POST,
    then `send --no-fetch`: the unsubscribed address gets nothing and its digest is
    `suppressed`; the others are delivered."""
    for key, value in smtp_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DIGESTBOT_UNSUBSCRIBE_SECRET", SECRET)
    monkeypatch.setenv("DIGESTBOT_SMTP_PORT", str(free_port()))  # nobody listens there
    runner = CliRunner()
    planned = runner.invoke(cli, ["send", "--date", "2026-03-04"], catch_exceptions=False)
    assert smtp_server.handler.received == []
    before = digest_states(workdir)
    assert before.get(ADA) in ("planned", "deferred"), (before, planned.output)
    assert before.get("grace@example.org") in ("planned", "deferred")

    with web_server(load_settings(env_file=None)) as base:
        assert one_click(base, token()).status_code == 200

    monkeypatch.setenv("DIGESTBOT_SMTP_PORT", str(smtp_server.port))
    sent = runner.invoke(
        cli, ["send", "--no-fetch", "--date", "2026-03-04"], catch_exceptions=False
    )
    assert sent.exit_code == 0, sent.output
    assert smtp_server.handler.to(ADA) == []
    assert smtp_server.handler.to("grace@example.org")
    after = digest_states(workdir)
    assert after[ADA] == "suppressed"
    assert after["grace@example.org"] == "sent"
    assert "1 unsubscribed (not sent)" in sent.output


def digest_states(workdir: Path) -> dict[str, str]:
    engine = open_database(f"sqlite:///{workdir / 'digestbot.db'}")
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT s.email, d.state FROM digests d "
                    "JOIN subscribers s ON s.id = d.subscriber_id ORDER BY d.id"
                )
            )
            return {email: state for email, state in rows}
    finally:
        engine.dispose()
