"""digestbot: a self-hosted daily paper-alert newsletter."""

__version__ = "0.1.0"
