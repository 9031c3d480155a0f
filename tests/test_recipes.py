"""Every recipe's first line is the exact command that runs it; the tests run the ones that can run offline."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from surgery.plan import load_plan, resolve_plan

REPO = Path(__file__).resolve().parent.parent
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
LAYERS = {"llama2-7b": 32, "smollm2": 30}
OFFLINE_MODELS = {"smollm2-demo"}  # what `make install` provides; Hub ids need the network


def _command(recipe: Path) -> list[str]:
    first = recipe.read_text().splitlines()[0]
    assert first.startswith("# surgery apply --plan "), first
    return shlex.split(first[2:])


def test_there_are_recipes():
    assert RECIPES and any(_command(recipe)[4] in OFFLINE_MODELS for recipe in RECIPES)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_first_line_is_its_command(recipe):
    argv = _command(recipe)
    assert argv[:3] == ["surgery", "apply", "--plan"]
    assert argv[3] == f"recipes/{recipe.name}"
    assert len(argv) == 6  # surgery apply --plan PLAN MODEL OUT
    layers = next(count for prefix, count in LAYERS.items() if recipe.name.startswith(prefix))
    assert resolve_plan(load_plan(str(recipe)), layers).steps


@pytest.mark.integration
@pytest.mark.parametrize("recipe", [r for r in RECIPES if _command(r)[4] in OFFLINE_MODELS], ids=lambda p: p.name)
def test_offline_recipe_runs_as_written(recipe, smollm2_gguf_path, tmp_path):
    """Run the first line verbatim, from a directory laid out like the repository root."""
    (tmp_path / "recipes").symlink_to(REPO / "recipes")
    argv = _command(recipe)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, "-m", "surgery.cli", *argv[1:]], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / argv[5] / "surgery.json").read_text())
    assert record["plan"]["canonical"] == load_plan(str(recipe)).canonical
    assert record["source"]["given"] == "smollm2-demo"
