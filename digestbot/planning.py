"""Planning rules: which papers each subscriber's digest holds for its period.

Pure decisions over what the store returns: papers new to the subscriber (schedule.Windows),
matched by their filter (matching), never held in an earlier digest (outbox), ranked and capped,
plus the Trending section. Nothing here writes; `pipeline.plan_digests` stores what this decides.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime

from sqlmodel import Session

from digestbot import outbox, schedule, store
from digestbot.addresses import address_key
from digestbot.mail.message import make_message_id
from digestbot.matching import Match, PaperIndex, bulk_matching, compile_filter
from digestbot.models import Paper
from digestbot.subscribers import SubscriberSpec

PLAN_BATCH = 1000  # subscribers matched, and plans stored, per batch
MEMO_LIMIT = 1000  # distinct (window, previous digest, sources) whose is-new verdicts are kept


@dataclass(frozen=True, slots=True)
class Recipient:
    """A validated subscriber spec with its database id (negative: never synced, dry runs only)."""

    spec: SubscriberSpec
    id: int


TRENDING_SLACK = 100  # trending candidates read per subscriber beyond N (some may be held)


def compute_plans(
    session: Session,
    recipients: Sequence[Recipient],
    *,
    as_of: datetime,
    lookback: int,
    day: date | None,
    from_addr: str,
    skip_existing: bool = True,
) -> Iterator[outbox.DigestPlan]:
    """Decide each recipient's digest for its period, without writing anything.

    A digest holds the papers that match the subscriber's filter, were never put in one of their
    digests before, and are new to them (schedule.Windows says which) from one of their sources
    (`sources`; none named: every source), ranked over the period
    and capped by max_papers; papers beyond it are counted and not carried over. With
    `trending = N` it also holds, in a "Trending" section, those of the N most upvoted such
    papers (upvotes > 0, past exclude and min_upvotes) that the matched section does not list.
    The period is the one holding `day` when given, else the one holding the subscriber's local
    date at `as_of` (a day, or a week for weekly). Subscribers with frequency "off" get nothing;
    one back from "off" gets the normal window, not the backlog. Recipients that already have a
    digest for the period are left out unless `skip_existing` is false (previews). Addresses on
    the suppression list (they unsubscribed) get nothing, even while in the subscribers file.
    """
    todo, freq, windows, prev = to_plan(
        session, recipients, as_of=as_of, lookback=lookback, day=day, skip_existing=skip_existing
    )
    if not todo:
        return
    start = min(
        w.fetch_start([prev[sid][0] for sid in prev if freq[sid] == f]) for f, w in windows.items()
    )
    papers = store.papers_featured_between(session, start=start, end=as_of)
    by_id = {p.arxiv_id: p for p in papers}
    seen = store.sightings(session, by_id)
    by_upvotes = sorted(
        (p for p in papers if p.upvotes > 0), key=lambda p: (-p.upvotes, p.arxiv_id)
    )
    index = PaperIndex.build(papers)
    database_id = store.database_id(session)

    # Whether a paper is new to a subscriber depends only on their window, previous digest and
    # sources, which most subscribers share: decided once per such combination and paper.
    verdicts: dict[tuple[object, ...], Callable[[Paper], bool]] = {}
    for offset in range(0, len(todo), PLAN_BATCH):
        batch = todo[offset : offset + PLAN_BATCH]
        found: dict[int, list[Match]] = {}
        hot: dict[int, list[Paper]] = {}
        with bulk_matching():
            for r, _ in batch:
                sp = r.spec
                key = (freq[r.id], prev.get(r.id), frozenset(sp.sources))
                is_new = verdicts.get(key)
                if is_new is None:
                    is_new = functools.partial(_is_new, windows[key[0]], key[1], seen, key[2])
                    if len(verdicts) < MEMO_LIMIT:  # past it, each their own (bounded memory)
                        is_new = verdicts[key] = _memo(is_new)
                found[r.id] = []
                if sp.keywords or sp.authors:
                    flt = compile_filter(
                        keywords=sp.keywords,
                        exclude=sp.exclude,
                        authors=sp.authors,
                        min_upvotes=sp.min_upvotes,
                    )
                    found[r.id] = [m for m in index.match(flt) if is_new(by_id[m.arxiv_id])]
                if sp.trending:
                    hot[r.id] = _trending_candidates(
                        index, by_upvotes, sp, is_new, limit=sp.trending + TRENDING_SLACK
                    )
        people = [sid for sid in found if found[sid] or hot.get(sid)]
        held = outbox.already_held(
            session,
            people,
            sorted(
                {m.arxiv_id for sid in people for m in found[sid]}
                | {p.arxiv_id for sid in people for p in hot.get(sid, ())}
            ),
        )
        for r, p in batch:
            fresh = [m for m in found[r.id] if (r.id, m.arxiv_id) not in held]
            top = fresh[: r.spec.max_papers]
            listed = {m.arxiv_id for m in top}
            matched = {m.arxiv_id: m for m in fresh}
            most = [pp for pp in hot.get(r.id, ()) if (r.id, pp.arxiv_id) not in held]
            trending = tuple(
                matched.get(pp.arxiv_id) or _trending_match(pp)
                for pp in most[: r.spec.trending]
                if pp.arxiv_id not in listed
            )
            overflow_shown = sum(1 for m in trending if m.arxiv_id in matched)
            window = windows[freq[r.id]]
            yield outbox.DigestPlan(
                subscriber_id=r.id,
                email=r.spec.email,
                period=p,
                window_start=window.start_of(prev.get(r.id)),
                window_end=as_of,
                items=tuple(top),
                more_count=len(fresh) - len(top) - overflow_shown,
                send_empty=r.spec.send_empty,
                message_id=make_message_id(
                    digest_key=f"{address_key(r.spec.email)}/{p}/{r.id}",
                    from_addr=from_addr,
                    database_id=database_id,
                ),
                trending=trending,
                frequency=r.spec.frequency,
            )


_Freq = tuple[str, str]  # frequency, and the period for weekly (a first weekly window needs it)


def to_plan(
    session: Session,
    recipients: Sequence[Recipient],
    *,
    as_of: datetime,
    lookback: int,
    day: date | None,
    skip_existing: bool,
) -> tuple[
    list[tuple[Recipient, str]],
    dict[int, _Freq],
    dict[_Freq, schedule.Windows],
    dict[int, tuple[datetime, datetime]],
]:
    """Who gets a digest planned (recipient, period), and the windows it covers (see compute_plans)."""
    active = [r for r in recipients if r.spec.frequency != schedule.OFF]
    blocked = store.suppressed_keys(session, [r.spec.email for r in active])
    active = [r for r in active if address_key(r.spec.email) not in blocked]
    pairs = [(r.id, schedule.period(r.spec, day=day, at=as_of)) for r in active]
    have = outbox.existing_periods(session, pairs) if skip_existing else set()
    todo = [(r, p) for r, (_, p) in zip(active, pairs, strict=True) if (r.id, p) not in have]
    if not todo:
        return [], {}, {}, {}
    # A first weekly window depends on the week (the period), a daily one only on the run.
    freq = {
        r.id: (r.spec.frequency, p if r.spec.frequency == schedule.WEEKLY else "") for r, p in todo
    }
    windows = {
        (f, p): schedule.Windows.as_of(as_of, lookback=lookback, frequency=f, period=p or None)
        for f, p in sorted(set(freq.values()))
    }
    ids = [r.id for r, _ in todo]
    resumed = outbox.paused(session, ids)
    prev = {
        sid: (windows[freq[sid]].since(end), planned_at)
        for sid, (end, planned_at) in outbox.last_windows(session, ids).items()
        if sid not in resumed
    }
    return todo, freq, windows, prev


def _memo(is_new: Callable[[Paper], bool]) -> Callable[[Paper], bool]:
    """`is_new` remembered per paper (by arXiv id) for the rest of the run."""
    known: dict[str, bool] = {}

    def cached(paper: Paper) -> bool:
        verdict = known.get(paper.arxiv_id)
        if verdict is None:
            verdict = known[paper.arxiv_id] = is_new(paper)
        return verdict

    return cached


def _is_new(
    window: schedule.Windows,
    previous: tuple[datetime, datetime] | None,
    seen: Mapping[str, Sequence[store.Sighting]],
    sources: frozenset[str],
    paper: Paper,
) -> bool:
    """Whether one of the subscriber's sources (`sources`; empty: any) featured the paper inside
    their window. A paper two sources bring on different days is thus new to a subscriber of the
    later one; one already in a digest of theirs is left out later (outbox.already_held)."""
    return any(
        window.is_new(featured_at=s.featured_at, first_seen_at=s.first_seen_at, previous=previous)
        for s in seen.get(paper.arxiv_id, ())
        if not sources or s.source in sources
    )


def _trending_candidates(
    index: PaperIndex,
    by_upvotes: Sequence[Paper],
    spec: SubscriberSpec,
    is_new: Callable[[Paper], bool],
    *,
    limit: int,
) -> list[Paper]:
    """The subscriber's most upvoted new papers (upvotes > 0, at least min_upvotes, none that an
    exclude query matches), most upvoted first, at most `limit` of them."""
    excluded = (
        {m.arxiv_id for m in index.match(compile_filter(keywords=spec.exclude))}
        if spec.exclude
        else set()
    )
    floor = max(1, spec.min_upvotes)
    out: list[Paper] = []
    for paper in by_upvotes:
        if paper.upvotes < floor:
            break
        if paper.arxiv_id not in excluded and is_new(paper):
            out.append(paper)
            if len(out) >= limit:
                break
    return out


def _trending_match(paper: Paper) -> Match:
    """A trending paper that no query matched: no score, nothing to highlight."""
    return Match(
        arxiv_id=paper.arxiv_id,
        score=0.0,
        upvotes=paper.upvotes,
        matched=(),
        title_spans=(),
        summary_spans=(),
    )
