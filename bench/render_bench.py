"""Benchmark of digest rendering alone: N digests of about 6 papers from the fixture feed.

Papers are the Hugging Face fixture days. Each subscriber has 1-4 queries (single words from a
topic list, words and two-word phrases from the day's titles, now and then an author: query), so
matched terms and highlights vary. Query sets are shared the way interests are: drawn from a pool
of N/5 distinct sets with Zipf popularity; --distinct-queries 0 gives every subscriber its own set.
A subscriber's views are built fresh (mail.context.digest_view, as a run does), outside the timer;
the timed part is Renderer.render for every digest, with one Renderer for the whole run. Both wall
time and this process's CPU time are shown: on a busy machine the CPU figure is the steadier one.
A digest gets at most --papers matched papers plus two trending ones.

    python bench/render_bench.py --digests 20000
"""

from __future__ import annotations

import argparse
import itertools
import random
import re
import resource
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from digestbot.mail.context import MailContext, digest_view
from digestbot.matching import PaperIndex, compile_filter
from digestbot.matching.model import Match
from digestbot.models import Paper
from digestbot.render import Renderer
from digestbot.sources.hf_daily import parse_daily_papers

FEED = ROOT / "tests" / "fixtures" / "hf_daily_papers"
TOPICS = [
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
_STOP = {"a", "an", "the", "of", "for", "and", "or", "not", "in", "on", "to", "with", "by", "via"}


def load_papers() -> list[Paper]:
    """Every fixture paper as the database holds it."""
    out: dict[str, Paper] = {}
    now = datetime(2026, 3, 6, 23, 0, tzinfo=UTC)
    for path in sorted(FEED.glob("2026-*.json")):
        for f in parse_daily_papers(path.read_bytes(), url=str(path)):
            out[f.arxiv_id] = Paper(
                arxiv_id=f.arxiv_id,
                title=f.title,
                summary=f.summary,
                authors=list(f.authors),
                published_at=f.published_at,
                featured_at=f.featured_at,
                upvotes=f.upvotes or 0,
                github_repo=f.github_repo,
                github_stars=f.github_stars,
                project_page=f.project_page,
                ai_summary=f.ai_summary,
                ai_keywords=list(f.ai_keywords),
                first_seen_at=now,
                updated_at=now,
            )
    return list(out.values())


def vocabulary(papers: list[Paper]) -> list[str]:
    """Queries a reader might write after looking at the day's titles."""
    vocab = list(TOPICS)
    for p in papers:
        words = [w for w in re.findall(r"[A-Za-z][A-Za-z-]{3,}", p.title) if w.lower() not in _STOP]
        vocab += words[:3]
        vocab += [f'"{a} {b}"' for a, b in itertools.pairwise(words)][:1]
        if p.authors:
            vocab.append(f"author:{p.authors[0].split()[-1]}")
    return sorted(set(vocab))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--digests", type=int, default=20_000)
    ap.add_argument("--papers", type=int, default=6, help="matched papers per digest at most")
    ap.add_argument(
        "--distinct-queries", type=int, default=None, help="pool of query sets (0: all fresh)"
    )
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    papers = load_papers()
    by_id = {p.arxiv_id: p for p in papers}
    index = PaperIndex.build(papers)
    vocab = vocabulary(papers)
    trending_pool = sorted(papers, key=lambda p: -p.upvotes)[:10]
    pool_size = args.digests // 5 if args.distinct_queries is None else args.distinct_queries
    weights = [1 / (k + 1) for k in range(pool_size)] if pool_size else []

    def fresh_set() -> tuple[str, ...]:
        return tuple(rng.sample(vocab, rng.randint(1, 4)))

    pool = [fresh_set() for _ in range(pool_size)]
    matches_of: dict[tuple[str, ...], list] = {}

    def matches(queries: tuple[str, ...]) -> list:
        got = matches_of.get(queries)
        if got is None:
            got = index.match(compile_filter(keywords=queries))
            if pool_size:
                matches_of[queries] = got
        return got

    mail = MailContext(
        renderer=Renderer(),
        from_addr="Bench <bench@example.org>",
        envelope_from="bench@example.org",
        list_name="Bench",
        list_id="<bench.example.org>",
        unsubscribe_email="bench@example.org",
        unsubscribe_url="https://bench.example.org/u?token={token}",
        unsubscribe_secret="bench-secret",
    )
    renderer = mail.renderer
    rendered = chars = papers_shown = 0
    elapsed = cpu = 0.0
    t_all = time.perf_counter()
    for i in range(args.digests):
        queries = rng.choices(pool, weights)[0] if pool_size else fresh_set()
        found = matches(queries)
        shown = found[: args.papers]
        ids = {m.arxiv_id for m in shown}
        hot = [p for p in trending_pool if p.arxiv_id not in ids][:2]
        trending = [Match(p.arxiv_id, 0.0, p.upvotes, (), (), ()) for p in hot]
        view = digest_view(
            mail=mail,
            email=f"user{i}@example.org",
            name=f"User {i}",
            period="2026-03-06",
            items=shown,
            papers=by_id,
            more_count=max(0, len(found) - len(shown)),
            trending=trending,
        )
        t0, c0 = time.perf_counter(), time.process_time()
        out = renderer.render(view)
        elapsed += time.perf_counter() - t0
        cpu += time.process_time() - c0
        rendered += 1
        chars += len(out.text) + len(out.html)
        papers_shown += len(view.papers) + len(view.trending)
    total = time.perf_counter() - t_all
    stats = getattr(renderer, "stats", None)
    print(f"papers: {len(papers)}, vocabulary: {len(vocab)} queries, query-set pool: {pool_size}")
    print(
        f"built views and rendered in {total:.1f} s; "
        f"{papers_shown / max(rendered, 1):.1f} papers and {chars / max(rendered, 1) / 1000:.0f} KB "
        "(text + HTML) per digest"
    )
    if stats is not None:
        print(f"renderer stats: {stats()}")
    else:
        print(f"renderer cache: {renderer.cache_info()}")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"render: {rendered} digests in {elapsed:.2f} s ({rendered / elapsed:.0f} digests/s), "
        f"CPU {cpu:.2f} s ({rendered / cpu:.0f} digests/s of CPU), peak RSS {rss:.0f} MB"
    )


if __name__ == "__main__":
    main()
