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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from digestbot import tokens
from digestbot.errors import ConfigError, PermanentDeliveryError
from digestbot.mail.message import build_message, dkim_sign
from digestbot.matching import Match, evidence
from digestbot.models import DigestItem, Paper
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


def digest_view(
    *,
    mail: MailContext,
    email: str,
    name: str | None,
    period: str,
    items: Sequence[DigestItem | Match],
    papers: Mapping[str, Paper],
    more_count: int,
    trending: Sequence[DigestItem | Match] = (),
    frequency: str = "daily",
    window: tuple[datetime, datetime] | None = None,
) -> DigestView:
    """What one digest shows; `items` (matched) and `trending` in digest order (stored items or
    a plan's matches). `window` is the [start, end) the digest covers; its UTC days are shown
    as the period's dates."""
    mailto, url = mail.unsubscribe_for(email)
    first = last = None
    if window is not None:
        first = window[0].astimezone(UTC).date()
        last = (window[1] - timedelta(microseconds=1)).astimezone(UTC).date()
    return DigestView(
        subscriber_email=email,
        subscriber_name=name,
        digest_date=date.fromisoformat(period),
        papers=tuple(paper_view(papers[it.arxiv_id], it) for it in items),
        more_count=more_count,
        list_name=mail.list_name,
        unsubscribe_mailto=mailto,
        unsubscribe_url=url,
        trending=tuple(paper_view(papers[it.arxiv_id], it) for it in trending),
        frequency=frequency,
        first_day=first,
        last_day=last,
    )


def paper_view(paper: Paper, item: DigestItem | Match) -> PaperView:
    """One paper as shown, with why it matched: the queries and title/abstract spans were fixed
    when the digest was planned; the named authors and matching feed keywords are found again
    here from those queries (matching.evidence)."""
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
