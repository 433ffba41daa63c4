"""The package as a user meets it: the installed console scripts, and the commands and imports of the
README and the user docs (``test_config.USER_DOCS``).

Their YAML snippets are validated with the recipes (tests/test_config.py).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from test_config import REPO, readme_blocks

BIN = Path(sys.executable).parent
# Commands whose options the README uses: their --help must list each one.
HELP_COMMANDS = {"distill-data": 2, "distill-demo": 1}  # words before the options: program [subcommand]


def readme_commands() -> list[list[str]]:
    """Each command line of the README's bash blocks as words (continuations joined, comments dropped)."""
    commands = []
    for block in readme_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            for part in re.split(r"&&|\|", line):
                words = shlex.split(part, comments=True)
                if words:
                    commands.append(words)
    return commands


@cache
def help_text(*command: str) -> str:
    """``command --help`` through the installed console script (or this Python for a .py file)."""
    program = [sys.executable, str(REPO / command[0])] if command[0].endswith(".py") else [str(BIN / command[0])]
    proc = subprocess.run([*program, *command[1:], "--help"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"})
    assert proc.returncode == 0, f"{' '.join(command)} --help failed:\n{proc.stdout}{proc.stderr}"
    return proc.stdout


@pytest.mark.parametrize("script", sorted(HELP_COMMANDS))
def test_console_script_runs(script):
    """pyproject's [project.scripts] entry points are installed next to this Python and start."""
    assert (BIN / script).exists(), f"{script} is not installed in {BIN} (pip install -e .)"
    assert "Usage" in help_text(script)


def test_readme_commands_name_real_files_and_options():
    """Every repository path a README command names exists; every --option it passes is in the help."""
    checked = 0
    for words in readme_commands():
        for word in words:
            if re.match(r"(recipes|scripts|benchmarks|docs)/", word):
                assert (REPO / word).exists(), f"README names {word}, which does not exist"
        if words[0] == "python" and words[1].endswith(".py"):
            words = words[1:]
        depth = HELP_COMMANDS.get(words[0], 1 if words[0].endswith(".py") else 0)
        if depth:
            command = tuple(words[:depth])
            for option in (w.split("=")[0] for w in words[depth:] if w.startswith("--")):
                listed = re.search(rf"{re.escape(option)}(?![\w-])", help_text(*command))
                assert listed, f"README: `{' '.join(command)}` has no option {option}"
            checked += 1
    assert checked >= 5  # the distill-data pipeline and the benchmark lines were found


@pytest.mark.parametrize("index", range(len(readme_blocks("python"))))
def test_readme_python_imports(index):
    """The names the README's Python snippets import exist (the snippets need models to run)."""
    block = readme_blocks("python")[index]
    imports = [line for line in block.splitlines() if re.match(r"(from \S+ )?import ", line)]
    assert imports
    exec("\n".join(imports), {})
