"""Benchmark the whole daily run for many subscribers: sync, plan, render and deliver.

Uses a temporary SQLite file (or --database URL), the fixture feed, and a backend that counts and
discards messages, so it measures digestbot itself, not a mail server. Prints one line per stage
and, last, `send: N subscribers: plan T1 s, deliver T2 s (R msgs/s), peak RSS M MB`.

    python bench/send_bench.py --subscribers 20000
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import tempfile
import time
from datetime import UTC, date, datetime
from datetime import time as dtime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from digestbot import pipeline
from digestbot.db import open_database
from digestbot.mail.backends import Envelope
from digestbot.mail.context import MailContext
from digestbot.outbox import RetryPolicy
from digestbot.render import Renderer
from digestbot.sources.hf_daily import HFDailyPapers
from digestbot.subscribers import SubscriberSpec

FEED = ROOT / "tests" / "fixtures" / "hf_daily_papers"
WORDS = [
    "diffusion",
    "agent",
    "reasoning",
    '"language model"',
    "video",
    "transformer",
    "decoding",
    "benchmark",
    "reinforcement",
    "multimodal",
    "retrieval",
    "alignment",
    "3D",
    "speech",
    "robot*",
]


class CountingBackend:
    def __init__(self) -> None:
        self.count = 0
        self.bytes = 0

    def send(self, envelope: Envelope) -> None:
        self.count += 1
        self.bytes += len(envelope.raw)

    def close(self) -> None:
        return None


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--subscribers", type=int, default=10_000)
    ap.add_argument(
        "--database", default=None, help="database URL (default: a temporary SQLite file)"
    )
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    tmp = tempfile.TemporaryDirectory()
    url = args.database or f"sqlite:///{tmp.name}/bench.db"
    engine = open_database(url)
    now = datetime(2026, 3, 6, 23, 0, tzinfo=UTC)
    specs = [
        SubscriberSpec(
            email=f"user{i}@example.org",
            name=f"User {i}",
            keywords=tuple(rng.sample(WORDS, rng.randint(1, 3))),
            exclude=("survey",),
            authors=(),
            min_upvotes=0,
            send_at=dtime(7, 0),
            timezone="UTC",
            max_papers=10,
            send_empty=False,
        )
        for i in range(args.subscribers)
    ]
    t0 = time.perf_counter()
    source = HFDailyPapers(feed_url=str(FEED), client=None)
    fetched = pipeline.fetch_and_store(
        engine,
        source=source,
        feed_url=str(FEED),
        today=date(2026, 3, 6),
        lookback=4,
        clock=lambda: now,
    )
    t1 = time.perf_counter()
    recipients = pipeline.sync_subscribers(engine, specs, now=now)
    t2 = time.perf_counter()
    plan = pipeline.plan_digests(
        engine,
        recipients,
        as_of=now,
        lookback=4,
        day=date(2026, 3, 6),
        from_addr="Bench <bench@example.org>",
        now=now,
    )
    t3 = time.perf_counter()
    backend = CountingBackend()
    mail = MailContext(
        renderer=Renderer(),
        from_addr="Bench <bench@example.org>",
        envelope_from="bench@example.org",
        list_name="Bench",
        list_id="<bench.example.org>",
        unsubscribe_email="bench@example.org",
    )
    report = pipeline.deliver_due(
        engine, backend=backend, mail=mail, policy=RetryPolicy(), clock=lambda: now
    )
    t4 = time.perf_counter()
    print(f"fetch+store: {fetched.fetched} papers in {t1 - t0:.2f} s")
    print(f"sync subscribers: {len(recipients)} in {t2 - t1:.2f} s")
    print(f"plan: {plan.planned} planned, {plan.skipped} skipped in {t3 - t2:.2f} s")
    print(f"deliver: {len(report.sent)} messages, {backend.bytes / 1e6:.1f} MB in {t4 - t3:.2f} s")
    rate = len(report.sent) / (t4 - t3) if t4 > t3 else 0.0
    print(
        f"send: {args.subscribers} subscribers: plan {t3 - t2:.2f} s, deliver {t4 - t3:.2f} s "
        f"({rate:.0f} msgs/s), peak RSS {rss_mb():.0f} MB"
    )
    engine.dispose()


if __name__ == "__main__":
    main()
