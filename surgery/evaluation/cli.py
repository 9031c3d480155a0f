"""``surgery eval``: the paper's Llama benchmarks on a model with a layer plan applied in memory."""

from __future__ import annotations

from pathlib import Path

import click

from surgery.evaluation.tasks import BENCHMARKS

PLAN_HELP = (
    "Layer plan applied in memory (no checkpoint written), e.g. 'skip:13-19', 'reverse:8-23', "
    "'parallel:8-23x3', or a YAML plan file. Default: the unmodified model."
)


def _limit(ctx, param, value: str | None) -> int | float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a number") from None
    if number <= 0:
        raise click.BadParameter("must be positive")
    return number if number < 1 else int(number)


@click.command(name="eval")
@click.argument("model")
@click.option("--plan", "plan_text", help=PLAN_HELP)
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
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    envvar="SURGERY_DATA_DIR",
    help="Local benchmark files laid out like shared/data (lambada/, arc/, hellaswag/, winogrande/, gsm8k/) "
    "instead of the Hub datasets lm-eval downloads. Env: SURGERY_DATA_DIR.",
)
@click.option("--batch-size", default=1, show_default=True, type=click.IntRange(min=1))
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
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32", show_default=True)
@click.option("--device", help="torch device (default: cuda if available, else cpu).")
@click.option("--revision", help="Hub revision when MODEL is a Hub id.")
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
):
    """Score MODEL (Hub id, local directory incl. `surgery apply` outputs, or .gguf) on the paper's benchmarks.

    Runs lm-evaluation-harness (its task definitions, prompts and metrics) on the model with --plan applied
    in memory, prints a table and optionally writes JSON. With --baseline (the full model's JSON) it adds
    the paper's normalized score: per task 0 = chance, 1 = full model; the median over tasks.
    """
    from surgery.evaluation.harness import evaluate
    from surgery.evaluation.report import format_results, write_json

    payload = evaluate(
        model,
        plan=plan_text,
        tasks=tasks,
        data_dir=data_dir,
        limit=limit,
        batch_size=batch_size,
        max_gen_toks=max_gen_toks,
        bootstrap_iters=bootstrap_iters,
        seed=seed,
        dtype=dtype,
        device=device,
        revision=revision,
        baseline=baseline,
    )
    click.echo(format_results(payload))
    if output is not None:
        write_json(payload, output)
        click.echo(f"wrote {output}")
