"""``surgery sweep``, ``surgery plot`` and ``surgery recipe ls|validate`` (thin: options -> config -> library)."""

from __future__ import annotations

from pathlib import Path

import click

from surgery.cli.options import data_dir_option, dtype_option, model_loading_options, quiet_option
from surgery.evaluation.cli import _limit

RECIPES_DIR = Path("recipes")


@click.command(name="sweep")
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--model", required=True, help="Hub id, local directory or .gguf file (or smollm2-demo / minilm-demo).")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Run directory (resumable).")
@click.option("--tasks", help="Comma-separated tasks (default: the recipe's; eval: the paper's six).")
@click.option(
    "--limit", callback=_limit, help="Items per task (eval: lm-eval's --limit; similarity: texts; glue: dev)."
)
@data_dir_option("lambada/, arc/, hellaswag/, winogrande/, gsm8k/, glue/ as in shared/data")
@click.option("--grid", multiple=True, help="Thin a parameter, e.g. --grid N=4,8,12 or --grid seed=0..4 (repeatable).")
@click.option("--variants", help="Only these recipe lines (comma-separated names); the identity always runs.")
@click.option("--set", "overrides", multiple=True, help="Override a recipe setting, e.g. --set max_train=300.")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--max-gen-toks", type=click.IntRange(min=1), help="Cap generated tokens for GSM8K.")
@click.option("--bootstrap-iters", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--seed", type=int, help="lm-eval's seeds (default: lm-eval's own); GLUE training seed.")
@dtype_option()
@click.option("--device", help="torch device (default: cuda if available, else cpu).")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--address", help="Ray cluster to join (e.g. auto); default: start a local Ray instance.")
@click.option("--gpus-per-variant", type=click.FloatRange(min=0), default=0, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), help="Ray actors (default: GPUs / --gpus-per-variant, else 1).")
@model_loading_options
@quiet_option()
def sweep(recipe, model, out_dir, tasks, limit, data_dir, grid, variants, overrides, batch_size, max_gen_toks,
          bootstrap_iters, seed, dtype, device, executor, address, gpus_per_variant, workers, revision,
          trust_remote_code, allow_pickle, quiet):  # fmt: skip
    """Run a recipe's variants on MODEL (in memory), appending each result to OUT/results.jsonl.

    Rerunning the same command skips every finished result; a killed sweep loses at most the evaluation in
    progress. Then `surgery plot OUT` draws the figure.
    """
    from surgery.config import config_from_options
    from surgery.sweep.config import SweepConfig
    from surgery.sweep.recipe import parse_grid_override

    config = config_from_options(
        SweepConfig,
        {"out_dir": "--out"},
        recipe=recipe,
        model=model,
        out_dir=out_dir,
        tasks=tasks,
        limit=limit,
        data_dir=data_dir,
        grid=parse_grid_override(list(grid)),
        variants=[v.strip() for v in variants.split(",") if v.strip()] if variants else None,
        overrides=list(overrides),
        batch_size=batch_size,
        max_gen_toks=max_gen_toks,
        bootstrap_iters=bootstrap_iters,
        seed=seed,
        dtype=dtype,
        device=device,
        executor=executor,
        address=address,
        gpus_per_variant=gpus_per_variant,
        workers=workers,
        revision=revision,
        trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
        progress=not quiet,
    )
    from surgery.sweep.run import run_sweep

    summary = run_sweep(config)
    if not quiet:
        click.echo(
            f"{summary['units']} results in {out_dir}/results.jsonl ({summary['done_before']} were already there, "
            f"{summary['evaluated']} evaluation(s) run); plot with: surgery plot {out_dir}"
        )


@click.command(name="plot")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), help="Write here instead of RUN_DIR.")
def plot(run_dir, out_dir):
    """Draw a sweep's paper-style figure(s) into RUN_DIR/plots/ and its table into RUN_DIR/summary.md."""
    from surgery.cli.extras import require_extra
    from surgery.config import config_from_options
    from surgery.sweep.config import PlotConfig

    config = config_from_options(PlotConfig, {"out_dir": "--out"}, run_dir=run_dir, out_dir=out_dir)
    require_extra("eval", "plot", ("matplotlib", "numpy"))
    from surgery.sweep.plots import plot_run

    for path in plot_run(config.run_dir, config.out_dir):
        click.echo(f"wrote {path}")


@click.group(name="recipe")
def recipe() -> None:
    """List and validate sweep recipes (recipes/paper/)."""


@recipe.command("ls")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--layers", "num_layers", default=32, show_default=True, type=click.IntRange(min=2),
              help="Count evaluations for a model with this many layers (Llama2-7B: 32).")  # fmt: skip
def recipe_ls(paths, num_layers):
    """List recipes (default: recipes/paper/), the figure each reproduces and its number of evaluations."""
    from surgery.fileio import format_table
    from surgery.sweep.recipe import estimate, is_sweep_recipe, recipe_files

    rows = []
    for path in recipe_files(list(paths) or [RECIPES_DIR / "paper"]):
        if not is_sweep_recipe(path):
            continue  # a plain `surgery apply` plan
        info = estimate(path, num_layers)
        rows.append(
            [str(path), info["figure"], info["kind"], str(info["variants"]), str(info["evaluations"]), info["title"]]
        )
    click.echo(format_table(["recipe", "fig", "kind", "variants", f"evaluations (T={num_layers})", "title"], rows))


@recipe.command("validate")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
def recipe_validate(paths):
    """Check recipes against the schema and expand them for 30-, 32- and 80-layer models; first error with its line."""
    from surgery.sweep.recipe import recipe_files, validate

    files = recipe_files(list(paths))
    for path in files:
        validate(path)
    click.echo(f"{len(files)} recipe(s) valid")
