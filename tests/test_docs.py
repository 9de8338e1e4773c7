"""The README, .env.example and CI script stay true to the code."""

from __future__ import annotations

import re
from pathlib import Path

from digestbot.settings import SETTINGS_REFERENCE, render_env_example, render_settings_table

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


def test_settings_reference_text_is_generated_from_the_declarations() -> None:
    """The README configuration table and .env.example are exactly what the setting declarations generate."""
    assert render_settings_table() in README
    assert (ROOT / ".env.example").read_text(encoding="utf-8") == render_env_example()


def test_readme_states_the_subscribers_file_limits() -> None:
    """The subscribers reference states the query length cap and the max_papers range the code enforces."""
    from digestbot.subscribers import MAX_ENTRY_LENGTH, MAX_PAPERS_LIMIT

    section = README.split("## Subscribers file reference", 1)[1].split("\n## ", 1)[0]
    assert f"at most {MAX_ENTRY_LENGTH} characters" in section
    assert f"`max_papers` is 1 to {MAX_PAPERS_LIMIT}" in section
