"""Every recipe's first line is the exact command that runs it, and its plan is valid."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from surgery.plan import load_plan, resolve_plan

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))
LAYERS = {"llama2-7b": 32, "smollm2": 30}


def test_there_are_recipes():
    assert RECIPES


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_first_line_is_its_command(recipe):
    first = recipe.read_text().splitlines()[0]
    assert first.startswith("# surgery apply --plan ")
    argv = shlex.split(first[2:])
    assert argv[:3] == ["surgery", "apply", "--plan"]
    assert argv[3] == f"recipes/{recipe.name}"
    assert len(argv) == 6  # surgery apply --plan PLAN MODEL OUT
    layers = next(count for prefix, count in LAYERS.items() if recipe.name.startswith(prefix))
    assert resolve_plan(load_plan(str(recipe)), layers).steps
