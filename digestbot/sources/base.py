"""What every feed source produces: plain, validated paper values with no database attached."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True, slots=True)
class FetchedPaper:
    """One paper as a feed reported it. Datetimes are timezone-aware UTC."""

    arxiv_id: str
    title: str
    summary: str
    authors: tuple[str, ...]
    published_at: datetime | None
    featured_at: datetime  # when the feed featured it (HF: submittedOnDailyAt)
    upvotes: int = 0
    num_comments: int = 0
    github_repo: str | None = None
    github_stars: int | None = None
    project_page: str | None = None
    ai_summary: str | None = None
    ai_keywords: tuple[str, ...] = ()
    categories: tuple[str, ...] = field(default=())
