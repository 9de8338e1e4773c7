"""Where the shipped data lives: inside the wheel (digestbot/_data) or, from a source checkout, the repo root."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_REPO_ROOT = _PACKAGE.parent


def _data_path(name: str, repo_name: str | None = None) -> Path:
    packaged = _PACKAGE / "_data" / name
    if packaged.exists():
        return packaged
    return _REPO_ROOT / (repo_name or name)


def templates_dir() -> Path:
    """The built-in Jinja2 templates."""
    return _data_path("templates")


def migrations_dir() -> Path:
    """The Alembic migration environment (env.py, versions/)."""
    return _data_path("migrations")


def env_example() -> Path:
    """The commented example `.env` that `digestbot init` copies."""
    return _data_path("env.example", ".env.example")


def subscribers_example() -> Path:
    """The commented example subscribers file that `digestbot init` copies."""
    return _data_path("subscribers.example.toml")
