"""``surgery eval``: the paper's Llama benchmarks on a model with a layer plan applied in memory."""

from __future__ import annotations

import math
from pathlib import Path

import click

from surgery.cli.options import data_dir_option, dtype_option, model_loading_options, plan_option
from surgery.evaluation.tasks import BENCHMARKS


def _limit(ctx, param, value: str | None) -> int | float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a number") from None
    if not math.isfinite(number):
        raise click.BadParameter(f"{value!r} is not a finite number")
    if number <= 0:
        raise click.BadParameter("must be positive")
    return number if number < 1 else int(number)


@click.command(name="eval")
@click.argument("model")
@plan_option(what="applied in memory (no checkpoint written)")
@click.option(
    "--tasks",
    default=",".join(BENCHMARKS),
    show_default=True,
    help=f"Comma-separated benchmarks (lm-eval task names): {', '.join(BENCHMARKS)}; or 'all'.",
)
@click.option(
    "--limit",
    callback=_limit,
    help="Evaluate only the first N items of each task (a fraction if < 1), as lm-eval's --limit.",
)
@data_dir_option("lambada/, arc/, hellaswag/, winogrande/, gsm8k/ as in shared/data")
@click.option(
    "--batch-size",
    default=8,
    show_default=True,
    type=click.IntRange(min=1),
    help="Examples per forward pass (larger is faster on CPU too; scores can differ in the last digits).",
)
@click.option("--output", type=click.Path(path_type=Path), help="Write the results JSON here.")
@click.option(
    "--baseline",
    type=click.Path(path_type=Path),
    help="Results JSON of the full model (same tasks, limit and data): adds the paper's normalized score.",
)
@click.option(
    "--max-gen-toks",
    type=click.IntRange(min=1),
    help="Cap generated tokens for GSM8K (lm-eval's default: 256). Lower values change GSM8K scores.",
)
@click.option(
    "--bootstrap-iters",
    default=100000,
    show_default=True,
    type=click.IntRange(min=0),
    help="lm-eval's bootstrap iterations for the perplexity stderr (0 disables all stderrs).",
)
@click.option("--seed", type=int, help="One seed for python/numpy/torch/few-shot sampling (default: lm-eval's).")
@dtype_option()
@click.option("--device", help="torch device (default: cuda if available, else cpu).")
@model_loading_options
def eval_command(
    model,
    plan_text,
    tasks,
    limit,
    data_dir,
    batch_size,
    output,
    baseline,
    max_gen_toks,
    bootstrap_iters,
    seed,
    dtype,
    device,
    revision,
    trust_remote_code,
    allow_pickle,
):
    """Score MODEL (Hub id, local directory incl. `surgery apply` outputs, or .gguf) on the paper's benchmarks.

    Runs lm-evaluation-harness (its task definitions, prompts and metrics) on the model with --plan applied
    in memory, prints a table and optionally writes JSON. With --baseline (the full model's JSON) it adds
    the paper's normalized score: per task 0 = chance, 1 = full model; the median over tasks.
    """
    from surgery.config import config_from_options
    from surgery.evaluation.config import EvalConfig

    config = config_from_options(
        EvalConfig,
        model=model,
        plan=plan_text,
        tasks=tasks,
        limit=limit,
        data_dir=data_dir,
        batch_size=batch_size,
        output=output,
        baseline=baseline,
        max_gen_toks=max_gen_toks,
        bootstrap_iters=bootstrap_iters,
        seed=seed,
        dtype=dtype,
        device=device,
        revision=revision,
        trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
    )
    from surgery.evaluation.report import format_results, write_json
    from surgery.evaluation.run import run_eval

    payload = run_eval(config)
    click.echo(format_results(payload))
    if output is not None:
        write_json(payload, output)
        click.echo(f"wrote {output}")
