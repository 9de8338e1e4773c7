"""Delivery by several worker processes sharing one run through the outbox claims.

`Pool` is what `digestbot send` and the daemon call to deliver: with one worker (or a run too
small to be worth another process) it runs pipeline.deliver_due in this process, as before.
With N, this process is one of them (worker 0, with the caller's backend) and starts N - 1
worker processes: a process fewer, and its memory, than N workers beside an idle parent. They
are spawned (a fresh interpreter that imports digestbot.workers, not a fork of this process and
its planning's memory, nor a fork server that would stay beside them), as plain subprocesses:
multiprocessing's own spawning would also start its resource tracker (a 12 MB process this module
has no use for) and import the caller's main module (the CLI) in each worker. Each worker process builds
its own engine, mail context and backend (so its own SMTP connection) from the Settings, runs
pipeline.deliver_due against the shared outbox claims and sends the outcomes back for the
progress bar (a few at a time), then its DeliveryReport. This process reads them between its
own messages, and waits for the rest once it has nothing more to send.

The workers share DIGESTBOT_SMTP_RATE: each paces at rate/N, staggered (RateLimiter.shared).
A setup error in any worker (login refused, DKIM) stops the others after the message in hand
and is raised here as the same error type. A worker stops too when its parent dies (kill -9 of
`digestbot send`): it notices the end of its control pipe, finishes the message in hand and
gives back what it claimed. SIGTERM and SIGINT (Ctrl-C, systemd's stop, which reach every process
of the group) make a worker do the same.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import Protocol

from sqlalchemy.engine import Engine

from digestbot import app, outbox, pipeline
from digestbot.db import make_engine
from digestbot.errors import DigestbotError, portable, restored
from digestbot.mail.ratelimit import RateLimiter
from digestbot.settings import Settings

log = logging.getLogger("digestbot")

MIN_PER_WORKER = 100
"""With the default worker count, due digests per worker process: a run with fewer is delivered
by fewer processes (starting one costs about what sending a hundred digests does)."""

OnResult = Callable[[str, outbox.Outcome], None]


class Here(Protocol):
    """This process's share of a run of several workers: deliver as worker 0 of `workers`, pacing
    from `start` (RateLimiter.shared), until nothing is due or `stop` is set."""

    def __call__(
        self, *, workers: int, start: float, stop: threading.Event, on_result: OnResult
    ) -> pipeline.DeliveryReport: ...


RESULT_BATCH = 20
RESULT_EVERY = 0.25
"""A worker tells the parent its outcomes (for the progress bar) in messages of up to
RESULT_BATCH, at least every RESULT_EVERY seconds while it sends."""


def workers_for(configured: int | None, due: int) -> int:
    """How many processes deliver `due` digests. `configured` (`--workers`, DIGESTBOT_WORKERS)
    is taken as asked, but never more than one per pipeline.CLAIM_MIN due digests; 0 or None
    means one per CPU core, and one per MIN_PER_WORKER due digests at most."""
    if configured:
        return max(1, min(configured, math.ceil(due / pipeline.CLAIM_MIN)))
    return max(1, min(os.cpu_count() or 1, due // MIN_PER_WORKER))


def claim_share(due: int, workers: int) -> int:
    """Digests each of `workers` claims at a time to deliver `due` between them: an even share
    (so none is left alone with a large last batch while the others are done), from
    pipeline.CLAIM_MIN up to pipeline.CLAIM_BATCH."""
    share = math.ceil(due / max(1, workers))
    return max(pipeline.CLAIM_MIN, min(pipeline.CLAIM_BATCH, share))


@dataclass(frozen=True, slots=True)
class _Job:
    """What one worker process is given: everything else it builds from the settings."""

    settings: Settings
    index: int
    workers: int
    start: float  # time.monotonic() when the pool started: the shared rate's first slot
    subscriber_ids: tuple[int, ...] | None
    cwd: str  # relative paths in the settings (SQLite file, mail folder) are relative to it
    claim: int  # digests claimed at a time (claim_share)


class Pool:
    """Delivers due digests with up to `workers` processes (0: one per core; pipeline.Deliver).

    In-process runs use `delivery` (the caller's backend, mail context, policy and limiter) and
    `clock`; worker processes build their own from `settings` and use the wall clock.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        engine: Engine,
        delivery: app.Delivery,
        workers: int,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.delivery = delivery
        self.workers = workers
        self.clock = clock

    def __call__(
        self,
        *,
        due: int,
        subscriber_ids: Sequence[int] | None,
        on_result: OnResult | None,
        stop: threading.Event | None,
    ) -> pipeline.DeliveryReport:
        n = workers_for(self.workers, due)
        claim = claim_share(due, n)
        if n == 1:
            return self._deliver(self.delivery.limiter, subscriber_ids, on_result, stop, claim)
        ids = tuple(subscriber_ids) if subscriber_ids is not None else None

        def here(
            *, workers: int, start: float, stop: threading.Event, on_result: OnResult
        ) -> pipeline.DeliveryReport:
            rate = self.delivery.limiter.rate
            limiter = RateLimiter.shared(rate, workers=workers, index=0, start=start)
            return self._deliver(limiter, ids, on_result, stop, claim)

        return run_workers(
            self.settings,
            workers=n,
            subscriber_ids=ids,
            on_result=on_result,
            stop=stop,
            here=here,
            claim=claim,
        )

    def _deliver(
        self,
        limiter: RateLimiter,
        subscriber_ids: Sequence[int] | None,
        on_result: OnResult | None,
        stop: threading.Event | None,
        claim: int,
    ) -> pipeline.DeliveryReport:
        """Delivery in this process, with the caller's backend, mail context and policy."""
        d = self.delivery
        return pipeline.deliver_due(
            self.engine,
            backend=d.backend,
            mail=d.mail,
            policy=d.policy,
            limiter=limiter,
            clock=self.clock,
            subscriber_ids=subscriber_ids,
            on_result=on_result,
            stop=stop,
            claim=claim,
        )


def run_workers(
    settings: Settings,
    *,
    workers: int,
    subscriber_ids: tuple[int, ...] | None = None,
    on_result: OnResult | None = None,
    stop: threading.Event | None = None,
    here: Here,
    claim: int,
) -> pipeline.DeliveryReport:
    """Deliver every due digest with `workers` processes and return their merged report.

    This process is worker 0 (it calls `here`, reading the others' messages between its own);
    `workers - 1` processes are started, each claiming `claim` digests at a time.
    `stop` (the daemon's SIGTERM) makes every worker stop after the message in hand. The first
    error a worker reports is raised as the same kind (errors.restored), after
    the others were stopped; so is a worker that died without a word.
    """
    start = time.monotonic()
    board = _Board(on_result)
    try:
        for i in range(1, workers):
            job = _Job(settings, i, workers, start, subscriber_ids, os.getcwd(), claim)
            proc, control, results = _Process.start(job, name=f"digestbot-worker-{i}")
            board.add(proc, control, results)
        board.reports.append(_deliver_here(here, board, workers, start, on_result, stop))
        board.wait(stop)
    finally:
        board.stop_all()
        for proc in board.procs:
            proc.join(timeout=60)
            if proc.is_alive():  # stuck past the message in hand: nothing more to wait for
                proc.kill()
                proc.join()
    if board.error is not None:
        raise board.error
    return pipeline.DeliveryReport.merged(board.reports, workers=workers)


def _deliver_here(
    here: Here,
    board: _Board,
    workers: int,
    start: float,
    on_result: OnResult | None,
    stop: threading.Event | None,
) -> pipeline.DeliveryReport:
    """This process's own share; after each of its messages it reads what the worker processes
    said, and stops after the message in hand when one of them failed or `stop` is set."""
    halt = threading.Event()

    def check() -> None:
        if board.error is not None or (stop is not None and stop.is_set()):
            halt.set()

    def own(email: str, outcome: outbox.Outcome) -> None:
        if on_result is not None:
            on_result(email, outcome)
        board.read(timeout=0)
        check()

    check()
    try:
        return here(workers=workers, start=start, stop=halt, on_result=own)
    except DigestbotError:
        board.stop_all()  # the workers stop after their message in hand; this error is raised
        raise


class _Board:
    """The worker processes of a run: their pipes, and what they reported."""

    def __init__(self, on_result: OnResult | None) -> None:
        self.on_result = on_result
        self.procs: list[_Process] = []
        self.controls: list[Connection] = []
        self.live: dict[Connection, int] = {}
        self.finished: set[int] = set()
        self.reports: list[pipeline.DeliveryReport] = []
        self.error: DigestbotError | None = None

    def add(self, proc: _Process, control: Connection, results: Connection) -> None:
        self.live[results] = len(self.procs)
        self.procs.append(proc)
        self.controls.append(control)

    def stop_all(self) -> None:
        _stop_all(self.controls)

    def wait(self, stop: threading.Event | None) -> None:
        """Read the workers' messages until every one has ended."""
        stopping = False
        while self.live:
            if stop is not None and stop.is_set() and not stopping:
                stopping = True
                self.stop_all()
            self.read(timeout=0.2)

    def read(self, *, timeout: float) -> None:
        """Handle the messages waiting (or arriving within `timeout`): outcomes go to
        `on_result`, reports and errors are kept; the first error stops every worker."""
        for conn in multiprocessing.connection.wait(list(self.live), timeout=timeout):
            assert isinstance(conn, Connection)
            index = self.live[conn]
            try:
                kind, *payload = conn.recv()
            except EOFError:
                del self.live[conn]
                conn.close()
                if index not in self.finished and self.error is None:
                    proc = self.procs[index]
                    proc.join(timeout=5)
                    self.error = DigestbotError(
                        f"delivery worker {proc.name} (pid {proc.pid}) stopped unexpectedly "
                        f"(exit code {proc.exitcode}); the digests it held are sent by the next run"
                    )
                    self.stop_all()
                continue
            if kind == "results" and self.on_result is not None:
                for email, outcome in payload[0]:
                    self.on_result(email, outbox.Outcome(outcome))
            elif kind == "done":
                self.finished.add(index)
                self.reports.append(payload[0])
            elif kind == "error":
                self.finished.add(index)
                if self.error is None:
                    self.error = restored(*payload)
                    self.stop_all()


def _stop_all(controls: list[Connection]) -> None:
    """Ask every worker to stop after the message in hand (a closed pipe says the same)."""
    for conn in controls:
        if not conn.closed:
            try:
                conn.send("stop")
            except OSError:
                pass  # that worker has ended already
            conn.close()


class _Process:
    """A worker process: a fresh interpreter (``sys.executable``) that reads its _Job from its
    control pipe, then runs _worker_main. Its two pipes are multiprocessing Connections over
    os.pipe, handed down by file descriptor; its stderr is this process's."""

    def __init__(self, popen: subprocess.Popen[bytes], name: str) -> None:
        self.popen = popen
        self.name = name
        self.pid = popen.pid

    @classmethod
    def start(cls, job: _Job, *, name: str) -> tuple[_Process, Connection, Connection]:
        """Start a worker for `job`; the process, and this side's control and results pipes."""
        ctl_read, ctl_write = multiprocessing.Pipe(duplex=False)
        res_read, res_write = multiprocessing.Pipe(duplex=False)
        fds = (ctl_read.fileno(), res_write.fileno())
        try:
            popen = subprocess.Popen(
                [sys.executable, "-c", _WORKER_CODE, *map(str, fds), json.dumps(sys.path)],
                pass_fds=fds,
            )
        except OSError:
            for conn in (ctl_read, ctl_write, res_read, res_write):
                conn.close()
            raise
        ctl_read.close()  # the worker holds its ends; the parent's copies would hide an EOF
        res_write.close()
        try:
            ctl_write.send(job)
        except OSError:  # it ended already: the caller reads the end of its results, and says so
            pass
        return cls(popen, name), ctl_write, res_read

    @property
    def exitcode(self) -> int | None:
        return self.popen.poll()

    def is_alive(self) -> bool:
        return self.popen.poll() is None

    def join(self, timeout: float | None = None) -> None:
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    def kill(self) -> None:
        self.popen.kill()


# The worker's interpreter: the caller's import path (as multiprocessing gives its children), then
# the job from the control pipe.
_WORKER_CODE = (
    "import json, sys; sys.path[:] = json.loads(sys.argv[3]); "
    "from digestbot.workers import _worker_entry; _worker_entry(int(sys.argv[1]), int(sys.argv[2]))"
)


# -- in the worker process ---------------------------------------------------------------------


def _worker_entry(control_fd: int, results_fd: int) -> None:
    """A worker process's start (_Process): its pipes from their descriptors, its job from the
    control pipe; a parent gone before sending it ends the process quietly.

    Once its work is done (its connections closed, its report sent) the process ends at once,
    as multiprocessing ends its own children (os._exit): Python's teardown would free the run's
    caches object by object (0.4 s after 20,000 digests) while the parent waits for its exit.
    A bug ends it the usual way, with its traceback.
    """
    control = Connection(control_fd, writable=False)
    results = Connection(results_fd, readable=False)
    try:
        job = control.recv()
    except (EOFError, OSError):
        return
    _worker_main(job, control, results)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(0)


def _worker_main(job: _Job, control: Connection, results: Connection) -> None:
    """A worker process: deliver with its own engine and backend until nothing is due or asked
    to stop; send each outcome, then its report or its error, to the parent. A bug ends the
    process with its traceback on stderr, and the parent reports the worker as stopped."""
    os.chdir(job.cwd)  # relative paths in the settings are relative to the caller's folder
    app.configure_logging(job.settings)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # Ctrl-C and systemd reach every process
        signal.signal(sig, lambda *_: stop.set())
    threading.Thread(target=_watch, args=(control, stop), name="control", daemon=True).start()
    engine: Engine | None = None
    delivery: app.Delivery | None = None

    def tell(*message: object) -> None:
        try:
            results.send(message)
        except OSError:  # the parent is gone: stop after the message in hand
            stop.set()

    outcomes: list[tuple[str, str]] = []
    sent_at = time.monotonic()

    def report(email: str, outcome: outbox.Outcome) -> None:
        # a message per RESULT_BATCH outcomes or RESULT_EVERY seconds, not per digest: the
        # parent only moves the progress bar, and waking it per digest cost a fifth of a core
        nonlocal sent_at
        outcomes.append((email, str(outcome)))
        if len(outcomes) >= RESULT_BATCH or time.monotonic() - sent_at >= RESULT_EVERY:
            flush()

    def flush() -> None:
        nonlocal sent_at
        if outcomes:
            tell("results", list(outcomes))
            outcomes.clear()
        sent_at = time.monotonic()

    try:
        engine = make_engine(job.settings.database_url, create=False)
        delivery = app.delivery(job.settings)
        # Modules, settings, templates: alive until the process ends. Left out of the cyclic
        # collections that delivery's allocations trigger (cli.main does the same).
        gc.freeze()
        limiter = RateLimiter.shared(
            delivery.limiter.rate, workers=job.workers, index=job.index, start=job.start
        )
        done = pipeline.deliver_due(
            engine,
            backend=delivery.backend,
            mail=delivery.mail,
            policy=delivery.policy,
            limiter=limiter,
            clock=lambda: datetime.now(UTC),
            subscriber_ids=job.subscriber_ids,
            on_result=report,
            stop=stop,
            claim=job.claim,
        )
        flush()
        tell("done", done)
    except DigestbotError as exc:
        flush()
        tell("error", *portable(exc))
    finally:
        if delivery is not None:
            delivery.backend.close()
        if engine is not None:
            engine.dispose()
        results.close()


def _watch(control: Connection, stop: threading.Event) -> None:
    """Set `stop` when the parent asks, or when its end of the pipe closes (the parent died)."""
    try:
        control.recv()
    except (EOFError, OSError):
        pass
    stop.set()
