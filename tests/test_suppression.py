"""The suppression list: honoured by every plan and send; the operator's commands; the tokens."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime
from email.parser import BytesParser
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from digestbot import app, pipeline, tokens
from digestbot.addresses import address_key
from digestbot.cli import cli
from digestbot.db import open_database
from digestbot.errors import ConfigError
from digestbot.mail.backends import FileBackend
from digestbot.models import UnsubscribeMethod
from digestbot.settings import load_settings
from digestbot.sources.hf_daily import HFDailyPapers
from tests.helpers import SMTPServer

runner = CliRunner()
SECRET = "s3cret-for-tests-0123456789"


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(cli, list(args), catch_exceptions=False)


def states(url: str) -> dict[str, str]:
    engine = open_database(url)
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


def test_digest_planned_before_the_unsubscribe_is_not_sent(
    db_url: str, feed_dir: Path, tmp_path: Path
) -> None:
    """A digest planned for an address that then unsubscribes is marked suppressed and never
    delivered, while the others go out."""
    from digestbot.subscribers import load_subscribers

    (tmp_path / "people.toml").write_text(
        '[[subscribers]]\nemail = "ada@example.org"\nkeywords = ["diffusion", "model"]\n'
        '[[subscribers]]\nemail = "bob@example.org"\nkeywords = ["diffusion", "model"]\n'
    )
    settings = load_settings(
        environ={"DIGESTBOT_DATABASE_URL": db_url, "DIGESTBOT_FEED_URL": str(feed_dir)},
        env_file=None,
    )
    engine = open_database(db_url)
    now = datetime(2026, 3, 4, 23, tzinfo=UTC)
    pipeline.fetch_and_store(
        engine,
        source=HFDailyPapers(feed_url=str(feed_dir), client=None),
        feed_url=str(feed_dir),
        today=date(2026, 3, 4),
        lookback=2,
        clock=lambda: now,
    )
    specs = load_subscribers(tmp_path / "people.toml")
    recipients = pipeline.sync_subscribers(engine, specs, now=now)
    summary = pipeline.plan_digests(
        engine,
        recipients,
        as_of=now,
        lookback=2,
        day=date(2026, 3, 4),
        from_addr=settings.mail_from,
        now=now,
    )
    assert summary.planned == 2
    pipeline.unsubscribe(engine, "ADA@example.org", method=UnsubscribeMethod.ONE_CLICK, now=now)
    assert states(db_url) == {"ada@example.org": "suppressed", "bob@example.org": "planned"}

    out = tmp_path / "out"
    report = pipeline.deliver_due(
        engine,
        backend=FileBackend(out),
        mail=app.mail_context(settings),
        policy=app.retry_policy(settings),
        clock=lambda: now,
    )
    assert report.sent == 1
    [eml] = out.glob("*.eml")
    assert "bob@example.org" in BytesParser().parsebytes(eml.read_bytes(), headersonly=True)["To"]
    again = pipeline.plan_digests(
        engine,
        recipients,
        as_of=now,
        lookback=2,
        day=date(2026, 3, 5),
        from_addr=settings.mail_from,
        now=now,
    )
    assert again.suppressed == 1
    engine.dispose()


def test_operator_unsubscribe_send_status_check_and_resubscribe(
    workdir: Path, smtp_server: SMTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`digestbot unsubscribe` stops Ada's digests though she stays in the file; `status` counts
    and lists her, `check` warns (exit 0); `resubscribe` brings her digests back."""
    for key, value in smtp_server.env().items():
        monkeypatch.setenv(key, value)
    result = invoke("unsubscribe", "Ada@Example.org")
    assert result.exit_code == 0, result.output
    assert invoke("unsubscribe", "ada@example.org").exit_code == 0  # a repeat is harmless

    assert invoke("send", "--date", "2026-03-04").exit_code == 0
    assert smtp_server.handler.to("ada@example.org") == []
    assert smtp_server.handler.to("grace@example.org")

    status = invoke("status")
    assert "unsubscribed (suppressed): 1" in status.output
    assert "Ada@example.org  operator" in status.output
    as_json = invoke("status", "--json")
    assert '"count": 1' in as_json.output

    check = invoke("check")
    assert check.exit_code == 0
    assert "unsubscribed" in check.output and "ada@example.org" in check.output

    assert "subscribed again" in invoke("resubscribe", "ada@example.org").output
    smtp_server.handler.received.clear()
    assert invoke("send", "--date", "2026-03-05").exit_code == 0
    assert smtp_server.handler.to("ada@example.org")


def test_send_summaries_and_run_log_count_the_unsubscribed(
    workdir: Path,
    smtp_server: SMTPServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`send --dry-run`, `send -s ADDRESS` and `send` say "1 unsubscribed (not sent)" for an
    unsubscribed address instead of counting it as already served, and so does the run log."""
    for key, value in smtp_server.env().items():
        monkeypatch.setenv(key, value)
    assert invoke("unsubscribe", "ada@example.org").exit_code == 0

    dry = invoke("send", "--dry-run", "--date", "2026-03-04")
    assert dry.exit_code == 0, dry.output
    assert "1 unsubscribed (not sent)" in dry.output
    assert "1 already had" not in dry.output

    only = invoke("send", "-s", "ada@example.org", "--date", "2026-03-04")
    assert only.exit_code == 0, only.output
    assert (
        "0 already had their digest for their period, 0 off, 1 unsubscribed (not sent)"
        in only.output
    )

    with caplog.at_level(logging.INFO, logger="digestbot"):
        real = invoke("send", "--date", "2026-03-04")
    assert real.exit_code == 0, real.output
    assert "1 unsubscribed (not sent)" in real.output
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("run: ")]
    assert "1 unsubscribed (not sent)" in line


def test_resubscribe_of_an_address_not_in_the_file_says_it_gets_nothing(workdir: Path) -> None:
    """`digestbot resubscribe` of an address missing from the subscribers file says it left the
    suppression list but gets nothing, instead of "subscribed again"."""
    assert invoke("unsubscribe", "nobody@example.com").exit_code == 0
    result = invoke("resubscribe", "nobody@example.com")
    assert result.exit_code == 0
    assert "subscribed again" not in result.output
    assert "removed from the suppression list" in result.output
    assert "not in the subscribers file" in result.output


def test_unsubscribe_refuses_a_bad_address(workdir: Path) -> None:
    """`digestbot unsubscribe` with something that is not an address exits 2 and stores nothing."""
    result = invoke("unsubscribe", "not-an-address")
    assert result.exit_code == 2
    assert "EMAIL" in result.output


ADDRESSES = st.builds(
    lambda local, domain: f"{local}@{domain}.example.org",
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,20}[A-Za-z0-9]", fullmatch=True).filter(
        lambda s: ".." not in s
    ),
    # "--" in a label's third and fourth places is kept for Punycode ("xn--"): not an address
    st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9]", fullmatch=True).filter(lambda s: s[2:4] != "--"),
)


@given(address=ADDRESSES)
def test_a_token_names_its_address_and_only_its_list(address: str) -> None:
    """A token issued for an address and list checks back to that address, and fails for any
    other list or secret."""
    tok = tokens.issue(secret=SECRET, list_id="Digest <digest.example.org>", address=address)
    assert tokens.check(tok, secrets=[SECRET], list_id="<DIGEST.example.org>") == address
    with pytest.raises(tokens.WrongToken):
        tokens.check(tok, secrets=[SECRET], list_id="<other.example.org>")
    with pytest.raises(tokens.WrongToken):
        tokens.check(tok, secrets=["x" * 16], list_id="<digest.example.org>")


@given(text=st.text(max_size=200))
def test_any_text_as_a_token_is_refused_cleanly(text: str) -> None:
    """Whatever text arrives as a token, checking it raises TokenError and nothing else."""
    with pytest.raises(tokens.TokenError):
        tokens.check(text, secrets=[SECRET], list_id="<digest.example.org>")


@given(address=ADDRESSES, data=st.data())
def test_a_changed_character_breaks_the_token(address: str, data: st.DataObject) -> None:
    """Changing any one character of a valid token makes it refused (400 or 403), never accepted."""
    tok = tokens.issue(secret=SECRET, list_id="<digest.example.org>", address=address)
    i = data.draw(st.integers(0, len(tok) - 1))
    other = data.draw(st.sampled_from("Aa0-_.").filter(lambda c: c != tok[i]))
    forged = tok[:i] + other + tok[i + 1 :]
    try:
        got = tokens.check(forged, secrets=[SECRET], list_id="<digest.example.org>")
    except tokens.TokenError:
        return
    # base64 has slack bits in its last character, and the signature binds the address's key
    # (local part compared ignoring case): a changed token may pass only for the same subscriber
    assert address_key(got) == address_key(address)


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://digest.example.org/unsubscribe?token={token}", True),
        ("http://127.0.0.1:8000/unsubscribe?token={token}", True),
        ("http://localhost/unsubscribe?token={token}", True),
        ("http://[::1]:8000/unsubscribe?token={token}", True),
        ("http://digest.example.org/unsubscribe?token={token}", False),
        ("http://10.0.0.1/unsubscribe?token={token}", False),
        ("ftp://127.0.0.1/u?token={token}", False),
    ],
)
def test_unsubscribe_url_is_https_or_loopback_http(url: str, ok: bool) -> None:
    """DIGESTBOT_UNSUBSCRIBE_URL accepts https, and plain http only for a loopback host."""
    environ = {"DIGESTBOT_UNSUBSCRIBE_URL": url, "DIGESTBOT_UNSUBSCRIBE_SECRET": SECRET}
    if ok:
        assert load_settings(environ=environ, env_file=None).unsubscribe_url == url
    else:
        with pytest.raises(ConfigError, match="DIGESTBOT_UNSUBSCRIBE_URL"):
            load_settings(environ=environ, env_file=None)


@pytest.mark.parametrize(
    "url",
    [
        "https://example.org/u/{token}",
        "https://example.org/unsubscribe?t={token}",
        "https://example.org/unsubscribe/{token}",
        "https://example.org/unsubscribe/?token={token}",
        "https://example.org/unsubscribe?token=x{token}",
        "https://example.org/unsubscribe?token={token}&token=1",
        "https://example.org/list/unsubscribe/x?token={token}",
        "https://example.org/unsubscribe?token={token}#{token}",
    ],
)
def test_unsubscribe_url_must_open_the_served_route(url: str) -> None:
    """DIGESTBOT_UNSUBSCRIBE_URL is refused unless {token} is the `token` query value of .../unsubscribe."""
    environ = {"DIGESTBOT_UNSUBSCRIBE_URL": url, "DIGESTBOT_UNSUBSCRIBE_SECRET": SECRET}
    with pytest.raises(ConfigError, match="/unsubscribe") as info:
        load_settings(environ=environ, env_file=None)
    assert info.value.field == "DIGESTBOT_UNSUBSCRIBE_URL"


@pytest.mark.parametrize(
    "url",
    [
        "https://example.org/unsubscribe?token={token}",
        "https://example.org/digest/unsubscribe?token={token}",
        "https://example.org/unsubscribe?list=papers&token={token}&e={email}",
    ],
)
def test_unsubscribe_url_may_have_a_prefix_and_other_params(url: str) -> None:
    """A path prefix before /unsubscribe and extra query parameters are accepted."""
    environ = {"DIGESTBOT_UNSUBSCRIBE_URL": url, "DIGESTBOT_UNSUBSCRIBE_SECRET": SECRET}
    assert load_settings(environ=environ, env_file=None).unsubscribe_url == url


def test_check_and_send_refuse_a_dead_unsubscribe_url(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`check` and `send` exit 2 naming DIGESTBOT_UNSUBSCRIBE_URL when it points off the endpoint."""
    monkeypatch.setenv("DIGESTBOT_UNSUBSCRIBE_URL", "https://example.org/u/{token}")
    monkeypatch.setenv("DIGESTBOT_UNSUBSCRIBE_SECRET", SECRET)
    for args in (("check",), ("send", "--no-fetch")):
        result = invoke(*args)
        assert result.exit_code == 2, result.output
        assert "DIGESTBOT_UNSUBSCRIBE_URL" in result.output


def test_old_secrets_check_but_never_issue() -> None:
    """Old secrets are accepted for checking only: digests' links are signed with the current one."""
    settings = load_settings(
        environ={
            "DIGESTBOT_UNSUBSCRIBE_URL": "https://d.example.org/unsubscribe?token={token}",
            "DIGESTBOT_UNSUBSCRIBE_SECRET": "new-secret-0123456789",
            "DIGESTBOT_UNSUBSCRIBE_OLD_SECRETS": f" {SECRET} , ",
        },
        env_file=None,
    )
    assert settings.unsubscribe_secrets == ("new-secret-0123456789", SECRET)
    _, url = app.mail_context(settings).unsubscribe_for("ada@example.org")
    issued = tokens.issue(
        secret="new-secret-0123456789",
        list_id=settings.effective_list_id,
        address="ada@example.org",
    )
    assert url == f"https://d.example.org/unsubscribe?token={issued}"
    with pytest.raises(ConfigError, match="DIGESTBOT_UNSUBSCRIBE_OLD_SECRETS"):
        load_settings(environ={"DIGESTBOT_UNSUBSCRIBE_OLD_SECRETS": "short"}, env_file=None)


def test_preview_says_the_address_unsubscribed(workdir: Path) -> None:
    """`digestbot preview` of an address that unsubscribed renders nothing and says why."""
    assert invoke("unsubscribe", "ada@example.org").exit_code == 0
    result = invoke("preview", "ada@example.org", "--date", "2026-03-04")
    assert "unsubscribed" in result.output
    assert "Subject:" not in result.output
