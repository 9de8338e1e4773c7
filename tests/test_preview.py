"""End to end through the CLI: what `check` says each subscriber gets, and what `preview` and
`match` show of trending papers, the period, and papers not fetched yet."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from digestbot.cli import cli

runner = CliRunner()

PEOPLE = """\
[[subscribers]]
email = "ada@example.org"
keywords = ["diffusion", "reasoning", "model"]
trending = 5
timezone = "Europe/Paris"

[[subscribers]]
email = "hedy@example.org"
trending = 3
frequency = "weekly"
weekday = "monday"

[[subscribers]]
email = "zed@example.org"
keywords = ["zzzz-never-matches"]

[[subscribers]]
email = "off@example.org"
keywords = ["diffusion"]
frequency = "off"
"""


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(cli, list(args), catch_exceptions=False)


def test_check_lists_what_each_subscriber_gets(workdir: Path) -> None:
    """`digestbot check` prints one line per subscriber: frequency, time and zone, queries, trending."""
    (workdir / "subscribers.toml").write_text(PEOPLE)
    result = invoke("check")
    assert result.exit_code == 0, result.output
    assert "ada@example.org: daily at 07:00 Europe/Paris; 3 queries; trending 5" in result.output
    assert "hedy@example.org: weekly on Monday at 07:00 UTC; trending 3" in result.output
    assert "off@example.org: off (nothing planned or sent)" in result.output


def test_preview_shows_the_trending_section_and_the_period(workdir: Path) -> None:
    """`preview` of a mixed subscriber prints a Trending section and says which period and dates it covers."""
    (workdir / "subscribers.toml").write_text(PEOPLE)
    assert invoke("fetch", "--date", "2026-03-04").exit_code == 0
    result = invoke("preview", "ada@example.org", "--date", "2026-03-04")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Subject: ")
    assert "Trending since 2026-03-02" in result.stdout  # a first digest: lookback days
    assert "Trending today" not in result.stdout
    assert "daily digest for 2026-03-04" in result.stderr
    weekly = invoke("preview", "hedy@example.org", "--date", "2026-03-04")
    assert weekly.exit_code == 0, weekly.output
    assert "this week" in weekly.stdout and "trending" in weekly.stdout.splitlines()[0]
    assert "weekly digest for 2026-03-02" in weekly.stderr
    assert "papers featured 2026-03-02 to 2026-03-04" in weekly.stderr  # the week so far
    assert "this week (2026-03-02 to 2026-03-04)" in weekly.stdout.splitlines()[0]


def test_preview_says_when_nothing_would_be_sent(workdir: Path) -> None:
    """`preview` says "no digest would be sent" for nothing new with send_empty false, and for frequency off."""
    (workdir / "subscribers.toml").write_text(PEOPLE)
    assert invoke("fetch", "--date", "2026-03-04").exit_code == 0
    quiet = invoke("preview", "zed@example.org", "--date", "2026-03-04")
    assert quiet.exit_code == 0, quiet.output
    assert "no digest would be sent: nothing new, and send_empty is false" in quiet.stdout
    assert "Subject:" not in quiet.stdout
    off = invoke("preview", "off@example.org", "--date", "2026-03-04")
    assert 'no digest would be sent: frequency is "off"' in off.stdout


def test_preview_and_match_say_when_the_papers_are_not_fetched_yet(workdir: Path) -> None:
    """For a day whose papers are not stored, `preview` and `match` say so and suggest `digestbot fetch --date D`."""
    (workdir / "subscribers.toml").write_text(PEOPLE)
    assert invoke("fetch", "--date", "2026-03-04").exit_code == 0
    result = invoke("preview", "zed@example.org", "--date", "2026-04-20")
    assert result.exit_code == 0, result.output
    assert "not stored yet" in result.stderr
    assert "digestbot fetch --date 2026-04-20" in result.stderr
    found = invoke("match", "diffusion", "--date", "2026-04-20")
    assert found.exit_code == 0, found.output
    assert "digestbot fetch --date 2026-04-20" in found.stderr
    stored = invoke("match", "diffusion", "--date", "2026-03-04")
    assert "digestbot fetch" not in stored.stderr


def test_preview_after_the_periods_digest_was_sent_says_so(workdir: Path) -> None:
    """After a period's digest went out, `preview` says so and when the next is due, not a phantom digest."""
    (workdir / "subscribers.toml").write_text(PEOPLE)
    assert invoke("fetch", "--date", "2026-03-05").exit_code == 0
    assert invoke("send", "--date", "2026-03-05").exit_code == 0
    daily = invoke("preview", "ada@example.org", "--date", "2026-03-05")
    assert daily.exit_code == 0, daily.output
    assert "already had the digest for 2026-03-05 (sent)" in daily.stdout
    assert "the next one is due 2026-03-06 07:00 Europe/Paris" in daily.stdout
    assert "Subject:" not in daily.stdout
    assert "not stored yet" not in daily.stderr
    assert "2026-03-06 to 2026-03-05" not in daily.stderr
    weekly = invoke("preview", "hedy@example.org", "--date", "2026-03-05")
    assert "already had the digest for 2026-03-02 (sent)" in weekly.stdout
    assert "the next one is due 2026-03-09 07:00 UTC" in weekly.stdout


def test_preview_hints_fetch_when_the_periods_own_day_is_missing(workdir: Path) -> None:
    """With only earlier lookback days stored, `preview` of a later day still suggests fetching that day."""
    (workdir / "subscribers.toml").write_text(PEOPLE)
    assert invoke("fetch", "--date", "2026-03-04").exit_code == 0
    result = invoke("preview", "zed@example.org", "--date", "2026-03-05")
    assert result.exit_code == 0, result.output
    assert "digestbot fetch --date 2026-03-05" in result.stderr
    assert "nothing new" not in result.stdout
    assert "not stored yet" in result.stdout


def test_send_summary_names_the_period_and_counts_off(workdir: Path) -> None:
    """`send` says "already had their digest for their period" (daily and weekly alike) and counts `off` subscribers."""
    (workdir / "subscribers.toml").write_text(PEOPLE)
    assert invoke("fetch", "--date", "2026-03-04").exit_code == 0
    assert invoke("send", "--date", "2026-03-04").exit_code == 0
    again = invoke("send", "--date", "2026-03-05")
    assert again.exit_code == 0, again.output
    assert "1 already had their digest for their period, 1 off;" in again.output
    assert "for the day" not in again.output


def test_check_counts_queries_and_exclusions_apart(workdir: Path) -> None:
    """`check`'s header counts queries and exclusions separately, as the per-subscriber lines do."""
    (workdir / "subscribers.toml").write_text(
        PEOPLE + '\n[[subscribers]]\nemail = "ex@example.org"\nkeywords = ["a", "b"]\n'
        'exclude = ["c"]\n'
    )
    result = invoke("check")
    assert result.exit_code == 0, result.output
    assert "subscribers: 5 in subscribers.toml, 7 queries, 1 exclusion: ok" in result.output
