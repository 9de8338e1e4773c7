"""Run a step in a forked child process, so that its memory leaves with the child.

Python keeps most memory it has freed: a few objects still alive in an arena of its allocator
keep the whole arena. Reading a 100,000-subscriber file and planning their digests takes about
150 MB, and the process kept about 90 MB of it after letting go of everything (the objects
that stay, a few thousand, are the caches and modules of the database layer). `digestbot send`
then delivers as one of its workers, so that memory stayed for the whole run. `call_apart(step)`
runs `step` in a fork of this process and returns its (small, picklable) result: the child's
memory goes back to the system when it exits, and this process continues as it was before.

A DigestbotError in the child is raised here as the same kind (errors.portable). Anything else
(a bug) prints its traceback on stderr there, and is a DigestbotError here that says planning
stopped, as is the child's death (a signal, kill -9): nothing was sent, and running again is
safe (planning is safe to repeat).

Forking a process that runs other threads is unsafe (a lock another thread held stays held in
the child), so `can_fork()` says no then, and where os.fork does not exist.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from typing import TypeVar

from digestbot.errors import DigestbotError, portable, restored

__all__ = ["call_apart", "can_fork"]

T = TypeVar("T")


def can_fork() -> bool:
    """Whether `call_apart` may fork here: os.fork exists and this process runs one thread."""
    return hasattr(os, "fork") and threading.active_count() == 1


def call_apart(step: Callable[[], T], *, what: str) -> T:
    """`step()` run in a forked child; its result, or its DigestbotError raised here. `what`
    names the step in the error of a child that died ("planning")."""
    read, write = os.pipe()
    sys.stdout.flush()  # what is buffered now would be written twice, by both processes
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child ends with os._exit, coverage cannot save
        os.close(read)
        _child(step, write)
    os.close(write)
    try:
        with os.fdopen(read, "rb") as pipe:
            answer = pipe.read()
    finally:
        _, status = os.waitpid(pid, 0)
    if not answer:
        raise DigestbotError(
            f"{what} stopped unexpectedly (process {pid}, {_ended(status)}); nothing was sent, "
            "run again"
        )
    kind, value = pickle.loads(answer)
    if kind == "error":
        raise restored(*value)
    result: T = value
    return result


def _child(step: Callable[[], T], write: int) -> None:  # pragma: no cover - see above
    code = 0
    try:
        try:
            answer: tuple[str, object] = ("ok", step())
        except DigestbotError as exc:
            answer = ("error", portable(exc))
        with os.fdopen(write, "wb") as pipe:
            pipe.write(pickle.dumps(answer))
    except KeyboardInterrupt:  # Ctrl-C reached both processes: the parent says it
        code = 128 + signal.SIGINT
    except BaseException:  # noqa: BLE001 - a bug: its traceback, then the parent names the step
        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # closed or gone: nothing to keep
                stream.flush()
        os._exit(code)


def _ended(status: int) -> str:
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            return f"killed by {signal.Signals(number).name}"
        except ValueError:
            return f"killed by signal {number}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"
