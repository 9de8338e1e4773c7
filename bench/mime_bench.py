"""Benchmark building and serialising digest messages: the stdlib ``email`` path vs the hand-built one.

Renders one realistic digest (6 matched and 6 trending papers of the fixture feed, ~47 KB, non-ASCII subscriber name, both
unsubscribe URIs), then times N builds of it each way. "old" is the previous build_message
(EmailMessage with a private header registry, set_content/add_alternative, as_bytes), kept
here as the reference; "new" is digestbot.mail.build_message. Rendering is not timed.

    python bench/mime_bench.py --count 10000
"""

from __future__ import annotations

import argparse
import email.policy
import json
import sys
import time
from datetime import UTC, date, datetime
from email.headerregistry import Address, BaseHeader, HeaderRegistry, UnstructuredHeader
from email.message import EmailMessage
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from digestbot.mail import build_message, make_message_id
from digestbot.mail.message import (
    _https_uri,
    _mailto_uri,
    clean_header_text,
    parse_address,
)
from digestbot.render import DigestView, PaperView, RenderedDigest, Renderer
from digestbot.text import clean_block

FEED = ROOT / "tests" / "fixtures" / "hf_daily_papers" / "2026-03-06.json"
FROM = "Paper Digest <digest@example.org>"
LIST_ID = "Paper Digest <paper-digest.example.org>"
MAILTO = "mailto:unsubscribe@example.org?subject=unsubscribe"


# -- the previous, stdlib-based builder (reference) -------------------------------------------


class _VerbatimHeader(UnstructuredHeader):
    name: str

    @classmethod
    def parse(cls, value: str, kwds: dict[str, object]) -> None:
        kwds["parse_tree"] = cls.value_parser(value)
        kwds["decoded"] = value

    def fold(self, *, policy: email.policy.Policy) -> str:
        head = f"{self.name}:"
        limit = policy.max_line_length or 78
        lines: list[str] = []
        line = head
        for token in filter(None, str(self).split(" ")):
            if line != head and len(line) + 1 + len(token) > limit:
                lines.append(line)
                line = ""
            line += " " + token
        lines.append(line)
        return policy.linesep.join(lines) + policy.linesep


def _old_policy() -> email.policy.EmailPolicy[EmailMessage]:
    registry = HeaderRegistry()
    verbatim = cast("type[BaseHeader]", _VerbatimHeader)
    registry.map_to_type("list-unsubscribe", verbatim)
    registry.map_to_type("list-id", verbatim)
    return email.policy.EmailPolicy(linesep="\r\n", header_factory=registry)


_POLICY = _old_policy()


def old_build(*, rendered: RenderedDigest, to_addr: str, to_name: str, message_id: str,
              date_: datetime, unsubscribe_url: str) -> bytes:  # fmt: skip
    sender = parse_address(FROM, what="From address", allow_display_name=True)
    recipient = parse_address(to_addr, what="recipient")
    recipient = Address(
        display_name=clean_header_text(to_name, limit=200),
        username=recipient.username,
        domain=recipient.domain,
    )
    msg = EmailMessage(policy=_POLICY)
    msg["From"] = sender
    msg["To"] = recipient
    msg["Subject"] = clean_header_text(rendered.subject, limit=400) or "Paper digest"
    msg["Date"] = date_
    msg["Message-ID"] = message_id
    msg["List-Id"] = '"Paper Digest" <paper-digest.example.org>'
    msg["List-Unsubscribe"] = f"<{_mailto_uri(MAILTO)}>, <{_https_uri(unsubscribe_url)}>"
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg["Auto-Submitted"] = "auto-generated"
    msg["Precedence"] = "bulk"
    msg.set_content(
        clean_block(rendered.text).decode("utf-8"),
        subtype="plain",
        charset="utf-8",
        cte="quoted-printable",
    )
    msg.add_alternative(
        clean_block(rendered.html).decode("utf-8"),
        subtype="html",
        charset="utf-8",
        cte="quoted-printable",
    )
    for part in msg.iter_parts():
        del part["MIME-Version"]
    raw = msg.as_bytes(policy=_POLICY)
    if max(len(line) for line in raw.split(b"\r\n")) > 998:
        raise ValueError("line too long")
    return raw


# -- the digest ---------------------------------------------------------------------------------


def _paper(item: dict[str, Any]) -> PaperView:
    paper = item["paper"]
    title, summary = paper["title"], paper["summary"]
    word = summary.split()[3]
    at = summary.find(word)
    return PaperView(
        arxiv_id=paper["id"],
        title=title,
        summary=summary,
        authors=tuple(a["name"] for a in paper["authors"]),
        upvotes=int(paper.get("upvotes") or 0),
        github_repo=paper.get("githubRepo"),
        github_stars=paper.get("githubStars"),
        project_page=paper.get("projectPage"),
        matched=(word,),
        title_spans=((0, min(8, len(title))),),
        summary_spans=((at, at + len(word)),),
        tldr=paper.get("ai_summary"),
    )


def digest() -> tuple[RenderedDigest, str]:
    items = sorted(json.loads(FEED.read_text()), key=lambda i: -len(i["paper"]["summary"]))
    url = "https://digest.example.org/unsubscribe?token=" + "t0k3n" * 8
    view = DigestView(
        subscriber_email="zoe@example.org",
        subscriber_name="Zoë Ørsted-Łukasiewicz",
        digest_date=date(2026, 3, 6),
        papers=tuple(_paper(i) for i in items[:6]),
        more_count=3,
        trending=tuple(_paper(i) for i in items[6:12]),
        list_name="Paper Digest",
        unsubscribe_mailto=MAILTO,
        unsubscribe_url=url,
    )
    return Renderer().render(view), url


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--count", type=int, default=10_000)
    args = ap.parse_args()
    rendered, url = digest()
    when = datetime(2026, 3, 6, 7, 0, tzinfo=UTC)
    ids = [
        make_message_id(digest_key=f"zoe@example.org/{i}", from_addr=FROM, database_id="bench")
        for i in range(args.count)
    ]

    def new(message_id: str) -> bytes:
        return build_message(
            rendered=rendered,
            from_addr=FROM,
            to_addr="zoe@example.org",
            to_name="Zoë Ørsted-Łukasiewicz",
            message_id=message_id,
            date=when,
            list_id=LIST_ID,
            unsubscribe_mailto=MAILTO,
            unsubscribe_url=url,
        )

    def old(message_id: str) -> bytes:
        return old_build(
            rendered=rendered,
            to_addr="zoe@example.org",
            to_name="Zoë Ørsted-Łukasiewicz",
            message_id=message_id,
            date_=when,
            unsubscribe_url=url,
        )

    size = len(new(ids[0]))
    print(
        f"message: {size / 1000:.1f} KB ({len(rendered.text)} text + {len(rendered.html)} html chars)"
    )
    # interleaved rounds, so a busy machine slows both paths alike
    builders = {"old (email package)": old, "new (mail.mime)": new}
    results = dict.fromkeys(builders, 0.0)
    rounds = max(1, min(10, args.count // 100))
    for r in range(rounds):
        batch = ids[r::rounds]
        for label, build in builders.items():
            t0 = time.perf_counter()
            for message_id in batch:
                build(message_id)
            results[label] += time.perf_counter() - t0
    for label, seconds in results.items():
        print(
            f"{label}: {args.count} messages in {seconds:.2f} s "
            f"({args.count / seconds:.0f}/s, {seconds / args.count * 1e6:.0f} us each)"
        )
    speedup = results["old (email package)"] / results["new (mail.mime)"]
    print(f"mime: new is {speedup:.1f}x faster than old")


if __name__ == "__main__":
    main()
