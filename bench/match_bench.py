"""Benchmark of bulk filter matching: N synthetic subscribers against P synthetic papers.

Papers are recombined from the real fixture papers (titles spliced from two real titles, abstracts
from one sentence of each of 5-8 real abstracts, real author names, feed keywords and arXiv categories).
Subscribers have 3-5 queries drawn from that vocabulary: words, phrases, AND/OR/NOT, -word,
fields, prefixes; some also have authors, an exclude query and a minimum of upvotes.

Queries are shared the way interests are: by default each is drawn from a pool of N/5 distinct
queries with Zipf popularity; --distinct-queries 0 draws every query fresh (the worst case).
Subscribers are generated, compiled and matched in batches, so memory stays flat at 1M; matching
runs inside bulk_matching() (the cyclic GC paused), as the pipeline does.
The timed part is: building the index + compile_filter + PaperIndex.match for every subscriber.
A straightforward evaluation (explain() for each subscriber and paper) is timed on a sample and
scaled up for comparison.

    python bench/match_bench.py --subscribers 100000 --papers 500
"""

from __future__ import annotations

import argparse
import bisect
import gc
import json
import random
import re
import resource
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import itertools

from digestbot.matching import PaperIndex, bulk_matching, compile_filter, explain
from digestbot.matching.text import tokenize

_STOP = frozenset(
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
        "which",
        "these",
        "those",
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
    ]
)
FEATURED = datetime(2026, 3, 6, 12, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class BenchPaper:
    """A paper as matching sees a stored row (matching.PaperDoc)."""

    arxiv_id: str
    title: str
    summary: str
    authors: tuple[str, ...]
    ai_keywords: tuple[str, ...]
    categories: tuple[str, ...]
    upvotes: int
    featured_at: datetime = FEATURED
    sources: tuple[str, ...] = ("hf",)
    has_upvotes: bool = True


CATEGORIES = ["cs.CL", "cs.LG", "cs.AI", "cs.CV", "stat.ML", "cs.IR", "cs.DS", "math.OC", "cs.SD"]


def fixture_dir() -> Path:
    local = ROOT / "tests" / "fixtures" / "hf_daily_papers"
    return (
        local
        if local.is_dir() and any(local.glob("2026-*.json"))
        else ROOT.parent / "shared" / "fixtures" / "hf_daily_papers"
    )


def load_real() -> list[dict]:
    seen: dict[str, dict] = {}
    for f in sorted(fixture_dir().glob("*.json")):
        for item in json.loads(f.read_text()):
            seen[item["paper"]["id"]] = item["paper"]
    return list(seen.values())


def title_bigrams(real: list[dict]) -> list[str]:
    titles = [p["title"].split() for p in real]
    return [" ".join(t[i : i + 2]) for t in titles for i in range(len(t) - 1)]


def make_papers(real: list[dict], n: int, rng: random.Random) -> list[BenchPaper]:
    """Recombine the real papers into n realistic ones (same vocabulary and word statistics)."""
    sentences = [re.split(r"(?<=[.!?])\s+", p["summary"]) for p in real]
    names = sorted({a["name"] for p in real for a in p["authors"]})
    kw_pool = sorted({k for p in real for k in p.get("ai_keywords", ())})
    titles = [p["title"].split() for p in real]
    tbg = title_bigrams(real)
    out = []
    for i in range(n):
        a, b = rng.sample(titles, 2)
        cut_a, cut_b = rng.randint(1, max(1, len(a) - 1)), rng.randint(0, len(b) - 1)
        title = " ".join(a[:cut_a] + b[cut_b:])
        # one sentence from each of 5-8 real abstracts: 500 papers made from 76 repeat every
        # sentence (and its topical words) a few times, as little as the fixtures allow
        summary = " ".join(rng.choice(src) for src in rng.sample(sentences, rng.randint(5, 8)))
        kws: tuple[str, ...] = ()
        if rng.random() < 0.35:
            kws = tuple(rng.sample(kw_pool, min(1, len(kw_pool)))) + tuple(
                bg.strip(":,.") for bg in rng.sample(tbg, 3)
            )
        out.append(
            BenchPaper(
                arxiv_id=f"2603.{i:05d}",
                title=title,
                summary=summary,
                authors=tuple(rng.sample(names, rng.randint(1, 8))),
                ai_keywords=kws,
                categories=tuple(rng.sample(CATEGORIES, rng.randint(1, 2))),
                upvotes=int(rng.paretovariate(1.2)) - 1,
            )
        )
    return out


class QueryMaker:
    """Draws realistic subscriber queries from the fixture vocabulary."""

    def __init__(self, real: list[dict], rng: random.Random) -> None:
        # Subscribers follow topics, not glue words: draw words and phrases that occur in at most
        # two of the real papers (as "speculative decoding", "Halpern iteration" or "NeRF" do),
        # and AND-ed words from the same paper, as a person would combine them.
        self.rng = rng
        word_re = re.compile(r"[A-Za-z][A-Za-z0-9\-]+")
        per_paper = [word_re.findall(p["title"] + ". " + p["summary"]) for p in real]
        df: dict[str, int] = {}  # document frequency of stems, as matching sees words
        bdf: dict[str, int] = {}
        for p in real:
            stems = [t.stem for t in tokenize(p["title"] + ". " + p["summary"])]
            for w in set(stems):
                df[w] = df.get(w, 0) + 1
            for bg in set(itertools.pairwise(stems)):
                bdf[" ".join(bg)] = bdf.get(" ".join(bg), 0) + 1

        def key(text: str) -> str:
            return " ".join(t.stem for t in tokenize(text))

        def topical(w: str) -> bool:
            return w.lower() not in _STOP and len(w) > 3 and df.get(key(w), 99) <= 2

        self.paper_words = [sorted({t for t in toks if topical(t)}) for toks in per_paper]
        self.paper_words = [ws for ws in self.paper_words if len(ws) >= 2]
        self.words = sorted({w for ws in self.paper_words for w in ws})
        self.bigrams = sorted(
            {
                f"{x} {y}"
                for toks in per_paper
                for x, y in itertools.pairwise(toks)
                if x.lower() not in _STOP
                and y.lower() not in _STOP
                and len(x) > 2
                and len(y) > 2
                and bdf.get(key(f"{x} {y}"), 99) <= 2
                and (topical(x) or topical(y))
            }
        )
        self.authors = sorted({a["name"] for p in real for a in p["authors"]})
        self.keywords = sorted({k for p in real for k in p.get("ai_keywords", ())}) + [
            bg.strip(":,.") for bg in title_bigrams(real)
        ]

    def pair(self) -> str:
        a, b = self.rng.sample(self.rng.choice(self.paper_words), 2)
        return f"{a} {b}"

    def word(self) -> str:
        r = self.rng
        w = r.choice(self.words)
        return w.lower() if r.random() < 0.5 else w

    def phrase(self) -> str:
        return f'"{self.rng.choice(self.bigrams)}"'

    def query(self) -> str:
        r = self.rng
        k = r.random()
        if k < 0.25:
            return self.word()
        if k < 0.45:
            return self.phrase()
        if k < 0.57:
            return self.pair()
        if k < 0.65:
            return f"{self.phrase()} -{self.word()}"
        if k < 0.71:
            return f"{self.word()} NOT {self.phrase()}"
        if k < 0.79:
            return f"title:{self.word()}" if r.random() < 0.6 else f"abstract:{self.phrase()}"
        if k < 0.85:
            return f"({self.word()} OR {self.phrase()}) {self.pair()}"
        if k < 0.91:
            w = self.word()
            return f"{w[: max(5, len(w) - 2)]}*"
        if k < 0.95:
            return f'keyword:"{r.choice(self.keywords)}"' if self.keywords else self.phrase()
        return f"category:{r.choice(CATEGORIES)} {self.word()}"

    def use_pool(self, size: int) -> None:
        """Draw queries from `size` distinct ones with Zipf popularity (s = 1), as interests are:
        many subscribers follow "diffusion" or "speculative decoding", few follow a rare word."""
        self.pool = [self.query() for _ in range(size)]
        self.cum = list(itertools.accumulate(1.0 / (i + 1) for i in range(size)))

    def pooled(self) -> str:
        if not getattr(self, "pool", None):
            return self.query()
        return self.pool[bisect.bisect(self.cum, self.rng.random() * self.cum[-1])]

    def subscriber(self) -> dict:
        r = self.rng
        spec: dict = {"keywords": [self.pooled() for _ in range(r.randint(3, 5))]}
        if r.random() < 0.2:
            name = r.choice(self.authors)
            spec["authors"] = [name if r.random() < 0.6 else name.split()[-1]]
        if r.random() < 0.2:
            spec["exclude"] = [self.word()]
        if r.random() < 0.2:
            spec["min_upvotes"] = r.choice([2, 5, 10])
        return spec


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subscribers", type=int, default=100_000)
    ap.add_argument("--papers", type=int, default=500)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--batch", type=int, default=20_000)
    ap.add_argument(
        "--gc",
        choices=("default", "freeze"),
        default="default",
        help="freeze: gc.freeze() after each batch, so the cyclic GC skips the index's long-lived caches",
    )
    ap.add_argument(
        "--distinct-queries",
        type=int,
        default=None,
        help="size of the pool of distinct queries subscribers share, drawn with Zipf popularity "
        "(default: subscribers / 5); 0 draws every query fresh (the worst case: ~1 distinct query per query)",
    )
    ap.add_argument(
        "--sample", type=int, default=100, help="subscribers for the straightforward baseline"
    )
    args = ap.parse_args(argv)
    n, p = args.subscribers, args.papers

    rng = random.Random(args.seed)
    real = load_real()
    papers = make_papers(real, p, rng)
    qm = QueryMaker(real, rng)
    pool = n // 5 if args.distinct_queries is None else args.distinct_queries
    if pool:
        qm.use_pool(pool)
    gc.freeze()  # the fixtures and papers live for the whole run; keep the collector off them

    t0 = time.perf_counter()
    index = PaperIndex.build(papers)
    t_build = time.perf_counter() - t0

    total = t_build
    t_compile = t_match = 0.0
    matched_subs = matches = 0
    done = 0
    while done < n:
        size = min(args.batch, n - done)
        specs = [qm.subscriber() for _ in range(size)]
        t0 = time.perf_counter()
        with bulk_matching():  # as pipeline.compute_plans does
            flts = [compile_filter(**s) for s in specs]
            t1 = time.perf_counter()
            for flt in flts:
                got = index.match(flt)
                if got:
                    matched_subs += 1
                    matches += len(got)
        t2 = time.perf_counter()
        t_compile += t1 - t0
        t_match += t2 - t1
        total += t2 - t0
        done += size
        del specs, flts
        if args.gc == "freeze":
            gc.freeze()  # what the index cached is kept for the whole run: stop rescanning it

    # straightforward baseline: explain() per subscriber per paper, on a sample, scaled up
    sample = [compile_filter(**qm.subscriber()) for _ in range(args.sample)]
    t0 = time.perf_counter()
    naive_hits = 0
    for flt in sample:
        for paper in papers:
            if explain(flt, paper) is not None:
                naive_hits += 1
    t_naive_sample = time.perf_counter() - t0
    bulk_hits = sum(len(index.match(flt)) for flt in sample)
    assert bulk_hits == naive_hits, (bulk_hits, naive_hits)
    naive_scaled = t_naive_sample * n / max(1, len(sample))

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"papers: {p} indexed in {t_build:.3f} s; queries drawn from "
        f"{f'{pool} distinct (Zipf popularity)' if pool else 'fresh for every subscriber'}"
    )
    print(f"compile: {t_compile:.3f} s; evaluate: {t_match:.3f} s")
    print(
        f"subscribers with >= 1 match: {matched_subs} ({100 * matched_subs / max(1, n):.1f}%); "
        f"matches: {matches} ({matches / max(1, n):.2f} per subscriber)"
    )
    print(
        f"straightforward explain(): {t_naive_sample:.3f} s for {len(sample)} x {p}, "
        f"scaled to {n}: {naive_scaled:.1f} s; bulk is {naive_scaled / total:.0f}x faster"
    )
    print(
        f"match: {n} subscribers x {p} papers in {total:.2f} s ({n / total:.0f} subscribers/s), "
        f"peak RSS {rss:.0f} MB"
    )


if __name__ == "__main__":
    main()
