"""Every README command that can run offline runs as written (from a directory laid out like the repository)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from resources import data_path

REPO = Path(__file__).resolve().parent.parent
PLACEHOLDER = re.compile(r"\b[A-Z][A-Z_]{2,}\b|\[|\.\.\.")  # MODEL, PLAN, OUT_DIR, [--option], ...


def readme_commands() -> list[str]:
    """``surgery ...`` lines of the README's console blocks that need neither the network nor a placeholder."""
    commands, in_block = [], False
    for line in (REPO / "README.md").read_text().splitlines():
        if line.startswith("```"):
            in_block = line.strip() == "```console"
            continue
        text = line.removeprefix("$ ").split("#")[0].strip()
        needs_network = "needs the network" in line
        if in_block and text.startswith("surgery ") and not needs_network and not PLACEHOLDER.search(text):
            commands.append(text)
    return commands


def test_the_readme_has_runnable_examples():
    commands = readme_commands()
    assert any(c.startswith("surgery apply") for c in commands) and any("plan show" in c for c in commands)


@pytest.mark.integration
@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_runs_as_written(command, smollm2_gguf_path, minilm, tmp_path):
    """From ``tmp/repo`` with ``recipes/`` and ``../shared/data`` in place, as in a clone beside shared/."""
    data = data_path()
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(data)
    workdir = tmp_path / "repo"
    workdir.mkdir()
    (workdir / "recipes").symlink_to(REPO / "recipes")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    argv = shlex.split(command)
    result = subprocess.run(
        [sys.executable, "-m", "surgery.cli", *argv[1:]], cwd=workdir, capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr
    if argv[1] == "apply":
        assert (workdir / argv[-1] / "surgery.json").is_file()
