"""What every message of a run shares, and how one digest becomes one message.

`MailContext` holds the renderer, sender, list headers and signing key of a run. `digest_view`
turns stored or planned digest items into what the templates show, and `compose` renders,
builds and signs one message. Errors are sorted by reach: a problem of this one message (an
address the mail library refuses, a line too long) is a PermanentDeliveryError that fails only
this digest; a problem that would hit every message (a template that does not render, DKIM
signing) is a ConfigError that stops the run.
"""

from __future__ import annotations

import urllib.parse
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Protocol

from digestbot import tokens
from digestbot.errors import ConfigError, PermanentDeliveryError
from digestbot.mail.message import build_message, dkim_sign
from digestbot.matching import Evidence, evidence, merge_evidence, query_evidence
from digestbot.models import Paper
from digestbot.render import DigestView, PaperView, RenderedDigest, Renderer


@dataclass(frozen=True, slots=True)
class MailContext:
    """What every message of a run shares: renderer, sender, list headers, signing."""

    renderer: Renderer
    from_addr: str
    envelope_from: str
    list_name: str
    list_id: str
    unsubscribe_email: str
    unsubscribe_url: str | None = None  # template with {token} and/or {email}
    unsubscribe_secret: str | None = field(default=None, repr=False)
    dkim_selector: str | None = None
    dkim_domain: str | None = None
    dkim_key: bytes | None = field(default=None, repr=False)

    def unsubscribe_for(self, email: str) -> tuple[str, str | None]:
        """The subscriber's unsubscribe mailto: URI and, when configured, their one-click URL."""
        mailto = f"mailto:{self.unsubscribe_email}?subject=unsubscribe"
        if not self.unsubscribe_url:
            return mailto, None
        token = tokens.issue(
            secret=self.unsubscribe_secret or "", list_id=self.list_id, address=email
        )
        url = self.unsubscribe_url.replace("{token}", token).replace(
            "{email}", urllib.parse.quote(email, safe="")
        )
        return mailto, url

    def render(self, view: DigestView) -> RenderedDigest:
        """Subject, text and HTML of one digest; a template that does not render is a TemplateError
        (a ConfigError naming the template and line), which stops the run."""
        return self.renderer.render(view)


VIEW_CACHE_SIZE = 4096
"""Paper views (and query evidence) a delivery run keeps (PaperViews), as many as the paper
blocks the renderer keeps (render.BLOCK_CACHE_SIZE): a view is looked up to find its block."""


class ShownItem(Protocol):
    """What a digest shows of one of its papers, fixed at planning: a stored item (DigestItem,
    outbox.StoredItem) or a plan's Match."""

    @property
    def arxiv_id(self) -> str: ...
    @property
    def upvotes(self) -> int: ...
    @property
    def matched(self) -> Sequence[str]: ...
    @property
    def title_spans(self) -> Sequence[Sequence[int]]: ...
    @property
    def summary_spans(self) -> Sequence[Sequence[int]]: ...


class PaperViews:
    """A delivery run's memo of paper views: what a paper shows for one set of matched queries is
    the same for every subscriber with that set, and finding its evidence (author and keyword
    hits) costs more than rendering it. Keyed by the paper's id and last update, so a paper
    changed mid-run is looked at again; bounded (least recently used goes first)."""

    def __init__(self, size: int = VIEW_CACHE_SIZE) -> None:
        self.size = size
        self._views: OrderedDict[tuple[object, ...], PaperView] = OrderedDict()
        self._evidence: OrderedDict[tuple[object, ...], Evidence] = OrderedDict()

    def view(self, paper: Paper, item: ShownItem) -> PaperView:
        """The paper as shown with this item's queries, spans and upvotes (paper_view, memoised)."""
        head = (paper.arxiv_id, getattr(paper, "updated_at", None))
        key = (*head, item.matched, item.title_spans, item.summary_spans, item.upvotes)
        try:  # a stored item's or a plan's fields are tuples already: the key as they are
            found = self._views.get(key)
        except TypeError:  # lists (a DigestItem's JSON columns): the same key, as tuples
            key = (
                *head,
                tuple(item.matched),
                tuple(tuple(s) for s in item.title_spans),
                tuple(tuple(s) for s in item.summary_spans),
                item.upvotes,
            )
            found = self._views.get(key)
        if found is None:
            found = paper_view(paper, item, found=self._find(paper, tuple(item.matched)))
            self._views[key] = found
            if len(self._views) > self.size:
                self._views.popitem(last=False)
        else:
            self._views.move_to_end(key)
        return found

    def _find(self, paper: Paper, matched: tuple[str, ...]) -> Evidence:
        """The evidence of `matched` on `paper`: each query's looked up once per paper and run
        (subscribers share single queries far more often than whole sets), then merged."""
        version = getattr(paper, "updated_at", None)
        parts = []
        for text in matched:
            key = (paper.arxiv_id, version, text)
            found = self._evidence.get(key)
            if found is None:
                found = query_evidence(text, paper)
                self._evidence[key] = found
                if len(self._evidence) > self.size:
                    self._evidence.popitem(last=False)
            else:
                self._evidence.move_to_end(key)
            parts.append(found)
        return merge_evidence(parts)


def digest_view(
    *,
    mail: MailContext,
    email: str,
    name: str | None,
    period: str,
    items: Sequence[ShownItem],
    papers: Mapping[str, Paper],
    more_count: int,
    trending: Sequence[ShownItem] = (),
    frequency: str = "daily",
    window: tuple[datetime, datetime] | None = None,
    views: PaperViews | None = None,
) -> DigestView:
    """What one digest shows; `items` (matched) and `trending` in digest order (stored items or
    a plan's matches). `window` is the [start, end) the digest covers; its UTC days are shown
    as the period's dates. `views` (a delivery run's) reuses paper views across digests."""
    show = views.view if views is not None else paper_view
    mailto, url = mail.unsubscribe_for(email)
    first = last = None
    if window is not None:
        first = window[0].astimezone(UTC).date()
        last = (window[1] - timedelta(microseconds=1)).astimezone(UTC).date()
    return DigestView(
        subscriber_email=email,
        subscriber_name=name,
        digest_date=date.fromisoformat(period),
        papers=tuple(show(papers[it.arxiv_id], it) for it in items),
        more_count=more_count,
        list_name=mail.list_name,
        unsubscribe_mailto=mailto,
        unsubscribe_url=url,
        trending=tuple(show(papers[it.arxiv_id], it) for it in trending),
        frequency=frequency,
        first_day=first,
        last_day=last,
    )


def paper_view(paper: Paper, item: ShownItem, *, found: Evidence | None = None) -> PaperView:
    """One paper as shown, with why it matched: the queries and title/abstract spans were fixed
    when the digest was planned; the named authors and matching feed keywords are found again
    here from those queries (matching.evidence), unless `found` already holds them."""
    if found is None:
        found = evidence(tuple(item.matched), paper)
    keywords = tuple(paper.ai_keywords or ())
    return PaperView(
        arxiv_id=paper.arxiv_id,
        title=paper.title,
        summary=paper.summary,
        authors=tuple(paper.authors),
        upvotes=item.upvotes,
        github_repo=paper.github_repo,
        github_stars=paper.github_stars,
        project_page=paper.project_page,
        matched=tuple(item.matched),
        title_spans=tuple((int(a), int(b)) for a, b in item.title_spans),
        summary_spans=tuple((int(a), int(b)) for a, b in item.summary_spans),
        tldr=paper.ai_summary,
        author_hits=found.authors,
        keywords=tuple((keywords[i], spans) for i, spans in found.keywords),
        # The sources that brought the paper and a non-arXiv paper's page (Paper.sources and
        # Paper.link, from the several-sources change; read this way until both branches meet).
        sources=tuple(paper.sources),
        link=paper.link,
        on_hf=paper.has_upvotes,
    )


def compose(*, mail: MailContext, view: DigestView, message_id: str, date_: datetime) -> bytes:
    """Render, build and serialise one digest; DKIM-signed when configured.

    Raises PermanentDeliveryError for a problem of this message only, ConfigError for one that
    would hit every message of the run.
    """
    rendered = mail.render(view)
    try:
        raw = build_message(
            rendered=rendered,
            from_addr=mail.from_addr,
            to_addr=view.subscriber_email,
            to_name=view.subscriber_name,
            message_id=message_id,
            date=date_,
            list_id=mail.list_id,
            unsubscribe_mailto=view.unsubscribe_mailto,
            unsubscribe_url=view.unsubscribe_url,
        )
    except (ValueError, ConfigError) as exc:
        raise PermanentDeliveryError(f"could not build the message: {exc}") from exc
    if mail.dkim_key and mail.dkim_selector and mail.dkim_domain:
        raw = dkim_sign(  # a ConfigError here (bad key, selector, domain) hits every message
            raw, selector=mail.dkim_selector, domain=mail.dkim_domain, private_key=mail.dkim_key
        )
    return raw
