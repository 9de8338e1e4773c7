"""A step run in a forked process (apart.call_apart): its result, its errors, its memory, and
`digestbot send` planning a large subscribers file that way."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from digestbot import apart, cli, pipeline
from digestbot.errors import ConfigError, DigestbotError, FetchError

runner = CliRunner()


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    assert apart.can_fork(), "a thread left running by another test: call_apart would not fork"


def test_the_step_runs_in_another_process_and_its_result_comes_back() -> None:
    here = os.getpid()
    pid, value = apart.call_apart(lambda: (os.getpid(), {"planned": [1, 2, 3]}), what="planning")
    assert pid != here
    assert value == {"planned": [1, 2, 3]}


@pytest.mark.parametrize(
    ("error", "kind", "code"),
    [
        (
            ConfigError("bad query", file="subscribers.toml", line=7, field="keywords"),
            ConfigError,
            2,
        ),
        (FetchError("source hf: 503 after 3 tries"), FetchError, 1),
        (DigestbotError("something else"), DigestbotError, 1),
    ],
)
def test_an_error_of_the_step_is_raised_here_as_the_same_kind(
    error: DigestbotError, kind: type[DigestbotError], code: int
) -> None:
    def step() -> None:
        raise error

    with pytest.raises(kind) as raised:
        apart.call_apart(step, what="planning")
    assert str(raised.value) == str(error)
    assert raised.value.exit_code == code


def test_a_step_killed_is_one_error_naming_the_step_and_the_signal() -> None:
    def step() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(DigestbotError, match=r"planning stopped unexpectedly .*SIGKILL.*run again"):
        apart.call_apart(step, what="planning")


def test_a_bug_in_the_step_prints_its_traceback_and_is_one_error_here(
    capfd: pytest.CaptureFixture[str],
) -> None:
    def step() -> None:
        raise ValueError("a bug in planning")

    with pytest.raises(DigestbotError, match=r"planning stopped unexpectedly .*exit code 1"):
        apart.call_apart(step, what="planning")
    assert "ValueError: a bug in planning" in capfd.readouterr().err


_KEPT: list[str] = []


def test_the_memory_of_the_step_leaves_with_it() -> None:
    """A step that builds 150 MB of small objects and keeps a few (as reading a large
    subscribers file and planning do: caches) leaves this process's memory as it was. Run in
    this process, the few kept would keep most of the 150 MB."""

    def step() -> int:
        held = [f"subscriber{i}@example.org" for i in range(2_000_000)]
        _KEPT.extend(held[::500])
        return psutil.Process().memory_info().rss - before

    before = psutil.Process().memory_info().rss
    grown = apart.call_apart(step, what="planning")
    assert grown > 100 * 2**20  # the step did take the memory, in its own process
    assert psutil.Process().memory_info().rss - before < 10 * 2**20


def test_no_fork_while_another_thread_runs() -> None:
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert not apart.can_fork()
    finally:
        stop.set()
        other.join()
    assert apart.can_fork()


def _planning_pids(monkeypatch: pytest.MonkeyPatch, record: Path) -> None:
    """Record the process id of every `prepare_send` (the planning) in `record`."""
    real = pipeline.prepare_send

    def recorded(*args, **kwargs):  # type: ignore[no-untyped-def]
        with record.open("a") as f:
            f.write(f"{os.getpid()}\n")
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "prepare_send", recorded)


@pytest.mark.parametrize("large", [True, False], ids=["large-file-forked", "small-file-here"])
def test_send_plans_a_large_subscribers_file_in_a_forked_process(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, large: bool
) -> None:
    """Past PLAN_APART_BYTES, `send` reads the file and plans in a forked process and delivers
    in its own: every digest goes out, once, and the summary counts them as before."""
    env = {"DIGESTBOT_MAIL_BACKEND": "file", "DIGESTBOT_MAIL_DIR": str(workdir / "mail")}
    fetched = runner.invoke(cli.cli, ["fetch", "--date", "2026-03-04"], env=env)
    assert fetched.exit_code == 0, fetched.output
    monkeypatch.setattr(cli, "PLAN_APART_BYTES", 0 if large else 10**9)
    record = workdir / "planned-by"
    _planning_pids(monkeypatch, record)

    result = runner.invoke(cli.cli, ["send", "--no-fetch", "--date", "2026-03-04"], env=env)

    assert result.exit_code == 0, result.output
    assert "planned 3 new" in result.output and "sent 3," in result.output
    assert len(list((workdir / "mail").glob("*.eml"))) == 3
    (pid,) = {int(line) for line in record.read_text().split()}
    assert (pid != os.getpid()) is large
    again = runner.invoke(cli.cli, ["send", "--no-fetch", "--date", "2026-03-04"], env=env)
    assert again.exit_code == 0, again.output
    assert "sent 0," in again.output and len(list((workdir / "mail").glob("*.eml"))) == 3


def test_send_names_a_broken_large_file_as_it_does_a_small_one(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ConfigError of the planning process is the same message and exit code 2, and nothing
    was sent."""
    (workdir / "subscribers.toml").write_text(
        '[[subscribers]]\nemail = "a@example.org"\nkeywords = ["(diffusion"]\n'
    )
    env = {"DIGESTBOT_MAIL_BACKEND": "file", "DIGESTBOT_MAIL_DIR": str(workdir / "mail")}
    here = runner.invoke(cli.cli, ["send", "--date", "2026-03-04"], env=env)
    monkeypatch.setattr(cli, "PLAN_APART_BYTES", 0)
    forked = runner.invoke(cli.cli, ["send", "--date", "2026-03-04"], env=env)
    assert forked.exit_code == here.exit_code == 2
    assert "subscribers.toml:3" in forked.output and "column" in forked.output
    assert forked.output == here.output
    assert not list((workdir / "mail").glob("*.eml"))
