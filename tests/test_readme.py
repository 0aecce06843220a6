"""The first-use path of the READMEs works as written on a fresh machine."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _commands(text: str) -> list[str]:
    """Lines of the fenced blocks that are commands (`$ cmd` or bare `cmd ...`)."""
    lines = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        for line in block.splitlines():
            lines.append(line.removeprefix("$ ").strip())
    return lines


def test_the_readme_says_how_to_reach_fl_core_before_using_it_bare() -> None:
    # `make demo` installs fl-core into .venv; a bare `fl-core` before activation is
    # "command not found".
    commands = _commands((REPO / "README.md").read_text())
    activate = commands.index(". .venv/bin/activate      # then: fl-core --version")
    # `fl-core run ...` is a command; `fl-core simulator: job ...` is printed output.
    command = re.compile(r"fl-core (run|poc|job|plugins|version|--version)( |$)")
    first_bare = next(i for i, c in enumerate(commands) if command.match(c))
    assert activate < first_bare


def test_no_example_readme_installs_with_a_bare_pip() -> None:
    # A bare `pip` may belong to another Python than the .venv that runs fl-core.
    for readme in sorted((REPO / "examples").glob("*/README.md")):
        bare = [c for c in _commands(readme.read_text()) if c.startswith(("pip ", "pip3 "))]
        assert bare == [], readme
