"""Benchmark the whole `digestbot send --no-fetch` into Postfix's smtp-sink, against two baselines.

Sets up a fresh database (a SQLite file in a temporary folder, or a fresh database on the
PostgreSQL server of --database), stores the Hugging Face fixture feed with `digestbot fetch`, and
writes a subscribers file of N subscribers, each with their own distinct 1-4 queries (words and
phrases of the feed's titles). Then, in one run and on one smtp-sink that the bench starts on a
free loopback port and stops at the end, it measures:

- digestbot: the real CLI in a subprocess (its wall time, from start to exit), and the peak memory
  of its process tree: RSS summed over its processes (the issue's measure, which counts a page
  two processes share, such as a shared library's, once per process) and PSS (each shared page
  divided among the processes sharing it: what the tree takes from the machine);
- the naive path: stdlib EmailMessage + set_content(text) + add_alternative(html) + smtplib
  send_message on one connection, with the text and HTML of real digests (rendered beforehand by
  the file backend; rendering is not counted);
- the wire limit: `smtp-source -s 4` with messages of the digests' mean size.

It ends with the line
`send: N subscribers, D digests in T s (R/s) = X x naive (R0/s), P% of wire (W/s); peak RSS M MB`.
`--plan-only` times planning alone (pipeline.plan_digests: matching plus storing the plans).

    python bench/send_bench.py --subscribers 20000
    python bench/send_bench.py --subscribers 20000 --database postgresql+psycopg://postgres@127.0.0.1:5432/test
    python bench/send_bench.py --subscribers 100000 --plan-only

Needs Postfix's smtp-sink and smtp-source (`apt-get install postfix`; the Postfix daemon itself
need not run) and psutil (the test extra).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import re
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import formatdate, make_msgid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FEED = ROOT / "tests" / "fixtures" / "hf_daily_papers"
DAY = date(2026, 3, 6)  # the feed's last weekday: with LOOKBACK days before it, the whole fixture
LOOKBACK = 4
FROM = "Bench Digest <digest@bench.example.org>"  # not the placeholder, refused with smtp
SINK_BIN = "smtp-sink"
SOURCE_BIN = "smtp-source"
MAX_SHARE = 0.05  # of the papers: more common title words make no query
POSTFIX_HINT = "install Postfix: apt-get install postfix (the daemon need not run)"

STOP = frozenset(
    [
        "a",
        "an",
        "the",
        "of",
        "for",
        "and",
        "or",
        "not",
        "in",
        "on",
        "to",
        "with",
        "by",
        "from",
        "via",
        "as",
        "at",
        "is",
        "are",
        "be",
        "we",
        "our",
        "this",
        "that",
        "its",
        "it",
        "can",
        "than",
        "into",
        "over",
        "under",
        "using",
        "use",
        "based",
        "towards",
        "toward",
        "without",
        "between",
        "how",
        "what",
        "when",
        "why",
        "do",
        "does",
        "more",
        "most",
        "less",
        "new",
        "two",
        "one",
        "their",
        "such",
        "also",
        "has",
        "have",
        "been",
        "while",
        "your",
        "you",
        "all",
        "any",
        "beyond",
        "through",
        "across",
        "within",
        "large",
        "model",
        "models",
        "learning",
    ]
)


class BenchError(Exception):
    """The bench cannot run or measure: the message says what to do."""


# -- subscribers -------------------------------------------------------------------------------


def feed_papers() -> list[tuple[str, str]]:
    """(title, abstract) of the fixture papers in the bench's window (DAY and LOOKBACK days before)."""
    papers = []
    for n in range(LOOKBACK + 1):
        path = FEED / f"{date.fromordinal(DAY.toordinal() - n).isoformat()}.json"
        if path.is_file():
            papers += [
                (item["paper"]["title"], item["paper"]["summary"])
                for item in json.loads(path.read_text())
            ]
    if not papers:
        raise BenchError(f"no fixture papers under {FEED}")
    return papers


def vocabulary(papers: Sequence[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """Terms (title words) and phrases (pairs of adjacent title words), without stop words and
    without terms found in more than MAX_SHARE of the papers (a digest of ~6 papers, not 20)."""
    terms: set[str] = set()
    phrases: set[str] = set()
    for title, _ in papers:
        words = [w.lower() for w in re.findall(r"[A-Za-z][A-Za-z0-9]+", title)]
        for w in words:
            if len(w) >= 4 and w not in STOP:
                terms.add(w)
        for a, b in itertools.pairwise(words):
            if a not in STOP and b not in STOP and len(a) >= 3 and len(b) >= 3:
                phrases.add(f'"{a} {b}"')
    docs = [" ".join(re.findall(r"[a-z0-9]+", f"{t} {a}".lower())) for t, a in papers]
    limit = MAX_SHARE * len(docs)
    common = {t for t in terms if sum(1 for d in docs if re.search(rf"\b{t}", d)) > limit}
    return sorted(terms - common), sorted(phrases)


def subscriber_queries(n: int, seed: int) -> Iterator[tuple[str, ...]]:
    """n distinct sets of 1-4 queries, each a title term or a quoted title phrase."""
    terms, phrases = vocabulary(feed_papers())
    rng = random.Random(seed)
    seen: set[frozenset[str]] = set()
    while len(seen) < n:
        k = rng.choice((1, 2, 2, 3, 3, 4))
        queries = tuple(
            sorted(
                {rng.choice(phrases) if rng.random() < 0.4 else rng.choice(terms) for _ in range(k)}
            )
        )
        key = frozenset(queries)
        if key in seen:
            continue
        seen.add(key)
        yield queries


def write_subscribers(path: Path, people: Sequence[tuple[int, tuple[str, ...]]]) -> None:
    """A subscribers file of `people` (number, queries), all due daily."""
    with path.open("w", encoding="utf-8") as out:
        out.write('[defaults]\nsend_at = "07:00"\ntimezone = "UTC"\nmax_papers = 25\n\n')
        for i, queries in people:
            keywords = ", ".join(json.dumps(q) for q in queries)
            out.write(
                f'[[subscribers]]\nemail = "user{i}@example.org"\nname = "User {i}"\n'
                f"keywords = [{keywords}]\n\n"
            )


# -- databases --------------------------------------------------------------------------------


@contextmanager
def fresh_database(url: str | None, folder: Path) -> Iterator[str]:
    """The URL of an empty database: a SQLite file in `folder`, or a new database on the
    PostgreSQL server of `url`, dropped at the end."""
    if url is None:
        yield f"sqlite:///{folder / 'bench.db'}"
        return
    if not url.startswith("postgresql"):
        raise BenchError(
            f"--database: expected a postgresql+psycopg:// URL, got {url.split(':')[0]}"
        )
    import sqlalchemy as sa

    name = f"digestbot_bench_{os.getpid()}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.SQLAlchemyError as exc:
        raise BenchError(f"cannot create a bench database on {url}: {exc}") from exc
    try:
        yield sa.engine.make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def digest_stats(url: str) -> tuple[int, float]:
    """Sent digests and their mean number of papers, read from the outbox."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as c:
            row = c.execute(
                sa.text("SELECT count(*), avg(paper_count) FROM digests WHERE state = 'sent'")
            ).one()
    finally:
        engine.dispose()
    return int(row[0]), float(row[1] or 0)


# -- the digestbot CLI ------------------------------------------------------------------------


def digestbot_env(
    database: str, subscribers: Path, mail_dir: Path, port: int | None
) -> dict[str, str]:
    """The environment of a CLI run: settings only from here (the run's folder has no .env)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGESTBOT_")}
    env.update(
        DIGESTBOT_DATABASE_URL=database,
        DIGESTBOT_SUBSCRIBERS=str(subscribers),
        DIGESTBOT_FEED_URL=str(FEED),
        DIGESTBOT_LOOKBACK_DAYS=str(LOOKBACK),
        DIGESTBOT_MAIL_FROM=FROM,
        DIGESTBOT_UNSUBSCRIBE_URL="https://digest.example.org/unsubscribe?token={token}",
        DIGESTBOT_UNSUBSCRIBE_SECRET="bench-secret-0123456789abcdef",
        DIGESTBOT_LOG_FORMAT="json",
        DIGESTBOT_MAIL_DIR=str(mail_dir),
    )
    if port is None:
        env["DIGESTBOT_MAIL_BACKEND"] = "file"
    else:
        env.update(
            DIGESTBOT_MAIL_BACKEND="smtp",
            DIGESTBOT_SMTP_HOST="127.0.0.1",
            DIGESTBOT_SMTP_PORT=str(port),
            DIGESTBOT_SMTP_SECURITY="none",
        )
    return env


def digestbot_cmd() -> list[str]:
    return [sys.executable, "-m", "digestbot"]


def run_cli(args: Sequence[str], env: dict[str, str], cwd: Path) -> str:
    """Run a digestbot command to completion; its stdout, or BenchError with its stderr's tail."""
    done = subprocess.run(
        [*digestbot_cmd(), *args], env=env, cwd=cwd, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise BenchError(f"`digestbot {' '.join(args)}` exited {done.returncode}:\n{tail}")
    return done.stdout


def check_workers_option(env: dict[str, str], cwd: Path) -> None:
    """--workers is passed on only to a CLI that has it."""
    if "--workers" not in run_cli(["send", "--help"], env, cwd):
        raise BenchError("this digestbot's `send` has no --workers option; run without --workers")


@dataclass(frozen=True, slots=True)
class SendRun:
    seconds: float
    sent: int
    summary: str
    peak_rss_mb: float  # the process tree's (all workers), sampled
    peak_pss_mb: float  # the same as PSS: shared pages divided among their processes
    cpu_seconds: float  # user + system of the process tree
    at_peak: dict[str, float]  # MB of RSS by process (its role) when the summed RSS peaked
    first_sent_after: float | None  # seconds from start to the first digest sent (planning ends)
    logged_seconds: float | None  # `seconds` of the run's log line


def timed_send(
    args: Sequence[str], env: dict[str, str], cwd: Path, logs: Path, *, interval: float = 0.05
) -> SendRun:
    """Run `digestbot send ...` and time it, sampling the RSS of its process tree meanwhile."""
    import psutil  # type: ignore[import-untyped]

    stdout_path, stderr_path = logs / "send.out", logs / "send.err"
    with stdout_path.open("w") as out, stderr_path.open("w") as err:
        started_wall = time.time()
        t0 = time.perf_counter()
        proc = subprocess.Popen([*digestbot_cmd(), *args], env=env, cwd=cwd, stdout=out, stderr=err)
        peak = peak_pss = 0
        samples = 0
        at_peak: dict[str, float] = {}
        ps = psutil.Process(proc.pid)
        # CPU seconds by process, as last seen. At the end, wait4's rusage of `digestbot send`
        # holds its own and its reaped children's (its workers: it joins them), so the samples of
        # its direct children (its planning fork and its workers, all reaped) are dropped then
        cpu: dict[int, float] = {}
        direct: set[int] = set()
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                break
            try:
                tree = [ps, *ps.children(recursive=True)]
                direct.update(c.pid for c in ps.children())
                rss = pss = 0
                with_pss = samples % 4 == 0  # PSS reads smaps_rollup: every 0.2 s is enough
                samples += 1
                each: dict[str, float] = {}
                for p in tree:
                    try:
                        own = p.memory_info().rss
                        rss += own
                        role = _role(p, proc.pid)
                        each[role] = each.get(role, 0) + own / 2**20
                        if with_pss:
                            pss += p.memory_full_info().pss
                        times = p.cpu_times()
                        cpu[p.pid] = times.user + times.system
                    except psutil.Error:
                        pass
                if rss > peak:
                    peak, at_peak = rss, each
                peak_pss = max(peak_pss, pss)
            except psutil.Error:
                pass
            time.sleep(interval)
        for pid in direct:
            cpu.pop(pid, None)
        cpu[proc.pid] = usage.ru_utime + usage.ru_stime  # the main process and its workers
        seconds = time.perf_counter() - t0
    summary = stdout_path.read_text().strip()
    if proc.returncode != 0:
        tail = "\n".join(stderr_path.read_text().strip().splitlines()[-5:])
        raise BenchError(
            f"`digestbot {' '.join(args)}` exited {proc.returncode}:\n{summary}\n{tail}"
        )
    m = re.search(r"sent (\d+)", summary)
    if m is None:
        raise BenchError(f"cannot read the number sent from digestbot's summary: {summary!r}")
    first, logged = _read_log(stderr_path, started_wall)
    return SendRun(
        seconds=seconds,
        sent=int(m.group(1)),
        summary=summary,
        peak_rss_mb=peak / 2**20,
        peak_pss_mb=peak_pss / 2**20,
        cpu_seconds=sum(cpu.values()),
        at_peak=at_peak,
        first_sent_after=first,
        logged_seconds=logged,
    )


def _role(p: object, send_pid: int) -> str:
    """What a process of `digestbot send`'s tree is, from its command line."""
    import psutil

    assert isinstance(p, psutil.Process)
    if p.pid == send_pid:
        return "digestbot send"
    if "digestbot.workers" in " ".join(p.cmdline()):
        return "worker processes"
    return "planning (forked)"  # apart.call_apart's child: the same command line as its parent


def _read_log(path: Path, started: float) -> tuple[float | None, float | None]:
    """From the JSON log: seconds from `started` to the first digest sent, and the run line's
    `seconds`."""
    first: float | None = None
    logged: float | None = None
    with path.open() as lines:
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if first is None and entry.get("outcome") == "sent" and "timestamp" in entry:
                stamp = datetime.fromisoformat(entry["timestamp"])
                first = stamp.timestamp() - started
            if "seconds" in entry and "planned" in entry:
                logged = float(entry["seconds"])
    return first, logged


# -- smtp-sink and the baselines --------------------------------------------------------------


def postfix_tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise BenchError(f"{name} not found: {POSTFIX_HINT}")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def smtp_sink(port: int, folder: Path) -> Iterator[subprocess.Popen[bytes]]:
    """smtp-sink on 127.0.0.1:port for the bench's lifetime, then stopped."""
    cmd = [postfix_tool(SINK_BIN), "-c"]
    if os.geteuid() == 0:
        cmd += ["-u", "nobody"]  # smtp-sink refuses to run as root without it
    cmd += [f"127.0.0.1:{port}", "1000"]
    log = (folder / "smtp-sink.out").open("wb")
    sink = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    try:
        deadline = time.monotonic() + 10
        while True:
            if sink.poll() is not None:
                raise BenchError(
                    f"smtp-sink exited {sink.returncode}: {(folder / 'smtp-sink.out').read_text()}"
                )
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise BenchError(f"smtp-sink does not listen on 127.0.0.1:{port}") from None
                time.sleep(0.05)
        yield sink
    finally:
        sink.terminate()
        try:
            sink.wait(timeout=5)
        except subprocess.TimeoutExpired:
            sink.kill()
            sink.wait()
        log.close()


@dataclass(frozen=True, slots=True)
class Sample:
    sender: str
    to: str
    subject: str
    text: str
    html: str
    size: int  # bytes of the whole message as digestbot built it


def read_samples(folder: Path) -> list[Sample]:
    """The digests the file backend wrote: their headers, text and HTML parts, and sizes."""
    samples = []
    parser = BytesParser(policy=policy.default)
    for path in sorted(folder.rglob("*.eml")):
        raw = path.read_bytes()
        msg = parser.parsebytes(raw)
        text = msg.get_body(preferencelist=("plain",))
        html = msg.get_body(preferencelist=("html",))
        if text is None or html is None:
            continue
        samples.append(
            Sample(
                sender=str(msg["From"]),
                to=str(msg["To"]),
                subject=str(msg["Subject"]),
                text=text.get_content(),
                html=html.get_content(),
                size=len(raw),
            )
        )
    if not samples:
        raise BenchError(f"the sample run wrote no digest under {folder}")
    return samples


def naive_send(port: int, samples: Sequence[Sample], count: int) -> float:
    """Messages/s of the plain stdlib way on one connection; building the MIME is counted."""
    with smtplib.SMTP("127.0.0.1", port) as smtp:
        t0 = time.perf_counter()
        for i in range(count):
            s = samples[i % len(samples)]
            msg = EmailMessage()
            msg["From"] = s.sender
            msg["To"] = s.to
            msg["Subject"] = s.subject
            msg["Date"] = formatdate(localtime=False)
            msg["Message-ID"] = make_msgid(domain="example.org")
            msg.set_content(s.text)
            msg.add_alternative(s.html, subtype="html")
            smtp.send_message(msg)
        seconds = time.perf_counter() - t0
    return count / seconds


def wire_send(port: int, size: int, count: int, sessions: int) -> tuple[float, list[str]]:
    """Messages/s of `smtp-source -s SESSIONS` sending `count` messages of `size` bytes."""
    cmd = [
        postfix_tool(SOURCE_BIN),
        "-s",
        str(sessions),
        "-l",
        str(size),
        "-m",
        str(count),
        "-f",
        "digest@example.org",
        "-t",
        "reader@example.org",
        f"127.0.0.1:{port}",
    ]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise BenchError(f"smtp-source exited {done.returncode}: {done.stderr.strip()[-300:]}")
    return count / seconds, cmd


# -- planning alone ---------------------------------------------------------------------------


def plan_only(env: dict[str, str], profile: str | None = None) -> None:
    """Time loading, sync and planning (pipeline.plan_digests) through the library, as `send` calls
    them: wall and CPU seconds of each stage and the peak RSS of this process."""
    import resource

    from digestbot import app, pipeline, schedule
    from digestbot.settings import load_settings

    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    settings = load_settings(env, env_file=None)
    wall, cpu = time.perf_counter(), time.process_time()
    marks: list[tuple[float, float]] = []

    def mark() -> None:
        marks.append((time.perf_counter() - wall, time.process_time() - cpu))

    people = app.load_people(settings)
    mark()
    engine = app.database(settings)
    now = datetime.now(UTC)
    mark()
    recipients = pipeline.sync_subscribers(engine, people, now=now)
    mark()
    plan = pipeline.plan_digests(
        engine,
        recipients,
        as_of=schedule.as_of(DAY, now),
        lookback=settings.lookback_days,
        day=DAY,
        from_addr=settings.mail_from,
        now=now,
    )
    mark()
    engine.dispose()
    if prof is not None and profile:
        prof.disable()
        prof.dump_stats(profile)
    (w1, c1), (w2, c2), (w3, c3), (w4, c4) = marks
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"load subscribers file: {len(people)} in {w1:.2f} s ({c1:.2f} s CPU)")
    print(f"sync subscribers: {len(recipients)} in {w3 - w2:.2f} s ({c3 - c2:.2f} s CPU)")
    print(
        f"plan: {len(people)} subscribers, {plan.planned} planned, {plan.skipped} skipped "
        f"in {w4 - w3:.2f} s ({len(people) / (w4 - w3):.0f} subscribers/s; "
        f"{c4 - c3:.2f} s CPU in this process)"
    )
    print(f"plan-only: load+sync+plan {w4:.2f} s ({c4:.2f} s CPU); peak RSS {rss:.0f} MB")


# -- main -------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--subscribers", type=int, default=20_000)
    ap.add_argument(
        "--database",
        default=None,
        help="a PostgreSQL URL: a fresh database is made on its server (default: a temporary SQLite file)",
    )
    ap.add_argument(
        "--workers", type=int, default=None, help="passed to `digestbot send --workers`"
    )
    ap.add_argument(
        "--plan-only", action="store_true", help="time planning alone (library), no mail"
    )
    ap.add_argument(
        "--profile", default=None, help="with --plan-only: write a cProfile of it to this file"
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--sample",
        type=int,
        default=100,
        help="digests rendered for the naive path and the message size",
    )
    ap.add_argument("--naive-count", type=int, default=2000, help="messages of the naive path")
    ap.add_argument("--wire-count", type=int, default=10000, help="messages of smtp-source")
    ap.add_argument("--wire-sessions", type=int, default=4, help="smtp-source -s")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, files)")
    args = ap.parse_args(argv)
    if args.subscribers < 1:
        ap.error("--subscribers must be at least 1")
    try:
        run(args)
    except BenchError as exc:
        print(f"send_bench: {exc}", file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace) -> None:
    if not args.plan_only:
        postfix_tool(SINK_BIN)
        postfix_tool(SOURCE_BIN)
        try:
            import psutil  # type: ignore[import-untyped]  # noqa: F401 - fail early
        except ImportError:
            raise BenchError("psutil is missing: pip install -e '.[test]'") from None
    tmp = Path(tempfile.mkdtemp(prefix="digestbot-bench-"))
    try:
        with fresh_database(args.database, tmp) as url:
            measure(args, tmp, url)
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def measure(args: argparse.Namespace, tmp: Path, url: str) -> None:
    n = args.subscribers
    people = tmp / "subscribers.toml"
    t0 = time.perf_counter()
    everyone = list(enumerate(subscriber_queries(n, args.seed)))
    write_subscribers(people, everyone)
    env = digestbot_env(url, people, tmp / "mail", None)
    fetched = run_cli(["fetch", "--date", DAY.isoformat()], env, tmp).strip()
    print(f"setup: {n} subscribers written, fetch {fetched} ({time.perf_counter() - t0:.1f} s)")
    if args.plan_only:
        plan_only(env, args.profile)
        return

    # A sample of the same people's digests, rendered by the file backend on a separate database:
    # the text and HTML of the naive path, and the message size of smtp-source.
    sample_people = tmp / "sample.toml"
    write_subscribers(sample_people, everyone[:: max(1, n // args.sample)][: args.sample])
    sample_env = digestbot_env(
        f"sqlite:///{tmp / 'sample.db'}", sample_people, tmp / "sample", None
    )
    run_cli(["fetch", "--date", DAY.isoformat()], sample_env, tmp)
    run_cli(["send", "--no-fetch", "--date", DAY.isoformat()], sample_env, tmp)
    samples = read_samples(tmp / "sample")
    size = round(sum(s.size for s in samples) / len(samples))

    port = free_port()
    send_args = ["send", "--no-fetch", "--date", DAY.isoformat()]
    with smtp_sink(port, tmp):
        env = digestbot_env(url, people, tmp / "mail", port)
        if args.workers is not None:
            check_workers_option(env, tmp)
            send_args += ["--workers", str(args.workers)]
        done = timed_send(send_args, env, tmp, tmp)
        naive = naive_send(port, samples, args.naive_count)
        wire, wire_cmd = wire_send(port, size, args.wire_count, args.wire_sessions)

    sent, mean_papers = digest_stats(url)
    rate = done.sent / done.seconds
    engine = "PostgreSQL" if url.startswith("postgresql") else "SQLite"
    workers = "default" if args.workers is None else str(args.workers)
    print(f"database: {engine}; workers: {workers}")
    print(f"digestbot: {done.summary}")
    print(
        f"digestbot CPU: {done.cpu_seconds:.1f} s user+system for {done.seconds:.1f} s of wall "
        "time (a loaded machine shows here)"
    )
    print(
        f"digests: {sent} sent, {mean_papers:.1f} papers and {size / 1000:.1f} KB each "
        f"(mean of {len(samples)} sample digests)"
    )
    if done.first_sent_after is not None:
        print(f"until the first digest sent (start, sync, plan): {done.first_sent_after:.1f} s")
    if done.logged_seconds is not None:
        print(f"run log line: {done.logged_seconds:.1f} s")
    print(
        f"memory: peak RSS summed over the processes {done.peak_rss_mb:.0f} MB; peak PSS "
        f"(shared pages counted once) {done.peak_pss_mb:.0f} MB"
    )
    print(
        "memory at the peak, by process: "
        + ", ".join(f"{role} {mb:.0f} MB" for role, mb in done.at_peak.items())
    )
    print(f"naive: {args.naive_count} messages on one connection, {naive:.0f}/s")
    print(
        f"wire: {' '.join(Path(c).name if i == 0 else c for i, c in enumerate(wire_cmd))}: {wire:.0f}/s"
    )
    print(
        f"send: {n} subscribers, {done.sent} digests in {done.seconds:.1f} s ({rate:.0f}/s) = "
        f"{rate / naive:.1f} x naive ({naive:.0f}/s), {100 * rate / wire:.0f}% of wire "
        f"({wire:.0f}/s); peak RSS {done.peak_rss_mb:.0f} MB"
    )


if __name__ == "__main__":
    sys.exit(main())
