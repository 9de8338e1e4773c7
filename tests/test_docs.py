"""The README, .env.example and CI script stay true to the code."""

from __future__ import annotations

import re
from pathlib import Path

from digestbot.settings import SETTINGS_REFERENCE

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_documents_every_setting() -> None:
    """Every setting the program reads appears in the README's configuration reference."""
    missing = [d.name for d in SETTINGS_REFERENCE if f"`{d.name}`" not in README]
    assert missing == []


def test_quickstart_is_two_commands_and_ci_runs_the_readme_test_command() -> None:
    """The Quickstart holds exactly two commands, and .ci/run (after its gates) ends with the second one verbatim."""
    quickstart = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", quickstart, flags=re.DOTALL)
    commands = [line for block in blocks for line in block.splitlines() if line.strip()]
    assert len(commands) == 2
    ci_lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.strip()]
    assert ci_lines[-1] == commands[1]
    assert "digestbot send" in commands[0] and commands[0].startswith("pip install .")
