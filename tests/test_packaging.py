"""A plain (non-editable) install carries the templates, migrations and example files."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_ships_templates_migrations_and_examples(tmp_path: Path) -> None:
    """The built wheel holds every template, the migrations and the example files, and finds them installed."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
    )
    wheel = next(tmp_path.glob("digestbot-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for template in (ROOT / "templates").iterdir():
        assert f"digestbot/_data/templates/{template.name}" in names
    for version in (ROOT / "migrations" / "versions").glob("*.py"):
        assert f"digestbot/_data/migrations/versions/{version.name}" in names
    assert "digestbot/_data/migrations/env.py" in names
    assert (
        "digestbot/_data/env.example" in names
        and "digestbot/_data/subscribers.example.toml" in names
    )
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = (
        "from digestbot import resources as r;"
        "print(r.templates_dir(), r.migrations_dir(), r.env_example().exists(), r.subscribers_example().exists())"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={"PYTHONPATH": str(site)},
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert (
        out[0].startswith(str(site))
        and out[1].startswith(str(site))
        and out[2:] == ["True", "True"]
    )
