"""Commands as they are written into results files: relative to the repository, never this machine's paths."""

from __future__ import annotations

import shlex
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def display_path(text: str) -> str:
    """Replace this machine's absolute prefixes: the venv's bin/ -> '', the repo -> '.', ../shared, $TMPDIR."""
    replacements = [
        (str(Path(sys.executable).parent) + "/", ""),
        (str(REPO.parent / "shared"), "../shared"),
        (str(REPO) + "/", ""),
        (str(REPO), "."),
        (str(Path(tempfile.gettempdir())), "$TMPDIR"),
    ]
    for old, new in replacements:
        text = text.replace(old, new)
    return text


def display_command(argv: list[str]) -> str:
    """A copy-pasteable command line (run from the repository root with the venv active)."""
    return display_path(shlex.join(str(arg) for arg in argv))
