"""SQLModel tables: the only stored rows. Every datetime is timezone-aware UTC."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel


class UTCDateTime(TypeDecorator[datetime]):
    """Stores aware datetimes as UTC; SQLite keeps no zone, so reads are re-tagged UTC."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _utc(**kw: Any) -> Any:
    return Field(sa_type=UTCDateTime(), **kw)


def table_of(model: type[SQLModel]) -> sa.Table:
    """The Core table of a SQLModel table class (SQLModel's stubs do not declare `__table__`)."""
    return SQLModel.metadata.tables[str(model.__tablename__)]


class DigestState(StrEnum):
    """Where a digest is in the outbox.

    planned → sending → sent; sending → deferred (retry at next_attempt_at) → sending ...;
    sending → failed (permanent, or given up); skipped (nothing matched, nothing to send);
    planned or deferred → suppressed (the address unsubscribed: not sent).
    """

    PLANNED = "planned"
    SENDING = "sending"
    SENT = "sent"
    DEFERRED = "deferred"
    FAILED = "failed"
    SKIPPED = "skipped"
    SUPPRESSED = "suppressed"


class UnsubscribeMethod(StrEnum):
    """How an address got on the suppression list."""

    ONE_CLICK = "one-click"  # a mail client's RFC 8058 POST
    PAGE = "page"  # the button on the unsubscribe page
    OPERATOR = "operator"  # `digestbot unsubscribe EMAIL`


PAPER_KEY_MAX = 2100
"""Room for a paper key: an arXiv id, `doi:` and a DOI, or a link of up to text.URL_MAX characters."""


class Paper(SQLModel, table=True):
    """A paper seen in one or more sources, stored once and merged (see store.upsert_papers).

    `arxiv_id` is the paper's key (sources.base.FetchedPaper): its arXiv id when it has one, else
    `doi:` and its DOI, else its link. Title, abstract and authors are kept as first seen, except
    that a newer arXiv version replaces them. `featured_at` is the earliest featuring by any source;
    each source's own is in `paper_sources`.
    """

    __tablename__ = "papers"

    arxiv_id: str = Field(primary_key=True, max_length=PAPER_KEY_MAX)
    title: str = Field(sa_type=sa.Text())
    summary: str = Field(sa_type=sa.Text())
    authors: list[str] = Field(default_factory=list, sa_type=sa.JSON())
    published_at: datetime | None = _utc(default=None, nullable=True)
    featured_at: datetime = _utc(index=True)
    upvotes: int = 0
    num_comments: int = 0
    github_repo: str | None = Field(default=None, sa_type=sa.Text())
    github_stars: int | None = None
    project_page: str | None = Field(default=None, sa_type=sa.Text())
    ai_summary: str | None = Field(default=None, sa_type=sa.Text())
    ai_keywords: list[str] = Field(default_factory=list, sa_type=sa.JSON())
    categories: list[str] = Field(default_factory=list, sa_type=sa.JSON())
    link: str | None = Field(default=None, sa_type=sa.Text())  # a non-arXiv paper's page
    # brought by a source that counts upvotes (Hugging Face): only then do upvotes mean anything
    has_upvotes: bool = Field(default=True, sa_column_kwargs={"server_default": sa.true()})
    version: int | None = None  # the arXiv version last seen
    sources: list[str] = Field(
        default_factory=list, sa_type=sa.JSON(), sa_column_kwargs={"server_default": "[]"}
    )  # the names of the sources that brought it, first seen first
    first_seen_at: datetime = _utc()
    updated_at: datetime = _utc()


class PaperSource(SQLModel, table=True):
    """One source's sighting of a paper: when that source featured it and first brought it.

    A digest's window is read per source, so a paper one source brought on Monday and another
    features on Wednesday is new on Wednesday to a subscriber who follows only the second."""

    __tablename__ = "paper_sources"
    __table_args__ = (
        sa.UniqueConstraint("arxiv_id", "source", name="uq_paper_sources_paper_source"),
    )

    id: int | None = Field(default=None, primary_key=True)
    arxiv_id: str = Field(foreign_key="papers.arxiv_id", max_length=PAPER_KEY_MAX)
    source: str = Field(max_length=64)
    featured_at: datetime = _utc(index=True)
    first_seen_at: datetime = _utc()


class Subscriber(SQLModel, table=True):
    """A subscriber synced from the subscribers file; removed ones are kept inactive for history."""

    __tablename__ = "subscribers"
    __table_args__ = (sa.Index("ix_subscribers_address_key", "address_key", unique=True),)

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(max_length=320, sa_column_kwargs={"unique": True})  # as written in the file
    address_key: str = Field(max_length=320)  # addresses.address_key(email): how lookups compare
    name: str | None = Field(default=None, max_length=300)
    active: bool = True
    # Set when a planning run saw `frequency = "off"`, cleared by the next digest planned: a
    # subscriber back from "off" gets the normal window, not the backlog.
    paused_at: datetime | None = _utc(default=None, nullable=True)
    created_at: datetime = _utc()
    updated_at: datetime = _utc()


class Suppression(SQLModel, table=True):
    """An address that unsubscribed: nothing is planned or sent to it, even while it is still in
    the subscribers file. One row per address_key; `digestbot resubscribe` deletes it."""

    __tablename__ = "suppressions"

    id: int | None = Field(default=None, primary_key=True)
    address_key: str = Field(max_length=320, sa_column_kwargs={"unique": True})
    address: str = Field(max_length=320)  # as given (token, command line)
    method: str = Field(max_length=16)  # an UnsubscribeMethod
    created_at: datetime = _utc(index=True)


class Digest(SQLModel, table=True):
    """The outbox: one row per subscriber and period, with its delivery state.

    `state` holds a DigestState value. `message_id` is fixed at planning, so retries reuse it.
    """

    __tablename__ = "digests"
    __table_args__ = (
        sa.UniqueConstraint("subscriber_id", "period", name="uq_digests_subscriber_period"),
        # Partial: each holds the digests of one state that delivery looks for, so a digest
        # leaves them when it is sent, and they never grow with the history (migration 0013).
        *(
            sa.Index(
                name,
                *columns,
                sqlite_where=sa.text(f"state = '{state.value}'"),
                postgresql_where=sa.text(f"state = '{state.value}'"),
            )
            for name, columns, state in (
                # claims: deferred and due, longest waiting first; then planned in id order
                ("ix_digests_deferred", ("next_attempt_at", "id"), DigestState.DEFERRED),
                ("ix_digests_planned", ("id",), DigestState.PLANNED),
                # a run's start: digests whose sender died mid-send
                ("ix_digests_sending", ("id",), DigestState.SENDING),
                # `digestbot retry`: the failed ones
                ("ix_digests_failed", ("id",), DigestState.FAILED),
            )
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    # looked up by uq_digests_subscriber_period, which leads with it
    subscriber_id: int = Field(foreign_key="subscribers.id")
    period: str = Field(max_length=10)  # YYYY-MM-DD: the local date, or a weekly digest's send day
    frequency: str = Field(
        default="daily", max_length=8, sa_column_kwargs={"server_default": "daily"}
    )  # "daily" or "weekly": what `period` counts
    state: str = Field(max_length=16)  # a DigestState
    window_start: datetime = _utc()
    window_end: datetime = _utc()
    paper_count: int = 0
    more_count: int = 0
    message_id: str = Field(max_length=255)
    attempts: int = 0
    next_attempt_at: datetime | None = _utc(default=None, nullable=True)
    first_attempt_at: datetime | None = _utc(default=None, nullable=True)
    last_error: str | None = Field(default=None, sa_type=sa.Text())
    note: str | None = Field(default=None, sa_type=sa.Text())  # planned without a good fetch: why
    claimed_by: str | None = Field(default=None, max_length=200)
    lease_until: datetime | None = _utc(default=None, nullable=True)
    planned_at: datetime = _utc()
    sent_at: datetime | None = _utc(default=None, nullable=True)


class DigestItem(SQLModel, table=True):
    """A paper fixed into a digest at planning time; unique per subscriber so no paper goes out twice."""

    __tablename__ = "digest_items"
    __table_args__ = (
        sa.UniqueConstraint("subscriber_id", "arxiv_id", name="uq_digest_items_subscriber_paper"),
    )

    id: int | None = Field(default=None, primary_key=True)
    # No foreign keys: planning writes the items with their digest, from papers it read, and
    # nothing deletes a digest or a paper; checked per item they cost a sixth of planning on
    # PostgreSQL (migrations 0011 and 0012).
    digest_id: int = Field(index=True)
    # The digest's subscriber, copied for the unique key below (the digest holds its foreign key).
    subscriber_id: int
    arxiv_id: str = Field(max_length=PAPER_KEY_MAX)
    position: int
    section: str = Field(
        default="matched", max_length=16, sa_column_kwargs={"server_default": "matched"}
    )  # "matched" (a query matched) or "trending" (among the period's most upvoted)
    score: float
    upvotes: int
    matched: list[str] = Field(default_factory=list, sa_type=sa.JSON())
    title_spans: list[list[int]] = Field(default_factory=list, sa_type=sa.JSON())
    summary_spans: list[list[int]] = Field(default_factory=list, sa_type=sa.JSON())


class FetchRun(SQLModel, table=True):
    """One fetch of one source and how it ended, for `digestbot status`; a good one also keeps
    the validators of the source's next conditional GET (ETag, Last-Modified)."""

    __tablename__ = "fetch_runs"
    __table_args__ = (sa.Index("ix_fetch_runs_source_id", "source", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    source: str = Field(default="hf", max_length=64, sa_column_kwargs={"server_default": "hf"})
    feed_url: str = Field(sa_type=sa.Text())
    started_at: datetime = _utc(index=True)
    finished_at: datetime | None = _utc(default=None, nullable=True)
    ok: bool = False
    new_count: int = 0
    updated_count: int = 0
    error: str | None = Field(default=None, sa_type=sa.Text())
    etag: str | None = Field(default=None, sa_type=sa.Text())
    last_modified: str | None = Field(default=None, sa_type=sa.Text())


class DatabaseIdentity(SQLModel, table=True):
    """One row, written when the database is created: a random id that is part of every Message-ID,
    so two databases (a fresh one, a recreated one) never reuse each other's Message-IDs."""

    __tablename__ = "database_identity"

    id: int = Field(default=1, primary_key=True)
    token: str = Field(max_length=32)


class DeliveryHealth(SQLModel, table=True):
    """One row: whether the mail backend could be used at all, for `digestbot status`.

    A delivery run that cannot use the backend (server unreachable, login refused, TLS; a
    template or signing key that stops every message) records its error and time here; a later
    run whose message the backend answered records `last_ok_at`, which supersedes the error.
    """

    __tablename__ = "delivery_health"

    id: int = Field(default=1, primary_key=True)
    last_error: str | None = Field(default=None, sa_type=sa.Text())
    last_error_at: datetime | None = _utc(default=None, nullable=True)
    failing_since: datetime | None = _utc(default=None, nullable=True)  # first error of the streak
    errors_in_a_row: int = 0
    last_ok_at: datetime | None = _utc(default=None, nullable=True)

    @property
    def failing(self) -> bool:
        """The last thing the backend did was fail (no answered message since the last error)."""
        return self.last_error_at is not None and (
            self.last_ok_at is None or self.last_ok_at < self.last_error_at
        )
