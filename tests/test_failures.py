"""Failure paths an operator meets: a bad day in the lookback, hostile feed sizes, database files
and folders that cannot be written. Each ends in exit 1 and one clear line, never a traceback or
paper data.

Every case runs the real `digestbot` process. Tests run as root, which ignores file modes, so the
permission cases run the process in a user namespace (`unshare --user`), where root's file modes
apply; the read-only filesystem case bind-mounts a folder read-only in its own mount namespace.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import fixture_day, run_digestbot, write_day

DAY = "2026-03-04"
# A phrase from a fixture paper: it must never reach an error message.
PAPER_TEXT = fixture_day(DAY)[0]["paper"]["title"]
MEMORY_CEILING_KB = 250 * 1024  # a fetch needs ~80 MB; a hostile item must not add much


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "DIGESTBOT_LOG_LEVEL": "WARNING", **extra}


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The process failed with exit 1 and said so in exactly one line, without a traceback."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("digestbot: error: "), result.stderr
    return lines[0]


def rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


# -- a bad day in the lookback ----------------------------------------------------------------


def test_a_bad_day_in_the_lookback_is_rejected_alone(workdir: Path, feed_dir: Path) -> None:
    """3-day lookback, middle day truncated: the other days are stored and the run exits 1 naming it."""
    (feed_dir / "2026-03-03.json").write_text('{"broken": ')
    result = run_digestbot(
        ["fetch", "--date", DAY], env=env(DIGESTBOT_LOOKBACK_DAYS="2"), cwd=workdir
    )
    line = one_error_line(result)
    assert "2026-03-03" in line and "truncated JSON" in line
    assert "2026-03-02, 2026-03-04" in line  # the days that were kept
    db = workdir / "digestbot.db"
    days = rows(db, "SELECT substr(featured_at, 1, 10), COUNT(*) FROM papers GROUP BY 1 ORDER BY 1")
    assert days == [("2026-03-02", 15), ("2026-03-04", 15)]
    [(ok, new, error)] = rows(db, "SELECT ok, new_count, error FROM fetch_runs")
    assert ok == 0 and new == 30 and "2026-03-03" in str(error)


def test_send_exits_1_naming_a_failed_day_inside_the_windows_and_plans_nothing(
    workdir: Path, feed_dir: Path
) -> None:
    """`send` after a failed earlier day that the due digests' windows cover exits 1 naming that day and plans nothing (the daemon's rule)."""
    environ = env(DIGESTBOT_MAIL_BACKEND="file", DIGESTBOT_MAIL_DIR=str(workdir / "out"))
    first = run_digestbot(["send", "--date", "2026-03-04"], env=environ, cwd=workdir)
    assert first.returncode == 0, first.stderr
    (feed_dir / "2026-03-05.json").write_text('{"broken": ')
    (feed_dir / "2026-03-06.json").write_text("[]")
    result = run_digestbot(
        ["send", "--date", "2026-03-06"],
        env={**environ, "DIGESTBOT_LOOKBACK_DAYS": "2"},
        cwd=workdir,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "2026-03-05" in result.stderr and "nothing planned" in result.stderr
    db = workdir / "digestbot.db"
    assert rows(db, "SELECT COUNT(*) FROM digests WHERE period = '2026-03-06'") == [(0,)]


def test_send_plans_when_the_failed_day_is_outside_the_windows_and_still_exits_1(
    workdir: Path, feed_dir: Path
) -> None:
    """A failed lookback day that no due digest covers does not stop `send`: it plans and sends, then exits 1 naming the day."""
    environ = env(DIGESTBOT_MAIL_BACKEND="file", DIGESTBOT_MAIL_DIR=str(workdir / "out"))
    first = run_digestbot(["send", "--date", "2026-03-05"], env=environ, cwd=workdir)
    assert first.returncode == 0, first.stderr
    sent_before = len(list((workdir / "out").glob("*.eml")))
    (feed_dir / "2026-03-05.json").write_text('{"broken": ')
    result = run_digestbot(
        ["send", "--date", "2026-03-06"],
        env={**environ, "DIGESTBOT_LOOKBACK_DAYS": "1"},
        cwd=workdir,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "2026-03-05" in result.stderr
    assert len(list((workdir / "out").glob("*.eml"))) > sent_before
    db = workdir / "digestbot.db"
    assert rows(db, "SELECT COUNT(*) FROM digests WHERE period = '2026-03-06'") != [(0,)]


# -- hostile sizes ------------------------------------------------------------------------------


def peak_kb(args: list[str], *, environ: dict[str, str], cwd: Path) -> tuple[int, str]:
    """Run digestbot under a fresh parent and return the child's peak RSS (KiB) and its stderr."""
    measure = (
        "import resource, subprocess, sys\n"
        "r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "sys.stderr.write(r.stderr)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.returncode)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", measure, sys.executable, "-m", "digestbot", *args],
        env=environ,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    peak, code = done.stdout.split()
    assert code == "1", done.stderr
    return int(peak), done.stderr


def test_a_ten_megabyte_title_rejects_the_day_and_memory_stays_bounded(
    workdir: Path, feed_dir: Path
) -> None:
    """A 10 MB paper.title rejects that day's response naming the paper and field; nothing is stored."""
    hostile = json.loads(json.dumps(fixture_day(DAY)[0]))
    hostile["paper"]["id"] = "2401.09999"
    hostile["paper"]["title"] = "T" * 10_000_000
    write_day(feed_dir, DAY, [*fixture_day(DAY), hostile])
    peak, stderr = peak_kb(
        ["fetch", "--date", DAY], environ=env(DIGESTBOT_LOOKBACK_DAYS="0"), cwd=workdir
    )
    [line] = stderr.strip().splitlines()
    assert "item 15 (paper '2401.09999')" in line and "'paper.title'" in line
    assert "over the limit of 1,000" in line and "TTTT" not in line
    assert rows(workdir / "digestbot.db", "SELECT COUNT(*) FROM papers") == [(0,)]
    assert peak < MEMORY_CEILING_KB, f"peak RSS {peak} KiB"


def test_an_oversized_feed_file_is_refused_unread(workdir: Path, feed_dir: Path) -> None:
    """A 64 MB saved response is refused as too large without being read into memory."""
    with (feed_dir / f"{DAY}.json").open("wb") as handle:
        handle.truncate(64 * 1024 * 1024)
    peak, stderr = peak_kb(
        ["fetch", "--date", DAY], environ=env(DIGESTBOT_LOOKBACK_DAYS="0"), cwd=workdir
    )
    assert "larger than 16,777,216 bytes" in stderr and f"{DAY}.json" in stderr
    assert peak < MEMORY_CEILING_KB, f"peak RSS {peak} KiB"


# -- database files and folders -------------------------------------------------------------


def _works(command: list[str]) -> bool:
    try:
        return subprocess.run(command, capture_output=True, timeout=30, check=False).returncode == 0
    except OSError:
        return False


def unprivileged(args: list[str]) -> list[str]:
    """`args` as a process for which file modes apply (root gives up its override in a user ns)."""
    if os.geteuid() != 0:
        return args
    if not _works(["unshare", "--user", "true"]):
        pytest.skip("running as root and `unshare --user` is not available")
    return ["unshare", "--user", *args]


def on_read_only_mount(folder: Path, args: list[str]) -> list[str]:
    """`args` as a process that sees `folder` on a read-only filesystem (a private bind mount)."""
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && exec "$@"'
    wrapper = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, str(folder)]
    if not _works([*wrapper, "true"]):
        pytest.skip("cannot make a read-only bind mount here (user and mount namespaces)")
    return [*wrapper, *args]


def digestbot(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "digestbot", *args]


def run(
    command: list[str], *, environ: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, env=environ, cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture
def db_folder(workdir: Path) -> Iterator[Path]:
    """A folder for the database, given back writable after the test."""
    folder = workdir / "data"
    folder.mkdir()
    yield folder
    for path in (folder, *folder.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)


def test_a_read_only_database_file_is_one_line_without_paper_data(
    workdir: Path, db_folder: Path
) -> None:
    """Writing papers into a read-only SQLite file exits 1 with one line naming it; no SQL, no paper data."""
    db = db_folder / "digestbot.db"
    url = f"sqlite:///{db}"
    first = run_digestbot(
        ["fetch", "--date", "2026-03-02"], env=env(DIGESTBOT_DATABASE_URL=url), cwd=workdir
    )
    assert first.returncode == 0, first.stderr
    for leftover in db_folder.glob("digestbot.db-*"):
        leftover.unlink()
    db.chmod(0o444)
    result = run(
        unprivileged(digestbot(["fetch", "--date", DAY])),
        environ=env(DIGESTBOT_DATABASE_URL=url, DIGESTBOT_LOOKBACK_DAYS="0"),
        cwd=workdir,
    )
    line = one_error_line(result)
    assert str(db) in line and "read-only" in line and "DIGESTBOT_DATABASE_URL" in line
    assert PAPER_TEXT not in line and "INSERT" not in line and "[SQL" not in line
    assert rows(db, "SELECT COUNT(*) FROM papers") == [(15,)]


@pytest.mark.parametrize("case", ["parent-is-a-file", "permission-denied", "read-only-filesystem"])
def test_a_database_folder_that_cannot_be_created_is_one_clear_line(
    workdir: Path, db_folder: Path, case: str
) -> None:
    """A database folder that cannot be made exits 1 with one line naming the folder and the setting."""
    command = digestbot(["fetch", "--date", DAY])
    if case == "parent-is-a-file":
        (db_folder / "state").write_text("a regular file")
        target = db_folder / "state" / "db" / "digestbot.db"
    elif case == "permission-denied":
        db_folder.chmod(0o555)
        target = db_folder / "db" / "digestbot.db"
        command = unprivileged(command)
    else:
        target = db_folder / "db" / "digestbot.db"
        command = on_read_only_mount(db_folder, command)
    result = run(command, environ=env(DIGESTBOT_DATABASE_URL=f"sqlite:///{target}"), cwd=workdir)
    line = one_error_line(result)
    assert f"cannot create the folder {target.parent}" in line
    assert str(target) in line and "DIGESTBOT_DATABASE_URL" in line
    expected = {
        "parent-is-a-file": "a file is in the way",
        "permission-denied": "Permission denied",
        "read-only-filesystem": "Read-only file system",
    }[case]
    assert expected in line
    assert not target.exists()


@pytest.mark.parametrize("mail_dir", ["subscribers.toml", "subscribers.toml/out"])
def test_a_mail_folder_that_is_a_file_fails_check_and_dry_run_with_exit_2(
    workdir: Path, mail_dir: str
) -> None:
    """A DIGESTBOT_MAIL_DIR that is a file (or lies under one) fails `check` and `send --dry-run` alike: exit 2 naming the setting, before anything is sent."""
    environ = env(DIGESTBOT_MAIL_BACKEND="file", DIGESTBOT_MAIL_DIR=mail_dir)
    for args in (["check"], ["send", "--dry-run", "--date", DAY]):
        result = run_digestbot(args, env=environ, cwd=workdir)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "DIGESTBOT_MAIL_DIR" in lines[0], result.stderr
        assert "not a folder" in lines[0]
