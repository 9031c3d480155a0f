"""The paper recipes (recipes/paper/): schema, the one N convention, first lines, and runs on the real models."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner
from resources import DATA_DIR, needs_data

from surgery.cli.main import main
from surgery.errors import SurgeryError
from surgery.plan import load_plan
from surgery.sweep.recipe import expand, load_recipe, paper_range, validate

REPO = Path(__file__).resolve().parent.parent
PAPER = sorted((REPO / "recipes" / "paper").glob("*.yaml"))
FIGURES = {"2", "3/14", "4", "5", "6", "7", "8", "9", "10", "11", "12", "15", "17", "A.8", "A.9"}


def _argv(recipe: Path) -> list[str]:
    first = recipe.read_text().splitlines()[0]
    assert first.startswith("# surgery sweep "), first
    return shlex.split(first[2:])


def test_one_n_convention_readme_and_recipes_agree():
    """README, the apply recipes and the sweep recipes all use paper_range: N keeps N+1 .. T-N-1."""
    assert paper_range(8, 32) == (9, 23) and paper_range(13, 32) == (14, 18) and paper_range(15, 32) == (16, 16)
    with pytest.raises(SurgeryError, match="modifies no layers"):
        paper_range(16, 32)
    readme = (REPO / "README.md").read_text()
    claims = re.findall(r"\(T = (\d+)\) at N = (\d+),\s+`skip:(\d+)-(\d+)`", readme)
    claims += re.findall(r"\(T = (\d+)\), N = (\d+)\s+is\s+`skip:(\d+)-(\d+)`", readme)
    assert len(claims) == 2
    for t, n, lo, hi in claims:
        assert paper_range(int(n), int(t)) == (int(lo), int(hi))
    for name, n, t in [("llama2-7b-looped-parallel-n8x3", 8, 32), ("llama2-7b-skip-n13", 13, 32)]:
        (op,) = load_plan(str(REPO / "recipes" / f"{name}.yaml")).ops
        assert (op.start, op.end) == paper_range(n, t), name
    recipe, _ = load_recipe(REPO / "recipes" / "paper" / "fig04_skip.yaml")
    by_n = {v.params["N"]: v.plan for v in expand(recipe, 32) if v.params}
    assert by_n[8] == "skip:9-23" and by_n[13] == "skip:14-18" and sorted(by_n) == list(range(16))


def test_every_paper_recipe_validates_and_the_figures_are_covered():
    assert {validate(path).figure for path in PAPER} == FIGURES
    result = CliRunner().invoke(main, ["recipe", "validate", str(REPO / "recipes")])
    assert result.exit_code == 0, result.output
    assert f"{len(list((REPO / 'recipes').rglob('*.yaml')))} recipe(s) valid" in result.output


@pytest.mark.parametrize("recipe", PAPER, ids=lambda p: p.name)
def test_first_line_is_the_command(recipe):
    argv = _argv(recipe)
    assert argv[:3] == ["surgery", "sweep", f"recipes/paper/{recipe.name}"]
    options = dict(zip(argv[3::2], argv[4::2]))
    assert options["--model"] in ("smollm2-demo", "minilm-demo") and options["--out"].startswith("runs/")
    one_file = load_recipe(recipe)[0]
    for layers in (30, 32, 80):  # one file for every depth
        assert expand(one_file, layers) if one_file.kind != "glue" else expand(one_file, 24)


def test_validate_names_the_first_error_and_its_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "# surgery sweep bad.yaml --model m --out o\nversion: 1\nfigure: '4'\ntitle: t\nfinding: f\nkind: eval\n"
        "variants:\n  - name: skip\n    plan: 'skip:{lo}-{hi}'\n    grid: {N: 2.5}\n"
    )
    result = CliRunner().invoke(main, ["recipe", "validate", str(bad)])
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"error: {bad}:10: variants.0.grid.N") and "Traceback" not in result.output
    bad.write_text(bad.read_text().replace("version: 1", "version: 2"))
    result = CliRunner().invoke(main, ["recipe", "validate", str(bad)])
    assert f"{bad}:2: version" in result.output
    bad.write_text(bad.read_text().replace("version: 2", "version: 1").replace("N: 2.5", "N: 3").replace("hi}", "H}"))
    result = CliRunner().invoke(main, ["recipe", "validate", str(bad)])
    assert result.exit_code == 2 and "unknown name 'H'" in result.output


def test_recipe_ls_lists_figures_and_evaluations():
    result = CliRunner().invoke(main, ["recipe", "ls", str(REPO / "recipes" / "paper"), "--layers", "32"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0].rsplit("/", 1)[-1]: line.split() for line in result.output.splitlines()[2:]}
    assert set(rows) == {p.name for p in PAPER}
    assert rows["fig04_skip.yaml"][1:5] == ["4", "eval", "17", "102"]  # identity + N = 0..15, six tasks
    assert rows["fig07_random_order.yaml"][3] == "161"  # identity + 16 N x 10 seeds


def _run_first_line(recipe: Path, out: Path, extra: list[str]) -> CliRunner:
    argv = _argv(recipe)[1:]
    argv[argv.index("--out") + 1] = str(out)
    if "--data-dir" in argv:
        argv[argv.index("--data-dir") + 1] = str(DATA_DIR)
    argv[1] = str(REPO / argv[1])
    return CliRunner().invoke(main, [*argv, *extra, "-q"])


@pytest.mark.integration
@needs_data("lambada")
def test_fig04_recipe_runs_as_written_on_smollm2(smollm2_gguf_path, tmp_path):
    """The first line of fig04, with a small --limit and one N, end to end: sweep, resume, plot."""
    extra = ["--limit", "2", "--grid", "N=12", "--tasks", "lambada_openai"]
    result = _run_first_line(REPO / "recipes" / "paper" / "fig04_skip.yaml", tmp_path / "fig04", extra)
    assert result.exit_code == 0, result.output
    from surgery.sweep.report import read_records

    records = read_records(tmp_path / "fig04")
    assert [(r["plan"], r["n"]) for r in records] == [("identity", 2), ("skip:13-17", 2)]
    assert records[0]["model"]["given"] == "smollm2-demo" and records[0]["model"]["layers"] == 30
    result = CliRunner().invoke(main, ["plot", str(tmp_path / "fig04")])
    assert result.exit_code == 0 and (tmp_path / "fig04" / "plots" / "fig04_skip.png").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("recipe", PAPER, ids=lambda p: p.name)
def test_every_recipe_runs_end_to_end(recipe, smollm2_gguf_path, tmp_path):
    """Each recipe's first line with --limit 2 and every grid thinned to its first value (GLUE: RTE, 16 examples)."""
    spec, _ = load_recipe(recipe)
    extra, chosen = ["--limit", "2"], {}
    for variant in expand(spec, 6 if spec.kind == "glue" else 30):
        for name, value in variant.params.items():
            chosen.setdefault(name, value)
    for name, value in chosen.items():
        extra += ["--grid", f"{name}={value}"]
    if spec.kind == "eval" and not spec.tasks:
        extra += ["--tasks", "lambada_openai"]
    if spec.kind == "glue":
        extra += ["--tasks", "rte", "--variants", spec.variants[0].name, "--set", "max_train=16", "--set", "epochs=1"]
    result = _run_first_line(recipe, tmp_path / "run", extra)
    assert result.exit_code == 0, result.output
    assert CliRunner().invoke(main, ["plot", str(tmp_path / "run")]).exit_code == 0
