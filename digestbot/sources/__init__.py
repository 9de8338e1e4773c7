from digestbot.sources.base import FetchedPaper

__all__ = ["FetchedPaper"]
