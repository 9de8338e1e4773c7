"""Delivery by several worker processes, and by several `digestbot send` processes sharing one
PostgreSQL database (hosts): every digest exactly once, the rate shared, speed visible."""

from __future__ import annotations

import itertools
import json
import os
import pickle
import pty
import re
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import make_url

from digestbot import app, pipeline, workers
from digestbot.errors import ConfigError
from digestbot.mail.ratelimit import RateLimiter
from digestbot.settings import load_settings
from tests.helpers import (
    DAY,
    SMTPServer,
    assert_exactly_one_digest_each,
    bot_env,
    digest_rows,
    free_port,
    planned_outbox,
    run_digestbot,
    slow_server,
)

# -- the shared rate and the worker count ---------------------------------------------------------


@given(
    rate=st.floats(min_value=0.01, max_value=5000, allow_nan=False),
    n=st.integers(min_value=1, max_value=16),
    messages=st.integers(min_value=1, max_value=30),
)
@hsettings(max_examples=200, deadline=None)
def test_workers_sharing_a_rate_keep_to_it_together(rate: float, n: int, messages: int) -> None:
    """N workers each pacing their share of DIGESTBOT_SMTP_RATE never send faster together than the rate, from the first message on."""
    sent: list[float] = []
    for index in range(n):  # each worker as fast as its limiter lets it, on its own fake clock
        now = [100.0]

        def sleep(seconds: float, now: list[float] = now) -> None:
            now[0] += seconds

        limiter = RateLimiter.shared(
            rate, workers=n, index=index, start=100.0, clock=lambda now=now: now[0], sleep=sleep
        )
        for _ in range(messages):
            limiter.wait()
            sent.append(now[0])
    sent.sort()
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert all(g >= (1 / rate) * (1 - 1e-9) for g in gaps), (min(gaps), 1 / rate)
    assert sent[-1] - sent[0] <= (len(sent) - 1) / rate * (1 + 1e-9) + 1e-9


def test_unlimited_rate_stays_unlimited_for_every_worker() -> None:
    """Without DIGESTBOT_SMTP_RATE no worker ever waits."""
    limiter = RateLimiter.shared(None, workers=4, index=3, clock=lambda: 0.0, sleep=pytest.fail)
    for _ in range(5):
        limiter.wait()


@given(st.text(max_size=12))
@hsettings(max_examples=200, deadline=None)
def test_workers_setting_takes_a_whole_number_from_0_to_1024(value: str) -> None:
    """DIGESTBOT_WORKERS takes a whole number from 0 (one per core) to 1024; anything else is an error naming it."""
    try:
        settings = load_settings({"DIGESTBOT_WORKERS": value}, env_file=None)
    except ConfigError as exc:
        assert exc.field == "DIGESTBOT_WORKERS"
        # Surrounding whitespace (anything str.strip removes) is ignored, as for every setting.
        assert not (
            re.fullmatch(r"[+-]?[0-9]+", value.strip()) and 0 <= int(value.strip()) <= 1024
        ), value
        return
    if value.strip():
        assert settings.workers == int(value.strip())
    else:
        assert settings.workers == 0  # empty is unset: the default


def test_settings_reach_a_worker_process_unchanged(tmp_path: Path) -> None:
    """The settings a worker process builds its engine and mail server connection from are the parent's, secrets included."""
    settings = load_settings(
        {
            "DIGESTBOT_SMTP_PASSWORD": "pw-4242",
            "DIGESTBOT_WORKERS": "3",
            "DIGESTBOT_MAIL_DIR": str(tmp_path / "out"),
        },
        env_file=None,
    )
    again = pickle.loads(pickle.dumps(settings))
    assert again == settings and again.smtp_password == "pw-4242" and again.workers == 3
    assert "pw-4242" not in repr(again)


def test_worker_count_defaults_to_the_cores_and_small_runs_use_fewer() -> None:
    """By default one worker per CPU core and at most one per hundred due digests; a number asked for is kept, up to one per 50 due (CLAIM_MIN)."""
    cores = os.cpu_count() or 1
    for unset in (0, None):
        assert workers.workers_for(unset, 0) == 1
        assert workers.workers_for(unset, workers.MIN_PER_WORKER - 1) == 1
        assert workers.workers_for(unset, 1_000_000) == cores
    assert workers.workers_for(3, 1_000_000) == 3
    assert workers.workers_for(3, 0) == 1
    assert workers.workers_for(3, pipeline.CLAIM_MIN + 1) == 2


@given(due=st.integers(min_value=0, max_value=10**6), n=st.integers(min_value=1, max_value=64))
def test_each_worker_claims_an_even_share_of_the_run_within_bounds(due: int, n: int) -> None:
    """Each of N workers claims about due/N digests at a time (so no worker is left alone with
    a large last batch), never fewer than CLAIM_MIN nor more than CLAIM_BATCH; N claims of that
    size cover the run."""
    share = workers.claim_share(due, n)
    assert pipeline.CLAIM_MIN <= share <= pipeline.CLAIM_BATCH
    if share < pipeline.CLAIM_BATCH:
        assert share * n >= due
    if pipeline.CLAIM_MIN < share < pipeline.CLAIM_BATCH:
        assert (share - 1) * n < due


# -- worker processes on SQLite -------------------------------------------------------------------


@pytest.fixture
def slow_smtp() -> Iterator[SMTPServer]:
    yield from slow_server(0.005, wait_for_peers=2)  # the runs here use two connections


def _sent_counts(stdout: str) -> int:
    found = re.search(r"; sent (\d+),", stdout)
    assert found, stdout
    return int(found.group(1))


@pytest.mark.slow
def test_send_with_two_workers_delivers_each_digest_once_and_logs_its_speed(
    workdir: Path, slow_smtp: SMTPServer
) -> None:
    """`send --workers 2` delivers every digest exactly once over two SMTP connections and logs one run line with its counts, seconds and digests/s."""
    url = os.environ["DIGESTBOT_DATABASE_URL"]
    emails = planned_outbox(workdir, url, 80)
    env = bot_env(slow_smtp, DIGESTBOT_LOG_FORMAT="json", DIGESTBOT_LOG_LEVEL="INFO")
    done = run_digestbot(
        ["send", "--no-fetch", "--date", DAY, "--workers", "2"], env=env, cwd=workdir
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert _sent_counts(done.stdout) == 80
    assert_exactly_one_digest_each(slow_smtp.handler, emails, url, kills=0)
    assert len(set(slow_smtp.handler.peers)) == 2, "each worker keeps its own connection"
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    per_digest = Counter(e["subscriber"] for e in lines if e.get("outcome") == "sent")
    assert sorted(per_digest) == sorted(emails) and set(per_digest.values()) == {1}
    [run] = [e for e in lines if e["event"].startswith("run: ")]
    assert (run["planned"], run["sent"], run["deferred"], run["failed"]) == (0, 80, 0, 0)
    assert run["workers"] == 2 and run["seconds"] > 0
    assert run["digests_per_second"] == pytest.approx(80 / run["seconds"], rel=0.01)
    assert f"{run['digests_per_second']:.1f} digests/s" in run["event"]


@pytest.mark.slow
def test_send_leaves_every_outcome_in_the_database_file_itself(
    workdir: Path, slow_smtp: SMTPServer
) -> None:
    """After `digestbot send`, its processes have closed the SQLite database: no write-ahead log
    is left beside the file, and a copy of the file alone (as a backup takes) holds every sent
    digest."""
    url = os.environ["DIGESTBOT_DATABASE_URL"]
    planned_outbox(workdir, url, 80)
    done = run_digestbot(
        ["send", "--no-fetch", "--date", DAY, "--workers", "2"], env=bot_env(slow_smtp), cwd=workdir
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert _sent_counts(done.stdout) == 80
    database = Path(make_url(url).database or "")
    assert database.is_file()
    assert not database.with_name(f"{database.name}-wal").exists()
    copy = workdir / "copy.db"
    shutil.copyfile(database, copy)
    with sqlite3.connect(copy) as conn:
        sent = conn.execute("SELECT count(*) FROM digests WHERE state = 'sent'").fetchone()
    assert sent == (80,)


def test_send_process_is_one_of_its_workers(workdir: Path) -> None:
    """`send --workers 2` delivers from its own process and one worker process (not two beside an idle parent): of the two SMTP connections, one is the send process's own; every digest goes out once."""
    import psutil

    def smtp_pids(pids: list[int], port: int) -> set[int]:
        found = set()
        for pid in pids:
            try:
                proc = psutil.Process(pid)
                conns = (
                    proc.net_connections(kind="tcp")
                    if hasattr(proc, "net_connections")
                    else proc.connections(kind="tcp")
                )
            except psutil.Error:
                continue
            if any(c.raddr and c.raddr.port == port for c in conns):
                found.add(pid)
        return found

    with serve_slow(0.01, wait_for_peers=2) as server:
        url = os.environ["DIGESTBOT_DATABASE_URL"]
        emails = planned_outbox(workdir, url, 100)
        args = ["send", "--no-fetch", "--date", DAY, "--workers", "2"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "digestbot", *args],
            env=bot_env(server),
            cwd=workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        seen: set[int] = set()

        def both_sending() -> bool:
            seen.update(smtp_pids([proc.pid, *_children_quiet(proc.pid)], server.port))
            return len(seen) >= 2

        _wait_for(both_sending, proc)
        assert proc.wait(timeout=120) == 0
    assert proc.pid in seen and len(seen) == 2, seen
    assert len(set(server.handler.peers)) == 2
    assert_exactly_one_digest_each(server.handler, emails, url, kills=0)


@pytest.mark.slow
def test_worker_that_cannot_reach_the_server_stops_the_run_like_one_process(
    workdir: Path,
) -> None:
    """A mail server that cannot be reached stops a run with workers with the same message and exit code as without, attempting nothing."""
    url = os.environ["DIGESTBOT_DATABASE_URL"]
    planned_outbox(workdir, url, 40)
    closed = SMTPServer(handler=None, host="127.0.0.1", port=free_port())  # type: ignore[arg-type]
    env = bot_env(closed)
    args = ["send", "--no-fetch", "--date", DAY, "--workers"]
    alone = run_digestbot([*args, "1"], env=env, cwd=workdir)
    pooled = run_digestbot([*args, "2"], env=env, cwd=workdir)
    assert alone.returncode == pooled.returncode == 1, pooled.stdout + pooled.stderr
    assert alone.stderr.splitlines()[-1] == pooled.stderr.splitlines()[-1], pooled.stderr
    assert "delivery stopped, nothing more was attempted" in pooled.stderr
    assert "Traceback" not in pooled.stderr
    rows = digest_rows(url)
    assert {(state, attempts) for *_, state, _, attempts in rows} == {("planned", 0)}


def test_stop_asked_of_the_workers_leaves_the_rest_for_the_next_run(
    tmp_path: Path, slow_smtp: SMTPServer
) -> None:
    """When the daemon is asked to stop, its workers stop after the message in hand and give back what they claimed; a later run sends the rest, each once."""
    url = f"sqlite:///{tmp_path / 'digestbot.db'}"
    emails = planned_outbox(tmp_path, url, 60)
    settings = load_settings({**bot_env(slow_smtp), "DIGESTBOT_DATABASE_URL": url}, env_file=None)
    stop = threading.Event()
    outcomes: list[str] = []

    def on_result(email: str, _outcome: object) -> None:
        outcomes.append(email)
        if len(outcomes) == 5:
            stop.set()

    engine = app.database(settings)
    delivery = app.delivery(settings)
    try:
        pool = workers.Pool(settings, engine=engine, delivery=delivery, workers=2)
        first = pool(due=60, subscriber_ids=None, on_result=on_result, stop=stop)
    finally:
        delivery.backend.close()
        engine.dispose()
    assert first.stopped and 5 <= first.sent < 60, first.sent
    assert len(outcomes) == first.sent
    states = Counter(state for *_, state, _, _ in digest_rows(url))
    assert states == {"sent": first.sent, "planned": 60 - first.sent}, states
    engine = app.database(settings)
    try:
        second = pipeline.deliver_due(
            engine,
            backend=app.make_backend(settings),
            mail=app.mail_context(settings),
            policy=app.retry_policy(settings),
            clock=lambda: datetime.now(UTC),
        )
    finally:
        engine.dispose()
    assert second.sent == 60 - first.sent
    assert_exactly_one_digest_each(slow_smtp.handler, emails, url, kills=0)


def test_daemon_delivers_with_its_worker_processes(tmp_path: Path, slow_smtp: SMTPServer) -> None:
    """The daemon's delivery uses DIGESTBOT_WORKERS processes, each with its own SMTP connection, and sends each due digest once."""
    from digestbot.daemon import Daemon

    url = f"sqlite:///{tmp_path / 'digestbot.db'}"
    emails = planned_outbox(tmp_path, url, 60)
    env = {**bot_env(slow_smtp), "DIGESTBOT_DATABASE_URL": url, "DIGESTBOT_WORKERS": "2"}
    settings = load_settings(env, env_file=None)
    engine = app.database(settings)
    try:
        daemon = Daemon(
            settings=settings,
            engine=engine,
            specs=[],
            delivery=app.delivery(settings),
            sources=[],
        )
        report = daemon.deliver()
    finally:
        engine.dispose()
    assert report is not None and report.workers == 2 and report.sent == 60
    assert len(set(slow_smtp.handler.peers)) == 2
    assert_exactly_one_digest_each(slow_smtp.handler, emails, url, kills=0)


@pytest.mark.slow
def test_send_killed_leaves_no_worker_sending(workdir: Path) -> None:
    """A `digestbot send` killed with SIGKILL takes its workers down with it after the message in hand; a rerun sends the rest, each digest once."""
    with serve_slow(0.05) as server:
        url = os.environ["DIGESTBOT_DATABASE_URL"]
        emails = planned_outbox(workdir, url, 80)
        env = bot_env(server)
        args = ["send", "--no-fetch", "--date", DAY, "--workers", "2"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "digestbot", *args],
            env=env,
            cwd=workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_for(lambda: len(server.handler.received) >= 10, proc)
        children = _children(proc.pid)
        assert children, children  # the worker process
        proc.kill()
        proc.wait()
        _wait_for(lambda: not [pid for pid in children if _running(pid)], None, timeout=20)
        stopped_at = len(server.handler.received)
        time.sleep(0.3)
        assert len(server.handler.received) == stopped_at, "nothing more goes out"
        assert stopped_at < 80
        rerun = run_digestbot(args, env=env, cwd=workdir)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        # The killed process delivered too: its message in flight (accepted by the server, not
        # yet marked sent when the kill landed) may arrive twice, as the README says.
        assert_exactly_one_digest_each(server.handler, emails, url, kills=1)


# -- many hosts on PostgreSQL ----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(300)  # about 30 s on an idle 2-core machine; much more when it is shared
def test_three_sends_on_one_postgresql_deliver_each_digest_once(workdir: Path, pg_url: str) -> None:
    """Three `digestbot send` processes (hosts) against one PostgreSQL database deliver 2,000 digests, each exactly once, and every process delivers a share."""
    with serve_slow(0.0) as server:
        emails = planned_outbox(workdir, pg_url, 2000)
        env = bot_env(server, DIGESTBOT_DATABASE_URL=pg_url)
        args = ["send", "--no-fetch", "--date", DAY, "--workers", "2"]
        procs = [_start(args, env, workdir) for _ in range(3)]
        outputs = [p.communicate(timeout=280) for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0], outputs
        shares = [_sent_counts(out) for out, _ in outputs]
        assert sum(shares) == 2000 and all(n > 0 for n in shares), shares
        assert_exactly_one_digest_each(server.handler, emails, pg_url, kills=0)


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(300)
def test_host_killed_mid_run_on_postgresql_loses_nothing(workdir: Path, pg_url: str) -> None:
    """One of three `digestbot send` processes on one PostgreSQL database killed with SIGKILL (with its workers, like a host going down) loses nothing: after the others and a rerun, every digest was delivered, repeats only the messages in flight."""
    with serve_slow(0.01) as server:
        emails = planned_outbox(workdir, pg_url, 600)
        env = bot_env(server, DIGESTBOT_DATABASE_URL=pg_url)
        args = ["send", "--no-fetch", "--date", DAY, "--workers", "2"]
        procs = [_start(args, env, workdir, session=True) for _ in range(3)]
        _wait_for(lambda: len(server.handler.received) >= 100, procs[0])
        os.killpg(procs[0].pid, signal.SIGKILL)  # the process and its worker
        procs[0].wait()
        for p in procs[1:]:
            out, err = p.communicate(timeout=250)
            assert p.returncode == 0, out + err
        rerun = run_digestbot(args, env=env, cwd=workdir)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        assert_exactly_one_digest_each(server.handler, emails, pg_url, kills=2)


# -- the progress bar ------------------------------------------------------------------------------


@pytest.mark.slow
def test_progress_bar_on_a_terminal_shows_digests_per_second_and_eta(workdir: Path) -> None:
    """On a terminal `digestbot send` shows a progress bar with the count, the digests per second and the time left."""
    with serve_slow(0.03) as server:
        url = os.environ["DIGESTBOT_DATABASE_URL"]
        planned_outbox(workdir, url, 40)
        env = {**bot_env(server), "TERM": "xterm", "COLUMNS": "120"}
        leader, follower = pty.openpty()
        proc = subprocess.Popen(
            [sys.executable, "-m", "digestbot", "send", "--no-fetch", "--date", DAY],
            env=env,
            cwd=workdir,
            stdout=subprocess.DEVNULL,
            stderr=follower,
        )
        os.close(follower)
        shown = b""
        while True:
            ready, _, _ = select.select([leader], [], [], 30)
            if not ready:
                break
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the process ended: the terminal is gone
                break
            if not chunk:
                break
            shown += chunk
        os.close(leader)
        assert proc.wait(timeout=30) == 0
    text = re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b"", shown).decode(errors="replace")
    assert re.search(r"\d+/40", text), text[-2000:]
    assert re.search(r"\d+ digests/s", text), text[-2000:]
    assert re.search(r"ETA \d+:\d\d:\d\d", text), text[-2000:]


# -- helpers ---------------------------------------------------------------------------------------


def serve_slow(delay: float, wait_for_peers: int = 0):  # type: ignore[no-untyped-def]
    """A real SMTP sink that accepts each message after `delay` seconds, noting each connection
    (and with `wait_for_peers`, none before that many connections were opened)."""
    from contextlib import contextmanager

    @contextmanager
    def _cm() -> Iterator[SMTPServer]:
        gen = slow_server(delay, wait_for_peers=wait_for_peers)
        server = next(gen)
        try:
            yield server
        finally:
            gen.close()

    return _cm()


def _start(
    args: list[str], env: dict[str, str], cwd: Path, *, session: bool = False
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "digestbot", *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=session,
    )


def _wait_for(condition, proc, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        if proc is not None:
            assert proc.poll() is None, "the process ended first"
        time.sleep(0.01)


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out + [g for c in out for g in _children_quiet(c)]


def _children_quiet(pid: int) -> list[int]:
    try:
        return _children(pid)
    except OSError:
        return []


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")
