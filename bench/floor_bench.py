"""The floor under `digestbot send`: what Python itself does on this machine with no digest work.

Each process sends pre-built messages of the digests' size to Postfix's `smtp-sink` on one
connection, pipelined as digestbot pipelines (the next envelope with the content before it), and
reads every reply; with `mark`, each message is then marked sent in a SQLite file the way the
outbox marks it (WAL, synchronous=NORMAL, BEGIN IMMEDIATE, an UPDATE of an indexed row, COMMIT).
No rendering, no MIME, no claims, no log line: what is left of a digest's cost once every one of
those is free. `smtp-source -s 4` runs on the same sink at the same size, in the same run.

    python bench/floor_bench.py                     # 20,000 messages of 22,589 bytes
    python bench/floor_bench.py --count 50000 --size 30000

It prints one line per case, then the share of the wire limit each reached. Compare with
`send_bench.py` in the same hour: the machine's speed varies by up to a fifth from hour to hour.
"""

from __future__ import annotations

import argparse
import multiprocessing
import socket
import sqlite3
import sys
import tempfile
import time
from collections.abc import Sequence
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import BinaryIO

from send_bench import BenchError, free_port, smtp_sink, wire_send

ENVELOPE = b"MAIL FROM:<digest@example.org>\r\nRCPT TO:<reader@example.org>\r\nDATA\r\n"


def message(size: int) -> bytes:
    """A message of `size` bytes: a few headers and lines of 76 characters, as quoted-printable
    bodies are, ending with the end-of-data line."""
    head = b"From: digest@example.org\r\nTo: reader@example.org\r\nSubject: floor\r\n\r\n"
    line = b"x" * 74 + b"\r\n"
    body = line * max(0, (size - len(head)) // len(line))
    return head + body + b".\r\n"


def _replies(read: BinaryIO, count: int) -> None:
    """Read `count` SMTP replies (multi-line ones whole); any but 2xx/3xx stops the bench."""
    for _ in range(count):
        while True:
            line = read.readline()
            if not line or line[:1] not in b"23":
                raise BenchError(f"smtp-sink answered {line!r}")
            if line[3:4] != b"-":
                break


def _sender(
    port: int,
    count: int,
    size: int,
    first: int,
    database: str | None,
    ready: Barrier,
) -> None:
    conn = socket.create_connection(("127.0.0.1", port))
    read = conn.makefile("rb")
    _replies(read, 1)
    conn.sendall(b"EHLO floor.example.org\r\n")
    _replies(read, 1)
    db = None
    if database is not None:
        db = sqlite3.connect(database, isolation_level=None)
        db.execute("PRAGMA busy_timeout = 30000")
        db.execute("PRAGMA synchronous = NORMAL")
    data = message(size)
    ready.wait()
    conn.sendall(ENVELOPE)
    for k in range(count):
        _replies(read, 3)  # MAIL, RCPT, DATA's 354
        conn.sendall(data + (ENVELOPE if k < count - 1 else b""))
        _replies(read, 1)  # the message queued
        if db is not None:
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "UPDATE digests SET state = 'sent', sent_at = ? WHERE id = ?", (k, first + k)
            )
            db.execute("COMMIT")
    conn.sendall(b"QUIT\r\n")
    conn.close()


def _database(folder: Path, count: int, name: str) -> str:
    path = str(folder / f"{name}.db")
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("CREATE TABLE digests (id INTEGER PRIMARY KEY, state TEXT, sent_at INTEGER)")
    db.execute("CREATE INDEX ix_digests_state ON digests (state)")
    db.executemany("INSERT INTO digests VALUES (?, 'planned', NULL)", ((i,) for i in range(count)))
    db.commit()
    db.close()
    return path


def floor(port: int, count: int, size: int, processes: int, database: str | None) -> float:
    """Messages/s of `processes` senders sharing `count` messages."""
    share = count // processes
    ready = multiprocessing.Barrier(processes + 1)
    senders = [
        multiprocessing.Process(
            target=_sender, args=(port, share, size, i * share, database, ready)
        )
        for i in range(processes)
    ]
    for p in senders:
        p.start()
    ready.wait()
    t0 = time.perf_counter()
    for p in senders:
        p.join()
    seconds = time.perf_counter() - t0
    if any(p.exitcode != 0 for p in senders):
        raise BenchError("a sender failed (its traceback is above)")
    return share * processes / seconds


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--count", type=int, default=20000, help="messages of each case")
    ap.add_argument("--size", type=int, default=22589, help="bytes a message (the digests' mean)")
    ap.add_argument("--processes", type=int, default=2, help="senders of the parallel cases")
    ap.add_argument("--wire-count", type=int, default=10000, help="messages of smtp-source")
    args = ap.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="digestbot-floor-") as tmp:
            folder, port = Path(tmp), free_port()
            with smtp_sink(port, folder):
                rates = []
                for processes in sorted({1, args.processes}):
                    for mark in (False, True):
                        database = (
                            _database(folder, args.count, f"floor{processes}") if mark else None
                        )
                        rate = floor(port, args.count, args.size, processes, database)
                        what = "with a SQLite sent mark each" if mark else "no database"
                        rates.append((f"{processes} process(es), {what}", rate))
                        print(f"floor: {processes} process(es), {what}: {rate:.0f}/s", flush=True)
                wire, _ = wire_send(port, args.size, args.wire_count, 4)
            print(f"wire: smtp-source -s 4 -l {args.size}: {wire:.0f}/s")
            for what, rate in rates:
                print(f"floor, {what}: {100 * rate / wire:.0f}% of wire")
    except BenchError as exc:
        print(f"floor_bench: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
